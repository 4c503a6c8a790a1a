"""meshgw's compiled parts.

- ``gateway._core``: the Rust data-plane core (gateway/core, PyO3, abi3). Required: where it cannot be built the
  install stops with one line naming what is missing (scripts/native-deps.sh checks first).
- ``gateway._relaycore``: the C relay/HTTP engine it replaces, still built (optionally) while the suites move over
  to the core; it goes in one commit with the Python data path once the core carries everything.
"""

import shutil
import sys

from setuptools import Extension, setup
from setuptools_rust import Binding, RustExtension

if shutil.which("cargo") is None:
    sys.exit("meshgw: building needs Rust's cargo (the data-plane core is Rust): install it with rustup, then retry")

setup(
    rust_extensions=[
        RustExtension(
            "gateway._core",
            path="gateway/core/Cargo.toml",
            binding=Binding.PyO3,
            py_limited_api=True,
            debug=False,  # the data plane is benchmarked from the editable install too
        )
    ],
    ext_modules=[
        Extension(
            "gateway._relaycore",
            sources=["gateway/_relaycore.c", "gateway/_httpcore.c"],
            depends=["gateway/_core.h"],
            libraries=["ssl", "crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ],
)
