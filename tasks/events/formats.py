"""Readers (and one writer) for the event-data formats users have.

- Meta TPP ``.npz``: padded 2-D ``times``, optional ``marks`` (1-indexed, 0 = padding) and
  ``masks``. Read with ``np.load(allow_pickle=False)``: numeric arrays need no pickle.
  Meta TPP's model fits its log-normal mixture directly to the ``times`` entries and uses the
  last valid entry of each row only for the survival term, so the default reading
  (``time_format="inter"``) is: entries are inter-event times, the first one from the window
  start, and the last valid one is the gap from the last event to the window end (not an
  event). ``time_format="absolute"`` reads rows of absolute event times instead (window end =
  the last event). This reading comes from Meta TPP's code; the archive itself could not be
  inspected here.
- THP / Neural-Hawkes pickles (``train.pkl``, ``dev.pkl``, ``test.pkl``): a dict with
  ``dim_process`` and one of ``train``/``dev``/``test``, each a list of sequences of event
  dicts (``time_since_start``, ``time_since_last_event``, ``type_event`` 0-based). Unpickling
  runs code from the file, so it requires ``trust_pickle=True``.
- EasyTPP JSON (Hugging Face ``easytpp/<name>``): a JSON array (or JSON Lines) of records with
  ``time_since_start``, ``time_since_last_event``, ``type_event`` (and ``dim_process``).
- ifl-tpp raw ``.npz`` (``arrival_times``, ``marks`` as object arrays of per-sequence lists,
  e.g. the raw Wikipedia file): object arrays need pickle, so ``trust_pickle=True`` is needed.

THP and EasyTPP files carry no window end: the window is [0, last event], so the survival
term of the last interval is log S(0) = 0 for them.

A file that is not of its format at all (binary noise, an HTML page, a truncated archive)
raises :class:`EventDataError` naming the file and saying how to get a good copy.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from aaren_bench.data.checks import refetch_hint
from tasks.events.data import EventDataError, EventSeqs

log = logging.getLogger(__name__)

__all__ = [
    "PickleNotTrusted",
    "load_easytpp_json",
    "load_ifl_npz",
    "load_meta_tpp_npz",
    "load_thp_pickle",
    "save_meta_tpp_npz",
]


class PickleNotTrusted(EventDataError):
    """A file needs unpickling and the caller did not say it trusts it."""


def _load_npz(path, trust_pickle: bool, what: str) -> dict:
    """Every array of an ``.npz``; object arrays (pickles) only when the user trusts the file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(b"PK"):  # np.load would take anything else for a pickle
        kind = "a single .npy array" if head.startswith(b"\x93NUMPY") else f"not a zip archive (it starts with {head!r})"
        raise _unreadable(path, f"an .npz file is a zip archive of arrays, but this one is {kind}")
    try:
        with np.load(path, allow_pickle=trust_pickle) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _pickle_refusal(path, what) from e
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # truncated or damaged archive
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e


def _unreadable(path, why: str) -> EventDataError:
    return EventDataError(f"{path} cannot be read ({why}); {refetch_hint(path, 'events')}")


def _pickle_refusal(path, what: str) -> PickleNotTrusted:
    return PickleNotTrusted(
        f"{path} {what}, which can only be read by unpickling, and unpickling a file can run arbitrary code. "
        "Read it only if you trust its origin: pass trust_pickle=True (on the command line: dataset.trust_pickle=true). "
        "For a registered dataset the file's sha256 is checked against the pinned value first."
    )


