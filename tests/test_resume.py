"""Exact resume: a run killed mid-epoch or at an epoch end and resubmitted ends with the same
weights (bit for bit), the same test metrics and the same metrics.csv as an uninterrupted run."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from aaren_bench import run
from aaren_bench.data import DatasetNotFound
from aaren_bench.resume import (
    EpochShuffle,
    MidEpochCheckpoint,
    ResumableLoader,
    RunState,
    rng_states,
    set_rng_states,
)
from aaren_bench.study import compose_config

TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=16", "model.n_layers=1"]
N_BATCHES, EPOCHS = 4, 3  # 12 optimizer steps
SHORT = [f"trainer.max_epochs={EPOCHS}", f"trainer.limit_train_batches={N_BATCHES}", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=3", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "checkpoint_every_min=null", "task.patience=null"]
TASKS = {
    "classify": ["dataset=JapaneseVowels"],
    "forecast": ["dataset=ETTh1", "task.pred_len=96", "task.seq_len=48", "task.label_len=24", "task.batch_size=8"],
}


class Killed(Exception):
    """The job was killed (by the scheduler, a node failure, a time limit)."""


class KillAt(L.Callback):
    """Kill the job before training step ``step`` + 1, or during the validation that follows step ``step``."""

    def __init__(self, step: int, during_validation: bool = False):
        self.step, self.during_validation = step, during_validation

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.during_validation:
            raise Killed(f"killed before step {self.step + 1}")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == self.step and self.during_validation and not trainer.sanity_checking:
            raise Killed(f"killed in the validation after step {self.step}")


def _cfg(task: str, root: Path):
    return compose_config([*TASKS[task], *TINY, *SHORT, "tag=resume", f"paths.runs={root}"])


def _killed_then_resubmitted(cfg, monkeypatch, kill_at: int, save_every: int | None, in_validation: bool = False):
    """Train with a checkpoint every ``save_every`` steps (checkpoint_every_min's kind, which writes
    last.ckpt mid-epoch, here on a step count instead of a clock) and a kill before step
    ``kill_at`` + 1 (or in the validation after it); then run the cell again."""
    make = run.make_callbacks

    def with_kill(cfg, run_dir, task):
        cbs = make(cfg, run_dir, task)
        if save_every:
            cbs.append(MidEpochCheckpoint(dirpath=str(run_dir / "checkpoints"), monitor=None, save_top_k=0,
                                          save_last=True, every_n_train_steps=save_every, enable_version_counter=False))
        return cbs + [KillAt(kill_at, in_validation)]

    with monkeypatch.context() as m:
        m.setattr(run, "make_callbacks", with_kill)
        with pytest.raises(Killed):
            run.train(cfg)
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    t0 = time.perf_counter()
    rec = run.train(cfg)
    return rec, ckpt, time.perf_counter() - t0


def _weights(run_dir: str, name: str) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / name, weights_only=True)["state_dict"]


def _rows(run_dir: str) -> list[dict]:
    with open(Path(run_dir) / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of a task (run once, shared by the kill tests)."""
    done = {}

    def get(task: str):
        if task not in done:
            cfg = _cfg(task, tmp_path_factory.mktemp(f"full-{task}"))
            try:
                done[task] = (cfg, run.train(cfg))
            except DatasetNotFound as e:
                pytest.skip(f"the {task} test data is not on this machine: {e}")
        return done[task]

    return get


# (kill before step k + 1, mid-epoch checkpoint every n steps, kill in the validation after step k):
# - mid-epoch: checkpoint at step 5 (batch 1 of epoch 1), kill at step 7 (steps 6, 7 trained again)
# - epoch-end: last.ckpt of the end of epoch 1 (step 8), kill before the first batch of epoch 2
# - last-batch: a mid-epoch checkpoint due at the last batch of epoch 1 (step 8), kill in the
#   validation that follows (Lightning would resume after that validation without running it)
KILLS = {"mid-epoch": (7, 5, False), "epoch-end": (2 * N_BATCHES, None, False),
         "last-batch": (2 * N_BATCHES, 2 * N_BATCHES, True)}


