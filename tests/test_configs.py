"""Every experiment config composes, resolves, passes the config check and builds its model."""

import re
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from wdcollapse.config import CONF_DIR, check_config
from wdcollapse.errors import ConfigError

CONF = CONF_DIR
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PRESETS = [None] + sorted(p.stem for p in (CONF / "preset").glob("*.yaml"))


def compose_cfg(*overrides):
    return compose_train("logger=none", *overrides, return_hydra_config=True)


def job_cfg(*overrides):
    """A job's config as `train.run` gets it: without the hydra node."""
    cfg = compose_cfg(*overrides)
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


def refusal(cfg) -> str:
    """The message of the ConfigError check_config must raise for `cfg`."""
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    return str(info.value)


def test_there_are_experiments():
    assert {
        "mlp_mnist",
        "linear_depth_mnist",
        "nonlinear_depth_mnist",
        "resnet20_cifar10",
        "linear_depth_cifar10",
        "resnet20_mnist",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds(experiment, preset):
    overrides = [f"experiment={experiment}"] + ([f"preset={preset}"] if preset else [])
    cfg = compose_cfg(*overrides)
    with open_dict(cfg):
        hydra_node = cfg.pop("hydra")
    if experiment in ("theory_gd", "width_mnist") and preset == "smoke":  # mini-batches would not be gradient descent
        assert "optim=gd" in refusal(cfg)
        return
    check_config(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["name"] == experiment
    model = instantiate(cfg.model)
    assert model.nonlinear_depth == cfg.model.nonlinear_depth and model.linear_depth == cfg.model.linear_depth
    with torch.no_grad():
        out = model(torch.zeros(2, *cfg.data.in_shape))
    assert out.shape == (2, cfg.data.num_classes)
    assert hydra_node.sweeper.params, "an experiment config declares its sweep"


def test_nonlinear_depth_sweep_scales_weight_decay_with_depth():
    cfg = compose_cfg("experiment=nonlinear_depth_mnist", "model.nonlinear_depth=9")
    assert cfg.optim.weight_decay == pytest.approx(0.016 / 12)


def test_slurm_launcher_composes_with_documented_job_parameters():
    cfg = compose_cfg("hydra/launcher=slurm", "hydra.launcher.partition=a100", "experiment=mlp_mnist")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "a100"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert launcher.cpus_per_task == 8 and launcher.mem_gb == 32 and launcher.timeout_min == 1440
    assert launcher.name == "wdcollapse-mlp_mnist"


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["+trainer.gradient_clip_val=1.0"], ["trainer.gradient_clip_val", "manual"]),
        (["+trainer.accumulate_grad_batches=2"], ["trainer.accumulate_grad_batches", "manual"]),
        (["+trainer.max_steps=100"], ["steps_per_call=16", "trainer.max_steps"]),
        (["+trainer.limit_train_batches=0.5"], ["steps_per_call=16", "trainer.limit_train_batches"]),
        (["steps_per_call=0"], ["steps_per_call=0", ">= 1"]),
    ],
)
def test_settings_that_manual_step_groups_cannot_honour_are_refused(overrides, words):
    cfg = job_cfg(*overrides)
    message = refusal(cfg)
    assert all(w in message for w in words), message
    cfg.steps_per_call = 1
    if "steps_per_call=16" in words:
        check_config(cfg)  # fine with one step per call


def test_sync_batchnorm_is_refused_on_the_cpu():
    cfg = job_cfg("model=resnet20", "trainer.sync_batchnorm=true", "trainer.accelerator=cpu")
    assert re.search("trainer.sync_batchnorm.*GPUs only", refusal(cfg))
    cfg.trainer.sync_batchnorm = False
    check_config(cfg)


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["optim.lr=abc"], ["optim.lr='abc'", "a number"]),
        (["optim.lr_drop_at=0.5", "optim.lr_drop_factor=-1"], ["optim.lr_drop_factor=-1", "> 0"]),
        (["optim.warmup_epochs=-1"], ["optim.warmup_epochs=-1", ">= 0"]),
        (["optim=gd", "data.batch_size=32"], ["data.batch_size=32", "optim=gd", "optim=sgd"]),
        (["data.test_num_per_class=0"], ["data.test_num_per_class=0", ">= 1"]),
        (["model.width=[3,4]"], ["model.width", "= 8 such integers"]),
    ],
)
def test_more_bad_settings_are_refused_with_what_to_do(overrides, words):
    message = refusal(job_cfg(*overrides))
    assert all(w in message for w in words), message


