"""Header work for the HTTP proxy: hop-by-hop removal, forwarding headers, trace context, heads as bytes.

Everything is bytes and done once per message, in one pass over the headers, joined into one write.
"""

from __future__ import annotations

import random
import re
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
# Connection options that name no header: nothing more to drop when only these appear.
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive", b"upgrade"})
_EMPTY: frozenset[bytes] = frozenset()

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_getrandbits = random.getrandbits


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection: they are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


class ResponseHead:
    """A response head as received: the status line and header lines (``raw``, CRLF-terminated lines, no blank
    line). ``headers`` splits it into (name, value) pairs, only when the general rendering path needs them."""

    __slots__ = ("raw", "status", "version")

    def __init__(self, status: int, raw: bytes, version: str):
        self.status = status
        self.raw = raw
        self.version = version

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        for line in self.raw.split(b"\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                out.append((name.strip(), value.strip()))
        return out


def _filtered(headers: list[tuple[bytes, bytes]], keep_upgrade: bool, drop: frozenset[bytes] = _EMPTY) -> list[bytes]:
    conn = connection_tokens(headers)
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in conn or lname in drop:
            if keep_upgrade and lname == b"upgrade":
                out.append(b"%s: %s\r\n" % (name, value))
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    return out


def new_request_id() -> bytes:
    """A UUID version 4 (RFC 9562 §5.4) as Envoy generates for x-request-id; from the fast PRNG: it names a
    request, it guards nothing."""
    n = _getrandbits(128)
    n = (n & ~(0xF << 76) | (0x4 << 76)) & ~(0x3 << 62) | (0x2 << 62)
    h = b"%032x" % n
    return b"%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def new_trace_parent(incoming: bytes | None) -> bytes:
    """W3C trace context: keep the trace id and flags, new span id per hop; start a trace when none arrives."""
    span = b"%016x" % (_getrandbits(64) or 1)  # an all-zero id is invalid (W3C trace-context §3.2.2.4)
    if incoming:
        parts = incoming.strip().split(b"-")
        if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16 and parts[1] != b"0" * 32:
            return b"%s-%s-%s-%s" % (parts[0], parts[1], span, parts[3][:2])
    return b"00-%032x-%s-01" % (_getrandbits(128) or 1, span)


def _forwarded_for(ip: str) -> bytes:
    # RFC 7239 §6: an IPv6 node is quoted and bracketed.
    return b'for="[%s]"' % ip.encode() if ":" in ip else b"for=%s" % ip.encode()


def render_request_head(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    chunked: bool,
    upgrade: bool,
    client_ip: str,
    extra: bytes = b"",
    drop: frozenset[bytes] = _EMPTY,
    info: list[bytes] | None = None,
) -> bytes:
    """The head sent upstream: hop-by-hop fields and ``drop`` removed, ``extra`` (pre-rendered lines) added,
    X-Forwarded-For (and an incoming Forwarded) extended with the client, x-request-id kept or made, a new
    traceparent span. ``info``, when given, receives [x-request-id, traceparent] as sent."""
    out: list[bytes] = []
    conn: bytes | None = None
    xff = b""
    fwd = b""
    request_id = b""
    trace = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                conn = value if conn is None else conn + b"," + value
            elif upgrade and lname == b"upgrade":
                out.append(b"%s: %s\r\n" % (name, value))
            continue
        if lname == b"x-forwarded-for":
            xff = xff + b", " + value.strip() if xff else value.strip()
            continue
        if lname == b"forwarded":
            fwd = fwd + b", " + value.strip() if fwd else value.strip()
            continue
        if lname == b"traceparent":
            trace = value
            continue
        if lname == b"x-request-id":
            request_id = value
        if drop and lname in drop:
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if conn is not None and conn.lower() not in _PLAIN_CONNECTION:
        tokens = {t.strip().lower() for t in conn.split(b",")} - _PLAIN_CONNECTION
        if tokens:
            # Rare: Connection names other headers; those are hop-by-hop as well (RFC 9110 §7.6.1).
            out = [line for line in out if line[: line.index(b":")].lower() not in tokens]
    if client_ip:
        xff = xff + b", " + client_ip.encode() if xff else client_ip.encode()
        if fwd:
            fwd = fwd + b", " + _forwarded_for(client_ip)
    if xff:
        out.append(b"x-forwarded-for: %s\r\n" % xff)
    if fwd:
        out.append(b"forwarded: %s\r\n" % fwd)
    if not request_id:
        request_id = new_request_id()
        out.append(b"x-request-id: %s\r\n" % request_id)
    traceparent = new_trace_parent(trace)
    out.append(b"traceparent: %s\r\n" % traceparent)
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    if upgrade:
        out.append(b"connection: upgrade\r\n")
    if info is not None:
        info.append(request_id)
        info.append(traceparent)
    return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, url, b"".join(out), extra)


