"""What the command line leaves behind when it refuses, and who may write a run directory: a refused
run leaves nothing, a second process on a live run directory or reproduction folder is refused
with one line while the first one's rows stay intact, a killed run's directory still resumes,
and an exception from a user's own class keeps its traceback."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, in_process, read_metrics, run_train, train_command

from wdcollapse.errors import ConfigError
from wdcollapse.io import LOCK_FILE, hold_directory
from wdcollapse.reproduce import main as reproduce_main

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.mark.slow
def test_a_refused_setting_leaves_no_run_directory(tmp_path):
    out = tmp_path / "outputs" / "runs" / "x"
    proc = train_command(["model.width=abc", "hydra.run.dir=outputs/runs/x"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "model.width='abc' is not allowed" in proc.stderr
    assert not out.exists() and not (tmp_path / "outputs").exists()  # nor the parents it made


@pytest.mark.slow
def test_missing_data_leaves_no_run_directory_and_no_failed_summary(tmp_path):
    out = tmp_path / "run"
    empty = tmp_path / "no_data"
    empty.mkdir()
    proc = run_train(out, "data=cifar10", "model=resnet20", f"paths.data_dir={empty}", "logger=none", check=False)
    assert proc.returncode == 2 and "CIFAR-10 files" in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_refusal_on_an_existing_run_keeps_it_as_it_was(tmp_path):
    run_train(tmp_path, *TINY, "logger=none")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "train.log"}
    proc = run_train(tmp_path, *TINY, "logger=none", "optim.lr=0.5", check=False)
    assert proc.returncode == 2 and "holds a run with other settings" in proc.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "train.log"}
    assert after == before


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path):
    lock = hold_directory(tmp_path, "run directory", "wait")
    with pytest.raises(ConfigError, match=r"run directory .* is in use by another live process; wait"):
        hold_directory(tmp_path, "run directory", "wait")
    lock.release()
    hold_directory(tmp_path, "run directory", "wait").release()


HOLD = (
    "import sys, time; from wdcollapse.io import hold_directory; "
    "lock = hold_directory(sys.argv[1], 'x', 'y'); print('held', flush=True); time.sleep(600)"
)


def _holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holders_lock_dies_with_it(tmp_path):
    proc = _holder(tmp_path)
    with pytest.raises(ConfigError):
        hold_directory(tmp_path, "run directory", "wait")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hold_directory(tmp_path, "run directory", "wait").release()  # a killed run's directory can be resumed
    assert (tmp_path / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_second_process_on_a_live_run_directory_is_refused_and_the_first_ones_rows_stay(tmp_path):
    args = [*TINY, "trainer.max_epochs=5000", "callbacks.metrics.every_n=10", "logger=none"]
    cmd = [sys.executable, "-m", "wdcollapse.train", *args, f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(read_metrics(tmp_path) if (tmp_path / "metrics.jsonl").exists() else []) < 2 and time.time() < deadline:
        time.sleep(0.1)
    second = run_train(tmp_path, *args, check=False)
    assert first.poll() is None, "the first run ended before the second started: make it longer"
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"error: run directory {tmp_path} is in use by another live process; wait for that run to end (it resumes "
        "from here if killed), or choose another hydra.run.dir"
    ]
    first.send_signal(signal.SIGKILL)
    first.wait()
    epochs = [r["epoch"] for r in read_metrics(tmp_path)]
    assert epochs == list(range(0, epochs[-1] + 1, 10)) and len(epochs) >= 2  # the first run's rows, each once
    # the lock died with its process: the directory is free to resume (tests/test_train.py resumes killed runs)
    hold_directory(tmp_path, "run directory", "wait").release()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"


@pytest.mark.slow
def test_a_second_reproduction_into_a_live_folder_is_refused_and_the_first_one_finishes(tmp_path):
    cmd = [sys.executable, "-m", "wdcollapse.reproduce", "--preset", "smoke", "--only", "theory_gd"]
    cmd += ["--out", str(tmp_path), "--wandb", "disabled"]
    first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "runs").exists() and time.time() < deadline:  # the first one is training
        time.sleep(0.1)
    second = in_process(reproduce_main, "wdcollapse-reproduce", cmd[3:], env={"WANDB_MODE": "offline"}, check=False)
    assert first.poll() is None, "the first reproduction ended before the second started"
    assert second.returncode != 0
    assert second.stderr.strip().splitlines() == [
        f"error: reproduction folder {tmp_path} is in use by another live process; wait for it to end (it resumes "
        "when run again), or pass --out"
    ]
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    (summary,) = (tmp_path / "runs" / "theory_gd").glob("*/summary.json")
    assert json.loads(summary.read_text())["status"] == "finished"
    assert "theory_gd" in (tmp_path / "REPORT.md").read_text()


@pytest.mark.slow
def test_a_terminated_reproduction_leaves_no_worker_training_on(tmp_path):
    """SIGTERM to wdcollapse-reproduce mid-run ends its multirun's joblib workers too: the run they
    trained is left killed (it resumes), its directory free, nothing writing to it."""
    cmd = [sys.executable, "-m", "wdcollapse.reproduce", "--preset", "smoke", "--only", "mlp_mnist"]
    cmd += ["--out", str(tmp_path), "--wandb", "disabled"]
    first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, running = time.time() + 180, []
    while not running and time.time() < deadline and first.poll() is None:
        summaries = (tmp_path / "runs" / "mlp_mnist").glob("*/summary.json")
        running = [p.parent for p in summaries if json.loads(p.read_text() or "{}").get("status") == "running"]
        time.sleep(0.02)
    assert running, "no run was seen training"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 128 + signal.SIGTERM
    written = lambda run: (run / "metrics.jsonl").read_bytes() if (run / "metrics.jsonl").exists() else b""  # noqa: E731
    for run in running:
        hold_directory(run, "run directory", "wait").release()  # its worker is gone with the lock it held
        before = written(run)
        time.sleep(2)
        assert written(run) == before  # nothing writes to it
        assert json.loads((run / "summary.json").read_text())["status"] == "running"  # killed: it resumes


USER_MODEL = '''
import torch
from wdcollapse.models import LayerwiseNet


class BuggyNet(LayerwiseNet):
    def __init__(self, num_classes: int, in_shape=(1, 28, 28)):
        raise ValueError("a bug in my own model")
'''


@pytest.mark.slow
def test_an_error_in_a_users_own_model_keeps_its_traceback(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))  # as PYTHONPATH would
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "buggy.yaml").write_text("_target_: mymodels.BuggyNet\nnum_classes: ${data.num_classes}\n")
    args = ["--config-dir", str(tmp_path / "conf"), "model=buggy"]
    proc = train_command([*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and 'mymodels.py", line' in proc.stderr and "a bug in my own model" in proc.stderr
    assert "raised by your own model._target_=mymodels.BuggyNet" in proc.stderr
    # a bad setting of this package's own model stays one line
    proc = train_command(["model.init=orthogonal"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _finished_runs(out, figure, preset="smoke", extra=(), **edits):
    """Finished run directories of the `preset`'s `figure`, saved as its multirun would save them,
    with `edits` ({dotted key: value}) applied to the first run's saved settings."""
    import itertools

    import yaml
    from conftest import compose_train
    from omegaconf import OmegaConf, open_dict

    keys = list(figure.sweep)
    runs = []
    for values in itertools.product(*(str(figure.sweep[k]).split(",") for k in keys)):
        swept = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        cfg = compose_train(f"experiment={figure.experiment}", f"preset={preset}", *swept, *figure.overrides, *extra)
        with open_dict(cfg):
            cfg.pop("logger")
        if not runs:
            for key, value in edits.items():
                OmegaConf.update(cfg, key, value, force_add=True)
        run = out / "runs" / figure.name / ",".join(swept)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
        (run / "summary.json").write_text(json.dumps({"status": "finished"}))
        runs.append(run)
    return runs


