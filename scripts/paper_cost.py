"""What `make reproduce PRESET=paper` costs: per figure, the runs of conf/reproduce/paper.yaml,
their optimizer steps (the paper preset's epochs x the full training set / batch), and the time
of one optimizer step of each run's own network measured on this machine (one thread, float32,
a random batch of the run's shape), so the CPU hours are measured and the GPU hours estimated.

    python scripts/paper_cost.py [--steps 5] [--gpu-ms-mlp 1.0] [--gpu-ms-resnet 10.0]

The GPU column is an ESTIMATE, not a measurement: no GPU was lent to this project yet. It assumes
an MLP step costs about 1 ms on a GPU (kernel-launch bound: ~30 small kernels per step at width
512) and a ResNet20 step at batch 128 about 10 ms in float32; `make bench-gpu` measures both.
The metric passes (the paper preset's 50 log-spaced evaluations) add under 1% and are left out.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a bare checkout too

from wdcollapse.config import CONF_DIR, register_resolvers  # noqa: E402
from wdcollapse.figures import preset_sweeps  # noqa: E402

FULL_SET = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}


def step_seconds(cfg, steps: int) -> float:
    """Median time of one SGD step (forward, MSE loss, backward, update) of cfg's network."""
    net = instantiate(cfg.model)
    batch = int(cfg.data.batch_size or FULL_SET[cfg.data.name])
    x = torch.randn(batch, *cfg.data.in_shape)
    y = torch.eye(int(cfg.data.num_classes))[torch.randint(0, int(cfg.data.num_classes), (batch,))]
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = 0.5 * ((net(x) - y) ** 2).sum() / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network (after one warm-up step)")
    parser.add_argument("--gpu-ms-mlp", type=float, default=1.0, help="assumed GPU ms per MLP step (an estimate)")
    parser.add_argument("--gpu-ms-resnet", type=float, default=10.0, help="assumed GPU ms per ResNet20 step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_resolvers()
    _, figures = preset_sweeps("paper")
    print(
        "| figure | runs | steps per run | CPU s/step (measured) | CPU hours (all runs) | "
        "GPU hours (ESTIMATE) |\n|---|---|---|---|---|---|"
    )
    total_cpu = total_gpu = 0.0
    measured: dict = {}
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        for figure in figures:
            cpu_h = gpu_h = 0.0
            steps_per_run = set()
            combos = figure.combinations()
            for combo in combos:
                overrides = [
                    f"experiment={figure.experiment}",
                    *(["preset=paper"] if figure.use_preset else []),
                    *[f"{k}={v}" for k, v in combo.items()],
                    *figure.overrides,
                ]
                cfg = compose("train", overrides=overrides)
                n = cfg.data.num_per_class * cfg.data.num_classes if cfg.data.num_per_class else FULL_SET[cfg.data.name]
                steps = int(cfg.trainer.max_epochs) * math.ceil(n / int(cfg.data.batch_size or n))
                steps_per_run.add(steps)
                shape = (
                    cfg.model._target_,
                    cfg.model.nonlinear_depth,
                    cfg.model.linear_depth,
                    str(cfg.model.width),
                    tuple(cfg.data.in_shape),
                    cfg.data.batch_size,
                    n,
                )
                if shape not in measured:  # seeds, learning rates and weight decays cost the same
                    measured[shape] = step_seconds(cfg, args.steps)
                seconds = measured[shape]
                resnet = "ResNet20" in cfg.model._target_
                cpu_h += steps * seconds / 3600
                gpu_h += steps * (args.gpu_ms_resnet if resnet else args.gpu_ms_mlp) / 1000 / 3600
            label = "/".join(str(s) for s in sorted(steps_per_run))
            print(
                f"| {figure.name} | {len(combos)} | {label} | {seconds:.4f} (last run) | {cpu_h:.1f} | {gpu_h:.1f} |",
                flush=True,
            )
            total_cpu, total_gpu = total_cpu + cpu_h, total_gpu + gpu_h
    print(f"| all | | | | {total_cpu:.0f} | {total_gpu:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
