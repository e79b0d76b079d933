"""What W&B receives: per run, every metric against the epoch with the class-mean Gram matrices
of the linear head as images; per figure (wdcollapse-reproduce), one run of job type `figure`
with the figure's images, its claim verdicts as a table and REPORT.md as an artifact.

Offline by default: everything is written under the run or reproduction directory and reaches
W&B unchanged with `wandb sync`."""

from __future__ import annotations

import io as _io
from pathlib import Path

from . import keys

FIGURE_JOB_TYPE = "figure"
GRAM_IMAGE = "gram/linear_head"  # the paper's three class-mean Gram matrices (the report's figure)


def is_wandb_logger(logger) -> bool:
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def _image(fig):
    """A wandb.Image of a matplotlib figure (rendered to PNG here: no plotly needed)."""
    import matplotlib.pyplot as plt
    import wandb
    from PIL import Image

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    return wandb.Image(Image.open(buf))


class RunLog:
    """Logs one run's metric rows to a WandbLogger's run: `epoch` is the step metric of every
    key (define_metric), so resumed, DDP and many-steps-per-call runs plot the same curves; the
    paper's Gram matrices go along as `gram/<key>` images."""

    def __init__(self, logger, nonlinear_depth: int, num_layers: int):
        self.logger = logger
        self.gram_names = keys.paper_grams(nonlinear_depth, num_layers)
        self.defined: set[str] = set()

    def log(self, record: dict, grams: dict) -> None:
        from .plots.training import gram_figure

        run = self.logger.experiment
        images = {}
        if any(name in grams for name in self.gram_names):
            images[GRAM_IMAGE] = _image(gram_figure(grams, self.gram_names, record[keys.EPOCH]))
        new = [key for key in (*record, *images) if key not in self.defined]
        if keys.EPOCH in new:  # the step metric first
            run.define_metric(keys.EPOCH)
        for key in new:
            if key != keys.EPOCH:
                run.define_metric(key, step_metric=keys.EPOCH)
        self.defined.update(new)
        # WandbLogger steps every key by trainer/global_step (step_sync): the row carries its own
        run.log({**record, **images, "trainer/global_step": record[keys.STEP]})


def log_figure_runs(
    out: Path,
    preset: str,
    figures,
    decided: list[dict],
    report_md: Path,
    project: str = "wdcollapse",
    mode: str = "offline",
) -> list[Path]:
    """One W&B run per figure, in the figure's group, of job type `figure`: the figure's PNGs,
    its claims as a table (figure, claim, passed, deciding numbers, rule) and REPORT.md as an
    artifact. Returns the runs' directories."""
    import wandb

    made = []
    columns = ["figure", "claim", "passed", "deciding", "rule"]
    for spec in figures:
        pngs = sorted((out / "figures").glob(f"{spec.name}*.png"))
        rows = [d for d in decided if d.get("figure") == spec.name]
        if not pngs and not rows:
            continue
        run = wandb.init(
            project=project,
            group=f"{spec.name}-{preset}",
            job_type=FIGURE_JOB_TYPE,
            name=f"{spec.name}-{preset}-figure",
            dir=str(out),
            mode=mode,
            reinit="create_new",
            tags=[f"figure={spec.name}", f"preset={preset}", "job=figure"],
            config={
                "figure": spec.name,
                "preset": preset,
                "title": spec.title,
                "paper_figure": spec.paper_figure,
                "claims": list(spec.claims),
                "beyond": spec.beyond,  # an experiment the paper did not run
            },
        )
        table = wandb.Table(
            columns=columns,
            data=[
                [
                    spec.name,
                    d["claim"],
                    "n/a" if d["passed"] is None else ("PASS" if d["passed"] else "FAIL"),
                    d.get("deciding", ""),
                    d.get("rule", ""),
                ]
                for d in rows
            ],
        )
        run.log({"claims": table, **{f"figure/{p.stem}": wandb.Image(str(p)) for p in pngs}})
        for d in rows:
            run.summary[f"claim{d['claim']}/passed"] = d["passed"]
        if report_md.is_file():
            artifact = wandb.Artifact(f"report-{preset}", type="report")
            artifact.add_file(str(report_md))
            run.log_artifact(artifact)
        made.append(Path(run.dir).parent)
        run.finish()
    return made
