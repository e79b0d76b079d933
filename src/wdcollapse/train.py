"""Train one network and record its neural-collapse metrics, per layer, every epoch.

    wdcollapse-train                                    # 6 ReLU + 3 linear MLP on MNIST
    wdcollapse-train model.nonlinear_depth=6 model.linear_depth=3 optim.weight_decay=1.8e-3 seed=0
    wdcollapse-train experiment=mlp_mnist preset=cpu    # a paper figure's run at CPU scale
    wdcollapse-train -m seed=0,1,2 hydra/launcher=joblib   # a sweep, jobs in parallel
    wdcollapse-train -m search=mlp_recipe               # a recipe search: Optuna reads each run's objective
    wdcollapse-train hydra.run.dir=outputs/my_run       # choose the run directory

A run directory holds config.yaml (the resolved config), metrics.jsonl (one JSON object per
evaluated epoch), grams.json, summary.json (status and final metrics), checkpoints/last.ckpt
and wandb/ (an offline W&B run; `wandb sync <dir>` uploads it). Re-running the same command
with the same run directory resumes a killed run and skips a finished one (resume=auto).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import secrets
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from . import objective, rundir
from .callbacks import Diverged, MetricMonitor
from .config import CONFIG_PATH, ConfigError, check_command_line, check_config, register_resolvers
from .data.errors import DataCorruptError, DataNotFoundError
from .interfaces import MeasuredNetwork, MetricData, missing
from .rundir import launched_rank, write_summary
from .schema import OWN_DATA, OWN_MODELS

log = logging.getLogger("wdcollapse")


def is_wandb(logger_cfg: DictConfig) -> bool:
    return str(logger_cfg.get("_target_", "")).endswith("WandbLogger")


def logger_kwargs(logger_cfg: DictConfig, wandb_id: str | None) -> dict:
    """W&B's run id for an online WandbLogger without one: the run directory's, so that a
    resumed run continues its W&B run. Not offline: W&B cannot resume offline runs, and
    `wandb sync` of two offline runs with one id keeps only one of them."""
    modes = {str(m).lower() for m in (logger_cfg.get("mode"), os.environ.get("WANDB_MODE"))}
    offline = bool(logger_cfg.get("offline", False)) or bool(modes & {"offline", "dryrun"})
    chosen = logger_cfg.get("id") is not None or logger_cfg.get("version") is not None
    return {"id": wandb_id} if is_wandb(logger_cfg) and wandb_id and not chosen and not offline else {}


def wandb_run_id(cfg: DictConfig, previous: dict) -> str | None:
    """The W&B id this segment's online WandbLogger takes: the run's earlier one (`previous`, the
    summary of the segments before; ranks > 0 read the id rank 0 wrote), else a new one; None when
    no logger takes it (offline, an id of the config's own, or no W&B): W&B picks its own."""
    wandb_id = previous.get("wandb_id") or secrets.token_hex(8)
    return wandb_id if any(logger_kwargs(c, wandb_id) for c in (cfg.logger or {}).values()) else None


def takes(target: str, argument: str) -> bool:
    """Whether the class or function `target` (a dotted path) takes the keyword `argument`."""
    return argument in inspect.signature(get_object(target)).parameters


def build_callbacks(cfg: DictConfig, out_dir: Path) -> list[pl.Callback]:
    """cfg.callbacks' nodes, in order, each built by Hydra; one that takes `out_dir` gets the run
    directory. (Lightning runs checkpoint callbacks after the others, whatever their place.)"""
    callbacks = []
    for node in (cfg.callbacks or {}).values():
        if node is None:
            continue
        where = {"out_dir": str(out_dir)} if takes(node._target_, "out_dir") else {}
        callbacks.append(instantiate(node, **where))
    return callbacks


def build_trainer(cfg: DictConfig, out_dir: Path, wandb_id: str | None = None) -> tuple[pl.Trainer, MetricMonitor]:
    callbacks = build_callbacks(cfg, out_dir)
    monitor = next(c for c in callbacks if isinstance(c, MetricMonitor))
    # _convert_="all": W&B's init takes plain dicts and lists (its tags, its config), not DictConfig
    loggers = [instantiate(c, _convert_="all", **logger_kwargs(c, wandb_id)) for c in (cfg.logger or {}).values()]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = pl.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=True,  # our AtomicCheckpoint is the only checkpoint callback
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    return trainer, monitor


def finish_loggers(trainer: pl.Trainer | None) -> None:
    """Close the W&B run so the next job of a multirun (same process) starts its own."""
    for logger in getattr(trainer, "loggers", []) or []:
        logger.finalize("success")
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def raised_in_own_code(error: BaseException, target: str | None) -> bool:
    """Whether `error` was raised inside the module of a user's class `target` (not this package's
    own: those are checked by the schema, so what they raise is about a setting): any frame of its
    traceback in that module's file (or package)."""
    if not target or target in OWN_DATA + OWN_MODELS or "." not in target:
        return False
    module = sys.modules.get(target.rsplit(".", 1)[0])
    source = getattr(module, "__file__", None)
    if not source:
        return False
    root = Path(source).parent if Path(source).name == "__init__.py" else Path(source)
    frames = traceback.extract_tb(error.__traceback__)
    return any(Path(f.filename) == root or root in Path(f.filename).parents for f in frames)


@contextlib.contextmanager
def from_setting(group: str, target: str | None = None):
    """An error while building `group` from its settings (a value the schema cannot judge, such as
    Lightning's trainer.devices=3 on a 2-device machine) as a one-line ConfigError. An error raised
    inside a user's own class (`target`, the group's `_target_`) is a bug to find, not a setting:
    it keeps its traceback, with a note saying which class was being built."""
    try:
        yield
    except (ValueError, TypeError, MisconfigurationException, InstantiationException) as e:
        if isinstance(e, ConfigError):
            raise
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        if raised_in_own_code(cause, target):
            if hasattr(cause, "add_note"):
                cause.add_note(f"(raised by your own {group}._target_={target} while wdcollapse built it)")
            raise cause  # noqa: B904 (the user's traceback is the one to read)
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{group}: {first} (check the {group}.* settings)") from None


def require_interface(obj, protocol, group: str) -> None:
    """A ConfigError naming what a user's class built from `group`'s `_target_` lacks."""
    lacking = missing(obj, protocol)
    if lacking:
        raise ConfigError(
            f"{group}._target_={type(obj).__module__}.{type(obj).__qualname__} lacks {lacking}: a {group} must "
            f"be a wdcollapse.interfaces.{protocol.__name__} (see that module and README, 'Your own model or data')"
        )


REFUSALS = (ConfigError, DataNotFoundError, DataCorruptError)  # a setting or the data: one line, exit 2


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train as `cfg` says into `out_dir`; returns the run's summary. The run directory's life
    cycle is rundir.execute's (its lock, resume, summary, a refusal's clean-up); this module only
    builds the job from the config's nodes (`build`) and fits it (`Job.fit`). Callable in-process:
    tests compose a config and call run(cfg, tmp_path)."""
    check_config(cfg)
    return rundir.execute(cfg, out_dir, build, refusals=REFUSALS)


@dataclass
class Job:
    """What `build` made of the config for one segment: fit() trains it and says how it ended."""

    trainer: pl.Trainer
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    monitor: MetricMonitor
    ckpt: Path | None
    identity: dict  # name, seed, num_train: summary.json's while running

    def fit(self) -> tuple[str, dict, float]:
        """(status, extra summary fields, metric-pass seconds): finished, or diverged at an epoch."""
        try:
            self.trainer.fit(self.module, datamodule=self.datamodule, ckpt_path=str(self.ckpt) if self.ckpt else None)
            return "finished", {}, self.monitor.metric_seconds
        except Diverged as e:
            log.warning("%s: %s", self.monitor.out_dir, e)
            return "diverged", {"diverged_epoch": e.epoch, "diverged_step": e.step}, self.monitor.metric_seconds
        finally:
            finish_loggers(self.trainer)


def build(cfg: DictConfig, segment: rundir.Segment) -> Job:
    """The data module, the network, the LightningModule (the config's `module` node, with the
    network just built), the callbacks and loggers and the Trainer, for `segment`'s directory.
    An error of a setting or of the data is a one-line ConfigError (`from_setting`)."""
    torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(int(cfg.seed), verbose=False)
    trainer = None
    wandb_id = wandb_run_id(cfg, segment.previous)
    try:
        own_data = cfg.data._target_ in OWN_DATA  # a data module of the user's own groups no steps
        with from_setting("data", cfg.data._target_):
            steps = {"steps_per_call": int(cfg.steps_per_call)} if own_data else {}
            datamodule = instantiate(cfg.data, **steps)
            datamodule.setup("fit")
            require_interface(datamodule, MetricData, "data")
        with from_setting("model", cfg.model._target_):
            net = instantiate(cfg.model)
            require_interface(net, MeasuredNetwork, "model")
        with from_setting("optim"):
            module = instantiate(cfg.module, net=net)  # the checked network, not a second one
        with from_setting("trainer"):
            trainer, monitor = build_trainer(cfg, segment.out_dir, wandb_id)
    except BaseException:
        finish_loggers(trainer)
        raise
    identity = {"name": cfg.name, "seed": int(cfg.seed), "num_train": datamodule.num_train}
    if any(is_wandb(c) for c in (cfg.logger or {}).values()):
        identity["wandb_id"] = wandb_id  # null when W&B chose the id (offline: `wandb sync` shows it)
    return Job(trainer, module, datamodule, monitor, segment.ckpt, identity)


def launches_ddp_processes(cfg: DictConfig) -> bool:
    """Whether Lightning would start further processes by re-running this command line (DDP
    over several devices, not started by an external launcher that sets RANK/SLURM_PROCID)."""
    trainer = cfg.get("trainer", {})
    strategy = str(trainer.get("strategy", "auto"))
    devices = trainer.get("devices", 1)
    several = str(devices) not in ("1", "[0]") and devices != [0]
    return strategy.startswith("ddp") and several and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ


def _not_litlogger(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def quiet_third_party_noise() -> None:
    """At the start of every training job (not on import: a multirun's workers run the job
    function without importing this module, since Hydra's joblib launcher pickles it by value
    from `python -m wdcollapse.train`'s __main__). The module logs nothing per step (the metric
    callback logs per epoch), so the step-logging interval does not matter; Lightning 2.6 uses a
    torch API that torch deprecates and advertises its cloud logger; alembic (Optuna's study
    storage) logs each plugin it loads. Idempotent. (Its note on checkpoints saved without
    `weights_only` is avoided at the source: AtomicCheckpoint passes it.)"""
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_not_litlogger)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | list[float] | None:
    """One training job; returns its objective (`objective.names`, wdcollapse.objective: one value
    or a list, None when unset) for a sweeper that reads it. A job of a multirun that fails or is
    refused returns `objective.failed` and the sweep goes on."""
    quiet_third_party_noise()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if multirun and launches_ddp_processes(cfg):
            raise ConfigError(
                f"trainer.strategy={cfg.trainer.strategy} with trainer.devices={cfg.trainer.devices} in a "
                "multirun (-m): Lightning's DDP launcher starts the other ranks by re-running the command "
                "line, which would re-launch the sweep; run DDP jobs one at a time (no -m) with an "
                "explicit hydra.run.dir, or let SLURM/torchrun start the processes"
            )
        summary = run(cfg, out_dir)
        if launched_rank() == 0:
            log.info("%s: %s (epoch %s)", out_dir, summary.get("status"), summary.get("epochs"))
    except REFUSALS as e:
        print(f"error: {e}", file=sys.stderr)
        if not multirun:
            # nothing is left behind: Hydra's .hydra/ and job log in a directory with no run in it go
            rundir.discard_unused(out_dir, f"{HydraConfig.get().job.name}.log")
            sys.exit(2)
        # One bad combination of a sweep costs that job only; the report shows it as failed.
        with contextlib.suppress(OSError):
            write_summary(out_dir, status="failed", error=str(e))
    except Exception as e:
        if not multirun:
            raise
        # One failed job must not end the sweep: run() recorded it in summary.json and error.txt.
        print(f"error: run {out_dir} failed: {type(e).__name__}: {e} (see error.txt)", file=sys.stderr)
    # a sweeper's value: a refused or failed job's is objective.failed (its summary says `failed`)
    return objective.returned(out_dir, cfg.get("objective")) if launched_rank() == 0 else None


def main() -> None:
    register_resolvers()
    try:
        check_command_line(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
