"""Every setting of `wdcollapse-train` as one typed schema (pydantic): its type, its range and its
default. `validate(cfg)` checks a composed config against it before any work and raises a
ConfigError naming the setting, the value and what is allowed; the YAML files under conf/ hold the
same defaults (tests/test_schema.py holds them equal) and the code's defaults are read from here.

Allowed names (optimizers, losses, activations, ...) are defined here once; the implementations
look them up in their registries, and tests/test_schema.py holds the two equal."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .arguments import allowed as _allowed
from .errors import ConfigError
from .names import (  # noqa: F401 (re-exported: the allowed names are defined once, in names.py)
    Activation,
    DataName,
    Init,
    LossName,
    MseReduction,
    Normalize,
    ObjectiveName,
    Precision,
    Resume,
    Schedule,
    names,
)

PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what torch and numpy accept as a seed


class Section(BaseModel):
    """A config group: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=False)


# This package's data module and models: their settings are checked key by key below. Any other
# `_target_` is a user's own class (wdcollapse.interfaces says what it must offer): its own keys
# pass, and the class is checked for the interface once it is built.
OWN_DATA = ("wdcollapse.data.tensors.TensorDataModule",)
OWN_MODELS = ("wdcollapse.models.MLP", "wdcollapse.models.ResNet20")


class Data(Section):
    target: str = Field(alias="_target_")
    name: DataName
    root: str
    num_per_class: PositiveInt | None = None  # class-balanced training subset (null = all)
    test_num_per_class: PositiveInt | None = None
    batch_size: PositiveInt | None = 128  # null = full batch
    normalize: bool | Normalize = True
    download: bool = False
    image_folder: str | None = None
    subset_seed: Seed
    shuffle_seed: Seed
    eval_chunk: PositiveInt = 4096  # samples per forward pass of the metric pass
    num_classes: Annotated[int, Field(ge=2)]
    in_shape: Annotated[list[PositiveInt], Field(min_length=1, max_length=3)]


class ExternalData(Section):
    """A data module of the user's own (a LightningDataModule that is a MetricData): its keys are
    its own; the metrics need the number of classes."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    target: str = Field(alias="_target_")
    num_classes: Annotated[int, Field(ge=2)]


class ExternalModel(Section):
    """A model of the user's own (a MeasuredNetwork): its keys are its own."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    target: str = Field(alias="_target_")


class Model(Section):
    """LayerwiseNet's settings (MLP, ResNet20)."""

    target: str = Field(alias="_target_")
    in_shape: list[PositiveInt]
    num_classes: Annotated[int, Field(ge=2)]
    nonlinear_depth: Annotated[int, Field(ge=0)] = 6
    linear_depth: PositiveInt = 3
    width: PositiveInt | list[PositiveInt] = 256
    activation: Activation = "relu"
    activation_kwargs: dict[str, float] = Field(default_factory=dict)
    bias: bool = False
    init: Init = "he"
    init_scale: Annotated[float, Field(gt=0)] = 1.0


class Optimizer(Section):
    """An optimizer node (`optim.optimizer`): a partial `_target_` the module calls with its
    parameters; its other keys are the class's arguments (config.check_config checks their names
    against its signature)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    target: str = Field(alias="_target_")
    partial: Literal[True] = Field(alias="_partial_")


class Optim(Section):
    """The optimizer group: its settings, which its `optimizer` node takes by interpolation. Any
    file of conf/optim/ (or of your own config dir) is an optimizer: the keys an optimizer does not
    take (momentum for Adam) are simply absent from its file."""

    name: Annotated[str, Field(min_length=1)] = "sgd"
    optimizer: Optimizer
    lr: Annotated[float, Field(gt=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # heavy ball diverges at momentum >= 1
    nesterov: bool = False
    fused: bool = True  # SGD in torch's fused kernel: bitwise the default path's updates, faster steps
    weight_decay: Annotated[float, Field(ge=0)] = 1.8e-3
    trunk_weight_decay: Annotated[float, Field(ge=0)] | None = None  # None: weight_decay everywhere
    # auto: a tenth of the run, >= 100 steps, <= 10 epochs and half the run; a number > half the run is refused
    warmup_epochs: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    lr_drop_at: Annotated[float, Field(gt=0, le=1)] | None = None
    lr_drop_factor: Annotated[float, Field(gt=0)] = 0.1


class Loss(Section):
    name: LossName = "mse"
    mse_reduction: MseReduction = "half_mean"


class Trainer(BaseModel):
    """pytorch_lightning.Trainer's arguments: these are checked by type and range, any other key
    must be one of Trainer's own arguments."""

    model_config = ConfigDict(extra="allow")
    max_epochs: PositiveInt = 300
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"] = "auto"
    devices: PositiveInt | Literal["auto"] | list[Annotated[int, Field(ge=0)]] | str = 1
    strategy: str = "auto"
    precision: Precision = "32-true"
    sync_batchnorm: bool = False
    deterministic: bool | Literal["warn"] = False
    log_every_n_steps: PositiveInt = 50