def test_unknown_config_group_options_are_named_with_the_choices():
    from wdcollapse.config import check_command_line

    check_command_line(
        [
            "data=mnist",
            "model=mlp,resnet20",
            "preset=cpu",
            "hydra/launcher=joblib",
            "seed=1,2",
            "experiment=glob(linear_*)",
        ]
    )
    check_command_line(["model=choice(mlp,resnet20)"])
    with pytest.raises(ConfigError, match=r"model='vit' is not allowed: one of \['mlp', 'resnet20'\]"):
        check_command_line(["-m", "model=mlp,vit"])
    with pytest.raises(ConfigError, match="experiment='nope'"):
        check_command_line(["+experiment=nope"])
    with pytest.raises(ConfigError, match="hydra/launcher='slurmm'.*'submitit_slurm'"):
        check_command_line(["hydra/launcher=slurmm"])  # a plugin's configs are on the search path too
    with pytest.raises(ConfigError, match="Could not override 'optim.lrr'"):
        check_command_line(["optim.lrr=1"])
    with pytest.raises(ConfigError, match="--config-dir .*: no such directory"):
        check_command_line(["--config-dir", "/nonexistent/wdcollapse"])


def test_every_file_the_readme_assumption_table_cites_exists_and_marks_assumptions():
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    table = readme[readme.index("## Assumptions") : readme.index("## Layout")]
    cited = set(re.findall(r"`((?:conf|src)/[^`]+)`", table))
    assert len(cited) >= 8
    assert not re.findall(r"\| [^|]*`[\w*]+\.yaml`", table), "name config files by their path from the repo root"
    for pattern in sorted(cited):
        files = sorted(repo.glob(pattern))
        assert files, f"README names {pattern}, which does not exist"
        for path in files:
            if path.suffix == ".yaml" and path.name != "mlp_mnist.yaml":  # the MLP figure's settings are stated
                text = path.read_text()
                assert "ASSUMPTION" in text or "REDUCTION" in text, f"{path} marks no assumption"


def test_command_line_sweeps_with_prefixes_quotes_and_a_bad_search_path():
    from wdcollapse.config import check_command_line

    check_command_line(["-m", "model='mlp',resnet20"])  # a quoted choice is its text
    with pytest.raises(ConfigError, match="An item is already at 'seed'"):
        check_command_line(["-m", "+seed=1,2"])  # as Hydra itself refuses it
    check_command_line(["-m", "++seed=1,2"])
    with pytest.raises(ConfigError, match="hydra.searchpath must be a list"):
        check_command_line(["hydra.searchpath=notalist", "model=mlp"])


def test_trunk_weight_decay_is_refused_for_the_mlp_before_any_data_is_read():
    """The MLP has no trunk: the config check names the setting (not a ValueError from
    configure_optimizers after the data set-up); with ResNet20 the same value passes."""
    cfg = job_cfg("optim.trunk_weight_decay=0.001")
    assert re.search(r"optim.trunk_weight_decay=0.001 is not allowed: null with model=mlp", refusal(cfg))
    check_config(job_cfg("model=resnet20", "optim.trunk_weight_decay=0.001"))


def test_the_readme_quotes_the_presets_numbers_as_the_configs_hold_them():
    """Where the README quotes a preset's setting, it is the config's value (they drifted once)."""
    from omegaconf import OmegaConf

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    conf = repo / "src" / "wdcollapse" / "conf"
    every_n = OmegaConf.load(conf / "preset" / "cpu.yaml").callbacks.metrics.every_n
    ordinal = {2: "2nd", 3: "3rd"}.get(every_n, f"{every_n}th")
    assert f"the cpu preset\nevaluates every {ordinal}" in readme
    sweep = OmegaConf.load(conf / "reproduce" / "cpu.yaml").figures.nonlinear_depth_mnist.sweep
    lrs = [str(v) for v in str(sweep["optim.lr"]).split(",")]
    assert f"the non-linear-depth sweep at {lrs[0]} and {lrs[1]}" in readme
    depths = str(sweep["model.nonlinear_depth"]).split(",")
    table = readme[readme.index("## Assumptions") :]
    row = next(line for line in table.splitlines() if line.startswith("| depths of the non-linear-depth sweep"))
    assert all(d in row for d in depths), row


