"""``meshgw demo``: the embedded default, with no HashiCorp binary.

A built-in CA, a local control plane (catalog + intentions files), two small HTTP apps (``web`` calls
``api`` through its upstream port), a sidecar for each, and a third caller (``intruder``) that the
intentions deny. Sidecars are real ``meshgw run`` processes; traffic is real mTLS on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from connect.ca import BuiltinCA
from connect.deadline import within


class PortPicker:
    """Free loopback ports for the demo's listeners, each handed out once.

    The sidecars bind their ports seconds after they are picked (a Python process starts first). A port
    from the kernel's ephemeral range (32768-60999 by default, ``net.ipv4.ip_local_port_range``) can be
    taken meanwhile by any outgoing connection on the machine, and the sidecar then exits with "address in
    use"; asking the kernel for port 0 twice can also return the same port. So ports come from a random
    start below that range, in sequence, each checked with a bind.
    """

    LOW, HIGH = 10000, 20000

    def __init__(self) -> None:
        self.next = random.randrange(self.LOW, self.HIGH)

    def __call__(self) -> int:
        for _ in range(self.HIGH - self.LOW):
            port = self.next
            self.next = self.LOW + (port + 1 - self.LOW) % (self.HIGH - self.LOW)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError(f"no free port on 127.0.0.1 between {self.LOW} and {self.HIGH}")


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a sidecar's log, indented, to show with the error that it exited."""
    try:
        text = path.read_text(errors="replace").rstrip("\n")
    except OSError:
        return ""
    return "".join(f"\n   {line}" for line in text.splitlines()[-lines:])


def say(msg: str = "") -> None:
    print(msg, flush=True)


