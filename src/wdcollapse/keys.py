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
    regex: str | None = None  # the keys it holds, when they are not `<key>/layer_l`

    @property
    def log_y(self) -> bool:
        return self.scale == "log"

    @property
    def pattern(self) -> str:
        """The regular expression of the family's keys (a dashboard panel's `metric_regex`)."""
        return self.regex if self.regex is not None else rf"^{self.key}/layer_\d+$"


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

# Beyond the paper (README, "Beyond the paper: stability, rank, conditioning"), also off by default.
# Of the metric pass (the weights and the class means; keys.EXTRA's switches, below):
# - conditioning: for every linear-head layer l (is_linear), the TOP_SINGULAR largest singular
#   values `weight_sv1/layer_l`, `weight_sv2/layer_l`, ..., the smallest `weight_sv_min/layer_l`
#   (s_r, r = min(n_l, n_(l-1))) and the condition number `weight_cond/layer_l` = s_1 / s_r of W_l.
WEIGHT_SV, WEIGHT_SV_MIN, WEIGHT_COND = "weight_sv", "weight_sv_min", "weight_cond"
TOP_SINGULAR = 3
# - rank: for every layer, the singular values `class_sv<i>/layer_l` (i = 1..min(K, n_l)) of the
#   class means of Z_l centred by the global mean (K x n_l), and their numerical rank
#   `rank/layer_l`: how many s_i > RANK_RTOL * s_1. For the activated layers the same of the
#   pre-activation W_l Z_(l-1): `class_sv<i>_preact/layer_l`, `rank_preact/layer_l`.
CLASS_SV, RANK, PREACT = "class_sv", "rank", "preact"
RANK_RTOL = 1e-3
# - nc0: ||sum_k W_L[k, :]||_2, the norm of the sum of the last weight's rows (Zhao et al., ICLR 2026).
NC0 = "nc0"
CONDITIONING = "conditioning"  # the switch; RANK and NC0 are their own switches' names
EXTRA.update({CONDITIONING: (WEIGHT_SV, WEIGHT_SV_MIN, WEIGHT_COND), RANK: (RANK, CLASS_SV), NC0: (NC0,)})

# Of MetricMonitor (they need the loss, the weight decay and the optimizer; wdcollapse.beyond):
# - grad_norm: `grad_norm` = ||grad (L + sum_g lambda_g/2 ||theta_g||^2)||_2 on the whole training
#   set (L its mean loss, lambda_g the weight decay of the optimizer's parameter group g), and
#   `grad_norm/loss` = ||grad L||_2.
# - agop: per layer, on the fixed subset, the average gradient outer product A_l = mean_i J_i^T J_i
#   (J_i the Jacobian of the network's output with respect to layer l's input Z_(l-1) at sample i):
#   `agop_corr/layer_l` and `agop_sqrt_corr/layer_l`, the Pearson correlation of the entries of
#   A_l and of A_l^(1/2) with those of W_l^T W_l (Beaglehole et al. 2024), and `agop_trace/layer_l`.
# - sharpness: on the fixed subset, the top eigenvalues of the Hessian of the regularised loss
#   (`sharpness` the largest, `sharpness/eig_i` the i-th), `sharpness/batch` the batch sharpness
#   (mean over mini-batches B of g_B^T H_B g_B / ||g_B||^2, arXiv 2412.20553), the thresholds
#   `sharpness/threshold_gd` = 2/eta and `sharpness/threshold_momentum` = 2(1 + beta)/eta at the
#   optimizer's current learning rate eta and momentum beta, and their cost: `sharpness/seconds`,
#   `sharpness/epochs` (those seconds over the last training epoch's).
GRAD_NORM, AGOP, SHARPNESS = "grad_norm", "agop", "sharpness"
GRAD_NORM_LOSS = f"{GRAD_NORM}/loss"
AGOP_CORR, AGOP_SQRT_CORR, AGOP_TRACE = "agop_corr", "agop_sqrt_corr", "agop_trace"
BATCH_SHARPNESS = f"{SHARPNESS}/batch"
GD_THRESHOLD, MOMENTUM_THRESHOLD = f"{SHARPNESS}/threshold_gd", f"{SHARPNESS}/threshold_momentum"
SHARPNESS_SECONDS, SHARPNESS_EPOCHS = f"{SHARPNESS}/seconds", f"{SHARPNESS}/epochs"
MONITOR_EXTRA = {
    GRAD_NORM: (GRAD_NORM,),
    AGOP: (AGOP_CORR, AGOP_SQRT_CORR, AGOP_TRACE),
    SHARPNESS: (SHARPNESS,),
}

