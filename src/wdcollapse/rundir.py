"""A run directory's life cycle: create it, resume it, refuse to mix runs, record its status.

A run directory holds config.yaml (the resolved config), metrics.jsonl (one row per evaluated
epoch), grams.json, summary.json (status: running | finished | diverged | failed, the final row,
wall and metric-pass seconds, the W&B id), error.txt for a failed run and checkpoints/last.ckpt.
Only the launching process of rank 0 writes these files (Lightning's DDP launcher starts the
other ranks by re-running the command line into the same directory)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from .errors import ConfigError
from .io import (
    LOCK_FILE,
    atomic_write_json,
    atomic_write_text,
    hold_directory,
    keep_jsonl_rows,
    read_json,
    read_jsonl,
)
from .runfiles import RunFiles

log = logging.getLogger("wdcollapse")
TERMINAL = ("finished", "diverged")
# A run stopped from outside (Ctrl-C; SIGTERM, which Lightning raises at the next step): left as a
# killed run is, status `running`, to resume from its checkpoint; not a failure of the run.
STOPPED = (KeyboardInterrupt, SIGTERMException)


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
        atomic_write_text(RunFiles(out_dir).error, "".join(traceback.format_exception(error)))


def write_summary(out_dir: Path, **fields) -> dict:
    """Merge `fields` into summary.json (rank 0 only: other DDP ranks just get `fields` back)."""
    if launched_rank() != 0:
        return fields
    summary = read_json(RunFiles(out_dir).summary, default={}) | fields
    summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(RunFiles(out_dir).summary, summary)
    return summary


def launched_rank() -> int:
    """This process's global rank as its launcher set it (Lightning's DDP launcher starts
    ranks > 0 by re-running the command line with LOCAL_RANK/NODE_RANK set; torchrun and SLURM
    set RANK/SLURM_PROCID); 0 in a single-process run. Known before the Trainer exists, so
    that only rank 0 touches the run directory's files."""
    return int(rank_zero_only.rank or 0)


