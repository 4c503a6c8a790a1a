"""The inbound HTTP section handed to the core: the mesh entry's request normalization (parsed with Consul's
one-line errors, l7-security.md §1.1) and the inbound settings of meshgw.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config import AccessLogConfig, Config, load_config
from gateway.corespec import inbound_http
from gateway.http.entries import EntryError, MeshEntry, RequestNormalization, parse_entries, parse_entry

MESH = {
    "Kind": "mesh",
    "Name": "mesh",
    "HTTP": {
        "SanitizeXForwardedClientCert": False,
        "Incoming": {
            "RequestNormalization": {
                "InsecureDisablePathNormalization": False,
                "MergeSlashes": True,
                "PathWithEscapedSlashesAction": "UNESCAPE_AND_REDIRECT",
                "HeadersWithUnderscoresAction": "REJECT_REQUEST",
            }
        },
    },
    "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2"}},
}


def test_mesh_entry_is_parsed_in_both_key_styles() -> None:
    e = parse_entry(MESH, "x")
    assert e == MeshEntry("mesh", False, RequestNormalization(False, True, "UNESCAPE_AND_REDIRECT", "REJECT_REQUEST"))
    snake = parse_entry(
        {
            "kind": "mesh",
            "name": "mesh",
            "http": {"incoming": {"request_normalization": {"merge_slashes": True}}},
        },
        "x",
    )
    assert snake.request_normalization == RequestNormalization(merge_slashes=True)
    assert parse_entry({"Kind": "mesh", "Name": "mesh"}, "x") == MeshEntry()


def test_bad_enums_get_consuls_words_on_one_line_each() -> None:
    bad = {
        "Kind": "mesh",
        "Name": "mesh",
        "HTTP": {
            "Incoming": {
                "RequestNormalization": {"PathWithEscapedSlashesAction": "X", "HeadersWithUnderscoresAction": "Y"}
            }
        },
    }
    with pytest.raises(EntryError) as e:
        parse_entries([bad], "f.yaml: config_entries")
    key = "f.yaml: config_entries[0]: mesh/mesh: HTTP.Incoming.RequestNormalization"
    assert e.value.problems == [
        f"{key}.PathWithEscapedSlashesAction: error in HTTP incoming request normalization configuration: no "
        "matching PathWithEscapedSlashesAction value found for X, please specify one of "
        "[IMPLEMENTATION_SPECIFIC_DEFAULT, KEEP_UNCHANGED, REJECT_REQUEST, UNESCAPE_AND_REDIRECT, "
        "UNESCAPE_AND_FORWARD]",
        f"{key}.HeadersWithUnderscoresAction: error in HTTP incoming request normalization configuration: no "
        "matching HeadersWithUnderscoresAction value found for Y, please specify one of "
        "[ALLOW, REJECT_REQUEST, DROP_HEADER]",
    ]


def _config(tmp_path: Path, extra: str = "") -> Config:
    (tmp_path / "meshgw.yaml").write_text(
        "datacenter: dc1\n"
        "service: {name: api, port: 8080, protocol: http}\n"
        "inbound: {bind: '127.0.0.1:21000', request_timeout: 1s, idle_timeout: 90s}\n"
        "control_plane: {type: local, local: {catalog: catalog.yaml, intentions: intentions.yaml}}\n"
        "certificates: {type: builtin, builtin: {dir: ca}}\n" + extra
    )
    (tmp_path / "catalog.yaml").write_text("services: {}\n")
    (tmp_path / "intentions.yaml").write_text(
        "Kind: service-intentions\nName: api\nSources: [{Name: web, Action: allow}]\n"
    )
    return load_config(tmp_path / "meshgw.yaml")


def test_spec_from_config_and_mesh_entry(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    snap: Any = SimpleNamespace(mesh=None, access_log=None)
    assert inbound_http.spec(cfg, snap) == {
        "request_timeout_ms": 1000,
        "idle_timeout_ms": 90000,
        "stream_idle_timeout_ms": 300000,
        "access_log": {"enabled": False, "fields": list(AccessLogConfig().fields)},
    }
    snap = SimpleNamespace(mesh=parse_entry(MESH, "x"), access_log=None)
    assert inbound_http.spec(cfg, snap)["normalization"] == {
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "headers_with_underscores_action": "REJECT_REQUEST",
    }
    # The local control plane's config_entries carry a mesh entry too.
    local = dataclasses.replace(cfg, config_entries=(parse_entry(MESH, "x"),))
    assert inbound_http.spec(local, SimpleNamespace(mesh=None))["normalization"]["merge_slashes"] is True
    logged = dataclasses.replace(cfg, access_log=AccessLogConfig(enabled=True, fields=("method", "status")))
    assert inbound_http.spec(logged, snap)["access_log"] == {"enabled": True, "fields": ["method", "status"]}