def load_meta_tpp_npz(
    path,
    num_marks: int | None = None,
    time_format: str = "inter",
    trust_pickle: bool = False,
    **checks,
) -> EventSeqs:
    """Read a Meta TPP ``.npz`` (see the module docstring). Marks come back 0-based."""
    if time_format not in ("inter", "absolute"):
        raise ValueError(f"time_format must be 'inter' or 'absolute', got {time_format!r}")
    d = _load_npz(path, trust_pickle, "stores object arrays")
    if "times" not in d:
        raise EventDataError(f"{path}: no 'times' array (found {sorted(d)}); a Meta TPP file has times, marks, masks")
    times = np.asarray(d["times"], dtype=np.float64)
    if times.ndim == 3 and times.shape[-1] == 1:
        times = times[..., 0]
    if times.ndim != 2:
        raise EventDataError(f"{path}: 'times' must be 2-D (sequences, padded length), got shape {times.shape}")
    masks = np.ones_like(times, bool) if "masks" not in d else np.asarray(d["masks"]).reshape(times.shape[0], -1) != 0
    if masks.shape != times.shape:
        raise EventDataError(f"{path}: 'masks' has shape {masks.shape} but 'times' has {times.shape}")
    marked = "marks" in d
    marks = np.asarray(d["marks"]).reshape(times.shape[0], -1) if marked else np.ones(times.shape, np.int64)
    if marks.shape != times.shape:
        raise EventDataError(f"{path}: 'marks' has shape {marks.shape} but 'times' has {times.shape}")

    seq_t, seq_m, t_end, end_marks = [], [], [], []
    for s in range(times.shape[0]):
        m = masks[s]
        n = int(m.sum())
        if n and not m[:n].all():
            raise EventDataError(
                f"{path}, sequence {s}: the mask has holes (valid entries after padding); "
                "Meta TPP masks must be a run of 1s followed by 0s"
            )
        n_ev = n - 1 if time_format == "inter" else n  # the window-end entry carries no mark
        if marked and n_ev > 0 and np.any(marks[s, :n_ev] == 0):
            raise EventDataError(
                f"{path}, sequence {s}: mark 0 (Meta TPP's padding value) at a position the mask marks valid; "
                "the masks and marks disagree"
            )
        tv, kv = times[s, :n], marks[s, :n].astype(np.int64) - 1
        if not np.all(np.isfinite(tv)):
            i = int(np.argmax(~np.isfinite(tv)))
            raise EventDataError(
                f"{path}, sequence {s}: entry {i} of 'times' is {float(tv[i])!r}; times must be finite numbers. "
                "Fix or remove that sequence."
            )
        if time_format == "inter":
            if np.any(tv < 0):
                i = int(np.argmax(tv < 0))
                raise EventDataError(f"{path}, sequence {s}: negative inter-event time {tv[i]!r} at entry {i}")
            if n == 0:
                seq_t.append(np.zeros(0)), seq_m.append(np.zeros(0, np.int64)), t_end.append(0.0), end_marks.append(-1)
                continue
            with np.errstate(over="ignore"):
                abs_t = np.cumsum(tv)
            if not np.isfinite(abs_t[-1]):
                i = int(np.argmax(~np.isfinite(abs_t)))
                raise EventDataError(
                    f"{path}, sequence {s}: the inter-event times sum past float64's range at entry {i} "
                    f"(entries up to {tv.max():.3g}); rescale the times."
                )
            seq_t.append(abs_t[:-1])  # the last entry is the window end, not an event
            seq_m.append(kv[:-1])
            t_end.append(abs_t[-1])
            end_marks.append(kv[-1])  # kept for Meta TPP's accuracy formula only (-1: its padding 0)
        else:
            seq_t.append(tv)
            seq_m.append(kv)
            t_end.append(tv[-1] if n else 0.0)
    ends = np.asarray(end_marks, np.int64) if time_format == "inter" else None
    return EventSeqs.build(seq_t, seq_m, t_start=0.0, t_end=np.asarray(t_end), num_marks=num_marks, source=str(path),
                           end_marks=ends, **checks)


def save_meta_tpp_npz(seqs: EventSeqs, path) -> Path:
    """Write sequences in Meta TPP's layout (inter-event times + window-end gap, 1-indexed marks), atomically.

    The first entry of each row is t_1 - t_start; ``load_meta_tpp_npz`` reads it back with t_start = 0.
    """
    L = max(len(t) for t in seqs.times) + 1
    S = len(seqs)
    times, marks, masks = np.zeros((S, L)), np.zeros((S, L), np.int64), np.zeros((S, L), np.int64)
    for s, (t, k) in enumerate(zip(seqs.times, seqs.marks)):
        n = len(t)
        times[s, :n] = np.diff(t, prepend=seqs.t_start[s])
        times[s, n] = seqs.t_end[s] - t[-1]
        marks[s, :n] = k + 1
        # the window-end entry carries no event: its own mark when the data came from such a file, else 1
        marks[s, n] = 1 if seqs.end_marks is None else seqs.end_marks[s] + 1
        masks[s, : n + 1] = 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, times=times, marks=marks, masks=masks)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _records_to_seqs(records, source: str, num_marks: int | None, **checks) -> EventSeqs:
    """Lists of per-sequence (time_since_start, type_event) -> EventSeqs with window [0, last event]."""
    times, marks = [], []
    for seq in records:
        times.append(np.asarray(seq["time_since_start"], dtype=np.float64))
        marks.append(np.asarray(seq["type_event"]))
        gaps = np.asarray(seq.get("time_since_last_event", []), dtype=np.float64)
        if gaps.size and not np.all(np.isfinite(gaps)):
            i = int(np.argmax(~np.isfinite(gaps)))
            raise EventDataError(
                f"{source}, sequence {len(times) - 1}: time_since_last_event of event {i} is {float(gaps[i])!r}; "
                "it must be a finite number"
            )
        if gaps.size and np.any(gaps < 0):
            raise EventDataError(f"{source}, sequence {len(times) - 1}: negative time_since_last_event {gaps.min()!r}")
    return EventSeqs.build(times, marks, t_start=0.0, t_end=None, num_marks=num_marks, source=source, **checks)


