"""A user's own config directory (Hydra's --config-dir) adds an experiment, a data set and a model
of the user's own classes, and they train under wdcollapse-train; a class that lacks the
per-layer interface is refused with what it lacks."""

import sys
import textwrap

import pytest
from conftest import read_metrics, train_command

from wdcollapse.config import check_command_line
from wdcollapse.errors import ConfigError

USERLIB = '''
import pytorch_lightning as pl
import torch
from torch import nn


class BlobData(pl.LightningDataModule):
    """Gaussian blobs: a data module written the way a user would, plain DataLoader batches."""

    def __init__(self, num_classes=3, dim=8, per_class=40, batch_size=20, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        means = 3 * torch.randn(num_classes, dim, generator=g)
        self.y = torch.arange(num_classes).repeat_interleave(per_class)
        self.x = means[self.y] + torch.randn(len(self.y), dim, generator=g)
        self.num_classes, self.batch_size = num_classes, batch_size

    @property
    def num_train(self):
        return len(self.y)

    def train_dataloader(self):
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=True)

    def eval_batches(self, split="train", rank=0, world=1):
        if rank == 0:
            yield self.x, self.y


class TinyNet(nn.Module):
    """A MeasuredNetwork: ReLU layers, then a linear head, all bias-free."""

    def __init__(self, dim, num_classes, width=16, nonlinear_depth=2, linear_depth=2):
        super().__init__()
        sizes = [dim] + [width] * (nonlinear_depth + linear_depth - 1) + [num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes, sizes[1:]))
        self.nonlinear_depth, self.linear_depth, self.num_layers = nonlinear_depth, linear_depth, len(self.layers)

    @property
    def weights(self):
        return [layer.weight for layer in self.layers]

    @property
    def is_linear(self):
        return [l >= self.nonlinear_depth for l in range(self.num_layers)]

    def iter_layers(self, x):
        for l, layer in enumerate(self.layers):
            pre = layer(x)
            x = torch.relu(pre) if l < self.nonlinear_depth else pre
            yield pre, x

    def forward(self, x):
        for _, x in self.iter_layers(x):
            pass
        return x


class PlainNet(nn.Module):
    """Not a MeasuredNetwork: no per-layer interface."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(x)
'''

CONFIGS = {
    "data/blobs.yaml": """
        _target_: userlib.BlobData
        num_classes: 3
        dim: 8
        per_class: 40
        batch_size: 20
        seed: ${seed}
    """,
    "model/tiny.yaml": """
        _target_: userlib.TinyNet
        dim: 8
        num_classes: ${data.num_classes}
        width: 16
    """,
    "model/plain.yaml": """
        _target_: userlib.PlainNet
        dim: 8
        num_classes: ${data.num_classes}
    """,
    "experiment/blobs_tiny.yaml": """
        # @package _global_
        defaults:
          - override /data: blobs
          - override /model: tiny
        name: blobs_tiny
        optim:
          lr: 0.05
          warmup_epochs: 0
        trainer:
          max_epochs: 3
        callbacks:
          metrics:
            schedule: every
    """,
}


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "userlib.py").write_text(USERLIB)
    monkeypatch.syspath_prepend(str(tmp_path))  # as PYTHONPATH would: the user's module imports
    monkeypatch.delitem(sys.modules, "userlib", raising=False)
    conf = tmp_path / "user_conf"
    for name, text in CONFIGS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(textwrap.dedent(text).lstrip())
    return tmp_path


def train(user_dir, *overrides):
    """wdcollapse-train --config-dir USER_DIR/user_conf ..., in this process (conftest.train_command)."""
    args = ["--config-dir", str(user_dir / "user_conf"), "logger=none", *overrides]
    return train_command(args, env={"WANDB_MODE": "disabled"}, check=False)


def test_config_dir_options_are_choices_and_only_with_the_config_dir(user_dir):
    conf = str(user_dir / "user_conf")
    check_command_line(["--config-dir", conf, "experiment=blobs_tiny", "model=tiny,mlp", "data=blobs"])
    with pytest.raises(ConfigError, match=r"data='blobz' is not allowed: one of \['blobs', 'cifar10'.*user_conf's"):
        check_command_line(["--config-dir", conf, "data=blobs,blobz"])
    with pytest.raises(ConfigError, match="data='blobs' is not allowed"):
        check_command_line(["data=blobs"])  # without the config dir: not on the search path
    # hydra.searchpath is a search path too
    check_command_line([f"hydra.searchpath=[file://{conf}]", "data=blobs", "model=tiny"])


@pytest.mark.slow
def test_a_user_experiment_with_its_own_data_and_model_trains_and_is_measured(user_dir):
    out = user_dir / "run"
    proc = train(user_dir, "experiment=blobs_tiny", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    last = rows[-1]
    # 4 layers: ReLU 1-2, linear 3-4; negativity only on the activated ones; the theory keys for the head
    assert {f"nc1/layer_{l}" for l in range(1, 5)} <= set(last)
    assert {"negativity/layer_1", "negativity/layer_2"} <= set(last) and "negativity/layer_3" not in last
    assert any(k.startswith("theory/") for k in last)
    assert last["train/acc"] > 0.9  # three well-separated blobs
    assert last["nc1/layer_3"] < rows[0]["nc1/layer_3"]  # training collapses the features


@pytest.mark.slow
def test_a_model_without_the_interface_is_refused_with_what_it_lacks(user_dir):
    proc = train(user_dir, "experiment=blobs_tiny", "model=plain", f"hydra.run.dir={user_dir / 'plain'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "model._target_=userlib.PlainNet lacks" in proc.stderr and "iter_layers" in proc.stderr
    assert "MeasuredNetwork" in proc.stderr
