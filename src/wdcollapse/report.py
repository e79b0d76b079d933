"""Figures and the claims report of a reproduction, from its run directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import claims, fits, theorems
from .figures import BEYOND_LABEL, FIGURES, beyond_suffix
from .io import atomic_write_json, atomic_write_text, read_json
from .runfiles import RunFiles
from .runs import Run

UNKNOWN_IN_PAPER = [
    "optim.name",
    "optim.momentum",
    "optim.warmup_epochs",
    "optim.lr_drop_factor",
    "data.batch_size",
    "data.normalize",
    "data.test_num_per_class",
    "model.width",
    "model.init",
    "model.bias",
    "loss.mse_reduction",
]
OURS = "n/a (our experiment, not a paper figure)"
BEYOND = f"n/a ({BEYOND_LABEL})"
NULL_MEANS = {
    "data.num_per_class": "full training set",
    "data.test_num_per_class": "whole test set",
    "optim.lr_drop_at": "no drop",
    "optim.trunk_weight_decay": "optim.weight_decay",
    "data.batch_size": "full batch",
}
ALWAYS_SHOWN = ["optim.lr", "optim.weight_decay", "data.num_per_class", "trainer.max_epochs", "optim.lr_drop_at"]
REPORTED = {
    "data.num_per_class": "full training set (presumably)",
    "trainer.max_epochs": "5000-10000 (reported)",
    "optim.lr_drop_at": "0.8 (reported; the factor is not)",
}


def verdict(passed: bool | None, missing: str = "NOT RUN") -> str:
    """PASS / FAIL, or `missing` when the runs a check needs are not there."""
    return "PASS" if passed else (missing if passed is None else "FAIL")


def make_figures(out: Path, figures, runs_of: Callable) -> list[Path]:
    """Each figure drawn by the plotter its registry entry names; the files written."""
    made: list[Path] = []
    for figure in figures:
        made += figure.spec.plot(runs_of(figure), out / "figures" / figure.name, figure.spec)
    return made


def settings_rows(figure, runs: list[Run]) -> list[tuple[str, str, str]]:
    """(setting, the paper's value, ours) for what the paper states and what it leaves open."""
    if not runs:
        return []
    spec = figure.spec
    paper = spec.paper
    rows = []
    ours_experiment = spec.ours
    ours = BEYOND if spec.beyond else OURS
    for key in ALWAYS_SHOWN + [k for k in paper if k not in ALWAYS_SHOWN and k != "seeds"]:
        stated = ours if ours_experiment else paper.get(key, REPORTED.get(key, "not stated"))
        rows.append((key, str(stated), values_of(runs, key)))
    seeds = sorted({r.config.get("seed") for r in runs})
    rows.append(
        (
            "seeds",
            ours if ours_experiment else str(paper.get("seeds", "not stated")),
            f"{len(seeds)} ({', '.join(map(str, seeds))})",
        )
    )
    for key in UNKNOWN_IN_PAPER + list(spec.open_architecture):
        rows.append((key, ours if ours_experiment else "not stated (ASSUMPTION)", values_of(runs, key)))
    if any(r.get("optim.trunk_weight_decay") is not None for r in runs):  # only where a figure sets it
        stated = ours if ours_experiment else "optim.weight_decay on every parameter (presumably)"
        rows.append(("optim.trunk_weight_decay", stated, values_of(runs, "optim.trunk_weight_decay")))
    return rows


def values_of(runs: list[Run], key: str) -> str:
    """The distinct values of a setting over the runs, numbers in numeric order, joined by commas."""

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    values = [r.get(key) for r in runs]
    numbers = sorted({float(v) for v in values if number(v)})  # 0 and 0.0 are one value
    others = sorted({str(v) for v in values if not number(v) and v is not None})  # True is not 1
    none = [NULL_MEANS.get(key, "null")] if None in values else []
    return ", ".join([f"{v:.6g}" for v in numbers] + others + none)


def status_rows(figure, runs: list[Run]) -> dict:
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "diverged", "failed", "running")}
    timed = [r.summary for r in runs if r.summary.get("wall_seconds")]
    wall = sum(t["wall_seconds"] for t in timed)
    metric = sum(t.get("metric_seconds") or 0.0 for t in timed)
    return {
        "expected": figure.num_runs,
        **counts,
        "mean_run_seconds": round(wall / len(timed), 1) if timed else None,
        "metric_share": round(metric / wall, 3) if wall else None,
        "diverged_runs": {r.path.name: r.summary.get("diverged_epoch") for r in runs if r.status == "diverged"},
        "failed_runs": {r.path.name: r.summary.get("error") for r in runs if r.status == "failed"},
    }


