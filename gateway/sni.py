"""What a mesh gateway reads of a connection before forwarding it: the SNI of the TLS ClientHello.

The gateway never decrypts (consul.md §6): it reads the first handshake message as bytes, takes the
server_name extension (RFC 6066 §3) and hands every byte it read, unchanged, to the endpoint it picks.
The mTLS session stays between the two sidecars.
"""

from __future__ import annotations

from dataclasses import dataclass

# A ClientHello fits in a few hundred bytes; post-quantum key shares make it ~1.5 KB. A handshake
# message may span records (RFC 8446 §5.1); past this many bytes we stop waiting and refuse.
MAX_HELLO = 16 * 1024 + 5


class NotTLS(ValueError):
    """The bytes are not the start of a TLS ClientHello."""


def client_hello_sni(buf: bytes) -> tuple[bool, str | None]:
    """(complete, sni): complete is False while more bytes are needed; sni is None when the ClientHello
    carries no host name. Raises NotTLS for anything that is not a TLS ClientHello."""
    # Reassemble the handshake layer from as many records as have arrived.
    hs = bytearray()
    pos = 0
    while True:
        if len(buf) - pos < 5:
            if pos == 0 and buf and buf[0] != 0x16:
                raise NotTLS("not a TLS handshake record")
            return False, None
        ctype, major, length = buf[pos], buf[pos + 1], int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if ctype != 0x16 or major != 3 or length == 0 or length > 16384 + 256:
            raise NotTLS("not a TLS handshake record")
        end = pos + 5 + length
        hs += buf[pos + 5 : min(end, len(buf))]
        if len(hs) >= 4:
            if hs[0] != 0x01:
                raise NotTLS("the first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(hs[1:4], "big")
            if len(hs) >= need:
                return True, _sni_of(bytes(hs[4:need]))
        if end > len(buf):
            return False, None
        pos = end


def _sni_of(body: bytes) -> str | None:
    try:
        p = 2 + 32  # legacy_version, random
        p += 1 + body[p]  # legacy_session_id
        p += 2 + int.from_bytes(body[p : p + 2], "big")  # cipher_suites
        p += 1 + body[p]  # legacy_compression_methods
        if p >= len(body):
            return None  # no extensions at all
        end = p + 2 + int.from_bytes(body[p : p + 2], "big")
        p += 2
        while p + 4 <= end:
            etype = int.from_bytes(body[p : p + 2], "big")
            elen = int.from_bytes(body[p + 2 : p + 4], "big")
            p += 4
            if etype == 0:  # server_name: a list of (name_type, name); type 0 is host_name
                q = p + 2
                while q + 3 <= p + elen:
                    ntype = body[q]
                    nlen = int.from_bytes(body[q + 1 : q + 3], "big")
                    if ntype == 0:
                        return body[q + 3 : q + 3 + nlen].decode("ascii").lower()
                    q += 3 + nlen
                return None
            p += elen
    except (IndexError, UnicodeDecodeError) as e:
        raise NotTLS(f"malformed ClientHello ({e})") from None
    return None


@dataclass(frozen=True, slots=True)
class MeshTarget:
    """Where a mesh SNI name points (consul.md §5.2). ``service`` is empty for a datacenter name."""

    datacenter: str
    service: str = ""
    subset: str = ""
    namespace: str = "default"
    partition: str = "default"


def parse_mesh_sni(sni: str, trust_domain: str) -> MeshTarget | None:
    """The target of a Consul SNI name in ``trust_domain``, or None for a name of another trust domain or form.

    ``<svc>.<ns>.<dc>.internal.<td>``, ``<subset>.<svc>.<ns>.<dc>.internal.<td>``, the ``internal-v1`` forms
    with a partition, and ``<dc>.internal.<td>`` (C:agent/connect/sni.go)."""
    sni = sni.lower().rstrip(".")
    td = trust_domain.lower()
    head, sep, tail = sni.partition(".internal.")
    with_partition = False
    if not (sep and tail == td):
        head, sep, tail = sni.partition(".internal-v1.")
        with_partition = True
        if not (sep and tail == td):
            return None
    labels = head.split(".")
    if not all(labels):
        return None
    if with_partition:
        if len(labels) == 4:
            return MeshTarget(labels[3], labels[0], "", labels[1], labels[2])
        if len(labels) == 5:
            return MeshTarget(labels[4], labels[1], labels[0], labels[2], labels[3])
        return None
    if len(labels) == 1:
        return MeshTarget(labels[0])
    if len(labels) == 3:
        return MeshTarget(labels[2], labels[0], "", labels[1])
    if len(labels) == 4:
        return MeshTarget(labels[3], labels[1], labels[0], labels[2])
    return None
