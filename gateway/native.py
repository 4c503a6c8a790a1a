"""Whether the native relay data path (gateway/_relaycore.c) is in use, and one native core per event loop.

The extension is built at install time where a C compiler and OpenSSL's headers exist (setup.py); without it
meshgw relays in Python, correctly but with more CPU per record. ``MESHGW_NATIVE_RELAY=0`` turns it off (to
compare, or to rule it out when chasing a problem). The extension shares SSL objects with Python's ssl module,
so both must use the same OpenSSL: checked here once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import weakref
from types import ModuleType
from typing import Any

log = logging.getLogger("meshgw.native")


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("MESHGW_NATIVE_RELAY", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "turned off by MESHGW_NATIVE_RELAY"
    try:
        from gateway import _relaycore  # type: ignore[attr-defined]
    except ImportError as e:
        return None, f"not built ({e})"
    if _relaycore.OPENSSL_VERSION_NUMBER != ssl.OPENSSL_VERSION_NUMBER:
        return None, (
            f"built against OpenSSL {_relaycore.OPENSSL_VERSION_NUMBER:#x}, Python's ssl uses "
            f"{ssl.OPENSSL_VERSION_NUMBER:#x}"
        )
    return _relaycore, ""


_module, why_not = _load()
_cores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def available() -> bool:
    return _module is not None


def module() -> ModuleType | None:
    return _module


def describe() -> str:
    """One line for the log at start-up and for /config."""
    return "native (C) relay data path" if _module is not None else f"Python relay data path: native one {why_not}"


def disable(reason: str) -> None:
    """Stop handing relays over (an SSL object the extension refused: the running Python is not the one it
    was checked against). Logged once; relays go on in Python."""
    global _module, why_not
    if _module is not None:
        _module, why_not = None, reason
        log.warning("native relay data path off: %s", reason)


def core(loop: asyncio.AbstractEventLoop) -> Any:
    """This loop's native core, made on first use: its epoll descriptor is watched by the loop."""
    c = _cores.get(loop)
    if c is None:
        assert _module is not None
        c = _module.Core()
        loop.add_reader(c.fileno(), c.poll)
        _cores[loop] = c
    return c
