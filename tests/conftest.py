import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# One torch thread in the test process, as every run uses (threads=1): on a busy 2-core machine
# several threads spin on small tensors far longer than one computes them.
torch.set_num_threads(1)


def pytest_configure(config):
    # the two Lightning warnings the entry point filters too (wdcollapse.train)
    config.addinivalue_line(
        "filterwarnings", r"ignore:The number of training batches \(\d+\) is smaller than the logging"
    )
    config.addinivalue_line("filterwarnings", r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")


# A tiny MLP on a small MNIST subset: the whole entry point in a few seconds.
TINY = [
    "data.num_per_class=10",
    "model.width=32",
    "model.nonlinear_depth=2",
    "model.linear_depth=2",
    "data.batch_size=32",
    "optim.warmup_epochs=0",
    "trainer.max_epochs=2",
    "callbacks.metrics.schedule=every",
]


def run_train(out_dir, *overrides, env=None, check=True, timeout=300):
    """Run the real entry point in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    cmd = [sys.executable, "-m", "wdcollapse.train", *overrides, f"hydra.run.dir={out_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def read_metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def tiny():
    return list(TINY)


def reproduce(out):
    """`wdcollapse-reproduce --preset smoke` into `out` (W&B offline); the CompletedProcess."""
    cmd = [sys.executable, "-m", "wdcollapse.reproduce", "--preset", "smoke", "--out", str(out)]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One smoke reproduction shared by the tests of the report and of W&B."""
    out = tmp_path_factory.mktemp("reproduce")
    return out, reproduce(out)


def wandb_records(path) -> list[dict]:
    """The records of an offline W&B run (a .wandb file or its run directory), read by wandb's
    own reader (`wandb leet inspect --json`)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def cpu_trainer(root, **kwargs):
    """A quiet pytorch_lightning.Trainer on the CPU (no logger, progress bar, summary or
    checkpointing unless `kwargs` say otherwise), writing under `root`."""
    import pytorch_lightning as pl

    quiet = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
        "default_root_dir": root,
    }
    return pl.Trainer(**{**quiet, **kwargs})


def sgd(
    lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False, fused=True, warmup_epochs=0, drop_at=None, drop_factor=0.1
):
    """CollapseModule's `optimizer` and `schedule` for plain SGD, as conf/optim/sgd.yaml and
    conf/train.yaml's module node build them: CollapseModule(net, **sgd(0.01))."""
    from functools import partial

    from wdcollapse.module import warmup_then_drop

    optimizer = partial(
        torch.optim.SGD, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, fused=fused
    )
    schedule = partial(warmup_then_drop, warmup_epochs=warmup_epochs, drop_at=drop_at, drop_factor=drop_factor)
    return {"optimizer": optimizer, "schedule": schedule}


@pytest.fixture(autouse=True)
def _no_wandb_service_left_behind():
    """A W&B run in this process leaves WANDB_SERVICE (its service's socket) in os.environ until
    wandb.teardown(); a subprocess started later would inherit it and hand its records to a
    service that is gone. Tear it down after any test that started one."""
    yield
    if "WANDB_SERVICE" in os.environ and "wandb" in sys.modules:
        import wandb

        wandb.teardown()
        os.environ.pop("WANDB_SERVICE", None)
