use super::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------- fixture helpers (JSON as Python emits)

fn src(name: &str, ns: &str, peer: &str) -> Value {
    json!({"name": name, "namespace": ns, "peer": peer})
}

/// Precedence as consul.md §7.2 computes it (Python does this; the tests need it for the order).
fn precedence(sns: &str, sname: &str, dns: &str, dname: &str) -> u8 {
    let count = |ns: &str, name: &str| -> u8 {
        if ns == "*" {
            0
        } else if name == "*" {
            1
        } else {
            2
        }
    };
    [3, 6, 9][count(dns, dname) as usize] - (2 - count(sns, sname))
}

struct Ix {
    dns: &'static str,
    dname: &'static str,
    sns: &'static str,
    sname: &'static str,
    peer: &'static str,
    body: Value, // {"action": ..} or {"permissions": [..]}
}

fn ix(dname: &'static str, sname: &'static str, body: Value) -> Ix {
    Ix {
        dns: "default",
        dname,
        sns: "default",
        sname,
        peer: "",
        body,
    }
}

fn allow() -> Value {
    json!({"action": "allow"})
}

fn deny() -> Value {
    json!({"action": "deny"})
}

fn perms(p: &[(&str, Value)]) -> Value {
    json!({"permissions": p.iter().map(|(a, h)| json!({"action": a, "http": h})).collect::<Vec<_>>()})
}

/// Sorted like connect/intentions.py sort_key: precedence desc, then (SrcNS, Src, DstNS, Dst).
fn spec_of(dest: (&str, &str), default_allow: bool, ixs: Vec<Ix>) -> Value {
    let mut v: Vec<_> = ixs
        .into_iter()
        .filter(|i| (i.dns == "*" || i.dns == dest.0) && (i.dname == "*" || i.dname == dest.1))
        .map(|i| {
            let p = precedence(i.sns, i.sname, i.dns, i.dname);
            let key = (
                std::cmp::Reverse(p),
                i.sns.to_owned(),
                i.sname.to_owned(),
                i.dns.to_owned(),
                i.dname.to_owned(),
            );
            let mut o = json!({
                "source": src(i.sname, i.sns, i.peer),
                "destination": {"name": i.dname, "namespace": i.dns},
                "precedence": p,
            });
            for (k, val) in i.body.as_object().unwrap() {
                o[k] = val.clone();
            }
            (key, o)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    json!({
        "destination": {"name": dest.1, "namespace": dest.0},
        "default_allow": default_allow,
        "intentions": v.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
    })
}

fn table(default_allow: bool, ixs: Vec<Ix>) -> Table {
    Table::from_json(&spec_of(("default", "api"), default_allow, ixs).to_string()).unwrap()
}

fn l4<'t>(t: &'t Table, name: &str, ns: &str) -> &'t Decision {
    t.authorize_l4(&Source::new(name, ns))
}

fn http<'t>(
    t: &'t Table,
    name: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> &'t Decision {
    t.authorize_http(
        &Source::new(name, "default"),
        &Request {
            method,
            path,
            headers,
        },
    )
}

fn summary(d: &Decision) -> (bool, Option<&str>, Option<u8>) {
    (d.allowed, d.source.as_deref(), d.precedence)
}

// ---------------------------------------------------------------- L4 (tests/test_intentions.py L4_CASES)

