"""The D4RL HDF5 loader, trajectory splitting, return-to-go and the normalised score."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from tasks.rl.d4rl import (
    D4RLFormatError,
    load_d4rl,
    normalized_score,
    returns_to_go,
    split_trajectories,
    state_stats,
    write_d4rl,
)


def write_raw_d4rl(path, n=7, obs=3, act=2, **override):
    """A file in D4RL -v2's exact layout, written with h5py directly (not by our writer)."""
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.standard_normal((n, obs)).astype(np.float32),
        "next_observations": rng.standard_normal((n, obs)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, act)).astype(np.float32),
        "rewards": np.arange(1, n + 1, dtype=np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
        "infos/qpos": rng.standard_normal((n, 4)).astype(np.float32),
        "infos/action_log_probs": rng.standard_normal(n).astype(np.float32),
    }
    arrays["terminals"][2] = True  # episode 1: rows 0-2 end in a terminal state
    arrays["timeouts"][4] = True  # episode 2: rows 3-4 cut by the time limit; rows 5-6 trail
    arrays.update(override)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if v is not None:
                f.create_dataset(k, data=v)
        f.create_dataset("metadata/algorithm", data="SAC")
    return arrays


def test_loader_reads_d4rl_layout(tmp_path):
    raw = write_raw_d4rl(tmp_path / "x.hdf5")
    data = load_d4rl(tmp_path / "x.hdf5")
    assert set(data) == {"observations", "actions", "rewards", "terminals", "timeouts"}
    assert data["observations"].dtype == np.float32 and data["terminals"].dtype == bool
    for k in data:
        np.testing.assert_array_equal(data[k], raw[k])


def test_split_on_terminals_and_timeouts(tmp_path):
    write_raw_d4rl(tmp_path / "x.hdf5")
    trajs = split_trajectories(load_d4rl(tmp_path / "x.hdf5"))
    assert [len(t) for t in trajs] == [3, 2, 2]
    assert [t.terminal for t in trajs] == [True, False, False]
    np.testing.assert_array_equal(trajs[1].rewards, [4, 5])
    np.testing.assert_array_equal(trajs[2].rewards, [6, 7])


def test_return_to_go_by_hand():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0])), [6.0, 5.0, 3.0])
    np.testing.assert_allclose(returns_to_go(np.array([-1.5, 0.5])), [-1.0, 0.5])


@pytest.mark.parametrize(
    "env,ret,expected",
    [
        ("halfcheetah", -280.178953, 0.0),
        ("halfcheetah", 12135.0, 100.0),
        ("hopper", 1607.0138475, 50.0),  # midpoint of -20.272305 and 3234.3
        ("walker2d", 1000.0, 21.74782),  # 100 * 998.370992 / 4590.670992
        ("ant", 0.0, 7.74261),  # 100 * 325.6 / 4205.3
    ],
)
def test_normalized_score_by_hand(env, ret, expected):
    assert normalized_score(env, ret) == pytest.approx(expected, abs=1e-4)


def test_normalized_score_unknown_env():
    with pytest.raises(KeyError, match="reference scores"):
        normalized_score("pendulum", 1.0)


def test_state_stats(tmp_path):
    raw = write_raw_d4rl(tmp_path / "x.hdf5")
    stats = state_stats(split_trajectories(load_d4rl(tmp_path / "x.hdf5")))
    np.testing.assert_allclose(stats.mean, raw["observations"].mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std, raw["observations"].std(0) + 1e-6, rtol=1e-5)  # as both DT code bases
    assert not stats.constant.any()


def test_constant_columns_are_held_at_zero(tmp_path):
    """A column constant in the data (std ~0) is not divided by ~1e-6: std 1, and 0 after
    normalisation, whatever value is fed later."""
    obs = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    obs[:, 1] = 0.0  # exactly constant, as D4RL ant's contact forces
    obs[:, 3] = 2.5 + np.float32(1e-8) * np.arange(7)  # constant up to float32 rounding
    write_raw_d4rl(tmp_path / "x.hdf5", obs=4, observations=obs)
    stats = state_stats(split_trajectories(load_d4rl(tmp_path / "x.hdf5")))
    assert stats.constant.tolist() == [False, True, False, True]
    assert stats.std[1] == 1.0 and stats.std[3] == 1.0 and stats.keep.tolist() == [1, 0, 1, 0]
    z = stats.normalize(obs)
    assert (z[:, [1, 3]] == 0).all()
    np.testing.assert_allclose(z[:, 0], (obs[:, 0] - obs[:, 0].mean()) / (obs[:, 0].std() + 1e-6), rtol=1e-4)
    unseen = obs[:1].copy()
    unseen[0, 1], unseen[0, 3] = 0.7, -1.0  # an environment that fills the column
    assert (stats.normalize(unseen)[0, [1, 3]] == 0).all()


def test_writer_roundtrip_and_dtypes(tmp_path):
    raw = write_raw_d4rl(tmp_path / "x.hdf5")
    arrays = {k: raw[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    out = write_d4rl(tmp_path / "sub" / "y.hdf5", arrays, {"policy": "random"})
    with h5py.File(out) as f:
        assert f["terminals"].dtype == bool and f["rewards"].dtype == np.float32
        assert f["metadata/policy"][()] == b"random"
    assert [p.name for p in out.parent.iterdir()] == ["y.hdf5"]  # no temporary file left
    for k, v in load_d4rl(out).items():
        np.testing.assert_array_equal(v, arrays[k])


# -- bad input --------------------------------------------------------------------------
def test_missing_key_is_named(tmp_path):
    write_raw_d4rl(tmp_path / "x.hdf5", timeouts=None)
    with pytest.raises(D4RLFormatError, match=r"missing the D4RL key\(s\) \['timeouts'\]"):
        load_d4rl(tmp_path / "x.hdf5")


def test_mismatched_lengths(tmp_path):
    write_raw_d4rl(tmp_path / "x.hdf5", rewards=np.ones(6, dtype=np.float32))
    with pytest.raises(D4RLFormatError, match="mismatched lengths"):
        load_d4rl(tmp_path / "x.hdf5")


def test_nan_rewards(tmp_path):
    r = np.ones(7, dtype=np.float32)
    r[5] = np.nan
    write_raw_d4rl(tmp_path / "x.hdf5", rewards=r)
    with pytest.raises(D4RLFormatError, match=r"rewards holds 1 non-finite value.*row\(s\) \[5\]"):
        load_d4rl(tmp_path / "x.hdf5")


def test_not_hdf5(tmp_path):
    (tmp_path / "x.hdf5").write_text("not hdf5")
    with pytest.raises(D4RLFormatError, match="not a readable HDF5"):
        load_d4rl(tmp_path / "x.hdf5")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="D4RL file not found"):
        load_d4rl(tmp_path / "nope.hdf5")
