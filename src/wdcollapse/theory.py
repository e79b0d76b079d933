"""The paper's theorems, measured: Theorem 3.1's quantities at every metric pass, and the
setting of Theorem 4.4 (Assumptions 4.1-4.3, the two phases of gradient descent and the
balancing rate (1 - eta lambda)^2 per step) for `experiment=theory_gd`.

Notation of the paper (Jacot et al. 2025): L layers, L1 activated then L2 >= 2 linear ones,
W_l of shape [n_l, n_{l-1}], Z_l the n_l x N output of layer l, Y the K x N one-hot targets.
In code the features are rows, z_l of shape [N, n_l] (= Z_l^T); norms do not care, and the
columns W_L^+ Y of the paper are the rows pinv(W_L)^T[y_i] here.

Theorem 3.1: if ||Z_L - Y||_F <= eps1, ||W_{l+1}^T W_{l+1} - W_l W_l^T||_op <= eps2 for the
linear-head pairs, ||Z_{L-2}||_op, ||Z_{L-1}||_op, ||W_l||_op <= r (linear head), and
eps1 <= min(s_K(Y), sqrt((K-1)N/(4K))), then
    ||Z_{L-1} - W_L^+ Y||_F <= r (eps1 / (s_K(Y) - eps1) + sqrt(n_{L-1} eps2))
and tr(Sigma_W) <= ||Z_{L-1} - W_L^+ Y||_F^2 / N, so NC1(Z_{L-1}) <= that over tr(Sigma_B).
The distance bound itself only needs eps1 < s_K(Y) (the proof's two pieces, the row space of
W_L and its null space); the second part of the precondition makes tr(Sigma_B) = Omega(1).

Metric-row keys (`theory/...`, see `THEOREM31_KEYS`): eps1, eps2, r, sK_Y, eps1_max
(= min(s_K(Y), sqrt((K-1)N/(4K)))), precondition (eps1 <= eps1_max), dist, dist_bound, nc1
(measured NC1 of Z_{L-1}), nc1_dist (||Z_{L-1} - W_L^+ Y||_F^2 / N / tr(Sigma_B), measured
distance) and nc1_bound (the same with dist_bound in place of the distance). A bound that
does not exist (eps1 >= s_K(Y)) is inf, written as null in JSON.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from . import metrics
from .errors import ConfigError
from .io import append_jsonl, atomic_write_json, keep_jsonl_rows, read_json, read_jsonl
from .module import half_sum_factor

__all__ = [
    "THEOREM31_KEYS",
    "theorem31",
    "TheoryObserver",
    "theory_observers",
    "check_assumption_41",
    "assumption_43",
    "fit_rate",
    "phase2_start",
    "analyse_steps",
    "TheoryGDMonitor",
    "bound_holds",
    "rate_matches",
]

THEOREM31_KEYS = tuple(f"theory/{k}" for k in (
    "eps1", "eps2", "r", "sK_Y", "eps1_max", "precondition", "dist", "dist_bound",
    "nc1", "nc1_dist", "nc1_bound"))


# ----------------------------------------------------------------------------
# Theorem 3.1


def _opn(a: torch.Tensor) -> float:
    """Spectral norm (float64)."""
    if not a.numel():
        return 0.0
    a = a.detach().double()
    return float(torch.linalg.matrix_norm(a, ord=2)) if torch.isfinite(a).all() else math.nan


def _pinv(w: torch.Tensor) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse in float64; all NaN for a non-finite matrix."""
    if not torch.isfinite(w).all():
        return torch.full(w.T.shape, math.nan, dtype=torch.float64, device=w.device)
    return torch.linalg.pinv(w.double())


