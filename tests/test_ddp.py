"""Data parallelism: the metric pass reduced across processes equals the single-process pass,
the training shards are disjoint, and a real 2-process DDP run (CPU, gloo) writes the same
epoch-0 metrics as a single-process run, once, from rank 0."""

import json
import math
import socket

import pytest
import torch
from conftest import TINY, read_metrics, run_train, run_train_process

from wdcollapse.data.tensors import PermutationBatches
from wdcollapse.metric_pass import accuracy, metric_pass
from wdcollapse.models import MLP
from wdcollapse.theory_monitors import TheoryObserver


def in_process_reduce():
    """A `reduce` for metric_pass over simulated ranks: the i-th call is rank i's; every call
    returns the states of all ranks so far, so the last one returns all of them in rank order."""
    states = []

    def reduce(state):
        states.append(state)
        return list(states)

    return reduce


@pytest.mark.parametrize("exact", [True, False])
def test_merged_halves_equal_the_full_pass(exact):
    torch.manual_seed(0)
    net = MLP((1, 6, 6), 5, nonlinear_depth=2, linear_depth=3, width=24).eval()
    x, y = torch.randn(300, 1, 6, 6), torch.arange(300) % 5
    chunks = [(x[i : i + 40], y[i : i + 40]) for i in range(0, 300, 40)]  # 8 chunks, the last short
    loss_fn = lambda out, t: 0.5 * (out - torch.nn.functional.one_hot(t, 5)).pow(2).sum()  # noqa: E731
    full, full_grams = metric_pass(net, chunks, 5, loss_fn=loss_fn, observers=[TheoryObserver(net, 5)], exact=exact)

    # rank 0 takes chunks 0, 2, ...; rank 1 chunks 1, 3, ... (eval_batches' split); the
    # second (last) call sees both states and merges them in rank order.
    reduce = in_process_reduce()
    metric_pass(net, chunks[0::2], 5, loss_fn=loss_fn, observers=[TheoryObserver(net, 5)], exact=exact, reduce=reduce)
    merged, merged_grams = metric_pass(
        net, chunks[1::2], 5, loss_fn=loss_fn, observers=[TheoryObserver(net, 5)], exact=exact, reduce=reduce
    )
    assert set(merged) == set(full) and any(k.startswith("theory/") for k in full)
    for key, value in full.items():
        if isinstance(value, bool) or value is None or (isinstance(value, float) and math.isinf(value)):
            assert merged[key] == value, key
        else:
            assert merged[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    for name, gram in full_grams.items():
        assert torch.allclose(torch.tensor(merged_grams[name]), torch.tensor(gram), rtol=1e-10, atol=1e-12), name

    reduce_acc = in_process_reduce()
    accuracy(net, chunks[0::2], reduce=reduce_acc)
    assert accuracy(net, chunks[1::2], reduce=reduce_acc) == accuracy(net, chunks)


def test_a_rank_without_data_merges_as_nothing():
    torch.manual_seed(1)
    net = MLP((1, 4, 4), 3, nonlinear_depth=1, linear_depth=2, width=8).eval()
    x, y = torch.randn(30, 1, 4, 4), torch.arange(30) % 3
    full, _ = metric_pass(net, [(x, y)], 3, observers=[TheoryObserver(net, 3)])
    reduce = in_process_reduce()
    metric_pass(net, [(x, y)], 3, observers=[TheoryObserver(net, 3)], reduce=reduce)
    merged, _ = metric_pass(net, [], 3, observers=[TheoryObserver(net, 3)], reduce=reduce)
    assert merged == full


@pytest.mark.parametrize("n,world,batch", [(100, 2, 32), (101, 2, 7), (10, 3, 4), (2, 4, 1)])
def test_permutation_shards_are_disjoint_and_cover_the_epoch(n, world, batch):
    x, y = torch.arange(n).float().unsqueeze(1), torch.arange(n)
    single = PermutationBatches(x, y, batch, seed=3, epoch=lambda: 5)
    perm = torch.cat([b for _, b in single])
    shards = [PermutationBatches(x, y, batch, seed=3, epoch=lambda: 5, rank=r, world=world) for r in range(world)]
    got = [torch.cat([b for _, b in s]) for s in shards]
    assert all(len(list(s)) == len(s) for s in shards) and len({len(s) for s in shards}) == 1
    size = -(-n // world)
    assert all(len(g) == size for g in got)
    # the single-process permutation, wrapped to a multiple of world, dealt round-robin
    padded = perm.repeat(-(-size * world // n))[: size * world]
    for r in range(world):
        assert torch.equal(got[r], padded[r::world])
    assert set(torch.cat(got).tolist()) == set(range(n))
    if size * world == n:  # no padding: disjoint
        assert len(torch.cat(got).unique()) == n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_a_single_process_run(tmp_path):
    # eval_chunk=25: 4 chunks of the 100 training samples, 2 per rank (the chunks of the
    # single-process pass, so even the float32 fast path agrees to float64 rounding)
    args = [*TINY, "logger=none", "data.eval_chunk=25", "trainer.max_epochs=2"]
    run_train(tmp_path / "single", *args)
    run_train_process(  # DDP: Lightning starts rank 1 by re-running the command line
        tmp_path / "ddp",
        *args,
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())},
        timeout=180,
    )
    single, ddp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert [r["epoch"] for r in ddp] == [0, 1, 2]  # written once (by rank 0 only)
    assert all(set(r) == set(single[0]) for r in ddp)
    for key, value in single[0].items():
        if isinstance(value, bool) or value is None:
            assert ddp[0][key] == value, key
        else:
            assert ddp[0][key] == pytest.approx(value, rel=1e-8, abs=1e-12), key
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final"] == ddp[-1]
    # each rank trains on half the data per epoch: 2 batches of <= 32 per epoch
    assert ddp[-1]["step"] == 4 and single[-1]["step"] == 8
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").exists()
    assert not list((tmp_path / "ddp" / "checkpoints").glob(".*tmp"))


@pytest.mark.slow
def test_killed_ddp_run_resumes_to_the_uninterrupted_result(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    args = [
        *TINY,
        "logger=none",
        "trainer.max_epochs=12",
        "data.num_per_class=30",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    ]
    env = lambda: {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # noqa: E731
    run_train_process(tmp_path / "ref", *args, env=env(), timeout=300)
    out = tmp_path / "killed"
    # Its own session: the kill takes rank 0 and the rank-1 process it started.
    proc = subprocess.Popen(
        [sys.executable, "-m", "wdcollapse.train", *args, f"hydra.run.dir={out}"],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "offline", **env()},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        if (out / "checkpoints" / "last.ckpt").exists() and len(rows) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    kept = (out / "metrics.jsonl").read_text().splitlines()
    again = run_train_process(out, *args, env=env(), timeout=300)
    assert "resuming" in again.stdout + again.stderr  # from the checkpoint, not from scratch
    ref, resumed = read_metrics(tmp_path / "ref"), read_metrics(out)
    assert [r["epoch"] for r in resumed] == list(range(13))
    # the rows before the checkpoint are kept as they were
    assert (out / "metrics.jsonl").read_text().splitlines()[:2] == kept[:2]
    for key, value in ref[-1].items():
        assert resumed[-1][key] == (
            value if value is None or isinstance(value, bool) else pytest.approx(value, rel=1e-6, abs=1e-9)
        ), key
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ddp_step_groups_and_batchnorm_buffers(tmp_path):
    """ResNet20 (BatchNorm) under 2-process DDP: several optimizer steps per training_step
    call give exactly the rows of one step per call, and every row is the single-process
    metric pass of the checkpointed network (rank 0's weights and buffers): without sharing
    rank 0's BatchNorm statistics before the pass, rank 1's half of the data would run
    through a network with its own running statistics."""
    from wdcollapse.restore import restore

    args = [
        "model=resnet20",
        "model.width=16",
        "model.nonlinear_depth=1",
        "model.linear_depth=2",
        "data.num_per_class=10",
        "data.batch_size=16",
        "data.eval_chunk=25",
        "optim.warmup_epochs=0",
        "trainer.max_epochs=2",
        "callbacks.metrics.schedule=every",
        "logger=none",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
    ]
    env = lambda: {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # noqa: E731
    run_train_process(tmp_path / "one", *args, "steps_per_call=1", env=env(), timeout=300)
    run_train_process(tmp_path / "groups", *args, "steps_per_call=4", env=env(), timeout=300)
    one, groups = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "groups")
    # each rank: 50 images in batches of 16, i.e. 4 steps per epoch, one call of 4 in "groups"
    assert [r["step"] for r in groups] == [0, 4, 8]
    assert groups == one

    net, data, cfg = restore(tmp_path / "groups")
    assert any(isinstance(m, torch.nn.BatchNorm2d) and m.num_batches_tracked > 0 for m in net.modules())
    n = data.num_train
    loss_fn = lambda out, y: 0.5 * (out - torch.nn.functional.one_hot(y, 10)).pow(2).sum() / n  # noqa: E731
    row, _ = metric_pass(
        net, data.eval_batches("train"), data.num_classes, loss_fn=loss_fn, exact=bool(cfg.callbacks.metrics.exact)
    )
    last = groups[-1]
    assert last["train/acc"] == row.pop("acc")
    assert last["train/loss"] == pytest.approx(row.pop("loss"), rel=1e-8)
    assert any(k.startswith("nc1/") for k in row) and any(k.startswith("negativity/") for k in row)
    for key, value in row.items():  # metrics.jsonl holds a non-finite value as null
        # nc2 is a condition number, here up to ~1e10 at the output: the merge order's float64
        # rounding grows with it (5.6e-8 relative). Unshared buffers put the loss off by 1.2e-3.
        rel = 1e-6 if key.startswith("nc2/") else 1e-8
        assert last[key] == (pytest.approx(value, rel=rel, abs=1e-12) if math.isfinite(value) else None), key
