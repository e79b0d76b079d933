"""The registry of figures: each of the paper's figures (and our theory_gd experiment) defined
once, with its experiment config, its plotter, the claims it is judged by, what the paper states
of its settings (FIGURES) and, per preset, the runs it sweeps (preset_sweeps: read from
conf/reproduce/<preset>.yaml, where each figure's settings sit beside the ASSUMPTION and
REDUCTION notes that explain them). docs/claims.md describes all of it in prose.

Three figures are experiments the paper did not run (`beyond=True`: stability_mnist,
deep_head_mnist, width_mnist): a preset lists them under its own `beyond:` key, next to
`figures:`, and `wdcollapse-reproduce --beyond` (make reproduce BEYOND=1) or `--only NAME` runs
them; the report labels them "beyond the paper".
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from .config import CONF_DIR


@dataclass(frozen=True)
class Plotter:
    """A figure's plotter, named by module and function and imported when called (so that the
    registry loads without matplotlib): plotter(runs, stem, spec) -> the files it wrote."""

    module: str
    function: str

    def __call__(self, runs: list, stem, spec) -> list:
        return getattr(importlib.import_module(self.module), self.function)(runs, stem, spec)


def plotter(function: str) -> Plotter:
    """One of wdcollapse.plots.kinds' plotters (training, linear_depth, nonlinear_depth, theory)."""
    return Plotter("wdcollapse.plots.kinds", function)


@dataclass(frozen=True)
class FigureSpec:
    name: str  # = the experiment config conf/experiment/<name>.yaml
    title: str
    paper_figure: str | None  # where it is in the paper; None for our own experiment
    plot: Plotter  # draws the figure from its runs
    claims: tuple[int, ...] = ()  # the claims of claims.CLAIMS this figure is judged by
    first_plotted_layer: int = 1  # the training curves start at this layer (the paper's choice)
    paper: dict = field(default_factory=dict)  # settings the paper states for this figure
    open_architecture: tuple[str, ...] = ()  # architecture settings the paper leaves open here
    theorem31: bool = False  # Theorem 3.1's bound is checked on this figure's runs
    balancing_rate: bool = False  # Theorem 4.4's phase-2 balancing rate is checked (theory.json)
    beyond: bool = False  # an experiment the paper did not run: a preset's `beyond:` key, run with --beyond

    @property
    def ours(self) -> bool:
        return self.paper_figure is None


BEYOND_LABEL = "beyond the paper"  # how the report, the figures' titles and W&B label a beyond figure
BEYOND_KEY = "beyond"  # conf/reproduce/<preset>.yaml: the beyond figures' sweeps, next to `figures:`


def beyond_suffix(beyond: bool) -> str:
    """ " (beyond the paper)" after a beyond figure's or claim's name in the report and the console; else ""."""
    return f" ({BEYOND_LABEL})" if beyond else ""


FIGURES: dict[str, FigureSpec] = {
    f.name: f
    for f in (
        FigureSpec(
            "mlp_mnist",
            "MLP (6 ReLU + 3 linear) on MNIST",
            "early Fig. 1 / ICLR Fig. 4",
            plotter("training"),
            claims=(1, 2),
            first_plotted_layer=3,
            theorem31=True,
            paper={"optim.lr": 0.001, "optim.weight_decay": 0.0018, "seeds": 5},
        ),
        FigureSpec(
            "resnet20_cifar10",
            "ResNet20 + 3 ReLU + 3 linear on CIFAR-10",
            "ICLR Fig. 1",
            plotter("training"),
            claims=(1, 2),
            first_plotted_layer=1,
            paper={"optim.lr": 0.001, "optim.weight_decay": 0.001, "trainer.max_epochs": "~5000"},
        ),
        FigureSpec(
            "linear_depth_mnist",
            "MLP with 5 ReLU layers on MNIST: linear-head depth",
            "Fig. 2 (MNIST)",
            plotter("linear_depth"),
            claims=(3,),
            paper={"optim.lr": 0.001, "optim.weight_decay": "0.001 and 0.004"},
        ),
        FigureSpec(
            "linear_depth_cifar10",
            "ResNet20 on CIFAR-10: linear-head depth",
            "Fig. 2 (CIFAR-10)",
            plotter("linear_depth"),
            claims=(3,),
            open_architecture=("model.nonlinear_depth",),
            paper={"optim.lr": 0.001, "optim.weight_decay": 0.001},
        ),
        FigureSpec(
            "resnet20_mnist",
            "ResNet20 on MNIST: linear-head depth",
            "appendix Fig. 5",
            plotter("linear_depth"),
            claims=(3,),
            open_architecture=("model.nonlinear_depth",),
        ),
        FigureSpec(
            "nonlinear_depth_mnist",
            "MLP on MNIST: non-linear depth",
            "Fig. 3",
            plotter("nonlinear_depth"),
            claims=(4,),
            open_architecture=("model.linear_depth",),
            paper={"optim.lr": "0.001 and 0.002", "optim.weight_decay": "0.016 / L"},
        ),
        FigureSpec(
            "theory_gd",
            "Full-batch GD in Theorem 4.4's setting",
            None,
            plotter("theory"),
            theorem31=True,
            balancing_rate=True,
            open_architecture=(
                "model.nonlinear_depth",
                "model.linear_depth",
                "model.activation",
                "model.activation_kwargs",
            ),
        ),
        # Beyond the paper (docs/claims.md, "Beyond the paper"): claims 5-7.
        FigureSpec(
            "stability_mnist",
            "Beyond the paper: sharpness of the MLP figure's network against 2(1+beta)/eta",
            None,
            plotter("stability"),
            claims=(5,),
            beyond=True,
        ),
        FigureSpec(
            "deep_head_mnist",
            "Beyond the paper: linear heads of up to 10 layers (5 ReLU layers, MNIST)",
            None,
            plotter("deep_head"),
            claims=(6,),
            beyond=True,
            open_architecture=("model.nonlinear_depth", "model.linear_depth"),
        ),
        FigureSpec(
            "width_mnist",
            "Beyond the paper: first-layer width n1 against N in Theorem 4.4's setting",
            None,
            plotter("width"),
            claims=(7,),
            beyond=True,
            open_architecture=(
                "model.nonlinear_depth",
                "model.linear_depth",
                "model.activation",
                "model.activation_kwargs",
            ),
        ),
    )
}


