"""The paper's four claims (docs/claims.md), each decided from run directories by a stated rule,
and three beyond the paper (claims 5-7: experiments the paper did not run; docs/claims.md, "Beyond
the paper"), whose rules state an expectation and whose verdict says whether it held.

Every claim function takes the finished runs of one figure and returns {"claim", "statement",
"rule", "passed", "deciding", "evidence"}: `passed` is None when the runs it needs are missing,
`deciding` is one line with the numbers that decided it. `judge(figure, runs)` applies every
claim a figure is registered with (wdcollapse.figures) and names the figure in each result."""

from __future__ import annotations

import math

import numpy as np

from . import keys
from .fits import fit_rate
from .runs import (
    Run,
    by_lr_and_nonlinear_depth,
    by_weight_decay_and_linear_depth,
    gram_keys,
    linear_depth_point,
    nonlinear_depth_point,
)

# Thresholds of the rules, in one place.
LINEAR_BALANCED = 0.1  # claim 1: final balancedness of every linear-head pair below this
BALANCING_FALL = 10.0  # claim 1: ... after falling at least this factor from its peak
EXPONENTIAL_R2 = 0.9  # claim 1: ... along a straight line in log scale over the last half
LAST_HALF_FALL = 2.0  # claim 1: ... that still falls this factor over the last half
NONLINEAR_GAP = 3.0  # claim 1: non-linear pairs stay on average this factor less balanced
NC1_COLLAPSED = 0.05  # claim 2: NC1 of the penultimate features below this
NC2_FALL = 5.0  # claim 2: NC2 of the penultimate features fell at least this factor
NC2_CLOSE = 3.0  # claim 2: ... to below this (1 = orthogonal equal-norm class means)
GRAM_OFF_DIAGONAL = 0.2  # claim 2: largest |cosine| between class means in the last Gram
SETTLED_CHANGE = 0.05  # claim 4: mean balancedness and negativity moved at most this (relative)
SETTLED_FROM = 0.75  # claim 4: ... between this fraction of the training epochs and the end
# Beyond the paper (claims 5-7)
EDGE_BAND = (0.8, 1.1)  # claim 5: batch sharpness / (2(1+beta)/eta) at the peak learning rate stays in this band
EDGE_FROM = 0.5  # claim 5: ... over the evaluations from this fraction of the peak-lr evaluations on
STABLE_AFTER_DROP = 1.1  # claim 5: after the drop the batch sharpness stays <= this x the new threshold
PAPER_LINEAR_DEPTH = 5  # claim 6: the deepest head of the paper's Fig. 2
DEEPER_GAIN = 0.1  # claim 6: a deeper head improves NC2 when it cuts NC2 - 1 by >= this fraction


def spearman(x, y) -> float:
    """Rank correlation (ties get their mean rank)."""

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty_like(v)
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def depth_list(depths: list[int]) -> str:
    """`1..5` for consecutive depths, else every depth (`1, 2, 3, 5`): the deciding numbers list
    one value per depth, so the label must name each one."""
    if len(depths) > 2 and list(depths) == list(range(depths[0], depths[-1] + 1)):
        return f"{depths[0]}..{depths[-1]}"
    return ", ".join(str(d) for d in depths)


def _result(cid, statement, rule, passed, evidence, deciding=""):
    return {
        "claim": cid,
        "statement": statement,
        "rule": rule,
        "passed": None if passed is None else bool(passed),
        "deciding": deciding,
        "evidence": evidence,
    }


def _ok(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.status == "finished" and r.history]


def _final(run: Run, pair: int) -> float:
    """A pair's final balancedness; NaN where it was not finite (written as null)."""
    value = run.final.get(keys.layer(keys.BALANCEDNESS, pair))
    return np.nan if value is None else float(value)


def _ratio(a: float, b: float) -> float:
    """a / b, with a / 0 = inf (nan for 0 / 0) instead of an exception."""
    return a / b if b != 0 else (np.nan if a == 0 or math.isnan(a) else np.inf)


