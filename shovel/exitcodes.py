"""The exit codes of `python -m shovel` (and of the demonstration), as --help documents them."""

from enum import IntEnum


class ExitCode(IntEnum):
    """How a run ended."""

    # Stopped (or the source ended) with every record read durable.
    OK = 0
    # A fatal error: storage failed, the source is not the stored one, an unexpected error.
    FATAL = 1
    # Bad flags or configuration, or a source that cannot be used as given.
    USAGE = 2
    # Records read are not durable (the stop was cut short); a replayable source reads them
    # again next run.
    UNDELIVERED = 3
