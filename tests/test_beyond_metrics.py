"""The measures beyond the paper (callbacks.metrics.extra: conditioning, rank, nc0, grad_norm, agop,
sharpness): each against an independent float64 reference (NumPy, or a dense torch computation
written here: the Hessian by torch.autograd.functional.hessian, per-sample Jacobians), a
closed-form case each, data-parallel shares merged, the switches, and MetricMonitor's rows."""

import json
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_trainer, sgd
from test_literature_metrics import FeatureNet, chunks, threaded_all_gather

from wdcollapse import beyond, keys, schema
from wdcollapse.callbacks import MetricMonitor
from wdcollapse.data.tensors import TensorDataModule
from wdcollapse.errors import ArgumentError
from wdcollapse.interfaces import HookedNetwork
from wdcollapse.metric_pass import metric_pass
from wdcollapse.models import MLP
from wdcollapse.module import CollapseModule

PASS_FAMILIES = ("conditioning", "rank", "nc0")
MONITOR_FAMILIES = ("grad_norm", "agop", "sharpness")
NEW_PREFIXES = ("weight_sv", "weight_cond", "class_sv", "rank", "nc0", "grad_norm", "agop_", "sharpness")
LAMBDA = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny inputs: one thread is faster than torch's parallel kernels on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_mlp(k=3, width=5, nonlinear=2, linear=2, n=24, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = MLP((1, 3, 3), k, nonlinear_depth=nonlinear, linear_depth=linear, width=width).to(dtype).eval()
    y = torch.arange(n) % k
    x = (1.5 * torch.randn(k, 1, 3, 3)[y] + torch.randn(n, 1, 3, 3)).to(dtype)
    return net, x, y