def claim1_linear_head_balances(runs: list[Run], first_layer: int = 1) -> dict:
    statement = (
        "Linear-head layers become balanced: their balancedness falls (exponentially) during "
        "training, while the non-linear layers stay clearly less balanced."
    )
    rule = (
        f"mean over seeds: final balancedness of every linear pair (both layers linear) < {LINEAR_BALANCED}; "
        f"in every seed, every linear pair fell >= {BALANCING_FALL}x from its peak and is still falling "
        f"exponentially over the last half of training (a log-linear fit with R^2 >= {EXPONENTIAL_R2} that "
        f"falls >= {LAST_HALF_FALL}x over that half); and the mean final balancedness of the plotted "
        f"non-linear pairs (layers {first_layer}..L1) >= {NONLINEAR_GAP}x that of the least balanced linear pair"
    )
    runs = _ok(runs)
    if not runs:
        return _result(1, statement, rule, None, {"runs": 0})
    L1, L = runs[0].nonlinear_depth, runs[0].num_layers
    linear_pairs = list(range(L1 + 1, L))
    nonlinear_pairs = list(range(first_layer, L1 + 1))
    if not linear_pairs:
        return _result(1, statement, rule, None, {"runs": len(runs), "why": "no pair of linear layers"})
    per_seed = []
    for run in runs:
        falls, half_falls, r2s = [], [], []
        for l in linear_pairs:
            epochs, values = run.series(keys.layer(keys.BALANCEDNESS, l))
            falls.append(max(values) / values[-1] if values[-1] > 0 else np.inf)
            half = len(epochs) // 2
            fit = fit_rate(epochs[half:], values[half:])  # log(value) against epoch; drops zeros
            enough = fit["points"] >= 3
            span = epochs[-1] - epochs[half]
            half_falls.append(math.exp(min(-fit["log_rate"] * span, 700.0)) if enough else np.nan)
            # fit_rate gives a constant series R^2 = 1 (a perfect flat line): no exponential fall
            r2s.append(fit["r2"] if enough and len(set(values[half:])) > 1 else np.nan)
        # np.min/np.max: a NaN (no fit, or a final value written as null) propagates and fails
        # the rule; Python's min would skip it
        per_seed.append(
            {
                "linear_final_max": float(np.max([_final(run, l) for l in linear_pairs])),
                "linear_fall_min": float(np.min(falls)),
                "linear_last_half_fall_min": float(np.min(half_falls)),
                "linear_log_fit_r2_min": float(np.min(r2s)),
                "nonlinear_final_mean": float(np.mean([_final(run, l) for l in nonlinear_pairs])),
                "nonlinear_final_min": float(np.min([_final(run, l) for l in nonlinear_pairs])),
            }
        )
    shape = ("linear_fall_min", "linear_last_half_fall_min", "linear_log_fit_r2_min")
    mean = {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0] if k not in shape}
    mean["gap"] = _ratio(mean["nonlinear_final_mean"], mean["linear_final_max"])
    # The shape of the fall is required of every seed: a mean would let one seed's unbounded fall
    # (a pair balanced to exactly 0) or one seed's clean exponential hide another's flat line.
    worst = {k: float(np.min([s[k] for s in per_seed])) for k in shape}
    checks = {
        f"linear pairs end below {LINEAR_BALANCED}": mean["linear_final_max"] < LINEAR_BALANCED,
        f"every pair fell >= {BALANCING_FALL}x": worst["linear_fall_min"] >= BALANCING_FALL,
        f"every pair still falling >= {LAST_HALF_FALL}x over the last half": worst["linear_last_half_fall_min"]
        >= LAST_HALF_FALL,
        f"log-linear R^2 >= {EXPONENTIAL_R2}": worst["linear_log_fit_r2_min"] >= EXPONENTIAL_R2,
        f"non-linear pairs >= {NONLINEAR_GAP}x less balanced": mean["gap"] >= NONLINEAR_GAP,
    }
    passed = all(checks.values())
    evidence = {
        "runs": len(runs),
        "linear_pairs": linear_pairs,
        "nonlinear_pairs": nonlinear_pairs,
        "checks": checks,
        "mean": mean,
        "worst_seed": worst,
        "per_seed": per_seed,
    }
    deciding = (
        f"linear pairs end at {mean['linear_final_max']:.3g} (worst seed: fell "
        f"{worst['linear_fall_min']:.3g}x, {worst['linear_last_half_fall_min']:.3g}x over the last half, "
        f"log-linear R^2 {worst['linear_log_fit_r2_min']:.4g}); non-linear pairs "
        f"{mean['nonlinear_final_mean']:.3g}, {mean['gap']:.3g}x less balanced"
    )
    return _result(1, statement, rule, passed, evidence, deciding)


def max_offdiag_cosine(gram) -> float:
    g = np.asarray(gram, dtype=float)
    d = np.sqrt(np.clip(np.diag(g), 1e-300, None))
    cos = g / np.outer(d, d)
    np.fill_diagonal(cos, 0.0)
    return float(np.abs(cos).max())


def gram_power(gram, p: float) -> np.ndarray:
    """G^p of a symmetric positive semi-definite Gram matrix (negative eigenvalues, round-off,
    clipped to 0)."""
    w, v = np.linalg.eigh(np.asarray(gram, dtype=float))
    return (v * np.clip(w, 0.0, None) ** p) @ v.T


def balanced_head_prediction(backbone_gram, linear_depth: int) -> float | None:
    """The largest class-mean cosine that a balanced linear head of `linear_depth` layers leaves
    its last Gram, from the class-mean Gram of the backbone's output Z_(L1): with W_(l+1)^T W_(l+1)
    = W_l W_l^T and the outputs' class means at the one-hot targets, the Gram of Z_l is
    Gram(Z_(L1))^((L - l) / L2), so that of Z_(L-1) is Gram(Z_(L1))^(1 / L2). None without that
    Gram or without a head of at least two layers."""
    if backbone_gram is None or linear_depth < 2:
        return None
    return max_offdiag_cosine(gram_power(backbone_gram, 1.0 / linear_depth))


