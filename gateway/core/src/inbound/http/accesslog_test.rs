use super::*;

#[test]
fn iso_dates() {
    let t = UNIX_EPOCH + Duration::from_millis(1_796_584_724_123);
    assert_eq!(iso(t), "2026-12-06T19:18:44.123Z");
    assert_eq!(iso(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
    assert_eq!(iso(leap), "2000-02-29T00:00:00.000Z");
}

#[test]
fn record_has_the_fields_in_order_with_python_names() {
    let ex = Exchange {
        started: Some(Instant::now()),
        listener: "inbound".into(),
        method: "GET".into(),
        path: "/a?b".into(),
        version: "1.1",
        status: 403,
        flags: "RBAC",
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ..Exchange::default()
    };
    let fields: Vec<Field> = [
        "status",
        "response_flags",
        "trace_id",
        "upstream_cluster",
        "method",
    ]
    .iter()
    .filter_map(|n| Field::parse(n))
    .collect();
    assert_eq!(
        ex.record(&fields),
        r#"{"status":403,"response_flags":"RBAC","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","upstream_cluster":null,"method":"GET"}"#
    );
}

#[test]
fn defaults_are_all_known() {
    assert_eq!(Field::defaults().len(), DEFAULTS.len());
}