def figure_spec(name: str) -> FigureSpec:
    """The registered figure of this experiment, or a one-line error naming the choices."""
    try:
        return FIGURES[name]
    except KeyError:
        raise SystemExit(
            f"error: no figure {name!r} in wdcollapse.figures.FIGURES; choose one of {sorted(FIGURES)}"
        ) from None


@dataclass
class FigureSweep:
    """What one preset runs of a figure: a Hydra multirun of its experiment."""

    name: str
    experiment: str
    sweep: dict[str, str]
    overrides: list[str] = field(default_factory=list)
    needs: str | None = None
    use_preset: bool = True  # theory_gd sets its own widths and data size: no preset

    def combinations(self) -> list[dict[str, str]]:
        keys = list(self.sweep)
        values = [str(self.sweep[k]).split(",") for k in keys]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

    @property
    def num_runs(self) -> int:
        return len(self.combinations())

    @property
    def spec(self) -> FigureSpec:
        return figure_spec(self.experiment)

    @property
    def beyond(self) -> bool:
        """Whether this is an experiment the paper did not run (its registry entry says)."""
        return self.spec.beyond


def preset_notice(preset: str) -> str | None:
    """What a preset's reproduction is for, when its verdicts are not to be read as results (the
    smoke preset: a plumbing check): the `notice` of conf/reproduce/<preset>.yaml, or None."""
    path = CONF_DIR / "reproduce" / f"{preset}.yaml"
    return preset_spec(preset).get("notice") if path.exists() else None


def preset_spec(preset: str) -> dict:
    """conf/reproduce/<preset>.yaml as a dict; one with `base: <other preset>` is that preset's spec
    with its own keys merged in (a figure's sweep values one by one, its overrides list whole)."""
    return OmegaConf.to_container(_preset_node(preset), resolve=True)


def _preset_node(preset: str):
    path = CONF_DIR / "reproduce" / f"{preset}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SystemExit(f"error: unknown preset {preset!r}; choose one of {available}")
    spec = OmegaConf.load(path)
    base = spec.pop("base", None)
    return spec if base is None else OmegaConf.merge(_preset_node(str(base)), spec)


def preset_sweeps(preset: str, beyond: bool = False) -> tuple[int, list[FigureSweep]]:
    """(parallel jobs, each figure's sweep) of a preset: conf/reproduce/<preset>.yaml's `figures`,
    then, with `beyond`, its `beyond` figures (the experiments the paper did not run). A figure
    under the wrong key (a beyond figure under `figures`, or a paper figure under `beyond`) is an
    error naming it."""
    spec = preset_spec(preset)
    sections = [("figures", False)] + ([(BEYOND_KEY, True)] if beyond else [])
    figures = []
    for section, is_beyond in sections:
        for name, f in (spec.get(section) or {}).items():
            registered = figure_spec(f["experiment"])  # every figure's plotter and claims are registered
            if registered.beyond != is_beyond:
                where = f"`{BEYOND_KEY}:`" if registered.beyond else "`figures:`"
                raise SystemExit(
                    f"error: conf/reproduce/{preset}.yaml lists {name} (experiment {f['experiment']}) under "
                    f"`{section}:`; it belongs under {where}"
                )
            figures.append(
                FigureSweep(
                    name,
                    f["experiment"],
                    {k: str(v) for k, v in f.get("sweep", {}).items()},
                    list(f.get("overrides", [])),
                    f.get("needs"),
                    bool(f.get("use_preset", True)),
                )
            )
    return int(spec.get("jobs", 2)), figures
