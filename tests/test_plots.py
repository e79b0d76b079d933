"""The training-curve figure reads like the paper's: its title, one panel per metric with the
metric's definition on the y axis, log axes for what falls exponentially, one line per layer."""

import math
from pathlib import Path
from unittest import mock

import pytest

from wdcollapse.plots import training
from wdcollapse.runs import Run


def curve_run(seed):
    rows = []
    for e in range(0, 101, 10):
        row = {"epoch": e}
        for l in range(1, 8):
            row[f"nc1/layer_{l}"] = 5 * math.exp(-0.05 * e) * (1 + 0.1 * seed)
            row[f"nc2/layer_{l}"] = 1 + 50 * math.exp(-0.05 * e)
            if l < 7:  # pairs (l, l+1)
                row[f"balancedness/layer_{l}"] = 2 * math.exp(-0.04 * e) if l > 4 else 0.5
            if l <= 4:
                row[f"negativity/layer_{l}"] = 0.5
        rows.append(row)
    cfg = {"model": {"nonlinear_depth": 4, "linear_depth": 3}, "seed": seed}
    return Run(Path("/nonexistent"), cfg, {"status": "finished"}, rows)


def test_training_curves_have_the_title_definitions_log_axes_and_a_line_per_layer(tmp_path):
    captured = {}
    with mock.patch.object(training, "save_figure", side_effect=lambda fig, stem: captured.setdefault("fig", fig)):
        training.plot_training_curves([curve_run(0), curve_run(1)], tmp_path / "x", first_layer=2, title="My figure")
    fig = captured["fig"]
    assert fig._suptitle.get_text().startswith("My figure  (2 seed(s), band = 1 std")
    nc1, nc2, bal, neg = fig.axes[:4]
    assert [ax.get_title() for ax in (nc1, bal, neg)] == [
        "NC1 (within-class variability)",
        "balancedness of pair (l, l+1)",
        "negativity (ReLU layers)",
    ]
    assert "tr($\\Sigma_W$)" in nc1.get_ylabel() and "W_l W_l^T" in bal.get_ylabel() and "sigma" in neg.get_ylabel()
    assert nc1.get_yscale() == "log" and bal.get_yscale() == "log" and neg.get_yscale() == "linear"
    assert len(nc1.get_lines()) == 6 and len(bal.get_lines()) == 5 and len(neg.get_lines()) == 3  # layers 2..7
    assert len(nc1.collections) == 6  # a band per line


def test_the_nonlinear_depth_figure_draws_seed_means_with_a_band_of_one_std():
    from wdcollapse.plots import depth_sweeps

    def depth_run(L1, seed, value):
        row = {"epoch": 10}
        row |= {f"balancedness/layer_{l}": value for l in range(1, L1 + 3)}
        row |= {f"negativity/layer_{l}": value for l in range(1, L1 + 1)}
        cfg = {"model": {"nonlinear_depth": L1, "linear_depth": 3}, "optim": {"lr": 0.01}, "seed": seed}
        return Run(Path("/nonexistent"), cfg, {"status": "finished"}, [row])

    # seeds 0 and 1 at 0.5 +- 0.1 (4 layers) and 0.2 +- 0.05 (8 layers): means 0.5, 0.2; stds 0.1, 0.05
    runs = [depth_run(4, 0, 0.4), depth_run(4, 1, 0.6), depth_run(8, 0, 0.15), depth_run(8, 1, 0.25)]
    captured = {}
    with mock.patch.object(depth_sweeps, "save_figure", side_effect=lambda fig, stem: captured.setdefault("fig", fig)):
        depth_sweeps.plot_nonlinear_depth_sweep(runs, "unused", title="Fig. 3")
    fig = captured["fig"]
    assert fig._suptitle.get_text() == "Fig. 3  (2 seeds per point, band = 1 std over seeds)"
    for ax in fig.axes:
        mean_line = next(line for line in ax.get_lines() if line.get_label() == "mean, lr 0.01")
        assert list(mean_line.get_xdata()) == [4, 8] and list(mean_line.get_ydata()) == [0.5, 0.2]
        assert len(ax.collections) == 2  # a band for the mean and one for the minimum
        band = ax.collections[0].get_paths()[0].vertices
        lows = {x: y for x, y in band[1:3]}  # fill_between's path: the lower edge first
        assert math.isclose(lows[4.0], 0.4) and math.isclose(lows[8.0], 0.15)


def _captured(module, plot, *args, **kwargs):
    """The figure `plot` draws, caught before it is saved."""
    captured = {}
    with mock.patch.object(module, "save_figure", side_effect=lambda fig, stem: captured.setdefault("fig", fig)):
        plot(*args, **kwargs)
    return captured["fig"]


