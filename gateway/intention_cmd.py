"""``meshgw intention create|delete|get|list|check``, mirroring ``consul intention``.

Against Consul (the agent's HTTP API, with Consul's environment variables or -http-addr/-token) or, with
``-c FILE``, against the local control plane's intentions file. ``check`` evaluates with meshgw's own
evaluator, so it answers for L7 permissions too and names the intention that decided; Consul's
/v1/connect/intentions/check only says Allowed and counts any L7 intention as deny (consul.md §7.3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from connect.intentions import (
    IntentionError,
    ServiceIntentions,
    check,
    flatten,
    parse_entries,
    parse_entry,
)
from connect.local import SourceError, load_structured, read_intentions
from gateway.config import Config, ConfigError, _parse_consul, _Reader, load_config

# `consul intention check` exits 0 allowed, 1 denied, 2 on any error, flag parsing included; the other
# `consul intention` commands exit 1 on any error (consul.md §7.4; C:command/intention/check/check.go).
EXIT_DENIED = 1
EXIT_ERROR = 1
EXIT_CHECK_ERROR = 2
# /<package>.<Service>/<Method>: the package may be empty ("/Service/Method") and has dots (G:doc/PROTOCOL-HTTP2.md).
GRPC_PATH = re.compile(r"/[A-Za-z_][\w.]*/[A-Za-z_]\w*")


class CommandError(Exception):
    """One line for the operator."""


def _split(name: str) -> str:
    return name.split("/")[-1]


# ---------------------------------------------------------------------- stores


class LocalStore:
    """The intentions file of a local control plane; rewritten atomically (the sidecars pick it up)."""

    def __init__(self, cfg: Config):
        if cfg.control_plane.type != "local" or cfg.control_plane.local.intentions is None:
            raise CommandError(
                f"{cfg.path}: control_plane.local.intentions: not set (expected a local intentions file)"
            )
        self.path = cfg.control_plane.local.intentions
        self.default_allow = cfg.control_plane.default_intention_policy == "allow"

    async def get_default(self) -> bool:
        return self.default_allow

    async def entries(self) -> tuple[ServiceIntentions, ...]:
        if not self.path.exists():
            return ()
        try:
            return read_intentions(self.path)
        except SourceError as e:
            raise CommandError(str(e)) from None

    def _write(self, entries: list[ServiceIntentions]) -> None:
        data = [e.to_json() for e in entries]
        for e in data:
            for s in e["Sources"]:
                s.pop("Precedence", None)  # computed on every read; not the operator's to write
        text = (
            json.dumps(data, indent=2) + "\n" if self.path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
        )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    async def get(self, src: str, dst: str) -> dict[str, Any] | None:
        for e in await self.entries():
            if e.name == dst:
                for s in e.sources:
                    if s.name == src:
                        return {"SourceName": src, "DestinationName": dst, **s.to_json()}
        return None

    async def put(self, src: str, dst: str, source_json: dict[str, Any]) -> None:
        entries = list(await self.entries())
        for i, e in enumerate(entries):
            if e.name == dst:
                raw = e.to_json()
                raw["Sources"] = [s for s in raw["Sources"] if s["Name"] != src] + [{"Name": src, **source_json}]
                entries[i] = self._parse(raw)
                break
        else:
            entries.append(
                self._parse({"Kind": "service-intentions", "Name": dst, "Sources": [{"Name": src, **source_json}]})
            )
        self._write(entries)

    async def put_entry(self, entry: ServiceIntentions) -> None:
        entries = [e for e in await self.entries() if e.name != entry.name] + [entry]
        self._write(entries)

    async def delete(self, src: str, dst: str) -> bool:
        entries = list(await self.entries())
        found = False
        out = []
        for e in entries:
            if e.name == dst and any(s.name == src for s in e.sources):
                found = True
                raw = e.to_json()
                raw["Sources"] = [s for s in raw["Sources"] if s["Name"] != src]
                if raw["Sources"]:
                    out.append(self._parse(raw))
                continue
            out.append(e)
        if found:
            self._write(out)
        return found

    def _parse(self, raw: dict[str, Any]) -> ServiceIntentions:
        try:
            return parse_entry(raw, str(self.path), from_server=True)
        except IntentionError as e:
            raise CommandError(str(e)) from None


class ConsulStore:
    """Consul's intention endpoints (consul.md §7.4), as `consul intention` calls them."""

    def __init__(self, api: Any, default_allow: bool | None):
        self.api = api
        self.default_allow = default_allow

    async def get_default(self) -> bool:
        if self.default_allow is None:
            from connect.consul import fetch_default_allow
            from connect.watch import WatchError

            try:
                self.default_allow = bool(await fetch_default_allow(self.api))
            except WatchError:
                # A token without agent:read cannot ask; deny, as meshgw's sidecars do until they know.
                self.default_allow = False
        return self.default_allow

    async def _call(
        self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None, allow_404: bool = False
    ) -> Any:
        from connect.watch import WatchError

        try:
            return (await self.api.request(method, path, params, body, allow_404=allow_404))[1]
        except WatchError as e:
            raise CommandError(str(e)) from None

    async def entries(self) -> tuple[ServiceIntentions, ...]:
        data = await self._call("GET", "/v1/config/service-intentions")
        try:
            return parse_entries(data or [], "consul", from_server=True)
        except IntentionError as e:
            raise CommandError(str(e)) from None

    async def get(self, src: str, dst: str) -> dict[str, Any] | None:
        return await self._call(
            "GET", "/v1/connect/intentions/exact", {"source": src, "destination": dst}, allow_404=True
        )

    async def put(self, src: str, dst: str, source_json: dict[str, Any]) -> None:
        body = {"SourceType": "consul", **{k: v for k, v in source_json.items() if k != "Name"}}
        await self._call("PUT", "/v1/connect/intentions/exact", {"source": src, "destination": dst}, body)

    async def put_entry(self, entry: ServiceIntentions) -> None:
        await self._call("PUT", "/v1/config", body=entry.to_json())

    async def delete(self, src: str, dst: str) -> bool:
        if await self.get(src, dst) is None:
            return False
        await self._call("DELETE", "/v1/connect/intentions/exact", {"source": src, "destination": dst})
        return True