#[test]
fn l4_cases() {
    #[rustfmt::skip]
        type Case = (&'static str, Vec<Ix>, bool, &'static str, &'static str, (bool, Option<&'static str>, Option<u8>));
    let nsx = |sns: &'static str, sname: &'static str, body: Value| Ix {
        sns,
        ..ix("api", sname, body)
    };
    let peer = |p: &'static str, sname: &'static str, body: Value| Ix {
        peer: p,
        ..ix("api", sname, body)
    };
    let l7all = || perms(&[("allow", json!({"path_prefix": "/"}))]);
    #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("exact-beats-wildcard-allow", vec![ix("api", "web", allow()), ix("api", "*", deny())], false, "web", "default", (true, Some("web"), Some(9))),
            ("wildcard-catches-rest", vec![ix("api", "web", allow()), ix("api", "*", deny())], true, "db", "default", (false, Some("*"), Some(8))),
            ("exact-deny-beats-wildcard", vec![ix("api", "web", deny()), ix("api", "*", allow())], false, "web", "default", (false, Some("web"), Some(9))),
            ("no-entries-deny", vec![], false, "web", "default", (false, None, None)),
            ("no-entries-allow", vec![], true, "web", "default", (true, None, None)),
            ("other-destination-ignored", vec![ix("db", "web", allow())], false, "web", "default", (false, None, None)),
            ("wildcard-dest-exact-source", vec![ix("*", "web", deny())], true, "web", "default", (false, Some("web"), Some(6))),
            ("wildcard-dest-no-match", vec![ix("*", "web", deny())], true, "db", "default", (true, None, None)),
            ("wildcard-dest-wildcard-source", vec![ix("*", "*", allow())], false, "db", "default", (true, Some("*"), Some(5))),
            ("dest-exact-wins-over-source-exact", vec![ix("*", "web", deny()), ix("api", "*", allow())], false, "web", "default", (true, Some("*"), Some(8))),
            ("exact-both-beats-all", vec![ix("*", "*", allow()), ix("api", "web", deny())], true, "web", "default", (false, Some("web"), Some(9))),
            ("exact-dest-beats-exact-source-on-wild", vec![ix("*", "web", allow()), ix("api", "web", deny())], true, "web", "default", (false, Some("web"), Some(9))),
            ("l7-on-l4-is-deny", vec![ix("api", "web", l7all()), ix("api", "*", allow())], true, "web", "default", (false, Some("web"), Some(9))),
            ("l7-other-source-unaffected", vec![ix("api", "web", l7all()), ix("api", "*", allow())], false, "db", "default", (true, Some("*"), Some(8))),
            ("namespace-not-default", vec![ix("api", "web", allow())], false, "web", "team", (false, None, None)),
            ("namespace-explicit", vec![nsx("team", "web", allow())], false, "web", "team", (true, Some("team/web"), Some(9))),
            ("namespace-wildcard-source", vec![nsx("*", "*", allow())], false, "web", "team", (true, Some("*/*"), Some(7))),
            ("namespace-star-name", vec![nsx("team", "*", allow()), nsx("*", "*", deny())], true, "x", "team", (true, Some("team/*"), Some(8))),
            ("namespace-star-name-miss", vec![nsx("team", "*", allow()), nsx("*", "*", deny())], true, "x", "prod", (false, Some("*/*"), Some(7))),
            ("peer-source-not-local", vec![peer("p1", "web", allow())], false, "web", "default", (false, None, None)),
            ("local-wildcard-not-peer", vec![ix("api", "*", allow())], false, "web", "default", (true, Some("*"), Some(8))),
        ];
    for (id, ixs, default_allow, name, ns, expected) in cases {
        let t = table(default_allow, ixs);
        let d = l4(&t, name, ns);
        assert_eq!(summary(d), expected, "{id}: {d:?}");
        assert!(!d.reason.is_empty(), "{id}");
    }
}

#[test]
fn rbac_go_example() {
    // C:agent/xds/rbac.go makeRBACRules comment: 9 / 8 / 7, then the default deny.
    let mk = |sns: &'static str, sname: &'static str, body: Value| Ix {
        dns: "billing",
        dname: "payment-svc",
        sns,
        sname,
        peer: "",
        body,
    };
    let ixs = || {
        vec![
            mk("*", "*", allow()),
            mk("intern", "*", deny()),
            mk("intern", "trusted-app", allow()),
        ]
    };
    let spec = spec_of(("billing", "payment-svc"), false, ixs());
    let t = Table::from_json(&spec.to_string()).unwrap();
    for (name, ns, allowed, prec) in [
        ("trusted-app", "intern", true, 9),
        ("other-app", "intern", false, 8),
        ("anything", "elsewhere", true, 7),
        ("trusted-app", "default", true, 7),
    ] {
        let d = l4(&t, name, ns);
        assert_eq!(
            (d.allowed, d.precedence),
            (allowed, Some(prec)),
            "{name} {ns}"
        );
    }
    let other =
        Table::from_json(&spec_of(("billing", "ledger"), false, ixs()).to_string()).unwrap();
    assert_eq!(
        l4(&other, "trusted-app", "intern"),
        &Decision {
            allowed: false,
            reason: "default policy deny".into(),
            source: None,
            precedence: None
        }
    );
    assert_eq!(t.destination(), "billing/payment-svc");
}

