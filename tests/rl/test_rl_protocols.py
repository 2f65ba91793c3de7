"""The RL protocols (suite, mindt, dt) as config files, their cells, and the evaluation curve in the
record and the logger: the reported statistic is the last evaluation (suite, dt) or the best
checkpoint of the curve evaluated again (mindt), and both statistics are recorded."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("mujoco")

from aaren_bench.cli import main as cli  # noqa: E402
from aaren_bench.run import train  # noqa: E402
from aaren_bench.study import Cell, compose_config  # noqa: E402
from tasks.rl import target_returns  # noqa: E402
from tasks.rl.module import DecisionModule, Evaluation  # noqa: E402

TINY = [
    "task.backbone.d_model=16", "task.backbone.n_layers=1", "task.backbone.d_ff=32",
    "task.batch_size=4", "task.steps_per_epoch=2", "task.max_steps=6", "task.warmup_steps=2", "task.context_len=5",
    "task.eval_episodes=2", "task.eval_batch=2", "task.max_ep_len=20",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


@pytest.mark.parametrize("protocol, want", [
    ("suite", dict(steps_per_epoch=2000, max_steps=20000, sampling="length", window_start="fit", eval_episodes=10,
                   monitor=None, norm_first=False, activation="gelu", targets=(3600.0,))),
    ("mindt", dict(steps_per_epoch=100, max_steps=20000, sampling="uniform", window_start="fit", eval_episodes=10,
                   monitor="val/normalized_score", norm_first=False, activation="gelu", targets=(3600.0,))),
    ("dt", dict(steps_per_epoch=10000, max_steps=100000, sampling="length", window_start="any", eval_episodes=100,
                monitor=None, norm_first=True, activation="relu", targets=(3600.0, 1800.0))),
])
def test_protocol_files(protocol, want):
    cfg = compose_config(["dataset=hopper-medium", f"protocol={protocol}", "model=transformer"])
    t = cfg.task
    got = dict(steps_per_epoch=t.steps_per_epoch, max_steps=t.max_steps, sampling=t.sampling,
               window_start=t.window_start, eval_episodes=t.eval_episodes, monitor=t.monitor,
               norm_first=cfg.model.norm_first, activation=cfg.model.activation, targets=target_returns(cfg))
    assert got == want
    assert t.eval_curve and t.context_len == 20 and t.batch_size == 64 and t.optimizer.lr == 1e-4
    assert cfg.cell == f"rl/hopper-medium/{protocol}/transformer/seed0"
    assert Cell.parse(cfg.cell).protocol == protocol


def test_dt_targets_per_env_and_ant_falls_back():
    assert target_returns(compose_config(["dataset=halfcheetah-medium", "protocol=dt"])) == (12000.0, 6000.0)  # kzl's order
    assert target_returns(compose_config(["dataset=walker2d-medium-expert", "protocol=dt"])) == (5000.0, 2500.0)
    assert target_returns(compose_config(["dataset=ant-medium", "protocol=dt"])) == (6000.0,)  # neither anchor has ant
    cfg = compose_config(["dataset=hopper-medium", "protocol=dt", "task.target_returns.hopper=[3000]"])
    assert target_returns(cfg) == (3000.0,)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("d4rl") / "hc.hdf5"
    assert cli(["collect", "--env", "halfcheetah", "--episodes", "3", "--max-steps", "30", "--seed", "1",
                "--out", str(out)]) == 0
    return out


def metrics_csv(run_dir) -> list[dict]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_suite_curve_last_evaluation_is_the_test(collected, runs_dir):
    cfg = compose_config(["dataset=halfcheetah-collected", f"dataset.file={collected}", "model=aaren", *TINY])
    rec = train(cfg)
    ev = rec["evaluation"]
    assert [p["step"] for p in ev["curve"]] == [2, 4, 6]  # after every epoch; the last one is the test itself
    assert ev["curve"][-1].get("test") and ev["reported"] == "last" and rec["selection"] is None
    assert rec["metrics"]["test/normalized_score"] == pytest.approx(ev["last"]["normalized_score"])
    assert rec["metrics"]["test/best_eval_normalized_score"] == pytest.approx(ev["best"]["normalized_score"])
    assert rec["data_source"]["source"] == "file"
    rows = metrics_csv(runs_dir / cfg.cell)
    logged = [float(r["val/normalized_score"]) for r in rows if r.get("val/normalized_score")]  # the logger's curve
    assert logged == pytest.approx([p["normalized_score"] for p in ev["curve"][:2]], rel=1e-5)
    saved = json.loads((runs_dir / cfg.cell / "result.json").read_text())
    assert saved["evaluation"]["curve"] == json.loads(json.dumps(ev["curve"]))


def test_mindt_tests_the_best_checkpoint_again(collected, runs_dir):
    cfg = compose_config(["dataset=halfcheetah-collected", f"dataset.file={collected}", "protocol=mindt",
                          "model=transformer", *TINY])
    rec = train(cfg)
    ev, m = rec["evaluation"], rec["metrics"]
    assert [p["step"] for p in ev["curve"]] == [2, 4, 6] and not any(p.get("test") for p in ev["curve"])
    assert rec["selection"] == {"metric": "val/normalized_score", "mode": "max"}
    best = max(ev["curve"], key=lambda p: p["normalized_score"])
    assert rec["best_checkpoint"].endswith("best.ckpt") and m["test/best_eval_step"] == best["step"]
    assert m["test/best_eval_normalized_score"] == pytest.approx(best["normalized_score"])
    assert m["test/last_eval_normalized_score"] == pytest.approx(ev["curve"][-1]["normalized_score"])
    assert np.isfinite(m["test/normalized_score"])  # fresh episodes (other seeds than the curve's)
    assert ev["reported"].startswith("best checkpoint")


def test_dt_two_targets_recorded(collected, runs_dir):
    cfg = compose_config(["dataset=halfcheetah-collected", f"dataset.file={collected}", "protocol=dt", "model=aaren",
                          "task.target_returns.halfcheetah=[100,0]", *TINY])
    rec = train(cfg)
    m, ev = rec["metrics"], rec["evaluation"]
    assert ev["targets"] == [100.0, 0.0] and ev["reported_target"] == 100.0
    assert m["test/normalized_score"] == m["test/normalized_score@100"] and "test/normalized_score@0" in m
    assert list(ev["curve"][0]["by_target"]) == ["100", "0"]


def test_selection_without_curve_is_refused(collected, runs_dir):
    from aaren_bench.errors import ConfigError
    from aaren_bench.run import build

    cfg = compose_config(["dataset=halfcheetah-collected", f"dataset.file={collected}", "protocol=mindt",
                          "task.eval_curve=false", *TINY])
    with pytest.raises(ConfigError, match="task.eval_curve"):
        build(cfg)


def test_curve_travels_in_checkpoints():
    """A resumed run keeps its earlier points; loading the (older) best checkpoint for the test keeps the full curve."""
    ev = Evaluation(env="halfcheetah", targets=(0.0,), rtg_scale=1.0, context_len=2)
    a = DecisionModule(model=None, optimizer=None, evaluation=ev)
    a.curve = [{"step": 2}, {"step": 4}]
    ckpt = {}
    a.on_save_checkpoint(ckpt)
    fresh = DecisionModule(model=None, optimizer=None, evaluation=ev)
    fresh.on_load_checkpoint(ckpt)
    assert fresh.curve == a.curve
    a.curve.append({"step": 6})
    a.on_load_checkpoint({"rl_eval_curve": [{"step": 2}]})
    assert [p["step"] for p in a.curve] == [2, 4, 6]
