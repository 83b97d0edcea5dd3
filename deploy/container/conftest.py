"""Prints how long each container check took, and what it measured (`record_property`)."""

from __future__ import annotations

import pytest

_timings: list[tuple[str, float, list[tuple[str, object]]]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collects setup + call + teardown time per test, and the properties it recorded."""
    name = report.nodeid.rsplit("::", 1)[-1]
    if report.when == "setup" or not _timings or _timings[-1][0] != name:
        _timings.append((name, 0.0, []))
    test, took, props = _timings[-1]
    if report.when == "teardown":
        props.extend(report.user_properties)
    _timings[-1] = (test, took + report.duration, props)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per check: its total time and what it measured."""
    if not _timings:
        return
    terminalreporter.section("container checks: time per test")
    for test, took, props in _timings:
        measured = ", ".join(f"{k}={v}" for k, v in props)
        terminalreporter.write_line(
            f"{took:7.1f}s  {test}" + (f"  ({measured})" if measured else "")
        )
    total = sum(took for _, took, _ in _timings)
    terminalreporter.write_line(f"{total:7.1f}s  total")