#[test]
fn l4_reasons() {
    let t = table(
        false,
        vec![
            ix("api", "web", allow()),
            ix(
                "api",
                "db",
                perms(&[("allow", json!({"path_prefix": "/"}))]),
            ),
        ],
    );
    assert_eq!(
        l4(&t, "web", "default").reason,
        "intention web => api (allow)"
    );
    assert_eq!(
        l4(&t, "db", "default").reason,
        "intention db => api has L7 permissions, denied on a TCP listener"
    );
    assert_eq!(l4(&t, "x", "default").reason, "default policy deny");
}

#[test]
fn peered_sources() {
    let p = |sname: &'static str, body: Value| Ix {
        peer: "p1",
        ..ix("api", sname, body)
    };
    let t = table(
        false,
        vec![p("web", allow()), p("*", deny()), ix("api", "*", allow())],
    );
    let peer = |name: &'static str, peer: &'static str| Source {
        name,
        namespace: "default",
        partition: "default",
        peer,
    };
    assert!(t.authorize_l4(&peer("web", "p1")).allowed);
    assert_eq!(
        t.authorize_l4(&peer("web", "p1")).source.as_deref(),
        Some("peer:p1/web")
    );
    assert!(!t.authorize_l4(&peer("db", "p1")).allowed);
    assert!(t.authorize_l4(&peer("db", "")).allowed);
    let d = t.authorize_l4(&peer("db", "p2"));
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "default policy deny")
    );
}

#[test]
fn decisions_are_shared() {
    let t = table(
        false,
        vec![
            ix("api", "web", allow()),
            Ix {
                sns: "team",
                ..ix("api", "*", deny())
            },
        ],
    );
    assert!(std::ptr::eq(
        l4(&t, "web", "default"),
        l4(&t, "web", "default")
    ));
    assert!(std::ptr::eq(l4(&t, "a", "default"), l4(&t, "b", "default")));
    assert!(std::ptr::eq(l4(&t, "a", "team"), l4(&t, "b", "team")));
    assert!(std::ptr::eq(
        http(&t, "web", "GET", "/", &[]),
        l4(&t, "web", "default")
    ));
    // Empty namespace and partition mean default.
    let s = Source {
        name: "web",
        namespace: "",
        partition: "",
        peer: "",
    };
    assert!(std::ptr::eq(t.authorize_l4(&s), l4(&t, "web", "default")));
    assert_eq!(t.decide_l4(&s), t.decide_l4(&Source::new("web", "default")));
}

#[test]
fn partition_is_a_scope() {
    let spec = json!({
        "destination": {"name": "api"},
        "intentions": [
            {"source": {"name": "web"}, "destination": {"name": "api"}, "precedence": 9, "action": "allow"},
        ],
    });
    let t = Table::from_json(&spec.to_string()).unwrap();
    assert!(t.authorize_l4(&Source::new("web", "")).allowed);
    let other = Source {
        partition: "ap1",
        ..Source::new("web", "")
    };
    assert!(!t.authorize_l4(&other).allowed);
}

// ---------------------------------------------------------------- L7 (tests/test_intentions.py L7_CASES)

fn doc_example() -> Vec<Ix> {
    vec![
        ix(
            "api",
            "web",
            perms(&[
                ("deny", json!({"path_exact": "/v2/admin"})),
                ("allow", json!({"path_prefix": "/v2/"})),
                (
                    "allow",
                    json!({"path_exact": "/healthz", "methods": ["GET"]}),
                ),
            ]),
        ),
        ix("api", "*", deny()),
    ]
}

