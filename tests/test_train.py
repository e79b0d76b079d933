"""End-to-end tests of `wdcollapse-train` (the real Hydra entry point, `wdcollapse.train.main`): in
this process through conftest.run_train, and in a process of its own where the test needs one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, read_metrics, run_train, run_train_process

from wdcollapse.config import CONF_DIR
from wdcollapse.theorems import THEOREM31_KEYS


def expected_keys(nonlinear, linear):
    L = nonlinear + linear
    keys = {"epoch", "step", "train/loss", "train/acc", "test/acc", "lr", "nc3"}
    keys |= {f"nc1/layer_{l}" for l in range(1, L + 1)} | {f"nc2/layer_{l}" for l in range(1, L + 1)}
    keys |= {f"negativity/layer_{l}" for l in range(1, nonlinear + 1)}
    keys |= {f"balancedness/layer_{l}" for l in range(1, L)}
    if linear >= 2:  # callbacks.metrics.theory=auto: Theorem 3.1's quantities
        keys |= set(THEOREM31_KEYS)
    return keys


@pytest.mark.slow
def test_entry_point_writes_every_metric_for_every_layer_and_an_offline_wandb_run(tmp_path):
    out = tmp_path / "run"
    run_train_process(out, *TINY, "model.nonlinear_depth=3", "logger=wandb")  # python -m, a process of its own
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert set(row) == expected_keys(3, 2)
        # a bound that does not exist yet (eps1 >= s_K(Y)) is inf, written as null
        assert all(v is not None for k, v in row.items() if k not in ("theory/dist_bound", "theory/nc1_bound"))
    assert rows[0]["step"] == 0 and rows[2]["step"] > rows[1]["step"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final"] == rows[-1]
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.ckpt").exists()
    offline_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "wdcollapse-train"
    assert script.exists(), "pip install -e . should install the wdcollapse-train console script"


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(tmp_path):
    run_train(tmp_path / "a", *TINY, "logger=none")
    run_train(tmp_path / "b", *TINY, "logger=none")
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    run_train(tmp_path / "c", *TINY, "logger=none", "seed=1")
    assert read_metrics(tmp_path / "c")[-1] != read_metrics(tmp_path / "a")[-1]


@pytest.mark.slow
def test_finished_run_is_skipped_on_rerun(tmp_path):
    out = tmp_path / "run"
    run_train(out, *TINY, "logger=none")
    before = (out / "metrics.jsonl").read_bytes()
    proc = run_train(out, *TINY, "logger=none")
    assert "skipping" in proc.stdout + proc.stderr
    assert (out / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    args = [*TINY, "logger=none", "trainer.max_epochs=8", "data.num_per_class=30"]
    run_train(tmp_path / "ref", *args)
    out = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wdcollapse.train", *args, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "checkpoints" / "last.ckpt").exists() and len(read_metrics_safe(out)) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads((out / "summary.json").read_text())
    assert killed["status"] == "running"
    run_train(out, *args)
    ref, resumed = read_metrics(tmp_path / "ref"), read_metrics(out)
    assert [r["epoch"] for r in resumed] == list(range(9))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["started"] == killed["started"] < summary["updated"]  # the first start time is kept
    for key, value in ref[-1].items():
        assert resumed[-1][key] == (
            value if value is None or isinstance(value, bool) else pytest.approx(value, rel=1e-6, abs=1e-9)
        ), key


def read_metrics_safe(out):
    try:
        return read_metrics(out)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@pytest.mark.slow
def test_divergence_is_recorded_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = run_train(out, *TINY, "logger=none", "optim.lr=1e6", "trainer.max_epochs=5")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged", proc.stderr[-2000:]
    # lr 1e6 overflows in the first epoch (epoch 0): it stops there, keeping the row at initialisation
    assert summary["diverged_epoch"] == 0
    assert [r["epoch"] for r in read_metrics(out)] == [0]
    assert read_metrics(out)[0]["epoch"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,words",
    [
        ("data.name=imagenet", ["data.name", "imagenet", "mnist"]),
        ("model.width=0", ["model.width", "0", ">= 1"]),
        ("model.linear_depth=0", ["model.linear_depth", ">= 1"]),
        ("optim.lr=0", ["optim.lr", "> 0"]),
        ("optim.weight_decay=-0.1", ["optim.weight_decay", ">= 0"]),
        ("optim=lbfgs", ["optim='lbfgs'", "'adamw'", "optim/ configs on the search path"]),
        ("+optim.optimizer.lr_decay=0.1", ["optim.optimizer.lr_decay", "not an argument of torch.optim.SGD"]),
        ("model.activation=tanh", ["model.activation", "tanh", "relu"]),
        ("data.num_per_class=7000", ["num_per_class=7000", "has only"]),
        ("data=imagenet", ["data='imagenet'", "'fashion_mnist'", "data/ configs on the search path"]),
    ],
)
def test_bad_settings_fail_early_with_a_clear_message(tmp_path, override, words):
    proc = run_train(tmp_path / "run", *TINY, "logger=none", override, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr[-1500:])


@pytest.mark.slow
def test_missing_data_directory_says_how_to_get_the_data(tmp_path):
    proc = run_train(
        tmp_path / "run", *TINY, "logger=none", "data=cifar10", f"paths.data_dir={tmp_path}/nothing", check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "image_folder" in proc.stderr and "download" in proc.stderr


def test_check_writable_reports_a_directory_that_cannot_be_created(tmp_path):
    from wdcollapse.rundir import ConfigError, check_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be written"):
        check_writable(blocker / "run")
    assert check_writable(tmp_path / "new" / "run").is_dir()


@pytest.mark.slow
def test_output_directory_under_a_file_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_train(blocker / "run", *TINY, "logger=none", check=False)
    assert proc.returncode == 2 and "cannot be created or written" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "arg", ["++hydra.run.dir={blocker}/sub", "hydra.run.dir=/proc/wdcollapse-test", "+hydra.sweep.dir={blocker}/sweep"]
)
def test_output_overrides_are_checked_by_creating_them(tmp_path, arg):
    from wdcollapse.config import check_command_line
    from wdcollapse.rundir import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be created or written"):
        check_command_line([arg.format(blocker=blocker)])
    check_command_line([f"++hydra.run.dir={tmp_path}/fine"])
    assert (tmp_path / "fine").is_dir()
    # a quoted value (Lightning's DDP launcher re-runs the command with hydra.run.dir="...") is
    # the path inside the quotes, not a folder named with a quote
    check_command_line([f'hydra.run.dir="{tmp_path}/quoted dir"'])
    assert (tmp_path / "quoted dir").is_dir() and not list(tmp_path.glob('"*'))


@pytest.mark.slow
def test_a_run_directory_refuses_other_settings_but_not_other_speed_knobs(tmp_path):
    out = tmp_path / "run"
    run_train(out, *TINY, "logger=none")
    before = (out / "metrics.jsonl").read_bytes()
    proc = run_train(out, *TINY, "logger=none", "optim.lr=0.05", "seed=3", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "optim.lr: 0.01 -> 0.05" in proc.stderr and "seed: 0 -> 3" in proc.stderr and "resume=never" in proc.stderr
    assert (out / "metrics.jsonl").read_bytes() == before
    assert "lr: 0.01" in (out / "config.yaml").read_text()
    proc = run_train(out, *TINY, "logger=none", "threads=2", "steps_per_call=1")  # same run, other speed
    assert "skipping" in proc.stdout + proc.stderr
    run_train(out, *TINY, "logger=none", "optim.lr=0.05", "resume=never")  # start over, on purpose
    assert read_metrics(out)[-1]["lr"] == pytest.approx(0.05)


@pytest.mark.slow
def test_a_resumed_online_run_keeps_its_wandb_id_and_a_restarted_one_gets_a_new_one(tmp_path):
    out, online = tmp_path / "run", [*TINY, "logger=wandb", "logger.wandb.offline=false"]
    env = {"WANDB_MODE": "disabled"}  # online as far as the config goes; no network, nothing written
    run_train(out, *online, env=env)
    first = json.loads((out / "summary.json").read_text())
    assert len(first["wandb_id"]) == 16
    first["status"] = "running"  # as if killed after the last checkpoint
    (out / "summary.json").write_text(json.dumps(first))
    run_train(out, *online, env=env)  # resumes from the checkpoint
    assert json.loads((out / "summary.json").read_text())["wandb_id"] == first["wandb_id"]
    run_train(out, *online, "resume=never", env=env)
    assert json.loads((out / "summary.json").read_text())["wandb_id"] != first["wandb_id"]
    run_train(out, *TINY, "logger=wandb", "resume=never", env=env)  # offline by config: W&B's own id
    assert json.loads((out / "summary.json").read_text())["wandb_id"] is None


@pytest.mark.parametrize(
    "offline, env_mode, cfg_mode, expected",
    [
        (False, "disabled", None, "abc12345"),
        (True, "disabled", None, None),
        (False, "offline", None, None),
        (False, "DRYRUN", None, None),
        (False, "disabled", "offline", None),
    ],
)
def test_an_online_wandb_logger_gets_the_run_directorys_id(
    tmp_path, monkeypatch, offline, env_mode, cfg_mode, expected
):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from wdcollapse.train import logger_kwargs

    monkeypatch.setenv("WANDB_MODE", env_mode)
    cfg = OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml").wandb
    cfg.save_dir, cfg.offline, cfg.name, cfg.group = str(tmp_path), offline, "run", "test"
    if cfg_mode:
        cfg.mode = cfg_mode
    kwargs = logger_kwargs(cfg, "abc12345")
    assert kwargs.get("id") == expected
    if expected:  # what Lightning does with it: the W&B run's id, resumed if it exists
        logger = instantiate(cfg, **kwargs)
        assert logger.version == expected and logger._wandb_init["resume"] == "allow"
        cfg.id = "mine"  # a configured id wins
        assert logger_kwargs(cfg, "abc12345") == {}


@pytest.mark.slow
def test_an_unreadable_checkpoint_stops_with_advice_and_keeps_the_metrics(tmp_path):
    out = tmp_path / "run"
    run_train(out, *TINY, "logger=none", "trainer.max_epochs=3")
    summary = json.loads((out / "summary.json").read_text())
    summary["status"] = "running"  # as if killed after the last checkpoint
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    before = (out / "metrics.jsonl").read_bytes()
    proc = run_train(out, *TINY, "logger=none", "trainer.max_epochs=3", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "last.ckpt cannot be read" in proc.stderr and "resume=never" in proc.stderr
    assert (out / "metrics.jsonl").read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_linear_head_of_one_layer_is_allowed_with_a_warning(tmp_path):
    proc = run_train(tmp_path / "run", *TINY, "logger=none", "model.linear_depth=1")
    assert "linear_depth=1" in proc.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_resnet20_on_a_cifar10_image_folder(tmp_path):
    from PIL import Image

    from wdcollapse.data.sources import CIFAR10_CLASSES

    rng = __import__("numpy").random.default_rng(0)
    for split, n in (("train", 3), ("test", 1)):
        for name in CIFAR10_CLASSES:
            (tmp_path / "cifar" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype="uint8")
                Image.fromarray(pixels).save(tmp_path / "cifar" / split / name / f"{i}.png")
    out = tmp_path / "run"
    run_train(
        out,
        "data=cifar10",
        f"data.image_folder={tmp_path / 'cifar'}",
        "model=resnet20",
        "model.width=16",
        "model.nonlinear_depth=1",
        "model.linear_depth=2",
        "trainer.max_epochs=1",
        "logger=none",
        "data.batch_size=10",
    )
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert set(rows[-1]) >= {"nc1/layer_3", "nc2/layer_1", "negativity/layer_1", "balancedness/layer_2", "nc3"}
    assert json.loads((out / "summary.json").read_text())["num_train"] == 30
