"""Header work for the HTTP proxy: hop-by-hop removal, forwarding headers, trace context, heads as bytes.

Everything is bytes and done once per message, joined into one write.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from http import HTTPStatus

# RFC 9110 §7.6.1 (Connection-specific fields) plus the ones every proxy strips (Envoy, HAProxy).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection: they are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[bytes, bytes]]
    version: str

    @property
    def content_length(self) -> bytes | None:
        for name, value in self.headers:
            if name.lower() == b"content-length":
                return value
        return None

    @property
    def chunked(self) -> bool:
        return any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self.headers)


def _filtered(headers: list[tuple[bytes, bytes]], keep_upgrade: bool) -> list[bytes]:
    drop = connection_tokens(headers)
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in drop:
            if keep_upgrade and lname == b"upgrade":
                out.append(b"%s: %s\r\n" % (name, value))
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    return out


def new_trace_parent(incoming: bytes | None) -> bytes:
    """W3C trace context: keep the trace id and flags, new span id per hop; start a trace when none arrives."""
    span = os.urandom(8).hex().encode()
    if incoming:
        parts = incoming.strip().split(b"-")
        if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16 and parts[1] != b"0" * 32:
            return b"%s-%s-%s-%s" % (parts[0], parts[1], span, parts[3][:2])
    return b"00-%s-%s-01" % (os.urandom(16).hex().encode(), span)


def render_request_head(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    chunked: bool,
    upgrade: bool,
    client_ip: str,
    extra: bytes = b"",
) -> bytes:
    lines = _filtered(headers, keep_upgrade=upgrade)
    xff = b""
    request_id = False
    trace = None
    out_lines = []
    for line in lines:
        lname = line[: line.index(b":")].lower()
        if lname == b"x-forwarded-for":
            xff = line[line.index(b":") + 1 :].strip()
            continue
        if lname == b"traceparent":
            trace = line[line.index(b":") + 1 :].strip()
            continue
        if lname == b"x-request-id":
            request_id = True
        out_lines.append(line)
    if client_ip:
        xff = xff + b", " + client_ip.encode() if xff else client_ip.encode()
    if xff:
        out_lines.append(b"x-forwarded-for: %s\r\n" % xff)
    if not request_id:
        out_lines.append(b"x-request-id: %s\r\n" % str(uuid.uuid4()).encode())
    out_lines.append(b"traceparent: %s\r\n" % new_trace_parent(trace))
    if chunked:
        out_lines.append(b"transfer-encoding: chunked\r\n")
    if upgrade:
        out_lines.append(b"connection: upgrade\r\n")
    return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, url, b"".join(out_lines), extra)


def render_response_head(head: ResponseHead, te: bytes, keep_alive: bool, extra: bytes = b"") -> bytes:
    lines = _filtered(head.headers, keep_upgrade=head.status == 101)
    if te:
        lines.append(b"transfer-encoding: %s\r\n" % te)
    if head.status == 101:
        lines.append(b"connection: upgrade\r\n")
    elif not keep_alive:
        lines.append(b"connection: close\r\n")
    reason = _REASONS.get(head.status, b"Unknown")
    return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (head.status, reason, b"".join(lines), extra)


def simple_response(status: int, text: str, keep_alive: bool, extra: bytes = b"") -> bytes:
    body = (text + "\n").encode()
    reason = _REASONS.get(status, b"Unknown")
    conn = b"" if keep_alive else b"connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        status,
        reason,
        len(body),
        conn,
        extra,
        body,
    )
