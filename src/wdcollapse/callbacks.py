"""Lightning callbacks: the per-epoch metric pass, divergence detection, atomic checkpoints."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pydantic import Field, InstanceOf
from pytorch_lightning.callbacks import Callback, Checkpoint

from . import beyond, keys
from .arguments import check_pairs, checked, refuse
from .errors import ArgumentError
from .interfaces import HookedNetwork, LoaderData, MeasuredNetwork, MetricData, missing
from .io import append_jsonl, atomic_write_json, read_jsonl
from .metric_pass import accuracy, gather_states, measure, metric_pass
from .runfiles import RunFiles
from .schema import ExtraMetrics, Metrics, PositiveInt, Schedule, names
from .theory_monitors import theory_observers
from .wandb_log import RunLog, is_wandb_logger

SCHEDULES = names(Schedule)
_DEFAULTS = Metrics()  # the schema's defaults, which conf/callbacks/default.yaml repeats


def evaluation_epochs(max_epochs: int, schedule: str = "every", every_n: int = 1, num_points: int = 50) -> set[int]:
    """Epochs (0 = at initialisation, e = after e epochs) at which the metric pass runs. The
    last epoch is always included."""
    if schedule == "every":
        epochs = set(range(0, max_epochs + 1, max(1, every_n)))
    elif schedule == "log":
        epochs = {0} | {int(round(e)) for e in np.geomspace(1, max(1, max_epochs), num_points)}
    else:
        raise ValueError(f"unknown callbacks.metrics.schedule {schedule!r}; choose one of {SCHEDULES}")
    return {e for e in epochs if e <= max_epochs} | {max_epochs}


def distributed(trainer) -> bool:
    """Whether `trainer` runs several processes that share a torch.distributed group."""
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def share_rank_zero_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (e.g. BatchNorm running statistics). Under manual
    optimization Lightning's DDP wrapper never re-broadcasts buffers after wrapping the model
    (it clears DDP's forward sync after each call), so each rank's running statistics are its
    own average over its own batches of the whole run; the checkpoint holds rank 0's. Without
    this, each rank's share of the metric pass would run a different network. One broadcast
    per dtype and device (BatchNorm: float32 statistics, int64 counters), not one per buffer."""
    groups: dict = {}
    for buffer in module.buffers():
        groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    for buffers in groups.values():
        flat = torch.cat([b.reshape(-1) for b in buffers])
        torch.distributed.broadcast(flat, src=0)
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(part.view_as(buffer))


def on_device(batches, device):
    """The batches on the module's device (a no-op for batches already there), each checked to
    be an (inputs, labels) pair: anything else is named at its first batch."""
    for x, y in check_pairs(batches, "MetricMonitor", "data"):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def steps_per_epoch(trainer) -> int | None:
    """Optimizer steps (Lightning's batches that stepped) per epoch; None when unknown."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches <= 0:
        return None
    return math.ceil(batches / max(1, trainer.accumulate_grad_batches))


def training_batch_size(trainer) -> int | None:
    """The samples of one optimizer step on one process: the datamodule's `batch_size` (None there
    means full batch: the training set), else the training DataLoader's; None when unknown."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "batch_size"):
        size = datamodule.batch_size
        return size if size is not None else getattr(datamodule, "num_train", None)
    try:
        loader = trainer.train_dataloader
    except Exception:  # no loader attached yet
        return None
    return getattr(loader, "batch_size", None)


def extra_switches(extra, call: str = "MetricMonitor") -> ExtraMetrics:
    """`extra` (the switches of ExtraMetrics, a mapping of them such as the config's
    callbacks.metrics.extra, or a list of the families to switch on) as ExtraMetrics."""
    if extra is None:
        return ExtraMetrics()
    if isinstance(extra, ExtraMetrics):
        return extra
    switches = dict(extra) if isinstance(extra, Mapping) else dict.fromkeys(extra, True)
    families = list(ExtraMetrics.model_fields)
    unknown = sorted(set(switches) - set(families))
    if unknown:
        raise refuse(call, "extra", extra, f"metric families from {families} (unknown: {unknown})")
    not_bool = {k: v for k, v in switches.items() if not isinstance(v, bool)}
    if not_bool:
        raise refuse(call, "extra", extra, f"switches that are True or False ({not_bool} are not)")
    return ExtraMetrics(**switches)