def decide_claims(figures, runs_of: Callable, skipped: dict | None = None) -> list[dict]:
    """One entry per (figure, claim) pair: the claims each figure is registered with, decided on
    its runs; a skipped figure's claims are listed too, with passed = None and the reason."""
    decided = []
    for figure in figures:
        decided += claims.judge(figure.spec, runs_of(figure))
    for name, why in (skipped or {}).items():
        if name in FIGURES:
            decided += [{**c, "evidence": {"runs": 0, "why": why}} for c in claims.judge(FIGURES[name], [])]
    return decided


def theory_checks(figures, runs_of: Callable) -> list[dict]:
    """Theorem 3.1's bound at every evaluated epoch where its precondition holds (the MLP figure
    and theory_gd), and theory_gd's fitted balancing rate against (1 - eta lambda)^2."""
    checks = []
    for figure in figures:
        spec = figure.spec
        if not spec.theorem31:
            continue
        runs = [r for r in runs_of(figure) if r.status == "finished"]
        per_run = {r.path.name: theorems.bound_holds(r.history) for r in runs}
        verdicts = [v["holds"] for v in per_run.values() if v["holds"] is not None]
        checks.append(
            {
                "id": f"theorem_3_1_bound/{figure.name}",
                "statement": "||Z_(L-1) - W_L^+ Y||_F <= r (eps1 / (s_K(Y) - eps1) + sqrt(n_(L-1) eps2)) "
                "and NC1 <= its bound, wherever eps1 <= min(s_K(Y), sqrt((K-1)N/(4K)))",
                "passed": all(verdicts) if verdicts else None,
                "evidence": per_run,
            }
        )
        if spec.balancing_rate:
            rates = {r.path.name: fits.rate_matches(read_json(RunFiles(r.path).theory, default={})) for r in runs}
            verdicts = [v.get("matches") for v in rates.values() if v.get("matches") is not None]
            checks.append(
                {
                    "id": f"balancing_rate/{figure.name}",
                    "statement": "in phase 2 the linear-head balancedness error decays at the theory's "
                    "(1 - eta lambda)^2 per step",
                    "passed": all(verdicts) if verdicts else None,
                    "evidence": rates,
                }
            )
    return checks


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def claims_doc(out: Path) -> str:
    """The claims page (docs/claims.md: the claims, their rules, each figure's known settings),
    copied beside REPORT.md from the installed package, so that a report links a page it holds.
    Returns the link."""
    page = Path(__file__).resolve().parent / "claims.md"  # docs/claims.md, shipped in the package
    atomic_write_text(out / "claims.md", page.read_text())
    return "claims.md"


