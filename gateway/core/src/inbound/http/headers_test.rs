use super::*;
use meshgw_proto::http_head::check_request_headers;
use meshgw_proto::normalize::UnderscoreAction;

fn sent(h: &[(&str, &str)], authority: Option<&str>) -> Sent {
    let raw: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let v = check_request_headers(&raw, UnderscoreAction::DropHeader).unwrap();
    let ws = is_websocket(raw.iter().copied());
    // The fields as hyper hands them over, beside the list: the request must come out the same either way.
    let fields: Vec<Option<(HeaderName, HeaderValue)>> = h
        .iter()
        .map(|(n, v)| {
            let n = HeaderName::from_bytes(n.as_bytes()).ok()?;
            Some((n, HeaderValue::from_str(v).ok()?))
        })
        .collect();
    let typed: Vec<Typed<'_>> = fields
        .iter()
        .map(|f| f.as_ref().map(|(n, v)| (n, v)))
        .collect();
    let parsed = request(&raw, &[], &v, authority, "10.0.0.9", ws);
    let reused = request(&raw, &typed, &v, authority, "10.0.0.9", ws);
    let fixed = |s: &Sent| -> Vec<(String, Vec<u8>)> {
        s.headers
            .iter()
            .filter(|(n, _)| *n != "x-request-id" && *n != "traceparent")
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    };
    assert_eq!(fixed(&parsed), fixed(&reused));
    reused
}

fn get<'a>(s: &'a Sent, n: &str) -> Vec<&'a str> {
    s.headers
        .get_all(n)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn hop_by_hop_and_nominations_go_framing_stays() {
    let s = sent(
        &[
            ("host", "api"),
            ("connection", "content-length, x-secret, keep-alive"),
            ("content-length", "5"),
            ("x-secret", "s"),
            ("keep-alive", "1"),
            ("proxy-authorization", "p"),
            ("expect", "100-continue"),
            ("x_user", "u"),
        ],
        None,
    );
    assert_eq!(get(&s, "content-length"), ["5"]);
    assert_eq!(get(&s, "host"), ["api"]);
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "expect",
        "x_user",
    ] {
        assert!(get(&s, gone).is_empty(), "{gone}");
    }
}

#[test]
fn forwarding_headers() {
    let s = sent(
        &[
            ("host", "api"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("forwarded", "for=1.1.1.1"),
            ("x-request-id", "abc"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        Some("evil.example"),
    );
    assert_eq!(get(&s, "x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 10.0.0.9"]);
    assert_eq!(get(&s, "forwarded"), ["for=1.1.1.1, for=10.0.0.9"]);
    assert_eq!(get(&s, "x-request-id"), ["abc"]);
    assert_eq!(s.request_id(), "abc");
    assert_eq!(s.traceparent(), get(&s, "traceparent")[0]);
    assert_eq!(get(&s, "host"), ["evil.example"]);
    let tp = get(&s, "traceparent")[0];
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"));
    assert!(!tp.contains("00f067aa0ba902b7"));
}

#[test]
fn made_ids_are_well_formed() {
    let s = sent(&[("host", "api")], None);
    let id = get(&s, "x-request-id")[0];
    assert_eq!(id.len(), 36);
    assert_eq!(s.request_id(), id);
    // An empty id is relayed as it is, and the access log names the one made beside it.
    let s = sent(&[("host", "api"), ("x-request-id", "")], None);
    assert_eq!(get(&s, "x-request-id").len(), 2);
    assert_eq!(s.request_id().len(), 36);
    assert_eq!(id.as_bytes()[14], b'4');
    assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
    let tp = s.traceparent();
    let tp: Vec<&str> = tp.split('-').collect();
    assert_eq!(
        (tp[0], tp[1].len(), tp[2].len(), tp[3]),
        ("00", 32, 16, "01")
    );
    assert_ne!(
        new_traceparent(Some(b"garbage")),
        new_traceparent(Some(b"garbage"))
    );
}

#[test]
fn websocket_keeps_upgrade() {
    let s = sent(
        &[
            ("host", "api"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ],
        None,
    );
    assert_eq!(get(&s, "upgrade"), ["websocket"]);
    assert_eq!(get(&s, "connection"), ["upgrade"]);
    let s = sent(
        &[
            ("host", "api"),
            ("connection", "Upgrade"),
            ("upgrade", "h2c"),
        ],
        None,
    );
    assert!(get(&s, "upgrade").is_empty() && get(&s, "connection").is_empty());
}

#[test]
fn response_hop_by_hop() {
    let mut h = HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_static("x-a, content-length"),
    );
    h.insert("x-a", HeaderValue::from_static("1"));
    h.insert("content-length", HeaderValue::from_static("3"));
    h.insert("keep-alive", HeaderValue::from_static("t"));
    response(&mut h, false);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("content-length"));
    let mut h = HeaderMap::new();
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    h.insert("content-length", HeaderValue::from_static("3"));
    response(&mut h, false);
    assert!(h.is_empty());
    let mut h = HeaderMap::new();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    response(&mut h, true);
    assert_eq!(h.get("connection").unwrap(), "upgrade");
    assert_eq!(h.get("upgrade").unwrap(), "websocket");
}

#[test]
fn te_trailers_alone_goes_on_other_codings_do_not() {
    // gRPC's `te: trailers` reaches the app (RFC 9113 §8.2.2; the app may refuse a call without it).
    let s = sent(&[("host", "api"), ("te", "trailers")], None);
    assert_eq!(get(&s, "te"), ["trailers"]);
    let s = sent(&[("host", "api"), ("te", "gzip, trailers")], None);
    assert_eq!(get(&s, "te"), ["trailers"]);
    let s = sent(&[("host", "api"), ("te", "gzip")], None);
    assert!(get(&s, "te").is_empty());
}
