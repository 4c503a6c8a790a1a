"""Process logging: text lines or, with ``log_json: true``, one JSON object per line in hclog's shape
(``@timestamp``, ``@level``, ``@module``, ``@message``), as Consul, Nomad and Vault write with ``-log-json``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# HashiCorp's level names (hclog.LevelFromString) mapped to Python's; trace has no Python level of its own.
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_HCLOG_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        out: dict[str, Any] = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "@level": _HCLOG_NAMES.get(record.levelno, record.levelname.lower()),
            "@module": record.name,
            "@message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            _UTCFormatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
