from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mesh import Mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.close()


# With MESHGW_DATA_PLANE=core the Rust core serves HTTP itself: one data path to test.
_HTTP_PATHS = ["core"] if os.environ.get("MESHGW_DATA_PLANE", "") == "core" else ["native", "python"]


@pytest.fixture(params=_HTTP_PATHS)
def http_data_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with HTTP served by the native engine (gateway/_httpcore.c, the default where it is
    built) and once by the Python proxy it falls back to (MESHGW_NATIVE_HTTP=0): the sidecars inherit it.
    On the Rust core (MESHGW_DATA_PLANE=core), once, by the core."""
    if request.param == "python":
        monkeypatch.setenv("MESHGW_NATIVE_HTTP", "0")
    else:
        monkeypatch.delenv("MESHGW_NATIVE_HTTP", raising=False)
    return str(request.param)
