"""How shovel logs: one format for every line, with every secret masked."""

import logging

from shovel.redact import redact

# Every log line: when, how grave, which logger, what.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Log lines, tracebacks included, with every secret masked (see redact.py)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
