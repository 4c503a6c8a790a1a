"""connect/intentions.py: precedence vectors, validation, L4/L7 evaluation (consul.md §7)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.intentions import (
    KIND,
    Decision,
    HeaderMatch,
    HTTPMatch,
    Intention,
    IntentionError,
    IntentionTable,
    Permission,
    ServiceIntentions,
    SourceIntention,
    check,
    flatten,
    parse_entries,
    parse_entry,
    precedence,
    sort_intentions,
    sort_key,
)


def entry(name: str = "api", *sources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"Kind": KIND, "Name": name, "Sources": list(sources), **extra}


def allow(name: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Action": "allow", **extra}


def deny(name: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Action": "deny", **extra}


def l7(name: str, *perms: tuple[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Permissions": [{"Action": a, "HTTP": h} for a, h in perms], **extra}


def table(*entries: dict[str, Any], dest: str = "api", default_allow: bool = False, ns: str = "default"):
    return IntentionTable.build(parse_entries(list(entries), "t.yaml"), dest, default_allow, ns)


# --------------------------------------------------------------------------- precedence (consul.md §7.2)

# The formula table: (src ns, src name, dst ns, dst name) -> precedence.
FORMULA = [
    (("exact", "exact", "exact", "exact"), 9),
    (("exact", "*", "exact", "exact"), 8),
    (("*", "*", "exact", "exact"), 7),
    (("exact", "exact", "exact", "*"), 6),
    (("exact", "*", "exact", "*"), 5),
    (("*", "*", "exact", "*"), 4),
    (("exact", "exact", "*", "*"), 3),
    (("exact", "*", "*", "*"), 2),
    (("*", "*", "*", "*"), 1),
]


@pytest.mark.parametrize(("names", "expected"), FORMULA, ids=lambda v: "/".join(v) if isinstance(v, tuple) else None)
def test_precedence_formula(names: tuple[str, str, str, str], expected: int) -> None:
    assert precedence(*names) == expected


def test_precedence_empty_namespace_is_default() -> None:
    assert precedence("", "web", "", "api") == 9
    assert precedence("", "*", "", "*") == 5


def _sorted(tuples: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    return sorted(tuples, key=lambda t: sort_key(*t))


def test_sorter_exhaustive_list() -> None:
    # C:agent/structs/intention_test.go TestIntentionPrecedenceSorter "exhaustive list".
    given_order = [
        ("*", "*", "exact", "*"),
        ("*", "*", "*", "*"),
        ("exact", "*", "exact", "exact"),
        ("*", "*", "exact", "exact"),
        ("exact", "exact", "*", "*"),
        ("exact", "exact", "exact", "exact"),
        ("exact", "exact", "exact", "*"),
        ("exact", "*", "exact", "*"),
        ("exact", "*", "*", "*"),
    ]
    expected = [
        ("exact", "exact", "exact", "exact"),
        ("exact", "*", "exact", "exact"),
        ("*", "*", "exact", "exact"),
        ("exact", "exact", "exact", "*"),
        ("exact", "*", "exact", "*"),
        ("*", "*", "exact", "*"),
        ("exact", "exact", "*", "*"),
        ("exact", "*", "*", "*"),
        ("*", "*", "*", "*"),
    ]
    assert _sorted(given_order) == expected
    assert [precedence(*t) for t in expected] == [9, 8, 7, 6, 5, 4, 3, 2, 1]


def test_sorter_tiebreak_deterministically() -> None:
    # C:agent/structs/intention_test.go TestIntentionPrecedenceSorter "tiebreak deterministically".
    expected = [
        ("a", "a", "a", "a"),
        ("a", "a", "a", "b"),
        ("a", "a", "b", "a"),
        ("a", "b", "a", "a"),
        ("b", "a", "a", "a"),
        ("a", "*", "a", "a"),
        ("a", "*", "a", "b"),
    ]
    for shuffled in (list(reversed(expected)), expected[3:] + expected[:3], expected[1::2] + expected[::2]):
        assert _sorted(shuffled) == expected


def test_sort_intentions_uses_the_same_order() -> None:
    expected = [("a", "a", "a", "a"), ("a", "a", "a", "b"), ("b", "a", "a", "a"), ("a", "*", "a", "a")]
    ixs = [
        Intention(dns, dn, SourceIntention(sn, sns, action="allow", precedence=precedence(sns, sn, dns, dn)))
        for (sns, sn, dns, dn) in reversed(expected)
    ]
    got = [(i.source.namespace, i.source.name, i.destination_ns, i.destination) for i in sort_intentions(ixs)]
    assert got == expected


def test_katacoda_listing_precedences() -> None:
    # consul.md §7.2 vector 3: default/web -> default/api is 9, default/* -> default/* is 5.
    ents = parse_entries([entry("api", allow("web")), entry("*", deny("*"))], "k.yaml")
    flat = {(i.source.name, i.destination): i.precedence for i in flatten(ents)}
    assert flat == {("web", "api"): 9, ("*", "*"): 5}


def test_rbac_go_example() -> None:
    # C:agent/xds/rbac.go makeRBACRules comment: 9 / 8 / 7, then the default deny.
    ents = parse_entry(
        {
            "Kind": KIND,
            "Name": "payment-svc",
            "Namespace": "billing",
            "Sources": [
                {"Name": "*", "Namespace": "*", "Action": "allow"},
                {"Name": "*", "Namespace": "intern", "Action": "deny"},
                {"Name": "trusted-app", "Namespace": "intern", "Action": "allow"},
            ],
        },
        "rbac.yaml",
    )
    assert [(s.namespace, s.name, s.precedence) for s in ents.sources] == [
        ("intern", "trusted-app", 9),
        ("intern", "*", 8),
        ("*", "*", 7),
    ]
    t = IntentionTable.build([ents], "payment-svc", False, "billing")
    cases = [
        ("trusted-app", "intern", True, 9),
        ("other-app", "intern", False, 8),
        ("anything", "elsewhere", True, 7),
        ("trusted-app", "default", True, 7),
    ]
    for src, ns, allowed, prec in cases:
        d = t.authorize_l4(src, ns)
        assert (d.allowed, d.precedence) == (allowed, prec), (src, ns, d)
    # A different destination in the same namespace is not covered: default deny.
    other = IntentionTable.build([ents], "ledger", False, "billing")
    assert other.authorize_l4("trusted-app", "intern") == Decision(False, "default policy deny")


# --------------------------------------------------------------------------- validation (consul.md §7.1, §7.2 #5)

SRC = {"Name": "web", "Action": "allow"}


def _perm(http: Any, action: str = "allow") -> dict[str, Any]:
    return entry("api", {"Name": "web", "Permissions": [{"Action": action, "HTTP": http}]})


HTTP = "Sources[0].Permissions[0].HTTP"
INVALID: list[tuple[str, Any, str]] = [
    # (id, document, expected "path: problem" substring)
    ("kind-missing", {"Name": "api", "Sources": [SRC]}, 'Kind: is required (expected "service-intentions")'),
    ("kind-wrong", entry(Kind="service-defaults"), 'Kind: "service-defaults" is not allowed'),
    ("name-missing", {"Kind": KIND, "Sources": [SRC]}, "Name: is required"),
    ("name-empty", entry(""), "Name: is required"),
    ("name-not-string", entry(5, SRC), "Name: expected a string, got 5 (int)"),  # type: ignore[arg-type]
    ("dest-partial-wildcard", entry("api*", SRC), "Name: \"api*\" uses '*' in a partial value"),
    ("dest-follow-wildcard", entry("api", SRC, Namespace="*"), 'Name: exact value "api" cannot follow wildcard'),
    ("dest-ns-partial", entry("api", SRC, Namespace="te*"), "Namespace: \"te*\" uses '*' in a partial value"),
    ("partition", entry("api", SRC, Partition="admin"), 'Partition: "admin": admin partitions are not supported'),
    ("sources-missing", {"Kind": KIND, "Name": "api"}, "Sources: is required"),
    ("sources-empty", entry("api"), "Sources: is empty (expected a list with at least one source)"),
    ("sources-mapping", {"Kind": KIND, "Name": "api", "Sources": SRC}, "Sources: expected a list, got a mapping"),
    ("source-not-mapping", entry("api", "web"), 'Sources[0]: expected a mapping, got "web" (str)'),
    ("source-name-missing", entry("api", {"Action": "allow"}), "Sources[0].Name: is required"),
    ("source-partial-wildcard", entry("api", allow("web*")), "Sources[0].Name: \"web*\" uses '*' in a partial"),
    ("source-foo-star", entry("api", allow("foo*")), "partial value"),  # TestIntentionValidate "partial value"
    ("source-follow-wildcard", entry("api", allow("web", Namespace="*")), 'Sources[0].Name: exact value "web"'),
    ("source-ns-partial", entry("api", allow("*", Namespace="a*")), 'Sources[0].Namespace: "a*" uses'),
    ("action-missing", entry("api", {"Name": "web"}), "Sources[0].Action: is required (expected allow or deny"),
    ("action-typo", entry("api", {"Name": "web", "Action": "alow"}), 'Sources[0].Action: "alow" is not allowed'),
    ("action-case", entry("api", {"Name": "web", "Action": "Allow"}), 'Sources[0].Action: "Allow" is not allowed'),
    (
        "action-with-permissions",
        entry(
            "api", {"Name": "web", "Action": "allow", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/"}}]}
        ),
        "Sources[0].Action: must be omitted when Permissions are given",
    ),
    (
        "permissions-on-wildcard-dest",
        entry("*", l7("web", ("allow", {"PathPrefix": "/"}))),
        "Sources[0].Permissions: not allowed when the destination is a wildcard",
    ),
    ("duplicate-source", entry("api", allow("web"), deny("web")), 'Sources[1]: defines "web" more than once'),
    ("duplicate-source-key-case", entry("api", allow("web"), {"name": "web", "action": "deny"}), "more than once"),
    (
        "type-other",
        entry("api", allow("web", Type="other")),
        'Sources[0].Type: "other" is not allowed (expected consul)',
    ),
    ("legacy-id", entry("api", allow("web", LegacyID="abc")), "Sources[0].LegacyID: must be omitted"),
    ("legacy-meta", entry("api", allow("web", LegacyMeta={"a": "b"})), "Sources[0].LegacyMeta: must be omitted"),
    ("peer-wildcard", entry("api", allow("web", Peer="p*")), "Sources[0].Peer: \"p*\" cannot use '*'"),
    ("peer-and-partition", entry("api", allow("web", Peer="p1", Partition="default")), "Sources[0].Peer: cannot set"),
    ("sameness-group", entry("api", allow("web", SamenessGroup="g")), "Sources[0].SamenessGroup: sameness groups"),
    ("description-long", entry("api", allow("web", Description="x" * 513)), "Sources[0].Description: is 513"),
    ("meta-not-string", entry("api", SRC, Meta={"version": 1}), "Meta.version: expected a string, got 1 (int)"),
    ("meta-too-many", entry("api", SRC, Meta={f"k{i}": "v" for i in range(65)}), "Meta: has 65 keys"),
    ("meta-key-long", entry("api", SRC, Meta={"k" * 129: "v"}), "key is 129 characters long"),
    ("jwt", entry("api", SRC, JWT={"Providers": [{"Name": "okta"}]}), "JWT: JWT requirements are not supported"),
    ("unknown-key", entry("api", SRC, Foo=1), "Foo: unknown key (expected one of: Kind, Name,"),
    ("unknown-source-key", entry("api", {"Name": "web", "Acton": "allow"}), "Sources[0].Acton: unknown key"),
    ("key-twice", {**entry("api", SRC), "name": "db"}, 'Name: given twice, as "Name" and "name"'),
    ("odd-key", entry("api", SRC, **{"a b\n": 1}), '"a b\\n": unknown key'),
    (
        "perm-action-missing",
        entry("api", {"Name": "web", "Permissions": [{"HTTP": {"PathExact": "/"}}]}),
        "Sources[0].Permissions[0].Action: is required (expected allow or deny)",
    ),
    (
        "perm-action-bad",
        _perm({"PathExact": "/"}, "permit"),
        'Sources[0].Permissions[0].Action: "permit" is not allowed',
    ),
    (
        "perm-http-missing",
        entry("api", {"Name": "web", "Permissions": [{"Action": "allow"}]}),
        "Sources[0].Permissions[0].HTTP: is required",
    ),
    (
        "perm-jwt",
        entry("api", {"Name": "web", "Permissions": [{"Action": "allow", "JWT": {"Providers": [{}]}}]}),
        "Sources[0].Permissions[0].JWT: JWT requirements are not supported",
    ),
    ("http-empty", _perm({}), f"{HTTP}: should not be empty"),
    ("http-empty-lists", _perm({"Header": [], "Methods": []}), f"{HTTP}: should not be empty"),
    ("path-exact-slash", _perm({"PathExact": "v2"}), f'{HTTP}.PathExact: "v2" does not start with "/"'),
    ("path-prefix-slash", _perm({"PathPrefix": "v2"}), f'{HTTP}.PathPrefix: "v2" does not start with "/"'),
    ("path-two", _perm({"PathExact": "/a", "PathPrefix": "/a"}), f"{HTTP}: sets more than one of PathExact"),
    ("path-two-regex", _perm({"PathRegex": "/a", "PathPrefix": "/a"}), f"{HTTP}: sets more than one of"),
    ("path-regex-bad", _perm({"PathRegex": "(["}), f'{HTTP}.PathRegex: "([" does not compile'),
    ("method-bad", _perm({"Methods": ["FETCH"]}), f'{HTTP}.Methods[0]: "FETCH" is not an HTTP method'),
    ("method-dup", _perm({"Methods": ["get", "GET"]}), f'{HTTP}.Methods[1]: "GET" is listed more than once'),
    ("method-not-list", _perm({"Methods": "GET"}), f"{HTTP}.Methods: expected a list"),
    ("method-not-string", _perm({"Methods": [1]}), f"{HTTP}.Methods[0]: expected a string"),
    ("header-no-name", _perm({"Header": [{"Exact": "x"}]}), f"{HTTP}.Header[0].Name: is required"),
    (
        "header-two",
        _perm({"Header": [{"Name": "a", "Exact": "x", "Prefix": "y"}]}),
        f"{HTTP}.Header[0]: sets Exact and Prefix "
        "(expected exactly one of Present, Exact, Prefix, Suffix, Contains, Regex)",
    ),
    (
        "header-contains-and-exact",
        _perm({"Header": [{"Name": "a", "Exact": "x", "Contains": "y"}]}),
        f"{HTTP}.Header[0]: sets Exact and Contains (expected exactly one of",
    ),
    ("header-contains-empty", _perm({"Header": [{"Name": "a", "Contains": ""}]}), f"{HTTP}.Header[0]: sets none"),
    ("header-ignore-case-only", _perm({"Header": [{"Name": "a", "IgnoreCase": True}]}), f"{HTTP}.Header[0]: sets none"),
    (
        "header-contains-type",
        _perm({"Header": [{"Name": "a", "Contains": 1}]}),
        f"{HTTP}.Header[0].Contains: expected a string, got 1 (int)",
    ),
    (
        "header-ignore-case-type",
        _perm({"Header": [{"Name": "a", "Exact": "x", "IgnoreCase": "yes"}]}),
        f"{HTTP}.Header[0].IgnoreCase: expected true or false",
    ),
    (
        "header-ignore-case-twice",
        _perm({"Header": [{"Name": "a", "Exact": "x", "IgnoreCase": True, "ignore_case": True}]}),
        f'{HTTP}.Header[0].IgnoreCase: given twice, as "IgnoreCase" and "ignore_case"',
    ),
    ("header-none", _perm({"Header": [{"Name": "a"}]}), f"{HTTP}.Header[0]: sets none"),
    ("header-present-false", _perm({"Header": [{"Name": "a", "Present": False}]}), f"{HTTP}.Header[0]: sets none"),
    (
        "header-present-type",
        _perm({"Header": [{"Name": "a", "Present": "yes"}]}),
        f"{HTTP}.Header[0].Present: expected true or false",
    ),
    ("header-regex-bad", _perm({"Header": [{"Name": "a", "Regex": "*x"}]}), f'{HTTP}.Header[0].Regex: "*x" does not'),
    # RE2 is what counts: Python's re accepts look-arounds and backreferences, the core (like Envoy) does not.
    (
        "header-regex-lookahead",
        _perm({"Header": [{"Name": "a", "Regex": "(?=x)x"}]}),
        f'{HTTP}.Header[0].Regex: "(?=x)x" does not compile: look-around',
    ),
    ("path-regex-backref", _perm({"PathRegex": "(a)\\1"}), f"{HTTP}.PathRegex: "),
    ("path-regex-huge", _perm({"PathRegex": "(?:a{1000}){1000}"}), f"{HTTP}.PathRegex: "),
    ("header-unknown", _perm({"Header": [{"Name": "a", "Equals": "x"}]}), f"{HTTP}.Header[0].Equals: unknown key"),
    ("top-level-list", [entry("api", SRC)], "(top level): expected a mapping, got a list"),
]


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_entries(doc: Any, expected: str) -> None:
    with pytest.raises(IntentionError) as info:
        parse_entry(doc, "f.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("f.yaml: ")
    assert expected in msg
    assert "expected" in msg, msg  # every message says what would be right


def test_error_names_entry_index_in_a_list() -> None:
    docs = [entry("db", SRC), entry("api", {"Name": "web", "Action": "alow"})]
    with pytest.raises(IntentionError) as info:
        parse_entries(docs, "intentions.yaml")
    assert str(info.value) == 'intentions.yaml: [1].Sources[0].Action: "alow" is not allowed (expected allow or deny)'


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ([entry("api", SRC), entry("db", SRC), entry("api", deny("*"))], '[2].Name: destination "api" is defined more'),
        ([entry("api", SRC), "x"], '[1]: expected a mapping, got "x" (str)'),
        ("api", "(top level): expected a service-intentions entry or a list of them"),
        (42, "(top level): expected a service-intentions entry or a list of them, got 42 (int)"),
    ],
)
def test_parse_entries_errors(doc: Any, expected: str) -> None:
    with pytest.raises(IntentionError, match=re.escape(expected)):
        parse_entries(doc, "f.yaml")


def test_parse_entries_accepts_mapping_list_and_empty_list() -> None:
    one = parse_entries(entry("api", SRC), "f.yaml")
    assert len(one) == 1 and one[0].name == "api"
    assert parse_entries([entry("api", SRC), entry("*", deny("*"))], "f.yaml")[1].name == "*"
    assert parse_entries([], "f.yaml") == ()
    # The same destination name in another namespace is a different destination.
    two = parse_entries([entry("api", SRC), entry("api", SRC, Namespace="team")], "f.yaml")
    assert [(e.namespace, e.name) for e in two] == [("default", "api"), ("team", "api")]


# --------------------------------------------------------------------------- normalization


def test_normalize_sorts_recomputes_and_uppercases() -> None:
    doc = {
        "kind": KIND,
        "name": "api",
        "sources": [
            {"name": "*", "action": "deny", "precedence": 100},
            {"name": "web", "permissions": [{"action": "allow", "http": {"path_prefix": "/", "methods": ["get"]}}]},
            {"Name": "db", "Action": "allow", "Type": "consul", "Description": "db reads"},
        ],
        "Meta": {"owner": "team-a"},
        "CreateIndex": 5,
        "ModifyIndex": 7,
    }
    e = parse_entry(doc, "f.yaml")
    # Stable by descending precedence: web and db (9) keep their input order, then "*" (8).
    assert [(s.name, s.precedence) for s in e.sources] == [("web", 9), ("db", 9), ("*", 8)]
    web = e.sources[0]
    assert web.is_l7 and web.action is None
    assert web.permissions[0].http.methods == frozenset({"GET"})
    assert web.permissions[0].http.path_prefix == "/"
    assert e.sources[1].description == "db reads" and not e.sources[1].is_l7
    assert e.meta == {"owner": "team-a"}


def test_source_namespace_inherits_destination() -> None:
    e = parse_entry(
        entry("api", allow("web"), allow("db", Namespace="other"), allow("x", Peer="p1"), Namespace="team"), "f"
    )
    got = {s.name: (s.namespace, s.peer, s.precedence) for s in e.sources}
    assert got == {"web": ("team", "", 9), "db": ("other", "", 9), "x": ("default", "p1", 9)}
    # A wildcard destination namespace is not inherited (MergeNoWildcard).
    w = parse_entry(entry("*", allow("web"), Namespace="*"), "f")
    assert (w.sources[0].namespace, w.sources[0].precedence) == ("default", 3)


def test_header_names_are_lowercased_and_nulls_are_unset() -> None:
    e = parse_entry(
        _perm({"Header": [{"Name": "X-Env", "Exact": "prod", "Prefix": None}], "PathExact": None, "Methods": None}),
        "f",
    )
    h = e.sources[0].permissions[0].http
    assert h.headers == (HeaderMatch("x-env", exact="prod"),)
    assert (h.path_exact, h.methods) == (None, None)


def test_legacy_fields_accepted_from_server() -> None:
    doc = entry("api", allow("web", LegacyID="5a5b", LegacyMeta={"k": "v"}, LegacyCreateTime="2020-01-01T00:00:00Z"))
    e = parse_entry(doc, "consul", from_server=True)
    assert e.sources[0].legacy_id == "5a5b"
    assert e.to_json()["Sources"][0]["LegacyID"] == "5a5b"
    assert parse_entries([doc], "consul", from_server=True)[0] == e


YAML_DOC = """
- Kind: service-intentions
  Name: api
  Meta:
    owner: team-a
  Sources:
    - Name: web
      Permissions:
        - Action: deny
          HTTP:
            PathExact: /v2/admin
        - Action: allow
          HTTP:
            PathPrefix: /v2/
            Methods: [GET, post]
            Header:
              - {Name: X-Env, Regex: "prod|staging", Invert: true}
              - {Name: X-Debug, Present: true}
    - Name: "*"
      Action: deny
      Description: everyone else