def _figure(preset, name):
    from wdcollapse.figures import preset_sweeps

    return next(f for f in preset_sweeps(preset, beyond=True)[1] if f.name == name)


def test_runs_trained_with_the_presets_settings_pass_the_check_and_speed_settings_may_differ(tmp_path):
    from wdcollapse.reproduce import figure_runs, settings_changed

    figure = _figure("smoke", "nonlinear_depth_mnist")
    _finished_runs(tmp_path, figure, threads=2, steps_per_call=4, **{"data.eval_chunk": 128})
    assert settings_changed(figure_runs(tmp_path, figure), figure, "smoke", []) == []
    # a real setting of one run differs: that run, and only it, is named with the change
    other = tmp_path / "other"
    runs = _finished_runs(other, figure, **{"model.width": 48})
    (line,) = settings_changed(figure_runs(other, figure), figure, "smoke", [])
    assert line.startswith(f"nonlinear_depth_mnist/{runs[0].name}: ") and "model.width: 48 -> " in line


@pytest.mark.parametrize(("saved", "flagged"), [("bf16-mixed", False), ("32-true", False), ("16-mixed", True)])
def test_a_precision_left_to_the_machine_keeps_the_runs_own_value(tmp_path, saved, flagged):
    """The cpu preset's `${bf16_where_native:...}`: a bf16 run of a machine with native bf16 is the
    recipe's run on any machine (skipped as done, resumed in bf16); a precision the resolver never
    gives is a change."""
    from conftest import compose_train

    from wdcollapse.reproduce import figure_runs, settings_changed
    from wdcollapse.rundir import check_same_run

    figure = _figure("cpu", "resnet20_mnist")
    runs = _finished_runs(tmp_path, figure, "cpu", **{"trainer.precision": saved})
    assert bool(settings_changed(figure_runs(tmp_path, figure), figure, "cpu", [])) == flagged
    cfg = compose_train(
        "experiment=resnet20_mnist", "preset=cpu", *figure.overrides, "model.linear_depth=5", "seed=0", "logger=none"
    )
    if flagged:
        with pytest.raises(ConfigError, match="trainer.precision: '16-mixed' -> "):
            check_same_run(cfg, runs[0] / "config.yaml")
    else:
        check_same_run(cfg, runs[0] / "config.yaml")
        assert cfg.trainer.precision == saved  # the resumed run goes on in its own precision


