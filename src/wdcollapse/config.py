"""Config checks that run before any work, and the resolvers the configs use."""
from __future__ import annotations

import math
import tempfile
import uuid
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .callbacks import SCHEDULES
from .data.sources import NUM_CLASSES
from .errors import ConfigError
from .models.activations import ACTIVATIONS
from .models.layerwise import INITS
from .module import LOSSES, MSE_REDUCTIONS, OPTIMIZERS

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


def _number(value, setting: str) -> float:
    """float(value), or a ConfigError naming the setting (e.g. optim.lr=abc)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting}={value!r} is not allowed: a number") from None


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad setting; warn about legal but unusual ones."""
    data, model, optim, trainer = cfg.data, cfg.model, cfg.optim, cfg.trainer
    _require(data.name in NUM_CLASSES, "data.name", data.name, f"one of {sorted(NUM_CLASSES)}")
    _require(model._target_ in MODELS, "model", model._target_,
             f"model=mlp or model=resnet20 (targets {sorted(MODELS)})")
    _require(optim.name in OPTIMIZERS, "optim.name", optim.name, f"one of {list(OPTIMIZERS)}")
    _require(model.activation in ACTIVATIONS, "model.activation", model.activation, f"one of {list(ACTIVATIONS)}")
    _require(model.init in INITS, "model.init", model.init, f"one of {list(INITS)}")
    _require(cfg.loss.name in LOSSES, "loss.name", cfg.loss.name, f"one of {list(LOSSES)}")
    _require(cfg.loss.mse_reduction in MSE_REDUCTIONS, "loss.mse_reduction",
             cfg.loss.mse_reduction, f"one of {list(MSE_REDUCTIONS)}")
    _require(isinstance(model.nonlinear_depth, int) and model.nonlinear_depth >= 0,
             "model.nonlinear_depth", model.nonlinear_depth, "an integer >= 0")
    _require(isinstance(model.linear_depth, int) and model.linear_depth >= 1,
             "model.linear_depth", model.linear_depth, "an integer >= 1 (the theory needs >= 2)")
    widths = model.width if OmegaConf.is_list(model.width) else [model.width]
    hidden = model.nonlinear_depth + model.linear_depth - 1
    _require(all(isinstance(w, int) and w >= 1 for w in widths)
             and (not OmegaConf.is_list(model.width) or len(widths) == hidden), "model.width", model.width,
             f"an integer >= 1, or a list of nonlinear_depth + linear_depth - 1 = {hidden} such integers")
    _require(data.num_per_class is None or (isinstance(data.num_per_class, int) and data.num_per_class >= 1),
             "data.num_per_class", data.num_per_class, "null (the whole training set) or an integer >= 1")
    test_per_class = data.get("test_num_per_class")
    _require(test_per_class is None or (isinstance(test_per_class, int) and test_per_class >= 1),
             "data.test_num_per_class", test_per_class, "null (the whole test set) or an integer >= 1")
    _require(data.batch_size is None or (isinstance(data.batch_size, int) and data.batch_size >= 1),
             "data.batch_size", data.batch_size, "null (full batch) or an integer >= 1")
    _require(optim.name != "gd" or data.batch_size is None, "data.batch_size", data.batch_size,
             "null with optim=gd (full-batch gradient descent); for mini-batches use optim=sgd optim.momentum=0")
    _require(_number(optim.lr, "optim.lr") > 0, "optim.lr", optim.lr, "a number > 0")
    _require(_number(optim.weight_decay, "optim.weight_decay") >= 0, "optim.weight_decay", optim.weight_decay,
             "a number >= 0")
    _require(_number(optim.get("momentum", 0.0), "optim.momentum") >= 0, "optim.momentum", optim.get("momentum"),
             "a number >= 0")
    _require(_number(optim.get("warmup_epochs", 0), "optim.warmup_epochs") >= 0, "optim.warmup_epochs",
             optim.get("warmup_epochs"), "a number of epochs >= 0")
    drop = optim.get("lr_drop_at")
    _require(drop is None or 0 < _number(drop, "optim.lr_drop_at") <= 1, "optim.lr_drop_at", drop,
             "null or a fraction in (0, 1]")
    _require(_number(optim.get("lr_drop_factor", 0.1), "optim.lr_drop_factor") > 0, "optim.lr_drop_factor",
             optim.get("lr_drop_factor"), "a number > 0 (the learning rate is multiplied by it)")
    _require(isinstance(trainer.max_epochs, int) and trainer.max_epochs >= 1, "trainer.max_epochs",
             trainer.max_epochs, "an integer >= 1")
    _require(cfg.callbacks.metrics.schedule in SCHEDULES, "callbacks.metrics.schedule",
             cfg.callbacks.metrics.schedule, f"one of {list(SCHEDULES)}")
    _require(isinstance(cfg.steps_per_call, int) and cfg.steps_per_call >= 1, "steps_per_call",
             cfg.steps_per_call, "an integer >= 1 (optimizer steps per Lightning training_step call)")
    manual = "unset: optimization is manual (CollapseModule), which Lightning does not clip or accumulate for"
    _require(trainer.get("gradient_clip_val") in (None, 0), "trainer.gradient_clip_val",
             trainer.get("gradient_clip_val"), manual)
    _require(trainer.get("accumulate_grad_batches") in (None, 1), "trainer.accumulate_grad_batches",
             trainer.get("accumulate_grad_batches"), manual)
    counts_calls = "1 when trainer.{} is set (Lightning counts training_step calls, not optimizer steps)"
    _require(trainer.get("max_steps") in (None, -1) or cfg.steps_per_call == 1, "steps_per_call",
             cfg.steps_per_call, counts_calls.format("max_steps"))
    limit = trainer.get("limit_train_batches")  # an int counts batches, a float is a fraction
    _require(limit is None or (isinstance(limit, float) and limit == 1.0) or cfg.steps_per_call == 1, "steps_per_call",
             cfg.steps_per_call, counts_calls.format("limit_train_batches"))
    on_cpu = trainer.get("accelerator") == "cpu" or (trainer.get("accelerator") in (None, "auto")
                                                       and not torch.cuda.is_available())
    _require(not (trainer.get("sync_batchnorm") and on_cpu), "trainer.sync_batchnorm", trainer.get("sync_batchnorm"),
             "false on the CPU (torch's SyncBatchNorm runs on GPUs only)")
    _require(cfg.resume in ("auto", "never"), "resume", cfg.resume,
             "'auto' (continue a killed run, skip a finished one) or 'never' (start fresh)")
    if model.linear_depth == 1:
        warnings.warn("model.linear_depth=1: the theory (Theorem 3.1) needs a linear head of >= 2 layers",
                      stacklevel=2)