def balancedness_errors(head_weights: Sequence[torch.Tensor]) -> list[float]:
    """||W_{l+1}^T W_{l+1} - W_l W_l^T||_op (unnormalised) for each consecutive pair of
    `head_weights` (W_{L1+1}, ..., W_L), in float64."""
    out = []
    for w, w_next in zip(head_weights[:-1], head_weights[1:]):
        a, b = w_next.detach().double(), w.detach().double().to(w_next.device)
        d = a.T @ a - b @ b.T
        out.append(metrics._sym_op_norm(d) if torch.isfinite(d).all() else math.nan)
    return out


def _check_head(head_weights: Sequence[torch.Tensor], num_classes: int) -> list[torch.Tensor]:
    heads = [w.detach().double() for w in head_weights]
    if len(heads) < 2:
        raise ValueError(f"Theorem 3.1 needs a linear head of >= 2 layers, got {len(heads)}")
    for w, w_next in zip(heads[:-1], heads[1:]):
        if w_next.shape[1] != w.shape[0]:
            raise ValueError(f"head weights do not chain: {tuple(w.shape)} then {tuple(w_next.shape)}")
    if heads[-1].shape[0] != num_classes:
        raise ValueError(f"W_L has {heads[-1].shape[0]} rows but num_classes={num_classes}")
    return heads


def _assemble(*, sq_err: float, op_lm2: float, op_lm1: float, counts: torch.Tensor, dist_sq: float,
              tr_b: float, nc1: float, heads: list[torch.Tensor]) -> dict:
    """The theory/* row from sufficient statistics (shared by `theorem31` and the observer)."""
    K = heads[-1].shape[0]
    n_lm1 = heads[-1].shape[1]
    N = int(counts.sum())
    if not all(torch.isfinite(w).all() for w in heads):  # a diverged run: nothing to measure
        return {k: (False if k == "theory/precondition" else math.nan) for k in THEOREM31_KEYS}
    eps1 = math.sqrt(max(sq_err, 0.0))
    eps2 = max(balancedness_errors(heads))
    r = max([op_lm2, op_lm1] + [_opn(w) for w in heads])
    # Y Y^T = diag(class counts): the singular values of Y are sqrt(counts).
    sk_y = math.sqrt(float(counts.min())) if len(counts) == K else 0.0
    eps1_max = min(sk_y, math.sqrt((K - 1) * N / (4 * K)))
    dist = math.sqrt(max(dist_sq, 0.0))
    if eps1 < sk_y:
        dist_bound = r * (eps1 / (sk_y - eps1) + math.sqrt(n_lm1 * eps2))
    else:
        dist_bound = math.inf
    per_b = (lambda d: d * d / N / tr_b) if tr_b > 0 else (lambda d: math.inf)
    return {
        "theory/eps1": eps1,
        "theory/eps2": eps2,
        "theory/r": r,
        "theory/sK_Y": sk_y,
        "theory/eps1_max": eps1_max,
        "theory/precondition": bool(eps1 <= eps1_max),
        "theory/dist": dist,
        "theory/dist_bound": dist_bound,
        "theory/nc1": nc1,
        "theory/nc1_dist": per_b(dist),
        "theory/nc1_bound": per_b(dist_bound),
    }


def theorem31(z_lm2: torch.Tensor, z_lm1: torch.Tensor, z_l: torch.Tensor, labels: torch.Tensor,
              head_weights: Sequence[torch.Tensor], num_classes: int) -> dict:
    """Theorem 3.1's quantities from full feature matrices (rows = samples): Z_{L-2} [N, n_{L-2}],
    Z_{L-1} [N, n_{L-1}], Z_L [N, K], integer labels [N], and the linear head's weights
    W_{L1+1}, ..., W_L (>= 2 of them, [n_l, n_{l-1}]). Returns the `THEOREM31_KEYS` dict
    (floats and one bool). The reference for `TheoryObserver`; float64 throughout."""
    heads = _check_head(head_weights, num_classes)
    z2, y = metrics._check_inputs(z_lm1, labels, num_classes)
    z1 = metrics._check_2d(z_lm2, "z_lm2")
    out = metrics._check_2d(z_l, "z_l")
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    target = onehot @ _pinv(heads[-1]).T  # rows (W_L^+ e_{y_i})^T
    counts = torch.bincount(y, minlength=num_classes)
    means = torch.stack([z2[y == c].mean(0) for c in range(num_classes)]) if len(y) else z2
    mu_g = z2.mean(0)
    return _assemble(
        sq_err=float((out - onehot).pow(2).sum()),
        op_lm2=_opn(z1), op_lm1=_opn(z2), counts=counts,
        dist_sq=float((z2 - target).pow(2).sum()),
        tr_b=float((means - mu_g).pow(2).sum() / num_classes),
        nc1=metrics.nc1(z2, y, num_classes), heads=heads,
    )


