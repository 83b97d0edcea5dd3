"""The timeline picture: one panel per stop pattern, records read and records stored over
time around the stop signal, for the first run of each pattern with the Python client; the
gap left at exit (read but never stored) shaded. Needs matplotlib (the 'demo' extra)."""

from __future__ import annotations

from pathlib import Path

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


def draw(path: Path, config: DemoConfig, panels: list[tuple[str, RunResult]]) -> None:
    """Draws one panel per (pattern, run) into `path` (PNG)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.9), squeeze=False)
    for ax, (pattern, run) in zip(axes[0], panels, strict=True):
        exit_s = run.stop_to_exit_s or 0.0
        right = max(exit_s + 0.12, AFTER_MIN_S)
        shown = [p for p in run.timeline if -BEFORE_S <= p[0] <= right] or run.timeline
        t = [p[0] for p in shown]
        ax.step(t, [p[1] for p in shown], where="post", color="tab:blue", label="read")
        ax.step(t, [p[2] for p in shown], where="post", color="tab:green", label="stored")
        ax.axvline(0, color="black", linewidth=1)
        ax.annotate(
            run.signal, (0, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
            textcoords="offset points", fontsize=8,
        )  # fmt: skip
        ax.axvline(exit_s, color="grey", linestyle="--", linewidth=1)
        tally = run.tally
        if tally is not None:
            stored_distinct = tally.read - tally.lost
            if tally.lost:
                ax.fill_between(
                    [exit_s, right], stored_distinct, tally.read, color="tab:red", alpha=0.25
                )
            ax.annotate(
                f"lost {tally.lost}" if tally.lost else "lost 0",
                (1, 1), xycoords="axes fraction", xytext=(-4, -12), textcoords="offset points",
                ha="right", fontsize=9, color="tab:red" if tally.lost else "tab:green",
            )  # fmt: skip
            low = min((p[2] for p in shown), default=0)
            span = max(tally.read - low, 1)
            ax.set_ylim(low - 0.05 * span, tally.read + 0.25 * span)
        codes = ", then ".join(exit_text(c) for c in run.exit_codes)
        ax.set_title(f"{PATTERN_TITLES[pattern]}\nexit: {codes}", fontsize=10)
        ax.set_xlim(-BEFORE_S, right)
        ax.set_xlabel("seconds from the signal (dashed: exit)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].set_ylabel("records")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        "The same pipeline stopped five ways (Python client, first run of each; red: read, "
        "never stored)\n" + settings_line(config),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