#[test]
fn l7_cases() {
    #[rustfmt::skip]
        type Case = (&'static str, Vec<Ix>, bool, (&'static str, &'static str, &'static str, Vec<(&'static str, &'static [u8])>), bool, &'static str);
    let one = |h: Value| vec![ix("api", "web", perms(&[("allow", h)]))];
    #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("doc-deny-admin", doc_example(), false, ("web", "GET", "/v2/admin", vec![]), false, "permission[0] (deny)"),
            ("doc-deny-admin-query", doc_example(), true, ("web", "GET", "/v2/admin?x=1", vec![]), false, "permission[0]"),
            ("doc-allow-v2", doc_example(), false, ("web", "POST", "/v2/users", vec![]), true, "permission[1] (allow)"),
            ("doc-admin-subpath", doc_example(), false, ("web", "GET", "/v2/admin/x", vec![]), true, "permission[1]"),
            ("doc-healthz-get", doc_example(), false, ("web", "GET", "/healthz", vec![]), true, "permission[2] (allow)"),
            ("doc-healthz-post", doc_example(), false, ("web", "POST", "/healthz", vec![]), false, "no permission matched"),
            ("doc-no-match-deny", doc_example(), false, ("web", "GET", "/v1/x", vec![]), false, "default policy deny"),
            ("doc-no-match-allow", doc_example(), true, ("web", "GET", "/v1/x", vec![]), true, "default policy allow"),
            ("doc-other-source", doc_example(), true, ("db", "GET", "/v2/x", vec![]), false, "intention * => api (deny)"),
            ("l4-intention-on-http", vec![ix("api", "web", allow())], false, ("web", "DELETE", "/x", vec![]), true, "web => api"),
            ("path-regex-full-match", one(json!({"path_regex": "/users/[0-9]+"})), false, ("web", "GET", "/users/42", vec![]), true, "permission[0]"),
            ("path-regex-not-partial", one(json!({"path_regex": "/users/[0-9]+"})), false, ("web", "GET", "/users/42/x", vec![]), false, "no permission matched"),
            ("path-exact-not-prefix", one(json!({"path_exact": "/a"})), false, ("web", "GET", "/a/b", vec![]), false, "no permission matched"),
            ("methods-only", vec![ix("api", "web", perms(&[("deny", json!({"methods": ["DELETE", "PUT"]})), ("allow", json!({"path_prefix": "/"}))]))], false, ("web", "PUT", "/x", vec![]), false, "permission[0] (deny)"),
            ("methods-only-other", vec![ix("api", "web", perms(&[("deny", json!({"methods": ["DELETE", "PUT"]})), ("allow", json!({"path_prefix": "/"}))]))], false, ("web", "GET", "/x", vec![]), true, "permission[1] (allow)"),
            ("all-parts-anded", one(json!({"path_prefix": "/a", "methods": ["GET"], "headers": [{"name": "x-env", "exact": "prod"}]})), false, ("web", "GET", "/a", vec![("x-env", b"dev")]), false, "no permission matched"),
            ("fragment-cut", one(json!({"path_exact": "/a"})), false, ("web", "POST", "/a#frag", vec![]), true, "permission[0]"),
            ("method-case", one(json!({"path_prefix": "/api", "methods": ["GET"]})), false, ("web", "get", "/api/x", vec![]), false, "no permission matched"),
            ("query-not-path", one(json!({"path_prefix": "/api"})), false, ("web", "GET", "/other?/api", vec![]), false, "no permission matched"),
            ("methods-with-empty-path", one(json!({"methods": ["GET"]})), false, ("web", "GET", "?weird", vec![]), true, "permission[0]"),
        ];
    for (id, ixs, default_allow, (name, method, path, headers), allowed, reason) in cases {
        let t = table(default_allow, ixs);
        let d = http(&t, name, method, path, &headers);
        assert_eq!(d.allowed, allowed, "{id}: {d:?}");
        assert!(d.reason.contains(reason), "{id}: {d:?}");
    }
}

