"""The intentions that apply to this proxy's service, in precedence order, and "would this be allowed?" answered
by the core's evaluator through connect.intentions.check, the same call `meshgw intention check` makes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connect.intentions import IntentionError, check
from gateway.console.source import ConsoleSource

MAX_HEADERS = 32
MAX_FIELD = 4096


class CheckError(ValueError):
    """A form field the check cannot use (one line)."""


@dataclass(frozen=True, slots=True)
class CheckRequest:
    source: str
    destination: str
    method: str | None = None  # None, None, () for an L4 (TCP) check
    path: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def l7(self) -> bool:
        return self.method is not None or self.path is not None or bool(self.headers)

    @classmethod
    def from_query(cls, q: Mapping[str, str], default_destination: str, header_lines: list[str]) -> CheckRequest:
        """From the form: source, destination, method, path and headers as "Name: value" lines."""
        for k, v in q.items():
            if len(v) > MAX_FIELD:
                raise CheckError(f"{k}: longer than {MAX_FIELD} characters")
        source = q.get("source", "").strip()
        if not source:
            raise CheckError("source: required (a service name, or namespace/name)")
        destination = q.get("destination", "").strip() or default_destination
        method = q.get("method", "").strip().upper() or None
        if method is not None and not method.isalpha():
            raise CheckError(f"method: {method!r} is not an HTTP method (expected letters, e.g. GET)")
        path = q.get("path", "").strip() or None
        if path is not None and not path.startswith("/"):
            raise CheckError(f"path: {path!r} must start with /")
        headers: list[tuple[str, str]] = []
        for line in header_lines:
            line = line.strip()
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise CheckError(f"headers: {line!r}: expected Name: value")
            headers.append((name.strip(), value.strip()))
        if len(headers) > MAX_HEADERS:
            raise CheckError(f"headers: more than {MAX_HEADERS}")
        return cls(source, destination, method, path, tuple(headers))


def rules(src: ConsoleSource) -> dict[str, Any]:
    table = src.snapshot.intentions
    return {
        "destination": src.snapshot.service,
        "default_policy": "allow" if table.default_allow else "deny",
        "problem": table.problem,
        "rules": table.rules(),  # evaluation (precedence) order; the default applies after the last
    }


def evaluate(src: ConsoleSource, req: CheckRequest) -> dict[str, Any]:
    snap = src.snapshot
    try:
        d = check(
            snap.intention_entries,
            req.source,
            req.destination,
            snap.intentions.default_allow,
            method=req.method if req.l7 else None,
            path=req.path if req.l7 else None,
            headers=list(req.headers) if req.l7 else None,
        )
    except IntentionError as e:
        raise CheckError(str(e)) from None
    return {
        "allowed": d.allowed,
        "decision": "allow" if d.allowed else "deny",
        "source": req.source,
        "destination": req.destination,
        "kind": "http" if req.l7 else "tcp",
        "reason": d.reason,
        # The intention that decided (its source and precedence), or None when the default policy did.
        "rule": None if d.source is None else {"source": d.source, "precedence": d.precedence},
    }
