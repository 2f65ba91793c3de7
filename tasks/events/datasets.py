"""From a dataset config (``conf/dataset/<Name>.yaml``) to train / val / test ``EventSeqs``.

``dataset.format`` says how to read it:
  sin            generated (``synthetic.generate_sin``), no file
  meta_tpp_npz   one Meta TPP file, split by sequence in file order (``dataset.split``)
  ifl_npz        ifl-tpp's raw file (the Wiki raw events), split like Meta TPP
  thp_pickle     a THP fold folder with train.pkl / dev.pkl / test.pkl (given splits)
  easytpp_json   a folder with train.json / dev.json / test.json (given splits)
Files come from the dataset registry (``aaren_bench.data``): its checksums are verified
before anything is read, and a missing file produces a message saying where to get it.
"""
from __future__ import annotations

from pathlib import Path

from tasks.events import formats, synthetic
from tasks.events.data import EventSeqs, split_sequences

FORMATS = ("sin", "meta_tpp_npz", "ifl_npz", "thp_pickle", "easytpp_json")


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def load_splits(ds_cfg, data_root=None) -> dict[str, EventSeqs]:
    """dataset config -> {"train", "val", "test"} (every split shares num_marks)."""
    fmt = _get(ds_cfg, "format")
    if fmt not in FORMATS:
        raise ValueError(f"dataset.format must be one of {FORMATS}, got {fmt!r} (dataset {_get(ds_cfg, 'name')})")
    checks = {"tie_eps": _get(ds_cfg, "tie_eps"), "drop_empty": bool(_get(ds_cfg, "drop_empty", False))}
    num_marks = _get(ds_cfg, "num_marks")
    split = list(_get(ds_cfg, "split", [0.6, 0.2]))
    if fmt == "sin":
        seqs = synthetic.generate_sin(
            int(_get(ds_cfg, "n_seqs", 1000)), float(_get(ds_cfg, "t_end", 100.0)), int(_get(ds_cfg, "seed", 0))
        )
        return split_sequences(seqs, split)

    from aaren_bench.data import fetch

    paths = fetch(_get(ds_cfg, "name"), data_root=data_root)
    trust = bool(_get(ds_cfg, "trust_pickle", False))
    if fmt == "meta_tpp_npz":
        (path,) = paths.values()
        seqs = formats.load_meta_tpp_npz(path, num_marks=num_marks, time_format=_get(ds_cfg, "time_format", "inter"),
                                         trust_pickle=trust, **checks)
        return split_sequences(seqs, split)
    if fmt == "ifl_npz":
        (path,) = paths.values()
        seqs = formats.load_ifl_npz(path, trust_pickle=trust, num_marks=num_marks,
                                    t_end=_get(ds_cfg, "window_end", "global_max"), **checks)
        return split_sequences(seqs, split)
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
    return out
