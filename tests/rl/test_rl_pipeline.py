"""`aaren-bench collect` and the whole pipeline on collected HalfCheetah data:
collect -> load -> train -> evaluate in the simulator -> normalised score."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mujoco")

from pathlib import Path  # noqa: E402

from aaren_bench.cli import main as cli  # noqa: E402
from aaren_bench.data import DatasetNotFound  # noqa: E402
from aaren_bench.run import (
    build,  # noqa: E402
    train,  # noqa: E402
)
from aaren_bench.study import compose_config
from tasks.rl.d4rl import load_d4rl, normalized_score, split_trajectories  # noqa: E402
from tasks.rl.envs import EnvMismatchError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "task.backbone.d_model=16", "task.backbone.n_layers=1", "task.backbone.d_ff=32",
    "task.batch_size=4", "task.steps_per_epoch=2", "task.max_steps=4", "task.warmup_steps=2", "task.context_len=5",
    "task.eval_episodes=2", "task.eval_batch=2", "task.max_ep_len=25",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
]


def compose_rl(*overrides):
    return compose_config(["task=rl", *overrides])


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("d4rl") / "halfcheetah_collected-v2.hdf5"
    rc = cli(["collect", "--env", "halfcheetah", "--episodes", "3", "--max-steps", "30", "--seed", "1", "--out", str(out)])
    assert rc == 0
    return out


def test_collect_writes_d4rl_layout(collected):
    import h5py

    with h5py.File(collected) as f:
        assert {"observations", "next_observations", "actions", "rewards", "terminals", "timeouts", "infos"} <= set(f)
        assert f["observations"].shape == (90, 17) and f["actions"].shape == (90, 6)
        assert f["terminals"].dtype == bool and f["observations"].dtype == np.float32
        np.testing.assert_array_equal(f["observations"][1:30], f["next_observations"][:29])
    trajs = split_trajectories(load_d4rl(collected))
    assert [len(t) for t in trajs] == [30, 30, 30]  # split on the time-limit flags


def test_end_to_end_train_and_simulator_eval(collected, runs_dir):
    cfg = compose_rl("dataset=halfcheetah-collected", f"dataset.file={collected}", "model=aaren", *TINY)
    rec = train(cfg)
    m = rec["metrics"]
    assert m["test/episodes"] == 2 and m["test/episode_length"] == 25
    assert m["test/normalized_score"] == pytest.approx(float(normalized_score("halfcheetah", m["test/return"])), rel=1e-4)
    assert np.isfinite(m["test/normalized_score_std"]) and m["test/env_steps_per_s"] > 0
    assert rec["global_steps"] == 4
    saved = json.loads((runs_dir / cfg.cell / "result.json").read_text())
    assert saved["metrics"] == m


def test_seeded_runs_repeat(collected, tmp_path):
    """Two fresh runs (separate folders, no resume) give the same training and evaluation."""
    over = ("dataset=halfcheetah-collected", f"dataset.file={collected}", "model=transformer", *TINY)
    a = train(compose_rl(*over, f"paths.runs={tmp_path / 'a'}"))["metrics"]
    b = train(compose_rl(*over, f"paths.runs={tmp_path / 'b'}"))["metrics"]
    assert a["test/return"] == pytest.approx(b["test/return"], rel=1e-6)


def test_missing_collected_file_names_the_collect_command(tmp_path, runs_dir):
    """Nothing is written on first use: the message says which command writes the file, and where."""
    cfg = compose_rl("dataset=halfcheetah-collected", f"paths.data_root={tmp_path}", *TINY)
    with pytest.raises(DatasetNotFound, match=r"aaren-bench collect --dataset halfcheetah-collected"):
        build(cfg).datamodule.prepare_data()
    assert not (tmp_path / "d4rl").exists()


def test_env_not_matching_data(collected, runs_dir):
    cfg = compose_rl("dataset=hopper-medium", f"dataset.file={collected}", *TINY)
    with pytest.raises(EnvMismatchError, match="17-d observations and 6-d actions, but env 'hopper'"):
        build(cfg)
    cfg = compose_rl("dataset=halfcheetah-collected", f"dataset.file={collected}", "dataset.env=hopper", *TINY)
    with pytest.raises(EnvMismatchError, match="set dataset.env"):
        build(cfg)


def test_d4rl_dataset_absent_offline_names_the_url(tmp_path, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    cfg = compose_rl("dataset=walker2d-medium-replay", f"paths.data_root={tmp_path}", *TINY)
    with pytest.raises(DatasetNotFound, match="gym_mujoco_v2/walker2d_medium_replay-v2.hdf5") as e:
        build(cfg).datamodule.prepare_data()  # HF_HUB_OFFLINE=1 (conftest): the hub is not contacted either
    msg = str(e.value)
    assert "decision_transformer_gym_replay" in msg and "walker2d-medium-replay-v2" in msg  # the second source
    assert "HF_HUB_OFFLINE=1" in msg
    cfg = compose_rl("dataset=ant-medium", f"paths.data_root={tmp_path}", *TINY)
    with pytest.raises(DatasetNotFound, match="gym_mujoco_v2/ant_medium-v2.hdf5") as e:
        build(cfg).datamodule.prepare_data()
    assert "has no ant data" in str(e.value)


def test_collect_with_saved_policy(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(17, 6), torch.nn.Tanh())
    torch.jit.script(net).save(str(tmp_path / "pi.pt"))
    out = tmp_path / "hc.hdf5"
    cli(["collect", "--env", "halfcheetah", "--policy", str(tmp_path / "pi.pt"), "--episodes", "1", "--max-steps", "10",
         "--out", str(out)])
    data = load_d4rl(out)
    with torch.no_grad():
        want = net(torch.from_numpy(data["observations"])).numpy()
    np.testing.assert_allclose(data["actions"], want, atol=1e-6)
    assert data["timeouts"].tolist() == [False] * 9 + [True]


def test_collect_bad_policy_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'random', a named controller \(gait \(halfcheetah\)\) or the path"):
        cli(["collect", "--env", "hopper", "--policy", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.hdf5")])


def test_collect_with_the_gait_controller_and_a_noise_mix(tmp_path):
    """`--policy gait` (halfcheetah): deterministic sinusoidal torques; `--noise 0,0.3` alternates clean and
    noisy episodes in one file."""
    from tasks.rl.controllers import CONTROLLERS

    out = tmp_path / "gait.hdf5"
    assert cli(["collect", "--env", "halfcheetah", "--policy", "gait", "--episodes", "2", "--max-steps", "200",
                "--noise", "0,0.3", "--out", str(out)]) == 0
    data = load_d4rl(out)
    clean, noisy = split_trajectories(data)
    gait = CONTROLLERS[("halfcheetah", "gait")](type("E", (), {"unwrapped": type("U", (), {"dt": 0.05})})())
    want = np.stack([gait(None) for _ in range(200)])
    np.testing.assert_allclose(clean.actions, want, atol=1e-6)
    assert np.abs(noisy.actions - want).max() > 0.1
    assert clean.rewards.sum() > 100  # it runs forward (a random policy loses about 0.3 per step)
    with pytest.raises(ValueError, match="not to 'random'"):
        cli(["collect", "--env", "halfcheetah", "--episodes", "1", "--noise", "0.1", "--out", str(tmp_path / "r.hdf5")])
