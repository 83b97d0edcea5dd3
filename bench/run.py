"""shovel's benchmarks against its speed, memory and stop-time targets, one subcommand each:

  throughput  shovel against dd conv=fdatasync: wall time and CPU time, in rounds, with the
              classic design (shovel's pipeline over a pure-Python client) as a third row
  rss         peak RSS (and throughput) against input size, 100 MiB to 4 GiB
  stop        SIGTERM to exit under full load, over many stops
  latency     read-to-durable latency at half the generator's full speed
  nats        NATS JetStream: shovel (1 and 3 replicas) against a minimal Rust consumer and the
              server's ingest, and peak RSS against the backlog
  sink        the JetStream sink: shovel file -> JetStream against a minimal Rust publisher with
              the same guarantees, pipelined publishes and the server's ingest (1 server, R3)
  all         all six, in that order (what `make bench` runs)

Usage: python bench/run.py SUBCOMMAND [options] [-- extra shovel flags]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import latency
import nats_bench
import rss
import sink_bench
import stop
import throughput
from common import BenchError, progress, remove
from copies import classic_copy_command, output_names, shovel_copy_command
from inputs import InputFile, bytes_for, prepare_input
from machine import MEMORY_FILESYSTEMS, check_free_space, describe_machine, make_workdir
from results import Results

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MEASUREMENTS = ("throughput", "rss", "stop", "latency", "nats", "sink")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _counts(text: str) -> list[int]:
    try:
        counts = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of counts, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be at least 1, got {text!r}")
    return counts


def _sizes(text: str) -> list[float]:
    try:
        sizes = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of MiB, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be above 0, got {text!r}")
    return sizes


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument(
        "--workdir",
        type=Path,
        help="where inputs and outputs go; an input of the right size there is reused "
        "(default: a fresh directory under /var/tmp, never a tmpfs, removed at the end)",
    )
    g.add_argument("--keep-input", action="store_true", help="keep the input file (--size-mb)")
    g.add_argument("--json", action="store_true", help="print the figures as JSON, not text")
    g.add_argument(
        "--write-results",
        nargs="?",
        const=DEFAULT_RESULTS,
        type=Path,
        metavar="PATH",
        help=f"write the results page and its plots (default path: {DEFAULT_RESULTS})",
    )
    return p


def _input_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument_group("input").add_argument(
        "--size-mb",
        type=_positive_float,
        default=1024,
        help="input of 100-byte records for throughput and stop, in MiB (default: 1024)",
    )
    return p


def _throughput_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("throughput")
    g.add_argument(
        "--rounds",
        type=_positive_int,
        default=5,
        help="rounds of dd + shovel + the classic design (default: 5)",
    )
    g.add_argument(
        "--no-classic",
        action="store_true",
        help="leave out the classic design (shovel's pipeline over the demo's pure-Python "
        "client, bench/classic.py) from each round",
    )
    return p


def _rss_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("rss")
    default = ",".join(f"{s:g}" for s in rss.DEFAULT_SIZES_MIB)
    g.add_argument(
        "--sizes-mb",
        type=_sizes,
        default=list(rss.DEFAULT_SIZES_MIB),
        help=f"input sizes in MiB, comma-separated (default: {default})",
    )
    g.add_argument("--no-dd", action="store_true", help="skip the dd copy at each size")
    return p


def _stop_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("stop")
    g.add_argument(
        "--stops", type=_positive_int, default=stop.DEFAULT_STOPS, help="stops (default: 50)"
    )
    g.add_argument(
        "--stop-source",
        choices=("file", "generate"),
        default="file",
        help="what shovel reads while stopped: the --size-mb input at disk speed, or the "
        "unpaced generator (default: file)",
    )
    g.add_argument("--seed", type=int, default=8, help="seed of the random stop moments")
    return p


def _latency_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("latency")
    g.add_argument(
        "--fsync-interval-ms",
        type=_positive_int,
        default=latency.DEFAULT_FSYNC_INTERVAL_MS,
        help="shovel's --fsync-interval-ms during the measurement (default: 100)",
    )
    g.add_argument(
        "--window-s", type=_positive_float, default=10.0, help="measured window (default: 10)"
    )
    g.add_argument(
        "--calibrate-s",
        type=_positive_float,
        default=3.0,
        help="window for the generator's full speed (default: 3)",
    )
    return p


def _nats_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("nats")
    g.add_argument(
        "--nats-messages",
        type=_positive_int,
        default=nats_bench.DEFAULT_MESSAGES,
        help="messages of 100 bytes per round (default: 500000)",
    )
    g.add_argument(
        "--nats-rounds",
        type=_positive_int,
        default=nats_bench.DEFAULT_ROUNDS,
        help="rounds of publish, baseline, baseline without storage, shovel with 1 replica "
        "and with 3 (default: 3)",
    )
    g.add_argument(
        "--nats-backlogs",
        type=_counts,
        default=list(nats_bench.DEFAULT_RSS_MESSAGES),
        help="backlog sizes for one replica's peak RSS, comma-separated (default: 100000,1000000)",
    )
    g.add_argument(
        "--nats-batch",
        type=_positive_int,
        default=nats_bench.DEFAULT_BATCH,
        help="messages per pull request, shovel's and the baseline's (default: 256, "
        "shovel's default)",
    )
    g.add_argument(
        "--nats-servers",
        type=int,
        choices=(1, 3),
        default=1,
        help="one JetStream server (stream R1), or a 3-server cluster (stream R3) (default: 1)",
    )
    return p


def _servers(text: str) -> list[int]:
    try:
        found = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of 1 and 3, got {text!r}"
        ) from None
    if not found or any(n not in (1, 3) for n in found):
        raise argparse.ArgumentTypeError(f"servers are 1 or 3, got {text!r}")
    return found


def _sink_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sink")
    g.add_argument(
        "--sink-records",
        type=_positive_int,
        default=sink_bench.DEFAULT_RECORDS,
        help="records of 100 bytes per fill, rounded up to a multiple of 10,000 (default: 300000)",
    )
    g.add_argument(
        "--sink-rounds",
        type=_positive_int,
        default=sink_bench.DEFAULT_ROUNDS,
        help="rounds of ingest, baseline, pipelined and shovel on each topology (default: 3)",
    )
    g.add_argument(
        "--sink-batch",
        type=_positive_int,
        default=sink_bench.DEFAULT_BATCH,
        help="records per atomic batch, shovel's and the baseline's, at most 1000 "
        "(default: 1000, the sink's default)",
    )
    g.add_argument(
        "--sink-servers",
        type=_servers,
        default=list(sink_bench.DEFAULT_SERVERS),
        help="topologies, comma-separated: 1 (one server, stream R1) and 3 (a 3-server "
        "cluster, stream R3) (default: 1,3)",
    )
    g.add_argument(
        "--sink-without-shovel",
        action="store_true",
        help="the yardsticks alone (ingest, baseline, pipelined), no shovel run",
    )
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options before `--`, and the shovel flags after it."""
    args = list(argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure shovel against its speed, memory and stop-time targets. Progress "
        "goes to stderr, the report to stdout. Exit status: 0 when every run succeeded (even "
        "if a target is missed), 1 when a run failed or stored wrong data, 2 for a usage error.",
        epilog="Flags after `--` are passed to every shovel run, e.g. "
        "`bench/run.py throughput -- --fsync-max-bytes 33554432`. Use each subcommand's --help "
        "for its options.",
    )
    sub = parser.add_subparsers(dest="measure", required=True, metavar="SUBCOMMAND")
    common, inp = _common_options(), _input_options()
    groups = {
        "throughput": [inp, _throughput_options()],
        "rss": [_rss_options()],
        "stop": [inp, _stop_options()],
        "latency": [_latency_options()],
        "nats": [_nats_options()],
        "sink": [_sink_options()],
    }
    helps = {
        "throughput": "shovel against dd conv=fdatasync (and the classic design): wall time "
        "and CPU time, in rounds",
        "rss": "peak RSS and throughput against input size",
        "stop": "SIGTERM to exit under full load, p50/p99/max",
        "latency": "submit-to-durable latency at half the generator's full speed",
        "nats": "NATS JetStream: shovel with 1 and 3 replicas against a minimal consumer",
        "sink": "the JetStream sink: shovel file -> JetStream against a minimal publisher with "
        "the same guarantees (1 server and R3)",
    }
    for name in MEASUREMENTS:
        sub.add_parser(name, parents=[common, *groups[name]], help=helps[name])
    every = [
        inp,
        _throughput_options(),
        _rss_options(),
        _stop_options(),
        _latency_options(),
        _nats_options(),
        _sink_options(),
    ]
    sub.add_parser("all", parents=[common, *every], help="all six, as `make bench` runs them")
    return parser.parse_args(args), extra