def test_the_cpu_non_linear_sweep_trains_both_rates_for_the_lower_rates_epochs():
    """Every run of the cpu preset's non-linear-depth sweep, composed as its multirun composes it,
    trains the epochs that balancing budget 16 takes at the lower rate 0.02 (the higher rate at
    budget 16 still drifted: BENCHMARKS.md, 2026-12-06, sixth session), at width 128 and batch 64."""
    import math

    from wdcollapse.figures import preset_sweeps
    from wdcollapse.reproduce import job_overrides

    figure = next(f for f in preset_sweeps("cpu")[1] if f.name == "nonlinear_depth_mnist")
    lr_low = min(float(lr) for lr in figure.sweep["optim.lr"].split(","))
    epochs = {}
    for depth in figure.sweep["model.nonlinear_depth"].split(","):
        for lr in figure.sweep["optim.lr"].split(","):
            swept = [f"model.nonlinear_depth={depth}", f"optim.lr={lr}", "seed=0"]
            cfg = compose_cfg(*job_overrides(figure, "cpu", swept, []))
            assert (cfg.model.width, cfg.data.batch_size, cfg.optim.lr) == (128, 64, float(lr))
            epochs[int(depth), float(lr)] = cfg.trainer.max_epochs
            # closed form: k = B (1 - momentum) / (lr_low wd) steps of ceil(60000 / 64) per epoch, wd = 0.016 / L
            wd = 0.016 / (int(depth) + 3)
            assert cfg.trainer.max_epochs == math.ceil(16 * (1 - 0.9) / (lr_low * wd) / math.ceil(60000 / 64))
    assert {d: epochs[d, 0.02] for d in (4, 6, 8, 10, 12)} == {4: 38, 6: 48, 8: 59, 10: 70, 12: 80}
    assert all(epochs[d, 0.04] == epochs[d, 0.02] for d in (4, 6, 8, 10, 12))


def test_the_full_tier_is_the_cpu_preset_with_more_depths_seeds_and_images():
    """conf/reproduce/full.yaml names its base (cpu) and only what differs: a figure it leaves out
    is the cpu preset's, a sweep value it sets replaces that one value, an overrides list it sets
    replaces the whole list."""
    from wdcollapse.figures import preset_sweeps

    _, cpu = preset_sweeps("cpu")
    _, full = preset_sweeps("full")
    cpu, full = {f.name: f for f in cpu}, {f.name: f for f in full}
    assert list(full) == list(cpu)
    assert full["theory_gd"] == cpu["theory_gd"]
    nonlinear = full["nonlinear_depth_mnist"]
    assert sorted(int(d) for d in nonlinear.sweep["model.nonlinear_depth"].split(",")) == list(range(4, 13))
    assert nonlinear.sweep["optim.lr"] == cpu["nonlinear_depth_mnist"].sweep["optim.lr"]  # kept from the base
    assert nonlinear.overrides == cpu["nonlinear_depth_mnist"].overrides
    assert nonlinear.num_runs == 9 * 2 * 3
    assert full["mlp_mnist"].sweep["seed"].split(",") == ["0", "1", "2", "3", "4"]
    for name in ("linear_depth_mnist", "resnet20_mnist", "linear_depth_cifar10"):
        assert len(full[name].sweep["seed"].split(",")) == 3, name
    for name in ("resnet20_mnist", "resnet20_cifar10", "linear_depth_cifar10"):
        assert "data.num_per_class=500" in full[name].overrides, name  # 5,000 class-balanced images
        assert "data.num_per_class=100" not in full[name].overrides, name


