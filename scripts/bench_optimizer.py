"""`make bench-optimizer`: SGD in torch's fused kernel (`optim.fused`, the default) against the
per-tensor path (`optim.fused=false`), on the cpu preset's networks, in this one run.

    .venv/bin/python scripts/bench_optimizer.py [--rounds 5] [--steps 200] [--out outputs/bench/optimizer.json]

For each network: two copies of one module, the same batches, their optimizer steps timed in
alternating blocks (this process's CPU time, one thread); prints the median ratio fused /
per-tensor over the rounds and whether the two copies end on finite, bitwise equal parameters. About a
minute on a 2-core CPU. Random inputs of the data set's shape: a dense step's cost does not depend
on the pixel values.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import copy
import functools
import json
import math
import statistics
from pathlib import Path

import torch
from bench import compose_cfg  # scripts/bench.py
from hydra.utils import instantiate
from timing import PlainLoop, machine, timed  # scripts/timing.py

from wdcollapse.io import atomic_write_text
from wdcollapse.module import CollapseModule

TRAIN_IMAGES = 60_000  # MNIST's training set, which the figures train on

# name: (overrides, bf16 autocast); the figures' own settings (conf/reproduce/cpu.yaml)
NETWORKS = {
    "nonlinear_depth_mnist, 10 ReLU layers, batch 32, float32": (
        ["experiment=nonlinear_depth_mnist", "preset=cpu", "model.nonlinear_depth=10", "data.batch_size=32"],
        False,
    ),
    "nonlinear_depth_mnist, 4 ReLU layers, batch 32, float32": (
        ["experiment=nonlinear_depth_mnist", "preset=cpu", "model.nonlinear_depth=4", "data.batch_size=32"],
        False,
    ),
    "mlp_mnist, batch 128, bf16 autocast": (["experiment=mlp_mnist", "preset=cpu"], True),
    "linear_depth_mnist, 5 linear layers, batch 128, bf16 autocast": (
        ["experiment=linear_depth_mnist", "preset=cpu", "model.linear_depth=5"],
        True,
    ),
}


class Batches:
    """The same list of (x, y) batches every epoch, as PlainLoop reads a data module; the
    schedule counts `steps_per_epoch` of the real training set (its warm-up as in the figure's
    first epoch: at a full learning rate after a few steps, random data would diverge)."""

    def __init__(self, batches: list, steps_per_epoch: int):
        self.batches, self.steps_per_epoch = batches, steps_per_epoch

    def train_batches(self) -> list:
        return self.batches


def timed_loop(module: CollapseModule, fused: bool, data: Batches, bf16: bool, epochs: int) -> PlainLoop:
    """A copy of `module` trained by PlainLoop with SGD fused or not (its own optimizer state)."""
    copied = copy.deepcopy(module)
    factory = module.optimizer_factory
    copied.optimizer_factory = functools.partial(factory.func, *factory.args, **{**factory.keywords, "fused": fused})
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    return PlainLoop(copied, data, max_epochs=epochs, forward_context=autocast)


def flat(loop: PlainLoop) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in loop.module.model.parameters()])


def bench(overrides, bf16: bool, rounds: int, steps: int) -> dict:
    cfg = compose_cfg(*overrides)
    torch.manual_seed(0)
    module = instantiate(cfg.module)  # the network, optimizer and schedule as wdcollapse-train builds them
    module.train()
    shape, k, b = tuple(cfg.data.in_shape), int(cfg.data.num_classes), int(cfg.data.batch_size)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, *shape, generator=g), torch.randint(0, k, (b,), generator=g)) for _ in range(steps)]
    data = Batches(batches, math.ceil(TRAIN_IMAGES / b))
    fused, plain = (timed_loop(module, f, data, bf16, rounds + 1) for f in (True, False))
    assert fused.opt.defaults["fused"] and not plain.opt.defaults["fused"]
    fused.epoch(), plain.epoch()  # warm-up, the same batches for both
    times = {"fused": [], "per_tensor": []}
    for r in range(rounds):
        pair = [("fused", fused), ("per_tensor", plain)]
        for name, loop in pair if r % 2 == 0 else pair[::-1]:
            times[name].append(timed(loop.epoch))
    ratio = statistics.median(a / p for a, p in zip(times["fused"], times["per_tensor"]))
    return {
        "overrides": overrides,
        "bf16": bf16,
        "ms_per_step": {n: round(1e3 * statistics.median(t) / steps, 3) for n, t in times.items()},
        "fused_over_per_tensor": round(ratio, 3),
        "finite": bool(torch.isfinite(flat(fused)).all()),
        "bitwise_equal": bool(torch.equal(flat(fused), flat(plain))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per timed block")
    parser.add_argument("--out", default="outputs/bench/optimizer.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"machine": machine(), "command": "make bench-optimizer", "networks": {}}
    print(f"{'network':<64} {'fused ms':>9} {'per-tensor ms':>14} {'ratio':>6}  bitwise equal")
    for name, (overrides, bf16) in NETWORKS.items():
        res = bench(overrides, bf16, args.rounds, args.steps)
        result["networks"][name] = res
        ms = res["ms_per_step"]
        print(
            f"{name:<64} {ms['fused']:>9.2f} {ms['per_tensor']:>14.2f} {res['fused_over_per_tensor']:>6.3f}  "
            f"{res['bitwise_equal']}",
            flush=True,
        )
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
