"""Regenerate the paper's figures: one Hydra multirun per figure -> run directories -> plots ->
claims report.

    make reproduce                                  # MNIST figures, cpu preset (2 cores)
    make reproduce PRESET=smoke                     # the whole pipeline in minutes
    make reproduce PRESET=paper                     # the paper's settings (meant for a GPU)
    make reproduce CIFAR=path/to/cifar10-jpg.tar.gz     # also the CIFAR-10 figures
    make reproduce BEYOND=1                         # also the experiments the paper did not run (--beyond)
    python -m wdcollapse.reproduce --preset cpu --only mlp_mnist --plots-only

Outputs go to outputs/reproduce/<preset>/: runs/<figure>/<overrides>/ (one run directory per
job), figures/*.png|pdf, REPORT.md and report.json, logs/<figure>.log (the multirun's output).
Re-running skips finished runs, resumes killed ones, and re-plots.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import default_data_dir
from .errors import ConfigError
from .figures import BEYOND_LABEL, FigureSweep, beyond_suffix, preset_notice, preset_sweeps
from .io import hold_directory
from .runs import Run, load_runs

TERMINAL = ("finished", "diverged", "failed")
SETTLED = ("finished", "diverged")  # a failed run is tried again when the figure is re-run


def matches_sweep(run: Run, figure: FigureSweep) -> bool:
    """Whether a run directory belongs to the figure's current sweep (old sweeps may linger)."""
    for key, values in figure.sweep.items():
        node = run.get(key)
        allowed = [float(v) if _is_number(v) else v for v in str(values).split(",")]
        value = float(node) if _is_number(node) else node
        if not any(
            value == a or (isinstance(a, float) and isinstance(value, float) and abs(value - a) <= 1e-12 * abs(a))
            for a in allowed
        ):
            return False
    return True


def _is_number(value) -> bool:
    try:
        float(value)
        return not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def figure_runs(out: Path, figure: FigureSweep) -> list[Run]:
    folder = out / "runs" / figure.name
    return [r for r in load_runs(folder) if matches_sweep(r, figure)] if folder.is_dir() else []


def job_overrides(figure: FigureSweep, preset: str, swept: list[str], extra: list[str]) -> list[str]:
    """The settings of one of the figure's jobs, as `wdcollapse-train` composes them: its experiment,
    the preset (unless the figure fixes its own), the swept values (`seed=0`, or the multirun's
    `seed=0,1`), the figure's overrides and `extra` (data_overrides)."""
    preset_choice = [f"preset={preset}"] if figure.use_preset else []
    return [f"experiment={figure.experiment}", *preset_choice, *swept, *figure.overrides, *extra]


def data_overrides(figure: FigureSweep, cifar: list[str] | None) -> list[str]:
    """Where the figure's data is: cifar_overrides for a CIFAR-10 figure (none when not given), else nothing."""
    return (cifar or []) if figure.needs == "cifar10" else []


def settings_changed(runs: list[Run], figure: FigureSweep, preset: str, extra: list[str]) -> list[str]:
    """'figure/run directory: key: saved -> now; ...' for each of the figure's run directories whose
    saved settings differ from what the preset asks of that run now (an edited preset or recipe, an
    older version's sweep): their names match, so a re-run would skip them as done or stop at them,
    and the report would take their numbers for this recipe's. The comparison a resumed job makes
    (rundir.check_same_run: where, how fast and how it is logged may differ, and a setting left to
    the machine, such as bf16 where native, keeps the run's own value)."""
    if not runs:
        return []
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from .config import CONF_DIR, register_resolvers
    from .rundir import config_changes, keep_machine_choices

    register_resolvers()
    changed = []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for run in runs:
            swept = [f"{key}={'null' if run.get(key) is None else run.get(key)}" for key in figure.sweep]
            try:
                cfg = compose("train", overrides=job_overrides(figure, preset, swept, extra))
                with open_dict(cfg):
                    cfg.pop("logger", None)  # resolvable only inside a Hydra job, and free to change anyway
                keep_machine_choices(cfg, run.config)
                changes = config_changes(run.config, OmegaConf.to_container(cfg, resolve=True))
            except (HydraException, OmegaConfBaseException) as e:
                changes = [f"its settings cannot be composed now ({str(e).splitlines()[0]})"]
            if changes:
                shown = "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")
                changed.append(f"{figure.name}/{run.path.name}: {shown}")
    return changed


