"""Command line entry: install the stop-signal recorder, parse settings, log, run, exit code.

Importing this module catches the stop signals before anything else (the `shovel` script
imports it first; `python -m shovel` through __main__.py).
"""

from shovel import _early

_early.install()

# Every other import comes after the handlers: see _early.py.
import asyncio
import atexit
import contextlib
import gc
import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from shovel import logs
from shovel.exitcodes import ExitCode
from shovel.service import signals

if TYPE_CHECKING:
    from shovel.storage import OpenStorage

STANDARD_STREAMS = (0, 1, 2)


def _open_standard_streams() -> set[int]:
    """Gives each closed standard descriptor (0, 1, 2) /dev/null; returns which were closed.

    A process started with one closed (`<&-`, `2>&-`) would otherwise hand that number to the
    next file it opens: the event loop's own socket read as stdin, or log lines written into
    a segment or the checkpoint."""
    closed = set()
    for fd in STANDARD_STREAMS:
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            # The lowest free number: this very one.
            os.open(os.devnull, os.O_RDWR if fd == 0 else os.O_WRONLY)
    if 1 in closed or sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (lives as long as the process)
    if 2 in closed or sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    return closed


def prog_name(argv0: str) -> str:
    """How the user started shovel, for --help and messages: the script's name, or
    `python -m shovel`."""
    name = os.path.basename(argv0)
    return "python -m shovel" if name in ("__main__.py", "-m", "") else name


def main(argv: list[str] | None = None, open_storage: "OpenStorage | None" = None) -> int:
    """Entry point of `python -m shovel` and the `shovel` script; returns the exit code.
    `open_storage` opens another storage than shovel's native client (the classic benchmark's
    Python one)."""
    args = sys.argv[1:] if argv is None else argv
    closed = _open_standard_streams()
    if args[:1] == ["demo"]:
        # The demonstration: no service runs in this process, so Ctrl-C simply ends it.
        signals.restore_defaults()
        from shovel.demo.cli import main as demo  # noqa: PLC0415

        return demo(args[1:])
    signals.install_early()
    # A usage error is logged as every other line is, in the format asked for.
    logs.configure(logging.INFO, logs.format_asked(args))
    # Imported after the handlers are in place: these imports take a noticeable moment, and a
    # SIGTERM during them must still mean a clean stop.
    from shovel.settings import ConfigError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(args, prog_name(sys.argv[0]))
        if 0 in closed and settings.source_spec.reads_stdin:
            raise ConfigError(
                f"{settings.given_as('source')} {settings.source!r}: standard input is closed "
                "(shovel was started with <&-): there is nothing to read; give it a pipe, a "
                "file, or another --source"
            )
    except ConfigError as e:
        logging.getLogger("shovel").error("%s", e)
        signals.block_for_exit()
        return ExitCode.USAGE
    logs.configure(settings.log_level, settings.log_format)
    from shovel.service.runner import run_service  # noqa: PLC0415

    # What the imports made lives as long as the process: keep the garbage collector from
    # scanning it again in every full collection while records flow.
    gc.freeze()
    code = asyncio.run(
        run_service(settings)
        if open_storage is None
        else run_service(settings, open_storage=open_storage)
    )
    signals.block_for_exit()
    return code


def run(open_storage: "OpenStorage | None" = None) -> NoReturn:
    """`main`, then a quick exit: once the exit code is decided, everything read is durable
    (or counted as undelivered) and the stop report is on disk, so the exit hooks run (they
    flush the log) and the process ends without the interpreter's teardown of every imported
    module, which takes tens of milliseconds and keeps nothing."""
    code = main(open_storage=open_storage)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing more can be said.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
