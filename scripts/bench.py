"""`make bench`: the performance ratios of issue 4, each measured within this one run.

    .venv/bin/python scripts/bench.py [--rounds 3] [--out outputs/bench/bench.json]

Prints a table and writes the JSON file. About 3-5 minutes on a 2-core CPU. Everything runs on
one thread (the default `threads: 1`; NumPy's BLAS too, for a fair naive reference), and times
are this process's CPU time, which other jobs on a shared machine hardly disturb (wall-clock
times are in the JSON too). Every ratio compares two timings taken in this process,
interleaved round by round; the reported value is the median over the rounds. See
BENCHMARKS.md for what each number means.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy and torch load their BLAS

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timing import PlainLoop, Rounds, forward_timed, machine, metric_pass_timed, timed  # scripts/timing.py

from wdcollapse import metrics
from wdcollapse.callbacks import DivergenceGuard, evaluation_epochs
from wdcollapse.config import CONF_DIR, register_resolvers
from wdcollapse.io import atomic_write_text
from wdcollapse.metric_pass import metric_pass

TARGETS = {  # name: (comparison, bound)
    "lightning_over_plain": ("<=", 1.05),
    "metrics_over_epoch": ("<=", 0.35),
    "metrics_over_epoch_exact": ("<=", 0.35),
    "metrics_over_epoch_default": ("<=", 0.05),
    "streaming_speedup": (">=", 5.0),
    "flops_fraction": (">=", 0.5),
    "metric_peak_mem_over_features": ("<=", 2.0),
}


def clock() -> float:
    """CPU time of this process: with one thread, the time the work took regardless of what
    else runs on the machine."""
    return time.process_time()


def median(values) -> float:
    return float(statistics.median(values))


def compose_cfg(*overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", *overrides])
    return cfg


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's dense float32 matmul FLOP/s on this thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / median(timed(lambda: a @ b) for _ in range(repeats))


def mlp_train_flops_per_sample(widths: list[int]) -> int:
    """Matmul FLOPs of one SGD step per sample: forward 2 d_in d_out per layer, backward the
    same for the weight gradient and for the input gradient (not needed for the first layer)."""
    pairs = list(zip(widths[:-1], widths[1:]))
    return sum(6 * a * b for a, b in pairs) - 2 * pairs[0][0] * pairs[0][1]


def trainer_kwargs(cfg, max_epochs: int, callbacks: list) -> dict:
    """build_trainer's Trainer, without checkpointing, logging or the metric callback."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.update(
        max_epochs=max_epochs,
        callbacks=[DivergenceGuard(), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(prefix="bench-"),
    )
    return kwargs


def metric_passes(monitor) -> dict:
    return {
        "metrics_exact": metric_pass_timed(True),
        "metrics_fast": metric_pass_timed(False),
        "metrics_no_negativity": metric_pass_timed(False, negativity=False),
        "forward": forward_timed,
        "evaluate": lambda trainer, pl_module: monitor.evaluate(trainer, pl_module, trainer.current_epoch + 1),
    }