# The optional families as the figures and the dashboards show them (FAMILIES holds the paper's).
OPTIONAL_FAMILIES = (
    Family(
        WEIGHT_COND,
        "condition number of W_l (linear head)",
        "condition number s_1 / s_min of each linear-head weight W_l",
        r"$s_1(W_l) / s_{min}(W_l)$",
        "log",
    ),
    Family(
        WEIGHT_SV,
        "singular values of W_l (linear head)",
        "top and smallest singular values of each linear-head weight W_l",
        r"$s_i(W_l)$",
        "log",
        rf"^{WEIGHT_SV}(\d+|_min)/layer_\d+$",
    ),
    Family(
        RANK,
        "numerical rank of the class means",
        f"numerical rank of the centred class means (s_i > {RANK_RTOL:g} s_1), after and before the activation",
        rf"#$\{{i: s_i > {RANK_RTOL:g}\, s_1\}}$ of $\bar Z_l - \mu_G$",
        "linear",
        rf"^{RANK}(_{PREACT})?/layer_\d+$",
    ),
    Family(
        CLASS_SV,
        "singular values of the class means",
        "singular spectrum of the centred class means, per layer, after and before the activation",
        r"$s_i(\bar Z_l - \mu_G)$",
        "log",
        rf"^{CLASS_SV}\d+(_{PREACT})?/layer_\d+$",
    ),
    Family(NC0, "NC0", "NC0 = ||sum_k W_L[k, :]||_2", r"$\|W_L^T 1_K\|_2$", "log", rf"^{NC0}$"),
    Family(
        GRAD_NORM,
        "gradient norm",
        "norm of the gradient of the regularised loss (and of the loss alone) on the training set",
        r"$\|\nabla (L + \frac{\lambda}{2}\|\theta\|^2)\|_2$",
        "log",
        rf"^{GRAD_NORM}(/loss)?$",
    ),
    Family(
        AGOP_CORR,
        "AGOP against W_l^T W_l",
        "Pearson correlation of W_l^T W_l with the AGOP and its square root, per layer",
        r"corr($W_l^T W_l$, AGOP$_l^{1/2}$)",
        "linear",
        r"^agop_(sqrt_)?corr/layer_\d+$",
    ),
    Family(AGOP_TRACE, "AGOP trace", "trace of the AGOP of each layer's input", r"tr(AGOP$_l$)", "log"),
    Family(
        SHARPNESS,
        "sharpness and its thresholds",
        "top Hessian eigenvalues of the regularised loss, batch sharpness, 2/eta and 2(1+beta)/eta",
        r"$\lambda_{max}(\nabla^2 (L + \frac{\lambda}{2}\|\theta\|^2))$",
        "log",
        rf"^{SHARPNESS}(/(eig_\d+|batch|threshold_gd|threshold_momentum))?$",
    ),
    Family(
        SHARPNESS_SECONDS,
        "cost of the sharpness",
        "seconds per sharpness evaluation, and as a fraction of a training epoch",
        "seconds; epochs",
        "linear",
        rf"^{SHARPNESS}/(seconds|epochs)$",
    ),
)
FAMILY.update({f.key: f for f in OPTIONAL_FAMILIES})

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


def weight_sv(i: int) -> str:
    """The family of W_l's i-th largest singular value (1-based): `weight_sv1`."""
    return f"{WEIGHT_SV}{i}"


def class_sv(i: int, preact: bool = False) -> str:
    """The family of the i-th singular value (1-based) of the centred class means, of the
    pre-activation with `preact`: `class_sv2`, `class_sv2_preact`."""
    return f"{CLASS_SV}{i}" + (f"_{PREACT}" if preact else "")


def sharpness_eig(i: int) -> str:
    """The key of the Hessian's i-th largest eigenvalue (1-based): `sharpness` for the first,
    `sharpness/eig_2`, ... after it."""
    return SHARPNESS if i == 1 else f"{SHARPNESS}/eig_{i}"


def on_test(key: str) -> str:
    """The key of a metric-pass value measured on the test split: `test/nc1/layer_3`."""
    return f"{TEST}/{key}"


def of_weights_only(key: str) -> bool:
    """Whether the metric pass's value `key` depends on the weights alone (balancedness, the ETF
    measures of W_L, conditioning, nc0): the same on every split, so the test pass leaves it out."""
    parsed = parse_layer(key)
    weight_families = (BALANCEDNESS, WEIGHT_SV_MIN, WEIGHT_COND)
    if parsed is not None and (parsed[0] in weight_families or re.fullmatch(rf"{WEIGHT_SV}\d+", parsed[0])):
        return True
    return key == NC0 or key.endswith(f"/{WEIGHTS}")


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
