//! Fuzz `meshgw_proto::intentions` (and the matchers under it): no input may panic, compile errors fail closed,
//! and every answer is one of the table's precomputed decisions.
//!
//! Input: `SPEC \0 REQUEST`. If SPEC parses as a TableSpec (JSON) it is the table; otherwise a fixed table (the
//! l7-security.md §7 fixture plus one permission per header matcher kind) is used, with the first line of
//! SPEC as the matchers' value, so arbitrary strings go through regex compilation and every string matcher.
//! REQUEST: first line the method, second the path, then `name:value` header lines (value: any bytes).
//! Also checked: passing only the headers the table reads (what the PyO3 glue does) gives the same decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::intentions::{
    Action, HeaderSpec, HttpSpec, IntentionSpec, PermissionSpec, Request, ServiceSpec, Source,
    SourceSpec, Table, TableSpec,
};

fn service(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        namespace: "default".to_owned(),
    }
}

fn source(name: &str) -> SourceSpec {
    SourceSpec {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        partition: "default".to_owned(),
        peer: String::new(),
    }
}

fn permission(action: Action, http: HttpSpec) -> PermissionSpec {
    PermissionSpec { action, http }
}

fn fixed_table(value: &str) -> Table {
    let v = Some(value.to_owned());
    let mut permissions = vec![
        permission(
            Action::Deny,
            HttpSpec {
                path_prefix: Some("/admin".into()),
                ..HttpSpec::default()
            },
        ),
        permission(
            Action::Allow,
            HttpSpec {
                path_exact: Some("/reports".into()),
                methods: vec!["PUT".into()],
                headers: vec![HeaderSpec {
                    name: "X-Role".into(),
                    exact: Some("admin".into()),
                    ..HeaderSpec::default()
                }],
                ..HttpSpec::default()
            },
        ),
        permission(
            Action::Deny,
            HttpSpec {
                path_regex: v.clone(),
                ..HttpSpec::default()
            },
        ),
        permission(
            Action::Allow,
            HttpSpec {
                headers: vec![HeaderSpec {
                    name: "x-debug".into(),
                    present: true,
                    invert: true,
                    ..HeaderSpec::default()
                }],
                ..HttpSpec::default()
            },
        ),
    ];
    for kind in 0..5 {
        for ignore_case in [false, true] {
            for invert in [false, true] {
                let mut h = HeaderSpec {
                    name: "x-role".into(),
                    ignore_case,
                    invert,
                    ..HeaderSpec::default()
                };
                match kind {
                    0 => h.exact = v.clone(),
                    1 => h.prefix = v.clone(),
                    2 => h.suffix = v.clone(),
                    3 => h.contains = v.clone(),
                    _ => h.regex = v.clone(),
                }
                permissions.push(permission(
                    Action::Allow,
                    HttpSpec {
                        headers: vec![h],
                        ..HttpSpec::default()
                    },
                ));
            }
        }
    }
    permissions.push(permission(
        Action::Allow,
        HttpSpec {
            path_prefix: Some("/".into()),
            methods: vec!["GET".into(), "POST".into()],
            ..HttpSpec::default()
        },
    ));
    Table::compile(&TableSpec {
        destination: service("api"),
        default_allow: false,
        intentions: vec![
            IntentionSpec {
                source: source("web"),
                destination: service("api"),
                precedence: 9,
                action: None,
                permissions,
            },
            IntentionSpec {
                source: source("*"),
                destination: service("api"),
                precedence: 8,
                action: Some(Action::Allow),
                permissions: Vec::new(),
            },
        ],
    })
}

fn header(line: &[u8]) -> Option<(&str, &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = line.split_at(colon);
    Some((std::str::from_utf8(name).ok()?, value.get(1..)?))
}

fn check(table: &Table, request: &[u8]) {
    let mut lines = request.split(|&b| b == b'\n');
    let method = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or("GET");
    let path = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or("/");
    let headers: Vec<(&str, &[u8])> = lines.filter_map(header).take(128).collect();
    let n = table.decisions().len();
    if table.problem().is_some() {
        assert_eq!(n, 1);
    }
    for (name, namespace, peer) in [
        ("web", "default", ""),
        ("db", "", ""),
        ("web", "team", "p1"),
        (method, path, ""),
    ] {
        let src = Source {
            name,
            namespace,
            partition: "",
            peer,
        };
        let d4 = table.decide_l4(&src);
        assert!(d4 < n);
        let req = Request {
            method,
            path,
            headers: &headers,
        };
        let d = table.decide_http(&src, &req);
        assert!(d < n);
        if table.problem().is_some() {
            assert!(!table.decision(d).allowed && !table.decision(d4).allowed);
        }
        let read: Vec<(&str, &[u8])> = headers
            .iter()
            .filter(|(h, _)| {
                table
                    .header_names()
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(h))
            })
            .copied()
            .collect();
        assert_eq!(
            d,
            table.decide_http(
                &src,
                &Request {
                    method,
                    path,
                    headers: &read
                }
            )
        );
        assert!(std::ptr::eq(
            table.authorize_http(&src, &req),
            table.decision(d)
        ));
    }
}

fuzz_target!(|data: &[u8]| {
    let (spec, request) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(spec);
    let table = match Table::from_json(&text) {
        Ok(t) => t,
        Err(_) => fixed_table(text.lines().next().unwrap_or("")),
    };
    check(&table, request);
});