def claim2_collapse(runs: list[Run]) -> dict:
    statement = (
        "NC1 at the penultimate layer falls to small values; NC2 approaches 1 in the linear head; "
        "the class-mean Gram matrices of the linear head look diagonal."
    )
    rule = (
        f"mean over seeds: final NC1 of Z_(L-1) < {NC1_COLLAPSED}; final NC2 of Z_(L-1) < {NC2_CLOSE} after "
        f"falling >= {NC2_FALL}x from initialisation; largest |cosine| between class means in the last "
        f"linear-head Gram < {GRAM_OFF_DIAGONAL}"
    )
    runs = _ok(runs)
    if not runs:
        return _result(2, statement, rule, None, {"runs": 0})
    L = runs[0].num_layers
    per_seed = []
    for run in runs:
        nc2 = run.series(keys.layer(keys.NC2, L - 1))[1]
        grams = (run.grams or {}).get("grams", {})
        shown = gram_keys(run)
        backbone = grams.get(keys.gram(run.nonlinear_depth)) if run.nonlinear_depth >= 1 else None
        per_seed.append(
            {
                "nc1_penultimate": run.final[keys.layer(keys.NC1, L - 1)],
                "nc2_penultimate": run.final[keys.layer(keys.NC2, L - 1)],
                "nc2_fall": nc2[0] / nc2[-1],
                "nc2_linear_head": [run.final[keys.layer(keys.NC2, l)] for l in range(run.nonlinear_depth + 1, L)],
                "gram_max_offdiag_cosine": {k: max_offdiag_cosine(grams[k]) for k in shown if k in grams},
                # evidence beside the rule: what the backbone's features leave a balanced head
                "backbone_max_offdiag_cosine": None if backbone is None else max_offdiag_cosine(backbone),
                "balanced_head_prediction": balanced_head_prediction(backbone, L - run.nonlinear_depth),
                keys.NC3: run.final.get(keys.NC3),
                "train_acc": run.final.get(keys.TRAIN_ACC),
            }
        )
    last_key = gram_keys(runs[0])[-1]
    mean = {
        "nc1_penultimate": float(np.mean([s["nc1_penultimate"] for s in per_seed])),
        "nc2_penultimate": float(np.mean([s["nc2_penultimate"] for s in per_seed])),
        "nc2_fall": float(np.mean([s["nc2_fall"] for s in per_seed])),
        "gram_max_offdiag_cosine_last": float(
            np.mean([s["gram_max_offdiag_cosine"].get(last_key, np.nan) for s in per_seed])
        ),
    }
    predicted = [s["balanced_head_prediction"] for s in per_seed if s["balanced_head_prediction"] is not None]
    if predicted:
        mean["balanced_head_prediction"] = float(np.mean(predicted))
    passed = (
        mean["nc1_penultimate"] < NC1_COLLAPSED
        and mean["nc2_penultimate"] < NC2_CLOSE
        and mean["nc2_fall"] >= NC2_FALL
        and mean["gram_max_offdiag_cosine_last"] < GRAM_OFF_DIAGONAL
    )
    deciding = (
        f"NC1(Z_(L-1)) = {mean['nc1_penultimate']:.3g}, NC2 = {mean['nc2_penultimate']:.3g} after a "
        f"{mean['nc2_fall']:.3g}x fall, largest class-mean cosine in the last Gram "
        f"{mean['gram_max_offdiag_cosine_last']:.3g}"
    )
    if predicted:
        deciding += (
            f" (a balanced head's Gram(Z_(L1))^(1/L2) from the backbone's features gives "
            f"{mean['balanced_head_prediction']:.3g})"
        )
    return _result(2, statement, rule, passed, {"runs": len(runs), "mean": mean, "per_seed": per_seed}, deciding)


def claim3_nc2_improves_with_linear_depth(runs: list[Run]) -> dict:
    statement = "NC2 improves (falls towards 1) as the linear head gets deeper."
    rule = (
        "for each weight decay: Spearman correlation between the number of linear layers and the final NC2 "
        "of the penultimate features < 0, and NC2 at the deepest head < NC2 at the shallowest"
    )
    runs = _ok(runs)
    if not runs:
        return _result(3, statement, rule, None, {"runs": 0})
    evidence, verdicts, deciding = {"runs": len(runs), "by_weight_decay": {}}, [], []
    for wd, by_depth in sorted(by_weight_decay_and_linear_depth(runs).items()):
        depths = sorted(by_depth)
        means = [float(np.mean([linear_depth_point(r)["nc2_last"] for r in by_depth[d]])) for d in depths]
        rho = spearman(depths, means)
        ok = rho < 0 and means[-1] < means[0]
        verdicts.append(ok)
        evidence["by_weight_decay"][f"{wd:g}"] = {
            "linear_depths": depths,
            "nc2_penultimate": means,
            "spearman": rho,
            "holds": ok,
        }
        deciding.append(
            f"wd {wd:g}: NC2(Z_(L-1)) "
            + " -> ".join(f"{m:.3g}" for m in means)
            + f" for {depth_list(depths)} linear layers (Spearman {rho:.2f})"
        )
    return _result(3, statement, rule, all(verdicts), evidence, "; ".join(deciding))