def bench_training(cfg, rounds: int, peak: float, with_metrics: bool = True) -> dict:
    """Lightning epochs of `cfg` against the plain loop (and the metric passes)."""
    torch.manual_seed(int(cfg.seed))
    data = instantiate(cfg.data, steps_per_call=int(cfg.steps_per_call))
    data.setup()
    module = instantiate(cfg.module)  # the network, optimizer and schedule as wdcollapse-train builds them
    plain = PlainLoop(copy.deepcopy(module), data, max_epochs=rounds + 1)
    passes = {"plain": lambda trainer, pl_module: plain.epoch()}
    if with_metrics:
        monitor = instantiate(cfg.callbacks.metrics, out_dir=tempfile.mkdtemp(prefix="bench-metrics-"))
        passes.update(metric_passes(monitor))
    rounds_cb = Rounds(passes)
    pl.Trainer(**trainer_kwargs(cfg, rounds + 1, [rounds_cb])).fit(module, datamodule=data)
    t = rounds_cb.times
    widths = [int(np.prod(cfg.data.in_shape))] + [int(w.shape[0]) for w in module.model.weights]
    flops = mlp_train_flops_per_sample(widths) * data.num_train / rounds_cb.median("lightning")
    steps = data.steps_per_epoch
    out = {
        "times_s": {k: [round(x, 3) for x in v] for k, v in t.items()},
        "num_train": data.num_train,
        "batch_size": data.batch_size,
        "widths": widths,
        "lightning_over_plain": rounds_cb.ratio("lightning", "plain"),
        "lightning_overhead_ms_per_step": 1e3 * median(a - b for a, b in zip(t["lightning"], t["plain"])) / steps,
        "train_flops_per_s": flops,
        "flops_fraction": flops / peak,
    }
    if with_metrics:
        out.update(
            {
                "metrics_over_epoch": rounds_cb.ratio("metrics_fast", "lightning"),
                "metrics_over_epoch_exact": rounds_cb.ratio("metrics_exact", "lightning"),
                "evaluate_over_epoch": rounds_cb.ratio("evaluate", "lightning"),
                # What the 0.35 target leaves room for on this machine (BENCHMARKS.md)
                "metrics_over_epoch_no_negativity": rounds_cb.ratio("metrics_no_negativity", "lightning"),
                "forward_over_epoch": rounds_cb.ratio("forward", "lightning"),
            }
        )
    return out


def schedule_costs(per_epoch: dict[str, float]) -> dict:
    """Metric cost over a whole run: ratio x evaluations / epochs, for the default config and
    the presets (the per-epoch ratios hardly depend on the training-set size)."""
    out = {}
    for preset in (None, "cpu", "paper"):
        cfg = compose_cfg(*([f"preset={preset}"] if preset else []))
        m = cfg.callbacks.metrics
        epochs = int(cfg.trainer.max_epochs)
        evals = len(evaluation_epochs(epochs, m.schedule, m.every_n, m.num_points))
        out[preset or "default"] = {
            "schedule": f"{m.schedule} (every_n={m.every_n}, num_points={m.num_points})",
            "evaluations": evals,
            "epochs": epochs,
            **{k: v * evals / epochs for k, v in per_epoch.items()},
        }
    return out


def bench_widths(widths: list[int], per_class: int, rounds: int, peak: float) -> dict:
    """The default MLP at other widths on a class-balanced training subset (FLOP/s and the
    Lightning overhead per step do not depend on its size): Lightning against plain epochs."""
    out = {}
    for width in widths:
        res = bench_training(
            compose_cfg(f"model.width={width}", f"data.num_per_class={per_class}"), rounds, peak, with_metrics=False
        )
        out[width] = {
            k: res[k]
            for k in (
                "lightning_over_plain",
                "lightning_overhead_ms_per_step",
                "flops_fraction",
                "num_train",
                "times_s",
            )
        }
        print(
            f"  width {width}: {res['train_flops_per_s'] / 1e9:.1f} GFLOP/s = {res['flops_fraction']:.2f} of the "
            f"matmul peak; Lightning / plain {res['lightning_over_plain']:.3f}",
            flush=True,
        )
    return out


def naive_metrics(z: np.ndarray, y: np.ndarray, w: np.ndarray, k: int) -> list[float]:
    """The reference a first implementation would write: all features in memory, float64,
    per-class loops and full SVDs."""
    means = np.stack([z[y == c].mean(0) for c in range(k)])
    within = sum(((z[y == c] - means[c]) ** 2).sum() for c in range(k)) / len(y)
    between = ((means - z.mean(0)) ** 2).sum() / k
    s = np.linalg.svd(means.T, compute_uv=False)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    nc3 = float((zn * wn[y]).sum(1).mean())
    negativity = np.linalg.norm(np.minimum(z, 0.0), 2) / np.linalg.norm(z, 2)
    return [within / between, s[0] / s[k - 1], nc3, negativity]


def streaming_metrics(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int, exact: bool, chunk: int = 4096
) -> list[float]:
    nc = metrics.NCAccumulator(k, weight=w, exact=exact)
    neg = metrics.NegativityAccumulator(z.shape[1], exact=exact)
    for start in range(0, len(y), chunk):
        nc.update(z[start : start + chunk], y[start : start + chunk])
        neg.update(z[start : start + chunk])
    return [nc.nc1(), nc.nc2(), nc.nc3(), neg.value()]