# Response fields the proxy must look at (on the lower-cased head) and the hop-by-hop ones it cuts (on the head as
# received, so the other fields keep their case). Field names carry no whitespace before the colon (RFC 9112 §5.1,
# enforced by llhttp), so "\n<name>:" finds them.
_HOP = (
    rb"connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|proxy-authenticate"
    rb"|proxy-authorization"
)
_FIELDS = re.compile(rb"\n(" + _HOP + rb"|content-length):([^\n]*)")
_HOP_LINES = re.compile(rb"\n(?:" + _HOP + rb"):[^\n]*", re.IGNORECASE)


def _raw_response_head(head: ResponseHead, extra: bytes) -> tuple[bytes, bytes] | None:
    """The common case straight from the received bytes, in C: one scan finds the framing and the hop-by-hop
    fields, one substitution cuts those. None when the general path is needed (an HTTP/1.0 status line, a
    Connection naming other fields, both Content-Length and chunked)."""
    if head.version != "1.1":
        return None
    raw = head.raw
    framing = b""
    length = False
    hop = False
    for name, value in _FIELDS.findall(raw.lower()):
        if name == b"content-length":
            length = True
            continue
        hop = True
        if name == b"transfer-encoding":
            if b"chunked" in value:
                framing = b"chunked"
        elif name == b"connection" and value.strip(b" \t\r") not in _PLAIN_CONNECTION:
            return None
    if length:
        if framing:
            return None  # both: Transfer-Encoding wins and Content-Length must go (RFC 9112 §6.3)
        framing = b"length"
    return (_HOP_LINES.sub(b"", raw) if hop else raw) + extra, framing


def render_response_head(
    head: ResponseHead,
    te: bytes,
    keep_alive: bool,
    extra: bytes = b"",
    drop: frozenset[bytes] = _EMPTY,
    pending: bool = False,
) -> tuple[bytes, bytes]:
    """(the head, its framing: b"length", b"chunked" or b""): hop-by-hop fields, those named in Connection and
    ``drop`` removed, ``extra`` added. ``pending``: leave the head open (no framing lines, no blank line) for the
    caller to finish once it knows the framing."""
    if not drop and head.status != 101:
        fast = _raw_response_head(head, extra)
        if fast is not None:
            top, framing = fast
            if pending:
                return top, framing
            tail = b"transfer-encoding: %s\r\n" % te if te else b""
            if not keep_alive:
                tail += b"connection: close\r\n"
            return top + tail + b"\r\n", framing
    out: list[bytes] = []
    conn: bytes | None = None
    framing = b""
    upgrade = head.status == 101
    headers = head.headers
    chunked = any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers)
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                if b"chunked" in value.lower():
                    framing = b"chunked"
            elif lname == b"connection":
                conn = value if conn is None else conn + b"," + value
            elif upgrade and lname == b"upgrade":
                out.append(b"%s: %s\r\n" % (name, value))
            continue
        if lname == b"content-length":
            if chunked:
                continue  # Transfer-Encoding wins; a Content-Length beside it must not be forwarded
            framing = b"length"
        if drop and lname in drop:
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if conn is not None and conn.lower() not in _PLAIN_CONNECTION:
        tokens = {t.strip().lower() for t in conn.split(b",")} - _PLAIN_CONNECTION
        if tokens:
            out = [line for line in out if line[: line.index(b":")].lower() not in tokens]
    reason = _REASONS.get(head.status, b"Unknown")
    top = b"HTTP/1.1 %d %s\r\n%s%s" % (head.status, reason, b"".join(out), extra)
    if pending:
        return top, framing
    tail = b"transfer-encoding: %s\r\n" % te if te else b""
    if upgrade:
        tail += b"connection: upgrade\r\n"
    elif not keep_alive:
        tail += b"connection: close\r\n"
    return top + tail + b"\r\n", framing


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
