"""The LightningModule: loss, optimizer and learning-rate schedule around a LayerwiseNet."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .names import LossName, MseReduction, names
from .schema import Loss

LOSSES = names(LossName)
MSE_REDUCTIONS = names(MseReduction)
_LOSS = Loss()  # the schema's defaults (conf/train.yaml repeats them)


def classification_loss(
    output: torch.Tensor, labels: torch.Tensor, loss: str, mse_reduction: str, num_total: int | None = None
) -> torch.Tensor:
    """`mse` on one-hot targets, reduced as the paper's C = 1/2 ||Z_L - Y||_F^2 (`half_sum`), as
    C / N (`half_mean`: 1/2 ||z_i - y_i||^2 averaged over samples, the same objective for any
    batch size) or as torch's MSELoss (`mean` over all N*K entries, K/2 times weaker); or
    cross-entropy (mean over samples).
    With `num_total`, the batch's share of the loss over a set of `num_total` samples, so
    that summing the shares over a partition of the set gives the set's loss."""
    n = num_total or len(labels)
    if loss == "cross_entropy":
        return F.cross_entropy(output, labels, reduction="sum") / n
    diff = output - F.one_hot(labels, output.shape[1]).to(output.dtype)
    if mse_reduction == "half_sum":
        return 0.5 * diff.pow(2).sum()
    if mse_reduction == "half_mean":
        return 0.5 * diff.pow(2).sum() / n
    if mse_reduction == "mean":
        return diff.pow(2).sum() / (n * output.shape[1])
    raise ValueError(f"unknown mse_reduction {mse_reduction!r}; choose {MSE_REDUCTIONS}")


def half_sum_factor(loss: str, mse_reduction: str, num_samples: int, num_classes: int) -> float:
    """What `classification_loss` over `num_samples` samples is multiplied by to give the
    paper's C = 1/2 ||Z_L - Y||_F^2 (1 for cross-entropy, which has no such form)."""
    if loss != "mse" or mse_reduction == "half_sum":
        return 1.0
    if mse_reduction == "half_mean":
        return float(num_samples)
    if mse_reduction == "mean":
        return num_samples * num_classes / 2
    raise ValueError(f"unknown mse_reduction {mse_reduction!r}; choose {MSE_REDUCTIONS}")


# optim.warmup_epochs=auto: a tenth of the run, at least 100 steps, at most 10 epochs and half the run
AUTO_WARMUP_EPOCHS, AUTO_WARMUP_FRACTION, AUTO_WARMUP_MIN_STEPS = 10.0, 0.1, 100


def warmup_epochs_of(setting, max_epochs: int, steps_per_epoch: int) -> float:
    """The warm-up's length in epochs: `optim.warmup_epochs`, or for `auto` (the default) a tenth
    of the run but at least 100 optimizer steps (a deep He-initialised MLP at lr 0.01 diverges
    after a shorter one), and at most 10 epochs and half the run: a short run leaves its warm-up
    and learns, a long one keeps the 10 epochs of earlier versions."""
    if setting == "auto":
        longer = max(AUTO_WARMUP_FRACTION * max_epochs, AUTO_WARMUP_MIN_STEPS / max(1, steps_per_epoch))
        return min(AUTO_WARMUP_EPOCHS, longer, 0.5 * max_epochs)
    return float(setting)


def lr_factor(
    step: int, steps_per_epoch: int, max_epochs: int, warmup_epochs: float, drop_at: float | None, drop_factor: float
) -> float:
    """Linear warm-up over `warmup_epochs`, then constant, times `drop_factor` from the
    fraction `drop_at` of training on."""
    factor = 1.0
    warmup_steps = warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        factor = min(1.0, (step + 1) / warmup_steps)  # a warm-up shorter than one step is one step
    if drop_at is not None and step >= math.floor(drop_at * max_epochs) * steps_per_epoch:
        factor *= drop_factor
    return factor


