import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_trainer, sgd

from wdcollapse.module import classification_loss, lr_factor


def test_mse_reductions_match_their_definitions():
    torch.manual_seed(0)
    out, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 5, (12,))
    onehot = F.one_hot(y, 5).double()
    assert classification_loss(out, y, "mse", "mean") == pytest.approx(F.mse_loss(out, onehot).item(), rel=1e-12)
    assert classification_loss(out, y, "mse", "half_sum") == pytest.approx(
        0.5 * ((out - onehot) ** 2).sum().item(), rel=1e-12
    )
    assert classification_loss(out, y, "mse", "half_mean") == pytest.approx(
        0.5 * ((out - onehot) ** 2).sum().item() / 12, rel=1e-12
    )
    assert classification_loss(out, y, "cross_entropy", "mean") == pytest.approx(
        F.cross_entropy(out, y).item(), rel=1e-12
    )


@pytest.mark.parametrize(
    "loss,reduction", [("mse", "mean"), ("mse", "half_mean"), ("mse", "half_sum"), ("cross_entropy", "mean")]
)
def test_loss_shares_over_a_partition_sum_to_the_full_loss(loss, reduction):
    torch.manual_seed(1)
    out, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 4, (30,))
    full = classification_loss(out, y, loss, reduction)
    parts = sum(
        classification_loss(out[i : i + 7], y[i : i + 7], loss, reduction, num_total=30) for i in range(0, 30, 7)
    )
    assert parts.item() == pytest.approx(full.item(), rel=1e-12)


def test_lr_schedule_warmup_then_drop():
    f = lambda step: lr_factor(step, steps_per_epoch=10, max_epochs=100, warmup_epochs=2, drop_at=0.8, drop_factor=0.1)
    assert f(0) == pytest.approx(1 / 20)
    assert f(19) == pytest.approx(1.0)
    assert f(20) == 1.0 and f(799) == 1.0
    assert f(800) == pytest.approx(0.1)
    assert lr_factor(5, 10, 100, 0, None, 0.1) == 1.0


def _train(steps_per_call, lr=0.05, epochs=2, callbacks=(), tmp_path=None):
    import pytorch_lightning as pl

    from wdcollapse.callbacks import DivergenceGuard
    from wdcollapse.data.tensors import TensorDataModule
    from wdcollapse.models import MLP
    from wdcollapse.module import CollapseModule

    torch.manual_seed(0)
    dm = TensorDataModule("mnist", "/nonexistent", batch_size=8, steps_per_call=steps_per_call)
    y = torch.arange(60) % 10
    dm.train_x = torch.randn(10, 1, 4, 4)[y] + 0.3 * torch.randn(60, 1, 4, 4)
    dm.train_y, dm.test_x, dm.test_y = y, dm.train_x[:10].clone(), y[:10].clone()
    module = CollapseModule(
        MLP((1, 4, 4), 10, 2, 2, width=12),
        **sgd(lr, momentum=0.9, weight_decay=1e-3, warmup_epochs=1),
    )
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = cpu_trainer(
        tmp_path,
        max_epochs=epochs,
        enable_checkpointing=any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks),
        callbacks=[DivergenceGuard(), *callbacks],
    )
    trainer.fit(module, datamodule=dm)
    return module, trainer, dm, initial


