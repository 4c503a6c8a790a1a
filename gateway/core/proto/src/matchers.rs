//! The HTTP criteria of an L7 intention permission (`Permissions[].HTTP`): path, method and header matchers,
//! compiled once per table and evaluated per request without allocating (except to join a repeated header).
//!
//! Semantics are those of the Envoy RBAC permission Consul generates (l7-security.md §2.3, §6 items 8–11;
//! C:agent/xds/rbac.go convertPermission):
//! - path matchers see the path without `?query` / `#fragment` (E:source/common/common/matchers.cc
//!   PathMatcher::match) and are case-sensitive;
//! - methods are compared case-sensitively against the upper-cased list (rbac.go: `:method` safe_regex `GET|POST`);
//! - a header is found by its lower-cased name; every value of a repeated header is matched as one value joined
//!   with `,` (GHSA-2v25-cjjq-5f4w, envoyproxy/envoy#30815); an absent header matches only `Present` + `Invert`;
//! - `IgnoreCase` applies to Exact/Prefix/Suffix/Contains (ASCII folding, as Envoy's StringMatcher), never to
//!   Regex ("IgnoreCase is not supported for SafeRegex matching", rbac.go) or Present;
//! - regexes are RE2-like (the `regex` crate), full match, in Latin-1 (byte) mode as Envoy's safe_regex since
//!   1.39.1/1.38.4/1.37.6/1.36.10 (CVE-2026-73552, l7-security.md §2.3), with bounded compiled size.

use std::borrow::Cow;

use regex::bytes::{Regex, RegexBuilder};

/// Longest pattern accepted (bytes). Operators write these by hand; a longer one is a mistake or an attack.
pub const REGEX_MAX_PATTERN_LEN: usize = 8 * 1024;
/// Compiled program size bound. Consul's Envoy bootstrap raises `re2.max_program_size.error_level`
/// (C:command/connect/envoy/bootstrap_tpl.go); this is the same order of magnitude in the regex crate's units.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy DFA cache bound per regex (per thread that runs it).
pub const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;
/// Nesting bound of the pattern's syntax tree (keeps the parser's recursion shallow).
pub const REGEX_NEST_LIMIT: u32 = 64;

fn builder(pattern: &str) -> RegexBuilder {
    let mut b = RegexBuilder::new(pattern);
    // Latin-1 mode: one byte is one character, `.` and classes match single bytes
    // (l7-security.md §2.3, CVE-2026-73552).
    b.unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT);
    b
}

/// The one-line text of a regex error (the crate's syntax errors span several lines with a caret diagram).
fn describe(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => {
            format!("compiles to more than {limit} bytes (expected a smaller regular expression)")
        }
        other => {
            let text = other.to_string();
            let line = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .map(str::to_owned)
                .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "));
            format!("does not compile: {line} (expected RE2 syntax)")
        }
    }
}

/// Compiles `pattern` for a full match (`^(?:pattern)$`, as Envoy's safe_regex matches the whole value).
/// The error is one line to follow the quoted pattern, e.g. `does not compile: unclosed group (expected RE2 syntax)`.
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > REGEX_MAX_PATTERN_LEN {
        return Err(format!(
            "is {} bytes long (expected at most {REGEX_MAX_PATTERN_LEN})",
            pattern.len()
        ));
    }
    // The pattern must stand alone first: wrapped unchecked, `a)|(b` would become the valid `^(?:a)|(b)$`.
    builder(pattern).build().map_err(|e| describe(&e))?;
    builder(&format!("^(?:{pattern})$"))
        .build()
        .map_err(|e| describe(&e))
}

// ------------------------------------------------------------------------------------------ strings

#[derive(Debug, Clone)]
enum StringKind {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    /// A literal search through the regex crate's substring searcher (memchr/Teddy): linear in the value
    /// whatever the needle, with ASCII case folding when IgnoreCase is set.
    Contains(Regex),
    Regex(Regex),
}

/// Envoy's `StringMatcher` as Consul fills it (rbac.go convertPermission).
#[derive(Debug, Clone)]
pub struct StringMatcher {
    kind: StringKind,
    ignore_case: bool,
}

impl StringMatcher {
    pub fn exact(value: &str, ignore_case: bool) -> Self {
        Self::plain(StringKind::Exact(value.as_bytes().into()), ignore_case)
    }

    pub fn prefix(value: &str, ignore_case: bool) -> Self {
        Self::plain(StringKind::Prefix(value.as_bytes().into()), ignore_case)
    }

    pub fn suffix(value: &str, ignore_case: bool) -> Self {
        Self::plain(StringKind::Suffix(value.as_bytes().into()), ignore_case)
    }

    pub fn contains(value: &str, ignore_case: bool) -> Result<Self, String> {
        let re = builder(&regex::escape(value))
            .case_insensitive(ignore_case)
            .build()
            .map_err(|e| describe(&e))?;
        Ok(Self::plain(StringKind::Contains(re), ignore_case))
    }

