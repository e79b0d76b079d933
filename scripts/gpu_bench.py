"""GPU measurements of issues 4 and 7: training-epoch and metric-pass times of the MNIST MLP and
of ResNet20 on the 60k MNIST training set (batch 128 and 512), in float32, bf16 autocast,
channels_last and torch.compile, through the package's own LightningModule and data module.

    python scripts/gpu_bench.py [--out outputs/bench/gpu.json] [--data-dir data] [--quick]

Builds everything directly (no Hydra, no W&B: the lent GPU machine's image has neither, only
torch, torchvision and pytorch-lightning). Times are wall-clock with the device synchronised;
epoch 0 is a warm-up (torch.compile compiles there), then the median of `--rounds` epochs.
`--quick` runs a few hundred images and small widths on whatever device there is: the test
suite runs it on the CPU so that the script keeps working between GPU sessions. Without a GPU
it measures the CPU (one thread, as a run's default `threads: 1`); `--num-per-class` takes a
class-balanced subset there, where a ResNet20 epoch on all 60,000 images takes minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a bare checkout too

from timing import PlainLoop, Rounds, machine, metric_pass_timed, timed  # noqa: E402  (scripts/timing.py)

from wdcollapse.callbacks import DivergenceGuard  # noqa: E402
from wdcollapse.data.tensors import TensorDataModule  # noqa: E402
from wdcollapse.io import atomic_write_text  # noqa: E402
from wdcollapse.models import MLP, ResNet20  # noqa: E402
from wdcollapse.module import CollapseModule, warmup_then_drop  # noqa: E402

# name: (model, batch, precision, channels_last, compile, steps_per_call)
SETTINGS = {
    "mlp_b128_fp32": ("mlp", 128, "32-true", False, False, 16),
    "mlp_b128_fp32_1step": ("mlp", 128, "32-true", False, False, 1),
    "mlp_b128_bf16": ("mlp", 128, "bf16-mixed", False, False, 16),
    "mlp_b128_fp32_compile": ("mlp", 128, "32-true", False, True, 16),
    "mlp_b256_fp32": ("mlp", 256, "32-true", False, False, 16),
    "mlp_b256_bf16": ("mlp", 256, "bf16-mixed", False, False, 16),  # the MLP figure at CPU scale
    "resnet20_b128_fp32": ("resnet20", 128, "32-true", False, False, 16),
    "resnet20_b128_bf16_cl": ("resnet20", 128, "bf16-mixed", True, False, 16),
    "resnet20_b512_fp32": ("resnet20", 512, "32-true", False, False, 16),
    "resnet20_b512_bf16_cl": ("resnet20", 512, "bf16-mixed", True, False, 16),
    "resnet20_b512_bf16_cl_compile": ("resnet20", 512, "bf16-mixed", True, True, 16),
}
# resnet20_mnist's lr: SGD as conf/optim/sgd.yaml builds it, a 1-epoch warm-up
OPTIM = {
    "optimizer": functools.partial(torch.optim.SGD, lr=0.001, momentum=0.9, weight_decay=1e-3, fused=True),
    "schedule": functools.partial(warmup_then_drop, warmup_epochs=1, drop_at=None, drop_factor=0.1),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(kind: str, quick: bool):
    width = 16 if quick else 256
    if kind == "mlp":  # the default config: 6 ReLU + 3 linear layers
        return MLP((1, 28, 28), 10, 6, 3, width=width)
    return ResNet20([1, 28, 28], 10, 3, 3, width=width)  # conf/model/resnet20.yaml


def synced_clock(device: torch.device):
    """Wall time once the device has finished its queued work."""

    def clock() -> float:
        sync(device)
        return time.perf_counter()

    return clock


def measure(name: str, args, device: torch.device) -> dict:
    kind, batch, precision, channels_last, compile_, steps = SETTINGS[name]
    torch.manual_seed(0)
    data = TensorDataModule(
        "mnist",
        args.data_dir,
        batch_size=batch,
        steps_per_call=steps,
        num_per_class=30 if args.quick else args.num_per_class,
    )
    data.setup()
    module = CollapseModule(build_model(kind, args.quick), **OPTIM, channels_last=channels_last, compile=compile_)
    timer = Rounds({"metric_pass": metric_pass_timed(exact=False)}, clock=synced_clock(device), verbose=False)
    trainer = pl.Trainer(
        max_epochs=args.rounds + 1,
        accelerator=device.type,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[DivergenceGuard(), timer],
        default_root_dir=tempfile.mkdtemp(prefix="gpu-bench-"),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    epoch, metric = timer.median("lightning"), timer.median("metric_pass")
    out = {
        "model": kind,
        "batch": batch,
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile_,
        "steps_per_call": steps,
        "num_train": data.num_train,
        "steps_per_epoch": data.steps_per_epoch,
        "epoch_s": epoch,
        "metric_pass_s": metric,
        "metrics_over_epoch": metric / epoch,
        "ms_per_step": 1e3 * epoch / data.steps_per_epoch,
        "warmup_epoch_s": timer.warmup["lightning"],
        "total_s": time.perf_counter() - start,
    }
    if name == "mlp_b128_fp32":  # the same steps without Lightning (float32), after the fit: data on the device
        plain = PlainLoop(CollapseModule(build_model(kind, args.quick), **OPTIM).to(device), data, args.rounds + 1)
        times = [timed(plain.epoch, synced_clock(device)) for _ in range(args.rounds + 1)]
        out["plain_epoch_s"] = statistics.median(times[1:])
        out["lightning_over_plain"] = epoch / out["plain_epoch_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/gpu.json")
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw (make data)")
    parser.add_argument("--rounds", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="a subset of the settings")
    parser.add_argument("--quick", action="store_true", help="tiny data and widths, no compile (a smoke test)")
    parser.add_argument(
        "--num-per-class", type=int, default=None, help="a class-balanced training subset (default: all 60,000 images)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (ignored on a GPU)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    else:
        torch.set_num_threads(args.threads)
    names = args.only or [n for n in SETTINGS if not (args.quick and SETTINGS[n][4])]
    result = {"machine": {**machine(), "lightning": pl.__version__}, "command": " ".join(sys.argv), "settings": {}}
    out = Path(args.out)
    for name in names:
        try:
            res = measure(name, args, device)
        except Exception as e:  # one failing option (e.g. compile) must not cost the others
            res = {"error": f"{type(e).__name__}: {e}"}
        result["settings"][name] = res
        line = res.get("error") or (
            f"epoch {res['epoch_s']:.3f} s ({res['ms_per_step']:.2f} ms/step), "
            f"metric pass {res['metric_pass_s']:.3f} s = {res['metrics_over_epoch']:.3f} epoch"
            + (f", lightning/plain {res['lightning_over_plain']:.3f}" if "lightning_over_plain" in res else "")
        )
        print(f"{name:32s} {line}", flush=True)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")  # after every setting: a cut keeps what ran
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