def check_writable(directory: str | Path) -> Path:
    """Create `directory` if needed and prove a file can be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"output directory {str(directory)!r} cannot be written ({e.strerror}); "
            "choose another with hydra.run.dir=... (or hydra.sweep.dir=... for -m)"
        ) from None
    return directory


def nearest_existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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


def check_output_override(argv: list[str]) -> None:
    """Hydra creates its output directory before our code runs; check a `hydra.run.dir=` or
    `hydra.sweep.dir=` override (also with + or ++) up front by creating it and a file in it,
    so an unwritable one gets a message, not a traceback. (Permission bits alone do not tell:
    root may "write" to /proc.)"""
    for arg in argv:
        for key in ("hydra.run.dir=", "hydra.sweep.dir="):
            if arg.lstrip("+").startswith(key):
                target = Path(arg.lstrip("+")[len(key):])
                try:
                    check_writable(target)
                except ConfigError:
                    raise ConfigError(
                        f"{key}{target} cannot be created or written (nearest existing folder: "
                        f"{nearest_existing_parent(target)}); choose another output directory") from None


# Settings a resumed run may change: where things are, how fast, how it is logged; not what is
# trained or measured. (callbacks.metrics.exact changes the metrics' rounding only, ~1e-7.)
RESUMABLE_CHANGES = ("resume", "threads", "compile", "channels_last", "steps_per_call", "logger", "paths",
                     "data.root", "data.download", "data.image_folder", "data.eval_chunk", "trainer.accelerator",
                     "trainer.log_every_n_steps", "callbacks.metrics.exact")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def config_changes(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every setting both configs hold that differs, apart from
    RESUMABLE_CHANGES (settings added to the package since `saved` was written are not compared)."""
    old, new = _flatten(saved), _flatten(current)
    free = lambda key: any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES)  # noqa: E731
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys())
            if old[k] != new[k] and not free(k)]


def check_same_run(cfg: DictConfig, saved_config: Path) -> None:
    """Refuse to continue (or skip as done) the run saved in `saved_config`'s directory with
    other settings: its checkpoint and metrics would be mixed with, or taken for, this run's."""
    if not saved_config.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_config), resolve=False)
    changes = config_changes(saved, OmegaConf.to_container(cfg, resolve=True))
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise ConfigError(
            f"{saved_config.parent} holds a run with other settings ({shown}): rerun it with its own settings, "
            "choose another hydra.run.dir, or pass resume=never to start it over with these")