//! The intention table of ONE destination service, compiled once, evaluated per connection and per request.
//!
//! Python parses, validates and orders intentions (connect/intentions.py: consul.md §7.1–7.2) and hands over a
//! [`TableSpec`] as JSON; this module is meshgw's only intention evaluator (design.md "one of each").
//!
//! Evaluation (consul.md §7.3; C:agent/connect/authz.go, C:agent/xds/rbac.go):
//! - the FIRST intention, in the given (precedence) order, whose source matches the caller decides; nothing
//!   matching means the default policy. A caller (peer, partition, namespace, name) can only match its exact
//!   source, its namespace's `*`, or `*/*` of the same peer and partition, so each is a map lookup;
//! - an intention without permissions (L4) decides by its action, on TCP and HTTP listeners alike;
//! - an intention with permissions (L7) denies on a TCP listener (rbac.go intentionToIntermediateRBACForm);
//!   on HTTP the first permission whose HTTP criteria match decides, else the DEFAULT policy, not a lower
//!   intention (rbac.go subtracts the L7 source from every later intention; l7-security.md §2.3, §6 item 12).
//!
//! Every [`Decision`] is built by [`Table::compile`]; a request only gets a reference to one.
//!
//! Fail closed: a spec that cannot be compiled (a regex the regex crate refuses, a header rule without a
//! matcher, an intention with both or neither of action/permissions, ...) yields a table that denies every
//! caller of that destination with a reason naming the problem. It never fails the other destinations.
//!
//! # TableSpec JSON (what connect/intentions.py `IntentionTable.to_core()` emits)
//!
//! Unknown keys are refused ([`Table::from_json`] errors); absent optional keys take the default shown.
//! ```text
//! {
//!   "destination": {"name": "api", "namespace": "default"},      // namespace optional, default "default"
//!   "default_allow": false,                                      // optional, default false
//!   "intentions": [                                              // in evaluation order (precedence, ties)
//!     {
//!       "source": {"name": "web",                                // exact name or "*"
//!                  "namespace": "default",                       // optional; "*" = any namespace
//!                  "partition": "default",                       // optional
//!                  "peer": ""},                                  // optional; "" = local
//!       "destination": {"name": "api", "namespace": "default"},  // the entry's (may be "*"), for reasons
//!       "precedence": 9,                                         // 1..9, reported, not re-sorted
//!       "action": "allow" | "deny",                              // L4 intention: exactly one of action
//!       "permissions": [                                         //   or a non-empty permissions list (L7)
//!         {"action": "allow" | "deny",
//!          "http": {"path_exact": "/a" | "path_prefix": "/a" | "path_regex": "/a/[0-9]+",  // at most one
//!                   "methods": ["GET", "POST"],                  // optional
//!                   "headers": [                                 // optional
//!                     {"name": "x-role",
//!                      "present": true | "exact": "s" | "prefix": "s" | "suffix": "s" | "contains": "s"
//!                        | "regex": "r",                         // exactly one (empty string / false = unset)
//!                      "invert": false,                          // optional
//!                      "ignore_case": false}]}}]                 // optional; Exact/Prefix/Suffix/Contains only
//!     }
//!   ]
//! }
//! ```
//! As in Consul, an empty string or an empty list counts as unset; an `http` with nothing set matches every
//! request (Envoy's `any`).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use serde::Deserialize;

use crate::matchers::{
    path_only, HeaderMatcher, HeaderRule, HttpMatcher, MethodMatcher, PathMatcher, StringMatcher,
};

pub const DEFAULT: &str = "default";
pub const WILDCARD: &str = "*";

// ------------------------------------------------------------------------------------------ spec

fn default_name() -> String {
    DEFAULT.to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub destination: ServiceSpec,
    #[serde(default)]
    pub default_allow: bool,
    #[serde(default)]
    pub intentions: Vec<IntentionSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default = "default_name")]
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    #[serde(default = "default_name")]
    pub namespace: String,
    #[serde(default = "default_name")]
    pub partition: String,
    #[serde(default)]
    pub peer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    fn allowed(self) -> bool {
        self == Action::Allow
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentionSpec {
    pub source: SourceSpec,
    pub destination: ServiceSpec,
    #[serde(default)]
    pub precedence: u8,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub permissions: Vec<PermissionSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSpec {
    pub action: Action,
    pub http: HttpSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default)]
    pub path_exact: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub name: String,
    #[serde(default)]
    pub present: bool,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub invert: bool,
    #[serde(default)]
    pub ignore_case: bool,
}

