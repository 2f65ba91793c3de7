"""Event times that are NaN/inf, finite but beyond what float32 training holds, and files that are not their format."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from tasks.events.data import EventDataError, EventSeqs, collate
from tasks.events.formats import PickleNotTrusted, load_easytpp_json, load_ifl_npz, load_meta_tpp_npz, load_thp_pickle

INF, NAN = float("inf"), float("nan")


# ---- EventSeqs.build ----------------------------------------------------------------------

@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_time_names_the_event(bad):
    with pytest.raises(EventDataError, match=rf"sequence 1: event 2 has the time {bad!r}; times must be finite"):
        EventSeqs.build([[1.0, 2.0], [1.0, 2.0, bad, 4.0]])


@pytest.mark.parametrize("where,kw", [("start", {"t_start": NAN}), ("end", {"t_end": NAN}), ("end", {"t_end": INF}),
                                      ("start", {"t_start": -INF})])
def test_non_finite_window(where, kw):
    with pytest.raises(EventDataError, match=rf"sequence 0: the window {where} is .*must be a finite number"):
        EventSeqs.build([[1.0, 2.0]], **kw)


def test_window_wider_than_float32():
    # finite float64 times whose span becomes inf once collate casts to float32
    with pytest.raises(EventDataError, match=r"sequence 0: the window \[0, 1e\+39\] spans 1e\+39 .*beyond float32's range"):
        EventSeqs.build([[1.0, 1e39]])
    with pytest.raises(EventDataError, match="beyond float32's range"):
        EventSeqs.build([[1.0, 2.0]], t_end=1e300)


def test_differences_overflowing_float64():
    with pytest.raises(EventDataError, match=r"spans inf"):
        EventSeqs.build([[-1e308, 1e308]], t_start=-1e308)


def test_largest_window_float32_holds_collates_to_finite_values():
    s = EventSeqs.build([[1.0, 3e38]], t_end=3.3e38)
    b = collate(s, [0])
    assert all(bool(v.isfinite().all()) for k, v in b.items() if v.is_floating_point())


def test_gap_below_float32_smallest_normal():
    with pytest.raises(EventDataError, match=r"events 0 and 1 are 1e-40 apart, below float32's smallest normal.*tie_eps"):
        EventSeqs.build([[0.0, 1e-40, 5.0]])  # a positive float64 gap that is 0 in float32
    s = EventSeqs.build([[1.0, 2.0, 2.0]], tie_eps=1e-6)  # ties separated by a representable gap pass
    assert np.diff(s.times[0]).min() == pytest.approx(1e-6)


def test_non_monotone_times_still_refused():
    with pytest.raises(EventDataError, match="must be increasing"):
        EventSeqs.build([[1.0, 3.0, 2.0]])


# ---- loaders ------------------------------------------------------------------------------

def _meta_npz(path, times):
    np.savez(path, times=np.asarray(times, float))
    return path


@pytest.mark.parametrize("bad", [NAN, INF])
def test_meta_tpp_non_finite_entry(tmp_path, bad):
    p = _meta_npz(tmp_path / "a.npz", [[1.0, 0.5, 2.0], [0.5, bad, 1.0]])
    with pytest.raises(EventDataError, match=rf"a.npz, sequence 1: entry 1 of 'times' is {bad!r}"):
        load_meta_tpp_npz(p)


def test_meta_tpp_inter_times_summing_past_float64(tmp_path):
    p = _meta_npz(tmp_path / "a.npz", [[1e308, 1e308, 1.0]])
    with pytest.raises(EventDataError, match=r"sequence 0: the inter-event times sum past float64's range at entry 1"):
        load_meta_tpp_npz(p)


def test_meta_tpp_inter_times_summing_past_float32(tmp_path):
    p = _meta_npz(tmp_path / "a.npz", [[3e38, 3e38, 1.0]])
    with pytest.raises(EventDataError, match="beyond float32's range"):
        load_meta_tpp_npz(p)


def test_easytpp_json_nan_and_inf(tmp_path):
    p = tmp_path / "dev.json"
    p.write_text(json.dumps([{"time_since_start": [1.0, NAN], "type_event": [0, 0]}]))  # json writes NaN
    with pytest.raises(EventDataError, match="event 1 has the time nan"):
        load_easytpp_json(p)
    p.write_text(json.dumps([{"time_since_start": [1.0, 2.0], "time_since_last_event": [1.0, INF], "type_event": [0, 0]}]))
    with pytest.raises(EventDataError, match="time_since_last_event of event 1 is inf"):
        load_easytpp_json(p)


def test_ifl_nan_time_is_reported_for_its_own_sequence(tmp_path):
    p = tmp_path / "raw.npz"
    at = np.empty(2, dtype=object)
    at[0], at[1] = [0.0, 3.0, 7.0], [2.0, NAN]
    np.savez(p, arrival_times=at)
    with pytest.raises(EventDataError, match=r"sequence 1: event 1 has the time nan"):
        load_ifl_npz(p, trust_pickle=True)


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize(
    "content,why",
    [(b"<html><body>quota exceeded</body></html>", "not a zip archive"),
     (b"\x93NUMPY\x01\x00" + bytes(100), "a single .npy array"),
     (b"PK\x03\x04" + bytes(range(200)), "BadZipFile")],
    ids=["html", "npy", "truncated-zip"],
)
def test_npz_that_is_not_an_npz(tmp_path, content, why, trust):
    p = tmp_path / "a.npz"
    p.write_bytes(content)
    with pytest.raises(EventDataError, match=f"a.npz cannot be read .*{why}.*check the file") as e:
        load_meta_tpp_npz(p, trust_pickle=trust)
    assert not isinstance(e.value, PickleNotTrusted)  # not mistaken for a pickle needing trust


def test_registered_npz_that_is_not_an_npz_says_how_to_fetch_it(tmp_path):
    p = tmp_path / "events" / "wikipedia_jodie.npz"
    p.parent.mkdir()
    p.write_text("<html>rate limited</html>")
    with pytest.raises(EventDataError, match=r"delete it and fetch it again: `aaren-bench fetch Wiki --data-root "):
        load_ifl_npz(p, trust_pickle=True)


def test_meta_tpp_registered_file_points_to_its_source(tmp_path):
    p = tmp_path / "events" / "meta_tpp" / "real" / "mooc.npz"
    p.parent.mkdir(parents=True)
    p.write_bytes(bytes(range(64)))
    with pytest.raises(EventDataError, match=r"replace it with a good copy \(Meta TPP's data archive"):
        load_meta_tpp_npz(p)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"{not json", b"[1, 2, 3]"], ids=["binary", "broken", "numbers"])
def test_easytpp_file_that_is_not_json_records(tmp_path, content):
    p = tmp_path / "dev.json"
    p.write_bytes(content)
    with pytest.raises(EventDataError, match="dev.json"):
        load_easytpp_json(p)


def test_thp_pickle_that_is_not_a_pickle(tmp_path):
    p = tmp_path / "train.pkl"
    p.write_bytes(b"<html>not found</html>")
    with pytest.raises(EventDataError, match="train.pkl cannot be read \\(not a readable Python pickle"):
        load_thp_pickle(p, trust_pickle=True)
    p.write_bytes(pickle.dumps({"dim_process": 1, "train": []})[:-5])  # truncated
    with pytest.raises(EventDataError, match="not a readable Python pickle"):
        load_thp_pickle(p, trust_pickle=True)
