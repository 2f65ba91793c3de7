"""D4RL -v2 HDF5 files, read and written with h5py (no ``d4rl`` package).

Layout of a D4RL -v2 gym-MuJoCo file (N transitions, flat, episodes back to back):

    observations       float32 (N, obs_dim)
    actions            float32 (N, act_dim)
    rewards            float32 (N,)
    terminals          bool    (N,)   the episode ended in a terminal state
    timeouts           bool    (N,)   the episode was cut by the time limit
    next_observations  float32 (N, obs_dim)          (optional here)
    infos/qpos, infos/qvel, metadata/*               (optional here)

A trajectory ends at every index where ``terminals`` or ``timeouts`` is set; transitions
after the last such index form a final, truncated trajectory.

This file also holds the small pure functions of the protocol: return-to-go and the D4RL
normalised score.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from aaren_bench.errors import DataError

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")

# D4RL's reference returns (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE, shared by the -v2 sets)
REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


class D4RLFormatError(DataError):
    """An HDF5 file does not have the D4RL layout, or holds unusable values."""


@dataclass
class Trajectory:
    """One episode: observations (T, obs_dim), actions (T, act_dim), rewards (T,)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminal: bool  # ended in a terminal state (False: time limit or end of file)

    def __len__(self) -> int:
        return len(self.rewards)


def load_d4rl(path: str | Path) -> dict[str, np.ndarray]:
    """Read the five required arrays of a D4RL file and check them.

    Raises :class:`D4RLFormatError` naming the file and what is wrong: a missing key, arrays
    of different lengths, wrong ranks, or non-finite values (e.g. NaN rewards).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"D4RL file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise D4RLFormatError(f"{path} is not a readable HDF5 file ({e}); delete it and fetch or collect it again") from e
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise D4RLFormatError(
                f"{path} is missing the D4RL key(s) {missing}; found {sorted(f.keys())}. "
                f"A D4RL -v2 file holds {list(REQUIRED_KEYS)} (write one with `aaren-bench collect`)."
            )
        data = {k: f[k][()] for k in REQUIRED_KEYS}
    check_arrays(data, str(path))
    return {
        "observations": data["observations"].astype(np.float32, copy=False),
        "actions": data["actions"].astype(np.float32, copy=False),
        "rewards": data["rewards"].astype(np.float32, copy=False).reshape(-1),
        "terminals": data["terminals"].astype(bool).reshape(-1),
        "timeouts": data["timeouts"].astype(bool).reshape(-1),
    }


def check_arrays(data: dict[str, np.ndarray], where: str = "dataset") -> None:
    """Shapes agree (N rows everywhere), ranks are right, values are finite."""
    n = len(data["rewards"])
    lengths = {k: len(data[k]) for k in REQUIRED_KEYS}
    if len(set(lengths.values())) != 1:
        raise D4RLFormatError(f"{where}: arrays have mismatched lengths {lengths}; every key must have one row per transition")
    if n == 0:
        raise D4RLFormatError(f"{where}: holds no transitions")
    for k in ("observations", "actions"):
        if data[k].ndim != 2:
            raise D4RLFormatError(f"{where}: {k} must be 2-d (N, dim); got shape {data[k].shape}")
    for k in ("rewards", "terminals", "timeouts"):
        if data[k].ndim != 1 and not (data[k].ndim == 2 and data[k].shape[1] == 1):
            raise D4RLFormatError(f"{where}: {k} must be 1-d (N,); got shape {data[k].shape}")
    for k in ("observations", "actions", "rewards"):
        bad = ~np.isfinite(data[k])
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise D4RLFormatError(
                f"{where}: {k} holds {int(bad.sum())} non-finite value(s) (NaN or inf), first at row(s) {rows[:5].tolist()}; "
                f"clean or regenerate the file"
            )


def split_trajectories(data: dict[str, np.ndarray]) -> list[Trajectory]:
    """Cut the flat arrays into episodes at ``terminals | timeouts`` (inclusive)."""
    ends = np.nonzero(data["terminals"] | data["timeouts"])[0]
    n = len(data["rewards"])
    bounds = [(s, e + 1) for s, e in zip(np.concatenate([[0], ends[:-1] + 1]), ends)] if len(ends) else []
    last = ends[-1] + 1 if len(ends) else 0
    if last < n:
        bounds.append((last, n))  # trailing transitions without an end flag
    return [
        Trajectory(
            data["observations"][s:e], data["actions"][s:e], data["rewards"][s:e], bool(data["terminals"][e - 1])
        )
        for s, e in bounds
    ]


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """rtg_t = sum_{t' >= t} r_t' (undiscounted), (T,) -> (T,), accumulated in float64."""
    return np.cumsum(rewards[::-1].astype(np.float64))[::-1].astype(np.float32)


def normalized_score(env: str, ret: float | np.ndarray) -> float | np.ndarray:
    """D4RL normalised score 100 (R - min) / (max - min) with D4RL's reference returns."""
    if env not in REF_SCORES:
        raise KeyError(f"no D4RL reference scores for env {env!r}; known: {sorted(REF_SCORES)}")
    lo, hi = REF_SCORES[env]
    return 100.0 * (np.asarray(ret, dtype=np.float64) - lo) / (hi - lo)


def state_stats(trajs: list[Trajectory]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (+1e-6) of every observation in the dataset, (obs_dim,) each."""
    obs = np.concatenate([t.observations for t in trajs]).astype(np.float64)
    return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-6).astype(np.float32)


def write_d4rl(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Write arrays in D4RL's layout and dtypes, atomically (temporary file, then rename).

    ``arrays`` holds the required keys and optionally next_observations and ``infos/*``.
    """
    check_arrays(arrays, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtypes = {"terminals": bool, "timeouts": bool}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=np.asarray(v, dtype=dtypes.get(k, np.float32)))
            for k, v in (metadata or {}).items():
                f.create_dataset(f"metadata/{k}", data=str(v))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
