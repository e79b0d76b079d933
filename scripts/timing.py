"""What the benchmark scripts time with (bench.py on the CPU, gpu_bench.py on a GPU): the same
optimizer steps as CollapseModule in a hand-written loop, and a callback that times each
Lightning epoch and the passes run right after it. No Hydra: the lent GPU machine has none."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

from wdcollapse.module import CollapseModule, build_optimizer


def timed(fn: Callable[[], object], clock: Callable[[], float] = time.process_time) -> float:
    """How long `fn()` takes by `clock`."""
    start = clock()
    fn()
    return clock() - start


class PlainLoop:
    """`module`'s model, loss, optimizer and schedule over `data`'s batches, without Lightning.
    Pass a module no Trainer holds (a copy, or a fresh one): the loop trains it. `forward_context`
    wraps each forward pass (and the loss), as Lightning's precision plugin does: e.g. bf16
    autocast."""

    def __init__(self, module: CollapseModule, data, max_epochs: int, forward_context=contextlib.nullcontext):
        self.module, self.data, self.forward_context = module, data, forward_context
        self.opt = build_optimizer(module.optimizer_factory, module.model.parameters())
        self.sched = module.schedule_factory(self.opt, steps_per_epoch=data.steps_per_epoch, max_epochs=max_epochs)

    def epoch(self) -> None:
        self.module.train()
        for x, y in self.data.train_batches():  # built per epoch: the data may have moved device
            self.opt.zero_grad(set_to_none=True)
            with self.forward_context():
                loss = self.module.step_loss(x, y)
            loss.backward()
            self.opt.step()
            self.sched.step()


class Rounds(pl.Callback):
    """Times each Lightning epoch with `clock`; after it, times every pass in `passes` (name:
    fn(trainer, pl_module)), so each ratio pairs measurements taken moments apart. Epoch 0 is a
    warm-up for all of them: its times are kept apart, in `warmup`."""

    def __init__(self, passes: dict, clock: Callable[[], float] = time.process_time, verbose: bool = True):
        self.passes, self.clock, self.verbose = passes, clock, verbose
        self.times: dict[str, list[float]] = {}
        self.warmup: dict[str, float] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.wall = self.clock(), time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        lightning, wall = self.clock() - self.start, time.perf_counter() - self.wall
        measured = {name: timed(lambda: fn(trainer, pl_module), self.clock) for name, fn in self.passes.items()}  # noqa: B023 (called at once)
        measured = {"lightning": lightning, "lightning_wall": wall, **measured}
        if trainer.current_epoch == 0:
            self.warmup = measured
            return
        for name, t in measured.items():
            self.times.setdefault(name, []).append(t)
        if self.verbose:
            print(
                f"  round {trainer.current_epoch}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in self.times.items()),
                flush=True,
            )

    def median(self, name: str) -> float:
        return float(statistics.median(self.times[name]))

    def ratio(self, num: str, den: str) -> float:
        return float(statistics.median(a / b for a, b in zip(self.times[num], self.times[den])))


def metric_pass_timed(exact: bool, negativity: bool = True) -> Callable:
    """A pass for `Rounds`: one metric pass over the training set (eval mode), as the callback runs it."""
    from wdcollapse.metric_pass import metric_pass

    def run(trainer, pl_module) -> None:
        data, net = trainer.datamodule, pl_module.model
        net.eval()
        metric_pass(net, data.eval_batches("train"), data.num_classes, exact=exact, negativity=negativity)
        net.train()

    return run


def forward_timed(trainer, pl_module) -> None:
    """A pass for `Rounds`: the network's forward pass alone over the training set, in the
    metric pass's chunks (eval mode): what any metric pass costs at least."""
    data, net = trainer.datamodule, pl_module.model
    net.eval()
    with torch.no_grad():
        for x, _ in data.eval_batches("train"):
            net(x)
    net.train()


def machine() -> dict:
    """The hardware and versions a measurement ran on."""
    cpu = platform.processor()
    try:
        cpu = next(
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