class TheoryObserver:
    """An observer for `probe.metric_pass`: accumulates Theorem 3.1's quantities over the
    chunks of one pass in float64 (the Gram matrix of Z_{L-2}, the squared error, the distance
    to W_L^+ Y, class statistics), never holding all features. `result()` equals `theorem31`
    on the stacked features. Z_{L-1} = Z_{L-2} W_{L-1}^T (a linear layer), so its Gram matrix
    is W_{L-1} G_{L-2} W_{L-1}^T: no second N x d Gram product. `exact=False`: the
    accumulators' fast path (per-chunk statistics in the features' precision)."""

    def __init__(self, net, num_classes: int, exact: bool = True):
        if not self.supports(net):
            raise ValueError(
                f"Theorem 3.1 needs a linear head of >= 2 layers and L >= 3 layers (Z_{{L-2}} must be a "
                f"layer's output), got nonlinear_depth={net.nonlinear_depth}, linear_depth={net.linear_depth}")
        self.num_classes = int(num_classes)
        self.L = net.num_layers
        self.heads = _check_head(net.weights[net.nonlinear_depth:], num_classes)
        self.pinv_rows = _pinv(self.heads[-1]).T.contiguous()  # [K, n_{L-1}]
        self.gram_lm2 = metrics.GramAccumulator(net.weights[-2].shape[1], exact=exact)
        self.nc = metrics.NCAccumulator(num_classes, exact=exact)
        self.layers = (self.L - 3, self.L - 2)  # the metric pass keeps Z_{L-2} and Z_{L-1} for us
        self.sq_err = 0.0
        self.dist_sq = 0.0

    @staticmethod
    def supports(net) -> bool:
        return net.linear_depth >= 2 and net.num_layers >= 3

    def update(self, trace, labels: torch.Tensor) -> None:
        """A chunk of the metric pass, whose labels' range it has checked (no host read here)."""
        z2, y = metrics._check_inputs(trace.outputs[self.L - 2], labels, self.num_classes, check_range=False)
        self.gram_lm2.update(trace.outputs[self.L - 3])
        # in the features' precision when not exact
        self.nc.update(trace.outputs[self.L - 2], y, labels_checked=True)
        out = trace.output.detach().double()
        onehot = torch.nn.functional.one_hot(y, self.num_classes).to(out.dtype)
        self.pinv_rows = self.pinv_rows.to(z2.device)
        # 0-dim float64 tensors (read in result()): no host synchronisation per chunk
        self.sq_err = self.sq_err + (out - onehot).pow(2).sum()
        self.dist_sq = self.dist_sq + (z2 - self.pinv_rows[y]).pow(2).sum()

    def merge(self, other: "TheoryObserver") -> "TheoryObserver":
        """Fold in an observer of the same network fed disjoint data (another process's share
        of a data-parallel metric pass): Gram matrices and sums add, class statistics merge."""
        if other.L != self.L or other.num_classes != self.num_classes:
            raise ValueError("cannot merge theory observers of different networks")
        self.gram_lm2.merge(other.gram_lm2)
        self.nc.merge(other.nc)
        self.sq_err += other.sq_err
        self.dist_sq += other.dist_sq
        return self

    def _op_lm1(self) -> float:
        """||Z_{L-1}||_op from G_{L-2}: sqrt(lambda_max(W_{L-1} G_{L-2} W_{L-1}^T))."""
        w = self.heads[-2].to(self.gram_lm2.gram.device)
        return metrics._gram_op_norm(w @ self.gram_lm2.gram @ w.T)

    def result(self) -> dict:
        counts, means, _ = self.nc._stats()
        return _assemble(
            sq_err=float(self.sq_err), op_lm2=self.gram_lm2.op_norm(), op_lm1=self._op_lm1(),
            counts=counts.cpu(), dist_sq=float(self.dist_sq), tr_b=metrics.between_class_trace(counts, means),
            nc1=self.nc.nc1(), heads=self.heads,
        )


