"""Run directories of launches and multiruns never collide; the local launchers run sweeps."""

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def launch(cwd, *args, multirun=False):
    flags = ["-m"] if multirun else []
    return subprocess.Popen(
        [sys.executable, "-m", "wdcollapse.train", *flags, *TINY, *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_default_run_directories_of_simultaneous_launches_differ(tmp_path):
    procs = [launch(tmp_path, "logger=none") for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "outputs" / "runs" / "default").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "local"])
def test_multirun_through_a_launcher_gives_each_job_its_own_directory_and_wandb_run(tmp_path, launcher):
    proc = launch(
        tmp_path, "seed=0,1", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}/sweep", multirun=True
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    # Lightning's noise is quieted in the jobs too (joblib's workers never import wdcollapse.train):
    # no cloud-logger advertisement, no line per checkpoint saved
    for noise in ("litlogger", "weights_only"):
        assert noise not in out + err, noise
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(jobs) == 2 and "seed=0" in jobs[0].name and "seed=1" in jobs[1].name
    ids = set()
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "finished"
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1
        ids.add(offline[0].name.rsplit("-", 1)[1])
    assert len(ids) == 2


@pytest.mark.slow
def test_a_bad_or_diverging_job_costs_that_job_only(tmp_path):
    proc = launch(
        tmp_path,
        "logger=none",
        "optim.lr=1e6,0.01",
        "model.width=0,16",
        f"hydra.sweep.dir={tmp_path}/sweep",
        multirun=True,
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    status = {
        p.name: json.loads((p / "summary.json").read_text()) for p in (tmp_path / "sweep").iterdir() if p.is_dir()
    }
    by_setting = {(s["error"] if "error" in s else ""): s["status"] for s in status.values()}
    assert sorted(s["status"] for s in status.values()) == ["diverged", "failed", "failed", "finished"]
    assert all("model.width=0" in e for e, st in by_setting.items() if st == "failed")
    assert "model.width=0 is not allowed" in err
    assert f"sweep {tmp_path}/sweep: 4 jobs: 1 diverged, 2 failed, 1 finished (see their summary.json" in err