def _needs_input(ns: argparse.Namespace, chosen: Sequence[str]) -> bool:
    return "throughput" in chosen or ("stop" in chosen and ns.stop_source == "file")


def _run(
    ns: argparse.Namespace, chosen: Sequence[str], workdir: Path, extra: list[str], r: Results
) -> None:
    input_path = workdir / f"input-{ns.size_mb:g}MiB.ndjson" if _needs_input(ns, chosen) else None
    inp: InputFile | None = None
    try:
        if input_path is not None:
            size = bytes_for(ns.size_mb)
            reused = input_path.is_file() and input_path.stat().st_size == size
            check_free_space(workdir, size * 11 // 10 + (0 if reused else size), "the input")
            inp, reused = prepare_input(input_path, ns.size_mb)
            progress(f"{'reusing' if reused else 'generated'} {inp.path} ({inp.size:,} bytes)")
        if "throughput" in chosen and inp is not None:
            tools = "dd and shovel" if ns.no_classic else "dd, shovel and the classic design"
            progress(f"== throughput: {ns.rounds} rounds of {tools}")
            r.throughput = throughput.measure(
                inp, workdir, ns.rounds, extra, classic=not ns.no_classic
            )
        if "stop" in chosen:
            progress(f"== stop: {ns.stops} stops, source {ns.stop_source}")
            r.stop = stop.measure(
                inp if ns.stop_source == "file" else None, workdir, ns.stops, extra, ns.seed
            )
    finally:
        if input_path is not None:
            remove(input_path.with_name(input_path.name + ".partial"))
            if ns.keep_input:
                progress(f"input kept: {input_path} (reuse it with --workdir {workdir})")
            else:
                remove(input_path)
    if "rss" in chosen:
        check_free_space(workdir, rss.space_needed(ns.sizes_mb), "the size sweep")
        progress(f"== rss: sizes {', '.join(f'{s:g}' for s in ns.sizes_mb)} MiB")
        r.rss = rss.measure(workdir, ns.sizes_mb, extra, with_dd=not ns.no_dd)
    if "latency" in chosen:
        progress(f"== latency: fsync interval {ns.fsync_interval_ms} ms")
        r.latency = latency.measure(
            workdir,
            extra,
            fsync_interval_ms=ns.fsync_interval_ms,
            window_s=ns.window_s,
            calibrate_s=ns.calibrate_s,
        )
    if "nats" in chosen:
        need = nats_bench.space_needed(ns.nats_messages, ns.nats_backlogs)
        check_free_space(workdir, need, "the NATS streams and outputs")
        progress(
            f"== nats: {ns.nats_rounds} rounds of {ns.nats_messages:,} messages, backlogs "
            f"{', '.join(f'{n:,}' for n in ns.nats_backlogs)}"
        )
        r.nats = nats_bench.measure(
            workdir,
            messages=ns.nats_messages,
            rounds=ns.nats_rounds,
            rss_messages=ns.nats_backlogs,
            batch=ns.nats_batch,
            servers=ns.nats_servers,
            extra=extra,
        )
    if "sink" in chosen:
        need = sink_bench.space_needed(ns.sink_records, ns.sink_servers)
        check_free_space(workdir, need, "the sink's input and streams")
        progress(
            f"== sink: {ns.sink_rounds} rounds of {ns.sink_records:,} records on "
            f"{' and '.join(f'{n} server(s)' for n in ns.sink_servers)}"
        )
        r.sink = sink_bench.measure(
            workdir,
            records=ns.sink_records,
            rounds=ns.sink_rounds,
            batch=min(ns.sink_batch, 1000),
            servers=ns.sink_servers,
            with_shovel=not ns.sink_without_shovel,
            extra=extra,
        )


def main(argv: Sequence[str]) -> int:
    """Runs the chosen measurements; returns the exit code."""
    ns, extra = parse_args(argv)
    chosen = MEASUREMENTS if ns.measure == "all" else (ns.measure,)
    if shutil.which("dd") is None and ("throughput" in chosen or "rss" in chosen):
        progress("dd not found on PATH")
        return 2
    if ns.write_results is not None:
        try:  # before the measurements, not after them
            ns.write_results.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            progress(f"cannot write results to {ns.write_results}: {e}")
            return 2
    workdir, created = make_workdir(ns.workdir)
    r: Results | None = None
    try:
        machine = describe_machine(workdir)
        if machine.filesystem in MEMORY_FILESYSTEMS:
            progress(f"warning: {workdir} is {machine.filesystem}; fsync costs nothing there")
        if machine.busy:
            progress(
                f"warning: load average {machine.load_at_start:.2f} on {machine.cores} cores: "
                "the machine is busy, treat the figures as a development run"
            )
        command = shlex.join(["python", "bench/run.py", *argv])
        copy = shovel_copy_command(Path("INPUT"), Path("OUTPUT"), extra)
        classic = classic_copy_command(Path("INPUT"), Path("OUTPUT"), extra)
        r = Results(
            machine,
            command,
            shlex.join(["python", *copy[1:]]),
            shlex.join(["python", "bench/classic.py", *classic[2:]]),
        )
        _run(ns, chosen, workdir, extra, r)
    except BenchError as e:
        progress(f"FAILED: {e}")
        if r is not None and r.measured():
            # What was measured before the failure is still worth reading.
            print(r.text())
        return 1
    finally:
        for name in output_names():
            remove(workdir / name)
        if created and not ns.keep_input:
            shutil.rmtree(workdir, ignore_errors=True)
    print(r.json() if ns.json else r.text())
    if ns.write_results is not None:
        plotted = r.write_markdown(ns.write_results)
        progress(f"wrote {ns.write_results}" + "".join(f", {p}" for p in plotted))
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: no shovel left writing


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # the work directory and every process are cleaned up by then
        progress("interrupted")
        sys.exit(130)