def bench_streaming(n: int, d: int, k: int, repeats: int) -> dict:
    """Naive reference vs our accumulators on the same float32 features [n, d]: class means
    plus noise, of both signs (negativity is about the negative part)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    z = (torch.randn(k, d, generator=g)[y] + 0.5 * torch.randn(n, d, generator=g)).float()
    w = torch.randn(k, d, generator=g)
    z64, y_np, w64 = z.double().numpy(), y.numpy(), w.double().numpy()
    times = {"naive": [], "exact": [], "fast": []}
    values = {}
    for _ in range(repeats):
        for name, fn in (
            ("naive", lambda: naive_metrics(z64, y_np, w64, k)),
            ("exact", lambda: streaming_metrics(z, y, w, k, True)),
            ("fast", lambda: streaming_metrics(z, y, w, k, False)),
        ):
            start = clock()
            values[name] = fn()
            times[name].append(clock() - start)

    def rel(a, b):
        return max(abs(p - q) / abs(q) for p, q in zip(a, b))

    return {
        "shape": [n, d, k],
        "times_s": {k_: [round(t, 3) for t in v] for k_, v in times.items()},
        # The callback's path (callbacks.metrics.exact=false): float32 per chunk, float64 sums.
        "streaming_speedup": median(a / b for a, b in zip(times["naive"], times["fast"])),
        "streaming_speedup_exact": median(a / b for a, b in zip(times["naive"], times["exact"])),
        "streaming_max_rel_diff": rel(values["fast"], values["naive"]),
        "streaming_exact_max_rel_diff": rel(values["exact"], values["naive"]),
    }


def memory_child(exact: bool) -> None:
    """Run in a fresh process (see bench_memory): the peak extra resident memory of one
    metric pass over the default config's training set."""
    torch.set_num_threads(1)
    cfg = compose_cfg()
    data = instantiate(cfg.data)
    data.setup()
    torch.manual_seed(0)
    net = instantiate(cfg.model).eval()
    metric_pass(net, data.eval_batches("train"), data.num_classes, exact=exact)  # warm-up

    def status(field: str) -> int:
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS:")
    metric_pass(net, data.eval_batches("train"), data.num_classes, exact=exact)
    features = data.num_train * max(w.shape[0] for w in net.weights[:-1]) * 4  # float32 [N, width]
    print(json.dumps({"peak_extra_bytes": status("VmHWM:") - base, "feature_bytes": features}))