def half_mean(out, y, n):
    """The paper's loss as a batch's share of the mean over n samples, written here."""
    return 0.5 * (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum() / n


def numpy_forward(net, x):
    """(pre-activations, outputs) of every layer of a bias-free ReLU MLP, in NumPy float64."""
    z = x.reshape(len(x), -1).double().numpy()
    pres, outs = [], []
    for l, w in enumerate(w.detach().double().numpy() for w in net.weights):
        pre = z @ w.T
        z = np.maximum(pre, 0) if l < net.nonlinear_depth else pre
        pres.append(pre)
        outs.append(z)
    return pres, outs


def ref_centred_means(z, y, k):
    return np.stack([z[y == c].mean(0) for c in range(k)]) - z.mean(0)


def dense_objective(net, x, y, lam):
    """(f, theta0): the regularised loss as a function of the flat parameter vector, by
    torch.func.functional_call (for the dense derivatives of torch.autograd.functional)."""
    names, params = zip(*net.named_parameters())
    sizes = [p.numel() for p in params]
    theta0 = torch.cat([p.detach().reshape(-1) for p in params])

    def f(theta):
        parts = {n: t.view_as(p) for n, t, p in zip(names, theta.split(sizes), params)}
        out = torch.func.functional_call(net, parts, (x,))
        return half_mean(out, y, len(y)) + lam / 2 * theta.pow(2).sum()

    return f, theta0


def run_ranks(world, work):
    """`work(rank, reduce)` in `world` threads at once, each with a collective `reduce`."""
    gather, results = threaded_all_gather(world), [None] * world

    def run(r):
        results[r] = work(r, gather(r))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a rank failed"
    return results


# ----------------------------------------------------------------------------
# conditioning, rank, nc0 (the metric pass)


def test_conditioning_matches_numpy_singular_values():
    net, x, y = tiny_mlp(width=6, nonlinear=2, linear=3)
    row, _ = metric_pass(net, chunks(x, y, 7), 3, extra=["conditioning"])
    for l, w in enumerate(net.weights, start=1):
        if not net.is_linear[l - 1]:
            assert not any(k.endswith(f"/layer_{l}") and k.startswith("weight_") for k in row), l
            continue
        s = np.linalg.svd(w.detach().numpy(), compute_uv=False)
        for i in range(min(3, len(s))):
            assert row[f"weight_sv{i + 1}/layer_{l}"] == pytest.approx(s[i], rel=1e-12)
        assert row[f"weight_sv_min/layer_{l}"] == pytest.approx(s[-1], rel=1e-12)
        assert row[f"weight_cond/layer_{l}"] == pytest.approx(s[0] / s[-1], rel=1e-12)


def test_an_identity_scaled_head_has_condition_number_one():
    net, x, y = tiny_mlp(k=3, width=3, nonlinear=1, linear=2)
    with torch.no_grad():
        net.weights[1].copy_(2.0 * torch.eye(3))
        net.weights[2].copy_(-0.5 * torch.eye(3))
    row, _ = metric_pass(net, [(x, y)], 3, extra=["conditioning"])
    for l, c in ((2, 2.0), (3, 0.5)):
        assert row[f"weight_cond/layer_{l}"] == pytest.approx(1.0, abs=1e-12)
        assert row[f"weight_sv1/layer_{l}"] == row[f"weight_sv3/layer_{l}"] == pytest.approx(c, rel=1e-12)
        assert row[f"weight_sv_min/layer_{l}"] == pytest.approx(c, rel=1e-12)


@pytest.mark.parametrize("exact", [True, False])
def test_rank_matches_numpy_before_and_after_the_activation(exact):
    net, x, y = tiny_mlp(k=4, width=7, nonlinear=2, linear=2, n=40)
    row, _ = metric_pass(net, chunks(x, y, 9), 4, exact=exact, extra=["rank"])
    pres, outs = numpy_forward(net, x)
    for l in range(1, net.num_layers + 1):
        cases = [("", outs[l - 1])] + ([("_preact", pres[l - 1])] if l <= net.nonlinear_depth else [])
        for suffix, z in cases:
            s = np.linalg.svd(ref_centred_means(z, y.numpy(), 4), compute_uv=False)
            for i, value in enumerate(s, start=1):
                assert row[f"class_sv{i}{suffix}/layer_{l}"] == pytest.approx(value, rel=1e-9, abs=1e-12)
            assert row[f"rank{suffix}/layer_{l}"] == int((s > 1e-3 * s[0]).sum())
        assert (f"rank_preact/layer_{l}" in row) == (l <= net.nonlinear_depth)


def test_class_means_of_rank_r_have_numerical_rank_r():
    k, d, r, n = 6, 10, 3, 120
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % k
    basis = torch.randn(r, d, generator=g, dtype=torch.float64)
    coeffs = 2.0 * torch.randn(k, r, generator=g, dtype=torch.float64)[y] + torch.randn(n, r, generator=g).double()
    z = coeffs @ basis + 0.0  # every feature in an r-dimensional subspace
    net = FeatureNet(torch.randn(k, d, generator=g, dtype=torch.float64))
    row, _ = metric_pass(net, chunks(z, y, 25), k, extra=["rank"])
    assert row["rank/layer_1"] == row["rank/layer_2"] == r
    assert row[f"class_sv{r + 1}/layer_1"] < 1e-12 * row["class_sv1/layer_1"]
    # full-rank class means: K centred means span K - 1 dimensions
    spread = z + torch.eye(k, d, dtype=torch.float64)[y]
    row, _ = metric_pass(FeatureNet(torch.eye(k, d, dtype=torch.float64)), [(spread, y)], k, extra=["rank"])
    assert row["rank/layer_1"] == min(k - 1, d)


def test_nc0_is_the_norm_of_the_sum_of_the_last_weights_rows():
    net, x, y = tiny_mlp(k=3, width=5)
    w = net.weights[-1].detach().numpy()  # [K, n_(L-1)] = [3, 5]
    row, _ = metric_pass(net, [(x, y)], 3, extra=["nc0"])
    assert row["nc0"] == pytest.approx(np.linalg.norm(w.sum(axis=0)), rel=1e-12)
    assert row["nc0"] != pytest.approx(np.linalg.norm(w.sum(axis=1)), rel=1e-3)  # the other orientation
    with torch.no_grad():
        net.weights[-1].sub_(net.weights[-1].mean(0, keepdim=True))  # rows that sum to zero
    row, _ = metric_pass(net, [(x, y)], 3, extra=["nc0"])
    assert row["nc0"] == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("exact", [True, False])
def test_the_pass_families_merged_over_ranks_equal_one_pass(exact):
    net, x, y = tiny_mlp(k=3, width=6, n=60, dtype=torch.float32)
    parts = chunks(x, y, 8)
    full, _ = metric_pass(net, parts, 3, exact=exact, extra=PASS_FAMILIES)
    rows = run_ranks(
        2, lambda r, reduce: metric_pass(net, parts[r::2], 3, exact=exact, reduce=reduce, extra=PASS_FAMILIES)[0]
    )
    for merged in rows:
        assert set(merged) == set(full)
        for key, value in full.items():
            assert merged[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


# ----------------------------------------------------------------------------
# grad_norm, agop, sharpness (wdcollapse.beyond)


def test_grad_norm_matches_the_dense_gradient():
    net, x, y = tiny_mlp()
    params, decays = list(net.parameters()), [LAMBDA] * len(list(net.parameters()))
    row = beyond.grad_norm(net, params, decays, chunks(x, y, 7), half_mean, len(y))
    for lam, key in ((LAMBDA, "grad_norm"), (0.0, "grad_norm/loss")):
        f, theta = dense_objective(net, x, y, lam)
        dense = torch.autograd.functional.jacobian(f, theta)
        assert row[key] == pytest.approx(float(dense.norm()), rel=1e-10), key


def test_grad_norm_of_a_linear_model_in_closed_form():
    net, x, y = tiny_mlp(k=3, nonlinear=0, linear=1, n=30)
    w = net.weights[0].detach().numpy()
    xs, ys = x.reshape(30, -1).numpy(), np.eye(3)[y.numpy()]
    grad = (xs @ w.T - ys).T @ xs / 30  # of 1/(2N) ||X W^T - Y||_F^2
    row = beyond.grad_norm(net, [net.weights[0]], [LAMBDA], chunks(x, y, 11), half_mean, 30)
    assert row["grad_norm"] == pytest.approx(np.linalg.norm(grad + LAMBDA * w), rel=1e-12)
    assert row["grad_norm/loss"] == pytest.approx(np.linalg.norm(grad), rel=1e-12)


def ref_agop(net, x, l):
    """A_l = mean_i J_i^T J_i with J_i the Jacobian of the network's output at sample i with
    respect to layer l's input, one sample at a time, the network written out here."""
    weights = [w.detach() for w in net.weights]
    z = x.reshape(len(x), -1)
    for i in range(l - 1):  # layer l's input
        z = z @ weights[i].T
        z = z.relu() if i < net.nonlinear_depth else z

    def rest(v):
        for i in range(l - 1, len(weights)):
            v = weights[i] @ v
            v = v.relu() if i < net.nonlinear_depth else v
        return v

    jacobians = [torch.autograd.functional.jacobian(rest, zi).numpy() for zi in z]
    return sum(j.T @ j for j in jacobians) / len(jacobians)


def numpy_sqrt(a):
    values, vectors = np.linalg.eigh(a)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def test_agop_matches_per_sample_jacobians_and_the_hooked_path():
    net, x, y = tiny_mlp(k=3, width=5, nonlinear=2, linear=2, n=12)
    row = beyond.agop(net, chunks(x, y, 5))
    relu, (l1, l2, l3, l4) = torch.nn.ReLU(), net.layers  # the same weights as a plain nn.Sequential
    sequential = torch.nn.Sequential(torch.nn.Flatten(), l1, relu, l2, relu, l3, l4)
    hooked = beyond.agop(HookedNetwork(sequential, ["1", "3", "5", "6"], linear_depth=2), chunks(x, y, 5))
    for l in range(1, net.num_layers + 1):
        a = ref_agop(net, x, l)
        gram = (net.weights[l - 1].T @ net.weights[l - 1]).detach().numpy()
        assert row[f"agop_trace/layer_{l}"] == pytest.approx(np.trace(a), rel=1e-10)
        assert row[f"agop_corr/layer_{l}"] == pytest.approx(np.corrcoef(a.ravel(), gram.ravel())[0, 1], rel=1e-10)
        expected = np.corrcoef(numpy_sqrt(a).ravel(), gram.ravel())[0, 1]
        # the root of a singular A_l: its zero eigenvalues' rounding (1e-17) enters as 1e-9
        assert row[f"agop_sqrt_corr/layer_{l}"] == pytest.approx(expected, rel=1e-6)
        for key in (f"agop_trace/layer_{l}", f"agop_corr/layer_{l}", f"agop_sqrt_corr/layer_{l}"):
            assert hooked[key] == pytest.approx(row[key], rel=1e-8), key


def test_agop_of_the_linear_head_in_closed_form():
    net, x, y = tiny_mlp(k=3, width=4, nonlinear=1, linear=3, n=10)
    matrices = beyond.agop_matrices(net, chunks(x, y, 4))
    w = [t.detach() for t in net.weights]
    # the Jacobian of the output with respect to Z_(l-1) in the linear head is W_L ... W_l
    for l in (4, 3, 2):
        product = w[-1]
        for i in range(len(w) - 2, l - 2, -1):
            product = product @ w[i]
        assert torch.allclose(matrices[l - 1], product.T @ product, rtol=1e-12, atol=1e-14), l
    row = beyond.agop(net, chunks(x, y, 4))
    assert row["agop_corr/layer_4"] == pytest.approx(1.0, abs=1e-12)  # A_L = W_L^T W_L
    assert row["agop_trace/layer_4"] == pytest.approx(float(w[-1].pow(2).sum()), rel=1e-12)


def test_hessian_eigenvalues_match_the_dense_hessian():
    net, x, y = tiny_mlp()
    params = list(net.parameters())
    f, theta = dense_objective(net, x, y, LAMBDA)
    dense = np.linalg.eigvalsh(torch.autograd.functional.hessian(f, theta).numpy())[::-1]
    exact = beyond.hessian_eigenvalues(
        net, params, [LAMBDA] * len(params), chunks(x, y, 7), half_mean, len(y), steps=len(theta), k=3
    )
    assert exact == pytest.approx(dense[:3], rel=1e-9)
    twenty = beyond.hessian_eigenvalues(net, params, [LAMBDA] * len(params), chunks(x, y, 7), half_mean, len(y), 20, 2)
    assert twenty[0] == pytest.approx(dense[0], rel=1e-6)


class Quadratic(torch.nn.Module):
    """A 'network' whose loss 0.5 theta^T A theta has the known Hessian A (theta: fc's weight)."""

    def __init__(self, a: torch.Tensor, theta: torch.Tensor):
        super().__init__()
        self.fc = torch.nn.Linear(len(theta), 2, bias=False).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([theta, theta]) / math.sqrt(2))
        self.a = a

    def forward(self, x):
        return self.fc(x)

    def loss(self, out, y, n):
        theta = self.fc.weight.reshape(-1)
        return 0.5 * theta @ self.a @ theta * len(y) / n


def test_the_sharpness_of_a_quadratic_is_its_top_eigenvalues_plus_lambda():
    g = torch.Generator().manual_seed(1)
    eigenvalues = torch.tensor([9.0, 4.0, 2.5, 1.0, 0.5, 0.1] + [0.0] * 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    a = q @ torch.diag(eigenvalues) @ q.T
    model = Quadratic(a, torch.randn(6, generator=g, dtype=torch.float64))
    net, x, y = HookedNetwork(model, ["fc"], 1), torch.randn(10, 6, dtype=torch.float64), torch.arange(10) % 2
    params = [model.fc.weight]
    top = beyond.hessian_eigenvalues(net, params, [LAMBDA], chunks(x, y, 4), model.loss, 10, steps=12, k=3)
    assert top == pytest.approx([9.0 + LAMBDA, 4.0 + LAMBDA, 2.5 + LAMBDA], rel=1e-10)
    # the operator alone, known spectrum, fewer iterations than dimensions
    diagonal = torch.cat([torch.tensor([3.0, 2.5]), torch.linspace(0.0, 2.0, 198)]).double()
    assert beyond.lanczos(lambda v: diagonal * v, 200, 30, k=2) == pytest.approx([3.0, 2.5], rel=1e-8)
    # batch sharpness along an eigenvector of A: every batch's g is parallel to it
    with torch.no_grad():
        model.fc.weight.copy_(q[:, 1].reshape(2, 6))
    assert beyond.batch_sharpness(net, params, [LAMBDA], chunks(x, y, 5), model.loss) == pytest.approx(4.0 + LAMBDA)


def test_batch_sharpness_matches_dense_mini_batch_hessians():
    net, x, y = tiny_mlp(n=24)
    params = list(net.parameters())
    batches = chunks(x, y, 8)
    ratios = []
    for xb, yb in batches:
        f, theta = dense_objective(net, xb, yb, LAMBDA)
        grad = torch.autograd.functional.jacobian(f, theta).numpy()
        hessian = torch.autograd.functional.hessian(f, theta).numpy()
        ratios.append(grad @ hessian @ grad / (grad @ grad))
    value = beyond.batch_sharpness(net, params, [LAMBDA] * len(params), batches, half_mean)
    assert value == pytest.approx(np.mean(ratios), rel=1e-10)


def test_the_gradient_measures_merged_over_ranks_equal_one_rank():
    net, x, y = tiny_mlp(n=30)
    params, decays = list(net.parameters()), [LAMBDA] * len(list(net.parameters()))
    parts = chunks(x, y, 4)  # 8 pieces, the last short

    def measures(pieces, reduce=None):
        return (
            beyond.grad_norm(net, params, decays, pieces, half_mean, len(y), reduce),
            beyond.agop(net, pieces, reduce),
            beyond.hessian_eigenvalues(net, params, decays, pieces, half_mean, len(y), 15, 2, reduce),
            beyond.batch_sharpness(net, params, decays, pieces, half_mean, reduce),
        )

    full = measures(parts)
    shares = [parts[0::3], parts[1::3], parts[2::3]]
    for world, split in ((3, shares), (2, [parts, []])):  # and a rank without data
        for merged in run_ranks(world, lambda r, reduce, split=split: measures(split[r], reduce)):
            assert merged[0] == pytest.approx(full[0], rel=1e-10)
            assert merged[1] == pytest.approx(full[1], rel=1e-6)  # agop_sqrt_corr: the root of a singular A_l
            assert merged[2] == pytest.approx(full[2], rel=1e-9)
            assert merged[3] == pytest.approx(full[3], rel=1e-10)


def test_thresholds_at_the_current_learning_rate_and_momentum():
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert beyond.stability_thresholds(torch.optim.SGD(p, lr=0.1)) == pytest.approx((20.0, 20.0))
    assert beyond.stability_thresholds(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == pytest.approx((20.0, 38.0))
    nesterov = beyond.stability_thresholds(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True))[1]
    assert nesterov == pytest.approx(3.8 / 0.28)

    def diverges(curvature, nest):  # torch's SGD on 1/2 a t^2: the threshold is where it stops converging
        t = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([t], lr=0.1, momentum=0.9, nesterov=nest)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * curvature * t.pow(2)).sum().backward()
            opt.step()
        return not float(t.detach().abs()) < 1.0

    for nest, threshold in ((False, 38.0), (True, nesterov)):
        assert not diverges(0.99 * threshold, nest) and diverges(1.01 * threshold, nest)


def test_the_fixed_subset_is_every_stride_th_sample():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100) % 4
    sx, sy = beyond.fixed_subset(chunks(x, y, 16), 100, 10)
    assert sx.flatten().tolist() == list(range(0, 100, 10)) and sy.tolist() == [i % 4 for i in range(0, 100, 10)]
    assert len(beyond.fixed_subset(chunks(x, y, 16), 100, 1000)[1]) == 100


