"""Logging: readable lines on a terminal, one JSON object per line otherwise.

uvicorn's loggers go through the same handler so a deployment gets one format.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


_SECRET_QUERY = re.compile(r"((?:^|[?&\s])(?:token|access_token)=)[^&\s\"']+")


class RedactSecrets(logging.Filter):
    """Mask `token=…` in query strings: uvicorn logs each WebSocket's path with its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = _SECRET_QUERY.sub(r"\1***", message)
            record.args = ()
        return True


_REDACTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def install_redaction() -> None:
    """Attach RedactSecrets to the loggers that print request lines (idempotent)."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Install one handler on the root logger and route uvicorn's loggers through it."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    install_redaction()
    numeric = logging.getLevelName(level.upper()) if level != "trace" else 5
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    # Neither formatter prints where a call came from, or its thread or process: skip the
    # stack walk and lookups every record would make (the logging docs' "Optimization"; a
    # connect storm logs two lines per connection).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # uvicorn logs every request and WebSocket accept; our own connection lines say more, so
    # keep uvicorn's at warning unless debugging.
    if root.level > logging.DEBUG:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
