"""The paper preset, which only a GPU can run in full: every figure of conf/reproduce/paper.yaml
composed exactly as `make reproduce PRESET=paper` composes it (the same multirun command, the
paper's widths, epochs schedule, metric schedule and learning-rate drop) and trained for one
optimizer step on a tiny subset, so that the path a GPU user takes is known to run. The CIFAR-10
figures read a tiny JPEG class folder written here, so nothing is skipped."""

import json

import numpy as np
import pytest
from conftest import train_command

from wdcollapse.data.sources import CIFAR10_CLASSES
from wdcollapse.figures import FIGURES, FigureSweep, preset_sweeps
from wdcollapse.reproduce import multirun_command

pytestmark = pytest.mark.slow

# One step: 2 images per class (20) in one batch of the paper's 128, one epoch.
TINY = ["data.num_per_class=2", "data.test_num_per_class=2", "trainer.max_epochs=1"]


def tiny_cifar(folder):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            (folder / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / cls / f"{i:04d}.jpg")
    return folder


def test_every_figure_of_the_paper_preset_trains_one_step(tmp_path):
    _, figures = preset_sweeps("paper")
    # every paper figure that is judged by a claim (tests/test_claims.py names them; the figures
    # beyond the paper are the cpu preset's, behind --beyond)
    assert {f.name for f in figures} >= {spec.name for spec in FIGURES.values() if spec.claims and not spec.beyond}
    cifar = tiny_cifar(tmp_path / "cifar")
    for figure in figures:
        # the first point of each sweep, with the preset's own settings otherwise
        first = FigureSweep(
            figure.name,
            figure.experiment,
            {k: v.split(",")[0] for k, v in figure.sweep.items()},
            figure.overrides,
            figure.needs,
            figure.use_preset,
        )
        extra = TINY + ([f"data.image_folder={cifar}"] if figure.needs == "cifar10" else [])
        sweep_dir = tmp_path / "runs" / figure.name
        cmd = multirun_command(first, "paper", sweep_dir, 1, extra)
        assert cmd[1:3] == ["-m", "wdcollapse.train"]  # the command's arguments, run in this process
        proc = train_command(cmd[3:], env={"WANDB_MODE": "disabled"}, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        (run,) = [p for p in sweep_dir.iterdir() if p.is_dir()]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished", (figure.name, summary)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1], figure.name
        assert rows[-1]["step"] == 1, figure.name  # exactly one optimizer step
        config = (run / "config.yaml").read_text()
        if figure.use_preset:  # the paper preset's settings reached the run
            assert "width: 512" in config and "lr_drop_at: 0.8" in config, figure.name