def bench_memory() -> dict:
    # glibc would keep freed blocks and serve the pass from them without the resident size
    # growing; with a fixed, low mmap threshold every large tensor is mapped and unmapped.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = {"feature_bytes": None}
    for mode in ("fast", "exact"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:  # e.g. no /proc/self/clear_refs (not Linux)
            print(f"  memory ({mode}) not measured: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            out[mode] = float("nan")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out[mode] = res["peak_extra_bytes"] / res["feature_bytes"]
        out["feature_bytes"] = res["feature_bytes"]
    return out


def bench_negativity_kernels(n: int = 4096, d: int = 256, repeats: int = 30) -> dict:
    """Per-chunk milliseconds (one [n, d] float32 chunk, the metric pass's size) of the exact
    negativity's Gram matrix against what an approximate one would run instead: one block
    power-iteration step Z^T (Z V) for b = 1, 4 and 16 vectors (matrix-vector products are
    memory-bound; MKL is oddly slow at b = 4 here)."""
    z = torch.randn(n, d)
    out = {"gram": 1e3 * median(timed(lambda: metrics._gram(z)) for _ in range(repeats))}
    for b in (1, 4, 16):
        v = torch.randn(d, b)
        out[f"power_step_b{b}"] = 1e3 * median(timed(lambda: z.T @ (z @ v)) for _ in range(repeats))  # noqa: B023 (called at once)
    return out


def table(result: dict) -> str:
    rows = [("name", "value", "target", "met")]
    for name, (op, bound) in TARGETS.items():
        value = result[name]
        met = value <= bound if op == "<=" else value >= bound
        rows.append((name, f"{value:.3f}", f"{op} {bound}", "yes" if met else "NO"))
    for name in (
        "lightning_overhead_ms_per_step",
        "lightning_over_plain_width_1024",
        "evaluate_over_epoch",
        "metrics_over_epoch_no_negativity",
        "forward_over_epoch",
        "streaming_speedup_exact",
        "streaming_max_rel_diff",
        "streaming_exact_max_rel_diff",
        "metric_peak_mem_over_features_exact",
    ):
        rows.append((name, f"{result[name]:.3g}", "", ""))
    kernels = result["negativity_kernels_ms"]
    rows.append(
        (
            "negativity per [4096, 256] chunk: Gram; Z^T(Z V), b = 1, 4, 16 (ms)",
            f"{kernels['gram']:.2f}; {kernels['power_step_b1']:.2f}, {kernels['power_step_b4']:.2f}, "
            f"{kernels['power_step_b16']:.2f}",
            "",
            "",
        )
    )
    for width, res in result["by_width"].items():
        rows.append(
            (
                f"width {width}: flops_fraction, lightning_over_plain",
                f"{res['flops_fraction']:.3f}, {res['lightning_over_plain']:.3f}",
                "",
                "",
            )
        )
    for name, cost in result["schedules"].items():
        rows.append(
            (
                f"metrics over run, {name}: {cost['evaluations']} evals / {cost['epochs']} epochs",
                f"{cost['fast']:.3f} fast, {cost['exact']:.3f} exact",
                "",
                "",
            )
        )
    for name in ("bf16 autocast", "channels_last (ResNet20)", "torch.compile"):
        rows.append((f"GPU: {name}", "not measured" if not result["machine"]["gpu"] else "see BENCHMARKS.md", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per ratio (median)")
    parser.add_argument("--out", default="outputs/bench/bench.json")
    parser.add_argument("--memory-child", choices=("fast", "exact"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child == "exact")
        return
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = {"machine": machine(), "command": "make bench (.venv/bin/python scripts/bench.py)"}
    print(f"bench on {result['machine']['cpu']}, {result['machine']['cores']} cores, 1 torch thread", flush=True)

    peak = matmul_flops()
    result["matmul_flops_per_s"] = peak
    print(f"dense float32 matmul: {peak / 1e9:.1f} GFLOP/s", flush=True)

    print("training epoch (Lightning and plain) and metric passes, default config:", flush=True)
    cfg = compose_cfg()
    train = bench_training(cfg, args.rounds, peak)
    result["default_config"] = train
    for key in (
        "lightning_over_plain",
        "lightning_overhead_ms_per_step",
        "metrics_over_epoch",
        "metrics_over_epoch_exact",
        "evaluate_over_epoch",
        "metrics_over_epoch_no_negativity",
        "forward_over_epoch",
    ):
        result[key] = train[key]
    result["schedules"] = schedule_costs(
        {"fast": train["metrics_over_epoch"], "exact": train["metrics_over_epoch_exact"]}
    )
    # The callback's path is `callbacks.metrics.exact` (false by default: the fast path).
    path = "exact" if cfg.callbacks.metrics.exact else "fast"
    result["metrics_over_epoch_default"] = result["schedules"]["default"][path]

    result["negativity_kernels_ms"] = bench_negativity_kernels()

    print("streaming metrics vs the naive reference (N=60000, d=512, K=10):", flush=True)
    result.update(bench_streaming(60000, 512, 10, args.rounds))

    print("wider MLPs (10,000 training samples):", flush=True)
    wide = bench_widths([512, 1024], per_class=1000, rounds=args.rounds, peak=peak)
    result["by_width"] = {train["widths"][1]: {k: train[k] for k in wide[512] if k in train}, **wide}
    result["flops_fraction"] = min(v["flops_fraction"] for w, v in result["by_width"].items() if w >= 512)
    result["lightning_over_plain_width_1024"] = wide[1024]["lightning_over_plain"]

    print("peak memory of the metric pass (fresh processes):", flush=True)
    mem = bench_memory()
    result["metric_peak_mem_over_features"] = mem["fast"]
    result["metric_peak_mem_over_features_exact"] = mem["exact"]
    result["feature_bytes"] = mem["feature_bytes"]

    result["wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