def _settling_rows(run: Run) -> tuple[dict, dict] | None:
    """(the non-linear-depth point at the last evaluation at or before SETTLED_FROM of the run's
    epochs, the point at the end); None when no evaluation lies that early (other than at
    initialisation)."""
    final_epoch = run.final.get("epoch", 0)
    earlier = [r for r in run.history if 0 < r["epoch"] <= SETTLED_FROM * final_epoch]
    if not earlier:
        return None
    return nonlinear_depth_point(run, earlier[-1]), nonlinear_depth_point(run)


def settled_change(runs: Run | list[Run]) -> float:
    """The largest relative change of the non-linear layers' mean balancedness and mean
    negativity between the last evaluation at or before SETTLED_FROM of the epochs and the end,
    on the mean over `runs` (the seeds of one point of the figure; one run: that run's own
    change). NaN when a run has no evaluation that early (other than at initialisation)."""
    runs = [runs] if isinstance(runs, Run) else list(runs)
    rows = [_settling_rows(run) for run in runs]
    if not runs or any(r is None for r in rows):
        return float("nan")
    changes = []
    for k in ("balancedness_mean", "negativity_mean"):
        before = float(np.mean([b[k] for b, _ in rows]))
        after = float(np.mean([a[k] for _, a in rows]))
        changes.append(abs(after - before) / abs(after) if after else np.inf)
    return float(np.max(changes))  # a NaN (no such layer value) propagates and fails the rule


def falls_with_nonlinear_depth(runs: list[Run]) -> dict:
    """For each learning rate, on the mean over `runs` at each depth: Spearman < 0 with depth and
    the deepest below the shallowest, for the mean and the minimum balancedness and negativity of
    the non-linear layers. {lr: entry}, entry["holds"] for the means, entry["minima_fall"]."""
    by_lr = {}
    for lr, by_depth in sorted(by_lr_and_nonlinear_depth(runs).items()):
        depths = sorted(by_depth)
        points = {d: [nonlinear_depth_point(r) for r in by_depth[d]] for d in depths}
        entry, falls = {"nonlinear_depths": depths}, {}
        for key in ("balancedness_mean", "negativity_mean", "balancedness_min", "negativity_min"):
            means = [float(np.nanmean([p[key] for p in points[d]])) for d in depths]
            entry[key] = means
            entry[f"{key}_spearman"] = spearman(depths, means)
            falls[key] = entry[f"{key}_spearman"] < 0 and means[-1] < means[0]
        entry["holds"] = falls["balancedness_mean"] and falls["negativity_mean"]
        entry["minima_fall"] = falls["balancedness_min"] and falls["negativity_min"]
        by_lr[lr] = entry
    return by_lr


def each_seed_alone(runs: list[Run]) -> dict:
    """Claim 4's trend rule on each seed's runs alone: {seed: {"holds": bool, "spearman": {lr:
    (mean balancedness, mean negativity)}}}; holds when the means fall at every learning rate."""
    seeds = sorted({int(r.get("seed")) for r in runs})
    result = {}
    for seed in seeds:
        by_lr = falls_with_nonlinear_depth([r for r in runs if int(r.get("seed")) == seed])
        result[seed] = {
            "holds": bool(by_lr) and all(e["holds"] for e in by_lr.values()),
            "spearman": {
                f"{lr:g}": (e["balancedness_mean_spearman"], e["negativity_mean_spearman"]) for lr, e in by_lr.items()
            },
        }
    return result


