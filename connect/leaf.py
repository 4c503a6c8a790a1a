"""A leaf certificate as the sidecar holds it: PEMs and the facts read from them once. Its own small module, free of
the X.509 library, so the long-lived process can hold leaves without loading it (issue #13: connect/ca.py's
cryptography is about 8 MB of resident memory; the built-in CA issues in a short-lived process,
connect/builtin_issue.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Leaf:
    cert_pem: bytes  # leaf followed by nothing: the built-in CA signs leaves with the root directly
    key_pem: bytes
    spiffe_id: str
    serial: str  # colon hex, as Consul shows leaf serials
    not_before: float  # unix seconds
    not_after: float

    def __repr__(self) -> str:  # never let a private key reach a log line through repr()
        return f"Leaf({self.spiffe_id}, serial={self.serial}, not_after={self.not_after})"


def colon_hex(n: int) -> str:
    h = f"{n:x}"
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))