class ExtraMetrics(Section):
    """Optional metrics from the literature and beyond the paper, one switch per family (the
    metric pass's `extra`: wdcollapse.keys.EXTRA; MetricMonitor's own: keys.MONITOR_EXTRA), all
    off: the default pass and its row are unchanged."""

    papyan_nc1_cdnv: bool = False  # nc1_papyan/layer_l = tr(Sigma_W Sigma_B^+) / K, cdnv/layer_l
    etf: bool = False  # nc2_equinorm/{features,weights}, nc2_equiangularity/{features,weights}
    self_duality: bool = False  # nc3_duality
    nc4: bool = False  # agreement with the nearest class centre: a second pass over the data
    test_set: bool = False  # the metric pass on the test split too, its keys prefixed test/
    conditioning: bool = False  # weight_sv<i>/layer_l, weight_sv_min/layer_l, weight_cond/layer_l (linear head)
    rank: bool = False  # class_sv<i>[_preact]/layer_l, rank[_preact]/layer_l of the centred class means
    nc0: bool = False  # nc0 = ||sum_k W_L[k, :]||_2
    grad_norm: bool = False  # grad_norm, grad_norm/loss: a forward and backward pass over the training set
    agop: bool = False  # agop_corr/layer_l, agop_sqrt_corr/layer_l, agop_trace/layer_l on the fixed subset
    sharpness: bool = False  # sharpness, sharpness/{eig_i,batch,threshold_gd,threshold_momentum,seconds,epochs}


class Metrics(Section):
    target: str = Field(alias="_target_", default="wdcollapse.callbacks.MetricMonitor")
    schedule: Schedule = "log"  # log: num_points log-spaced epochs; every: every every_n epochs
    every_n: PositiveInt = 1
    num_points: PositiveInt = 25
    exact: bool = False  # float32 per chunk, float64 accumulation; true: float64 throughout
    test_acc: bool = True
    theory: Literal["auto"] | bool = "auto"
    extra: ExtraMetrics = Field(default_factory=ExtraMetrics)
    subset: PositiveInt = 1000  # agop, sharpness: the fixed subset (every (N / subset)-th training sample)
    lanczos_steps: PositiveInt = 20  # sharpness: Lanczos iterations (Hessian-vector products) per evaluation
    hessian_eigenvalues: PositiveInt = 2  # sharpness: how many of the Hessian's top eigenvalues are logged
    batch_sharpness_batches: PositiveInt = 8  # sharpness: mini-batches of the training batch size averaged


class TheoryGD(Section):
    target: str = Field(alias="_target_")
    check_assumptions: bool = True
    flush_every_n_epochs: PositiveInt = 1
    settle: Annotated[float, Field(gt=0, lt=1)] = 0.01
    floor: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    tolerance: Annotated[float, Field(gt=0)] = 0.2
    min_points: Annotated[int, Field(ge=2)] = 20


class Target(Section):
    """A `_target_` node whose arguments are its class's own (a callback of the user's own)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    target: str = Field(alias="_target_")


class Checkpoint(Section):
    target: str = Field(alias="_target_", default="wdcollapse.callbacks.AtomicCheckpoint")
    every_n_epochs: PositiveInt = 1


class Callbacks(Section):
    """The Trainer's callbacks, built in order; `+callbacks.<name>._target_=...` adds one."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    guard: Target = Field(default_factory=lambda: Target(_target_="wdcollapse.callbacks.DivergenceGuard"))
    metrics: Metrics = Field(default_factory=Metrics)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    theory_gd: TheoryGD | None = None


