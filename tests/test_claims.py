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
    assert result["evidence"]["mean"]["linear_log_fit_r2_min"] == pytest.approx(1.0)
    slow = fake_run(4, 3, balancing_rows(4, 3, linear_rate=0.005, nonlinear_value=0.5))
    assert claims.claim1_linear_head_balances([slow])["passed"] is False
    no_gap = fake_run(4, 3, balancing_rows(4, 3, linear_rate=0.05, nonlinear_value=0.02))
    assert claims.claim1_linear_head_balances([no_gap])["passed"] is False
    assert claims.claim1_linear_head_balances([])["passed"] is None


def test_claim3_and_claim4_follow_the_direction_of_the_trend():
    def nc2_run(depth, nc2):
        return fake_run(5, depth, [{"epoch": 0, f"nc2/layer_{5 + depth - 1}": nc2, f"nc2/layer_5": nc2}])
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
