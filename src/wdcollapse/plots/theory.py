"""Theory figures: Theorem 3.1's bounds next to the measured quantities, and the two phases of
full-batch gradient descent (theory_gd) with the theory's balancing rate."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .. import keys
from ..io import read_json, read_jsonl
from ..runfiles import RunFiles
from ..runs import Run
from .common import save_figure, usable


def plot_theorem31(runs: list[Run], path_stem: str | Path, title: str = "") -> list[Path]:
    """Per seed: measured NC1 of Z_(L-1) and its bound; measured ||Z_(L-1) - W_L^+ Y||_F and its
    bound. Bounds exist only where the theorem's precondition holds (eps1 small enough)."""
    runs = usable(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        (keys.theory("nc1"), keys.theory("nc1_bound"), "NC1 of Z_(L-1)"),
        (keys.theory("dist"), keys.theory("dist_bound"), "||Z_(L-1) - W_L^+ Y||_F"),
    )
    colors = plt.get_cmap("tab10")
    for ax, (measured, bound, label) in zip(axes, panels):
        for i, run in enumerate(runs):
            seed = run.config.get("seed")
            epochs, values = run.series(measured)
            ax.plot(np.maximum(epochs, 0.5), values, "-", color=colors(i), lw=1.5, label=f"measured, seed {seed}")
            rows = [r for r in run.history if r.get(keys.theory("precondition")) and r.get(bound) is not None]
            ax.plot(
                [max(r["epoch"], 0.5) for r in rows],
                [r[bound] for r in rows],
                "--",
                color=colors(i),
                lw=1.2,
                label=f"Theorem 3.1 bound, seed {seed}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: Theorem 3.1 (dashed: the bound, drawn where its precondition holds)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def plot_two_phases(run: Run, path_stem: str | Path, title: str = "") -> list[Path]:
    """Loss and largest linear-head balancedness error per gradient-descent step, the phase
    boundary, and the theory's (1 - eta lambda)^(2k) decay from there."""
    steps = read_jsonl(RunFiles(run.path).steps)
    info = read_json(RunFiles(run.path).theory, default={})
    rate = info.get("rate", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        k = np.array([r["step"] for r in steps], dtype=float)
        axes[0].plot(k, [r["loss"] for r in steps], lw=1.5, label="C_0 = 1/2 ||Z_L - Y||_F^2")
        axes[0].plot(k, [r["reg_loss"] for r in steps], lw=1.0, ls=":", label="C_lambda (with weight decay)")
        err = np.array([r["balancedness_error"] for r in steps], dtype=float)
        axes[1].plot(k, err, lw=1.5, label="max_l ||W_(l+1)^T W_(l+1) - W_l W_l^T||_op (linear head)")
        start = rate.get("phase2_start_step")
        if start is not None and rate.get("theory_factor"):
            i0 = int(np.searchsorted(k, start))
            ref = err[i0] * rate["theory_factor"] ** (k[i0:] - k[i0])
            axes[1].plot(k[i0:], ref, "k--", lw=1.0, label="(1 - eta lambda)^(2k) from the phase boundary")
            for ax in axes:
                ax.axvline(start, color="gray", lw=0.8, ls="-.", label="phase 2 starts")
        if rate.get("fitted_factor"):
            axes[1].set_title(
                f"balancedness error: fitted {rate['fitted_factor']:.8f}/step, theory {rate['theory_factor']:.8f}/step",
                fontsize=9,
            )
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("gradient-descent step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not axes[1].get_title():
        axes[1].set_title("balancedness error", fontsize=10)
    axes[0].set_title("loss (phase 1: falls; phase 2: settled)", fontsize=10)
    fig.suptitle(f"{title} (seed {run.config.get('seed')})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)
