"""Writes that survive a kill: whole-line appends, temp-file-then-rename replacements."""

import json
from unittest import mock

import pytest

from wdcollapse import io


def test_a_truncated_last_line_is_ignored_and_trimmed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in range(3):
        io.append_jsonl(path, {"epoch": epoch, "x": epoch / 3})
    with open(path, "a") as f:
        f.write('{"epoch": 3, "x": 0.9')  # a kill in the middle of a line
    assert [r["epoch"] for r in io.read_jsonl(path)] == [0, 1, 2]
    assert [r["epoch"] for r in io.keep_jsonl_rows(path, lambda r: r["epoch"] <= 1)] == [0, 1]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")


def test_non_finite_values_become_null_at_any_depth():
    text = io.to_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}


def test_a_failed_atomic_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    io.atomic_write_json(path, {"status": "running"})
    with mock.patch("os.replace", side_effect=OSError("disk full")):
        with pytest.raises(OSError):
            io.atomic_write_json(path, {"status": "finished"})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_atomic_writes_are_readable_by_others(tmp_path):
    io.atomic_write_text(tmp_path / "summary.json", "{}")
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_an_error_while_writing_leaves_the_previous_file_and_no_temp_file(tmp_path):
    """Every writer of result files (figures, caches, MNIST files) goes through atomic_write."""
    path = tmp_path / "figure.png"
    with io.atomic_write(path, "wb") as f:
        f.write(b"old")
    with pytest.raises(RuntimeError, match="half-written"):
        with io.atomic_write(path, "wb") as f:
            f.write(b"new, half")
            raise RuntimeError("half-written")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_figures_and_the_image_cache_are_written_atomically(tmp_path):
    import matplotlib.pyplot as plt

    from wdcollapse.data import sources
    from wdcollapse.plots.common import save_figure

    fig = plt.figure()
    with mock.patch("os.replace", side_effect=OSError("disk full")), pytest.raises(OSError):
        save_figure(fig, tmp_path / "curves")
    assert list(tmp_path.iterdir()) == []
    save_figure(plt.figure(), tmp_path / "curves")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    with mock.patch("os.replace", side_effect=OSError("read-only")):
        sources._write_cache(tmp_path / ".cache-train.pt", {"x": 1})  # a warning, no cache, no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.pdf", "curves.png"]
