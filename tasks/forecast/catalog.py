"""The 8 long-term forecasting datasets (Time-Series-Library layout under the data root).

ETT files come from the ETDataset repository; Weather, Exchange, Traffic and ECL from the
Time-Series-Library data bundle on the Hugging Face hub (``thuml/Time-Series-Library``).
Checksums are pinned where a verified copy was examined (docs/protocol/forecast.md);
Traffic and ECL are not pinned yet.
"""
from aaren_bench.data.registry import DatasetSpec, RemoteFile, register

_ETT = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small"
_TSLIB = "https://huggingface.co/datasets/thuml/Time-Series-Library/resolve/main"

_SPECS = [
    # name, path under the data root, url, sha256, info
    ("ETTh1", "ETT-small/ETTh1.csv", f"{_ETT}/ETTh1.csv",
     "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066", {"rows": 17420, "channels": 7, "freq": "1h"}),
    ("ETTh2", "ETT-small/ETTh2.csv", f"{_ETT}/ETTh2.csv",
     "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b", {"rows": 17420, "channels": 7, "freq": "1h"}),
    ("ETTm1", "ETT-small/ETTm1.csv", f"{_ETT}/ETTm1.csv",
     "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e", {"rows": 69680, "channels": 7, "freq": "15min"}),
    ("ETTm2", "ETT-small/ETTm2.csv", f"{_ETT}/ETTm2.csv",
     "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd", {"rows": 69680, "channels": 7, "freq": "15min"}),
    ("Weather", "weather/weather.csv", f"{_TSLIB}/weather/weather.csv",
     "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63",
     {"rows": 52696, "channels": 21, "freq": "10min", "sentinel": -9999}),
    ("Exchange", "exchange_rate/exchange_rate.csv", f"{_TSLIB}/exchange_rate/exchange_rate.csv",
     "48b4d9d3d508f5104162e85b9a6042e3557fde11aa9f2944eba8c0d0efc89842", {"rows": 7588, "channels": 8, "freq": "1d"}),
    ("Traffic", "traffic/traffic.csv", f"{_TSLIB}/traffic/traffic.csv", "",
     {"rows": 17544, "channels": 862, "freq": "1h", "size": "about 136 MB"}),
    ("ECL", "electricity/electricity.csv", f"{_TSLIB}/electricity/electricity.csv", "",
     {"rows": 26304, "channels": 321, "freq": "1h", "size": "about 96 MB"}),
]

for _name, _path, _url, _sha, _info in _SPECS:
    register(DatasetSpec(name=_name, task="forecast", files=(RemoteFile(_path, _url, _sha),), info=_info))
