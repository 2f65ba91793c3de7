"""Cluster pieces on their own: which process writes, a checkpoint at SIGTERM, checkpoint paths that
move with their folder, a sweep report that lets every cell run, the other processes following rank
zero's decision (run, skip, stop with its exit status, or a timeout with a message)."""
from __future__ import annotations

import json
import os
import shutil
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from aaren_bench.cluster import SaveOnSignal, SweepReport, is_launch_zero, stopped_by_signal
from aaren_bench.resume import RelativeCheckpoint


@pytest.mark.parametrize("env,zero", [
    ({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, False), ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, True),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # Lightning's own child in a 1-task job
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
], ids=str)
def test_global_rank_zero_from_the_launcher(env, zero):
    assert is_launch_zero(env) is zero


class _Signal(L.Callback):
    """Sends this process SIGTERM during training batch ``at`` (as scancel would)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


class _Logged(BoringModel):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("valid_loss", out["x"])
        return out


def _trainer(tmp_path, *callbacks, **kw):
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=10,
                     limit_val_batches=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=list(callbacks), **kw)


def test_sigterm_mid_epoch_writes_a_checkpoint_at_that_step(tmp_path):
    save = SaveOnSignal(tmp_path / "last.ckpt")
    trainer = _trainer(tmp_path, _Signal(3), save, enable_checkpointing=False)
    with pytest.raises(SystemExit) as stop:
        trainer.fit(BoringModel())
    assert stopped_by_signal(stop.value) and save.saved
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4  # the batch running at the signal finished, then the checkpoint


def test_checkpoint_paths_follow_a_moved_or_copied_folder(tmp_path):
    a, b = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    cb = RelativeCheckpoint(dirpath=a, filename="best", monitor="valid_loss", save_top_k=1)
    trainer = _trainer(tmp_path / "a", cb)
    trainer.fit(_Logged())
    assert cb.best_model_path == str(a / "best.ckpt")
    state = torch.load(a / "best.ckpt", weights_only=False)["callbacks"][cb.state_key]
    assert state["best_model_path"] == "best.ckpt" and state["dirpath"] == "."
    assert cb.state_key == ModelCheckpoint(dirpath=a, monitor="valid_loss", save_top_k=1).state_key
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = RelativeCheckpoint(dirpath=b, filename="best", monitor="valid_loss", save_top_k=1)
    moved.load_state_dict(state)
    assert moved.best_model_path == str(b / "best.ckpt") and moved.best_model_score == cb.best_model_score
    # a checkpoint of the plain callback (absolute paths) read in another folder
    old = ModelCheckpoint(dirpath=a, filename="best", monitor="valid_loss", save_top_k=1)
    old.best_model_path, old.best_k_models = str(a / "best.ckpt"), {str(a / "best.ckpt"): cb.best_model_score}
    moved.load_state_dict(old.state_dict())
    assert moved.best_model_path == str(b / "best.ckpt") and list(moved.best_k_models) == [str(b / "best.ckpt")]


def test_sweep_report_lets_the_sweep_go_on_and_fails_at_the_end(monkeypatch, capsys):
    from hydra.core.utils import JobReturn, JobStatus

    import aaren_bench.cluster as C

    monkeypatch.setattr(C, "in_local_sweep", lambda: True)
    report = SweepReport()
    ok, bad = JobReturn(overrides=["seed=0"]), JobReturn(overrides=["seed=1"])
    ok.status, ok.return_value = JobStatus.COMPLETED, 0.5
    bad.status, bad.return_value = JobStatus.FAILED, RuntimeError("training loss is nan at step 3")
    for r in (ok, bad):
        report.on_job_end(None, r)
    assert bad.status == JobStatus.COMPLETED and bad.return_value is None  # the sweeper does not stop here
    with pytest.raises(SystemExit) as end:
        report.on_multirun_end(None)
    assert end.value.code == 1
    assert "1 of 2 cell(s) of this sweep failed" in capsys.readouterr().err


# --- the other processes follow rank zero's decision ----------------------------------------
from aaren_bench.cluster import NoDecision, RankZeroDecision, Stopped, await_decision, launch_id  # noqa: E402
from aaren_bench.errors import CellBusy, ConfigError  # noqa: E402

TASK = {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "41", "SLURM_STEP_ID": "0"}


@pytest.mark.parametrize("env,launch", [
    ({}, None),  # one process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, None),  # started by rank zero's Lightning: nothing to wait for
    ({**TASK, "SLURM_PROCID": "1"}, "slurm-41.0.0"),
    ({**TASK, "SLURM_PROCID": "0", "SLURM_RESTART_COUNT": "1"}, "slurm-41.0.1"),  # requeued: a new launch
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "41", "SLURM_PROCID": "0"}, None),  # a 1-task job
    ({"TORCHELASTIC_RUN_ID": "r", "RANK": "1", "MASTER_PORT": "2950"}, "torchrun-r.0.2950"),
], ids=str)
def test_the_processes_of_a_launch_share_its_name(env, launch):
    assert launch_id(env) == launch


def _lead(root, env, error=None, cell="c/d/p/m/seed0"):
    """Rank zero's block: says ``run`` unless ``error`` leaves it first."""
    with RankZeroDecision(root, cell, env) as decision:
        if error is not None:
            raise error
        decision.tell("run")
    return decision


