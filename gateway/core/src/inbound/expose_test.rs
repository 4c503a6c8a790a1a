use super::*;
use crate::snapshot::Limits;

fn spec(expose: serde_json::Value) -> ListenerSpec {
    ListenerSpec {
        name: "expose:21500".into(),
        bind: "127.0.0.1:0".into(),
        kind: ListenerKind::Expose { expose },
        limits: Limits::default(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn cidr_matches_by_prefix() {
    let loopback = Cidr::parse("127.0.0.1/8").unwrap();
    assert!(loopback.contains(ip("127.3.2.1")));
    assert!(!loopback.contains(ip("128.0.0.1")));
    // An IPv4 caller on a dual-stack socket.
    assert!(loopback.contains(ip("::ffff:127.0.0.9")));
    let one = Cidr::parse("10.0.0.5").unwrap();
    assert!(one.contains(ip("10.0.0.5")) && !one.contains(ip("10.0.0.6")));
    let v6 = Cidr::parse("::1/128").unwrap();
    assert!(v6.contains(ip("::1")) && !v6.contains(ip("127.0.0.1")));
    let odd = Cidr::parse("10.0.0.0/12").unwrap();
    assert!(odd.contains(ip("10.15.255.255")) && !odd.contains(ip("10.16.0.0")));
    for bad in ["10.0.0.0/33", "::1/129", "x", "10.0.0.0/", "10.0.0.0/-1"] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn only_exact_paths_from_admitted_sources_route() {
    let plan = Plan::build(&spec(serde_json::json!({
        "app_address": "127.0.0.1",
        "paths": [
            {"path": "/health", "port": 8080},
            {"path": "/ready", "port": 8081, "sources": ["127.0.0.1/8", "::1"]},
        ],
    })))
    .unwrap();
    let lo = ip("127.0.0.1");
    let far = ip("192.0.2.7");
    assert_eq!(plan.route("/health", far).map(|r| r.port), Some(8080));
    assert!(plan.route("/health/", lo).is_none());
    assert!(plan.route("/Health", lo).is_none());
    assert!(plan.route("/health/../admin", lo).is_none());
    assert_eq!(plan.route("/ready", lo).map(|r| r.port), Some(8081));
    assert!(plan.route("/ready", far).is_none());
    assert!(plan.admits_peer(far), "/health admits any caller");
}

#[test]
fn a_caller_no_path_admits_gets_no_connection() {
    let plan = Plan::build(&spec(serde_json::json!({
        "protocol": "http2",
        "paths": [{"path": "/grpc.health.v1.Health/Check", "port": 9090, "sources": ["127.0.0.1/8"]}],
    })))
    .unwrap();
    assert!(plan.http2);
    assert!(plan.admits_peer(ip("127.0.0.1")));
    assert!(!plan.admits_peer(ip("10.1.2.3")));
}

#[test]
fn bad_sections_are_refused() {
    for bad in [
        serde_json::json!({"paths": [{"path": "health", "port": 1}]}),
        serde_json::json!({"paths": [{"path": "/h", "port": 1, "sources": ["nope"]}]}),
        serde_json::json!({"paths": [{"path": "/h", "port": 70000}]}),
        serde_json::json!({"protocol": "http3", "paths": []}),
        serde_json::json!({"colour": "red"}),
    ] {
        assert!(Plan::build(&spec(bad.clone())).is_err(), "{bad}");
    }
}
