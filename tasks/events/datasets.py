"""From a dataset config (``conf/dataset/<Name>.yaml``) to train / val / test ``EventSeqs``.

``dataset.format`` says how to read it:
  sin            generated (``synthetic.generate_sin``), no file
  meta_tpp_npz   one Meta TPP file, split by sequence in file order (``dataset.split``)
  ifl_npz        ifl-tpp's raw file (the Wiki raw events), split like Meta TPP
  thp_pickle     a THP fold folder with train.pkl / dev.pkl / test.pkl (given splits)
  easytpp_json   a folder with train.json / dev.json / test.json (given splits)
Files come from the dataset registry (``aaren_bench.data``): its checksums are verified
before anything is read, and a missing file produces a message saying where to get it.

Meta TPP's own copy first (Sin, Wiki). A dataset whose catalog entry names a file of Meta
TPP's archive (``info["meta_tpp"]``: its path under the data root and its number of marks)
reads that file when it is there, and otherwise its own ``format`` (Sin generated, Wiki
converted from the raw events). ``dataset.source`` chooses: ``auto`` (that rule), ``meta_tpp``
(the archive's file or an error saying where to put it), ``own`` (never the archive's file).
Which one was read is returned as ``Loaded.source`` and written into the run's record
(``data_source``).

A run reads through :class:`EventFiles`: ``fetch`` (the datamodule's ``prepare_data``, once per
node) downloads and verifies the registered files the run will read; ``read`` (its ``setup``)
reads them without downloading or verifying them again; ``num_marks`` is the catalog's fact for
the file that will be read, known before any read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tasks.events import formats, synthetic
from tasks.events.data import EventDataError, EventSeqs, split_sequences

FORMATS = ("sin", "meta_tpp_npz", "ifl_npz", "thp_pickle", "easytpp_json")
SOURCES = ("auto", "meta_tpp", "own")


class Loaded(NamedTuple):
    splits: dict  # {"train", "val", "test"} -> EventSeqs
    source: dict  # what was read: kind (meta_tpp_file | generated | converted | file), paths, checksums


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def load_splits(ds_cfg, data_root=None) -> dict[str, EventSeqs]:
    """dataset config -> {"train", "val", "test"} (every split shares num_marks)."""
    return load(ds_cfg, data_root).splits


def _meta_tpp_copy(ds_cfg, data_root) -> tuple[Path | None, dict | None]:
    """(path, catalog entry) of the dataset's Meta TPP file under the data root, path None when absent."""
    from aaren_bench.data import default_data_root

    entry = _get(ds_cfg, "meta_tpp")
    if entry is None:
        return None, None
    root = Path(data_root).expanduser() if data_root else default_data_root()
    path = root / str(entry["path"])
    return (path if path.is_file() else None), {"path": str(path), "num_marks": entry.get("num_marks")}


@dataclass(frozen=True)
class EventFiles:
    """A dataset's reading settings (``settings``: the catalog's facts under conf/dataset/<Name>.yaml,
    a plain dict) and the data root."""

    settings: dict
    data_root: str | None = None

    def reads_meta_tpp_copy(self) -> bool:
        found, _ = _meta_tpp_copy(self.settings, self.data_root)
        return found is not None and _get(self.settings, "source", "auto") != "own"

    @property
    def num_marks(self) -> int:
        """The number of marks of what will be read (Meta TPP's copy may have its own), from the catalog."""
        _, entry = _meta_tpp_copy(self.settings, self.data_root)
        return int(entry["num_marks"] if self.reads_meta_tpp_copy() else _get(self.settings, "num_marks"))

    def fetch(self) -> None:
        """Download and verify the registered files that ``read`` will read (none when generated or
        when Meta TPP's copy is read)."""
        from aaren_bench.data import fetch

        if _get(self.settings, "format") != "sin" and not self.reads_meta_tpp_copy():
            fetch(_get(self.settings, "name"), data_root=self.data_root)

    def read(self) -> Loaded:
        return load(self.settings, self.data_root, download=False)