- Kind: service-intentions
  Name: "*"
  Sources:
    - {Name: db, Action: allow}
"""


def test_yaml_and_json_parse_identically() -> None:
    from_yaml = parse_entries(yaml.safe_load(YAML_DOC), "i.yaml")
    as_json = json.dumps(yaml.safe_load(YAML_DOC))
    from_json = parse_entries(json.loads(as_json), "i.json")
    assert from_yaml == from_json
    assert from_yaml[0].sources[0].permissions[1].http.methods == frozenset({"GET", "POST"})


def test_to_json_round_trip_and_shape() -> None:
    for e in parse_entries(yaml.safe_load(YAML_DOC), "i.yaml"):
        out = e.to_json()
        assert parse_entry(json.loads(json.dumps(out)), "rt") == e
    first = parse_entries(yaml.safe_load(YAML_DOC), "i.yaml")[0].to_json()
    assert first == {
        "Kind": "service-intentions",
        "Name": "api",
        "Sources": [
            {
                "Name": "web",
                "Permissions": [
                    {"Action": "deny", "HTTP": {"PathExact": "/v2/admin"}},
                    {
                        "Action": "allow",
                        "HTTP": {
                            "PathPrefix": "/v2/",
                            "Header": [
                                {"Name": "x-env", "Regex": "prod|staging", "Invert": True},
                                {"Name": "x-debug", "Present": True},
                            ],
                            "Methods": ["GET", "POST"],
                        },
                    },
                ],
                "Precedence": 9,
                "Type": "consul",
            },
            {"Name": "*", "Action": "deny", "Precedence": 8, "Type": "consul", "Description": "everyone else"},
        ],
        "Meta": {"owner": "team-a"},
    }


# --------------------------------------------------------------------------- L4 (consul.md §7.3)

L4_CASES: list[tuple[str, list[dict[str, Any]], bool, str, str, tuple[bool, str | None, int | None]]] = [
    # (id, entries, default_allow, source, source_ns, (allowed, deciding source, precedence))
    ("exact-beats-wildcard-allow", [entry("api", allow("web"), deny("*"))], False, "web", "default", (True, "web", 9)),
    ("wildcard-catches-rest", [entry("api", allow("web"), deny("*"))], True, "db", "default", (False, "*", 8)),
    ("exact-deny-beats-wildcard", [entry("api", deny("web"), allow("*"))], False, "web", "default", (False, "web", 9)),
    ("no-entries-deny", [], False, "web", "default", (False, None, None)),
    ("no-entries-allow", [], True, "web", "default", (True, None, None)),
    ("other-destination-ignored", [entry("db", allow("web"))], False, "web", "default", (False, None, None)),
    ("wildcard-dest-exact-source", [entry("*", deny("web"))], True, "web", "default", (False, "web", 6)),
    ("wildcard-dest-no-match", [entry("*", deny("web"))], True, "db", "default", (True, None, None)),
    ("wildcard-dest-wildcard-source", [entry("*", allow("*"))], False, "db", "default", (True, "*", 5)),
    # "* => api" (8) outranks "web => *" (6): destination exactness counts first.
    (
        "dest-exact-wins-over-source-exact",
        [entry("*", deny("web")), entry("api", allow("*"))],
        False,
        "web",
        "default",
        (True, "*", 8),
    ),
    (
        "exact-both-beats-all",
        [entry("*", allow("*")), entry("api", deny("web"))],
        True,
        "web",
        "default",
        (False, "web", 9),
    ),
    (
        "exact-dest-beats-exact-source-on-wild",
        [entry("*", allow("web")), entry("api", deny("web"))],
        True,
        "web",
        "default",
        (False, "web", 9),
    ),
    (
        "l7-on-l4-is-deny",
        [entry("api", l7("web", ("allow", {"PathPrefix": "/"})), allow("*"))],
        True,
        "web",
        "default",
        (False, "web", 9),
    ),
    (
        "l7-other-source-unaffected",
        [entry("api", l7("web", ("allow", {"PathPrefix": "/"})), allow("*"))],
        False,
        "db",
        "default",
        (True, "*", 8),
    ),
    ("namespace-not-default", [entry("api", allow("web"))], False, "web", "team", (False, None, None)),
    ("namespace-explicit", [entry("api", allow("web", Namespace="team"))], False, "web", "team", (True, "team/web", 9)),
    ("namespace-wildcard-source", [entry("api", allow("*", Namespace="*"))], False, "web", "team", (True, "*/*", 7)),
    (
        "namespace-star-name",
        [entry("api", allow("*", Namespace="team"), deny("*", Namespace="*"))],
        True,
        "x",
        "team",
        (True, "team/*", 8),
    ),
    (
        "namespace-star-name-miss",
        [entry("api", allow("*", Namespace="team"), deny("*", Namespace="*"))],
        True,
        "x",
        "prod",
        (False, "*/*", 7),
    ),
    ("peer-source-not-local", [entry("api", allow("web", Peer="p1"))], False, "web", "default", (False, None, None)),
    ("local-wildcard-not-peer", [entry("api", allow("*"))], False, "web", "default", (True, "*", 8)),
]


@pytest.mark.parametrize(
    ("entries", "default_allow", "source", "source_ns", "expected"),
    [c[1:] for c in L4_CASES],
    ids=[c[0] for c in L4_CASES],
)
def test_authorize_l4(
    entries: list[dict[str, Any]],
    default_allow: bool,
    source: str,
    source_ns: str,
    expected: tuple[bool, str | None, int | None],
) -> None:
    t = table(*entries, default_allow=default_allow)
    d = t.authorize_l4(source, source_ns)
    assert (d.allowed, d.source, d.precedence) == expected, d
    assert d.reason
    # The same answer through the convenience wrapper (ns/name syntax for non-default namespaces).
    who = source if source_ns == "default" else f"{source_ns}/{source}"
    assert check(parse_entries(entries, "t"), who, "api", default_allow) == d


def test_l4_reasons() -> None:
    t = table(entry("api", allow("web"), l7("db", ("allow", {"PathPrefix": "/"}))))
    assert t.authorize_l4("web").reason == "intention web => api (allow)"
    assert t.authorize_l4("db").reason == "intention db => api has L7 permissions, denied on a TCP listener"
    assert t.authorize_l4("x").reason == "default policy deny"


def test_peered_sources() -> None:
    t = table(entry("api", allow("web", Peer="p1"), deny("*", Peer="p1"), allow("*")))
    assert t.authorize_l4("web", source_peer="p1").allowed
    assert t.authorize_l4("web", source_peer="p1").source == "peer:p1/web"
    assert not t.authorize_l4("db", source_peer="p1").allowed
    assert t.authorize_l4("db").allowed
    assert t.authorize_l4("db", source_peer="p2") == Decision(False, "default policy deny")


def test_decisions_are_cached() -> None:
    t = table(entry("api", allow("web"), deny("*", Namespace="team")))
    assert t.authorize_l4("web") is t.authorize_l4("web")
    assert t.authorize_l4("a") is t.authorize_l4("b")
    assert t.authorize_l4("a", "team") is t.authorize_l4("b", "team")
    assert t.authorize_http("web", "GET", "/", {}) is t.authorize_l4("web")


def test_rules_in_evaluation_order() -> None:
    t = table(
        entry("*", deny("web")),
        entry("api", allow("*"), l7("db", ("deny", {"PathExact": "/admin"})), Meta={"a": "b"}),
        entry("db", allow("web")),
    )
    assert t.rules() == [
        {
            "Source": "db",
            "Destination": "api",
            "Precedence": 9,
            "Permissions": [{"Action": "deny", "HTTP": {"PathExact": "/admin"}}],
        },
        {"Source": "*", "Destination": "api", "Precedence": 8, "Action": "allow"},
        {"Source": "web", "Destination": "*", "Precedence": 6, "Action": "deny"},
    ]
    json.dumps(t.rules())


# --------------------------------------------------------------------------- L7 (consul.md §7.3)

DOC_EXAMPLE = entry(
    "api",
    l7(
        "web",
        ("deny", {"PathExact": "/v2/admin"}),
        ("allow", {"PathPrefix": "/v2/"}),
        ("allow", {"PathExact": "/healthz", "Methods": ["GET"]}),
    ),
    deny("*"),
)

L7_CASES: list[tuple[str, dict[str, Any], bool, tuple[str, str, str, dict[str, str]], bool, str]] = [
    # (id, entry, default_allow, (source, method, path, headers), allowed, reason substring)
    ("doc-deny-admin", DOC_EXAMPLE, False, ("web", "GET", "/v2/admin", {}), False, "permission[0] (deny)"),
    ("doc-deny-admin-query", DOC_EXAMPLE, True, ("web", "GET", "/v2/admin?x=1", {}), False, "permission[0]"),
    ("doc-allow-v2", DOC_EXAMPLE, False, ("web", "POST", "/v2/users", {}), True, "permission[1] (allow)"),
    ("doc-admin-subpath", DOC_EXAMPLE, False, ("web", "GET", "/v2/admin/x", {}), True, "permission[1]"),
    ("doc-healthz-get", DOC_EXAMPLE, False, ("web", "GET", "/healthz", {}), True, "permission[2] (allow)"),
    ("doc-healthz-post", DOC_EXAMPLE, False, ("web", "POST", "/healthz", {}), False, "no permission matched"),
    ("doc-no-match-deny", DOC_EXAMPLE, False, ("web", "GET", "/v1/x", {}), False, "default policy deny"),
    # A request matching none of the L7 intention's permissions gets the default, not the "*" intention.
    ("doc-no-match-allow", DOC_EXAMPLE, True, ("web", "GET", "/v1/x", {}), True, "default policy allow"),
    ("doc-other-source", DOC_EXAMPLE, True, ("db", "GET", "/v2/x", {}), False, "intention * => api (deny)"),
    ("l4-intention-on-http", entry("api", allow("web")), False, ("web", "DELETE", "/x", {}), True, "web => api"),
    (
        "path-regex-full-match",
        entry("api", l7("web", ("allow", {"PathRegex": "/users/[0-9]+"}))),
        False,
        ("web", "GET", "/users/42", {}),
        True,
        "permission[0]",
    ),
    (
        "path-regex-not-partial",
        entry("api", l7("web", ("allow", {"PathRegex": "/users/[0-9]+"}))),
        False,
        ("web", "GET", "/users/42/x", {}),
        False,
        "no permission matched",
    ),
    (
        "path-exact-not-prefix",
        entry("api", l7("web", ("allow", {"PathExact": "/a"}))),
        False,
        ("web", "GET", "/a/b", {}),
        False,
        "no permission matched",
    ),
    (
        "methods-only",
        entry("api", l7("web", ("deny", {"Methods": ["DELETE", "PUT"]}), ("allow", {"PathPrefix": "/"}))),
        False,
        ("web", "PUT", "/x", {}),
        False,
        "permission[0] (deny)",
    ),
    (
        "methods-only-other",
        entry("api", l7("web", ("deny", {"Methods": ["DELETE", "PUT"]}), ("allow", {"PathPrefix": "/"}))),
        False,
        ("web", "GET", "/x", {}),
        True,
        "permission[1] (allow)",
    ),
    (
        "all-parts-anded",
        entry(
            "api",
            l7(
                "web",
                ("allow", {"PathPrefix": "/a", "Methods": ["GET"], "Header": [{"Name": "x-env", "Exact": "prod"}]}),
            ),
        ),
        False,
        ("web", "GET", "/a", {"x-env": "dev"}),
        False,
        "no permission matched",
    ),
]


@pytest.mark.parametrize(
    ("doc", "default_allow", "request_", "allowed", "reason"), [c[1:] for c in L7_CASES], ids=[c[0] for c in L7_CASES]
)
def test_authorize_http(
    doc: dict[str, Any],
    default_allow: bool,
    request_: tuple[str, str, str, dict[str, str]],
    allowed: bool,
    reason: str,
) -> None:
    t = table(doc, default_allow=default_allow)
    d = t.authorize_http(*request_)
    assert d.allowed is allowed, d
    assert reason in d.reason, d
    src, method, path, headers = request_
    assert check(parse_entries(doc, "t"), src, "api", default_allow, method, path, headers) == d


HEADER_CASES: list[tuple[str, dict[str, Any], dict[str, str], bool]] = [
    # (id, header permission, request headers (lower-cased names), matches)
    ("present-yes", {"Name": "X-Debug", "Present": True}, {"x-debug": ""}, True),
    ("present-no", {"Name": "X-Debug", "Present": True}, {}, False),
    ("present-invert-missing", {"Name": "X-Debug", "Present": True, "Invert": True}, {}, True),
    ("present-invert-present", {"Name": "X-Debug", "Present": True, "Invert": True}, {"x-debug": "1"}, False),
    ("exact-yes", {"Name": "x-env", "Exact": "prod"}, {"x-env": "prod"}, True),
    ("exact-case-sensitive-value", {"Name": "x-env", "Exact": "prod"}, {"x-env": "Prod"}, False),
    ("exact-missing", {"Name": "x-env", "Exact": "prod"}, {}, False),
    ("exact-invert-other", {"Name": "x-env", "Exact": "prod", "Invert": True}, {"x-env": "dev"}, True),
    ("exact-invert-same", {"Name": "x-env", "Exact": "prod", "Invert": True}, {"x-env": "prod"}, False),
    # Envoy: an inverted value matcher does not match a missing header (header_utility.cc matchHeaders).
    ("exact-invert-missing", {"Name": "x-env", "Exact": "prod", "Invert": True}, {}, False),
    ("prefix-yes", {"Name": "user-agent", "Prefix": "curl/"}, {"user-agent": "curl/8.0"}, True),
    ("prefix-no", {"Name": "user-agent", "Prefix": "curl/"}, {"user-agent": "wget"}, False),
    ("prefix-invert", {"Name": "user-agent", "Prefix": "curl/", "Invert": True}, {"user-agent": "wget"}, True),
    ("suffix-yes", {"Name": "host", "Suffix": ".internal"}, {"host": "api.internal"}, True),
    ("suffix-no", {"Name": "host", "Suffix": ".internal"}, {"host": "api.example"}, False),
    ("suffix-invert", {"Name": "host", "Suffix": ".internal", "Invert": True}, {"host": "api.example"}, True),
    ("regex-full", {"Name": "x-v", "Regex": "v[0-9]+"}, {"x-v": "v12"}, True),
    ("regex-not-partial", {"Name": "x-v", "Regex": "v[0-9]+"}, {"x-v": "v12-beta"}, False),
    ("regex-invert", {"Name": "x-v", "Regex": "v[0-9]+", "Invert": True}, {"x-v": "beta"}, True),
    ("regex-invert-missing", {"Name": "x-v", "Regex": "v[0-9]+", "Invert": True}, {}, False),
    # Consul >= 1.20.1: Contains and IgnoreCase (l7-security.md §2.1, §6 item 9).
    ("contains-yes", {"Name": "x-role", "Contains": "adm"}, {"x-role": "sysadmin"}, True),
    ("contains-no", {"Name": "x-role", "Contains": "adm"}, {"x-role": "user"}, False),
    ("contains-case-sensitive", {"Name": "x-role", "Contains": "adm"}, {"x-role": "ADMIN"}, False),
    ("contains-literal", {"Name": "x-role", "Contains": "a.b"}, {"x-role": "axb"}, False),
    ("contains-invert", {"Name": "x-role", "Contains": "adm", "Invert": True}, {"x-role": "user"}, True),
    ("contains-invert-missing", {"Name": "x-role", "Contains": "adm", "Invert": True}, {}, False),
    ("ignore-case-exact", {"Name": "x-role", "Exact": "admin", "IgnoreCase": True}, {"x-role": "AdMiN"}, True),
    ("ignore-case-exact-other", {"Name": "x-role", "Exact": "admin", "IgnoreCase": True}, {"x-role": "admins"}, False),
    ("ignore-case-prefix", {"Name": "x-role", "Prefix": "ad", "ignore_case": True}, {"x-role": "ADMIN"}, True),
    ("ignore-case-suffix", {"Name": "x-role", "Suffix": "MIN", "IgnoreCase": True}, {"x-role": "admin"}, True),
    ("ignore-case-contains", {"Name": "x-role", "Contains": "DM", "IgnoreCase": True}, {"x-role": "admin"}, True),
    (
        "ignore-case-invert",
        {"Name": "x-role", "Exact": "a", "IgnoreCase": True, "Invert": True},
        {"x-role": "A"},
        False,
    ),
    # IgnoreCase does not apply to Regex (C:agent/xds/rbac.go) nor Present; (?i) in the pattern does.
    ("ignore-case-not-regex", {"Name": "x-role", "Regex": "admin", "IgnoreCase": True}, {"x-role": "ADMIN"}, False),
    ("regex-inline-flag", {"Name": "x-role", "Regex": "(?i)admin"}, {"x-role": "ADMIN"}, True),
    ("ignore-case-present", {"Name": "x-role", "Present": True, "IgnoreCase": True}, {"x-role": "x"}, True),
]


@pytest.mark.parametrize(("hdr", "headers", "matches"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES])
def test_header_matchers(hdr: dict[str, Any], headers: dict[str, str], matches: bool) -> None:
    t = table(entry("api", l7("web", ("allow", {"Header": [hdr]}))), default_allow=False)
    d = t.authorize_http("web", "GET", "/", headers)
    assert d.allowed is matches, d
    # The same through the other shapes the callers use: (name, value) pairs of str or bytes, a callable.
    assert t.authorize_http("web", "GET", "/", list(headers.items())) is d
    raw = [(k.upper().encode(), v.encode()) for k, v in headers.items()]
    assert t.authorize_http("web", "GET", "/", raw) is d
    assert t.authorize_http("web", "GET", "/", lambda: raw) is d
    ents = parse_entries(entry("api", l7("web", ("allow", {"Header": [hdr]}))), "f")
    assert check(ents, "web", "api", False, "GET", "/", headers) == d


def test_repeated_headers_are_joined() -> None:
    # l7-security.md §2.3: every value of a repeated header matched as one value joined with "," (no space).
    exact = table(entry("api", l7("web", ("allow", {"Header": [{"Name": "X-Role", "Exact": "admin"}]}))))
    contains = table(entry("api", l7("web", ("allow", {"Header": [{"Name": "X-Role", "Contains": "admin"}]}))))
    joined = table(entry("api", l7("web", ("allow", {"Header": [{"Name": "X-Role", "Exact": "user,admin"}]}))))
    two = [(b"X-Role", b"user"), (b"host", b"api"), (b"x-role", b"admin")]
    assert not exact.authorize_http("web", "PUT", "/", two).allowed
    assert contains.authorize_http("web", "PUT", "/", two).allowed
    assert joined.authorize_http("web", "PUT", "/", two).allowed
    assert exact.authorize_http("web", "PUT", "/", two[2:]).allowed


def test_headers_not_read_without_header_rules() -> None:
    t = table(entry("api", l7("web", ("allow", {"PathPrefix": "/"}))))

    def boom() -> list[tuple[bytes, bytes]]:
        raise AssertionError("headers read by a table without header rules")

    assert t.authorize_http("web", "GET", "/x", boom).allowed
    assert t.core().header_names == []
    t2 = table(entry("api", l7("web", ("allow", {"Header": [{"Name": "X-A", "Present": True}]}))))
    assert t2.core().header_names == ["x-a"]
    assert t2.authorize_http("web", "GET", "/x", lambda: [(b"x-a", b"")]).allowed
    with pytest.raises(TypeError):
        t2.authorize_http("web", "GET", "/x", [(b"x-a", 1)])


def _match_table(m: HTTPMatch) -> IntentionTable:
    src = SourceIntention("web", permissions=(Permission("allow", m),), precedence=9)
    return IntentionTable("api", "default", False, (Intention("default", "api", src),))


def test_http_match_direct() -> None:
    # The model's HTTPMatch, evaluated by the core (the one evaluator).
    m = _match_table(
        HTTPMatch(path_prefix="/api", methods=frozenset({"GET"}), headers=(HeaderMatch("x-a", exact="1"),))
    )
    assert m.authorize_http("web", "GET", "/api/x?q=/other", {"x-a": "1"}).allowed
    # Methods compare as sent; parsing upper-cases the config.
    assert not m.authorize_http("web", "get", "/api/x", {"x-a": "1"}).allowed
    assert not m.authorize_http("web", "GET", "/other?/api", {"x-a": "1"}).allowed
    assert _match_table(HTTPMatch(path_exact="/a")).authorize_http("web", "POST", "/a#frag", {}).allowed
    assert _match_table(HTTPMatch(methods=frozenset({"GET"}))).authorize_http("web", "GET", "?weird", {}).allowed


def test_to_core_shape() -> None:
    t = table(
        entry(
            "api",
            l7(
                "web",
                ("deny", {"PathRegex": "/a/[0-9]+", "Methods": ["post", "GET"]}),
                ("allow", {"Header": [{"Name": "X-Role", "Contains": "adm", "IgnoreCase": True, "Invert": True}]}),
            ),
            allow("*", Peer="p1"),
        ),
        entry("*", deny("*", Namespace="*")),
        default_allow=True,
    )
    assert t.to_core() == {
        "destination": {"name": "api", "namespace": "default"},
        "default_allow": True,
        "intentions": [
            {
                "source": {"name": "web", "namespace": "default", "partition": "default", "peer": ""},
                "destination": {"name": "api", "namespace": "default"},
                "precedence": 9,
                "permissions": [
                    {"action": "deny", "http": {"path_regex": "/a/[0-9]+", "methods": ["GET", "POST"]}},
                    {
                        "action": "allow",
                        "http": {
                            "headers": [{"name": "x-role", "contains": "adm", "invert": True, "ignore_case": True}]
                        },
                    },
                ],
            },
            {
                "source": {"name": "*", "namespace": "default", "partition": "default", "peer": "p1"},
                "destination": {"name": "api", "namespace": "default"},
                "precedence": 8,
                "action": "allow",
            },
            {
                "source": {"name": "*", "namespace": "*", "partition": "default", "peer": ""},
                "destination": {"name": "*", "namespace": "default"},
                "precedence": 4,
                "action": "deny",
            },
        ],
    }
    assert t.problem is None
    assert t.authorize_l4("x", source_peer="p1").source == "peer:p1/*"


def test_uncompilable_table_fails_closed_for_its_destination_only() -> None:
    # A table the core cannot compile (here a regex that bypassed parsing) denies every caller of that
    # destination, naming the problem; the other destinations' tables are unaffected.
    bad = _match_table(HTTPMatch(path_regex="(?<=a)b"))
    assert bad.problem is not None and "PathRegex" in bad.problem
    for d in (bad.authorize_l4("web"), bad.authorize_http("web", "GET", "/", {}), bad.authorize_l4("other")):
        assert not d.allowed and d.source is None
        assert d.reason.startswith("intentions for api could not be compiled, every caller is denied: "), d
        assert "\n" not in d.reason
    good = table(entry("api", l7("web", ("allow", {"PathRegex": "/ok"}))), entry("db", allow("web")), dest="db")
    assert good.problem is None and good.authorize_l4("web").allowed


# l7-security.md §7 fixture: P0 deny PathPrefix /admin; P1 allow PathExact /reports PUT X-Role Exact admin;
# P2 allow PathPrefix / GET, POST; default deny. Paths as the normalizer hands them over.
def _s7(p1_header: dict[str, Any]) -> IntentionTable:
    return table(
        entry(
            "api",
            l7(
                "web",
                ("deny", {"PathPrefix": "/admin"}),
                ("allow", {"PathExact": "/reports", "Methods": ["PUT"], "Header": [p1_header]}),
                ("allow", {"PathPrefix": "/", "Methods": ["GET", "POST"]}),
            ),
        )
    )


S7_VECTORS: list[tuple[str, str, str, list[tuple[str, str]], bool]] = [
    ("1", "GET", "/admin", [], False),
    ("7", "GET", "//admin", [], True),
    ("8", "GET", "/x%2f..%2fadmin", [], True),
    ("9", "GET", "/admin%2Fx", [], False),
    ("10", "GET", "/ADMIN", [], True),
    ("11a", "GET", "/admin?debug=1", [], False),
    ("11b", "GET", "/ok?next=/admin", [], True),
    ("15", "PUT", "/reports", [("X-Role", "Admin")], False),
    ("16", "PUT", "/reports", [("X-Role", "user"), ("X-Role", "admin")], False),
    ("17", "HEAD", "/ok", [], False),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "allowed"), [v[1:] for v in S7_VECTORS], ids=[v[0] for v in S7_VECTORS]
)
def test_l7_security_vectors(method: str, path: str, headers: list[tuple[str, str]], allowed: bool) -> None:
    assert _s7({"Name": "X-Role", "Exact": "admin"}).authorize_http("web", method, path, headers).allowed is allowed


def test_l7_security_vectors_15_16_with_contains_and_ignore_case() -> None:
    two = [("X-Role", "user"), ("X-Role", "admin")]
    d = _s7({"Name": "X-Role", "Contains": "admin"}).authorize_http("web", "PUT", "/reports", two)
    assert d.allowed and "permission[1]" in d.reason
    d = _s7({"Name": "X-Role", "Exact": "admin", "IgnoreCase": True}).authorize_http(
        "web", "PUT", "/reports", [("X-Role", "Admin")]
    )
    assert d.allowed and "permission[1]" in d.reason


def test_check_helper() -> None:
    ents = parse_entries([entry("api", allow("web", Namespace="team"), deny("*"))], "t")
    assert check(ents, "team/web", "api", False).allowed
    assert not check(ents, "web", "api", True).allowed
    assert check(ents, "web", "db", True) == Decision(True, "default policy allow")
    # HTTP mode as soon as any request part is given; header names are lower-cased for the caller.
    l7ents = parse_entries([entry("api", l7("web", ("allow", {"Header": [{"Name": "X-A", "Exact": "1"}]})))], "t")
    assert check(l7ents, "web", "api", False, headers={"X-A": "1"}).allowed
    assert not check(l7ents, "web", "api", False).allowed
    with pytest.raises(IntentionError, match='source: "a/b/c" is not a service'):
        check(ents, "a/b/c", "api", False)


# --------------------------------------------------------------------------- property: table == naive reference

SOURCES = [
    ("", "default", "web"),
    ("", "default", "db"),
    ("", "default", "*"),
    ("", "team", "web"),
    ("", "team", "*"),
    ("", "*", "*"),
    ("p1", "default", "web"),
    ("p1", "default", "*"),
    ("p1", "*", "*"),
]
DESTINATIONS = [("default", "api"), ("default", "*"), ("*", "*"), ("team", "api"), ("default", "db")]
PERMISSIONS = [
    {"PathExact": "/a"},
    {"PathPrefix": "/a"},
    {"PathRegex": "/a/[0-9]+"},
    {"Methods": ["GET"]},
    {"Methods": ["POST", "DELETE"], "PathPrefix": "/"},
    {"Header": [{"Name": "X-Env", "Exact": "prod"}]},
    {"Header": [{"Name": "x-debug", "Present": True, "Invert": True}]},
    {"Header": [{"Name": "x-env", "Prefix": "st", "Invert": True}]},
]
REQUESTS = [
    ("GET", "/a", {}),
    ("GET", "/a/1", {"x-env": "prod"}),
    ("POST", "/ab", {"x-debug": "1"}),
    ("DELETE", "/b", {"x-env": "staging"}),
    ("PUT", "/a/x", {"x-env": "dev"}),
]
CALLERS = [
    (peer, ns, name) for peer in ("", "p1", "p2") for ns in ("default", "team", "other") for name in ("web", "db")
]


@st.composite
def entry_docs(draw: st.DrawFn) -> list[dict[str, Any]]:
    dests = draw(st.lists(st.sampled_from(DESTINATIONS), unique=True, max_size=len(DESTINATIONS)))
    docs = []
    for dns, dname in dests:
        wild = dns == "*" or dname == "*"
        sources = draw(st.lists(st.sampled_from(SOURCES), unique=True, min_size=1, max_size=5))
        srcs = []
        for peer, sns, sname in sources:
            src: dict[str, Any] = {"Name": sname, "Namespace": sns}
            if peer:
                src["Peer"] = peer
            if not wild and draw(st.booleans()):
                perms = draw(
                    st.lists(
                        st.tuples(st.sampled_from(["allow", "deny"]), st.sampled_from(PERMISSIONS)),
                        min_size=1,
                        max_size=3,
                    )
                )
                src["Permissions"] = [{"Action": a, "HTTP": h} for a, h in perms]
            else:
                src["Action"] = draw(st.sampled_from(["allow", "deny"]))
            srcs.append(src)
        docs.append({"Kind": KIND, "Name": dname, "Namespace": dns, "Sources": srcs})
    return docs


def _naive_http_match(http: dict[str, Any], method: str, path: str, headers: dict[str, str]) -> bool:
    # Written against the JSON shape, independently of HTTPMatch/HeaderMatch.
    if "Methods" in http and method not in http["Methods"]:
        return False
    if "PathExact" in http and path != http["PathExact"]:
        return False
    if "PathPrefix" in http and not path.startswith(http["PathPrefix"]):
        return False
    if "PathRegex" in http and not re.fullmatch(http["PathRegex"], path):
        return False
    for h in http.get("Header", []):
        value = headers.get(h["Name"].lower())
        invert = h.get("Invert", False)
        if value is None:
            ok = invert and h.get("Present", False)
        elif h.get("Present"):
            ok = not invert
        elif "Exact" in h:
            ok = (value == h["Exact"]) != invert
        elif "Prefix" in h:
            ok = value.startswith(h["Prefix"]) != invert
        else:
            raise AssertionError(h)
        if not ok:
            return False
    return True


def _naive(
    entries: tuple[ServiceIntentions, ...],
    dest: tuple[str, str],
    default_allow: bool,
    caller: tuple[str, str, str],
    request: tuple[str, str, dict[str, str]] | None,
) -> tuple[bool, str | None, int | None]:
    """Scan every intention, computing precedence on the fly; the first in sorted order that matches decides."""
    peer, ns, name = caller
    found = []
    for e in entries:
        if e.namespace not in ("*", dest[0]) or e.name not in ("*", dest[1]):
            continue
        for s in e.to_json()["Sources"]:
            inherited = "default" if e.namespace == "*" or "Peer" in s else e.namespace
            s_ns = s.get("Namespace", inherited)
            if s.get("Peer", "") != peer or s_ns not in ("*", ns) or s["Name"] not in ("*", name):
                continue
            prec = precedence(s_ns, s["Name"], e.namespace, e.name)
            found.append(((-prec, s_ns, s["Name"], e.namespace, e.name), s))
    if not found:
        return default_allow, None, None
    key, s = min(found, key=lambda f: f[0])
    prec, s_ns = -key[0], key[1]
    label = (f"peer:{peer}/" if peer else "") + (s["Name"] if s_ns == "default" else f"{s_ns}/{s['Name']}")
    if "Permissions" not in s:
        return s["Action"] == "allow", label, prec
    if request is None:
        return False, label, prec  # L7 intention on L4
    for p in s["Permissions"]:
        if _naive_http_match(p["HTTP"], *request):
            return p["Action"] == "allow", label, prec
    return default_allow, label, prec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=entry_docs(),
    default_allow=st.booleans(),
    dest=st.sampled_from([("default", "api"), ("team", "api"), ("default", "web")]),
)
def test_table_matches_naive_reference(docs: list[dict[str, Any]], default_allow: bool, dest: tuple[str, str]) -> None:
    entries = parse_entries(docs, "gen")
    t = IntentionTable.build(entries, dest[1], default_allow, dest[0])
    for caller in CALLERS:
        peer, ns, name = caller
        d = t.authorize_l4(name, ns, source_peer=peer)
        assert (d.allowed, d.source, d.precedence) == _naive(entries, dest, default_allow, caller, None), caller
        for req in REQUESTS:
            d = t.authorize_http(name, req[0], req[1], req[2], ns, source_peer=peer)
            assert (d.allowed, d.source, d.precedence) == _naive(entries, dest, default_allow, caller, req), (
                caller,
                req,
            )


@settings(max_examples=200, deadline=None)
@given(docs=entry_docs())
def test_to_json_round_trip_property(docs: list[dict[str, Any]]) -> None:
    for e in parse_entries(docs, "gen"):
        out = json.loads(json.dumps(e.to_json()))
        assert parse_entry(out, "rt") == e
        precs = [s.precedence for s in e.sources]
        assert precs == sorted(precs, reverse=True)


# --------------------------------------------------------------------------- `meshgw intention check` (CLI)

CLI_CONFIG = """
datacenter: dc1
service: {name: web, port: 8080}
inbound: {bind: 127.0.0.1:21000}
control_plane:
  type: local
  local: {catalog: catalog.yaml, intentions: intentions.yaml}
