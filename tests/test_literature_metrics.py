"""The optional metrics from the literature (metric_pass(extra=...), callbacks.metrics.extra):
each key against a float64 NumPy reference on the full feature matrix, on the exact and the fast
path; closed-form cases; data-parallel shares merged; the switches; the MetricMonitor wiring."""

import copy
import json
import math
import threading

import numpy as np
import pytest
import torch
from conftest import cpu_trainer, sgd
from pydantic import ValidationError
from test_metrics import ref_class_means, ref_covariances

from wdcollapse import metrics, schema
from wdcollapse.callbacks import MetricMonitor
from wdcollapse.data.tensors import TensorDataModule
from wdcollapse.metric_pass import metric_pass
from wdcollapse.models import MLP
from wdcollapse.module import CollapseModule

FAMILIES = ("papyan_nc1_cdnv", "etf", "self_duality", "nc4")
ETF_KEYS = {
    "nc2_equinorm/features",
    "nc2_equinorm/weights",
    "nc2_equiangularity/features",
    "nc2_equiangularity/weights",
}
RTOL = {True: 1e-9, False: 1e-5}  # exact path, fast path


@pytest.fixture(autouse=True)
def one_thread():
    """These inputs are tiny: on busy cores torch's parallel index_add_ spins for ~50 ms a call
    where one thread takes microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def family_keys(family: str, num_layers: int) -> set[str]:
    """The keys each switch must add, spelled out."""
    if family == "papyan_nc1_cdnv":
        return {f"{m}/layer_{l}" for m in ("nc1_papyan", "cdnv") for l in range(1, num_layers + 1)}
    return {"etf": ETF_KEYS, "self_duality": {"nc3_duality"}, "nc4": {"nc4"}}[family]


# ----------------------------------------------------------------------------
# float64 NumPy references on the full feature matrix z [N, d], labels y [N]


def ref_nc1_papyan(z, y, k):
    """tr(Sigma_W Sigma_B^+) / K with explicit covariance matrices and numpy's pseudo-inverse."""
    sigma_w, sigma_b = ref_covariances(z, y, k)
    return np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / k


def ref_cdnv(z, y, k):
    """Mean over pairs c < c' of (var_c + var_c') / (2 ||mu_c - mu_c'||^2)."""
    means = ref_class_means(z, y, k)
    var = [np.mean(np.sum((z[y == c] - means[c]) ** 2, axis=1)) for c in range(k)]
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    return np.mean([(var[a] + var[b]) / (2 * np.sum((means[a] - means[b]) ** 2)) for a, b in pairs])


def ref_centred_means(z, y, k):
    return ref_class_means(z, y, k) - z.mean(axis=0)


def ref_equinorm(v):
    norms = np.linalg.norm(v, axis=1)
    return norms.std() / norms.mean()  # population std (1/K)


def ref_equiangularity(v):
    k = len(v)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    return np.mean([abs(u[a] @ u[b] + 1 / (k - 1)) for a in range(k) for b in range(a + 1, k)])


