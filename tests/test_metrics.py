"""Tests for wdcollapse.metrics against an independent NumPy reference,
closed-form cases, invariances and the streaming accumulators."""

import math

import numpy as np
import pytest
import torch

from wdcollapse.metrics import (
    GramAccumulator,
    NCAccumulator,
    NegativityAccumulator,
    balancedness,
    nc1,
    nc2,
    nc3,
    negativity,
    op_norm,
)

RTOL = 1e-10
SEEDS = [0, 1, 2]


# ----------------------------------------------------------------------------
# independent NumPy reference (explicit matrices, loops over classes)


def ref_class_means(z, y, k):
    return np.stack([z[y == c].mean(axis=0) for c in range(k)])


def ref_covariances(z, y, k):
    """(Sigma_W, Sigma_B): within-class covariance over all N samples, class means around the
    global mean over the K classes, as explicit loops."""
    n, d = z.shape
    means = ref_class_means(z, y, k)
    mu_g = z.mean(axis=0)
    sigma_w = np.zeros((d, d))
    for c in range(k):
        dev = z[y == c] - means[c]
        sigma_w += dev.T @ dev
    sigma_w /= n
    sigma_b = np.zeros((d, d))
    for c in range(k):
        v = (means[c] - mu_g)[:, None]
        sigma_b += v @ v.T
    sigma_b /= k
    return sigma_w, sigma_b


def ref_nc1(z, y, k):
    sigma_w, sigma_b = ref_covariances(z, y, k)
    return np.trace(sigma_w) / np.trace(sigma_b)


def ref_nc2(z, y, k):
    m = ref_class_means(z, y, k).T  # d x K
    s = np.linalg.svd(m, compute_uv=False)
    return s[0] / s[k - 1]


def ref_nc3(z, y, w):
    cos = [z[i] @ w[y[i]] / (np.linalg.norm(z[i]) * np.linalg.norm(w[y[i]])) for i in range(len(y))]
    return float(np.mean(cos))


def ref_balancedness(w_next, w):
    a, b = w_next.T @ w_next, w @ w.T
    return np.linalg.norm(a - b, 2) / min(np.linalg.norm(a, 2), np.linalg.norm(b, 2))


def ref_negativity(z):
    return np.linalg.norm(np.minimum(z, 0.0), 2) / np.linalg.norm(z, 2)


# ----------------------------------------------------------------------------
# data


def make_data(seed, n=300, d=20, k=6, spread=1.0, noise=1.0, offset=0.0):
    """Features with labels covering every class, plus a [K, d] weight."""
    rng = np.random.default_rng(seed)
    means = offset + spread * rng.standard_normal((k, d))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(y)
    z = means[y] + noise * rng.standard_normal((n, d))
    w = rng.standard_normal((k, d))
    return z, y, w


def t(x):
    return torch.from_numpy(np.asarray(x))


def close(a, b, rtol=RTOL):
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def random_batches(rng, n, max_batch=70):
    """Random permutation of range(n) split into random-sized chunks (incl. empty)."""
    perm = rng.permutation(n)
    cuts = np.sort(rng.integers(0, n + 1, size=rng.integers(3, 12)))
    return np.split(perm, cuts)


# ----------------------------------------------------------------------------
# 1. reference comparison


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [4, 10])
def test_nc_functions_match_reference(seed, k):
    z, y, w = make_data(seed, k=k)
    assert close(nc1(t(z), t(y), k), ref_nc1(z, y, k))
    assert close(nc2(t(z), t(y), k), ref_nc2(z, y, k))
    assert close(nc3(t(z), t(y), t(w)), ref_nc3(z, y, w))


def test_nc_functions_accept_float32_input():
    z, y, w = make_data(7, k=5)
    z32 = z.astype(np.float32)
    w32 = w.astype(np.float32)
    z64, w64 = z32.astype(np.float64), w32.astype(np.float64)
    assert close(nc1(t(z32), t(y), 5), ref_nc1(z64, y, 5))
    assert close(nc3(t(z32), t(y), t(w32)), ref_nc3(z64, y, w64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(300, 20), (15, 40)])
def test_op_norm_and_negativity_match_reference(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) + 0.3
    assert close(op_norm(t(x)), np.linalg.norm(x, 2))
    assert close(negativity(t(x)), ref_negativity(x))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dims", [(5, 8, 12), (30, 20, 10)])
def test_balancedness_matches_reference(seed, dims):
    rng = np.random.default_rng(seed)
    n_next, n_l, n_prev = dims
    w_next = rng.standard_normal((n_next, n_l))
    w = rng.standard_normal((n_l, n_prev))
    assert close(balancedness(t(w_next), t(w)), ref_balancedness(w_next, w))


