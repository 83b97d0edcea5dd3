"""Throughput benchmark: shovel against `dd conv=fdatasync`, on the same file and disk.

One run generates (or reuses) an input file of fixed-width 100-byte records, then copies it
--repeat times with each tool, alternating which goes first, into fresh output on the same
filesystem. Both read the input from the page cache (it is never dropped) and both end with
the copy durable: dd with fdatasync, shovel by its own fsyncs before it exits 0.

Every shovel run is checked: its segments, concatenated in name order, must equal the input
byte for byte. Reported: median wall time and throughput of each tool, shovel's records/s and
peak RSS (ru_maxrss from wait4), and whether the targets hold (throughput >= 0.8 x dd, peak
RSS < 150 MiB). A missed target is reported, not an error; the exit code is 1 only when a
shovel run fails or stores something other than the input.

Usage: python bench/throughput.py [options] [-- extra shovel flags]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 1024 * 1024
RECORD_BYTES = 100
BLOCK_RECORDS = 10_000  # one block = 1,000,000 bytes, rewritten with a new block number
BLOCK_BYTES = RECORD_BYTES * BLOCK_RECORDS
# Record layout: {"seq":<12 digits>,"source":"shovel-bench","payload":"<42 hex>"}\n
# The 12-digit seq is <8-digit block number><4-digit index in the block>.
SEQ_AT = len(b'{"seq":')
BLOCK_DIGITS = 8
HASH_CHUNK = 4 * MiB
MIN_RATIO = 0.8
MAX_RSS_MIB = 150.0
DEFAULT_WORK_PARENT = Path("/var/tmp")
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


class BenchError(Exception):
    """Something that makes the figures meaningless: a failed or incorrect copy."""


@dataclass(frozen=True, slots=True)
class InputFile:
    """The generated input and what shovel's output must match."""

    path: Path
    size: int
    records: int
    digest: str


@dataclass(slots=True)
class Runs:
    """Per-run measurements, in run order."""

    dd_wall_s: list[float] = field(default_factory=list)
    shovel_wall_s: list[float] = field(default_factory=list)
    shovel_rss_mib: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Summary:
    """The reported figures (medians of wall times; peak RSS is the maximum over runs)."""

    input_bytes: int
    input_records: int
    repeat: int
    workdir: str
    filesystem: str
    shovel_flags: list[str]
    shovel_wall_s: float
    shovel_mib_per_s: float
    shovel_records_per_s: float
    shovel_peak_rss_mib: float
    dd_wall_s: float
    dd_mib_per_s: float
    ratio: float
    ratio_ok: bool
    rss_ok: bool
    runs: Runs


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options before `--`, and the shovel flags after it."""
    args = list(argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Compare shovel's file-to-disk throughput with dd conv=fdatasync.",
        epilog="Flags after `--` are passed to shovel, e.g. `-- --fsync-max-bytes 33554432`.",
    )
    parser.add_argument("--size-mb", type=int, default=512, help="input size in MiB (min.)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of dd + shovel")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where input and outputs go; an input of the right size there is reused "
        f"(default: a fresh directory under {DEFAULT_WORK_PARENT})",
    )
    parser.add_argument("--keep-input", action="store_true", help="keep the input file")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    ns = parser.parse_args(args)
    if ns.size_mb < 1 or ns.repeat < 1:
        parser.error("--size-mb and --repeat must be at least 1")
    return ns, extra


# --- work directory ---------------------------------------------------------------------------


def _unescape_mount(field_text: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as \ooo octal escapes.
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest matching mount), or 'unknown'."""
    target = str(path.resolve())
    best, best_type = "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = _unescape_mount(parts[1])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, parts[2]
    return best_type


def _default_parent() -> Path:
    # /var/tmp first: /tmp is often tmpfs, where fdatasync costs nothing and dd would win big.
    for candidate in (DEFAULT_WORK_PARENT, Path(tempfile.gettempdir())):
        if candidate.is_dir() and filesystem_type(candidate) not in MEMORY_FILESYSTEMS:
            return candidate
    return DEFAULT_WORK_PARENT  # all in memory: the report says so


