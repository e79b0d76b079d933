"""Theorem 3.1's quantities against a NumPy float64 reference, the streaming observer against
the full-matrix function, the bound on trained networks, Assumption 4.1's check, the rate fit,
and `experiment=theory_gd` through the real entry point."""

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_train

from wdcollapse.config import ConfigError
from wdcollapse.fits import analyse_steps, fit_rate, phase2_start, rate_matches
from wdcollapse.io import append_jsonl, atomic_write_json, read_jsonl
from wdcollapse.metric_pass import metric_pass
from wdcollapse.models import MLP
from wdcollapse.theorems import THEOREM31_KEYS, bound_holds, check_assumption_41, theorem31
from wdcollapse.theory_monitors import TheoryGDMonitor, TheoryObserver, theory_observers


def numpy_reference(z_lm2, z_lm1, z_l, labels, heads, K):
    """Theorem 3.1 in the paper's column layout (Z_l = n_l x N), NumPy float64."""
    Z2, Z1, ZL = (np.asarray(z, dtype=np.float64).T for z in (z_lm2, z_lm1, z_l))
    W = [np.asarray(w, dtype=np.float64) for w in heads]
    y = np.asarray(labels)
    N = len(y)
    Y = np.zeros((K, N))
    Y[y, np.arange(N)] = 1.0
    eps1 = np.linalg.norm(ZL - Y, "fro")
    eps2 = max(np.linalg.norm(b.T @ b - a @ a.T, 2) for a, b in zip(W[:-1], W[1:]))
    r = max([np.linalg.norm(Z2, 2), np.linalg.norm(Z1, 2)] + [np.linalg.norm(w, 2) for w in W])
    sk = np.linalg.svd(Y, compute_uv=False)[K - 1]
    dist = np.linalg.norm(Z1 - np.linalg.pinv(W[-1]) @ Y, "fro")
    bound = r * (eps1 / (sk - eps1) + np.sqrt(W[-1].shape[1] * eps2)) if eps1 < sk else np.inf
    means = np.stack([Z1[:, y == c].mean(1) for c in range(K)], 1)
    tr_b = ((means - Z1.mean(1, keepdims=True)) ** 2).sum() / K
    tr_w = sum(((Z1[:, y == c] - means[:, [c]]) ** 2).sum() for c in range(K)) / N
    return {
        "theory/eps1": eps1,
        "theory/eps2": eps2,
        "theory/r": r,
        "theory/sK_Y": sk,
        "theory/eps1_max": min(sk, np.sqrt((K - 1) * N / (4 * K))),
        "theory/dist": dist,
        "theory/dist_bound": bound,
        "theory/nc1": tr_w / tr_b,
        "theory/nc1_dist": dist**2 / N / tr_b,
        "theory/nc1_bound": bound**2 / N / tr_b,
    }


