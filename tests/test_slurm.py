"""Real jobs on the local one-node SLURM cluster (slurm/up.sh) through Hydra's submitit launcher.

- **One run on 2 SLURM tasks** (``trainer.accelerator=cpu trainer.devices=2``: the launcher's
  ``tasks_per_node`` = devices, Lightning's SLURM environment, DDP over gloo) writes one record
  (one ``result.json``, no ``failed.json``, one log) whose test metrics equal a 1-process test of
  the recorded best weights over the whole test set, with all 370 test series counted.
- **scancel of that job** while it trains leaves ``last.ckpt`` at the step reached at the signal
  (past the first epoch's end; the log names that step), the job ends non-zero in SLURM's accounting, and the resubmitted job
  resumes from it and ends bit for bit as the uninterrupted job (weights and test metrics).
- **A sweep** (1 dataset x 2 backbones x 2 seeds, one task per job): one job is cancelled after
  its first checkpoint, the sweep is resubmitted, the cancelled cell resumes from ``last.ckpt``
  while finished cells are skipped, and the tables are built.

    slurm/install.sh && pytest -m slurm -s          # brings the cluster up and down itself

Uses a running cluster when ``SLURM_CONF`` (or /tmp/aaren-slurm/slurm.conf) answers ``sinfo``.
``AAREN_SLURM_TEST_OUT=folder`` keeps the figures (record.json, scancel.json, report.json) and tables.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("JapaneseVowels",)  # ships with sktime: no $AAREN_DATA needed
MODELS = ("aaren", "transformer")
SEEDS = (0, 1)
EPOCHS = 8
SWEEP = [
    "+matrix=paper",
    "dataset=" + ",".join(DATASETS),
    "tag=slurm-test",  # tiny sizes change what is measured: the cells are <protocol>+slurm-test
    "model=" + ",".join(MODELS),
    "seed=" + ",".join(map(str, SEEDS)),
    "hydra/launcher=local",
    "hydra.launcher.timeout_min=15",
    f"trainer.max_epochs={EPOCHS}",
    "task.patience=0",  # no early stopping: every run trains EPOCHS epochs
    # 108 steps an epoch: a job trains for seconds after its first checkpoint even on an idle machine,
    # so the cancel below lands inside training (at batch 16 a job's 8 epochs took 1.3 s)
    "task.batch_size=2",
    "task.backbone.d_model=16",
    "task.backbone.n_layers=1",
    "task.backbone.n_heads=2",
    "task.backbone.d_ff=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]


def _slurm_ok(env: dict) -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a running cluster; starts slurm/up.sh (and stops it after) when none runs."""
    env = dict(os.environ)
    env.setdefault("SLURM_CONF", str(Path(os.environ.get("AAREN_SLURM_DIR", "/tmp/aaren-slurm"), "slurm.conf")))
    if Path(env["SLURM_CONF"]).exists() and _slurm_ok(env):
        yield env["SLURM_CONF"]
        return
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("SLURM is not installed: run slurm/install.sh (as root) first")
    if os.geteuid() != 0:
        pytest.skip("the local cluster of slurm/up.sh runs its daemons as root; run as root or start it first")
    up = subprocess.run([str(REPO / "slurm" / "up.sh"), "--env"], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, f"slurm/up.sh failed:\n{up.stdout}\n{up.stderr}"
    conf = up.stdout.strip().split("=", 1)[1]
    try:
        yield conf
    finally:
        subprocess.run([str(REPO / "slurm" / "down.sh")], timeout=120)


def _cells(runs: Path) -> list[Path]:
    return [runs / "classify" / d / "suite+slurm-test" / m / f"seed{s}" for d in DATASETS for m in MODELS for s in SEEDS]


def _job_id(cell: Path) -> str | None:
    """The SLURM job id the launcher stored as hydra.job.id in the cell's .hydra/hydra.yaml."""
    from omegaconf import OmegaConf

    p = cell / ".hydra" / "hydra.yaml"
    if not p.exists():
        return None
    try:
        return str(OmegaConf.load(p).hydra.job.id)
    except Exception:
        return None  # being written


def _squeue(env) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n") if out.stdout.strip() else []


def _wait_queue_empty(env, timeout: float) -> None:
    t0 = time.time()
    while _squeue(env):
        assert time.time() - t0 < timeout, f"jobs still queued after {timeout}s: {_squeue(env)}"
        time.sleep(2)


def _sweep(env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", "-m", *SWEEP], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --- one run on 2 SLURM tasks: one record; scancel, a checkpoint at the signal, a bit-exact resume ---------
DDP_BATCH, DDP_TRAIN = 4, 216  # JapaneseVowels: 216 training series after the validation holdout
DDP_STEPS_PER_EPOCH = -(-DDP_TRAIN // DDP_BATCH)
DDP_EPOCHS = 5  # room for the cancel to land inside training however fast the machine is
DDP_CELL = Path("classify/JapaneseVowels/suite+slurm-ddp/aaren/seed0")
DDP = [
    "dataset=JapaneseVowels", "model=aaren", "seed=0",
    "tag=slurm-ddp",
    "hydra/launcher=local",  # tasks_per_node = trainer.devices: one SLURM task per process
    "hydra.launcher.timeout_min=10",
    "trainer.accelerator=cpu", "trainer.devices=2",  # Lightning's SLURM environment, DDP over gloo
    f"task.batch_size={DDP_BATCH}",  # the global batch: 2 series per process per step
    f"trainer.max_epochs={DDP_EPOCHS}", "task.patience=0", "checkpoint_every_min=null",
    "task.backbone.d_model=16", "task.backbone.n_layers=1", "task.backbone.n_heads=2", "task.backbone.d_ff=32",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
]


def _submit(env: dict, runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", "-m", *DDP], cwd=REPO, env=dict(env, AAREN_RUNS=str(runs)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _slurm_env(cluster: str) -> dict:
    return dict(os.environ, SLURM_CONF=cluster, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _sacct(env: dict, job: str) -> list[list[str]]:
    """(JobID, State, ExitCode) of the job and its steps, once accounting has the job's end."""
    for _ in range(30):
        out = subprocess.run(["sacct", "-n", "-P", "-j", job, "-o", "JobID,State,ExitCode"], env=env,
                             capture_output=True, text=True, timeout=30).stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        if rows and not any(r[1] in ("RUNNING", "PENDING", "COMPLETING") for r in rows):
            return rows
        time.sleep(1)
    raise AssertionError(f"sacct has no end for job {job}: {out!r}")


def _state_dict(cell: Path, name: str) -> dict:
    return torch.load(cell / "checkpoints" / name, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def two_task_run(cluster, tmp_path_factory):
    """The cell run uninterrupted as one SLURM job of 2 tasks (a process per task): (env, cell folder, seconds)."""
    env = _slurm_env(cluster)
    runs = tmp_path_factory.mktemp("ddp-full")
    t0 = time.time()
    job = _submit(env, runs)
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-5000:]
    return env, runs / DDP_CELL, time.time() - t0


def test_two_tasks_write_one_record_equal_to_one_process(two_task_run):
    from aaren_bench import run
    from aaren_bench.study import compose_config

    env, cell, seconds = two_task_run
    runs = cell.parents[len(DDP_CELL.parts) - 1]
    assert [p.relative_to(runs) for p in runs.rglob("result.json")] == [DDP_CELL / "result.json"]
    assert not list(runs.rglob("failed.json"))
    assert not (runs / ".launch").exists(), "rank zero's decision is removed when the run ends"
    rec = json.loads((cell / "result.json").read_text())
    assert rec["world_size"] == 2 and rec["device"] == "cpu"
    assert rec["metrics"]["test/samples"] == 370  # JapaneseVowels' whole test set, every series once
    assert rec["global_steps"] == DDP_EPOCHS * DDP_STEPS_PER_EPOCH  # the global batch: the steps of one process
    log = (cell / "train.log").read_text()
    assert log.count("parameters: ") == 1, "the other task must not write the cell's log"
    # one process, the recorded best weights, the whole test set: the numbers of the 2-task record
    cfg = compose_config([o for o in DDP if not o.startswith(("hydra", "trainer.devices"))] + [f"paths.runs={runs}"])
    assert Path(cfg.run_dir) == cell  # devices are neutral: the 1-process run is the same cell
    built = run.build(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=runs / "one-process")
    one = {k: float(v) for k, v in trainer.test(built.module, datamodule=built.datamodule, verbose=False,
                                                ckpt_path=cell / rec["best_checkpoint"])[0].items()}
    assert one["test/samples"] == rec["metrics"]["test/samples"]
    assert one == pytest.approx(rec["metrics"], rel=1e-6, abs=1e-7)
    _report("record", {"job_s": round(seconds, 1), "two_tasks": rec["metrics"], "one_process": one,
                       "global_steps": rec["global_steps"]})


def test_scancel_checkpoints_at_the_signal_and_the_resubmission_resumes_bit_exactly(two_task_run, tmp_path):
    env, full, _ = two_task_run
    runs = tmp_path / "runs"
    cell = runs / DDP_CELL
    last = cell / "checkpoints" / "last.ckpt"
    t0 = time.time()
    first = _submit(env, runs)
    deadline = time.time() + 400
    while not (last.exists() and _job_id(cell)):  # the end of epoch 0 (written whole: atomic rename)
        assert time.time() < deadline, "no checkpoint within 400 s"
        assert first.poll() is None, f"the job ended before it could be cancelled:\n{first.stdout.read()}"
        time.sleep(0.2)
    epoch_end_step = int(_state_dict(cell, "last.ckpt")["global_step"])
    time.sleep(1.0)  # into epoch 1 (or a later one on a fast machine; never past the last)
    job = _job_id(cell)
    subprocess.run(["scancel", job], env=env, check=True, timeout=30)
    _wait_queue_empty(env, 120)
    # the launcher notices a cancelled job only at its next poll of sacct (up to half the job's age later):
    # its report is checked by the sweep below; here the job's own end, in SLURM's accounting
    first.terminate()
    first.communicate(timeout=60)
    acct = _sacct(env, job)
    assert all(state != "COMPLETED" for _, state, _ in acct), acct
    assert any(state.startswith(("CANCELLED", "FAILED")) or code != "0:0" for _, state, code in acct), acct
    assert not (cell / "result.json").exists(), "a cancelled run must not leave a record"

    step = int(_state_dict(cell, "last.ckpt")["global_step"])
    assert step > epoch_end_step, f"last.ckpt must be written at the signal, after the epoch end {epoch_end_step}"
    # the signal's step, named in the log (a signal at an epoch's last batch keeps that epoch's checkpoint, of the same step)
    log = (cell / "train.log").read_text()
    assert f"stopped by a signal at step {step}" in log, log[-3000:]

    second = _submit(env, runs)  # the resubmission: resumes from last.ckpt
    out2, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out2[-5000:]
    assert f"resuming from {last} (step {step})" in (cell / "train.log").read_text()
    rec, ref = (json.loads((c / "result.json").read_text()) for c in (cell, full))
    assert rec["attempts"] == 2 and rec["global_steps"] == ref["global_steps"]
    assert rec["metrics"] == ref["metrics"], "bit-exact: the same test metrics as the uninterrupted job"
    for name in ("last.ckpt", "best.ckpt"):
        mine, theirs = _state_dict(cell, name)["state_dict"], _state_dict(full, name)["state_dict"]
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    _report("scancel", {"job": job, "sacct": acct, "epoch_end_step": epoch_end_step, "checkpoint_step": step,
                        "steps_per_epoch": DDP_STEPS_PER_EPOCH, "final_steps": rec["global_steps"],
                        "metrics": rec["metrics"], "seconds": round(time.time() - t0, 1)})


def _report(name: str, figures: dict) -> None:
    """Print the figures (``pytest -s``) and keep them in $AAREN_SLURM_TEST_OUT/<name>.json when set."""
    print(f"\n{name}: " + json.dumps(figures, indent=1))
    if os.environ.get("AAREN_SLURM_TEST_OUT"):
        dst = Path(os.environ["AAREN_SLURM_TEST_OUT"])
        dst.mkdir(parents=True, exist_ok=True)
        (dst / f"{name}.json").write_text(json.dumps(figures, indent=1))



def test_sweep_kill_resume_tables(cluster, tmp_path):
    runs = tmp_path / "runs"
    env = dict(os.environ, SLURM_CONF=cluster, AAREN_RUNS=str(runs),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    t_start = time.time()

    # 1. submit the sweep; cancel the first job seen with a checkpoint and no record
    first = _sweep(env)
    victim, victim_job = None, None
    deadline = time.time() + 900
    while victim is None:
        assert time.time() < deadline, "no job produced a checkpoint within 900 s"
        assert first.poll() is None, f"the sweep ended before a job could be cancelled:\n{first.stdout.read()}"
        for c in _cells(runs):
            last = c / "checkpoints" / "last.ckpt"
            if last.exists() and not (c / "result.json").exists() and (job := _job_id(c)):
                # last.ckpt is written whole (an atomic rename): no wait for its write
                subprocess.run(["scancel", job], env=env, check=True, timeout=30)
                victim, victim_job = c, job
                break
        time.sleep(0.5)
    out1, _ = first.communicate(timeout=900)
    _wait_queue_empty(env, 600)
    t_first = time.time() - t_start

    assert not (victim / "result.json").exists(), "a cancelled run must not leave a record"
    ckpt = torch.load(victim / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    killed_at_epoch, killed_at_step = ckpt["epoch"], ckpt["global_step"]
    assert 0 <= killed_at_epoch < EPOCHS - 1, "the job must be cancelled before it finished"
    done = [c for c in _cells(runs) if (c / "result.json").exists()]
    assert len(done) == len(_cells(runs)) - 1, f"expected every other cell done; done: {done}\n{out1[-3000:]}"
    assert first.returncode != 0, "the launcher must report the cancelled job as failed"
    time.sleep(3)  # accounting reaches the database a moment later
    state = subprocess.run(["sacct", "-n", "-X", "-j", victim_job, "-o", "State"], env=env,
                           capture_output=True, text=True).stdout
    assert "CANCELLED" in state, f"sacct state of {victim_job}: {state!r}"
    mtimes = {c: (c / "result.json").stat().st_mtime_ns for c in done}

    plan = subprocess.run([sys.executable, "-m", "aaren_bench.cli", "plan", "--runs", str(runs), "--tag", "slurm-test", "--tasks",
                           "classify", "--seeds", "0,1", "--jobs", "--pending", "--launcher", "local"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    rel = str(victim.relative_to(runs))
    assert f"started  {rel}" in plan.stdout, plan.stdout + plan.stderr

    # 2. resubmit the same sweep: finished cells are skipped, the cancelled one resumes
    t1 = time.time()
    second = _sweep(env)
    out2, _ = second.communicate(timeout=900)
    t_second = time.time() - t1
    assert second.returncode == 0, out2[-5000:]
    rec = json.loads((victim / "result.json").read_text())
    log = (victim / "train.log").read_text()
    assert "resuming from" in log and "last.ckpt" in log, log[-2000:]
    peer = json.loads((runs / "classify" / rec["dataset"] / "suite+slurm-test" / MODELS[1 - MODELS.index(rec["model"])]
                       / f"seed{rec['seed']}" / "result.json").read_text())
    assert rec["epochs"] == peer["epochs"], "the resumed run must finish the same number of epochs"
    assert rec["global_steps"] == peer["global_steps"], "resumed steps must continue, not restart"
    for c, m in mtimes.items():
        assert (c / "result.json").stat().st_mtime_ns == m, f"{c} was run again although done"

    # 3. the tables from the records
    out = tmp_path / "tables"
    tab = subprocess.run([sys.executable, "-m", "aaren_bench.cli", "tables", "--runs", str(runs), "--out", str(out),
                          "--seeds", "2", "--tags"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert tab.returncode == 0, tab.stdout + tab.stderr
    md = (out / "table4_classify.md").read_text()
    for d in DATASETS:
        row = next(line for line in md.splitlines() if line.startswith(f"| {d} +slurm-test"))
        assert "±" in row and "(n=" not in row, row  # mean ± std over both seeds
    assert "| Heartbeat | missing | missing |" in md.replace("  ", " ")
    assert "comparable" in md or "better" in md or "worse" in md, "2 seeds per backbone: a verdict is given"
    assert (out / "table4_classify.csv").exists() and (out / "table4_classify.tex").exists()

    report = {"first_sweep_s": round(t_first, 1), "second_sweep_s": round(t_second, 1),
              "total_s": round(time.time() - t_start, 1), "victim": rel, "victim_job": victim_job,
              "checkpoint_at_kill": {"epoch": killed_at_epoch, "global_step": killed_at_step},
              "final": {"epochs": rec["epochs"], "global_steps": rec["global_steps"]}}
    print("\n" + json.dumps(report, indent=2) + "\n" + md)
    if os.environ.get("AAREN_SLURM_TEST_OUT"):
        dst = Path(os.environ["AAREN_SLURM_TEST_OUT"])
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "report.json").write_text(json.dumps(report, indent=2))
        shutil.copytree(out, dst / "tables", dirs_exist_ok=True)
        shutil.copytree(runs, dst / "runs", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.ckpt", "*.pkl"))
