"""Result records: one JSON file per run, written atomically, keyed by its cell.

A *cell* is ``<task>/<dataset>/<model>/seed<seed>`` (forecasting adds the horizon to the
dataset part, e.g. ``ETTh1-H192``). The record of a finished run lives at
``<runs>/<cell>/result.json``; a run whose record exists is done, anything else is not.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1


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


def iter_records(runs_root: str | Path):
    """Every valid record below ``runs_root`` (partial or foreign files are skipped)."""
    for p in sorted(Path(runs_root).rglob(RESULT_FILE)):
        rec = load_record(p)
        if rec is not None:
            rec.setdefault("path", str(p))
            yield rec
