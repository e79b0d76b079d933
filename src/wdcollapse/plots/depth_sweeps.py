"""The depth sweeps: NC1/NC2 at convergence against the number of linear layers (Fig. 2), and
balancedness/negativity of the non-linear layers against non-linear depth (Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from ..runs import (
    Run,
    by_lr_and_nonlinear_depth,
    by_weight_decay_and_linear_depth,
    linear_depth_point,
    nonlinear_depth_point,
)
from .common import axis_label, save_figure, set_y_scale


def _errorbar(ax, xs, per_x_values, label, fmt):
    means = [np.nanmean(v) for v in per_x_values]
    stds = [np.nanstd(v) for v in per_x_values]
    ax.errorbar(xs, means, yerr=stds, fmt=fmt, capsize=3, label=label)
    return means


def _finish_axis(ax, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # depths are whole numbers
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty sweep has nothing to label
        ax.legend(fontsize=7)


def _finish_figure(fig, title: str, path_stem: str | Path) -> list[Path]:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def plot_linear_depth_sweep(runs: list[Run], path_stem: str | Path, title: str = "") -> list[Path]:
    grouped = by_weight_decay_and_linear_depth(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("nc1", "nc2")):
        shown = []
        for wd, by_depth in sorted(grouped.items()):
            xs = sorted(by_depth)
            for where, fmt in (("last", "o-"), ("first_linear", "s--")):
                values = [[linear_depth_point(r)[f"{metric}_{where}"] for r in by_depth[x]] for x in xs]
                label = f"wd {wd:g}, {'input of last layer' if where == 'last' else 'input of first linear layer'}"
                shown += _errorbar(ax, xs, values, label, fmt)
        set_y_scale(ax, shown, "log" if metric == "nc1" else "auto", decades=1.0)
        ax.set_ylabel(axis_label(metric), fontsize=8)
        _finish_axis(ax, "number of linear layers L2", f"{metric.upper()} at the end of training")
    return _finish_figure(fig, title, path_stem)


def _band(ax, xs, per_x_values, label, fmt, color) -> None:
    """The mean over seeds at each x as a line, with a band of one standard deviation."""
    means = np.array([np.nanmean(v) for v in per_x_values])
    stds = np.array([np.nanstd(v) for v in per_x_values])
    ax.plot(xs, means, fmt, color=color, label=label, markersize=4)
    ax.fill_between(xs, means - stds, means + stds, color=color, alpha=0.2, lw=0)


def plot_nonlinear_depth_sweep(runs: list[Run], path_stem: str | Path, title: str = "") -> list[Path]:
    grouped = by_lr_and_nonlinear_depth(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, ("balancedness", "negativity")):
        for i, (lr, by_depth) in enumerate(sorted(grouped.items())):
            xs = sorted(by_depth)
            for stat, fmt in (("mean", "o-"), ("min", "s--")):
                values = [[nonlinear_depth_point(r)[f"{metric}_{stat}"] for r in by_depth[x]] for x in xs]
                _band(ax, xs, values, f"{stat}, lr {lr:g}", fmt, colors[i % len(colors)])
        ax.set_ylabel(axis_label(metric), fontsize=8)
        _finish_axis(ax, "number of non-linear layers L1", f"{metric} of the non-linear layers (end of training)")
    seeds = sorted({len(v) for by_depth in grouped.values() for v in by_depth.values()}) or [0]
    per_point = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    note = f"{per_point} seed{'' if seeds == [1] else 's'} per point, band = 1 std over seeds"
    return _finish_figure(fig, f"{title}  ({note})", path_stem)
