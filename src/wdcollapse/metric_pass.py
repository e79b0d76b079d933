"""The metric pass: one forward pass over a data set that feeds per-layer streaming
accumulators, so every layer's metrics come out of one sweep in bounded memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from . import keys, metrics
from .arguments import check_pairs, refuse
from .interfaces import MeasuredNetwork, missing
from .models import LayerTrace, LayerwiseNet


class PassState:
    """What one process's metric pass accumulated: per-layer accumulators, observers, the
    loss sum, correct predictions and the sample count (and, for extra `rank`, the class sums of
    the activated layers' pre-activations). Picklable (for all_gather_object)."""

    def __init__(self, outs, negs, last_pre, observers, loss_sum: float, correct: int, count: int, pre_means=None):
        self.outs, self.negs, self.last_pre, self.observers = outs, negs, last_pre, observers
        self.loss_sum, self.correct, self.count = loss_sum, correct, count
        self.pre_means = pre_means if pre_means is not None else {}

    def merge(self, other: PassState) -> PassState:
        """Fold in the state of a pass over disjoint data."""
        if (
            len(other.outs) != len(self.outs)
            or set(other.negs) != set(self.negs)
            or len(other.observers) != len(self.observers)
            or set(other.pre_means) != set(self.pre_means)
        ):
            raise ValueError("cannot merge metric passes of different networks or observers")
        for mine, theirs in zip(self.outs, other.outs):
            mine.merge(theirs)
        for l, acc in self.negs.items():
            acc.merge(other.negs[l])
        for l, acc in self.pre_means.items():
            acc.merge(other.pre_means[l])
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


def extra_families(extra: Iterable[str], call: str = "metric_pass") -> set[str]:
    """The optional metric families named in `extra` (keys.EXTRA's switches), checked."""
    if not isinstance(extra, (str, Iterable)) or isinstance(extra, Mapping):
        raise refuse(call, "extra", extra, f"a list of metric families from {list(keys.EXTRA)}")
    families = {extra} if isinstance(extra, str) else set(extra)
    theirs = sorted(map(str, families & set(keys.MONITOR_EXTRA)))
    if theirs:
        raise refuse(
            call,
            "extra",
            extra,
            f"metric families from {list(keys.EXTRA)}: {theirs} need the loss, the weight decay and the "
            "optimizer, so MetricMonitor computes them (or call wdcollapse.beyond's functions)",
        )
    unknown = sorted(map(str, families - set(keys.EXTRA)))
    if unknown:
        raise refuse(call, "extra", extra, f"metric families from {list(keys.EXTRA)} (unknown: {unknown})")
    return families


def check_pass_arguments(call: str, net, batches, num_classes, loss_fn, reduce, flags: dict) -> None:
    """The arguments of metric_pass and accuracy, checked when called: one line naming the first
    mistake (a wrong type included), as the command line's settings get."""
    lacking = missing(net, MeasuredNetwork)
    if lacking:
        raise refuse(
            call,
            "net",
            net,
            f"a wdcollapse.interfaces.MeasuredNetwork (it lacks {lacking}); "
            "wrap any module with HookedNetwork(module, layers, linear_depth)",
        )
    if isinstance(batches, torch.utils.data.Dataset) and not isinstance(batches, Iterable):
        raise refuse(
            call, "batches", batches, "the batches of a DataLoader, not a Dataset: DataLoader(dataset, batch_size=...)"
        )
    if isinstance(batches, (str, bytes, Mapping)) or not (isinstance(batches, Iterable) or callable(batches)):
        raise refuse(call, "batches", batches, "an iterable of (inputs, labels) batches, or a function returning one")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise refuse(call, "num_classes", num_classes, "an integer >= 2")
    for name, fn in (("loss_fn", loss_fn), ("reduce", reduce)):
        if fn is not None and not callable(fn):
            raise refuse(call, name, fn, "a callable or None")
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise refuse(call, name, flag, "True or False")


def _layers_kept(observers: list, num_layers: int) -> set[int]:
    """Layers whose pre-activation and output the observers' trace must hold: an observer's
    `layers` attribute (indices l-1), or all of them when it has none."""
    keep: set[int] = set()
    for observer in observers:
        keep |= set(getattr(observer, "layers", range(num_layers)))
    return keep


@dataclass
class PassResult:
    """What one metric pass gives: the metrics row, the class-mean Gram matrices and the class
    means of the penultimate features Z_(L-1) (None for a single layer), the centres that a
    nearest-class-centre classifier (nc4) on held-out data uses."""

    row: dict
    grams: dict
    centres: torch.Tensor | None = None


@torch.no_grad()
def metric_pass(
    net: LayerwiseNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    num_classes: int,
    loss_fn=None,
    observers: Iterable = (),
    exact: bool = True,
    reduce: Callable[[object], list] | None = None,
    negativity: bool = True,
    extra: Iterable[str] = (),
    nc4_centres: torch.Tensor | None = None,
) -> tuple[dict[str, float], dict[str, list]]:
    """One pass over `batches` measuring every layer l = 1..L of `net` (a MeasuredNetwork: this
    package's models, or any module wrapped in HookedNetwork).

    Args:
        net: the network; `num_classes`: K; `batches`: (inputs, labels) pairs, or a function
            returning a fresh iterable of them; the rest as described below.

    Returns:
        (metrics row, class-mean Gram matrices).

    Raises:
        ArgumentError: a wrong argument (type, range, unknown family) at the call; a batch that
            is not an (inputs, labels) pair of tensors at that batch. One line each.

    Example::

        row, grams = metric_pass(HookedNetwork(model, ["fc1", "fc2", "fc3"], 2), loader, 10, extra=["etf"])
        row["nc1/layer_2"], row["balancedness/layer_2"]

    Row keys: `nc1/layer_l`, `nc2/layer_l` (of Z_l), `negativity/layer_l` (activated layers,
    on the pre-activation), `balancedness/layer_l` (pair l, l+1), `nc3` (Z_{L-1} against W_L),
    `acc`, and `loss` (the sum of `loss_fn` over the batches) when `loss_fn` is given.
    Each observer sees every batch's trace through `update(trace, labels)` and adds its
    `result()` dict to the row: extra quantities without a second pass over the data. An
    observer with a `layers` attribute (0-based layer indices) gets a trace holding only those
    layers (None elsewhere) and the output.
    `exact=False` computes each batch's statistics in the network's precision and only
    accumulates them in float64 (the accumulators' fast path: ~1e-7 relative).

    `reduce` (data parallelism) combines the passes of several processes, each fed a disjoint
    share of the data: it is given this process's accumulated state and returns every
    process's state, in rank order (e.g. `all_gather_object`, see `gather_states`); the
    states are merged in that order before the metrics are finalised, so every process gets
    the same row, equal to one pass over all the data up to float rounding. Observers then
    need `merge(other)` (folding in another process's observer).

    `negativity=False` leaves out the negativity keys and their two Gram matrices per
    activated layer (on the CPU the largest cost after the forward pass itself).

    `extra` switches on metrics from the literature, by family (keys.EXTRA), each finalised
    in float64 from the merged statistics:
    - `papyan_nc1_cdnv`: `nc1_papyan/layer_l` = tr(Sigma_W Sigma_B^+) / K (Papyan, Han & Donoho
      2020) and `cdnv/layer_l` (Galanti et al. 2022) for every layer; keeps each layer's d x d
      within-class scatter matrix (one Gram matrix per layer and chunk, O(d^2) memory).
    - `etf`: `nc2_equinorm/features|weights` (std / mean of the norms) and
      `nc2_equiangularity/features|weights` (mean over class pairs of |cos + 1/(K-1)|) of the
      globally centred class means of Z_{L-1} and of the rows of W_L.
    - `self_duality`: `nc3_duality` = || W_L/||W_L||_F - M/||M||_F ||_F^2, M the centred class
      means of Z_{L-1} (row c: class c).
    - `nc4`: the fraction of samples whose prediction (argmax of the output) is the nearest
      class centre of Z_{L-1}. It needs the class means before it can classify, so it is a
      second pass over the data after the first one's states are merged; `batches` must then
      be re-iterable (a list, a DataLoader) or a function returning a fresh iterable (the
      generator `batches` of a single pass cannot be read twice), and `reduce` is called a
      second time, with this process's (agreements, samples), to sum the counts of all ranks.
    Beyond the paper (README, "Beyond the paper: stability, rank, conditioning"):
    - `conditioning`: for every linear-head layer, `weight_sv1/layer_l`, ... (the 3 largest
      singular values of W_l), `weight_sv_min/layer_l` and `weight_cond/layer_l` = s_1 / s_min.
    - `rank`: for every layer, the singular values `class_sv<i>/layer_l` of the class means of Z_l
      centred by the global mean (K x n_l) and their numerical rank `rank/layer_l` (how many
      exceed keys.RANK_RTOL = 1e-3 times the largest); for the activated layers the same of the
      pre-activation (`class_sv<i>_preact/layer_l`, `rank_preact/layer_l`), from class sums
      of the pre-activations kept for it.
    - `nc0`: ||sum_k W_L[k, :]||_2.
    (grad_norm, agop and sharpness need the loss and the optimizer: MetricMonitor, wdcollapse.beyond.)
    `batches` may always be such a function; it is called once per pass.
    `nc4_centres` ([K, n_(L-1)]): the class centres nc4 classifies with; by default this pass's
    own class means of Z_(L-1). On held-out data pass the training set's (`measure(...).centres`
    of the training pass): the nearest-class-centre classifier is what training built (Papyan,
    Han and Donoho 2020), and MetricMonitor's test/nc4 uses the training means.

    Mistakes in the arguments (a wrong type, an unknown family, a batch that is not an (inputs,
    labels) pair) are an ArgumentError of one line, raised at the call or at the first bad batch.
    """
    result = measure(net, batches, num_classes, loss_fn, observers, exact, reduce, negativity, extra, nc4_centres)
    return result.row, result.grams


@torch.no_grad()
def measure(
    net: LayerwiseNet,
    batches,
    num_classes: int,
    loss_fn=None,
    observers: Iterable = (),
    exact: bool = True,
    reduce: Callable[[object], list] | None = None,
    negativity: bool = True,
    extra: Iterable[str] = (),
    nc4_centres: torch.Tensor | None = None,
) -> PassResult:
    """metric_pass's work (same arguments), returning a PassResult: the row, the Gram matrices and
    the class means of Z_(L-1)."""
    flags = {"exact": exact, "negativity": negativity}
    check_pass_arguments("metric_pass", net, batches, num_classes, loss_fn, reduce, flags)
    if nc4_centres is not None and not isinstance(nc4_centres, torch.Tensor):
        raise refuse("metric_pass", "nc4_centres", nc4_centres, "a tensor [num_classes, features] or None")
    families = extra_families(extra)
    if keys.NC4 in families and isinstance(batches, Iterator):
        raise refuse(
            "metric_pass",
            "batches",
            batches,
            "a list or a function returning an iterable: extra nc4 reads the data twice",
        )
    scatter = keys.PAPYAN_NC1_CDNV in families
    L = net.num_layers
    weights = [w.detach() for w in net.weights]
    penultimate = L - 2  # index of Z_{L-1}; -1 would be the trunk output, not tracked
    outs = [
        metrics.NCAccumulator(
            num_classes, weight=weights[-1] if l == penultimate else None, exact=exact, scatter=scatter
        )
        for l in range(L)
    ]
    nonlinear = [l for l in range(L) if not net.is_linear[l]]
    negs = {l: metrics.NegativityAccumulator(weights[l].shape[0], exact=exact) for l in nonlinear if negativity}
    # Class means of the last activated layer's pre-activation: the first Gram of the paper's
    # figure is taken before the last ReLU.
    last_pre = metrics.NCAccumulator(num_classes, exact=exact) if nonlinear else None
    pre_means = {l: metrics.ClassSumAccumulator(num_classes, exact) for l in nonlinear if keys.RANK in families}
    # Loss and accuracy stay on the device until the end: no synchronisation per batch.
    loss_sum, correct, count = 0.0, 0, 0
    observers = list(observers)
    keep = _layers_kept(observers, L)
    for x, y in check_pairs(batches() if callable(batches) else batches, "metric_pass"):
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
            if l in pre_means:
                pre_means[l].update(pre, y, labels_checked=True)
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

    state = PassState(outs, negs, last_pre, observers, float(loss_sum), int(correct), count, pre_means)
    if reduce is not None:
        state = merge_states(reduce(state))
    outs, negs, last_pre, observers = state.outs, state.negs, state.last_pre, state.observers

    row: dict[str, float] = {}
    w64 = [w.double() for w in weights]
    sq_ops = [metrics.sq_op_norm(w) for w in w64]  # each weight is in two pairs
    for l in range(L):
        row[keys.layer(keys.NC1, l + 1)] = outs[l].nc1()
        row[keys.layer(keys.NC2, l + 1)] = outs[l].nc2()
        if l in negs:
            row[keys.layer(keys.NEGATIVITY, l + 1)] = negs[l].value()
        if l + 1 < L:
            row[keys.layer(keys.BALANCEDNESS, l + 1)] = metrics.balancedness_of_pair(
                w64[l + 1], w64[l], sq_ops[l + 1], sq_ops[l]
            )
    if penultimate >= 0:
        row[keys.NC3] = outs[penultimate].nc3()
    row.update(_extra_metrics(families, net, batches, outs, w64[-1], penultimate, exact, reduce, nc4_centres))
    row.update(_beyond_metrics(families, net.is_linear, w64, outs, state.pre_means))
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
    centres = outs[penultimate].class_means() if penultimate >= 0 else None
    return PassResult(row, grams, centres)


def _extra_metrics(
    families: set[str], net, batches, outs: list, w_last, penultimate: int, exact: bool, reduce, nc4_centres=None
):
    """The keys of the `extra` families from the merged accumulators (and nc4's second pass)."""
    row: dict[str, float] = {}
    if keys.PAPYAN_NC1_CDNV in families:
        for l, acc in enumerate(outs):
            row[keys.layer(keys.NC1_PAPYAN, l + 1)] = acc.nc1_papyan()
            row[keys.layer(keys.CDNV, l + 1)] = acc.cdnv()
    # Z_{L-1}'s class means; with a single layer its input is not tracked, only W_L's rows are.
    wanted = families & {keys.ETF, keys.SELF_DUALITY, keys.NC4}
    centred = outs[penultimate].centred_means() if wanted and penultimate >= 0 else None
    if keys.ETF in families:
        for of, vectors in ((keys.FEATURES, centred), (keys.WEIGHTS, w_last)):
            if vectors is not None:
                row[keys.etf(keys.NC2_EQUINORM, of)] = metrics.equinorm(vectors)
                row[keys.etf(keys.NC2_EQUIANGULARITY, of)] = metrics.equiangularity(vectors)
    if keys.SELF_DUALITY in families and centred is not None:
        row[keys.NC3_DUALITY] = metrics.self_duality(w_last, centred)
    if keys.NC4 in families and centred is not None:
        centres = outs[penultimate].class_means() if nc4_centres is None else nc4_centres
        row[keys.NC4] = _nc4_pass(net, batches, centres, penultimate, exact, reduce)
    return row


def _beyond_metrics(families: set[str], is_linear, w64: list, outs: list, pre_means: dict) -> dict[str, float]:
    """The keys of `conditioning`, `rank` and `nc0` from the float64 weights and the merged class
    statistics."""
    row: dict[str, float] = {}
    if keys.CONDITIONING in families:
        for l, w in enumerate(w64):
            if not is_linear[l]:
                continue
            s = metrics.singular_values(w)
            for i in range(min(keys.TOP_SINGULAR, s.numel())):
                row[keys.layer(keys.weight_sv(i + 1), l + 1)] = float(s[i])
            row[keys.layer(keys.WEIGHT_SV_MIN, l + 1)] = float(s[-1])
            row[keys.layer(keys.WEIGHT_COND, l + 1)] = metrics.condition_number(s)
    if keys.RANK in families:
        spectra = [(l, False, acc.centred_means()) for l, acc in enumerate(outs)]
        spectra += [(l, True, acc.centred_means()) for l, acc in pre_means.items()]
        for l, preact, means in sorted(spectra, key=lambda item: (item[0], item[1])):
            s = metrics.singular_values(means)
            for i, value in enumerate(s.tolist()):
                row[keys.layer(keys.class_sv(i + 1, preact), l + 1)] = value
            rank = keys.RANK + (f"_{keys.PREACT}" if preact else "")
            row[keys.layer(rank, l + 1)] = metrics.numerical_rank(s, keys.RANK_RTOL)
    if keys.NC0 in families:
        row[keys.NC0] = metrics.nc0(w64[-1])
    return row


def _nc4_pass(net, batches, means: torch.Tensor, penultimate: int, exact: bool, reduce) -> float:
    """NC4's second pass: the fraction of samples whose prediction is the nearest class centre
    (`means`, merged over all ranks) of their Z_{L-1}; the counts summed over ranks by `reduce`."""
    agree, count = 0, 0
    for x, y in check_pairs(batches() if callable(batches) else batches, "metric_pass"):
        for l, (_, out) in enumerate(net.iter_layers(x)):
            if l == penultimate:
                z = out
        agree = agree + (metrics.nearest_class_centre(z, means, exact) == out.argmax(1)).sum()
        count += len(y)
        del z, out  # one chunk's features alive at a time, as in the first pass
    hits, total = summed_counts((int(agree), count), reduce)
    return hits / total if total else float("nan")


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
    correct, count = summed_counts((correct, count), reduce)
    return correct / max(count, 1)


def summed_counts(counts: tuple[int, int], reduce: Callable[[object], list] | None) -> tuple[int, int]:
    """(hits, samples) summed over the processes that `reduce` gathers (this one's alone without)."""
    if reduce is None:
        return counts
    shares = reduce(counts)
    return sum(s[0] for s in shares), sum(s[1] for s in shares)