def test_the_check_reads_cifar_runs_without_cifar_given(tmp_path):
    """A re-run without --cifar over a folder that already holds CIFAR-10 runs reports them: their
    settings are compared without the data overrides (where the images are may change)."""
    from wdcollapse.reproduce import check_settings, figure_runs

    figure = _figure("smoke", "resnet20_cifar10")
    _finished_runs(tmp_path, figure, extra=["data.image_folder=/somewhere/cifar10-jpg"])
    runs_of = {figure.name: figure_runs(tmp_path, figure)}
    assert len(runs_of[figure.name]) == figure.num_runs
    check_settings(tmp_path, [figure], runs_of, "smoke", None)
    check_settings(tmp_path, [figure], runs_of, "smoke", ["data.image_folder=/elsewhere"])


def test_a_rerun_over_runs_of_other_settings_stops_before_training_with_one_line(tmp_path):
    figure = _figure("smoke", "nonlinear_depth_mnist")
    # the first run (3 ReLU layers) was trained for 9 epochs; the preset's balancing budget asks for fewer
    runs = _finished_runs(tmp_path, figure, **{"trainer.max_epochs": 9})
    saved = {p: p.stat().st_mtime_ns for r in runs for p in r.iterdir()}
    args = ["--preset", "smoke", "--only", "nonlinear_depth_mnist", "--out", str(tmp_path), "--wandb", "disabled"]
    proc = in_process(reproduce_main, "wdcollapse-reproduce", args, env={"WANDB_MODE": "disabled"}, check=False)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: 1 run(s) in {tmp_path / 'runs'} were trained with other settings than the smoke")
    assert f"(nonlinear_depth_mnist/{runs[0].name}: trainer.max_epochs: 9 -> " in line
    assert "delete those run directories (or the figure's folder) to train them anew" in line
    assert {p: p.stat().st_mtime_ns for r in runs for p in r.iterdir()} == saved  # nothing rewritten
    assert not (tmp_path / "logs").exists()  # nothing trained
    hold_directory(tmp_path, "reproduction folder", "wait").release()  # the refusal let go of the folder
