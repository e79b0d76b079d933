"""The metric pass (streaming, chunked, all layers at once) against the plain metric functions
applied to features captured layer by layer with forward hooks: an independent route."""

import pytest
import torch

from wdcollapse import metrics
from wdcollapse.metric_pass import accuracy, metric_pass
from wdcollapse.models import MLP


def captured_features(net, x):
    pre = []
    hooks = [layer.register_forward_hook(lambda m, i, o: pre.append(o.detach())) for layer in net.layers]
    with torch.no_grad():
        out = net(x)
    for h in hooks:
        h.remove()
    outs = [torch.relu(p) if l < net.nonlinear_depth else p for l, p in enumerate(pre)]
    return pre, outs, out


@pytest.mark.parametrize("chunk", [1000, 37])
def test_metric_pass_equals_functions_on_captured_features(chunk):
    torch.manual_seed(0)
    net = MLP((1, 6, 6), 5, nonlinear_depth=3, linear_depth=3, width=24).eval()
    x, y = torch.randn(400, 1, 6, 6), torch.arange(400) % 5
    batches = [(x[i : i + chunk], y[i : i + chunk]) for i in range(0, 400, chunk)]
    row, grams = metric_pass(net, batches, 5, loss_fn=lambda out, t: (out.argmax(1) != t).sum())
    pre, outs, out = captured_features(net, x)
    L = 6
    for l in range(L):
        assert row[f"nc1/layer_{l + 1}"] == pytest.approx(metrics.nc1(outs[l], y, 5), rel=1e-9)
        assert row[f"nc2/layer_{l + 1}"] == pytest.approx(metrics.nc2(outs[l], y, 5), rel=1e-9)
        if l < 3:
            assert row[f"negativity/layer_{l + 1}"] == pytest.approx(metrics.negativity(pre[l]), rel=1e-9)
        else:
            assert f"negativity/layer_{l + 1}" not in row
        if l < L - 1:
            assert row[f"balancedness/layer_{l + 1}"] == pytest.approx(
                metrics.balancedness(net.weights[l + 1], net.weights[l]), rel=1e-12
            )
    assert "balancedness/layer_6" not in row
    assert row["nc3"] == pytest.approx(metrics.nc3(outs[L - 2], y, net.weights[-1]), rel=1e-9)
    assert row["acc"] == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert row["loss"] == (out.argmax(1) != y).sum().item()
    assert row["acc"] == accuracy(net, batches)
    # class-mean Gram of the last ReLU layer's pre-activation and of the head's outputs
    means = torch.stack([pre[2][y == c].double().mean(0) for c in range(5)])
    assert torch.allclose(torch.tensor(grams["preact_3"], dtype=torch.float64), means @ means.T, rtol=1e-9)
    assert set(grams) == {f"layer_{l}" for l in range(1, 7)} | {"preact_3"}


def test_negativity_row_follows_the_models_activation():
    torch.manual_seed(0)
    net = MLP(
        (1, 6, 6),
        5,
        nonlinear_depth=2,
        linear_depth=2,
        width=24,
        activation="smooth_leaky_relu",
        activation_kwargs={"gamma": 0.1, "beta": 4.0},
    ).eval()
    x, y = torch.randn(120, 1, 6, 6), torch.arange(120) % 5
    row, _ = metric_pass(net, [(x[:50], y[:50]), (x[50:], y[50:])], 5)
    trace = net.forward_layers(x)
    for l in range(2):
        pre = trace.preacts[l].double()
        expected = (torch.linalg.matrix_norm(pre - net.activation(pre), 2) / torch.linalg.matrix_norm(pre, 2)).item()
        assert row[f"negativity/layer_{l + 1}"] == pytest.approx(expected, rel=1e-6)
        # not ReLU's min(Z, 0), which is 40% larger here
        assert abs(row[f"negativity/layer_{l + 1}"] - metrics.negativity(trace.preacts[l])) > 0.05


@pytest.mark.parametrize("exact", [True, False])
def test_metric_pass_without_negativity_leaves_only_its_keys_out(exact):
    torch.manual_seed(0)
    net = MLP((1, 6, 6), 5, nonlinear_depth=3, linear_depth=2, width=24).eval()
    x, y = torch.randn(200, 1, 6, 6), torch.arange(200) % 5
    batches = [(x[:90], y[:90]), (x[90:], y[90:])]
    full, full_grams = metric_pass(net, batches, 5, exact=exact)
    row, grams = metric_pass(net, batches, 5, exact=exact, negativity=False)
    negativity_keys = {f"negativity/layer_{l}" for l in (1, 2, 3)}
    assert negativity_keys <= set(full)
    assert row == {k: v for k, v in full.items() if k not in negativity_keys}
    assert grams == full_grams