def test_step_groups_train_exactly_like_one_step_per_call_and_like_a_plain_loop(tmp_path):
    from wdcollapse.module import build_optimizer

    one, trainer_one, dm, initial = _train(1, tmp_path=tmp_path)
    grouped, trainer_grouped, _, _ = _train(3, tmp_path=tmp_path)  # 8 batches per epoch: groups 3, 3, 2
    assert trainer_one.global_step == trainer_grouped.global_step == 16  # optimizer steps, not calls
    for (name, a), b in zip(one.model.state_dict().items(), grouped.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert trainer_grouped.optimizers[0].param_groups[0]["lr"] == trainer_one.optimizers[0].param_groups[0]["lr"]

    # The same steps by hand: same batches, optimizer and warm-up schedule.
    from wdcollapse.models import MLP

    net = MLP((1, 4, 4), 10, 2, 2, width=12)
    net.load_state_dict(initial)
    opt = build_optimizer(one.optimizer_factory, net.parameters())
    schedule = one.schedule_factory(opt, steps_per_epoch=8, max_epochs=2)
    for epoch in range(2):
        dm.trainer = None
        batches = dm.train_batches()
        batches.epoch = lambda: epoch  # noqa: B023 (read within the iteration)
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            classification_loss(net(x), y, "mse", "half_mean").backward()
            opt.step()
            schedule.step()
    for (name, a), b in zip(net.state_dict().items(), one.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_divergence_stops_at_the_end_of_the_epoch_before_the_metric_pass(tmp_path):
    import pytorch_lightning as pl

    from wdcollapse.callbacks import Diverged

    seen = []

    class After(pl.Callback):  # runs after the guard: must never see the diverged epoch's end
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.current_epoch)

    with pytest.raises(Diverged, match=r"became (nan|inf) in epoch 0 \(detected at step 8\)") as info:
        _train(4, lr=1e6, epochs=3, callbacks=[After()], tmp_path=tmp_path)
    assert info.value.epoch == 0 and seen == []


def test_resumed_grouped_run_equals_an_uninterrupted_one(tmp_path):
    # Warm-up and momentum make the scheduler's and optimizer's states matter across the resume.

    from wdcollapse.callbacks import AtomicCheckpoint

    straight, _, _, _ = _train(3, epochs=4, tmp_path=tmp_path / "a")
    first, _, dm, _ = _train(3, epochs=2, callbacks=[AtomicCheckpoint(tmp_path)], tmp_path=tmp_path / "b")
    trainer2 = cpu_trainer(tmp_path / "d", max_epochs=4)
    trainer2.fit(first, datamodule=dm, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert trainer2.global_step == 32
    for (name, a), b in zip(straight.model.state_dict().items(), first.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_bf16_autocast_trains_with_step_groups_exactly_like_single_steps(tmp_path):

    from wdcollapse.data.tensors import TensorDataModule
    from wdcollapse.models import MLP
    from wdcollapse.module import CollapseModule

    def fit(steps_per_call):
        torch.manual_seed(0)
        dm = TensorDataModule("mnist", "/nonexistent", batch_size=8, steps_per_call=steps_per_call)
        y = torch.arange(40) % 10
        dm.train_x, dm.train_y = torch.randn(40, 1, 4, 4), y
        dm.test_x, dm.test_y = dm.train_x[:10].clone(), y[:10].clone()
        module = CollapseModule(MLP((1, 4, 4), 10, 2, 2, width=12), **sgd(0.05))
        before = module.model.layers[0].weight.detach().clone()
        trainer = cpu_trainer(tmp_path, max_epochs=2, precision="bf16-mixed")
        trainer.fit(module, datamodule=dm)
        assert trainer.global_step == 10 and torch.isfinite(module.epoch_loss_sum)
        assert module.model.layers[0].weight.dtype == torch.float32  # autocast: fp32 master weights
        assert not torch.equal(before, module.model.layers[0].weight)
        return module.model.state_dict()

    for (name, a), b in zip(fit(4).items(), fit(1).values()):
        assert torch.equal(a, b), name


def test_the_checkpoint_holds_the_whole_state_and_saving_it_logs_nothing(tmp_path, caplog):
    """The run's log gets no line per epoch from the save (Lightning logs one when it has to
    default weights_only; its logger is set to INFO here, whatever else set it),
    and the checkpoint keeps what a resume needs."""
    import logging

    from wdcollapse.callbacks import AtomicCheckpoint

    with caplog.at_level(logging.INFO, logger="pytorch_lightning.trainer.connectors.checkpoint_connector"):
        _train(3, epochs=2, callbacks=[AtomicCheckpoint(tmp_path)], tmp_path=tmp_path / "b")
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["optimizer_states"] and "callbacks" in ckpt


def test_checkpoint_of_the_automatic_optimization_era_resumes_with_its_step_count(tmp_path):

    from wdcollapse.callbacks import AtomicCheckpoint

    first, _, dm, _ = _train(3, epochs=2, callbacks=[AtomicCheckpoint(tmp_path)], tmp_path=tmp_path / "b")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    loop = ckpt["loops"]["fit_loop"]
    manual = loop["epoch_loop.manual_optimization.optim_step_progress"]
    assert manual["total"]["completed"] == 16
    # As the first version wrote it: the steps counted by the automatic loop, the manual one empty.
    auto = loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]
    auto["total"], auto["current"] = dict(manual["total"]), dict(manual["current"])
    for part in ("total", "current"):
        manual[part] = {k: 0 for k in manual[part]}
    torch.save(ckpt, tmp_path / "old.ckpt")
    trainer = cpu_trainer(tmp_path / "d", max_epochs=4)
    trainer.fit(first, datamodule=dm, ckpt_path=str(tmp_path / "old.ckpt"))
    assert trainer.global_step == 32


def test_trunk_weight_decay_gives_the_trunk_its_own_decay_and_the_head_optim_weight_decay():
    """One SGD step (no momentum, no warm-up) against its closed form in float64:
    p <- p - lr (grad + wd p), with wd = trunk_weight_decay on the ResNet trunk's parameters
    (convolutions and BatchNorm) and weight_decay on the fully connected layers."""
    from wdcollapse.models import MLP, ResNet20
    from wdcollapse.module import build_optimizer, parameter_groups

    torch.manual_seed(0)
    net = ResNet20((3, 8, 8), 4, 1, 2, width=6).double()
    optimizer = sgd(0.1, weight_decay=0.3)["optimizer"]
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.arange(8) % 4
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = build_optimizer(optimizer, parameter_groups(net, 0.02))
    classification_loss(net(x), y, "mse", "half_mean").backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    opt.step()
    names = [n for n, _ in net.named_parameters()]
    assert any(n.startswith("trunk.") for n in names) and any(n.startswith("layers.") for n in names)
    for n, p in net.named_parameters():
        wd = 0.02 if n.startswith("trunk.") else 0.3
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * (grads[n] + wd * before[n]), rtol=0, atol=1e-12)
    # The head's group comes first: the monitors read param_groups[0]'s weight decay.
    assert opt.param_groups[0]["weight_decay"] == 0.3 and opt.param_groups[1]["weight_decay"] == 0.02

    # null keeps one group (the default); an MLP has no trunk to give a decay to.
    assert len(build_optimizer(optimizer, parameter_groups(net, None)).param_groups) == 1
    with pytest.raises(ValueError, match="trunk_weight_decay needs a model with a trunk"):
        parameter_groups(MLP((1, 4, 4), 4, 1, 1, width=6), 0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_fused_sgd_is_the_default_and_bitwise_the_per_tensor_path(dtype, momentum, nesterov):
    """optim.fused (the default) runs SGD in torch's fused kernel; 40 steps of it, with weight
    decay, two parameter groups and a warm-up + drop schedule, end on exactly the parameters of
    the per-tensor path (optim.fused=false): the speed-up changes no number. And a case that
    must differ: a different weight decay does move them."""
    from wdcollapse.models import MLP
    from wdcollapse.module import build_optimizer

    def train(fused: bool, wd: float = 1e-2):
        torch.manual_seed(0)
        net = MLP((1, 6, 6), 5, 3, 2, width=16).to(dtype)
        params = list(net.parameters())
        groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay": 3e-3}]
        parts = sgd(0.05, momentum, wd, nesterov, fused, warmup_epochs=1, drop_at=0.5, drop_factor=0.1)
        opt = build_optimizer(parts["optimizer"], groups)
        schedule = parts["schedule"](opt, steps_per_epoch=10, max_epochs=4)
        g = torch.Generator().manual_seed(1)
        for _ in range(40):
            x, y = torch.randn(16, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 5, (16,), generator=g)
            opt.zero_grad(set_to_none=True)
            classification_loss(net(x), y, "mse", "half_mean").backward()
            opt.step()
            schedule.step()
        return opt, torch.cat([p.detach().flatten() for p in net.parameters()])

    opt, fused = train(True)
    assert opt.defaults["fused"] is True
    opt_plain, plain = train(False)
    assert not opt_plain.defaults["fused"]
    assert torch.equal(fused, plain)
    assert not torch.equal(train(True, wd=2e-2)[1], plain)
