"""The names of every value the metric pass records, in one place.

metrics.jsonl rows, summary.json's final row, grams.json, the claims, the plots, the report and
W&B all name values through this module, so a key is spelled once. Layers are numbered 1..L as
in the paper: layer l is the output Z_l of the l-th layer, pair l the weights (W_l, W_(l+1))."""

from __future__ import annotations

import re

EPOCH = "epoch"
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TEST_ACC = "test/acc"
NC3 = "nc3"  # of the penultimate features Z_(L-1) against the last weight W_L

# Per-layer metric families: `nc1/layer_3`, ...; balancedness is per pair (l, l+1), negativity
# is recorded for the activated layers only.
NC1, NC2, BALANCEDNESS, NEGATIVITY = "nc1", "nc2", "balancedness", "negativity"
PER_LAYER = (NC1, NC2, BALANCEDNESS, NEGATIVITY)

THEORY = "theory"  # Theorem 3.1's quantities: `theory/nc1_bound`, ...

_PER_LAYER_KEY = re.compile(r"^(?P<metric>[a-z0-9_]+)/layer_(?P<layer>\d+)$")


def layer(metric: str, l: int) -> str:
    """The key of `metric` (one of PER_LAYER) at layer (or pair) `l`: `nc1/layer_3`."""
    return f"{metric}/layer_{l}"


def parse_layer(key: str) -> tuple[str, int] | None:
    """(metric, layer) of a per-layer key, None for any other key."""
    m = _PER_LAYER_KEY.match(key)
    return (m["metric"], int(m["layer"])) if m else None


def theory(name: str) -> str:
    """The key of one of Theorem 3.1's quantities: `theory/nc1_bound`."""
    return f"{THEORY}/{name}"


def gram(l: int) -> str:
    """grams.json's key of the class-mean Gram matrix of layer l's output Z_l."""
    return f"layer_{l}"


def gram_preact(l: int) -> str:
    """grams.json's key of the Gram matrix of layer l's pre-activation (before its ReLU)."""
    return f"preact_{l}"


def paper_grams(nonlinear_depth: int, num_layers: int) -> list[str]:
    """The paper's three Gram matrices (its figures' bottom row): the last ReLU layer's
    pre-activation, then the outputs of the linear-head layers except the last (the inputs of
    the last three weights)."""
    names = [gram_preact(nonlinear_depth)] if nonlinear_depth >= 1 else []
    names += [gram(l) for l in range(nonlinear_depth + 1, num_layers)]
    return names[-3:]