def write_report(out: Path, preset: str, figures, runs_of: Callable, skipped: dict, notice: str | None = None) -> dict:
    decided = decide_claims(figures, runs_of, skipped)
    status = {f.name: status_rows(f, runs_of(f)) for f in figures}
    settings = {f.name: settings_rows(f, runs_of(f)) for f in figures}
    checks = theory_checks(figures, runs_of)
    report = {
        "preset": preset,
        "notice": notice,
        "claims": decided,
        "theory": checks,
        "runs": status,
        "skipped_figures": skipped,
        "settings": {
            name: [dict(zip(("setting", "paper", "here"), row)) for row in rows] for name, rows in settings.items()
        },
    }
    atomic_write_json(out / "report.json", report)

    doc = claims_doc(out)
    lines = [
        f"# Reproduction report (preset `{preset}`)",
        "",
        *([f"> **{notice}**", ""] if notice else []),
        "Jacot, Súkeník, Wang, Mondelli, *Wide Neural Networks Trained with Weight Decay Provably "
        f"Exhibit Neural Collapse*, ICLR 2025. The claims, their rules and each figure's settings are in "
        f"[{doc}]({doc}); each figure is judged by the claims it illustrates, from the run directories "
        "under `runs/`.",
        "",
        "## Verdicts",
        "",
        "| figure | claim | verdict | deciding numbers |",
        "|---|---|---|---|",
    ]

    def row(c) -> str:
        why = c["evidence"].get("why", "")
        return f"| {c['figure']} | {c['claim']} | **{verdict(c['passed'])}** | {c['deciding'] or why} |"

    lines += [row(c) for c in decided if not c.get("beyond")]
    beyond = [c for c in decided if c.get("beyond")]
    if beyond:
        lines += [
            "",
            f"### Verdicts {BEYOND_LABEL}",
            "",
            f"*{BEYOND_LABEL.capitalize()}*: experiments the paper did not run (`make reproduce BEYOND=1`). Each "
            "rule states an expectation; PASS says it held, FAIL that it did not, and the deciding numbers say what "
            f'was seen either way ([{doc}]({doc}), "Beyond the paper").',
            "",
            "| figure | claim | verdict | deciding numbers |",
            "|---|---|---|---|",
            *(row(c) for c in beyond),
        ]
    lines += ["", "## Claims", ""]
    for c in decided:
        label = beyond_suffix(c.get("beyond", False))
        lines += [
            f"### {c['figure']}, claim {c['claim']}{label}: **{verdict(c['passed'])}**",
            "",
            c["statement"],
            "",
            f"*Rule:* {c['rule']}",
            "",
        ]
        if c["deciding"]:
            lines += [f"*Deciding numbers:* {c['deciding']}", ""]
        for key, value in c["evidence"].items():
            if key == "per_seed":
                continue
            lines.append(f"- {key}: {_fmt(value)}")
        lines.append("")
    if checks:
        lines += ["## Theory checks", ""]
        for c in checks:
            lines += [f"### {c['id']}: **{verdict(c['passed'])}**", "", c["statement"], ""]
            lines += [f"- {name}: {_fmt(ev)}" for name, ev in c["evidence"].items()] + [""]
    lines += [
        "## Runs",
        "",
        "| figure | expected | finished | diverged | failed | running | mean s/run | metric pass share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in status.items():
        share = "" if s["metric_share"] is None else f"{s['metric_share']:.0%}"
        lines.append(
            f"| {name} | {s['expected']} | {s['finished']} | {s['diverged']} | {s['failed']} | "
            f"{s['running']} | {s['mean_run_seconds']} | {share} |"
        )
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    lines.append("")
    lines.append(
        "The metric pass share is the time of the metric passes (training set, Theorem 3.1's "
        "quantities, test accuracy) over the runs' wall time."
    )
    for name, s in status.items():
        for run, epoch in s["diverged_runs"].items():
            lines.append(f"\n- {name}/{run}: **diverged** at epoch {epoch} (its curves stop there; no claim uses it)")
        for run, error in s["failed_runs"].items():
            lines.append(f"\n- {name}/{run}: **failed**: {error}")
    lines += ["", "## Settings that differ from the paper or that the paper leaves open", ""]
    for name, rows in settings.items():
        if not rows:
            continue
        label = beyond_suffix(FIGURES.get(name) is not None and FIGURES[name].beyond)
        lines += [f"### {name}{label}", "", "| setting | paper | here |", "|---|---|---|"]
        lines += [f"| `{k}` | {p} | {h} |" for k, p, h in rows]
        lines.append("")
    lines += ["## Figures", ""] + [f"- `figures/{p.name}`" for p in sorted((out / "figures").glob("*.png"))]
    atomic_write_text(out / "REPORT.md", "\n".join(lines) + "\n")
    return report
