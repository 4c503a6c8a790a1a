use super::*;

#[test]
fn forwarding_headers() {
    let mut h = HeaderMap::new();
    h.insert("connection", "keep-alive, x-secret".parse().unwrap());
    h.insert("x-secret", "1".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
    h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
    h.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    h.insert("x-drop", "a".parse().unwrap());
    let rules = HeaderRules::compile(&HeaderRulesSpec {
        drop: vec!["X-Drop".into()],
        add: vec![("x-add".into(), "v".into())],
    })
    .unwrap();
    forward_request(&mut h, "127.0.0.1", &rules);
    assert!(h.get("connection").is_none() && h.get("x-secret").is_none());
    // `TE: trailers` is the one TE that goes on (RFC 9113 §8.2.2; Envoy since 1.29.3, http2-grpc.md §5.5).
    assert_eq!(h.get("te").unwrap(), "trailers");
    assert_eq!(
        h.get("x-forwarded-for").unwrap(),
        "1.1.1.1, 2.2.2.2, 127.0.0.1"
    );
    assert!(h.get("x-drop").is_none());
    assert_eq!(h.get("x-add").unwrap(), "v");
    let (id, tp) = (
        h.get("x-request-id").unwrap().to_str().unwrap(),
        h.get("traceparent").unwrap().to_str().unwrap(),
    );
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert!(tp.ends_with("-01"));
    assert_ne!(&tp[36..52], "b7ad6b7169203331");
    let mut h = HeaderMap::new();
    h.insert("te", "gzip".parse().unwrap());
    forward_request(&mut h, "::1", &HeaderRules::default());
    assert!(h.get("te").is_none(), "other codings are hop-by-hop");
    let mut h = HeaderMap::new();
    h.insert("x-request-id", "abc".parse().unwrap());
    forward_request(&mut h, "::1", &HeaderRules::default());
    assert_eq!(h.get("x-request-id").unwrap(), "abc");
    assert_eq!(h.get("x-forwarded-for").unwrap(), "::1");
    assert_eq!(h.get("traceparent").unwrap().len(), 55);
    // An empty id is replaced by a made one.
    let mut h = HeaderMap::new();
    h.insert("x-request-id", "".parse().unwrap());
    forward_request(&mut h, "::1", &HeaderRules::default());
    assert_eq!(h.get("x-request-id").unwrap().len(), 36);
}
