import math

import pytest
import torch

from wdcollapse.models import MLP, ResNet20, SmoothLeakyReLU
from wdcollapse.models.layerwise import layer_widths


def test_forward_layers_matches_forward_and_layer_structure():
    torch.manual_seed(0)
    net = MLP((1, 8, 8), 10, nonlinear_depth=3, linear_depth=2, width=[16, 12, 12, 11])
    x = torch.randn(7, 1, 8, 8)
    trace = net.forward_layers(x)
    assert torch.equal(trace.output, net(x))
    assert net.is_linear == [False, False, False, True, True]
    assert [z.shape[1] for z in trace.outputs] == [16, 12, 12, 11, 10]
    assert [tuple(w.shape) for w in net.weights] == [(16, 64), (12, 16), (12, 12), (11, 12), (10, 11)]
    z_prev = x.flatten(1)
    for l, (pre, out) in enumerate(zip(trace.preacts, trace.outputs)):
        assert torch.allclose(pre, z_prev @ net.weights[l].T)  # bias-free by default
        assert torch.equal(out, torch.relu(pre) if l < 3 else pre)
        z_prev = out


def test_linear_head_is_bias_free_even_when_backbone_has_bias():
    net = MLP((4,), 3, nonlinear_depth=2, linear_depth=2, width=5, bias=True)
    assert [layer.bias is not None for layer in net.layers] == [True, True, False, False]


def test_he_init_scales():
    torch.manual_seed(0)
    net = MLP((1, 32, 32), 10, nonlinear_depth=2, linear_depth=2, width=1024, init="he")
    stds = [w.std().item() for w in net.weights]
    assert stds[0] == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    assert stds[2] == pytest.approx(math.sqrt(1 / 1024), rel=0.02)


@pytest.mark.parametrize("init", ["he", "lecun", "default"])
def test_init_scale_multiplies_every_initial_weight(init):
    def build(scale):
        torch.manual_seed(3)
        return MLP((6,), 3, nonlinear_depth=2, linear_depth=2, width=7, init=init, init_scale=scale)

    plain, half = build(1.0), build(0.5)
    for w, w_half in zip(plain.weights, half.weights):
        assert torch.equal(w_half, 0.5 * w)
    # a bias-free ReLU network is positively homogeneous: its output scales as init_scale^L
    x = torch.randn(5, 6)
    assert torch.allclose(half(x), 0.5**4 * plain(x), atol=1e-7)
    assert not torch.allclose(half(x), plain(x))
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        build(0.0)


def test_init_scale_leaves_the_resnet_trunk_alone():
    def build(scale):
        torch.manual_seed(3)
        return ResNet20((3, 32, 32), 10, nonlinear_depth=1, linear_depth=2, width=8, init_scale=scale)

    plain, doubled = build(1.0), build(2.0)
    for p, q in zip(plain.trunk.parameters(), doubled.trunk.parameters()):
        assert torch.equal(p, q)
    for w, w2 in zip(plain.weights, doubled.weights):
        assert torch.equal(w2, 2.0 * w)


def test_bad_widths_and_depths_are_rejected():
    with pytest.raises(ValueError, match="hidden widths"):
        layer_widths([8, 8], num_layers=4, num_classes=10)
    with pytest.raises(ValueError, match="width must be >= 1"):
        layer_widths(0, num_layers=3, num_classes=10)
    with pytest.raises(ValueError, match="linear_depth >= 1"):
        MLP((4,), 3, nonlinear_depth=2, linear_depth=0)
    with pytest.raises(ValueError, match="unknown model.activation"):
        MLP((4,), 3, nonlinear_depth=2, linear_depth=2, activation="tanh")


@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_resnet20_runs_on_mnist_and_cifar_shapes(in_shape):
    net = ResNet20(in_shape, 10, nonlinear_depth=2, linear_depth=2, width=32).eval()
    x = torch.randn(3, *in_shape)
    trace = net.forward_layers(x)
    assert trace.output.shape == (3, 10)
    assert len(trace.outputs) == 4 and net.weights[0].shape == (32, 64)
    assert torch.allclose(trace.output, net(x))


def test_resnet20_trunk_runs_in_pieces_only_outside_training():
    torch.manual_seed(0)
    net = ResNet20((1, 28, 28), 10, nonlinear_depth=1, linear_depth=2, width=16)
    net.trunk.eval_chunk = 50
    calls = []
    net.trunk.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    x = torch.randn(120, 1, 28, 28)
    net.train()
    whole = net.trunk(x)
    assert torch.equal(net.features(x), whole) and calls == [120, 120]  # BatchNorm: the batch's statistics
    net.eval()
    calls.clear()
    with torch.no_grad():
        pieces, trace = net.features(x), net.forward_layers(x)
        assert calls == [50, 50, 20] * 2
        calls.clear()
        assert torch.allclose(pieces, net.trunk(x), rtol=1e-5, atol=1e-6) and calls == [120]
    assert torch.allclose(trace.output, net.layers[2](net.layers[1](net.activation(net.layers[0](pieces)))))


@pytest.mark.slow
def test_compiled_resnet20_traces_the_trunk_once():
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    net = ResNet20((1, 12, 12), 10, nonlinear_depth=1, linear_depth=1, width=8).eval()
    x = torch.randn(40, 1, 12, 12)
    counts = {}
    for piece in (None, 10):  # 10: four pieces if the loop were traced
        net.trunk.eval_chunk = piece
        torch._dynamo.reset()
        counter = CompileCounter()
        with torch.no_grad():
            out = torch.compile(net, backend=counter)(x)
        counts[piece] = (counter.frame_count, counter.op_count)
        assert torch.allclose(out, net(x), rtol=1e-5, atol=1e-6)
    assert counts[10] == counts[None]


def test_resnet20_has_the_papers_parameter_count():
    # He et al. (2016), Table 6: ResNet20 has 0.27M parameters (trunk + a 64 -> 10 classifier).
    trunk = ResNet20((3, 32, 32), 10, 0, 1).trunk
    n = sum(p.numel() for p in trunk.parameters()) + 64 * 10 + 10
    assert 0.265e6 < n < 0.275e6
    blocks = [m for m in trunk.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 9


def test_smooth_leaky_relu_meets_assumption_4_2():
    gamma, beta = 0.2, 3.0
    act = SmoothLeakyReLU(gamma, beta)
    x = torch.linspace(-20, 20, 20001, dtype=torch.float64, requires_grad=True)
    y = act(x)
    (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert grad.min() >= gamma - 1e-12 and grad.max() <= 1 + 1e-12  # (i)
    assert (y.abs() <= x.abs() + 1e-12).all()  # (ii)
    assert abs(act(torch.zeros(1, dtype=torch.float64)).item()) < 1e-15
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert second.abs().max() <= (1 - gamma) * beta / 4 + 1e-9  # (iii): sigma' Lipschitz
    sharp = SmoothLeakyReLU(gamma, beta=200.0)
    z = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    leaky = torch.where(z > 0, z, gamma * z)
    assert (sharp(z) - leaky).abs().max() < 0.01
