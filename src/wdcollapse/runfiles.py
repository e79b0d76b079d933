"""The files of a run directory, named once: the writers (rundir, callbacks, theory monitors) and
the readers (runs, restore, report, plots) all find them here.

    files = RunFiles("outputs/runs/default/2026-12-06_01-51-38_ab12")
    files.metrics      # .../metrics.jsonl: one JSON object per evaluated epoch
"""

from __future__ import annotations

from pathlib import Path


class RunFiles:
    """The paths of one run directory's files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"  # the resolved config of the run
        self.metrics = self.root / "metrics.jsonl"  # one row per evaluated epoch (MetricMonitor)
        self.grams = self.root / "grams.json"  # the class-mean Gram matrices at the latest evaluation
        self.summary = self.root / "summary.json"  # status, final row, seconds, W&B id
        self.error = self.root / "error.txt"  # the traceback of a failed run
        self.checkpoint = self.root / "checkpoints" / "last.ckpt"  # the latest end-of-epoch checkpoint
        self.steps = self.root / "steps.jsonl"  # theory_gd: loss and balancedness error per step
        self.theory = self.root / "theory.json"  # theory_gd: assumptions, phases, fitted balancing rate
        self.wandb = self.root / "wandb"  # the offline W&B run

    def restarted(self) -> list[Path]:
        """What a run started over (or refused before training) must not leave for a new run."""
        return [self.metrics, self.checkpoint, self.summary, self.error, self.grams]
