"""Careless starts of the real `python -m shovel`: errors name what the user typed (the flag or
the environment variable), an empty output directory, closed standard streams."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ERROR_LINE, Shovel, committed, stored_bytes, wait_until
from tests.helpers.follow import stop

QUIET = ["--metrics-port", "0", "--status-interval-s", "0"]


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, shell_redirect: str = ""
) -> subprocess.CompletedProcess[bytes]:
    """Runs shovel, through `sh -c 'exec ... REDIRECT'` when a standard stream is to be
    closed (`<&-`, `2>&-`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
    command = [sys.executable, "-m", "shovel", *args]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *command]
    return subprocess.run(
        command, capture_output=True, cwd=cwd, env={**base, **(env or {})}, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"SHOVEL_FSYNC_INTERVAL_MS": "abc"}, [], "SHOVEL_FSYNC_INTERVAL_MS 'abc': "),
        ({"shovel_fsync_interval_ms": "abc"}, [], "shovel_fsync_interval_ms 'abc': "),
        (
            {"SHOVEL_FSYNC_INTERVAL_MS": "5"},
            ["--fsync-interval-ms", "abc"],
            "--fsync-interval-ms 'abc': ",
        ),
        ({}, ["--fsync-interval-ms=abc"], "--fsync-interval-ms 'abc': "),
        ({"SHOVEL_METRICS_PORT": "99999"}, [], "SHOVEL_METRICS_PORT '99999': "),
        ({"SHOVEL_SOURCE": "generate:x"}, [], "SHOVEL_SOURCE 'generate:x': "),
        ({"SHOVEL_FSYNC_MAX_BYTES": "16XB"}, [], "SHOVEL_FSYNC_MAX_BYTES '16XB': not a size"),
        ({}, ["--read-chunk-bytes", "1KiB"], "--read-chunk-bytes '1KiB': must be at least 4KiB"),
    ],
)
def test_a_bad_value_is_reported_under_the_name_it_was_given(
    tmp_path: Path, env: dict[str, str], args: list[str], named: str
) -> None:
    r = _run(args, tmp_path, env)
    assert r.returncode == 2, r
    err = r.stderr.decode()
    start = ERROR_LINE.match(err)
    assert start, err
    assert err[start.end() :].startswith(named), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_an_empty_output_directory_is_refused_and_nothing_is_written(
    tmp_path: Path, given: str
) -> None:
    args, env = (["--output-dir", ""], {}) if given == "flag" else ([], {"SHOVEL_OUTPUT_DIR": ""})
    r = _run(["--source", "generate:10", *QUIET, *args], tmp_path, env)
    assert r.returncode == 2, r
    name = "--output-dir" if given == "flag" else "SHOVEL_OUTPUT_DIR"
    assert f"ERROR shovel: {name} '': is empty" in r.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_a_closed_stdin_as_the_source_is_said_to_be_closed(tmp_path: Path) -> None:
    r = _run(["--source", "-", "--output-dir", str(tmp_path / "out"), *QUIET], tmp_path,
             shell_redirect="<&-")  # fmt: skip
    assert r.returncode == 2, r
    assert "ERROR shovel: --source '-': standard input is closed" in r.stderr.decode()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("redirect", ["<&-", "2>&-", ">&- 2>&- <&-"])
def test_closed_standard_streams_never_take_the_place_of_shovel_files(
    tmp_path: Path, redirect: str
) -> None:
    """A closed descriptor 0, 1 or 2 is the number the next open file gets: a segment or the
    checkpoint must never be it (log lines would be written into the store)."""
    source = tmp_path / "in.txt"
    data = b"".join(b"line %d\n" % i for i in range(10_000))
    source.write_bytes(data)
    out = tmp_path / "out"
    r = _run(["--source", str(source), "--output-dir", str(out), *QUIET], tmp_path,
             shell_redirect=redirect)  # fmt: skip
    assert r.returncode == 0, r
    assert stored_bytes(out) == data
    assert committed(out) == len(data)
    for name in ("checkpoint", "last-stop.json"):
        assert b" INFO " not in (out / name).read_bytes()


@pytest.mark.parametrize("kind", ["long and non-ASCII", "not valid UTF-8"])
@pytest.mark.parametrize("follow", [False, True])
def test_a_long_or_odd_source_path_is_stored_and_resumed(
    tmp_path: Path, kind: str, follow: bool
) -> None:
    # Over 4 KiB once escaped in the checkpoint (six bytes a character): such a path could
    # never be checkpointed before.
    part = {"long and non-ASCII": "é" * 120, "not valid UTF-8": os.fsdecode(b"\xff\xfe" * 60)}
    src_dir = tmp_path.joinpath(*[part[kind]] * 6)
    src_dir.mkdir(parents=True)
    src = src_dir / "app.log"
    src.write_bytes(b"one\ntwo\n")
    flags = [*QUIET, "--follow", "--follow-poll-ms", "20"] if follow else QUIET
    out = tmp_path / "out"
    args = ["--source", os.fsdecode(src), "--output-dir", str(out), *flags]
    if follow:
        s = Shovel(args, tmp_path / "1.log")
        wait_until(lambda: stored_bytes(out) == b"one\ntwo\n" and committed(out) == 8)
        stop(s)
        with src.open("ab") as f:
            f.write(b"three\n")
        s = Shovel(args, tmp_path / "2.log")
        wait_until(lambda: stored_bytes(out) == b"one\ntwo\nthree\n" and committed(out) == 14)
        stop(s)
    else:
        first = _run(args, tmp_path)
        assert first.returncode == 0, first.stderr.decode()
        with src.open("ab") as f:
            f.write(b"three\n")
        again = _run(args, tmp_path)
        assert again.returncode == 0, again.stderr.decode()
        assert b"resuming at offset 8" in again.stderr, again.stderr.decode()
    assert stored_bytes(out) == b"one\ntwo\nthree\n"