def claim4_deeper_is_more_linear(runs: list[Run]) -> dict:
    statement = (
        "As the non-linear part gets deeper, its layers become more balanced and less non-linear "
        "(balancedness and negativity of the non-linear layers fall with depth)."
    )
    rule = (
        f"every point of the figure has settled (on the mean over its seeds, the mean balancedness and mean "
        f"negativity of the non-linear layers moved <= {SETTLED_CHANGE:.0%} between {SETTLED_FROM:.0%} of the "
        f"epochs and the end; with one seed, every run); then for each learning rate, on seed means: "
        "Spearman correlation with non-linear depth < 0 for both the mean balancedness and the mean "
        "negativity of the non-linear layers, and both lower at the deepest network than at the shallowest. "
        "The minima over the layers (the figure's other lines) are judged the same way and reported; "
        "where they do not fall, the report names the discrepancy with the paper's figure. With several seeds, "
        "the report also says whether each seed alone shows the trend and how many runs settled alone (the same "
        "rules on each seed's or run's values; they do not decide the verdict)"
    )
    runs = _ok(runs)
    if not runs:
        return _result(4, statement, rule, None, {"runs": 0})
    # settling, judged like the trend on each point's seed means; each run alone is reported
    points = {
        f"lr {lr:g}, {depth} ReLU layers": by_depth[depth]
        for lr, by_depth in sorted(by_lr_and_nonlinear_depth(runs).items())
        for depth in sorted(by_depth)
    }
    point_changes = {name: settled_change(point) for name, point in points.items()}
    settled = bool(np.all(np.array(list(point_changes.values())) <= SETTLED_CHANGE))  # NaN fails
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{i}: {name}" for i, name in enumerate(names)]
    run_changes = dict(zip(names, [settled_change(r) for r in runs]))
    alone = np.array(list(run_changes.values()))
    evidence = {
        "runs": len(runs),
        "settled": settled,
        "largest_change_over_last_quarter": float(np.max(list(point_changes.values()))),
        "change_over_last_quarter": point_changes,
        "each_run_alone": {
            "settled": int(np.sum(alone <= SETTLED_CHANGE)),
            "runs": len(runs),
            "largest_change_over_last_quarter": float(np.max(alone)),
            "change_over_last_quarter": run_changes,
        },
        "by_lr": {},
    }
    verdicts, deciding, minima_fall = [settled], [], []
    for lr, entry in falls_with_nonlinear_depth(runs).items():
        depths = entry["nonlinear_depths"]
        verdicts.append(entry["holds"])
        minima_fall.append(entry["minima_fall"])
        evidence["by_lr"][f"{lr:g}"] = entry
        deciding.append(
            f"lr {lr:g}, {depths[0]} -> {depths[-1]} ReLU layers: mean balancedness "
            f"{entry['balancedness_mean'][0]:.3g} -> {entry['balancedness_mean'][-1]:.3g}, mean negativity "
            f"{entry['negativity_mean'][0]:.3g} -> {entry['negativity_mean'][-1]:.3g} (minima "
            f"{entry['balancedness_min'][0]:.3g} -> {entry['balancedness_min'][-1]:.3g} and "
            f"{entry['negativity_min'][0]:.3g} -> {entry['negativity_min'][-1]:.3g})"
        )
    evidence["minima_fall"] = all(minima_fall)
    evidence["by_seed"] = each_seed_alone(runs)
    evidence["every_seed_alone_shows_the_trend"] = all(e["holds"] for e in evidence["by_seed"].values())
    if not all(minima_fall):
        evidence["discrepancy"] = (
            "the minima over the non-linear layers do not fall with depth at every learning "
            "rate, while the paper's figure shows them falling; the means decide the claim"
        )
    alone = [f"seed {seed} {'shows' if e['holds'] else 'does NOT show'} it" for seed, e in evidence["by_seed"].items()]
    if len(alone) > 1:
        deciding.append("each seed alone: " + ", ".join(alone))
    largest = evidence["largest_change_over_last_quarter"]
    what = "every run" if len(points) == len(runs) else "every point's seed mean"
    deciding.append(
        f"{what} settled (largest change over the last quarter {largest:.1%})"
        if settled
        else f"NOT {what} settled (largest change {largest:.1%})"
    )
    if len(points) < len(runs):
        each = evidence["each_run_alone"]
        deciding.append(
            f"each run alone: {each['settled']} of {each['runs']} moved <= {SETTLED_CHANGE:.0%} "
            f"(largest {each['largest_change_over_last_quarter']:.1%})"
        )
    return _result(4, statement, rule, all(verdicts), evidence, "; ".join(deciding))


# ---------------------------------------------------------------------------------------------
# Beyond the paper: claims 5-7 (the figures stability_mnist, deep_head_mnist, width_mnist). Each
# rule states an expectation; `passed` says whether it held, `deciding` what was seen either way.


def _seed_mean_series(runs: list[Run], key: str) -> dict[int, float]:
    """{epoch: mean over the runs of `key`} at the epochs where every run has a value."""
    series = [dict(zip(*run.series(key))) for run in runs]
    common = set.intersection(*(set(s) for s in series)) if series else set()
    return {e: float(np.mean([s[e] for s in series])) for e in sorted(common)}


def stability_phases(thresholds: dict[int, float]) -> tuple[list[int], list[int]]:
    """(the evaluations at the peak learning rate, those after the drop) from the momentum
    threshold 2(1+beta)/eta at each evaluated epoch (epoch 0 left out): the peak learning rate has
    the smallest threshold; the warm-up (a larger threshold before it) belongs to neither, the
    drop is a larger threshold after it."""
    epochs = [e for e in sorted(thresholds) if e > 0 and math.isfinite(thresholds[e])]
    if not epochs:
        return [], []
    smallest = min(thresholds[e] for e in epochs)
    peak = [e for e in epochs if thresholds[e] <= smallest * (1 + 1e-6)]
    after = [e for e in epochs if e > peak[-1]]
    return peak, after


