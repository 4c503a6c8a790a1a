"""Consul intentions: the ``service-intentions`` config entry, precedence, and L4/L7 evaluation.

Pure values and functions, no I/O (consul.md §7). ``parse_entry``/``parse_entries`` validate entries the
way Consul's ``normalize``/``validate`` do (C:agent/structs/config_entry_intentions.go) and report the
first problem as one line, ``WHERE: key.path: what is wrong (expected ...)``. ``IntentionTable`` is
compiled once per snapshot for one destination service, so that a connection or request costs a dict
lookup (plus, for an L7 intention, one pass over its permissions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

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
    """One ``Permissions[].HTTP.Header[]`` item; exactly one of present/exact/prefix/suffix/regex is set."""

    name: str  # lower-cased: HTTP header names are case-insensitive and Envoy matches them lower-cased
    present: bool | None = None
    exact: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    regex: re.Pattern[str] | None = None
    invert: bool = False

    def matches(self, headers: Mapping[str, str]) -> bool:
        """``headers`` has lower-cased names; a repeated header is expected joined with "," as Envoy does."""
        value = headers.get(self.name)
        if value is None:
            # Envoy on a missing header: only a present matcher can match, and only inverted ("not present");
            # an inverted value matcher does NOT match a missing header
            # (envoy source/common/http/header_utility.cc matchHeaders).
            return self.invert and bool(self.present)
        if self.present:
            matched = True
        elif self.exact is not None:
            matched = value == self.exact
        elif self.prefix is not None:
            matched = value.startswith(self.prefix)
        elif self.suffix is not None:
            matched = value.endswith(self.suffix)
        elif self.regex is not None:
            matched = self.regex.fullmatch(value) is not None  # Envoy safe_regex matches the whole value
        else:
            matched = False
        return matched != self.invert

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
        if self.regex is not None:
            out["Regex"] = self.regex.pattern
        if self.invert:
            out["Invert"] = True
        return out


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    """``Permissions[].HTTP``: every given part must match (Consul ANDs them into one Envoy permission,
    C:agent/xds/rbac.go convertPermission)."""

    path_exact: str | None = None
    path_prefix: str | None = None
    path_regex: re.Pattern[str] | None = None  # full match, like Envoy's safe_regex
    methods: frozenset[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path_exact is not None or self.path_prefix is not None or self.path_regex is not None:
            # Envoy's url_path matcher sees the path without query string and fragment.
            for sep in "?#":
                cut = path.find(sep)
                if cut >= 0:
                    path = path[:cut]
            if self.path_exact is not None:
                if path != self.path_exact:
                    return False
            elif self.path_prefix is not None:
                if not path.startswith(self.path_prefix):
                    return False
            elif self.path_regex is not None and self.path_regex.fullmatch(path) is None:
                return False
        for h in self.headers:
            if not h.matches(headers):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.path_exact is not None:
            out["PathExact"] = self.path_exact
        if self.path_prefix is not None:
            out["PathPrefix"] = self.path_prefix
        if self.path_regex is not None:
            out["PathRegex"] = self.path_regex.pattern
        if self.headers:
            out["Header"] = [h.to_json() for h in self.headers]
        if self.methods is not None:
            out["Methods"] = sorted(self.methods)
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
_HEADER_KEYS = ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def _q(value: Any) -> str:
    # JSON quoting keeps user text on one line (newlines become \n) and reads like the file.
    return json.dumps(value, ensure_ascii=False, default=str)


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return f"{_q(value)} ({type(value).__name__})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Parser:
    """Walks one document; raises IntentionError at the first problem, naming its key path."""

    def __init__(self, where: str, from_server: bool):
        self.where = where
        self.from_server = from_server

    def fail(self, path: str, problem: str) -> NoReturn:
        raise IntentionError(f"{self.where}: {path or '(top level)'}: {problem}")

    def fields(self, obj: Any, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
        """The mapping's values under their canonical names, without nulls.

        Keys match case-insensitively and with or without underscores, like Consul's decoder (mapstructure
        is case-insensitive; lib/decode.HookTranslateKeys maps snake_case aliases such as path_exact).
        """
        if not isinstance(obj, Mapping):
            self.fail(path, f"expected a mapping, got {_kind_of(obj)}")
        canon = {k.lower(): k for k in keys}
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}
        for raw, value in obj.items():
            shown = raw if isinstance(raw, str) and _SAFE_KEY.match(raw) else _q(raw)
            key = canon.get(raw.replace("_", "").lower()) if isinstance(raw, str) else None
            if key is None:
                self.fail(_join(path, shown), f"unknown key (expected one of: {', '.join(keys)})")
            if key in seen:
                self.fail(_join(path, key), f"given twice, as {_q(seen[key])} and {_q(raw)} (expected once)")
            seen[key] = raw
            if value is not None:  # Go decoders leave a field at its zero value for null
                out[key] = value
        return out

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

    def regex(self, value: str, path: str) -> re.Pattern[str]:
        try:
            return re.compile(value)
        except re.error as e:
            self.fail(path, f"{_q(value)} does not compile: {e} (expected a regular expression)")

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
        compiled = self.regex(regex, _join(path, "PathRegex")) if regex else None

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
            path_regex=compiled,
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
        regex = self.string(f, "Regex", path)
        invert = self.boolean(f, "Invert", path)
        # Zero values count as unset, as in Go (Present: false, Exact: "").
        parts = (
            ("Present", present),
            ("Exact", exact),
            ("Prefix", prefix),
            ("Suffix", suffix),
            ("Regex", regex),
        )
        given = [k for k, v in parts if v]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            self.fail(path, f"sets {what} (expected exactly one of Present, Exact, Prefix, Suffix, Regex)")
        return HeaderMatch(
            name=name.lower(),
            present=True if present else None,
            exact=exact or None,
            prefix=prefix or None,
            suffix=suffix or None,
            regex=self.regex(regex, _join(path, "Regex")) if regex else None,
            invert=invert,
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


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class _Rule:
    """What one intention (or the default) decides, with every Decision allocated at build time."""

    l4: Decision
    permissions: tuple[tuple[HTTPMatch, Decision], ...]  # empty for an L4 intention
    fallthrough: Decision  # HTTP: an L4 intention's decision, or the default when no permission matched


class IntentionTable:
    """The intentions that apply to ONE destination service, compiled for constant-time lookups.

    Evaluation is Consul's: the first intention in precedence order whose source matches decides; nothing
    matching means the default policy (consul.md §7.3; C:agent/connect/authz.go, C:agent/xds/rbac.go).
    """

    __slots__ = (
        "_by_ns",
        "_by_peer",
        "_default",
        "_exact",
        "_local",
        "_local_fallback",
        "default_allow",
        "destination",
        "intentions",
        "namespace",
    )

    def __init__(
        self, destination: str, namespace: str, default_allow: bool, intentions: tuple[Intention, ...]
    ) -> None:
        self.destination = destination
        self.namespace = namespace
        self.default_allow = default_allow
        self.intentions = intentions  # in evaluation order
        policy = "allow" if default_allow else "deny"
        default = Decision(default_allow, f"default policy {policy}")
        self._default = _Rule(default, (), default)
        rules = [self._compile(ix) for ix in intentions]

        # First index, in evaluation order, of each kind of source. For a caller (peer, ns, name) the only
        # intentions that can match are its exact one, its namespace's "*", and "*/*" (same peer), so the
        # first match is the smallest of those three indexes.
        exact: dict[tuple[str, str, str], int] = {}
        by_ns: dict[tuple[str, str], int] = {}
        by_peer: dict[str, int] = {}
        for i, ix in enumerate(intentions):
            s = ix.source
            if s.namespace == WILDCARD:
                by_peer.setdefault(s.peer, i)
            elif s.name == WILDCARD:
                by_ns.setdefault((s.peer, s.namespace), i)
            else:
                exact.setdefault((s.peer, s.namespace, s.name), i)
        none = len(rules)
        rules.append(self._default)
        self._by_peer = {peer: rules[i] for peer, i in by_peer.items()}
        self._by_ns = {k: rules[min(i, by_peer.get(k[0], none))] for k, i in by_ns.items()}
        self._exact = {
            k: rules[min(i, by_ns.get((k[0], k[1]), none), by_peer.get(k[0], none))] for k, i in exact.items()
        }
        # Hot path: local callers in the default namespace are looked up by name alone.
        self._local = {k[2]: r for k, r in self._exact.items() if k[0] == "" and k[1] == DEFAULT_NAMESPACE}
        local_ns = self._by_ns.get(("", DEFAULT_NAMESPACE))
        self._local_fallback = local_ns if local_ns is not None else self._by_peer.get("", self._default)

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

    def _compile(self, ix: Intention) -> _Rule:
        s = ix.source
        src = s.label
        label = f"intention {src} => {_label(ix.destination_ns, ix.destination)}"
        if not s.is_l7:
            d = Decision(s.action == "allow", f"{label} ({s.action})", src, s.precedence)
            return _Rule(d, (), d)
        # On a TCP listener an L7 intention denies: the agent's authorize endpoint and Envoy's network RBAC
        # both treat it as deny (consul.md §7.3; C:agent/xds/rbac.go intentionToIntermediateRBACForm).
        l4 = Decision(False, f"{label} has L7 permissions, denied on a TCP listener", src, s.precedence)
        perms = tuple(
            (
                p.http,
                Decision(p.action == "allow", f"{label} permission[{j}] ({p.action})", src, s.precedence),
            )
            for j, p in enumerate(s.permissions)
        )
        # The request matched the intention's source but none of its permissions: the default applies, not a
        # lower-precedence intention (rbac.go subtracts the L7 source from every later intention).
        policy = "allow" if self.default_allow else "deny"
        fall = Decision(
            self.default_allow, f"{label}: no permission matched, default policy {policy}", src, s.precedence
        )
        return _Rule(l4, perms, fall)

    def _rule(self, source: str, source_ns: str, source_peer: str) -> _Rule:
        if not source_peer and (source_ns == DEFAULT_NAMESPACE or not source_ns):
            return self._local.get(source, self._local_fallback)
        ns = source_ns or DEFAULT_NAMESPACE
        rule = self._exact.get((source_peer, ns, source))
        if rule is None:
            rule = self._by_ns.get((source_peer, ns))
            if rule is None:
                rule = self._by_peer.get(source_peer, self._default)
        return rule

    def authorize_l4(
        self, source: str, source_ns: str = DEFAULT_NAMESPACE, *, source_peer: str = ""
    ) -> Decision:
        """A connection from ``source`` on a TCP listener (L7 intentions deny)."""
        return self._rule(source, source_ns, source_peer).l4

    def authorize_http(
        self,
        source: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        source_ns: str = DEFAULT_NAMESPACE,
        *,
        source_peer: str = "",
    ) -> Decision:
        """One request on an HTTP listener; ``headers`` must have lower-cased names."""
        rule = self._rule(source, source_ns, source_peer)
        for match, decision in rule.permissions:
            if match.matches(method, path, headers):
                return decision
        return rule.fallthrough

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
    headers: Mapping[str, str] | None = None,
) -> Decision:
    """Would ``source`` reach ``destination``? L4 unless a method, path or headers are given."""
    src_ns, src = _split(source, "source")
    dst_ns, dst = _split(destination, "destination")
    table = IntentionTable.build(entries, dst, default_allow, dst_ns)
    if method is None and path is None and headers is None:
        return table.authorize_l4(src, src_ns)
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return table.authorize_http(src, (method or "GET").upper(), path or "/", lowered, src_ns)
