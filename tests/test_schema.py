"""The settings schema: a bad value of any setting stops before any work with one line naming the
setting (exit code 2, no traceback); the YAML defaults are the schema's; the names the schema
allows are the ones the implementations know."""

import typing
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_train, train_command
from omegaconf import open_dict
from pydantic import BaseModel

from wdcollapse import schema
from wdcollapse.config import CONF_DIR, check_config
from wdcollapse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR


def job_cfg(*overrides):
    return compose_train("logger=none", *overrides)


def _constraints(info) -> dict:
    out = {}
    for m in info.metadata:
        for bound in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(m, bound, None) is not None:
                out[bound] = getattr(m, bound)
    return out


def _bad_values(annotation, info) -> list:
    """Values of a field's type that the schema must refuse: out of range, of the wrong type,
    not among the allowed names."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        return _bad_values(base, type("I", (), {"metadata": meta})())
    if origin is typing.Literal:
        return ["not_an_option"]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        bad = []
        for arg in args:  # a value bad for every member of the union
            bad += [v for v in _bad_values(arg, info) if v == "not_an_option" or isinstance(v, (int, float))]
        return bad[:1] or ["not_an_option"]
    c = _constraints(info)
    if annotation is bool:
        return ["maybe"]
    if annotation is int:
        return (
            ["abc", 1.5]
            + ([c["ge"] - 1] if "ge" in c else [])
            + ([c["gt"]] if "gt" in c else [])
            + ([c["le"] + 1] if "le" in c else [])
        )
    if annotation is float:
        return (
            ["abc"]
            + ([c["ge"] - 0.5] if "ge" in c else [])
            + ([c["gt"]] if "gt" in c else [])
            + ([c["lt"]] if "lt" in c else [])
            + ([c["le"] + 0.5] if "le" in c else [])
        )
    return []


def bad_settings():
    """(setting, bad value) for every scalar setting of the schema, generated from its types."""
    out = []

    def walk(model: type[BaseModel], prefix: str):
        hints = typing.get_type_hints(model, include_extras=True)
        for name, info in model.model_fields.items():
            key = prefix + (info.alias or name)
            if (
                key.endswith("_target_")
                or key.startswith("logger")
                or key in ("paths.data_dir", "data.root", "data.image_folder")
            ):
                continue  # free strings
            annotation = hints[name]
            inner = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, key + ".")
            elif inner:
                continue  # an optional sub-config (callbacks.theory_gd): checked with its experiment
            else:
                out.extend((key, value) for value in _bad_values(annotation, info))

    walk(schema.Settings, "")
    return out


BAD = bad_settings()


def test_the_table_covers_every_group():
    groups = {key.split(".")[0] for key, _ in BAD}
    assert {"seed", "threads", "data", "model", "optim", "loss", "trainer", "callbacks", "resume"} <= groups
    keys = {key for key, _ in BAD}
    for key in (
        "seed",
        "data.eval_chunk",
        "threads",
        "trainer.precision",
        "optim.momentum",
        "optim.lr",
        "model.width",
        "callbacks.metrics.every_n",
    ):
        assert key in keys, key
    assert len(BAD) > 60


@pytest.mark.parametrize(("setting", "value"), BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_every_bad_value_is_refused_naming_the_setting(setting, value):
    cfg = job_cfg(f"++{setting}={value}")
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    message = str(info.value)
    assert message.startswith(f"{setting}="), message
    assert "\n" not in message and "is not allowed" in message


def test_sub_config_of_an_experiment_is_checked():
    with pytest.raises(ConfigError, match=r"^callbacks.theory_gd.settle=1.5 is not allowed: a number < 1"):
        check_config(job_cfg("experiment=theory_gd", "callbacks.theory_gd.settle=1.5"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+optim.lrr=0.1", "optim.lrr=0.1 is not allowed: no such setting"),
        ("+trainer.max_epoch=3", "trainer.max_epoch is not allowed: not an argument of pytorch_lightning.Trainer"),
        ("trainer.accelerator=tpux", "trainer.accelerator='tpux' is not allowed"),
        ("optim.momentum=1.5", "optim.momentum=1.5 is not allowed: a number < 1"),
        ("data.name=imagenet", "data.name='imagenet' is not allowed: one of 'mnist', 'fashion_mnist' or 'cifar10'"),
    ],
)
def test_known_refusals(override, expected):
    with pytest.raises(ConfigError) as info:
        check_config(job_cfg(override))
    assert str(info.value).startswith(expected), str(info.value)


def test_legal_values_pass():
    for override in (
        "seed=0",
        "optim.momentum=0",
        "optim.momentum=0.99",
        "data.batch_size=null",
        "threads=2",
        "trainer.precision=bf16-mixed",
        "trainer.precision=32",
        "callbacks.metrics.theory=false",
        "model.width=[64,32,16,16,16,16,16,10]",
        "+trainer.limit_val_batches=0",
    ):
        check_config(job_cfg(override))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override", ["seed=abc", "data.eval_chunk=0", "threads=0", "trainer.precision=fp7", "optim.momentum=1.5"]
)
def test_the_entry_point_exits_2_with_one_line(tmp_path, override):
    proc = train_command([override, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {override.split('=')[0]}="), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _yaml_defaults(path: Path) -> dict:
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}


@pytest.mark.parametrize(
    ("yaml_file", "model"),
    [
        ("optim/sgd.yaml", schema.Optim),
        ("callbacks/default.yaml", schema.Callbacks),
        ("trainer/default.yaml", schema.Trainer),
        ("model/mlp.yaml", schema.Model),
        ("data/mnist.yaml", schema.Data),
    ],
)
def test_yaml_defaults_are_the_schemas(yaml_file, model):
    values = _yaml_defaults(CONF / yaml_file)
    if model is schema.Callbacks:
        for node in ("guard", "checkpoint"):  # _target_ nodes: the schema's default node is the YAML's
            default = model.model_fields[node].get_default(call_default_factory=True)
            assert values.pop(node) == default.model_dump(by_alias=True), node
        metrics = values.pop("metrics")
        for name, info in schema.Metrics.model_fields.items():
            default = info.get_default(call_default_factory=True)
            default = default.model_dump() if isinstance(default, BaseModel) else default  # a sub-group: its values
            assert metrics[info.alias or name] == default, name
    checked = 2 if model is schema.Callbacks else 0  # its two _target_ nodes, compared above
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in values and not info.is_required() and "${" not in str(values[key]):
            assert values[key] == info.get_default(call_default_factory=True), (yaml_file, key)
            checked += 1
    assert checked >= 2
    root = _yaml_defaults(CONF / "train.yaml")
    for key in ("seed", "threads", "compile", "channels_last", "steps_per_call", "resume"):
        assert root[key] == schema.Settings.model_fields[key].default, key


def test_the_monitor_takes_its_defaults_from_the_schema(tmp_path):
    from wdcollapse.callbacks import MetricMonitor

    monitor = MetricMonitor(tmp_path)
    assert (monitor.schedule, monitor.num_points) == (schema.Metrics().schedule, schema.Metrics().num_points)


def test_the_allowed_names_are_the_implementations():
    from wdcollapse.data.sources import NUM_CLASSES
    from wdcollapse.models.activations import make_activation
    from wdcollapse.models.layerwise import initialise
    from wdcollapse.module import classification_loss

    assert set(schema.names(schema.DataName)) == set(NUM_CLASSES)
    for name in schema.names(schema.Activation):
        make_activation(name)
    layers = torch.nn.ModuleList([torch.nn.Linear(3, 3, bias=False) for _ in range(2)])
    for name in schema.names(schema.Init):
        initialise(layers, 1, name)
    out, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    for name in schema.names(schema.LossName):
        for reduction in schema.names(schema.MseReduction):
            assert torch.isfinite(classification_loss(out, labels, name, reduction))


def test_cross_setting_rules_still_hold():
    with pytest.raises(ConfigError, match="model.width"):
        check_config(job_cfg("model.width=[8,8]"))
    with pytest.raises(ConfigError, match="optim=gd"):
        check_config(job_cfg("optim=gd"))
    cfg = job_cfg()
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = 2
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        check_config(cfg)