def random_case(seed, N=30, K=3, widths=(7, 6, 5), scale=1.0, unbalanced=False):
    g = torch.Generator().manual_seed(seed)
    heads = [torch.randn(widths[i + 1], widths[i], generator=g) * scale for i in range(len(widths) - 1)]
    heads.append(torch.randn(K, widths[-1], generator=g))
    z_lm2 = torch.randn(N, widths[-2], generator=g)
    z_lm1 = z_lm2 @ heads[-2].T
    z_l = z_lm1 @ heads[-1].T
    labels = torch.arange(N) % K
    if unbalanced:
        labels[: N // 2] = 0
    return z_lm2, z_lm1, z_l, labels, heads


@pytest.mark.parametrize("seed,unbalanced", [(0, False), (1, True), (2, False)])
def test_theorem31_pieces_match_numpy_float64(seed, unbalanced):
    z_lm2, z_lm1, z_l, labels, heads = random_case(seed, unbalanced=unbalanced)
    K = 3
    # A near-interpolating case too: targets close to the outputs, so the bound is finite.
    if seed == 2:
        z_l = torch.nn.functional.one_hot(labels, K).double() + 0.01 * z_l
    got = theorem31(z_lm2, z_lm1, z_l, labels, heads, K)
    ref = numpy_reference(z_lm2, z_lm1, z_l, labels, heads, K)
    assert set(got) == set(THEOREM31_KEYS)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # s_K(Y) = sqrt(smallest class count), since Y Y^T = diag(counts)
    assert got["theory/sK_Y"] == pytest.approx(math.sqrt(int(torch.bincount(labels).min())))
    assert got["theory/precondition"] == bool(ref["theory/eps1"] <= ref["theory/eps1_max"])
    if seed == 2:
        assert got["theory/precondition"] and math.isfinite(got["theory/dist_bound"])
    json.dumps(got, allow_nan=True)


@pytest.mark.parametrize("chunk", [100, 7])
def test_observer_fed_in_chunks_equals_full_matrix_function(chunk):
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 4, nonlinear_depth=2, linear_depth=3, width=[20, 12, 9, 8]).eval()
    x, y = torch.randn(60, 1, 4, 4), torch.arange(60) % 4
    # A float64 copy: the observer derives Z_{L-1}'s Gram matrix from Z_{L-2}'s through
    # W_{L-1}, which equals the Gram of a float32 forward's Z_{L-1} only to float32 rounding.
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        trace = net64.forward_layers(x.double())
    ref = theorem31(trace.outputs[-3], trace.outputs[-2], trace.output, y, net64.weights[2:], 4)
    # the same features, fed in chunks
    observer = TheoryObserver(net64, 4)
    for i in range(0, 60, chunk):
        part = SimpleNamespace(
            output=trace.output[i : i + chunk], preacts=[], outputs=[z[i : i + chunk] for z in trace.outputs]
        )
        observer.update(part, y[i : i + chunk])
    got = observer.result()
    # through the metric pass of the float32 network (equal up to float32 rounding)
    batches = [(x[i : i + chunk], y[i : i + chunk]) for i in range(0, 60, chunk)]
    row, _ = metric_pass(net, batches, 4, observers=[TheoryObserver(net, 4)])
    for key in THEOREM31_KEYS:
        if isinstance(ref[key], bool):
            assert got[key] is ref[key] and row[key] is ref[key]
        else:
            assert got[key] == pytest.approx(ref[key], rel=1e-10), key
            assert row[key] == pytest.approx(ref[key], rel=1e-5), key
    assert row["theory/nc1"] == pytest.approx(row["nc1/layer_4"], rel=1e-9)
    # ||Z_{L-1}||_op derived from Z_{L-2}'s Gram matrix through W_{L-1}
    assert observer._op_lm1() == pytest.approx(float(torch.linalg.matrix_norm(trace.outputs[-2], 2)), rel=1e-12)


def test_monitor_theory_option_turns_the_observer_on_for_linear_heads_of_two_or_more():
    deep = MLP((1, 2, 2), 3, nonlinear_depth=1, linear_depth=2, width=5)
    shallow = MLP((1, 2, 2), 3, nonlinear_depth=2, linear_depth=1, width=5)
    assert len(theory_observers("auto", deep, 3)) == 1
    assert theory_observers("auto", shallow, 3) == [] and theory_observers(False, deep, 3) == []
    with pytest.raises(ValueError, match="linear head"):
        theory_observers(True, shallow, 3)
    with pytest.raises(ValueError, match="auto, true or false"):
        theory_observers("yes", deep, 3)


def test_diverged_weights_give_nan_not_an_exception():
    z_lm2, z_lm1, z_l, labels, heads = random_case(0)
    heads[-1][0, 0] = math.nan
    got = theorem31(z_lm2, z_lm1, z_l, labels, heads, 3)
    assert got["theory/precondition"] is False and math.isnan(got["theory/dist"])