def test_the_figures_beyond_the_paper_are_a_presets_own_key_taken_only_when_asked():
    """conf/reproduce/<preset>.yaml lists the figures beyond the paper under `beyond:`, next to
    `figures:`; preset_sweeps adds them with beyond=True (full.yaml has them from its base, cpu), and a
    figure under the wrong key is an error naming it."""
    from unittest import mock

    from wdcollapse import figures
    from wdcollapse.figures import FIGURES, preset_sweeps

    beyond = ["stability_mnist", "deep_head_mnist", "width_mnist"]
    for preset in ("cpu", "full", "smoke"):
        _, paper = preset_sweeps(preset)
        _, every = preset_sweeps(preset, beyond=True)
        assert not any(f.beyond for f in paper) and [f.name for f in every] == [f.name for f in paper] + beyond
        assert all(f.beyond and FIGURES[f.experiment].beyond for f in every[len(paper) :])
    _, cpu = preset_sweeps("cpu", beyond=True)
    width = {f.name: f for f in cpu}["width_mnist"]
    assert width.use_preset is False and width.sweep["model.width.0"] == "400,200,100,50,25"
    assert [c["model.width.0"] for c in width.combinations()][:2] == ["400", "400"]  # two seeds each
    deep = {f.name: f for f in cpu}["deep_head_mnist"]
    assert {int(d) for d in deep.sweep["model.linear_depth"].split(",")} >= {6, 8, 10}
    # the experiment's own sweep keys are all named, so that no two runs share a directory
    for f in cpu + preset_sweeps("smoke", beyond=True)[1]:
        own = OmegaConf.load(CONF / "experiment" / f"{f.experiment}.yaml").hydra.sweeper.params
        assert set(own) <= set(f.sweep), (f.name, set(own) - set(f.sweep))
    # a paper figure under `beyond:` (or a beyond figure under `figures:`) is refused with its name
    spec = figures.preset_spec("smoke")
    spec["beyond"]["mlp_mnist"] = spec["figures"]["mlp_mnist"]
    with mock.patch.object(figures, "preset_spec", return_value=spec):
        with pytest.raises(SystemExit, match="lists mlp_mnist .* under `beyond:`; it belongs under `figures:`"):
            preset_sweeps("smoke", beyond=True)
    spec = figures.preset_spec("smoke")
    spec["figures"]["width_mnist"] = spec["beyond"]["width_mnist"]
    with mock.patch.object(figures, "preset_spec", return_value=spec):
        with pytest.raises(SystemExit, match="under `figures:`; it belongs under `beyond:`"):
            preset_sweeps("smoke")


def test_bf16_autocast_only_where_bf16_is_native(monkeypatch):
    """`${bf16_where_native:...}` picks bf16-mixed on a CUDA GPU with bf16 or a CPU with AVX512-BF16
    or AMX, float32 elsewhere (an AVX2 CPU emulates bf16, 10x slower than float32)."""
    import torch

    from wdcollapse import config

    def cpu_has(bf16: bool, amx: bool = False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu_has(False)
    assert config.bf16_where_native("auto") == config.bf16_where_native("cpu") == "32-true"
    assert config.bf16_where_native("gpu") == "32-true"  # asked for a GPU where there is none
    cpu_has(True)
    assert config.bf16_where_native("auto") == config.bf16_where_native("cpu") == "bf16-mixed"
    cpu_has(False, amx=True)
    assert config.bf16_where_native("cpu") == "bf16-mixed"
    # a GPU: its own bf16 support decides, not the CPU's; accelerator=cpu still asks the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu_has(False)
    # torch counts emulated bf16 (a T4, a V100) unless asked not to: only hardware bf16 counts
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert config.bf16_where_native("auto") == config.bf16_where_native("cuda") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert config.bf16_where_native("auto") == config.bf16_where_native("cuda") == "bf16-mixed"
    assert config.bf16_where_native("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert config.bf16_where_native("auto") == "32-true"


@pytest.mark.parametrize("preset", ["cpu", "full"])
def test_the_presets_ask_for_bf16_only_where_it_is_native(preset):
    """No preset hard-codes bf16-mixed (10x slower on a CPU without native bf16); each figure that
    asks for bf16 resolves to what this machine runs natively, and the run's config records it."""
    from wdcollapse.config import bf16_where_native
    from wdcollapse.figures import preset_sweeps

    text = (CONF / "reproduce" / f"{preset}.yaml").read_text() + (CONF / "search" / "mlp_recipe.yaml").read_text()
    assert "precision=bf16-mixed" not in text and "precision: bf16-mixed" not in text
    asked = 0
    for figure in preset_sweeps(preset, beyond=True)[1]:
        first = [f"{k}={str(v).split(',')[0]}" for k, v in figure.sweep.items()]
        preset_arg = [f"preset={preset}"] if figure.use_preset else []
        cfg = job_cfg(f"experiment={figure.experiment}", *preset_arg, *first, *figure.overrides)
        precision = OmegaConf.to_container(cfg, resolve=True)["trainer"]["precision"]
        if any("bf16_where_native" in o for o in figure.overrides):
            asked += 1
            assert precision == bf16_where_native(cfg.trainer.accelerator), figure.name
        else:
            assert precision == "32-true", figure.name
    assert asked >= 5
