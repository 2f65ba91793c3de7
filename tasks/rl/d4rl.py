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
normalised score, and the check that what the network is fed stays inside float32
(:func:`check_inputs`: finite rewards can still sum to a return-to-go beyond it).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from aaren_bench.data.checks import F32_MAX, F32_SQUARE_MAX, beyond, refetch_hint
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

    Raises :class:`D4RLFormatError` naming the file and what is wrong: not an HDF5 file (or
    unreadable), a missing key, a key that is not a numeric array, arrays of different lengths,
    wrong ranks, or non-finite values (e.g. NaN rewards, or values beyond float32's range).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"D4RL file not found: {path}")
    hint = refetch_hint(path, "rl")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise D4RLFormatError(f"{path} is not a readable HDF5 file ({e}); {hint}") from e
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise D4RLFormatError(
                f"{path} is missing the D4RL key(s) {missing}; found {sorted(f.keys())}. "
                f"A D4RL -v2 file holds {list(REQUIRED_KEYS)} (write one with `aaren-bench collect`)."
            )
        data = {}
        for k in REQUIRED_KEYS:
            if not isinstance(f[k], h5py.Dataset):
                raise D4RLFormatError(f"{path}: {k!r} is a {type(f[k]).__name__}, not an array; {hint}")
            try:
                data[k] = f[k][()]
            except OSError as e:  # a truncated or damaged file can open and fail on reading
                raise D4RLFormatError(f"{path}: cannot read {k!r} ({e}); the file is damaged: {hint}") from e
    check_arrays(data, str(path))
    with np.errstate(over="ignore"):  # values beyond float32 were refused by check_arrays
        return {
            "observations": data["observations"].astype(np.float32, copy=False),
            "actions": data["actions"].astype(np.float32, copy=False),
            "rewards": data["rewards"].astype(np.float32, copy=False).reshape(-1),
            "terminals": data["terminals"].astype(bool).reshape(-1),
            "timeouts": data["timeouts"].astype(bool).reshape(-1),
        }


def d4rl_dims(path: str | Path) -> tuple[int, int]:
    """(obs_dim, act_dim) from a D4RL file's header: the arrays' shapes, no values read."""
    try:
        with h5py.File(path, "r") as f:
            return int(f["observations"].shape[1]), int(f["actions"].shape[1])
    except (OSError, KeyError, IndexError) as e:
        raise D4RLFormatError(f"{path}: no (N, obs) observations and (N, act) actions arrays to size the model "
                              f"({e}); {refetch_hint(Path(path), 'rl')}") from e


def check_arrays(data: dict[str, np.ndarray], where: str = "dataset") -> None:
    """Shapes agree (N rows everywhere), ranks and dtypes are right, values are finite in float32."""
    for k in REQUIRED_KEYS:
        dtype = np.asarray(data[k]).dtype
        if not (np.issubdtype(dtype, np.number) or dtype == bool):
            raise D4RLFormatError(f"{where}: {k} has dtype {dtype}; D4RL stores numbers (float32, bool flags)")
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
        bad = beyond(data[k], F32_MAX)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise D4RLFormatError(
                f"{where}: {k} holds {int(bad.sum())} non-finite value(s) (NaN or inf, or beyond float32's range "
                f"{F32_MAX:.3g}), first at row(s) {rows[:5].tolist()}; clean or regenerate the file"
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


def returns_to_go(rewards: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """rtg_t = sum_{t' >= t} r_t' / scale (undiscounted), (T,) -> (T,) float32, accumulated in float64.

    Dividing before the cast to float32 keeps a large but representable scaled return finite;
    :func:`check_inputs` refuses returns that still do not fit.
    """
    with np.errstate(over="ignore"):
        return _returns_to_go64(rewards, scale).astype(np.float32)


def _returns_to_go64(rewards: np.ndarray, scale: float) -> np.ndarray:
    return np.cumsum(rewards[::-1].astype(np.float64))[::-1] / scale


def normalized_score(env: str, ret: float | np.ndarray) -> float | np.ndarray:
    """D4RL normalised score 100 (R - min) / (max - min) with D4RL's reference returns."""
    if env not in REF_SCORES:
        raise KeyError(f"no D4RL reference scores for env {env!r}; known: {sorted(REF_SCORES)}")
    lo, hi = REF_SCORES[env]
    return 100.0 * (np.asarray(ret, dtype=np.float64) - lo) / (hi - lo)


# A column whose std (float64, over the whole dataset) is below this is constant: it carries no
# information, and dividing by ~0 would blow any other value up (D4RL's ant contact forces are
# all zero in the data; an environment that fills them would give inputs of ~1e6).
MIN_STD = 1e-6


@dataclass(frozen=True)
class StateStats:
    """Per-column state normalisation of a dataset: (obs - mean) / std, with constant columns held at 0.

    mean, std: (obs_dim,) float32; std is the anchors' ``std + 1e-6`` for informative columns
    and 1 for constant ones. constant: (obs_dim,) bool, the columns whose std is below
    :data:`MIN_STD`; their normalised value is 0 in training and at evaluation, whatever the
    environment reports there.
    """

    mean: np.ndarray
    std: np.ndarray
    constant: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        """(obs_dim,) float32: 1 for informative columns, 0 for constant ones."""
        return (~self.constant).astype(np.float32)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return normalize_states(obs, self.mean, self.std, self.keep)


def state_stats(trajs: list[Trajectory]) -> StateStats:
    """Mean and std (+1e-6, as both DT code bases) of every observation column in the dataset.

    Computed in float64, where float32 observations cannot overflow (their squares reach 1.2e77).
    Columns with std below :data:`MIN_STD` are constant: std 1, and ``constant`` marks them.
    """
    obs = np.concatenate([t.observations for t in trajs]).astype(np.float64)
    mean, std = obs.mean(0), obs.std(0)
    constant = std < MIN_STD
    std = np.where(constant, 1.0, std + 1e-6)
    return StateStats(mean.astype(np.float32), std.astype(np.float32), constant)


def normalize_states(obs: np.ndarray, mean: np.ndarray, std: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """(T, S) -> (T, S) float32 (obs - mean) / std (times ``keep``: 0 zeroes a constant column),
    computed in float64 (float32 differences overflow)."""
    z = (obs.astype(np.float64) - mean) / std
    if keep is not None:
        z = z * keep
    with np.errstate(over="ignore"):
        return z.astype(np.float32)


def check_inputs(trajs: list[Trajectory], stats: StateStats, rtg_scale: float, where: str) -> None:
    """Refuse data whose network inputs or targets leave float32: scaled returns-to-go, states, actions.

    Every value must stay below ``F32_SQUARE_MAX`` (1.8e19) in magnitude: the network embeds
    them and squares the result (layer norm) or the actions themselves (MSE loss). Finite
    rewards can break this: 3e38 twice in a trajectory sums to a return beyond float32.
    """
    if not (np.isfinite(rtg_scale) and rtg_scale > 0):
        raise ValueError(f"task.rtg_scale must be a positive number, got {rtg_scale!r}")
    for i, t in enumerate(trajs):
        rtg = _returns_to_go64(t.rewards, rtg_scale)  # (T,)
        bad = beyond(rtg, F32_SQUARE_MAX)
        if bad.any():
            step = int(np.argmax(bad))
            raise D4RLFormatError(
                f"{where}: the return-to-go of trajectory {i} (length {len(t)}) reaches {rtg[step]:.3g} at step "
                f"{step} after dividing by task.rtg_scale={rtg_scale:g} (largest reward {np.abs(t.rewards).max():.3g}); "
                f"beyond {F32_SQUARE_MAX:.2g} the network's float32 arithmetic overflows. Check the rewards in the "
                f"file (a unit or scale error?), or raise task.rtg_scale."
            )
        for name, x, key in (("normalised states", stats.normalize(t.observations), "observations"),
                             ("actions", t.actions, "actions")):
            bad = beyond(x, F32_SQUARE_MAX)
            if bad.any():
                step, dim = (int(a[0]) for a in np.nonzero(bad))
                raise D4RLFormatError(
                    f"{where}: {name} of trajectory {i} reach {float(x[step, dim]):.3g} at step {step}, dimension "
                    f"{dim}; beyond {F32_SQUARE_MAX:.2g} the network's float32 arithmetic overflows. Check the "
                    f"file's {key}."
                )


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
