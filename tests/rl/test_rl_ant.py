"""Ant evaluated the way its data was made: D4RL's 84 contact-force columns are zero in the data
(mujoco-py under MuJoCo 2.0 never filled them), so the evaluation environment gives zeros there
too, and a column constant in the data can never blow the model's inputs up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from aaren_bench.cli import main as cli  # noqa: E402
from aaren_bench.run import build, train  # noqa: E402
from aaren_bench.study import compose_config  # noqa: E402
from tasks.rl import envs  # noqa: E402
from tasks.rl.acting import run_episodes  # noqa: E402
from tasks.rl.d4rl import load_d4rl  # noqa: E402

TINY = [
    "task.backbone.d_model=16", "task.backbone.n_layers=1", "task.backbone.d_ff=32",
    "task.batch_size=4", "task.steps_per_epoch=2", "task.max_steps=4", "task.warmup_steps=2", "task.context_len=5",
    "task.eval_episodes=2", "task.eval_batch=2", "task.max_ep_len=30",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
]
CONTACT = slice(27, 111)


@pytest.fixture(scope="module")
def ant_file(tmp_path_factory):
    """An ant file in D4RL's layout whose 84 contact columns are constant (zero), as D4RL's are."""
    out = tmp_path_factory.mktemp("ant") / "ant_synthetic-v2.hdf5"
    rc = cli(["collect", "--env", "ant", "--episodes", "3", "--max-steps", "40", "--seed", "2", "--out", str(out)])
    assert rc == 0
    return out


def test_ant_env_gives_the_data_layout_and_reward():
    """111 columns, the last 84 zero; the reward has no contact cost (there was none in the data)."""
    env = envs.make_env("ant", 111, 8, 30)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (111,) and not obs[CONTACT].any()
    env.action_space.seed(0)
    for _ in range(30):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        assert not obs[CONTACT].any() and np.abs(obs[:27]).max() > 0
        assert r == pytest.approx(info["reward_forward"] + info["reward_survive"] + info["reward_ctrl"], abs=1e-9)
        if terminated or truncated:
            break
    env.close()


def test_gymnasium_contact_forces_are_not_zero():
    """Why the fix is needed: Ant-v4 with use_contact_forces=True fills the columns the data has as zeros."""
    import gymnasium as gym

    env = gym.make("Ant-v4", use_contact_forces=True)
    env.reset(seed=0)
    env.action_space.seed(0)
    seen = max(np.abs(env.step(env.action_space.sample())[0][CONTACT]).max() for _ in range(30))
    env.close()
    assert seen > 0.1  # normalised with the data's std (+1e-6) these would be > 1e5


def _read(cfg):
    """The built datamodule and module after the data is read, as the trainer leaves them."""
    _, dm, module, _ = build(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module.adopt_statistics(dm)
    return dm, module


def test_constant_columns_of_the_data_are_found(ant_file):
    data = load_d4rl(ant_file)
    assert data["observations"].shape[1] == 111 and not data["observations"][:, CONTACT].any()
    dm, module = _read(compose_config(["dataset=ant-medium", f"dataset.file={ant_file}", *TINY]))
    assert dm.stats.constant[CONTACT].all() and not dm.stats.constant[:27].any()
    assert (module.model.state_std[CONTACT] == 1).all() and (module.model.state_keep[CONTACT] == 0).all()


@pytest.mark.parametrize("contact_forces", [False, True], ids=["data-layout-env", "contact-force-env"])
def test_evaluation_inputs_stay_bounded(ant_file, monkeypatch, contact_forces):
    """Fed by the evaluation env, the model's normalised inputs stay in the data's range; even an env that
    fills the constant columns (the old Ant-v4 set-up) cannot push them to ~1e6."""
    if contact_forces:
        monkeypatch.setitem(envs.ENVS, "ant", envs.EnvSpec("Ant-v4", 111, 8, {"use_contact_forces": True}))
    _, module = _read(compose_config(["dataset=ant-medium", f"dataset.file={ant_file}", *TINY]))
    seen, raw = [], []
    normalize = module.model.normalize

    def spy(states):
        z = normalize(states)
        seen.append(float(z.abs().max()))
        raw.append(float(states[..., CONTACT].abs().max()))
        assert not z[..., CONTACT].any()  # held at the data's value, whatever the env reports there
        return z

    monkeypatch.setattr(module.model, "normalize", spy)
    module.eval()
    env_list = [envs.make_env("ant", 111, 8, 30) for _ in range(2)]
    with torch.no_grad():
        stats = run_episodes(module.make_agent(), env_list, [1, 2], 30)
    for env in env_list:
        env.close()
    assert seen and max(seen) < 50 and np.isfinite(stats.returns).all()
    assert (max(raw) > 0.1) if contact_forces else max(raw) == 0


def test_ant_run_end_to_end(ant_file, runs_dir):
    rec = train(compose_config(["dataset=ant-medium", f"dataset.file={ant_file}", "model=transformer", *TINY]))
    assert np.isfinite(rec["metrics"]["test/normalized_score"]) and rec["metrics"]["test/episodes"] == 2