# ---------------------------------------------------------------------- commands


def _describe(ix_source: Any, dst: str) -> str:
    action = ix_source.action or f"L7, {len(ix_source.permissions)} permission(s)"
    return f"{ix_source.label} => {dst} ({action}, precedence {ix_source.precedence})"


async def _run(args: argparse.Namespace, store: Any) -> int:
    cmd = args.intention_cmd
    if cmd == "list":
        for ix in flatten(await store.entries()):
            print(_describe(ix.source, ix.destination))
        return 0
    if cmd == "check":
        # A list, not a dict: a repeated --header is matched joined with "," as on the wire (l7-security.md §2.3).
        headers: list[tuple[str, str]] = []
        for h in args.header or []:
            name, sep, value = h.partition("=")
            if not sep or not name:
                raise CommandError(f"--header {h!r}: expected NAME=VALUE")
            headers.append((name, value))
        method = args.method
        if args.grpc:
            # A gRPC call is a POST to /<package>.<Service>/<Method> with content-type application/grpc
            # (http2-grpc.md §3; G:doc/PROTOCOL-HTTP2.md): Consul's L7 intentions match its path like any other.
            if args.path is None or not GRPC_PATH.fullmatch(args.path):
                raise CommandError(f"--path {args.path!r}: a gRPC call's path is /package.Service/Method")
            method = method or "POST"
            if not any(n.lower() == "content-type" for n, _ in headers):
                headers.append(("content-type", "application/grpc"))
        l7 = method is not None or args.path is not None or bool(headers)
        try:
            d = check(
                await store.entries(),
                args.src,
                args.dst,
                await store.get_default() if args.default is None else args.default == "allow",
                method=method if l7 else None,
                path=args.path if l7 else None,
                headers=headers if l7 else None,
            )
        except IntentionError as e:
            raise CommandError(str(e)) from None
        print(f"{'Allowed' if d.allowed else 'Denied'}: {args.src} => {args.dst}: {d.reason}")
        return 0 if d.allowed else EXIT_DENIED
    src, dst = args.src, args.dst
    if cmd == "get":
        found = await store.get(src, dst)
        if found is None:
            raise CommandError(f"no intention {src} => {dst}")
        print(json.dumps(found, indent=2))
        return 0
    if cmd == "delete":
        if not await store.delete(src, dst):
            raise CommandError(f"no intention {src} => {dst}")
        print(f"Intention deleted: {src} => {dst}")
        return 0
    # create
    if args.file:
        try:
            data = load_structured(Path(args.file), Path(args.file).read_bytes())
        except (OSError, SourceError) as e:
            raise CommandError(f"{args.file}: {getattr(e, 'strerror', None) or e}") from None
        if isinstance(data, dict) and str(data.get("Kind", "")).lower() == "service-intentions":
            try:
                await store.put_entry(parse_entry(data, args.file))
            except IntentionError as e:
                raise CommandError(str(e)) from None
            print(f"Config entry written: service-intentions/{data.get('Name')}")
            return 0
        if not isinstance(data, dict):
            raise CommandError(
                f"{args.file}: expected an intention (Action or Permissions) or a service-intentions entry"
            )
        source_json = {k: v for k, v in data.items() if k in ("Action", "Permissions", "Description")}
    else:
        source_json = {"Action": "deny" if args.deny else "allow"}
    if src is None or dst is None:
        raise CommandError("create needs SRC and DST (or -file with a service-intentions entry)")
    if not args.replace and await store.get(src, dst) is not None:
        raise CommandError(f"Intention with source {src!r} and destination {dst!r} already exists (use -replace)")
    try:
        parse_entry(
            {"Kind": "service-intentions", "Name": _split(dst), "Sources": [{"Name": _split(src), **source_json}]},
            "intention",
        )
    except IntentionError as e:
        raise CommandError(str(e).replace("intention: (top level).", "")) from None
    await store.put(src, dst, source_json)
    print(f"Created: {src} => {dst} ({source_json.get('Action') or 'L7 permissions'})")
    return 0