/// (header permission, request headers, matches): tests/test_intentions.py HEADER_CASES plus the spec's.
#[test]
fn header_cases() {
    type H = &'static [(&'static str, &'static [u8])];
    #[rustfmt::skip]
        let cases: Vec<(&str, Value, H, bool)> = vec![
            ("present-yes", json!({"name": "X-Debug", "present": true}), &[("x-debug", b"")], true),
            ("present-no", json!({"name": "X-Debug", "present": true}), &[], false),
            ("present-invert-missing", json!({"name": "X-Debug", "present": true, "invert": true}), &[], true),
            ("present-invert-present", json!({"name": "X-Debug", "present": true, "invert": true}), &[("x-debug", b"1")], false),
            ("exact-yes", json!({"name": "x-env", "exact": "prod"}), &[("x-env", b"prod")], true),
            ("exact-case-sensitive-value", json!({"name": "x-env", "exact": "prod"}), &[("x-env", b"Prod")], false),
            ("exact-missing", json!({"name": "x-env", "exact": "prod"}), &[], false),
            ("exact-invert-other", json!({"name": "x-env", "exact": "prod", "invert": true}), &[("x-env", b"dev")], true),
            ("exact-invert-same", json!({"name": "x-env", "exact": "prod", "invert": true}), &[("x-env", b"prod")], false),
            ("exact-invert-missing", json!({"name": "x-env", "exact": "prod", "invert": true}), &[], false),
            ("prefix-yes", json!({"name": "user-agent", "prefix": "curl/"}), &[("user-agent", b"curl/8.0")], true),
            ("prefix-no", json!({"name": "user-agent", "prefix": "curl/"}), &[("user-agent", b"wget")], false),
            ("prefix-invert", json!({"name": "user-agent", "prefix": "curl/", "invert": true}), &[("user-agent", b"wget")], true),
            ("suffix-yes", json!({"name": "host", "suffix": ".internal"}), &[("host", b"api.internal")], true),
            ("suffix-no", json!({"name": "host", "suffix": ".internal"}), &[("host", b"api.example")], false),
            ("suffix-invert", json!({"name": "host", "suffix": ".internal", "invert": true}), &[("host", b"api.example")], true),
            ("regex-full", json!({"name": "x-v", "regex": "v[0-9]+"}), &[("x-v", b"v12")], true),
            ("regex-not-partial", json!({"name": "x-v", "regex": "v[0-9]+"}), &[("x-v", b"v12-beta")], false),
            ("regex-invert", json!({"name": "x-v", "regex": "v[0-9]+", "invert": true}), &[("x-v", b"beta")], true),
            ("regex-invert-missing", json!({"name": "x-v", "regex": "v[0-9]+", "invert": true}), &[], false),
            // Added by the spec (l7-security.md §2.1, §2.3, §6 items 9-10).
            ("contains-yes", json!({"name": "x-role", "contains": "adm"}), &[("x-role", b"sysadmin")], true),
            ("contains-no", json!({"name": "x-role", "contains": "adm"}), &[("x-role", b"user")], false),
            ("contains-case", json!({"name": "x-role", "contains": "adm"}), &[("x-role", b"ADMIN")], false),
            ("contains-missing-invert", json!({"name": "x-role", "contains": "adm", "invert": true}), &[], false),
            ("contains-joined", json!({"name": "x-role", "contains": "admin"}), &[("x-role", b"user"), ("x-role", b"admin")], true),
            ("exact-joined", json!({"name": "x-role", "exact": "user,admin"}), &[("x-role", b"user"), ("x-role", b"admin")], true),
            ("ic-exact", json!({"name": "x-role", "exact": "admin", "ignore_case": true}), &[("x-role", b"AdMiN")], true),
            ("ic-exact-other", json!({"name": "x-role", "exact": "admin", "ignore_case": true}), &[("x-role", b"admins")], false),
            ("ic-prefix", json!({"name": "x-role", "prefix": "ad", "ignore_case": true}), &[("x-role", b"ADMIN")], true),
            ("ic-suffix", json!({"name": "x-role", "suffix": "MIN", "ignore_case": true}), &[("x-role", b"admin")], true),
            ("ic-contains", json!({"name": "x-role", "contains": "DM", "ignore_case": true}), &[("x-role", b"admin")], true),
            ("ic-invert", json!({"name": "x-role", "exact": "admin", "ignore_case": true, "invert": true}), &[("x-role", b"ADMIN")], false),
            // IgnoreCase does not apply to Regex (rbac.go) nor to Present.
            ("ic-regex-ignored", json!({"name": "x-role", "regex": "admin", "ignore_case": true}), &[("x-role", b"ADMIN")], false),
            ("ic-regex-inline", json!({"name": "x-role", "regex": "(?i)admin"}), &[("x-role", b"ADMIN")], true),
            ("ic-present", json!({"name": "x-role", "present": true, "ignore_case": true}), &[("x-role", b"x")], true),
            ("name-case", json!({"name": "X-ROLE", "exact": "a"}), &[("x-role", b"a")], true),
        ];
    for (id, h, headers, expected) in cases {
        let t = table(
            false,
            vec![ix(
                "api",
                "web",
                perms(&[("allow", json!({"headers": [h]}))]),
            )],
        );
        assert!(t.problem().is_none(), "{id}: {:?}", t.problem());
        let d = http(&t, "web", "GET", "/", headers);
        assert_eq!(d.allowed, expected, "{id}: {d:?}");
    }
}

