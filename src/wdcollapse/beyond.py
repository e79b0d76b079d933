"""Measures beyond the paper that need gradients: the gradient norm of the regularised loss, the
average gradient outer product (AGOP) of each layer, and the sharpness (the top eigenvalues of the
Hessian of the regularised loss, by Lanczos on Hessian-vector products) with the batch sharpness of
SGD. MetricMonitor computes them when `callbacks.metrics.extra.{grad_norm,agop,sharpness}` are on
(it has the loss, the optimizer's weight decay and learning rate, and the data); each function
here also works on its own, on any MeasuredNetwork.

The regularised loss is L(theta) + sum_g lambda_g / 2 ||theta_g||^2: L the mean training loss and
lambda_g the weight decay of the optimizer's parameter group g (`regularised_parameters`), read as
coupled L2 (SGD's `weight_decay` is the gradient of that term; AdamW's decoupled decay is not).
Everything is measured in the network's current mode (MetricMonitor: eval mode, as the metric
pass). Gradients come from torch.autograd.grad (never `.grad`: the optimizer's state is untouched);
Hessian-vector products by double backward; vectors are float64.

Data parallelism: `reduce` is metric_pass's (each process's object in, every process's objects in
rank order out); the per-rank sums (gradients, AGOP sums, Hessian-vector products, batch-sharpness
sums) are added in rank order, so every process gets the same values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from . import keys
from .interfaces import HookedNetwork

# The samples of one forward/backward of the fixed subset (bounds the memory of double backward).
CHUNK = 512

Loss = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (output, labels, num_total) -> share


def summed(value, reduce: Callable[[object], list] | None):
    """`value` added over the processes that `reduce` gathers, in rank order (this one's alone
    without): tensors, numbers, or tuples and lists of them."""
    if reduce is None:
        return value
    shares = reduce(value)
    total = shares[0]
    for share in shares[1:]:
        total = _add(total, share)
    return total


def _add(a, b):
    """a + b, element by element through nested tuples and lists."""
    if isinstance(a, (tuple, list)):
        return type(a)(_add(x, y) for x, y in zip(a, b, strict=True))
    return a + b


def regularised_parameters(optimizers: Iterable = (), module: torch.nn.Module | None = None):
    """(parameters, weight decays): every parameter the optimizers train (each once, requiring a
    gradient) with its group's `weight_decay` (0 when the group has none); without optimizers,
    `module`'s parameters that require gradients, with no weight decay."""
    params, decays, seen = [], [], set()
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
                    decays.append(float(group.get("weight_decay", 0.0) or 0.0))
    if not params and module is not None:
        params = [p for p in module.parameters() if p.requires_grad]
        decays = [0.0] * len(params)
    if not params:
        raise ValueError("no parameters to differentiate: no optimizer and no module with trainable parameters")
    return params, decays


def network_output(net, x: torch.Tensor) -> torch.Tensor:
    """The network's output, differentiable: a HookedNetwork's module called, else the last layer
    of `iter_layers` (eager even when the model's forward is torch.compile'd, which has no double
    backward)."""
    if isinstance(net, HookedNetwork):
        return net(x)
    *_, (_, out) = net.iter_layers(x)
    return out


def _flat(grads, params) -> torch.Tensor:
    """The gradients of `params` as one float64 vector (zeros for a parameter that does not
    affect the value differentiated)."""
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(grads, params)]
    )


def _unflat(vector: torch.Tensor, params) -> list[torch.Tensor]:
    """A float64 vector as tensors shaped (and typed) like `params`."""
    out, start = [], 0
    for p in params:
        out.append(vector[start : start + p.numel()].view_as(p).to(p.dtype))
        start += p.numel()
    return out


def _decay_vector(params, decays) -> torch.Tensor:
    return torch.cat(
        [torch.full((p.numel(),), float(d), dtype=torch.float64, device=p.device) for p, d in zip(params, decays)]
    )


def _theta(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def grad_norm(
    net,
    params: list[torch.Tensor],
    decays: list[float],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Loss,
    num_total: int,
    reduce: Callable[[object], list] | None = None,
) -> dict[str, float]:
    """`grad_norm` = ||grad L + Lambda theta||_2 and `grad_norm/loss` = ||grad L||_2, L the mean
    loss over the `num_total` samples of which `batches` is this process's share (`loss(output,
    labels, num_total)`: a batch's share of that mean), Lambda theta the gradient of the weight
    decay term."""
    total = None
    with torch.enable_grad():
        for x, y in batches:
            value = loss(network_output(net, x), y, num_total)
            flat = _flat(torch.autograd.grad(value, params, allow_unused=True), params)
            total = flat if total is None else total + flat
    if total is None:  # a rank without data
        total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=params[0].device)
    total = summed(total, reduce)
    regularised = total + _decay_vector(params, decays) * _theta(params)
    return {keys.GRAD_NORM: float(regularised.norm()), keys.GRAD_NORM_LOSS: float(total.norm())}