@pytest.mark.parametrize("kill", KILLS)
@pytest.mark.parametrize("task", TASKS)
def test_killed_and_resubmitted_run_ends_as_the_uninterrupted_one(task, kill, uninterrupted, tmp_path, monkeypatch,
                                                                   one_thread):
    full_cfg, full = uninterrupted(task)
    cfg = _cfg(task, tmp_path)
    kill_at, save_every, in_validation = KILLS[kill]
    rec, ckpt, second_s = _killed_then_resubmitted(cfg, monkeypatch, kill_at, save_every, in_validation)
    # the kill lost the steps after the checkpoint (last-batch: the due checkpoint waits for the epoch's end)
    assert ckpt["global_step"] == {"mid-epoch": 5, "epoch-end": 8, "last-batch": N_BATCHES}[kill]
    assert rec["metrics"] == full["metrics"]  # exact: every bit of every test metric
    assert rec["global_steps"] == full["global_steps"] == N_BATCHES * EPOCHS
    for name in ("last.ckpt", *(["best.ckpt"] if full["best_checkpoint"] else [])):
        mine, theirs = _weights(cfg.run_dir, name), _weights(full_cfg.run_dir, name)
        assert mine.keys() == theirs.keys()
        for k in theirs:
            assert torch.equal(mine[k], theirs[k]), f"{name}: {k} differs"
    # metrics.csv holds every epoch and every step once, as the uninterrupted run's
    rows, full_rows = _rows(cfg.run_dir), _rows(full_cfg.run_dir)
    trained = [r for r in rows if r["train/loss_step"]]
    assert [int(r["step"]) for r in trained] == list(range(N_BATCHES * EPOCHS))
    assert {r["epoch"] for r in rows if r["val/loss"]} == {str(e) for e in range(EPOCHS)}
    assert rows == full_rows
    # the wall time counts both attempts (up to the checkpoint, then the resumed part)
    before = ckpt["callbacks"]["RunState"]["elapsed_s"]
    assert rec["attempts"] == 2 and full["attempts"] == 1
    assert before < rec["wall_time_s"]["fit"] <= before + second_s


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_after_any_batch(workers):
    """A loader state saved after k batches of an epoch, loaded into a fresh loader: the rest of
    that epoch is the same batches, and the next epoch is untouched; with worker processes too
    (kept across epochs, as GPU runs use them)."""
    ds = TensorDataset(torch.arange(23))

    def fresh():
        return ResumableLoader(ds, batch_size=4, seed=7, num_workers=workers, persistent_workers=workers > 0)

    def epoch(loader, e):
        loader.sampler.set_epoch(e)
        return [b[0].tolist() for b in loader]

    ref = fresh()
    whole = epoch(ref, 1)
    assert sorted(i for b in whole for i in b) == list(range(23)) and whole != epoch(ref, 2)  # a permutation, new each epoch
    assert epoch(fresh(), 1) == whole  # (seed, epoch) alone decide the order
    for k in range(len(whole) + 1):
        a = fresh()
        a.sampler.set_epoch(1)
        it = iter(a)
        for _ in range(k):
            next(it)
        state = a.state_dict()
        assert state["batches"] == k and (k == 0 or state["epoch"] == 1)
        b = fresh()
        b.load_state_dict(state)
        assert epoch(b, 1) == whole[k:]
        assert epoch(b, 1) == whole  # the skip applies once
        c = fresh()
        c.load_state_dict(state)
        assert epoch(c, 2) == epoch(fresh(), 2)  # a state of another epoch skips nothing


def test_loader_draws_nothing_from_the_global_generator():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader = ResumableLoader(TensorDataset(torch.arange(10)), batch_size=3, seed=1)
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_epoch_shuffle_in_order():
    assert list(EpochShuffle(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_random_states_round_trip_through_a_safe_checkpoint(tmp_path):
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    torch.rand(3), np.random.rand(3), random.random(), np.random.randn()  # move each generator (and numpy's gauss)
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    want = torch.rand(4), np.random.rand(4), random.random(), np.random.randn()
    set_rng_states(torch.load(path, weights_only=True))  # a checkpoint Lightning loads with weights_only
    got = torch.rand(4), np.random.rand(4), random.random(), np.random.randn()
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2:] == want[2:]


def test_run_state_counts_earlier_attempts():
    first = RunState()
    first.setup(None, None, "fit")
    time.sleep(0.01)
    state = first.state_dict()
    second = RunState()
    second.load_state_dict(state)
    second.setup(None, None, "fit")
    assert second.attempts == 2 and second.elapsed() >= state["elapsed_s"] >= 0.01


def test_loader_workers_from_the_job_cpus(monkeypatch):
    from aaren_bench.resume import loader_workers
    from aaren_bench.study import compose_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader_workers() == 0 and compose_config(["task=events"]).task.num_workers == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert loader_workers() == 5 and compose_config(["task=classify"]).task.num_workers == 5
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    assert loader_workers() == 8
