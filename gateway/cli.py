"""``meshgw`` command line: run, demo, validate, ca.

User mistakes end as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config, parse_duration

EXIT_USAGE = 2


def _die(msg: str) -> int:
    print(f"meshgw: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        from gateway.preflight import check_files

        check_files(cfg, ca_in_child=False)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.config}: ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import run

    return run(Path(args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(duration=args.duration, workdir=Path(args.dir) if args.dir else None)


def cmd_ca_init(args: argparse.Namespace) -> int:
    from connect.ca import BuiltinCA, CAError

    try:
        ca = BuiltinCA.init(Path(args.dir), args.trust_domain)
    except CAError as e:
        return _die(str(e))
    except OSError as e:
        return _die(f"{args.dir}: cannot create CA: {e.strerror or e}")
    print(f"created CA for trust domain {ca.trust_domain}: {ca.dir / 'ca.crt'} (key {ca.dir / 'ca.key'}, mode 0600)")
    return 0


def cmd_ca_issue(args: argparse.Namespace) -> int:
    from connect.ca import BuiltinCA, CAError, write_leaf
    from gateway.config import parse_service_name

    try:
        parse_service_name(args.service)
        ttl = parse_duration(args.ttl)
        if ttl <= 0:
            raise ValueError("--ttl must be positive")
    except ValueError as e:
        return _die(str(e))
    try:
        ca = BuiltinCA.load(Path(args.dir))
        leaf = ca.issue(args.service, args.dc, ttl, namespace=args.namespace)
        crt, key = write_leaf(leaf, Path(args.out))
    except CAError as e:
        return _die(str(e))
    except OSError as e:
        return _die(f"{args.out}: cannot write: {e.strerror or e}")
    print(f"issued {leaf.spiffe_id} serial {leaf.serial}: {crt} {key}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from gateway.app import setup_logging
    from gateway.render import parse_template_arg, run_render

    try:
        cfg = load_config(args.config)
        extra = tuple(parse_template_arg(t, Path.cwd()) for t in args.template or ())
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        return _die(str(e))
    setup_logging(cfg.log_level, cfg.log_json)
    return run_render(cfg, once=args.once, dry_run=args.dry_run, extra=extra)


def build_parser() -> argparse.ArgumentParser:
    from gateway.version import VERSION

    p = argparse.ArgumentParser(prog="meshgw", description="Service-mesh sidecar for Consul, Vault and Nomad")
    p.add_argument("--version", "-version", action="version", version=f"meshgw v{VERSION}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a sidecar from a config file")
    r.add_argument("-c", "--config", required=True)
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a config file; exit 0 if good, 2 with one line per problem")
    v.add_argument("-c", "--config", required=True)
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="run the embedded demo: built-in CA, local control plane, two services")
    d.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    d.add_argument("--dir", default=None, help="working directory for the demo (default: a temporary one)")
    d.set_defaults(func=cmd_demo)

    rn = sub.add_parser("render", help="render the config's templates from live mesh state, without proxying")
    rn.add_argument("-c", "--config", required=True)
    rn.add_argument("--once", action="store_true", help="render every template once, run changed commands, exit")
    rn.add_argument("--dry-run", action="store_true", help="print the output to stdout; write nothing, run nothing")
    rn.add_argument(
        "--template", action="append", metavar="SRC:DEST", help="render this template instead of the config's"
    )
    rn.set_defaults(func=cmd_render)

    from gateway.intention_cmd import add_parser as add_intention_parser

    add_intention_parser(sub)

    ca = sub.add_parser("ca", help="the built-in certificate authority")
    casub = ca.add_subparsers(dest="ca_cmd", required=True)
    ci = casub.add_parser("init", help="create a root CA in a directory")
    ci.add_argument("--dir", required=True)
    ci.add_argument("--trust-domain", default=None, help="default: a new <uuid>.consul")
    ci.set_defaults(func=cmd_ca_init)
    cs = casub.add_parser("issue", help="issue a leaf certificate for a service")
    cs.add_argument("--dir", required=True)
    cs.add_argument("--service", required=True)
    cs.add_argument("--dc", default="dc1")
    cs.add_argument("--namespace", default="default")
    cs.add_argument("--ttl", default="72h")
    cs.add_argument("--out", required=True, help="writes OUT.crt and OUT.key")
    cs.set_defaults(func=cmd_ca_issue)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        msg = f"unrecognized arguments: {' '.join(extra)}"
        if getattr(args, "intention_cmd", None):
            # Consul's exit code for a usage error of that `consul intention` command.
            from gateway.intention_cmd import error_code

            print(f"meshgw intention {args.intention_cmd}: error: {msg}", file=sys.stderr)
            return error_code(args)
        parser.error(msg)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
