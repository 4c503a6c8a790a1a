use super::*;
use std::collections::BTreeSet;

fn target(authority: Option<&str>, path: &str) -> Result<Target, HeadError> {
    Ok(Target {
        authority: authority.map(str::to_owned),
        path_and_query: path.to_owned(),
    })
}

fn check(headers: &[(&str, &str)], action: UnderscoreAction) -> Result<HeaderVerdict, HeadError> {
    let raw: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    check_request_headers(&raw, action)
}

fn allow(headers: &[(&str, &str)]) -> Result<HeaderVerdict, HeadError> {
    check(headers, UnderscoreAction::Allow)
}

fn stripped(verdict: &HeaderVerdict) -> Vec<&str> {
    let mut names: Vec<&str> = verdict.strip.iter().collect();
    names.sort_unstable();
    names
}

#[test]
fn origin_form_passes_unchanged() {
    for path in ["/", "/a/../b?x=1", "/admin#x", "//x", "/caf\u{e9}"] {
        assert_eq!(split_target(path), target(None, path));
    }
}

// l7-security.md §4 first row, §6.17, §7 #18.
#[test]
fn absolute_form_gives_authority_and_origin_form() {
    assert_eq!(
        split_target("http://evil.example/admin"),
        target(Some("evil.example"), "/admin")
    );
    assert_eq!(
        split_target("HTTPS://h:8443/p?q=/x"),
        target(Some("h:8443"), "/p?q=/x")
    );
    assert_eq!(split_target("http://h"), target(Some("h"), "/"));
    assert_eq!(split_target("http://h?q"), target(Some("h"), "/?q"));
    assert_eq!(split_target("http://h#f"), target(Some("h"), "/#f"));
    assert_eq!(
        split_target("http://[::1]:80/a"),
        target(Some("[::1]:80"), "/a")
    );
    assert_eq!(
        split_target("http://[fe80::1]"),
        target(Some("[fe80::1]"), "/")
    );
    assert_eq!(split_target("http://h//a"), target(Some("h"), "//a"));
}

#[test]
fn bad_absolute_urls_are_refused() {
    for url in [
        "http://",
        "http:///a",
        "http://u@h/",
        "http://h:/",
        "http://h:99999/",
        "http://h:8x/",
        "http://h:1:2/",
        "http://[::1/",
        "http://[]/",
        "http://[::1]x/",
        "http://h\u{e9}/",
        "https://h\"/",
    ] {
        assert_eq!(
            split_target(url),
            Err(HeadError::InvalidAbsoluteUrl),
            "target {url:?}"
        );
    }
}

#[test]
fn other_forms_have_their_own_errors() {
    assert_eq!(split_target("*"), Err(HeadError::AsteriskForm));
    assert_eq!(split_target("api:443"), Err(HeadError::AuthorityForm));
    assert_eq!(split_target("[::1]:8443"), Err(HeadError::AuthorityForm));
    for garbage in [
        "api", "[::1]", "", " /", "/a b", "/a\tb", "/a\0", "/\u{7f}", "ftp://h/", "http:/h", "**",
        "a/b", "\\a",
    ] {
        assert_eq!(
            split_target(garbage),
            Err(HeadError::InvalidTarget),
            "target {garbage:?}"
        );
    }
}

// l7-security.md §4 "HTTP/1.1 without Host", §7 #19.
#[test]
fn host_must_be_there_once() {
    assert_eq!(allow(&[("Accept", "*/*")]), Err(HeadError::MissingHost));
    assert_eq!(allow(&[]), Err(HeadError::MissingHost));
    assert_eq!(
        allow(&[("Host", "api"), ("HOST", "evil")]),
        Err(HeadError::DuplicateHost)
    );
    assert!(allow(&[("hOsT", "api")]).is_ok());
}

// l7-security.md §4 header name with `_`, §6.18.
#[test]
fn underscore_actions() {
    let headers = [("Host", "api"), ("x_user", "a"), ("X-Ok", "b"), ("_", "c")];
    let verdict = check(&headers, UnderscoreAction::Allow).unwrap();
    assert!(verdict.drop.is_empty());
    let verdict = check(&headers, UnderscoreAction::DropHeader).unwrap();
    assert_eq!(verdict.drop, vec![1, 3]);
    assert_eq!(
        check(&headers, UnderscoreAction::RejectRequest),
        Err(HeadError::UnderscoreInHeaderName)
    );
    assert!(check(
        &[("Host", "api"), ("x-user", "a")],
        UnderscoreAction::RejectRequest
    )
    .is_ok());
    // The codec's underscore check runs before the connection manager's Host check (l7-security.md §4).
    assert_eq!(
        check(&[("x_user", "a")], UnderscoreAction::RejectRequest),
        Err(HeadError::UnderscoreInHeaderName)
    );
}