def claim5_edge_of_stability(runs: list[Run]) -> dict:
    statement = (
        "Beyond the paper: SGD with heavy-ball momentum trains the MLP figure's network at the edge of "
        "stability: after the warm-up its batch sharpness sits at the stability threshold 2(1+beta)/eta, "
        "and after the learning-rate drop it stays below the new, higher threshold."
    )
    low, high = EDGE_BAND
    rule = (
        f"expectation (the edge of stochastic stability, Andreyev and Beneventano 2024, at heavy-ball's limit "
        f"2(1+beta)/eta): on the mean over seeds at each evaluation, (a) at the peak learning rate (after the "
        f"warm-up, before the drop), over the last {1 - EDGE_FROM:.0%} of those evaluations, the batch "
        f"sharpness / (2(1+beta)/eta) stays within [{low:g}, {high:g}]; (b) at every evaluation after the drop it "
        f"is <= {STABLE_AFTER_DROP:g}. PASS when both held; the full-batch sharpness (top Hessian eigenvalue of "
        f"the regularised loss on the fixed subset) is reported beside it against the same threshold, and 2/eta "
        f"is drawn for reference"
    )
    runs = [r for r in _ok(runs) if any(row.get(keys.SHARPNESS) is not None for row in r.history)]
    if not runs:
        return _result(5, statement, rule, None, {"runs": 0, "why": "no run with callbacks.metrics.extra.sharpness"})
    threshold = _seed_mean_series(runs, keys.MOMENTUM_THRESHOLD)
    batch = _seed_mean_series(runs, keys.BATCH_SHARPNESS)
    full = _seed_mean_series(runs, keys.SHARPNESS)
    peak, after = stability_phases(threshold)
    judged = peak[int(len(peak) * EDGE_FROM) :] if peak else []
    judged = [e for e in judged if e in batch]
    if not judged:
        return _result(5, statement, rule, None, {"runs": len(runs), "why": "no evaluation at the peak learning rate"})
    ratio = {e: batch[e] / threshold[e] for e in batch if e in threshold}
    full_ratio = {e: full[e] / threshold[e] for e in full if e in threshold}
    edge = [ratio[e] for e in judged]
    dropped = [ratio[e] for e in after if e in ratio]
    at_edge = bool(low <= min(edge) and max(edge) <= high)
    stable = bool(max(dropped) <= STABLE_AFTER_DROP) if dropped else None
    checks = {f"batch sharpness within [{low:g}, {high:g}] x threshold at the peak lr": at_edge}
    if stable is not None:
        checks[f"batch sharpness <= {STABLE_AFTER_DROP:g} x the new threshold after the drop"] = stable
    last_peak = peak[-1]
    evidence = {
        "runs": len(runs),
        "checks": checks,
        "peak_lr_epochs": peak,
        "judged_epochs": judged,
        "after_drop_epochs": after,
        "threshold_momentum": threshold,
        "batch_sharpness_ratio": ratio,
        "sharpness_ratio": full_ratio,
        "edge_ratio_range": [min(edge), max(edge)],
        "sharpness_edge_ratio_range": _range([full_ratio[e] for e in judged if e in full_ratio]),
        "after_drop_ratio_max": max(dropped) if dropped else None,
        "sharpness_at_drop": full.get(last_peak),
        "sharpness_final": full.get(max(full)) if full else None,
        "batch_sharpness_at_drop": batch.get(last_peak),
        "batch_sharpness_final": batch.get(max(batch)) if batch else None,
    }
    seen_edge = (
        "at the edge"
        if at_edge
        else (
            "below the edge"
            if max(edge) < low
            else ("above the edge" if min(edge) > high else "not steadily at the edge")
        )
    )
    deciding = (
        f"peak lr (epochs {', '.join(map(str, judged))}): batch sharpness {_span(edge)} x 2(1+beta)/eta "
        f"= {threshold[judged[-1]]:.4g} ({seen_edge})"
    )
    if evidence["sharpness_edge_ratio_range"] is not None:
        deciding += f", full-batch sharpness {_span(evidence['sharpness_edge_ratio_range'])} x"
    if dropped:
        rise = ""
        if evidence["sharpness_at_drop"] and evidence["sharpness_final"]:
            rise = (
                f"; sharpness {evidence['sharpness_at_drop']:.4g} at the drop -> "
                f"{evidence['sharpness_final']:.4g} at the end"
            )
        deciding += (
            f"; after the drop (threshold {threshold[after[-1]]:.4g}): batch sharpness at most {max(dropped):.3g} x "
            f"({'stable' if stable else 'ABOVE the new threshold'}){rise}"
        )
    else:
        deciding += "; no evaluation after a learning-rate drop"
    return _result(5, statement, rule, all(checks.values()), evidence, deciding)