certificates:
  type: builtin
  builtin: {dir: ca}
"""

CLI_INTENTIONS = """
Kind: service-intentions
Name: api
Sources:
  - Name: web
    Permissions:
      - {Action: deny, HTTP: {PathPrefix: /admin}}
      - Action: allow
        HTTP:
          PathExact: /reports
          Methods: [PUT]
          Header: [{Name: X-Role, Contains: admin, ignore_case: true}]
      - {Action: allow, HTTP: {PathPrefix: /, Methods: [GET, POST]}}
"""


def _cli(tmp_path: Any, intentions: str, *args: str) -> Any:
    import subprocess
    import sys

    (tmp_path / "catalog.yaml").write_text("services: {api: [{address: 127.0.0.1, port: 21001}]}\n")
    (tmp_path / "intentions.yaml").write_text(intentions)
    (tmp_path / "m.yaml").write_text(CLI_CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "intention", "check", "-c", str(tmp_path / "m.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "code", "out"),
    [
        # l7-security.md §7 #16 with Contains: "user,ADMIN" contains "admin" ignoring case.
        (
            ("--method", "PUT", "--path", "/reports", "--header", "X-Role=user", "--header", "X-Role=ADMIN"),
            0,
            "Allowed: web => api: intention web => api permission[1] (allow)",
        ),
        (("--method", "PUT", "--path", "/reports", "--header", "x-role=Admin"), 0, "permission[1] (allow)"),
        (
            ("--method", "PUT", "--path", "/reports", "--header", "X-Role=user"),
            2,
            "Denied: web => api: intention web => api: no permission matched, default policy deny",
        ),
        (("--method", "GET", "--path", "/admin?x=1"), 2, "permission[0] (deny)"),
        ((), 2, "Denied: web => api: intention web => api has L7 permissions, denied on a TCP listener"),
    ],
    ids=["contains-joined-ignore-case", "ignore-case", "no-match", "admin-query", "l4"],
)
def test_cli_check_contains_and_ignore_case(tmp_path: Any, args: tuple[str, ...], code: int, out: str) -> None:
    r = _cli(tmp_path, CLI_INTENTIONS, "web", "api", *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert out in r.stdout, r.stdout


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (
            "Contains: admin, Exact: admin",
            "Header[0]: sets Exact and Contains (expected exactly one of Present, Exact,",
        ),
        ("Regex: '(?=admin)'", 'Header[0].Regex: "(?=admin)" does not compile: look-around'),
        ("Contains: admin, IgnoreCase: 'yes'", "Header[0].IgnoreCase: expected true or false"),
    ],
)
def test_cli_check_reports_bad_header_rules_on_one_line(tmp_path: Any, bad: str, needle: str) -> None:
    text = CLI_INTENTIONS.replace("Contains: admin, ignore_case: true", bad)
    r = _cli(tmp_path, text, "web", "api", "--method", "PUT", "--path", "/reports")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "intentions.yaml: Sources[0].Permissions[1].HTTP." + needle in r.stderr, r.stderr
