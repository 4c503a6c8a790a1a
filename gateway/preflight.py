"""Checks of the files a config points at, shared by ``meshgw validate`` and start-up."""

from __future__ import annotations

from pathlib import Path

from connect import builtin_issue
from connect.builtin_certs import missing_ca_problem
from connect.local import SourceError, read_catalog, read_intentions
from gateway import _core
from gateway.config import Config, ConfigError


def check_files(cfg: Config, ca_in_child: bool = True) -> None:
    """``ca_in_child``: the built-in CA is loaded by a short-lived process (connect/builtin_issue.py), so a
    running sidecar never loads the X.509 library; ``meshgw validate`` loads it itself."""
    problems: list[str] = []
    local = cfg.control_plane.local
    if cfg.control_plane.type == "local":
        if local.catalog is not None:
            try:
                read_catalog(local.catalog, cfg.datacenter)
            except SourceError as e:
                problems.append(f"{cfg.path}: control_plane.local.catalog: {e}")
        if local.intentions is not None:
            try:
                read_intentions(local.intentions)
            except SourceError as e:
                problems.append(f"{cfg.path}: control_plane.local.intentions: {e}")
    b = cfg.certificates.builtin
    if cfg.certificates.type == "builtin" and b is not None:
        missing = missing_ca_problem(b)
        if missing:
            problems.append(f"{cfg.path}: {missing}")
    if cfg.certificates.type == "builtin" and b is not None and (b.dir / "ca.crt").exists():
        req = {"op": "check", "dir": str(b.dir), "trust_domain": b.trust_domain}
        if ca_in_child:
            try:
                builtin_issue.run_sync(req)
            except builtin_issue.IssueError as e:
                problems.append(f"{cfg.path}: {e}")
        elif "problem" in (answer := builtin_issue.handle(req)):
            problems.append(f"{cfg.path}: {answer['problem']}")
    for n, ls in enumerate(cfg.linked_services):
        if ls.ca_file is not None:
            # The core's own TLS code judges them: what it would refuse at run time is refused here.
            try:
                why = _core.check_origination(
                    ls.ca_file.read_text(),
                    ls.cert_file.read_text() if ls.cert_file else None,
                    ls.key_file.read_text() if ls.key_file else None,
                )
            except (OSError, UnicodeDecodeError) as e:
                why = str(e)
            if why:
                problems.append(f"{cfg.path}: services[{n}]: cannot load the TLS files for {ls.name}: {why}")
    problems.extend(_named_files(cfg))
    if problems:
        raise ConfigError(problems)


def _named_files(cfg: Config) -> list[str]:
    """Every token, CA, certificate and key file the config names must be there and readable now, so that
    `validate` answers for them rather than the first request that needs one."""
    files: list[tuple[str, Path | None]] = []
    dirs: list[tuple[str, Path | None]] = []
    c = cfg.control_plane.consul
    if cfg.control_plane.type == "consul" and c is not None:
        k = "control_plane.consul"
        files += [
            (f"{k}.token_file", c.token_file),
            (f"{k}.ca_file", c.ca_file),
            (f"{k}.cert_file", c.cert_file),
            (f"{k}.key_file", c.key_file),
        ]
        dirs.append((f"{k}.ca_path", c.ca_path))
    v = cfg.certificates.vault
    if cfg.certificates.type == "vault" and v is not None:
        k = "certificates.vault"
        files += [(f"{k}.ca_file", v.ca_file), (f"{k}.cert_file", v.cert_file), (f"{k}.key_file", v.key_file)]
        dirs.append((f"{k}.ca_path", v.ca_path))
        a = v.auth
        if a.method == "token":
            files.append((f"{k}.auth.token_file", a.token_file))
        if a.method == "approle":
            files += [(f"{k}.auth.role_id_file", a.role_id_file), (f"{k}.auth.secret_id_file", a.secret_id_file)]
        if a.method == "jwt":
            files.append((f"{k}.auth.jwt_file", a.jwt_file))
    for n, ls in enumerate(cfg.linked_services):
        files += [
            (f"services[{n}].ca_file", ls.ca_file),
            (f"services[{n}].cert_file", ls.cert_file),
            (f"services[{n}].key_file", ls.key_file),
        ]
    for t in cfg.templates:
        files.append(("templates: source", t.source))  # list or files: form, the path names it
    out = []
    for key, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            out.append(f"{cfg.path}: {key}: {path}: {e.strerror or e} (expected a readable file)")
    for key, path in dirs:
        if path is not None and not path.is_dir():
            out.append(f"{cfg.path}: {key}: {path}: not a directory (expected a directory of CA certificates)")
    return out