def test_followers_stop_with_rank_zeros_exit_status(tmp_path):
    zero, one = {**TASK, "SLURM_PROCID": "0"}, {**TASK, "SLURM_PROCID": "1"}
    with pytest.raises(CellBusy):
        _lead(tmp_path, zero, CellBusy("cell c/d/p/m/seed0 is running in another process"))
    with pytest.raises(Stopped, match=r"exit status 75\): CellBusy: cell c/d/p/m/seed0 is running") as stop:
        await_decision(tmp_path, "c/d/p/m/seed0", one)
    assert stop.value.exit_code == CellBusy.exit_code == 75
    with pytest.raises(ConfigError, match="every process of a run needs the same command"):
        await_decision(tmp_path, "c/d/p/m/seed1", one)


def test_followers_run_or_skip_as_rank_zero_says(tmp_path):
    one = {**TASK, "SLURM_PROCID": "1"}
    zero = {**TASK, "SLURM_PROCID": "0"}
    decision = RankZeroDecision(tmp_path, "c/d/p/m/seed0", zero)
    decision.tell("skip")
    decision.tell("run")  # said once: the first word stands
    assert await_decision(tmp_path, "c/d/p/m/seed0", one) == "skip"
    assert await_decision(tmp_path, "c/d/p/m/seed0", {"LOCAL_RANK": "1"}) == "run"  # Lightning's own child
    restarted = {**TASK, "SLURM_RESTART_COUNT": "1"}
    told = _lead(tmp_path, {**restarted, "SLURM_PROCID": "0"})
    assert told.told == "run" and not told.path.exists()  # a launch that ran to the end leaves no file
    assert _lead(tmp_path, {}).path is None  # one process: nothing is written


def test_a_follower_that_hears_nothing_stops_with_a_message(tmp_path):
    env = {**TASK, "SLURM_PROCID": "1", "AAREN_FOLLOW_TIMEOUT_S": "0.5"}
    with pytest.raises(NoDecision, match="said nothing about cell c/d/p/m/seed0 within 0.5 s.*AAREN_FOLLOW_TIMEOUT_S"):
        await_decision(tmp_path, "c/d/p/m/seed0", env, poll_s=0.05)
    stale = tmp_path / ".launch" / "slurm-41.0.0.json"  # the same job id on an earlier cluster, long ago
    stale.parent.mkdir()
    stale.write_text(json.dumps({"cell": "c/d/p/m/seed0", "decision": "run", "exit_code": 0, "message": "",
                                 "time": 1000.0}))
    with pytest.raises(NoDecision, match="no new"):
        await_decision(tmp_path, "c/d/p/m/seed0", env, poll_s=0.05)
    with pytest.raises(ConfigError, match="AAREN_FOLLOW_TIMEOUT_S='soon' must be a number"):
        await_decision(tmp_path, "c/d/p/m/seed0", {**env, "AAREN_FOLLOW_TIMEOUT_S": "soon"})
