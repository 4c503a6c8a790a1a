"""meshgw: a service-mesh sidecar and gateway for Consul, Vault and Nomad on VMs (design: ../shared/design.md)."""

import os

# The Rust core's allocator (mimalloc, gateway/core/src/lib.rs) reads its options when the extension loads. By
# default it commits its arena eagerly, and with transparent huge pages in madvise mode that made about 6 MB of an
# idle sidecar's resident memory 2 MiB pages it never used (issue #13, bench/rss_bench.py): commit on demand. An
# operator's own setting wins.
os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
