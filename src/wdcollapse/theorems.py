"""The mathematics of the paper's theorems: Theorem 3.1's quantities and bound, and the
assumptions of Theorem 4.4 (4.1-4.3). No Lightning here: the observers and the callback that
measure these during training live in theory_monitors.py, the rate fits in fits.py.

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

import torch

from . import keys, metrics
from .errors import ConfigError

THEOREM31_KEYS = tuple(
    keys.theory(k)
    for k in (
        "eps1",
        "eps2",
        "r",
        "sK_Y",
        "eps1_max",
        "precondition",
        "dist",
        "dist_bound",
        "nc1",
        "nc1_dist",
        "nc1_bound",
    )
)


# ----------------------------------------------------------------------------
# Theorem 3.1


def _opn(a: torch.Tensor) -> float:
    """Spectral norm (float64)."""
    if not a.numel():
        return 0.0
    a = a.detach().double()
    return float(torch.linalg.matrix_norm(a, ord=2)) if torch.isfinite(a).all() else math.nan


def pinv(w: torch.Tensor) -> torch.Tensor:
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
        out.append(metrics.sym_op_norm(d) if torch.isfinite(d).all() else math.nan)
    return out


def check_head(head_weights: Sequence[torch.Tensor], num_classes: int) -> list[torch.Tensor]:
    heads = [w.detach().double() for w in head_weights]
    if len(heads) < 2:
        raise ValueError(f"Theorem 3.1 needs a linear head of >= 2 layers, got {len(heads)}")
    for w, w_next in zip(heads[:-1], heads[1:]):
        if w_next.shape[1] != w.shape[0]:
            raise ValueError(f"head weights do not chain: {tuple(w.shape)} then {tuple(w_next.shape)}")
    if heads[-1].shape[0] != num_classes:
        raise ValueError(f"W_L has {heads[-1].shape[0]} rows but num_classes={num_classes}")
    return heads


def assemble(
    *,
    sq_err: float,
    op_lm2: float,
    op_lm1: float,
    counts: torch.Tensor,
    dist_sq: float,
    tr_b: float,
    nc1: float,
    heads: list[torch.Tensor],
) -> dict:
    """The theory/* row from sufficient statistics (shared by `theorem31` and the observer)."""
    K = heads[-1].shape[0]
    n_lm1 = heads[-1].shape[1]
    N = int(counts.sum())
    if not all(torch.isfinite(w).all() for w in heads):  # a diverged run: nothing to measure
        return {k: (False if k == keys.theory("precondition") else math.nan) for k in THEOREM31_KEYS}
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
        keys.theory("eps1"): eps1,
        keys.theory("eps2"): eps2,
        keys.theory("r"): r,
        keys.theory("sK_Y"): sk_y,
        keys.theory("eps1_max"): eps1_max,
        keys.theory("precondition"): bool(eps1 <= eps1_max),
        keys.theory("dist"): dist,
        keys.theory("dist_bound"): dist_bound,
        keys.theory("nc1"): nc1,
        keys.theory("nc1_dist"): per_b(dist),
        keys.theory("nc1_bound"): per_b(dist_bound),
    }


def theorem31(
    z_lm2: torch.Tensor,
    z_lm1: torch.Tensor,
    z_l: torch.Tensor,
    labels: torch.Tensor,
    head_weights: Sequence[torch.Tensor],
    num_classes: int,
) -> dict:
    """Theorem 3.1's quantities from full feature matrices (rows = samples): Z_{L-2} [N, n_{L-2}],
    Z_{L-1} [N, n_{L-1}], Z_L [N, K], integer labels [N], and the linear head's weights
    W_{L1+1}, ..., W_L (>= 2 of them, [n_l, n_{l-1}]). Returns the `THEOREM31_KEYS` dict
    (floats and one bool). The reference for `TheoryObserver`; float64 throughout."""
    heads = check_head(head_weights, num_classes)
    z2, y = metrics.check_inputs(z_lm1, labels, num_classes)
    z1 = metrics.check_2d(z_lm2, "z_lm2")
    out = metrics.check_2d(z_l, "z_l")
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    target = onehot @ pinv(heads[-1]).T  # rows (W_L^+ e_{y_i})^T
    counts = torch.bincount(y, minlength=num_classes)
    means = torch.stack([z2[y == c].mean(0) for c in range(num_classes)]) if len(y) else z2
    mu_g = z2.mean(0)
    return assemble(
        sq_err=float((out - onehot).pow(2).sum()),
        op_lm2=_opn(z1),
        op_lm1=_opn(z2),
        counts=counts,
        dist_sq=float((z2 - target).pow(2).sum()),
        tr_b=float((means - mu_g).pow(2).sum() / num_classes),
        nc1=metrics.nc1(z2, y, num_classes),
        heads=heads,
    )


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
        if not row.get(keys.theory("precondition")):
            continue
        dist, bound = row.get(keys.theory("dist")), row.get(keys.theory("dist_bound"))
        nc1, nc1_bound = row.get(keys.theory("nc1")), row.get(keys.theory("nc1_bound"))
        bound = math.inf if bound is None else bound
        nc1_bound = math.inf if nc1_bound is None else nc1_bound
        checked += 1
        first = row.get("epoch") if first is None else first
        ok = dist is not None and dist <= bound * (1 + rtol) and nc1 is not None and nc1 <= nc1_bound * (1 + rtol)
        if not ok:
            violations.append(row.get("epoch"))
        if dist is not None and math.isfinite(bound) and bound > 0:
            ratios.append(dist / bound)
    return {
        "checked": checked,
        "holds": (not violations) if checked else None,
        "violations": violations,
        "max_ratio": max(ratios) if ratios else None,
        "first_epoch": first,
    }


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
        problems.append(
            "widths increase after layer 2: " + ", ".join(f"n_{l} = {a} < n_{l + 1} = {b}" for l, a, b in bad)
        )
    if problems:
        raise ConfigError(
            f"Assumption 4.1 (pyramidal widths n_1 >= N, n_2 >= ... >= n_L) does not hold for "
            f"layer widths {widths} with N = {num_train} training samples: "
            + "; ".join(problems)
            + ". Set callbacks.theory_gd.check_assumptions=false to run anyway."
        )


def activation_assumption(activation) -> dict:
    """Assumption 4.2 for the model's activation: sigma' in [gamma, 1], |sigma(x)| <= |x|,
    sigma' beta-Lipschitz. Holds for the smooth leaky ReLU (0 < gamma < 1)."""
    from .models.activations import SmoothLeakyReLU

    if isinstance(activation, SmoothLeakyReLU):
        return {
            "activation": "smooth_leaky_relu",
            "gamma": activation.gamma,
            "beta": activation.beta,
            "lipschitz_of_derivative": (1 - activation.gamma) * activation.beta / 4,
            "holds": True,
        }
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
        "lambda_F": lam_f,
        "lambda_l": lam,
        "bar_lambda_l": bar,
        "lambda_3_to_L": prod_3,
        "C0": c0,
        "lhs": lhs,
        "rhs": rhs,
        "holds": bool(lhs >= rhs),
        "X_op": _opn(X),
        "b_max_sample_norm": float(X.norm(dim=1).max()) if len(X) else 0.0,
    }


def pyramidal(widths: Sequence[int], num_train: int) -> bool:
    try:
        check_assumption_41(widths, num_train)
    except ConfigError:
        return False
    return True
