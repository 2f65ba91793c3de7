"""Records and cell folders kept clean: one record per cell key, unreadable records reported and
not done, checkpoints written whole, temporary files cleaned, a refused job leaving the lock
alone, and restart=true moving a finished cell aside."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from aaren_bench.cellfiles import cell_lock, clean_stray_temp, is_unstarted, remove_unstarted
from aaren_bench.cli import main
from aaren_bench.plan import cell_status
from aaren_bench.results import is_done, load_failure, read_record, scan_records, write_json_atomic
from aaren_bench.study import Cell

JV = "classify/JapaneseVowels/suite/{model}/seed{seed}"


def record(runs: Path, model: str, seed: int, acc: float, where: str | None = None) -> Path:
    cell = JV.format(model=model, seed=seed)
    rec = {"task": "classify", "dataset": "JapaneseVowels", "model": model, "seed": seed, "protocol": "suite",
           "tag": None, "cell": cell, "metrics": {"test/acc": acc}}
    return write_json_atomic(runs / (where or cell) / "result.json", rec)


@pytest.fixture
def messy_runs(tmp_path) -> Path:
    """Two seeds of each backbone, plus: a copied folder, a conflicting copy, a corrupt record,
    a non-UTF-8 record, a failed cell with an empty reason, and a folder moved aside."""
    runs = tmp_path / "runs"
    for seed, (a, t) in enumerate([(0.90, 0.91), (0.92, 0.93)]):
        record(runs, "aaren", seed, a)
        record(runs, "transformer", seed, t)
    shutil.copytree(runs / JV.format(model="aaren", seed=0), runs / "classify/JapaneseVowels/suite/aaren/seed0 copy")
    record(runs, "transformer", 1, 0.99, where="backup/transformer-seed1")  # same key, other numbers
    corrupt = runs / JV.format(model="aaren", seed=2)
    corrupt.mkdir(parents=True)
    (corrupt / "result.json").write_text('{"task": "classify", "metr')
    latin = runs / JV.format(model="aaren", seed=3)
    latin.mkdir(parents=True)
    rec = {"task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 3, "metrics": {}, "note": "é"}
    (latin / "result.json").write_bytes(json.dumps(rec, ensure_ascii=False).encode("latin-1"))  # not UTF-8
    failed = runs / JV.format(model="transformer", seed=2)
    failed.mkdir(parents=True)
    (failed / "failed.json").write_text('{"cell": "x", "reason": ""}')
    record(runs, "aaren", 4, 0.1, where=JV.format(model="aaren", seed=4) + ".old-20260101T000000Z")
    return runs


def test_one_record_per_cell_and_every_problem_reported(messy_runs):
    records, problems = scan_records(messy_runs)
    keys = sorted(r["_cell"].key for r in records)
    assert keys == sorted(JV.format(model=m, seed=s) for m in ("aaren", "transformer") for s in (0, 1))
    t1 = next(r for r in records if r["_cell"].key == JV.format(model="transformer", seed=1))
    assert t1["metrics"]["test/acc"] == 0.93, "the record in the cell's own folder counts"
    text = "\n".join(problems)
    assert "seed0 copy/result.json is a copy of the record" in text and "counted once" in text
    assert "backup/transformer-seed1/result.json and" in text and "two different records" in text
    assert "seed2/result.json cannot be read (JSONDecodeError" in text
    assert "seed3/result.json cannot be read (UnicodeDecodeError" in text
    assert ".old-" not in text and len(problems) == 4


def test_unreadable_records_and_empty_failures_are_not_done(messy_runs):
    latin = messy_runs / JV.format(model="aaren", seed=3)
    assert read_record(latin / "result.json")[0] is None and not is_done(latin)
    assert cell_status(Cell.parse(JV.format(model="aaren", seed=3)), messy_runs) == "pending"
    failed = messy_runs / JV.format(model="transformer", seed=2)
    assert "gives no reason" in load_failure(failed)["reason"]
    assert cell_status(Cell.parse(JV.format(model="transformer", seed=2)), messy_runs) == "failed"


def test_tables_and_plan_on_a_messy_runs_root(messy_runs, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="aaren_bench")
    out = tmp_path / "tables"
    assert main(["tables", "--runs", str(messy_runs), "--out", str(out), "--seeds", "2"]) == 0
    row = next(ln for ln in (out / "table4_classify.md").read_text().splitlines() if ln.startswith("| JapaneseVowels"))
    # two seeds each (0.90, 0.92 and 0.91, 0.93): neither copy is counted (with them: 3 seeds, other means)
    assert row.startswith("| JapaneseVowels | 92.0 ± 1.4 | 91.0 ± 1.4 |"), row
    assert sum("warning:" in r.getMessage() for r in caplog.records) == 4
    assert main(["plan", "--runs", str(messy_runs), "--tasks", "classify"]) == 0


def test_stray_temporary_files_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stray = [tmp_path / ".result.json.abc123.tmp", tmp_path / "checkpoints" / ".best.ckpt.4242.tmp"]
    for p in stray:
        p.write_text("half")
    keep = tmp_path / "result.json"
    keep.write_text("{}")
    assert clean_stray_temp(tmp_path) == sorted(stray)
    assert keep.exists() and not any(p.exists() for p in stray)


def test_a_failed_start_leaves_no_folder_but_a_started_one_is_kept(tmp_path):
    cell = tmp_path / "runs" / "classify" / "X" / "suite" / "aaren" / "seed0"
    (cell / ".hydra").mkdir(parents=True)
    (cell / "train.log").write_text("log")
    (cell / ".lock").write_text("")
    assert is_unstarted(cell) and not remove_unstarted(cell, keep_lock=True)
    assert remove_unstarted(cell) and not cell.exists() and not (tmp_path / "runs" / "classify").exists()
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert not is_unstarted(cell) and not remove_unstarted(cell) and cell.exists()


def test_atomic_checkpoint_leaves_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from aaren_bench.resume import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "best.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=False)["step"] == 1

    def disk_full(self, checkpoint, p, storage_options=None):
        Path(p).write_bytes(b"PK\x03\x04 torn")
        raise OSError(28, "No space left on device", str(p))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=False)["step"] == 1, "the previous checkpoint is intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"], "no temporary file left"


def test_a_refused_job_never_removes_the_running_jobs_lock(tmp_path, runs_dir):
    from aaren_bench.errors import CellBusy
    from aaren_bench.run import train
    from aaren_bench.study import compose_config

    cfg = compose_config(["tag=busy", "trainer.max_epochs=1"])
    run_dir = Path(cfg.run_dir)
    with cell_lock(run_dir) as held:  # the running job, just started: its folder holds only the lock
        assert held
        with pytest.raises(CellBusy):
            train(cfg)
        assert (run_dir / ".lock").exists(), "the refused job removed the running job's lock"


def test_disk_full_is_the_suites_message(monkeypatch, capsys):
    from aaren_bench.errors import storage_error

    err = storage_error(OSError(28, "No space left on device", "/runs/x/checkpoints/best.ckpt"))
    assert err.exit_code == 74 and "cannot write /runs/x/checkpoints/best.ckpt: no space left" in str(err)
    assert storage_error(OSError(2, "No such file")) is None
    assert os.EX_IOERR == 74


def test_debug_leaves_a_finished_cell_and_restart_trains_it_from_scratch(runs_dir, caplog):
    from aaren_bench.results import load_record
    from aaren_bench.run import train
    from aaren_bench.study import compose_config

    over = ["tag=again", "model.d_model=16", "model.n_heads=2", "model.d_ff=16", "model.n_layers=1", "logger=none",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    run_dir = Path(compose_config(over).run_dir)
    finished = {"task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 0, "metrics": {"test/acc": -1.0}}
    write_json_atomic(run_dir / "result.json", finished)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the finished run's")

    caplog.set_level(logging.INFO, logger="aaren_bench")
    train(compose_config([*over, "trainer=debug"]))
    assert "smoke run of the finished cell" in caplog.text
    assert load_record(run_dir / "result.json")["metrics"]["test/acc"] == -1.0, "trainer=debug leaves the record"

    rec = train(compose_config([*over, "restart=true"]))
    aside = list(run_dir.parent.glob(f"{run_dir.name}.old-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "last.ckpt").read_bytes() == b"the finished run's"
    assert rec["global_steps"] == 2 and rec["metrics"]["test/acc"] >= 0, "trained from scratch, not resumed"
    assert load_record(run_dir / "result.json")["metrics"] == rec["metrics"]
    assert [r["_cell"].key for r in scan_records(runs_dir)[0]] == [rec["cell"]], "the folder aside is not read"


def test_restart_sets_aside_only_an_ended_cell(tmp_path):
    """A requeued restart=true job finds its own new training without a record and resumes it."""
    from aaren_bench.run import _restart

    cell_dir, cell = tmp_path / "seed0", Cell.parse(JV.format(model="aaren", seed=0))
    (cell_dir / "checkpoints").mkdir(parents=True)
    (cell_dir / "checkpoints" / "last.ckpt").write_bytes(b"training")
    _restart(cell_dir, cell)
    assert (cell_dir / "checkpoints" / "last.ckpt").exists() and not list(tmp_path.glob("seed0.old-*"))
    (cell_dir / "failed.json").write_text('{"reason": "diverged"}')
    _restart(cell_dir, cell)
    assert not cell_dir.exists() and len(list(tmp_path.glob("seed0.old-*"))) == 1
