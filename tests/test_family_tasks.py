"""Linear attention, Mamba-2, mLSTM and TTT-Linear in all four tasks: every task and protocol runs them.

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
from tests.events.test_events_model_stream import _model, _seqs  # the events model and data helpers

NEW = ["linear_attn", "mamba2", "mlstm", "ttt"]
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
# RL: the stream's state size (stream == window and causality run for every mixer in tests/rl/test_rl_model.py)
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


# --------------------------------------------------------------------------------------
# Events: the stream's state size (stream == batch, padding, causality: tests/events/test_events_model_stream.py)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NEW)
def test_events_stream_state_is_constant_size(kind):
    from tasks.events.stream import StreamingPredictor

    seqs = _seqs(n=(40,))
    pred = StreamingPredictor(_model(kind), batch=1)
    seen = set()
    for t, k in zip(seqs.times[0], seqs.marks[0]):
        pred.observe(t, int(k))
        seen.add(pred.state_bytes())
    assert len(seen) == 1