def load_thp_pickle(path, split: str | None = None, trust_pickle: bool = False, num_marks: int | None = None, **checks) -> EventSeqs:
    """Read one THP / Neural-Hawkes pickle (its split key is found if not given)."""
    if not trust_pickle:
        raise _pickle_refusal(path, "is a Python pickle")
    log.warning("unpickling %s (trusted by trust_pickle=True)", path)
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling garbage raises many types (UnpicklingError, EOFError, KeyError, ...)
        raise _unreadable(path, f"not a readable Python pickle: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict):
        raise EventDataError(f"{path}: expected a dict with dim_process and train/dev/test, got {type(d).__name__}")
    keys = [k for k in ("train", "dev", "test") if k in d]
    key = split or (keys[0] if len(keys) == 1 else None)
    if key not in d:
        raise EventDataError(f"{path}: no split {split!r}; it holds {keys}; pass split=<one of them>")
    seqs = [[{"time_since_start": e["time_since_start"], "type_event": e["type_event"],
              "time_since_last_event": e.get("time_since_last_event", 0.0)} for e in seq] for seq in d[key]]
    records = [
        {k: [e[k] for e in seq] for k in ("time_since_start", "type_event", "time_since_last_event")} for seq in seqs
    ]
    dim = num_marks if num_marks is not None else d.get("dim_process")
    return _records_to_seqs(records, str(path), int(dim) if dim is not None else None, **checks)


def load_easytpp_json(path, num_marks: int | None = None, **checks) -> EventSeqs:
    """Read an EasyTPP JSON file (a JSON array of records, or JSON Lines)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise _unreadable(path, f"not UTF-8 text, perhaps a binary file: {e}") from e
    except json.JSONDecodeError as e:
        raise _unreadable(path, f"not JSON or JSON Lines: {e}") from e
    if not records:
        raise EventDataError(f"{path}: no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise EventDataError(f"{path}, record {i}: a {type(r).__name__}, not an object with EasyTPP's fields")
        missing = {"time_since_start", "type_event"} - set(r)
        if missing:
            raise EventDataError(f"{path}, record {i}: missing fields {sorted(missing)} (EasyTPP records need them)")
    dim = num_marks if num_marks is not None else records[0].get("dim_process")
    return _records_to_seqs(records, str(path), int(dim) if dim is not None else None, **checks)


def load_ifl_npz(path, trust_pickle: bool = False, num_marks: int | None = None, t_end: str | float = "global_max", **checks) -> EventSeqs:
    """Read ifl-tpp's raw ``.npz`` (``arrival_times``, optional ``marks``, object arrays of lists).

    t_end: "global_max" (default): every sequence is observed until the last event of the
    whole file (the end of data collection); "last": each sequence until its own last event;
    or a number. The window starts at 0 for every sequence.
    """
    d = _load_npz(path, trust_pickle, "stores its sequences as object arrays")
    if trust_pickle:
        log.warning("unpickled object arrays of %s (trusted by trust_pickle=True)", path)
    if "arrival_times" not in d:
        raise EventDataError(f"{path}: no 'arrival_times' array (found {sorted(d)})")
    times = [np.asarray(t, dtype=np.float64) for t in d["arrival_times"]]
    marks = [np.asarray(m) for m in d["marks"]] if "marks" in d else None
    if t_end == "global_max":  # over finite times: a NaN/inf time is reported for its own sequence
        end = max((t[np.isfinite(t)].max() for t in times if np.isfinite(t).any()), default=0.0)
    elif t_end == "last":
        end = None
    else:
        end = float(t_end)
    return EventSeqs.build(times, marks, t_start=0.0, t_end=end, num_marks=num_marks, source=str(path), **checks)
