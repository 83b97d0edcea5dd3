"""`--follow` under careless and hostile use: another path is never taken for the followed
one; links are followed to where the file and its rotations live; every rotation made while
stopped or between two looks is read, in order, and what cannot be read is a WARNING and a
count; the late end of a line stored whole is set apart, never a crash loop; pseudo-files are
refused; an idle follow costs no CPU. Every test runs the real `python -m shovel`."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shovel.storage.rejects import rejected_path
from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    free_port,
    http_get,
    metric,
    run_shovel,
    stored_bytes,
    wait_until,
)
from tests.helpers.follow import FOLLOW, append, follow_until, lines, start, stop, wait_stored

# --- 1. another path is not the followed file ------------------------------------------------


def _refused_naming(code: int, text: str, stored: Path, now: Path) -> None:
    assert code == 1, text
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text
    assert str(stored) in errors[0], errors[0]
    assert str(now) in errors[0], errors[0]
    assert "new --output-dir" in errors[0], errors[0]
    assert_clean_stderr(text)


@pytest.mark.parametrize("case", ["other directory, same content", "beside it", "a link to it"])
def test_following_another_path_is_refused_whatever_its_content(tmp_path: Path, case: str) -> None:
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    a.mkdir()
    b.mkdir()
    app = a / "app.log"
    app.write_bytes(lines("app", 0, 100))
    follow_until(app, out, tmp_path / "1.log", lines("app", 0, 100))
    append(app, lines("app", 100, 120))
    if case == "other directory, same content":
        other = b / "other.log"
        shutil.copyfile(app, other)
    elif case == "beside it":
        other = a / "other.log"
        other.write_bytes(lines("other", 0, 50))
    else:
        other = a / "link.log"
        other.symlink_to(app)
    code, text = run_shovel(
        ["--source", other, "--output-dir", out, *FOLLOW, "--metrics-port", "0"],
        tmp_path / "2.log",
    )
    _refused_naming(code, text, app, other)
    assert stored_bytes(out) == lines("app", 0, 100)
    # The path it stores still goes on.
    follow_until(app, out, tmp_path / "3.log", lines("app", 0, 120))


# --- 2. links: the file and its rotations live where the links lead -------------------------


def _chain(tmp_path: Path) -> tuple[Path, Path]:
    """containers/x.log -> links/y.log -> pods/0.log, as kubelet lays logs out (one more hop)."""
    containers, links, pods = (tmp_path / d for d in ("containers", "links", "pods"))
    for d in (containers, links, pods):
        d.mkdir()
    (links / "y.log").symlink_to(pods / "0.log")
    (containers / "x.log").symlink_to(links / "y.log")
    return containers / "x.log", pods / "0.log"


def test_a_chain_of_links_rotated_while_stopped_loses_nothing(tmp_path: Path) -> None:
    name, real = _chain(tmp_path)
    out = tmp_path / "out"
    real.write_bytes(lines("l", 0, 100))
    follow_until(name, out, tmp_path / "1.log", lines("l", 0, 100))
    append(real, lines("l", 100, 150))
    real.rename(real.with_name("0.log.20261202"))
    real.write_bytes(lines("l", 150, 200))
    text = follow_until(name, out, tmp_path / "2.log", lines("l", 0, 200))
    assert f"reading the rest of {real.with_name('0.log.20261202')}" in text, text


def test_a_chain_of_links_rotated_twice_while_running_loses_nothing(tmp_path: Path) -> None:
    name, real = _chain(tmp_path)
    out = tmp_path / "out"
    real.write_bytes(lines("l", 0, 100))
    s = start(name, out, tmp_path / "1.log", "--metrics-port", "0")
    wait_stored(s, out, lines("l", 0, 100))
    # Two rotations in less than a look's time: the middle file is never the live one.
    append(real, lines("l", 100, 150))
    real.rename(real.with_name("0.log.20261202-1"))
    real.write_bytes(lines("l", 150, 200))
    real.rename(real.with_name("0.log.20261202-2"))
    real.write_bytes(lines("l", 200, 250))
    wait_stored(s, out, lines("l", 0, 250))
    stop(s)


@pytest.mark.parametrize("when", ["stopped", "running"])
def test_a_link_pointed_at_a_new_file_finishes_the_old_one_first(tmp_path: Path, when: str) -> None:
    # A restarted container: kubelet points the link at a new file; the old one stays.
    name, real = _chain(tmp_path)
    out, new = tmp_path / "out", real.with_name("1.log")
    real.write_bytes(lines("l", 0, 100))
    s = start(name, out, tmp_path / "1.log", "--metrics-port", "0")
    wait_stored(s, out, lines("l", 0, 100))
    if when == "stopped":
        stop(s)
    append(real, lines("l", 100, 150))
    new.write_bytes(lines("l", 150, 200))
    tmp_link = tmp_path / "links" / "y.log.tmp"
    tmp_link.symlink_to(new)
    tmp_link.replace(tmp_path / "links" / "y.log")
    if when == "stopped":
        s = start(name, out, tmp_path / "2.log", "--metrics-port", "0")
    wait_stored(s, out, lines("l", 0, 200))
    stop(s)


# --- 3. every rotation is read, in order ------------------------------------------------------

Rotate = Callable[[Path, int], None]


def _numbered(src: Path, _n: int) -> None:
    # logrotate without dateext: app.log.1 -> app.log.2 -> ..., then app.log -> app.log.1.
    olds = sorted(
        (p for p in src.parent.iterdir() if p.name.startswith(src.name + ".")),
        key=lambda p: int(p.name.rsplit(".", 1)[1]),
        reverse=True,
    )
    for p in olds:
        p.rename(src.with_name(f"{src.name}.{int(p.name.rsplit('.', 1)[1]) + 1}"))
    src.rename(src.with_name(src.name + ".1"))


def _dateext(src: Path, n: int) -> None:
    src.rename(src.with_name(f"{src.name}-2026120{n}"))


def _dotdate(src: Path, n: int) -> None:
    src.rename(src.with_name(f"{src.name}.2026120{n}"))


def _stem(src: Path, n: int) -> None:
    src.rename(src.with_name(f"app-2026-12-0{n}.log"))


ROTATIONS = {"numbered": _numbered, "dateext": _dateext, "dotdate": _dotdate, "stem": _stem}


@pytest.mark.parametrize("scheme", list(ROTATIONS))
def test_rotations_while_stopped_are_all_read_in_order(tmp_path: Path, scheme: str) -> None:
    rotate = ROTATIONS[scheme]
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("l", 0, 100))
    follow_until(src, out, tmp_path / "1.log", lines("l", 0, 100))
    append(src, lines("l", 100, 150))
    for n, first in enumerate((150, 200, 250), start=1):
        rotate(src, n)
        src.write_bytes(lines("l", first, first + 50))
    # A file beside it that is no rotation of it is never read.
    (tmp_path / "app-error.log").write_bytes(lines("err", 0, 10))
    text = follow_until(src, out, tmp_path / "2.log", lines("l", 0, 300))
    assert "rotated while shovel was stopped" in text, text


@pytest.mark.parametrize("scheme", ["numbered", "dateext"])
def test_rotations_between_two_looks_are_all_read_in_order(tmp_path: Path, scheme: str) -> None:
    rotate = ROTATIONS[scheme]
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("l", 0, 100))
    s = start(src, out, tmp_path / "1.log", "--metrics-port", "0")
    wait_stored(s, out, lines("l", 0, 100))
    append(src, lines("l", 100, 150))
    for n, first in enumerate((150, 200, 250), start=1):
        rotate(src, n)
        src.write_bytes(lines("l", first, first + 50))
    wait_stored(s, out, lines("l", 0, 300))
    assert "was rotated more than once" in stop(s)


def test_a_compressed_rotation_and_a_vanished_file_are_warnings_and_counted(
    tmp_path: Path,
) -> None:
    src, out, port = tmp_path / "app.log", tmp_path / "out", free_port()
    src.write_bytes(lines("l", 0, 100))
    follow_until(src, out, tmp_path / "1.log", lines("l", 0, 100))
    append(src, lines("l", 100, 150))
    # logrotate with compress + delaycompress, twice while shovel is stopped: the file shovel
    # read last ends up compressed (its last 50 lines cannot be read), the next one plain.
    src.rename(tmp_path / "app.log.1")
    src.write_bytes(lines("l", 150, 200))
    first = tmp_path / "app.log.1"
    with gzip.open(tmp_path / "app.log.2.gz", "wb") as z:
        z.write(first.read_bytes())
    st = first.stat()
    os.utime(tmp_path / "app.log.2.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    first.unlink()
    src.rename(tmp_path / "app.log.1")
    src.write_bytes(lines("l", 200, 250))
    s = start(src, out, tmp_path / "2.log", "--metrics-port", str(port))
    expected = lines("l", 0, 100) + lines("l", 150, 250)
    wait_stored(s, out, expected)
    _, body = http_get(port, "/metrics")
    assert metric(body, "shovel_source_files_skipped_total") == 2
    text = stop(s)
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert any("is no longer where it was read" in w for w in warnings), text
    assert any(str(tmp_path / "app.log.2.gz") in w and "compressed" in w for w in warnings), text


def test_a_late_write_to_a_rotated_file_neither_hides_nor_repeats_a_file(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("a", 0, 100))
    follow_until(src, out, tmp_path / "1.log", lines("a", 0, 100))
    # While stopped: rotated, the next file written, then a writer that had not reopened yet
    # writes to the rotated one late (its modification time is now the newest), and both move
    # on one number.
    append(src, lines("a", 100, 150))
    _numbered(src, 1)
    src.write_bytes(lines("b", 0, 50))
    append(tmp_path / "app.log.1", lines("a", 150, 160))
    _numbered(src, 2)
    src.write_bytes(lines("c", 0, 50))
    expected = lines("a", 0, 160) + lines("b", 0, 50) + lines("c", 0, 50)
    follow_until(src, out, tmp_path / "2.log", expected)
    # And a restart after one more rotation reads none of them again.
    _numbered(src, 3)
    src.write_bytes(lines("d", 0, 10))
    follow_until(src, out, tmp_path / "3.log", expected + lines("d", 0, 10))


def test_a_numbered_rotation_while_an_earlier_file_is_read_renames_nothing_away(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("a", 0, 10))
    follow_until(src, out, tmp_path / "1.log", lines("a", 0, 10))
    big = lines("b", 0, 200_000)
    for n, data in enumerate((big, lines("c", 0, 10), lines("d", 0, 10)), start=1):
        _numbered(src, n)
        src.write_bytes(data)
    slow = ["--read-chunk-bytes", "4096", "--queue-max-batches", "1", "--fsync-max-bytes", "4096"]
    s = start(src, out, tmp_path / "2.log", "--metrics-port", "0", *slow)
    # While the big file is being read, every planned file moves one number on.
    wait_until(lambda: len(stored_bytes(out)) > len(lines("a", 0, 10)) + 100_000)
    _numbered(src, 4)
    src.write_bytes(lines("e", 0, 10))
    assert len(stored_bytes(out)) < len(lines("a", 0, 10) + big), "the rotation came too late"
    expected = lines("a", 0, 10) + big + b"".join(lines(p, 0, 10) for p in "cde")
    wait_stored(s, out, expected)
    stop(s)


def test_a_link_pointed_at_new_files_twice_while_stopped_reads_the_one_between(
    tmp_path: Path,
) -> None:
    # A container restarted twice while shovel was stopped: 0.log, 1.log, then 2.log.
    name, real = _chain(tmp_path)
    out = tmp_path / "out"
    real.write_bytes(lines("l", 0, 100))
    follow_until(name, out, tmp_path / "1.log", lines("l", 0, 100))
    append(real, lines("l", 100, 110))
    link = tmp_path / "links" / "y.log"
    for n, first in ((1, 110), (2, 140)):
        new = real.with_name(f"{n}.log")
        new.write_bytes(lines("l", first, first + 30))
        tmp_link = link.with_name("y.log.tmp")
        tmp_link.symlink_to(new)
        tmp_link.replace(link)
    follow_until(name, out, tmp_path / "2.log", lines("l", 0, 170))


# --- 4. the late end of a line stored whole ---------------------------------------------------


def test_the_late_end_of_a_stored_unfinished_line_is_set_apart_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    head = lines("l", 0, 10) + b"partial"
    src.write_bytes(head)
    s = start(src, out, tmp_path / "1.log", "--metrics-port", "0")
    wait_stored(s, out, lines("l", 0, 10))
    # Rotated with its last line unfinished, and no new file yet: once quiet, the rotated file
    # is finished and that line stored whole, as a record.
    src.rename(tmp_path / "app.log.1")
    wait_stored(s, out, head + b"\n")
    stop(s)
    # Its writer then ends the line in the rotated file, and writes on there.
    append(tmp_path / "app.log.1", b"-the-rest\n" + lines("late", 0, 5))
    src.write_bytes(lines("new", 0, 5))
    expected = head + b"\n" + lines("late", 0, 5) + lines("new", 0, 5)
    for run in (2, 3):  # and the next start is as calm: no crash loop
        s = start(src, out, tmp_path / f"{run}.log", "--metrics-port", "0")
        s.wait_for_log("shovel started")
        wait_stored(s, out, expected)
        text = stop(s)
    assert rejected_path(out, len(head)).read_bytes() == b"-the-rest\n"
    first_restart = (tmp_path / "2.log").read_text()
    assert "continued its last line" in first_restart, first_restart
    assert "continuation" in first_restart, first_restart
    assert "continued its last line" not in text, text


# --- 5. what cannot be followed ---------------------------------------------------------------


def _pseudo_files() -> list[str]:
    found = ["/proc/self/status", "/proc/uptime", "/sys/class/net/lo/mtu", "/dev/null"]
    return [p for p in found if os.path.exists(p)]


@pytest.mark.parametrize("path", _pseudo_files())
def test_pseudo_files_and_devices_are_refused_with_follow(tmp_path: Path, path: str) -> None:
    code, text = run_shovel(
        ["--source", path, "--output-dir", tmp_path / "out", *FOLLOW, "--metrics-port", "0"],
        tmp_path / "1.log",
    )
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1, text
    assert path in text, text
    assert not (tmp_path / "out" / "segments").exists() or stored_bytes(tmp_path / "out") == b""


def test_a_fifo_is_refused_with_follow(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, text = run_shovel(
        ["--source", fifo, "--output-dir", tmp_path / "out", *FOLLOW, "--metrics-port", "0"],
        tmp_path / "1.log",
    )
    assert code == 2, text
    assert "named pipe" in text, text


def test_a_pseudo_file_without_follow_is_read_once_as_a_stream(tmp_path: Path) -> None:
    code, text = run_shovel(
        ["--source", "/proc/self/status", "--output-dir", tmp_path / "out", "--metrics-port", "0"],
        tmp_path / "1.log",
    )
    assert code == 0, text
    stored = stored_bytes(tmp_path / "out")
    assert stored.startswith(b"Name:"), stored[:100]
    assert stored.count(b"\nPid:") == 1, stored


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# What an idle shovel may spend over IDLE_WINDOW_S: polling the file's size and name every
# 200 ms costs well under 1 % of a core; a spin costs most of one.
IDLE_WINDOW_S = 3.0
IDLE_CPU_MAX_S = 0.15


def _idle_cpu(s: Shovel) -> float:
    before = _cpu_s(s.proc.pid)
    # Measuring what nothing happening costs: the window must simply pass.
    time.sleep(IDLE_WINDOW_S)
    return _cpu_s(s.proc.pid) - before


def test_an_idle_follow_uses_no_measurable_cpu(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("l", 0, 10))
    s = Shovel(
        ["--source", src, "--output-dir", out, "--follow", "--metrics-port", "0"],
        tmp_path / "1.log",
    )
    wait_until(lambda: stored_bytes(out) == lines("l", 0, 10), what="the file to be stored")
    spent = _idle_cpu(s)
    stop(s)
    assert spent < IDLE_CPU_MAX_S, f"{spent:.3f}s of CPU in {IDLE_WINDOW_S}s of idle following"


def test_an_idle_fifo_uses_no_measurable_cpu(tmp_path: Path) -> None:
    fifo, out = tmp_path / "fifo", tmp_path / "out"
    os.mkfifo(fifo)
    # A writer that holds the pipe open (read-write, so that its open needs no reader yet)
    # and writes one line, then nothing.
    script = (
        f"import os, time; fd = os.open({str(fifo)!r}, os.O_RDWR); os.write(fd, b'one\\n'); "
        "print('ready', flush=True); time.sleep(60)"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        s = Shovel(
            ["--source", fifo, "--output-dir", out, "--metrics-port", "0"], tmp_path / "1.log"
        )
        wait_until(lambda: stored_bytes(out) == b"one\n", what="the first line to be stored")
        spent = _idle_cpu(s)
        stop(s)
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert spent < IDLE_CPU_MAX_S, f"{spent:.3f}s of CPU in {IDLE_WINDOW_S}s of an idle pipe"
