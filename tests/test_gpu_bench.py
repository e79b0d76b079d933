"""scripts/gpu_bench.py (run where a GPU is lent) keeps working: its quick mode on the CPU."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


def run_script(*args: str) -> None:
    """`python args...` in the repository; fails the test with the script's stderr."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_gpu_bench_quick_mode_measures_every_field(tmp_path):
    out = tmp_path / "gpu.json"
    run_script(
        "scripts/gpu_bench.py",
        *("--quick", "--rounds", "1", "--out", str(out), "--only", "mlp_b128_fp32", "resnet20_b128_bf16_cl"),
    )
    settings = json.loads(out.read_text())["settings"]
    assert set(settings) == {"mlp_b128_fp32", "resnet20_b128_bf16_cl"}
    for name, res in settings.items():
        assert "error" not in res, res
        assert res["epoch_s"] > 0 and res["metric_pass_s"] > 0 and res["steps_per_epoch"] == 3, name
    assert settings["resnet20_b128_bf16_cl"]["precision"] == "bf16-mixed"
    mlp = settings["mlp_b128_fp32"]
    assert mlp["plain_epoch_s"] > 0  # the ratio is the two epochs measured, not a constant
    assert mlp["lightning_over_plain"] == pytest.approx(mlp["epoch_s"] / mlp["plain_epoch_s"], rel=1e-12)


def test_optimizer_bench_times_both_paths_and_finds_them_bitwise_equal(tmp_path):
    """scripts/bench_optimizer.py (make bench-optimizer) on every network, a few steps: both
    paths are timed and end on the same parameters."""
    out = tmp_path / "optimizer.json"
    run_script("scripts/bench_optimizer.py", "--rounds", "2", "--steps", "3", "--out", str(out))
    networks = json.loads(out.read_text())["networks"]
    assert len(networks) == 4
    for name, res in networks.items():
        assert res["finite"] and res["bitwise_equal"] is True, name
        assert res["ms_per_step"]["fused"] > 0 and res["ms_per_step"]["per_tensor"] > 0, name
