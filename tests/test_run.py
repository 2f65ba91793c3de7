"""The run loop: the task contract, records keyed by what was measured, skipping, failures, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from aaren_bench.errors import ConfigError, RunFailed
from aaren_bench.results import is_done, is_failed, iter_records, load_record, write_json_atomic
from aaren_bench.run import train
from aaren_bench.study import compose_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=16", "model.n_layers=1"]
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_as_job(*overrides):
    """Compose and set the Hydra job's config, as train.py's @hydra.main does (the overrides decide the key)."""
    cfg = compose_config(list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # the task function sees the config without its hydra node
        del cfg["hydra"]
    return cfg


@pytest.fixture(autouse=True)
def _no_job_left():
    yield
    HydraConfig.instance().cfg = None


def test_defaults_and_overrides():
    cfg = compose_config(["model=transformer", "seed=3"])
    assert cfg.task.name == "classify" and cfg.dataset.name == "JapaneseVowels" and cfg.protocol.name == "suite"
    assert cfg.model.name == "transformer" and cfg.model.n_layers == 3
    assert cfg.cell == "classify/JapaneseVowels/suite/transformer/seed3"
    assert cfg.run_dir.endswith("classify/JapaneseVowels/suite/transformer/seed3")


def test_wrong_task_for_dataset_is_a_clear_error(runs_dir):
    cfg = compose_config(["task=classify", "dataset=ETTh1"])  # the command line's task wins over the dataset's
    with pytest.raises(ConfigError, match="belongs to task=forecast"):
        train(cfg)


def test_one_epoch_writes_a_complete_record_then_skips(runs_dir, caplog):
    cfg = run_as_job(*SHORT, *TINY, "tag=tiny")
    rec = train(cfg)
    run_dir = Path(cfg.run_dir)
    assert is_done(run_dir)
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["cell"] == "classify/JapaneseVowels/suite+tiny/aaren/seed0" == cfg.cell
    assert on_disk["protocol"] == "suite" and on_disk["tag"] == "tiny" and on_disk["primary_metric"] == "test/acc"
    assert 0.0 <= on_disk["metrics"]["test/acc"] <= 1.0 and "test/loss" in on_disk["metrics"]
    p = on_disk["params"]
    assert p["total"] == p["embedding"] + p["backbone"] + p["head"] and p["backbone"] > 0
    assert on_disk["versions"]["torch"] and on_disk["config"]["model"]["d_model"] == 16
    assert "model.d_model=16" in on_disk["measuring_overrides"]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / ".hydra" / "overrides.yaml").exists()
    assert [r["cell"] for r in iter_records(runs_dir)] == [rec["cell"]]
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    # a second run of the same cell is skipped, returns the stored record and rewrites nothing;
    # with other (neutral) overrides it says so
    again = train(run_as_job(*SHORT, *TINY, "tag=tiny", "trainer.precision=bf16-mixed"))
    assert again["wall_time_s"] == on_disk["wall_time_s"]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == saved
    assert "done with other overrides" in caplog.text


def test_measuring_overrides_never_land_in_the_paper_cell(runs_dir):
    paper = compose_config(["seed=1"]).cell
    for extra in (["trainer.limit_train_batches=2"], ["model.d_model=16"], ["task.optimizer.lr=0.5"]):
        cfg = run_as_job("seed=1", *extra)
        assert cfg.cell != paper and "/suite+x" in cfg.cell, extra
    smoke = run_as_job(*SHORT, *TINY)
    rec = train(smoke)
    assert rec["cell"] != paper and not (runs_dir / paper).exists()
    from aaren_bench.tables import build_tables

    (table,) = build_tables(runs_dir, wanted=(4,), seeds=1)
    assert all(v is None for r in table.rows for v in r.cells.values()), "a tagged run is no table entry"
    (tagged,) = build_tables(runs_dir, wanted=(4,), seeds=1, tags=True)
    assert any(r.name.startswith("JapaneseVowels +x") for r in tagged.rows)


def test_two_protocols_two_records_both_in_the_tables(runs_dir):
    for proto in ("suite", "tslib"):
        train(run_as_job(*SHORT, *TINY, "tag=t", f"protocol={proto}"))
    recs = {r["protocol"]: r for r in iter_records(runs_dir)}
    assert set(recs) == {"suite", "tslib"} and recs["suite"]["cell"] != recs["tslib"]["cell"]
    from aaren_bench.tables import build_tables

    tables = build_tables(runs_dir, wanted=(4,), seeds=1, tags=True)
    assert [t.protocol for t in tables] == ["suite", "tslib"]
    for t in tables:
        assert any(r.cells[("aaren", "test/acc")] for r in t.rows), t.protocol


def test_divergence_is_a_failure_not_a_result(runs_dir):
    cfg = run_as_job(*SHORT, *TINY, "task.optimizer.lr=1e12", "task.grad_clip=null", "tag=diverge")
    with pytest.raises(RunFailed, match="not finite|training loss is"):
        train(cfg)
    run_dir = Path(cfg.run_dir)
    assert not is_done(run_dir) and is_failed(run_dir)
    assert "reason" in json.loads((run_dir / "failed.json").read_text())


def test_sweep_returns_the_tasks_primary_metric(runs_dir):
    from aaren_bench.run import main_entry

    cfg = run_as_job(*SHORT, *TINY, "dataset=ETTh1", "task.pred_len=96", "tag=s", "trainer.limit_test_batches=2")
    try:
        value = main_entry(cfg)
    except SystemExit:
        pytest.skip("ETTh1 is not on this machine")
    rec = load_record(Path(cfg.run_dir) / "result.json")
    assert rec["primary_metric"] == "test/mse" and value == rec["metrics"]["test/mse"]


def test_partial_record_is_not_done(tmp_path):
    (tmp_path / "result.json").write_text('{"task": "classify", "metr')
    assert not is_done(tmp_path)
    write_json_atomic(tmp_path / "result.json", {"task": "t", "dataset": "d", "model": "m", "seed": 0, "metrics": {}})
    assert is_done(tmp_path) and load_record(tmp_path / "result.json")["model"] == "m"
    assert not list(tmp_path.glob(".result.json*"))


def test_train_py_end_to_end(runs_dir):
    """`python train.py ... trainer=debug` through Hydra's own entry point; a smoke run leaves no folder."""
    out = subprocess.run([sys.executable, "train.py", "trainer=debug", "model=transformer", *TINY],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "classify/JapaneseVowels/suite+x" in out.stdout and "smoke run" in out.stdout
    assert not runs_dir.exists() or not any(runs_dir.rglob("*.json"))


def test_user_errors_print_a_message_not_a_traceback(runs_dir, tmp_path):
    env = {**os.environ, "AAREN_DATA": str(tmp_path), "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run([sys.executable, "train.py", "dataset=Mooc"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: dataset 'Mooc'" in out.stderr and "Traceback" not in out.stderr
    assert not runs_dir.exists() or not any(runs_dir.rglob("*.json")), "a failed start leaves no cell folder"
    assert not (runs_dir / "events" / "Mooc").exists()
    env["HYDRA_FULL_ERROR"] = "1"
    out = subprocess.run([sys.executable, "train.py", "dataset=Mooc"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_unknown_dataset_lists_choices():
    out = subprocess.run([sys.executable, "train.py", "dataset=JapaneseVowel"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    first = out.stderr.splitlines()[0]
    assert first.startswith("error: Could not find 'dataset/JapaneseVowel': choose one of") and "JapaneseVowels," in first


def test_cell_lock_is_exclusive_and_a_busy_cell_fails(tmp_path, runs_dir):
    from aaren_bench.errors import CellBusy
    from aaren_bench.run import cell_lock, usable_checkpoint

    with cell_lock(tmp_path) as first:
        with cell_lock(tmp_path) as second:
            assert first and not second
    with cell_lock(tmp_path) as again:
        assert again  # released on exit
    torn = tmp_path / "last.ckpt"
    torn.write_bytes(b"PK\x03\x04 truncated")
    assert not usable_checkpoint(torn)
    assert not torn.exists() and (tmp_path / "last.ckpt.unreadable").exists()
    cfg = run_as_job(*SHORT, *TINY, "tag=busy")
    with cell_lock(Path(cfg.run_dir)):
        with pytest.raises(CellBusy, match="running in another process"):
            train(cfg)


def test_checkpoint_of_another_shape_is_a_clear_error(runs_dir):
    from aaren_bench.errors import CheckpointMismatch

    cfg = run_as_job(*SHORT, *TINY, "tag=shape", "skip_done=false")
    train(cfg)
    (Path(cfg.run_dir) / "result.json").unlink()
    wider = run_as_job(*SHORT, *TINY, "tag=shape", "skip_done=false", "model.d_ff=32")
    with pytest.raises(CheckpointMismatch, match="(?s)another shape.*delete"):
        train(wider)
