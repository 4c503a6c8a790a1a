"""Leaf certificates from the built-in CA: issued at start, renewed at about 2/3 of their life, each time by a
short-lived process (connect/builtin_issue.py) so that the sidecar never loads the X.509 library.

Renewal only swaps the snapshot's SSLContexts: connections already open keep the SSL state they
were made with, new ones get the new leaf, so a rotation drops nothing. The CA directory is also
watched, so a new root (or an extra trusted root under roots/) reaches new connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from connect import builtin_issue
from connect.leaf import Leaf
from gateway import metrics
from gateway.config import BuiltinCAConfig, ConfigError

log = logging.getLogger("meshgw.certs")

# Renew between 60% and 73% of the leaf's life: about 2/3, spread so a fleet started together does
# not renew together (Consul's agent cache does the same kind of spread, consul.md §2.2).
RENEW_AT = (0.60, 0.73)
RETRY_DELAY = 5.0
ROOTS_POLL = 2.0


def renew_delay(leaf: Leaf, now: float | None = None) -> float:
    """Seconds until renewal: about 2/3 of the validity left when the leaf arrived.

    Measured from now, not from NotBefore: CAs backdate NotBefore (a minute, for clock skew), which
    would make a short-lived leaf look two-thirds spent the moment it is issued.
    """
    now = time.time() if now is None else now
    return max(0.0, (leaf.not_after - now) * random.uniform(*RENEW_AT))


def missing_ca_problem(cfg: BuiltinCAConfig) -> str | None:
    """A CA directory without a CA is refused unless the config asks for creation (``create: true``)."""
    if cfg.create or (Path(cfg.dir) / "ca.crt").exists():
        return None
    return (
        f"certificates.builtin.dir: {cfg.dir}: no CA there (expected ca.crt and ca.key: run "
        f"`meshgw ca init --dir {cfg.dir}`, or set certificates.builtin.create: true)"
    )


class BuiltinCertProvider:
    def __init__(
        self,
        cfg: BuiltinCAConfig,
        service: str,
        datacenter: str,
        on_tls: Callable[[str, Leaf, bytes], None],
    ):
        self.cfg = cfg
        self.service = service
        self.datacenter = datacenter
        self.on_tls = on_tls
        self.trust_domain: str | None = None
        self._issue_seconds = 0.0  # how long the last issuance took (a child process: see _next_renewal)
        self.leaf: Leaf | None = None
        self._roots_sig: tuple[tuple[str, int, int], ...] = ()
        self._task: asyncio.Task[None] | None = None

    def _dir_signature(self) -> tuple[tuple[str, int, int], ...]:
        sig = []
        d = self.cfg.dir
        for p in [d / "ca.crt", d / "ca.key", *sorted((d / "roots").glob("*.crt"))]:
            try:
                st = os.stat(p)
            except OSError:
                continue
            sig.append((p.name, st.st_ino, st.st_mtime_ns))
        return tuple(sig)

    def _request(self, create: bool) -> dict[str, object]:
        return {
            "op": "issue",
            "dir": str(self.cfg.dir),
            "trust_domain": self.cfg.trust_domain,
            "create": create,
            "service": self.service,
            "datacenter": self.datacenter,
            "ttl": self.cfg.leaf_ttl,
        }

    async def _issue(self, create: bool = False) -> None:
        """A new leaf from the CA as it is on disk now (IssueError with one line when it cannot be)."""
        started = time.monotonic()
        answer = await builtin_issue.run(self._request(create))
        self._issue_seconds = time.monotonic() - started
        leaf = builtin_issue.leaf_of(answer)
        self.trust_domain = str(answer["trust_domain"])
        self.leaf = leaf
        self.on_tls(self.trust_domain, leaf, str(answer["roots_pem"]).encode())
        metrics.CERT_ROTATIONS.inc()
        log.info(
            "leaf certificate %s serial %s valid until %s",
            leaf.spiffe_id,
            leaf.serial,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(leaf.not_after)),
        )

    async def start(self) -> None:
        """First leaf now (a problem here is the operator's to fix: ConfigError), then watch."""
        missing = missing_ca_problem(self.cfg)
        if missing:
            raise ConfigError([missing])
        try:
            await self._issue(create=self.cfg.create)
        except builtin_issue.IssueError as e:
            raise ConfigError([str(e)]) from None
        self._roots_sig = self._dir_signature()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="builtin-certs")

    def _next_renewal(self) -> float:
        """About 2/3 into the leaf's life, less twice what issuing took: the child process needs a moment, and
        under load more, so that a short-lived leaf is replaced before it expires (a 3 s leaf in the tests)."""
        assert self.leaf is not None
        return time.monotonic() + max(0.0, renew_delay(self.leaf) - 2 * self._issue_seconds)

    async def _run(self) -> None:
        next_renew = self._next_renewal()
        while True:
            await asyncio.sleep(min(ROOTS_POLL, max(0.0, next_renew - time.monotonic())))
            sig = self._dir_signature()
            roots_changed = sig != self._roots_sig
            if not roots_changed and time.monotonic() < next_renew:
                continue
            try:
                if roots_changed:
                    self._roots_sig = sig
                    log.info("CA in %s changed: issuing a new leaf from it", self.cfg.dir)
                await self._issue()
                next_renew = self._next_renewal()
            except builtin_issue.IssueError as e:
                metrics.CERT_FAILURES.labels("builtin").inc()
                log.error(
                    "cannot issue a leaf certificate: %s (keeping the current one; retrying in %.0fs)", e, RETRY_DELAY
                )
                next_renew = time.monotonic() + RETRY_DELAY

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
