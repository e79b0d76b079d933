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
