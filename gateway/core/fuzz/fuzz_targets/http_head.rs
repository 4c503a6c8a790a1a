//! Fuzz `meshgw_proto::http_head` on arbitrary bytes read as a request head: the first line is the request
//! target, every further line a header `name:value` (the name must be UTF-8, the value is any bytes). No panic,
//! and what is accepted keeps the guarantees intentions rely on (l7-security.md §4, §6.16–19): an origin-form
//! path (which then goes through normalization), one `Host`, no dropped header that lacked `_`, and
//! `Content-Length`/`Host` never among the headers to strip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::http_head::{check_request_headers, split_target};
use meshgw_proto::normalize::{normalize_path, Normalization, UnderscoreAction};

fn target(line: &[u8]) {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let Ok(t) = split_target(text) else {
        return;
    };
    assert!(t.path_and_query.starts_with('/'), "{text:?} -> {t:?}");
    if let Some(authority) = &t.authority {
        assert!(!authority.is_empty(), "{text:?} -> {t:?}");
        assert!(
            !authority.contains(['/', '?', '#', '@', ' ']),
            "{text:?} -> {t:?}"
        );
    }
    // The pipeline's next step must accept whatever this one produced without panicking.
    let _ = normalize_path(&t.path_and_query, &Normalization::default());
}

fn header(line: &[u8]) -> Option<(&str, &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = line.split_at(colon);
    let name = std::str::from_utf8(name).ok()?;
    Some((name, value.get(1..)?.trim_ascii()))
}

fn headers(headers: &[(&str, &[u8])]) {
    for action in [
        UnderscoreAction::Allow,
        UnderscoreAction::RejectRequest,
        UnderscoreAction::DropHeader,
    ] {
        let Ok(verdict) = check_request_headers(headers, action) else {
            continue;
        };
        let hosts = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count();
        assert_eq!(hosts, 1, "{headers:?}");
        for &i in &verdict.drop {
            assert!(
                headers.get(i).is_some_and(|(n, _)| n.contains('_')),
                "{headers:?} {verdict:?}"
            );
        }
        if action == UnderscoreAction::RejectRequest {
            assert!(headers.iter().all(|(n, _)| !n.contains('_')), "{headers:?}");
        }
        if action != UnderscoreAction::DropHeader {
            assert!(verdict.drop.is_empty());
        }
        assert!(!verdict.strip.contains("content-length") && !verdict.strip.contains("host"));
        assert!(
            verdict.strip.contains("connection") && verdict.strip.contains("transfer-encoding")
        );
        assert!(verdict.strip.iter().all(|n| *n == n.to_ascii_lowercase()));
        assert!(!verdict.te_trailers || verdict.strip.contains("te"));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    if let Some(first) = lines.next() {
        target(first.strip_suffix(b"\r").unwrap_or(first));
    }
    let parsed: Vec<(&str, &[u8])> = lines
        .filter_map(|line| header(line.strip_suffix(b"\r").unwrap_or(line)))
        .collect();
    headers(&parsed);
});
