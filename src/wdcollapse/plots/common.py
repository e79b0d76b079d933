"""Shared plotting helpers: atomic saving, mean +- std over seeds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import keys  # noqa: E402
from ..io import atomic_write  # noqa: E402
from ..runs import Run  # noqa: E402


# Each metric's name and definition, for axis labels (README "Metrics").
def axis_label(metric: str) -> str:
    """A metric family's y label (keys.FAMILIES owns it)."""
    return keys.FAMILY[metric].axis


def save_figure(fig, path_stem: str | Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf`, each atomically."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        target = stem.with_suffix(f".{ext}")
        with atomic_write(target, "wb") as f:
            fig.savefig(f, format=ext, dpi=150, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


def mean_std_over_runs(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs common to all runs, and the mean and std of `key` across runs there."""
    series = [dict(zip(*run.series(key))) for run in runs]
    series = [s for s in series if s]
    if not series:
        return np.array([]), np.array([]), np.array([])
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[e] for e in epochs] for s in series], dtype=float)
    return np.array(epochs), values.mean(0), values.std(0)


def usable(runs: list[Run]) -> list[Run]:
    """Runs with at least one evaluated epoch (finished, diverged or still running)."""
    return [r for r in runs if r.history]


def annotate_diverged(ax, runs: list[Run]) -> None:
    diverged = [r for r in runs if r.status == "diverged"]
    if diverged:
        ax.text(
            0.01,
            0.01,
            f"{len(diverged)} run(s) diverged",
            transform=ax.transAxes,
            fontsize=7,
            color="crimson",
            va="bottom",
        )


def set_y_scale(ax, values, scale: str, decades: float = 1.5) -> None:
    """ "log" (what the theory has falling exponentially; linear if nothing is positive), "linear",
    or "auto": log where the values span more than `decades` decades."""
    if scale == "log" and any(v is not None and v > 0 for v in values):
        ax.set_yscale("log")
    elif scale == "auto":
        log_scale_if_spanning_decades(ax, values, decades)


def log_scale_if_spanning_decades(ax, values, decades: float = 1.5) -> None:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0])
    if values.size and np.log10(values.max() / values.min()) > decades:
        ax.set_yscale("log")
