import pytest
import torch
import torch.nn.functional as F

from wdcollapse.module import classification_loss, lr_factor


def test_mse_reductions_match_their_definitions():
    torch.manual_seed(0)
    out, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 5, (12,))
    onehot = F.one_hot(y, 5).double()
    assert classification_loss(out, y, "mse", "mean") == pytest.approx(F.mse_loss(out, onehot).item(), rel=1e-12)
    assert classification_loss(out, y, "mse", "half_sum") == pytest.approx(0.5 * ((out - onehot) ** 2).sum().item(), rel=1e-12)
    assert classification_loss(out, y, "mse", "half_mean") == pytest.approx(0.5 * ((out - onehot) ** 2).sum().item() / 12, rel=1e-12)
    assert classification_loss(out, y, "cross_entropy", "mean") == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-12)


@pytest.mark.parametrize("loss,reduction", [("mse", "mean"), ("mse", "half_mean"), ("mse", "half_sum"), ("cross_entropy", "mean")])
def test_loss_shares_over_a_partition_sum_to_the_full_loss(loss, reduction):
    torch.manual_seed(1)
    out, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 4, (30,))
    full = classification_loss(out, y, loss, reduction)
    parts = sum(classification_loss(out[i:i + 7], y[i:i + 7], loss, reduction, num_total=30) for i in range(0, 30, 7))
    assert parts.item() == pytest.approx(full.item(), rel=1e-12)


def test_lr_schedule_warmup_then_drop():
    f = lambda step: lr_factor(step, steps_per_epoch=10, max_epochs=100, warmup_epochs=2, drop_at=0.8, drop_factor=0.1)
    assert f(0) == pytest.approx(1 / 20)
    assert f(19) == pytest.approx(1.0)
    assert f(20) == 1.0 and f(799) == 1.0
    assert f(800) == pytest.approx(0.1)
    assert lr_factor(5, 10, 100, 0, None, 0.1) == 1.0