// ------------------------------------------------------------------------------------------ inputs, output

/// The authenticated caller (from its SPIFFE ID; l7-security.md §6 item 13). Empty namespace/partition mean
/// `default`; empty peer means a local caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub partition: &'a str,
    pub peer: &'a str,
}

impl<'a> Source<'a> {
    /// A local caller in the default partition.
    pub fn new(name: &'a str, namespace: &'a str) -> Self {
        Self {
            name,
            namespace,
            partition: DEFAULT,
            peer: "",
        }
    }
}

/// One HTTP request as the inbound pipeline has it after normalization (l7-security.md §6 items 1–7).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Normalized; may still carry `?query` (cut here before path matching).
    pub path: &'a str,
    /// (lower-case name, value) pairs as received; repeated names allowed.
    pub headers: &'a [(&'a str, &'a [u8])],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Short and human, for logs, the 403 body and the CLI.
    pub reason: String,
    /// The deciding intention's source label ("web", "*", "team/web", "peer:p1/web"); None for the default.
    pub source: Option<String>,
    pub precedence: Option<u8>,
}

// ------------------------------------------------------------------------------------------ table

/// What one intention (or the default) decides, as indexes into `Table::decisions`.
#[derive(Debug)]
struct Rule {
    l4: usize,
    permissions: Vec<(HttpMatcher, usize)>,
    /// HTTP: an L4 intention's decision, or the default when no permission matched.
    fallthrough: usize,
}

/// Namespace scope: exact names, and the rule for any other name (already resolved against wider scopes).
/// The scopes are ordered maps: every request looks a caller up in three of them, each holding a handful of
/// names, where a few comparisons cost less than hashing the name (SipHash, four lookups were 1.2 % of an
/// HTTP/2 inbound side's instructions).
#[derive(Debug)]
struct NsScope {
    names: BTreeMap<String, usize>,
    rest: usize,
}

/// (peer, partition) scope: namespaces, and the rule for any other namespace (the `*/*` intention or default).
#[derive(Debug)]
struct PartitionScope {
    namespaces: BTreeMap<String, NsScope>,
    rest: usize,
}

#[derive(Debug)]
pub struct Table {
    destination: String,
    decisions: Vec<Decision>,
    rules: Vec<Rule>,
    /// peer → partition → scope. A caller without a scope gets `default_rule`.
    scopes: BTreeMap<String, BTreeMap<String, PartitionScope>>,
    default_rule: usize,
    header_names: Vec<String>,
    problem: Option<String>,
}

fn or_default(s: &str) -> &str {
    if s.is_empty() {
        DEFAULT
    } else {
        s
    }
}

/// `name`, `ns/name` outside the default namespace, `peer:<peer>/…` for a peered source (connect/intentions.py
/// `_label`, the same text the Python side and Consul's CLI use).
fn label(namespace: &str, name: &str, peer: &str) -> String {
    let base = if namespace.is_empty() || namespace == DEFAULT {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    };
    if peer.is_empty() {
        base
    } else {
        format!("peer:{peer}/{base}")
    }
}

fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|v| !v.is_empty())
}

