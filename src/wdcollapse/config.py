"""Config checks that run before any work, and the resolvers the configs use."""

from __future__ import annotations

import math
import uuid
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .schema import Settings, validate

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = {"wdcollapse.models.MLP": "mlp", "wdcollapse.models.ResNet20": "resnet20"}


def register_resolvers() -> None:
    """`${div:a,b}` = a / b and `${add:a,b}` = a + b (e.g. weight decay 0.016 / L), and
    `${repo_root:}`, the checkout holding conf/ (the default data directory lives there), and
    `${uid:}`, a random id that keeps run directories of launches in the same second apart."""
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b))
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda a, b: a + b)
    if not OmegaConf.has_resolver("uid"):
        # Cached, and Hydra copies the cache into every job's config: one value per launch, so
        # the jobs of a multirun share a sweep directory that no other launch can collide with.
        OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True)
    if not OmegaConf.has_resolver("balancing_epochs"):
        OmegaConf.register_new_resolver("balancing_epochs", balancing_epochs)
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def balancing_epochs(budget, lr, weight_decay, momentum, num_samples, batch_size) -> int:
    """Epochs of SGD after which weight decay has shrunk a linear pair's imbalance by exp(-2 budget)
    by the theory's rate: (1 - eta lambda / (1 - momentum))^(2k) ~ exp(-2 budget) after
    k = budget (1 - momentum) / (eta lambda) steps (momentum multiplies the step by 1 / (1 - momentum)).
    `${balancing_epochs:3,${optim.lr},${optim.weight_decay},${optim.momentum},60000,${data.batch_size}}`
    gives every depth and learning rate of a sweep the same balancing, where their weight decays differ."""
    steps_per_epoch = math.ceil(int(num_samples) / int(batch_size))
    steps = float(budget) * (1.0 - float(momentum)) / (float(lr) * float(weight_decay))
    return max(1, math.ceil(steps / steps_per_epoch))


def _require(ok: bool, setting: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is not allowed: {allowed}")


def check_config(cfg: DictConfig) -> Settings:
    """Every setting against the schema (wdcollapse.schema), then the rules that tie settings
    together; a ConfigError for the first bad one, warnings for legal but unusual ones."""
    settings = validate(cfg)
    data, model, optim, trainer = cfg.data, cfg.model, cfg.optim, cfg.trainer
    _require(
        model._target_ in MODELS, "model", model._target_, f"model=mlp or model=resnet20 (targets {sorted(MODELS)})"
    )
    hidden = model.nonlinear_depth + model.linear_depth - 1
    _require(
        not OmegaConf.is_list(model.width) or len(model.width) == hidden,
        "model.width",
        model.width,
        f"an integer >= 1, or a list of nonlinear_depth + linear_depth - 1 = {hidden} such integers",
    )
    _require(
        optim.name != "gd" or data.batch_size is None,
        "data.batch_size",
        data.batch_size,
        "null with optim=gd (full-batch gradient descent); for mini-batches use optim=sgd optim.momentum=0",
    )
    manual = "unset: optimization is manual (CollapseModule), which Lightning does not clip or accumulate for"
    _require(
        trainer.get("gradient_clip_val") in (None, 0),
        "trainer.gradient_clip_val",
        trainer.get("gradient_clip_val"),
        manual,
    )
    _require(
        trainer.get("accumulate_grad_batches") in (None, 1),
        "trainer.accumulate_grad_batches",
        trainer.get("accumulate_grad_batches"),
        manual,
    )
    counts_calls = "1 when trainer.{} is set (Lightning counts training_step calls, not optimizer steps)"
    _require(
        trainer.get("max_steps") in (None, -1) or cfg.steps_per_call == 1,
        "steps_per_call",
        cfg.steps_per_call,
        counts_calls.format("max_steps"),
    )
    limit = trainer.get("limit_train_batches")  # an int counts batches, a float is a fraction
    _require(
        limit is None or (isinstance(limit, float) and limit == 1.0) or cfg.steps_per_call == 1,
        "steps_per_call",
        cfg.steps_per_call,
        counts_calls.format("limit_train_batches"),
    )
    on_cpu = trainer.get("accelerator") == "cpu" or (
        trainer.get("accelerator") in (None, "auto") and not torch.cuda.is_available()
    )
    _require(
        not (trainer.get("sync_batchnorm") and on_cpu),
        "trainer.sync_batchnorm",
        trainer.get("sync_batchnorm"),
        "false on the CPU (torch's SyncBatchNorm runs on GPUs only)",
    )
    if model.linear_depth == 1:
        warnings.warn("model.linear_depth=1: the theory (Theorem 3.1) needs a linear head of >= 2 layers", stacklevel=2)
    return settings


# Config groups whose options are all files under conf/ (hydra/launcher also has plugins').
OWN_GROUPS = ("data", "model", "optim", "preset", "experiment", "logger", "trainer", "callbacks")


def check_group_choices(argv: list[str], conf_dir: Path = REPO_ROOT / "conf") -> None:
    """`data=foo` (also in a sweep, `model=mlp,foo`): a one-line error listing the options
    instead of Hydra's traceback-style report."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key not in OWN_GROUPS or value in ("", "null") or any(c in value for c in "()[]{}*$"):
            continue  # Hydra's sweep functions (choice(...), glob(*)) and interpolations: its own check
        options = sorted(f.stem for f in (conf_dir / key).glob("*.yaml"))
        for choice in value.split(","):
            _require(choice in options, key, choice, f"one of {options} (files in conf/{key}/)")
