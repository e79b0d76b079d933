"""What W&B receives, read back from the offline .wandb files with wandb's own reader: per run the
epoch as the step metric of every key, the per-layer keys and the Gram images; per figure a run
of job type `figure` with its images, its claims table and REPORT.md; and the dashboards'
description. No account, no network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_train, wandb_records

from wdcollapse import keys
from wdcollapse.figures import FIGURES

pytestmark = pytest.mark.slow


def _by_type(records, kind):
    return [r[kind] for r in records if r.get("type") == kind]


def _history(records):
    return [h["item"] for h in _by_type(records, "history")]


def _defined(records) -> dict:
    """{metric name: its step metric} from the run's define_metric records."""
    return {m["name"]: m.get("step_metric") for m in _by_type(records, "metric") if "name" in m}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb_run")
    run_train(out, *TINY, "model.linear_depth=3", "trainer.max_epochs=3")
    files = list((out / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1
    return out, wandb_records(files[0])


def test_epoch_is_the_step_metric_of_every_metric(one_run):
    out, records = one_run
    defined = _defined(records)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    L = 2 + 3
    per_layer = [keys.layer(keys.NC1, l) for l in range(1, L + 1)] + [keys.layer(keys.BALANCEDNESS, 1)]
    for key in [*per_layer, keys.TRAIN_LOSS, keys.TEST_ACC, keys.NC3, keys.theory("nc1_bound")]:
        assert defined.get(key) == keys.EPOCH, key
    assert set(rows[-1]) - {keys.EPOCH} <= set(defined)


def test_history_holds_each_evaluated_epoch_with_its_metrics_and_gram_image(one_run):
    out, records = one_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    history = _history(records)
    assert [h[keys.EPOCH] for h in history] == [r[keys.EPOCH] for r in rows] == [0, 1, 2, 3]
    for h, r in zip(history, rows):
        assert h[keys.layer(keys.NC2, 4)] == pytest.approx(r[keys.layer(keys.NC2, 4)], rel=1e-12)
        assert h["gram/linear_head._type"] == "image-file"
    image = out / "wandb" / "latest-run" / "files" / history[-1]["gram/linear_head.path"]
    assert image.is_file() and image.stat().st_size > 1000


def test_the_summary_holds_the_final_values(one_run):
    out, records = one_run
    wandb_cli = Path(sys.executable).with_name("wandb")
    proc = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(out / "wandb" / "latest-run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = json.loads(proc.stdout)
    final = json.loads((out / "summary.json").read_text())["final"]
    text = json.dumps(summary)
    for key in (keys.layer(keys.NC1, 4), keys.layer(keys.BALANCEDNESS, 3), keys.NC3):
        assert key in text, key
    assert final[keys.EPOCH] == 3


def test_a_reproduction_tags_each_run_with_its_figure_preset_and_swept_values(smoke):
    out, _ = smoke
    run_dir = out / "runs" / "mlp_mnist" / "seed=1"
    records = wandb_records(next((run_dir / "wandb").glob("offline-run-*/*.wandb")))
    run = _by_type(records, "run")[0]
    assert set(run["tags"]) >= {"figure=mlp_mnist", "preset=smoke", "seed=1"}
    assert run["run_group"] == "mlp_mnist-smoke"
    config = json.dumps(_by_type(records, "config") + [run.get("config", {})])
    assert '"figure"' in config and "mlp_mnist" in config


def test_a_reproduction_logs_one_figure_run_per_figure_with_images_and_claims(smoke):
    out, _ = smoke
    files = sorted((out / "wandb").glob("offline-run-*/*.wandb"))
    runs = {}
    for f in files:
        records = wandb_records(f)
        run = _by_type(records, "run")[0]
        assert run["job_type"] == "figure"
        runs[run["run_group"]] = records
    report = json.loads((out / "report.json").read_text())
    judged = {c["figure"] for c in report["claims"] if c["passed"] is not None}
    assert {f"{name}-smoke" for name in judged} <= set(runs)
    records = runs["mlp_mnist-smoke"]
    item = _history(records)[0]
    assert item["claims._type"] == "table-file"
    assert item["figure/mlp_mnist_curves._type"] == "image-file"
    summary = json.dumps(_by_type(records, "summary"))
    for c in (c for c in report["claims"] if c["figure"] == "mlp_mnist"):
        assert f"claim{c['claim']}/passed" in summary
    assert any("report" in json.dumps(r) and r.get("type") == "artifact" for r in records)


def test_the_dashboard_description_has_a_panel_per_metric_family_per_figure(tmp_path):
    target = tmp_path / "dashboards.json"
    proc = subprocess.run(
        [sys.executable, "-m", "wdcollapse.dashboards", "--preset", "cpu", "--describe", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    described = json.loads(target.read_text())
    assert set(described["figures"]) == set(FIGURES)
    for name, figure in described["figures"].items():
        assert figure["group"] == f"{name}-cpu"
        lines = [p for s in figure["sections"] for p in s["panels"] if p["kind"] == "line"]
        assert [p["metric_regex"] for p in lines] == [
            *(rf"^{family}/layer_\d+$" for family in (f.key for f in keys.FAMILIES)),
            *(f.pattern for f in keys.OPTIONAL_FAMILIES),  # the optional families, closed
        ]
        assert all(p["x"] == keys.EPOCH and p["groupby"] == "seed" for p in lines)
        view_sections = figure["view"]["spec"]["section"]["panel_bank_config"]["sections"]
        assert [s["name"] for s in view_sections][:4] == [family for family in (f.key for f in keys.FAMILIES)]
