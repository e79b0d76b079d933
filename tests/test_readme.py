"""Every code block of README.md, run as a user would copy it: in document order, in one empty
folder. Python blocks run as scripts (as __main__, in this process); each command of a bash block
runs (`wdcollapse-train`'s main() in this process; the console scripts themselves: test_train.py
and test_wheel.py) (training commands at a tiny scale: the same command with a few overrides
appended, which Hydra applies last), unless another test runs it: COVERED names that test, and a
command that is neither run nor covered fails this test. YAML blocks must parse."""

import functools
import json
import os
import re
import runpy
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO, in_process, train_command

pytestmark = pytest.mark.slow

README = REPO / "README.md"
# Appended to a training command that does not set its own scale: a two-epoch run on 50 images.
TINY = ["data.num_per_class=5", "data.test_num_per_class=5", "trainer.max_epochs=2", "model.width=16", "logger=none"]

# Commands this test does not run, and where each is run or why it cannot be.
COVERED = {
    "make reproduce": "tests/test_reproduce.py (the same pipeline at the smoke preset); BENCHMARKS.md (the cpu preset)",
    "make test": ".ci/run (CI runs it on a fresh clone)",
    "pip ": "tests/test_wheel.py (the install block, line by line, in a fresh virtual environment)",
    "wdcollapse-data ": "tests/test_wheel.py",
    "wdcollapse-reproduce ": "tests/test_wheel.py",
    "wdcollapse-train --config-dir my_conf": "tests/test_extending.py (a user's own experiment, data and model)",
    "data=cifar10": "tests/test_train.py (CIFAR-10 as a JPEG class folder)",
    "wandb leet inspect": "tests/test_wandb.py (wandb leet inspect --json of offline runs)",
    "wandb leet outputs": "the terminal UI of the same records (interactive)",
    "wandb sync": "needs a W&B account and network",
    "wdcollapse-dashboard": "tests/test_wandb.py, tests/test_python_api.py (no account: the description, exit 1)",
    "-m search=mlp_recipe": "tests/test_search.py (the same search on a tiny subset: three trials, then one more)",
    "-m hydra/sweeper=optuna": "tests/test_search.py (a study of your own: a grid with refused and diverged trials)",
}


def blocks() -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced code block, in document order."""
    text = README.read_text()
    return [
        (m.group(1), m.group(2), text[: m.start()].count("\n") + 1)
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    ]


def commands(block: str) -> list[str]:
    """The commands of a bash block: one per line, comments dropped."""
    lines = (line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def covered(command: str) -> str | None:
    return next((why for key, why in COVERED.items() if key in command), None)


def test_every_covering_test_exists():
    for why in COVERED.values():
        for path in re.findall(r"(tests/\w+\.py|\.ci/run|BENCHMARKS\.md)", why):
            assert (REPO / path).exists(), path


def test_every_readme_code_block_runs_in_an_empty_folder(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    data = Path(os.environ.get("WDCOLLAPSE_DATA_DIR") or REPO / "data")
    (work / "data").symlink_to(data)  # torchvision's MNIST("data") and the package read the prepared files
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WDCOLLAPSE_DATA_DIR": str(data)}
    ran = {"python": 0, "bash": 0, "yaml": 0}
    outputs = []
    for i, (lang, text, line) in enumerate(blocks()):
        where = f"README.md line {line}"
        if lang == "python":
            script = work / f"block_{i}.py"
            script.write_text(text)
            # `python block_N.py`: the script as __main__ (runpy), from the folder
            run = functools.partial(runpy.run_path, script.name, run_name="__main__")
            proc = in_process(run, script.name, [], cwd=work, env=env, check=False)
            assert proc.returncode == 0, f"{where}:\n{proc.stderr[-3000:]}"
            outputs.append(proc.stdout)
            ran["python"] += 1
        elif lang == "bash":
            for command in commands(text):
                if covered(command):
                    continue
                argv = shlex.split(command)
                argv[0] = argv[0].removeprefix(".venv/bin/")
                assert argv[0] == "wdcollapse-train", f"{where}: `{command}` is neither run here nor in COVERED"
                scaled = "data.num_per_class=" in command and "trainer.max_epochs=" in command
                proc = train_command([*argv[1:], *([] if scaled else TINY)], cwd=work, env=env, check=False)
                assert proc.returncode == 0, f"{where}: {command}\n{proc.stderr[-3000:]}"
                ran["bash"] += 1
        elif lang == "yaml":
            assert isinstance(yaml.safe_load(text), dict), where
            ran["yaml"] += 1
        else:
            assert lang == "", f"{where}: a ```{lang} block this test does not know how to run"
    assert ran["python"] >= 3 and ran["bash"] >= 6 and ran["yaml"] >= 2, ran

    # what the blocks claim: MetricMonitor's rows in a folder it created, and the loggers' files
    rows = [json.loads(r) for r in (work / "outputs/my_run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows[-1]["train/acc"] > rows[0]["train/acc"]
    assert list(work.glob("outputs/my_run/lightning_logs/version_0/metrics.csv"))
    assert list(work.glob("outputs/my_run/wandb/offline-run-*/*.wandb"))
    # load_runs saw the two seeds; the restored network's pass equals the recorded row
    listed = [line.split() for line in outputs[1].splitlines()]
    assert sorted(fields[0] for fields in listed) == ["0", "1"] and all(f[1] == "finished" for f in listed)
    key, value, _, _, recorded = outputs[2].split()
    assert float(value) == pytest.approx(float(recorded), rel=1e-6), outputs[2]