def make_workdir(requested: Path | None) -> tuple[Path, bool]:
    """The work directory, and whether this run created it (then it may remove it)."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return requested, False
    return Path(tempfile.mkdtemp(prefix="shovel-bench-", dir=_default_parent())), True


def check_free_space(workdir: Path, input_path: Path, size_mib: int) -> None:
    """Refuses to start without room for the input (unless reusable) and one copy of it."""
    size = input_blocks(size_mib) * BLOCK_BYTES
    need = size * 11 // 10 + (0 if reusable(input_path, size_mib) else size)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(
            f"not enough space in {workdir}: need {need // MiB} MiB, have {free // MiB}"
        )


# --- input ------------------------------------------------------------------------------------


def _block_template() -> bytearray:
    """One block of records with block number 0; only the block number changes later."""
    lines = []
    for i in range(BLOCK_RECORDS):
        payload = hashlib.blake2b(i.to_bytes(4, "big"), digest_size=21).hexdigest()
        line = b'{"seq":%012d,"source":"shovel-bench","payload":"%s"}\n' % (i, payload.encode())
        assert len(line) == RECORD_BYTES
        lines.append(line)
    return bytearray(b"".join(lines))


def _set_block_number(block: bytearray, number: int) -> None:
    # Records are fixed-width, so each digit of the block number sits at the same place in
    # every record: one strided slice assignment per digit rewrites the whole block.
    for pos, digit in enumerate(b"%0*d" % (BLOCK_DIGITS, number)):
        block[SEQ_AT + pos :: RECORD_BYTES] = bytes([digit]) * BLOCK_RECORDS


def input_blocks(size_mib: int) -> int:
    """Blocks needed for at least `size_mib` MiB."""
    return -(-size_mib * MiB // BLOCK_BYTES)


def write_input(path: Path, blocks: int) -> None:
    """Writes `blocks` blocks to `path` (via a temporary name) and makes them durable, so
    that no writeback of the input competes with the timed runs."""
    tmp = path.with_name(path.name + ".partial")
    block = _block_template()
    with tmp.open("wb") as f:
        for n in range(blocks):
            _set_block_number(block, n)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _chunks(paths: Sequence[Path]) -> Iterator[bytes]:
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                yield chunk


def digest_of(paths: Sequence[Path]) -> tuple[int, str]:
    """Size and blake2b digest of the concatenation of `paths`."""
    h = hashlib.blake2b()
    size = 0
    for chunk in _chunks(paths):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def input_path_for(workdir: Path, size_mib: int) -> Path:
    """Where the input of this size lives in `workdir`."""
    return workdir / f"input-{size_mib}MiB.ndjson"


def reusable(path: Path, size_mib: int) -> bool:
    """Whether `path` is an input of the right size already."""
    return path.is_file() and path.stat().st_size == input_blocks(size_mib) * BLOCK_BYTES


def prepare_input(path: Path, size_mib: int) -> tuple[InputFile, bool]:
    """The input file (reused when its size is right) and whether it was reused."""
    blocks = input_blocks(size_mib)
    reused = reusable(path, size_mib)
    if not reused:
        write_input(path, blocks)
    size, digest = digest_of([path])
    return InputFile(path, size, blocks * BLOCK_RECORDS, digest), reused


# --- the two contenders -----------------------------------------------------------------------


def remove(path: Path) -> None:
    """Removes a file or directory tree if present."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fresh(out: Path) -> None:
    """Removes a previous output and flushes all dirty data (a plain sync(2), no root needed),
    so that no run pays for the writeback or the deletion left by the one before it."""
    remove(out)
    os.sync()


