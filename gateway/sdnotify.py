"""systemd's notification protocol (sd_notify(3)): READY=1 once serving, RELOADING=1 + MONOTONIC_USEC then
READY=1 around a SIGHUP reload, STOPPING=1 when draining starts. A no-op outside systemd (no NOTIFY_SOCKET)."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("meshgw.systemd")


def notify(*fields: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # an abstract socket (sd_notify(3))
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(fields).encode())
        return True
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e.strerror or e)
        return False


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    # MONOTONIC_USEC is required with RELOADING=1 (systemd >= 253, Type=notify-reload).
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")
