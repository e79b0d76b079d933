"""Theorem 3.1 and 4.4 measured during training: `TheoryObserver` accumulates Theorem 3.1's
quantities inside the metric pass; `TheoryGDMonitor` (a Lightning callback) records every step
of `experiment=theory_gd` and writes steps.jsonl and theory.json."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from . import metrics
from .errors import ConfigError
from .fits import analyse_steps
from .io import append_jsonl, atomic_write_json, keep_jsonl_rows, read_json, read_jsonl
from .module import half_sum_factor
from .runfiles import RunFiles
from .theorems import (
    activation_assumption,
    assemble,
    assumption_43,
    balancedness_errors,
    check_assumption_41,
    check_head,
    pinv,
    pyramidal,
)


class TheoryObserver:
    """An observer for `metric_pass.metric_pass`: accumulates Theorem 3.1's quantities over the
    chunks of one pass in float64 (the Gram matrix of Z_{L-2}, the squared error, the distance
    to W_L^+ Y, class statistics), never holding all features. `result()` equals `theorem31`
    on the stacked features. Z_{L-1} = Z_{L-2} W_{L-1}^T (a linear layer), so its Gram matrix
    is W_{L-1} G_{L-2} W_{L-1}^T: no second N x d Gram product. `exact=False`: the
    accumulators' fast path (per-chunk statistics in the features' precision)."""

    def __init__(self, net, num_classes: int, exact: bool = True):
        if not self.supports(net):
            raise ValueError(
                f"Theorem 3.1 needs a linear head of >= 2 layers and L >= 3 layers (Z_{{L-2}} must be a "
                f"layer's output), got nonlinear_depth={net.nonlinear_depth}, linear_depth={net.linear_depth}"
            )
        self.num_classes = int(num_classes)
        self.L = net.num_layers
        self.heads = check_head(net.weights[net.nonlinear_depth :], num_classes)
        self.pinv_rows = pinv(self.heads[-1]).T.contiguous()  # [K, n_{L-1}]
        self.gram_lm2 = metrics.GramAccumulator(net.weights[-2].shape[1], exact=exact)
        self.nc = metrics.NCAccumulator(num_classes, exact=exact)
        self.layers = (self.L - 3, self.L - 2)  # the metric pass keeps Z_{L-2} and Z_{L-1} for us
        self.sq_err = 0.0
        self.dist_sq = 0.0

    @staticmethod
    def supports(net) -> bool:
        return net.linear_depth >= 2 and net.num_layers >= 3

    def update(self, trace, labels: torch.Tensor) -> None:
        """A chunk of the metric pass, whose labels' range it has checked (no host read here)."""
        z2, y = metrics.check_inputs(trace.outputs[self.L - 2], labels, self.num_classes, check_range=False)
        self.gram_lm2.update(trace.outputs[self.L - 3])
        # in the features' precision when not exact
        self.nc.update(trace.outputs[self.L - 2], y, labels_checked=True)
        out = trace.output.detach().double()
        onehot = torch.nn.functional.one_hot(y, self.num_classes).to(out.dtype)
        self.pinv_rows = self.pinv_rows.to(z2.device)
        # 0-dim float64 tensors (read in result()): no host synchronisation per chunk
        self.sq_err = self.sq_err + (out - onehot).pow(2).sum()
        self.dist_sq = self.dist_sq + (z2 - self.pinv_rows[y]).pow(2).sum()

    def merge(self, other: TheoryObserver) -> TheoryObserver:
        """Fold in an observer of the same network fed disjoint data (another process's share
        of a data-parallel metric pass): Gram matrices and sums add, class statistics merge."""
        if other.L != self.L or other.num_classes != self.num_classes:
            raise ValueError("cannot merge theory observers of different networks")
        self.gram_lm2.merge(other.gram_lm2)
        self.nc.merge(other.nc)
        self.sq_err += other.sq_err
        self.dist_sq += other.dist_sq
        return self

    def _op_lm1(self) -> float:
        """||Z_{L-1}||_op from G_{L-2}: sqrt(lambda_max(W_{L-1} G_{L-2} W_{L-1}^T))."""
        w = self.heads[-2].to(self.gram_lm2.gram.device)
        return metrics.gram_op_norm(w @ self.gram_lm2.gram @ w.T)

    def result(self) -> dict:
        counts, means, _ = self.nc._stats()
        return assemble(
            sq_err=float(self.sq_err),
            op_lm2=self.gram_lm2.op_norm(),
            op_lm1=self._op_lm1(),
            counts=counts.cpu(),
            dist_sq=float(self.dist_sq),
            tr_b=metrics.between_class_trace(counts, means),
            nc1=self.nc.nc1(),
            heads=self.heads,
        )