class Diverged(RuntimeError):
    def __init__(self, epoch: int, step: int, loss: float):
        # `epoch` counts from 0 (the epoch in which it happened); `step` is the global step at
        # which it was detected (the end of that epoch).
        super().__init__(f"training loss became {loss} in epoch {epoch} (detected at step {step})")
        self.epoch, self.step, self.loss = epoch, step, loss


def check_diverged(trainer, pl_module) -> None:
    """Raise `Diverged` if a training loss of this epoch was not finite (the module's on-device
    sum `epoch_loss_sum` is then not finite either). One host read; under DDP a collective, so
    every rank stops together (one rank raising alone would leave the others waiting)."""
    total = getattr(pl_module, "epoch_loss_sum", None)
    finite = total is None or bool(torch.isfinite(total))
    if distributed(trainer):
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if not finite:
        value = float(total) if total is not None and not torch.isfinite(total) else math.nan
        raise Diverged(trainer.current_epoch, trainer.global_step, value)


class DivergenceGuard(Callback):
    """Stops the run (raising `Diverged`) at the end of the first epoch with a non-finite
    training loss, before the bad weights reach the metric pass or a checkpoint: put it first
    in the callback list (MetricMonitor checks too). Checked once per epoch, not per step: on
    a GPU a read per step would stall the queue, and a diverged epoch only costs its steps.
    It reads the module's on-device `epoch_loss_sum` (CollapseModule keeps it); a module without
    one is never stopped.

    Args:
        none: it reads the module and the Trainer it is given.

    Raises:
        Diverged: in `on_train_epoch_end`, with the epoch, the step and the loss.

    Example::

        pl.Trainer(callbacks=[DivergenceGuard(), MetricMonitor("outputs/run")])
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        check_diverged(trainer, pl_module)


class MetricMonitor(Callback):
    """Runs the metric pass on the training set (eval mode) at initialisation and then on the
    schedule; appends one JSON line per evaluated epoch to metrics.jsonl, writes the latest
    class-mean Gram matrices to grams.json, and logs the row to every Lightning logger (their
    `epoch` and `step` then follow the rows: `stamp_epochs`).

    What it measures (wdcollapse.interfaces): by default `pl_module.model`, a `MeasuredNetwork`
    (this package's models), on `trainer.datamodule`, a `MetricData`; for any other
    LightningModule, the named layers of `layers` (a `HookedNetwork`) on `data`.

    Args:
        out_dir: where metrics.jsonl and grams.json go, created if missing (default None: the
            Trainer's `default_root_dir`).
        schedule: "log" (default: `num_points` log-spaced epochs) or "every" (every `every_n`).
            Epoch 0 (at initialisation) and the last epoch are always evaluated.
        every_n: with schedule="every", the interval in epochs (default 1).
        num_points: with schedule="log", how many epochs (default 25).
        test_acc: also measure `test/acc` (default True; needs test data).
        theory: Theorem 3.1's `theory/*` keys: "auto" (default: for a linear head of >= 2
            layers), True or False.
        exact: float64 throughout (default False: each chunk's statistics in float32,
            accumulated in float64, about 1e-7 relative).
        extra: the literature's metrics and those beyond the paper (schema.ExtraMetrics:
            papyan_nc1_cdnv, etf, self_duality, nc4, test_set, conditioning, rank, nc0,
            grad_norm, agop, sharpness), as a mapping of switches or a list of names. grad_norm
            and sharpness need the loss (CollapseModule's own, else `loss_fn`).
        subset: agop and sharpness: the size of the fixed subset of the training set (every
            (N / subset)-th sample of `data`'s order; default 1000).
        lanczos_steps: sharpness: Lanczos iterations, one Hessian-vector product each (default 20).
        hessian_eigenvalues: sharpness: how many of the top eigenvalues are logged (default 2).
        batch_sharpness_batches: sharpness: how many mini-batches of the training batch size
            (consecutive slices of the subset) the batch sharpness averages (default 8).
        layers: names from `pl_module.named_modules()` of its fully connected layers in forward
            order (e.g. ["head.0", "head.2", "fc"]), checked against the module at `setup`.
        linear_depth: with `layers`, how many of the last ones form the linear head.
        data: a DataLoader of the training set in a fixed order, without augmentation (or any
            MetricData); default: the Trainer's datamodule.
        test_data: with a DataLoader `data`, one of the test set.
        num_classes: with a DataLoader `data`, the number of classes.
        loss_fn: `loss_fn(output, labels)`, the batch's summed loss (optional): `train/loss` is
            its mean.

    Raises:
        ArgumentError: a wrong type or value, an unknown name, a missing companion argument
            (layers without linear_depth, a DataLoader without num_classes), at the call; a layer
            name the module lacks, or no data, at `setup`; a batch that is not (inputs, labels)
            at the first batch. One line each.

    Example::

        monitor = MetricMonitor("outputs/my_run", layers=["fc1", "fc2", "fc3"], linear_depth=2,
                                data=DataLoader(train_set, batch_size=512), test_acc=False, num_classes=10)
        pl.Trainer(max_epochs=10, callbacks=[monitor]).fit(my_module, train_loader)

    Under data parallelism (Lightning's DDP) each rank runs the metric pass on its share of
    the chunks of the training (and test) set and the ranks' accumulated statistics are
    gathered and merged in rank order (metric_pass.gather_states), so every rank computes the row
    of a single-process pass over the same weights and rank 0's buffers (up to float
    rounding): the network the checkpoint holds. Only global rank 0 writes metrics.jsonl and
    grams.json and logs."""

    @checked
    def __init__(
        self,
        out_dir: str | Path | None = None,
        schedule: Schedule = _DEFAULTS.schedule,
        every_n: PositiveInt = _DEFAULTS.every_n,
        num_points: PositiveInt = _DEFAULTS.num_points,
        test_acc: bool = _DEFAULTS.test_acc,
        theory: Literal["auto"] | bool = _DEFAULTS.theory,
        exact: bool = _DEFAULTS.exact,
        extra: InstanceOf[ExtraMetrics] | Mapping[str, bool] | Sequence[str] | None = None,
        layers: Sequence[str] | None = None,
        linear_depth: Annotated[int, Field(ge=0)] | None = None,
        data: Any = None,
        test_data: Any = None,
        num_classes: Annotated[int, Field(ge=2)] | None = None,
        loss_fn: Callable | None = None,
        subset: PositiveInt = _DEFAULTS.subset,
        lanczos_steps: PositiveInt = _DEFAULTS.lanczos_steps,
        hessian_eigenvalues: PositiveInt = _DEFAULTS.hessian_eigenvalues,
        batch_sharpness_batches: PositiveInt = _DEFAULTS.batch_sharpness_batches,
    ):
        call = "MetricMonitor"
        if hessian_eigenvalues > lanczos_steps:
            raise refuse(
                call, "hessian_eigenvalues", hessian_eigenvalues, f"at most lanczos_steps={lanczos_steps} eigenvalues"
            )
        if layers is not None and not layers:
            raise refuse(call, "layers", layers, "at least one layer name")
        if layers is not None and linear_depth is None:
            raise refuse(call, "linear_depth", None, "how many of the last named layers are linear (an integer >= 0)")
        if layers is not None and linear_depth > len(layers):
            raise refuse(call, "linear_depth", linear_depth, f"at most the {len(layers)} layers named in layers")
        for name, loader in (("data", data), ("test_data", test_data)):
            if loader is not None and not isinstance(loader, MetricData) and not isinstance(loader, Iterable):
                raise refuse(
                    call, name, loader, "a DataLoader (any iterable of (inputs, labels) batches) or a MetricData"
                )
        if data is not None and not isinstance(data, MetricData) and num_classes is None:
            raise refuse(call, "num_classes", None, "the number of classes (an integer >= 2) when data is a DataLoader")
        loader = data is not None and not isinstance(data, MetricData)
        if loader and test_data is None and (test_acc or (extra is not None and "test_set" in extra)):
            raise refuse(call, "test_data", None, "a DataLoader of the test set for test/acc, or test_acc=False")
        if test_data is not None and not loader:
            raise refuse(
                call, "test_data", test_data, "only with data=<a DataLoader> (a MetricData brings its own test split)"
            )
        self.layers, self.linear_depth, self.loss_fn = (
            (list(layers) if layers is not None else None),
            linear_depth,
            loss_fn,
        )
        if data is not None and not isinstance(data, MetricData):
            data = LoaderData(data, num_classes, test=test_data)
        self.data = data
        self._hooked: HookedNetwork | None = None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.schedule, self.every_n, self.num_points, self.test_acc = schedule, every_n, num_points, test_acc
        self.theory, self.exact = theory, exact
        self.extra = extra_switches(extra, call)
        self.extra_families = [name for name in keys.EXTRA if getattr(self.extra, name)]
        self.monitor_families = [name for name in keys.MONITOR_EXTRA if getattr(self.extra, name)]
        self.subset, self.lanczos_steps = subset, lanczos_steps
        self.hessian_eigenvalues, self.batch_sharpness_batches = hessian_eigenvalues, batch_sharpness_batches
        self.epoch_seconds: float | None = None  # the last training epoch's wall time (sharpness/epochs)
        self._epoch_start: float | None = None
        self.metric_seconds = 0.0
        self._wandb: dict[int, RunLog] = {}
        self._raw_log: dict[int, Callable] = {}  # each logger's own log_metrics (see stamp_epochs)

    @property
    def metrics_path(self) -> Path:
        return RunFiles(self.out_dir).metrics

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before any pass: the output folder (default: the Trainer's default_root_dir) exists,
        the network and the data are what the metric pass needs (named layers checked against
        the module), and the loggers' `epoch` follows the package's convention (stamp_epochs)."""
        if self.out_dir is None:
            self.out_dir = Path(trainer.default_root_dir)
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.network(pl_module)
        self.metric_data(trainer)
        needs_loss = sorted({keys.GRAD_NORM, keys.SHARPNESS} & set(self.monitor_families))
        if needs_loss and self._share_loss(pl_module) is None:
            raise refuse(
                "MetricMonitor",
                "loss_fn",
                None,
                f"the batch's summed loss, loss_fn(output, labels): extra {needs_loss} differentiate the training loss",
            )
        self.stamp_epochs(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:  # the loggers' own log_metrics back
            if id(logger) in self._raw_log:
                vars(logger).pop("log_metrics", None)
        self._raw_log.clear()

    def stamp_epochs(self, trainer: pl.Trainer) -> None:
        """Make the `epoch` and `step` that Lightning gives each logger with what a LightningModule
        logs (`self.log`) follow the rows of metrics.jsonl: epochs and optimizer steps of training
        done (0 = at initialisation). Lightning's own are the 0-based index of the running epoch
        and of the last step taken, one less than ours at an epoch's end (its `step` for every
        log during an epoch, validation and epoch-end included, is the index of the last
        optimizer step). So its step s becomes s + 1 and its epoch (s + 1) / steps per epoch: a
        whole number at an epoch's end (and in the validation after it), a fraction within an
        epoch. Each logger's `log_metrics` is wrapped on the instance for this fit (teardown
        restores it); the monitor's own rows bypass the wrapper."""
        for logger in trainer.loggers:
            if id(logger) in self._raw_log:
                continue
            original = logger.log_metrics
            self._raw_log[id(logger)] = original

            def log_metrics(metrics, step=None, _original=original):
                per_epoch = steps_per_epoch(trainer)
                if step is not None and per_epoch and metrics.get("epoch") == trainer.current_epoch:
                    step = step + 1
                    epochs = step / per_epoch
                    metrics = {**metrics, "epoch": int(epochs) if float(epochs).is_integer() else epochs}
                return _original(metrics, step)

            logger.log_metrics = log_metrics

    def on_train_start(self, trainer, pl_module) -> None:
        self.epochs = evaluation_epochs(trainer.max_epochs, self.schedule, self.every_n, self.num_points)
        done = {row["epoch"] for row in read_jsonl(self.metrics_path)}
        # rank 0's file decides, so that all ranks enter the (collective) pass or none does
        needed = trainer.strategy.broadcast(trainer.current_epoch == 0 and 0 not in done, src=0)
        if needed:
            self.evaluate(trainer, pl_module, epoch=0)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_start is not None:
            self.epoch_seconds = time.perf_counter() - self._epoch_start
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs:
            check_diverged(trainer, pl_module)  # whatever the callback order: no rows of NaN weights
            self.evaluate(trainer, pl_module, epoch)

    def network(self, pl_module) -> MeasuredNetwork:
        """What the metric pass measures: the named layers of `pl_module` (layers=...), else
        `pl_module.model`."""
        if self.layers is not None:
            if self._hooked is None or self._hooked.module is not pl_module:
                try:
                    self._hooked = HookedNetwork(pl_module, self.layers, self.linear_depth)
                except ArgumentError as e:
                    raise ArgumentError(str(e).replace("HookedNetwork(", "MetricMonitor(", 1)) from None
            return self._hooked
        net = getattr(pl_module, "model", None)
        if not isinstance(net, MeasuredNetwork):
            raise ArgumentError(
                f"MetricMonitor: {type(pl_module).__name__}.model is not a MeasuredNetwork (it lacks "
                f"{missing(net, MeasuredNetwork)}); pass layers=[...] and linear_depth=... to measure named submodules"
            )
        return net

    def metric_data(self, trainer) -> MetricData:
        """The data of the metric pass: `data` (a DataLoader or MetricData), else the datamodule."""
        data = self.data if self.data is not None else trainer.datamodule
        if data is None:
            raise ArgumentError(
                "MetricMonitor(data=None): not allowed: the Trainer has no datamodule, so pass data=<a DataLoader of "
                "the training set in a fixed order>, test_data=... and num_classes=..."
            )
        if not isinstance(data, MetricData):
            raise ArgumentError(
                f"MetricMonitor: the datamodule {type(data).__name__} is not a MetricData (it lacks "
                f"{missing(data, MetricData)}); pass data=<a DataLoader of the training set> and num_classes=..."
            )
        return data

    def _share_loss(self, pl_module):
        """loss(output, labels, num_total): the batch's share of the mean loss over num_total
        samples (CollapseModule's own loss, else `loss_fn` / num_total); None without a loss."""
        if hasattr(pl_module, "step_loss") and hasattr(pl_module, "loss"):  # CollapseModule: its own loss
            return lambda out, y, n: pl_module.loss(out, y, num_total=n)
        if self.loss_fn is not None:
            return lambda out, y, n: self.loss_fn(out, y) / n
        return None

    def _loss(self, pl_module, num_total: int):
        share = self._share_loss(pl_module)
        return None if share is None else (lambda out, y: share(out, y, num_total))

    def _beyond(self, trainer, pl_module, net, data, device, share: dict, reduce) -> dict:
        """The keys of extra grad_norm, agop and sharpness (wdcollapse.beyond), in the current
        (eval) mode: grad_norm over this rank's share of the training set, agop and sharpness on
        the fixed subset, whose chunks the ranks share."""
        families = self.monitor_families
        row: dict = {}
        if not families:
            return row
        rank, world = share.get("rank", 0), share.get("world", 1)
        optimizers = list(trainer.optimizers or [])
        loss = self._share_loss(pl_module)
        params, decays = beyond.regularised_parameters(optimizers, pl_module)
        if keys.GRAD_NORM in families:
            train = on_device(data.eval_batches("train", **share), device)
            row.update(beyond.grad_norm(net, params, decays, train, loss, data.num_train, reduce))
        if keys.AGOP not in families and keys.SHARPNESS not in families:
            return row
        x, y = beyond.fixed_subset(on_device(data.eval_batches("train"), device), data.num_train, self.subset)
        if keys.AGOP in families:
            row.update(beyond.agop(net, beyond.chunks(x, y, beyond.CHUNK, rank, world), reduce))
        if keys.SHARPNESS in families:
            start = time.perf_counter()
            pieces = beyond.chunks(x, y, beyond.CHUNK, rank, world)
            eigenvalues = beyond.hessian_eigenvalues(
                net, params, decays, pieces, loss, len(y), self.lanczos_steps, self.hessian_eigenvalues, reduce
            )
            for i, value in enumerate(eigenvalues, start=1):
                row[keys.sharpness_eig(i)] = value
            size = training_batch_size(trainer)
            batches = []
            if size:  # one optimizer step's samples over all ranks, at most the subset
                size = min(size * world, len(y))
                count = min(self.batch_sharpness_batches, len(y) // size)
                batches = [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(count)]
            row[keys.BATCH_SHARPNESS] = beyond.batch_sharpness(net, params, decays, batches[rank::world], loss, reduce)
            gd, momentum = beyond.stability_thresholds(optimizers[0]) if optimizers else (math.nan, math.nan)
            row[keys.GD_THRESHOLD], row[keys.MOMENTUM_THRESHOLD] = gd, momentum
            seconds = time.perf_counter() - start
            row[keys.SHARPNESS_SECONDS] = seconds
            row[keys.SHARPNESS_EPOCHS] = seconds / self.epoch_seconds if self.epoch_seconds else math.nan
        return row

    def evaluate(self, trainer: pl.Trainer, pl_module, epoch: int) -> dict:
        start = time.perf_counter()
        data = self.metric_data(trainer)
        net = self.network(pl_module)
        device = pl_module.device
        was_training = pl_module.training
        pl_module.eval()
        n = data.num_train
        observers = theory_observers(self.theory, net, data.num_classes, exact=self.exact)
        if distributed(trainer):
            share_rank_zero_buffers(net if isinstance(net, torch.nn.Module) else net.module)
            share = {"rank": trainer.global_rank, "world": trainer.world_size}
            reduce = gather_states
        else:
            share, reduce = {}, None

        def batches(split: str):  # a fresh iterable per call: extra nc4 reads the data twice
            return lambda: on_device(data.eval_batches(split, **share), device)

        try:
            result = measure(
                net,
                batches("train"),
                data.num_classes,
                loss_fn=self._loss(pl_module, n),
                observers=observers,
                exact=self.exact,
                reduce=reduce,
                extra=self.extra_families,
            )
            row, grams = result.row, result.grams
        except torch.linalg.LinAlgError:
            # Non-finite features: the epoch's last step blew up, and its loss (all that
            # DivergenceGuard sees) was computed before that step.
            with torch.no_grad():
                if all(torch.isfinite(net(x)).all() for x, _ in on_device(data.eval_batches("train"), device)):
                    raise
            raise Diverged(trainer.current_epoch, trainer.global_step, math.nan) from None
        row.update(self._beyond(trainer, pl_module, net, data, device, share, reduce))
        record = {keys.EPOCH: epoch, keys.STEP: trainer.global_step}
        if "loss" in row:
            record[keys.TRAIN_LOSS] = row.pop("loss")
        record[keys.TRAIN_ACC] = row.pop("acc")
        test_row = {}
        if self.extra.test_set:  # the same pass on the test split; its accuracy is test/acc
            # test/nc4 classifies by the training set's class centres: the classifier training built
            test_row, _ = metric_pass(
                net,
                batches("test"),
                data.num_classes,
                exact=self.exact,
                reduce=reduce,
                extra=self.extra_families,
                nc4_centres=result.centres,
            )
            record[keys.TEST_ACC] = test_row.pop("acc")
        elif self.test_acc:
            record[keys.TEST_ACC] = accuracy(net, on_device(data.eval_batches("test", **share), device), reduce=reduce)
        record["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        record.update(row)
        record.update({keys.on_test(k): v for k, v in test_row.items() if not keys.of_weights_only(k)})
        pl_module.train(was_training)
        if trainer.is_global_zero:
            append_jsonl(self.metrics_path, record)
            atomic_write_json(RunFiles(self.out_dir).grams, {"epoch": epoch, "grams": grams})
            for logger in trainer.loggers:
                if is_wandb_logger(logger):  # against the epoch, with the Gram images
                    if id(logger) not in self._wandb:
                        self._wandb[id(logger)] = RunLog(logger, net.nonlinear_depth, net.num_layers)
                    self._wandb[id(logger)].log(record, grams)
                else:  # the row as it is: its epoch is the package's (not restamped)
                    self._raw_log.get(id(logger), logger.log_metrics)(record, step=trainer.global_step)
        self.metric_seconds += time.perf_counter() - start
        return record


class AtomicCheckpoint(Checkpoint):
    """Saves the run directory's `checkpoints/last.ckpt` at the end of every `every_n_epochs`-th
    epoch (and the last) through a temporary file and a rename, so a kill leaves the previous
    checkpoint intact. Being a `Checkpoint`, Lightning runs it after the other callbacks, i.e.
    after the epoch's metrics are written.

    Args:
        out_dir: the run directory (the checkpoint goes to its checkpoints/last.ckpt).
        every_n_epochs: save every n-th epoch (default 1).

    Raises:
        ArgumentError: a wrong type or a number < 1.

    Example::

        pl.Trainer(callbacks=[AtomicCheckpoint("outputs/my_run")])
    """

    @checked
    def __init__(self, out_dir: str | Path, every_n_epochs: PositiveInt = 1):
        self.last_path = RunFiles(out_dir).checkpoint
        self.dirpath = self.last_path.parent
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / ".last.ckpt.tmp"
        # the whole state, to resume (explicit: Lightning logs a line per save when it has to default)
        trainer.save_checkpoint(tmp, weights_only=False)  # on every rank (a barrier); only global rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