class Objective(Section):
    """What the run returns to a sweeper that reads values (hydra/sweeper=optuna): named quantities
    of the finished run, each minimised (wdcollapse.objective computes them)."""

    names: ObjectiveName | Annotated[list[ObjectiveName], Field(min_length=1)] | None = None
    balanced_below: Annotated[float, Field(gt=0)] = 0.1  # steps_to_balance: claims.LINEAR_BALANCED
    failed: float = 1.0e9  # a failed, diverged or refused run's value (finite: Optuna's multi-objective TPE needs it)


class Paths(Section):
    data_dir: str


class Settings(Section):
    """The root config of wdcollapse-train (conf/train.yaml)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[^/\\]+$")] = "default"
    seed: Seed = 0
    threads: PositiveInt = 1
    compile: bool = False
    channels_last: bool = False
    steps_per_call: PositiveInt = 16
    resume: Resume = "auto"
    loss: Loss = Field(default_factory=Loss)
    paths: Paths
    data: Data
    model: Model
    optim: Optim
    module: Target
    trainer: Trainer = Field(default_factory=Trainer)
    callbacks: Callbacks = Field(default_factory=Callbacks)
    objective: Objective = Field(default_factory=Objective)
    logger: dict[str, dict[str, Any]] | None = None


def trainer_arguments() -> set[str]:
    import pytorch_lightning as pl

    return set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


_TYPE_PARTS = {"int", "float", "str", "bool", "list", "dict", "none", "Metrics", "TheoryGD"}


def _setting(loc: tuple) -> str:
    """A pydantic error location as the setting's dotted name; the members of a union it tried
    (`constrained-int`, `literal['auto']`, ...) are left out, list indices kept: data.in_shape[0]."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_PARTS:
            name += f".{part}" if name else part
    return name


@functools.cache
def settings_class(own_data: bool, own_model: bool) -> type[Settings]:
    """Settings, with a user's own data module or model checked as ExternalData / ExternalModel."""
    if own_data and own_model:
        return Settings
    fields = {}
    if not own_data:
        fields["data"] = (ExternalData, ...)
    if not own_model:
        fields["model"] = (ExternalModel, ...)
    return create_model("Settings", __base__=Settings, **fields)


def check_arguments(where: str, node: dict, given: tuple = ()) -> None:
    """A `_target_` node's keys against its class's (or function's) signature: a ConfigError naming
    a key it does not take, or a `_target_` that cannot be imported. `given` are the arguments the
    code passes itself (a callback's out_dir)."""
    from hydra.utils import get_object

    target = node.get("_target_")
    try:
        obj = get_object(target)
    except Exception as e:
        raise ConfigError(f"{where}._target_={target!r} cannot be imported ({str(e).splitlines()[0]})") from None
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return  # no signature to check against (a builtin)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(k for k in node if not str(k).startswith("_") and k not in parameters)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]} is not allowed: not an argument of {target} (its arguments: "
            f"{[p for p in parameters if p not in ('self', 'params', *given)]})"
        )


def validate(cfg: DictConfig) -> Settings:
    """The resolved `cfg` (its hydra node left out) as Settings; a ConfigError for the first bad
    setting: `optim.momentum=1.5 is not allowed: a number < 1`."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "a setting"
        raise ConfigError(f"{key} cannot be resolved: {str(e).splitlines()[0]}") from None
    container.pop("hydra", None)
    targets = [(container.get(group) or {}).get("_target_") for group in ("data", "model")]
    try:
        settings = settings_class(targets[0] in OWN_DATA, targets[1] in OWN_MODELS).model_validate(container)
    except ValidationError as e:
        errors = e.errors()
        # Of several errors for one setting (one per member of a union), the first names it best.
        error = errors[0]
        setting = _setting(error["loc"])
        value = error.get("input")
        reasons = [_allowed(err) for err in errors if _setting(err["loc"]) == setting]
        shown = "; or ".join(dict.fromkeys(reasons))
        raise ConfigError(f"{setting}={value!r} is not allowed: {shown}") from None
    unknown = sorted(set(settings.trainer.model_extra or {}) - trainer_arguments())
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]} is not allowed: not an argument of pytorch_lightning.Trainer")
    check_arguments("optim.optimizer", container["optim"]["optimizer"])
    for name, node in (container.get("callbacks") or {}).items():
        if node is not None:
            check_arguments(f"callbacks.{name}", node, given=("out_dir",))
    return settings
