use super::*;
use http::HeaderValue;

fn view<'a>(method: &'a str, url: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    RequestView {
        method,
        path: path.as_bytes(),
        query: query.as_bytes(),
        headers,
    }
}

fn m(json: &str) -> Matcher {
    let spec: MatchSpec = serde_json::from_str(json).unwrap();
    Matcher::compile(Some(&spec)).unwrap()
}

#[test]
fn paths() {
    let h = HeaderMap::new();
    let exact = m(r#"{"path_exact": "/a"}"#);
    assert!(exact.matches(&view("GET", "/a?x=1", &h)));
    assert!(!exact.matches(&view("GET", "/a/b", &h)));
    let pre = m(r#"{"path_prefix": "/API", "case_insensitive": true}"#);
    assert!(pre.matches(&view("GET", "/api/v1", &h)));
    assert!(!pre.matches(&view("GET", "/ap", &h)));
    let rx = m(r#"{"path_regex": "/v[0-9]+/.*"}"#);
    assert!(rx.matches(&view("GET", "/v2/x", &h)));
    assert!(!rx.matches(&view("GET", "/x/v2/x", &h)), "whole path");
    assert!(Matcher::default().matches(&view("POST", "/", &h)));
    let meth = m(r#"{"methods": ["POST"]}"#);
    assert!(!meth.matches(&view("GET", "/", &h)));
    assert!(meth.matches(&view("POST", "/", &h)));
}

#[test]
fn headers_and_query() {
    let mut h = HeaderMap::new();
    h.append("x-v", HeaderValue::from_static("a"));
    h.append("x-v", HeaderValue::from_static("b"));
    assert!(m(r#"{"headers": [{"name": "X-V", "exact": "a,b"}]}"#).matches(&view("GET", "/", &h)));
    assert!(m(r#"{"headers": [{"name": "x-v", "prefix": "a"}]}"#).matches(&view("GET", "/", &h)));
    assert!(m(r#"{"headers": [{"name": "x-v", "suffix": ",b"}]}"#).matches(&view("GET", "/", &h)));
    assert!(m(r#"{"headers": [{"name": "x-v", "regex": "a,."}]}"#).matches(&view("GET", "/", &h)));
    assert!(m(r#"{"headers": [{"name": "x-v"}]}"#).matches(&view("GET", "/", &h)));
    assert!(!m(r#"{"headers": [{"name": "x-w"}]}"#).matches(&view("GET", "/", &h)));
    assert!(m(r#"{"headers": [{"name": "x-w", "invert": true}]}"#).matches(&view("GET", "/", &h)));
    let q = m(r#"{"query": [{"name": "v", "exact": "2"}]}"#);
    assert!(q.matches(&view("GET", "/?a=1&v=2", &h)));
    assert!(
        !q.matches(&view("GET", "/?v=3&v=2", &h)),
        "the first one decides"
    );
    assert!(!q.matches(&view("GET", "/", &h)));
    assert!(m(r#"{"query": [{"name": "flag"}]}"#).matches(&view("GET", "/?flag", &h)));
}

#[test]
fn hosts() {
    assert!(HostPattern::compile("*").matches("x"));
    assert!(HostPattern::compile("*.example.com").matches("a.example.com"));
    assert!(!HostPattern::compile("*.example.com").matches(".example.com"));
    assert!(HostPattern::compile("api.*").matches("api.local"));
    assert!(HostPattern::compile("API.local").matches("api.local"));
    assert!(!HostPattern::compile("api.local").matches("api.localx"));
    assert_eq!(host_only("Api.Local:8080"), "api.local");
    assert_eq!(host_only("[::1]:80"), "[::1]");
    assert_eq!(host_only("a:b"), "a:b");
}

#[test]
fn splits() {
    let cum = [90.0, 100.0];
    assert_eq!(pick_split(&cum, 0.0), 0);
    assert_eq!(pick_split(&cum, 0.89), 0);
    assert_eq!(pick_split(&cum, 0.9), 1);
    assert_eq!(pick_split(&cum, 0.999), 1);
    assert_eq!(pick_split(&[100.0], 0.5), 0);
    let mut n = [0usize; 2];
    let mut rng = super::super::rng::Rng::seeded(7);
    for _ in 0..10_000 {
        n[pick_split(&cum, rng.f64())] += 1;
    }
    assert!((8_700..9_300).contains(&n[0]), "{n:?}");
}
