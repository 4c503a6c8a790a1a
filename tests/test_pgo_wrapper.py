"""The rustc-wrapper that applies the committed PGO profile (gateway/core/pgo/rustc-pgo, .cargo/config.toml).

It runs in front of every rustc call cargo makes in this repository, so a mistake here would either build the
product without its profile or break debug, clippy and fuzz builds. A fake rustc records what it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PGO = ROOT / "gateway" / "core" / "pgo"
FAKE_RUSTC = """#!/usr/bin/env bash
if [ "$1" = -vV ]; then
    printf 'rustc 1.0.0\\nhost: x86_64-unknown-linux-gnu\\nLLVM version: %s.1.0\\n' "$FAKE_LLVM"
    exit 0
fi
printf '%s\\n' "$@" > "$FAKE_OUT"
printf '%s' "${MESHGW_PGO_PROFILE-unset}" > "$FAKE_OUT.env"
"""


@pytest.fixture
def pgo_copy(tmp_path: Path) -> Path:
    """The wrapper beside a profile of its own (the committed one may be regenerated; its content is not read)."""
    d = tmp_path / "pgo"
    d.mkdir()
    shutil.copy(PGO / "rustc-pgo", d / "rustc-pgo")
    (d / "meshgw.profdata").write_bytes(b"not read by the fake rustc")
    (d / "llvm-major").write_text("22\n")
    rustc = tmp_path / "rustc"
    rustc.write_text(FAKE_RUSTC)
    rustc.chmod(0o755)
    return d


def run(pgo: Path, *args: str, llvm: str = "22", **env: str) -> list[str]:
    out = pgo.parent / "args"
    out.unlink(missing_ok=True)
    e = {**os.environ, "FAKE_OUT": str(out), "FAKE_LLVM": llvm}
    e.pop("MESHGW_PGO", None)
    e.pop("MESHGW_PGO_PROFILE", None)
    e.update(env)
    r = subprocess.run([str(pgo / "rustc-pgo"), str(pgo.parent / "rustc"), *args], env=e, capture_output=True)
    assert r.returncode == 0, r.stderr
    return out.read_text().splitlines()


def told_profile(pgo: Path) -> str:
    """MESHGW_PGO_PROFILE as the compiler saw it (the core reads it back with option_env!)."""
    return (pgo.parent / "args.env").read_text()


RELEASE = ["--crate-name", "h2", "--edition=2021", "src/lib.rs", "-C", "opt-level=3", "-C", "lto"]


def test_committed_profile_and_config_are_in_place() -> None:
    assert (PGO / "meshgw.profdata").stat().st_size > 0
    assert (PGO / "llvm-major").read_text().strip().isdigit()
    assert os.access(PGO / "rustc-pgo", os.X_OK)
    config = (ROOT / ".cargo" / "config.toml").read_text()
    assert 'rustc-wrapper = "gateway/core/pgo/rustc-pgo"' in config


def test_optimized_crates_get_the_profile(pgo_copy: Path) -> None:
    assert run(pgo_copy, *RELEASE) == [*RELEASE, f"-Cprofile-use={pgo_copy / 'meshgw.profdata'}"]
    cksum = subprocess.run(["cksum"], stdin=(pgo_copy / "meshgw.profdata").open("rb"), capture_output=True, text=True)
    assert told_profile(pgo_copy) == cksum.stdout.split()[0]


@pytest.mark.parametrize(
    "args",
    [
        # cargo test / clippy: debug builds
        ["--crate-name", "h2", "src/lib.rs", "-C", "opt-level=0", "-C", "debuginfo=2"],
        # build scripts and proc-macros in a release build (cargo's build-override default)
        ["--crate-name", "build_script_build", "build.rs", "-C", "opt-level=0"],
        # cargo fuzz: coverage instrumentation must not meet a profile of another build
        [*RELEASE, "-Cpasses=sancov-module", "--cfg", "fuzzing"],
        # scripts/pgo-train.sh's instrumented build
        [*RELEASE, "-Cprofile-generate=/tmp/raw"],
        # cargo's own probes
        ["-", "--crate-name", "___", "--print=file-names", "--crate-type", "bin"],
    ],
)
def test_everything_else_goes_through_unchanged(pgo_copy: Path, args: list[str]) -> None:
    assert run(pgo_copy, *args) == args
    assert told_profile(pgo_copy) == "unset"


def test_off_switch_and_an_older_llvm_build_without_it(pgo_copy: Path) -> None:
    assert run(pgo_copy, *RELEASE, MESHGW_PGO="off") == RELEASE
    # LLVM reads the profiles older versions wrote, not necessarily newer ones.
    assert run(pgo_copy, *RELEASE, llvm="19") == RELEASE
    assert run(pgo_copy, *RELEASE, llvm="23")[-1].startswith("-Cprofile-use=")


def test_no_profile_builds_without_it(pgo_copy: Path) -> None:
    (pgo_copy / "meshgw.profdata").unlink()
    assert run(pgo_copy, *RELEASE) == RELEASE


def test_the_installed_core_was_built_with_the_profile() -> None:
    """The product's build path (pip → maturin → cargo) goes through the wrapper: .cargo/config.toml is found."""
    if os.environ.get("MESHGW_PGO") == "off":
        pytest.skip("built with MESHGW_PGO=off")
    from gateway import _core

    assert getattr(_core, "__pgo_profile__", ""), "the core was built without the PGO profile"
