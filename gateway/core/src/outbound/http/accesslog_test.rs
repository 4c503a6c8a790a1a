use super::*;

#[test]
fn iso_dates() {
    assert_eq!(iso(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
    assert_eq!(iso(t), "2024-02-29T23:59:59.123Z");
}

#[test]
fn fields() {
    let r = Record {
        status: 503,
        flags: "UO",
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ..Record::default()
    };
    let line = render(
        &[
            "status".into(),
            "response_flags".into(),
            "trace_id".into(),
            "upstream_cluster".into(),
        ],
        &r,
        Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(
        line,
        r#"{"status":503,"response_flags":"UO","trace_id":"0af7651916cd43dd8448eb211c80319c","upstream_cluster":null}"#
    );
}
