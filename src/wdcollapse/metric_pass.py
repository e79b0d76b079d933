"""The metric pass: one forward pass over a data set that feeds per-layer streaming
accumulators, so every layer's metrics come out of one sweep in bounded memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from . import keys, metrics
from .models import LayerTrace, LayerwiseNet


class PassState:
    """What one process's metric pass accumulated: per-layer accumulators, observers, the
    loss sum, correct predictions and the sample count. Picklable (for all_gather_object)."""

    def __init__(self, outs, negs, last_pre, observers, loss_sum: float, correct: int, count: int):
        self.outs, self.negs, self.last_pre, self.observers = outs, negs, last_pre, observers
        self.loss_sum, self.correct, self.count = loss_sum, correct, count

    def merge(self, other: PassState) -> PassState:
        """Fold in the state of a pass over disjoint data."""
        if (
            len(other.outs) != len(self.outs)
            or set(other.negs) != set(self.negs)
            or len(other.observers) != len(self.observers)
        ):
            raise ValueError("cannot merge metric passes of different networks or observers")
        for mine, theirs in zip(self.outs, other.outs):
            mine.merge(theirs)
        for l, acc in self.negs.items():
            acc.merge(other.negs[l])
        if self.last_pre is not None:
            self.last_pre.merge(other.last_pre)
        for mine, theirs in zip(self.observers, other.observers):
            if not hasattr(mine, "merge"):
                raise TypeError(f"observer {type(mine).__name__} cannot be merged across processes (no merge())")
            mine.merge(theirs)
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.count += other.count
        return self


def merge_states(states: list) -> PassState:
    """Merge the processes' states in the order given (rank order): every process that merges
    the same list gets bit-identical results."""
    states = list(states)
    if not states:
        raise ValueError("no states to merge")
    merged = states[0]
    for other in states[1:]:
        merged.merge(other)
    return merged


def gather_states(obj) -> list:
    """`reduce` for metric_pass (and accuracy) under torch.distributed: every process's `obj`
    in rank order (all_gather_object). The objects travel as torch.save bytes and are loaded
    onto this process's device (its current CUDA device under NCCL, else the CPU), so no
    process unpickles tensors onto another process's GPU."""
    import io

    import torch.distributed as dist

    buf = io.BytesIO()
    torch.save(obj, buf)
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, buf.getvalue())
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return [torch.load(io.BytesIO(b), map_location=device, weights_only=False) for b in out]


def _layers_kept(observers: list, num_layers: int) -> set[int]:
    """Layers whose pre-activation and output the observers' trace must hold: an observer's
    `layers` attribute (indices l-1), or all of them when it has none."""
    keep: set[int] = set()
    for observer in observers:
        keep |= set(getattr(observer, "layers", range(num_layers)))
    return keep


