"""The one problem-collecting reader of every file meshgw reads (meshgw.yaml in gateway/config, config entries in
gateway/http/entries.py, service-intentions in connect/intentions.py): each problem is one line,
``WHERE: key.path: what is wrong (expected ...)``, worded the same whichever file it is in.

A reader either collects every problem of a document (meshgw.yaml, config entries: all are reported together) or,
with ``first=SomeError``, raises at the first one (intentions, as Consul's validator stops at its first). Keys are
matched exactly (meshgw.yaml's snake_case keys) or, with ``fold``, as Consul's decoder matches them
(case-insensitively, with or without underscores: mapstructure plus lib/decode.HookTranslateKeys) and handed back
under their canonical names. Standalone on purpose: ``connect/`` imports it without the rest of ``gateway``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def quote(value: Any) -> str:
    """User text on one line (JSON quoting turns newlines into \\n), as it reads in the file."""
    return json.dumps(value, ensure_ascii=False, default=str)


def kind_of(value: Any) -> str:
    """What a value is, for "expected X, got Y"."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return f"{quote(value)} ({type(value).__name__})"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def shown_key(raw: Any) -> str:
    """A key as a problem line names it: plain when it is a plain word, else quoted (never a line break)."""
    return raw if isinstance(raw, str) and _SAFE_KEY.match(raw) else quote(raw)


def fold_consul(key: str) -> str:
    """Consul's decoder: case-insensitive, snake_case aliases (``path_exact`` for ``PathExact``)."""
    return key.replace("_", "").lower()


def fold_loose(key: str) -> str:
    """As ``fold_consul``, and ``-`` ignored too (config entries read back from Consul or written in HCL)."""
    return key.replace("_", "").replace("-", "").lower()


class Problems:
    """Walks a loaded document (YAML, JSON or HCL data), naming each problem by its key path."""

    def __init__(
        self,
        where: str,
        *,
        fold: Callable[[str], str] | None = None,
        lenient: bool = False,
        first: Callable[[str], Exception] | None = None,
    ):
        self.where = where
        self.fold = fold
        self.lenient = lenient  # unknown keys are ignored (entries read back from a newer Consul)
        self.first = first
        self.problems: list[str] = []

    def line(self, key: str, msg: str) -> str:
        return f"{self.where}: {key or '(top level)'}: {msg}"

    def problem(self, key: str, msg: str) -> None:
        line = self.line(key, msg)
        if self.first is not None:
            raise self.first(line)
        self.problems.append(line)

    def fail(self, key: str, msg: str) -> NoReturn:
        """A problem after which the caller cannot go on (with ``first``, its error; else a ValueError)."""
        self.problem(key, msg)
        raise ValueError(self.line(key, msg))

    def mapping(
        self,
        data: Any,
        key: str,
        fields: tuple[str, ...],
        *,
        ignore: tuple[str, ...] = (),
        required: bool = False,
        drop_null: bool = False,
    ) -> dict[str, Any]:
        """The mapping's values under their canonical names; unknown keys are problems. ``None`` reads as an empty
        mapping unless ``required``; ``drop_null`` leaves null values out (Go decoders keep the zero value)."""
        if data is None and not required:
            return {}
        if not isinstance(data, Mapping):
            self.problem(key, f"expected a mapping, got {kind_of(data)}")
            return {}
        fold = self.fold or (lambda k: k)
        canon = {fold(f): f for f in fields}
        skip = {fold(f) for f in ignore}
        out: dict[str, Any] = {}
        seen: dict[str, Any] = {}
        for raw, value in data.items():
            name = canon.get(fold(raw)) if isinstance(raw, str) else None
            if name is None:
                if not self.lenient and not (isinstance(raw, str) and fold(raw) in skip):
                    self.problem(join(key, shown_key(raw)), f"unknown key (expected one of: {', '.join(fields)})")
                continue
            if name in seen:
                self.problem(join(key, name), f"given twice, as {quote(seen[name])} and {quote(raw)} (expected once)")
                continue
            seen[name] = raw
            if value is not None or not drop_null:
                out[name] = value
        return out

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        name: str,
        parse: Callable[[Any], T],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        """``data[name]`` through ``parse`` (which raises ValueError or TypeError with what is wrong)."""
        full = join(key, name)
        if name not in data or data[name] is None:
            if required:
                self.problem(full, "is required")
            return default
        try:
            return parse(data[name])
        except (ValueError, TypeError) as e:
            self.problem(full, str(e))
            return default

    def raise_if_any(self, error: Callable[[list[str]], Exception]) -> None:
        if self.problems:
            raise error(self.problems)