// l7-security.md §4, §6.16, §7 #20.
#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let both = [
        ("Host", "api"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
    ];
    assert_eq!(
        allow(&both),
        Err(HeadError::ContentLengthWithTransferEncoding)
    );
    let reversed = [
        ("host", "api"),
        ("transfer-encoding", "chunked"),
        ("content-length", "5"),
    ];
    assert_eq!(
        allow(&reversed),
        Err(HeadError::ContentLengthWithTransferEncoding)
    );
    assert!(allow(&[("Host", "api"), ("Content-Length", "5")]).is_ok());
}

#[test]
fn hop_by_hop_names_always_stripped() {
    let verdict = allow(&[("Host", "api")]).unwrap();
    assert_eq!(
        stripped(&verdict),
        [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade"
        ]
    );
    assert!(!verdict.te_trailers);
}

// The smuggling bypass of the issue: `Connection: content-length` must not remove the header that framed
// the body hyper read (l7-security.md §4, envoyproxy/envoy#8623).
#[test]
fn post_public_with_connection_content_length_keeps_content_length() {
    let headers = [
        ("Host", "api"),
        ("Content-Length", "5"),
        ("Connection", "content-length"),
    ];
    let verdict = allow(&headers).unwrap();
    assert!(!verdict.strip.contains("content-length"));
    assert!(verdict.strip.contains("connection"));
    for token in ["Content-Length, Host", "TRANSFER-ENCODING", " host ,"] {
        let verdict = allow(&[("Host", "api"), ("Connection", token)]).unwrap();
        assert!(!verdict.strip.contains("content-length") && !verdict.strip.contains("host"));
    }
}

#[test]
fn connection_nominations_are_stripped() {
    let headers = [
        ("Host", "api"),
        ("Connection", "X-Debug , keep-alive,,close"),
        ("connection", "\tFoo-Bar"),
        ("X-Debug", "1"),
    ];
    let verdict = allow(&headers).unwrap();
    assert!(verdict.strip.contains("x-debug") && verdict.strip.contains("foo-bar"));
    assert!(!verdict.strip.contains("close"));
}

// Envoy `Utility::sanitizeConnectionHeader`: origin-hiding and pseudo-header nominations, 10+ tokens.
#[test]
fn hostile_connection_nominations_are_refused() {
    for value in [
        "X-Forwarded-For",
        "keep-alive, x-forwarded-proto",
        "X-FORWARDED-HOST",
        ":path",
    ] {
        let headers = [("Host", "api"), ("Connection", value)];
        assert_eq!(
            allow(&headers),
            Err(HeadError::ConnectionHeaderRejected),
            "{value:?}"
        );
    }
    let many = "a,b,c,d,e,f,g,h,i,j";
    assert_eq!(
        allow(&[("Host", "api"), ("Connection", many)]),
        Err(HeadError::ConnectionHeaderRejected)
    );
    assert!(allow(&[("Host", "api"), ("Connection", "a,b,c,d,e,f,g,h,i")]).is_ok());
}

#[test]
fn te_keeps_only_trailers() {
    let only = allow(&[("Host", "api"), ("TE", "Trailers")]).unwrap();
    assert!(!only.strip.contains("te") && !only.te_trailers);
    let mixed = allow(&[("Host", "api"), ("te", "gzip"), ("te", "trailers")]).unwrap();
    assert!(mixed.strip.contains("te") && mixed.te_trailers);
    let none = allow(&[("Host", "api"), ("te", "gzip, deflate")]).unwrap();
    assert!(none.strip.contains("te") && !none.te_trailers);
    let nominated = allow(&[("Host", "api"), ("Connection", "te"), ("te", "trailers")]).unwrap();
    assert!(!nominated.strip.contains("te"));
    let empty = allow(&[("Host", "api"), ("te", "")]).unwrap();
    assert!(empty.strip.contains("te"));
}

#[test]
fn non_utf8_values_do_not_break_anything() {
    let raw: [(&str, &[u8]); 3] = [
        ("Host", b"api"),
        ("Connection", b"\xff\xfe, x"),
        ("te", b"\x80"),
    ];
    let verdict = check_request_headers(&raw, UnderscoreAction::DropHeader).unwrap();
    assert!(verdict.strip.contains("x"));
}

#[test]
fn every_error_is_a_400_with_a_snake_case_reason() {
    let all = [
        HeadError::InvalidTarget,
        HeadError::InvalidAbsoluteUrl,
        HeadError::AuthorityForm,
        HeadError::AsteriskForm,
        HeadError::MissingHost,
        HeadError::DuplicateHost,
        HeadError::UnderscoreInHeaderName,
        HeadError::ContentLengthWithTransferEncoding,
        HeadError::ConnectionHeaderRejected,
    ];
    let mut reasons = BTreeSet::new();
    for error in all {
        assert_eq!(error.status(), 400);
        let reason = error.reason();
        assert!(
            reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{reason}"
        );
        assert_eq!(error.to_string(), reason);
        reasons.insert(reason);
    }
    assert_eq!(reasons.len(), all.len());
    assert_eq!(HeadError::MissingHost.reason(), "missing_host_header");
    assert_eq!(HeadError::DuplicateHost.reason(), "duplicate_host_header");
}
