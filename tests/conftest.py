from __future__ import annotations

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


@pytest.fixture(params=["native", "python"])
def http_data_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with HTTP served by the native engine (gateway/_httpcore.c, the default where it is
    built) and once by the Python proxy it falls back to (MESHGW_NATIVE_HTTP=0): the sidecars inherit it."""
    if request.param == "python":
        monkeypatch.setenv("MESHGW_NATIVE_HTTP", "0")
    else:
        monkeypatch.delenv("MESHGW_NATIVE_HTTP", raising=False)
    return str(request.param)
