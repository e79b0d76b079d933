"""The figures beyond the paper (claims 5-7): the sharpness of SGD against its stability thresholds
over training (stability_mnist), NC2, the conditioning of W_L and the rank of the penultimate class
means against a linear head's depth past the paper's 5 layers (deep_head_mnist), and collapse
against the first layer's width relative to the training set (width_mnist). Each draws the rule's
bounds beside the data, so that a verdict can be read off the figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .. import claims, keys
from ..runs import Run, by_weight_decay_and_linear_depth
from .common import axis_label, mean_std_over_runs, save_figure, set_y_scale, usable


def _line_with_band(ax, runs: list[Run], key: str, label: str, color, style: str = "o-") -> np.ndarray:
    """The mean over seeds of `key` against the epoch with a band of one standard deviation; the
    plotted means."""
    epochs, mean, std = mean_std_over_runs(runs, key)
    if epochs.size:
        ax.plot(epochs, mean, style, color=color, lw=1.6, markersize=3, label=label)
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    return mean


def lr_drop_epoch(run: Run) -> float | None:
    """The epoch at which the learning rate drops (optim.lr_drop_at x trainer.max_epochs), or None."""
    at, epochs = run.get("optim.lr_drop_at"), run.get("trainer.max_epochs")
    return None if at is None or epochs is None else float(at) * float(epochs)


def plot_stability(runs: list[Run], path_stem: str | Path, title: str = "") -> list[Path]:
    """Three panels against the epoch (mean over seeds, band = 1 std): the sharpness (top Hessian
    eigenvalue of the regularised loss) and the batch sharpness, each with 2(1+beta)/eta and 2/eta
    at the current learning rate (from the first trained epoch on); then each seed's both as a
    fraction of 2(1+beta)/eta with claim 5's band."""
    runs = [r for r in usable(runs) if any(row.get(keys.SHARPNESS) is not None for row in r.history)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = (
        (keys.SHARPNESS, "sharpness (top Hessian eigenvalue, fixed subset)"),
        (keys.BATCH_SHARPNESS, "batch sharpness (SGD's mini-batches)"),
    )
    for ax, (key, panel_title) in zip(axes[:2], panels):
        shown = list(_line_with_band(ax, runs, key, panel_title.split(" (")[0], colors[0]))
        for threshold, label, style in (
            (keys.MOMENTUM_THRESHOLD, "2(1+beta)/eta", "k--"),
            (keys.GD_THRESHOLD, "2/eta", "k:"),
        ):
            epochs, mean, _ = mean_std_over_runs(runs, threshold)
            trained = epochs > 0  # epoch 0's threshold is the warm-up's first learning rate: off the scale
            if trained.any():
                ax.plot(epochs[trained], mean[trained], style, lw=1.2, label=label, drawstyle="steps-post")
                shown += list(mean[trained])
        set_y_scale(ax, shown, "log")
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(axis_label(keys.SHARPNESS) if key == keys.SHARPNESS else r"$g_B^T H_B g_B / \|g_B\|^2$")
    ratio_ax = axes[2]
    low, high = claims.EDGE_BAND
    ratio_ax.axhspan(low, high, color="green", alpha=0.12, label=f"claim 5: [{low:g}, {high:g}] at the peak lr")
    ratio_ax.axhline(1.0, color="k", ls="--", lw=1.0)
    for i, (key, label) in enumerate(((keys.BATCH_SHARPNESS, "batch sharpness"), (keys.SHARPNESS, "sharpness"))):
        for j, run in enumerate(runs):
            rows = [
                r for r in run.history if r["epoch"] > 0 and r.get(key) is not None and r.get(keys.MOMENTUM_THRESHOLD)
            ]
            ratio_ax.plot(
                [r["epoch"] for r in rows],
                [r[key] / r[keys.MOMENTUM_THRESHOLD] for r in rows],
                "o-" if i == 0 else "s--",
                color=colors[i],
                lw=1.2,
                markersize=3,
                alpha=1.0 if j == 0 else 0.6,
                label=f"{label}, seed {run.config.get('seed')}",
            )
    ratio_ax.set_yscale("log")  # the band near 1 and values far below it, both readable
    ratio_ax.set_title("as a fraction of 2(1+beta)/eta (log scale)", fontsize=10)
    ratio_ax.set_ylabel(r"$\lambda / (2(1+\beta)/\eta)$")
    drops = sorted({d for d in (lr_drop_epoch(r) for r in runs) if d is not None})
    for ax in axes:
        for d in drops:
            ax.axvline(d, color="crimson", lw=1.0, ls="-.", label=f"lr drop (epoch {d:g})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not runs:
        axes[0].text(0.5, 0.5, "no runs with the sharpness", ha="center", transform=axes[0].transAxes)
    fig.suptitle(f"{title}  ({len(runs)} seed(s), band = 1 std)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def _per_depth(by_depth: dict, key_of) -> tuple[list[int], list[float], list[float]]:
    depths = sorted(by_depth)
    values = [[r.final.get(key_of(r)) for r in by_depth[d]] for d in depths]
    values = [[np.nan if v is None else float(v) for v in vs] for vs in values]
    return depths, [float(np.nanmean(v)) for v in values], [float(np.nanstd(v)) for v in values]


def plot_deep_head(runs: list[Run], path_stem: str | Path, title: str = "") -> list[Path]:
    """Against the number of linear layers, per weight decay (mean over seeds, error bar = 1 std):
    NC2 of Z_(L-1), the condition number of the last weight W_L, and the numerical rank of the
    centred class means of Z_(L-1) beside K - 1; the paper's deepest head (5) marked."""
    grouped = by_weight_decay_and_linear_depth(usable(runs))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    panels = (
        (lambda r: keys.layer(keys.NC2, r.num_layers - 1), "NC2 of Z_(L-1)", axis_label(keys.NC2), "auto"),
        (
            lambda r: keys.layer(keys.WEIGHT_COND, r.num_layers),
            "condition number of W_L",
            axis_label(keys.WEIGHT_COND),
            "auto",
        ),
        (
            lambda r: keys.layer(keys.RANK, r.num_layers - 1),
            "rank of the class means of Z_(L-1)",
            axis_label(keys.RANK),
            "linear",
        ),
    )
    K = next((int(r.get("data.num_classes") or 10) for r in runs), 10)
    for ax, (key_of, panel_title, ylabel, scale) in zip(axes, panels):
        shown = []
        for wd, by_depth in sorted(grouped.items()):
            depths, means, stds = _per_depth(by_depth, key_of)
            ax.errorbar(depths, means, yerr=stds, fmt="o-", capsize=3, label=f"wd {wd:g}")
            shown += means
        set_y_scale(ax, shown, scale, decades=1.0)
        ax.axvline(claims.PAPER_LINEAR_DEPTH, color="gray", lw=0.8, ls=":", label="the paper's deepest head")
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("number of linear layers L2")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--", label="1 (orthogonal equal-norm means)")
    axes[2].axhline(K - 1, color="k", lw=0.8, ls="--", label=f"K - 1 = {K - 1}")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}  (end of training; error bar = 1 std over seeds)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def plot_width(runs: list[Run], path_stem: str | Path, title: str = "") -> list[Path]:
    """Against n1 / N (log scale; every seed a point, the seed mean a line): the final NC1 of
    Z_(L-1) and the final largest balancedness of the linear-head pairs, with claim 7's bounds
    and n1 = N (Theorem 4.4's assumption) marked."""
    runs = [r for r in usable(runs) if r.status != "diverged"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    points = []
    for run in runs:
        L1, L = run.nonlinear_depth, run.num_layers
        balancedness = [run.final.get(keys.layer(keys.BALANCEDNESS, l)) for l in range(L1 + 1, L)]
        balancedness = [np.nan if v is None else v for v in balancedness]
        points.append(
            (
                claims.first_width(run) / claims.num_samples(run),
                run.final.get(keys.layer(keys.NC1, L - 1)),
                float(np.max(balancedness)) if balancedness else np.nan,
            )
        )
    panels = (
        ("final NC1 of Z_(L-1)", axis_label(keys.NC1), claims.NC1_COLLAPSED),
        ("final largest linear-head balancedness", "max over linear pairs of the balancedness", claims.LINEAR_BALANCED),
    )
    for i, (ax, (panel_title, ylabel, bound)) in enumerate(zip(axes, panels)):
        xs = sorted({p[0] for p in points})
        values = [[np.nan if p[i + 1] is None else p[i + 1] for p in points if p[0] == x] for x in xs]
        ax.plot([p[0] for p in points], [p[i + 1] for p in points], "o", color="C0", alpha=0.5, label="a seed")
        ax.plot(xs, [np.nanmean(v) for v in values], "-", color="C0", lw=1.6, label="mean over seeds")
        ax.axhline(bound, color="green", lw=1.0, ls="--", label=f"claim 7: collapsed below {bound:g}")
        ax.axvline(1.0, color="crimson", lw=1.0, ls="-.", label="n1 = N (Theorem 4.4 assumes n1 >= N)")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        set_y_scale(ax, [v for vs in values for v in vs], "log")
        ax.set_xlabel("n1 / N (first layer's width over the training samples)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    N = sorted({claims.num_samples(r) for r in runs})
    fig.suptitle(f"{title}  (N = {', '.join(map(str, N)) or '?'}, end of training)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)
