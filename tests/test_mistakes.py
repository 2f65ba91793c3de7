"""A careless user's mistakes, run through train.py as a user would: each one prints the suite's
``error: <what, and what to do>`` as its first line on stderr and exits 2, before anything is
built (so no cell folder is left), Hydra's own composition errors included."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# (arguments, a word the message must contain)
MISTAKES = [
    (["model.d_model=100"], "divisible"),
    (["task.batch_size=0"], "task.batch_size"),
    (["dataset=ETTh1", "task.features=Q"], "task.features"),
    (["dataset=ETTh1", "dataset.split=foo"], "dataset.split"),
    (["dataset=ETTh1", "task.label_len=200"], "task.label_len"),
    (["model.causal=false"], "causal"),
    (["dataset=ETTh1", "task.head=nope"], "task.head"),
    (["dataset=ETTh1", "task.seq_len=-5"], "task.seq_len"),
    (["task.nan_policy=foo"], "task.nan_policy"),
    (["tag=a/b"], "tag="),
    (["seed=abc"], "seed"),
    (["dataset=Nope"], "dataset/Nope"),
    (["model=nope"], "model/nope"),
    (["protocol=nope"], "protocol/nope"),
    (["logger=nope"], "logger/nope"),
    (["task.batchsize=3"], "task.batchsize"),
    (["dataset=ETTh1", "task.pred_len=-96"], "task.pred_len"),
    (["dataset=ETTh1", "task.pred_len=0"], "task.pred_len"),
    (["task.val_fraction=2.0"], "task.val_fraction"),
    (["dataset=ETTh1", "task.sentinel_policy=foo"], "task.sentinel_policy"),
    (["task=rl", "dataset=ETTh1"], "belongs to task=forecast"),
    (["trainer.precision=bf16-true"], "bf16-mixed"),
    (["task.optimizer.lr=-1"], "task.optimizer.lr"),
]
if not torch.cuda.is_available():
    MISTAKES.append((["trainer=gpu"], "GPU"))


def train_py(args: list[str], runs: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "AAREN_DEBUG")}
    env.update(AAREN_RUNS=str(runs), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          env=env, cwd=runs.parent, timeout=300)


@pytest.mark.parametrize("args,word", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_error_line_and_exit_2(args, word, tmp_path):
    runs = tmp_path / "runs"
    out = train_py(args, runs)
    first = (out.stderr.strip().splitlines() or [""])[0]
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stderr[-2000:]}"
    assert first.startswith("error: ") and word in first, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not runs.exists() or not any(runs.rglob("*")), f"a failed start left {sorted(runs.rglob('*'))}"


def test_hydra_flags_after_a_task_alone(tmp_path):
    """`task=rl --cfg job`: the task's default dataset is added among the overrides, not after the flag."""
    out = train_py(["task=rl", "model=aaren", "--cfg", "job"], tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "name: hopper-medium" in out.stdout


@pytest.mark.parametrize("errno_,words", [(30, "the file system is read-only"), (28, "no space left")])
def test_a_runs_root_that_cannot_be_written_is_the_suites_message(errno_, words, monkeypatch, capsys):
    """What Hydra or the run hits first on a read-only or full runs root (its log file, a
    checkpoint): `error: cannot write <file>` and exit 74, not a traceback."""
    from aaren_bench.entry import launch

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # launch sets it for Hydra; restored after the test
    monkeypatch.delenv("AAREN_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def hydra_main():
        raise OSError(errno_, os.strerror(errno_), "/runs/classify/x/train.log")

    with pytest.raises(SystemExit) as e:
        launch(hydra_main, ["dataset=JapaneseVowels"])
    assert e.value.code == 74
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"error: cannot write /runs/classify/x/train.log: {words}")
