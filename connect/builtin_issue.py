"""The built-in CA's work done in a short-lived process: ``python -m connect.builtin_issue`` reads one request
(JSON) on stdin and writes one answer (JSON) on stdout.

Why a process: X.509 and ECDSA come from ``cryptography`` (connect/ca.py), about 8 MB of resident memory once
loaded, for work done once per two thirds of a leaf's life. The sidecar keeps the leaf's PEMs and facts
(connect/leaf.py) and never loads the library itself (issue #13, bench/rss_bench.py).

Requests: ``{"op": "check", "dir", "trust_domain"}`` (preflight: the CA loads and its trust domain is the
configured one) and ``{"op": "issue", "dir", "trust_domain", "create", "service", "datacenter", "ttl"}``.
Answers: ``{"problem": "<key>: <one line>"}`` or, for issue, ``{"trust_domain", "roots_pem", "leaf": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from connect.deadline import within
from connect.leaf import Leaf

TIMEOUT = 60.0


class IssueError(Exception):
    """The CA could not do it; the message is one line naming the config key."""


def _trust_domain_problem(directory: str, configured: str | None, actual: str) -> str | None:
    if configured and configured != actual:
        return (
            f"certificates.builtin.trust_domain: {configured!r} does not match the CA in {directory} ({actual!r})"
        )
    return None


def handle(req: dict[str, Any]) -> dict[str, Any]:
    """One request, in this process (the child's work; also what tests call directly)."""
    from connect.ca import BuiltinCA, CAError

    directory, configured = str(req["dir"]), req.get("trust_domain") or None
    try:
        if req["op"] == "check":
            ca = BuiltinCA.load(Path(directory))
        else:
            ca = BuiltinCA.init(Path(directory), configured, exist_ok=True)
    except CAError as e:
        return {"problem": f"certificates.builtin.dir: {e}"}
    except OSError as e:
        return {"problem": f"{directory}: certificates.builtin.dir: cannot create CA: {e.strerror}"}
    mismatch = _trust_domain_problem(directory, configured, ca.trust_domain)
    if mismatch:
        return {"problem": mismatch}
    if req["op"] == "check":
        return {"trust_domain": ca.trust_domain}
    try:
        leaf = ca.issue(str(req["service"]), str(req["datacenter"]), float(req["ttl"]))
        roots = ca.roots_pem()
    except (CAError, OSError, ValueError) as e:
        return {"problem": f"certificates.builtin.dir: cannot issue a leaf: {e}"}
    return {
        "trust_domain": ca.trust_domain,
        "roots_pem": roots.decode(),
        "leaf": {
            "cert_pem": leaf.cert_pem.decode(),
            "key_pem": leaf.key_pem.decode(),
            "spiffe_id": leaf.spiffe_id,
            "serial": leaf.serial,
            "not_before": leaf.not_before,
            "not_after": leaf.not_after,
        },
    }


def leaf_of(answer: dict[str, Any]) -> Leaf:
    d = answer["leaf"]
    return Leaf(
        d["cert_pem"].encode(), d["key_pem"].encode(), d["spiffe_id"], d["serial"], d["not_before"], d["not_after"]
    )


def _argv() -> list[str]:
    return [sys.executable, "-m", "connect.builtin_issue"]


def _decode(rc: int, out: bytes, err: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(out)
    except ValueError:
        answer = None
    if rc != 0 or not isinstance(answer, dict):
        last = (err.decode(errors="replace").strip().splitlines() or ["no answer"])[-1]
        raise IssueError(f"the CA process failed ({last})")
    if "problem" in answer:
        raise IssueError(str(answer["problem"]))
    return answer


async def run(req: dict[str, Any]) -> dict[str, Any]:
    """``req`` done by a child process; IssueError with one line when it cannot be."""
    proc = await asyncio.create_subprocess_exec(
        *_argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await within(proc.communicate(json.dumps(req).encode()), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise IssueError(f"the CA process did not answer within {TIMEOUT:.0f}s") from None
    return _decode(proc.returncode or 0, out, err)


def run_sync(req: dict[str, Any]) -> dict[str, Any]:
    """As ``run``, for code that runs before the event loop (preflight at ``meshgw run``)."""
    import subprocess

    try:
        p = subprocess.run(_argv(), input=json.dumps(req).encode(), capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise IssueError(f"the CA process did not answer within {TIMEOUT:.0f}s") from None
    return _decode(p.returncode, p.stdout, p.stderr)


def main() -> int:
    try:
        req = json.load(sys.stdin)
        if not isinstance(req, dict) or req.get("op") not in ("check", "issue"):
            raise ValueError("expected a check or issue request")
    except ValueError as e:
        print(f"meshgw builtin_issue: bad request: {e}", file=sys.stderr)
        return 2
    json.dump(handle(req), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
