"""Bad forecasting input: each case fails with a message that says what is wrong, or is handled as documented."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aaren_bench.data import DatasetNotFound, fetch, get
from tasks.forecast.data import ForecastDataModule
from tasks.forecast.frame import ForecastDataError, read_series
from tasks.forecast.windows import SplitError, split_borders


def frame(n=40, start="2021-03-01"):
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(n, 3)), columns=["a", "b", "OT"])
    df.insert(0, "date", pd.date_range(start, periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    return df


def save(df, tmp_path, name="x.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def test_missing_date_column(tmp_path):
    with pytest.raises(ForecastDataError, match="no 'date' column"):
        read_series(save(frame().drop(columns="date"), tmp_path))


def test_missing_target_column(tmp_path):
    with pytest.raises(ForecastDataError, match="target column 'OT' not found.*dataset.target"):
        read_series(save(frame().drop(columns="OT"), tmp_path))


def test_wrong_channel_count(tmp_path):
    with pytest.raises(ForecastDataError, match="expected 7 channels.*found 3"):
        read_series(save(frame(), tmp_path), n_channels=7)


def test_unparsable_date(tmp_path):
    df = frame()
    df.loc[5, "date"] = "not a date"
    with pytest.raises(ForecastDataError, match=r"cannot be parsed; first at data row 5 \(file line 7\): 'not a date'"):
        read_series(save(df, tmp_path))


@pytest.mark.parametrize("kind", ["swapped", "duplicate"])
def test_non_monotone_dates(tmp_path, kind):
    df = frame()
    if kind == "swapped":
        df.loc[[10, 11], "date"] = df.loc[[11, 10], "date"].to_numpy()
    else:
        df.loc[11, "date"] = df.loc[10, "date"]
    with pytest.raises(ForecastDataError, match="dates must increase strictly.*data row 11.*Sort the file"):
        read_series(save(df, tmp_path))


def test_nan_cells(tmp_path):
    df = frame()
    df.loc[3, "b"] = np.nan
    df.loc[7, "OT"] = np.nan
    with pytest.raises(ForecastDataError, match=r"2 empty/NaN cell\(s\).*'b': 1.*'OT': 1.*first at data row 3"):
        read_series(save(df, tmp_path))


def test_non_numeric_cell(tmp_path):
    df = frame().astype({"a": object})
    df.loc[4, "a"] = "n/a?"
    with pytest.raises(ForecastDataError, match="column 'a' has non-numeric"):
        read_series(save(df, tmp_path))


def test_too_few_rows_ratio(tmp_path):
    path = save(frame(n=300), tmp_path)
    dm = ForecastDataModule(path, "ratio", seq_len=96, label_len=48, pred_len=192)
    with pytest.raises(SplitError, match=r"too few rows: the train part.*seq_len \+ pred_len = 288") as e:
        dm.setup()
    assert str(e.value).startswith(f"{path}: too few rows"), "the error names the file"


def test_standardised_overflow_in_a_file_names_the_file(tmp_path):
    df = frame(n=400)
    df["a"] = 0.0
    df.loc[0, "a"] = 1e-30  # nearly constant in the training part ...
    df.loc[390, "a"] = 1e10  # ... and huge in the test part: past float32's square
    path = save(df, tmp_path)
    dm = ForecastDataModule(path, "ratio", seq_len=24, label_len=12, pred_len=24)
    with pytest.raises(ForecastDataError, match="standardised value") as e:
        dm.setup()
    assert str(e.value).startswith(f"{path}: "), "the error names the file"


def test_too_few_rows_ett():
    with pytest.raises(SplitError, match="needs 14400 rows"):
        split_borders(14000, "ett_hour", 96, 192)
    with pytest.raises(SplitError, match="the val part"):
        split_borders(1000, "ratio", 96, 192)  # val part: 100 + 96 rows < 288


def test_sentinel_keep_warns_and_keeps(tmp_path):
    df = frame()
    df.loc[[2, 9], "a"] = -9999
    with pytest.warns(UserWarning, match=r"2 cell\(s\) hold the sentinel -9999.*KEPT"):
        s = read_series(save(df, tmp_path), sentinel=-9999, sentinel_policy="keep")
    assert (s.values[:, 0] == -9999).sum() == 2


def test_sentinel_interpolate_warns_and_replaces(tmp_path):
    df = frame()
    df.loc[5, "a"] = -9999
    with pytest.warns(UserWarning, match="replaced by linear interpolation.*NOT comparable"):
        s = read_series(save(df, tmp_path), sentinel=-9999, sentinel_policy="interpolate")
    assert s.values[5, 0] == pytest.approx((df.loc[4, "a"] + df.loc[6, "a"]) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="sentinel_policy"):
        read_series(save(df, tmp_path), sentinel=-9999, sentinel_policy="drop")


def test_missing_dataset_file_names_source_and_place(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        fetch("ETTh2", tmp_path, download=False)
    msg = str(e.value)
    assert "ETT-small/ETTh2.csv" in msg and "raw.githubusercontent.com/zhouhaoyi/ETDataset" in msg and "AAREN_DATA" in msg


def test_catalogue_has_the_eight_datasets():
    names = ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange", "Traffic", "ECL"]
    for n in names:
        spec = get(n)
        assert spec.task == "forecast" and len(spec.files) == 1
    assert get("Exchange").files[0].path == "exchange_rate/exchange_rate.csv"
