"""The names of every value the metric pass records, in one place.

metrics.jsonl rows, summary.json's final row, grams.json, the claims, the plots, the report and
W&B all name values through this module, so a key is spelled once. Layers are numbered 1..L as
in the paper: layer l is the output Z_l of the l-th layer, pair l the weights (W_l, W_(l+1))."""

from __future__ import annotations

import re
from dataclasses import dataclass

EPOCH = "epoch"  # epochs of training done: 0 = at initialisation, e = after e epochs
STEP = "step"  # optimizer steps done (trainer.global_step)
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TEST_ACC = "test/acc"
NC3 = "nc3"  # of the penultimate features Z_(L-1) against the last weight W_L

# Per-layer metric families: `nc1/layer_3`, ...; balancedness is per pair (l, l+1), negativity
# is recorded for the activated layers only.
NC1, NC2, BALANCEDNESS, NEGATIVITY = "nc1", "nc2", "balancedness", "negativity"
PER_LAYER = (NC1, NC2, BALANCEDNESS, NEGATIVITY)


@dataclass(frozen=True)
class Family:
    """A per-layer metric family as every view shows it: the figures (plots), the W&B dashboards
    (dashboards) and anything new read these, so a family is described once."""

    key: str  # the key's prefix: `<key>/layer_l`
    title: str  # a panel's title in the figures
    summary: str  # a dashboard section's title: the definition in plain text
    axis: str  # the y label in the figures (matplotlib mathtext)
    scale: str  # y axis: "log" (the theory predicts exponential decay), "linear", or "auto"

    @property
    def log_y(self) -> bool:
        return self.scale == "log"


FAMILIES = (
    Family(
        NC1,
        "NC1 (within-class variability)",
        "NC1 = tr(Sigma_W) / tr(Sigma_B), per layer",
        r"NC1 = tr($\Sigma_W$) / tr($\Sigma_B$)",
        "log",
    ),
    Family(
        NC2,
        "NC2 (condition number of class means)",
        "NC2 = s_1(M) / s_K(M) of the class means, per layer",
        r"NC2 = $s_1(\bar Z) / s_K(\bar Z)$",
        "auto",
    ),
    Family(
        BALANCEDNESS,
        "balancedness of pair (l, l+1)",
        "balancedness of pair (l, l+1)",
        "$\\|W_{l+1}^T W_{l+1} - W_l W_l^T\\|_{op}$\n/ min($\\|W_{l+1}^T W_{l+1}\\|_{op}$, $\\|W_l W_l^T\\|_{op}$)",
        "log",
    ),
    Family(
        NEGATIVITY,
        "negativity (ReLU layers)",
        "negativity of the ReLU layers",
        r"$\|Z_l - \sigma(Z_l)\|_{op} / \|Z_l\|_{op}$ (pre-activation)",
        "linear",
    ),
)
FAMILY = {f.key: f for f in FAMILIES}

THEORY = "theory"  # Theorem 3.1's quantities: `theory/nc1_bound`, ...

# Optional metrics from the literature (metric_pass(extra=...), callbacks.metrics.extra), off by
# default. Per layer: Papyan et al.'s NC1 = tr(Sigma_W Sigma_B^+) / K and Galanti et al.'s CDNV.
NC1_PAPYAN, CDNV = "nc1_papyan", "cdnv"
# Of the simplex ETF (NC2), for the centred class means of Z_(L-1) and the rows of W_L:
# `nc2_equinorm/features`, `nc2_equiangularity/weights`, ...
NC2_EQUINORM, NC2_EQUIANGULARITY = "nc2_equinorm", "nc2_equiangularity"
FEATURES, WEIGHTS = "features", "weights"
NC3_DUALITY = "nc3_duality"  # || W_L/||W_L||_F - M/||M||_F ||_F^2, M the centred means of Z_(L-1)
NC4 = "nc4"  # agreement of the network's prediction with the nearest class centre of Z_(L-1)

# The switches of those families (schema.ExtraMetrics has one boolean each, and `test_set`) and
# the key families each adds.
PAPYAN_NC1_CDNV, ETF, SELF_DUALITY = "papyan_nc1_cdnv", "etf", "self_duality"  # and NC4's own name
EXTRA = {
    PAPYAN_NC1_CDNV: (NC1_PAPYAN, CDNV),
    ETF: (NC2_EQUINORM, NC2_EQUIANGULARITY),
    SELF_DUALITY: (NC3_DUALITY,),
    NC4: (NC4,),
}

TEST = "test"  # the metric pass on the test split: `test/nc1/layer_3`, `test/nc4`, ...

_PER_LAYER_KEY = re.compile(r"^(?P<metric>[a-z0-9_]+)/layer_(?P<layer>\d+)$")


def layer(metric: str, l: int) -> str:
    """The key of `metric` (one of PER_LAYER, NC1_PAPYAN, CDNV) at layer (or pair) `l`: `nc1/layer_3`."""
    return f"{metric}/layer_{l}"


def parse_layer(key: str) -> tuple[str, int] | None:
    """(metric, layer) of a per-layer key, None for any other key."""
    m = _PER_LAYER_KEY.match(key)
    return (m["metric"], int(m["layer"])) if m else None


def etf(metric: str, of: str) -> str:
    """The key of an ETF measure (NC2_EQUINORM, NC2_EQUIANGULARITY) of FEATURES or WEIGHTS:
    `nc2_equinorm/features`."""
    return f"{metric}/{of}"


def on_test(key: str) -> str:
    """The key of a metric-pass value measured on the test split: `test/nc1/layer_3`."""
    return f"{TEST}/{key}"


def of_weights_only(key: str) -> bool:
    """Whether the metric pass's value `key` depends on the weights alone (balancedness, the ETF
    measures of W_L): the same on every split, so the test pass leaves it out."""
    parsed = parse_layer(key)
    return (parsed is not None and parsed[0] == BALANCEDNESS) or key.endswith(f"/{WEIGHTS}")


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
