"""Reading run directories: config, metrics history, summary, class-mean Gram matrices.
Plots and reports read only these files, never a live model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .io import read_json, read_jsonl


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

    def series(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.history if r.get(key) is not None]
        return [r["epoch"] for r in rows], [r[key] for r in rows]


def load_run(path: str | Path) -> Run | None:
    """A run directory as written by `wdcollapse-train`; None if it has no config yet."""
    path = Path(path)
    config_path = path / "config.yaml"
    if not config_path.exists():
        return None
    config = yaml.safe_load(config_path.read_text())
    summary = read_json(path / "summary.json", default={})
    grams = read_json(path / "grams.json")
    return Run(path, config, summary, read_jsonl(path / "metrics.jsonl"), grams)


def load_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run directory directly under `sweep_dir`, sorted by path."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    runs = (load_run(p) for p in sorted(sweep_dir.iterdir()) if p.is_dir())
    return [r for r in runs if r is not None]
