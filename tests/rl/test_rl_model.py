"""Training windows, the Decision model's causality, and streaming vs windowed acting."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aaren_bench.nn import build_backbone
from tasks.rl.acting import Agent
from tasks.rl.d4rl import StateStats, Trajectory
from tasks.rl.data import WindowDataset, WindowSampler
from tasks.rl.model import DecisionModel, interleave
from tasks.rl.module import masked_mse, warmup_lambda

S, A = 5, 2


def small_model(kind: str, seed: int = 0) -> DecisionModel:
    torch.manual_seed(seed)
    cfg = OmegaConf.create(dict(name=kind, mixer=kind, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1, norm_first=True))
    m = DecisionModel(build_backbone(cfg), S, A, max_timestep=64)
    m.set_state_stats(StateStats(np.full(S, 0.5, np.float32), np.full(S, 2.0, np.float32), np.zeros(S, bool)))
    return m.eval()


def traj(n: int, offset: float = 0.0) -> Trajectory:
    obs = np.arange(n * S, dtype=np.float32).reshape(n, S) + offset
    return Trajectory(obs, np.full((n, A), 0.25, np.float32), np.ones(n, np.float32), False)


def test_sampler_proportional_to_length_and_seeded():
    lengths = np.array([10, 30, 60])
    s = WindowSampler(lengths, context_len=20, n_samples=20000, seed=3)
    traj_idx, start = s.draw(0)
    np.testing.assert_allclose(np.bincount(traj_idx) / 20000, lengths / 100, atol=0.015)
    assert (start[traj_idx == 0] == 0).all()  # shorter than K: taken whole
    long = traj_idx > 0
    assert (start[long] + 20 <= lengths[traj_idx[long]]).all()  # windows fit inside the trajectory
    assert start[traj_idx == 2].max() == 40 and start[traj_idx == 2].min() == 0  # every start is reachable
    again = WindowSampler(lengths, 20, 20000, seed=3).draw(0)
    np.testing.assert_array_equal(again[0], traj_idx)
    assert not np.array_equal(s.draw(1)[0], traj_idx)  # another epoch, other draws
    s.set_epoch(1)
    assert list(s)[:5] == list(zip(*[x[:5].tolist() for x in s.draw(1)]))


def test_sampler_uniform_is_min_dt_shuffled_passes():
    """sampling=uniform: shuffled passes over the trajectories, each cut to whole batches (drop_last),
    continued across epochs; every trajectory equally likely whatever its length."""
    lengths = np.array([10, 30, 60, 5, 7])
    s = WindowSampler(lengths, context_len=4, n_samples=6, seed=1, batch_size=2, sampling="uniform")
    assert s.pass_len == 4
    stream = np.concatenate([s.draw(e)[0] for e in range(4)])  # 24 samples = 6 passes of 4
    for p in range(6):
        one_pass = stream[4 * p: 4 * p + 4]
        assert len(set(one_pass.tolist())) == 4  # no trajectory twice within a pass
    big = WindowSampler(lengths, 4, 64 * 300, seed=2, batch_size=64, sampling="uniform")
    assert big.pass_len == 5  # fewer trajectories than a batch: the pass stays whole
    counts = np.bincount(big.draw(0)[0], minlength=5)
    assert counts.min() == counts.max()  # whole passes: exactly uniform
    np.testing.assert_array_equal(s.draw(3)[0], WindowSampler(lengths, 4, 6, 1, 2, "uniform").draw(3)[0])  # seeded


def test_sampler_any_start_cuts_windows_at_the_end():
    """window_start=any (kzl DT): the start is uniform over every step; the window is cut at the end."""
    lengths = np.array([3, 30])
    s = WindowSampler(lengths, context_len=20, n_samples=20000, seed=0, window_start="any")
    traj_idx, start = s.draw(0)
    assert start[traj_idx == 1].max() == 29 and start[traj_idx == 0].max() == 2
    with pytest.raises(Exception, match="task.window_start must be one of"):
        WindowSampler(lengths, 20, 10, 0, window_start="middle")
    with pytest.raises(Exception, match="task.sampling must be one of"):
        WindowSampler(lengths, 20, 10, 0, sampling="weighted")
    stats = StateStats(np.zeros(S, np.float32), np.ones(S, np.float32), np.zeros(S, bool))
    w = WindowDataset([traj(30)], stats, context_len=5, rtg_scale=1.0)[(0, 28)]
    assert w["mask"].tolist() == [True, True, False, False, False] and w["timesteps"][:2].tolist() == [28, 29]


def test_window_padding_rtg_and_normalisation():
    stats = StateStats(np.zeros(S, np.float32), np.full(S, 2.0, np.float32), np.zeros(S, bool))
    ds = WindowDataset([traj(3), traj(30)], stats, context_len=5, rtg_scale=10.0)
    w = ds[(0, 0)]
    assert w["mask"].tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(w["rtg"][:3].numpy(), [0.3, 0.2, 0.1], rtol=1e-6)
    assert (w["states"][3:] == 0).all() and (w["actions"][3:] == 0).all()
    w = ds[(1, 7)]
    assert w["timesteps"].tolist() == [7, 8, 9, 10, 11] and w["mask"].all()
    np.testing.assert_allclose(w["rtg"].numpy(), np.array([23, 22, 21, 20, 19]) / 10, rtol=1e-6)
    np.testing.assert_allclose(w["states"][0].numpy(), np.arange(35, 40) / 2.0)


def test_interleave_order():
    r, s, a = (torch.full((1, 2, 1), v) for v in (0.0, 1.0, 2.0))
    s[0, 1] = 11.0
    assert interleave(r, s, a).flatten().tolist() == [0, 1, 2, 0, 11, 2]


@pytest.mark.parametrize("kind", ["aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt"])
def test_action_prediction_is_causal(kind):
    m = small_model(kind)
    g = torch.Generator().manual_seed(0)
    st, ac, rtg = torch.randn(2, 6, S, generator=g), torch.randn(2, 6, A, generator=g), torch.randn(2, 6, generator=g)
    ts = torch.arange(6).expand(2, -1)
    base = m(st, ac, rtg, ts)
    ac2, st2 = ac.clone(), st.clone()
    ac2[:, 3:] += 5.0  # a_3 and later must not change predictions up to step 3
    st2[:, 4:] -= 5.0
    out = m(st2, ac2, rtg, ts)
    torch.testing.assert_close(out[:, :4], base[:, :4])
    assert not torch.allclose(out[:, 4:], base[:, 4:])


def test_masked_mse_ignores_padding():
    pred, target = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    target[0, 2] = 100.0
    mask = torch.tensor([[True, True, False]])
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.0)


def test_warmup():
    f = warmup_lambda(10)
    assert [f(0), f(4), f(9), f(50)] == [0.1, 0.5, 1.0, 1.0]


def run_agent(agent: Agent, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Feed a fixed observation sequence (n, T, S); return the agent's actions (n, T, A)."""
    agent.reset(obs.shape[0])
    out = []
    for t in range(obs.shape[1]):
        out.append(agent.act(obs[:, t]))
        agent.update(actions[:, t], rewards[:, t])  # the env's actions, so both modes share history
    return np.stack(out, 1)


