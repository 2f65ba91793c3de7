"""UEA files with inf or out-of-range values, unreadable files, overflowing standardisation, label messages."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.classify.data import UEADataError, UEADataModule, fit_scaler, pad, read_ts, standardize

HEADER = ("@problemName Toy\n@timeStamps false\n@missing true\n@univariate false\n@dimensions 2\n"
          "@equalLength false\n@classLabel true {labels}\n@data\n")


def ts(tmp_path, rows, name="Toy_TRAIN.ts"):
    """A two-dimensional .ts file; rows: (dimension 0 text, dimension 1 text, label) per series."""
    p = tmp_path / name
    labels = " ".join(sorted({y for *_, y in rows}))
    p.write_text(HEADER.format(labels=labels) + "".join(f"{d0}:{d1}:{y}\n" for d0, d1, y in rows))
    return p


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e39", "1e400"])
def test_infinite_value_is_interpolated_like_nan(tmp_path, cell):
    p = ts(tmp_path, [(f"1,{cell},3", "0,0,0", "a"), ("1,2,3", "4,5,6", "b")])
    with pytest.warns(UserWarning, match=r"1 series had missing values \(0 NaN, 1 inf or beyond float32's range\)"):
        got = read_ts(p)
    assert got.values[0][:, 0].tolist() == [1.0, 2.0, 3.0]
    assert all(np.isfinite(v).all() for v in got.values)


def test_nan_and_inf_counted_together(tmp_path):
    p = ts(tmp_path, [("1,NaN,3", "inf,0,0", "a"), ("1,2,3", "4,5,6", "b"), ("1,2", "-inf,1", "a")])
    with pytest.warns(UserWarning, match=r"2 series had missing values \(1 NaN, 2 inf"):
        got = read_ts(p)
    assert got.values[0][:, 1].tolist() == [0.0, 0.0, 0.0]  # the nearest value at the edge
    assert got.values[2][:, 1].tolist() == [1.0, 1.0]


def test_infinite_value_is_refused_under_nan_policy_error(tmp_path):
    p = ts(tmp_path, [("1,2,3", "0,0,0", "a"), ("1,2,3", "4,-inf,6", "b")])
    with pytest.raises(UEADataError, match=r"series 1, dimension 1 has an infinite value .* at step 1 \(-inf\).*nan_policy=interpolate"):
        read_ts(p, nan_policy="error")


def test_nan_error_names_series_dimension_and_step(tmp_path):
    p = ts(tmp_path, [("1,2,3", "0,0,NaN", "a")])
    with pytest.raises(UEADataError, match=r"series 0, dimension 1 has a NaN value at step 2 \(nan\)"):
        read_ts(p, nan_policy="error")


def test_dimension_without_any_finite_value(tmp_path):
    p = ts(tmp_path, [("1,2,3", "0,0,0", "a"), ("inf,NaN,-inf", "1,2,3", "b")])
    with pytest.raises(UEADataError, match=r"Toy_TRAIN.ts: series 1, dimension 0 has no finite value"):
        read_ts(p)


def test_unknown_nan_policy(tmp_path):
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        read_ts(ts(tmp_path, [("1", "2", "a")]), nan_policy="drop")


@pytest.mark.parametrize(
    "content",
    [b"\x89HDF\r\n\x1a\n" + bytes(range(256)), b"", b"<html>\n<body>Not found</body>\n</html>\n"],
    ids=["binary", "empty", "html"],
)
def test_unreadable_file(tmp_path, content):
    p = tmp_path / "Toy_TRAIN.ts"
    p.write_bytes(content)
    with pytest.raises(UEADataError, match=r"could not read .*Toy_TRAIN.ts as a UEA .ts file.*check the file"):
        read_ts(p)


def test_unreadable_registered_file_says_how_to_fetch_it(tmp_path):
    p = tmp_path / "Heartbeat" / "Heartbeat_TRAIN.ts"
    p.parent.mkdir()
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UEADataError, match=r"delete it and fetch it again: `aaren-bench fetch Heartbeat --data-root "):
        read_ts(p)


def test_no_series_after_data(tmp_path):
    p = tmp_path / "Toy_TRAIN.ts"
    p.write_text(HEADER.format(labels="a b"))
    with pytest.raises(UEADataError):
        read_ts(p)


def test_scaler_survives_float32_extremes():
    x, m = pad([np.array([[3e38], [-3e38], [3e38]], np.float32), np.array([[1e38]], np.float32)], 3)
    mean, std = fit_scaler(x, m)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    z = standardize(x, m, mean, std, where="Toy (train part)")
    assert np.isfinite(z).all() and np.abs(z).max() < 10


def test_standardised_overflow_names_the_series():
    x, m = pad([np.zeros((4, 2), np.float32), np.array([[0, 1e-30]] + [[0, 0]] * 3, np.float32)], 4)
    mean, std = fit_scaler(x, m)  # dimension 1 nearly constant: std about 2.4e-31
    test = np.zeros((2, 4, 2), np.float32)
    test[1, 2, 1] = 1e10
    with pytest.raises(UEADataError, match=r"Toy \(test part\).*series 1, dimension 1, step 2.*nearly constant"):
        standardize(test, np.ones((2, 4), bool), mean, std, where="Toy (test part)")


def test_unseen_label_is_printed_as_plain_text(tmp_path):
    tr = ts(tmp_path, [("1,2", "3,4", "a"), ("1,2", "3,4", "b")], "Toy_TRAIN.ts")
    te = ts(tmp_path, [("1,2", "3,4", "zebra"), ("1,2", "3,4", "a")], "Toy_TEST.ts")
    with pytest.raises(UEADataError) as e:
        UEADataModule(tr, te, name="Toy")
    msg = str(e.value)
    assert "never seen in TRAIN: 'zebra' (TRAIN's classes: 'a', 'b')" in msg and "np.str_" not in msg


def test_classes_are_plain_str(tmp_path):
    tr = ts(tmp_path, [("1,2", "3,4", "a"), ("1,2", "3,4", "b")], "Toy_TRAIN.ts")
    dm = UEADataModule(tr, tr, name="Toy")
    assert dm.classes == ["a", "b"] and all(type(c) is str for c in dm.classes)
    assert repr(dm.classes) == "['a', 'b']"