fn compile_header(h: &HeaderSpec) -> Result<HeaderMatcher, String> {
    if h.name.is_empty() {
        return Err("header without a name".to_owned());
    }
    let what = |key: &str| format!("header {:?} {key}", h.name);
    let mut given: Vec<(&str, HeaderRule)> = Vec::new();
    if h.present {
        given.push(("Present", HeaderRule::Present));
    }
    let ic = h.ignore_case;
    if let Some(v) = set(&h.exact) {
        given.push(("Exact", HeaderRule::Value(StringMatcher::exact(v, ic))));
    }
    if let Some(v) = set(&h.prefix) {
        given.push(("Prefix", HeaderRule::Value(StringMatcher::prefix(v, ic))));
    }
    if let Some(v) = set(&h.suffix) {
        given.push(("Suffix", HeaderRule::Value(StringMatcher::suffix(v, ic))));
    }
    if let Some(v) = set(&h.contains) {
        let m = StringMatcher::contains(v, ic).map_err(|e| format!("{} {e}", what("Contains")))?;
        given.push(("Contains", HeaderRule::Value(m)));
    }
    if let Some(v) = set(&h.regex) {
        let m = StringMatcher::regex(v).map_err(|e| format!("{} {v:?} {e}", what("Regex")))?;
        given.push(("Regex", HeaderRule::Value(m)));
    }
    if given.len() != 1 {
        let names: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
        let sets = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(" and ")
        };
        return Err(format!(
            "header {:?} sets {sets} (expected exactly one of Present, Exact, Prefix, Suffix, Contains, Regex)",
            h.name
        ));
    }
    let Some((_, rule)) = given.pop() else {
        return Err(format!("header {:?} has no matcher", h.name));
    };
    Ok(HeaderMatcher::new(&h.name, rule, h.invert))
}

fn compile_http(http: &HttpSpec) -> Result<HttpMatcher, String> {
    let exact = set(&http.path_exact);
    let prefix = set(&http.path_prefix);
    let regex = set(&http.path_regex);
    let path = match (exact, prefix, regex) {
        (None, None, None) => None,
        (Some(p), None, None) => Some(PathMatcher::Exact(p.into())),
        (None, Some(p), None) => Some(PathMatcher::Prefix(p.into())),
        (None, None, Some(r)) => Some(PathMatcher::Regex(
            crate::matchers::compile_regex(r).map_err(|e| format!("PathRegex {r:?} {e}"))?,
        )),
        _ => {
            return Err(
                "sets more than one of PathExact, PathPrefix, PathRegex (expected at most one)"
                    .to_owned(),
            )
        }
    };
    let methods = if http.methods.is_empty() {
        None
    } else {
        Some(MethodMatcher::new(&http.methods))
    };
    let headers = http
        .headers
        .iter()
        .map(compile_header)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpMatcher {
        path,
        methods,
        headers,
    })
}

/// First index (evaluation order) of each kind of source, per scope.
#[derive(Default)]
struct FirstIndexes<'s> {
    any_ns: HashMap<(&'s str, &'s str), usize>,
    any_name: HashMap<(&'s str, &'s str, &'s str), usize>,
    exact: HashMap<(&'s str, &'s str, &'s str, &'s str), usize>,
}

impl Table {
    /// Never fails: a spec that cannot be compiled gives a table that denies every caller (module doc).
    pub fn compile(spec: &TableSpec) -> Table {
        let destination = label(&spec.destination.namespace, &spec.destination.name, "");
        match Self::try_compile(spec, &destination) {
            Ok(t) => t,
            Err(problem) => Self::deny_all(destination, problem),
        }
    }

    /// Errors only when `s` is not a TableSpec (a bug in the emitter, not an operator mistake).
    pub fn from_json(s: &str) -> Result<Table, String> {
        let spec: TableSpec =
            serde_json::from_str(s).map_err(|e| format!("intention table spec: {e}"))?;
        Ok(Self::compile(&spec))
    }

    /// A table that denies everyone, e.g. when the control plane could not produce a usable spec.
    pub fn deny_all(destination: String, problem: String) -> Table {
        let reason = format!(
            "intentions for {destination} could not be compiled, every caller is denied: {problem}"
        );
        Table {
            destination,
            decisions: vec![Decision {
                allowed: false,
                reason,
                source: None,
                precedence: None,
            }],
            rules: vec![Rule {
                l4: 0,
                permissions: Vec::new(),
                fallthrough: 0,
            }],
            scopes: BTreeMap::new(),
            default_rule: 0,
            header_names: Vec::new(),
            problem: Some(problem),
        }
    }

