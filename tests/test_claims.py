"""The claim rules on synthetic run histories where the answer is known."""
import math
from pathlib import Path

import pytest

from wdcollapse import claims
from wdcollapse.runs import Run


def fake_run(L1, L2, rows, grams=None, **config):
    cfg = {"model": {"nonlinear_depth": L1, "linear_depth": L2},
           "optim": {"weight_decay": config.get("wd", 1e-3), "lr": config.get("lr", 0.01)}, "seed": 0}
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
        for row in flat[len(flat) // 2:]:
            row.update({f"balancedness/layer_{l}": 0.05 - drift * row["epoch"] for l in (5, 6)})
        assert failed(flat) == {"every pair still falling >= 2.0x over the last half"} | (
            {"log-linear R^2 >= 0.9"} if drift == 0 else set())
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


def test_claim3_and_claim4_follow_the_direction_of_the_trend():
    def nc2_run(depth, nc2):
        return fake_run(5, depth, [{"epoch": 0, f"nc2/layer_{5 + depth - 1}": nc2, "nc2/layer_5": nc2}])
    falling = [nc2_run(d, 10.0 / d) for d in (1, 2, 3, 4)]
    assert claims.claim3_nc2_improves_with_linear_depth(falling)["passed"] is True
    rising = [nc2_run(d, 1.0 + d) for d in (1, 2, 3, 4)]
    assert claims.claim3_nc2_improves_with_linear_depth(rising)["passed"] is False

    def depth_run(L1, value):
        row = {"epoch": 0, **{f"balancedness/layer_{l}": value for l in range(1, L1 + 3)},
               **{f"negativity/layer_{l}": value for l in range(1, L1 + 1)}}
        return fake_run(L1, 3, [row])
    assert claims.claim4_deeper_is_more_linear([depth_run(d, 1.0 / d) for d in (4, 8, 12)])["passed"] is True
    assert claims.claim4_deeper_is_more_linear([depth_run(d, d / 10) for d in (4, 8, 12)])["passed"] is False


def test_spearman_and_offdiagonal_cosine():
    assert claims.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert claims.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert claims.max_offdiag_cosine([[4.0, 0.0], [0.0, 9.0]]) == 0.0
    assert claims.max_offdiag_cosine([[1.0, 0.5], [0.5, 1.0]]) == pytest.approx(0.5)


def test_report_and_figures_survive_diverged_and_missing_runs(tmp_path):
    import json as _json

    import yaml

    from wdcollapse.reproduce import Figure, figure_runs
    from wdcollapse.report import make_figures, write_report

    figure = Figure("mlp_mnist", "mlp_mnist", {"seed": "0,1,2"})
    for seed, status in ((0, "finished"), (1, "diverged")):
        run = tmp_path / "runs" / "mlp_mnist" / f"seed={seed}"
        run.mkdir(parents=True)
        cfg = {"seed": seed, "model": {"nonlinear_depth": 6, "linear_depth": 3, "width": 8},
               "optim": {"lr": 0.01, "weight_decay": 1e-3}, "trainer": {"max_epochs": 2}, "data": {}}
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
    from types import SimpleNamespace

    from wdcollapse.report import settings_rows

    runs = []
    for depth, momentum in ((4, 0.9), (8, 0.0)):
        run = fake_run(depth, 3, [{"epoch": 0}], lr=0.001)
        run.config["optim"].update(momentum=momentum, lr_drop_at=None)
        runs.append(run)
    rows = {key: (paper, ours) for key, paper, ours in settings_rows(
        SimpleNamespace(experiment="nonlinear_depth_mnist"), runs)}
    assert rows["optim.momentum"] == ("not stated (ASSUMPTION)", "0, 0.9")  # both, not the first run's
    assert rows["model.linear_depth"] == ("not stated (ASSUMPTION)", "3")     # this figure's open architecture
    assert rows["optim.lr_drop_at"][0].startswith("0.8 (reported")
    assert rows["optim.weight_decay"][0] == "0.016 / L"
    mlp = {key for key, _, _ in settings_rows(SimpleNamespace(experiment="mlp_mnist"), runs)}
    assert "model.linear_depth" not in mlp  # stated for the MLP figure
    for run, n, lr in zip(runs, (None, 500), (0.002, 0.0005)):
        run.config["data"] = {"num_per_class": n}
        run.config["optim"]["lr"] = lr
    rows = {key: (paper, ours) for key, paper, ours in settings_rows(SimpleNamespace(experiment="theory_gd"), runs)}
    assert rows["data.num_per_class"][1] == "500, full training set"
    assert rows["optim.lr"][1] == "0.0005, 0.002"  # numeric order
    assert all(paper.startswith("n/a") for paper, _ in rows.values())  # not a figure of the paper