def train_until_precondition(seed, linear_depth, steps=300):
    """A tiny MLP with a linear head, full-batch GD with weight decay on 40 separable samples,
    in plain torch; Theorem 3.1 evaluated every 10 steps."""
    torch.manual_seed(seed)
    K, N = 4, 40
    centers = torch.randn(K, 12)
    y = torch.arange(N) % K
    x = (centers[y] + 0.3 * torch.randn(N, 12)).view(N, 1, 3, 4)
    net = MLP((1, 3, 4), K, nonlinear_depth=1, linear_depth=linear_depth, width=16, init="lecun")
    opt = torch.optim.SGD(net.parameters(), lr=5e-3, weight_decay=1e-2)
    rows = []
    for step in range(steps + 1):
        trace = net.forward_layers(x)
        if step % 10 == 0:
            with torch.no_grad():
                res = theorem31(
                    trace.outputs[-3], trace.outputs[-2], trace.output, y, net.weights[net.nonlinear_depth :], K
                )
            rows.append({"epoch": step, **res})
        loss = 0.5 * (trace.output - torch.nn.functional.one_hot(y, K)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows


@pytest.mark.parametrize("seed,linear_depth", [(0, 2), (1, 3)])
def test_measured_distance_never_exceeds_the_bound_on_trained_networks(seed, linear_depth):
    rows = train_until_precondition(seed, linear_depth)
    held = [r for r in rows if r["theory/precondition"]]
    assert len(held) >= 20, "the network should reach the precondition within the run"
    for r in held:
        assert r["theory/dist"] <= r["theory/dist_bound"], r["epoch"]
        assert r["theory/nc1"] <= r["theory/nc1_dist"] <= r["theory/nc1_bound"], r["epoch"]
    summary = bound_holds(rows)
    assert summary["holds"] is True and summary["checked"] == len(held) and summary["violations"] == []
    assert 0 < summary["max_ratio"] < 1


def test_bound_holds_reports_violations_and_skips_rows_without_the_precondition():
    rows = [
        {"epoch": 0, "theory/precondition": False, "theory/dist": 5.0, "theory/dist_bound": None},
        {
            "epoch": 1,
            "theory/precondition": True,
            "theory/dist": 1.0,
            "theory/dist_bound": 2.0,
            "theory/nc1": 0.1,
            "theory/nc1_bound": 0.5,
        },
        {
            "epoch": 2,
            "theory/precondition": True,
            "theory/dist": 3.0,
            "theory/dist_bound": 2.0,
            "theory/nc1": 0.1,
            "theory/nc1_bound": 0.5,
        },
    ]
    out = bound_holds(rows)
    assert out == {"checked": 2, "holds": False, "violations": [2], "max_ratio": 1.5, "first_epoch": 1}
    assert bound_holds(rows[:1])["holds"] is None


def test_assumption_41_violations_raise_config_errors():
    check_assumption_41([128, 96, 64, 32, 10], 100)
    check_assumption_41([100, 200, 50, 10], 100)  # n_1 >= N; only n_2.. must not increase
    with pytest.raises(ConfigError, match=r"n_1 = 64 < N = 100"):
        check_assumption_41([64, 32, 10], 100)
    with pytest.raises(ConfigError, match=r"n_3 = 32 < n_4 = 64"):
        check_assumption_41([128, 64, 32, 64, 10], 100)


def test_rate_fit_recovers_a_synthetic_exponential():
    q = 0.995
    steps = range(2000)
    noise = np.random.default_rng(0).normal(0, 0.01, 2000)
    balance = [2.0 * q**k * math.exp(e) for k, e in zip(steps, noise)]
    assert fit_rate(steps, balance)["factor"] == pytest.approx(q, abs=2e-5)
    # loss: exponential decay to a plateau of 0.5 within ~200 steps, then flat
    rows = [
        {"step": k, "loss": 100 * 0.95**k + 0.5, "balancedness_error": b, "lr": 0.01} for k, b in zip(steps, balance)
    ]
    k0 = phase2_start([r["loss"] for r in rows], settle=0.01)
    assert 80 <= k0 <= 100  # 100 * 0.95^k <= 1 at k = 90
    lam = (1 - math.sqrt(q)) / 0.01  # (1 - eta lambda)^2 = q
    out = analyse_steps(rows, lam, settle=0.01)
    assert out["phase2_start_step"] == k0 and out["fitted_factor"] == pytest.approx(q, abs=2e-5)
    assert out["theory_factor"] == pytest.approx(q) and out["matches"] is True
    assert out["log_rate_ratio"] == pytest.approx(1.0, abs=0.01)
    assert analyse_steps(rows, 3 * lam)["matches"] is False
    assert rate_matches({"rate": out})["matches"] is True
    assert rate_matches({})["matches"] is None


def test_steps_log_is_trimmed_to_the_checkpoint_on_resume(tmp_path):
    for k in range(10):
        append_jsonl(tmp_path / "steps.jsonl", {"step": k, "loss": 1.0})
    atomic_write_json(tmp_path / "theory.json", {"assumption_4_3": {"holds": False}})
    monitor = TheoryGDMonitor(tmp_path)
    monitor.on_train_start(SimpleNamespace(global_step=5), None)
    assert [r["step"] for r in read_jsonl(tmp_path / "steps.jsonl")] == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "theory.json").read_text()) == {"assumption_4_3": {"holds": False}}


