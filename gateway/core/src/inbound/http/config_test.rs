use super::*;
use meshgw_proto::normalize::{EscapedSlashes, UnderscoreAction};
use serde_json::json;

#[test]
fn defaults_follow_envoy_under_consul() {
    let p = Policy::build(&serde_json::Value::Null, &Limits::default()).unwrap();
    assert_eq!(p.max_head_bytes, 60 * 1024);
    assert_eq!(p.max_headers, 100);
    assert_eq!(p.request_headers_timeout, None);
    assert_eq!(p.request_timeout, Some(Duration::from_secs(15)));
    assert_eq!(p.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert!(p.access_log.is_none());
    assert!(!p.normalization.insecure_disable_path_normalization);
}

#[test]
fn reads_every_key_and_consul_spelling_of_normalization() {
    let v = json!({
        "normalization": {"MergeSlashes": true, "PathWithEscapedSlashesAction": "REJECT_REQUEST",
                          "headers_with_underscores_action": "DROP_HEADER"},
        "max_request_headers_kb": 8, "max_headers": 10, "request_headers_timeout_ms": 100,
        "request_timeout_ms": 0, "stream_idle_timeout_ms": 5, "idle_timeout_ms": 7,
        "max_idle_app_connections": 2, "app_idle_timeout_ms": 9,
        "access_log": {"enabled": true, "fields": ["method", "status"]}
    });
    let p = Policy::build(&v, &Limits::default()).unwrap();
    assert!(p.normalization.merge_slashes);
    assert_eq!(
        p.normalization.path_with_escaped_slashes_action,
        EscapedSlashes::RejectRequest
    );
    assert_eq!(
        p.normalization.headers_with_underscores_action,
        UnderscoreAction::DropHeader
    );
    assert_eq!(p.max_head_bytes, 8192);
    assert_eq!(p.request_timeout, None);
    assert_eq!(p.access_log.unwrap().len(), 2);
}

#[test]
fn refuses_unknown_keys_fields_and_bad_enums() {
    for v in [
        json!({"nope": 1}),
        json!({"access_log": {"enabled": true, "fields": ["nope"]}}),
        json!({"normalization": {"PathWithEscapedSlashesAction": "X"}}),
        json!({"max_headers": 0}),
    ] {
        assert!(Policy::build(&v, &Limits::default()).is_err(), "{v}");
    }
}
