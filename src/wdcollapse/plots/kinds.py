"""The plotters a figure in the registry (wdcollapse.figures.FIGURES) names: each takes the
figure's runs, the path stem of its files and its FigureSpec, draws its panels and returns the
files it wrote. A new kind of figure is one function here and the registry entry that names it."""

from __future__ import annotations

from pathlib import Path

from .. import keys
from ..runfiles import RunFiles
from .depth_sweeps import plot_linear_depth_sweep, plot_nonlinear_depth_sweep
from .theory import plot_theorem31, plot_two_phases
from .training import plot_grams, plot_training_curves


def training(runs: list, stem: Path, spec) -> list[Path]:
    """Per-layer training curves with a band over seeds, the linear head's Gram matrices of the
    first finished run and, where the runs hold Theorem 3.1's quantities, its bound."""
    made = plot_training_curves(runs, f"{stem}_curves", spec.first_plotted_layer, spec.title)
    finished = [r for r in runs if r.status == "finished" and r.grams]
    if finished:
        made += plot_grams(finished[0], f"{stem}_grams", spec.title)
    if any(keys.theory("dist") in r.final for r in runs):
        made += plot_theorem31(runs, f"{stem}_theorem31", spec.title)
    return made


def linear_depth(runs: list, stem: Path, spec) -> list[Path]:
    """NC1 and NC2 against the depth of the linear head (Fig. 2)."""
    return plot_linear_depth_sweep(runs, stem, spec.title)


def nonlinear_depth(runs: list, stem: Path, spec) -> list[Path]:
    """Balancedness and negativity of the non-linear layers against their depth (Fig. 3)."""
    return plot_nonlinear_depth_sweep(runs, stem, spec.title)


def theory(runs: list, stem: Path, spec) -> list[Path]:
    """Theorem 3.1's bound over training and the two phases of Theorem 4.4 (theory_gd)."""
    made = plot_theorem31(runs, f"{stem}_theorem31", spec.title)
    finished = [r for r in runs if RunFiles(r.path).steps.exists()]
    if finished:
        made += plot_two_phases(finished[0], f"{stem}_phases", spec.title)
    return made


def stability(runs: list, stem: Path, spec) -> list[Path]:
    """Beyond the paper: the sharpness and the batch sharpness over training against 2(1+beta)/eta
    and 2/eta, the learning-rate drop marked (stability_mnist, claim 5)."""
    from .beyond import plot_stability

    return plot_stability(runs, stem, spec.title)


def deep_head(runs: list, stem: Path, spec) -> list[Path]:
    """Beyond the paper: NC2, cond(W_L) and the penultimate class means' rank against a linear head's
    depth past the paper's 5 layers (deep_head_mnist, claim 6)."""
    from .beyond import plot_deep_head

    return plot_deep_head(runs, stem, spec.title)


def width(runs: list, stem: Path, spec) -> list[Path]:
    """Beyond the paper: final NC1 and linear-head balancedness against n1 / N (width_mnist, claim 7)."""
    from .beyond import plot_width

    return plot_width(runs, stem, spec.title)