@pytest.mark.slow
def test_theory_gd_end_to_end(tmp_path):
    out = tmp_path / "run"
    run_train(
        out,
        "experiment=theory_gd",
        "logger=none",
        "trainer.max_epochs=300",
        "callbacks.checkpoint.every_n_epochs=100",
        "callbacks.metrics.num_points=8",
    )
    info = json.loads((out / "theory.json").read_text())
    assert info["setting"]["N"] == 100 and info["setting"]["widths"] == [128, 96, 64, 32, 10]
    assert info["setting"]["full_batch"] and info["setting"]["mse_reduction"] == "half_sum"
    assert info["assumption_4_1"]["holds"] is True and info["assumption_4_2"]["holds"] is True
    a43 = info["assumption_4_3"]
    assert {"lambda_F", "lambda_l", "bar_lambda_l", "C0", "lhs", "rhs", "holds"} <= set(a43)
    assert len(a43["lambda_l"]) == 5 and a43["lambda_F"] > 0 and a43["C0"] > 0
    rate = info["rate"]
    assert {
        "phase2_start_step",
        "fitted_factor",
        "theory_factor",
        "log_rate_ratio",
        "matches",
        "tolerance",
        "rule",
    } <= set(rate)
    assert rate["theory_factor"] == pytest.approx((1 - 5e-4 * 1.0) ** 2)
    steps = read_jsonl(out / "steps.jsonl")
    assert [r["step"] for r in steps] == list(range(300))
    assert {"step", "loss", "reg_loss", "balancedness_error", "lr"} <= set(steps[0])
    assert steps[0]["loss"] == pytest.approx(a43["C0"], rel=1e-5)
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["balancedness_error"] < steps[0]["balancedness_error"]
    rows = read_metrics(out)
    assert all(set(THEOREM31_KEYS) <= set(r) for r in rows)
    assert rows[0]["train/loss"] == pytest.approx(steps[0]["loss"], rel=1e-5)
    assert bound_holds(rows)["holds"] is True


@pytest.mark.slow
def test_theory_gd_refuses_a_non_pyramidal_network(tmp_path):
    proc = run_train(
        tmp_path / "run",
        "experiment=theory_gd",
        "logger=none",
        "trainer.max_epochs=2",
        "data.num_per_class=20",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Assumption 4.1" in proc.stderr and "n_1 = 128 < N = 200" in proc.stderr


@pytest.mark.slow
def test_theory_gd_blowing_up_is_recorded_as_diverged(tmp_path):
    # lr 2e-3 blows up within a few steps; with one step per epoch the metric pass meets the
    # overflowed features before DivergenceGuard meets a non-finite loss.
    out = tmp_path / "run"
    run_train(out, "experiment=theory_gd", "logger=none", "optim.lr=2e-3", "trainer.max_epochs=20")
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert read_jsonl(out / "steps.jsonl")[0]["step"] == 0