#[test]
fn header_names_listed_once() {
    let t = table(
        false,
        vec![ix(
            "api",
            "web",
            perms(&[
                (
                    "allow",
                    json!({"headers": [{"name": "X-A", "present": true}, {"name": "x-b", "present": true}]}),
                ),
                ("allow", json!({"headers": [{"name": "x-a", "exact": "1"}]})),
            ]),
        )],
    );
    assert_eq!(t.header_names(), ["x-a", "x-b"]);
}

// ---------------------------------------------------------------- l7-security.md §7 vectors

/// Destination api; source web: P0 deny PathPrefix /admin; P1 allow PathExact /reports PUT X-Role Exact
/// admin; P2 allow PathPrefix / GET, POST. Default deny.
fn fixture(p1_header: Value) -> Table {
    table(
        false,
        vec![ix(
            "api",
            "web",
            perms(&[
                ("deny", json!({"path_prefix": "/admin"})),
                (
                    "allow",
                    json!({"path_exact": "/reports", "methods": ["PUT"], "headers": [p1_header]}),
                ),
                (
                    "allow",
                    json!({"path_prefix": "/", "methods": ["GET", "POST"]}),
                ),
            ]),
        )],
    )
}

#[test]
fn spec_section7_vectors() {
    let t = fixture(json!({"name": "X-Role", "exact": "admin"}));
    // (#, method, normalized path as the pipeline hands it over, headers, allowed, deciding permission).
    // #12, #14, #19, #20 are answered (400/426) before intentions run: normalize.rs and http_head.rs.
    #[rustfmt::skip]
        type V = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static [u8])], bool, &'static str);
    #[rustfmt::skip]
        let vectors: Vec<V> = vec![
            ("1", "GET", "/admin", &[], false, "permission[0] (deny)"),
            ("2", "GET", "/admin", &[], false, "permission[0]"), // /api/../admin
            ("3", "GET", "/admin", &[], false, "permission[0]"), // /./admin
            ("4", "GET", "/admin", &[], false, "permission[0]"), // /x/%2E%2e/admin
            ("5", "GET", "/admin", &[], false, "permission[0]"), // /%61dmin
            ("6", "GET", "/admin", &[], false, "permission[0]"), // /a/..\admin
            ("7", "GET", "//admin", &[], true, "permission[2] (allow)"),
            ("7-merge", "GET", "/admin", &[], false, "permission[0]"),
            ("8", "GET", "/x%2f..%2fadmin", &[], true, "permission[2]"),
            ("8-forward", "GET", "/admin", &[], false, "permission[0]"),
            ("9", "GET", "/admin%2Fx", &[], false, "permission[0]"),
            ("10", "GET", "/ADMIN", &[], true, "permission[2]"),
            ("11a", "GET", "/admin?debug=1", &[], false, "permission[0]"),
            ("11b", "GET", "/ok?next=/admin", &[], true, "permission[2]"),
            ("13", "GET", "/admin", &[], false, "permission[0]"), // /x/..;p/admin with the 2026 fix
            ("13-old", "GET", "/x/..;p/admin", &[], true, "permission[2]"),
            ("15", "PUT", "/reports", &[("x-role", b"Admin")], false, "no permission matched"),
            ("15-ok", "PUT", "/reports", &[("x-role", b"admin")], true, "permission[1] (allow)"),
            ("16", "PUT", "/reports", &[("x-role", b"user"), ("x-role", b"admin")], false, "no permission matched"),
            ("17", "HEAD", "/ok", &[], false, "no permission matched"),
            ("18", "GET", "/admin", &[("host", b"evil.example")], false, "permission[0]"),
            ("ok", "GET", "/ok", &[], true, "permission[2]"),
            ("admin-params", "GET", "/admin;x", &[], false, "permission[0]"),
        ];
    for (id, method, path, headers, allowed, reason) in vectors {
        let d = http(&t, "web", method, path, headers);
        assert_eq!(d.allowed, allowed, "#{id}: {d:?}");
        assert!(d.reason.contains(reason), "#{id}: {d:?}");
        assert_eq!(d.source.as_deref(), Some("web"), "#{id}");
    }
    // Extra: another SVID, GET /ok → default deny.
    let d = http(&t, "other", "GET", "/ok", &[]);
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "default policy deny")
    );
    // #16 with Contains "admin" → forwarded (l7-security.md §2.3).
    let c = fixture(json!({"name": "X-Role", "contains": "admin"}));
    let two: &[(&str, &[u8])] = &[("x-role", b"user"), ("x-role", b"admin")];
    let d = http(&c, "web", "PUT", "/reports", two);
    assert!(d.allowed && d.reason.contains("permission[1]"), "{d:?}");
    // #15 with IgnoreCase → forwarded.
    let ic = fixture(json!({"name": "X-Role", "exact": "admin", "ignore_case": true}));
    let d = http(&ic, "web", "PUT", "/reports", &[("x-role", b"Admin")]);
    assert!(d.allowed && d.reason.contains("permission[1]"), "{d:?}");
}

