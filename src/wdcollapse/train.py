"""Train one network and record its neural-collapse metrics, per layer, every epoch.

    wdcollapse-train                                    # 6 ReLU + 3 linear MLP on MNIST
    wdcollapse-train model.nonlinear_depth=6 model.linear_depth=3 optim.weight_decay=1.8e-3 seed=0
    wdcollapse-train experiment=mlp_mnist preset=cpu    # a paper figure's run at CPU scale
    wdcollapse-train -m seed=0,1,2 hydra/launcher=joblib   # a sweep, jobs in parallel
    wdcollapse-train hydra.run.dir=outputs/my_run       # choose the run directory

A run directory holds config.yaml (the resolved config), metrics.jsonl (one JSON object per
evaluated epoch), grams.json, summary.json (status and final metrics), checkpoints/last.ckpt
and wandb/ (an offline W&B run; `wandb sync <dir>` uploads it). Re-running the same command
with the same run directory resumes a killed run and skips a finished one (resume=auto).
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .callbacks import AtomicCheckpoint, Diverged, DivergenceGuard, MetricMonitor, last_checkpoint
from .config import (REPO_ROOT, ConfigError, check_config, check_group_choices, check_output_override, check_same_run,
                     check_writable, register_resolvers)
from .data.errors import DataCorruptError, DataNotFoundError
from .io import atomic_write_json, atomic_write_text, keep_jsonl_rows, read_json, read_jsonl
from .module import CollapseModule

log = logging.getLogger("wdcollapse")
# Lightning's advertisement for its cloud logger, and a note on every checkpoint load.
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage())
logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)
TERMINAL = ("finished", "diverged")
CONF_DIR = str(REPO_ROOT / "conf")


def completed_epochs(ckpt: Path) -> int:
    """Epochs finished when `ckpt` was written (it is saved at the end of an epoch)."""
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]) + 1
    except Exception as e:  # truncated, not a checkpoint, another format: torch raises many kinds
        raise ConfigError(
            f"{ckpt} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "metrics.jsonl is kept as it is. Restore the file, or pass resume=never to start the run over"
        ) from None


def record_failure(out_dir: Path, error: BaseException) -> None:
    """summary.json status `failed` with the error, and its traceback in error.txt (rank 0)."""
    write_summary(out_dir, status="failed", error=f"{type(error).__name__}: {error}")
    if launched_rank() == 0:
        atomic_write_text(out_dir / "error.txt", "".join(traceback.format_exception(error)))


def write_summary(out_dir: Path, **fields) -> dict:
    """Merge `fields` into summary.json (rank 0 only: other DDP ranks just get `fields` back)."""
    if launched_rank() != 0:
        return fields
    summary = read_json(out_dir / "summary.json", default={}) | fields
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def launched_rank() -> int:
    """This process's global rank as its launcher set it (Lightning's DDP launcher starts
    ranks > 0 by re-running the command line with LOCAL_RANK/NODE_RANK set; torchrun and SLURM
    set RANK/SLURM_PROCID); 0 in a single-process run. Known before the Trainer exists, so
    that only rank 0 touches the run directory's files."""
    return int(rank_zero_only.rank or 0)


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint this run continues from: checkpoints/last.ckpt unless resume=never."""
    ckpt = last_checkpoint(out_dir)
    return ckpt if cfg.resume != "never" and ckpt.exists() else None


def prepare_run_dir(cfg: DictConfig, out_dir: Path) -> Path | None:
    """Make `out_dir` ready for this run; returns the checkpoint to resume from, if any."""
    ckpt = resume_checkpoint(cfg, out_dir)
    metrics_path = out_dir / "metrics.jsonl"
    if ckpt is None:
        # What a run killed before its first checkpoint (or an older run) left cannot be continued.
        for stale in (metrics_path, last_checkpoint(out_dir), out_dir / "summary.json", out_dir / "error.txt",
                      out_dir / "grams.json"):
            stale.unlink(missing_ok=True)
        return None
    done = completed_epochs(ckpt)
    # A kill between a metrics line and the checkpoint leaves rows the resumed run redoes.
    keep_jsonl_rows(metrics_path, lambda row: row["epoch"] <= done)
    log.info("resuming %s from epoch %d", out_dir, done)
    return ckpt


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


def build_trainer(cfg: DictConfig, out_dir: Path, wandb_id: str | None = None) -> tuple[pl.Trainer, MetricMonitor]:
    monitor = instantiate(cfg.callbacks.metrics, out_dir=str(out_dir))
    checkpoint = AtomicCheckpoint(last_checkpoint(out_dir).parent, cfg.callbacks.checkpoint_every_n_epochs)
    # The guard first: a diverged epoch ends before the metric pass sees its weights.
    callbacks = [DivergenceGuard(), monitor, checkpoint]
    if cfg.callbacks.get("theory_gd") is not None:  # experiment=theory_gd: Theorem 4.4's setting
        callbacks.insert(2, instantiate(cfg.callbacks.theory_gd, out_dir=str(out_dir)))
    loggers = [instantiate(c, **logger_kwargs(c, wandb_id)) for c in cfg.logger.values()] if cfg.logger else []
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


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train as `cfg` says into `out_dir`; returns the run's summary."""
    check_config(cfg)
    out_dir = check_writable(out_dir)
    # Under DDP, ranks > 0 are started by rank 0 inside trainer.fit, with the same command line
    # and run directory: only rank 0 prepares the directory and writes config, summary and
    # error files (the metric callback and the checkpoint also write on rank 0 only).
    main_rank = launched_rank() == 0
    previous = read_json(out_dir / "summary.json") or {}
    finished = previous.get("status") in TERMINAL
    if main_rank and cfg.resume == "auto" and (finished or resume_checkpoint(cfg, out_dir)):
        check_same_run(cfg, out_dir / "config.yaml")
    if main_rank and finished and cfg.resume == "auto":
        log.info("%s already %s; skipping", out_dir, previous["status"])
        return previous
    if main_rank:
        try:
            ckpt = prepare_run_dir(cfg, out_dir)
        except ConfigError as e:  # an unreadable checkpoint: the run is stuck until someone acts
            record_failure(out_dir, e)
            raise
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    else:  # rank 0 has prepared the directory already; resume from the same checkpoint
        ckpt = resume_checkpoint(cfg, out_dir)
    resumed = previous if ckpt else {}  # a resumed run keeps its start time and adds to its seconds
    # ... and its W&B run when online (ranks > 0 take the id rank 0 wrote before starting them)
    wandb_id = (resumed if main_rank else previous).get("wandb_id") or secrets.token_hex(8)
    loggers = list((cfg.logger or {}).values())
    if not any(logger_kwargs(c, wandb_id) for c in loggers):
        wandb_id = None  # W&B picks its own id (offline, or the config's), or there is no W&B
    # Recorded when W&B logs this segment (null when under an id of its own); kept with no W&B.
    wandb_record = {"wandb_id": wandb_id} if any(is_wandb(c) for c in loggers) else {}

    torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(int(cfg.seed), verbose=False)
    start = time.time()
    trainer = None
    try:
        datamodule = instantiate(cfg.data, steps_per_call=int(cfg.steps_per_call))
        try:
            datamodule.setup()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        module = CollapseModule(instantiate(cfg.model), cfg.loss.name, cfg.loss.mse_reduction,
                                optim=OmegaConf.to_container(cfg.optim, resolve=True),
                                compile=bool(cfg.compile), channels_last=bool(cfg.channels_last))
        write_summary(out_dir, status="running", name=cfg.name, seed=int(cfg.seed), num_train=datamodule.num_train,
                      started=resumed.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S"),
                      **wandb_record)
        trainer, monitor = build_trainer(cfg, out_dir, wandb_id)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
        status, extra = "finished", {}
    except Diverged as e:
        log.warning("%s: %s", out_dir, e)
        status, extra = "diverged", {"diverged_epoch": e.epoch, "diverged_step": e.step}
    except BaseException as e:
        record_failure(out_dir, e)
        raise
    finally:
        finish_loggers(trainer)
    rows = read_jsonl(out_dir / "metrics.jsonl")
    return write_summary(
        out_dir, status=status, epochs=rows[-1]["epoch"] if rows else 0,
        final=rows[-1] if rows else {}, wall_seconds=round((resumed.get("wall_seconds") or 0.0) + time.time() - start, 2),
        metric_seconds=round((resumed.get("metric_seconds") or 0.0) + monitor.metric_seconds, 2) if trainer else None,
        **extra,
    )


