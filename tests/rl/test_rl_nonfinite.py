"""D4RL files whose values leave float32 (directly or once summed/normalised), and files that are not D4RL HDF5."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from tasks.rl.d4rl import D4RLFormatError, StateStats, Trajectory, check_inputs, load_d4rl, returns_to_go, state_stats
from tasks.rl.data import RLDataModule, WindowDataset


def write(path, n=6, **override):
    arrays = {
        "observations": np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32),
        "actions": np.zeros((n, 2), np.float32),
        "rewards": np.ones(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    arrays["timeouts"][2] = True  # trajectories: rows 0-2, rows 3-5
    arrays.update(override)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if isinstance(v, str):
                f.create_group(k)
            else:
                f.create_dataset(k, data=v)
    return path


def datamodule(path, rtg_scale=1000.0):
    return RLDataModule(path, rtg_scale=rtg_scale)


def test_huge_finite_rewards_overflowing_the_return_to_go(tmp_path):
    p = write(tmp_path / "x.hdf5", rewards=np.full(6, 3e38, np.float32))  # each finite, their sum is not in float32
    with pytest.raises(D4RLFormatError, match=r"x.hdf5: the return-to-go of trajectory 0 \(length 3\) reaches 9e\+35 at "
                                              r"step 0 after dividing by task.rtg_scale=1000.*raise task.rtg_scale"):
        datamodule(p).setup()


def test_return_to_go_is_scaled_before_the_float32_cast():
    r = np.full(3, 3e38, np.float32)
    rtg = returns_to_go(r, 1e3)
    assert np.isfinite(rtg).all() and rtg[0] == pytest.approx(9e35, rel=1e-6)


def test_moderate_rewards_pass_the_check(tmp_path):
    dm = datamodule(write(tmp_path / "x.hdf5", rewards=np.full(6, 1e15, np.float32)))
    dm.setup()  # 3e15 / 1000: large but safe
    assert len(dm.trajs) == 2


def test_bad_rtg_scale(tmp_path):
    with pytest.raises(ValueError, match="rtg_scale must be a positive number"):
        datamodule(write(tmp_path / "x.hdf5"), rtg_scale=0.0).setup()


def test_huge_actions_are_refused(tmp_path):
    a = np.zeros((6, 2), np.float32)
    a[4, 1] = 1e20
    with pytest.raises(D4RLFormatError, match=r"actions of trajectory 1 reach 1e\+20 at step 1, dimension 1"):
        datamodule(write(tmp_path / "x.hdf5", actions=a)).setup()


def test_states_at_float32_extremes_normalise_to_finite_values():
    obs = np.array([[-3e38], [3e38], [3e38]], np.float32)  # float32 (obs - mean) overflows
    traj = Trajectory(obs, np.zeros((3, 1), np.float32), np.ones(3, np.float32), False)
    stats = state_stats([traj])
    assert np.isfinite(stats.mean).all() and np.isfinite(stats.std).all()
    ds = WindowDataset([traj], stats, context_len=3, rtg_scale=1.0)
    assert np.isfinite(ds.states[0]).all() and np.abs(ds.states[0]).max() < 2
    check_inputs([traj], stats, 1.0, "toy")


def test_normalised_states_beyond_the_limit_name_the_place():
    obs = np.zeros((4, 2), np.float32)
    obs[3, 0] = 1e15
    traj = Trajectory(obs, np.zeros((4, 1), np.float32), np.ones(4, np.float32), False)
    with pytest.raises(D4RLFormatError, match=r"toy: normalised states of trajectory 0 reach 1e\+21 at step 3, dimension 0"):
        check_inputs([traj], StateStats(np.zeros(2, np.float32), np.full(2, 1e-6, np.float32), np.zeros(2, bool)), 1.0,
                     "toy")


@pytest.mark.parametrize("key", ["observations", "rewards"])
def test_float64_values_beyond_float32_are_non_finite(tmp_path, key):
    n = 6
    v = np.ones((n, 3)) if key == "observations" else np.ones(n)
    v[4] = 1e300  # finite in the file's float64, inf once read as float32
    with pytest.raises(D4RLFormatError, match=rf"{key} holds \d+ non-finite value.*beyond float32's range.*row\(s\) \[4\]"):
        load_d4rl(write(tmp_path / "x.hdf5", **{key: v}))


def test_inf_observation(tmp_path):
    o = np.zeros((6, 3), np.float32)
    o[1, 2] = -np.inf
    with pytest.raises(D4RLFormatError, match=r"observations holds 1 non-finite value.*row\(s\) \[1\]"):
        load_d4rl(write(tmp_path / "x.hdf5", observations=o))


def test_group_in_place_of_an_array(tmp_path):
    with pytest.raises(D4RLFormatError, match=r"'rewards' is a Group, not an array"):
        load_d4rl(write(tmp_path / "x.hdf5", rewards="group"))


def test_text_in_place_of_numbers(tmp_path):
    with pytest.raises(D4RLFormatError, match=r"rewards has dtype \|S1"):
        load_d4rl(write(tmp_path / "x.hdf5", rewards=np.array([b"x"] * 6)))


def test_truncated_file(tmp_path):
    p = write(tmp_path / "x.hdf5", n=5000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(D4RLFormatError, match="x.hdf5.*(not a readable HDF5|cannot read)"):
        load_d4rl(p)


def test_not_hdf5_registered_file_says_how_to_fetch_it(tmp_path):
    p = tmp_path / "d4rl" / "hopper_medium-v2.hdf5"
    p.parent.mkdir()
    p.write_text("<html>Moved</html>")
    with pytest.raises(D4RLFormatError, match=r"not a readable HDF5 file.*`aaren-bench fetch hopper-medium --data-root "):
        load_d4rl(p)
