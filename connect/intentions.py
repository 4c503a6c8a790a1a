"""Consul intentions: the ``service-intentions`` config entry, precedence, and the compile step to the core.

Pure values and functions, no I/O (consul.md §7). ``parse_entry``/``parse_entries`` validate entries the
way Consul's ``normalize``/``validate`` do (C:agent/structs/config_entry_intentions.go) and report the
first problem as one line, ``WHERE: key.path: what is wrong (expected ...)``. ``IntentionTable`` selects
and orders the intentions of one destination service and compiles them (``to_core``) into the Rust core's
table (gateway/core/proto/src/intentions.rs), the one evaluator: a connection or request costs a few map
lookups there (plus, for an L7 intention, one pass over its permissions). Regexes are checked at parse time
by the core too, with the RE2 rules it compiles them by (``_core`` is the one import of the extension).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from gateway.problems import Problems, fold_consul, join, kind_of, quote

KIND = "service-intentions"
WILDCARD = "*"
DEFAULT_NAMESPACE = "default"
ACTIONS = ("allow", "deny")
# net/http's method constants, the set Consul accepts in Permissions[].HTTP.Methods
# (C:agent/structs/config_entry.go isValidHTTPMethod).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"})
# Limits shared by every config entry's Meta and by Sources[].Description (C:agent/structs/structs.go
# metaMaxKeyPairs, metaKeyMaxLength, metaValueMaxLength).
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512


class IntentionError(ValueError):
    """A problem in a service-intentions entry; the message is one line naming the file and key path."""


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One ``Permissions[].HTTP.Header[]`` item; exactly one of present/exact/prefix/suffix/contains/regex is set.

    Matching is the core's (gateway/core/proto/src/matchers.rs): values of a repeated header joined with ",",
    ``ignore_case`` for exact/prefix/suffix/contains only, regex RE2 full match (l7-security.md §2.3, §6 9-10).
    """

    name: str  # lower-cased: HTTP header names are case-insensitive and Envoy matches them lower-cased
    present: bool | None = None
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: str | None = None  # RE2 syntax, checked by the core at parse time
    invert: bool = False
    contains: str | None = None
    ignore_case: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Name": self.name}
        if self.present:
            out["Present"] = True
        if self.exact is not None:
            out["Exact"] = self.exact
        if self.prefix is not None:
            out["Prefix"] = self.prefix
        if self.suffix is not None:
            out["Suffix"] = self.suffix
        if self.contains is not None:
            out["Contains"] = self.contains
        if self.regex is not None:
            out["Regex"] = self.regex
        if self.ignore_case:
            out["IgnoreCase"] = True
        if self.invert:
            out["Invert"] = True
        return out

    def to_core(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key, value in (
            ("exact", self.exact),
            ("prefix", self.prefix),
            ("suffix", self.suffix),
            ("contains", self.contains),
            ("regex", self.regex),
        ):
            if value is not None:
                out[key] = value
        if self.present:
            out["present"] = True
        if self.invert:
            out["invert"] = True
        if self.ignore_case:
            out["ignore_case"] = True
        return out


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    """``Permissions[].HTTP``: every given part must match (Consul ANDs them into one Envoy permission,
    C:agent/xds/rbac.go convertPermission). Evaluated by the core."""

    path_exact: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None  # RE2, full match, like Envoy's safe_regex
    methods: frozenset[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.path_exact is not None:
            out["PathExact"] = self.path_exact
        if self.path_prefix is not None:
            out["PathPrefix"] = self.path_prefix
        if self.path_regex is not None:
            out["PathRegex"] = self.path_regex
        if self.headers:
            out["Header"] = [h.to_json() for h in self.headers]
        if self.methods is not None:
            out["Methods"] = sorted(self.methods)
        return out

    def to_core(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("path_exact", self.path_exact),
            ("path_prefix", self.path_prefix),
            ("path_regex", self.path_regex),
        ):
            if value is not None:
                out[key] = value
        if self.methods is not None:
            out["methods"] = sorted(self.methods)
        if self.headers:
            out["headers"] = [h.to_core() for h in self.headers]
        return out


@dataclass(frozen=True, slots=True)
class Permission:
    action: str  # "allow" | "deny"
    http: HTTPMatch

    def to_json(self) -> dict[str, Any]:
        return {"Action": self.action, "HTTP": self.http.to_json()}


@dataclass(frozen=True, slots=True)
class SourceIntention:
    name: str  # exact service name or "*"
    namespace: str = DEFAULT_NAMESPACE  # "*" allowed only with name "*"
    partition: str = "default"
    peer: str = ""
    action: str | None = None  # None exactly when permissions are given
    permissions: tuple[Permission, ...] = ()
    precedence: int = 0  # always computed from the names (consul.md §7.2), never taken from input
    description: str = ""
    legacy_id: str = ""

    @property
    def is_l7(self) -> bool:
        return bool(self.permissions)

    @property
    def label(self) -> str:
        return _label(self.namespace, self.name, self.peer)

    def to_json(self, inherited_namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """``inherited_namespace`` is what parsing would fill in; a different namespace is written out."""
        out: dict[str, Any] = {"Name": self.name}
        if self.namespace != inherited_namespace:
            out["Namespace"] = self.namespace
        if self.peer:
            out["Peer"] = self.peer
        if self.action is not None:
            out["Action"] = self.action
        if self.permissions:
            out["Permissions"] = [p.to_json() for p in self.permissions]
        out["Precedence"] = self.precedence
        out["Type"] = "consul"
        if self.description:
            out["Description"] = self.description
        if self.legacy_id:
            out["LegacyID"] = self.legacy_id
        return out


@dataclass(frozen=True, slots=True)
class ServiceIntentions:
    """One ``service-intentions`` config entry, normalized: sources stable-sorted by descending precedence."""

    name: str  # the destination service, or "*"
    namespace: str = DEFAULT_NAMESPACE
    sources: tuple[SourceIntention, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def is_wildcard(self) -> bool:
        return self.name == WILDCARD or self.namespace == WILDCARD

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Kind": KIND, "Name": self.name}
        if self.namespace != DEFAULT_NAMESPACE:
            out["Namespace"] = self.namespace
        out["Sources"] = [s.to_json(_inherited_namespace(self.namespace, s.peer)) for s in self.sources]
        if self.meta:
            out["Meta"] = dict(self.meta)
        return out


@dataclass(frozen=True, slots=True)
class Intention:
    """One (destination, source) pair: the legacy flat shape that precedence sorting works on."""

    destination_ns: str
    destination: str
    source: SourceIntention

    @property
    def precedence(self) -> int:
        return self.source.precedence

    @property
    def sort_key(self) -> tuple[int, str, str, str, str]:
        return sort_key(self.source.namespace, self.source.name, self.destination_ns, self.destination)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # short and human, for logs and the admin endpoint
    # The deciding intention's source ("web", "*", "team/web"); None when the default policy decided.
    source: str | None = None
    precedence: int | None = None


# --------------------------------------------------------------------------- precedence


def _count_exact(ns: str, name: str) -> int:
    # A wildcard namespace implies a wildcard name: "*/exact" is rejected at validation
    # (consul.md §7.2; C:agent/structs/config_entry_intentions.go intentionCountExact).
    if (ns or DEFAULT_NAMESPACE) == WILDCARD:
        return 0
    return 1 if name == WILDCARD else 2


def precedence(src_ns: str, src_name: str, dst_ns: str, dst_name: str) -> int:
    """9 (exact => exact) down to 1 (*/* => */*) (consul.md §7.2; computeIntentionPrecedence)."""
    top = (3, 6, 9)[_count_exact(dst_ns, dst_name)]
    return top - (2 - _count_exact(src_ns, src_name))


def sort_key(src_ns: str, src_name: str, dst_ns: str, dst_name: str) -> tuple[int, str, str, str, str]:
    """Key for ``sorted``: higher precedence first, ties by (SrcNS, Src, DstNS, Dst) ascending.

    Empty namespace = default (consul.md §7.2; C:agent/structs/intention.go IntentionPrecedenceSorter.Less).
    """
    src_ns = src_ns or DEFAULT_NAMESPACE
    dst_ns = dst_ns or DEFAULT_NAMESPACE
    return (-precedence(src_ns, src_name, dst_ns, dst_name), src_ns, src_name, dst_ns, dst_name)


def sort_intentions(intentions: Iterable[Intention]) -> list[Intention]:
    # Stable, so equal keys (only possible across entries for the same destination) keep input order.
    return sorted(intentions, key=lambda ix: ix.sort_key)


def flatten(entries: Iterable[ServiceIntentions]) -> list[Intention]:
    """Every (destination, source) pair, in precedence order (as GET /v1/connect/intentions lists them)."""
    return sort_intentions(Intention(e.namespace, e.name, s) for e in entries for s in e.sources)


def _inherited_namespace(dest_ns: str, peer: str) -> str:
    # A local source inherits the destination's namespace unless that is the wildcard (MergeNoWildcard);
    # a peered source's namespace only defaults (C:agent/structs/config_entry_intentions.go normalize).
    return DEFAULT_NAMESPACE if peer or dest_ns == WILDCARD else dest_ns


def _label(ns: str, name: str, peer: str = "") -> str:
    base = name if ns in ("", DEFAULT_NAMESPACE) else f"{ns}/{name}"
    return f"peer:{peer}/{base}" if peer else base


# --------------------------------------------------------------------------- parsing

_ENTRY_KEYS = (
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Sources",
    "Meta",
    "JWT",
    "CreateIndex",
    "ModifyIndex",
    "Hash",
)
_SOURCE_KEYS = (
    "Name",
    "Namespace",
    "Partition",
    "Peer",
    "SamenessGroup",
    "Action",
    "Permissions",
    "Precedence",
    "Type",
    "Description",
    "LegacyID",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
)
_PERMISSION_KEYS = ("Action", "HTTP", "JWT")
_HTTP_KEYS = ("PathExact", "PathPrefix", "PathRegex", "Header", "Methods")
_HEADER_KEYS = ("Name", "Present", "Exact", "Prefix", "Suffix", "Contains", "Regex", "Invert", "IgnoreCase")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


# One reader for every file meshgw reads (gateway/problems.py), so these lines are worded as meshgw.yaml's are.
_q = quote
_kind_of = kind_of
_join = join


class _Parser:
    """Walks one document; raises IntentionError at the first problem, naming its key path."""

    def __init__(self, where: str, from_server: bool):
        self.where = where
        self.from_server = from_server
        # Keys match case-insensitively and with or without underscores, like Consul's decoder (mapstructure
        # is case-insensitive; lib/decode.HookTranslateKeys maps snake_case aliases such as path_exact).
        self.r = Problems(where, fold=fold_consul, first=IntentionError)

    def fail(self, path: str, problem: str) -> NoReturn:
        self.r.fail(path, problem)

    def fields(self, obj: Any, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
        """The mapping's values under their canonical names, without nulls (Go leaves a field at its zero
        value for null)."""
        return self.r.mapping(obj, path, keys, required=True, drop_null=True)

    def string(self, f: Mapping[str, Any], key: str, path: str) -> str:
        value = f.get(key, "")
        if not isinstance(value, str):
            self.fail(_join(path, key), f"expected a string, got {_kind_of(value)}")
        return value

    def boolean(self, f: Mapping[str, Any], key: str, path: str) -> bool:
        value = f.get(key, False)
        if not isinstance(value, bool):
            self.fail(_join(path, key), f"expected true or false, got {_kind_of(value)}")
        return value

    def seq(self, f: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = f.get(key, [])
        if not isinstance(value, list | tuple):
            self.fail(_join(path, key), f"expected a list, got {_kind_of(value)}")
        return list(value)

    def action(self, value: Any, path: str) -> str:
        if value not in ACTIONS:
            self.fail(path, f"{_q(value)} is not allowed (expected allow or deny)")
        return str(value)

    def regex(self, value: str, path: str) -> str:
        # The core's check (RE2 syntax and size limits, as it will compile it), not Python's re: a pattern
        # only Python accepts would otherwise deny every caller of the destination (fail closed).
        problem = _core().check_regex(value)
        if problem is not None:
            self.fail(path, f"{_q(value)} {problem}")
        return value

    def wildcards(self, path: str, ns: str, name: str, peer: str = "") -> None:
        # Same checks and order as validateIntentionWildcards (C:agent/structs/config_entry_intentions.go).
        if ns != WILDCARD and WILDCARD in ns:
            self.fail(
                _join(path, "Namespace"), f"{_q(ns)} uses '*' in a partial value (expected a name or \"*\")"
            )
        if name != WILDCARD:
            if WILDCARD in name:
                self.fail(
                    _join(path, "Name"), f"{_q(name)} uses '*' in a partial value (expected a name or \"*\")"
                )
            if ns == WILDCARD:
                self.fail(
                    _join(path, "Name"),
                    f"exact value {_q(name)} cannot follow wildcard namespace "
                    '(expected "*" with Namespace "*")',
                )
        if WILDCARD in peer:
            self.fail(_join(path, "Peer"), f"{_q(peer)} cannot use '*' (expected an exact peer name)")

    def partition(self, f: Mapping[str, Any], path: str) -> str:
        part = self.string(f, "Partition", path)
        if part not in ("", "default"):
            self.fail(
                _join(path, "Partition"), f"{_q(part)}: admin partitions are not supported (expected default)"
            )
        return part

    # ------------------------------------------------------------------ entry

    def entry(self, obj: Any, path: str) -> ServiceIntentions:
        f = self.fields(obj, path, _ENTRY_KEYS)
        # `consul config write` needs Kind to pick the entry type, so a file without it is a mistake.
        if "Kind" not in f:
            self.fail(_join(path, "Kind"), f"is required (expected {_q(KIND)})")
        if f["Kind"] != KIND:
            self.fail(_join(path, "Kind"), f"{_q(f['Kind'])} is not allowed (expected {_q(KIND)})")
        name = self.string(f, "Name", path)
        if not name:
            self.fail(_join(path, "Name"), 'is required (expected the destination service name or "*")')
        ns = self.string(f, "Namespace", path) or DEFAULT_NAMESPACE
        self.wildcards(path, ns, name)
        self.partition(f, path)
        jwt = f.get("JWT")
        if jwt:
            # Ignoring a JWT requirement would allow more than the operator wrote, so refuse it.
            self.fail(
                _join(path, "JWT"), "JWT requirements are not supported by meshgw (expected no JWT key)"
            )
        meta = self.meta(f.get("Meta", {}), _join(path, "Meta"))

        if "Sources" not in f:
            self.fail(_join(path, "Sources"), "is required (expected a list with at least one source)")
        raw_sources = self.seq(f, "Sources", path)
        if not raw_sources:
            self.fail(_join(path, "Sources"), "is empty (expected a list with at least one source)")
        dest_wild = name == WILDCARD or ns == WILDCARD
        sources: list[SourceIntention] = []
        first_at: dict[tuple[str, str, str], int] = {}
        for i, raw in enumerate(raw_sources):
            spath = f"{_join(path, 'Sources')}[{i}]"
            src = self.source(raw, spath, ns, name, dest_wild)
            key = (src.peer, src.namespace, src.name)
            if key in first_at:
                # Consul: `Sources[%d] defines "<ns/name>" more than once` (config_entry_intentions.go).
                self.fail(
                    spath,
                    f"defines {_q(src.label)} more than once (expected each source once; "
                    f"first at Sources[{first_at[key]}])",
                )
            first_at[key] = i
            sources.append(src)
        # Normalize: stable sort by descending precedence, as Consul stores it (consul.md §7.1).
        sources.sort(key=lambda s: -s.precedence)
        return ServiceIntentions(name=name, namespace=ns, sources=tuple(sources), meta=meta)

    def meta(self, obj: Any, path: str) -> dict[str, str]:
        if not isinstance(obj, Mapping):
            self.fail(path, f"expected a mapping of strings, got {_kind_of(obj)}")
        if len(obj) > META_MAX_PAIRS:
            self.fail(path, f"has {len(obj)} keys (expected at most {META_MAX_PAIRS})")
        out: dict[str, str] = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                self.fail(_join(path, _q(k)), "key is not a string (expected string keys)")
            kpath = _join(path, k if _SAFE_KEY.match(k) else _q(k))
            if len(k) > META_KEY_MAX:
                self.fail(kpath, f"key is {len(k)} characters long (expected at most {META_KEY_MAX})")
            if not isinstance(v, str):
                self.fail(kpath, f"expected a string, got {_kind_of(v)}")
            if len(v) > META_VALUE_MAX:
                self.fail(kpath, f"value is {len(v)} characters long (expected at most {META_VALUE_MAX})")
            out[k] = v
        return out

    # ------------------------------------------------------------------ source

    def source(self, obj: Any, path: str, dest_ns: str, dest_name: str, dest_wild: bool) -> SourceIntention:
        f = self.fields(obj, path, _SOURCE_KEYS)
        name = self.string(f, "Name", path)
        if not name:
            self.fail(_join(path, "Name"), 'is required (expected a service name or "*")')
        if self.string(f, "SamenessGroup", path):
            self.fail(
                _join(path, "SamenessGroup"), "sameness groups are not supported (expected no SamenessGroup)"
            )
        peer = self.string(f, "Peer", path)
        given_ns = self.string(f, "Namespace", path)
        ns = given_ns or _inherited_namespace(dest_ns, peer)
        self.wildcards(path, ns, name, peer)
        part = self.partition(f, path)
        if peer and part:
            self.fail(
                _join(path, "Peer"), "cannot set Peer and Partition at the same time (expected one of them)"
            )

        description = self.string(f, "Description", path)
        if len(description) > META_VALUE_MAX:
            self.fail(
                _join(path, "Description"),
                f"is {len(description)} characters long (expected at most {META_VALUE_MAX})",
            )
        legacy_id = ""
        for key in ("LegacyID", "LegacyMeta", "LegacyCreateTime", "LegacyUpdateTime"):
            if f.get(key) and not self.from_server:
                # Only Consul's own bridge from the old intentions API sets these (consul.md §7.1).
                self.fail(_join(path, key), "must be omitted in a config entry (expected no Legacy* keys)")
        if self.from_server:
            legacy_id = self.string(f, "LegacyID", path)

        type_ = self.string(f, "Type", path)
        if type_ not in ("", "consul"):
            self.fail(_join(path, "Type"), f"{_q(type_)} is not allowed (expected consul)")

        raw_perms = self.seq(f, "Permissions", path)
        action: str | None = None
        if raw_perms:
            if "Action" in f:
                self.fail(
                    _join(path, "Action"),
                    "must be omitted when Permissions are given (expected either Action or Permissions)",
                )
            if dest_wild:
                self.fail(
                    _join(path, "Permissions"),
                    'not allowed when the destination is a wildcard (expected Action only for Name "*")',
                )
        else:
            if "Action" not in f:
                self.fail(
                    _join(path, "Action"), "is required (expected allow or deny, or a Permissions list)"
                )
            action = self.action(f["Action"], _join(path, "Action"))
        permissions = tuple(
            self.permission(p, f"{_join(path, 'Permissions')}[{j}]") for j, p in enumerate(raw_perms)
        )
        return SourceIntention(
            name=name,
            namespace=ns,
            partition="default",
            peer=peer,
            action=action,
            permissions=permissions,
            precedence=precedence(ns, name, dest_ns, dest_name),
            description=description,
            legacy_id=legacy_id,
        )

    # ------------------------------------------------------------------ L7

    def permission(self, obj: Any, path: str) -> Permission:
        f = self.fields(obj, path, _PERMISSION_KEYS)
        if "Action" not in f:
            self.fail(_join(path, "Action"), "is required (expected allow or deny)")
        action = self.action(f["Action"], _join(path, "Action"))
        if f.get("JWT"):
            self.fail(
                _join(path, "JWT"), "JWT requirements are not supported by meshgw (expected no JWT key)"
            )
        if "HTTP" not in f:
            self.fail(_join(path, "HTTP"), "is required (expected a mapping with a path, headers or methods)")
        return Permission(action=action, http=self.http(f["HTTP"], _join(path, "HTTP")))

    def http(self, obj: Any, path: str) -> HTTPMatch:
        f = self.fields(obj, path, _HTTP_KEYS)
        exact = self.string(f, "PathExact", path)
        prefix = self.string(f, "PathPrefix", path)
        regex = self.string(f, "PathRegex", path)
        for key, value in (("PathExact", exact), ("PathPrefix", prefix)):
            if value and not value.startswith("/"):
                self.fail(
                    _join(path, key), f'{_q(value)} does not start with "/" (expected a path such as /api)'
                )
        if sum(1 for v in (exact, prefix, regex) if v) > 1:
            self.fail(path, "sets more than one of PathExact, PathPrefix, PathRegex (expected at most one)")
        checked = self.regex(regex, _join(path, "PathRegex")) if regex else None

        headers = tuple(
            self.header(h, f"{_join(path, 'Header')}[{k}]") for k, h in enumerate(self.seq(f, "Header", path))
        )

        methods: frozenset[str] | None = None
        raw_methods = self.seq(f, "Methods", path)
        if raw_methods:
            seen: set[str] = set()
            for k, m in enumerate(raw_methods):
                mpath = f"{_join(path, 'Methods')}[{k}]"
                if not isinstance(m, str):
                    self.fail(mpath, f"expected a string, got {_kind_of(m)}")
                # Upper-cased on normalize, before validation, so "get" and "GET" are duplicates.
                up = m.upper()
                if up not in HTTP_METHODS:
                    self.fail(
                        mpath,
                        f"{_q(m)} is not an HTTP method (expected one of: {', '.join(sorted(HTTP_METHODS))})",
                    )
                if up in seen:
                    self.fail(mpath, f"{_q(up)} is listed more than once (expected each method once)")
                seen.add(up)
            methods = frozenset(seen)

        if not (exact or prefix or regex or headers or methods):
            self.fail(
                path,
                "should not be empty "
                "(expected at least one of PathExact, PathPrefix, PathRegex, Header, Methods)",
            )
        return HTTPMatch(
            path_exact=exact or None,
            path_prefix=prefix or None,
            path_regex=checked,
            methods=methods,
            headers=headers,
        )

    def header(self, obj: Any, path: str) -> HeaderMatch:
        f = self.fields(obj, path, _HEADER_KEYS)
        name = self.string(f, "Name", path)
        if not name:
            self.fail(_join(path, "Name"), "is required (expected a header name)")
        present = self.boolean(f, "Present", path)
        exact = self.string(f, "Exact", path)
        prefix = self.string(f, "Prefix", path)
        suffix = self.string(f, "Suffix", path)
        contains = self.string(f, "Contains", path)
        regex = self.string(f, "Regex", path)
        invert = self.boolean(f, "Invert", path)
        # Consul ≥ 1.20.1 (l7-security.md §2.1); it only affects Exact/Prefix/Suffix/Contains and, like Envoy
        # via rbac.go, is ignored beside Regex or Present.
        ignore_case = self.boolean(f, "IgnoreCase", path)
        # Zero values count as unset, as in Go (Present: false, Exact: "").
        parts = (
            ("Present", present),
            ("Exact", exact),
            ("Prefix", prefix),
            ("Suffix", suffix),
            ("Contains", contains),
            ("Regex", regex),
        )
        given = [k for k, v in parts if v]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            self.fail(
                path, f"sets {what} (expected exactly one of Present, Exact, Prefix, Suffix, Contains, Regex)"
            )
        return HeaderMatch(
            name=name.lower(),
            present=True if present else None,
            exact=exact or None,
            prefix=prefix or None,
            suffix=suffix or None,
            regex=self.regex(regex, _join(path, "Regex")) if regex else None,
            invert=invert,
            contains=contains or None,
            ignore_case=ignore_case,
        )


def parse_entry(obj: Any, where: str = "<entry>", *, from_server: bool = False) -> ServiceIntentions:
    """Validate and normalize one service-intentions config entry (JSON or YAML-loaded data).

    ``from_server`` accepts what Consul itself returns for entries migrated from the legacy intentions API
    (``LegacyID`` and friends), which a config-entry write must omit.
    """
    return _Parser(where, from_server).entry(obj, "")


def parse_entries(obj: Any, where: str, *, from_server: bool = False) -> tuple[ServiceIntentions, ...]:
    """One entry (a mapping) or a list of entries; one entry per destination."""
    p = _Parser(where, from_server)
    if isinstance(obj, Mapping):
        return (p.entry(obj, ""),)
    if not isinstance(obj, list | tuple):
        p.fail("", f"expected a service-intentions entry or a list of them, got {_kind_of(obj)}")
    out: list[ServiceIntentions] = []
    first_at: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(obj):
        entry = p.entry(raw, f"[{i}]")
        key = (entry.namespace, entry.name)
        if key in first_at:
            p.fail(
                f"[{i}].Name",
                f"destination {_q(_label(*key))} is defined more than once "
                f"(expected one entry per destination; first at [{first_at[key]}])",
            )
        first_at[key] = i
        out.append(entry)
    return tuple(out)


# --------------------------------------------------------------------------- evaluation (in the core)

# What authorize_http takes as headers: a mapping (lower-case or any-case names), (name, value) pairs with
# repeated names allowed (the wire's list, str or bytes), or a callable giving such pairs, called only when
# some permission of the table reads a header.
Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | Callable[[], Iterable[Any]] | None


def _core() -> Any:
    """The Rust core (gateway._core), the one evaluator of intentions (design.md "one of each").

    The only place connect/ reaches into the data plane's extension: imported on first use, so that parsing
    stays importable without it until a regex or a table needs checking.
    """
    from gateway import _core

    return _core


class IntentionTable:
    """The intentions that apply to ONE destination service, in evaluation order.

    Python selects and orders them (precedence, consul.md §7.2) and compiles them into the core's TableSpec
    (``to_core``); the core decides: the first intention in precedence order whose source matches, else the
    default policy (consul.md §7.3; C:agent/connect/authz.go, C:agent/xds/rbac.go). The core table is built on
    first use, once; every Decision it can return is built then too, so ``authorize_*`` allocate nothing.
    """

    __slots__ = ("_compiled", "_decisions", "_reads_headers", "default_allow", "destination", "intentions", "namespace")

    def __init__(
        self, destination: str, namespace: str, default_allow: bool, intentions: tuple[Intention, ...]
    ) -> None:
        self.destination = destination
        self.namespace = namespace
        self.default_allow = default_allow
        self.intentions = intentions  # in evaluation order
        self._compiled: Any = None
        self._decisions: tuple[Decision, ...] = ()
        self._reads_headers = False

    @classmethod
    def build(
        cls,
        entries: Iterable[ServiceIntentions],
        destination: str,
        default_allow: bool,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> IntentionTable:
        namespace = namespace or DEFAULT_NAMESPACE
        applicable = (
            Intention(e.namespace, e.name, s)
            for e in entries
            if e.namespace in (WILDCARD, namespace) and e.name in (WILDCARD, destination)
            for s in e.sources
        )
        return cls(destination, namespace, default_allow, tuple(sort_intentions(applicable)))

    def to_core(self) -> dict[str, Any]:
        """The core's TableSpec (schema: gateway/core/proto/src/intentions.rs module doc)."""
        out: list[dict[str, Any]] = []
        for ix in self.intentions:
            s = ix.source
            item: dict[str, Any] = {
                "source": {"name": s.name, "namespace": s.namespace, "partition": s.partition, "peer": s.peer},
                "destination": {"name": ix.destination, "namespace": ix.destination_ns},
                "precedence": s.precedence,
            }
            if s.is_l7:
                item["permissions"] = [{"action": p.action, "http": p.http.to_core()} for p in s.permissions]
            else:
                item["action"] = s.action
            out.append(item)
        return {
            "destination": {"name": self.destination, "namespace": self.namespace},
            "default_allow": self.default_allow,
            "intentions": out,
        }

    def core(self) -> Any:
        """The compiled ``gateway._core.IntentionTable`` (built on first use)."""
        compiled = self._compiled
        if compiled is None:
            compiled = _core().IntentionTable.from_json(json.dumps(self.to_core()))
            self._decisions = tuple(
                Decision(d.allowed, d.reason, d.source, d.precedence) for d in compiled.decisions()
            )
            self._reads_headers = bool(compiled.header_names)
            self._compiled = compiled
        return compiled

    @property
    def problem(self) -> str | None:
        """Why the core could not compile the table (it then denies every caller), else None."""
        return self.core().problem  # type: ignore[no-any-return]

    def authorize_l4(
        self, source: str, source_ns: str = DEFAULT_NAMESPACE, *, source_peer: str = ""
    ) -> Decision:
        """A connection from ``source`` on a TCP listener (L7 intentions deny)."""
        core = self.core()
        return self._decisions[core.authorize_l4(source, source_ns, source_peer).index]

    def authorize_http(
        self,
        source: str,
        method: str,
        path: str,
        headers: Headers,
        source_ns: str = DEFAULT_NAMESPACE,
        *,
        source_peer: str = "",
    ) -> Decision:
        """One request on an HTTP listener; ``path`` is the normalized path (a ``?query`` is ignored)."""
        core = self.core()
        given = None
        if self._reads_headers and headers is not None:
            given = headers() if callable(headers) else headers
        return self._decisions[core.authorize_http(source, method, path, given, source_ns, source_peer).index]

    def rules(self) -> list[dict[str, Any]]:
        """JSON-able summary in evaluation order (the default policy applies after the last one)."""
        out: list[dict[str, Any]] = []
        for ix in self.intentions:
            s = ix.source
            item: dict[str, Any] = {
                "Source": s.label,
                "Destination": _label(ix.destination_ns, ix.destination),
                "Precedence": s.precedence,
            }
            if s.is_l7:
                item["Permissions"] = [p.to_json() for p in s.permissions]
            else:
                item["Action"] = s.action
            if s.description:
                item["Description"] = s.description
            out.append(item)
        return out


def _split(value: str, what: str) -> tuple[str, str]:
    # `name` or `ns/name`, the CLI syntax of `consul intention check` (consul.md §7.4).
    parts = value.split("/")
    if len(parts) == 1 and parts[0]:
        return DEFAULT_NAMESPACE, parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise IntentionError(f"{what}: {_q(value)} is not a service (expected name or namespace/name)")


def check(
    entries: Iterable[ServiceIntentions],
    source: str,
    destination: str,
    default_allow: bool,
    method: str | None = None,
    path: str | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> Decision:
    """Would ``source`` reach ``destination``? L4 unless a method, path or headers are given.

    ``headers``: a mapping or (name, value) pairs; a repeated name is matched joined with "," as on the wire.
    """
    src_ns, src = _split(source, "source")
    dst_ns, dst = _split(destination, "destination")
    table = IntentionTable.build(entries, dst, default_allow, dst_ns)
    if method is None and path is None and headers is None:
        return table.authorize_l4(src, src_ns)
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    return table.authorize_http(src, (method or "GET").upper(), path or "/", pairs, src_ns)