def test_the_stability_figure_draws_both_sharpnesses_against_their_thresholds_and_marks_the_drop():
    from test_claims import sharpness_run

    from wdcollapse.figures import FIGURES
    from wdcollapse.plots import beyond

    edge = [0.3, 0.6, 0.95, 1.0, 1.05, 0.1, 0.2, 0.3, 0.35, 0.4]
    runs = [sharpness_run(edge, seed=0), sharpness_run(edge, seed=1)]
    title = FIGURES["stability_mnist"].title
    fig = _captured(beyond, beyond.plot_stability, runs, "unused", title)
    assert (
        fig._suptitle.get_text().startswith("Beyond the paper: sharpness") and "2 seed(s)" in fig._suptitle.get_text()
    )
    full, batch, ratio = fig.axes[:3]
    for ax in (full, batch):
        labels = [line.get_label() for line in ax.get_lines()]
        assert {"2(1+beta)/eta", "2/eta", "lr drop (epoch 10)"} <= set(labels)
        assert ax.get_yscale() == "log"
        threshold = next(line for line in ax.get_lines() if line.get_label() == "2(1+beta)/eta")
        assert threshold.get_drawstyle() == "steps-post"  # the threshold jumps at the drop
        assert list(threshold.get_xdata()) == list(range(2, 21, 2))  # from the first trained epoch
    drop = next(line for line in full.get_lines() if line.get_label().startswith("lr drop"))
    assert list(drop.get_xdata()) == [10.0, 10.0]
    # the ratio panel: each seed's batch sharpness over 2(1+beta)/eta, and claim 5's band
    seed0 = next(line for line in ratio.get_lines() if line.get_label() == "batch sharpness, seed 0")
    assert list(seed0.get_ydata()) == pytest.approx(edge) and ratio.get_yscale() == "log"
    assert any("claim 5: [0.8, 1.1]" in str(p.get_label()) for p in ratio.patches)


def test_the_deep_head_figure_draws_nc2_cond_and_rank_against_linear_depth():
    from test_claims import deep_head_run

    from wdcollapse.plots import beyond

    depths = (1, 2, 5, 8, 10)
    runs = [
        deep_head_run(d, 1 + 2.0 / d, rank=8 if d == 10 else 9, cond=float(d), wd=wd)
        for d in depths
        for wd in (1e-3, 4e-3)
    ]
    fig = _captured(beyond, beyond.plot_deep_head, runs, "unused", "Beyond the paper: deeper heads")
    assert fig._suptitle.get_text().startswith("Beyond the paper: deeper heads")
    nc2, cond, rank = fig.axes[:3]
    assert [ax.get_title() for ax in (nc2, cond, rank)] == [
        "NC2 of Z_(L-1)",
        "condition number of W_L",
        "rank of the class means of Z_(L-1)",
    ]

    def errorbar(ax, label):  # an error bar's data line (its label is the container's)
        return next(c for c in ax.containers if c.get_label() == label).lines[0]

    line = errorbar(nc2, "wd 0.001")
    assert list(line.get_xdata()) == list(depths) and list(line.get_ydata()) == pytest.approx(
        [1 + 2.0 / d for d in depths]
    )
    ranks = errorbar(rank, "wd 0.004")
    assert list(ranks.get_ydata()) == [9, 9, 9, 9, 8]
    assert any(line.get_label() == "K - 1 = 9" for line in rank.get_lines())
    assert list(errorbar(cond, "wd 0.001").get_ydata()) == list(map(float, depths))
    assert all(any(line.get_label() == "the paper's deepest head" for line in ax.get_lines()) for ax in fig.axes[:3])


def test_the_width_figure_draws_collapse_against_n1_over_n_with_the_bounds():
    from test_claims import width_run

    from wdcollapse.plots import beyond

    runs = [width_run(n1, 0.01 * (1 + seed), 0.05, seed=seed) for n1 in (25, 50, 100, 200, 400) for seed in (0, 1)]
    fig = _captured(beyond, beyond.plot_width, runs, "unused", "Beyond the paper: width")
    assert fig._suptitle.get_text() == "Beyond the paper: width  (N = 200, end of training)"
    nc1, balancedness = fig.axes[:2]
    mean = next(line for line in nc1.get_lines() if line.get_label() == "mean over seeds")
    assert list(mean.get_xdata()) == [0.125, 0.25, 0.5, 1.0, 2.0]
    assert list(mean.get_ydata()) == pytest.approx([0.015] * 5)
    assert len(next(line for line in nc1.get_lines() if line.get_label() == "a seed").get_xdata()) == 10
    assert nc1.get_xscale() == "log" and nc1.get_yscale() == "log"
    for ax, bound in ((nc1, 0.05), (balancedness, 0.1)):
        labels = [line.get_label() for line in ax.get_lines()]
        assert f"claim 7: collapsed below {bound:g}" in labels
        assert "n1 = N (Theorem 4.4 assumes n1 >= N)" in labels
