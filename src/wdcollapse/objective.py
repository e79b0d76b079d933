"""What a finished run returns to a sweeper that reads values (hydra/sweeper=optuna): named
quantities of its run directory, each to be minimised, chosen by the `objective` settings of
conf/train.yaml (README, "Searching a recipe").

    measure("outputs/runs/default/2026-12-06_...", ["balancedness", "wall_seconds"])
    # {"balancedness": 0.0123, "wall_seconds": 81.4}

Every quantity is read from the files the run wrote (summary.json and its final metrics row,
metrics.jsonl), never from a live model. A run that did not finish (failed, diverged, refused by a
setting) gets `failed` for every quantity, and so does a quantity the run cannot give (no linear
pair, no test accuracy, a value that is not finite, pairs that never fell below the bound): one bad
trial costs that trial only, and the sampler learns that its settings are bad."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import keys
from .claims import LINEAR_BALANCED
from .io import read_json, read_jsonl
from .names import ObjectiveName, names
from .runfiles import RunFiles

log = logging.getLogger("wdcollapse")

OBJECTIVES: tuple[str, ...] = names(ObjectiveName)
BALANCED_BELOW = LINEAR_BALANCED  # claim 1's bound on the final balancedness of the linear pairs
FAILED = 1.0e9  # finite: Optuna 2.10's multi-objective TPE draws from NaN weights when a value is inf


def _layers(row: dict, metric: str) -> set[int]:
    """The layers (or pairs) `row` holds a value of `metric` for (its key, even if null)."""
    return {parsed[1] for key in row if (parsed := keys.parse_layer(key)) and parsed[0] == metric}


def linear_pairs(row: dict) -> list[int]:
    """The pairs (l, l+1) of a metrics row whose two layers are both linear. The row tells the
    layout itself, whatever the model: balancedness is recorded for every pair, negativity for the
    activated layers only (wdcollapse.interfaces); in the paper's layout these are L1+1..L-1."""
    activated = _layers(row, keys.NEGATIVITY)
    return sorted(l for l in _layers(row, keys.BALANCEDNESS) if l not in activated and l + 1 not in activated)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def worst_linear_pair(row: dict) -> float | None:
    """The largest balancedness of the linear pairs in `row` (claim 1's `linear_final_max` of the
    final row); None without a linear pair or when one of them is not finite."""
    values = [_finite(row.get(keys.layer(keys.BALANCEDNESS, l))) for l in linear_pairs(row)]
    return max(values) if values and None not in values else None


def steps_to_balance(rows: list[dict], below: float) -> int | None:
    """The optimizer steps done at the first evaluated epoch where every linear pair's
    balancedness is below `below` (at the resolution of the metric schedule); None if never."""
    for row in sorted(rows, key=lambda r: r[keys.EPOCH]):
        worst = worst_linear_pair(row)
        if worst is not None and worst < below:
            return int(row[keys.STEP])
    return None


def _nc1_penultimate(final: dict) -> float | None:
    layers = _layers(final, keys.NC1)  # NC1 is recorded for every layer 1..L
    return final.get(keys.layer(keys.NC1, max(layers) - 1)) if len(layers) >= 2 else None


def _test_error(final: dict) -> float | None:
    accuracy = _finite(final.get(keys.TEST_ACC))
    return None if accuracy is None else 1.0 - accuracy


# name -> (summary, metrics rows, balanced_below) -> value or None; the rows are read only when needed
QUANTITIES: dict[str, Callable[[dict, Callable[[], list[dict]], float], float | None]] = {
    # the final balancedness of the least balanced linear pair (claim 1 asks < BALANCED_BELOW)
    "balancedness": lambda summary, rows, below: worst_linear_pair(summary.get("final") or {}),
    "steps_to_balance": lambda summary, rows, below: steps_to_balance(rows(), below),
    # the final NC1 of the penultimate layer Z_(L-1), the features the last weight reads
    "nc1": lambda summary, rows, below: _nc1_penultimate(summary.get("final") or {}),
    "test_error": lambda summary, rows, below: _test_error(summary.get("final") or {}),
    "train_loss": lambda summary, rows, below: (summary.get("final") or {}).get(keys.TRAIN_LOSS),
    # the run's wall time in seconds, summed over resumed segments (summary.json)
    "wall_seconds": lambda summary, rows, below: summary.get("wall_seconds"),
}
assert set(QUANTITIES) == set(OBJECTIVES), "names.ObjectiveName and QUANTITIES name the same objectives"


def measure(
    run_dir: str | Path, objectives: Sequence[str], balanced_below: float = BALANCED_BELOW, failed: float = FAILED
) -> dict[str, float]:
    """{name: value} of the run in `run_dir` for each of `objectives` (names of OBJECTIVES, each
    minimised): `failed` for every one if the run did not finish, and for one it cannot give."""
    files = RunFiles(run_dir)
    summary = read_json(files.summary, default=None) or {}
    status = summary.get("status", "no summary")
    if status != "finished":
        log.warning("%s: %s, objective %s = %g (objective.failed)", run_dir, status, ", ".join(objectives), failed)
        return dict.fromkeys(objectives, float(failed))
    history: list[list[dict]] = []

    def rows() -> list[dict]:
        if not history:
            history.append(read_jsonl(files.metrics))
        return history[0]

    values = {}
    for name in objectives:
        quantity = QUANTITIES.get(name)
        value = _finite(quantity(summary, rows, balanced_below)) if quantity else None
        if value is None:
            why = "unknown" if quantity is None else "not given by this run"
            log.warning("%s: objective %s %s, = %g (objective.failed)", run_dir, name, why, failed)
            value = float(failed)
        values[name] = value
    return values


def _number(value, default: float) -> float:
    value = _finite(value) if not isinstance(value, bool) else None
    return default if value is None else value


def returned(run_dir: str | Path, settings) -> float | list[float] | None:
    """What the training job returns for `settings` (the config's `objective` node): None without
    `names`; the value of one name (a name, or a list of one: Optuna's single `direction`); the
    list of values of several, in their order (Optuna's `direction: [minimize, minimize]`). Never
    raises for settings the schema refused (a refused run returns the failure value)."""
    chosen = (settings or {}).get("names")
    if chosen is None:
        return None
    chosen = [str(chosen)] if isinstance(chosen, str) else [str(name) for name in chosen]
    if not chosen:
        return None
    failed = _number(settings.get("failed"), FAILED)
    below = _number(settings.get("balanced_below"), BALANCED_BELOW)
    values = measure(run_dir, chosen, balanced_below=below, failed=failed)
    log.info("%s: objective %s", run_dir, ", ".join(f"{name} = {values[name]:.6g}" for name in chosen))
    result = [values[name] for name in chosen]
    return result[0] if len(result) == 1 else result


class StudyFolder(Callback):
    """Before a sweeper opens its study: the folder of an SQLite storage (`hydra.sweeper.storage=
    sqlite:///PATH`), which SQLite does not create; Hydra creates the sweep directory, where a
    search keeps its study, only when it launches the first jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
