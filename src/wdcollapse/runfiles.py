"""The files of a run directory, named once: the writers (rundir, callbacks, theory monitors) and
the readers (runs, restore, report, plots) all find them here.

    files = RunFiles("outputs/runs/default/2026-12-06_01-51-38_ab12")
    files.metrics      # .../metrics.jsonl: one JSON object per evaluated epoch
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"  # the resolved config of the run
METRICS = "metrics.jsonl"  # one row per evaluated epoch (MetricMonitor)
GRAMS = "grams.json"  # the class-mean Gram matrices at the latest evaluation
SUMMARY = "summary.json"  # status, final row, seconds, W&B id
ERROR = "error.txt"  # the traceback of a failed run
CHECKPOINT = "checkpoints/last.ckpt"  # the latest end-of-epoch checkpoint (AtomicCheckpoint)
STEPS = "steps.jsonl"  # theory_gd: loss and balancedness error per step
THEORY = "theory.json"  # theory_gd: assumptions, phase boundary, fitted balancing rate
WANDB = "wandb"  # the offline W&B run
# what a run started over (or refused before training) must not leave behind for a new run
RESTARTED = (METRICS, CHECKPOINT, SUMMARY, ERROR, GRAMS)


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory's files."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def grams(self) -> Path:
        return self.root / GRAMS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def error(self) -> Path:
        return self.root / ERROR

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def steps(self) -> Path:
        return self.root / STEPS

    @property
    def theory(self) -> Path:
        return self.root / THEORY

    @property
    def wandb(self) -> Path:
        return self.root / WANDB
