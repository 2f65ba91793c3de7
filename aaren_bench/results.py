"""Result records: one JSON file per run, written atomically, keyed by its cell.

A *cell* is ``<task>/<dataset><variant>/<protocol>[+<tag>]/<model>/seed<seed>``
(``aaren_bench.study.Cell`` builds and parses it). The record of a finished run lives at
``<runs>/<cell>/result.json``; a run whose record exists is done. A run that ended without a
usable result (non-finite loss or metrics) leaves ``failed.json`` instead: not done, rerun.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
SCHEMA_VERSION = 2  # 2: protocol, tag, horizon, overrides, primary_metric (1: none of these; read as protocol suite)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over ``path``.

    A reader sees either the old file, the new one, or none: never half a record.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def result_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULT_FILE


def is_done(run_dir: str | Path) -> bool:
    """A cell is done when its record exists and parses with the fields a record must have."""
    return load_record(result_path(run_dir)) is not None


def load_record(path: str | Path) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    needed = {"task", "dataset", "model", "seed", "metrics"}
    return rec if isinstance(rec, dict) and needed <= rec.keys() else None


def is_failed(run_dir: str | Path) -> bool:
    return (Path(run_dir) / FAILED_FILE).exists() and not is_done(run_dir)


def load_failure(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / FAILED_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def iter_records(runs_root: str | Path):
    """Every valid record below ``runs_root`` (partial or foreign files are skipped), with its
    ``cell`` read back by :class:`aaren_bench.study.Cell` (old records included) and ``path``."""
    from aaren_bench.study import Cell

    for p in sorted(Path(runs_root).rglob(RESULT_FILE)):
        rec = load_record(p)
        if rec is None:
            continue
        rec.setdefault("path", str(p))
        rec["_cell"] = Cell.from_record(rec)
        yield rec
