"""The one problem-collecting reader (gateway/problems.py): meshgw.yaml, config entries and service-intentions
word the same mistake the same way, one line each, ``FILE: key.path: what is wrong (expected ...)``."""

from __future__ import annotations

from pathlib import Path

import pytest

from connect import intentions
from gateway.config import ConfigError, load_config
from gateway.config.reader import _Reader
from gateway.http import entries
from gateway.problems import Problems


def _what(line: str, where: str, key: str) -> str:
    """The "what is wrong" part of a line, after checking it names the file and the key path."""
    head = f"{where}: {key}: "
    assert line.startswith(head), (line, head)
    assert "\n" not in line
    return line[len(head) :]


def test_the_three_readers_report_the_same_mistakes_the_same_way(tmp_path: Path) -> None:
    f = tmp_path / "meshgw.yaml"
    f.write_text("service: x\ninbound: {bind: '127.0.0.1:1', Colour: 1}\n")
    with pytest.raises(ConfigError) as cfg:
        load_config(f, env={})
    by_key = {p.split(": ")[1]: p for p in cfg.value.problems}
    config_lines = (by_key["service"], by_key["inbound.Colour"])

    with pytest.raises(entries.EntryError) as ent:
        entries.parse_entry({"Kind": "service-router", "Name": "api", "Routes": ["x", {"Colour": 1}]}, "router.hcl")
    entry_lines = tuple(ent.value.problems)
    assert len(entry_lines) == 2

    # Intentions stop at the first problem, as Consul's validator does: one document per mistake.
    lines = []
    for sources in (["x"], [{"Name": "web", "Action": "allow", "Colour": 1}]):
        with pytest.raises(intentions.IntentionError) as e:
            intentions.parse_entry({"Kind": "service-intentions", "Name": "api", "Sources": sources}, "i.json")
        lines.append(str(e.value))

    not_a_mapping = {
        _what(config_lines[0], str(f), "service"),
        _what(entry_lines[0], "router.hcl: service-router/api", "Routes[0]"),
        _what(lines[0], "i.json", "Sources[0]"),
    }
    assert not_a_mapping == {'expected a mapping, got "x" (str)'}
    unknown = [
        _what(config_lines[1], str(f), "inbound.Colour"),
        _what(entry_lines[1], "router.hcl: service-router/api", "Routes[1].Colour"),
        _what(lines[1], "i.json", "Sources[0].Colour"),
    ]
    assert all(u.startswith("unknown key (expected one of: ") for u in unknown), unknown
    assert "bind" in unknown[0] and "Match, Destination" in unknown[1] and "Name, Namespace" in unknown[2]


def test_one_reader_behind_all_three() -> None:
    assert isinstance(_Reader(Path("m.yaml")), Problems)
    assert isinstance(entries._R("e.hcl"), Problems)
    assert isinstance(intentions._Parser("i.json", False).r, Problems)


def test_keys_given_twice_and_odd_keys_are_named_on_one_line() -> None:
    r = Problems("f.json", fold=lambda k: k.replace("_", "").lower())
    out = r.mapping({"PathExact": "/a", "path_exact": "/b", "a b\n": 1}, "HTTP", ("PathExact",))
    assert out == {"PathExact": "/a"}
    assert r.problems == [
        'f.json: HTTP.PathExact: given twice, as "PathExact" and "path_exact" (expected once)',
        'f.json: HTTP."a b\\n": unknown key (expected one of: PathExact)',
    ]
