"""The PNG plots of bench/RESULTS.md: throughput per round, throughput and peak RSS against
input size, kill-to-exit times, the latency histogram, and the NATS drains. matplotlib is
optional: without it nothing is drawn and the page says how to get the plots."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from latency import LatencyResult
from nats_bench import KINDS, LABELS, MIN_RATE, NatsResult
from rss import MAX_RSS_MIB, RssResult
from stop import MAX_P99_S, StopResult
from throughput import MIN_WALL_RATIO, ThroughputResult

# The file of each plot, by the title of the measurement it shows.
FILES = {
    ThroughputResult.title: "throughput-rounds.png",
    RssResult.title: "throughput-rss-vs-size.png",
    StopResult.title: "stop-times.png",
    LatencyResult.title: "latency-histogram.png",
    NatsResult.title: "nats-rates.png",
}


def available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    # Imported by name: matplotlib is optional, and the type checker need not have it.
    importlib.import_module("matplotlib").use("Agg")  # files only, no display
    return importlib.import_module("matplotlib.pyplot")


def _rounds(plt: Any, t: ThroughputResult, path: Path) -> None:
    mib = t.input_bytes / 2**20
    numbers = [r.number for r in t.rounds]
    series: list[tuple[str, list[float]]] = [
        ("dd bs=1M conv=fdatasync", [mib / r.dd.wall_s for r in t.rounds]),
        ("shovel", [mib / r.shovel.wall_s for r in t.rounds]),
    ]
    copies = [r.classic for r in t.rounds]
    classic = [c for c in copies if c is not None]
    if len(classic) == len(copies):
        series += [
            ("classic, to exit (not durable)", [mib / c.usage.wall_s for c in classic]),
            (
                "classic + fdatasync after exit",
                [mib / (c.usage.wall_s + c.fdatasync_s) for c in classic],
            ),
        ]
    fig, ax = plt.subplots(figsize=(8 if classic else 7, 4))
    width = 0.8 / len(series)
    for k, (label, rates) in enumerate(series):
        shift = (k - (len(series) - 1) / 2) * width
        ax.bar([n + shift for n in numbers], rates, width, label=label)
    ax.set_xticks(numbers, [f"{r.number}\n{r.order[0]} first" for r in t.rounds])
    ax.set_ylabel("MiB/s")
    ax.set_title(
        f"Throughput per round, {mib:,.0f} MiB; median shovel/dd {t.wall_ratio:.2f}x "
        f"(target >= {MIN_WALL_RATIO}x)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _size(plt: Any, r: RssResult, path: Path) -> None:
    sizes = [p.mib for p in r.points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    top.plot(sizes, [p.shovel_mib_per_s for p in r.points], "o-", label="shovel")
    if all(p.dd is not None for p in r.points):
        top.plot(sizes, [p.dd_mib_per_s for p in r.points], "s--", label="dd")
    top.set_ylabel("MiB/s")
    top.set_title("Throughput against input size")
    top.set_ylim(bottom=0)
    top.legend()
    bottom.plot(sizes, [p.shovel.rss_mib for p in r.points], "o-", label="shovel peak RSS")
    bottom.axhline(MAX_RSS_MIB, color="red", linestyle=":", label=f"target {MAX_RSS_MIB:.0f} MiB")
    bottom.set_ylabel("peak RSS (MiB)")
    bottom.set_xlabel("input size (MiB)")
    bottom.set_title("Peak RSS against input size")
    bottom.set_ylim(0, max(MAX_RSS_MIB, r.peak_mib) * 1.15)
    bottom.legend()
    for ax in (top, bottom):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{s:,.0f}" for s in sizes])
        ax.minorticks_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _stop(plt: Any, s: StopResult, path: Path) -> None:
    times_ms = [t * 1e3 for t in s.times_s()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(times_ms, bins=min(30, max(5, len(times_ms) // 2)))
    for value, label, style in (
        (s.p50_s * 1e3, "p50", "--"),
        (s.p99_s * 1e3, "p99", "-."),
        (MAX_P99_S * 1e3, "target p99", ":"),
    ):
        ax.axvline(
            value,
            linestyle=style,
            color="red" if label == "target p99" else "black",
            label=f"{label} {value:.1f} ms",
        )
    ax.set_xlim(left=0)
    ax.set_xlabel("SIGTERM to exit (ms)")
    ax.set_ylabel("stops")
    ax.set_title(f"{len(times_ms)} stops under full load, source {s.source}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency(plt: Any, la: LatencyResult, path: Path) -> None:
    rows = la.window.histogram.per_bucket()
    labels = [f"≤{high * 1e3:g}" if high != float("inf") else "+Inf" for _, high, _ in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(rows)), [n for _, _, n in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=45)
    ax.set_xlabel("submit-to-durable, bucket upper bound (ms)")
    ax.set_ylabel("batches")
    ax.set_title(
        f"Half load ({la.requested_rate:,.0f} records/s), fsync interval "
        f"{la.fsync_interval_ms} ms: p50 {la.p50_s * 1e3:.1f} ms, p99 {la.p99_s * 1e3:.1f} ms"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nats(plt: Any, n: NatsResult, path: Path) -> None:
    fig = plt.figure(figsize=(10, 8))
    grid = fig.add_gridspec(2, 2)
    bars = fig.add_subplot(grid[0, :])
    floors = fig.add_subplot(grid[1, 0])
    rss = fig.add_subplot(grid[1, 1])
    series = ("publish", *KINDS)
    numbers = [r.number for r in n.rounds]
    width = 0.8 / len(series)
    color = {kind: f"C{k}" for k, kind in enumerate(series)}  # the same in both panels
    highest = 0.0
    for k, kind in enumerate(series):
        rates = [r.publish_rate if kind == "publish" else r.drains[kind].rate for r in n.rounds]
        highest = max(highest, *rates)
        shift = (k - (len(series) - 1) / 2) * width
        bars.bar([x + shift for x in numbers], rates, width, label=LABELS[kind], color=color[kind])
    bars.axhline(MIN_RATE, color="red", linestyle=":", label="target, 1 replica")
    bars.set_xticks(numbers, [f"{r.number}\n{next(iter(r.drains))} first" for r in n.rounds])
    bars.set_ylabel("messages/s")
    bars.set_ylim(0, highest * 1.3)  # room for the legend
    bars.set_title(
        f"{n.messages:,} messages of 100 bytes per round; median shovel 1 replica "
        f"{n.median_rate('shovel-1'):,.0f} msg/s = {n.median_ratio('shovel-1'):.2f}x baseline"
    )
    bars.legend(fontsize="small", ncol=3)
    last = n.rounds[-1]
    for kind in KINDS:
        samples = last.drains[kind].floors
        floors.plot(
            [t for t, _ in samples], [f for _, f in samples], label=LABELS[kind], color=color[kind]
        )
    floors.set_xlabel("seconds since the consumer's processes started")
    floors.set_ylabel("acknowledgement floor")
    floors.set_title(f"Round {last.number}: acknowledged over time")
    floors.legend(fontsize="small")
    sizes = [d.messages for d in n.sweep]
    rss.plot(sizes, [d.rss_mib for d in n.sweep], "o-", label="shovel, 1 replica")
    rss.set_xscale("log")
    rss.set_xticks(sizes, [f"{s:,}" for s in sizes])
    rss.minorticks_off()
    rss.set_ylim(0, max(d.rss_mib for d in n.sweep) * 1.3)
    rss.set_xlabel("backlog (messages)")
    rss.set_ylabel("peak RSS (MiB)")
    rss.set_title("Peak RSS against backlog")
    rss.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw(
    where: Path,
    *,
    throughput: ThroughputResult | None,
    rss: RssResult | None,
    stop: StopResult | None,
    latency: LatencyResult | None,
    nats: NatsResult | None,
) -> dict[str, Path]:
    """Draws the plots of the measurements made into `where`; returns them by the title of
    their measurement (nothing when matplotlib is missing)."""
    if not available():
        return {}
    plt = _pyplot()
    drawn: dict[str, Path] = {}
    jobs: list[tuple[Any, Any]] = [
        (_rounds, throughput),
        (_size, rss),
        (_stop, stop),
        (_latency, latency),
        (_nats, nats),
    ]
    for draw_one, result in jobs:
        if result is not None:
            path = where / FILES[result.title]
            draw_one(plt, result, path)
            drawn[result.title] = path
    return drawn
