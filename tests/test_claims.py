"""The claim rules on synthetic run histories where the answer is known."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from wdcollapse import claims
from wdcollapse.runs import Run


def fake_run(L1, L2, rows, grams=None, **config):
    cfg = {
        "model": {"nonlinear_depth": L1, "linear_depth": L2},
        "optim": {"weight_decay": config.get("wd", 1e-3), "lr": config.get("lr", 0.01)},
        "seed": 0,
    }
    return Run(Path("/nonexistent"), cfg, {"status": "finished"}, rows, grams)


def balancing_rows(L1, L2, linear_rate, nonlinear_value, epochs=100):
    rows = []
    for e in range(0, epochs + 1, 10):
        row = {"epoch": e}
        for l in range(1, L1 + L2):
            row[f"balancedness/layer_{l}"] = 2.0 * math.exp(-linear_rate * e) if l > L1 else nonlinear_value
        rows.append(row)
    return rows


def test_claim1_passes_for_exponential_linear_balancing_and_fails_without_it():
    good = fake_run(4, 3, balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.5))
    result = claims.claim1_linear_head_balances([good], first_layer=1)
    assert result["passed"] is True
    evidence = result["evidence"]
    assert all(evidence["checks"].values())
    assert evidence["worst_seed"]["linear_log_fit_r2_min"] == pytest.approx(1.0)
    assert evidence["worst_seed"]["linear_last_half_fall_min"] == pytest.approx(math.exp(0.05 * 50))

    def failed(*seeds):
        result = claims.claim1_linear_head_balances([good, *(fake_run(4, 3, rows) for rows in seeds)])
        assert result["passed"] is False
        return {name for name, ok in result["evidence"]["checks"].items() if not ok}

    # a seed whose linear pairs stopped falling (flat at a balanced 0.05, or drifting by 1e-12 per
    # epoch) fails beside a clean one: on the mean over seeds it would pass
    for drift in (0.0, 1e-12):
        flat = balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.5)
        for row in flat[len(flat) // 2 :]:
            row.update({f"balancedness/layer_{l}": 0.05 - drift * row["epoch"] for l in (5, 6)})
        assert failed(flat) == {"every pair still falling >= 2.0x over the last half"} | (
            {"log-linear R^2 >= 0.9"} if drift == 0 else set()
        )
    # a pair balanced to exactly 0 (an unbounded fall) does not hide the other pair's 4.5x fall
    zero = balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.5)
    for row in zero:
        row["balancedness/layer_5"] = 0.09 * math.exp(-0.03 * max(row["epoch"] - 50, 0))
    zero[-1]["balancedness/layer_6"] = 0.0
    assert failed(zero) == {"every pair fell >= 10.0x"}
    # every linear pair at exactly 0 and a final value written as null (inf) decide without raising
    zeros = balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.5)
    zeros[-1].update({"balancedness/layer_5": 0.0, "balancedness/layer_6": 0.0})
    assert claims.claim1_linear_head_balances([fake_run(4, 3, zeros)])["evidence"]["mean"]["gap"] == math.inf
    null = balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.5)
    null[-1]["balancedness/layer_6"] = None
    assert "linear pairs end below 0.1" in failed(null)
    slow = fake_run(4, 3, balancing_rows(4, 3, linear_rate=0.005, nonlinear_value=0.5))
    assert claims.claim1_linear_head_balances([slow])["passed"] is False
    no_gap = fake_run(4, 3, balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.02))
    assert claims.claim1_linear_head_balances([no_gap])["passed"] is False
    assert claims.claim1_linear_head_balances([])["passed"] is None


def collapse_run(nc1=0.01, nc2_start=20.0, nc2_end=1.5, offdiag=0.05, L1=4, L2=3):
    L = L1 + L2
    rows = [
        {
            "epoch": e,
            f"nc1/layer_{L - 1}": nc1 if e else 5.0,
            **{f"nc2/layer_{l}": nc2_end if e else nc2_start for l in range(1, L + 1)},
        }
        for e in (0, 10)
    ]
    gram = [[1.0 if i == j else offdiag for j in range(10)] for i in range(10)]
    keys = [f"preact_{L1}"] + [f"layer_{l}" for l in range(L1 + 1, L)]
    return fake_run(L1, L2, rows, grams={"epoch": 10, "grams": {k: gram for k in keys}})


def test_claim2_passes_for_collapse_and_fails_for_each_missing_part():
    result = claims.claim2_collapse([collapse_run(), collapse_run(nc1=0.03)])
    assert result["passed"] is True
    assert result["evidence"]["mean"]["nc1_penultimate"] == pytest.approx(0.02)
    assert result["evidence"]["mean"]["nc2_fall"] == pytest.approx(20 / 1.5)
    assert result["evidence"]["mean"]["gram_max_offdiag_cosine_last"] == pytest.approx(0.05)
    for bad in (
        dict(nc1=0.06),
        dict(nc2_end=3.2, nc2_start=100.0),
        dict(nc2_start=5.0, nc2_end=1.5),
        dict(offdiag=0.25),
    ):
        assert claims.claim2_collapse([collapse_run(**bad)])["passed"] is False, bad
    # one seed's off-diagonal Gram fails the mean of two (0.05 and 0.45: 0.25)
    assert claims.claim2_collapse([collapse_run(), collapse_run(offdiag=0.45)])["passed"] is False
    assert claims.claim2_collapse([])["passed"] is None


def test_gram_power_matches_the_closed_form_of_an_equicorrelated_gram():
    # G = (1 - c) I + c 11^T has eigenvalues 1 + 9c (on 1) and 1 - c: G^p's cosine in closed form
    c, p = 0.6, 1 / 3
    gram = (1 - c) * np.eye(10) + c * np.ones((10, 10))
    big, small = (1 + 9 * c) ** p, (1 - c) ** p
    off, diag = (big - small) / 10, 0.9 * small + big / 10
    assert claims.max_offdiag_cosine(claims.gram_power(gram, p)) == pytest.approx(off / diag, rel=1e-12)
    assert claims.gram_power(gram, 1.0) == pytest.approx(gram, abs=1e-12)


def head_run(balanced: bool, L1=2, width=16, K=10, seed=0):
    """Class means M of the backbone's output Z_(L1) (positive, like ReLU features) and a 3-layer
    linear head whose product maps them onto the one-hot targets exactly: balanced (the SVD's
    S^(1/3) in every layer) or not (the whole map in the first layer, identities after it)."""
    rng = np.random.default_rng(seed)
    means = np.abs(rng.normal(size=(width, K))) + 0.5
    A = np.linalg.pinv(means)  # A M = I
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    if balanced:
        R1, R2 = (np.linalg.qr(rng.normal(size=(K, K)))[0] for _ in range(2))
        W = [R1 @ np.diag(S ** (1 / 3)) @ Vt, R2 @ np.diag(S ** (1 / 3)) @ R1.T, U @ np.diag(S ** (1 / 3)) @ R2.T]
    else:
        W = [A, np.eye(K), np.eye(K)]
    Z = [means, W[0] @ means, W[1] @ W[0] @ means]
    assert W[2] @ Z[2] == pytest.approx(np.eye(K), abs=1e-9)
    grams = {f"layer_{L1 + i}": (z.T @ z).tolist() for i, z in enumerate(Z)}
    grams[f"preact_{L1}"] = grams[f"layer_{L1}"]
    rows = [{"epoch": 0, f"nc1/layer_{L1 + 2}": 0.01, f"nc2/layer_{L1 + 1}": 1.2, f"nc2/layer_{L1 + 2}": 1.2}]
    return fake_run(L1, 3, rows, grams={"epoch": 0, "grams": grams})


def test_claim2_evidence_predicts_a_balanced_heads_last_gram_from_the_backbone():
    seed = claims.claim2_collapse([head_run(balanced=True)])["evidence"]["per_seed"][0]
    measured = seed["gram_max_offdiag_cosine"]["layer_4"]
    assert seed["balanced_head_prediction"] == pytest.approx(measured, rel=1e-9)
    assert seed["backbone_max_offdiag_cosine"] > measured > 0.05
    # the same targets through an unbalanced head: its last Gram is the identity, not the prediction
    other = claims.claim2_collapse([head_run(balanced=False)])["evidence"]["per_seed"][0]
    assert other["gram_max_offdiag_cosine"]["layer_4"] == pytest.approx(0.0, abs=1e-9)
    assert other["balanced_head_prediction"] == pytest.approx(measured, rel=1e-9)
    assert "from the backbone's features gives" in claims.claim2_collapse([head_run(balanced=True)])["deciding"]
    # no Gram of Z_(L1) (older runs): no prediction, and the verdict is unchanged
    assert claims.claim2_collapse([collapse_run()])["evidence"]["per_seed"][0]["balanced_head_prediction"] is None


def test_claim3_and_claim4_follow_the_direction_of_the_trend():
    def nc2_run(depth, nc2):
        return fake_run(5, depth, [{"epoch": 0, f"nc2/layer_{5 + depth - 1}": nc2, "nc2/layer_5": nc2}])

    falling = [nc2_run(d, 10.0 / d) for d in (1, 2, 3, 4)]
    assert claims.claim3_nc2_improves_with_linear_depth(falling)["passed"] is True
    rising = [nc2_run(d, 1.0 + d) for d in (1, 2, 3, 4)]
    assert claims.claim3_nc2_improves_with_linear_depth(rising)["passed"] is False
    # the deciding numbers name every depth they list: 1..4 when consecutive, else each one
    assert "for 1..4 linear layers" in claims.claim3_nc2_improves_with_linear_depth(falling)["deciding"]
    gaps = [nc2_run(d, 10.0 / d) for d in (1, 2, 3, 5)]
    assert "-> 2 for 1, 2, 3, 5 linear layers" in claims.claim3_nc2_improves_with_linear_depth(gaps)["deciding"]

    def depth_run(L1, value, minimum=None, drift=0.0):
        """Mean balancedness and negativity `value` at the end (drifting by `drift` per epoch
        before it), the first layer at `minimum`, evaluated every 10 epochs up to 100."""
        rows = []
        for e in range(0, 101, 10):
            v = value * (1 + drift * (100 - e))
            row = {
                "epoch": e,
                **{f"balancedness/layer_{l}": v for l in range(1, L1 + 3)},
                **{f"negativity/layer_{l}": v for l in range(1, L1 + 1)},
            }
            if minimum is not None:
                # keep the mean at v: layer 1 at `minimum`, the rest raised to compensate
                for key, n in (("balancedness", L1 - 1), ("negativity", L1)):
                    row[f"{key}/layer_1"] = minimum
                    for l in range(2, n + 1):
                        row[f"{key}/layer_{l}"] = (v * n - minimum) / (n - 1)
            rows.append(row)
        return fake_run(L1, 3, rows)

    result = claims.claim4_deeper_is_more_linear([depth_run(d, 1.0 / d) for d in (4, 8, 12)])
    assert result["passed"] is True and result["evidence"]["settled"] is True
    assert result["evidence"]["by_lr"]["0.01"]["balancedness_mean"] == pytest.approx([0.25, 0.125, 1 / 12])
    assert result["evidence"]["minima_fall"] is True and "discrepancy" not in result["evidence"]
    assert claims.claim4_deeper_is_more_linear([depth_run(d, d / 10) for d in (4, 8, 12)])["passed"] is False
    # values still moving 12% since the last evaluation at or before 75% of the epochs (epoch 70):
    # not settled, so no verdict for the trend
    moving = claims.claim4_deeper_is_more_linear([depth_run(d, 1.0 / d, drift=0.004) for d in (4, 8, 12)])
    assert moving["passed"] is False and moving["evidence"]["settled"] is False
    assert moving["evidence"]["largest_change_over_last_quarter"] == pytest.approx(0.004 * 30)
    # moving 4.8%: settled
    assert claims.claim4_deeper_is_more_linear([depth_run(d, 1.0 / d, drift=0.0016) for d in (4, 8, 12)])["passed"]
    # a run evaluated only at the start and end cannot show it settled
    single = depth_run(4, 0.25)
    single.history = [single.history[0], single.history[-1]]
    assert claims.claim4_deeper_is_more_linear([single, depth_run(8, 0.1)])["evidence"]["settled"] is False
    # the means fall but the minima rise with depth: the claim holds on the means, and the
    # report names the discrepancy with the paper's figure
    rising_minima = [depth_run(d, 1.0 / d, minimum=0.01 * d) for d in (4, 8, 12)]
    result = claims.claim4_deeper_is_more_linear(rising_minima)
    assert result["passed"] is True and result["evidence"]["minima_fall"] is False
    assert "discrepancy" in result["evidence"] and "minima" in result["deciding"]

    # two seeds: the verdict is on the seed means; the report says whether each seed alone shows it
    def seeded(run, seed):
        run.config["seed"] = seed
        return run

    both = [seeded(depth_run(d, v / d), s) for s, v in ((0, 1.0), (1, 1.2)) for d in (4, 8, 12)]
    result = claims.claim4_deeper_is_more_linear(both)
    assert result["passed"] is True and result["evidence"]["every_seed_alone_shows_the_trend"] is True
    assert result["evidence"]["by_seed"][1]["spearman"]["0.01"] == (-1.0, -1.0)
    assert "seed 0 shows it, seed 1 shows it" in result["deciding"]
    # seed 1 rises a little with depth, seed 0 falls steeply: the means fall, seed 1 alone does not
    mixed = [seeded(depth_run(d, 1.0 / d), 0) for d in (4, 8, 12)]
    mixed += [seeded(depth_run(d, 0.1 + 0.001 * d), 1) for d in (4, 8, 12)]
    result = claims.claim4_deeper_is_more_linear(mixed)
    assert result["passed"] is True and result["evidence"]["every_seed_alone_shows_the_trend"] is False
    assert result["evidence"]["by_seed"][1]["holds"] is False and result["evidence"]["by_seed"][0]["holds"] is True
    assert "seed 1 does NOT show it" in result["deciding"]

    # settling is judged on each point's seed means, like the trend: seed 0 still falls 12% over the
    # last quarter and seed 1 rises as much, their mean moved 0%: settled, and the report counts
    # the runs that settled alone
    def drifting(d, drift, seed):
        return seeded(depth_run(d, 1.0 / d, drift=drift), seed)

    opposite = [drifting(d, drift, s) for s, drift in ((0, 0.004), (1, -0.004)) for d in (4, 8, 12)]
    result = claims.claim4_deeper_is_more_linear(opposite)
    assert result["passed"] is True and result["evidence"]["settled"] is True
    assert result["evidence"]["largest_change_over_last_quarter"] == pytest.approx(0.0, abs=1e-12)
    each = result["evidence"]["each_run_alone"]
    assert each["settled"] == 0 and each["runs"] == 6
    assert each["largest_change_over_last_quarter"] == pytest.approx(0.12)
    assert "every point's seed mean settled" in result["deciding"]
    assert "each run alone: 0 of 6 moved <= 5% (largest 12.0%)" in result["deciding"]
    # both seeds still falling: their mean moves too, and the claim fails whatever the trend
    together = [drifting(d, 0.004, s) for s in (0, 1) for d in (4, 8, 12)]
    result = claims.claim4_deeper_is_more_linear(together)
    assert result["passed"] is False and result["evidence"]["settled"] is False
    assert result["evidence"]["change_over_last_quarter"]["lr 0.01, 12 ReLU layers"] == pytest.approx(0.12)
    assert "NOT every point's seed mean settled (largest change 12.0%)" in result["deciding"]
    # only one point moving (the deepest, 6% on its seed mean): that alone fails it
    one_point = [drifting(d, 0.002 if d == 12 else 0.0, s) for s in (0, 1) for d in (4, 8, 12)]
    result = claims.claim4_deeper_is_more_linear(one_point)
    assert result["passed"] is False and result["evidence"]["settled"] is False
    assert result["evidence"]["change_over_last_quarter"]["lr 0.01, 12 ReLU layers"] == pytest.approx(0.06)
    assert result["evidence"]["change_over_last_quarter"]["lr 0.01, 8 ReLU layers"] == pytest.approx(0.0)
    # one seed: every point is one run, and the report says so, with no count of runs alone
    alone = claims.claim4_deeper_is_more_linear([depth_run(d, 1.0 / d, drift=0.0016) for d in (4, 8, 12)])
    assert "every run settled (largest change over the last quarter 4.8%)" in alone["deciding"]
    assert "each run alone" not in alone["deciding"]
    # one seed: nothing more to say
    assert (
        "each seed alone"
        not in claims.claim4_deeper_is_more_linear([depth_run(d, 1.0 / d) for d in (4, 8)])["deciding"]
    )


def test_judge_gives_one_entry_per_figure_and_claim():
    from wdcollapse.figures import FIGURES

    good = fake_run(4, 3, balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.5), grams=collapse_run().grams)
    for row in good.history:
        row.update(
            {
                "nc1/layer_6": 0.01 if row["epoch"] else 5.0,
                **{f"nc2/layer_{l}": 1.5 if row["epoch"] else 20.0 for l in range(1, 8)},
            }
        )
    for name, spec in FIGURES.items():
        entries = claims.judge(spec, [good] if name == "resnet20_cifar10" else [])
        assert [(e["figure"], e["claim"]) for e in entries] == [(name, c) for c in spec.claims]
        for entry in entries:
            assert {"passed", "rule", "evidence", "statement", "deciding"} <= set(entry)
    assert [e["passed"] for e in claims.judge(FIGURES["resnet20_cifar10"], [good])] == [True, True]
    assert claims.judge(FIGURES["resnet20_cifar10"], [good])[0]["evidence"]["nonlinear_pairs"] == [1, 2, 3, 4]
    assert claims.judge(FIGURES["mlp_mnist"], [good])[0]["evidence"]["nonlinear_pairs"] == [3, 4]
    assert claims.judge(FIGURES["resnet20_cifar10"], [])[0]["passed"] is None
    assert {spec.name for spec in FIGURES.values() if spec.claims and not spec.beyond} == {
        "mlp_mnist",
        "resnet20_cifar10",
        "linear_depth_mnist",
        "linear_depth_cifar10",
        "resnet20_mnist",
        "nonlinear_depth_mnist",
    }


def test_claims_page_states_every_threshold_of_the_rules():
    text = (Path(__file__).resolve().parents[1] / "docs" / "claims.md").read_text()
    for value, written in (
        (claims.LINEAR_BALANCED, "< 0.1"),
        (claims.BALANCING_FALL, ">= 10x"),
        (claims.EXPONENTIAL_R2, "R^2 >= 0.9"),
        (claims.LAST_HALF_FALL, ">= 2x"),
        (claims.NONLINEAR_GAP, ">= 3x"),
        (claims.NC1_COLLAPSED, "< 0.05"),
        (claims.NC2_CLOSE, "< 3"),
        (claims.NC2_FALL, ">= 5x"),
        (claims.GRAM_OFF_DIAGONAL, "< 0.2"),
        (claims.SETTLED_CHANGE, "<= 5%"),
        (claims.SETTLED_FROM, "75%"),
    ):
        assert written in text, (value, written)
        number = float(re.findall(r"\d+(?:\.\d+)?", written)[-1])
        assert number in (value, value * 100), (value, written)


def test_spearman_and_offdiagonal_cosine():
    assert claims.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert claims.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert claims.max_offdiag_cosine([[4.0, 0.0], [0.0, 9.0]]) == 0.0
    assert claims.max_offdiag_cosine([[1.0, 0.5], [0.5, 1.0]]) == pytest.approx(0.5)


@pytest.mark.slow
def test_report_and_figures_survive_diverged_and_missing_runs(tmp_path):
    import json as _json

    import yaml

    from wdcollapse.figures import FigureSweep
    from wdcollapse.report import make_figures, write_report
    from wdcollapse.reproduce import figure_runs

    figure = FigureSweep("mlp_mnist", "mlp_mnist", {"seed": "0,1,2"})
    for seed, status in ((0, "finished"), (1, "diverged")):
        run = tmp_path / "runs" / "mlp_mnist" / f"seed={seed}"
        run.mkdir(parents=True)
        cfg = {
            "seed": seed,
            "model": {"nonlinear_depth": 6, "linear_depth": 3, "width": 8},
            "optim": {"lr": 0.01, "weight_decay": 1e-3},
            "trainer": {"max_epochs": 2},
            "data": {},
        }
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        rows = balancing_rows(6, 3, 0.05, 0.5, epochs=20 if status == "finished" else 10)
        for row in rows:
            row.update({f"nc1/layer_{l}": 1.0 for l in range(1, 10)})
            row.update({f"nc2/layer_{l}": 2.0 for l in range(1, 10)})
        (run / "metrics.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
        (run / "summary.json").write_text(_json.dumps({"status": status, "diverged_epoch": 10}))
    runs_of = lambda f: figure_runs(tmp_path, f)  # noqa: E731
    made = make_figures(tmp_path, [figure], runs_of)
    assert {p.name for p in made} >= {"mlp_mnist_curves.png", "mlp_mnist_curves.pdf"}
    report = write_report(tmp_path, "test", [figure], runs_of, {})
    assert report["runs"]["mlp_mnist"]["diverged"] == 1 and report["runs"]["mlp_mnist"]["expected"] == 3
    assert report["claims"][0]["evidence"]["runs"] == 1  # only the finished run decides a claim
    assert "seed=1" in (tmp_path / "REPORT.md").read_text()


def test_report_settings_list_every_value_a_sweep_used_and_the_figures_open_architecture():
    from wdcollapse.figures import FigureSweep
    from wdcollapse.report import settings_rows

    runs = []
    for depth, momentum in ((4, 0.9), (8, 0.0)):
        run = fake_run(depth, 3, [{"epoch": 0}], lr=0.001)
        run.config["optim"].update(momentum=momentum, lr_drop_at=None)
        runs.append(run)
    rows = {
        key: (paper, ours)
        for key, paper, ours in settings_rows(FigureSweep("nonlinear_depth_mnist", "nonlinear_depth_mnist", {}), runs)
    }
    assert rows["optim.momentum"] == ("not stated (ASSUMPTION)", "0, 0.9")  # both, not the first run's
    assert rows["model.linear_depth"] == ("not stated (ASSUMPTION)", "3")  # this figure's open architecture
    assert rows["optim.lr_drop_at"][0].startswith("0.8 (reported")
    assert rows["optim.weight_decay"][0] == "0.016 / L"
    mlp = {key for key, _, _ in settings_rows(FigureSweep("mlp_mnist", "mlp_mnist", {}), runs)}
    assert "model.linear_depth" not in mlp  # stated for the MLP figure
    assert "optim.trunk_weight_decay" not in rows  # shown only where a run sets it
    runs[0].config["optim"]["trunk_weight_decay"] = 0.001
    rows = {key: ours for key, _, ours in settings_rows(FigureSweep("resnet20_cifar10", "resnet20_cifar10", {}), runs)}
    assert rows["optim.trunk_weight_decay"] == "0.001, optim.weight_decay"
    for run, n, lr in zip(runs, (None, 500), (0.002, 0.0005)):
        run.config["data"] = {"num_per_class": n}
        run.config["optim"]["lr"] = lr
    rows = {key: (paper, ours) for key, paper, ours in settings_rows(FigureSweep("theory_gd", "theory_gd", {}), runs)}
    assert rows["data.num_per_class"][1] == "500, full training set"
    assert rows["optim.lr"][1] == "0.0005, 0.002"  # numeric order
    assert all(paper.startswith("n/a") for paper, _ in rows.values())  # not a figure of the paper


# ---------------------------------------------------------------------------------------------
# Beyond the paper: claims 5-7, each on hand-made runs where the expectation holds and where it fails.


def sharpness_run(batch_ratios, full_ratio=0.5, seed=0, lr=0.02, momentum=0.9, drop=0.0625, warmup=1, every=2):
    """A stability run evaluated every `every` epochs: epoch 0, a warm-up (the learning rate rising
    until `warmup`), the peak learning rate, then the drop after half the epochs; `batch_ratios` is the
    batch sharpness over 2(1+beta)/eta at each evaluation after epoch 0, the full-batch sharpness is
    `full_ratio` x 2(1+beta)/eta throughout."""
    rows = []
    epochs = [0] + [every * (i + 1) for i in range(len(batch_ratios))]
    drop_at = epochs[-1] // 2
    for e, ratio in zip(epochs, [0.1, *batch_ratios]):
        eta = lr * (0.01 if e < warmup else (drop if e > drop_at else 1.0))
        threshold = 2 * (1 + momentum) / eta
        rows.append(
            {
                "epoch": e,
                "sharpness": full_ratio * threshold,
                "sharpness/batch": ratio * threshold,
                "sharpness/threshold_momentum": threshold,
                "sharpness/threshold_gd": 2 / eta,
            }
        )
    run = fake_run(6, 3, rows, lr=lr)
    run.config["seed"] = seed
    run.config["optim"].update(lr_drop_at=0.5, momentum=momentum)
    run.config["trainer"] = {"max_epochs": epochs[-1]}
    return run


def test_claim5_passes_at_the_edge_and_fails_below_it_or_above_the_new_threshold():
    # epochs 2..10 at the peak lr (5 evaluations, the last 3 judged), 12..20 after the drop
    edge = [0.3, 0.6, 0.95, 1.0, 1.05, 0.1, 0.2, 0.3, 0.35, 0.4]
    result = claims.claim5_edge_of_stability([sharpness_run(edge)])
    assert result["passed"] is True, result["deciding"]
    evidence = result["evidence"]
    assert evidence["peak_lr_epochs"] == [2, 4, 6, 8, 10] and evidence["judged_epochs"] == [6, 8, 10]
    assert evidence["after_drop_epochs"] == [12, 14, 16, 18, 20]
    assert evidence["edge_ratio_range"] == pytest.approx([0.95, 1.05])
    assert evidence["sharpness_edge_ratio_range"] == pytest.approx([0.5, 0.5])
    assert "(at the edge)" in result["deciding"] and "(stable)" in result["deciding"]
    # the first evaluations at the peak lr (still sharpening) do not decide; the last ones do
    below = claims.claim5_edge_of_stability([sharpness_run([0.3, 0.4, 0.5, 0.6, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1])])
    assert below["passed"] is False and "(below the edge)" in below["deciding"]
    assert below["evidence"]["checks"] == {
        "batch sharpness within [0.8, 1.1] x threshold at the peak lr": False,
        "batch sharpness <= 1.1 x the new threshold after the drop": True,
    }
    above = claims.claim5_edge_of_stability([sharpness_run([0.9, 1.0, 1.3, 1.2, 1.4, 0.1, 0.1, 0.1, 0.1, 0.1])])
    assert above["passed"] is False and "(above the edge)" in above["deciding"]
    unstable = claims.claim5_edge_of_stability([sharpness_run([*edge[:5], 0.5, 0.9, 1.2, 1.0, 0.9])])
    assert unstable["passed"] is False and "ABOVE the new threshold" in unstable["deciding"]
    # seed means decide: one seed at 0.7 and one at 1.1 average to 0.9, inside the band
    seeds = [
        sharpness_run([0.5, 0.6, 0.7, 0.7, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1], seed=0),
        sharpness_run([0.5, 0.6, 1.1, 1.1, 1.1, 0.1, 0.1, 0.1, 0.1, 0.1], seed=1),
    ]
    assert claims.claim5_edge_of_stability(seeds)["evidence"]["edge_ratio_range"] == pytest.approx([0.9, 0.9])
    # no sharpness logged (the switch off): not decided, and it says why
    plain = fake_run(6, 3, [{"epoch": 0}, {"epoch": 2}])
    assert claims.claim5_edge_of_stability([plain])["passed"] is None
    assert "sharpness" in claims.claim5_edge_of_stability([plain])["evidence"]["why"]


def test_stability_phases_leave_out_the_warmup_and_find_the_drop():
    assert claims.stability_phases({0: 900.0, 1: 400.0, 2: 190.0, 3: 190.0, 4: 3040.0, 5: 3040.0}) == (
        [2, 3],
        [4, 5],
    )
    assert claims.stability_phases({0: 190.0, 1: 190.0, 2: 190.0}) == ([1, 2], [])  # no drop, no warm-up
    assert claims.stability_phases({0: 190.0}) == ([], [])


def deep_head_run(depth, nc2, rank=9, cond=3.0, wd=1e-3, seed=0):
    L = 5 + depth
    row = {"epoch": 12, f"nc2/layer_{L - 1}": nc2, f"rank/layer_{L - 1}": rank, f"weight_cond/layer_{L}": cond}
    run = fake_run(5, depth, [row], wd=wd)
    run.config["seed"] = seed
    return run


def test_claim6_expects_deeper_heads_to_keep_improving_nc2_at_full_rank():
    depths = (1, 2, 3, 5, 6, 8, 10)
    improving = [deep_head_run(d, 1 + 2.0 / d) for d in depths]  # NC2 - 1 = 2/d: 0.4 at 5, 0.2 at 10
    result = claims.claim6_deeper_heads(improving)
    assert result["passed"] is True, result["deciding"]
    entry = result["evidence"]["by_weight_decay"]["0.001"]
    assert entry["gain_over_paper_range"] == pytest.approx(0.5)
    assert entry["stops_improving_at"] == 10 and entry["rank_below_K_minus_1_at"] == []
    assert "still improving" in result["deciding"] and "(K - 1 = 9 everywhere)" in result["deciding"]
    assert "NC2 did not stop improving up to 10 layers" in result["deciding"]
    # NC2 flat past 5 layers (5% better at 10: under the 10% the rule asks): it stops improving at 5
    flat = [deep_head_run(d, 1 + 2.0 / min(d, 5) * (0.95 if d == 10 else 1.0)) for d in depths]
    result = claims.claim6_deeper_heads(flat)
    assert result["passed"] is False and "NOT improving" in result["deciding"]
    assert result["evidence"]["by_weight_decay"]["0.001"]["stops_improving_at"] == 5
    assert "stops improving at 5 layers" in result["deciding"]
    # NC2 keeps improving but the 8- and 10-layer heads lose a dimension of their class means (low rank)
    low_rank = [deep_head_run(d, 1 + 2.0 / d, rank=8 if d >= 8 else 9) for d in depths]
    result = claims.claim6_deeper_heads(low_rank)
    assert result["passed"] is False and "below K - 1 = 9 at 8, 10" in result["deciding"]
    # one seed of two at rank 8 is enough; a missing rank (the switch off) fails too
    seeds = [deep_head_run(d, 1 + 2.0 / d, seed=s, rank=8 if (d, s) == (6, 1) else 9) for d in depths for s in (0, 1)]
    assert claims.claim6_deeper_heads(seeds)["evidence"]["by_weight_decay"]["0.001"]["rank_below_K_minus_1_at"] == [6]
    missing = [deep_head_run(d, 1 + 2.0 / d, rank=None) for d in depths]
    assert claims.claim6_deeper_heads(missing)["passed"] is False
    # each weight decay on its own: one that fails fails the claim
    both = improving + [deep_head_run(d, 1 + 2.0 / min(d, 5), wd=4e-3) for d in depths]
    result = claims.claim6_deeper_heads(both)
    assert result["passed"] is False
    assert [e["holds"] for e in result["evidence"]["by_weight_decay"].values()] == [True, False]
    # no head deeper than the paper's: nothing to compare, the expectation cannot hold
    assert claims.claim6_deeper_heads([deep_head_run(d, 1 + 2.0 / d) for d in (1, 3, 5)])["passed"] is False
    assert claims.claim6_deeper_heads([])["passed"] is None


def width_run(n1, nc1, balancedness, N=200, seed=0):
    L1, L2 = 2, 3
    row = {"epoch": 12000, f"nc1/layer_{L1 + L2 - 1}": nc1}
    row |= {f"balancedness/layer_{l}": balancedness for l in range(L1 + 1, L1 + L2)}
    row |= {f"balancedness/layer_{l}": 0.9 for l in range(1, L1 + 1)}  # the non-linear pairs do not decide
    run = fake_run(L1, L2, [row])
    run.config["model"]["width"] = [n1, 96, 64, 32]
    run.config["seed"] = seed
    run.summary["num_train"] = N
    return run


def test_claim7_expects_collapse_below_n1_equal_n_and_says_what_was_seen():
    widths = (25, 50, 100, 200, 400)
    everywhere = [width_run(n1, 0.01, 0.05) for n1 in widths]
    result = claims.claim7_width(everywhere)
    assert result["passed"] is True
    assert result["evidence"]["N"] == 200 and result["evidence"]["collapsed_widths"] == list(widths)
    assert "collapse did not need n1 >= N" in result["deciding"] and "n1 = 25 (0.125 N)" in result["deciding"]
    # collapse only from n1 = N on: the expectation fails, and the outcome names the width
    needs_width = [width_run(n1, 0.01 if n1 >= 200 else 0.2, 0.05) for n1 in widths]
    result = claims.claim7_width(needs_width)
    assert result["passed"] is False and "from n1 = 200 (1 N) on" in result["deciding"]
    # NC1 small but the head not balanced below N: not collapsed by the rule
    unbalanced = [width_run(n1, 0.01, 0.05 if n1 >= 100 else 0.3) for n1 in widths]
    assert claims.claim7_width(unbalanced)["evidence"]["outcome"].endswith("from n1 = 100 (0.5 N) on")
    # not even n1 >= N collapsed: inconclusive, and the expectation did not hold
    nothing = [width_run(n1, 0.2, 0.05) for n1 in widths]
    result = claims.claim7_width(nothing)
    assert result["passed"] is False and "inconclusive" in result["deciding"]
    # seed means decide: NC1 0.01 and 0.08 average 0.045 (collapsed); 0.01 and 0.1 do not
    assert claims.claim7_width([width_run(50, 0.01, 0.05), width_run(50, 0.08, 0.05, seed=1)])["passed"] is True
    assert claims.claim7_width([width_run(50, 0.01, 0.05), width_run(50, 0.1, 0.05, seed=1)])["passed"] is False
    # N from num_per_class when summary.json does not say; no width below N: not decided
    run = width_run(400, 0.01, 0.05)
    del run.summary["num_train"]
    run.config["data"] = {"num_per_class": 20, "num_classes": 10}
    assert (
        claims.claim7_width([run])["passed"] is None
        and "no width n1 < N = 200" in claims.claim7_width([run])["evidence"]["why"]
    )


def test_beyond_claims_are_judged_and_labelled_on_their_figures():
    from wdcollapse.figures import FIGURES

    beyond = {name for name, spec in FIGURES.items() if spec.beyond}
    assert beyond == {"stability_mnist", "deep_head_mnist", "width_mnist"}
    assert [FIGURES[name].claims for name in ("stability_mnist", "deep_head_mnist", "width_mnist")] == [
        (5,),
        (6,),
        (7,),
    ]
    for name in beyond:
        assert "beyond the paper" in FIGURES[name].title.lower() and FIGURES[name].ours
        (entry,) = claims.judge(FIGURES[name], [])
        assert entry["beyond"] is True and entry["passed"] is None
    assert all(e["beyond"] is False for e in claims.judge(FIGURES["mlp_mnist"], []))


def test_claims_page_states_the_thresholds_of_the_rules_beyond_the_paper():
    text = (Path(__file__).resolve().parents[1] / "docs" / "claims.md").read_text()
    section = text[text.index("## Beyond the paper: claims 5-7") :]
    low, high = claims.EDGE_BAND
    for written in (
        f"within [{low:g}, {high:g}]",
        f"last {1 - claims.EDGE_FROM:.0%} of those evaluations",
        f"it is <= {claims.STABLE_AFTER_DROP:g}",
        f"by >= {claims.DEEPER_GAIN:.0%}",
        f"best head of <= {claims.PAPER_LINEAR_DEPTH} layers",
        f"NC1 of Z_(L-1) is < {claims.NC1_COLLAPSED:g}",
        f"every linear pair is < {claims.LINEAR_BALANCED:g}",
    ):
        assert " ".join(written.split()) in " ".join(section.split()), written