# ----------------------------------------------------------------------------
# 2. closed-form cases


def test_nc1_zero_for_collapsed_features():
    z, y, _ = make_data(3, noise=0.0)
    assert abs(nc1(t(z), t(y), 6)) < 1e-12
    # and it is clearly positive with noise, so the test can fail
    z_noisy, _, _ = make_data(3, noise=0.1)
    assert nc1(t(z_noisy), t(y), 6) > 1e-3


def test_nc2_one_for_orthogonal_equal_norm_means():
    rng = np.random.default_rng(4)
    k, d, n = 5, 12, 200
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    means = 3.0 * np.eye(k, d)
    noise = rng.standard_normal((n, d))
    for c in range(k):  # make the noise exactly mean-zero within each class
        noise[y == c] -= noise[y == c].mean(axis=0)
    z = means[y] + noise
    assert abs(nc2(t(z), t(y), k) - 1.0) < 1e-12
    z[:, 0] *= 2.0  # stretch one class mean: no longer well conditioned
    assert nc2(t(z), t(y), k) > 1.5


def test_nc2_inf_for_rank_deficient_means():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])[y]
    assert nc2(z, y, 3) == float("inf")  # d = 2 < K = 3
    z3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])[y]
    assert nc2(z3, y, 3) == float("inf")  # zero class mean
    zero = torch.zeros(len(y), 4)
    assert math.isnan(nc2(zero, y, 3)) and math.isnan(nc1(zero, y, 3))  # 0/0 both


def test_nc3_one_when_features_are_weight_rows():
    rng = np.random.default_rng(5)
    k, d, n = 6, 10, 120
    w = rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    z = w[y] * rng.uniform(0.1, 10.0, size=(n, 1))
    assert abs(nc3(t(z), t(y), t(w)) - 1.0) < 1e-12
    assert abs(nc3(t(-z), t(y), t(w)) + 1.0) < 1e-12


def test_nc3_zero_vectors_give_cosine_zero():
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    assert nc3(z, y, w) == pytest.approx(1.0 / 3.0, abs=1e-15)


def test_balancedness_zero_when_w_next_is_transpose():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 13))
    assert abs(balancedness(t(w.T), t(w))) < 1e-12
    assert balancedness(t(2.0 * w.T), t(w)) > 0.1


def test_balancedness_hand_computed():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # w w^T = diag(1, 4)
    # w_next^T w_next = [[1, 1], [1, 1]] (op 2); difference [[0, 1], [1, -3]]
    # has eigenvalues (-3 +- sqrt(13)) / 2, op norm (3 + sqrt(13)) / 2.
    w_next = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert balancedness(w_next, w) == pytest.approx((3 + math.sqrt(13)) / 4, rel=1e-14)
    # w_next^T w_next = 2 I: difference diag(1, -2) -> 2 / min(2, 4) = 1
    w_next = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    assert balancedness(w_next, w) == pytest.approx(1.0, rel=1e-14)


def test_negativity_closed_forms():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 7))
    assert negativity(t(np.abs(x))) == 0.0
    assert abs(negativity(t(-np.abs(x) - 0.1)) - 1.0) < 1e-12
    assert negativity(torch.zeros(5, 3)) == 0.0
    # not bounded by 1: the negative part of a centred matrix can have larger op norm
    assert negativity(t(x)) > 0.1


# ----------------------------------------------------------------------------
# 3. invariances


@pytest.mark.parametrize("seed", SEEDS)
def test_permutation_invariance(seed):
    z, y, w = make_data(seed, k=7)
    p = np.random.default_rng(seed + 100).permutation(len(y))
    zt, yt, wt = t(z), t(y), t(w)
    zp, yp = t(z[p]), t(y[p])
    assert close(nc1(zp, yp, 7), nc1(zt, yt, 7))
    assert close(nc2(zp, yp, 7), nc2(zt, yt, 7))
    assert close(nc3(zp, yp, wt), nc3(zt, yt, wt))
    assert close(negativity(zp), negativity(zt))


@pytest.mark.parametrize("c", [1e-3, 2.5, 1e4])
def test_scale_invariance(c):
    z, y, w = make_data(11, k=5)
    zt, yt, wt = t(z), t(y), t(w)
    zc = c * zt
    assert close(nc1(zc, yt, 5), nc1(zt, yt, 5))
    assert close(nc2(zc, yt, 5), nc2(zt, yt, 5))
    assert close(nc3(zc, yt, wt), nc3(zt, yt, wt))
    assert close(negativity(zc), negativity(zt))
    rng = np.random.default_rng(12)
    a, b = t(rng.standard_normal((9, 6))), t(rng.standard_normal((6, 4)))
    assert close(balancedness(c * a, c * b), balancedness(a, b))


