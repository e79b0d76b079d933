"""The training-curve figure reads like the paper's: its title, one panel per metric with the
metric's definition on the y axis, log axes for what falls exponentially, one line per layer."""

import math
from pathlib import Path
from unittest import mock

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
