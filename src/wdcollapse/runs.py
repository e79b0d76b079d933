"""Reading run directories: config, metrics history, summary, class-mean Gram matrices.
Plots and reports read only these files, never a live model."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import keys
from .arguments import checked
from .io import read_json, read_jsonl
from .runfiles import RunFiles


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict
    history: list[dict] = field(default_factory=list)
    grams: dict | None = None

    @property
    def status(self) -> str:
        return self.summary.get("status", "missing")

    @property
    def nonlinear_depth(self) -> int:
        return int(self.config["model"]["nonlinear_depth"])

    @property
    def linear_depth(self) -> int:
        return int(self.config["model"]["linear_depth"])

    @property
    def num_layers(self) -> int:
        return self.nonlinear_depth + self.linear_depth

    @property
    def final(self) -> dict:
        """The last evaluated row (for a diverged run: the last one before it diverged)."""
        return self.history[-1] if self.history else {}

    def get(self, key: str):
        """A config value by dotted key (`optim.lr`; a list's item by its index, as Hydra's
        overrides name it: `model.width.0`); None if absent."""
        node = self.config
        for part in key.split("."):
            if isinstance(node, list) and part.isdigit():
                node = node[int(part)] if int(part) < len(node) else None
            else:
                node = node.get(part) if isinstance(node, dict) else None
        return node

    def series(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.history if r.get(key) is not None]
        return [r["epoch"] for r in rows], [r[key] for r in rows]


def linear_depth_point(run: Run) -> dict[str, float]:
    """NC1 and NC2 at the end of training, of the features entering the last layer (Z_{L-1})
    and of those entering the first linear layer (Z_{L1})."""
    L, L1, row = run.num_layers, run.nonlinear_depth, run.final
    return {
        "nc1_last": row.get(keys.layer(keys.NC1, L - 1)),
        "nc2_last": row.get(keys.layer(keys.NC2, L - 1)),
        "nc1_first_linear": row.get(keys.layer(keys.NC1, L1)),
        "nc2_first_linear": row.get(keys.layer(keys.NC2, L1)),
    }


def nonlinear_depth_point(run: Run, row: dict | None = None) -> dict[str, float]:
    """Min and mean balancedness over the pairs of non-linear layers (l, l+1), l < L1, and min
    and mean negativity over the non-linear layers, in `row` (default: the end of training)."""
    L1, row = run.nonlinear_depth, run.final if row is None else row
    bal = [row.get(keys.layer(keys.BALANCEDNESS, l)) for l in range(1, L1)]
    neg = [row.get(keys.layer(keys.NEGATIVITY, l)) for l in range(1, L1 + 1)]
    bal = [v for v in bal if v is not None]
    neg = [v for v in neg if v is not None]
    nan = float("nan")
    return {
        "balancedness_min": min(bal) if bal else nan,
        "balancedness_mean": float(np.mean(bal)) if bal else nan,
        "negativity_min": min(neg) if neg else nan,
        "negativity_mean": float(np.mean(neg)) if neg else nan,
    }


def gram_keys(run: Run) -> list[str]:
    """The paper's three Gram matrices of `run` (keys.paper_grams)."""
    return keys.paper_grams(run.nonlinear_depth, run.num_layers)


def group_by(runs: list[Run], x_of, group_of) -> dict:
    """{group: {x: [runs]}} for runs that have a final row."""
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.history:
            grouped[group_of(run)][x_of(run)].append(run)
    return grouped


def by_weight_decay_and_linear_depth(runs: list[Run]) -> dict:
    """The linear-depth sweeps (Fig. 2): {weight decay: {linear depth: [runs]}}."""
    return group_by(runs, lambda r: r.linear_depth, lambda r: float(r.get("optim.weight_decay")))


def by_lr_and_nonlinear_depth(runs: list[Run]) -> dict:
    """The non-linear-depth sweep (Fig. 3): {learning rate: {non-linear depth: [runs]}}."""
    return group_by(runs, lambda r: r.nonlinear_depth, lambda r: float(r.get("optim.lr")))


@checked
def load_run(path: str | Path) -> Run | None:
    """A run directory as written by `wdcollapse-train`.

    Args:
        path: the run directory.

    Returns:
        Its `Run`, or None if it has no config.yaml yet (a run that has not started).

    Raises:
        ArgumentError: `path` is not a str or Path.

    Example::

        run = load_run("outputs/my_sweep/0_seed=0")
        run.status, run.final["nc1/layer_8"]
    """
    path = Path(path)
    files = RunFiles(path)
    config_path = files.config
    if not config_path.exists():
        return None
    config = yaml.safe_load(config_path.read_text())
    summary = read_json(files.summary, default={})
    grams = read_json(files.grams)
    return Run(path, config, summary, read_jsonl(files.metrics), grams)


@checked
def load_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run directory directly under `sweep_dir` (a folder of a multirun, a figure's `runs/`
    folder, or any folder of run directories), sorted by path, read without torch.

    Args:
        sweep_dir: the folder that holds the run directories.

    Returns:
        A list of `Run` (config, summary, metrics history, Gram matrices; `run.series(key)`).

    Raises:
        FileNotFoundError: `sweep_dir` does not exist (a mistyped path must not read as an
            empty sweep); one line.
        ArgumentError: `sweep_dir` is not a str or Path.

    Example::

        for run in load_runs("outputs/my_sweep"):
            epochs, nc1 = run.series(f"nc1/layer_{run.num_layers - 1}")
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"load_runs({str(sweep_dir)!r}): no such folder; give the folder that holds the run directories "
            "(e.g. hydra.sweep.dir of a multirun, or outputs/reproduce/<preset>/runs/<figure>)"
        )
    runs = (load_run(p) for p in sorted(sweep_dir.iterdir()) if p.is_dir())
    return [r for r in runs if r is not None]
