"""The picture (timeline.png), in two parts. On top, the answer: the records lost per run in
every cell (a bar: the mean over its runs; a dot: each run), with the runs that lost and the
exit code beside it; what a count that could not be completed did not count is a hatched grey
bar of its own (unknown, not lost). Below, how it happens: for every stop pattern and client,
the records read but not yet stored around the stop signal, every run drawn, with what is
left at the exit (lost) in red. Needs matplotlib (the 'demo' extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shovel.demo.report import (
    CellSummary,
    exit_codes_text,
    figure,
    settings_line,
    short_title,
    summarize,
)
from shovel.demo.runs import Cell, DemoConfig, RunResult

TITLE = "Stopping a running asyncio pipeline: how many records does each way lose?"
CLIENT_COLOURS = {
    "python": "tab:orange",
    "native": "tab:blue",
    "nats-py": "tab:brown",
    "sink": "tab:cyan",
}
CLIENT_LEGEND = {
    "python": "pure-Python asyncio client (a task per write)",
    "native": "shovel's native (Rust) client",
    "nats-py": "pure-Python nats-py client into JetStream (a task per record)",
    "sink": "shovel's JetStream sink (native)",
}
LOST = "tab:red"
DOUBLED = "tab:purple"
KEPT = "tab:green"
NOT_COUNTED = "0.6"
# The timelines: seconds shown before the signal, and at least this long after it.
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
    path: Path, config: DemoConfig, cells: list[Cell], results: dict[str, list[RunResult]]
) -> None:
    """Draws the picture of `cells` into `path` (PNG)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    # The timelines: the cells stopped once by a signal over the generator, a row per client
    # and a column per stop pattern (a JetStream store's clients run under some stops only:
    # their other panels are left blank).
    timed = [c for c in cells if c.source == "generator" and not c.kill_restart]
    patterns = list(dict.fromkeys(c.pattern for c in timed))
    clients = list(dict.fromkeys(c.client for c in timed))
    keys = {c.key for c in timed}
    answer_height = 1.2 + 0.36 * (len(cells) + len(_groups(cells)))
    fig = plt.figure(figsize=(16, answer_height + 3.0 * len(clients)), layout="constrained")
    # The answer on top, the timelines below (two subfigures: an array, which the stubs do
    # not say).
    parts: Any = fig.subfigures(2, 1, height_ratios=[answer_height, 3.0 * len(clients)])
    top, below = parts
    top.suptitle(TITLE, fontsize=17, fontweight="bold")
    _answer(top.subplots(), config, cells, results)
    below.suptitle(
        "How it happens: records read but not yet stored, from just before the stop signal to "
        f"the exit (all {config.runs} runs of each). What is left at the exit is lost (red).",
        fontsize=12,
    )
    axes = below.subplots(len(clients), len(patterns), squeeze=False, sharey="row")
    for row, client in enumerate(clients):
        drawn, highest = [], 1
        for col, pattern in enumerate(patterns):
            cell = Cell(pattern, client)
            if cell.key in keys:
                highest = max(highest, _timeline(axes[row][col], cell, results[cell.key]))
                drawn.append(axes[row][col])
            else:
                axes[row][col].set_axis_off()
        drawn[0].set_ylabel(
            f"{CLIENT_LEGEND[client].split(' (')[0]}\nrecords read, not stored", fontsize=9
        )
        # The row's scale on its first panel drawn (the first column's may be blank).
        drawn[0].tick_params(axis="y", labelleft=True)
        # Room above the lines for each panel's verdict.
        drawn[0].set_ylim(0, highest * 1.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _groups(cells: list[Cell]) -> list[list[Cell]]:
    """The cells by stop (consecutive cells with the same stop share a heading)."""
    groups: list[list[Cell]] = []
    for cell in cells:
        if groups and short_title(groups[-1][0])[0] == short_title(cell)[0]:
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def _answer(
    ax: Any, config: DemoConfig, cells: list[Cell], results: dict[str, list[RunResult]]
) -> None:
    """Records lost per run, a bar per cell under a heading per stop."""
    summaries = {cell.key: summarize(results[cell.key]) for cell in cells}
    lost = {cell.key: _lost(results[cell.key]) for cell in cells}
    widest = max(_bar_end(summaries[c.key]) for c in cells)
    right = max([widest, *(v for values in lost.values() for v in values), 10]) * 1.9
    ticks: list[tuple[float, str, dict[str, Any]]] = []
    y = 0.0
    for group in _groups(cells):
        stop = short_title(group[0])[0]
        shovels = group[0].pattern == "shovel"
        ticks.append((y, stop, {"fontweight": "bold", "fontsize": 11}))
        if shovels:
            ax.axhspan(y - 0.5, y + len(group) + 0.5, color=KEPT, alpha=0.08, linewidth=0)
        for cell in group:
            y += 1
            s = summaries[cell.key]
            colour = CLIENT_COLOURS[cell.client]
            ax.barh(y, s.lost_mean, height=0.7, color=colour)
            if s.uncounted_mean:
                # Not counted is not lost: a bar of its own, grey and hatched, after the loss.
                ax.barh(
                    y, s.uncounted_mean, left=s.lost_mean, height=0.7, color="none",
                    edgecolor=NOT_COUNTED, hatch="//",
                )  # fmt: skip
            if s.duplicated_mean:
                # Stored twice is not lost either, and no better: a bar of its own.
                ax.barh(
                    y, s.duplicated_mean, left=s.lost_mean + s.uncounted_mean, height=0.7,
                    color="none", edgecolor=DOUBLED, hatch="..",
                )  # fmt: skip
            ax.scatter(lost[cell.key], [y] * len(lost[cell.key]), s=16, color="black", zorder=3)
            end = max([_bar_end(s), *lost[cell.key]]) + right * 0.01
            ax.text(end, y, _verdict(s), va="center", fontsize=10, color=_colour(s))
            ticks.append((y, short_title(cell)[1], {"color": colour, "fontsize": 10}))
        y += 1
    ax.set_yticks([t[0] for t in ticks], [t[1] for t in ticks])
    for label, (_, _, style) in zip(ax.get_yticklabels(), ticks, strict=True):
        label.set(**style)
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(y - 0.5, -0.7)
    ax.set_xlim(0, right)
    ax.set_xlabel(
        f"records lost per run (bar: the mean of the {config.runs} runs; dot: each run)",
        fontsize=10,
    )
    ax.set_title(settings_line(config), fontsize=9, color="0.35")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    handles = [
        _patch(CLIENT_COLOURS[client], CLIENT_LEGEND[client])
        for client in dict.fromkeys(c.client for c in cells)
    ]
    if any(summaries[c.key].uncounted_max for c in cells):
        handles.append(_patch("none", "not counted (unknown, not lost)", NOT_COUNTED, "//"))
    if any(summaries[c.key].duplicated_max for c in cells):
        handles.append(_patch("none", "stored twice (mean a run)", DOUBLED, ".."))
    ax.legend(handles=handles, loc="lower right", fontsize=10)


def _bar_end(s: CellSummary) -> float:
    """Where a cell's bars end: lost, not counted, doubled."""
    return s.lost_mean + s.uncounted_mean + s.duplicated_mean


def _lost(runs: list[RunResult]) -> list[int]:
    """Each counted run's lost records."""
    return [r.tally.lost for r in runs if r.tally is not None]


def _verdict(s: CellSummary) -> str:
    """What a bar says beside it: the runs that lost, and the exit code."""
    if s.losing:
        text = (
            f"lost records in {s.losing} of {s.runs} runs: {figure(s.lost_mean)} a run on average"
        )
    elif s.incomplete:
        text = "none lost of what was counted"
    else:
        text = f"none lost in any of the {s.runs} runs"
    if s.duplicated_max:
        text += f", but stored {figure(s.duplicated_mean)} a run twice"
    if s.incomplete:
        runs = f"{s.incomplete} run{'s' * (s.incomplete > 1)}"
        text += f"; {runs} not counted to the end: up to {s.uncounted_max:,} unknown"
    return f"{text}  \N{MIDDLE DOT}  exit {exit_codes_text(s, short=True)}"


def _colour(s: CellSummary) -> str:
    if s.losing or s.duplicated_max:
        return LOST
    return NOT_COUNTED if s.incomplete else KEPT


def _patch(colour: str, label: str, edge: str | None = None, hatch: str | None = None) -> Any:
    from matplotlib.patches import Patch  # noqa: PLC0415

    return Patch(facecolor=colour, edgecolor=edge or colour, hatch=hatch, label=label)


def _timeline(ax: Any, cell: Cell, runs: list[RunResult]) -> int:
    """Read but not yet stored, over time around the signal, for each run; after the exit,
    what is left (lost, and not counted) in red. Returns the highest value drawn."""
    highest = 0
    exits = [r.stop_to_exit_s for r in runs if r.stop_to_exit_s is not None]
    right = max([*(e + 0.12 for e in exits), AFTER_MIN_S])
    colour = CLIENT_COLOURS[cell.client]
    for run in runs:
        exit_s = run.stop_to_exit_s
        shown = [(t, r - s) for t, r, s in run.timeline if t >= -BEFORE_S]
        if exit_s is None or not shown:
            continue
        before = [(t, gap) for t, gap in shown if t <= exit_s]
        highest = max([highest, *(gap for _, gap in before), shown[-1][1]])
        ax.step(
            [t for t, _ in before], [gap for _, gap in before], where="post", color=colour,
            linewidth=0.8, alpha=0.45,
        )  # fmt: skip
        left = shown[-1][1]
        # A count that could not be completed: what is left is not known to be lost.
        after = NOT_COUNTED if run.tally is None or run.count_incomplete else LOST
        ax.plot(
            [exit_s, right], [left, left], color=after if left else KEPT, linewidth=2.5,
            solid_capstyle="butt",
        )  # fmt: skip
        ax.plot([exit_s], [left], marker="o", markersize=4, color="black")
    ax.axvline(0, color="black", linewidth=1)
    ax.annotate(
        f"{cell.signal.name} \N{RIGHTWARDS ARROW}", (0, 1), xycoords=("data", "axes fraction"),
        xytext=(-3, -3), textcoords="offset points", ha="right", va="top", fontsize=8,
    )  # fmt: skip
    s = summarize(runs)
    ax.set_title(f"{short_title(cell)[0]}\nexit {exit_codes_text(s)}", fontsize=10)
    ax.annotate(
        _panel_verdict(s),
        (1, 1), xycoords="axes fraction", xytext=(-4, -3), textcoords="offset points",
        ha="right", va="top", fontsize=10, color=_colour(s), fontweight="bold",
    )  # fmt: skip
    ax.set_xlim(-BEFORE_S, right)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds from the signal (dot: the exit)", fontsize=8)
    ax.tick_params(labelsize=8)
    return highest


def _panel_verdict(s: CellSummary) -> str:
    """A timeline panel's verdict, in its corner."""
    if s.losing:
        return f"lost {figure(s.lost_mean)} a run"
    return f"none lost; {s.incomplete} not counted" if s.incomplete else "none lost"
