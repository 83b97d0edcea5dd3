"""The timeline picture: one panel per stop pattern, records read and records stored over
time around the stop signal, for the first run of each pattern with the Python client; the
gap left at exit (read but never stored) shaded, and apart from it, hatched grey, what a count
that could not be completed did not count (unknown, not lost); a second row for the NATS cells,
with what the server counts as acknowledged. Needs matplotlib (the 'demo' extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shovel.demo.report import PATTERN_TITLES, exit_text, settings_line
from shovel.demo.runs import DemoConfig, RunResult

# Seconds shown before the signal, and at least this long after it.
BEFORE_S = 0.25
AFTER_MIN_S = 0.35


def have_matplotlib() -> bool:
    """Whether the picture can be drawn."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def draw(
    path: Path,
    config: DemoConfig,
    panels: list[tuple[str, RunResult]],
    nats_panels: list[tuple[str, RunResult]] | None = None,
) -> None:
    """Draws one panel per (pattern, run) into `path` (PNG); the NATS runs, if any, in a second
    row, with the messages the server counts as acknowledged."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    nats_panels = nats_panels or []
    rows = 2 if nats_panels else 1
    fig, axes = plt.subplots(
        rows, len(panels), figsize=(3.4 * len(panels), 3.9 * rows), squeeze=False
    )
    for ax, (pattern, run) in zip(axes[0], panels, strict=True):
        _panel(ax, PATTERN_TITLES[pattern], run)
    if nats_panels:
        for ax, (pattern, run) in zip(axes[1], nats_panels, strict=False):
            _panel(ax, f"{PATTERN_TITLES[pattern]}, NATS source", run)
        for ax in axes[1][len(nats_panels) :]:
            ax.set_visible(False)
        axes[1][0].set_ylabel("messages")
        axes[1][0].legend(loc="lower right", fontsize=8)
    axes[0][0].set_ylabel("records")
    axes[0][0].legend(loc="lower right", fontsize=8)
    title = (
        "The same pipeline stopped five ways (Python client, first run of each; red: read, "
        "never stored)\n" + settings_line(config)
    )
    if nats_panels:
        title += (
            "\nBelow: a NATS JetStream source (native client, first run of each); orange: "
            "acknowledged (the server's count); red: acknowledged, never stored"
        )
    if any(run.tally is not None and run.tally.uncounted for _, run in panels + nats_panels):
        title += "\nHatched grey: not counted (the count could not be completed): unknown, not lost"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _panel(ax: Any, title: str, run: RunResult) -> None:
    exit_s = run.stop_to_exit_s or 0.0
    right = max(exit_s + 0.12, AFTER_MIN_S)
    shown = [p for p in run.timeline if -BEFORE_S <= p[0] <= right] or run.timeline
    t = [p[0] for p in shown]
    ax.step(t, [p[1] for p in shown], where="post", color="tab:blue", label="read")
    ax.step(t, [p[2] for p in shown], where="post", color="tab:green", label="stored")
    acked = [p for p in run.acked_timeline if -BEFORE_S <= p[0] <= right]
    if acked:
        ax.step(
            [p[0] for p in acked], [p[1] for p in acked], where="post", color="tab:orange",
            label="acknowledged",
        )  # fmt: skip
    ax.axvline(0, color="black", linewidth=1)
    ax.annotate(
        run.signal, (0, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
        textcoords="offset points", fontsize=8,
    )  # fmt: skip
    ax.axvline(exit_s, color="grey", linestyle="--", linewidth=1)
    tally = run.tally
    if tally is not None:
        stored_distinct = tally.read - tally.lost - tally.uncounted
        if tally.lost:
            ax.fill_between(
                [exit_s, right], stored_distinct, stored_distinct + tally.lost, color="tab:red",
                alpha=0.25,
            )  # fmt: skip
        if tally.uncounted:
            # Not counted is not lost: shown apart, in grey, with its own label.
            ax.fill_between(
                [exit_s, right], stored_distinct + tally.lost, tally.read, color="tab:gray",
                alpha=0.25, hatch="//",
            )  # fmt: skip
        ax.annotate(
            _lost_label(tally.lost, tally.uncounted),
            (1, 1), xycoords="axes fraction", xytext=(-4, -3), textcoords="offset points",
            ha="right", va="top", fontsize=9, color=_lost_colour(tally.lost, tally.uncounted),
        )  # fmt: skip
        low = min((p[2] for p in shown), default=0)
        span = max(tally.read - low, 1)
        ax.set_ylim(low - 0.05 * span, tally.read + 0.25 * span)
    codes = ", then ".join(exit_text(c) for c in run.exit_codes)
    ax.set_title(f"{title}\nexit: {codes}", fontsize=10)
    ax.set_xlim(-BEFORE_S, right)
    ax.set_xlabel("seconds from the signal (dashed: exit)", fontsize=8)
    ax.tick_params(labelsize=8)


def _lost_label(lost: int, uncounted: int) -> str:
    """A panel's verdict: what was lost, and what could not be counted."""
    if not uncounted:
        return f"lost {lost}"
    return f"lost {lost}\nnot counted {uncounted}\n(unknown, not lost)"


def _lost_colour(lost: int, uncounted: int) -> str:
    if lost:
        return "tab:red"
    return "tab:gray" if uncounted else "tab:green"
