"""Searching a recipe: the objective a run returns to a sweeper (wdcollapse.objective), known answers
on hand-made run directories, and Optuna studies through `hydra/sweeper=optuna` on a tiny subset:
the values reach the sweeper, the best trials are reported, a trial the schema refuses or that
diverges costs that trial only, and a second launch continues the stored study."""

import math

import pytest
import yaml
from conftest import TINY, compose_train, train_command
from omegaconf import OmegaConf

from wdcollapse import claims, keys, schema
from wdcollapse.config import CONF_DIR, check_config
from wdcollapse.errors import ConfigError
from wdcollapse.io import append_jsonl, atomic_write_json
from wdcollapse.objective import FAILED, OBJECTIVES, StudyFolder, linear_pairs, measure, returned
from wdcollapse.runfiles import RunFiles


def row(epoch, step, pairs, nc1=(0.5, 0.4, 0.3, 0.2, 0.1), acc=0.97, loss=0.01, activated=2):
    """A metrics row of a network of len(nc1) layers, the first `activated` with a ReLU: nc1 for
    every layer, negativity for the activated ones, balancedness for every pair."""
    out = {keys.EPOCH: epoch, keys.STEP: step, keys.TEST_ACC: acc, keys.TRAIN_LOSS: loss}
    out |= {keys.layer(keys.NC1, l): v for l, v in enumerate(nc1, 1)}
    out |= {keys.layer(keys.NEGATIVITY, l): 0.5 for l in range(1, activated + 1)}
    out |= {keys.layer(keys.BALANCEDNESS, l): v for l, v in enumerate(pairs, 1)}
    return out


# 2 ReLU + 3 linear layers: the linear pairs are (3, 4) and (4, 5); pair 2 joins a ReLU layer
ROWS = [
    row(0, 0, [1.0, 1.0, 0.9, 0.8]),
    row(1, 100, [0.9, 0.8, 0.3, 0.05]),
    row(2, 200, [0.9, 0.7, 0.08, 0.06]),  # both linear pairs below 0.1 for the first time
    row(3, 300, [0.9, 0.7, 0.02, 0.04], nc1=(0.5, 0.4, 0.3, 0.02, 0.01), acc=0.9, loss=0.125),
]


def run_dir(path, rows=ROWS, status="finished", wall=12.5):
    """A run directory as wdcollapse-train leaves it: metrics.jsonl and summary.json."""
    path.mkdir(parents=True)
    files = RunFiles(path)
    append_jsonl(files.metrics, *rows)
    atomic_write_json(files.summary, {"status": status, "final": rows[-1] if rows else {}, "wall_seconds": wall})
    return path


def test_the_objectives_of_a_finished_run_are_its_known_values(tmp_path):
    run = run_dir(tmp_path / "run")
    assert linear_pairs(ROWS[-1]) == [3, 4]
    assert measure(run, OBJECTIVES) == {
        "balancedness": 0.04,  # the worse linear pair; pair 2 (0.7) has a ReLU layer in it
        "steps_to_balance": 200,
        "nc1": 0.02,  # of Z_(L-1) = Z_4
        "test_error": pytest.approx(0.1),
        "train_loss": 0.125,
        "wall_seconds": 12.5,
    }
    assert measure(run, ["steps_to_balance"], balanced_below=0.05) == {"steps_to_balance": 300}
    assert measure(run, ["steps_to_balance"], balanced_below=0.01) == {"steps_to_balance": FAILED}  # never


def test_a_run_that_did_not_finish_or_lacks_the_quantity_gets_the_failure_value(tmp_path):
    for status in ("failed", "diverged", "running"):
        run = run_dir(tmp_path / status, status=status)
        assert measure(run, ["balancedness", "wall_seconds"]) == {"balancedness": FAILED, "wall_seconds": FAILED}
    tmp_path.joinpath("refused").mkdir()  # a run refused before it wrote anything
    assert measure(tmp_path / "refused", ["nc1"], failed=math.inf) == {"nc1": math.inf}
    # one linear layer: no linear pair; a pair written as null (not finite); no test accuracy
    one_linear = run_dir(tmp_path / "one_linear", rows=[row(0, 0, [0.5, 0.5, 0.5, 0.5], activated=4)])
    assert measure(one_linear, ["balancedness", "nc1"]) == {"balancedness": FAILED, "nc1": 0.2}
    nan = run_dir(tmp_path / "nan", rows=[{**ROWS[-1], keys.layer(keys.BALANCEDNESS, 4): None}])
    assert measure(nan, ["balancedness"], failed=-1.0) == {"balancedness": -1.0}
    no_test = run_dir(tmp_path / "no_test", rows=[{k: v for k, v in ROWS[-1].items() if k != keys.TEST_ACC}])
    assert measure(no_test, ["test_error", "train_loss"]) == {"test_error": FAILED, "train_loss": 0.125}
    # a deep linear network: every pair is linear
    assert linear_pairs(row(0, 0, [0.1, 0.2, 0.3, 0.4], activated=0)) == [1, 2, 3, 4]


