"""A run's health log as one PNG: loss and the objective's parts, lr, RankMe, feature std and online kNN by step.

python -m training plot RUN [-o curves.png]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btembed.plotting import new_figure, save_png

from .config import ConfigError
from .metrics import METRICS
from .run_summary import part_names, read_metrics

COLUMNS = 4
SMOOTH_FROM = 30  # points; a longer noisy series gets a running mean drawn over its faint raw values


@dataclass
class Panel:
    """One small chart: a title and the (step, value) points of one quantity."""

    title: str
    steps: list
    values: list
    percent: bool = False  # values are fractions shown as %
    noisy: bool = False  # per-batch numbers (loss and its parts): smoothed when long
    ceiling: list | None = None  # the largest possible value at each step, drawn dotted (RankMe's)


def run_records(run: str | Path) -> list[dict]:
    """The health records of a run folder, or a one-line error when it has none."""
    path = Path(run) / METRICS
    if not path.is_file():
        raise ConfigError(f"{run} has no {METRICS}; pass the --out folder of a training run")
    rows = read_metrics(Path(run))
    if not any("loss" in r for r in rows):
        raise ConfigError(f"{path} holds no training records yet; plot again after the first logged step")
    return rows


def panels(rows: list[dict]) -> list[Panel]:
    """What the figure shows, in order: loss, each part the objective logged, lr, RankMe, feature std, kNN."""
    train = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in train]
    names = list(dict.fromkeys(name for r in train for name in part_names(r)))  # every part any record has
    out = [Panel("loss", steps, [r["loss"] for r in train], noisy=True)]
    for name in names:
        have = [r for r in train if name in r]
        out.append(Panel(f"part: {name}", [r["step"] for r in have], [r[name] for r in have], noisy=True))
    out.append(Panel("learning rate", steps, [r["lr"] for r in train]))
    # The ceiling grows while the first intervals fill the rankme_samples window.
    ceiling = [r.get("rankme_max") for r in train]
    out.append(Panel(f"RankMe (of {ceiling[-1]})" if ceiling[-1] else "RankMe", steps, [r["rankme"] for r in train],
                     ceiling=ceiling if all(ceiling) else None))
    out.append(Panel("feature std (1 = spread, 0 = collapse)", steps, [r["feat_std"] for r in train]))
    knn = [r for r in rows if "knn_top1" in r]
    if knn:
        out.append(Panel("online kNN top-1", [r["step"] for r in knn], [r["knn_top1"] for r in knn], percent=True))
    return out


def running_mean(values: list, window: int) -> list:
    """The mean of each value and the window - 1 before it (fewer at the start)."""
    sums = np.cumsum([0.0, *values])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def alarm_steps(rows: list[dict]) -> list[int]:
    """Steps whose record raised the collapse alarm."""
    return [r["step"] for r in rows if r.get("alarm")]


def draw(rows: list[dict], title: str):
    """The figure of a run's records: one panel per quantity, collapse alarms as red lines on every panel."""
    shown = panels(rows)
    columns = min(COLUMNS, len(shown))
    lines = -(-len(shown) // columns)
    figure = new_figure(3.4 * columns, 2.5 * lines + 0.4)  # first: it says how to install a missing matplotlib
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    alarms = alarm_steps(rows)
    last = max(max(p.steps) for p in shown if p.steps)
    for ax, panel in zip(axes, shown):
        few = len(panel.steps) < SMOOTH_FROM  # sparse series (kNN each epoch, short runs) show their points
        smooth = panel.noisy and not few
        ax.plot(panel.steps, panel.values, marker="o" if few else None, markersize=3, linewidth=1.0 if smooth else 1.4,
                alpha=0.35 if smooth else 1.0, color="tab:blue")
        if smooth:
            window = max(3, len(panel.values) // 15)
            ax.plot(panel.steps, running_mean(panel.values, window), linewidth=1.6, color="tab:blue",
                    label=f"mean of {window} records")
            ax.legend(fontsize=7, loc="upper right", frameon=False)
        if panel.ceiling:
            ax.step(panel.steps, panel.ceiling, where="pre", linestyle=":", color="grey", linewidth=1)
        if panel.percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        # Every panel on the same step axis, the kNN measured before training (step 0) included.
        ax.set_xlim(-0.02 * max(last, 1), 1.02 * max(last, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for step in alarms:
            ax.axvline(step, color="tab:red", alpha=0.25, linewidth=1)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    figure.suptitle(title + (f" — collapse alarm at {len(alarms)} record(s), red lines" if alarms else ""),
                    fontsize=11)
    return figure


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw a run's curves into one PNG (default RUN/curves.png); returns its path."""
    rows = run_records(run)
    train = [r for r in rows if "loss" in r]
    title = f"{Path(run).resolve().name}: {len(train)} records, step {train[-1]['step']}"
    return save_png(draw(rows, title), Path(out) if out else Path(run) / "curves.png")
