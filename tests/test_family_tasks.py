"""Linear attention and Mamba-2 in all four tasks: every task and protocol runs them.

- a fast_dev_run smoke pass through ``aaren_bench.run.train`` (trainer=debug) on each task's
  default dataset: JapaneseVowels, ETTh1 (skipped without the data), Sin, and HalfCheetah
  collected into a temporary data root (skipped without MuJoCo);
- every protocol a task defines (conf/task_protocol/<task>-<protocol>.yaml) composes with both
  models and builds their backbone;
- the Decision model acting as an RNN (task.acting=stream) gives the window's actions while
  the history fits in the window (as tests/rl checks for Aaren and the Transformer);
- the events streaming predictor equals the batch pass, padding changes nothing, and the state
  keeps its size however long the stream.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aaren_bench.nn import build_backbone
from aaren_bench.run import train
from aaren_bench.study import CONF, compose_config, protocols

NEW = ["linear_attn", "mamba2"]
DEBUG = ["trainer=debug", "trainer.enable_progress_bar=false", "logger=none"]


# --------------------------------------------------------------------------------------
# Every task, every protocol
# --------------------------------------------------------------------------------------


def smoke(*overrides) -> dict:
    rec = train(compose_config([*DEBUG, *overrides]))
    assert rec["metrics"] and all(np.isfinite(v) for v in rec["metrics"].values()), rec["metrics"]
    return rec


@pytest.mark.parametrize("model", NEW)
def test_classify_smoke(model, runs_dir, one_thread):
    rec = smoke("dataset=JapaneseVowels", f"model={model}")
    assert rec["model"] == model and "test/acc" in rec["metrics"] and rec["params"]["backbone"] > 0


@pytest.mark.parametrize("model", NEW)
def test_forecast_smoke(model, runs_dir, shared_data, one_thread):
    if not (shared_data / "ETT-small" / "ETTh1.csv").exists():
        pytest.skip(f"ETTh1 not under {shared_data}")
    rec = smoke("dataset=ETTh1", f"model={model}", f"paths.data_root={shared_data}")
    assert rec["model"] == model and "test/mse" in rec["metrics"]


@pytest.mark.parametrize("model", NEW)
def test_events_smoke(model, runs_dir, one_thread):
    rec = smoke("dataset=Sin", f"model={model}")
    assert rec["model"] == model and "test/nll" in rec["primary_metric"]


@pytest.fixture(scope="module")
def collected_root(tmp_path_factory):
    """A data root holding halfcheetah-collected at its registry path, from a tiny recipe."""
    pytest.importorskip("mujoco")
    from aaren_bench.cli import main as cli
    from aaren_bench.data import get

    root = tmp_path_factory.mktemp("data")
    out = root / get("halfcheetah-collected").files[0].path
    assert cli(["collect", "--env", "halfcheetah", "--episodes", "2", "--max-steps", "40", "--out", str(out)]) == 0
    return root


@pytest.mark.parametrize("acting", ["window", "stream"])
@pytest.mark.parametrize("model", NEW)
def test_rl_smoke(model, acting, collected_root, runs_dir, one_thread):
    rec = smoke("dataset=halfcheetah-collected", f"model={model}", f"paths.data_root={collected_root}",
                f"task.acting={acting}", "task.eval_episodes=2", "task.eval_batch=2", "task.debug_ep_len=20")
    assert rec["model"] == model and np.isfinite(rec["metrics"]["test/return"])


def _task_protocols():
    return [(task, proto) for task, names in sorted(protocols().items()) for proto in names]


@pytest.mark.parametrize("model", NEW)
@pytest.mark.parametrize(("task", "protocol"), _task_protocols(), ids=lambda v: str(v))
def test_every_protocol_composes(task, protocol, model):
    cfg = compose_config([f"task={task}", f"protocol={protocol}", f"model={model}"])
    assert (cfg.task.name, cfg.protocol.name, cfg.model.mixer) == (task, protocol, model)
    assert f"/{protocol}/{model}/seed0" in cfg.cell
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    backbone = build_backbone(cfg.model)
    assert backbone.d_model == cfg.task.backbone.d_model
    y, _ = backbone(torch.randn(2, 5, backbone.d_model))
    assert y.shape == (2, 5, backbone.d_model) and torch.isfinite(y).all()


def test_protocol_list_covers_every_task():
    assert {"classify", "forecast", "events", "rl"} <= set(protocols())
    assert len(_task_protocols()) == len(list((CONF / "task_protocol").glob("*.yaml")))


# --------------------------------------------------------------------------------------
# RL: the Decision model as an RNN (task.acting=stream) and the window
# --------------------------------------------------------------------------------------

S, A = 5, 2


def decision_model(kind: str, seed: int = 0):
    from tasks.rl.model import DecisionModel

    torch.manual_seed(seed)
    cfg = OmegaConf.create(dict(name=kind, mixer=kind, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1,
                                norm_first=True))
    m = DecisionModel(build_backbone(cfg), S, A, max_timestep=64)
    with torch.no_grad():  # the normalisation statistics, set directly (as set_state_stats would)
        m.state_mean.fill_(0.5)
        m.state_std.fill_(2.0)
    return m.eval()


def run_agent(agent, obs, actions, rewards) -> np.ndarray:
    """Feed a fixed observation sequence (n, T, S); return the agent's actions (n, T, A)."""
    agent.reset(obs.shape[0])
    out = []
    for t in range(obs.shape[1]):
        out.append(agent.act(obs[:, t]))
        agent.update(actions[:, t], rewards[:, t])  # the env's actions, so both modes share history
    return np.stack(out, 1)