def claim6_deeper_heads(runs: list[Run]) -> dict:
    statement = (
        "Beyond the paper: past the paper's 5 linear layers (its Fig. 2), a deeper linear head still "
        "improves NC2 (Section 5: deep linear heads are well conditioned), and the penultimate class "
        "means keep their full rank K - 1 (no low-rank collapse, Súkeník, Lampert and Mondelli 2024)."
    )
    rule = (
        f"expectation, for each weight decay on seed means: the deepest head cuts NC2(Z_(L-1)) - 1 by >= "
        f"{DEEPER_GAIN:.0%} against the best head of <= {PAPER_LINEAR_DEPTH} layers, and the numerical rank of the "
        f"centred class means of Z_(L-1) (rank/layer_(L-1): singular values > {keys.RANK_RTOL:g} s_1) is K - 1 at "
        f"every depth (in every seed). PASS when both held. Reported either way: where NC2 stops improving (the "
        f"shallowest depth past which no deeper head cuts NC2 - 1 by >= {DEEPER_GAIN:.0%} against the best up to "
        f"it), the depths whose rank fell below K - 1, and the condition number of W_L at each depth"
    )
    runs = _ok(runs)
    if not runs:
        return _result(6, statement, rule, None, {"runs": 0})
    K = int(runs[0].get("data.num_classes") or 10)
    evidence, verdicts, deciding = {"runs": len(runs), "K": K, "by_weight_decay": {}}, [], []
    for wd, by_depth in sorted(by_weight_decay_and_linear_depth(runs).items()):
        depths = sorted(by_depth)
        nc2 = [_final_mean(by_depth[d], keys.NC2, -1) for d in depths]
        ranks = [_final_min(by_depth[d], keys.RANK, -1) for d in depths]
        cond = [_final_mean(by_depth[d], keys.WEIGHT_COND, 0) for d in depths]
        excess = [v - 1.0 for v in nc2]
        shallow = [x for d, x in zip(depths, excess) if d <= PAPER_LINEAR_DEPTH]
        deeper = depths[-1] > PAPER_LINEAR_DEPTH and bool(shallow)
        gain = 1.0 - excess[-1] / min(shallow) if deeper and min(shallow) > 0 else np.nan
        improves = bool(gain >= DEEPER_GAIN)  # NaN (no deeper head, no reference) fails
        low_rank = [d for d, r in zip(depths, ranks) if not r >= K - 1]  # NaN (no rank logged) counts
        stop = next(
            (
                d
                for i, d in enumerate(depths)
                if all(x > (1 - DEEPER_GAIN) * min(excess[: i + 1]) for x in excess[i + 1 :])
            ),
            depths[-1],
        )
        holds = improves and not low_rank
        verdicts.append(holds)
        evidence["by_weight_decay"][f"{wd:g}"] = {
            "linear_depths": depths,
            "nc2_penultimate": nc2,
            "rank_penultimate_min": ranks,
            "weight_cond_last": cond,
            "gain_over_paper_range": gain,
            "improves_past_paper_range": improves,
            "stops_improving_at": stop,
            "rank_below_K_minus_1_at": low_rank,
            "holds": holds,
        }
        deciding.append(
            f"wd {wd:g}: NC2(Z_(L-1)) "
            + " -> ".join(f"{v:.3g}" for v in nc2)
            + f" for {depth_list(depths)} linear layers; the deepest cuts NC2 - 1 by {gain:.0%} against the best of "
            f"<= {PAPER_LINEAR_DEPTH} ({'still improving' if improves else 'NOT improving'}), "
            + (
                f"NC2 stops improving at {stop} layers"
                if stop != depths[-1]
                else f"NC2 did not stop improving up to {stop} layers"
            )
            + "; rank of the penultimate class means "
            + ", ".join(f"{r:g}" for r in ranks)
            + (f" (below K - 1 = {K - 1} at {depth_list(low_rank)})" if low_rank else f" (K - 1 = {K - 1} everywhere)")
            + "; cond(W_L) "
            + ", ".join(f"{c:.3g}" for c in cond)
        )
    return _result(6, statement, rule, all(verdicts), evidence, "; ".join(deciding))


def _final_value(run: Run, family: str, offset: int) -> float:
    """The final value of `family` at layer L + offset (-1: the penultimate features Z_(L-1), 0: the
    last layer); NaN where it is missing."""
    return _none_nan(run.final.get(keys.layer(family, run.num_layers + offset)))


def _final_mean(runs: list[Run], family: str, offset: int) -> float:
    return float(np.mean([_final_value(r, family, offset) for r in runs]))


def _final_min(runs: list[Run], family: str, offset: int) -> float:
    """The smallest final value over the runs; NaN if any run lacks it (the rule then fails)."""
    return float(np.min([_final_value(r, family, offset) for r in runs]))


def first_width(run: Run) -> int:
    """n1, the width of the first layer (model.width: one int, or a list whose first item it is)."""
    width = run.get("model.width")
    return int(width[0] if isinstance(width, list) else width)


