"""The last warning and error log lines of the process, for the console's health panel. Bounded; the lines are
the ones the log already carries (which never hold a key or a token, design.md style rule 4)."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

KEEP = 20
MAX_LINE = 500


@dataclass(frozen=True, slots=True)
class ErrorLine:
    at: float
    level: str
    logger: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "level": self.level, "logger": self.logger, "message": self.message}


class RecentErrors(logging.Handler):
    def __init__(self, keep: int = KEEP):
        super().__init__(level=logging.WARNING)
        self.lines: deque[ErrorLine] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):
            msg = str(record.msg)
        line = msg.splitlines()[0] if msg else ""
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        self.lines.append(ErrorLine(record.created or time.time(), record.levelname.lower(), record.name, line))

    def latest(self) -> list[ErrorLine]:
        return list(reversed(self.lines))
