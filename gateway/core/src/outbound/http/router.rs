//! Routes of a compiled discovery chain (gateway/http/routing.py Chain.route_for, Route.pick, compile_match):
//! matchers compiled once per snapshot, per request only comparisons. Semantics as Consul configures Envoy
//! from a service-router (consul.md §8.3): routes in order, first match wins; PathRegex and header/query
//! regexes match the whole value (Envoy's safe_regex); repeated headers are joined with "," (RFC 9110 §5.3).

use http::HeaderMap;
use regex::bytes::Regex;

use super::spec::{HeaderMatchSpec, MatchSpec, QueryMatchSpec};

/// A regex that must match the whole value, with a size bound so a snapshot cannot make a huge automaton.
fn full_regex(src: &str, case_insensitive: bool) -> Result<Regex, String> {
    regex::bytes::RegexBuilder::new(&format!("^(?:{src})$"))
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("regex {src:?}: {e}"))
}

enum PathMatch {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Regex(Regex),
}

enum ValueTest {
    Present,
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Regex(Regex),
}

impl ValueTest {
    fn test(&self, v: &[u8]) -> bool {
        match self {
            ValueTest::Present => true,
            ValueTest::Exact(x) => v == x.as_slice(),
            ValueTest::Prefix(x) => v.starts_with(x),
            ValueTest::Suffix(x) => v.ends_with(x),
            ValueTest::Regex(r) => r.is_match(v),
        }
    }
}

struct HeaderCheck {
    name: http::HeaderName,
    test: ValueTest,
    invert: bool,
}

struct QueryCheck {
    name: Vec<u8>,
    test: ValueTest,
}

/// One route's match; `Matcher::default()` matches everything (Envoy: prefix "/").
#[derive(Default)]
pub struct Matcher {
    path: Option<PathMatch>,
    case_insensitive: bool,
    methods: Vec<String>,
    headers: Vec<HeaderCheck>,
    query: Vec<QueryCheck>,
}

/// What a matcher looks at: the request as it arrived.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub headers: &'a HeaderMap,
}

impl Matcher {
    pub fn compile(m: Option<&MatchSpec>) -> Result<Matcher, String> {
        let Some(m) = m else {
            return Ok(Matcher::default());
        };
        let ci = m.case_insensitive;
        let lower = |s: &str| {
            if ci {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        // The order of routing.py compile_match: exact, then a prefix other than "/", then a regex.
        let path = if let Some(p) = &m.path_exact {
            Some(PathMatch::Exact(lower(p).into_bytes()))
        } else if let Some(p) = m.path_prefix.as_ref().filter(|p| p.as_str() != "/") {
            Some(PathMatch::Prefix(lower(p).into_bytes()))
        } else if let Some(r) = &m.path_regex {
            Some(PathMatch::Regex(full_regex(r, ci)?))
        } else {
            None
        };
        let headers = m
            .headers
            .iter()
            .map(header_check)
            .collect::<Result<Vec<_>, _>>()?;
        let query = m
            .query
            .iter()
            .map(query_check)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Matcher {
            path,
            case_insensitive: ci,
            methods: m.methods.clone(),
            headers,
            query,
        })
    }

    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        match &self.path {
            None => {}
            Some(PathMatch::Exact(want)) => {
                let ok = if self.case_insensitive {
                    r.path.eq_ignore_ascii_case(want)
                } else {
                    r.path == want.as_slice()
                };
                if !ok {
                    return false;
                }
            }
            Some(PathMatch::Prefix(pre)) => {
                let ok = r.path.len() >= pre.len()
                    && if self.case_insensitive {
                        r.path[..pre.len()].eq_ignore_ascii_case(pre)
                    } else {
                        r.path.starts_with(pre)
                    };
                if !ok {
                    return false;
                }
            }
            Some(PathMatch::Regex(rx)) if !rx.is_match(r.path) => return false,
            Some(PathMatch::Regex(_)) => {}
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == r.method) {
            return false;
        }
        for h in &self.headers {
            let v = joined(r.headers, &h.name);
            if (v.as_deref().is_some_and(|v| h.test.test(v))) == h.invert {
                return false;
            }
        }
        for q in &self.query {
            if !query_matches(r.query, q) {
                return false;
            }
        }
        true
    }
}