def ref_duality(w, m):
    return np.sum((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2)


def ref_nc4(z, y, k, output):
    means = ref_class_means(z, y, k)
    dist = ((z[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return np.mean(dist.argmin(axis=1) == output.argmax(axis=1))


# ----------------------------------------------------------------------------
# networks and data


class FeatureNet:
    """A MeasuredNetwork whose first layer's output Z_1 is its input itself (weight I) and whose
    second, W_2 = `weight`, gives the output Z_1 W_2^T: the metrics of Z_{L-1} = Z_1 are those of
    the features fed in."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.num_layers, self.nonlinear_depth, self.linear_depth = 2, 0, 2

    @property
    def weights(self):
        return [torch.eye(self.weight.shape[1], dtype=self.weight.dtype), self.weight]

    @property
    def is_linear(self):
        return [True, True]

    def iter_layers(self, x):
        yield x, x
        out = x @ self.weight.T.to(x.dtype)
        yield out, out

    def __call__(self, x):
        return x @ self.weight.T.to(x.dtype)


def chunks(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def random_features(k=5, d=12, n=400, seed=0):
    """Class-dependent random features (shifted class centres plus noise), their labels and a
    random last weight [K, d]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    z = 1.5 * torch.randn(k, d, generator=g)[y] + torch.randn(n, d, generator=g) + 0.7
    return z, y, torch.randn(k, d, generator=g)


def mlp_and_data(k=5, n=400, seed=0):
    torch.manual_seed(seed)
    net = MLP((1, 6, 6), k, nonlinear_depth=2, linear_depth=3, width=24).eval()
    y = torch.arange(n) % k
    x = 2.0 * torch.randn(k, 1, 6, 6)[y] + torch.randn(n, 1, 6, 6)
    return net, x, y


def reference_row(layer_features, y, k, weight, output):
    """Every new key from the full per-layer feature matrices (Z_1..Z_L, numpy float64)."""
    row = {}
    for l, z in enumerate(layer_features, start=1):
        row[f"nc1_papyan/layer_{l}"] = ref_nc1_papyan(z, y, k)
        row[f"cdnv/layer_{l}"] = ref_cdnv(z, y, k)
    z = layer_features[-2]
    m = ref_centred_means(z, y, k)
    for of, v in (("features", m), ("weights", weight)):
        row[f"nc2_equinorm/{of}"] = ref_equinorm(v)
        row[f"nc2_equiangularity/{of}"] = ref_equiangularity(v)
    row["nc3_duality"] = ref_duality(weight, m)
    row["nc4"] = ref_nc4(z, y, k, output)
    return row


def numpy64(t):
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------
# against the references


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("source", ["features", "mlp"])
def test_every_new_key_matches_the_numpy_reference(source, exact):
    k = 5
    if source == "features":  # random features fed straight in as Z_1
        z, y, w = random_features(k)
        net, x = FeatureNet(w), z
        layer_features, output = [z, z @ w.T], z @ w.T
    else:  # every layer of an MLP; the features as one forward pass over all the data sees them
        net, x, y = mlp_and_data(k)
        trace = net.forward_layers(x)
        layer_features, output = trace.outputs, trace.output
    ref = reference_row([numpy64(f) for f in layer_features], y.numpy(), k, numpy64(net.weights[-1]), numpy64(output))
    row, _ = metric_pass(net, chunks(x, y, 37), k, exact=exact, extra=FAMILIES)
    assert set(ref) <= set(row)
    for key, value in ref.items():
        assert row[key] == pytest.approx(value, rel=RTOL[exact], abs=1e-12), key
    assert 0 < row["nc4"] < 1 or source == "mlp"  # the random case is not trivially 0 or 1


@pytest.mark.parametrize("exact", [True, False])
def test_pure_functions_match_the_reference(exact):
    z, y, w = random_features(k=4, d=7, n=90, seed=3)
    zn, yn = numpy64(z), y.numpy()
    assert metrics.nc1_papyan(z, y, 4) == pytest.approx(ref_nc1_papyan(zn, yn, 4), rel=1e-10)
    assert metrics.cdnv(z, y, 4) == pytest.approx(ref_cdnv(zn, yn, 4), rel=1e-10)
    assert metrics.equinorm(w) == pytest.approx(ref_equinorm(numpy64(w)), rel=1e-12)
    assert metrics.equiangularity(w) == pytest.approx(ref_equiangularity(numpy64(w)), rel=1e-12)
    m = ref_centred_means(zn, yn, 4)
    assert metrics.self_duality(w, torch.from_numpy(m)) == pytest.approx(ref_duality(numpy64(w), m), rel=1e-12)
    means = torch.from_numpy(ref_class_means(zn, yn, 4))
    dist = ((zn[:, None, :] - means.numpy()[None]) ** 2).sum(axis=2)
    assert torch.equal(metrics.nearest_class_centre(z, means, exact=exact), torch.from_numpy(dist.argmin(axis=1)))
    # the accumulator's streaming statistics, merged over uneven batches, give the same values
    acc = metrics.NCAccumulator(4, exact=exact, scatter=True)
    for zb, yb in chunks(z, y, 13):
        acc.update(zb, yb)
    assert acc.nc1_papyan() == pytest.approx(ref_nc1_papyan(zn, yn, 4), rel=RTOL[exact])
    assert acc.cdnv() == pytest.approx(ref_cdnv(zn, yn, 4), rel=RTOL[exact])
    assert torch.allclose(acc.centred_means(), torch.from_numpy(m), rtol=RTOL[exact], atol=1e-12)


# ----------------------------------------------------------------------------
# closed-form cases


@pytest.mark.parametrize("exact", [True, False])
def test_a_collapsed_simplex_etf_gives_the_ideal_values(exact):
    # The regular tetrahedron: K = 4 vertices, centred, equal norms sqrt(3), cosines -1/3 =
    # -1/(K-1) (exact in float32), in d = 5 with an offset orthogonal to their span. Every sample
    # is its class mean, and W_L = 2 M, the centred means.
    etf = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    centred = torch.cat([etf, torch.zeros(4, 2)], dim=1)
    offset = torch.tensor([0.0, 0.0, 0.0, 7.0, 0.0], dtype=torch.float64)
    y = torch.arange(12) % 4
    z = (centred + offset)[y].to(torch.float64 if exact else torch.float32)
    net = FeatureNet(2.0 * centred)
    row, _ = metric_pass(net, chunks(z, y, 5), 4, exact=exact, extra=FAMILIES)
    for key in ("nc1_papyan/layer_1", "cdnv/layer_1", *ETF_KEYS, "nc3_duality", "nc1/layer_1"):
        assert row[key] == pytest.approx(0.0, abs=1e-12), key
    assert row["nc4"] == 1.0


@pytest.mark.parametrize("exact", [True, False])
def test_two_classes_hand_computed(exact):
    # class 0: (1, 0), (3, 0): mean (2, 0), var_0 = 1;  class 1: (6, 2), (6, -2): mean (6, 0),
    # var_1 = 4;  ||mu_0 - mu_1||^2 = 16, so CDNV = (1 + 4) / (2 * 16) = 5/32.
    # Sigma_W = diag(2, 8) / 4 = diag(0.5, 2); mu_G = (4, 0), Sigma_B = diag(4, 0), Sigma_B^+ =
    # diag(1/4, 0): tr(Sigma_W Sigma_B^+) / K = (0.5 / 4) / 2 = 1/16 (the variance along the
    # second axis, orthogonal to the means, does not count), while tr(Sigma_W) / tr(Sigma_B) =
    # 2.5 / 4. Centred means (-2, 0), (2, 0): equal norms, cosine -1 = -1/(K-1).
    # W_L = I: rows of equal norm at cosine 0, |0 + 1| = 1; ||W/sqrt(2) - M/sqrt(8)||_F^2 =
    # ||[[sqrt(2), 0], [-1/sqrt(2), 1/sqrt(2)]]||^2 = 3; the network predicts argmax(x, y) = 0
    # for all four samples, the nearest centre is right for all: nc4 = 2/4.
    dtype = torch.float64 if exact else torch.float32
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [6.0, 2.0], [6.0, -2.0]], dtype=dtype)
    y = torch.tensor([0, 0, 1, 1])
    row, _ = metric_pass(FeatureNet(torch.eye(2, dtype=torch.float64)), chunks(z, y, 3), 2, exact=exact, extra=FAMILIES)
    expected = {
        "cdnv/layer_1": 5 / 32,
        "nc1_papyan/layer_1": 1 / 16,
        "nc1/layer_1": 2.5 / 4,
        "nc2_equinorm/features": 0.0,
        "nc2_equiangularity/features": 0.0,
        "nc2_equinorm/weights": 0.0,
        "nc2_equiangularity/weights": 1.0,
        "nc3_duality": 3.0,
        "nc4": 0.5,
    }
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert metrics.cdnv(z, y, 2) == pytest.approx(5 / 32, rel=1e-12)
    assert metrics.nc1_papyan(z, y, 2) == pytest.approx(1 / 16, rel=1e-12)


def test_etf_measures_of_three_hand_computed_rows():
    # norms 1, 1, sqrt(2); cosines 0, -1/sqrt(2), -1/sqrt(2), and 1/(K-1) = 1/2
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    mean = (2 + math.sqrt(2)) / 3
    assert metrics.equinorm(w) == pytest.approx(math.sqrt(4 / 3 - mean**2) / mean, rel=1e-12)
    assert metrics.equiangularity(w) == pytest.approx((0.5 + 2 * (1 / math.sqrt(2) - 0.5)) / 3, rel=1e-12)


def test_degenerate_cases():
    z, y = torch.ones(6, 3), torch.arange(6) % 2  # all class means equal, no scatter: 0/0
    assert math.isnan(metrics.nc1_papyan(z, y, 2))
    assert math.isnan(metrics.cdnv(z, y, 2))
    # scatter around exactly equal means (1, 1, 1): no between-class variance
    z = torch.tensor([[2.0, 1, 1], [0, 1, 1], [1, 3, 1], [1, -1, 1]])
    assert metrics.nc1_papyan(z, torch.tensor([0, 0, 1, 1]), 2) == math.inf
    with pytest.raises(ValueError, match="classes with no samples"):
        metrics.nc1_papyan(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="scatter=True"):
        acc = metrics.NCAccumulator(2)
        acc.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
        acc.nc1_papyan()
    assert math.isnan(metrics.equinorm(torch.zeros(3, 2)))
    assert math.isnan(metrics.self_duality(torch.zeros(2, 2), torch.eye(2)))


# ----------------------------------------------------------------------------
# data parallelism


def in_process_reduce():
    """As in tests/test_ddp.py: the i-th call is rank i's and returns the states of all ranks so
    far. Ranks run one after the other, so it serves the one-round families only: nc4's second
    round needs every rank's merged first round, which a rank run alone cannot have."""
    states = []

    def reduce(state):
        states.append(state)
        return list(states)

    return reduce


def threaded_all_gather(world: int):
    """A `reduce` per rank for ranks running in threads at once: every call is a collective that
    returns copies of all ranks' objects in rank order (as gather_states' unpickled copies),
    for any number of rounds."""
    barrier, slots = threading.Barrier(world), [None] * world

    def for_rank(rank):
        def reduce(obj):
            slots[rank] = obj
            barrier.wait()
            out = [copy.deepcopy(s) for s in slots]
            barrier.wait()  # nobody overwrites a slot before everyone has copied it
            return out

        return reduce

    return for_rank


def assert_rows_equal(merged, full):
    assert set(merged) == set(full)
    for key, value in full.items():
        if isinstance(value, float) and not math.isfinite(value):
            assert merged[key] == value or (math.isnan(value) and math.isnan(merged[key])), key
        else:
            assert merged[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


@pytest.mark.parametrize("exact", [True, False])
def test_merged_halves_equal_the_full_pass(exact):
    net, x, y = mlp_and_data(n=300, seed=1)
    parts = chunks(x, y, 40)  # 8 chunks, the last short; rank r takes chunks r, r + 2, ...
    one_round = [f for f in FAMILIES if f != "nc4"]
    full, _ = metric_pass(net, parts, 5, exact=exact, extra=one_round)
    reduce = in_process_reduce()
    metric_pass(net, parts[0::2], 5, exact=exact, reduce=reduce, extra=one_round)
    merged, _ = metric_pass(net, parts[1::2], 5, exact=exact, reduce=reduce, extra=one_round)
    assert_rows_equal(merged, full)

    # all families, nc4's second round included, with the ranks running concurrently
    full, full_grams = metric_pass(net, parts, 5, exact=exact, extra=FAMILIES)
    world = 3
    rows = [None] * world
    gather = threaded_all_gather(world)

    def rank(r):
        rows[r] = metric_pass(net, parts[r::world], 5, exact=exact, reduce=gather(r), extra=FAMILIES)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(r, tuple) for r in rows), "a rank failed"
    for merged, grams in rows:
        assert_rows_equal(merged, full)
        assert grams.keys() == full_grams.keys()


def test_a_rank_without_data_merges_as_nothing():
    net, x, y = mlp_and_data(n=60, seed=2)
    full, _ = metric_pass(net, [(x, y)], 5, extra=FAMILIES)
    gather = threaded_all_gather(2)
    rows = [None, None]

    def rank(r, batches):
        rows[r] = metric_pass(net, batches, 5, reduce=gather(r), extra=FAMILIES)[0]

    threads = [threading.Thread(target=rank, args=(0, [(x, y)])), threading.Thread(target=rank, args=(1, []))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert rows[0] == rows[1] == full


# ----------------------------------------------------------------------------
# the switches


def test_switches_are_off_by_default_and_each_adds_exactly_its_family():
    net, x, y = mlp_and_data(n=200, seed=4)
    parts = chunks(x, y, 64)
    default, default_grams = metric_pass(net, parts, 5)
    assert metric_pass(net, parts, 5, extra=()) == (default, default_grams)
    new_prefixes = ("nc1_papyan/", "cdnv/", "nc2_equinorm/", "nc2_equiangularity/", "nc3_duality", "nc4")
    assert not any(key.startswith(new_prefixes) for key in default)
    for exact in (True, False):
        base, _ = metric_pass(net, parts, 5, exact=exact)
        for family in FAMILIES:
            row, grams = metric_pass(net, parts, 5, exact=exact, extra=[family])
            assert set(row) - set(base) == family_keys(family, net.num_layers), family
            assert {k: row[k] for k in base} == base  # the default keys bit-identical
            if exact:
                assert grams == default_grams
    everything, _ = metric_pass(net, parts, 5, extra=FAMILIES)
    assert set(everything) - set(default) == set().union(*(family_keys(f, net.num_layers) for f in FAMILIES))


def test_bad_extra_arguments_are_refused():
    net, x, y = mlp_and_data(n=50)
    with pytest.raises(ValueError, match=r"extra=.*not allowed: metric families from .*unknown: \[.nc5.\]"):
        metric_pass(net, [(x, y)], 5, extra=["etf", "nc5"])
    with pytest.raises(ValueError, match="reads the data twice"):
        metric_pass(net, iter([(x, y)]), 5, extra=["nc4"])
    # a function returning a fresh iterable is read once per pass
    row, _ = metric_pass(net, lambda: iter([(x, y)]), 5, extra=["nc4"])
    assert row == metric_pass(net, [(x, y)], 5, extra=["nc4"])[0]


def test_the_schema_and_the_config_hold_the_switches():
    from conftest import compose_train
    from hydra.utils import instantiate

    from wdcollapse.config import check_config
    from wdcollapse.errors import ConfigError

    beyond = ("conditioning", "rank", "nc0", "grad_norm", "agop", "sharpness")  # tests/test_beyond_metrics.py
    assert schema.Metrics().extra.model_dump() == {f: False for f in (*FAMILIES, "test_set", *beyond)}
    with pytest.raises(ValidationError):
        schema.ExtraMetrics(nc5=True)
    cfg = compose_train("logger=none", "callbacks.metrics.extra.etf=true")
    bad = compose_train("logger=none", "+callbacks.metrics.extra.nc5=true")
    check_config(cfg)
    with pytest.raises(ConfigError, match=r"^callbacks.metrics.extra.nc5=True is not allowed: no such setting"):
        check_config(bad)
    monitor = instantiate(cfg.callbacks.metrics, out_dir="unused")
    assert monitor.extra.etf and not monitor.extra.test_set and monitor.extra_families == ["etf"]
    assert MetricMonitor("unused").extra_families == []


# ----------------------------------------------------------------------------
# MetricMonitor


def test_the_monitor_writes_the_extra_and_test_keys(tmp_path):
    torch.manual_seed(0)
    dm = TensorDataModule("mnist", "/nonexistent", batch_size=16)
    y = torch.arange(60) % 10
    dm.train_x = torch.randn(10, 1, 4, 4)[y] + 0.3 * torch.randn(60, 1, 4, 4)
    dm.train_y, dm.test_x, dm.test_y = y, dm.train_x[:20] + 0.1, y[:20].clone()
    net = MLP((1, 4, 4), 10, 2, 2, width=12)
    initial = copy.deepcopy(net).eval()
    extra = {**{f: True for f in FAMILIES}, "test_set": True}
    monitor = MetricMonitor(tmp_path, schedule="every", extra=extra)
    trainer = cpu_trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    trainer.fit(CollapseModule(net, **sgd(0.01)), datamodule=dm)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    train, _ = metric_pass(initial, lambda: dm.eval_batches("train"), 10, exact=False, extra=FAMILIES)
    test, _ = metric_pass(initial, lambda: dm.eval_batches("test"), 10, exact=False, extra=FAMILIES)
    first = rows[0]
    for key in family_keys("papyan_nc1_cdnv", 4) | ETF_KEYS | {"nc3_duality", "nc4"}:
        assert first[key] == pytest.approx(train[key], rel=1e-12), key
    assert first["test/acc"] == test["acc"]
    for key in ("nc1/layer_3", "nc2/layer_4", "negativity/layer_1", "nc3", "nc1_papyan/layer_2", "cdnv/layer_4"):
        assert first[f"test/{key}"] == pytest.approx(test[key], rel=1e-12), key
    for key in ("nc2_equinorm/features", "nc2_equiangularity/features", "nc3_duality", "nc4"):
        assert first[f"test/{key}"] == pytest.approx(test[key], rel=1e-12), key
    # values of the weights alone are the same on every split: not repeated under test/
    assert not any(k.startswith(("test/balancedness/", "test/nc2_equinorm/weights")) for k in first)
    assert set(rows[1]) == set(first)
