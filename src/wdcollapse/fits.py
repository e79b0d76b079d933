"""Fits of recorded curves against Theorem 4.4: the exponential rate of a series, the start of
gradient descent's second phase, and the balancing rate of a theory_gd run against the theory's
(1 - eta lambda)^2 per step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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
    return {
        "factor": math.exp(slope),
        "log_rate": slope,
        "intercept": float(y.mean() - slope * s.mean()),
        "r2": r2,
        "points": len(pts),
    }


def phase2_start(losses: Sequence[float], settle: float = 0.01) -> int | None:
    """Index where phase 2 begins: the first k after which the loss stays within `settle` of
    its total decrease above its final level, i.e. loss_j - loss_end <= settle (loss_0 -
    loss_end) for every j >= k (loss_end = the mean of the last 5% of the steps). None if
    the loss did not decrease."""
    vals = [math.inf if v is None or not math.isfinite(v) else float(v) for v in losses]
    if len(vals) < 2:
        return None
    tail = vals[-max(1, len(vals) // 20) :]
    end = sum(tail) / len(tail)
    drop = vals[0] - end
    if not math.isfinite(drop) or drop <= 0:
        return None
    limit = end + settle * drop
    k = len(vals)
    while k > 0 and vals[k - 1] <= limit:
        k -= 1
    return k if k < len(vals) else None


def analyse_steps(
    rows: Sequence[dict],
    weight_decay: float,
    settle: float = 0.01,
    floor: float = 1e-5,
    tolerance: float = 0.2,
    min_points: int = 20,
) -> dict:
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
    base = {
        "phase2_start_step": None,
        "fit_end_step": None,
        "fitted_factor": None,
        "theory_factor": None,
        "log_rate_ratio": None,
        "fit_r2": None,
        "fit_points": 0,
        "tolerance": tolerance,
        "matches": None,
        "rule": (
            f"phase 2 starts at the first step after which the loss stays within {settle} of its "
            f"total decrease above its final level; the balancedness error is fitted over phase 2 "
            f"while it is above {floor} x its value at the boundary"
        ),
    }
    if not rows:
        return base
    k0 = phase2_start([r["loss"] for r in rows], settle)
    if k0 is None:
        return base
    d0 = rows[k0]["balancedness_error"]
    fit_rows = rows[k0:]
    if d0 is not None and d0 > 0:
        last = max(
            (
                i
                for i, r in enumerate(fit_rows)
                if r["balancedness_error"] is not None and r["balancedness_error"] > floor * d0
            ),
            default=0,
        )
        fit_rows = fit_rows[: last + 1]
    base["phase2_start_step"] = rows[k0]["step"]
    base["fit_end_step"] = fit_rows[-1]["step"]
    phase1 = fit_rate([r["step"] for r in rows[:k0]], [r["loss"] for r in rows[:k0]])
    base.update(
        phase1_loss_factor=phase1["factor"],
        phase1_loss_r2=phase1["r2"],
        loss_start=rows[0]["loss"],
        loss_at_phase2_start=rows[k0]["loss"],
        loss_end=rows[-1]["loss"],
        balancedness_start=rows[0]["balancedness_error"],
        balancedness_at_phase2_start=d0,
        balancedness_end=rows[-1]["balancedness_error"],
    )
    lrs = [r["lr"] for r in fit_rows if r.get("lr") is not None]
    eta = sum(lrs) / len(lrs) if lrs else None
    fit = fit_rate([r["step"] for r in fit_rows], [r["balancedness_error"] for r in fit_rows])
    base.update(
        fit_points=fit["points"], fitted_factor=fit["factor"], fit_r2=fit["r2"], eta=eta, weight_decay=weight_decay
    )
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
