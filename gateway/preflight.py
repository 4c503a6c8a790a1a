"""Checks of the files a config points at, shared by ``meshgw validate`` and start-up."""

from __future__ import annotations

import ssl

from connect.ca import BuiltinCA, CAError
from connect.local import SourceError, read_catalog, read_intentions
from gateway.config import Config, ConfigError
from gateway.tls import origination_context


def check_files(cfg: Config) -> None:
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
    if cfg.certificates.type == "builtin" and b is not None and (b.dir / "ca.crt").exists():
        try:
            ca = BuiltinCA.load(b.dir)
            if b.trust_domain and b.trust_domain != ca.trust_domain:
                problems.append(
                    f"{cfg.path}: certificates.builtin.trust_domain: {b.trust_domain!r} does not match the CA in "
                    f"{b.dir} ({ca.trust_domain!r})"
                )
        except CAError as e:
            problems.append(f"{cfg.path}: certificates.builtin.dir: {e}")
    for n, ls in enumerate(cfg.linked_services):
        if ls.ca_file is not None:
            try:
                origination_context(str(ls.ca_file), str(ls.cert_file or "") or None, str(ls.key_file or "") or None)
            except (OSError, ssl.SSLError) as e:
                problems.append(f"{cfg.path}: services[{n}]: cannot load the TLS files for {ls.name}: {e}")
    if problems:
        raise ConfigError(problems)