def _agop_targets(net, x: torch.Tensor):
    """(output, tensors on the autograd path, sandwiched): the gradient of the output with respect
    to target l is the Jacobian of layer l's input Z_(l-1) (sandwiched False: a HookedNetwork's
    captured layer inputs) or of layer l's pre-activation W_l Z_(l-1) (True: `iter_layers`; then
    d out / d Z_(l-1) = (d out / d pre_l) W_l)."""
    x = x.detach().requires_grad_(True)  # every layer's input on the path, frozen weights too
    if isinstance(net, HookedNetwork):
        out, inputs, _ = net.forward_and_capture(x)
        return out, inputs, False
    pres, outs = zip(*net.iter_layers(x))
    return outs[-1], list(pres), True


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Pearson correlation of the entries of two matrices (each centred by the mean of its
    entries, then the cosine), as Beaglehole et al.'s code measures the neural feature ansatz."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


def psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    values, vectors = torch.linalg.eigh((a + a.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def agop_matrices(
    net, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], reduce: Callable[[object], list] | None = None
) -> list[torch.Tensor]:
    """Per layer l = 1..L, the AGOP A_l = 1/N sum_i J_i^T J_i [n_(l-1), n_(l-1)] (float64), J_i the
    Jacobian [K, n_(l-1)] of the network's output with respect to layer l's input at sample i, over
    the N samples of `batches` (this process's share; the labels are not used). One backward pass
    per output per batch; samples must not interact (eval mode for BatchNorm)."""
    sums: list[torch.Tensor | None] = [None] * net.num_layers
    count = 0
    with torch.enable_grad():
        for x, _ in batches:
            out, targets, _ = _agop_targets(net, x)
            k = out.shape[1]
            for c in range(k):
                rows = torch.autograd.grad(out[:, c].sum(), targets, retain_graph=c + 1 < k, allow_unused=True)
                for l, (g, t) in enumerate(zip(rows, targets)):
                    g = (torch.zeros_like(t) if g is None else g).reshape(len(x), -1).double()
                    outer = g.T @ g
                    sums[l] = outer if sums[l] is None else sums[l] + outer
            count += len(x)
    weights = [w.detach().double() for w in net.weights]
    if count == 0:  # a rank without data: zeros of the shapes the others sum
        dims = [w.shape[1] if isinstance(net, HookedNetwork) else w.shape[0] for w in weights]
        sums = [torch.zeros(d, d, dtype=torch.float64, device=w.device) for d, w in zip(dims, weights)]
    sums, count = summed((list(sums), count), reduce)
    if count == 0:
        raise ValueError("no samples for the AGOP")
    if not isinstance(net, HookedNetwork):  # from the pre-activation's to the input's: W^T A W
        sums = [w.T @ s @ w for w, s in zip(weights, sums)]
    return [s / count for s in sums]


def agop(
    net, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], reduce: Callable[[object], list] | None = None
) -> dict[str, float]:
    """Per layer: `agop_corr/layer_l` = Pearson(A_l, W_l^T W_l), `agop_sqrt_corr/layer_l` =
    Pearson(A_l^(1/2), W_l^T W_l) (the neural feature ansatz as Beaglehole et al. 2024 measure it)
    and `agop_trace/layer_l` = tr(A_l) = the mean squared Frobenius norm of the Jacobian, A_l from
    `agop_matrices`. A layer whose input is not a flat [B, n_(l-1)] gets NaN correlations."""
    row = {}
    for l, (a, w) in enumerate(zip(agop_matrices(net, batches, reduce), net.weights), start=1):
        w = w.detach().double()
        gram = w.T @ w
        fits = a.shape == gram.shape
        row[keys.layer(keys.AGOP_CORR, l)] = pearson(a, gram) if fits else float("nan")
        row[keys.layer(keys.AGOP_SQRT_CORR, l)] = pearson(psd_sqrt(a), gram) if fits else float("nan")
        row[keys.layer(keys.AGOP_TRACE, l)] = float(a.trace())
    return row


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    steps: int,
    k: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[float]:
    """The `k` largest Ritz values (descending) of the symmetric operator `matvec` (float64 vectors
    of length `dim`) after `steps` Lanczos iterations (one `matvec` each; fewer when an invariant
    subspace is found first: the values are then exact) from a start vector drawn by `seed` (the
    same on every process), with full reorthogonalisation (steps x dim floats of memory)."""
    steps = max(1, min(int(steps), dim))
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
    basis = [v / v.norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j])
        alphas.append(float(w @ basis[j]))
        q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan's rule), in floating point
            w = w - q.T @ (q @ w)
        beta = float(w.norm())
        if j + 1 == steps or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis.append(w / beta)
    n = len(alphas)
    if not all(math.isfinite(v) for v in (*alphas, *betas)):  # a non-finite network or loss
        return [math.nan] * min(k, n)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(betas[: n - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values = torch.linalg.eigvalsh(t).flip(0)
    return [float(v) for v in values[:k]]


def hessian_vector_product(
    net, params, decays, batches: list, loss: Loss, num_total: int, reduce=None, keep_graph: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (H + Lambda) v for the regularised loss over the `num_total` samples of which `batches`
    is this process's share (float64 vectors; double backward in the parameters' precision).
    `keep_graph` (the default): each batch's gradient graph is built once, at the first product,
    and kept, so a product is one backward pass through it per batch (about half the time of
    rebuilding it, for the memory of every batch's graph at once); False: rebuilt per product."""
    decay = _decay_vector(params, decays)
    kept: list = []

    def gradients(x, y):
        value = loss(network_output(net, x), y, num_total)
        return torch.autograd.grad(value, params, create_graph=True, allow_unused=True)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        vs = _unflat(v, params)
        total = torch.zeros_like(v)
        with torch.enable_grad():
            if keep_graph and not kept:
                kept.extend(gradients(x, y) for x, y in batches)
            for i, (x, y) in enumerate(batches):
                grads = kept[i] if keep_graph else gradients(x, y)
                dot = sum((g * u).sum() for g, u in zip(grads, vs) if g is not None)
                if isinstance(dot, torch.Tensor) and dot.requires_grad:  # else: linear in theta here
                    products = torch.autograd.grad(dot, params, retain_graph=keep_graph, allow_unused=True)
                    total = total + _flat(products, params)
        return summed(total, reduce) + decay * v

    return matvec


def hessian_eigenvalues(
    net,
    params: list[torch.Tensor],
    decays: list[float],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Loss,
    num_total: int,
    steps: int = 20,
    k: int = 1,
    reduce: Callable[[object], list] | None = None,
) -> list[float]:
    """The `k` largest eigenvalues of the Hessian of the regularised loss (the mean loss over the
    `num_total` samples of which `batches` is this process's share, plus sum_g lambda_g/2
    ||theta_g||^2), by `steps` Lanczos iterations (`lanczos`, `hessian_vector_product`)."""
    matvec = hessian_vector_product(net, params, decays, list(batches), loss, num_total, reduce)
    dim = sum(p.numel() for p in params)
    return lanczos(matvec, dim, steps, k, device=params[0].device)


def batch_sharpness(
    net,
    params: list[torch.Tensor],
    decays: list[float],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss: Loss,
    reduce: Callable[[object], list] | None = None,
) -> float:
    """Batch sharpness (Andreyev and Beneventano, "Edge of stochastic stability", arXiv
    2412.20553): the mean over mini-batches B of g_B^T H_B g_B / ||g_B||^2, g_B and H_B the gradient
    and the Hessian of the batch's regularised mean loss (the objective of one SGD step); the
    batches of all processes averaged. NaN without batches."""
    decay = _decay_vector(params, decays)
    total, count = 0.0, 0
    with torch.enable_grad():
        for x, y in batches:
            value = loss(network_output(net, x), y, len(y))
            grads = torch.autograd.grad(value, params, create_graph=True, allow_unused=True)
            g = _flat([gr.detach() if gr is not None else None for gr in grads], params)
            g = g + decay * _theta(params)
            gs = _unflat(g, params)
            dot = sum((gr * u).sum() for gr, u in zip(grads, gs) if gr is not None)
            hg = torch.zeros_like(g)
            if isinstance(dot, torch.Tensor) and dot.requires_grad:
                hg = _flat(torch.autograd.grad(dot, params, allow_unused=True), params)
            hg = hg + decay * g
            norm2 = float(g @ g)
            if norm2 > 0:
                total += float(g @ hg) / norm2
                count += 1
    total, count = summed((total, count), reduce)
    return total / count if count else float("nan")


def stability_thresholds(optimizer) -> tuple[float, float]:
    """(2/eta, the momentum threshold) at the optimizer's current learning rate eta (its first
    parameter group): 2(1 + beta)/eta for heavy-ball momentum beta, (2 + 2 beta) / ((1 + 2 beta)
    eta) for Nesterov's (Cohen et al. 2021); both 2/eta without momentum."""
    group = optimizer.param_groups[0]
    eta = float(group["lr"])
    beta = float(group.get("momentum", 0.0) or 0.0)
    if eta <= 0:
        return math.inf, math.inf
    momentum = (2 + 2 * beta) / ((1 + 2 * beta) * eta) if group.get("nesterov") else 2 * (1 + beta) / eta
    return 2 / eta, momentum


def fixed_subset(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_train: int, size: int):
    """The fixed subset: every (num_train // size)-th sample of `batches` (the training set in the
    metric pass's order), `size` of them at most (all when the set is smaller), as (inputs, labels)."""
    stride = max(1, num_train // max(1, size))
    xs, ys, seen, kept = [], [], 0, 0
    for x, y in batches:
        index = torch.arange(seen, seen + len(y), device=y.device)
        keep = torch.nonzero(index % stride == 0).flatten()[: size - kept]
        if len(keep):
            xs.append(x[keep])
            ys.append(y[keep])
            kept += len(keep)
        seen += len(y)
        if kept >= size:
            break
    if not xs:
        raise ValueError("the training set is empty: no fixed subset")
    return torch.cat(xs), torch.cat(ys)


def chunks(x: torch.Tensor, y: torch.Tensor, size: int, rank: int = 0, world: int = 1) -> list:
    """(x, y) in consecutive pieces of `size` samples (the last may be shorter), rank `rank`'s
    share of them: pieces i with i % world == rank."""
    pieces = [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
    return pieces[rank::world]
