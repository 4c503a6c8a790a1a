"""The one compiled part of meshgw: gateway/_relaycore.c, the L4 relay's data path (see its header comment).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C compiler or
no OpenSSL headers), meshgw installs without it and relays in Python (gateway/native.py says which is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway._relaycore",
            sources=["gateway/_relaycore.c", "gateway/_httpcore.c"],
            depends=["gateway/_core.h"],
            libraries=["ssl", "crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
