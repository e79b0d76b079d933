"""The Lightning pieces in-process on synthetic data: every optimizer trains, the metric callback
evaluates on its schedule and reaches every logger, epoch 0 is measured before any step."""

import csv
import json

import pytest
import torch
from conftest import compose_train, cpu_trainer
from pytorch_lightning.loggers import CSVLogger

from wdcollapse.callbacks import AtomicCheckpoint, DivergenceGuard, MetricMonitor, evaluation_epochs
from wdcollapse.data.tensors import TensorDataModule
from wdcollapse.metric_pass import metric_pass
from wdcollapse.models import MLP
from wdcollapse.module import CollapseModule


def synthetic_data(batch_size=16):
    torch.manual_seed(0)
    dm = TensorDataModule("mnist", "/nonexistent", batch_size=batch_size)
    y = torch.arange(60) % 10
    patterns = torch.randn(10, 1, 4, 4)
    dm.train_x = patterns[y] + 0.3 * torch.randn(60, 1, 4, 4)
    dm.train_y, dm.test_x, dm.test_y = y, dm.train_x[:20].clone(), y[:20].clone()
    return dm


def from_config(name: str, **settings) -> dict:
    """CollapseModule's optimizer and schedule as `wdcollapse-train optim=<name> optim.<k>=<v>`
    builds them: from conf/optim/<name>.yaml and the module node of conf/train.yaml."""
    from hydra.utils import instantiate

    overrides = [
        "logger=none",
        f"optim={name}",
        "optim.warmup_epochs=0",
        *(f"optim.{k}={v}" for k, v in settings.items()),
    ]
    cfg = compose_train(*overrides)
    return {"optimizer": instantiate(cfg.optim.optimizer), "schedule": instantiate(cfg.module.schedule)}


def fit(tmp_path, optim, epochs=3, schedule="every", logger=False, **monitor):
    torch.manual_seed(0)
    dm = synthetic_data(batch_size=None if optim["name"] == "gd" else 16)
    module = CollapseModule(MLP((1, 4, 4), 10, 2, 2, width=12), **from_config(**optim))
    monitor = MetricMonitor(tmp_path, schedule=schedule, **monitor)
    trainer = cpu_trainer(
        tmp_path,
        max_epochs=epochs,
        logger=logger,
        enable_checkpointing=True,
        callbacks=[monitor, DivergenceGuard(), AtomicCheckpoint(tmp_path)],
    )
    initial = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=dm)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return module, dm, rows, initial


@pytest.mark.parametrize("name", ["sgd", "gd", "adam", "adamw"])
def test_every_optimizer_trains_and_applies_weight_decay(tmp_path, name):
    settings = {"name": name, "lr": 0.01, "weight_decay": 1e-3} | ({"momentum": 0.9} if name == "sgd" else {})
    module, _, rows, initial = fit(tmp_path, settings)
    opt = module.trainer.optimizers[0]
    assert opt.param_groups[0]["weight_decay"] == 1e-3
    assert ("momentum" not in opt.defaults) or opt.defaults["momentum"] == (0.0 if name == "gd" else 0.9)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(initial, module.parameters()))
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    expected_steps = 1 if name == "gd" else 4
    assert rows[1]["step"] == expected_steps


def test_epoch_zero_is_measured_at_initialisation(tmp_path):
    dm = synthetic_data()  # seeds the RNG, then draws the data: the model is drawn next, as in fit()
    reference = MLP((1, 4, 4), 10, 2, 2, width=12).eval()
    expected, _ = metric_pass(reference, dm.eval_batches("train"), 10, exact=False)  # the callback's default path
    _, _, rows, _ = fit(tmp_path, {"name": "sgd", "lr": 0.01, "weight_decay": 0.0})
    assert rows[0]["epoch"] == 0 and rows[0]["step"] == 0
    for key in ("nc1/layer_2", "nc2/layer_4", "negativity/layer_1", "balancedness/layer_3", "nc3"):
        assert rows[0][key] == pytest.approx(expected[key], rel=1e-12)


def test_log_schedule_and_every_logger_receives_the_rows(tmp_path):
    logger = CSVLogger(tmp_path / "csv", name="run")
    _, _, rows, _ = fit(tmp_path, {"name": "sgd", "lr": 0.01}, epochs=20, schedule="log", num_points=5, logger=logger)
    assert [r["epoch"] for r in rows] == sorted(evaluation_epochs(20, "log", num_points=5))
    with open(logger.log_dir + "/metrics.csv") as f:
        logged = list(csv.DictReader(f))
    assert len([r for r in logged if r.get("nc1/layer_3")]) == len(rows)


def test_evaluation_schedules():
    assert evaluation_epochs(10, "every", every_n=3) == {0, 3, 6, 9, 10}
    log = evaluation_epochs(1000, "log", num_points=10)
    assert {0, 1, 1000} <= log and len(log) <= 11
    with pytest.raises(ValueError, match="schedule"):
        evaluation_epochs(10, "sometimes")
