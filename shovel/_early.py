"""The first thing `python -m shovel` does: catch the stop signals, before any import that takes
time.

Until a stop signal has a handler, its default action kills the process without a drain. The
imports of the service (asyncio, pydantic, ssl, logging) take 0.1-0.3 s, longer on a loaded
machine, so the handlers must come first: this module imports only the C module `_signal`
(the `signal` module would import enum and functools first), and the recorder it installs only
appends the signal's number to a list. `shovel.service.signals` takes over from there, replaying
what was recorded. What remains unguarded is the interpreter's own start-up before the first
line of shovel runs (about 10 ms here), which no Python program can shorten.

A process can also inherit the stop signals blocked (some supervisors and shells block them for
their children): they are unblocked once the recorder is in place, or no stop would ever arrive.
SIGHUP (a closed terminal) stops shovel like SIGTERM, unless shovel was started with it ignored
(`nohup`): that asks to survive a hangup, and it stays ignored.
"""

import _signal  # type: ignore[import-not-found]  # no stub; the `signal` module is its wrapper

# The signals that ask shovel to stop (the first one) and to hurry (any later one).
STOP_SIGNUMS: tuple[int, ...] = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)

# Stop signals received while no event loop was attached, in arrival order.
pending: list[int] = []
# The stop signals shovel handles: those not ignored when it started (see the docstring).
handled: tuple[int, ...] = ()


def record(signum: int, _frame: object) -> None:
    """The recorder: notes the signal; shovel.service.signals acts on it once a loop runs."""
    pending.append(signum)


def stop_signals() -> tuple[int, ...]:
    """The stop signals shovel handles (decided at the first call, from the dispositions the
    process started with)."""
    global handled
    if not handled:
        handled = tuple(
            s
            for s in STOP_SIGNUMS
            if not (s == _signal.SIGHUP and _signal.getsignal(s) == _signal.SIG_IGN)
        )
    return handled


def install() -> None:
    """Installs the recorder for the stop signals and unblocks them."""
    signums = stop_signals()
    # Blocked while the handlers change: a SIGINT arriving between two of them would otherwise
    # meet the default handler (and KeyboardInterrupt would come out of this very call).
    _signal.pthread_sigmask(_signal.SIG_BLOCK, signums)
    for s in signums:
        _signal.signal(s, record)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, signums)
