"""The fast paths of issue 4: the accumulators' `exact=False` (each batch in float32, summed
in float64) against the exact float64 path, the in-memory loader's hook order, and the GPU
options of CollapseModule (on the CPU: they construct and train a step)."""

import math

import pytest
import torch
from conftest import cpu_trainer, sgd

from wdcollapse import metrics
from wdcollapse.data.tensors import TensorDataModule
from wdcollapse.metric_pass import metric_pass
from wdcollapse.models import MLP, ResNet20
from wdcollapse.module import CollapseModule

# The fast path's stated accuracy: float32 per batch, float64 across batches.
FAST_RTOL = 1e-5


def chunks(*tensors, size=700):
    n = len(tensors[0])
    return [tuple(t[i : i + size] for t in tensors) for i in range(0, n, size)]


def close(a, b, rtol=FAST_RTOL):
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


@pytest.mark.parametrize("spread,noise,offset", [(1.0, 1.0, 0.0), (1.0, 1e-3, 0.0), (1.0, 1e-3, 1e3)])
def test_fast_nc_accumulator_matches_exact_also_when_nearly_collapsed(spread, noise, offset):
    # float32 features as a network gives them; the last case is nearly collapsed around a
    # large mean, where a float32 E[z^2] - mu^2 would lose every digit.
    g = torch.Generator().manual_seed(0)
    k, d, n = 10, 64, 5000
    y = torch.randint(0, k, (n,), generator=g)
    means = offset + spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    z = (means[y] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    w = means + torch.randn(k, d, generator=g, dtype=torch.float64)
    exact, fast = metrics.NCAccumulator(k, weight=w), metrics.NCAccumulator(k, weight=w, exact=False)
    for zb, yb in chunks(z, y):
        exact.update(zb, yb)
        fast.update(zb, yb)
    if noise < 1e-2:
        assert exact.nc1() < 1e-5  # nearly collapsed indeed
    for name in ("nc1", "nc2", "nc3"):
        assert close(getattr(fast, name)(), getattr(exact, name)()), name
    assert torch.allclose(fast.class_means(), exact.class_means(), rtol=1e-6, atol=1e-6 * (1 + offset))
    assert exact.nc1() == pytest.approx(metrics.nc1(z, y, k), rel=1e-10)


def test_fast_gram_and_negativity_match_exact():
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(3000, 300, generator=g) + 0.2).float()  # >= 256 columns: the blocked Gram
    before = z.clone()
    exact, fast = metrics.NegativityAccumulator(300), metrics.NegativityAccumulator(300, exact=False)
    for (zb,) in chunks(z):
        exact.update(zb)
        fast.update(zb)
    assert close(fast.value(), exact.value())
    assert close(fast.full.op_norm(), exact.full.op_norm())
    assert exact.value() == pytest.approx(metrics.negativity(z), rel=1e-12)
    assert exact.full.op_norm() == pytest.approx(torch.linalg.matrix_norm(z.double(), 2).item(), rel=1e-12)
    assert fast.full.gram.dtype == torch.float64
    assert torch.equal(z, before)  # min(Z, 0) is taken in place only on a converted copy


def test_fast_metric_pass_matches_exact_on_a_network():
    torch.manual_seed(0)
    net = MLP((1, 12, 12), 10, nonlinear_depth=4, linear_depth=3, width=300).eval()
    x, y = torch.randn(3000, 1, 12, 12), torch.arange(3000) % 10
    batches = chunks(x, y, size=1024)
    exact, grams = metric_pass(net, batches, 10)
    fast, fast_grams = metric_pass(net, batches, 10, exact=False)
    assert set(fast) == set(exact) and set(fast_grams) == set(grams)
    for key, value in exact.items():
        assert close(fast[key], value), key
    for key, gram in grams.items():
        assert torch.allclose(torch.tensor(fast_grams[key]), torch.tensor(gram), rtol=1e-5), key


class SyntheticData(TensorDataModule):
    """MNIST-shaped random data, recording when it is moved and when the loader is built."""

    def __init__(self, **kwargs):
        super().__init__("mnist", "unused", **kwargs)
        self.events = []

    def _load(self, train: bool):
        g = torch.Generator().manual_seed(int(train))
        n = 64 if train else 16
        return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10

    def to(self, device):
        self.events.append(("to", torch.device(device).type))
        return super().to(device)

    def train_dataloader(self):
        self.events.append(("train_dataloader", self.train_x.device.type))
        return super().train_dataloader()


def test_data_reaches_the_training_device_before_the_train_loader_is_built(tmp_path):
    # configure_optimizers builds the loader (estimated_stepping_batches) before on_fit_start:
    # moving the data any later would leave the loader with the CPU tensors.
    data = SyntheticData(batch_size=16)
    module = CollapseModule(MLP((1, 28, 28), 10, 1, 2, width=8), **sgd(0.01))
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, datamodule=data)
    assert data.events[0] == ("to", "cpu")
    assert data.events.index(("train_dataloader", "cpu")) > 0
    assert trainer.global_step == 4


def test_channels_last_option_trains_a_resnet_step():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    module = CollapseModule(ResNet20([3, 32, 32], 10, 1, 2, width=16), **sgd(), channels_last=True)
    conv = module.model.trunk.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    loss = module.step_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss) and conv.grad is not None
    plain = CollapseModule(ResNet20([3, 32, 32], 10, 1, 2, width=16), **sgd())
    plain.model.load_state_dict(module.model.state_dict())
    assert plain.step_loss(x, y).item() == pytest.approx(loss.item(), rel=1e-4)


@pytest.mark.slow
def test_compile_option_trains_a_step_like_eager():
    # Inductor compiles C++ on the CPU: ~15 s, hence `slow`; on a GPU it is the real use.
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 6, 6), torch.arange(8) % 5
    compiled = CollapseModule(MLP((1, 6, 6), 5, 2, 2, width=16), **sgd(), compile=True)
    eager = CollapseModule(MLP((1, 6, 6), 5, 2, 2, width=16), **sgd())
    eager.model.load_state_dict(compiled.model.state_dict())  # same keys: compiled in place
    loss = compiled.step_loss(x, y)
    loss.backward()
    assert loss.item() == pytest.approx(eager.step_loss(x, y).item(), rel=1e-5)
    assert all(p.grad is not None for p in compiled.model.parameters())