@torch.no_grad()
def metric_pass(
    net: LayerwiseNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    loss_fn=None,
    observers: Iterable = (),
    exact: bool = True,
    reduce: Callable[[object], list] | None = None,
    negativity: bool = True,
) -> tuple[dict[str, float], dict[str, list]]:
    """Returns (metrics row, class-mean Gram matrices) for the layers l = 1..L.

    Row keys: `nc1/layer_l`, `nc2/layer_l` (of Z_l), `negativity/layer_l` (activated layers,
    on the pre-activation), `balancedness/layer_l` (pair l, l+1), `nc3` (Z_{L-1} against W_L),
    `acc`, and `loss` (the sum of `loss_fn` over the batches) when `loss_fn` is given.
    Each observer sees every batch's trace through `update(trace, labels)` and adds its
    `result()` dict to the row: extra quantities without a second pass over the data. An
    observer with a `layers` attribute (0-based layer indices) gets a trace holding only those
    layers (None elsewhere) and the output.
    `exact=False` computes each batch's statistics in the network's precision and only
    accumulates them in float64 (the accumulators' fast path: ~1.6x faster, ~1e-7 relative).

    `reduce` (data parallelism) combines the passes of several processes, each fed a disjoint
    share of the data: it is given this process's accumulated state and returns every
    process's state, in rank order (e.g. `all_gather_object`, see `gather_states`); the
    states are merged in that order before the metrics are finalised, so every process gets
    the same row, equal to one pass over all the data up to float rounding. Observers then
    need `merge(other)` (folding in another process's observer).

    `negativity=False` leaves out the negativity keys and their two Gram matrices per
    activated layer (on the CPU the largest cost after the forward pass itself).
    """
    L = net.num_layers
    weights = [w.detach() for w in net.weights]
    penultimate = L - 2  # index of Z_{L-1}; -1 would be the trunk output, not tracked
    outs = [
        metrics.NCAccumulator(num_classes, weight=weights[-1] if l == penultimate else None, exact=exact)
        for l in range(L)
    ]
    nonlinear = [l for l in range(L) if not net.is_linear[l]]
    negs = {l: metrics.NegativityAccumulator(weights[l].shape[0], exact=exact) for l in nonlinear if negativity}
    # Class means of the last activated layer's pre-activation: the first Gram of the paper's
    # figure is taken before the last ReLU.
    last_pre = metrics.NCAccumulator(num_classes, exact=exact) if nonlinear else None
    # Loss and accuracy stay on the device until the end: no synchronisation per batch.
    loss_sum, correct, count = 0.0, 0, 0
    observers = list(observers)
    keep = _layers_kept(observers, L)
    for x, y in batches:
        metrics.check_label_range(y, num_classes)  # once per chunk, not once per layer
        # Each layer is consumed as soon as it is computed and only the layers an observer
        # asks for outlive the next one: the pass's peak memory is about a third of one
        # layer's features instead of all of a chunk's layers.
        preacts, outputs = [None] * L, [None] * L
        for l, (pre, out) in enumerate(net.iter_layers(x)):
            if l in negs:  # Z - sigma(Z) from the layer's own output: any activation
                negs[l].update(pre, out)
            if last_pre is not None and l == nonlinear[-1]:
                last_pre.update(pre, y, labels_checked=True)
            outs[l].update(out, y, labels_checked=True)
            if l in keep:
                preacts[l], outputs[l] = pre, out
        trace = LayerTrace(output=out, preacts=preacts, outputs=outputs)
        for observer in observers:
            observer.update(trace, y)
        if loss_fn is not None:
            loss_sum = loss_sum + torch.as_tensor(loss_fn(out, y)).double()
        correct = correct + (out.argmax(1) == y).sum()
        count += len(y)
        del trace, out  # before the next forward: only one chunk's features alive at a time

    state = PassState(outs, negs, last_pre, observers, float(loss_sum), int(correct), count)
    if reduce is not None:
        state = merge_states(reduce(state))
    outs, negs, last_pre, observers = state.outs, state.negs, state.last_pre, state.observers

    row: dict[str, float] = {}
    w64 = [w.double() for w in weights]
    sq_ops = [metrics._sq_op_norm(w) for w in w64]  # each weight is in two pairs
    for l in range(L):
        row[keys.layer(keys.NC1, l + 1)] = outs[l].nc1()
        row[keys.layer(keys.NC2, l + 1)] = outs[l].nc2()
        if l in negs:
            row[keys.layer(keys.NEGATIVITY, l + 1)] = negs[l].value()
        if l + 1 < L:
            row[keys.layer(keys.BALANCEDNESS, l + 1)] = metrics._balancedness(
                w64[l + 1], w64[l], sq_ops[l + 1], sq_ops[l]
            )
    if penultimate >= 0:
        row[keys.NC3] = outs[penultimate].nc3()
    if loss_fn is not None:
        row["loss"] = state.loss_sum
    row["acc"] = state.correct / state.count
    for observer in observers:
        row.update(observer.result())

    def gram(acc: metrics.NCAccumulator) -> list:
        means = acc.class_means()
        return (means @ means.T).tolist()

    grams = {keys.gram(l + 1): gram(outs[l]) for l in range(L)}
    if last_pre is not None:
        grams[keys.gram_preact(nonlinear[-1] + 1)] = gram(last_pre)
    return row, grams


@torch.no_grad()
def accuracy(
    net: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    reduce: Callable[[object], list] | None = None,
) -> float:
    """Fraction of correct predictions; `reduce` as in metric_pass (each process's share)."""
    correct = count = 0
    for x, y in batches:
        correct += int((net(x).argmax(1) == y).sum())
        count += len(y)
    if reduce is not None:
        pairs = reduce((correct, count))
        correct, count = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return correct / max(count, 1)