def check_theory_setting(setting) -> None:
    if setting not in ("auto", True, False):
        raise ValueError(f"callbacks.metrics.theory={setting!r}; choose auto, true or false")


def theory_observers(setting, net, num_classes: int, exact: bool = True) -> list:
    """The observers MetricMonitor's `theory` option asks for: `auto` = a TheoryObserver when
    the model has a linear head of >= 2 layers (and L >= 3), true = always (an error if the
    model has no such head), false = none."""
    check_theory_setting(setting)
    if setting is False or (setting == "auto" and not TheoryObserver.supports(net)):
        return []
    return [TheoryObserver(net, num_classes, exact=exact)]


def bound_holds(rows: Sequence[dict], rtol: float = 1e-9) -> dict:
    """Theorem 3.1 checked over metrics.jsonl rows: at every row whose `theory/precondition`
    is true, is the measured ||Z_{L-1} - W_L^+ Y||_F (`theory/dist`) <= its bound
    (`theory/dist_bound`), and the measured NC1 (`theory/nc1`) <= `theory/nc1_bound`?
    (`rtol` absorbs float rounding.) Returns {checked: number of such rows, holds: bool (None
    when none was checked), violations: their epochs, max_ratio: largest dist / dist_bound,
    first_epoch: the first epoch where the precondition held}."""
    checked, violations, ratios = 0, [], []
    first = None
    for row in rows:
        if not row.get("theory/precondition"):
            continue
        dist, bound = row.get("theory/dist"), row.get("theory/dist_bound")
        nc1, nc1_bound = row.get("theory/nc1"), row.get("theory/nc1_bound")
        bound = math.inf if bound is None else bound
        nc1_bound = math.inf if nc1_bound is None else nc1_bound
        checked += 1
        first = row.get("epoch") if first is None else first
        ok = dist is not None and dist <= bound * (1 + rtol) and nc1 is not None and nc1 <= nc1_bound * (1 + rtol)
        if not ok:
            violations.append(row.get("epoch"))
        if dist is not None and math.isfinite(bound) and bound > 0:
            ratios.append(dist / bound)
    return {"checked": checked, "holds": (not violations) if checked else None,
            "violations": violations, "max_ratio": max(ratios) if ratios else None,
            "first_epoch": first}


# ----------------------------------------------------------------------------
# Theorem 4.4's setting


def check_assumption_41(widths: Sequence[int], num_train: int) -> None:
    """Assumption 4.1 (pyramidal topology): n_1 >= N and n_2 >= n_3 >= ... >= n_L, for the
    output widths [n_1, ..., n_L] of the fully connected layers. Raises ConfigError."""
    widths = [int(w) for w in widths]
    problems = []
    if widths[0] < num_train:
        problems.append(f"n_1 = {widths[0]} < N = {num_train} (raise model.width[0] or lower data.num_per_class)")
    # widths[i] is n_{i+1}: compare n_l and n_{l+1} for l = 2..L-1
    bad = [(i + 1, widths[i], widths[i + 1]) for i in range(1, len(widths) - 1) if widths[i + 1] > widths[i]]
    if bad:
        problems.append("widths increase after layer 2: " + ", ".join(
            f"n_{l} = {a} < n_{l + 1} = {b}" for l, a, b in bad))
    if problems:
        raise ConfigError(
            f"Assumption 4.1 (pyramidal widths n_1 >= N, n_2 >= ... >= n_L) does not hold for "
            f"layer widths {widths} with N = {num_train} training samples: " + "; ".join(problems)
            + ". Set callbacks.theory_gd.check_assumptions=false to run anyway.")