    fn try_compile(spec: &TableSpec, destination: &str) -> Result<Table, String> {
        let policy = if spec.default_allow { "allow" } else { "deny" };
        let mut decisions = vec![Decision {
            allowed: spec.default_allow,
            reason: format!("default policy {policy}"),
            source: None,
            precedence: None,
        }];
        let mut push = |d: Decision| {
            decisions.push(d);
            decisions.len() - 1
        };
        let mut rules = Vec::with_capacity(spec.intentions.len() + 1);
        let mut header_names: Vec<String> = Vec::new();
        for ix in &spec.intentions {
            let s = &ix.source;
            if s.name.is_empty() {
                return Err("an intention has a source without a name".to_owned());
            }
            let src = label(&s.namespace, &s.name, &s.peer);
            let name = format!(
                "intention {src} => {}",
                label(&ix.destination.namespace, &ix.destination.name, "")
            );
            let prec = Some(ix.precedence);
            let decision = |allowed: bool, reason: String| Decision {
                allowed,
                reason,
                source: Some(src.clone()),
                precedence: prec,
            };
            let rule = match (ix.action, ix.permissions.is_empty()) {
                (Some(action), true) => {
                    let d = push(decision(
                        action.allowed(),
                        format!("{name} ({})", action.as_str()),
                    ));
                    Rule {
                        l4: d,
                        permissions: Vec::new(),
                        fallthrough: d,
                    }
                }
                (None, false) => {
                    // On a TCP listener an L7 intention denies (consul.md §7.3; rbac.go
                    // intentionToIntermediateRBACForm: "treat them as deny intentions").
                    let l4 = push(decision(
                        false,
                        format!("{name} has L7 permissions, denied on a TCP listener"),
                    ));
                    let mut permissions = Vec::with_capacity(ix.permissions.len());
                    for (j, p) in ix.permissions.iter().enumerate() {
                        let m = compile_http(&p.http)
                            .map_err(|e| format!("{name} permission[{j}]: {e}"))?;
                        for h in &m.headers {
                            if !header_names.iter().any(|n| n == h.name()) {
                                header_names.push(h.name().to_owned());
                            }
                        }
                        let d = push(decision(
                            p.action.allowed(),
                            format!("{name} permission[{j}] ({})", p.action.as_str()),
                        ));
                        permissions.push((m, d));
                    }
                    // Source matched, no permission did: the default applies, not a lower intention
                    // (l7-security.md §2.3 "Net rule", §6 item 12).
                    let fallthrough = push(decision(
                        spec.default_allow,
                        format!("{name}: no permission matched, default policy {policy}"),
                    ));
                    Rule {
                        l4,
                        permissions,
                        fallthrough,
                    }
                }
                (Some(_), false) => {
                    return Err(format!(
                        "{name} sets both an action and permissions (expected one of them)"
                    ))
                }
                (None, true) => {
                    return Err(format!(
                        "{name} sets neither an action nor permissions (expected one of them)"
                    ))
                }
            };
            rules.push(rule);
        }
        let default_rule = rules.len();
        rules.push(Rule {
            l4: 0,
            permissions: Vec::new(),
            fallthrough: 0,
        });
        let scopes = Self::scopes(&spec.intentions, default_rule);
        Ok(Table {
            destination: destination.to_owned(),
            decisions,
            rules,
            scopes,
            default_rule,
            header_names,
            problem: None,
        })
    }

