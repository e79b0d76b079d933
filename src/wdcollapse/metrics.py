"""Neural-collapse metrics (Jacot et al. 2025, "Wide Neural Networks Trained with
Weight Decay Provably Exhibit Neural Collapse").

Features are tensors of shape [N, d] (one row per sample), labels are integer
tensors [N] with values in 0..K-1. Everything is computed in float64 and
returned as Python floats. The pure functions work on a full set of features;
the accumulators compute the same quantities from batches in O(K d) memory
(O(d^2) for the Gram-based ones) and can be merged across processes.

The accumulators take `exact=False` for a fast path: each batch's statistics
(class sums, deviations, Gram matrices) are computed in the features' own
precision (float32 for a float32 network, about twice as fast as float64 and
half the memory traffic) and accumulated across batches in float64. Its values
agree with the exact path to about 1e-7 relative (tests/test_fastpath.py checks 1e-5).

Besides the paper's metrics, optional ones from the literature (off in the metric pass unless
switched on): Papyan, Han & Donoho's (2020) NC1 = tr(Sigma_W Sigma_B^+) / K and their NC2
measures of a simplex ETF (equinorm, equiangularity) and NC3 (self-duality of W_L and the centred
class means), Galanti et al.'s (2022) class-distance normalised variance (CDNV), and NC4
(agreement of the network with the nearest-class-centre classifier).

Beyond the paper (also optional): the singular values and condition number of a weight, the
numerical rank of the centred class means, and NC0 (Zhao et al.: the norm of the sum of the last
weight's rows). The measures that need gradients (gradient norm, AGOP, sharpness) are in
wdcollapse.beyond.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "nc1",
    "nc2",
    "nc3",
    "balancedness",
    "negativity",
    "op_norm",
    "nc1_papyan",
    "cdnv",
    "equinorm",
    "equiangularity",
    "self_duality",
    "nearest_class_centre",
    "NCAccumulator",
    "GramAccumulator",
    "NegativityAccumulator",
    "singular_values",
    "numerical_rank",
    "condition_number",
    "nc0",
    "ClassSumAccumulator",
]

# Norm floor for cosines: zero vectors get cosine 0 instead of NaN.
_EPS = torch.finfo(torch.float64).tiny


# ----------------------------------------------------------------------------
# validation helpers


def check_2d(x: torch.Tensor, name: str, exact: bool = True) -> torch.Tensor:
    """x as float64 (exact) or in its own floating precision, at least float32."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor, got {shape}")
    x = x.detach()
    if exact:
        return x.double()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_inputs(features, labels, num_classes: int, exact: bool = True, check_range: bool = True):
    """Validate and return (features [N, d], float64 if exact, and labels long [N]).
    `check_range=False` skips the label range (a host read), for labels checked already."""
    z = check_2d(features, "features", exact)
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError("labels must be a 1-D tensor")
    if labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels has length {labels.shape[0]} but features has {z.shape[0]} rows")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    y = labels.long().to(z.device)
    if check_range:
        check_label_range(y, num_classes)
    return z, y


