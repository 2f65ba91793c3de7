"""Result records: one JSON file per run, written atomically, keyed by its cell.

A *cell* is ``<task>/<dataset><variant>/<protocol>[+<tag>]/<model>/seed<seed>``
(``aaren_bench.study.Cell`` builds and parses it). The record of a finished run lives at
``<runs>/<cell>/result.json``; a run whose record exists is done. A run that ended without a
usable result (non-finite loss or metrics) leaves ``failed.json`` instead: not done, rerun.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
log = logging.getLogger("aaren_bench")
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


NEEDED = ("task", "dataset", "model", "seed", "metrics")


def read_record(path: str | Path) -> tuple[dict | None, str | None]:
    """(record, None); (None, None) when there is no file; (None, why) when the file cannot be
    used (not UTF-8, not JSON, not a record, unreadable): such a cell is not done."""
    try:
        rec = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        return None, f"cannot be read ({type(e).__name__}: {e})"
    if not isinstance(rec, dict):
        return None, f"is not a record (a JSON {type(rec).__name__})"
    missing = [k for k in NEEDED if k not in rec]
    if missing:
        return None, f"is not a complete record (no {', '.join(missing)})"
    return rec, None


def load_record(path: str | Path) -> dict | None:
    return read_record(path)[0]


def is_failed(run_dir: str | Path) -> bool:
    return load_failure(run_dir) is not None and not is_done(run_dir)


def load_failure(run_dir: str | Path) -> dict | None:
    """``failed.json`` as a dict with a non-empty ``reason`` (filled in when the file lacks one);
    None when there is none. An unreadable file still marks the cell failed, with that as reason."""
    path = Path(run_dir) / FAILED_FILE
    try:
        rec = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {"reason": f"{path} cannot be read ({type(e).__name__}); rerun the cell"}
    rec = rec if isinstance(rec, dict) else {}
    if not str(rec.get("reason") or "").strip():
        rec["reason"] = f"{path} gives no reason; see train.log in the cell folder"
    return rec


def scan_records(runs_root: str | Path) -> tuple[list[dict], list[str]]:
    """One record per cell key below ``runs_root``, and the problems found: unreadable records
    (not counted: the cell is not done), copies of a record (counted once) and conflicting
    duplicates (the record in the cell's own folder counts, else the first by path). Folders
    moved aside by ``restart=true`` (``<cell>.old-<time>``) are not read."""
    from aaren_bench.cellfiles import is_aside
    from aaren_bench.study import Cell

    root, by_key, problems = Path(runs_root), {}, []
    for p in sorted(root.rglob(RESULT_FILE)):
        if is_aside(p.relative_to(root)):
            continue
        rec, why = read_record(p)
        try:
            cell = Cell.from_record(rec) if rec is not None else None
        except (TypeError, ValueError) as e:
            cell, why = None, f"names no valid cell ({e})"
        if cell is None:
            if why:
                problems.append(f"{p} {why}: not counted, the cell is not done (rerun it, or repair or delete the file)")
            continue
        rec.setdefault("path", str(p))
        rec["_cell"] = cell
        by_key.setdefault(cell.key, []).append(rec)
    return [_one_of(key, recs, root, problems) for key, recs in by_key.items()], problems


def _one_of(key: str, recs: list[dict], root: Path, problems: list[str]) -> dict:
    home = [r for r in recs if Path(r["path"]).parent.relative_to(root).as_posix() == key]
    pick = (home or recs)[0]
    for r in recs:
        if r is pick:
            continue
        if r.get("metrics") == pick.get("metrics"):
            problems.append(f"{r['path']} is a copy of the record of cell {key} ({pick['path']}): counted once")
        else:
            problems.append(f"{r['path']} and {pick['path']} are two different records of cell {key}: counted "
                            f"{pick['path']}; delete or move the other one out of the runs root")
    return pick


def iter_records(runs_root: str | Path, report: bool = True):
    """Every valid record below ``runs_root``, one per cell key (:func:`scan_records`), with its
    ``cell`` read back by :class:`aaren_bench.study.Cell` (old records included) and ``path``;
    the problems found are logged as warnings."""
    records, problems = scan_records(runs_root)
    if report:
        for msg in problems:
            log.warning("warning: %s", msg)
    yield from records