def check_theory_setting(setting) -> None:
    if setting not in ("auto", True, False):
        raise ValueError(f"callbacks.metrics.theory={setting!r}; choose auto, true or false")


def theory_observers(setting, net, num_classes: int, exact: bool = True) -> list:
    """The observers MetricMonitor's `theory` option asks for: `auto` = a TheoryObserver when
    the model has a linear head of >= 2 layers (and L >= 3), true = always (an error if the
    model has no such head), false = none."""
    check_theory_setting(setting)
    if setting is False or (setting == "auto" and not TheoryObserver.supports(net)):
        return []
    return [TheoryObserver(net, num_classes, exact=exact)]


class TheoryGDMonitor(Callback):
    """For `experiment=theory_gd`. At set-up: checks Assumption 4.1 (ConfigError when
    violated, if `check_assumptions`). At the start of a fresh run: writes theory.json with
    the setting, Assumption 4.2 for the activation and Assumption 4.3's quantities at theta_0.
    At every step k: a row {step, loss = 1/2 ||Z_L - Y||_F^2 (the training loss at theta_k),
    reg_loss = loss + lambda/2 ||theta_k||^2, balancedness_error = max over the linear-head
    pairs of ||W_{l+1}^T W_{l+1} - W_l W_l^T||_op at theta_k, balancedness_pairs, lr} buffered
    and appended to steps.jsonl every `flush_every_n_epochs` epochs (set it to the checkpoint
    interval: rows are on disk before the checkpoint that covers them). At the end: the
    phase detection and rate fit of `analyse_steps`, stored under "rate" in theory.json.
    On resume, steps.jsonl keeps only the rows of the steps the checkpoint has done."""

    def __init__(
        self,
        out_dir: str | Path,
        check_assumptions: bool = True,
        flush_every_n_epochs: int = 1,
        settle: float = 0.01,
        floor: float = 1e-5,
        tolerance: float = 0.2,
        min_points: int = 20,
    ):
        self.out_dir = Path(out_dir)
        self.check_assumptions = bool(check_assumptions)
        self.flush_every = max(1, int(flush_every_n_epochs))
        self.settle, self.floor, self.tolerance, self.min_points = settle, floor, tolerance, min_points
        self.buffer: list[dict] = []
        self.pending: dict | None = None

    @property
    def steps_path(self) -> Path:
        return RunFiles(self.out_dir).steps

    @property
    def theory_path(self) -> Path:
        return RunFiles(self.out_dir).theory

    @staticmethod
    def _widths(net) -> list[int]:
        return [int(w.shape[0]) for w in net.weights]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size > 1:
            # Its per-step loss and files are those of one process's full batch.
            raise ConfigError(
                f"experiment=theory_gd (full-batch gradient descent, Theorem 4.4) runs in one process; "
                f"got trainer.strategy with world size {trainer.world_size}: use trainer.devices=1"
            )
        data = trainer.datamodule
        if getattr(data, "steps_per_call", 1) > 1 and data.steps_per_epoch > 1:
            # Its rows are per optimizer step, written from Lightning's per-call batch hooks.
            raise ConfigError(
                f"the theory_gd monitor records every optimizer step: with {data.steps_per_epoch} "
                f"mini-batches per epoch it needs steps_per_call=1 (got {data.steps_per_call})"
            )
        if self.check_assumptions:
            check_assumption_41(self._widths(pl_module.model), data.num_train)

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        # A kill between these rows and the checkpoint leaves rows the resumed run redoes.
        keep_jsonl_rows(self.steps_path, lambda row: row["step"] < step)
        self.buffer, self.pending = [], None
        if step == 0 or not self.theory_path.exists():
            self._write_initial(trainer, pl_module)

    def _write_initial(self, trainer, pl_module) -> None:
        net, data = pl_module.model, trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        act = activation_assumption(net.activation)
        opt = trainer.optimizers[0]  # as the config built it: its class and arguments
        group = opt.param_groups[0]  # the head's group (parameter_groups puts it first)
        info = {
            "setting": {
                "N": data.num_train,
                "K": data.num_classes,
                "widths": self._widths(net),
                "input_dim": int(net.weights[0].shape[1]),
                "nonlinear_depth": net.nonlinear_depth,
                "linear_depth": net.linear_depth,
                "lr": float(opt.defaults["lr"]),
                "weight_decay": float(group.get("weight_decay", 0.0)),
                "optimizer": type(opt).__name__,
                "momentum": float(group.get("momentum", 0.0)),
                "full_batch": getattr(data, "batch_size", None) in (None, data.num_train),
                "loss": pl_module.loss_name,
                "mse_reduction": pl_module.mse_reduction,
                "max_steps": int(data.steps_per_epoch * trainer.max_epochs),
            },
            "assumption_4_1": {"holds": pyramidal(self._widths(net), data.num_train)},
            "assumption_4_2": act,
            "assumption_4_3": assumption_43(net, data.train_x, data.train_y, data.num_classes, act["gamma"] or 0.0),
        }
        pl_module.train(was_training)
        atomic_write_json(self.theory_path, info)

    def _head(self, net) -> list[torch.Tensor]:
        return [w.detach() for w in net.weights[net.nonlinear_depth :]]

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        net = pl_module.model
        group = trainer.optimizers[0].param_groups[0]
        pairs = balancedness_errors(self._head(net)) if net.linear_depth >= 2 else []
        sq = float(sum(p.detach().double().pow(2).sum() for p in net.parameters()))  # one host read
        self.pending = {
            "step": trainer.global_step,
            "lr": float(group["lr"]),
            "wd": float(group.get("weight_decay", 0.0)),
            "sq": sq,
            "pairs": pairs,
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pending is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = float(loss.detach()) if loss is not None else math.nan
        # The training loss in the theory's reduction C_0 = 1/2 ||Z_L - Y||_F^2 on the batch
        # (a group of one (x, y): see setup).
        y = batch[1] if isinstance(batch, tuple) else batch[0][1]
        loss *= half_sum_factor(pl_module.loss_name, pl_module.mse_reduction, len(y), trainer.datamodule.num_classes)
        p, self.pending = self.pending, None
        self.buffer.append(
            {
                "step": p["step"],
                "loss": loss,
                "reg_loss": loss + 0.5 * p["wd"] * p["sq"],
                "balancedness_error": max(p["pairs"]) if p["pairs"] else None,
                "balancedness_pairs": p["pairs"],
                "lr": p["lr"],
            }
        )

    def flush(self) -> None:
        if not self.buffer:
            return
        append_jsonl(self.steps_path, *self.buffer)
        self.buffer = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.flush_every == 0 or epoch == trainer.max_epochs:
            self.flush()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()
        info = read_json(self.theory_path, default={}) or {}
        wd = float(trainer.optimizers[0].param_groups[0].get("weight_decay", 0.0))
        info["rate"] = analyse_steps(
            read_jsonl(self.steps_path), wd, self.settle, self.floor, self.tolerance, self.min_points
        )
        atomic_write_json(self.theory_path, info)
