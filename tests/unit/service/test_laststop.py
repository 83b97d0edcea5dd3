"""The stop report in-process: a run's final report replaces only its own running marker."""

from __future__ import annotations

import fcntl
from pathlib import Path

from shovel.service.laststop import (
    REPORT_FILE,
    StopReport,
    read_report,
    running_marker,
    write_final_report,
    write_report,
)


def test_the_final_report_replaces_only_this_runs_marker(tmp_path: Path) -> None:
    (tmp_path / "lock").write_bytes(b"")
    ours = running_marker(100.0)
    write_report(tmp_path, ours)
    final = StopReport(reason="signal", started_at=100.0, exit_code=0, ended_at=200.0)
    # Another run took the directory after this one closed it, and marked it as its own.
    theirs = StopReport(reason="running", started_at=150.0, pid=ours.pid)
    write_report(tmp_path, theirs)
    assert not write_final_report(tmp_path, final, ours)
    assert read_report(tmp_path) == theirs
    write_report(tmp_path, ours)
    # The lock is held (this run's abandoned writes after a timed-out close): still written.
    with (tmp_path / "lock").open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert write_final_report(tmp_path, final, ours)
    assert read_report(tmp_path) == final
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_FILE, "lock"]
