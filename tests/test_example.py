"""examples/resnet18_mlp_head.py: a user's LightningModule (torchvision resnet18 trunk + MLP head)
trains under MetricMonitor through forward hooks, and its metric rows equal those of the same
network measured by the package's own path (a LayerwiseNet holding the same trunk and weights)."""

import importlib.util
import json
import math

import pytest
import torch
from conftest import REPO
from torch.utils.data import DataLoader

from wdcollapse.interfaces import HookedNetwork, MeasuredNetwork
from wdcollapse.metric_pass import metric_pass
from wdcollapse.models import LayerwiseNet
from wdcollapse.theory_monitors import TheoryObserver


def load_example():
    spec = importlib.util.spec_from_file_location("resnet18_mlp_head", REPO / "examples" / "resnet18_mlp_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_layerwise(model) -> LayerwiseNet:
    """The example's network as this package's LayerwiseNet: the same trunk, the head's weights."""
    head = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    net = LayerwiseNet(model.trunk, 512, 10, nonlinear_depth=2, linear_depth=2, width=head[0].out_features)
    for mine, theirs in zip(net.layers, head):
        mine.weight.data.copy_(theirs.weight.data)
    return net


@pytest.mark.slow
def test_the_example_runs_under_metric_monitor_and_equals_the_package_path(tmp_path):
    example = load_example()
    torch.set_num_threads(1)
    model = example.main(str(tmp_path), epochs=2, n=128)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    assert {f"nc1/layer_{l}" for l in range(1, 5)} <= set(last) and "negativity/layer_3" not in last
    assert {"train/loss", "train/acc", "test/acc", "nc3"} <= set(last)
    assert any(k.startswith("theory/") for k in last)

    # the same network through the existing path, on the same batches
    model.eval()
    net = as_layerwise(model).eval()
    train_set = example.cifar_shaped(128, 0)
    batches = list(DataLoader(train_set, batch_size=128))
    loss = lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="sum") / 128  # noqa: E731
    row, _ = metric_pass(net, batches, 10, loss_fn=loss, observers=[TheoryObserver(net, 10, exact=False)], exact=False)
    compared = 0
    for key, value in row.items():
        mine = last["train/loss" if key == "loss" else "train/acc" if key == "acc" else key]
        if isinstance(value, float) and math.isfinite(value):
            assert mine == pytest.approx(value, rel=1e-9, abs=1e-12), key
            compared += 1
    assert compared >= 20


def test_hooked_network_is_a_measured_network_and_refuses_what_it_cannot_measure():
    example = load_example()
    model = example.ResNetWithMLPHead(width=8)
    hooked = HookedNetwork(model, example.LAYERS, linear_depth=2)
    assert isinstance(hooked, MeasuredNetwork) and isinstance(as_layerwise(model), MeasuredNetwork)
    assert hooked.is_linear == [False, False, True, True] and hooked.nonlinear_depth == 2
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    pairs = list(hooked.iter_layers(x))
    reference = list(as_layerwise(model).eval().iter_layers(x))
    for (pre, out), (ref_pre, ref_out) in zip(pairs, reference):
        assert torch.equal(pre, ref_pre) and torch.equal(out, ref_out)
    assert torch.equal(pairs[-1][1], model(x))
    assert not model.head[0]._forward_hooks  # hooks live only during a pass
    with pytest.raises(ValueError, match="no submodule named"):
        HookedNetwork(model, ["head.0", "head.9"], linear_depth=1)
    with pytest.raises(ValueError, match=r"with a 2-D weight.*'trunk.conv1' \(Conv2d\).*candidates are \['head.0'"):
        HookedNetwork(model, ["trunk.conv1", "head.5"], linear_depth=1)
    with pytest.raises(ValueError, match=r"linear_depth=3\): not allowed: an integer from 0 to the 2 layers"):
        HookedNetwork(model, ["head.4", "head.5"], linear_depth=3)


def test_hooked_network_keeps_the_pre_activation_under_an_in_place_relu():
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 7, bias=False), torch.nn.ReLU(inplace=True), torch.nn.Linear(7, 3, bias=False)
    )
    hooked = HookedNetwork(net, ["0", "2"], linear_depth=1)
    x = torch.randn(16, 5)
    (pre, out), _ = list(hooked.iter_layers(x))
    assert torch.equal(pre, x @ net[0].weight.T) and pre.min() < 0
    assert torch.equal(out, pre.clamp(min=0))