class CollapseModule(pl.LightningModule):
    """The LightningModule of `wdcollapse-train`: a network with the paper's loss, trained by the
    optimizer and learning-rate schedule the config names (`module` in conf/train.yaml, its
    optimizer the `_target_` node `optim.optimizer`, its schedule `module.schedule`, both
    `_partial_`: this module calls them with its parameters and its step counts).

    Args:
        net: the network, a `MeasuredNetwork` (this package's `MLP`, `ResNet20`, any LayerwiseNet).
        optimizer: a partial of an optimizer class (e.g. `functools.partial(torch.optim.SGD,
            lr=0.01, momentum=0.9)`), called with the parameter groups. SGD's `fused=True` applies
            where the parameters' devices have the fused kernel.
        schedule: a partial called as `schedule(optimizer, steps_per_epoch=..., max_epochs=...)`
            returning a per-step LR scheduler (`warmup_then_drop`); None: a constant rate.
        loss, mse_reduction: see `classification_loss` (defaults: the schema's, schema.Loss).
        trunk_weight_decay: a ResNet trunk's own weight decay (`parameter_groups`); None: the
            optimizer's everywhere.
        compile: torch.compile the network's forward (training and `net(x)`; the metric pass
            calls `iter_layers`, which stays eager).
        channels_last: NHWC convolutions (ResNet20 on a GPU; no effect on the MLP). bf16
            autocast is Lightning's `trainer.precision=bf16-mixed`.

    Raises:
        ValueError: an unknown loss or mse_reduction.

    Optimization is manual: each `training_step` receives a *group* of consecutive batches (a list
    of (x, y); see `data.tensors.StepGroups`) and takes one optimizer step per batch, so
    Lightning's fixed cost per call (its hooks) is paid once per group. The results are those of
    one step per call; `trainer.global_step` counts optimizer steps. The training losses are
    summed on the device (`epoch_loss_sum`) for `DivergenceGuard`, which reads them once per
    epoch: no host synchronisation per step.

    Example::

        module = CollapseModule(MLP([1, 28, 28], 10, 6, 3), functools.partial(torch.optim.SGD, lr=0.01))
    """

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: Callable,
        schedule: Callable | None = None,
        loss: str = _LOSS.name,
        mse_reduction: str = _LOSS.mse_reduction,
        trunk_weight_decay: float | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.epoch_loss_sum: torch.Tensor | None = None
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if mse_reduction not in MSE_REDUCTIONS:
            raise ValueError(f"unknown mse_reduction {mse_reduction!r}; choose one of {MSE_REDUCTIONS}")
        if not callable(optimizer):
            raise ValueError(f"optimizer={optimizer!r}: a partial of an optimizer class (the config's optim.optimizer)")
        self.model = net
        self.loss_name, self.mse_reduction = loss, mse_reduction
        self.optimizer_factory = optimizer
        self.schedule_factory = schedule if schedule is not None else constant_schedule
        self.trunk_weight_decay = trunk_weight_decay
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()  # in place: parameters and state_dict keys are unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, output: torch.Tensor, labels: torch.Tensor, num_total: int | None = None) -> torch.Tensor:
        return classification_loss(output, labels, self.loss_name, self.mse_reduction, num_total)

    def setup(self, stage: str) -> None:
        # Here, not in on_fit_start: Lightning builds the train loader before on_fit_start
        # (for estimated_stepping_batches), which must hold the tensors of the training device, or
        # every batch would be gathered on the CPU and copied.
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "to"):
            datamodule.to(self.trainer.strategy.root_device)

    def step_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (forward pass included)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.loss(self.model(x), y)

    def on_train_epoch_start(self) -> None:
        self.epoch_loss_sum = torch.zeros((), device=self.device)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """One optimizer step per (x, y) of the group `batch`; returns the last step's loss."""
        opt, schedule = self.optimizers(), self.lr_schedulers()
        if isinstance(batch[0], torch.Tensor):  # one (x, y) batch: a data module of the user's own
            batch = [batch]
        for x, y in batch:
            opt.zero_grad(set_to_none=True)
            loss = self.step_loss(x, y)
            self.manual_backward(loss)
            opt.step()
            schedule.step()
            self.epoch_loss_sum += loss.detach()
        # Lightning's own logging is off the hot path: the metric callback logs per epoch.
        return loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        migrate_step_counter(checkpoint)

    def configure_optimizers(self):
        max_epochs = self.trainer.max_epochs
        # Lightning counts training_step calls (groups, after limit_train_batches, which needs
        # groups of one); the schedule needs optimizer steps.
        calls = max(1, self.trainer.estimated_stepping_batches // max_epochs)
        datamodule = self.trainer.datamodule
        steps = getattr(datamodule, "steps_per_epoch", None)
        steps = min(steps, calls * getattr(datamodule, "steps_per_call", 1)) if steps else calls
        opt = build_optimizer(self.optimizer_factory, parameter_groups(self.model, self.trunk_weight_decay))
        schedule = self.schedule_factory(opt, steps_per_epoch=steps, max_epochs=max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def parameter_groups(model: torch.nn.Module, trunk_weight_decay: float | None = None):
    """The model's parameters as the optimizer gets them. With `trunk_weight_decay` set, two
    groups: the fully connected layers (first, with the optimizer's weight decay: the head whose
    balancing the theory predicts) and the trunk's parameters (a ResNet's convolutions and
    BatchNorm) with their own weight decay."""
    if trunk_weight_decay is None:
        return model.parameters()
    trunk = list(getattr(model, "trunk", torch.nn.Identity()).parameters())
    if not trunk:
        raise ValueError(
            "optim.trunk_weight_decay needs a model with a trunk that has parameters (model=resnet20); "
            "this model's layers are all fully connected: leave it null"
        )
    in_trunk = {id(p) for p in trunk}
    head = [p for p in model.parameters() if id(p) not in in_trunk]
    return [{"params": head}, {"params": trunk, "weight_decay": float(trunk_weight_decay)}]


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused SGD kernel runs


def _fused_devices(params: list) -> bool:
    """Whether every parameter (`params`: tensors or parameter-group dicts) lies where the fused
    SGD kernel runs."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.device.type in FUSED_DEVICES and t.is_floating_point() for t in tensors)


def build_optimizer(optimizer: Callable, params):
    """`optimizer` (a partial of an optimizer class: the config's `optim.optimizer`) called with
    `params`. Its `fused=True` (SGD in torch's fused kernel: the same arithmetic as the default
    per-tensor path, bit for bit, in one kernel per parameter, about 0.9x the step time of the cpu
    preset's MLPs: `make bench-optimizer`) holds where the parameters' devices have the kernel;
    `fused=False` leaves torch its default."""
    params = list(params)
    keywords = getattr(optimizer, "keywords", None)
    if keywords is not None and "fused" in keywords and not (keywords["fused"] and _fused_devices(params)):
        kept = {k: v for k, v in keywords.items() if k != "fused"}
        optimizer = functools.partial(optimizer.func, *optimizer.args, **kept)
    return optimizer(params)


def warmup_then_drop(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    max_epochs: int,
    warmup_epochs: float | str,
    drop_at: float | None,
    drop_factor: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The default learning-rate schedule (`module.schedule`): per optimizer step, a linear warm-up
    over `warmup_epochs` (`auto`: see `warmup_epochs`), then constant, times `drop_factor` from
    the fraction `drop_at` of training on (`lr_factor`)."""
    warmup = warmup_epochs_of(warmup_epochs, max_epochs, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, max_epochs, warmup, drop_at, drop_factor)
    )


def constant_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int):
    """No schedule: the optimizer's learning rate at every step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def migrate_step_counter(checkpoint: dict) -> None:
    """Checkpoints of the automatic optimization loop count optimizer steps
    in the automatic loop's progress; under manual optimization `trainer.global_step` reads the
    manual loop's, which would restart at 0 (metrics rows' `step` going backwards, theory_gd
    dropping its steps.jsonl). Copies the count over, in place, when the manual one is empty."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    automatic = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
    if manual is None or automatic is None or manual["total"]["completed"] or not automatic["total"]["completed"]:
        return
    manual["total"] = dict(automatic["total"])
    manual["current"] = dict(automatic["current"])