@pytest.mark.parametrize("seed", SEEDS)
def test_rotation_invariance(seed):
    z, y, w = make_data(seed, k=8)
    q, _ = np.linalg.qr(np.random.default_rng(seed + 200).standard_normal((20, 20)))
    zt, yt, wt = t(z), t(y), t(w)
    zq, wq = t(z @ q), t(w @ q)
    assert close(nc1(zq, yt, 8), nc1(zt, yt, 8), 1e-9)
    assert close(nc2(zq, yt, 8), nc2(zt, yt, 8), 1e-9)
    assert close(nc3(zq, yt, wq), nc3(zt, yt, wt), 1e-9)


# ----------------------------------------------------------------------------
# 4. streaming


def feed(acc, z, y, batches):
    for idx in batches:
        acc.update(t(z[idx]), t(y[idx]))
    return acc


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [4, 10])
def test_nc_accumulator_matches_functions(seed, k):
    z, y, w = make_data(seed, k=k)
    rng = np.random.default_rng(seed + 300)
    acc = feed(NCAccumulator(k, weight=t(w)), z, y, random_batches(rng, len(y)))
    assert acc.count == len(y)
    zt, yt = t(z), t(y)
    assert close(acc.nc1(), nc1(zt, yt, k))
    assert close(acc.nc2(), nc2(zt, yt, k))
    assert close(acc.nc3(), nc3(zt, yt, t(w)))
    means = acc.class_means()
    assert means.dtype == torch.float64 and means.shape == (k, 20)
    np.testing.assert_allclose(means.numpy(), ref_class_means(z, y, k), rtol=RTOL, atol=1e-13)


def test_nc_accumulator_single_sample_batches():
    z, y, w = make_data(21, n=40, d=5, k=4)
    acc = feed(NCAccumulator(4, weight=t(w)), z, y, [[i] for i in range(len(y))])
    assert close(acc.nc1(), ref_nc1(z, y, 4))
    assert close(acc.nc3(), ref_nc3(z, y, w))


@pytest.mark.parametrize("seed", SEEDS)
def test_nc_accumulator_nearly_collapsed(seed):
    # means ~ 1e3, within-class noise ~ 1e-6 relative: naive E[z^2] - mu^2
    # would cancel catastrophically; Chan's merge must not.
    z, y, _ = make_data(seed, n=400, d=10, k=5, spread=1.0, noise=1e-3, offset=1e3)
    rng = np.random.default_rng(seed + 400)
    acc = feed(NCAccumulator(5), z, y, random_batches(rng, len(y), max_batch=30))
    direct = nc1(t(z), t(y), 5)
    assert 1e-9 < direct < 1e-4
    assert close(acc.nc1(), direct, 1e-6)
    assert close(direct, ref_nc1(z, y, 5), 1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_nc_accumulator_merge_equals_single(seed):
    z, y, w = make_data(seed, k=6)
    rng = np.random.default_rng(seed + 500)
    perm = rng.permutation(len(y))
    part_a, part_b = perm[:110], perm[110:]
    whole = feed(NCAccumulator(6, weight=t(w)), z, y, random_batches(rng, len(y)))
    a = feed(NCAccumulator(6, weight=t(w)), z, y, np.array_split(part_a, 3))
    b = feed(NCAccumulator(6, weight=t(w)), z, y, np.array_split(part_b, 4))
    b_state = b.state_dict()
    merged = a.merge(b)
    assert merged.count == whole.count == len(y)
    for name in ("nc1", "nc2", "nc3"):
        assert close(getattr(merged, name)(), getattr(whole, name)())
    np.testing.assert_allclose(merged.class_means().numpy(), whole.class_means().numpy(), rtol=RTOL, atol=1e-13)

    # merging a state_dict into an empty accumulator, then the other part
    fresh = NCAccumulator(6, weight=t(w)).merge(b_state)
    fresh.merge(feed(NCAccumulator(6, weight=t(w)), z, y, [part_a]))
    assert close(fresh.nc1(), nc1(t(z), t(y), 6))
    assert close(fresh.nc3(), nc3(t(z), t(y), t(w)))


def test_nc_accumulator_merge_rejects_incompatible():
    z, y, w = make_data(0, k=4)
    with pytest.raises(ValueError):
        NCAccumulator(4).merge(NCAccumulator(5))
    with pytest.raises(ValueError):
        NCAccumulator(4, weight=t(w)).merge(NCAccumulator(4))


def test_nc_accumulator_empty_class_raises():
    z, y, w = make_data(0, k=4)
    y = np.where(y == 2, 1, y)
    acc = feed(NCAccumulator(4, weight=t(w)), z, y, [np.arange(len(y))])
    with pytest.raises(ValueError, match=r"\[2\]"):
        acc.nc1()
    with pytest.raises(ValueError, match=r"\[2\]"):
        acc.nc2()
    acc.nc3()  # nc3 does not need every class
    with pytest.raises(ValueError, match=r"\[2\]"):
        nc1(t(z), t(y), 4)
    with pytest.raises(ValueError):
        NCAccumulator(4).nc1()


def test_nc_accumulator_nc3_requires_weight():
    z, y, _ = make_data(0, k=4)
    acc = feed(NCAccumulator(4), z, y, [np.arange(len(y))])
    with pytest.raises(ValueError, match="weight"):
        acc.nc3()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(300, 20), (15, 40)])
