"""A trained run's network and data, rebuilt from its directory (config.yaml and
checkpoints/last.ckpt), to recompute or extend its metrics after the fact:

    from wdcollapse.restore import restore
    from wdcollapse.metric_pass import metric_pass
    net, data, cfg = restore("outputs/runs/my_run")
    row, grams = metric_pass(net, data.eval_batches("train"), data.num_classes)
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .arguments import checked
from .runfiles import RunFiles


@checked
def restore(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
) -> tuple[torch.nn.Module, object, DictConfig]:
    """A trained run's network and data, rebuilt from its directory.

    Args:
        run_dir: a directory that wdcollapse-train wrote (config.yaml, checkpoints/last.ckpt).
        checkpoint: another checkpoint of the run (default: its last.ckpt).

    Returns:
        (network in eval mode with the checkpoint's weights and buffers, the set-up data module,
        the resolved config); CPU tensors.

    Raises:
        FileNotFoundError: no config.yaml or checkpoint there; one line.
        ArgumentError: `run_dir` or `checkpoint` is not a str or Path.

    Example::

        net, data, cfg = restore("outputs/my_sweep/0_seed=0")
        row, grams = metric_pass(net, data.eval_batches("train"), data.num_classes)
    """
    run_dir = Path(run_dir)
    config = RunFiles(run_dir).config
    ckpt = Path(checkpoint) if checkpoint else RunFiles(run_dir).checkpoint
    for path, what in ((config, "config.yaml"), (ckpt, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(
                f"restore({str(run_dir)!r}): {path} does not exist: not a run directory with a {what} "
                "(give a directory that wdcollapse-train wrote, holding config.yaml and checkpoints/last.ckpt)"
            )
    cfg = OmegaConf.load(config)
    data = instantiate(cfg.data)
    data.setup()
    net = instantiate(cfg.model)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    # CollapseModule holds the network as `model`; torch.compile in place keeps the keys
    net.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    if cfg.get("channels_last"):  # the run's convolutions (their rounding) were NHWC
        net.to(memory_format=torch.channels_last)
    return net.eval(), data, cfg