def activation_assumption(activation) -> dict:
    """Assumption 4.2 for the model's activation: sigma' in [gamma, 1], |sigma(x)| <= |x|,
    sigma' beta-Lipschitz. Holds for the smooth leaky ReLU (0 < gamma < 1)."""
    from .models.activations import SmoothLeakyReLU

    if isinstance(activation, SmoothLeakyReLU):
        return {"activation": "smooth_leaky_relu", "gamma": activation.gamma, "beta": activation.beta,
                "lipschitz_of_derivative": (1 - activation.gamma) * activation.beta / 4, "holds": True}
    return {"activation": type(activation).__name__, "gamma": None, "beta": None, "holds": False}


@torch.no_grad()
def assumption_43(net, x: torch.Tensor, labels: torch.Tensor, num_classes: int, gamma: float) -> dict:
    """Assumption 4.3 at the current (initial) weights, on the training set x (inputs) with
    labels: lambda_F = s_min(sigma(W_1 X)) (X = the trunk's output, d x N), lambda_l =
    s_min(W_l), bar_lambda_l = ||W_l||_op + min_{l in 3..L} lambda_l, C_0 = 1/2 ||Z_L - Y||_F^2,
    and whether lambda_F lambda_{3->L} min(lambda_F, min_{l>=3} lambda_l)
    >= 8 gamma sqrt((2/gamma)^L C_0). Empty products are 1 and empty minima are dropped."""
    trace = net.forward_layers(x)
    X = net.trunk(x).double()
    F = trace.outputs[0].double() if net.nonlinear_depth >= 1 else trace.preacts[0].double()
    lam_f = float(torch.linalg.svdvals(F)[-1])
    weights = [w.detach().double() for w in net.weights]
    lam = [float(torch.linalg.svdvals(w)[-1]) for w in weights]
    L = len(weights)
    min_3 = min(lam[2:]) if L >= 3 else None
    bar = [_opn(w) + (min_3 or 0.0) for w in weights]
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()
    c0 = 0.5 * float((trace.output.double() - onehot).pow(2).sum())
    prod_3 = math.prod(lam[2:])
    lhs = lam_f * prod_3 * min([lam_f] + ([min_3] if min_3 is not None else []))
    rhs = 8 * gamma * math.sqrt((2 / gamma) ** L * c0) if gamma else math.inf
    return {
        "lambda_F": lam_f, "lambda_l": lam, "bar_lambda_l": bar, "lambda_3_to_L": prod_3,
        "C0": c0, "lhs": lhs, "rhs": rhs, "holds": bool(lhs >= rhs),
        "X_op": _opn(X), "b_max_sample_norm": float(X.norm(dim=1).max()) if len(X) else 0.0,
    }


def fit_rate(steps: Sequence[float], values: Sequence[float]) -> dict:
    """Least-squares fit of log(values) = a + k log(q) over the given steps: the per-step
    factor q, the intercept and R^2. Non-positive values are dropped."""
    pts = [(float(s), math.log(v)) for s, v in zip(steps, values) if v is not None and v > 0]
    if len(pts) < 2:
        return {"factor": None, "log_rate": None, "intercept": None, "r2": None, "points": len(pts)}
    s = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    sc, yc = s - s.mean(), y - y.mean()
    slope = float((sc * yc).sum() / sc.pow(2).sum())
    resid = yc - slope * sc
    ss = float(yc.pow(2).sum())
    r2 = 1.0 - float(resid.pow(2).sum()) / ss if ss > 0 else 1.0
    return {"factor": math.exp(slope), "log_rate": slope, "intercept": float(y.mean() - slope * s.mean()),
            "r2": r2, "points": len(pts)}


