"""Command line entry: install the stop-signal recorder, parse settings, log, run, exit code."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import sys
from typing import NoReturn

from shovel import signals

# Must match runner.ExitCode.USAGE (kept here so that a bad flag needs no heavy import).
EXIT_USAGE = 2
# Every log line: when, how grave, which logger, what.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m shovel` and the `shovel` script; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        # The demonstration: no service runs in this process, so Ctrl-C simply ends it.
        signals.restore_defaults()
        from shovel.demo.cli import main as demo  # noqa: PLC0415

        return demo(args[1:])
    signals.install_early()
    # Imported after the handlers are in place: these imports take a noticeable moment, and a
    # SIGTERM during them must still mean a clean stop.
    from shovel.settings import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(args)
    except ConfigError as e:
        sys.stderr.write(f"python -m shovel: error: {e}\n")
        signals.block_for_exit()
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    from shovel.runner import run_service  # noqa: PLC0415

    # What the imports made lives as long as the process: keep the garbage collector from
    # scanning it again in every full collection while records flow.
    gc.freeze()
    code = asyncio.run(run_service(settings))
    signals.block_for_exit()
    return code


def run() -> NoReturn:
    """`main`, then a quick exit: once the exit code is decided, everything read is durable
    (or counted as undelivered) and the stop report is on disk, so the exit hooks run (they
    flush the log) and the process ends without the interpreter's teardown of every imported
    module, which takes tens of milliseconds and keeps nothing."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing more can be said.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