def check_settings(
    out: Path, figures: list[FigureSweep], runs_of: dict[str, list[Run]], preset: str, cifar: list[str] | None
) -> None:
    """Stop, before anything trains, at run directories of `figures` (`runs_of[name]`: figure_runs)
    trained with other settings than the preset asks now: one line for all of them (settings_changed)."""
    changed = [
        line
        for figure in figures
        for line in settings_changed(runs_of[figure.name], figure, preset, data_overrides(figure, cifar))
    ]
    if changed:
        more = f"; and {len(changed) - 2} more" if len(changed) > 2 else ""
        raise SystemExit(
            f"error: {len(changed)} run(s) in {out / 'runs'} were trained with other settings than the {preset} "
            f"preset asks now ({' | '.join(changed[:2])}{more}): delete those run directories (or the figure's "
            "folder) to train them anew, pass --plots-only to report them as they are, or --out to reproduce "
            "into another folder"
        )


def run_subdir(figure: FigureSweep) -> str:
    """A run directory's name: the values of the figure's swept settings only (`seed=0`), so that
    its fixed overrides cannot make names too long for the file system."""
    return "'" + ",".join(f"{key}=${{{key}}}" for key in figure.sweep) + "'"


def wandb_overrides(figure: FigureSweep, preset: str) -> list[str]:
    """The W&B run of each job carries its figure, preset and swept values as config and tags
    (`seed=0`), so that grouping and filters in W&B rebuild a figure's lines and bands."""
    tags = [f"figure={figure.name}", f"preset={preset}", *(f"{k}=${{{k}}}" for k in figure.sweep)]
    quoted = ",".join(f"'{t}'" for t in tags)
    return [f"+logger.wandb.tags=[{quoted}]", f"+logger.wandb.config={{figure:{figure.name},preset:{preset}}}"]


def multirun_command(figure: FigureSweep, preset: str, sweep_dir: Path, jobs: int, extra: list[str]) -> list[str]:
    swept = [f"{k}={v}" for k, v in figure.sweep.items()]
    return [
        sys.executable,
        "-m",
        "wdcollapse.train",
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={jobs}",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweep.subdir={run_subdir(figure)}",
        f"logger.wandb.group={figure.name}-{preset}",
        *wandb_overrides(figure, preset),
        *job_overrides(figure, preset, swept, extra),
    ]


class Progress(threading.Thread):
    """Prints which runs of a figure are done and running, every `every` seconds."""

    def __init__(self, figure: FigureSweep, out: Path, every: float = 30.0):
        super().__init__(daemon=True)
        self.figure, self.out, self.every = figure, out, every
        self.stop = threading.Event()
        self.start_time = time.time()

    def report(self) -> str:
        runs = figure_runs(self.out, self.figure)
        done = [r for r in runs if r.status in TERMINAL]
        running = [r for r in runs if r.status == "running"]
        times = [r.summary.get("wall_seconds") for r in done if r.summary.get("wall_seconds")]
        per_run = f", {sum(times) / len(times):.0f} s/run" if times else ""
        epochs = ", ".join(f"{r.final.get('epoch', 0)}/{r.config['trainer']['max_epochs']}" for r in running)
        elapsed = time.time() - self.start_time
        return (
            f"[{self.figure.name}] {len(done)}/{self.figure.num_runs} done, {len(running)} running"
            f"{' (epochs ' + epochs + ')' if running else ''}{per_run}, {elapsed / 60:.1f} min"
        )

    def run(self) -> None:
        while not self.stop.wait(self.every):
            print(self.report(), flush=True)


