"""A real sweep on the local one-node SLURM cluster (slurm/up.sh) through Hydra's submitit launcher.

2 datasets x 2 backbones x 2 seeds of UEA classification with a tiny model: one job is
cancelled (scancel) after its first checkpoint, the sweep is resubmitted, the cancelled cell
resumes from ``last.ckpt`` while finished cells are skipped, and the tables are built.

    slurm/install.sh && pytest -m slurm -s          # brings the cluster up and down itself

Uses a running cluster when ``SLURM_CONF`` (or /tmp/aaren-slurm/slurm.conf) answers ``sinfo``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("JapaneseVowels", "Handwriting")
MODELS = ("aaren", "transformer")
SEEDS = (0, 1)
EPOCHS = 40
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


def test_sweep_kill_resume_tables(cluster, shared_data, tmp_path):
    runs = tmp_path / "runs"
    env = dict(os.environ, SLURM_CONF=cluster, AAREN_RUNS=str(runs), AAREN_DATA=str(shared_data),
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
                time.sleep(1.0)  # let the checkpoint write finish
                if (c / "result.json").exists():
                    continue
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