def run_dd(inp: InputFile, out: Path) -> float:
    """Copies the input with dd and fdatasync; returns the wall time."""
    fresh(out)
    cmd = ["dd", f"if={inp.path}", f"of={out}", "bs=1M", "conv=fdatasync"]
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    remove(out)
    if done.returncode != 0:
        raise BenchError(f"dd failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return wall


def shovel_command(inp: InputFile, out: Path, extra: Sequence[str]) -> list[str]:
    """The shovel command line for one run."""
    return [
        sys.executable,
        "-m",
        "shovel",
        "--source",
        str(inp.path),
        "--output-dir",
        str(out),
        "--metrics-port",
        "0",
        "--status-interval-s",
        "0",
        "--log-level",
        "WARNING",
        *extra,
    ]


def _spawn_and_reap(cmd: Sequence[str], log_path: Path) -> tuple[float, int, float]:
    """Runs `cmd` with output to `log_path`; returns wall time, exit code, peak RSS in MiB."""
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: do not leave shovel writing into a removed dir
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here, so Popen must not wait for it again
    return wall, code, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def verify_segments(inp: InputFile, out: Path) -> None:
    """Raises BenchError unless the segments, in name order, are exactly the input."""
    segments = sorted((out / "segments").glob("*.seg"), key=lambda p: p.name)
    size, digest = digest_of(segments)
    if size != inp.size or digest != inp.digest:
        raise BenchError(
            f"shovel's output differs from the input: {len(segments)} segments, {size} bytes "
            f"(input {inp.size}), digest {'matches' if digest == inp.digest else 'differs'}"
        )


def run_shovel(inp: InputFile, out: Path, extra: Sequence[str]) -> tuple[float, float]:
    """One shovel run into a fresh `out`, checked; returns wall time and peak RSS (MiB)."""
    fresh(out)
    log_path = out.with_name(out.name + ".log")
    wall, code, rss = _spawn_and_reap(shovel_command(inp, out, extra), log_path)
    log_text = log_path.read_text(errors="replace")
    log_path.unlink()
    if code != 0:
        raise BenchError(f"shovel exited with {code}:\n{log_text}")
    verify_segments(inp, out)
    remove(out)
    return wall, rss


def run_rounds(inp: InputFile, workdir: Path, repeat: int, extra: Sequence[str]) -> Runs:
    """`repeat` rounds of both tools, alternating which goes first."""
    runs = Runs()
    for i in range(repeat):
        order = ("dd", "shovel") if i % 2 == 0 else ("shovel", "dd")
        for tool in order:
            if tool == "dd":
                runs.dd_wall_s.append(run_dd(inp, workdir / "dd-out"))
                progress(f"round {i + 1}/{repeat}: dd     {runs.dd_wall_s[-1]:7.3f} s")
            else:
                wall, rss = run_shovel(inp, workdir / "shovel-out", extra)
                runs.shovel_wall_s.append(wall)
                runs.shovel_rss_mib.append(rss)
                progress(f"round {i + 1}/{repeat}: shovel {wall:7.3f} s, peak RSS {rss:.1f} MiB")
    return runs


# --- report -----------------------------------------------------------------------------------


def progress(line: str) -> None:
    """A progress line, on stderr so that stdout holds only the result."""
    print(line, file=sys.stderr, flush=True)


def summarize(inp: InputFile, runs: Runs, workdir: Path, extra: Sequence[str]) -> Summary:
    """Medians and targets from the runs."""
    mib = inp.size / MiB
    shovel_wall = statistics.median(runs.shovel_wall_s)
    dd_wall = statistics.median(runs.dd_wall_s)
    ratio = dd_wall / shovel_wall  # equal sizes: the throughput ratio shovel/dd
    peak = max(runs.shovel_rss_mib)
    return Summary(
        input_bytes=inp.size,
        input_records=inp.records,
        repeat=len(runs.shovel_wall_s),
        workdir=str(workdir),
        filesystem=filesystem_type(workdir),
        shovel_flags=list(extra),
        shovel_wall_s=shovel_wall,
        shovel_mib_per_s=mib / shovel_wall,
        shovel_records_per_s=inp.records / shovel_wall,
        shovel_peak_rss_mib=peak,
        dd_wall_s=dd_wall,
        dd_mib_per_s=mib / dd_wall,
        ratio=ratio,
        ratio_ok=ratio >= MIN_RATIO,
        rss_ok=peak < MAX_RSS_MIB,
        runs=runs,
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def format_table(s: Summary) -> str:
    """The human-readable report."""
    flags = " ".join(s.shovel_flags) or "(defaults)"
    rows = [
        f"input     {s.input_bytes / MiB:.0f} MiB, {s.input_records:,} records of "
        f"{RECORD_BYTES} bytes; {s.workdir} ({s.filesystem})",
        f"shovel    flags: {flags}; median of {s.repeat} runs",
        "",
        f"{'':8} {'MiB/s':>9} {'records/s':>12} {'wall s':>8} {'peak RSS MiB':>13}",
        f"{'shovel':8} {s.shovel_mib_per_s:9.1f} {s.shovel_records_per_s:12,.0f} "
        f"{s.shovel_wall_s:8.3f} {s.shovel_peak_rss_mib:13.1f}",
        f"{'dd':8} {s.dd_mib_per_s:9.1f} {'':>12} {s.dd_wall_s:8.3f} {'':>13}",
        "",
        f"throughput shovel/dd {s.ratio:.2f} (target >= {MIN_RATIO}): {_verdict(s.ratio_ok)}",
        f"peak RSS {s.shovel_peak_rss_mib:.1f} MiB (target < {MAX_RSS_MIB:.0f}): "
        f"{_verdict(s.rss_ok)}",
    ]
    if s.filesystem in MEMORY_FILESYSTEMS:
        rows.append(f"warning: {s.workdir} is {s.filesystem}; fsync costs nothing there")
    return "\n".join(rows)


def report(s: Summary, as_json: bool) -> None:
    """Prints the summary as a table or as JSON."""
    print(json.dumps(asdict(s), indent=2) if as_json else format_table(s))


# --- main -------------------------------------------------------------------------------------


def cleanup(workdir: Path, created: bool, input_path: Path, keep_input: bool) -> None:
    """Removes the outputs, and the input unless it is kept; removes the work directory too
    when this run created it and nothing is kept."""
    for name in ("dd-out", "shovel-out", "shovel-out.log", input_path.name + ".partial"):
        remove(workdir / name)
    if keep_input:
        if input_path.is_file():
            progress(f"input kept: {input_path} (reuse it with --workdir {workdir})")
    elif created:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        remove(input_path)


def main(argv: Sequence[str]) -> int:
    """Runs the benchmark; returns the exit code."""
    ns, extra = parse_args(argv)
    if shutil.which("dd") is None:
        raise SystemExit("dd not found on PATH")
    workdir, created = make_workdir(ns.workdir)
    input_path = input_path_for(workdir, ns.size_mb)
    try:
        check_free_space(workdir, input_path, ns.size_mb)
        inp, reused = prepare_input(input_path, ns.size_mb)
        progress(f"{'reusing' if reused else 'generated'} {inp.path} ({inp.size:,} bytes)")
        runs = run_rounds(inp, workdir, ns.repeat, extra)
        report(summarize(inp, runs, workdir, extra), ns.json)
        return 0
    except BenchError as e:
        progress(f"FAILED: {e}")
        return 1
    finally:
        cleanup(workdir, created, input_path, ns.keep_input)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