def run_figure(figure: FigureSweep, preset: str, out: Path, jobs: int, extra: list[str], runs: list[Run]) -> bool:
    """Run the figure's multirun unless every run of it (`runs`, its figure_runs before it starts)
    already finished; True on success."""
    sweep_dir = out / "runs" / figure.name
    if len(runs) >= figure.num_runs and all(r.status in SETTLED for r in runs):
        print(f"[{figure.name}] all {figure.num_runs} runs already done: skipping", flush=True)
        return True
    log_path = out / "logs" / f"{figure.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = multirun_command(figure, preset, sweep_dir, jobs, extra)
    print(f"[{figure.name}] {figure.num_runs} runs, {jobs} at a time; log: {log_path}", flush=True)
    progress = Progress(figure, out)
    progress.start()
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        # The multirun and its joblib workers in a process group of their own, ended with this
        # process: a killed reproduction leaves no orphaned worker training on in a run directory.
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait()
        except BaseException:  # stopped (Ctrl-C, SIGTERM): its workers may be training
            stop_group(proc)
            raise
        stop_group(proc, grace=0)  # finished: what is left of the group is idle workers
    progress.stop.set()
    print(progress.report(), flush=True)
    if code != 0:
        print(f"[{figure.name}] the multirun exited with {code}; see {log_path}", file=sys.stderr, flush=True)
    return code == 0


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End `proc`'s process group (the multirun and the workers it started): SIGTERM, then
    SIGKILL after `grace` seconds (a joblib worker outlives SIGTERM: Lightning turns it into an
    exception of the run, and the worker takes the next job). Runs are safe to kill (atomic
    checkpoints and summaries) and resume when the reproduction runs again."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the group is gone: every process of it has ended
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        proc.poll()  # reap the multirun itself, so that only live processes keep the group
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def terminated(signum, frame):
    """SIGTERM ends a reproduction as Ctrl-C does: through its clean-up (stop_group, the lock)."""
    raise SystemExit(128 + signum)


