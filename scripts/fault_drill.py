"""Kill a training run with SIGKILL at random moments, resume it each time, and compare its
final metrics with an uninterrupted run of the same config and seed.

    .venv/bin/python scripts/fault_drill.py --kills 5
    .venv/bin/python scripts/fault_drill.py --kills 10 --epochs 30 --seed 3

Prints `kills survived: k/N, epochs lost: 0, max metric difference: x` and exits non-zero if
a kill cost more than the run it hit (a lost, duplicated or different epoch).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from wdcollapse.io import read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
RUN = [
    "data.num_per_class=100",
    "model.width=128",
    "data.batch_size=50",
    "logger=none",
    "callbacks.metrics.schedule=every",
]


def command(out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "wdcollapse.train", *RUN, f"trainer.max_epochs={epochs}", f"hydra.run.dir={out}"]


def read_rows(out: Path) -> list[dict]:
    return read_jsonl(out / "metrics.jsonl")


def max_relative_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, (int, float)) and isinstance(other, (int, float)):
            worst = max(worst, abs(value - other) / max(abs(value), 1e-12))
        elif value != other:
            return float("inf")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", default=str(REPO / "outputs" / "fault_drill"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "WANDB_MODE": "disabled"}

    start = time.time()
    proc = subprocess.Popen(
        command(out / "reference", args.epochs), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not read_rows(out / "reference") and proc.poll() is None:
        time.sleep(0.02)
    startup = time.time() - start  # imports, data, model: until the epoch-0 metrics exist
    if proc.wait() != 0:
        raise SystemExit("the reference run failed")
    per_epoch = (time.time() - start - startup) / args.epochs
    print(f"reference run: start-up {startup:.1f} s, {per_epoch:.2f} s per epoch", flush=True)
    reference = read_rows(out / "reference")

    killed_dir, survived, kills = out / "killed", 0, 0
    for _ in range(args.kills):
        before = len(read_rows(killed_dir))
        if before == args.epochs + 1:
            break
        proc = subprocess.Popen(
            command(killed_dir, args.epochs), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # One kill in five lands during start-up (loading the checkpoint, trimming metrics.jsonl),
        # the others at a random moment of the training that is left.
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, startup))
        else:
            while len(read_rows(killed_dir)) <= before and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.8 * max(1, args.epochs - before) * per_epoch))
        if proc.poll() is not None:
            break  # it finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        rows = read_rows(killed_dir)
        epochs = [r["epoch"] for r in rows]
        # Survived: what is on disk is a clean prefix (no duplicate, no gap) of the reference.
        if epochs == list(range(len(epochs))) and all(r == reference[r["epoch"]] for r in rows):
            survived += 1
        print(f"kill {kills}: {before} -> {len(rows)} rows on disk", flush=True)
    subprocess.run(command(killed_dir, args.epochs), cwd=REPO, env=env, check=True, capture_output=True)

    final = read_rows(killed_dir)
    epochs = [r["epoch"] for r in final]
    lost = len(set(range(args.epochs + 1)) - set(epochs)) + (len(epochs) - len(set(epochs)))
    difference = max_relative_difference(reference[-1], final[-1])
    status = read_json(killed_dir / "summary.json")["status"]
    print(
        f"kills survived: {survived}/{kills}, epochs lost: {lost}, max metric difference: {difference:.3g}"
        f" (status {status}, {len(final)} rows)"
    )
    return 0 if survived == kills and lost == 0 and difference <= 1e-6 and status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
