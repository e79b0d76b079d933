"""The Python API as a user meets it: every mistake in the table fails at the call with one line
(ArgumentError, or FileNotFoundError for a path that is not there), MetricMonitor works in an empty
folder beside any of Lightning's loggers and agrees with them epoch for epoch, test/nc4 classifies
by the training set's class centres, and the default warm-up lets a short run learn."""

import csv
import json
import math
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import wandb_records
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wdcollapse import ArgumentError, HookedNetwork, LoaderData, MetricMonitor, load_run, load_runs
from wdcollapse.metric_pass import measure, metric_pass
from wdcollapse.models import LayerwiseNet
from wdcollapse.restore import restore

K, D, N = 4, 6, 64
LAYERS = ["head.0", "head.2", "head.3"]  # one ReLU layer, a linear head of two


class UserNet(pl.LightningModule):
    """A user's own module, written without this package in mind: self.log per step and per epoch."""

    def __init__(self, width: int = 16, validate: bool = False):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(D, width, bias=False),
            nn.ReLU(),
            nn.Linear(width, width, bias=False),
            nn.Linear(width, K, bias=False),
        )
        self.validate = validate

    def forward(self, x):
        return self.head(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def blobs(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 3 * torch.eye(K, D)[y] + torch.randn(n, D, generator=g)
    return TensorDataset(x, y)


def loader(ds=None, batch_size=16, shuffle=False):
    return DataLoader(ds if ds is not None else blobs(), batch_size=batch_size, shuffle=shuffle)


def monitor(out=None, **kwargs):
    args = dict(
        schedule="every", layers=LAYERS, linear_depth=2, data=loader(), test_data=loader(blobs(32, 1)), num_classes=K
    )
    return MetricMonitor(out, **{**args, **kwargs})


def trainer(tmp_path, callbacks, max_epochs=2, logger=False, **kwargs):
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def rows_of(path):
    return [json.loads(line) for line in open(path)]


# --- the table of mistakes: each one line, at the call ----------------------------------------------

NET = UserNet()
MEASURED = HookedNetwork(NET, LAYERS, 2)
BATCHES = [tuple(blobs()[:])]
MANY = nn.Sequential(*[nn.Linear(3, 3, bias=False) for _ in range(15)])

MISTAKES = [
    # MetricMonitor: types, ranges, names
    (lambda: monitor(linear_depth="3"), r"MetricMonitor\(linear_depth='3'\): not allowed: an integer"),
    (lambda: monitor(every_n="2"), r"MetricMonitor\(every_n='2'\): not allowed: an integer"),
    (lambda: monitor(every_n=0), r"MetricMonitor\(every_n=0\): not allowed: a number >= 1"),
    (lambda: monitor(num_points=2.5), r"MetricMonitor\(num_points=2.5\): not allowed: an integer"),
    (lambda: monitor(schedule="often"), r"MetricMonitor\(schedule='often'\): not allowed: one of 'every' or 'log'"),
    (lambda: monitor(theory="sometimes"), r"MetricMonitor\(theory='sometimes'\): not allowed: one of 'auto'"),
    (lambda: monitor(exact="yes"), r"MetricMonitor\(exact='yes'\): not allowed: true or false"),
    (lambda: monitor(test_acc=1), r"MetricMonitor\(test_acc=1\): not allowed: true or false"),
    (
        lambda: monitor(extra={"etff": True}),
        r"MetricMonitor\(extra=\{'etff': True\}\): not allowed: metric families from \['papyan_nc1_cdnv', 'etf', "
        r"'self_duality', 'nc4', 'test_set', 'conditioning', 'rank', 'nc0', 'grad_norm', 'agop', 'sharpness'\] "
        r"\(unknown: \['etff'\]\)",
    ),
    (lambda: monitor(extra={"etf": "yes"}), r"MetricMonitor\(extra"),
    (lambda: monitor(layers="head.0"), r"MetricMonitor\(layers='head.0'\): not allowed: a list of names"),
    (lambda: monitor(layers=[]), r"MetricMonitor\(layers=\[\]\): not allowed: at least one layer name"),
    (lambda: monitor(linear_depth=None), r"MetricMonitor\(linear_depth=None\): not allowed: how many"),
    (lambda: monitor(linear_depth=4), r"MetricMonitor\(linear_depth=4\): not allowed: at most the 3 layers"),
    (lambda: monitor(num_classes=None), r"MetricMonitor\(num_classes=None\): not allowed: the number of classes"),
    (lambda: monitor(num_classes=1), r"MetricMonitor\(num_classes=1\): not allowed: a number >= 2"),
    (lambda: monitor(num_classes="10"), r"MetricMonitor\(num_classes='10'\): not allowed: an integer"),
    (lambda: monitor(data=5), r"MetricMonitor\(data=5\): not allowed: a DataLoader"),
    (lambda: monitor(test_data=None), r"MetricMonitor\(test_data=None\): not allowed: a DataLoader of the test set"),
    (lambda: monitor(loss_fn="mse"), r"MetricMonitor\(loss_fn='mse'\): not allowed: a callable"),
    (lambda: monitor(out=3), r"MetricMonitor\(out_dir=3\): not allowed: a string; or an instance of Path"),
    (
        lambda: monitor(layer=["head.0"]),
        r"MetricMonitor\(layer=\.\.\.\): no such argument; the arguments are \['out_dir'",
    ),
    # metric_pass
    (lambda: metric_pass(nn.Linear(2, 2), BATCHES, K), r"metric_pass\(net=Linear.*MeasuredNetwork \(it lacks \["),
    (lambda: metric_pass(MEASURED, BATCHES, "4"), r"metric_pass\(num_classes='4'\): not allowed: an integer >= 2"),
    (lambda: metric_pass(MEASURED, BATCHES, 1), r"metric_pass\(num_classes=1\): not allowed: an integer >= 2"),
    (lambda: metric_pass(MEASURED, {"x": 1}, K), r"metric_pass\(batches=\{'x': 1\}\): not allowed: an iterable"),
    (lambda: metric_pass(MEASURED, BATCHES, K, exact=1), r"metric_pass\(exact=1\): not allowed: True or False"),
    (lambda: metric_pass(MEASURED, BATCHES, K, loss_fn=3), r"metric_pass\(loss_fn=3\): not allowed: a callable"),
    (
        lambda: metric_pass(MEASURED, BATCHES, K, extra="etff"),
        r"metric_pass\(extra='etff'\): not allowed: metric families",
    ),
    (
        lambda: metric_pass(MEASURED, BATCHES, K, extra={"etf": True}),
        r"metric_pass\(extra=\{'etf': True\}\): not allowed",
    ),
    (
        lambda: metric_pass(MEASURED, [{"x": 1, "y": 2}], K),
        r"metric_pass\(batches=\.\.\.\): batch 0 is a dict with keys \['x', 'y'\]",
    ),
    (
        lambda: metric_pass(MEASURED, blobs(), K),
        r"metric_pass\(batches=<.*TensorDataset.*>\): not allowed: the batches of a DataLoader, not a Dataset",
    ),
    (
        lambda: metric_pass(MEASURED, iter(blobs()), K),
        r"metric_pass\(batches=\.\.\.\): batch 0 is \(a tensor of shape \(6,\), a tensor of shape \(\)\)",
    ),
    (
        lambda: metric_pass(MEASURED, BATCHES, K, nc4_centres=[[0.0]]),
        r"metric_pass\(nc4_centres=.*not allowed: a tensor",
    ),
    # HookedNetwork: every candidate named, not a cut list
    (
        lambda: HookedNetwork(MANY, ["0", "15"], 1),
        r"HookedNetwork\(layers=\['0', '15'\]\): not allowed: names of Sequential's fully connected submodules: "
        r"\['0', '1', .*'13', '14'\] \(no submodule named \['15'\]\)",
    ),
    (lambda: HookedNetwork(MANY, "0", 1), r"HookedNetwork\(layers='0'\): not allowed: a non-empty list"),
    (
        lambda: HookedNetwork(MANY, ["0", "1"], "1"),
        r"HookedNetwork\(linear_depth='1'\): not allowed: an integer from 0",
    ),
    (
        lambda: HookedNetwork(MANY, ["0", "0"], 1),
        r"HookedNetwork\(layers=\['0', '0'\]\): not allowed: each layer named once",
    ),
    (lambda: HookedNetwork("net", ["0"], 1), r"HookedNetwork\(module='net'\): not allowed: a torch.nn.Module"),
    # LoaderData
    (lambda: LoaderData(3, K), r"LoaderData\(train=3\): not allowed: a DataLoader"),
    (lambda: LoaderData(loader(), 2.5), r"LoaderData\(num_classes=2.5\): not allowed: an integer >= 2"),
    (
        lambda: list(LoaderData(loader(), K).eval_batches("test")),
        r"LoaderData.eval_batches\(split='test'\): not allowed",
    ),
    (lambda: list(LoaderData(loader(), K).eval_batches("val")), r"LoaderData.eval_batches\(split='val'\): not allowed"),
    # restore, load_runs, load_run
    (lambda: restore(3), r"restore\(run_dir=3\): not allowed: a string; or an instance of Path"),
    (lambda: restore("no/such/run"), r"restore\('no/such/run'\): no/such/run/config.yaml does not exist"),
    (lambda: load_runs("no/such/sweep"), r"load_runs\('no/such/sweep'\): no such folder"),
    (lambda: load_runs(None), r"load_runs\(sweep_dir=None\): not allowed: a string"),
    (lambda: load_run(["a"]), r"load_run\(path=\['a'\]\): not allowed: a string"),
]


@pytest.mark.parametrize("call, message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_each_mistake_fails_at_the_call_with_one_line(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ArgumentError, FileNotFoundError)) as info:
        call()
    text = str(info.value)
    assert "\n" not in text, text
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), "a chained traceback"
    import re

    assert re.search(message, text), text


def test_argument_errors_are_value_and_type_errors():
    with pytest.raises(ValueError):
        monitor(every_n=0)
    with pytest.raises(TypeError):
        monitor(every_n="2")


def test_a_correct_call_passes_the_checks(tmp_path):
    """The known-good counterpart of the table: the same calls with right values raise nothing."""
    monitor(tmp_path, extra=["etf", "nc4"], every_n=2, theory=False, exact=True)
    monitor(tmp_path, extra={"etf": True}, layers=("head.0", "head.3"), linear_depth=1)
    row, _ = metric_pass(MEASURED, BATCHES, K, extra=["etf"])
    assert 0 < row["nc1/layer_1"] < math.inf
    assert list(LoaderData(loader(), K).eval_batches("train"))


def test_layer_names_are_checked_at_setup_before_any_pass(tmp_path):
    mon = monitor(tmp_path / "run", layers=["head.0", "head.9"], linear_depth=1)
    with pytest.raises(
        ArgumentError, match=r"MetricMonitor\(layers=\['head.0', 'head.9'\]\).*\['head.0', 'head.2', 'head.3'\]"
    ):
        trainer(tmp_path, [mon]).fit(UserNet(), loader(shuffle=True))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_loader_of_dicts_is_named_at_its_first_batch(tmp_path):
    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": torch.zeros(D), "label": i % K}

    mon = monitor(tmp_path, data=DataLoader(Dicts(), batch_size=4), test_acc=False, test_data=None)
    with pytest.raises(
        ArgumentError, match=r"batch 0 is a dict with keys \['image', 'label'\], not an \(inputs, labels\) pair"
    ):
        trainer(tmp_path, [mon]).fit(UserNet(), loader(shuffle=True))


def test_no_data_and_no_datamodule_is_named_at_setup(tmp_path):
    mon = MetricMonitor(tmp_path, layers=LAYERS, linear_depth=2)
    with pytest.raises(ArgumentError, match=r"MetricMonitor\(data=None\): not allowed: the Trainer has no datamodule"):
        trainer(tmp_path, [mon]).fit(UserNet(), loader(shuffle=True))


# --- an empty folder, and every logger agreeing with metrics.jsonl ------------------------------------


def test_metric_monitor_creates_its_folder_in_an_empty_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pl.seed_everything(0)
    trainer(tmp_path, [monitor("outputs/my_run")]).fit(UserNet(), loader(shuffle=True))
    assert [r["epoch"] for r in rows_of(tmp_path / "outputs/my_run/metrics.jsonl")] == [0, 1, 2]


def test_without_out_dir_the_rows_go_to_the_trainers_default_root_dir(tmp_path):
    root = tmp_path / "root" / "deeper"
    t = trainer(root, [monitor()])
    t.fit(UserNet(), loader(shuffle=True))
    assert [r["epoch"] for r in rows_of(root / "metrics.jsonl")] == [0, 1, 2]


def _loggers(kind, root):
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    made = []
    if "csv" in kind:
        made.append(CSVLogger(str(root), name="csv"))
    if "wandb" in kind:
        made.append(WandbLogger(save_dir=str(root), offline=True))
    if "tensorboard" in kind:
        pytest.importorskip("tensorboard", reason="TensorBoard is not installed (an optional logger)")
        from pytorch_lightning.loggers import TensorBoardLogger

        made.append(TensorBoardLogger(str(root), name="tb"))
    return made or False


@pytest.mark.parametrize("kind", ["none", "csv", "wandb", "csv+wandb", "tensorboard"])
def test_every_logger_gets_the_rows_at_their_epoch_and_step(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    pl.seed_everything(0)
    epochs, per_epoch = 3, N // 16
    loggers = _loggers(kind, tmp_path)
    t = trainer(tmp_path, [monitor(tmp_path / "run")], max_epochs=epochs, logger=loggers)
    t.fit(UserNet(validate=True), loader(shuffle=True), loader(blobs(16, 2)))
    if "wandb" in kind:
        import wandb

        wandb.finish()  # the user's to call (or the end of the script): the offline file is complete
    rows = rows_of(tmp_path / "run" / "metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(e, e * per_epoch) for e in range(epochs + 1)]
    by_step = {r["step"]: r for r in rows}
    if "csv" in kind:
        (path,) = tmp_path.glob("csv/version_*/metrics.csv")
        table = list(csv.DictReader(open(path)))
        ours = [r for r in table if r.get("nc1/layer_1")]
        assert [(float(r["epoch"]), int(r["step"])) for r in ours] == [(r["epoch"], r["step"]) for r in rows]
        for r in ours:
            assert float(r["nc1/layer_1"]) == pytest.approx(by_step[int(r["step"])]["nc1/layer_1"], rel=1e-12)
        # Lightning's own rows: steps done, epochs done (step / steps per epoch), one convention
        for r in table:
            assert float(r["epoch"]) == pytest.approx(int(r["step"]) / per_epoch), r
        ends = [r for r in table if r.get("train_loss_epoch") or r.get("val_loss")]
        assert len(ends) == 2 * epochs
        assert {(int(float(r["epoch"])), int(r["step"])) for r in ends} <= {(r["epoch"], r["step"]) for r in rows}
    if "wandb" in kind:
        (path,) = tmp_path.glob("wandb/offline-run-*/*.wandb")
        records = wandb_records(path)
        history = [r["history"]["item"] for r in records if r.get("type") == "history"]
        ours = [h for h in history if "nc1/layer_1" in h]
        assert [(h["epoch"], h["trainer/global_step"]) for h in ours] == [(r["epoch"], r["step"]) for r in rows]
        for h in history:
            if "epoch" in h and "trainer/global_step" in h:
                assert h["epoch"] == pytest.approx(h["trainer/global_step"] / per_epoch), h
        summary = {}
        for r in records:
            if r.get("type") == "summary":
                summary.update(r["summary"].get("update", {}))
        assert summary["epoch"] == epochs and summary["trainer/global_step"] == epochs * per_epoch
    if "tensorboard" in kind:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (events,) = tmp_path.glob("tb/version_*")
        acc = EventAccumulator(str(events))
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("epoch") if e.step in by_step][-1] == (
            epochs * per_epoch,
            epochs,
        )
    for logger in loggers or []:
        assert "log_metrics" not in vars(logger)  # the wrapper is gone after fit


# --- the literature's test/nc4: the training set's class centres --------------------------------------


def test_test_nc4_classifies_by_the_training_class_means(tmp_path):
    torch.manual_seed(0)
    net = LayerwiseNet(nn.Identity(), D, K, nonlinear_depth=1, linear_depth=2, width=8)
    train, test = list(loader(blobs(64, 0))), list(loader(blobs(48, 3)))
    result = measure(net, train, K)
    means = result.centres.numpy()
    # float64 reference: Z_(L-1) of the test samples, nearest training centre, against the prediction
    with torch.no_grad():
        x = torch.cat([b[0] for b in test]).double()
        w = [layer.weight.double() for layer in net.layers]
        z = x @ w[0].T
        z = torch.relu(z) @ w[1].T
        out = (z @ w[2].T).argmax(1).numpy()
    nearest = np.argmin(((z.numpy()[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    expected = float((nearest == out).mean())
    own = metric_pass(net, test, K, extra=["nc4"])[0]["nc4"]
    with_train = metric_pass(net, test, K, extra=["nc4"], nc4_centres=result.centres)[0]["nc4"]
    assert with_train == pytest.approx(expected, abs=1e-12)
    test_means = torch.stack([z[torch.cat([b[1] for b in test]) == c].mean(0) for c in range(K)]).numpy()
    own_expected = float((np.argmin(((z.numpy()[:, None, :] - test_means[None]) ** 2).sum(-1), axis=1) == out).mean())
    assert own == pytest.approx(own_expected, abs=1e-12)
    assert with_train != own  # the two conventions differ on this data: the test can tell them apart

    # MetricMonitor's test/nc4 is the training-centre one
    class Wrapped(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = net

        def training_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    mon = MetricMonitor(tmp_path, data=train, test_data=test, num_classes=K, extra=["nc4", "test_set"], theory=False)
    trainer(tmp_path, [mon], max_epochs=1).fit(Wrapped(), loader())
    assert rows_of(tmp_path / "metrics.jsonl")[0]["test/nc4"] == pytest.approx(with_train, abs=1e-12)


# --- the default warm-up ----------------------------------------------------------------------------


def test_the_default_warm_up_is_a_tenth_of_a_short_run_and_a_long_explicit_one_is_refused():
    from conftest import compose_train

    from wdcollapse.config import check_config
    from wdcollapse.errors import ConfigError
    from wdcollapse.module import lr_factor
    from wdcollapse.module import warmup_epochs_of as warmup_epochs

    assert warmup_epochs("auto", 3, 469) == pytest.approx(0.3) and warmup_epochs("auto", 300, 469) == 10
    assert warmup_epochs("auto", 3, 10) == pytest.approx(1.5)  # 100 steps would be 10 epochs: half the run
    assert warmup_epochs("auto", 40, 8) == pytest.approx(10.0)  # 100 steps = 12.5 epochs, capped at 10
    assert warmup_epochs("auto", 20, 50) == pytest.approx(2.0)  # a tenth of the run (100 steps = 2 epochs)
    assert warmup_epochs(2, 3, 469) == 2.0
    # a warm-up shorter than one step is one step: the factor never exceeds 1
    assert [lr_factor(s, 1, 3, 0.3, None, 0.1) for s in range(3)] == [1.0, 1.0, 1.0]
    assert compose_train().optim.warmup_epochs == "auto"
    check_config(compose_train("logger=none", "trainer.max_epochs=3"))
    check_config(compose_train("logger=none", "trainer.max_epochs=4", "optim.warmup_epochs=2"))
    with pytest.raises(
        ConfigError, match=r"optim.warmup_epochs=10 is not allowed: at most half of trainer.max_epochs=3"
    ):
        check_config(compose_train("logger=none", "trainer.max_epochs=3", "optim.warmup_epochs=10"))


@pytest.mark.slow
def test_a_short_run_with_the_default_settings_learns(tmp_path):
    from conftest import read_metrics, run_train

    run_train(
        tmp_path, "trainer.max_epochs=3", "data.num_per_class=300", "logger=none", "callbacks.metrics.schedule=every"
    )
    rows = read_metrics(tmp_path)
    assert rows[-1]["lr"] == pytest.approx(0.01)  # out of the warm-up
    assert rows[-1]["train/acc"] > 0.8 and rows[0]["train/acc"] < 0.3


# --- the console commands and run directories -------------------------------------------------------


def _cli(args, cwd, env=None, timeout=300):
    import subprocess
    import sys

    full = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_dashboard_command_exits_1_when_it_could_not_save_and_says_when_it_replaces(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_MODE": "online", "NETRC": str(tmp_path / "none")}
    proc = _cli(["-m", "wdcollapse.dashboards", "--entity", "nobody", "--figures", "mlp_mnist"], tmp_path, env)
    assert proc.returncode == 1, proc.stderr
    assert "error: could not save the workspaces" in proc.stderr and (tmp_path / "dashboards.json").is_file()
    proc = _cli(["-m", "wdcollapse.dashboards", "--figures", "mlp_mnist", "--describe", "dashboards.json"], tmp_path)
    assert proc.returncode == 0 and "replacing the existing dashboards.json" in proc.stderr


# --- the public surface ----------------------------------------------------------------------------


def test_every_public_name_is_documented_lightning_style():
    import inspect

    import wdcollapse
    from wdcollapse.metric_pass import metric_pass as pass_fn
    from wdcollapse.restore import restore as restore_fn

    documented = [getattr(wdcollapse, n) for n in wdcollapse.__all__ if n != "__version__"]
    documented += [pass_fn, restore_fn]
    for obj in documented:
        if isinstance(obj, type) and (issubclass(obj, Exception) or getattr(obj, "_is_protocol", False)):
            continue  # the errors and the two interfaces (Protocols) document their members instead
        doc = inspect.getdoc(obj) or ""
        for section in ("Args:", "Raises:", "Example::"):
            assert section in doc, (obj.__name__, section)


@pytest.mark.slow
def test_metrics_and_the_metric_pass_import_without_lightning_hydra_pydantic_or_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys; from wdcollapse.metric_pass import metric_pass; import wdcollapse.metrics; "
        "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'hydra', 'pydantic', 'matplotlib', 'omegaconf') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # and the known-fail case: the callbacks do pull Lightning in
    code = code.replace("from wdcollapse.metric_pass import metric_pass", "import wdcollapse.callbacks")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pytorch_lightning" in out
