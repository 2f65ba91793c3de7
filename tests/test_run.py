"""The run loop: Hydra composition, records, skipping finished cells, resuming, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from aaren_bench.results import is_done, iter_records, load_record, write_json_atomic
from aaren_bench.run import train

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")


def cfg_for(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        return compose("config", overrides=list(overrides))


def test_defaults_and_overrides():
    cfg = cfg_for("model=transformer", "model.d_model=64", "seed=3")
    assert cfg.task.name == "classify" and cfg.dataset.name == "JapaneseVowels"
    assert cfg.model.name == "transformer" and cfg.model.d_model == 64 and cfg.model.n_layers == 3
    assert cfg.cell == "classify/JapaneseVowels/transformer/seed3"
    assert cfg.run_dir.endswith("classify/JapaneseVowels/transformer/seed3")


def test_wrong_task_for_dataset_is_a_clear_error(runs_dir):
    cfg = cfg_for("task=classify", "dataset=JapaneseVowels")
    cfg.dataset.task = "forecast"  # as if a forecasting dataset was picked under task=classify
    with pytest.raises(ValueError, match="task=forecast"):
        train(cfg)


def test_one_epoch_writes_a_complete_record_then_skips(runs_dir):
    over = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
            "trainer.enable_progress_bar=false", "model.d_model=16", "model.n_heads=2", "model.d_ff=16", "model.n_layers=1"]
    cfg = cfg_for(*over)
    rec = train(cfg)
    run_dir = Path(cfg.run_dir)
    assert is_done(run_dir)
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk["cell"] == "classify/JapaneseVowels/aaren/seed0"
    assert 0.0 <= on_disk["metrics"]["test/acc"] <= 1.0 and "test/loss" in on_disk["metrics"]
    assert on_disk["params"]["total"] > on_disk["params"]["backbone"] > 0
    assert on_disk["versions"]["torch"] and on_disk["config"]["model"]["d_model"] == 16
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert [r["cell"] for r in iter_records(runs_dir)] == [rec["cell"]]
    # a second run of the same cell is skipped and returns the stored record
    again = train(cfg_for(*over))
    assert again["wall_time_s"] == on_disk["wall_time_s"]


def test_partial_record_is_not_done(tmp_path):
    (tmp_path / "result.json").write_text('{"task": "classify", "metr')
    assert not is_done(tmp_path)
    write_json_atomic(tmp_path / "result.json", {"task": "t", "dataset": "d", "model": "m", "seed": 0, "metrics": {}})
    assert is_done(tmp_path) and load_record(tmp_path / "result.json")["model"] == "m"
    assert not list(tmp_path.glob(".result.json*"))


def test_train_py_end_to_end(runs_dir):
    """`python train.py ... trainer=debug` through Hydra's own entry point."""
    out = subprocess.run([sys.executable, "train.py", "trainer=debug", "model=transformer", "model.d_model=16",
                          "model.n_heads=2", "model.n_layers=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "classify/JapaneseVowels/transformer/seed0" in out.stdout


def test_unknown_dataset_lists_choices():
    out = subprocess.run([sys.executable, "train.py", "dataset=JapaneseVowel"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "JapaneseVowels" in out.stderr and "Available options" in out.stderr


def test_cell_lock_is_exclusive(tmp_path):
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
