"""`aaren-bench collect` and the whole pipeline on collected HalfCheetah data:
collect -> load -> train -> evaluate in the simulator -> normalised score."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mujoco")

from aaren_bench.cli import main as cli  # noqa: E402
from aaren_bench.study import compose_config
from aaren_bench.data import DatasetNotFound  # noqa: E402
from aaren_bench.run import train  # noqa: E402
from aaren_bench.run import build  # noqa: E402
from tasks.rl.d4rl import load_d4rl, normalized_score, split_trajectories  # noqa: E402
from tasks.rl.envs import EnvMismatchError  # noqa: E402
from pathlib import Path  # noqa: E402

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


def test_a_collected_dataset_is_made_by_an_explicit_command(tmp_path, runs_dir):
    """Resolving a missing collected file never runs the simulator: the error names the command,
    and `aaren-bench collect --dataset` writes the catalog's file, which the dataset then reads."""
    cfg = compose_rl("dataset=halfcheetah-collected", f"paths.data_root={tmp_path}", *TINY)
    with pytest.raises(DatasetNotFound, match="aaren-bench collect --dataset halfcheetah-collected"):
        build(cfg)
    assert not any(tmp_path.rglob("*.hdf5"))
    import tasks.rl.catalog as catalog

    recipe = catalog.COLLECTED["halfcheetah-collected"]
    old = dict(recipe)
    recipe.update(episodes=1, max_steps=20)
    try:
        assert cli(["collect", "--dataset", "halfcheetah-collected", "--data-root", str(tmp_path)]) == 0
    finally:
        recipe.update(old)
    _, dm, module, _ = build(cfg)
    assert sum(len(t) for t in dm.trajs) == 20 and module.model.backbone.d_model == 16


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
    with pytest.raises(DatasetNotFound, match="gym_mujoco_v2/walker2d_medium_replay-v2.hdf5"):
        build(cfg)


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
    with pytest.raises(FileNotFoundError, match="'random' or the path of a TorchScript policy"):
        cli(["collect", "--env", "hopper", "--policy", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.hdf5")])
