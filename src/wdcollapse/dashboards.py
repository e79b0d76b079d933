"""A saved W&B workspace (dashboard) per figure, built with wandb-workspaces: one section per
metric family (NC1, NC2, balancedness, negativity) with its per-layer lines over epochs, one line
per seed, for the figure's runs; the Gram images and the figure run's claims table beside them.

    wdcollapse-dashboard --entity ME --project wdcollapse --preset cpu     # save, once runs are synced
    wdcollapse-dashboard --preset cpu --describe dashboards.json          # offline: the description only

Without network (or with --describe) the workspaces are not saved but described in a JSON file:
for each figure, its sections and panels, and the view wandb-workspaces would save."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import keys
from .figures import FIGURES
from .io import atomic_write_text
from .wandb_log import GRAM_IMAGE

# (family, panel title, log y axis): the quantities the theory has fall exponentially on log axes


def panels() -> list[dict]:
    """A figure workspace's sections, as plain data (what the description file holds); the same
    for every figure, whose runs the workspace selects. The paper's families open, then the
    optional ones (keys.OPTIONAL_FAMILIES: empty unless a run switched them on) closed."""
    sections = [
        {
            "section": f.key,
            "is_open": f in keys.FAMILIES,
            "panels": [
                {
                    "kind": "line",
                    "title": f.summary,
                    "x": keys.EPOCH,
                    "metric_regex": f.pattern,
                    "log_y": f.log_y,
                    "groupby": "seed",
                }
            ],
        }
        for f in (*keys.FAMILIES, *keys.OPTIONAL_FAMILIES)
    ]
    sections.append(
        {
            "section": "Gram matrices",
            "panels": [{"kind": "media", "title": "class-mean Gram matrices of the linear head", "key": GRAM_IMAGE}],
        }
    )
    return sections


def workspace(figure: str, preset: str, entity: str, project: str):
    """The wandb_workspaces.Workspace of one figure's runs (group `<figure>-<preset>`)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = []
    for section in panels():
        built = []
        for p in section["panels"]:
            if p["kind"] == "line":
                built.append(
                    wr.LinePlot(
                        title=p["title"],
                        x=p["x"],
                        metric_regex=p["metric_regex"],
                        log_y=p["log_y"],
                        groupby=wr.Config(p["groupby"]),
                    )
                )
            elif p["kind"] == "media":
                built.append(wr.MediaBrowser(title=p["title"], media_keys=[p["key"]]))
        sections.append(ws.Section(name=section["section"], panels=built, is_open=section.get("is_open", True)))
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"wdcollapse {figure} ({preset})",
        sections=sections,
        runset_settings=ws.RunsetSettings(query=f"{figure}-{preset}"),
    )


def describe(workspaces: dict, preset: str, entity: str, project: str) -> dict:
    """The description file's content: per figure its group, sections and the saved view."""
    return {
        "preset": preset,
        "entity": entity,
        "project": project,
        "figures": {
            name: {"group": f"{name}-{preset}", "sections": panels(), "view": ws._to_model().model_dump(mode="json")}
            for name, ws in workspaces.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entity", default="offline", help="W&B entity (user or team)")
    parser.add_argument("--project", default="wdcollapse")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--figures", nargs="*", default=sorted(FIGURES), help="default: every figure")
    parser.add_argument("--describe", default=None, help="write the description here instead of saving")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.figures) - set(FIGURES))
    if unknown:
        print(f"error: unknown figure(s) {unknown}; choose from {sorted(FIGURES)}", file=sys.stderr)
        return 2
    workspaces = {name: workspace(name, args.preset, args.entity, args.project) for name in args.figures}
    status = 0
    if args.describe is None:
        try:
            for name, ws in workspaces.items():
                print(f"{name}: {ws.save().url}")
            return 0
        except Exception as e:  # no network, no API key, no such entity: describe instead, and say it failed
            args.describe = "dashboards.json"
            status = 1
            print(
                f"error: could not save the workspaces ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); writing their description to {args.describe} "
                "instead (log in with `wandb login`, or pass --describe FILE to only describe them)",
                file=sys.stderr,
            )
    target = Path(args.describe)
    if target.exists():
        print(f"replacing the existing {target}", file=sys.stderr)
    description = describe(workspaces, args.preset, args.entity, args.project)
    atomic_write_text(target, json.dumps(description, indent=1))
    print(f"described {len(args.figures)} workspaces in {args.describe}")
    return status


if __name__ == "__main__":
    sys.exit(main())