// ---------------------------------------------------------------- fail closed

#[test]
fn bad_regex_fails_closed_only_for_its_table() {
    let bad = table(
        true,
        vec![
            ix(
                "api",
                "web",
                perms(&[("allow", json!({"path_regex": "(?=lookahead)"}))]),
            ),
            ix("api", "*", allow()),
        ],
    );
    let problem = bad.problem().unwrap();
    assert!(
        problem.contains(
            "intention web => api permission[0]: PathRegex \"(?=lookahead)\" does not compile: "
        ),
        "{problem}"
    );
    assert!(!problem.contains('\n'));
    for d in [
        l4(&bad, "db", "default"),
        http(&bad, "web", "GET", "/", &[]),
        http(&bad, "db", "GET", "/", &[]),
    ] {
        assert!(!d.allowed);
        assert!(
            d.reason
                .starts_with("intentions for api could not be compiled, every caller is denied: "),
            "{d:?}"
        );
        assert_eq!((d.source.as_ref(), d.precedence), (None, None));
    }
    // The same intentions for another destination compile and decide normally.
    let good = table(
        true,
        vec![ix(
            "api",
            "web",
            perms(&[("allow", json!({"path_regex": "/ok"}))]),
        )],
    );
    assert!(good.problem().is_none());
    assert!(http(&good, "web", "GET", "/ok", &[]).allowed);
    let header_bad = table(
        true,
        vec![ix(
            "api",
            "web",
            perms(&[("allow", json!({"headers": [{"name": "x", "regex": "("}]}))]),
        )],
    );
    assert!(header_bad
        .problem()
        .unwrap()
        .contains("header \"x\" Regex \"(\""));
}

#[test]
fn malformed_specs_fail_closed() {
    let base = |intention: Value| {
        json!({"destination": {"name": "api"}, "default_allow": true, "intentions": [intention]})
            .to_string()
    };
    let s = json!({"name": "web"});
    let d = json!({"name": "api"});
    for (spec, needle) in [
            (base(json!({"source": s, "destination": d, "precedence": 9})), "neither an action nor permissions"),
            (base(json!({"source": s, "destination": d, "action": "allow", "permissions": [{"action": "allow", "http": {}}]})), "both"),
            (base(json!({"source": s, "destination": d, "permissions": [{"action": "allow", "http": {"headers": [{"name": "x"}]}}]})), "sets none"),
            (base(json!({"source": s, "destination": d, "permissions": [{"action": "allow", "http": {"headers": [{"name": "x", "exact": "a", "contains": "b"}]}}]})), "sets Exact and Contains (expected exactly one of Present, Exact, Prefix, Suffix, Contains, Regex)"),
            (base(json!({"source": s, "destination": d, "permissions": [{"action": "allow", "http": {"headers": [{"name": "", "present": true}]}}]})), "without a name"),
            (base(json!({"source": s, "destination": d, "permissions": [{"action": "allow", "http": {"path_exact": "/a", "path_prefix": "/a"}}]})), "more than one of"),
            (base(json!({"source": {"name": ""}, "destination": d, "action": "allow"})), "without a name"),
        ] {
            let t = Table::from_json(&spec).unwrap();
            let p = t.problem().unwrap_or_default();
            assert!(p.contains(needle), "{p}");
            assert!(!t.authorize_l4(&Source::new("web", "")).allowed);
        }
    // Not a TableSpec at all: an error for the caller (the emitter's bug), not a panic.
    for bad in [
        "",
        "[]",
        "{}",
        r#"{"destination": {"name": "api"}, "bogus": 1}"#,
        r#"{"destination": {"name": "api"}, "intentions": [{"source": {"name": "w"}, "destination": {"name": "api"}, "action": "permit"}]}"#,
        r#"{"destination": {"name": "api"}, "intentions": [{"source": {"name": "w"}, "destination": {"name": "api"}, "precedence": 300, "action": "allow"}]}"#,
    ] {
        assert!(Table::from_json(bad).is_err(), "{bad}");
    }
}

