"""`--follow`: a growing file is stored as it grows, through rotation by rename and by copy +
truncate, while running and while stopped; an unfinished line waits for its newline; a stop
ends the wait at once and keeps everything read."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import free_port, http_get, metric, stored_bytes
from tests.helpers.follow import append, follow_until, lines, start, stop, wait_stored


def test_appends_are_stored_and_an_unfinished_line_waits_for_its_newline(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("a", 0, 3))
    s = start(src, out, tmp_path / "1.log", "--metrics-port", "0")
    wait_stored(s, out, lines("a", 0, 3))
    append(src, lines("a", 3, 1000) + b"a-unfini")
    wait_stored(s, out, lines("a", 0, 1000))
    stop(s)
    assert stored_bytes(out) == lines("a", 0, 1000), "an unfinished line was stored"

    append(src, b"shed\n" + lines("a", 1000, 1010))
    s = start(src, out, tmp_path / "2.log", "--metrics-port", "0")
    expected = lines("a", 0, 1000) + b"a-unfinished\n" + lines("a", 1000, 1010)
    wait_stored(s, out, expected)
    stop(s)


def test_rename_rotation_while_running_finishes_the_old_file_first(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("old", 0, 500))
    s = start(src, out, tmp_path / "1.log", "--metrics-port", "0")
    wait_stored(s, out, lines("old", 0, 500))
    src.rename(tmp_path / "app.log.1")
    # The writer has not reopened yet: it still appends to the renamed file.
    append(tmp_path / "app.log.1", lines("old", 500, 600) + b"old-no-newline")
    src.write_bytes(lines("new", 0, 300))
    expected = lines("old", 0, 600) + b"old-no-newline\n" + lines("new", 0, 300)
    wait_stored(s, out, expected)
    append(src, lines("new", 300, 400))
    wait_stored(s, out, expected + lines("new", 300, 400))
    text = stop(s)
    assert "rotation: finished" in text, text


def test_copytruncate_while_running_reads_the_rest_from_the_copy(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("old", 0, 200))
    port = free_port()
    s = start(src, out, tmp_path / "1.log", "--metrics-port", str(port))
    wait_stored(s, out, lines("old", 0, 200))
    # A burst shovel may or may not have read when the copy is taken: the copy holds it.
    append(src, lines("old", 200, 5000))
    shutil.copyfile(src, tmp_path / "app.log.1")
    with src.open("r+b") as f:
        f.truncate(0)
    append(src, lines("new", 0, 50))
    expected = lines("old", 0, 5000) + lines("new", 0, 50)
    wait_stored(s, out, expected)
    text = http_get(port, "/metrics")[1]
    assert metric(text, "shovel_source_rotations_total") == 1
    assert metric(text, "shovel_source_lag_bytes") == 0
    assert metric(text, "shovel_source_position_bytes") == len(lines("new", 0, 50))
    assert f'shovel_source_file_info{{path="{src}"}} 1.0' in text
    text = stop(s)
    assert "copytruncate" in text, text


def test_rename_rotation_while_stopped_reads_the_old_tail_then_the_new_file(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("old", 0, 100))
    follow_until(src, out, tmp_path / "1.log", lines("old", 0, 100))
    append(src, lines("old", 100, 150))
    src.rename(tmp_path / "app.log.1")
    src.write_bytes(lines("new", 0, 70))
    text = follow_until(src, out, tmp_path / "2.log", lines("old", 0, 150) + lines("new", 0, 70))
    assert "was rotated while shovel was stopped" in text, text


def test_copytruncate_while_stopped_reads_the_copy_then_the_new_content(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("old", 0, 100))
    follow_until(src, out, tmp_path / "1.log", lines("old", 0, 100))
    append(src, lines("old", 100, 150))
    shutil.copyfile(src, tmp_path / "app.log.1")
    with src.open("r+b") as f:
        f.truncate(0)
    # Longer than before, so only the fingerprint tells that it is new content.
    append(src, lines("new", 0, 400))
    follow_until(src, out, tmp_path / "2.log", lines("old", 0, 150) + lines("new", 0, 400))


def test_a_replaced_file_with_no_trace_of_the_old_one_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("old", 0, 10))
    follow_until(src, out, tmp_path / "1.log", lines("old", 0, 10))
    src.unlink()
    src.write_bytes(lines("new", 0, 10))
    text = follow_until(src, out, tmp_path / "2.log", lines("old", 0, 10) + lines("new", 0, 10))
    assert "WARNING" in text, text
    assert "is no longer where it was read" in text, text
    assert "were not stored" in text, text


def test_a_missing_file_is_waited_for_and_a_stop_ends_the_wait(tmp_path: Path) -> None:
    src, out = tmp_path / "app.log", tmp_path / "out"
    s = start(src, out, tmp_path / "1.log", "--metrics-port", "0")
    s.wait_for_log(f"waiting for {src} to appear")
    src.write_bytes(lines("a", 0, 5))
    wait_stored(s, out, lines("a", 0, 5))
    stop(s)
    # Idle at the end of the file: the stop is not held up by the poll.
    s = start(src, out, tmp_path / "2.log", "--metrics-port", "0", "--follow-poll-ms", "60000")
    s.wait_for_log("shovel started")
    text = stop(s)
    assert stored_bytes(out) == lines("a", 0, 5), text


def test_copytruncate_and_regrowth_within_one_poll_is_not_read_as_a_continuation(
    tmp_path: Path,
) -> None:
    """The file is copied, truncated and written past the old read position while shovel
    waits between two looks: its next read lands in the middle of new content, which must be
    seen as such (the first bytes changed) instead of being stored as the old file's rest."""
    src, out = tmp_path / "app.log", tmp_path / "out"
    src.write_bytes(lines("old", 0, 100))
    s = start(src, out, tmp_path / "1.log", "--metrics-port", "0", "--follow-poll-ms", "1500")
    wait_stored(s, out, lines("old", 0, 100))
    shutil.copyfile(src, tmp_path / "app.log.1")
    # The new content is written over the old from byte 0 in one write, longer than it: the
    # file never shrinks below the read position, so the only sign shovel can see is its
    # first bytes (a truncate then an append could be seen in between, as a shrink).
    with src.open("r+b") as f:
        f.write(lines("new", 0, 2000))
    wait_stored(s, out, lines("old", 0, 100) + lines("new", 0, 2000))
    text = stop(s)
    assert "has other first bytes" in text or "rewritten past the read position" in text, text