@pytest.mark.parametrize("kind", ["aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt"])
def test_stream_equals_window_while_history_fits(kind):
    """Within the first K steps both modes see the whole history: same actions."""
    K, T, n = 6, 10, 3
    m = small_model(kind)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, T, S)).astype(np.float32)
    acts = rng.uniform(-1, 1, (n, T, A)).astype(np.float32)
    rews = rng.standard_normal((n, T)).astype(np.float32)
    win = run_agent(Agent(m, 50.0, 10.0, K, "window", max_ep_len=T), obs, acts, rews)
    stream = run_agent(Agent(m, 50.0, 10.0, K, "stream", max_ep_len=T), obs, acts, rews)
    np.testing.assert_allclose(stream[:, :K], win[:, :K], atol=1e-5)
    # beyond K the window drops the oldest steps; the stream keeps them
    assert not np.allclose(stream[:, K:], win[:, K:], atol=1e-4)


def test_aaren_stream_state_is_constant_size():
    m = small_model("aaren")
    agent = Agent(m, 0.0, 1.0, 4, "stream", max_ep_len=50)
    agent.reset(2)
    sizes = []
    for t in range(25):
        agent.act(np.zeros((2, S), np.float32))
        agent.update(np.zeros((2, A), np.float32), np.zeros(2, np.float32))
        sizes.append(agent.state.nbytes())
    assert len(set(sizes)) == 1
    tr = Agent(small_model("transformer"), 0.0, 1.0, 4, "stream", max_ep_len=50)
    tr.reset(2)
    for t in range(25):
        tr.act(np.zeros((2, S), np.float32))
        tr.update(np.zeros((2, A), np.float32), np.zeros(2, np.float32))
    assert tr.state.nbytes() > sizes[0]  # the KV cache grows with the episode


def test_timestep_beyond_embedding_is_a_clear_error():
    """Checked on the host where the horizon is known (acting, the data), not per batch."""
    m = small_model("aaren")  # max_timestep 64
    m.check_horizon(64)
    with pytest.raises(ValueError, match="max_timestep"):
        m.check_horizon(65)
    with pytest.raises(ValueError, match="max_timestep"):
        Agent(m, 0.0, 1.0, 4, "stream", max_ep_len=65).reset(1)
    Agent(m, 0.0, 1.0, 4, "stream", max_ep_len=64).reset(1)


def test_bad_acting_mode():
    with pytest.raises(ValueError, match="task.acting"):
        Agent(small_model("aaren"), 0.0, 1.0, 4, "beam")


def test_lockstep_batch_equals_single_episode():
    m = small_model("aaren")
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((3, 8, S)).astype(np.float32)
    acts, rews = rng.uniform(-1, 1, (3, 8, A)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    for mode in ("window", "stream"):
        batch = run_agent(Agent(m, 5.0, 10.0, 4, mode, max_ep_len=8), obs, acts, rews)
        alone = run_agent(Agent(m, 5.0, 10.0, 4, mode, max_ep_len=8), obs[1:2], acts[1:2], rews[1:2])
        np.testing.assert_allclose(batch[1:2], alone, atol=1e-5)