def test_what_the_job_returns_one_value_or_a_list(tmp_path):
    run = run_dir(tmp_path / "run")
    node = lambda names, **more: OmegaConf.create({"names": names, "balanced_below": 0.1, "failed": 1e9, **more})
    assert returned(run, node(None)) is None
    assert returned(run, None) is None
    assert returned(run, node("nc1")) == 0.02
    assert returned(run, node(["nc1"])) == 0.02  # Optuna's single direction takes a float
    assert returned(run, node(["balancedness", "wall_seconds"])) == [0.04, 12.5]
    assert returned(run, node("steps_to_balance", balanced_below=0.05)) == 300
    failed = run_dir(tmp_path / "failed", status="failed")
    assert returned(failed, node(["balancedness", "wall_seconds"], failed=7.0)) == [7.0, 7.0]
    # settings the schema refused (the run was refused, its summary says failed): still a value
    assert returned(failed, node(["accuracy"], failed="abc")) == FAILED


def test_the_objective_settings_are_checked_by_the_schema():
    with pytest.raises(ConfigError) as info:
        check_config(compose_train("logger=none", "objective.names=accuracy"))
    message = str(info.value)
    assert message.startswith("objective.names='accuracy' is not allowed: one of 'balancedness'"), message
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"^objective.names=\['nc1', 'accuracy'\] is not allowed"):
        check_config(compose_train("logger=none", "objective.names=[nc1,accuracy]"))
    with pytest.raises(ConfigError, match=r"^objective.balanced_below=0 is not allowed: a number > 0"):
        check_config(compose_train("logger=none", "objective.balanced_below=0"))
    check_config(compose_train("logger=none", "objective.names=[balancedness,wall_seconds]", "objective.failed=inf"))
    # conf/train.yaml's defaults are the schema's; the bound is claim 1's
    defaults = yaml.safe_load((CONF_DIR / "train.yaml").read_text())["objective"]
    assert defaults == schema.Objective().model_dump()
    assert schema.Objective().balanced_below == claims.LINEAR_BALANCED and schema.Objective().failed == FAILED


