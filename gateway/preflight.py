"""Checks of the files a config points at, shared by ``meshgw validate`` and start-up."""

from __future__ import annotations

from connect.ca import BuiltinCA, CAError
from connect.local import SourceError, read_catalog, read_intentions
from gateway import _core
from gateway.config import Config, ConfigError


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
    if problems:
        raise ConfigError(problems)
