"""The step cost of the non-linear-depth sweep's MLP (3 linear layers: forward, backward and a
fused SGD step, one thread) against its width, batch and number of ReLU layers, in this one run.

    .venv/bin/python scripts/bench_width.py                     # batch 32, float32: about a minute
    .venv/bin/python scripts/bench_width.py --batch 64 --bf16   # another batch, bf16 autocast

Prints the minimum over 5 blocks of 100 steps after 30 warm-up steps (the machine is noisy; the
minimum is its quietest block)."""

import argparse
import contextlib
import functools
import time

import torch

from wdcollapse.models import MLP
from wdcollapse.module import build_optimizer, classification_loss

WIDTHS, DEPTHS = (256, 192, 160, 128), (4, 8, 12)


def step_ms(
    width: int, relu_layers: int, batch: int = 32, bf16: bool = False, blocks: int = 5, steps: int = 100
) -> float:
    torch.manual_seed(0)
    net = MLP((1, 28, 28), 10, relu_layers, 3, width=width)
    sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-3, fused=True)
    opt = build_optimizer(sgd, net.parameters())
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = net(x)
        classification_loss(out.float(), y, "mse", "half_mean").backward()
        opt.step()

    for _ in range(30):
        step()
    best = float("inf")
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (trainer.precision=bf16-mixed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ms = {(w, d): step_ms(w, d, args.batch, args.bf16) for w in WIDTHS for d in DEPTHS}
    print(f"batch {args.batch}, {'bf16 autocast' if args.bf16 else 'float32'}")
    print("| ReLU layers | " + " | ".join(f"width {w}" for w in WIDTHS) + " | 128 / 256 |")
    for d in DEPTHS:
        cells = " | ".join(f"{ms[(w, d)]:.3f} ms" for w in WIDTHS)
        print(f"| {d} | {cells} | {ms[(128, d)] / ms[(256, d)]:.2f} |")


if __name__ == "__main__":
    main()