def cifar_overrides(cifar: str | None, data_dir: Path) -> list[str] | None:
    """Overrides that point the CIFAR-10 figures at their data, or None when there is none.
    `cifar` is a JPEG image folder, the cifar10-jpg tarball (extracted once), or `torchvision`
    (the official files under the data directory, downloaded where there is internet)."""
    if not cifar:
        return None
    if cifar == "torchvision":
        return ["data.download=true"]
    path = Path(cifar).resolve()
    if path.is_file():
        from .data.prepare import extract_image_folder

        path = extract_image_folder(path, data_dir / "cifar10-jpg")
    if not (path / "train").is_dir():
        raise SystemExit(
            f"error: --cifar {cifar}: expected a folder with train/ and test/ class folders or the cifar10-jpg tarball"
        )
    return [f"data.image_folder={path}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        default="cpu",
        help="cpu (default), full, smoke or paper: wdcollapse/conf/reproduce/<preset>.yaml",
    )
    parser.add_argument("--out", default=None, help="output folder (default outputs/reproduce/<preset>)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: the preset's)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="train only these figures (the report still covers every figure with runs)",
    )
    parser.add_argument(
        "--cifar",
        default=None,
        help="CIFAR-10 for the CIFAR figures: an image folder, the cifar10-jpg tarball, or 'torchvision'",
    )
    parser.add_argument(
        "--beyond",
        action="store_true",
        help=f"also the figures {BEYOND_LABEL} (the preset's `beyond:` figures: stability, deeper heads, width; "
        "make reproduce BEYOND=1); without it they run only when --only names them",
    )
    parser.add_argument("--plots-only", action="store_true", help="re-plot and re-report from existing runs")
    parser.add_argument(
        "--wandb",
        default="offline",
        choices=("offline", "online", "disabled"),
        help="one W&B run per figure with its images, claims table and REPORT.md (default offline: `wandb sync` later)",
    )
    args = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return reproduce(args)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return reproduce(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def reproduce(args: argparse.Namespace) -> int:
    """Train what the preset's figures still need, then draw, report and log them (main's work)."""
    jobs, every = preset_sweeps(args.preset, beyond=True)
    notice = preset_notice(args.preset)
    jobs = args.jobs or jobs
    out = Path(args.out) if args.out else Path("outputs") / "reproduce" / args.preset
    if args.only is not None:
        unknown = set(args.only) - {f.name for f in every}
        if unknown:
            raise SystemExit(f"error: unknown figure(s) {sorted(unknown)}; choose from {[f.name for f in every]}")
    # The figures beyond the paper take part with --beyond, when --only names them, or (reported, not
    # trained) when the folder already holds their runs; otherwise they are left out, not skipped.
    named = set(args.only or ())
    figures = [f for f in every if not f.beyond or args.beyond or f.name in named or figure_runs(out, f)]
    left_out = [f.name for f in every if f not in figures]
    out.mkdir(parents=True, exist_ok=True)
    try:  # one reproduction per folder at a time: two would train the same runs and mix the report
        lock = hold_directory(
            out, "reproduction folder", "wait for it to end (it resumes when run again), or pass --out"
        )
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        if notice:
            print(f"\n*** {notice}\n", flush=True)
        # --only limits what trains; the figures and the report cover every figure with runs.
        if args.only is None:
            to_run = [f for f in figures if not f.beyond or args.beyond]
        else:
            to_run = [f for f in figures if f.name in args.only]
        cifar = cifar_overrides(args.cifar, default_data_dir())

        start = time.time()
        skipped = {
            f.name: "needs CIFAR-10: pass --cifar DIR|TARBALL|torchvision (make reproduce CIFAR=...)"
            for f in figures
            if f.needs == "cifar10" and cifar is None and not figure_runs(out, f)
        }
        training = [] if args.plots_only else [f for f in to_run if f.name not in skipped]
        existing = {f.name: figure_runs(out, f) for f in training}  # only this process trains into `out`
        check_settings(out, training, existing, args.preset, cifar)  # every figure's old runs, before the first trains
        for figure in training:
            run_figure(figure, args.preset, out, jobs, data_overrides(figure, cifar), existing[figure.name])

        from .report import make_figures, verdict, write_report

        reported = [f for f in figures if f.name not in skipped]
        loaded = {f.name: figure_runs(out, f) for f in reported}  # read every run directory once
        # figures (and their W&B runs) only of what has runs and, with --only, of what this call trained
        plotted = [f for f in reported if loaded[f.name] and (args.only is None or f.name in args.only)]
        made = make_figures(out, plotted, lambda f: loaded[f.name])
        report = write_report(out, args.preset, reported, lambda f: loaded[f.name], skipped, notice=notice)
        if args.wandb != "disabled":
            from .wandb_log import log_figure_runs

            specs = [f.spec for f in plotted]
            judged = {f.name for f in plotted}
            claims = [c for c in report["claims"] if c["figure"] in judged]
            logged = log_figure_runs(out, args.preset, specs, claims, out / "REPORT.md", mode=args.wandb)
            print(f"W&B: {len(logged)} figure runs under {out / 'wandb'} ({args.wandb})")
        print(f"\nfigures: {out / 'figures'} ({len(made)} files)")
        for claim in report["claims"]:
            label = beyond_suffix(claim.get("beyond", False))
            print(
                f"{claim['figure']}, claim {claim['claim']}{label}: {verdict(claim['passed'], 'n/a')}  "
                f"{claim['deciding'] or claim['evidence'].get('why', '')}"
            )
        for name, why in skipped.items():
            print(f"skipped {name}: {why}")
        if left_out:
            print(f"{BEYOND_LABEL}: {', '.join(left_out)} run with --beyond (make reproduce BEYOND=1)")
        print(f"report: {out / 'REPORT.md'}  ({(time.time() - start) / 60:.1f} min)")
        if notice:
            print(f"\n*** {notice}")
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
