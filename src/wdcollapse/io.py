"""Files that survive a kill at any moment: whole-line appends and temp-file-then-rename writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .errors import ConfigError


def finite_or_none(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs) -> str:
    """JSON with NaN and infinities written as null, so any strict parser reads it."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w"):
    """A file object for `path` whose content appears all at once: written to a temporary file in
    the same folder, flushed to disk and renamed over `path` on success, removed on any error.
    Every result file of the package is written through this (checkpoints excepted: Lightning
    writes those to a path, AtomicCheckpoint renames them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the rest of a shared cluster
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


def append_jsonl(path: str | Path, *rows: dict) -> None:
    """Append one line per row with a single write, so a kill leaves whole lines and at most a
    truncated tail that `read_jsonl` ignores."""
    data = "".join(to_json(row) + "\n" for row in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """The complete lines of a JSON-lines file (a partial last line is skipped)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        rows.append(json.loads(line))
    return rows


def keep_jsonl_rows(path: str | Path, keep) -> list[dict]:
    """Rewrite `path` atomically with only the complete rows for which `keep(row)` is true."""
    rows = [row for row in read_jsonl(path) if keep(row)]
    if Path(path).exists():
        atomic_write_text(path, "".join(to_json(r) + "\n" for r in rows))
    return rows


LOCK_FILE = ".wdcollapse.lock"


def hold_directory(directory: Path, what: str, hint: str):
    """Take `directory`'s lock (filelock: an OS lock on `directory/.wdcollapse.lock`, released when
    this process ends, however it ends, so a killed run's directory can be resumed) and return it;
    the caller keeps the returned object alive as long as it writes there. A directory another live
    process holds is refused with one line: `what` names the directory's kind, `hint` what to do.
    A second lock on the same directory is refused within one process too: release it first."""
    lock = FileLock(str(Path(directory) / LOCK_FILE), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{what} {directory} is in use by another live process; {hint}") from None
    return lock