async def _with_store(args: argparse.Namespace) -> int:
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise CommandError(e.problems[0]) from None
        if cfg.control_plane.type == "local":
            return await _run(args, LocalStore(cfg))
        consul_cfg = cfg.control_plane.consul
        policy = cfg.control_plane.default_intention_policy
        default_allow: bool | None = None if policy is None else policy == "allow"
    else:
        # Consul's HTTP flags (C:command/flags/http.go) override its environment variables, as for `consul`.
        raw: dict[str, Any] = {key: getattr(args, dest) for dest, key in _HTTP_FLAGS if getattr(args, dest, None)}
        r = _Reader(Path("<command line>"))
        consul_cfg = _parse_consul(r, raw or None, Path.cwd(), os.environ)
        if r.problems:
            raise CommandError(r.problems[0])
        default_allow = None  # Consul's own: asked from the agent when a check needs it
    from connect.consul import ConsulAPI

    assert consul_cfg is not None
    try:
        api = ConsulAPI(consul_cfg)
        await api.open()
    except ConfigError as e:
        raise CommandError(e.problems[0]) from None
    try:
        return await _run(args, ConsulStore(api, default_allow))
    finally:
        await api.close()


# (argparse dest, control_plane.consul key) of Consul's HTTP API flags.
_HTTP_FLAGS = (
    ("http_addr", "address"),
    ("token", "token"),
    ("token_file", "token_file"),
    ("ca_file", "ca_file"),
    ("ca_path", "ca_path"),
    ("client_cert", "cert_file"),
    ("client_key", "key_file"),
    ("tls_server_name", "tls_server_name"),
    ("namespace", "namespace"),
)


def error_code(args: argparse.Namespace) -> int:
    return EXIT_CHECK_ERROR if getattr(args, "intention_cmd", None) == "check" else EXIT_ERROR


def cmd_intention(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_with_store(args))
    except CommandError as e:
        print(f"meshgw intention: {e}", file=sys.stderr)
        return error_code(args)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit as Consul's command does: 2 for `check`, 1 for the others."""

    usage_exit = EXIT_ERROR

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(self.usage_exit)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("intention", help="create, delete, get, list or check intentions (like consul intention)")
    isub = p.add_subparsers(dest="intention_cmd", required=True, parser_class=_Parser)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("-c", "--config", help="use this meshgw config's control plane (local file or its Consul)")
        q.add_argument("-http-addr", "--http-addr", dest="http_addr", help="Consul address (default CONSUL_HTTP_ADDR)")
        q.add_argument("-token", "--token", dest="token", help="Consul ACL token (default CONSUL_HTTP_TOKEN)")
        q.add_argument("-token-file", "--token-file", dest="token_file", help="file holding the token")
        q.add_argument("-ca-file", "--ca-file", dest="ca_file", help="CA bundle for Consul's TLS (CONSUL_CACERT)")
        q.add_argument("-ca-path", "--ca-path", dest="ca_path", help="directory of CA certificates (CONSUL_CAPATH)")
        q.add_argument(
            "-client-cert", "--client-cert", dest="client_cert", help="client certificate (CONSUL_CLIENT_CERT)"
        )
        q.add_argument("-client-key", "--client-key", dest="client_key", help="client key (CONSUL_CLIENT_KEY)")
        q.add_argument("-tls-server-name", "--tls-server-name", dest="tls_server_name", help="SNI and name to verify")
        q.add_argument("-namespace", "--namespace", dest="namespace", help="Consul namespace (CONSUL_NAMESPACE)")
        q.set_defaults(func=cmd_intention)

    c = isub.add_parser("create", help="create an intention SRC => DST")
    g = c.add_mutually_exclusive_group()
    g.add_argument("-allow", "--allow", action="store_true", help="allow (the default)")
    g.add_argument("-deny", "--deny", action="store_true")
    c.add_argument("-replace", "--replace", action="store_true", help="replace an existing intention")
    c.add_argument("-file", "--file", help="an intention with L7 Permissions, or a service-intentions entry")
    c.add_argument("src", nargs="?")
    c.add_argument("dst", nargs="?")
    common(c)
    for name in ("delete", "get"):
        q = isub.add_parser(name, help=f"{name} the intention SRC => DST")
        q.add_argument("src")
        q.add_argument("dst")
        common(q)
    q = isub.add_parser("list", help="list every intention in evaluation order")
    common(q)
    q = isub.add_parser("check", help="would SRC reach DST? exit 0 allowed, 1 denied, 2 on errors")
    q.usage_exit = EXIT_CHECK_ERROR  # type: ignore[attr-defined]
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("--method", help="L7: the HTTP method")
    q.add_argument("--path", help="L7: the request path")
    q.add_argument(
        "--header", action="append", metavar="NAME=VALUE", help="L7: a request header (repeatable, also one name)"
    )
    q.add_argument(
        "--grpc",
        action="store_true",
        help="L7: a gRPC call (--path /package.Service/Method; POST, content-type application/grpc)",
    )
    q.add_argument(
        "--default",
        choices=("allow", "deny"),
        help="policy when nothing matches (default: the config's, else Consul's agent's)",
    )
    common(q)