@pytest.mark.parametrize("kind", NEW)
def test_rl_stream_equals_window_while_history_fits(kind, one_thread):
    from tasks.rl.acting import Agent

    K, T, n = 6, 10, 3
    m = decision_model(kind)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, T, S)).astype(np.float32)
    acts = rng.uniform(-1, 1, (n, T, A)).astype(np.float32)
    rews = rng.standard_normal((n, T)).astype(np.float32)
    win = run_agent(Agent(m, 50.0, 10.0, K, "window", max_ep_len=T), obs, acts, rews)
    stream = run_agent(Agent(m, 50.0, 10.0, K, "stream", max_ep_len=T), obs, acts, rews)
    np.testing.assert_allclose(stream[:, :K], win[:, :K], atol=1e-5)
    # beyond K the window drops the oldest steps; the stream keeps them
    assert not np.allclose(stream[:, K:], win[:, K:], atol=1e-4)


@pytest.mark.parametrize("kind", NEW)
def test_rl_stream_state_is_constant_size(kind, one_thread):
    from tasks.rl.acting import Agent

    agent = Agent(decision_model(kind), 0.0, 1.0, 4, "stream", max_ep_len=50)
    agent.reset(2)
    sizes = set()
    for _ in range(25):
        agent.act(np.zeros((2, S), np.float32))
        agent.update(np.zeros((2, A), np.float32), np.zeros(2, np.float32))
        sizes.add(agent.state.nbytes())
    assert len(sizes) == 1


@pytest.mark.parametrize("kind", NEW)
def test_rl_action_prediction_is_causal(kind):
    m = decision_model(kind)
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


# --------------------------------------------------------------------------------------
# Events: the streaming predictor and the batch pass
# --------------------------------------------------------------------------------------


def event_model(kind, num_marks=4, time_encoding="absolute", seed=0):
    from tasks.events.model import EventModel

    torch.manual_seed(seed)
    bb = build_backbone(dict(mixer=kind, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1))
    return EventModel(bb, num_marks=num_marks, time_scale=0.7, n_components=3, time_encoding=time_encoding).eval()


def event_seqs(n=(7, 4, 9), num_marks=4, seed=0):
    from tasks.events.data import EventSeqs

    g = torch.Generator().manual_seed(seed)
    times = [torch.cumsum(torch.rand(k, generator=g, dtype=torch.float64) + 0.05, 0).numpy() + 0.2 for k in n]
    marks = [torch.randint(0, num_marks, (k,), generator=g).numpy() for k in n]
    return EventSeqs.build(times, marks, t_start=0.0, t_end=100.0, num_marks=num_marks)


@pytest.mark.parametrize("time_encoding", ["absolute", "absolute+log_dt"])
@pytest.mark.parametrize("kind", NEW)
def test_events_streaming_equals_batch(kind, time_encoding):
    from tasks.events.data import collate
    from tasks.events.stream import StreamingPredictor

    model = event_model(kind, time_encoding=time_encoding)
    seqs = event_seqs()
    idx = [0, 2]  # sequence 0 is padded to the length of sequence 2 in the batch
    mix, logits = model(collate(seqs, idx))
    for b, s in enumerate(idx):
        pred = StreamingPredictor(model, batch=1, t_start=0.0)
        for i, (t, k) in enumerate(zip(seqs.times[s], seqs.marks[s])):
            m, lg = pred.observe(t, int(k))
            torch.testing.assert_close(m.mu[0], mix.mu[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m.sigma[0], mix.sigma[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m.log_w[0], mix.log_w[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lg[0], logits[b, i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", NEW)
def test_events_padding_does_not_change_outputs(kind):
    from tasks.events.data import collate

    model = event_model(kind)
    seqs = event_seqs()
    alone = model(collate(seqs, [1]))
    padded = model(collate(seqs, [1, 2]))  # sequence 1 padded from 4 to 9 events
    torch.testing.assert_close(padded[0].mu[0, :4], alone[0].mu[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1][0, :4], alone[1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", NEW)
def test_events_stream_state_is_constant_size(kind):
    from tasks.events.stream import StreamingPredictor

    seqs = event_seqs(n=(40,))
    pred = StreamingPredictor(event_model(kind), batch=1)
    seen = set()
    for t, k in zip(seqs.times[0], seqs.marks[0]):
        pred.observe(t, int(k))
        seen.add(pred.state_bytes())
    assert len(seen) == 1
