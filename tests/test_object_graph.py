"""The config is the object graph: the LightningModule is the `module` node (the network, the
optimizer and the schedule nested in it), the optimizer a partial `_target_` node of the optim
group, the callbacks a list of `_target_` nodes built in order. So adding an optimizer is one
YAML file in a config folder of one's own, and a run is `run(cfg, out_dir)` in this process."""

import functools
import json

import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate

from wdcollapse.callbacks import AtomicCheckpoint, DivergenceGuard, MetricMonitor
from wdcollapse.config import check_config
from wdcollapse.errors import ConfigError
from wdcollapse.module import CollapseModule
from wdcollapse.train import build_callbacks, run

TINY = [
    "logger=none",
    "data.num_per_class=10",
    "model.width=16",
    "model.nonlinear_depth=2",
    "model.linear_depth=2",
    "trainer.max_epochs=2",
    "callbacks.metrics.schedule=every",
]

RMSPROP = """\
# RMSprop: the whole of adding an optimizer
name: rmsprop
lr: 1.0e-3
weight_decay: 1.0e-4
trunk_weight_decay: null
warmup_epochs: 0
lr_drop_at: null
lr_drop_factor: 0.1
optimizer:
  _target_: torch.optim.RMSprop
  _partial_: true
  lr: ${..lr}
  weight_decay: ${..weight_decay}
  alpha: 0.9
"""


def composed(*overrides, config_dir=None):
    return compose_train(*TINY, *overrides, config_dir=config_dir)


def test_adding_an_optimizer_is_one_yaml_file(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "optim").mkdir(parents=True)
    (conf / "optim" / "rmsprop.yaml").write_text(RMSPROP)
    cfg = composed("optim=rmsprop", config_dir=conf)
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["epochs"] == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert state["param_groups"][0]["alpha"] == 0.9 and state["param_groups"][0]["lr"] == 1e-3
    assert all("square_avg" in s for s in state["state"].values())  # RMSprop's own state: it trained
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    # and what it cannot take is named before any work
    with pytest.raises(ConfigError, match=r"optim.optimizer.nesterov is not allowed: not an argument of torch.optim"):
        check_config(composed("optim=rmsprop", "+optim.optimizer.nesterov=true", config_dir=conf))


def test_the_module_node_builds_the_network_with_the_configs_optimizer_and_schedule():
    cfg = composed("optim.lr=0.05", "optim.momentum=0.5", "optim.warmup_epochs=2")
    module = instantiate(cfg.module)
    assert isinstance(module, CollapseModule) and module.model.num_layers == 4
    assert isinstance(module.optimizer_factory, functools.partial)
    assert module.optimizer_factory.func is torch.optim.SGD
    assert module.optimizer_factory.keywords == {
        "lr": 0.05,
        "momentum": 0.5,
        "nesterov": False,
        "weight_decay": 1.8e-3,
        "fused": True,
    }
    assert module.schedule_factory.keywords == {"warmup_epochs": 2, "drop_at": None, "drop_factor": 0.1}
    for name in ("adam", "adamw", "gd"):
        module = instantiate(composed(f"optim={name}").module)
        assert module.optimizer_factory.func.__name__ == {"adam": "Adam", "adamw": "AdamW", "gd": "SGD"}[name]


def test_a_bad_optimizer_argument_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"^optim.optimizer.betas is not allowed: not an argument of torch.optim.SGD"):
        check_config(composed("+optim.optimizer.betas=[0.9,0.99]"))
    with pytest.raises(ConfigError, match=r"optim.nesterov=True is not allowed: false with optim.momentum=0"):
        check_config(composed("optim.nesterov=true", "optim.momentum=0"))


def test_callbacks_are_built_in_order_and_a_users_own_joins_them(tmp_path):
    cfg = composed("+callbacks.timer._target_=pytorch_lightning.callbacks.Timer")
    check_config(cfg)
    callbacks = build_callbacks(cfg, tmp_path)
    kinds = [type(c) for c in callbacks]
    assert kinds[:3] == [DivergenceGuard, MetricMonitor, AtomicCheckpoint] and kinds[-1].__name__ == "Timer"
    assert callbacks[1].out_dir == tmp_path and callbacks[2].last_path == tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"callbacks.checkpoint.every_n_epoch=3 is not allowed: no such setting"):
        check_config(composed("+callbacks.checkpoint.every_n_epoch=3"))
