"""The allowed names of every setting that is a choice (optimizers, losses, activations, ...), as
Literal types, defined once: the schema (wdcollapse.schema) checks settings against them and the
implementations look names up in their registries (tests/test_schema.py holds the two equal).
Only `typing`: the models and the metric pass import it without pydantic or OmegaConf."""

from __future__ import annotations

from typing import Literal, get_args

DataName = Literal["mnist", "fashion_mnist", "cifar10"]
LossName = Literal["mse", "cross_entropy"]
MseReduction = Literal["half_mean", "half_sum", "mean"]
Activation = Literal["relu", "leaky_relu", "smooth_leaky_relu"]
Init = Literal["default", "he", "lecun"]
Schedule = Literal["every", "log"]
Resume = Literal["auto", "never"]
Normalize = Literal["channel", "pixel", "none"]  # true = channel, false = none
# what a run returns to a sweeper (wdcollapse.objective, which computes each; all are minimised)
ObjectiveName = Literal["balancedness", "steps_to_balance", "nc1", "test_error", "train_loss", "wall_seconds"]
# pytorch_lightning.Trainer(precision=...): its documented values and aliases
Precision = Literal[
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
    64,
    32,
    16,
]


def names(literal) -> tuple:
    """The allowed values of one of the Literal types above, e.g. names(LossName)."""
    return get_args(literal)
