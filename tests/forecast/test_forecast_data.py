"""Forecasting data: TSLib split borders, window counts and contents, train-only scaler, calendar features."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.forecast.data import ForecastDataModule
from tasks.forecast.frame import read_series, time_features
from tasks.forecast.windows import Scaler, WindowDataset, n_windows, split_borders


def write_csv(path, n=400, channels=("a", "b", "OT"), start="2020-01-01", freq="h", values=None):
    dates = pd.date_range(start, periods=n, freq=freq)
    data = values if values is not None else np.arange(n * len(channels), dtype=float).reshape(n, len(channels))
    df = pd.DataFrame(data, columns=list(channels))
    df.insert(0, "date", dates.strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- split borders and window counts
@pytest.mark.parametrize(
    "split,n,expected",
    [
        ("ett_hour", 17420, {"train": (0, 8640), "val": (8544, 11520), "test": (11424, 14400)}),
        ("ett_minute", 69680, {"train": (0, 34560), "val": (34464, 46080), "test": (45984, 57600)}),
        # Exchange: int(0.7 * 7588) = 5311 train rows, int(0.2 * 7588) = 1517 test rows, 760 val rows
        ("ratio", 7588, {"train": (0, 5311), "val": (5215, 6071), "test": (5975, 7588)}),
    ],
)
def test_split_borders_match_tslib(split, n, expected):
    assert split_borders(n, split, seq_len=96, pred_len=192) == expected


@pytest.mark.parametrize(
    "split,n,counts",
    [("ett_hour", 17420, (8353, 2689, 2689)), ("ett_minute", 69680, (34273, 11329, 11329)), ("ratio", 7588, (5024, 569, 1326))],
)
def test_window_counts(split, n, counts):
    b = split_borders(n, split, 96, 192)
    assert tuple(n_windows(e - s, 96, 192) for s, e in b.values()) == counts


def test_windows_are_stride_one_slices_with_label_marks():
    values = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # row index in every channel
    marks = np.arange(20, dtype=np.float32)[:, None]
    ds = WindowDataset(values, marks, seq_len=5, label_len=2, pred_len=3)
    assert len(ds) == 20 - 5 - 3 + 1
    x, xm, y, ym = ds[4]
    assert x[:, 0].tolist() == [4, 5, 6, 7, 8]
    assert y[:, 0].tolist() == [9, 10, 11]
    assert ym[:, 0].tolist() == [7, 8, 9, 10, 11]  # last label_len input steps, then the horizon
    x, _, y, _ = ds[len(ds) - 1]
    assert y[-1, 0] == 19  # the last window ends on the last row of the part
    with pytest.raises(IndexError):
        ds[len(ds)]


# ---------------------------------------------------------------- scaler
def test_scaler_uses_population_std_and_guards_constant_channels():
    train = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Scaler.fit(train)
    assert s.mean.tolist() == [2.0, 5.0] and s.std.tolist() == [1.0, 1.0]
    np.testing.assert_allclose(s.transform(np.array([[4.0, 6.0]])), [[2.0, 1.0]])
    np.testing.assert_allclose(s.inverse(s.transform(train)), train)


def test_datamodule_fits_scaler_on_training_rows_only(tmp_path):
    n = 500
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, 3)) + np.linspace(0, 10, n)[:, None]  # trend: later parts have larger values
    path = write_csv(tmp_path / "s.csv", n=n, values=values)
    dm = ForecastDataModule(path, "ratio", seq_len=24, label_len=12, pred_len=24, n_channels=3)
    dm.setup()
    n_train = int(0.7 * n)
    np.testing.assert_allclose(dm.scaler.mean, values[:n_train].mean(0), rtol=1e-6)
    np.testing.assert_allclose(dm.scaler.std, values[:n_train].std(0), rtol=1e-6)
    # the test part is scaled with the training statistics: its first target row is file row n_train + 760 ... in scaled units
    x, _, y, _ = dm.datasets["test"][0]
    first_test_row = n - int(0.2 * n)
    np.testing.assert_allclose(y[0].numpy(), (values[first_test_row] - dm.scaler.mean) / dm.scaler.std, rtol=1e-5)
    np.testing.assert_allclose(x[-1].numpy(), (values[first_test_row - 1] - dm.scaler.mean) / dm.scaler.std, rtol=1e-5)


def test_target_moves_last_as_tslib(tmp_path):
    path = write_csv(tmp_path / "s.csv", n=10, channels=("OT", "a", "b"))
    s = read_series(path)
    assert s.columns == ["a", "b", "OT"]
    assert s.values[0].tolist() == [1.0, 2.0, 0.0]


# ---------------------------------------------------------------- calendar features
def test_time_features_hand_values():
    d = pd.DatetimeIndex(["2016-07-01 00:00:00", "2016-12-31 23:45:00"])  # a Friday; the last day of a leap year
    h = time_features(d, "h")
    np.testing.assert_allclose(h[0], [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5], atol=1e-6)
    np.testing.assert_allclose(h[1], [0.5, 5 / 6 - 0.5, 30 / 30 - 0.5, 365 / 365 - 0.5], atol=1e-6)
    t = time_features(d, "t")
    assert t.shape == (2, 5) and t[1, 0] == pytest.approx(45 / 59 - 0.5)
    assert time_features(d, "d").shape == (2, 3)
    with pytest.raises(ValueError, match="task.freq"):
        time_features(d, "w")


# ---------------------------------------------------------------- real files (skipped without the shared data)
def test_real_etth1_split_counts_and_scaler(shared_data):
    path = shared_data / "ETT-small" / "ETTh1.csv"
    dm = ForecastDataModule(path, "ett_hour", 96, 48, 192, n_channels=7)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8353, "val": 2689, "test": 2689}
    raw = pd.read_csv(path)
    cols = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    np.testing.assert_allclose(dm.scaler.mean, raw[cols].iloc[:8640].mean().to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(dm.scaler.std, raw[cols].iloc[:8640].std(ddof=0).to_numpy(), rtol=1e-4)
    # the last test window's target ends on row 14399 (2018-02-20 23:00), rows after 14400 are unused
    assert raw["date"].iloc[14399] == "2018-02-20 23:00:00"
    _, _, y, _ = dm.datasets["test"][len(dm.datasets["test"]) - 1]
    np.testing.assert_allclose(y[-1].numpy(), (raw[cols].iloc[14399].to_numpy() - dm.scaler.mean) / dm.scaler.std, rtol=1e-4)
    # the first validation window's input starts seq_len rows before the validation part
    x, xm, _, _ = dm.datasets["val"][0]
    np.testing.assert_allclose(x[0].numpy(), (raw[cols].iloc[8544].to_numpy() - dm.scaler.mean) / dm.scaler.std, rtol=1e-4)


def test_real_exchange_ratio_split(shared_data):
    dm = ForecastDataModule(shared_data / "exchange_rate" / "exchange_rate.csv", "ratio", 96, 48, 192, n_channels=8)
    dm.setup()
    assert dm.borders == {"train": (0, 5311), "val": (5215, 6071), "test": (5975, 7588)}
    assert [len(d) for d in dm.datasets.values()] == [5024, 569, 1326]


def test_tiny_slice_of_real_file(shared_data, tmp_path):
    """The first 600 rows of ETTm1, split 70/10/20 with short windows: borders and hand-computed scaler."""
    raw = pd.read_csv(shared_data / "ETT-small" / "ETTm1.csv", nrows=600)
    path = tmp_path / "slice.csv"
    raw.to_csv(path, index=False)
    dm = ForecastDataModule(path, "ratio", seq_len=48, label_len=24, pred_len=24, freq="t", n_channels=7)
    dm.setup()
    assert dm.borders == {"train": (0, 420), "val": (372, 480), "test": (432, 600)}
    assert [len(d) for d in dm.datasets.values()] == [420 - 71, 108 - 71, 168 - 71]
    np.testing.assert_allclose(dm.scaler.mean, raw.iloc[:420, 1:].mean().to_numpy(), rtol=1e-5)
    _, xm, _, _ = dm.datasets["train"][0]
    assert xm.shape == (48, 5) and xm[1, 0] == pytest.approx(15 / 59 - 0.5)  # 00:15
