"""Per-layer training curves of NC1, NC2, balancedness and negativity (the paper's MLP and
ResNet figures): mean over seeds with a band of one standard deviation."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .. import keys
from ..runs import Run, gram_keys
from .common import annotate_diverged, axis_label, mean_std_over_runs, save_figure, set_y_scale, usable


def layer_label(layer: int, nonlinear_depth: int, metric: str) -> str:
    if metric == "balancedness":
        kind = "linear" if layer > nonlinear_depth else ("ReLU/linear" if layer == nonlinear_depth else "ReLU")
        return f"pair {layer},{layer + 1} ({kind})"
    return f"layer {layer} ({'linear' if layer > nonlinear_depth else 'ReLU'})"


def plot_training_curves(runs: list[Run], path_stem: str | Path, first_layer: int = 1, title: str = "") -> list[Path]:
    runs = usable(runs)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    if not runs:
        for ax in axes:
            ax.text(0.5, 0.5, "no finished runs", ha="center", transform=ax.transAxes)
        return save_figure(fig, path_stem)
    L, L1 = runs[0].num_layers, runs[0].nonlinear_depth
    cmap = plt.get_cmap("viridis")
    for ax, family in zip(axes, keys.FAMILIES):  # log axes where the theory predicts exponential decay
        metric, panel_title, scale = family.key, family.title, family.scale
        shown = []
        for layer in range(first_layer, L + 1):
            key = keys.layer(metric, layer)
            epochs, mean, std = mean_std_over_runs(runs, key)
            if epochs.size == 0:
                continue
            color = cmap((layer - first_layer) / max(1, L - first_layer))
            style = "-" if layer > L1 else "--"
            ax.plot(epochs, mean, style, color=color, lw=1.6, label=layer_label(layer, L1, metric))
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
            shown.extend(mean.tolist())
        set_y_scale(ax, shown, scale)
        ax.set_xlabel("epoch")
        ax.set_ylabel(axis_label(metric), fontsize=8)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=7, ncol=1 if len(shown) < 400 else 2)
        annotate_diverged(ax, runs)
    fig.suptitle(f"{title}  ({len(runs)} seed(s), band = 1 std; dashed = ReLU, solid = linear)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def plot_grams(run: Run, path_stem: str | Path, title: str = "") -> list[Path]:
    saved = run.grams or {}
    return save_figure(gram_figure(saved.get("grams", {}), gram_keys(run), saved.get("epoch", "?"), title), path_stem)


def gram_figure(grams: dict, names: list[str], epoch, title: str = ""):
    """The paper's bottom row: the class-mean Gram matrices `names` of `grams` (grams.json's
    "grams"), each scaled by its largest entry."""
    keys = [k for k in names if k in grams]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.2 * max(1, len(keys)), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        gram = np.array(grams[key])
        scaled = gram / np.abs(gram).max()
        im = ax.imshow(scaled, cmap="RdBu_r", vmin=-1, vmax=1)
        name = (
            f"pre-activation of layer {key.split('_')[1]} (before the last ReLU)"
            if key.startswith("preact")
            else f"output of layer {key.split('_')[1]} (linear)"
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title} class-mean Gram matrices M M^T / max, epoch {epoch}", fontsize=11)
    fig.tight_layout()
    return fig