fn header_check(h: &HeaderMatchSpec) -> Result<HeaderCheck, String> {
    let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("header match: {:?} is not a header name", h.name))?;
    let test = if let Some(x) = &h.exact {
        ValueTest::Exact(x.clone().into_bytes())
    } else if let Some(x) = &h.prefix {
        ValueTest::Prefix(x.clone().into_bytes())
    } else if let Some(x) = &h.suffix {
        ValueTest::Suffix(x.clone().into_bytes())
    } else if let Some(x) = &h.regex {
        ValueTest::Regex(full_regex(x, false)?)
    } else {
        ValueTest::Present
    };
    Ok(HeaderCheck {
        name,
        test,
        invert: h.invert,
    })
}

fn query_check(q: &QueryMatchSpec) -> Result<QueryCheck, String> {
    let test = if let Some(x) = &q.exact {
        ValueTest::Exact(x.clone().into_bytes())
    } else if let Some(x) = &q.regex {
        ValueTest::Regex(full_regex(x, false)?)
    } else {
        ValueTest::Present
    };
    Ok(QueryCheck {
        name: q.name.clone().into_bytes(),
        test,
    })
}

/// Several fields of one name as one list (RFC 9110 §5.3), as routing.py `_header_value`.
fn joined(headers: &HeaderMap, name: &http::HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in headers.get_all(name) {
        match &mut out {
            None => out = Some(v.as_bytes().to_vec()),
            Some(o) => {
                o.push(b',');
                o.extend_from_slice(v.as_bytes());
            }
        }
    }
    out
}

/// The first parameter of that name decides (routing.py `_query_check`); values are compared undecoded.
fn query_matches(query: &[u8], q: &QueryCheck) -> bool {
    if query.is_empty() {
        return false;
    }
    for part in query.split(|b| *b == b'&') {
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        if k == q.name.as_slice() {
            return q.test.test(v);
        }
    }
    false
}

/// Envoy's virtual-host domain forms, which Consul's ingress Hosts use (gateway/listeners.py host_matcher).
#[derive(Debug, Clone, PartialEq)]
pub enum HostPattern {
    Any,
    Suffix(String),
    Prefix(String),
    Exact(String),
}

impl HostPattern {
    pub fn compile(p: &str) -> HostPattern {
        let p = p.to_ascii_lowercase();
        if p == "*" {
            HostPattern::Any
        } else if let Some(s) = p.strip_prefix('*').filter(|s| s.starts_with('.')) {
            HostPattern::Suffix(s.to_string())
        } else if let Some(s) = p.strip_suffix('*').filter(|s| s.ends_with('.')) {
            HostPattern::Prefix(s.to_string())
        } else {
            HostPattern::Exact(p)
        }
    }

    /// `host` is lower-case, without its port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()) && host.len() > s.len(),
            HostPattern::Prefix(s) => host.starts_with(s.as_str()) && host.len() > s.len(),
            HostPattern::Exact(s) => host == s,
        }
    }
}

/// A Host header without its port (`[v6]:port` included), lower-cased (listeners.py `_host_only`).
pub fn host_only(value: &str) -> String {
    let v = value.trim().to_ascii_lowercase();
    if v.starts_with('[') {
        return match v.find(']') {
            Some(i) => v[..=i].to_string(),
            None => v,
        };
    }
    match v.rfind(':') {
        Some(i) if !v[i + 1..].is_empty() && v[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            v[..i].to_string()
        }
        _ => v,
    }
}

/// Cumulative weights of a route's splits; a uniform draw in [0, total) picks one (routing.py Route.pick).
pub fn pick_split(cum: &[f64], draw01: f64) -> usize {
    let n = cum.len();
    if n <= 1 {
        return 0;
    }
    let total = cum[n - 1];
    let x = draw01 * total;
    // bisect_right: the first cumulative weight strictly above the draw.
    let i = cum.partition_point(|c| *c <= x);
    i.min(n - 1)
}

#[cfg(test)]
#[path = "router_test.rs"]
mod tests;
