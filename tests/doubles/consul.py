"""A Consul API double for tests: the agent+server HTTP API subset meshgw uses, on aiohttp.

Field for field as in ../shared/spec/consul.md, with real blocking queries. Use it from async tests::

    consul = ConsulDouble()
    await consul.start()
    ...  # point meshgw or py-consul at consul.address
    await consul.stop()

or from sync tests with ``with ConsulDoubleThread() as consul:`` (its own loop in a background thread).
``acl_token`` turns ACLs on: every request must then carry that token (``X-Consul-Token``, ``Authorization:
Bearer`` or ``?token=``) or gets 403 ``ACL not found``; anonymous requests may still read the CA roots, as Consul
allows. ``default_allow`` is the intention default (Consul: allow without ACLs, the ACL default policy with them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from doubles.consul_ca import DEFAULT_LEAF_TTL
from doubles.consul_http import ConsulHTTP
from doubles.consul_state import ConsulState

T = TypeVar("T")


class ConsulDouble:
    def __init__(
        self,
        acl_token: str | None = None,
        datacenter: str = "dc1",
        node_name: str = "consul-double",
        leaf_ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        default_allow: bool | None = None,
    ):
        allow = (acl_token is None) if default_allow is None else default_allow
        self.state = ConsulState(datacenter, node_name, leaf_ttl, allow)
        self.http = ConsulHTTP(self.state, acl_token)
        self.host = "127.0.0.1"
        self.port = 0
        self.socket: str | None = None  # also listen on this unix socket (what Nomad gives bridge-mode tasks)
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ facts

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def listen_unix(self, path: str) -> None:
        """Serve the same API on a unix socket too (kept across restart())."""
        self.socket = path
        assert self._runner is not None
        await web.UnixSite(self._runner, path).start()

    @property
    def trust_domain(self) -> str:
        return self.state.trust_domain

    @property
    def datacenter(self) -> str:
        return self.state.datacenter

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str], str | None]]:
        """(method, path, query, token) of every request so far, in arrival order."""
        return self.http.requests

    @property
    def running(self) -> bool:
        return self._runner is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        runner = web.AppRunner(self.http.app(), access_log=None, shutdown_timeout=0.1, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        if self.socket is not None:
            await web.UnixSite(runner, self.socket).start()
        self._runner = runner
        self.host = host
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def kill(self) -> None:
        """Stop answering at once (open connections are dropped); server state stays for restart()."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def restart(self) -> None:
        """Same port, same server state (index, config entries, CA); the agent forgot its local registrations."""
        await self.kill()
        self.state.forget_agent()
        await self.start(self.host, self.port)

    async def stop(self) -> None:
        await self.kill()
        self.state.close()

    async def __aenter__(self) -> ConsulDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test hooks (call on the double's loop)

    def join_wan(self, datacenter: str, url: str) -> None:
        """Federate with another datacenter's double: ?dc=<datacenter> requests go there."""
        self.http.wan[datacenter] = url

    def set_check_status(self, check_or_service_id: str, status: str, output: str = "") -> None:
        """Set one check (by check ID) or all checks of a service (by service ID); wakes health watchers."""
        self.state.set_check_status(check_or_service_id, status, output)

    def rotate_ca(self) -> None:
        """New root cross-signed by the old one; both listed, the new one active; leaves re-issued."""
        self.state.rotate_ca()

    def set_leaf_ttl(self, ttl: dt.timedelta) -> None:
        """Leaves issued from now on live ``ttl`` (renewed at 60 %); no 1h minimum, unlike the CA config API."""
        self.state.set_leaf_ttl(ttl)


class ConsulDoubleThread:
    """ConsulDouble on its own event loop in a daemon thread, for sync tests; every method is thread-safe."""

    def __init__(self, *args: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        self._args, self._kwargs = args, kwargs
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="consul-double", daemon=True)
        self.double: ConsulDouble | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async def wrap() -> T:
            return fn(*args)

        return self._run(wrap())

    @property
    def _d(self) -> ConsulDouble:
        if self.double is None:
            raise RuntimeError("ConsulDoubleThread is not started")
        return self.double

    def start(self) -> ConsulDoubleThread:
        self._thread.start()

        async def make() -> ConsulDouble:
            d = ConsulDouble(*self._args, **self._kwargs)
            await d.start(self._host, self._port)
            return d

        self.double = self._run(make())
        return self

    def stop(self) -> None:
        if self.double is not None:
            self._run(self.double.stop())
            self.double = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> ConsulDoubleThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._d.port

    @property
    def host(self) -> str:
        return self._d.host

    @property
    def address(self) -> str:
        return self._d.address

    @property
    def url(self) -> str:
        return self._d.url

    @property
    def trust_domain(self) -> str:
        return self._d.trust_domain

    @property
    def datacenter(self) -> str:
        return self._d.datacenter

    @property
    def state(self) -> ConsulState:
        """Direct access for assertions; mutate it only through ``call``."""
        return self._d.state

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str], str | None]]:
        return self._call(lambda: list(self._d.requests))

    def listen_unix(self, path: str) -> None:
        self._run(self._d.listen_unix(path))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the double's loop and return its result."""
        return self._call(fn, *args)

    def set_check_status(self, check_or_service_id: str, status: str, output: str = "") -> None:
        self._call(self._d.set_check_status, check_or_service_id, status, output)

    def rotate_ca(self) -> None:
        self._call(self._d.rotate_ca)

    def join_wan(self, other: ConsulDoubleThread) -> None:
        """Federate both ways, as `consul join -wan` does for servers."""
        self._call(self._d.join_wan, other.datacenter, other.url)
        other._call(other._d.join_wan, self.datacenter, self.url)

    def set_leaf_ttl(self, ttl: dt.timedelta) -> None:
        self._call(self._d.set_leaf_ttl, ttl)

    def kill(self) -> None:
        self._run(self._d.kill())

    def restart(self) -> None:
        self._run(self._d.restart())