#[test]
fn empty_http_matches_everything() {
    let t = table(
        false,
        vec![ix(
            "api",
            "web",
            perms(&[("allow", json!({"path_exact": "", "methods": []}))]),
        )],
    );
    assert!(t.problem().is_none());
    assert!(http(&t, "web", "DELETE", "/anything", &[]).allowed);
}

// ---------------------------------------------------------------- property: table == naive scan

/// A tiny deterministic generator (no extra dependency): the same shape as the Python property test.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

#[test]
fn table_matches_naive_scan() {
    let sources = [
        ("", "default", "web"),
        ("", "default", "*"),
        ("", "team", "web"),
        ("", "team", "*"),
        ("", "*", "*"),
        ("p1", "default", "web"),
        ("p1", "*", "*"),
        ("p1", "default", "*"),
    ];
    let dests = [("default", "api"), ("default", "*"), ("*", "*")];
    let callers = [
        ("", "default", "web"),
        ("", "team", "web"),
        ("", "other", "db"),
        ("p1", "default", "web"),
        ("p1", "team", "x"),
        ("p2", "default", "web"),
    ];
    let mut rng = Lcg(7);
    for _ in 0..300 {
        let mut ixs = Vec::new();
        for &(dns, dname) in &dests {
            for &(peer, sns, sname) in &sources {
                if rng.next(2) == 0 {
                    continue;
                }
                let body = if dname != "*" && dns != "*" && rng.next(2) == 0 {
                    perms(&[
                        ("allow", json!({"methods": ["GET"]})),
                        ("deny", json!({"path_prefix": "/a"})),
                    ])
                } else if rng.next(2) == 0 {
                    allow()
                } else {
                    deny()
                };
                ixs.push(Ix {
                    dns,
                    dname,
                    sns,
                    sname,
                    peer,
                    body,
                });
            }
        }
        let default_allow = rng.next(2) == 0;
        let spec = spec_of(("default", "api"), default_allow, ixs);
        let t = Table::from_json(&spec.to_string()).unwrap();
        let list = spec["intentions"].as_array().unwrap();
        for &(peer, ns, name) in &callers {
            let found = list.iter().find(|i| {
                let s = &i["source"];
                s["peer"] == peer
                    && (s["namespace"] == "*" || s["namespace"] == ns)
                    && (s["name"] == "*" || s["name"] == name)
            });
            let src = Source {
                name,
                namespace: ns,
                partition: "default",
                peer,
            };
            let got = t.authorize_l4(&src);
            let want = match found {
                None => (default_allow, None),
                Some(i) => (i["action"] == "allow", i["precedence"].as_u64()),
            };
            assert_eq!(
                (got.allowed, got.precedence.map(u64::from)),
                want,
                "{spec} {src:?}"
            );
            let req = Request {
                method: "GET",
                path: "/b",
                headers: &[],
            };
            let got = t.authorize_http(&src, &req);
            let want = match found {
                None => default_allow,
                Some(i) if i.get("permissions").is_some() => true,
                Some(i) => i["action"] == "allow",
            };
            assert_eq!(got.allowed, want, "{spec} {src:?}");
        }
    }
}
