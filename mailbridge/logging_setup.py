"""Logging for the daemon: text lines for people, or one JSON object per line for log shippers.

Both go to stderr, which systemd's journal (or any supervisor) collects; configured once by the
composition root from `[log] level` and `format`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from mailbridge.config import LogSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# attributes every LogRecord has; anything else was passed in `extra=` and belongs in the JSON
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601 UTC), level, logger, msg, plus any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class _DropAiosmtpdNoise(logging.Filter):
    # aiosmtpd warns on every successful AUTH that an attribute *it* sets is deprecated
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


def configure(log: LogSettings, stream: TextIO | None = None) -> None:
    """Set up the root logger from `[log]` (level: debug|info|warning|error, format: text|json)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = getattr(logging, log.level.upper(), logging.INFO)
    root.setLevel(level)
    # aiosmtpd logs every command line at INFO; our listener logs one line per message instead
    smtp_log = logging.getLogger("mail.log")
    smtp_log.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    if not any(isinstance(f, _DropAiosmtpdNoise) for f in smtp_log.filters):
        smtp_log.addFilter(_DropAiosmtpdNoise())
    # alembic announces each migration step at INFO: useful once, noise on every start
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    # APScheduler announces every job it adds and runs; our sweeps log what they change instead
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