def phase2_start(losses: Sequence[float], settle: float = 0.01) -> int | None:
    """Index where phase 2 begins: the first k after which the loss stays within `settle` of
    its total decrease above its final level, i.e. loss_j - loss_end <= settle (loss_0 -
    loss_end) for every j >= k (loss_end = the mean of the last 5% of the steps). None if
    the loss did not decrease."""
    vals = [math.inf if v is None or not math.isfinite(v) else float(v) for v in losses]
    if len(vals) < 2:
        return None
    tail = vals[-max(1, len(vals) // 20):]
    end = sum(tail) / len(tail)
    drop = vals[0] - end
    if not math.isfinite(drop) or drop <= 0:
        return None
    limit = end + settle * drop
    k = len(vals)
    while k > 0 and vals[k - 1] <= limit:
        k -= 1
    return k if k < len(vals) else None


def analyse_steps(rows: Sequence[dict], weight_decay: float, settle: float = 0.01,
                  floor: float = 1e-5, tolerance: float = 0.2, min_points: int = 20) -> dict:
    """The two phases of Theorem 4.4 in a steps.jsonl sequence (rows with step, loss,
    balancedness_error, lr). Phase 2 starts at `phase2_start(loss, settle)`; the balancedness
    error is fitted as exp(a + k log q) by least squares over phase 2, up to the last step
    where it is still above `floor` times its value at the phase boundary (below that,
    float32 rounding and the theory's noise term dominate). The theory's per-step factor is
    (1 - eta lambda)^2 with eta the mean lr of the fitted steps; they match when the ratio of
    the log-rates log(q_fit) / log(q_theory) is within `tolerance` of 1 (and >= `min_points`
    steps were fitted). Also: the per-step factor of an exponential fit to the loss in phase 1
    and the loss and balancedness error at the start, the boundary and the end."""
    rows = sorted(rows, key=lambda r: r["step"])
    base = {"phase2_start_step": None, "fit_end_step": None, "fitted_factor": None,
            "theory_factor": None, "log_rate_ratio": None, "fit_r2": None, "fit_points": 0,
            "tolerance": tolerance, "matches": None, "rule": (
                f"phase 2 starts at the first step after which the loss stays within {settle} of its "
                f"total decrease above its final level; the balancedness error is fitted over phase 2 "
                f"while it is above {floor} x its value at the boundary")}
    if not rows:
        return base
    k0 = phase2_start([r["loss"] for r in rows], settle)
    if k0 is None:
        return base
    d0 = rows[k0]["balancedness_error"]
    fit_rows = rows[k0:]
    if d0 is not None and d0 > 0:
        last = max((i for i, r in enumerate(fit_rows)
                    if r["balancedness_error"] is not None and r["balancedness_error"] > floor * d0), default=0)
        fit_rows = fit_rows[: last + 1]
    base["phase2_start_step"] = rows[k0]["step"]
    base["fit_end_step"] = fit_rows[-1]["step"]
    phase1 = fit_rate([r["step"] for r in rows[:k0]], [r["loss"] for r in rows[:k0]])
    base.update(phase1_loss_factor=phase1["factor"], phase1_loss_r2=phase1["r2"],
                loss_start=rows[0]["loss"], loss_at_phase2_start=rows[k0]["loss"], loss_end=rows[-1]["loss"],
                balancedness_start=rows[0]["balancedness_error"], balancedness_at_phase2_start=d0,
                balancedness_end=rows[-1]["balancedness_error"])
    lrs = [r["lr"] for r in fit_rows if r.get("lr") is not None]
    eta = sum(lrs) / len(lrs) if lrs else None
    fit = fit_rate([r["step"] for r in fit_rows], [r["balancedness_error"] for r in fit_rows])
    base.update(fit_points=fit["points"], fitted_factor=fit["factor"], fit_r2=fit["r2"], eta=eta,
                weight_decay=weight_decay)
    if eta is not None:
        q = (1 - eta * weight_decay) ** 2
        base["theory_factor"] = q
        if fit["log_rate"] is not None and 0 < q < 1:
            base["log_rate_ratio"] = fit["log_rate"] / math.log(q)
            base["matches"] = bool(fit["points"] >= min_points and abs(base["log_rate_ratio"] - 1) <= tolerance)
    return base


def rate_matches(theory_json: dict) -> dict:
    """The balancing-rate check of a theory_gd run, from its theory.json (a dict): did the
    fitted per-step factor of the balancedness error in phase 2 match the theory's
    (1 - eta lambda)^2? Returns {matches (None if no fit), fitted_factor, theory_factor,
    log_rate_ratio, tolerance, phase2_start_step, fit_points, assumption_4_3_holds}."""
    rate = (theory_json or {}).get("rate") or {}
    return {
        "matches": rate.get("matches"),
        "fitted_factor": rate.get("fitted_factor"),
        "theory_factor": rate.get("theory_factor"),
        "log_rate_ratio": rate.get("log_rate_ratio"),
        "tolerance": rate.get("tolerance"),
        "phase2_start_step": rate.get("phase2_start_step"),
        "fit_points": rate.get("fit_points"),
        "assumption_4_3_holds": ((theory_json or {}).get("assumption_4_3") or {}).get("holds"),
    }


class TheoryGDMonitor(Callback):
    """For `experiment=theory_gd`. At set-up: checks Assumption 4.1 (ConfigError when
    violated, if `check_assumptions`). At the start of a fresh run: writes theory.json with
    the setting, Assumption 4.2 for the activation and Assumption 4.3's quantities at theta_0.
    At every step k: a row {step, loss = 1/2 ||Z_L - Y||_F^2 (the training loss at theta_k),
    reg_loss = loss + lambda/2 ||theta_k||^2, balancedness_error = max over the linear-head
    pairs of ||W_{l+1}^T W_{l+1} - W_l W_l^T||_op at theta_k, balancedness_pairs, lr} buffered
    and appended to steps.jsonl every `flush_every_n_epochs` epochs (set it to the checkpoint
    interval: rows are on disk before the checkpoint that covers them). At the end: the
    phase detection and rate fit of `analyse_steps`, stored under "rate" in theory.json.
    On resume, steps.jsonl keeps only the rows of the steps the checkpoint has done."""

    def __init__(self, out_dir: str | Path, check_assumptions: bool = True, flush_every_n_epochs: int = 1,
                 settle: float = 0.01, floor: float = 1e-5, tolerance: float = 0.2, min_points: int = 20):
        self.out_dir = Path(out_dir)
        self.check_assumptions = bool(check_assumptions)
        self.flush_every = max(1, int(flush_every_n_epochs))
        self.settle, self.floor, self.tolerance, self.min_points = settle, floor, tolerance, min_points
        self.buffer: list[dict] = []
        self.pending: dict | None = None

    @property
    def steps_path(self) -> Path:
        return self.out_dir / "steps.jsonl"

    @property
    def theory_path(self) -> Path:
        return self.out_dir / "theory.json"

    @staticmethod
    def _widths(net) -> list[int]:
        return [int(w.shape[0]) for w in net.weights]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size > 1:
            # Its per-step loss and files are those of one process's full batch.
            raise ConfigError(
                f"experiment=theory_gd (full-batch gradient descent, Theorem 4.4) runs in one process; "
                f"got trainer.strategy with world size {trainer.world_size}: use trainer.devices=1")
        data = trainer.datamodule
        if getattr(data, "steps_per_call", 1) > 1 and data.steps_per_epoch > 1:
            # Its rows are per optimizer step, written from Lightning's per-call batch hooks.
            raise ConfigError(
                f"the theory_gd monitor records every optimizer step: with {data.steps_per_epoch} "
                f"mini-batches per epoch it needs steps_per_call=1 (got {data.steps_per_call})")
        if self.check_assumptions:
            check_assumption_41(self._widths(pl_module.model), data.num_train)

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        # A kill between these rows and the checkpoint leaves rows the resumed run redoes.
        keep_jsonl_rows(self.steps_path, lambda row: row["step"] < step)
        self.buffer, self.pending = [], None
        if step == 0 or not self.theory_path.exists():
            self._write_initial(trainer, pl_module)

    def _write_initial(self, trainer, pl_module) -> None:
        net, data = pl_module.model, trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        act = activation_assumption(net.activation)
        opt = pl_module.optim
        info = {
            "setting": {
                "N": data.num_train, "K": data.num_classes, "widths": self._widths(net),
                "input_dim": int(net.weights[0].shape[1]), "nonlinear_depth": net.nonlinear_depth,
                "linear_depth": net.linear_depth, "lr": float(opt["lr"]),
                "weight_decay": float(opt.get("weight_decay", 0.0)), "optimizer": opt.get("name"),
                "momentum": float(opt.get("momentum", 0.0)) if opt.get("name") != "gd" else 0.0,
                "full_batch": getattr(data, "batch_size", None) in (None, data.num_train),
                "loss": pl_module.loss_name, "mse_reduction": pl_module.mse_reduction,
                "max_steps": int(data.steps_per_epoch * trainer.max_epochs),
            },
            "assumption_4_1": {"holds": _pyramidal(self._widths(net), data.num_train)},
            "assumption_4_2": act,
            "assumption_4_3": assumption_43(net, data.train_x, data.train_y, data.num_classes,
                                            act["gamma"] or 0.0),
        }
        pl_module.train(was_training)
        atomic_write_json(self.theory_path, info)

    def _head(self, net) -> list[torch.Tensor]:
        return [w.detach() for w in net.weights[net.nonlinear_depth:]]

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        net = pl_module.model
        group = trainer.optimizers[0].param_groups[0]
        pairs = balancedness_errors(self._head(net)) if net.linear_depth >= 2 else []
        sq = float(sum(p.detach().double().pow(2).sum() for p in net.parameters()))  # one host read
        self.pending = {"step": trainer.global_step, "lr": float(group["lr"]),
                        "wd": float(group.get("weight_decay", 0.0)), "sq": sq, "pairs": pairs}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pending is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = float(loss.detach()) if loss is not None else math.nan
        # The training loss in the theory's reduction C_0 = 1/2 ||Z_L - Y||_F^2 on the batch
        # (a group of one (x, y): see setup).
        y = batch[1] if isinstance(batch, tuple) else batch[0][1]
        loss *= half_sum_factor(pl_module.loss_name, pl_module.mse_reduction, len(y), trainer.datamodule.num_classes)
        p, self.pending = self.pending, None
        self.buffer.append({
            "step": p["step"], "loss": loss, "reg_loss": loss + 0.5 * p["wd"] * p["sq"],
            "balancedness_error": max(p["pairs"]) if p["pairs"] else None,
            "balancedness_pairs": p["pairs"], "lr": p["lr"],
        })

    def flush(self) -> None:
        if not self.buffer:
            return
        append_jsonl(self.steps_path, *self.buffer)
        self.buffer = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.flush_every == 0 or epoch == trainer.max_epochs:
            self.flush()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()
        info = read_json(self.theory_path, default={}) or {}
        wd = float(pl_module.optim.get("weight_decay", 0.0))
        info["rate"] = analyse_steps(read_jsonl(self.steps_path), wd, self.settle, self.floor,
                                     self.tolerance, self.min_points)
        atomic_write_json(self.theory_path, info)


def _pyramidal(widths: Sequence[int], num_train: int) -> bool:
    try:
        check_assumption_41(widths, num_train)
    except ConfigError:
        return False
    return True
