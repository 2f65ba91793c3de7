"""The run loop on a cluster: SIGTERM, moved and copied runs folders, sweeps that go on, one record
from several processes. Each through the run loop (``run.train`` / ``train.py``) on JapaneseVowels."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from aaren_bench import run
from aaren_bench.cluster import Preempted
from aaren_bench.study import compose_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=16", "model.n_layers=1"]
N_BATCHES, EPOCHS = 4, 3
SHORT = [f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={N_BATCHES}", "trainer.limit_val_batches=2",
         "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "checkpoint_every_min=null", "task.patience=null", "dataset=JapaneseVowels"]


def _cfg(root: Path, *extra):
    return compose_config([*TINY, *SHORT, "tag=cluster", f"paths.runs={root}", *extra])


class _Sigterm(L.Callback):
    """Sends this process SIGTERM during training step ``at`` + 1 (as scancel would)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def _weights(run_dir, name="last.ckpt") -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / name, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted run (shared by the tests below), on one thread as they run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _cfg(tmp_path_factory.mktemp("full"))
        return cfg, run.train(cfg)
    finally:
        torch.set_num_threads(n)


def test_sigterm_mid_epoch_exits_non_zero_and_a_moved_folder_resumes_bit_exactly(full, tmp_path, monkeypatch,
                                                                                  one_thread):
    full_cfg, full_rec = full
    cfg = _cfg(tmp_path / "a")
    make = run.make_callbacks
    with monkeypatch.context() as m:
        m.setattr(run, "make_callbacks", lambda *a: make(*a) + [_Sigterm(5)])  # during step 6, batch 2 of epoch 1
        with pytest.raises(SystemExit) as stop:
            run.main_entry(cfg)
    assert stop.value.code == Preempted.exit_code != 0  # the scheduler sees a failure
    ckpt = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6  # the running batch finished, then the checkpoint at that step
    assert not (Path(cfg.run_dir) / "result.json").exists()
    shutil.move(tmp_path / "a", tmp_path / "b")  # the runs folder moved (or mounted elsewhere)
    moved = _cfg(tmp_path / "b")
    rec = run.train(moved)
    assert rec["attempts"] == 2 and rec["metrics"] == full_rec["metrics"]
    assert rec["best_checkpoint"] == full_rec["best_checkpoint"] == "checkpoints/best.ckpt"
    for name in ("last.ckpt", "best.ckpt"):
        mine, theirs = _weights(moved.run_dir, name), _weights(full_cfg.run_dir, name)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name


def test_a_copied_folder_tests_its_own_weights(full, tmp_path, one_thread):
    full_cfg, full_rec = full
    src = Path(full_cfg.paths.runs)
    shutil.copytree(src, tmp_path / "copy")
    cfg = _cfg(tmp_path / "copy")
    (Path(cfg.run_dir) / "result.json").unlink()  # not done: it resumes (training is over) and tests
    aside = src.with_name(src.name + ".gone")
    src.rename(aside)  # the original's checkpoints are gone: only the copy's can be read
    try:
        rec = run.train(cfg)
    finally:
        aside.rename(src)
    assert rec["metrics"] == full_rec["metrics"] and rec["best_checkpoint"] == "checkpoints/best.ckpt"


def _train_py(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_sweep_with_a_diverging_cell_runs_every_cell(tmp_path):
    out = _train_py("-m", "task.optimizer.lr=1e30,1e-3", *TINY, *SHORT, f"paths.runs={tmp_path}")
    assert out.returncode != 0, out.stderr[-2000:]
    assert "1 of 2 cell(s) of this sweep failed" in out.stderr and "RunFailed: training loss is nan" in out.stderr
    assert len(list(tmp_path.rglob("failed.json"))) == 1 and len(list(tmp_path.rglob("result.json"))) == 1


def test_a_local_sweep_on_two_devices_stops_at_start(tmp_path):
    out = _train_py("-m", "seed=0,1", "trainer.accelerator=cpu", "trainer.devices=2", *TINY, *SHORT,
                    f"paths.runs={tmp_path}")
    assert out.returncode != 0 and "in a local -m sweep" in out.stderr and "hydra/launcher=slurm" in out.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_two_devices_through_train_py_write_one_correct_record(tmp_path):
    out = _train_py("trainer.accelerator=cpu", "trainer.devices=2", *TINY, *SHORT, f"paths.runs={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = tmp_path.rglob("result.json")
    rec = json.loads(path.read_text())
    assert rec["world_size"] == 2 and rec["metrics"]["test/samples"] == 370  # every test series once
    one_device = compose_config([*TINY, *SHORT, f"paths.runs={tmp_path}"])
    assert rec["cell"] == one_device.cell  # devices are neutral: the cell of a 1-device run
    # one process, the recorded checkpoint, the whole test set: the same numbers
    built = run.build(one_device)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    one = trainer.test(built.module, datamodule=built.datamodule, ckpt_path=path.parent / rec["best_checkpoint"],
                       verbose=False)[0]
    assert {k: float(v) for k, v in one.items()} == pytest.approx(rec["metrics"], rel=1e-6)


def _two_tasks(root: Path, job: str, *extra, timeout=300) -> list[subprocess.CompletedProcess]:
    """train.py as the 2 tasks of a SLURM job step (SLURM's variables, no SLURM): rank 0 and rank 1 at once."""
    args = [sys.executable, "train.py", "trainer.accelerator=cpu", "trainer.devices=2", *TINY, *SHORT,
            f"paths.runs={root}", *extra]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0",
               "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "AAREN_FOLLOW_TIMEOUT_S": "120"}
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outs)]


def test_when_rank_zero_is_refused_the_cell_every_task_exits_as_it_does(tmp_path):
    from aaren_bench.cellfiles import cell_lock
    from aaren_bench.errors import CellBusy

    run_dir = Path(compose_config([*TINY, *SHORT, f"paths.runs={tmp_path}"]).run_dir)
    with cell_lock(run_dir) as held:  # another job runs the cell
        assert held
        zero, one = _two_tasks(tmp_path, f"{os.getpid()}1")
    assert zero.returncode == one.returncode == CellBusy.exit_code, (zero.stderr[-2000:], one.stderr[-2000:])
    assert "is running in another process" in zero.stderr
    assert "global rank zero stopped cell" in one.stderr and "(exit status 75): CellBusy" in one.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "result.json").exists()


def test_when_rank_zero_skips_a_done_cell_every_task_exits_0(tmp_path):
    cfg = compose_config([*TINY, *SHORT, f"paths.runs={tmp_path}"])
    record = {"cell": cfg.cell, "task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 0,
              "metrics": {"test/acc": 0.5}}
    Path(cfg.run_dir).mkdir(parents=True)
    (Path(cfg.run_dir) / "result.json").write_text(json.dumps(record))
    zero, one = _two_tasks(tmp_path, f"{os.getpid()}2")
    assert zero.returncode == one.returncode == 0, (zero.stderr[-2000:], one.stderr[-2000:])
    assert "already done, skipping" in zero.stderr + zero.stdout
    assert json.loads((Path(cfg.run_dir) / "result.json").read_text()) == record
