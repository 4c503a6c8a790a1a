"""meshgw's version, from the installed distribution's metadata (one source: pyproject.toml)."""

from __future__ import annotations

import platform
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("meshgw")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


VERSION = _version()
PYTHON_VERSION = platform.python_version()
