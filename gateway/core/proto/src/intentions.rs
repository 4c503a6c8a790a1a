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

use std::collections::HashMap;
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
#[derive(Debug)]
struct NsScope {
    names: HashMap<String, usize>,
    rest: usize,
}

/// (peer, partition) scope: namespaces, and the rule for any other namespace (the `*/*` intention or default).
#[derive(Debug)]
struct PartitionScope {
    namespaces: HashMap<String, NsScope>,
    rest: usize,
}

#[derive(Debug)]
pub struct Table {
    destination: String,
    decisions: Vec<Decision>,
    rules: Vec<Rule>,
    /// peer → partition → scope. A caller without a scope gets `default_rule`.
    scopes: HashMap<String, HashMap<String, PartitionScope>>,
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
            scopes: HashMap::new(),
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
    ) -> HashMap<String, HashMap<String, PartitionScope>> {
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
        let mut scopes: HashMap<String, HashMap<String, PartitionScope>> = HashMap::new();
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
                    namespaces: HashMap::new(),
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
                    names: HashMap::new(),
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
mod tests {
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
        assert!(problem.contains("intention web => api permission[0]: PathRegex \"(?=lookahead)\" does not compile: "), "{problem}");
        assert!(!problem.contains('\n'));
        for d in [
            l4(&bad, "db", "default"),
            http(&bad, "web", "GET", "/", &[]),
            http(&bad, "db", "GET", "/", &[]),
        ] {
            assert!(!d.allowed);
            assert!(
                d.reason.starts_with(
                    "intentions for api could not be compiled, every caller is denied: "
                ),
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
            json!({"destination": {"name": "api"}, "default_allow": true, "intentions": [intention]}).to_string()
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
}
