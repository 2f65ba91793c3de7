"""Reading a Time-Series-Library CSV into checked arrays, and its calendar features.

A forecasting file is a CSV with a ``date`` column and numeric channels, the target
(``OT``) last. :func:`read_series` returns the dates and a (T, C) float array after
checking everything that would otherwise fail silently later: a file that is not a
readable CSV, missing columns, unparsable or non-increasing dates, non-numeric, missing
(NaN) or infinite cells, values beyond float32's range, and sentinel values.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aaren_bench.data.checks import F32_MAX, refetch_hint
from aaren_bench.errors import DataError

log = logging.getLogger("aaren_bench")

SENTINEL_POLICIES = ("keep", "interpolate")
FEATURES = ("M", "S")  # every channel | the target alone


class ForecastDataError(DataError):
    """A forecasting CSV cannot be used as it is; the message says what is wrong and what to do."""


@dataclass
class Series:
    dates: pd.DatetimeIndex  # (T,)
    values: np.ndarray  # (T, C) float32, channels in file order with the target last
    columns: list[str]  # C channel names


def read_series(
    path: str | Path,
    target: str = "OT",
    n_channels: int | None = None,
    sentinel: float | None = None,
    sentinel_policy: str = "keep",
    features: str = "M",
) -> Series:
    """Read and check one CSV. The channel order is the file's, with ``target`` moved last (as TSLib).

    ``features``: ``M`` keeps every channel, ``S`` only the target (TSLib ``--features S``);
    ``n_channels`` is the file's channel count either way, and only the kept columns are checked.
    """
    if features not in FEATURES:
        raise ValueError(f"task.features must be one of {FEATURES}, got {features!r}")
    path = Path(path)
    df = _read_csv(path)
    if "date" not in df.columns:
        raise ForecastDataError(
            f"{path}: no 'date' column (found columns: {list(df.columns)[:10]}...). A forecasting file needs a "
            f"'date' column followed by numeric channels (Time-Series-Library layout); if this is a registered "
            f"dataset's file, it is damaged: {refetch_hint(path, 'forecast')}."
        )
    if target not in df.columns:
        raise ForecastDataError(
            f"{path}: target column {target!r} not found (columns: {list(df.columns)[:10]}...). "
            f"Set dataset.target to the name of the column to forecast last."
        )
    channels = [c for c in df.columns if c not in ("date", target)] + [target]
    if n_channels is not None and len(channels) != n_channels:
        raise ForecastDataError(
            f"{path}: expected {n_channels} channels besides 'date' (dataset.n_channels), found {len(channels)}: "
            f"{channels[:10]}{'...' if len(channels) > 10 else ''}. The file is truncated or a different dataset; "
            f"fetch it again or fix dataset.n_channels."
        )
    if features == "S":
        channels = [target]
    dates = _parse_dates(df["date"], path)
    values = _numeric(df[channels], path)
    if sentinel is not None:
        values = _handle_sentinel(values, channels, sentinel, sentinel_policy, path)
    return Series(dates=dates, values=values.astype(np.float32), columns=channels)


def _read_csv(path: Path) -> pd.DataFrame:
    """``pd.read_csv``, with a file that is not text or not CSV reported as a :class:`ForecastDataError`."""
    try:
        return pd.read_csv(path)
    except UnicodeDecodeError as e:
        why = f"not UTF-8 text, perhaps a binary or compressed file: {e}"
    except pd.errors.EmptyDataError as e:
        why = f"empty: {e}"
    except pd.errors.ParserError as e:
        why = f"not a well-formed CSV: {e}"
    raise ForecastDataError(f"{path} cannot be read as a CSV file ({why}); {refetch_hint(path, 'forecast')}.")


def _parse_dates(col: pd.Series, path: Path) -> pd.DatetimeIndex:
    parsed = pd.to_datetime(col, errors="coerce", format="mixed")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise ForecastDataError(
            f"{path}: {len(bad)} date cell(s) cannot be parsed; first at data row {i} (file line {i + 2}): "
            f"{col.iloc[i]!r}. Fix or remove those rows."
        )
    steps = np.diff(parsed.to_numpy().astype("datetime64[ns]").astype(np.int64))
    back = np.flatnonzero(steps <= 0)
    if len(back):
        i = int(back[0]) + 1
        raise ForecastDataError(
            f"{path}: dates must increase strictly, but data row {i} ({col.iloc[i]}) does not come after row "
            f"{i - 1} ({col.iloc[i - 1]}); {len(back)} such place(s). Sort the file by date and drop duplicate rows."
        )
    return pd.DatetimeIndex(parsed)


def _numeric(df: pd.DataFrame, path: Path) -> np.ndarray:
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            conv = pd.to_numeric(df[c], errors="coerce")
            bad = np.flatnonzero(conv.isna().to_numpy() & df[c].notna().to_numpy())
            if len(bad):
                i = int(bad[0])
                raise ForecastDataError(
                    f"{path}: column {c!r} has non-numeric cell(s), first at data row {i}: {df[c].iloc[i]!r}"
                )
            df = df.assign(**{c: conv})
    values = df.to_numpy(dtype=np.float64)
    nan = np.isnan(values)
    if nan.any():
        rows, cols = np.nonzero(nan)
        per_col = {df.columns[j]: int(n) for j, n in enumerate(nan.sum(0)) if n}
        raise ForecastDataError(
            f"{path}: {int(nan.sum())} empty/NaN cell(s) (per column: {per_col}); first at data row {rows[0]}, "
            f"column {df.columns[cols[0]]!r}. The protocol has no imputation: fill them (e.g. interpolate in time) "
            f"before training."
        )
    inf = np.isinf(values)
    if inf.any():
        rows, cols = np.nonzero(inf)
        per_col = {df.columns[j]: int(n) for j, n in enumerate(inf.sum(0)) if n}
        raise ForecastDataError(
            f"{path}: {int(inf.sum())} infinite cell(s) (inf/-inf, or a number too large for float64) "
            f"(per column: {per_col}); first at data row {rows[0]}, column {df.columns[cols[0]]!r}: "
            f"{values[rows[0], cols[0]]}. They are treated like NaN cells: the protocol has no imputation, "
            f"replace them (e.g. interpolate in time) before training."
        )
    big = np.abs(values) > F32_MAX
    if big.any():
        rows, cols = np.nonzero(big)
        raise ForecastDataError(
            f"{path}: {int(big.sum())} cell(s) beyond float32's range (|x| > {F32_MAX:.3g}), which would become inf "
            f"in training; first at data row {rows[0]}, column {df.columns[cols[0]]!r}: {values[rows[0], cols[0]]:g}. "
            f"Fix those cells or rescale the column."
        )
    return values


def _handle_sentinel(values: np.ndarray, columns: list[str], sentinel: float, policy: str, path: Path) -> np.ndarray:
    if policy not in SENTINEL_POLICIES:
        raise ValueError(f"task.sentinel_policy must be one of {SENTINEL_POLICIES}, got {policy!r}")
    hit = values == sentinel
    if not hit.any():
        return values
    per_col = {columns[j]: int(n) for j, n in enumerate(hit.sum(0)) if n}
    if policy == "keep":
        msg = (
            f"{path.name}: {int(hit.sum())} cell(s) hold the sentinel {sentinel:g} (missing readings) in {per_col}. "
            f"They are KEPT as values, as the Time-Series-Library protocol does (comparable numbers); they inflate "
            f"the scaler's spread and the errors. Pass task.sentinel_policy=interpolate to replace them."
        )
    else:
        msg = (
            f"{path.name}: {int(hit.sum())} sentinel cell(s) {sentinel:g} in {per_col} replaced by linear "
            f"interpolation in time (task.sentinel_policy=interpolate): numbers are NOT comparable with the "
            f"Time-Series-Library protocol."
        )
        frame = pd.DataFrame(np.where(hit, np.nan, values))
        values = frame.interpolate(limit_direction="both").to_numpy()
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)
    return values


# Calendar features (TSLib ``timeenc=1``): each in [-0.5, 0.5].
_FEATURES = {
    "minute": lambda d: d.minute / 59.0 - 0.5,
    "hour": lambda d: d.hour / 23.0 - 0.5,
    "weekday": lambda d: d.dayofweek / 6.0 - 0.5,
    "monthday": lambda d: (d.day - 1) / 30.0 - 0.5,
    "yearday": lambda d: (d.dayofyear - 1) / 365.0 - 0.5,
}
FREQ_FEATURES = {
    "t": ("minute", "hour", "weekday", "monthday", "yearday"),
    "h": ("hour", "weekday", "monthday", "yearday"),
    "d": ("weekday", "monthday", "yearday"),
}


def time_features(dates: pd.DatetimeIndex, freq: str = "h") -> np.ndarray:
    """(T,) dates -> (T, F) float32 calendar features for the frequency ``freq`` (t, h or d)."""
    if freq not in FREQ_FEATURES:
        raise ValueError(f"task.freq must be one of {sorted(FREQ_FEATURES)}, got {freq!r}")
    return np.stack([np.asarray(_FEATURES[f](dates), dtype=np.float64) for f in FREQ_FEATURES[freq]], 1).astype(np.float32)