    /// IgnoreCase is not applied to a regex (rbac.go: "IgnoreCase is not supported for SafeRegex matching");
    /// `(?i)` inside the pattern is the way to fold case.
    pub fn regex(pattern: &str) -> Result<Self, String> {
        Ok(Self::plain(
            StringKind::Regex(compile_regex(pattern)?),
            false,
        ))
    }

    fn plain(kind: StringKind, ignore_case: bool) -> Self {
        Self { kind, ignore_case }
    }

    pub fn matches(&self, value: &[u8]) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            StringKind::Exact(p) => eq(value, p, ic),
            StringKind::Prefix(p) => value.len() >= p.len() && eq(&value[..p.len()], p, ic),
            StringKind::Suffix(p) => {
                value.len() >= p.len() && eq(&value[value.len() - p.len()..], p, ic)
            }
            StringKind::Contains(re) => re.is_match(value),
            StringKind::Regex(re) => re.is_match(value),
        }
    }
}

fn eq(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

// ------------------------------------------------------------------------------------------ headers

/// What a header rule checks once the header is found.
#[derive(Debug, Clone)]
pub enum HeaderRule {
    Present,
    Value(StringMatcher),
}

/// One `Permissions[].HTTP.Header[]` item.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    name: Box<str>,
    rule: HeaderRule,
    invert: bool,
}

impl HeaderMatcher {
    /// `name` is matched case-insensitively (HTTP header names are; Envoy lower-cases them).
    pub fn new(name: &str, rule: HeaderRule, invert: bool) -> Self {
        Self {
            name: name.to_ascii_lowercase().into(),
            rule,
            invert,
        }
    }

    /// The lower-cased header name this matcher reads.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `headers`: (name, value) pairs as received, repeated names allowed.
    pub fn matches(&self, headers: &[(&str, &[u8])]) -> bool {
        match joined_value(headers, &self.name) {
            // An absent header never matches a value matcher, inverted or not; only "not present" matches it
            // (l7-security.md §2.3, §6 item 10; E:source/common/http/header_utility.cc matchHeaders).
            None => self.invert && matches!(self.rule, HeaderRule::Present),
            Some(value) => {
                let hit = match &self.rule {
                    HeaderRule::Present => true,
                    HeaderRule::Value(m) => m.matches(&value),
                };
                hit != self.invert
            }
        }
    }
}

/// Every value of `name`, joined with "," (no space) when repeated (l7-security.md §2.3, §6 item 9).
/// Borrowed for the usual single occurrence; only a repeated header allocates.
pub fn joined_value<'a>(headers: &[(&str, &'a [u8])], name: &str) -> Option<Cow<'a, [u8]>> {
    let mut out: Option<Cow<'a, [u8]>> = None;
    for (n, v) in headers {
        if !n.eq_ignore_ascii_case(name) {
            continue;
        }
        out = Some(match out {
            None => Cow::Borrowed(*v),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b',');
                joined.extend_from_slice(v);
                Cow::Owned(joined)
            }
        });
    }
    out
}

// ------------------------------------------------------------------------------------------ path, methods

/// `PathExact` / `PathPrefix` / `PathRegex` (at most one per permission).
#[derive(Debug, Clone)]
pub enum PathMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl PathMatcher {
    /// `path` is already without query and fragment (see [`path_only`]).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => path == &**p,
            PathMatcher::Prefix(p) => path.starts_with(&**p),
            PathMatcher::Regex(re) => re.is_match(path.as_bytes()),
        }
    }
}

/// The part of a request path that `url_path` matchers see: everything before the first `?` or `#`
/// (l7-security.md §1.4 `/admin?x`, §6 item 8; E:source/common/common/matchers.cc PathMatcher::match).
pub fn path_only(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(cut) => &path[..cut],
        None => path,
    }
}

/// `Methods`: case-sensitive against the upper-cased list; HEAD is not implied by GET
/// (l7-security.md §2.3, §6 item 11).
#[derive(Debug, Clone)]
pub struct MethodMatcher {
    methods: Box<[Box<str>]>,
}

impl MethodMatcher {
    /// Consul upper-cases the list on normalize (C:agent/structs/config_entry_intentions.go), so this does too.
    pub fn new<S: AsRef<str>>(methods: &[S]) -> Self {
        Self {
            methods: methods
                .iter()
                .map(|m| m.as_ref().to_ascii_uppercase().into())
                .collect(),
        }
    }

    pub fn matches(&self, method: &str) -> bool {
        self.methods.iter().any(|m| &**m == method)
    }
}

// ------------------------------------------------------------------------------------------ permission

/// The HTTP criteria of one permission: every given part must match (Consul ANDs them into one Envoy
/// permission; none given is Envoy's `any`).
#[derive(Debug, Clone, Default)]
pub struct HttpMatcher {
    pub path: Option<PathMatcher>,
    pub methods: Option<MethodMatcher>,
    pub headers: Vec<HeaderMatcher>,
}

impl HttpMatcher {
    /// `path` must already be cut at `?`/`#` ([`path_only`]); the table does that once per request.
    pub fn matches(&self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> bool {
        if let Some(m) = &self.methods {
            if !m.matches(method) {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !p.matches(path) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(headers))
    }
}

#[cfg(test)]
#[path = "matchers_test.rs"]
mod tests;