def test_an_unknown_objective_stops_the_entry_point_with_one_line(tmp_path):
    proc = train_command(["objective.names=accuracy", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: objective.names='accuracy' is not allowed")


def test_the_storage_folder_is_made_before_the_study_opens(tmp_path):
    folder = tmp_path / "sweep" / "deeper"
    config = OmegaConf.create({"hydra": {"sweeper": {"storage": f"sqlite:///{folder}/study.db"}}})
    StudyFolder().on_multirun_start(config=config)
    assert folder.is_dir()
    StudyFolder().on_multirun_start(config=OmegaConf.create({"hydra": {"sweeper": {}}}))  # no storage: nothing


def job_dirs(sweep):
    """{the job's overrides as key -> text: its run directory} of a multirun's sweep directory."""
    jobs = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        jobs[job] = dict(o.split("=", 1) for o in overrides)
    return jobs


def trial_dir(trial, jobs):
    """The run directory of an Optuna trial: the job whose overrides are the trial's parameters."""
    matches = [job for job, o in jobs.items() if all(o.get(k) == str(v) for k, v in trial.params.items())]
    assert len(matches) == 1, (trial.params, jobs)
    return matches[0]


# The documented search (conf/search/mlp_recipe.yaml) on a tiny subset (the batch size its own
# choice), the trials one after the other in this process (Hydra's basic launcher), its study in the
# sweep directory. A job's folder is the launch's uid and its number: the tiny settings would make
# Hydra's override_dirname too long a name.
TINY_SEARCH = [o for o in TINY if not o.startswith("data.batch_size=")] + ["data.test_num_per_class=10"]
SEARCH = ["-m", "search=mlp_recipe", *TINY_SEARCH, "logger=none", "hydra/launcher=basic"]
SEARCH += ["hydra.sweep.subdir=${uid:}_${hydra.job.num}"]


@pytest.mark.slow
def test_a_three_trial_study_reads_each_runs_objective_and_reports_the_best(tmp_path):
    import optuna  # here: its import costs the quick loop (-m "not slow") 0.4 s

    sweep = tmp_path / "search"
    proc = train_command([*SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"])
    assert f"sweep {sweep}: 3 jobs: 3 finished" in proc.stderr, proc.stderr[-3000:]
    study = optuna.load_study(study_name="mlp_recipe", storage=f"sqlite:///{sweep}/study.db")
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert set(trials[0].params) == {"optim.lr", "optim.lr_drop_at", "optim.lr_drop_factor", "data.batch_size"}
    jobs = job_dirs(sweep)
    for trial in trials:
        run = trial_dir(trial, jobs)
        # the values Optuna holds are the objective of that trial's run directory
        assert trial.values == list(measure(run, ["balancedness", "wall_seconds"]).values())
        assert 0 < trial.values[0] < FAILED
        config = yaml.safe_load(RunFiles(run).config.read_text())
        assert config["optim"]["lr"] == trial.params["optim.lr"]
        assert config["data"]["batch_size"] == trial.params["data.batch_size"]
        assert config["trainer"]["max_epochs"] == 2 and config["data"]["normalize"] is False
    # two objectives: the Pareto front is reported, with the settings of each of its trials
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    front = [{"params": t.params, "values": t.values} for t in study.best_trials]
    assert results["name"] == "optuna" and results["solutions"] == front and front

    # the same command again: the stored study goes on with the trials it has
    train_command([*SEARCH, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}"])
    again = optuna.load_study(study_name="mlp_recipe", storage=f"sqlite:///{sweep}/study.db").trials
    assert len(again) == 4 and [t.values for t in again[:3]] == [t.values for t in trials]
    assert len(job_dirs(sweep)) == 4


@pytest.mark.slow
def test_a_refused_or_diverged_trial_gets_the_failure_value_and_the_study_finishes(tmp_path):
    """A grid over a momentum the schema refuses (1.5) and a learning rate that diverges (1e6):
    three of four trials fail, each with objective.failed, and the study reports the fourth."""
    import optuna

    sweep = tmp_path / "grid"
    proc = train_command(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra/sweeper/sampler=grid",
            "objective.names=nc1",
            "optim.momentum=choice(0.5,1.5)",
            "optim.lr=choice(0.01,1e6)",
            *TINY,
            "data.test_num_per_class=10",
            "logger=none",
            "hydra.sweeper.n_jobs=1",
            f"hydra.sweeper.storage=sqlite:///{sweep}/study.db",
            "hydra.sweeper.study_name=grid",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ]
    )
    assert f"sweep {sweep}: 4 jobs: 1 diverged, 2 failed, 1 finished" in proc.stderr, proc.stderr[-3000:]
    assert "error: optim.momentum=1.5 is not allowed: a number < 1" in proc.stderr
    trials = optuna.load_study(study_name="grid", storage=f"sqlite:///{sweep}/study.db").trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and len(trials) == 4
    jobs = job_dirs(sweep)
    for trial in trials:
        good = trial.params == {"optim.momentum": 0.5, "optim.lr": 0.01}
        assert (trial.value < FAILED) if good else trial.value == FAILED, trial
        assert trial.value == measure(trial_dir(trial, jobs), ["nc1"])["nc1"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"optim.momentum": 0.5, "optim.lr": 0.01} and results["best_value"] < FAILED


def test_a_sweeper_that_reads_values_needs_an_objective(tmp_path):
    from wdcollapse.config import check_command_line

    check_command_line(["-m", "search=mlp_recipe"])  # the search names its objectives
    check_command_line(["-m", "optim.lr=0.01,0.02"])  # Hydra's basic sweeper reads none
    with pytest.raises(ConfigError, match=r"^objective.names=None is not allowed"):
        check_command_line(["search=mlp_recipe", "objective.names=null"])  # a multirun by its hydra.mode
    proc = train_command(
        ["-m", "hydra/sweeper=optuna", "optim.lr=choice(0.01,0.02)", "logger=none", *TINY]
        + [f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: objective.names=None is not allowed: a name or a list of names with")
    assert not list((tmp_path / "sweep").rglob("*"))  # refused before Hydra wrote anything


def test_the_search_runs_on_a_cluster_through_the_slurm_launcher():
    """search=mlp_recipe with hydra/launcher=slurm composes: the Optuna sweeper with its stored study,
    and submitit's SLURM launcher running the trials (the search's joblib launcher replaced)."""
    cfg = compose_train(
        "search=mlp_recipe", "hydra/launcher=slurm", "hydra.launcher.partition=a100", return_hydra_config=True
    )
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "a100"
    assert cfg.hydra.sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/study.db"
    assert list(cfg.objective.names) == ["balancedness", "wall_seconds"]
    assert list(cfg.hydra.sweeper.direction) == ["minimize", "minimize"]
