"""Config checks that run before any work, and the resolvers the configs use."""

from __future__ import annotations

import contextlib
import io
import math
import os
import uuid
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .schema import OWN_MODELS, Settings, validate

# The configs ship inside the package: Hydra finds them through the package (pkg://), wherever
# it is installed; nothing is looked up relative to a source checkout.
CONFIG_MODULE = "wdcollapse.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the same files, for reading them directly
DATA_DIR_ENV = "WDCOLLAPSE_DATA_DIR"


def default_data_dir() -> Path:
    """Where data lives unless paths.data_dir says otherwise: $WDCOLLAPSE_DATA_DIR, else data/
    under the current directory."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.cwd() / "data")


def register_resolvers() -> None:
    """`${div:a,b}` = a / b and `${add:a,b}` = a + b (e.g. weight decay 0.016 / L), and
    `${data_dir:}`, the default data directory (default_data_dir), `${bf16_where_native:accelerator}`
    (bf16 autocast only where it is native), and
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
    if not OmegaConf.has_resolver("bf16_where_native"):
        OmegaConf.register_new_resolver("bf16_where_native", bf16_where_native)
    if not OmegaConf.has_resolver("data_dir"):
        OmegaConf.register_new_resolver("data_dir", lambda: str(default_data_dir()))


def balancing_epochs(budget, lr, weight_decay, momentum, num_samples, batch_size) -> int:
    """Epochs of SGD after which weight decay has shrunk a linear pair's imbalance by exp(-2 budget)
    by the theory's rate: (1 - eta lambda / (1 - momentum))^(2k) ~ exp(-2 budget) after
    k = budget (1 - momentum) / (eta lambda) steps (momentum multiplies the step by 1 / (1 - momentum)).
    `${balancing_epochs:3,${optim.lr},${optim.weight_decay},${optim.momentum},60000,${data.batch_size}}`
    gives every depth of a sweep the same balancing, where their weight decays differ (a fixed lr in place of
    ${optim.lr} gives every rate the epochs of that rate's budget)."""
    steps_per_epoch = math.ceil(int(num_samples) / int(batch_size))
    steps = float(budget) * (1.0 - float(momentum)) / (float(lr) * float(weight_decay))
    return max(1, math.ceil(steps / steps_per_epoch))


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether `accelerator` (a Trainer's: auto, cpu, gpu, cuda) computes in bf16 natively: a CUDA
    GPU that supports bf16 in hardware (auto picks one when present; torch's default also counts
    emulation, as on a T4 or V100), or a CPU with AVX512-BF16 or AMX. On other
    CPUs bf16 autocast is emulated: 10x slower than float32 on an AVX2 VM (BENCHMARKS.md, 2026-12-06,
    fourth session)."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu, hence guarded
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def bf16_where_native(accelerator: str = "auto") -> str:
    """`${bf16_where_native:${trainer.accelerator}}`: the precision "bf16-mixed" where bf16 is native
    (native_bf16), else "32-true". The run's saved config.yaml records the precision it resolved to."""
    return "bf16-mixed" if native_bf16(accelerator) else "32-true"


def _require(ok: bool, setting: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is not allowed: {allowed}")


def check_config(cfg: DictConfig) -> Settings:
    """Every setting against the schema (wdcollapse.schema), then the rules that tie settings
    together; a ConfigError for the first bad one, warnings for legal but unusual ones."""
    settings = validate(cfg)
    data, model, optim, trainer = cfg.data, cfg.model, cfg.optim, cfg.trainer
    if model._target_ in OWN_MODELS:
        hidden = model.nonlinear_depth + model.linear_depth - 1
        _require(
            not OmegaConf.is_list(model.width) or len(model.width) == hidden,
            "model.width",
            model.width,
            f"an integer >= 1, or a list of nonlinear_depth + linear_depth - 1 = {hidden} such integers",
        )
    _require(
        optim.get("trunk_weight_decay") is None or model._target_ != "wdcollapse.models.MLP",
        "optim.trunk_weight_decay",
        optim.get("trunk_weight_decay"),
        "null with model=mlp (its layers are all fully connected: there is no trunk); it is for model=resnet20",
    )
    _require(
        optim.name != "gd" or data.get("batch_size") is None,
        "data.batch_size",
        data.get("batch_size"),
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
    _require(
        not optim.get("nesterov") or optim.get("momentum", 0) > 0,
        "optim.nesterov",
        optim.get("nesterov"),
        "false with optim.momentum=0 (Nesterov momentum needs a momentum)",
    )
    warmup = optim.get("warmup_epochs", 0)
    _require(
        warmup == "auto" or float(warmup) <= trainer.max_epochs / 2,
        "optim.warmup_epochs",
        warmup,
        f"at most half of trainer.max_epochs={trainer.max_epochs} ({trainer.max_epochs / 2:g}): a longer warm-up "
        "keeps the learning rate at a fraction of optim.lr for most of the run; use auto (a tenth of the run, "
        "at least 100 steps, at most 10 epochs and half the run) or a shorter one",
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
    if model.get("linear_depth") == 1:
        warnings.warn("model.linear_depth=1: the theory (Theorem 3.1) needs a linear head of >= 2 layers", stacklevel=2)
    return settings


def search_path(config_dir: str | None = None):
    """Hydra's config search path as `wdcollapse-train` gets it: hydra's own configs, the
    package's (pkg://wdcollapse.conf), the plugins' (hydra/launcher=joblib), and a user's
    `--config-dir` in front of the package's, as Hydra puts it."""
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    path = create_config_search_path(CONFIG_PATH)
    if config_dir is not None:
        folder = os.path.abspath(config_dir)
        if not os.path.isdir(folder):
            raise ConfigError(f"--config-dir {config_dir}: no such directory")
        path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    return path


def check_command_line(argv: list[str]) -> None:
    """The command line of wdcollapse-train, before Hydra creates anything: every choice of a
    config group (also each value of a sweep, `model=mlp,foo`) must be a config somewhere on the
    search path (the package's, `--config-dir`'s, `hydra.searchpath`'s); an output directory
    override must be writable; the config must compose (with the first value of each swept
    setting). Each failure is one ConfigError line instead of Hydra's multi-line report."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException, MissingConfigException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from .rundir import check_output_override

    try:  # quietly: Hydra parses the same argv again and prints its own usage message
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:
        return
    queries = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion)
    if any(queries) or args.config_path is not None or args.experimental_rerun is not None:
        return  # a query, or a config path relative to a caller: Hydra's own handling
    config_name = args.config_name or "train"
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as e:
        raise ConfigError(str(e).splitlines()[0].rstrip(".")) from None
    for o in parsed:
        if o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and not o.is_sweep_override():
            check_output_override(o.key_or_group, str(o.value()))
    loader = ConfigLoaderImpl(config_search_path=search_path(args.config_dir))
    searchpath = [o.input_line for o in parsed if o.key_or_group == "hydra.searchpath"]
    first = []
    for o in parsed:
        if o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()), None) if isinstance(o.value(), ChoiceSweep) else None
            if value is None:  # range(), glob(): Hydra expands and checks those itself
                continue
            first.append(f"{o.get_key_element()}={value}")  # the key element holds +, ++ or ~
        else:
            first.append(o.input_line)
        if "." in o.key_or_group or o.is_delete() or not isinstance(o.value(), (str, ChoiceSweep)):
            continue
        if "${" in str(o.value()):
            continue  # an interpolation: Hydra resolves it
        try:
            options = loader.get_group_options(o.key_or_group, config_name=config_name, overrides=searchpath)
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            raise ConfigError(str(e).strip().splitlines()[0].rstrip(".")) from None
        if not options:
            continue  # not a config group
        items = o.value().list if isinstance(o.value(), ChoiceSweep) else [o.value()]
        values = [getattr(v, "text", v) for v in items]  # a QuotedString's text
        for value in values:  # the parsed values: quotes removed
            _require(
                value in options,
                o.key_or_group,
                value,
                f"one of {options} (the {o.key_or_group}/ configs on the search path: the package's"
                + (f" and {args.config_dir}'s" if args.config_dir else "")
                + ")",
            )
    try:
        cfg = loader.load_configuration(config_name, overrides=first, run_mode=RunMode.RUN)
    except MissingConfigException as e:
        first_line = str(e).strip().splitlines()[0].rstrip(".")
        raise ConfigError(first_line + (f"; available: {sorted(e.options)}" if e.options else "")) from None
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        lines = [
            line.rstrip(".") for line in lines if not line.startswith(("full_key:", "object_type=", "reference_type="))
        ]
        raise ConfigError("; ".join(lines[:3]) or type(e).__name__) from None
    if args.multirun or cfg.hydra.get("mode") == RunMode.MULTIRUN:
        check_objective(cfg)


def reads_values(sweeper) -> bool:
    """Whether a multirun's sweeper reads the value each job returns (Optuna's, Nevergrad's, ...;
    Hydra's basic sweeper only lists the combinations)."""
    return not str(sweeper.get("_target_", "")).endswith("BasicSweeper")


def check_objective(cfg: DictConfig) -> None:
    """A multirun whose sweeper reads each job's value must say which value (`objective.names`):
    otherwise every job would train and return nothing the sweeper can use."""
    sweeper = cfg.hydra.sweeper
    _require(
        not reads_values(sweeper) or OmegaConf.select(cfg, "objective.names") is not None,
        "objective.names",
        None,
        f"a name or a list of names with hydra.sweeper._target_={sweeper.get('_target_')}, which reads the value "
        "each job returns (e.g. objective.names=balancedness; README, 'Searching a recipe')",
    )