def num_samples(run: Run) -> int:
    """N, the training samples of a run (summary.json's num_train, else num_per_class x K)."""
    n = run.summary.get("num_train")
    if n is None:
        n = int(run.get("data.num_per_class")) * int(run.get("data.num_classes") or 10)
    return int(n)


def claim7_width(runs: list[Run]) -> dict:
    statement = (
        "Beyond the paper: Theorem 4.4 assumes a first layer at least as wide as the training set "
        "(n1 >= N); collapse does not need it: networks with n1 < N collapse as those with n1 >= N do."
    )
    rule = (
        f"collapsed = on seed means, the final NC1 of Z_(L-1) < {NC1_COLLAPSED} and the final balancedness of every "
        f"linear pair < {LINEAR_BALANCED} (claims 2 and 1's bounds). Expectation: every width n1 < N of the sweep "
        "collapses. PASS when it held; the deciding numbers say whether collapse needed n1 >= N (the widths below N "
        "failed where those >= N collapsed), or whether not even n1 >= N collapsed (inconclusive)"
    )
    runs = _ok(runs)
    if not runs:
        return _result(7, statement, rule, None, {"runs": 0})
    N = num_samples(runs[0])
    by_width: dict[int, list[Run]] = {}
    for run in runs:
        by_width.setdefault(first_width(run), []).append(run)
    widths = sorted(by_width)
    per_width = {}
    for n1 in widths:
        group = by_width[n1]
        L1, L = group[0].nonlinear_depth, group[0].num_layers
        nc1 = _final_mean(group, keys.NC1, -1)
        pairs = list(range(L1 + 1, L))
        bal = float(np.mean([np.max([_final(r, l) for l in pairs]) for r in group])) if pairs else np.nan
        per_width[n1] = {
            "n1_over_N": n1 / N,
            "seeds": len(group),
            "nc1_penultimate": nc1,
            "linear_balancedness_max": bal,
            "collapsed": bool(nc1 < NC1_COLLAPSED and bal < LINEAR_BALANCED),
        }
    below = [n1 for n1 in widths if n1 < N]
    wide = [n1 for n1 in widths if n1 >= N]
    evidence = {"runs": len(runs), "N": N, "widths": widths, "by_width": per_width}
    if not below:
        return _result(7, statement, rule, None, {**evidence, "why": f"no width n1 < N = {N} in the sweep"})
    below_ok = all(per_width[n1]["collapsed"] for n1 in below)
    wide_ok = bool(wide) and all(per_width[n1]["collapsed"] for n1 in wide)
    collapsed = [n1 for n1 in widths if per_width[n1]["collapsed"]]
    if below_ok:
        outcome = f"collapse did not need n1 >= N: every n1 < N collapsed (from n1 = {below[0]} = N/{N / below[0]:.3g})"
    elif wide_ok:
        smallest = min(n1 for n1 in widths if all(per_width[w]["collapsed"] for w in widths if w >= n1))
        outcome = f"collapse needed a wide first layer here: from n1 = {smallest} ({smallest / N:.3g} N) on"
    else:
        outcome = "inconclusive: not every n1 >= N collapsed either"
    evidence.update({"outcome": outcome, "collapsed_widths": collapsed})
    deciding = (
        f"N = {N}: "
        + "; ".join(
            f"n1 = {n1} ({per_width[n1]['n1_over_N']:.3g} N): NC1 {per_width[n1]['nc1_penultimate']:.3g}, "
            f"balancedness {per_width[n1]['linear_balancedness_max']:.3g}"
            for n1 in widths
        )
        + f"; {outcome}"
    )
    return _result(7, statement, rule, below_ok, evidence, deciding)


def _span(values: list[float]) -> str:
    """`0.81-1.02` (the smallest and largest of `values`), or one number when they are equal."""
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}-{hi:.3g}"


def _range(values: list[float]) -> list[float] | None:
    return [min(values), max(values)] if values else None


def _none_nan(value) -> float:
    return np.nan if value is None else float(value)


# claim -> its rule applied to one figure's runs (claim 1 compares the figure's plotted layers)
CLAIMS = {
    1: lambda runs, figure: claim1_linear_head_balances(runs, figure.first_plotted_layer),
    2: lambda runs, figure: claim2_collapse(runs),
    3: lambda runs, figure: claim3_nc2_improves_with_linear_depth(runs),
    4: lambda runs, figure: claim4_deeper_is_more_linear(runs),
    5: lambda runs, figure: claim5_edge_of_stability(runs),
    6: lambda runs, figure: claim6_deeper_heads(runs),
    7: lambda runs, figure: claim7_width(runs),
}


def judge(figure, runs: list[Run]) -> list[dict]:
    """Every claim the figure (a figures.FigureSpec) is judged by, decided on its runs; `beyond`
    says whether the figure is an experiment the paper did not run."""
    return [
        {"figure": figure.name, "beyond": bool(figure.beyond), **CLAIMS[claim](runs, figure)} for claim in figure.claims
    ]
