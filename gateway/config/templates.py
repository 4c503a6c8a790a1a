"""The ``templates:`` section (gateway/render.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.reader import (
    _bool,
    _Reader,
    _resolve,
    parse_duration,
    text,
)
from gateway.config.schema import (
    TemplateCertsConfig,
    TemplateConfig,
    TemplateWait,
)

_TEMPLATE_KEYS = (
    "source",
    "destination",
    "perms",
    "command",
    "command_timeout",
    "wait",
    "backup",
    "error_on_missing_key",
    "create_dest_dirs",
)


def _perms(value: Any) -> int:
    # YAML reads an unquoted 0640 as the integer 416 and 640 as six hundred and forty: only a string is unambiguous.
    if not isinstance(value, str) or not re.match(r"^0?[0-7]{3,4}$", value):
        raise ValueError(f'{value!r} is not a mode (expected a quoted octal string such as "0640")')
    return int(value, 8)


def _command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"{value!r} is not a command (expected a string for sh -c, or a list of arguments)")


def _wait(value: Any) -> TemplateWait:
    # consul-template's forms: {min, max}, or "min:max"; a missing max is 4 x min (CT:config/wait.go).
    if isinstance(value, Mapping):
        unknown = set(value) - {"min", "max"}
        if unknown or "min" not in value:
            raise ValueError('expected {min: DURATION, max: DURATION} or "min:max"')
        lo = parse_duration(value["min"])
        hi = parse_duration(value["max"]) if value.get("max") is not None else 4 * lo
    elif isinstance(value, str):
        lo_s, _, hi_s = value.partition(":")
        lo = parse_duration(lo_s)
        hi = parse_duration(hi_s) if hi_s else 4 * lo
    else:
        raise ValueError(f'{value!r} is not a wait (expected {{min: 2s, max: 10s}} or "2s:10s")')
    if hi < lo:
        raise ValueError(f"max ({hi:g}s) is shorter than min ({lo:g}s)")
    return TemplateWait(lo, hi)


def _parse_templates(
    r: _Reader, raw: Any, base: Path, env: Mapping[str, str]
) -> tuple[tuple[TemplateConfig, ...], TemplateCertsConfig | None]:
    """``templates:`` is a list of templates, or ``{certs_dir, write_key, wait, files: [...]}`` for the settings
    shared by all of them. ``wait`` there is the default for each file (consul-template's top-level wait)."""
    default_wait: TemplateWait | None = None
    certs_dir: str | None = None
    write_key = False
    items: Any = raw
    if isinstance(raw, Mapping):
        t = r.mapping(raw, "templates", ("certs_dir", "write_key", "wait", "files"))
        certs_dir = r.get(t, "templates", "certs_dir", text, None)
        write_key = bool(r.get(t, "templates", "write_key", _bool, False))
        default_wait = r.get(t, "templates", "wait", _wait, None)
        items = t.get("files")
    if items is None:
        items = []
    if not isinstance(items, list):
        key = "templates.files" if isinstance(raw, Mapping) else "templates"
        r.problem(key, f"expected a list of templates {{source, destination, ...}}, got {type(items).__name__}")
        items = []
    prefix = "templates.files" if isinstance(raw, Mapping) else "templates"
    out: list[TemplateConfig] = []
    dests: dict[Path, str] = {}
    for n, item in enumerate(items):
        key = f"{prefix}[{n}]"
        m = r.mapping(item, key, _TEMPLATE_KEYS)
        src = r.get(m, key, "source", text, required=True)
        dst = r.get(m, key, "destination", text, required=True)
        tpl = TemplateConfig(
            source=_resolve(base, src or "."),
            destination=_resolve(base, dst or "."),
            perms=r.get(m, key, "perms", _perms, None),
            command=r.get(m, key, "command", _command, None),
            command_timeout=r.get(m, key, "command_timeout", parse_duration, 30.0) or 30.0,
            wait=r.get(m, key, "wait", _wait, default_wait),
            backup=bool(r.get(m, key, "backup", _bool, False)),
            error_on_missing_key=bool(r.get(m, key, "error_on_missing_key", _bool, False)),
            create_dest_dirs=bool(r.get(m, key, "create_dest_dirs", _bool, True)),
        )
        if dst and tpl.destination in dests:
            r.problem(f"{key}.destination", f"{tpl.destination} is already written by {dests[tpl.destination]}")
        if dst:
            dests[tpl.destination] = key
        out.append(tpl)
    # Without certs_dir: systemd's RuntimeDirectory= (exported as RUNTIME_DIRECTORY) or the Nomad task's secrets
    # directory (vault-nomad.md §4.4), so that a unit or a job needs no setting for it.
    if certs_dir is None and env.get("RUNTIME_DIRECTORY"):
        certs_dir = str(Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "certs")
    if certs_dir is None and env.get("NOMAD_SECRETS_DIR"):
        certs_dir = str(Path(env["NOMAD_SECRETS_DIR"]) / "meshgw")
    certs = TemplateCertsConfig(dir=_resolve(base, certs_dir), write_key=write_key) if certs_dir else None
    return tuple(out), certs
