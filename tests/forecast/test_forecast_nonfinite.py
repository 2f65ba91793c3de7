"""Non-finite, out-of-range and unreadable forecasting files: each fails with a ForecastDataError naming the place."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.forecast.frame import ForecastDataError, read_series
from tasks.forecast.windows import Scaler


def frame(n=40):
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(n, 3)), columns=["a", "b", "OT"])
    df.insert(0, "date", pd.date_range("2021-03-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    return df


def save(df, tmp_path, name="x.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e400"])
def test_infinite_cell_is_refused_like_nan(tmp_path, cell):
    df = frame().astype({"b": object})
    df.loc[6, "b"] = cell
    with pytest.raises(ForecastDataError, match=r"1 infinite cell\(s\).*'b': 1.*first at data row 6, column 'b'.*no imputation"):
        read_series(save(df, tmp_path))


def test_infinite_cells_counted_per_column(tmp_path):
    df = frame()
    df.loc[[2, 3], "a"] = np.inf
    df.loc[9, "OT"] = -np.inf
    with pytest.raises(ForecastDataError, match=r"3 infinite cell\(s\).*'a': 2, 'OT': 1.*first at data row 2, column 'a'"):
        read_series(save(df, tmp_path))


def test_value_beyond_float32_is_refused(tmp_path):
    df = frame()
    df.loc[11, "OT"] = 1e39  # finite in float64, inf once cast to float32
    with pytest.raises(ForecastDataError, match=r"beyond float32's range.*data row 11, column 'OT': 1e\+39"):
        read_series(save(df, tmp_path))


def test_largest_float32_values_are_kept(tmp_path):
    df = frame()
    df.loc[11, "OT"] = 3.0e38
    s = read_series(save(df, tmp_path))
    assert np.isfinite(s.values).all() and s.values[11, 2] == pytest.approx(3.0e38, rel=1e-6)


def test_standardised_overflow_names_the_cell():
    train = np.zeros((50, 2))
    train[0, 1] = 1e-30  # channel 1 nearly constant in training: std about 1.4e-31
    sc = Scaler.fit(train.astype(np.float32))
    later = np.zeros((5, 2))
    later[3, 1] = 1e10
    with pytest.raises(ForecastDataError, match=r"standardised value.*row 3, channel 1.*nearly constant"):
        sc.transform(later)
    assert np.isfinite(sc.transform(train)).all()


@pytest.mark.parametrize(
    "content,why",
    [
        (b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8, "not UTF-8 text"),  # gzip bytes
        (b"", "empty"),
        (b'date,a,OT\n2020-01-01,1,2\n2020-01-02,"1,2\n', "not a well-formed CSV"),
        (b"date,a,OT\n2020-01-01,1,2\n2020-01-02,1,2,3,4\n", "not a well-formed CSV"),
    ],
    ids=["binary", "empty", "open-quote", "ragged"],
)
def test_unreadable_file_is_a_data_error(tmp_path, content, why):
    p = tmp_path / "x.csv"
    p.write_bytes(content)
    with pytest.raises(ForecastDataError, match=f"cannot be read as a CSV file \\({why}") as e:
        read_series(p)
    assert str(p) in str(e.value) and "check the file" in str(e.value)


def test_unreadable_registered_file_says_how_to_fetch_it(tmp_path):
    p = tmp_path / "traffic" / "traffic.csv"
    p.parent.mkdir()
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ForecastDataError, match=r"delete it and fetch it again: `aaren-bench fetch Traffic --data-root "):
        read_series(p)


def test_html_page_instead_of_csv_says_how_to_fetch_it(tmp_path):
    p = tmp_path / "electricity" / "electricity.csv"
    p.parent.mkdir()
    p.write_text("<html>\n<body>Rate limited</body>\n</html>\n")
    with pytest.raises(ForecastDataError, match=r"no 'date' column.*aaren-bench fetch ECL"):
        read_series(p)
