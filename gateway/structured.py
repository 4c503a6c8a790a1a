"""Reading the files an operator hands to meshgw besides meshgw.yaml: YAML, JSON or HCL, as
`consul config write` takes JSON and HCL (consul.md §8). One line per problem, naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class SourceError(Exception):
    """A control-plane file that cannot be used, phrased as one line naming the file and key."""


# Keys of Consul's config entries that are lists. A block written once (`Meta { ... }`, `HTTP { ... }`) comes
# out of the HCL parser as a one-element list; Consul's decoder turns such a list into the single object when
# the field is not a list (mapstructure's weak decoding, C:agent/structs/config_entry.go DecodeConfigEntry).
_LIST_KEYS = {
    k.lower().replace("_", "")
    for k in (
        "Sources",
        "Permissions",
        "Header",
        "Methods",
        "Routes",
        "Splits",
        "Listeners",
        "Services",
        "Targets",
        "Destinations",
        "Addresses",
        "Hosts",
        "QueryParam",
        "Consumers",
        "Members",
        "Providers",
        "Rules",
        "Datacenters",
        "ServiceSubset",
        "RetryOnStatusCodes",
        "RetryOn",
        "Remove",
    )
}


def _unblock(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _unblock(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [_unblock(v) for v in value]
        if len(items) == 1 and isinstance(items[0], dict) and key.lower().replace("_", "") not in _LIST_KEYS:
            return items[0]
        return items
    return value


def load_hcl(path: Path, raw: bytes) -> Any:
    import hcl2
    from lark.exceptions import LarkError, UnexpectedInput

    opts = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False)
    try:
        data = hcl2.loads(raw.decode("utf-8"), serialization_options=opts)
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: invalid HCL: not UTF-8 ({e.reason} at byte {e.start})") from None
    except UnexpectedInput as e:
        token = getattr(e, "token", None) or getattr(e, "char", None)
        what = f"unexpected {str(token).strip()[:20]!r}" if token is not None else "syntax error"
        raise SourceError(f"{path}: line {e.line} column {e.column}: invalid HCL: {what}") from None
    except (LarkError, ValueError, TypeError) as e:
        raise SourceError(f"{path}: invalid HCL: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return _unblock(data)


def load_structured(path: Path, raw: bytes) -> Any:
    """YAML, JSON (JSON is YAML, but JSON files get JSON's error messages) or HCL (``.hcl``)."""
    if path.suffix == ".hcl":
        return load_hcl(path, raw)
    try:
        if path.suffix == ".json":
            return json.loads(raw)
        return yaml.safe_load(raw)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise SourceError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', None) or e}") from None
