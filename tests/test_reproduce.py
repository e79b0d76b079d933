"""`make reproduce PRESET=smoke` end to end, and re-running it."""

import json

import matplotlib.image as mpimg
import pytest
import yaml
from conftest import REPO, reproduce

pytestmark = pytest.mark.slow
FIGURES = [
    "mlp_mnist_curves",
    "mlp_mnist_grams",
    "mlp_mnist_theorem31",
    "linear_depth_mnist",
    "nonlinear_depth_mnist",
    "resnet20_mnist",
    "theory_gd_theorem31",
    "theory_gd_phases",
]


def test_every_figure_is_a_valid_image(smoke):
    out, _ = smoke
    for name in FIGURES:
        png = mpimg.imread(out / "figures" / f"{name}.png")
        assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 200, name
        assert png[..., :3].std() > 0.05, f"{name} is (nearly) blank"  # a white canvas has std 0
        assert (out / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF"), name


def final_row(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_report_has_one_entry_per_figure_and_claim_with_numbers_from_the_run_directories(smoke):
    out, proc = smoke
    report = json.loads((out / "report.json").read_text())
    assert [(c["figure"], c["claim"]) for c in report["claims"]] == [
        ("mlp_mnist", 1),
        ("mlp_mnist", 2),
        ("linear_depth_mnist", 3),
        ("nonlinear_depth_mnist", 4),
        ("resnet20_mnist", 3),
        ("resnet20_cifar10", 1),
        ("resnet20_cifar10", 2),
        ("linear_depth_cifar10", 3),
    ]
    for claim in report["claims"]:
        assert claim["rule"] and set(claim) >= {"figure", "claim", "passed", "rule", "evidence"}
        if claim["figure"].endswith("cifar10"):  # no CIFAR-10 given: listed, not decided
            assert claim["passed"] is None and "needs CIFAR-10" in claim["evidence"]["why"]
        else:
            assert isinstance(claim["passed"], bool) and claim["evidence"]["runs"] > 0
    decided = {(c["figure"], c["claim"]): c for c in report["claims"]}
    # the deciding numbers are the run directories' own final rows (read here without wdcollapse)
    mlp = sorted((out / "runs" / "mlp_mnist").iterdir())
    nc1 = [final_row(r)["nc1/layer_8"] for r in mlp if r.is_dir()]
    assert decided["mlp_mnist", 2]["evidence"]["mean"]["nc1_penultimate"] == pytest.approx(sum(nc1) / len(nc1))
    for figure in ("linear_depth_mnist", "resnet20_mnist"):
        by_wd = decided[figure, 3]["evidence"]["by_weight_decay"]
        for run in (out / "runs" / figure).iterdir():
            if not run.is_dir():
                continue
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            L = cfg["model"]["nonlinear_depth"] + cfg["model"]["linear_depth"]
            entry = by_wd[f"{cfg['optim']['weight_decay']:g}"]
            i = entry["linear_depths"].index(cfg["model"]["linear_depth"])
            assert entry["nc2_penultimate"][i] == pytest.approx(final_row(run)[f"nc2/layer_{L - 1}"])
    for run in (out / "runs" / "nonlinear_depth_mnist").iterdir():
        if run.is_dir():
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            L1, row = cfg["model"]["nonlinear_depth"], final_row(run)
            entry = decided["nonlinear_depth_mnist", 4]["evidence"]["by_lr"][f"{cfg['optim']['lr']:g}"]
            neg = [row[f"negativity/layer_{l}"] for l in range(1, L1 + 1)]
            assert entry["negativity_mean"][entry["nonlinear_depths"].index(L1)] == pytest.approx(sum(neg) / L1)
    text = (out / "REPORT.md").read_text()
    for claim in report["claims"]:
        label = {True: "PASS", False: "FAIL", None: "NOT RUN"}[claim["passed"]]
        assert f"| {claim['figure']} | {claim['claim']} | **{label}** |" in text
    assert "not stated (ASSUMPTION)" in text and "metric pass share" in text
    # the claims page (docs/claims.md) travels with the report, so its link resolves anywhere
    assert (
        "[claims.md](claims.md)" in text
        and (out / "claims.md").read_text() == (REPO / "docs" / "claims.md").read_text()
    )
    assert "mlp_mnist, claim 1:" in proc.stdout
    assert [c["id"] for c in report["theory"]] == [
        "theorem_3_1_bound/mlp_mnist",
        "theorem_3_1_bound/theory_gd",
        "balancing_rate/theory_gd",
    ]
    assert report["theory"][2]["passed"] is not None


def test_every_run_finished_with_its_own_offline_wandb_run(smoke):
    out, _ = smoke
    runs = [p for p in (out / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 2 + 4 + 2 + 2 + 1
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished", run
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, run
        figure = run.parent.name
        assert f"{figure}-smoke".encode() in next(offline[0].glob("*.wandb")).read_bytes()  # the W&B group


def test_rerun_skips_finished_runs_and_replots(smoke):
    out, _ = smoke
    metrics = sorted((out / "runs").glob("*/*/metrics.jsonl"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    png = out / "figures" / "mlp_mnist_curves.png"
    png_before = png.stat().st_mtime_ns
    proc = reproduce(out)
    assert proc.stdout.count("already done: skipping") == 5
    assert {p: p.stat().st_mtime_ns for p in metrics} == before
    assert png.stat().st_mtime_ns > png_before


CIFAR_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.mark.skipif(not CIFAR_TARBALL.is_file(), reason=f"CIFAR-10 JPEG tarball not present at {CIFAR_TARBALL}")
def test_cifar10_figures_run_from_the_jpeg_tarball(tmp_path):
    reproduce(tmp_path, "--only", "resnet20_cifar10", "linear_depth_cifar10", "--cifar", CIFAR_TARBALL)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped_figures"] == {}
    assert (
        report["runs"]["resnet20_cifar10"]["finished"] == 1 and report["runs"]["linear_depth_cifar10"]["finished"] == 2
    )
    for name in ("resnet20_cifar10_curves", "resnet20_cifar10_grams", "linear_depth_cifar10"):
        assert mpimg.imread(tmp_path / "figures" / f"{name}.png").ndim == 3


BEYOND = {"stability_mnist": 5, "deep_head_mnist": 6, "width_mnist": 7}


def test_figures_beyond_the_paper_run_with_the_switch_and_are_absent_without_it(smoke, tmp_path):
    import shutil

    out, proc = smoke
    # without --beyond: neither trained nor listed (not as skipped, not as failures); the console says how
    report = json.loads((out / "report.json").read_text())
    assert not {c["figure"] for c in report["claims"]} & set(BEYOND) and not set(report["skipped_figures"]) & set(
        BEYOND
    )
    assert all(c["beyond"] is False for c in report["claims"])
    assert not any((out / "runs" / name).exists() for name in BEYOND)
    assert "beyond the paper: stability_mnist, deep_head_mnist, width_mnist run with --beyond" in proc.stdout
    assert "beyond the paper" not in (out / "REPORT.md").read_text()
    # --beyond on a copy of that folder: the paper's figures are done, only the three train (one job: no
    # worker processes to start, seconds each)
    copy = tmp_path / "beyond"
    shutil.copytree(out, copy)
    proc = reproduce(copy, "--beyond", "--jobs", "1", "--wandb", "disabled")
    assert proc.stdout.count("already done: skipping") == 5
    report = json.loads((copy / "report.json").read_text())
    beyond = {c["figure"]: c for c in report["claims"] if c["beyond"]}
    assert {name: c["claim"] for name, c in beyond.items()} == BEYOND
    for name, claim in beyond.items():
        assert isinstance(claim["passed"], bool) and claim["rule"] and claim["deciding"], name
        assert report["runs"][name]["finished"] == report["runs"][name]["expected"] > 0, name
        png = mpimg.imread(copy / "figures" / f"{name}.png")
        assert png.ndim == 3 and png[..., :3].std() > 0.05, name
        assert f"{name}, claim {claim['claim']} (beyond the paper):" in proc.stdout
    text = (copy / "REPORT.md").read_text()
    beyond_table = text[text.index("### Verdicts beyond the paper") : text.index("## Claims")]
    for name, claim in beyond.items():
        label = "PASS" if claim["passed"] else "FAIL"
        assert f"| {name} | {claim['claim']} | **{label}** |" in beyond_table
        assert f"### {name}, claim {claim['claim']} (beyond the paper): **{label}**" in text
        assert f"### {name} (beyond the paper)" in text  # its settings
    # the width sweep's swept key is a list item (model.width.0): its runs are found and named by it
    assert sorted(p.name for p in (copy / "runs" / "width_mnist").iterdir() if p.is_dir()) == [
        "model.width.0=10,seed=0",
        "model.width.0=40,seed=0",
    ]
    # --only names a beyond figure without --beyond: it takes part (here with no runs: listed, not trained)
    only = tmp_path / "only"
    proc = reproduce(only, "--only", "width_mnist", "--plots-only", "--wandb", "disabled")
    report = json.loads((only / "report.json").read_text())
    assert [c["figure"] for c in report["claims"] if c["beyond"]] == ["width_mnist"]
