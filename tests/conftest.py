import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from unittest.mock import patch

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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    # `make test` runs the suite in two processes (pytest-xdist, --dist loadgroup): the tests that
    # read the shared smoke reproduction run in one of them, so that it is made once
    for item in items:
        if "smoke" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smoke"))


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


def compose_train(*overrides, config_dir=None, return_hydra_config=False):
    """conf/train.yaml composed with `overrides` as `wdcollapse-train` composes it (the package's
    resolvers registered; `config_dir`, a user's config folder, on the search path)."""
    from hydra import compose, initialize_config_dir

    from wdcollapse.config import CONF_DIR, register_resolvers

    register_resolvers()
    searchpath = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir else []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*searchpath, *overrides], return_hydra_config=return_hydra_config)


def run_train_process(out_dir, *overrides, env=None, check=True, timeout=300):
    """`python -m wdcollapse.train` in a subprocess; returns the CompletedProcess. For what needs
    a process of its own (a kill, a lock held by another process); otherwise `run_train`."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    cmd = [sys.executable, "-m", "wdcollapse.train", *overrides, f"hydra.run.dir={out_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def run_train(out_dir, *overrides, env=None, check=True):
    """`wdcollapse-train OVERRIDES hydra.run.dir=OUT_DIR` in this process (see `train_command`)."""
    return train_command([*overrides, f"hydra.run.dir={out_dir}"], env=env, check=check)


def train_command(args, cwd=REPO, env=None, check=True):
    """`wdcollapse-train ARGS` run in this process from `cwd` (see `in_process`)."""
    from wdcollapse import train

    return in_process(train.main, "wdcollapse-train", args, cwd=cwd, env=env, check=check)


def in_process(main, prog, args, cwd=REPO, env=None, check=True):
    """The console command `prog ARGS` (its `main`, e.g. wdcollapse.train.main, Hydra included)
    run in this process from `cwd`, without a new interpreter's imports. Returns a
    subprocess.CompletedProcess with its exit status and what it printed (warnings too, as a
    terminal shows them); `env` is set for the call only (W&B offline and silent unless it says).
    The console scripts themselves are tested in a process of their own (test_train.py,
    test_wheel.py)."""
    stdout, stderr, code, threads = io.StringIO(), io.StringIO(), 0, torch.get_num_threads()
    argv = [prog, *map(str, args)]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    show = warnings.showwarning
    warnings.showwarning = lambda message, category, *a, **k: print(f"{category.__name__}: {message}", file=stderr)
    try:
        with (
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            warnings.catch_warnings(),
            patch.object(sys, "argv", argv),
        ):
            warnings.simplefilter("default")
            try:
                returned = main()
                code = returned if isinstance(returned, int) else 0
            except SystemExit as e:  # as the interpreter ends: a message is printed, exit status 1
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        warnings.showwarning = show
        torch.set_num_threads(threads)  # a run sets its own (threads=...)
        fresh_wandb()  # the next command starts W&B under its own environment
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    proc = subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"{argv} failed ({code}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def read_metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def tiny():
    return list(TINY)


def reproduce(out, *args):
    """`wdcollapse-reproduce --preset smoke --out OUT ARGS` in this process (W&B offline); the
    CompletedProcess. Its figures' multiruns are processes of their own, as always."""
    from wdcollapse import reproduce as command

    return in_process(command.main, "wdcollapse-reproduce", ["--preset", "smoke", "--out", out, *args])


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
    """W&B keeps process-wide state after a run in this process (see `fresh_wandb`): tear it down
    after every test."""
    yield
    fresh_wandb()


def fresh_wandb() -> None:
    """A W&B run in this process leaves its settings (the WANDB_MODE it was started under: a later
    run would be `disabled` too) and WANDB_SERVICE (its service's socket) in os.environ until
    wandb.teardown(); a subprocess started later would inherit the socket and hand its records to
    a service that is gone."""
    if "wandb" in sys.modules:
        import wandb

        wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)