def check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError unless every label lies in 0..num_classes-1 (one host read)."""
    if labels.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range [{lo}, {hi}]")


def _check_weight(weight, num_classes: int, dim: int) -> torch.Tensor:
    w = check_2d(weight, "weight")
    if w.shape != (num_classes, dim):
        raise ValueError(f"weight must have shape [K, d] = [{num_classes}, {dim}], got {tuple(w.shape)}")
    return w


def _require_all_classes(counts: torch.Tensor) -> None:
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"classes with no samples: {empty}")


# ----------------------------------------------------------------------------
# per-class statistics shared by the functions and the accumulator


def _class_stats(z: torch.Tensor, y: torch.Tensor, num_classes: int, scatter: bool = False):
    """Per-class count [K], mean [K, d] and sum of squared deviations [K], as float64,
    computed in z's precision; with `scatter`, also the within-class scatter matrix
    S_W = sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T [d, d]."""
    counts = torch.bincount(y, minlength=num_classes)
    n = counts.clamp_min(1).unsqueeze(1)
    means = z.new_zeros(num_classes, z.shape[1]).index_add_(0, y, z).div_(n)
    # Deviations from the class mean directly (not E[z^2] - mu^2): stable when
    # the features are nearly collapsed around a large mean. Their class sums
    # (zero up to rounding) correct the mean for the rounding of the first sum,
    # which matters in float32: sum ||z - mu||^2 = sum ||z - m||^2 - n ||mu - m||^2.
    # (In place where possible: a fresh buffer of this size costs its page faults.)
    dev = means.index_select(0, y)
    dev = torch.sub(z, dev, out=dev)
    resid = torch.zeros_like(means).index_add_(0, y, dev).double() / n
    # Before the squaring below overwrites dev; the same rounding correction in matrix form:
    # sum (dev - r)(dev - r)^T = sum dev dev^T - n r r^T, r a class's resid.
    s_w = _gram(dev).double() - (resid * n).T @ resid if scatter else None
    sq_dev = dev.square_().sum(1).double()
    m2 = sq_dev.new_zeros(num_classes).index_add_(0, y, sq_dev)
    m2 = (m2 - resid.pow(2).sum(1) * n.squeeze(1)).clamp_min(0.0)
    if scatter:
        return counts, means.double() + resid, m2, s_w
    return counts, means.double() + resid, m2


def between_class_trace(counts, means) -> float:
    """tr(Sigma_B) = 1/K sum_c ||mu_c - mu_G||^2, mu_G the count-weighted mean of the mu_c."""
    n = counts.double()
    mu_g = (n.unsqueeze(1) * means).sum(0) / n.sum()
    return float((means - mu_g).pow(2).sum() / means.shape[0])


def _nc1_from_stats(counts, means, m2) -> float:
    _require_all_classes(counts)
    tr_w = m2.sum() / counts.double().sum()
    return float(tr_w / between_class_trace(counts, means))  # a tensor: tr_b = 0 gives inf or nan


def _nc2_from_means(means: torch.Tensor) -> float:
    s = torch.linalg.svdvals(means)
    if s.numel() == 0 or float(s[0]) == 0.0:  # all means zero: 0/0, as NC1 of such features
        return float("nan")
    # With d < K the d x K mean matrix has s_K = 0 (svdvals returns only d values).
    if s.numel() < means.shape[0] or float(s[-1]) == 0.0:
        return float("inf")
    return float(s[0] / s[-1])


def centred_means(counts: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """mu_c - mu_G [K, d], mu_G the count-weighted mean of the mu_c (the mean of all samples)."""
    n = counts.double()
    return means - (n.unsqueeze(1) * means).sum(0) / n.sum()


def _nc1_papyan_from_stats(counts, means, s_w) -> float:
    """tr(Sigma_W Sigma_B^+) / K through the SVD of the centred class means M [K, d]:
    Sigma_B = M^T M / K = V diag(s^2 / K) V^T, so the value is sum_j v_j^T Sigma_W v_j / s_j^2
    over the kept singular directions. Working on M rather than on Sigma_B squares no condition
    number. Kept: s_j > s_1 max(K, d) eps (numpy's matrix_rank tolerance), and at most K - 1,
    the rank of M (sum_c n_c (mu_c - mu_G) = 0), so that the rounding of the centring never
    enters as a direction of almost zero between-class variance."""
    _require_all_classes(counts)
    m = centred_means(counts, means)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    tol = (float(s[0]) if s.numel() else 0.0) * max(m.shape) * torch.finfo(torch.float64).eps
    rank = min(int((s > tol).sum()), m.shape[0] - 1)
    sigma_w = s_w / counts.double().sum()
    if rank == 0:  # no between-class variance, as nc1's tr_B = 0: inf, or 0/0 = nan
        return float("nan") if float(sigma_w.trace()) == 0.0 else float("inf")
    v = vh[:rank]
    return float((((v @ sigma_w) * v).sum(1) / s[:rank].square()).sum())


def _cdnv_from_stats(counts, means, m2) -> float:
    """Mean over class pairs c < c' of (var_c + var_c') / (2 ||mu_c - mu_c'||^2)."""
    _require_all_classes(counts)
    k = means.shape[0]
    if k < 2:
        return float("nan")
    var = m2 / counts.double()
    total = means.new_zeros(())
    # One class against the later ones at a time: O(K d) memory, and the differences of the
    # means taken directly (no ||a||^2 + ||b||^2 - 2ab cancellation for close means).
    for c in range(k - 1):
        dist = (means[c + 1 :] - means[c]).square().sum(1)
        total = total + ((var[c] + var[c + 1 :]) / (2.0 * dist)).sum()
    return float(total / (k * (k - 1) // 2))


def _cosine_sum(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_i cos(z_i, w[y_i]), through one [n, K] product rather than a weight row per sample."""
    tiny = torch.finfo(z.dtype).tiny
    w = w.to(z.dtype)
    wn = w / w.norm(dim=1, keepdim=True).clamp_min(tiny)
    dots = (z @ wn.T).gather(1, y.unsqueeze(1)).squeeze(1)
    return (dots / z.norm(dim=1).clamp_min(tiny)).sum()


# ----------------------------------------------------------------------------
# pure functions


def nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """NC1 = tr(Sigma_W) / tr(Sigma_B).

    Sigma_W = 1/N sum_{c,i} (z_ci - mu_c)(z_ci - mu_c)^T,
    Sigma_B = 1/K sum_c (mu_c - mu_G)(mu_c - mu_G)^T, mu_G the mean of all N
    samples. Only traces are computed. Raises ValueError if a class is empty.
    """
    z, y = check_inputs(features, labels, num_classes)
    return _nc1_from_stats(*_class_stats(z, y, num_classes))


def nc2(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """NC2 = s_1 / s_K, the condition number of the d x K matrix of uncentred
    class means [mu_1, ..., mu_K]; inf if s_K = 0, nan if every mean is 0 (0/0, as NC1).
    Raises ValueError if a class is empty."""
    z, y = check_inputs(features, labels, num_classes)
    counts, means, _ = _class_stats(z, y, num_classes)
    _require_all_classes(counts)
    return _nc2_from_means(means)


def nc3(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> float:
    """NC3 = 1/N sum_i cos(z_i, W[y_i, :]) with W the [K, d] last-layer weight.

    A zero vector has cosine 0 with anything.
    """
    w = check_2d(weight, "weight")
    z, y = check_inputs(features, labels, w.shape[0])
    w = _check_weight(w, w.shape[0], z.shape[1]).to(z.device)
    if z.shape[0] == 0:
        raise ValueError("nc3 needs at least one sample")
    return float(_cosine_sum(z, y, w)) / z.shape[0]


def nc1_papyan(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Papyan, Han & Donoho's NC1 = tr(Sigma_W Sigma_B^+) / K, Sigma_W and Sigma_B as in `nc1`,
    ^+ the pseudo-inverse (rank tolerance: see `NCAccumulator.nc1_papyan`); inf (nan) if the
    class means coincide and the within-class scatter is non-zero (zero). Raises ValueError if
    a class is empty."""
    z, y = check_inputs(features, labels, num_classes)
    counts, means, _, s_w = _class_stats(z, y, num_classes, scatter=True)
    return _nc1_papyan_from_stats(counts, means, s_w)


def cdnv(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Galanti et al.'s class-distance normalised variance: the mean over class pairs c < c' of
    (var_c + var_c') / (2 ||mu_c - mu_c'||^2), var_c = the mean of ||z - mu_c||^2 over class c;
    nan for one class. Raises ValueError if a class is empty."""
    z, y = check_inputs(features, labels, num_classes)
    return _cdnv_from_stats(*_class_stats(z, y, num_classes))


def equinorm(vectors: torch.Tensor) -> float:
    """std / mean of the norms of the rows of `vectors` [K, d] (std with 1/K, not 1/(K-1)): 0
    when they all have the same norm; nan when they are all zero."""
    norms = check_2d(vectors, "vectors").norm(dim=1)
    mean = float(norms.mean()) if norms.numel() else 0.0
    return float("nan") if mean == 0.0 else float(norms.std(correction=0)) / mean


def equiangularity(vectors: torch.Tensor) -> float:
    """Mean over pairs of rows c < c' of |cos(v_c, v_c') + 1/(K-1)|: 0 for the K rows of a
    simplex ETF (all cosines -1/(K-1)). A zero row has cosine 0 with anything; nan for K < 2."""
    v = check_2d(vectors, "vectors")
    k = v.shape[0]
    if k < 2:
        return float("nan")
    unit = v / v.norm(dim=1, keepdim=True).clamp_min(_EPS)
    i, j = torch.triu_indices(k, k, offset=1, device=v.device)
    cos = (unit @ unit.T)[i, j]
    return float((cos + 1.0 / (k - 1)).abs().mean())


def self_duality(weight: torch.Tensor, centred: torch.Tensor) -> float:
    """|| W / ||W||_F - M / ||M||_F ||_F^2 for the last weight W [K, d] and the centred class
    means M [K, d] of its input (row c: class c): 0 when W is a positive multiple of M, at most 4;
    nan when either is zero."""
    w, m = check_2d(weight, "weight"), check_2d(centred, "centred")
    if w.shape != m.shape:
        raise ValueError(f"weight {tuple(w.shape)} and class means {tuple(m.shape)} differ in shape")
    m = m.to(w.device)
    w_norm, m_norm = float(torch.linalg.matrix_norm(w)), float(torch.linalg.matrix_norm(m))
    if w_norm == 0.0 or m_norm == 0.0:
        return float("nan")
    return float((w / w_norm - m / m_norm).square().sum())


def nearest_class_centre(features: torch.Tensor, means: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """The class c minimising ||z_i - mu_c|| for each row z_i of `features` [n, d], with the class
    means `means` [K, d]: long [n] (ties: the lowest class). `exact=False`: in the features'
    precision."""
    z = check_2d(features, "features", exact)
    mu = check_2d(means, "means").to(device=z.device, dtype=z.dtype)
    if mu.shape[1] != z.shape[1]:
        raise ValueError(f"means have {mu.shape[1]} columns, the features {z.shape[1]}")
    # argmin_c ||z - mu_c||^2 = argmin_c ||mu_c||^2 - 2 z . mu_c, after moving the origin to the
    # mean of the centres: the norms, and so the cancellation in float32, are those of the
    # spread of the features rather than of their common offset.
    centre = mu.mean(0)
    mu = mu - centre
    return (mu.square().sum(1) - 2.0 * ((z - centre) @ mu.T)).argmin(1)


def op_norm(x: torch.Tensor) -> float:
    """Operator (spectral) norm ||x||_op = sqrt(lambda_max(G)), with G the
    smaller of the Gram matrices x^T x and x x^T (float64)."""
    return math.sqrt(sq_op_norm(check_2d(x, "x")))


def sq_op_norm(x: torch.Tensor) -> float:
    """||x||_op^2, the largest eigenvalue of the smaller Gram matrix of x."""
    return _gram_eigmax(_gram(x) if x.shape[1] <= x.shape[0] else _gram(x.T))


def _gram(x: torch.Tensor) -> torch.Tensor:
    """x^T x. torch has no syrk, so on the CPU only the column blocks on and above the
    diagonal are multiplied and mirrored (BENCHMARKS.md times it)."""
    d = x.shape[1]
    if x.device.type != "cpu" or d < 256:
        return x.T @ x
    step = -(-d // 4)
    gram = x.new_empty(d, d)
    for i in range(0, d, step):
        rows = x[:, i : i + step].T @ x[:, i:]
        gram[i : i + step, i:] = rows
        gram[i + step :, i : i + step] = rows[:, step:].T
    return gram


def _gram_eigmax(gram: torch.Tensor) -> float:
    if gram.numel() == 0:
        return 0.0
    return max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)


def gram_op_norm(gram: torch.Tensor) -> float:
    return math.sqrt(_gram_eigmax(gram))


def sym_op_norm(a: torch.Tensor) -> float:
    """Operator norm of a symmetric matrix: max |eigenvalue|."""
    return float(torch.linalg.eigvalsh(a).abs().max())


def balancedness(w_next: torch.Tensor, w: torch.Tensor) -> float:
    """||W_{l+1}^T W_{l+1} - W_l W_l^T||_op / min(||W_{l+1}^T W_{l+1}||_op, ||W_l W_l^T||_op).

    w is [n_l, n_{l-1}], w_next is [n_{l+1}, n_l]. Returns 0 when both Gram
    matrices are zero and inf when only the smaller one is.
    """
    a = check_2d(w_next, "w_next")
    b = check_2d(w, "w")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"weights do not chain: w_next has shape {tuple(a.shape)} (expects "
            f"n_l = {a.shape[1]}) but w has shape {tuple(b.shape)} (n_l = {b.shape[0]})"
        )
    b = b.to(a.device)
    return balancedness_of_pair(a, b, sq_op_norm(a), sq_op_norm(b))


def balancedness_of_pair(a: torch.Tensor, b: torch.Tensor, sq_op_a: float, sq_op_b: float) -> float:
    """`balancedness` given ||W_{l+1}^T W_{l+1}||_op = ||a||_op^2 and ||W_l W_l^T||_op =
    ||b||_op^2 (each weight is in two pairs: the metric pass computes them once)."""
    num = sym_op_norm(a.T @ a - b @ b.T)
    den = min(sq_op_a, sq_op_b)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _residual(z: torch.Tensor, activated: torch.Tensor | None, exact: bool = True, owned: bool = False) -> torch.Tensor:
    """Z - sigma(Z): from the activation's output `activated` (same shape as z), or min(Z, 0),
    ReLU's, without one. `owned`: z is a copy the caller lets us overwrite."""
    if activated is None:
        return z.clamp_max_(0.0) if owned else z.clamp_max(0.0)
    a = check_2d(activated, "activated", exact)
    if a.shape != z.shape:
        raise ValueError(f"activated has shape {tuple(a.shape)}, the pre-activations {tuple(z.shape)}")
    return torch.sub(z, a, out=a) if a.dtype != activated.dtype else z - a  # a converted copy is ours


def negativity(preact: torch.Tensor, activated: torch.Tensor | None = None) -> float:
    """||Z - sigma(Z)||_op / ||Z||_op for pre-activations Z [N, d] and sigma(Z) = `activated`
    (default ReLU: Z - relu(Z) = min(Z, 0)); 0 if Z is all zero."""
    z = check_2d(preact, "preact")
    denom = sq_op_norm(z)
    if denom == 0.0:
        return 0.0
    return math.sqrt(sq_op_norm(_residual(z, activated)) / denom)


# ----------------------------------------------------------------------------
# streaming accumulators


class NCAccumulator:
    """Streaming NC1/NC2/NC3 over batches, O(K d) memory.

    Keeps per-class counts n_c, means mu_c and scatter traces
    M2_c = sum_i ||z_ci - mu_c||^2, combined with Chan's parallel algorithm:
    delta = mu_b - mu_a, mu = mu_a + delta n_b / n,
    M2 = M2_a + M2_b + ||delta||^2 n_a n_b / n. With `weight` ([K, d]) it also
    sums cos(z_i, W[y_i]) for NC3. `scatter=True` also keeps the within-class scatter
    matrix S_W = sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T ([d, d], O(d^2) memory), merged as
    S_W = S_a + S_b + sum_c delta_c delta_c^T n_a n_b / n, for `nc1_papyan`. `merge` combines
    accumulators fed disjoint data (e.g. from different processes). `exact=False`: each batch's
    statistics in the features' precision (see the module docstring).
    """

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, exact: bool = True, scatter: bool = False):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = int(num_classes)
        self.exact = exact
        self.weight = None
        if weight is not None:
            w = check_2d(weight, "weight")
            self.weight = _check_weight(w, self.num_classes, w.shape[1]).clone()
        self.counts: torch.Tensor | None = None  # long [K]
        self.means: torch.Tensor | None = None  # float64 [K, d]
        self.m2: torch.Tensor | None = None  # float64 [K]
        self.keeps_scatter = scatter
        self.scatter: torch.Tensor | None = None  # float64 [d, d], with scatter=True
        self.cos_sum = 0.0

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return 0 if self.counts is None else int(self.counts.sum())

    def _merge_stats(self, counts, means, m2, scatter=None) -> None:
        if self.counts is None:
            self.counts, self.means, self.m2 = counts.clone(), means.clone(), m2.clone()
            if self.keeps_scatter:
                self.scatter = scatter.clone()
            return
        if means.shape != self.means.shape:
            raise ValueError(f"feature shapes differ: {tuple(self.means.shape)} vs {tuple(means.shape)}")
        counts, means, m2 = (t.to(self.means.device) for t in (counts, means, m2))
        n_a, n_b = self.counts.double(), counts.double()
        n = (n_a + n_b).clamp_min(1)  # empty in both: all correction terms are 0
        delta = means - self.means
        if self.keeps_scatter:
            weighted = delta * (n_a * n_b / n).unsqueeze(1)
            self.scatter = self.scatter + scatter.to(self.scatter.device) + weighted.T @ delta
        self.means = self.means + delta * (n_b / n).unsqueeze(1)
        self.m2 = self.m2 + m2 + delta.pow(2).sum(1) * (n_a * n_b / n)
        self.counts = self.counts + counts

    def update(self, features: torch.Tensor, labels: torch.Tensor, labels_checked: bool = False) -> None:
        """Add a batch of features [n, d] with labels [n] (`labels_checked`: their range was
        validated already, e.g. once per chunk for every layer of a metric pass)."""
        z, y = check_inputs(features, labels, self.num_classes, self.exact, check_range=not labels_checked)
        if self.weight is not None:
            w = _check_weight(self.weight, self.num_classes, z.shape[1])
            self.weight = w.to(z.device)
            # float64 even on the fast path: a mean cosine near 0 would lose its digits, and
            # this is one layer's [n, K] product.
            self.cos_sum += float(_cosine_sum(z.double(), y, self.weight))
        self._merge_stats(*_class_stats(z, y, self.num_classes, scatter=self.keeps_scatter))

    def _stats(self):
        if self.counts is None:
            raise ValueError(f"no samples seen: all classes {list(range(self.num_classes))} are empty")
        return self.counts, self.means, self.m2

    def class_means(self) -> torch.Tensor:
        """Per-class means mu_c as a float64 tensor [K, d]."""
        return self._stats()[1].clone()

    def nc1(self) -> float:
        """tr(Sigma_W) / tr(Sigma_B), as `nc1` on all data seen."""
        return _nc1_from_stats(*self._stats())

    def nc2(self) -> float:
        """s_1 / s_K of the class-mean matrix, as `nc2` on all data seen."""
        counts, means, _ = self._stats()
        _require_all_classes(counts)
        return _nc2_from_means(means)

    def centred_means(self) -> torch.Tensor:
        """The globally centred class means mu_c - mu_G, float64 [K, d] (mu_G: all samples' mean)."""
        counts, means, _ = self._stats()
        return centred_means(counts, means)

    def nc1_papyan(self) -> float:
        """tr(Sigma_W Sigma_B^+) / K, as `nc1_papyan` on all data seen (needs scatter=True).

        Sigma_B^+ is the pseudo-inverse on the singular directions of the centred class means
        above numpy's matrix_rank tolerance (s_1 max(K, d) eps), at most K - 1 of them."""
        if not self.keeps_scatter:
            raise ValueError("nc1_papyan needs the accumulator to be built with scatter=True")
        counts, means, _ = self._stats()
        return _nc1_papyan_from_stats(counts, means, self.scatter)

    def cdnv(self) -> float:
        """Mean over class pairs of (var_c + var_c') / (2 ||mu_c - mu_c'||^2), as `cdnv`."""
        return _cdnv_from_stats(*self._stats())

    def nc3(self) -> float:
        """Mean cosine between z_i and W[y_i], as `nc3` on all data seen."""
        if self.weight is None:
            raise ValueError("nc3 needs the accumulator to be built with weight=")
        if self.count == 0:
            raise ValueError("nc3 needs at least one sample")
        return self.cos_sum / self.count

    def state_dict(self) -> dict:
        """Sufficient statistics: counts [K], means [K, d], m2 [K], cos_sum and, with
        scatter=True, the scatter matrix [d, d] (else None)."""
        return {
            "num_classes": self.num_classes,
            "counts": None if self.counts is None else self.counts.clone(),
            "means": None if self.means is None else self.means.clone(),
            "m2": None if self.m2 is None else self.m2.clone(),
            "scatter": None if self.scatter is None else self.scatter.clone(),
            "cos_sum": self.cos_sum,
        }

    def merge(self, other: NCAccumulator | dict) -> NCAccumulator:
        """Fold in another accumulator (or its state_dict) fed disjoint data."""
        if isinstance(other, NCAccumulator):
            if (self.weight is None) != (other.weight is None) or (
                self.weight is not None and not torch.equal(self.weight, other.weight.to(self.weight.device))
            ):
                raise ValueError("cannot merge accumulators built with different weights")
            other = other.state_dict()
        if other["num_classes"] != self.num_classes:
            raise ValueError(f"cannot merge: num_classes {self.num_classes} vs {other['num_classes']}")
        if other["counts"] is not None:
            if self.keeps_scatter and other.get("scatter") is None:
                raise ValueError("cannot merge: this accumulator keeps the scatter matrix, the other does not")
            self._merge_stats(other["counts"], other["means"], other["m2"], other.get("scatter"))
        self.cos_sum += float(other["cos_sum"])
        return self


class GramAccumulator:
    """Streaming Gram matrix G = sum_batches x^T x (float64, [dim, dim]);
    op_norm() = sqrt(lambda_max(G)) = ||X||_op of the stacked batches.
    `exact=False`: each batch's x^T x in x's precision, summed in float64."""

    def __init__(self, dim: int, exact: bool = True):
        self.dim = int(dim)
        self.exact = exact
        self.gram = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Add x^T x for a batch x [n, dim]."""
        x = check_2d(x, "x", self.exact)
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} columns, got {x.shape[1]}")
        self.gram = self.gram.to(x.device)
        self.gram += _gram(x)

    def op_norm(self) -> float:
        """sqrt of the largest eigenvalue of the accumulated Gram matrix."""
        return gram_op_norm(self.gram)

    def merge(self, other: GramAccumulator) -> GramAccumulator:
        """Add another accumulator's Gram matrix (disjoint rows)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge: dim {self.dim} vs {other.dim}")
        self.gram = self.gram + other.gram.to(self.gram.device)
        return self


class NegativityAccumulator:
    """Streaming `negativity`: ||Z - sigma(Z)||_op / ||Z||_op from the Gram
    matrices of Z and of Z - sigma(Z), fed row batches of Z [n, dim] (and of sigma(Z);
    without it sigma is ReLU). `exact=False`: as for GramAccumulator."""

    def __init__(self, dim: int, exact: bool = True):
        self.exact = exact
        self.full = GramAccumulator(dim, exact)
        self.neg = GramAccumulator(dim, exact)

    def update(self, preact: torch.Tensor, activated: torch.Tensor | None = None) -> None:
        """Add a batch of pre-activations Z [n, dim] and, for an activation other than ReLU,
        its output sigma(Z)."""
        z = check_2d(preact, "preact", self.exact)
        self.full.update(z)
        self.neg.update(_residual(z, activated, self.exact, owned=z.dtype != preact.dtype))  # a converted copy

    def value(self) -> float:
        """Negativity of all rows seen; 0 if they are all zero."""
        denom = self.full.op_norm()
        return 0.0 if denom == 0.0 else self.neg.op_norm() / denom

    def merge(self, other: NegativityAccumulator) -> NegativityAccumulator:
        """Fold in another accumulator fed disjoint rows."""
        self.full.merge(other.full)
        self.neg.merge(other.neg)
        return self


# ----------------------------------------------------------------------------
# beyond the paper: spectra, numerical rank, NC0


def singular_values(x: torch.Tensor) -> torch.Tensor:
    """The singular values of a matrix [m, n], float64, descending (min(m, n) of them)."""
    return torch.linalg.svdvals(check_2d(x, "x"))


def numerical_rank(s: torch.Tensor, rtol: float) -> int:
    """How many of the singular values `s` (descending) exceed `rtol` times the largest; 0 when
    they are all zero."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > rtol * s[0]).sum())


def condition_number(s: torch.Tensor) -> float:
    """s_1 / s_r of the singular values `s` (descending): inf when s_r = 0, nan when all are 0."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return float("nan")
    return float("inf") if float(s[-1]) == 0.0 else float(s[0] / s[-1])


def nc0(weight: torch.Tensor) -> float:
    """||sum_k W[k, :]||_2 of the last weight W = W_L [K, n_(L-1)] (torch's Linear layout: row k is
    class k's): the norm of W_L^T 1_K, zero when the rows sum to zero (Zhao et al., ICLR 2026)."""
    return float(torch.linalg.vector_norm(check_2d(weight, "weight").sum(0)))


class ClassSumAccumulator:
    """Streaming class means: per-class counts and sums (float64, [K, d]), merged by adding.
    `exact=False`: each batch's class sums in the features' precision, summed in float64."""

    def __init__(self, num_classes: int, exact: bool = True):
        self.num_classes, self.exact = int(num_classes), exact
        self.counts: torch.Tensor | None = None  # long [K]
        self.sums: torch.Tensor | None = None  # float64 [K, d]

    def update(self, features: torch.Tensor, labels: torch.Tensor, labels_checked: bool = False) -> None:
        """Add a batch of features [n, d] with labels [n]."""
        z, y = check_inputs(features, labels, self.num_classes, self.exact, check_range=not labels_checked)
        counts = torch.bincount(y, minlength=self.num_classes)
        sums = z.new_zeros(self.num_classes, z.shape[1]).index_add_(0, y, z).double()
        self._add(counts, sums)

    def _add(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        if self.sums is None:
            self.counts, self.sums = counts.clone(), sums.clone()
            return
        if sums.shape != self.sums.shape:
            raise ValueError(f"feature shapes differ: {tuple(self.sums.shape)} vs {tuple(sums.shape)}")
        self.counts = self.counts + counts.to(self.counts.device)
        self.sums = self.sums + sums.to(self.sums.device)

    def centred_means(self) -> torch.Tensor:
        """mu_c - mu_G, float64 [K, d] (mu_G: the mean of all samples seen)."""
        if self.sums is None:
            raise ValueError(f"no samples seen: all classes {list(range(self.num_classes))} are empty")
        _require_all_classes(self.counts)
        n = self.counts.double().unsqueeze(1)
        return self.sums / n - self.sums.sum(0) / n.sum()

    def merge(self, other: ClassSumAccumulator) -> ClassSumAccumulator:
        """Fold in another accumulator fed disjoint data."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge: num_classes {self.num_classes} vs {other.num_classes}")
        if other.sums is not None:
            self._add(other.counts, other.sums)
        return self