def launches_ddp_processes(cfg: DictConfig) -> bool:
    """Whether Lightning would start further processes by re-running this command line (DDP
    over several devices, not started by an external launcher that sets RANK/SLURM_PROCID)."""
    trainer = cfg.get("trainer", {})
    strategy = str(trainer.get("strategy", "auto"))
    devices = trainer.get("devices", 1)
    several = str(devices) not in ("1", "[0]") and devices != [0]
    return strategy.startswith("ddp") and several and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ


class SweepSummary(Callback):
    """After a multirun, one line with how its jobs ended (a failed job does not change the
    exit code: the other jobs' results stand), e.g. `4 jobs: 2 finished, 1 diverged, 1 failed`."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = [job for job in sorted(sweep_dir.iterdir()) if job.is_dir()] if sweep_dir.is_dir() else []
        statuses = Counter(read_json(job / "summary.json", default={}).get("status", "no summary") for job in jobs)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        hint = " (see their summary.json and error.txt)" if statuses["failed"] else ""
        print(f"sweep {sweep_dir}: {sum(statuses.values())} jobs: {counts or 'none ran'}{hint}", file=sys.stderr)


def quiet_lightning_warnings() -> None:
    """In a training job (not on import): the module logs nothing per step (the metric callback
    logs per epoch), so the step-logging interval does not matter; and Lightning 2.6 uses a
    torch API that torch deprecates."""
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    quiet_lightning_warnings()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if multirun and launches_ddp_processes(cfg):
            raise ConfigError(
                f"trainer.strategy={cfg.trainer.strategy} with trainer.devices={cfg.trainer.devices} in a "
                "multirun (-m): Lightning's DDP launcher starts the other ranks by re-running the command "
                "line, which would re-launch the sweep; run DDP jobs one at a time (no -m) with an "
                "explicit hydra.run.dir, or let SLURM/torchrun start the processes")
        summary = run(cfg, out_dir)
        if launched_rank() == 0:
            log.info("%s: %s (epoch %s)", out_dir, summary.get("status"), summary.get("epochs"))
    except (ConfigError, DataNotFoundError, DataCorruptError) as e:
        print(f"error: {e}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        # One bad combination of a sweep costs that job only; the report shows it as failed.
        with contextlib.suppress(OSError):
            write_summary(out_dir, status="failed", error=str(e))
    except Exception as e:
        if not multirun:
            raise
        # One failed job must not end the sweep: run() recorded it in summary.json and error.txt.
        print(f"error: run {out_dir} failed: {type(e).__name__}: {e} (see error.txt)", file=sys.stderr)


def main() -> None:
    register_resolvers()
    try:
        check_group_choices(sys.argv[1:])
        check_output_override(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
