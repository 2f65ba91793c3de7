"""Loaders and the bad-input contract: clear errors, explicit pickle trust, documented handling."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from tasks.events.data import EventDataError, EventSeqs, collate, split_sequences
from tasks.events.formats import (
    PickleNotTrusted,
    load_easytpp_json,
    load_ifl_npz,
    load_meta_tpp_npz,
    load_thp_pickle,
    save_meta_tpp_npz,
)


def _meta_npz(path, times, marks=None, masks=None):
    arrays = {"times": np.asarray(times, float)}
    if marks is not None:
        arrays["marks"] = np.asarray(marks)
    if masks is not None:
        arrays["masks"] = np.asarray(masks)
    np.savez(path, **arrays)
    return path


# ---- EventSeqs checks -------------------------------------------------------------------

def test_non_increasing_times_are_an_error():
    with pytest.raises(EventDataError, match=r"sequence 1.*must be increasing.*event 2"):
        EventSeqs.build([[1.0, 2.0], [0.5, 3.0, 2.0]])


def test_tied_times_error_unless_tie_eps():
    with pytest.raises(EventDataError, match="share the time.*tie_eps"):
        EventSeqs.build([[1.0, 2.0, 2.0, 3.0]])
    s = EventSeqs.build([[1.0, 2.0, 2.0, 3.0]], tie_eps=1e-3)
    np.testing.assert_allclose(s.times[0], [1.0, 2.0, 2.001, 3.0])


def test_empty_sequences_error_unless_dropped():
    with pytest.raises(EventDataError, match="sequence 1 has no events.*drop_empty"):
        EventSeqs.build([[1.0], [], [2.0, 3.0]])
    s = EventSeqs.build([[1.0], [], [2.0, 3.0]], drop_empty=True)
    assert len(s) == 2 and s.n_events == 3
    with pytest.raises(EventDataError, match="every sequence is empty"):
        EventSeqs.build([[], []], drop_empty=True)


@pytest.mark.parametrize("bad", [-1, 3])
def test_marks_outside_the_declared_range_are_an_error(bad):
    with pytest.raises(EventDataError, match=rf"mark {bad} is outside the declared range \[0, 3\)"):
        EventSeqs.build([[1.0, 2.0]], [[0, bad]], num_marks=3)


def test_events_outside_the_window_are_an_error():
    with pytest.raises(EventDataError, match="after the window end"):
        EventSeqs.build([[1.0, 5.0]], t_end=4.0)
    with pytest.raises(EventDataError, match="before the window start"):
        EventSeqs.build([[1.0, 5.0]], t_start=2.0)


def test_nan_times_and_length_mismatch_are_errors():
    with pytest.raises(EventDataError, match="NaN"):
        EventSeqs.build([[1.0, float("nan")]])
    with pytest.raises(EventDataError, match="2 times but 3 marks"):
        EventSeqs.build([[1.0, 2.0]], [[0, 0, 0]])


def test_split_fractions_and_counts():
    s = EventSeqs.build([[float(i + 1)] for i in range(10)])
    parts = split_sequences(s, [0.6, 0.2])
    assert [len(parts[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert parts["val"].times[0][0] == 7.0  # file order
    parts = split_sequences(s, [5, 3])
    assert [len(parts[k]) for k in ("train", "val", "test")] == [5, 3, 2]
    with pytest.raises(EventDataError, match="empty"):
        split_sequences(s, [8, 2])


def test_collate_gaps_and_window():
    s = EventSeqs.build([[1.0, 1.5, 4.0], [2.0]], t_start=0.5, t_end=10.0)
    b = collate(s, [0, 1])
    np.testing.assert_allclose(b["dts"][0].numpy(), [0.5, 0.5, 2.5])
    np.testing.assert_allclose(b["times"][0].numpy(), [0.5, 1.0, 3.5])
    assert b["mask"].tolist() == [[True, True, True], [True, False, False]]
    np.testing.assert_allclose(b["last_gap"].numpy(), [6.0, 8.0])


# ---- Meta TPP npz ----------------------------------------------------------------------

def test_meta_tpp_npz_inter_times_with_window_end(tmp_path):
    p = _meta_npz(tmp_path / "a.npz", [[1.0, 0.5, 2.0, 0.0], [0.3, 0.2, 0.0, 0.0]],
                  marks=[[2, 1, 3, 0], [1, 1, 0, 0]], masks=[[1, 1, 1, 0], [1, 1, 0, 0]])
    s = load_meta_tpp_npz(p, num_marks=3)
    np.testing.assert_allclose(s.times[0], [1.0, 1.5])  # the last valid entry is the window end
    assert s.marks[0].tolist() == [1, 0]  # 1-indexed -> 0-based
    np.testing.assert_allclose(s.t_end, [3.5, 0.5])
    assert s.times[1].tolist() == [0.3]


def test_meta_tpp_npz_mask_mismatches_are_errors(tmp_path):
    t = [[1.0, 0.5, 2.0]]
    with pytest.raises(EventDataError, match="'masks' has shape"):
        load_meta_tpp_npz(_meta_npz(tmp_path / "a.npz", t, masks=[[1, 1]]))
    with pytest.raises(EventDataError, match="holes"):
        load_meta_tpp_npz(_meta_npz(tmp_path / "b.npz", t, masks=[[1, 0, 1]]))
    with pytest.raises(EventDataError, match="mark 0.*padding value.*disagree"):
        load_meta_tpp_npz(_meta_npz(tmp_path / "c.npz", t, marks=[[1, 0, 1]], masks=[[1, 1, 1]]))
    with pytest.raises(EventDataError, match="'marks' has shape"):
        load_meta_tpp_npz(_meta_npz(tmp_path / "d.npz", t, marks=[[1, 1]]))


def test_meta_tpp_npz_negative_inter_time_is_an_error(tmp_path):
    with pytest.raises(EventDataError, match="negative inter-event time"):
        load_meta_tpp_npz(_meta_npz(tmp_path / "a.npz", [[1.0, -0.5, 2.0]]))


def test_meta_tpp_npz_absolute_format_checks_order(tmp_path):
    p = _meta_npz(tmp_path / "a.npz", [[1.0, 3.0, 2.0]])
    with pytest.raises(EventDataError, match="must be increasing"):
        load_meta_tpp_npz(p, time_format="absolute")


def test_object_arrays_need_explicit_trust(tmp_path):
    p = tmp_path / "obj.npz"
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = [1.0, 2.0], [0.5]
    np.savez(p, times=ragged)
    with pytest.raises(PickleNotTrusted, match="trust_pickle=True"):
        load_meta_tpp_npz(p)


def test_save_and_load_round_trip_needs_no_pickle(tmp_path):
    s = EventSeqs.build([[1.0, 1.5, 4.0], [2.0, 2.25]], [[0, 2, 1], [1, 1]], t_end=[10.0, 3.0], num_marks=3)
    p = save_meta_tpp_npz(s, tmp_path / "out" / "x.npz")
    back = load_meta_tpp_npz(p, num_marks=3)
    for a, b in zip(s.times, back.times):
        np.testing.assert_allclose(a, b)
    assert [m.tolist() for m in back.marks] == [m.tolist() for m in s.marks]
    np.testing.assert_allclose(back.t_end, s.t_end)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


# ---- ifl-tpp raw npz -------------------------------------------------------------------

def test_ifl_npz_refuses_pickle_then_reads_with_trust(tmp_path):
    p = tmp_path / "raw.npz"
    at = np.empty(2, dtype=object)
    mk = np.empty(2, dtype=object)
    at[0], at[1] = [0.0, 3.0, 7.0], [2.0, 9.0]
    mk[0], mk[1] = [0, 4, 4], [1, 2]
    np.savez(p, arrival_times=at, marks=mk)
    with pytest.raises(PickleNotTrusted, match="object arrays"):
        load_ifl_npz(p)
    s = load_ifl_npz(p, trust_pickle=True, num_marks=5)
    np.testing.assert_allclose(s.t_end, [9.0, 9.0])  # window end: the last event of the whole file
    assert s.num_marks == 5 and s.n_events == 5


# ---- THP pickles and EasyTPP JSON ---------------------------------------------------------

def _records():
    return [
        {"time_since_start": [0.5, 1.0, 2.5], "time_since_last_event": [0.5, 0.5, 1.5], "type_event": [0, 2, 1]},
        {"time_since_start": [1.0, 4.0], "time_since_last_event": [1.0, 3.0], "type_event": [1, 1]},
    ]


def test_thp_pickle_needs_trust(tmp_path):
    p = tmp_path / "train.pkl"
    seqs = [[{k: r[k][i] for k in r} for i in range(len(r["type_event"]))] for r in _records()]
    with open(p, "wb") as f:
        pickle.dump({"dim_process": 3, "train": seqs}, f)
    with pytest.raises(PickleNotTrusted, match="pickle"):
        load_thp_pickle(p)
    s = load_thp_pickle(p, trust_pickle=True)
    assert s.num_marks == 3 and s.n_events == 5
    np.testing.assert_allclose(s.times[0], [0.5, 1.0, 2.5])
    np.testing.assert_allclose(s.t_end, [2.5, 4.0])
    with pytest.raises(EventDataError, match="no split 'dev'"):
        load_thp_pickle(p, split="dev", trust_pickle=True)


@pytest.mark.parametrize("lines", [False, True], ids=["json-array", "json-lines"])
def test_easytpp_json(tmp_path, lines):
    recs = [dict(r, dim_process=3, seq_idx=i, seq_len=len(r["type_event"])) for i, r in enumerate(_records())]
    p = tmp_path / "dev.json"
    p.write_text("\n".join(json.dumps(r) for r in recs) if lines else json.dumps(recs))
    s = load_easytpp_json(p)
    assert s.num_marks == 3 and [m.tolist() for m in s.marks] == [[0, 2, 1], [1, 1]]


def test_easytpp_json_bad_records(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([{"time_since_start": [1.0, 0.5], "type_event": [0, 0]}]))
    with pytest.raises(EventDataError, match="must be increasing"):
        load_easytpp_json(p)
    p.write_text(json.dumps([{"time_since_start": [1.0]}]))
    with pytest.raises(EventDataError, match="missing fields"):
        load_easytpp_json(p)
    p.write_text(json.dumps([{"time_since_start": [1.0, 2.0], "type_event": [0, 5], "dim_process": 3}]))
    with pytest.raises(EventDataError, match="outside the declared range"):
        load_easytpp_json(p)


def test_loaders_pickle_for_worker_processes():
    """The collate is a partial of a module-level function, so worker processes can receive it,
    and a loader with workers gives the batches of one without."""
    import pickle

    import torch

    from tasks.events.data import EventDataModule
    from tasks.events.synthetic import generate_sin

    seqs = generate_sin(n_seqs=12, t_end=20.0, seed=0)
    dm = EventDataModule({"train": seqs, "val": seqs, "test": seqs}, batch_size=4, num_workers=0)
    dm.setup("fit")
    loader = dm.val_dataloader()
    pickle.dumps(loader.collate_fn)
    dm.num_workers = 2
    with_workers = list(dm.val_dataloader())
    for a, b in zip(loader, with_workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