def resume_checkpoint(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint this run continues from: checkpoints/last.ckpt unless resume=never."""
    ckpt = RunFiles(out_dir).checkpoint
    return ckpt if cfg.resume != "never" and ckpt.exists() else None


def prepare(cfg: DictConfig, out_dir: Path) -> dict | None:
    """Make `out_dir` ready for `cfg`'s run (rank 0; other DDP ranks find it ready): refuse a
    directory that holds a run with other settings, continue a killed run from its checkpoint or
    start it over, and save the config. Returns the summary of a run finished already (resume=auto:
    nothing to do), else None."""
    if launched_rank() != 0:
        return None
    files = RunFiles(out_dir)
    previous = read_json(files.summary) or {}
    finished = previous.get("status") in TERMINAL
    ckpt = resume_checkpoint(cfg, out_dir)
    if cfg.resume == "auto" and (finished or ckpt):
        check_same_run(cfg, files.config)
    if finished and cfg.resume == "auto":
        log.info("%s already %s; skipping", out_dir, previous["status"])
        return previous
    if ckpt is None:
        # What a run killed before its first checkpoint (or an older run) left cannot be continued:
        # its summary goes too, so the new run neither keeps its start time nor adds to its seconds.
        for stale in files.restarted():
            stale.unlink(missing_ok=True)
    else:
        try:
            done = completed_epochs(ckpt)
        except ConfigError as e:  # an unreadable checkpoint: the run is stuck until someone acts
            record_failure(out_dir, e)
            raise
        # A kill between a metrics line and the checkpoint leaves rows the resumed run redoes.
        keep_jsonl_rows(files.metrics, lambda row: row["epoch"] <= done)
        log.info("resuming %s from epoch %d", out_dir, done)
    atomic_write_text(files.config, OmegaConf.to_yaml(cfg, resolve=True))
    return None


@dataclass
class Segment:
    """One process's stretch of work in a run directory that `prepare` made ready: a fresh run, or
    the continuation of a killed one, up to `finish`. Everything it knows it reads from the
    directory: after `prepare`, a checkpoint and a summary are there only when the run continues."""

    out_dir: Path
    fresh: bool = True  # the directory held no run before this segment (config.yaml absent)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.files = RunFiles(self.out_dir)
        # The summary of the segments before this one (rank 0), or the one rank 0 wrote (ranks > 0)
        self.previous: dict = read_json(self.files.summary) or {}
        self.ckpt: Path | None = self.files.checkpoint if self.files.checkpoint.exists() else None

    @contextmanager
    def outcome(self, refusals: tuple = ()):
        """How an error inside ends the segment: one of `refusals` (a setting or the data, before
        training) leaves the directory as `refused` says; a stop from outside (STOPPED) leaves it as
        a killed run is, `running` and resumable; any other error marks the run `failed` with
        error.txt, keeping what it computed (its rows and checkpoint)."""
        try:
            yield
        except refusals:
            self.refused()
            raise
        except STOPPED:
            raise
        except BaseException as e:
            record_failure(self.out_dir, e)
            raise

    def refused(self) -> None:
        """A setting or the data refused this run before training started: a fresh directory loses
        what `prepare` wrote (it holds nothing computed); a resumed one stays as it was (no `failed`)."""
        if self.fresh and launched_rank() == 0:
            for path in (self.files.config, *self.files.restarted()):
                path.unlink(missing_ok=True)
            shutil.rmtree(self.files.wandb, ignore_errors=True)

    def running(self, **fields) -> dict:
        """summary.json status `running`; a resumed run keeps its start time."""
        started = self.previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S")
        return write_summary(self.out_dir, status="running", **fields, started=started)

    def finish(self, status: str, metric_seconds: float | None, **extra) -> dict:
        """summary.json with the final status and row; seconds add up over resumed segments."""
        rows = read_jsonl(self.files.metrics)
        wall = (self.previous.get("wall_seconds") or 0.0) + time.time() - self.started
        metric = None if metric_seconds is None else (self.previous.get("metric_seconds") or 0.0) + metric_seconds
        return write_summary(
            self.out_dir,
            status=status,
            epochs=rows[-1]["epoch"] if rows else 0,
            final=rows[-1] if rows else {},
            wall_seconds=round(wall, 2),
            metric_seconds=None if metric is None else round(metric, 2),
            **extra,
        )


def execute(cfg: DictConfig, out_dir: str | Path, build: Callable, refusals: tuple = (ConfigError,)) -> dict:
    """One segment of the run in `out_dir`, from its lock to its summary: the whole life cycle of a
    run directory is here. `build(cfg, segment)` makes the job (an object with `identity`, the
    summary's fields while it runs, and `fit()` -> (status, extra fields, metric seconds)).
    Returns the run's summary; a run finished already is skipped (resume=auto). An error ends the
    segment as `Segment.outcome` says (an error of `refusals` counts only while building: nothing
    was trained yet); the directory's lock is released whatever happens.

    One process per run directory: a second one (a second terminal, a requeued job) is refused
    while the first lives. Ranks > 0 of a DDP run, started by rank 0 inside trainer.fit with the
    same command line, share rank 0's directory and its lock, and write none of its files."""
    out_dir = check_writable(out_dir)
    lock = None
    if launched_rank() == 0:
        lock = hold_directory(
            out_dir,
            "run directory",
            "wait for that run to end (it resumes from here if killed), or choose another hydra.run.dir",
        )
    try:
        fresh = not RunFiles(out_dir).config.exists()
        done = prepare(cfg, out_dir)
        if done is not None:
            return done
        segment = Segment(out_dir, fresh=fresh)
        with segment.outcome(refusals):
            job = build(cfg, segment)
        segment.running(**job.identity)
        with segment.outcome():
            status, extra, metric_seconds = job.fit()
        return segment.finish(status, metric_seconds=metric_seconds, **extra)
    finally:
        if lock is not None:
            lock.release()


def check_writable(directory: str | Path) -> Path:
    """Create `directory` if needed and prove a file can be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"output directory {str(directory)!r} cannot be written ({e.strerror}); "
            "choose another with hydra.run.dir=... (or hydra.sweep.dir=... for -m)"
        ) from None
    return directory


def discard_unused(out_dir: Path, hydra_log: str | None = None) -> bool:
    """Remove `out_dir` when it holds nothing but what Hydra and a refused start put there (Hydra's
    `.hydra/` and job log, the directory's lock), and then its parents that this left empty, up to
    the current directory. Returns whether it was removed. A directory with anything else in it
    (a run's files) is left alone."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return False
    ours = {".hydra", LOCK_FILE} | ({hydra_log} if hydra_log else set())
    if set(os.listdir(out_dir)) - ours:
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    cwd, parent = Path.cwd().absolute(), out_dir.absolute().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def nearest_existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_override(key: str, value: str) -> None:
    """Hydra creates its output directory before our code runs; check a `hydra.run.dir=` or
    `hydra.sweep.dir=` override (its parsed value) up front by creating it and a file in it,
    so an unwritable one gets a message, not a traceback. (Permission bits alone do not tell:
    root may "write" to /proc.) A value with an interpolation is Hydra's to resolve."""
    if "${" in value:
        return
    target = Path(value)
    try:
        check_writable(target)
    except ConfigError:
        raise ConfigError(
            f"{key}={target} cannot be created or written (nearest existing folder: "
            f"{nearest_existing_parent(target)}); choose another output directory"
        ) from None


# Settings a resumed run may change: where things are, how fast, how it is logged; not what is
# trained or measured. (callbacks.metrics.exact changes the metrics' rounding only, ~1e-7.)
RESUMABLE_CHANGES = (
    "resume",
    "threads",
    "compile",
    "channels_last",
    "steps_per_call",
    "logger",
    "paths",
    "data.root",
    "data.download",
    "data.image_folder",
    "data.eval_chunk",
    "trainer.accelerator",
    "trainer.log_every_n_steps",
    "callbacks.metrics.exact",
    "objective",  # what the run returns to a sweeper, read from its files after training
)


# Settings a config may leave to the machine through a resolver, and the values the resolver gives:
# a run keeps the value it started with (a bf16 run of a machine with native bf16 stays a bf16 run).
MACHINE_RESOLVED = {"trainer.precision": ("${bf16_where_native:", ("bf16-mixed", "32-true"))}


def keep_machine_choices(cfg: DictConfig, saved: dict) -> None:
    """Where `cfg` leaves a setting to the machine (MACHINE_RESOLVED) and the `saved` config of a run
    holds one of that resolver's values, set `cfg`'s to the saved one: the run continues (or counts
    as done) with what its own machine chose, not what this machine would."""
    raw, old = _flatten(OmegaConf.to_container(cfg, resolve=False)), _flatten(saved)
    for key, (resolver, values) in MACHINE_RESOLVED.items():
        if str(raw.get(key, "")).startswith(resolver) and old.get(key) in values:
            OmegaConf.update(cfg, key, old[key])


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def config_changes(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every setting both configs hold that differs, apart from
    RESUMABLE_CHANGES (settings added to the package since `saved` was written are not compared)."""
    old, new = _flatten(saved), _flatten(current)
    free = lambda key: any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES)  # noqa: E731
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k] and not free(k)
    ]


def check_same_run(cfg: DictConfig, saved_config: Path) -> None:
    """Refuse to continue (or skip as done) the run saved in `saved_config`'s directory with
    other settings: its checkpoint and metrics would be mixed with, or taken for, this run's. A
    setting left to the machine keeps the run's own value (keep_machine_choices: `cfg` changes)."""
    if not saved_config.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_config), resolve=False)
    keep_machine_choices(cfg, saved)
    changes = config_changes(saved, OmegaConf.to_container(cfg, resolve=True))
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise ConfigError(
            f"{saved_config.parent} holds a run with other settings ({shown}): rerun it with its own settings, "
            "choose another hydra.run.dir, or pass resume=never to start it over with these"
        )


class SweepSummary(Callback):
    """After a multirun, one line with how its jobs ended (a failed job does not change the
    exit code: the other jobs' results stand), e.g. `4 jobs: 2 finished, 1 diverged, 1 failed`."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = [job for job in sorted(sweep_dir.iterdir()) if job.is_dir()] if sweep_dir.is_dir() else []
        statuses = Counter(read_json(RunFiles(job).summary, default={}).get("status", "no summary") for job in jobs)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        hint = " (see their summary.json and error.txt)" if statuses["failed"] else ""
        print(f"sweep {sweep_dir}: {sum(statuses.values())} jobs: {counts or 'none ran'}{hint}", file=sys.stderr)