def load(ds_cfg, data_root=None, download: bool = True) -> Loaded:
    """dataset config -> Loaded(splits, source): the splits and a description of what was read.
    ``download=False``: the registered files must be there already (fetched in ``prepare_data``);
    they are neither downloaded nor verified again."""
    fmt = _get(ds_cfg, "format")
    name = _get(ds_cfg, "name")
    if fmt not in FORMATS:
        raise ValueError(f"dataset.format must be one of {FORMATS}, got {fmt!r} (dataset {name})")
    want = _get(ds_cfg, "source", "auto")
    if want not in SOURCES:
        raise ValueError(f"dataset.source must be one of {SOURCES}, got {want!r} (dataset {name})")
    checks = {"tie_eps": _get(ds_cfg, "tie_eps"), "drop_empty": bool(_get(ds_cfg, "drop_empty", False))}
    num_marks = _get(ds_cfg, "num_marks")
    split = list(_get(ds_cfg, "split", [0.6, 0.2]))

    found, entry = _meta_tpp_copy(ds_cfg, data_root)
    if want == "meta_tpp" and found is None:
        from aaren_bench.data import DatasetNotFound
        from tasks.events.catalog import META_TPP_DRIVE

        where = f"put it at {entry['path']}" if entry else "this dataset has no file in Meta TPP's archive"
        raise DatasetNotFound(f"dataset {name}: dataset.source=meta_tpp asks for Meta TPP's own file, which is not "
                              f"there; {where} (archive: {META_TPP_DRIVE}), or run with dataset.source=auto")
    if found is not None and want != "own":
        from aaren_bench.data import sha256sum

        try:  # numeric arrays need no pickle; this file is not pinned, so it is never unpickled
            seqs = formats.load_meta_tpp_npz(found, num_marks=entry["num_marks"], time_format="inter", **checks)
        except formats.PickleNotTrusted as e:
            raise EventDataError(f"{e}\nMeta TPP's {found} is read without unpickling; convert it to numeric "
                                 f"arrays, or use this suite's own copy with dataset.source=own") from None
        return Loaded(split_sequences(seqs, split), {
            "kind": "meta_tpp_file", "path": str(found), "sha256": sha256sum(found), "num_marks": seqs.num_marks,
            "sequences": len(seqs), "events": seqs.n_events})
    looked = {"meta_tpp_file_absent": entry["path"]} if entry and want == "auto" else {}

    if fmt == "sin":
        n_seqs, t_end, seed = int(_get(ds_cfg, "n_seqs", 1000)), float(_get(ds_cfg, "t_end", 100.0)), int(_get(ds_cfg, "seed", 0))
        seqs = synthetic.generate_sin(n_seqs, t_end, seed)
        return Loaded(split_sequences(seqs, split), {
            "kind": "generated", "generator": "tasks.events.synthetic.generate_sin (lambda(t) = 1 + sin t, thinning)",
            "n_seqs": n_seqs, "t_end": t_end, "seed": seed, "events": seqs.n_events, **looked})

    from aaren_bench.data import fetch, get, local_paths

    paths = fetch(name, data_root=data_root) if download else local_paths(name, data_root)
    pins = {f.path: f.sha256 for f in get(name).files}
    files = {rel: {"path": str(p), "sha256": pins.get(rel) or None} for rel, p in paths.items()}
    trust = bool(_get(ds_cfg, "trust_pickle", False))
    if fmt == "meta_tpp_npz":
        (path,) = paths.values()
        seqs = formats.load_meta_tpp_npz(path, num_marks=num_marks, time_format=_get(ds_cfg, "time_format", "inter"),
                                         trust_pickle=trust, **checks)
        return Loaded(split_sequences(seqs, split), {"kind": "file", "format": fmt, "files": files})
    if fmt == "ifl_npz":
        (path,) = paths.values()
        seqs = formats.load_ifl_npz(path, trust_pickle=trust, num_marks=num_marks,
                                    t_end=_get(ds_cfg, "window_end", "global_max"), **checks)
        return Loaded(split_sequences(seqs, split), {
            "kind": "converted", "format": fmt, "files": files, "num_marks": seqs.num_marks,
            "converter": "tasks.events.formats.load_ifl_npz (recipe: tasks/events/wiki.py)", **looked})
    by_split = {Path(p).stem: v for p, v in paths.items()}
    names = {"train": "train", "val": "dev", "test": "test"}
    out = {}
    for ours, theirs in names.items():
        if theirs not in by_split:
            raise ValueError(f"dataset {_get(ds_cfg, 'name')}: no {theirs} file among {sorted(paths)}")
        if fmt == "thp_pickle":
            out[ours] = formats.load_thp_pickle(by_split[theirs], split=theirs, trust_pickle=trust, num_marks=num_marks, **checks)
        else:
            out[ours] = formats.load_easytpp_json(by_split[theirs], num_marks=num_marks, **checks)
    m = max(s.num_marks for s in out.values())
    for s in out.values():
        s.num_marks = m
    return Loaded(out, {"kind": "file", "format": fmt, "files": files})