def test_gram_and_negativity_accumulators(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) - 0.2
    batches = random_batches(rng, shape[0])
    gram, neg = GramAccumulator(shape[1]), NegativityAccumulator(shape[1])
    for idx in batches:
        gram.update(t(x[idx]))
        neg.update(t(x[idx]))
    assert close(gram.op_norm(), op_norm(t(x)))
    assert close(gram.op_norm(), np.linalg.norm(x, 2))
    assert close(neg.value(), negativity(t(x)))

    half = shape[0] // 3
    g1, g2 = GramAccumulator(shape[1]), GramAccumulator(shape[1])
    n1, n2 = NegativityAccumulator(shape[1]), NegativityAccumulator(shape[1])
    g1.update(t(x[:half]))
    g2.update(t(x[half:]))
    n1.update(t(x[:half]))
    n2.update(t(x[half:]))
    assert close(g1.merge(g2).op_norm(), op_norm(t(x)))
    assert close(n1.merge(n2).value(), ref_negativity(x))


@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_negativity_of_other_activations_uses_their_residual(slope):
    # leaky ReLU: Z - sigma(Z) = (1 - slope) min(Z, 0), so negativity scales by (1 - slope)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)) - 0.1
    act = np.where(x > 0, x, slope * x)
    expected = np.linalg.norm(x - act, 2) / np.linalg.norm(x, 2)
    assert close(negativity(t(x), t(act)), expected)
    assert close(negativity(t(x), t(act)), (1 - slope) * ref_negativity(x))
    for exact in (True, False):
        acc = NegativityAccumulator(12, exact=exact)
        for idx in random_batches(rng, 200):
            acc.update(t(x[idx]), t(act[idx]))
        assert acc.value() == pytest.approx(expected, rel=1e-12 if exact else 1e-6)
    with pytest.raises(ValueError, match="activated has shape"):
        negativity(t(x), t(act[:, :5]))


def test_negativity_accumulator_all_zero():
    acc = NegativityAccumulator(3)
    acc.update(torch.zeros(4, 3))
    assert acc.value() == 0.0


# ----------------------------------------------------------------------------
# 5. bad input


def test_balancedness_rejects_unchained_shapes():
    with pytest.raises(ValueError, match="chain"):
        balancedness(torch.randn(4, 5), torch.randn(6, 3))
    with pytest.raises(ValueError):
        balancedness(torch.randn(4), torch.randn(4, 3))


@pytest.mark.parametrize("bad", [-1, 4])
def test_labels_out_of_range(bad):
    z, y, w = make_data(0, k=4)
    y = y.copy()
    y[5] = bad
    for fn in (nc1, nc2):
        with pytest.raises(ValueError, match="labels"):
            fn(t(z), t(y), 4)
    with pytest.raises(ValueError, match="labels"):
        nc3(t(z), t(y), t(w))
    with pytest.raises(ValueError, match="labels"):
        NCAccumulator(4).update(t(z), t(y))


def test_shape_errors():
    z, y, w = make_data(0, k=4)
    with pytest.raises(ValueError, match="2-D"):
        nc1(t(z[0]), t(y[:1]), 4)
    with pytest.raises(ValueError, match="length"):
        nc1(t(z), t(y[:-1]), 4)
    with pytest.raises(ValueError, match="length"):
        NCAccumulator(4).update(t(z), t(y[:-1]))
    with pytest.raises(ValueError, match="weight"):
        nc3(t(z), t(y), t(w[:, :-1]))
    with pytest.raises(ValueError, match="2-D"):
        negativity(torch.randn(3))
    with pytest.raises(ValueError, match="2-D"):
        op_norm(torch.randn(2, 3, 4))
    with pytest.raises(ValueError):
        GramAccumulator(5).update(torch.randn(3, 4))
