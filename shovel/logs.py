"""How shovel logs: text lines by default, or one JSON object per line for a log collector;
the same fields either way, with every secret masked."""

import datetime
import json
import logging
import os
import sys
from typing import Literal, get_args

from shovel.prescan import env_spelled, flag_value
from shovel.redact import redact

# Every log line: when, how grave, which logger, what.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The formats --log-format takes; the settings type the option with it.
LogFormat = Literal["text", "json"]
FORMATS: tuple[str, ...] = get_args(LogFormat)


class RedactingFormatter(logging.Formatter):
    """Log lines, tracebacks included, with every secret masked (see redact.py)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (the text line's, in ISO 8601 with milliseconds and
    the zone), level, logger, message, and the traceback as `exception` when there is one;
    secrets masked in each."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # logging's own clock, with the zone, as a collector wants it.
        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        return when.isoformat(timespec="milliseconds")


def configure(level: str | int, log_format: str) -> None:
    """Sends every log line to stderr, at `level` and above, in `log_format` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else RedactingFormatter(LOG_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def format_asked(argv: list[str]) -> str:
    """The log format the flags or the environment ask for, read before the settings are (so
    that an error in them is logged in that format); text when neither names a valid one.
    (A config file's log_format applies once the settings are read.)"""
    asked = flag_value(argv, "--log-format")
    if asked is None:
        # Must match the settings' variable for log_format.
        env = env_spelled("SHOVEL_LOG_FORMAT")
        asked = "text" if env is None else os.environ[env]
    return asked.lower() if asked.lower() in FORMATS else "text"
