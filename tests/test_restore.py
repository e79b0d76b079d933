"""restore(): a run directory gives back the network and data its last metrics row came from."""

import pytest
import torch
from conftest import TINY, read_metrics, run_train

from wdcollapse.metric_pass import metric_pass
from wdcollapse.restore import restore


@pytest.fixture
def one_thread():
    """The run's own `threads: 1`: the same kernels, so the same float32 sums, as in training."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_restored_network_reproduces_the_last_row(tmp_path, one_thread):
    run_train(tmp_path, *TINY, "logger=none")
    net, data, cfg = restore(tmp_path)
    assert not net.training and cfg.model.width == 32 and data.num_train == 100
    row, _ = metric_pass(net, data.eval_batches("train"), data.num_classes, exact=bool(cfg.callbacks.metrics.exact))
    last = read_metrics(tmp_path)[-1]
    assert last["epoch"] == 2 and last["train/acc"] == row.pop("acc")
    for key, value in row.items():  # the same chunks, the same arithmetic (threads aside)
        assert last[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_restore_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        restore(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        restore(tmp_path)
    with pytest.raises(FileNotFoundError, match="other.ckpt"):
        restore(tmp_path, tmp_path / "other.ckpt")