    /// For a caller the first match is the smallest of (exact, namespace `*`, `*/*`) indexes in its
    /// (peer, partition); the default rule has the largest index, so `min` resolves each scope once here.
    fn scopes(
        intentions: &[IntentionSpec],
        default_rule: usize,
    ) -> BTreeMap<String, BTreeMap<String, PartitionScope>> {
        let mut first = FirstIndexes::default();
        for (i, ix) in intentions.iter().enumerate() {
            let s = &ix.source;
            let (peer, part, ns) = (
                s.peer.as_str(),
                or_default(&s.partition),
                or_default(&s.namespace),
            );
            if ns == WILDCARD {
                first.any_ns.entry((peer, part)).or_insert(i);
            } else if s.name == WILDCARD {
                first.any_name.entry((peer, part, ns)).or_insert(i);
            } else {
                first
                    .exact
                    .entry((peer, part, ns, s.name.as_str()))
                    .or_insert(i);
            }
        }
        let mut scopes: BTreeMap<String, BTreeMap<String, PartitionScope>> = BTreeMap::new();
        let scope = |peer: &str, part: &str| -> usize {
            first
                .any_ns
                .get(&(peer, part))
                .copied()
                .unwrap_or(default_rule)
        };
        let mut keys: Vec<(&str, &str)> = first.any_ns.keys().copied().collect();
        keys.extend(first.any_name.keys().map(|k| (k.0, k.1)));
        keys.extend(first.exact.keys().map(|k| (k.0, k.1)));
        for (peer, part) in keys {
            let rest = scope(peer, part);
            scopes
                .entry(peer.to_owned())
                .or_default()
                .entry(part.to_owned())
                .or_insert_with(|| PartitionScope {
                    namespaces: BTreeMap::new(),
                    rest,
                });
        }
        let mut ns_keys: Vec<(&str, &str, &str)> = first.any_name.keys().copied().collect();
        ns_keys.extend(first.exact.keys().map(|k| (k.0, k.1, k.2)));
        for (peer, part, ns) in ns_keys {
            let Some(p) = scopes.get_mut(peer).and_then(|m| m.get_mut(part)) else {
                continue;
            };
            let rest = first
                .any_name
                .get(&(peer, part, ns))
                .map_or(p.rest, |&i| i.min(p.rest));
            p.namespaces
                .entry(ns.to_owned())
                .or_insert_with(|| NsScope {
                    names: BTreeMap::new(),
                    rest,
                });
        }
        for (&(peer, part, ns, name), &i) in &first.exact {
            let Some(n) = scopes
                .get_mut(peer)
                .and_then(|m| m.get_mut(part))
                .and_then(|p| p.namespaces.get_mut(ns))
            else {
                continue;
            };
            let rule = i.min(n.rest);
            n.names.insert(name.to_owned(), rule);
        }
        scopes
    }

    fn rule(&self, src: &Source) -> &Rule {
        let index = self
            .scopes
            .get(src.peer)
            .and_then(|m| m.get(or_default(src.partition)))
            .map_or(self.default_rule, |p| {
                match p.namespaces.get(or_default(src.namespace)) {
                    Some(n) => n.names.get(src.name).copied().unwrap_or(n.rest),
                    None => p.rest,
                }
            });
        // The index always exists (built together); a deny is the safe fallback regardless.
        self.rules.get(index).unwrap_or(&DENY_RULE)
    }

    /// Index into [`Table::decisions`] of the decision for a connection on a TCP listener.
    pub fn decide_l4(&self, src: &Source) -> usize {
        self.rule(src).l4
    }

    /// Index into [`Table::decisions`] of the decision for one request on an HTTP listener.
    pub fn decide_http(&self, src: &Source, req: &Request) -> usize {
        let rule = self.rule(src);
        if rule.permissions.is_empty() {
            return rule.fallthrough;
        }
        let path = path_only(req.path);
        for (m, d) in &rule.permissions {
            if m.matches(req.method, path, req.headers) {
                return *d;
            }
        }
        rule.fallthrough
    }

    pub fn authorize_l4(&self, src: &Source) -> &Decision {
        self.decision(self.decide_l4(src))
    }

    pub fn authorize_http(&self, src: &Source, req: &Request) -> &Decision {
        self.decision(self.decide_http(src, req))
    }

    /// Every decision this table can return, by index ([`Table::decide_l4`], [`Table::decide_http`]).
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    pub fn decision(&self, index: usize) -> &Decision {
        self.decisions.get(index).unwrap_or(&DENY)
    }

    /// The destination's label ("api", "team/api").
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Why the spec could not be compiled (then every caller is denied), or None.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Lower-cased names of the headers some permission reads: a caller may pass only those.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }
}

static DENY: LazyLock<Decision> = LazyLock::new(|| Decision {
    allowed: false,
    reason: "internal error: no such decision, denied".to_owned(),
    source: None,
    precedence: None,
});

static DENY_RULE: Rule = Rule {
    l4: usize::MAX,
    permissions: Vec::new(),
    fallthrough: usize::MAX,
};

#[cfg(test)]
#[path = "intentions_test.rs"]
mod tests;