# ----------------------------------------------------------------------------
# MetricMonitor, the switches, the views


def tiny_data(n=60):
    torch.manual_seed(0)
    dm = TensorDataModule("mnist", "/nonexistent", batch_size=16)
    y = torch.arange(n) % 10
    dm.train_x = torch.randn(10, 1, 4, 4)[y] + 0.3 * torch.randn(n, 1, 4, 4)
    dm.train_y, dm.test_x, dm.test_y = y, dm.train_x[:20] + 0.1, y[:20].clone()
    return dm


def rows_of(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_the_monitor_writes_the_keys_only_when_switched_on(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    dm = tiny_data()
    net = MLP((1, 4, 4), 10, 2, 2, width=12)
    initial = MLP((1, 4, 4), 10, 2, 2, width=12).eval()
    initial.load_state_dict(net.state_dict())
    on, off = tmp_path / "on", tmp_path / "off"
    extra = [*PASS_FAMILIES, *MONITOR_FAMILIES]
    monitor = MetricMonitor(on, schedule="every", extra=extra, subset=40, lanczos_steps=10, batch_sharpness_batches=2)
    trainer = cpu_trainer(on, max_epochs=1, callbacks=[monitor], logger=CSVLogger(on))
    module = CollapseModule(net, **sgd(0.01, momentum=0.9, weight_decay=1e-3))
    trainer.fit(module, datamodule=dm)
    first, last = rows_of(on)
    for family in ("weight_sv1", "weight_cond", "class_sv1", "rank", "rank_preact", "agop_corr", "agop_sqrt_corr"):
        assert f"{family}/layer_3" in first or f"{family}/layer_1" in first, family
    for key in ("nc0", "grad_norm", "grad_norm/loss", "sharpness", "sharpness/eig_2", "sharpness/batch"):
        assert math.isfinite(first[key]) and math.isfinite(last[key]), key
    assert first["sharpness/threshold_gd"] == pytest.approx(2 / 0.01)  # lr 0.01, momentum 0.9
    assert last["sharpness/threshold_momentum"] == pytest.approx(2 * 1.9 / 0.01)
    assert first["sharpness/seconds"] > 0 and first["sharpness/epochs"] is None and last["sharpness/epochs"] > 0
    assert set(first) == set(last)
    # the row at initialisation is the functions' on the initial network (float32, the subset of 40)
    params = list(initial.parameters())
    decays = [1e-3] * len(params)
    loss = lambda out, y, n: module.loss(out, y, num_total=n)
    x, y = beyond.fixed_subset(dm.eval_batches("train"), 60, 40)
    top = beyond.hessian_eigenvalues(initial, params, decays, [(x, y)], loss, len(y), 10, 2)
    assert first["sharpness"] == pytest.approx(top[0], rel=1e-6)
    grad = beyond.grad_norm(initial, params, decays, dm.eval_batches("train"), loss, 60)
    assert first["grad_norm"] == pytest.approx(grad["grad_norm"], rel=1e-6)
    # the loggers get the row (W&B through RunLog, Lightning's others through log_metrics)
    assert "sharpness" in (on / "lightning_logs/version_0/metrics.csv").read_text().splitlines()[0].split(",")

    cpu_trainer(off, max_epochs=1, callbacks=[MetricMonitor(off, schedule="every")]).fit(
        CollapseModule(MLP((1, 4, 4), 10, 2, 2, width=12), **sgd(0.01)), datamodule=dm
    )
    assert not any(key.startswith(NEW_PREFIXES) for row in rows_of(off) for key in row)


def test_the_monitor_on_a_users_own_network(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Mine(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(
                torch.nn.Linear(8, 6, bias=False),
                torch.nn.ReLU(),
                torch.nn.Linear(6, 6, bias=False),
                torch.nn.Linear(6, 3, bias=False),
            )

        def forward(self, x):
            return self.head(x)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-3)

    torch.manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.randn(3, 8)[y] + 0.5 * torch.randn(48, 8)
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    summed = lambda out, labels: F.cross_entropy(out, labels, reduction="sum")
    common = dict(layers=["head.0", "head.2", "head.3"], linear_depth=2, data=data, num_classes=3, test_acc=False)
    with pytest.raises(ArgumentError, match=r"^MetricMonitor\(loss_fn=None\): not allowed: .*\['sharpness'\]"):
        cpu_trainer(tmp_path, max_epochs=1, callbacks=[MetricMonitor(tmp_path, extra=["sharpness"], **common)]).fit(
            Mine(), data
        )
    module = Mine()
    initial = HookedNetwork(Mine().eval(), ["head.0", "head.2", "head.3"], 2)
    initial.module.load_state_dict(module.state_dict())
    monitor = MetricMonitor(tmp_path, extra=[*PASS_FAMILIES, *MONITOR_FAMILIES], loss_fn=summed, subset=24, **common)
    cpu_trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(module, data)
    first = rows_of(tmp_path)[0]
    expected = beyond.agop(initial, [beyond.fixed_subset(data, 48, 24)])
    for key, value in expected.items():
        assert first[key] == pytest.approx(value, rel=1e-6), key
    assert first["sharpness/threshold_momentum"] == pytest.approx(2 * 1.5 / 0.05)
    assert {"weight_cond/layer_2", "weight_cond/layer_3", "rank_preact/layer_1", "nc0", "grad_norm"} <= set(first)


def test_unknown_and_misplaced_switches_are_refused_in_one_line():
    from conftest import compose_train

    from wdcollapse.config import check_config
    from wdcollapse.errors import ConfigError

    with pytest.raises(ArgumentError, match=r"^MetricMonitor\(extra=.*\): not allowed: .*unknown: \['sharpnes'\]\)$"):
        MetricMonitor("unused", extra=["sharpnes"])
    with pytest.raises(ConfigError, match=r"^callbacks.metrics.extra.sharpnes=True is not allowed: no such setting"):
        check_config(compose_train("logger=none", "+callbacks.metrics.extra.sharpnes=true"))
    net, x, y = tiny_mlp()
    with pytest.raises(ArgumentError, match=r"^metric_pass\(extra=\['agop'\]\): not allowed: .*MetricMonitor") as e:
        metric_pass(net, [(x, y)], 3, extra=["agop"])
    assert "\n" not in str(e.value)
    with pytest.raises(
        ArgumentError, match=r"^MetricMonitor\(hessian_eigenvalues=5\): not allowed: at most lanczos_steps=4"
    ):
        MetricMonitor("unused", lanczos_steps=4, hessian_eigenvalues=5)
    with pytest.raises(ArgumentError, match=r"^MetricMonitor\(subset=0\)"):
        MetricMonitor("unused", subset=0)


def test_the_schema_and_the_config_hold_the_switches_and_settings():
    from conftest import compose_train
    from hydra.utils import instantiate

    from wdcollapse.config import check_config

    dumped = schema.Metrics().extra.model_dump()
    assert all(dumped[f] is False for f in (*PASS_FAMILIES, *MONITOR_FAMILIES))
    cfg = compose_train(
        "logger=none",
        "callbacks.metrics.extra.sharpness=true",
        "callbacks.metrics.extra.rank=true",
        "callbacks.metrics.subset=200",
    )
    check_config(cfg)
    monitor = instantiate(cfg.callbacks.metrics, out_dir="unused")
    assert monitor.monitor_families == ["sharpness"] and monitor.extra_families == ["rank"]
    assert (monitor.subset, monitor.lanczos_steps, monitor.hessian_eigenvalues) == (200, 20, 2)
    assert MetricMonitor("unused").monitor_families == []


def test_every_new_family_is_registered_for_the_views():
    import re

    from wdcollapse.dashboards import panels

    net, x, y = tiny_mlp(width=6, nonlinear=2, linear=2)
    row, _ = metric_pass(net, [(x, y)], 3, extra=PASS_FAMILIES)
    row.update(beyond.agop(net, [(x, y)]))
    row.update(
        {
            k: 1.0
            for k in (
                "grad_norm",
                "grad_norm/loss",
                "sharpness",
                "sharpness/eig_2",
                "sharpness/batch",
                "sharpness/threshold_gd",
                "sharpness/threshold_momentum",
                "sharpness/seconds",
                "sharpness/epochs",
            )
        }
    )
    new = [k for k in row if k.startswith(NEW_PREFIXES)]
    patterns = [f.pattern for f in keys.OPTIONAL_FAMILIES]
    for key in new:  # each new key in exactly one family, whose title and axis the views read
        owners = [p for p in patterns if re.match(p, key)]
        assert len(owners) == 1, (key, owners)
    described = {p["metric_regex"] for s in panels() for p in s["panels"] if p["kind"] == "line"}
    assert set(patterns) <= described
    assert all(keys.FAMILY[f.key].axis and f.title for f in keys.OPTIONAL_FAMILIES)