class Demo:
    def __init__(self, workdir: Path):
        self.dir = workdir
        free_port = self.free_port = PortPicker()
        self.ports = {
            k: free_port()
            for k in (
                "api_app",
                "api_in",
                "api_admin",
                "web_app",
                "web_in",
                "web_up",
                "web_admin",
                "intruder_up",
                "intruder_admin",
            )
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.runners: list[web.AppRunner] = []

    # ------------------------------------------------------------------ files

    def write_files(self) -> None:
        p = self.ports
        ca = BuiltinCA.init(self.dir / "ca", exist_ok=True)
        self.trust_domain = ca.trust_domain
        catalog = {
            "services": {
                "api": [{"address": "127.0.0.1", "port": p["api_in"], "datacenter": "dc1", "health": "passing"}],
                "web": [{"address": "127.0.0.1", "port": p["web_in"], "datacenter": "dc1", "health": "passing"}],
            }
        }
        (self.dir / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
        intentions = [
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}],
            }
        ]
        (self.dir / "intentions.yaml").write_text(yaml.safe_dump(intentions, sort_keys=False))
        sidecars: dict[str, dict[str, Any]] = {
            "api": {"service": {"name": "api", "port": p["api_app"]}, "inbound": {"bind": f"127.0.0.1:{p['api_in']}"}},
            "web": {
                "service": {"name": "web", "port": p["web_app"]},
                "inbound": {"bind": f"127.0.0.1:{p['web_in']}"},
                "upstreams": [{"service": "api", "bind": f"127.0.0.1:{p['web_up']}"}],
            },
            "intruder": {
                "service": {"name": "intruder", "port": self.free_port()},
                "upstreams": [{"service": "api", "bind": f"127.0.0.1:{p['intruder_up']}"}],
            },
        }
        for name, body in sidecars.items():
            cfg = {
                "datacenter": "dc1",
                **body,
                "control_plane": {
                    "type": "local",
                    "local": {"catalog": "catalog.yaml", "intentions": "intentions.yaml"},
                },
                "certificates": {"type": "builtin", "builtin": {"dir": "ca", "leaf_ttl": "1h"}},
                "admin": {"bind": f"127.0.0.1:{p[name + '_admin']}"},
                "drain_timeout": "5s",
            }
            (self.dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    # ------------------------------------------------------------------ apps

    async def start_apps(self) -> None:
        async def api(request: web.Request) -> web.Response:
            return web.json_response({"service": "api", "message": "hello from api", "path": request.path})

        up = f"http://127.0.0.1:{self.ports['web_up']}/"

        async def web_index(request: web.Request) -> web.Response:
            async with aiohttp.ClientSession() as s, s.get(up, timeout=aiohttp.ClientTimeout(total=5)) as r:
                body = await r.json()
            return web.json_response({"service": "web", "called": "api", "api_said": body["message"]})

        for handler, port in ((api, self.ports["api_app"]), (web_index, self.ports["web_app"])):
            app = web.Application()
            app.router.add_get("/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

    # ------------------------------------------------------------------ sidecars

    def start_sidecars(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in ("api", "web", "intruder"):
            log = open(self.dir / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.dir / f"{name}.yaml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            for name in ("api", "web", "intruder"):
                url = f"http://127.0.0.1:{self.ports[name + '_admin']}/ready"
                while True:
                    if self.procs[name].poll() is not None:
                        log = self.dir / (name + ".log")
                        raise RuntimeError(f"the {name} sidecar exited; see {log}:{log_tail(log)}")
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with s.get(url) as r:
                            if r.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the {name} sidecar did not become ready; see {self.dir / (name + '.log')}")
                    await asyncio.sleep(0.1)

    async def metric(self, sidecar: str, name: str, labels: dict[str, str]) -> float:
        url = f"http://127.0.0.1:{self.ports[sidecar + '_admin']}/metrics"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            text = await r.text()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    # ------------------------------------------------------------------ the story

    async def traffic(self) -> None:
        p = self.ports
        say("\n== 1. web calls api through its sidecar (allowed by intention web => api)")
        ok = 0
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                async with s.get(f"http://127.0.0.1:{p['web_app']}/") as r:
                    body = await r.json()
                    ok += r.status == 200
            say(f"   10 requests to web, {ok} answered 200; the last one said: {json.dumps(body)}")
        say("\n== 2. intruder calls api through its own sidecar (no intention allows it: '*' => api is deny)")
        refused = 0
        for _ in range(3):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", p["intruder_up"])
                writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
                await writer.drain()
                data = await within(reader.read(1024), 5)
                writer.close()
                refused += not data
            except (ConnectionError, OSError):
                refused += 1
        say(f"   3 attempts, {refused} refused: the api sidecar closed each connection before a byte reached api")
        accepted = await self.metric("api", "meshgw_connections_accepted_total", {"listener": "inbound"})
        denied = await self.metric(
            "api", "meshgw_connections_denied_total", {"listener": "inbound", "reason": "intention"}
        )
        say("\n== 3. what the api sidecar's metrics say")
        say(f'   meshgw_connections_accepted_total{{listener="inbound"}} = {accepted:.0f}')
        say(f'   meshgw_connections_denied_total{{listener="inbound",reason="intention"}} = {denied:.0f}')

    async def run(self, duration: float | None) -> int:
        say(f"meshgw demo in {self.dir}")
        self.write_files()
        say(f"   built-in CA: {self.dir / 'ca' / 'ca.crt'} (trust domain {self.trust_domain})")
        say(f"   local control plane: {self.dir / 'catalog.yaml'}, {self.dir / 'intentions.yaml'}")
        await self.start_apps()
        self.start_sidecars()
        try:
            await self.wait_ready()
            say("   sidecars ready: api, web, intruder (mTLS with SPIFFE identities from the built-in CA)")
            await self.traffic()
            say("\n== admin consoles (open in a browser; also /clusters /certs /metrics /ready /config_dump)")
            for name in ("api", "web", "intruder"):
                say(f"   {name:9s} http://127.0.0.1:{self.ports[name + '_admin']}/")
            say(f"   try: curl http://127.0.0.1:{self.ports['web_app']}/   (web -> api through the mesh)")
            say(f"   edit {self.dir / 'intentions.yaml'} and watch new connections follow it")
            say("\n" + ("running until Ctrl-C" if duration is None else f"running for {duration:g}s more"))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            with contextlib.suppress(TimeoutError):
                await within(stop.wait(), duration)
            return 0
        except RuntimeError as e:
            print(f"meshgw demo: {e}", file=sys.stderr)
            return 1
        finally:
            await self.stop()

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for runner in self.runners:
            await runner.cleanup()
        say("demo stopped")


def run_demo(duration: float | None = None, workdir: Path | None = None) -> int:
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="meshgw-demo-") as d:
            return asyncio.run(Demo(Path(d)).run(duration))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(Demo(workdir).run(duration))
