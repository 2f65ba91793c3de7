"""Several processes measure what one process measures.

Each task trains a tiny model for a few steps and tests it on 2 CPU processes (Lightning's DDP,
gloo) and on 1 (tests/ddp_run.py). The 2-process test metrics must equal a 1-process test of
the same weights over the whole test set, with every test sample counted once (odd test sets:
a padded sampler would count one sample twice); training on 2 processes must take the steps of
1 process, with the same global batches (its test metrics equal to float noise). Also the
samplers alone: the shares of a split, of a global batch, and a global batch that does not split.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from aaren_bench.distributed import GlobalBatchShare, device_batch, eval_loader
from aaren_bench.errors import ConfigError
from aaren_bench.resume import EpochShuffle, ResumableLoader

REPO = Path(__file__).resolve().parents[1]
TEST_SAMPLES = {"classify": ("test/samples", 21), "forecast": ("test/samples", 37), "events": ("test/samples", 17),
                "rl": ("test/episodes", 3)}


# ---------------------------------------------------------------- the samplers alone
def test_evaluation_shares_cover_the_split_once():
    ds = TensorDataset(torch.arange(11))
    seen = [int(i) for r in range(3) for (b,) in eval_loader(ds, batch_size=2, rank=r, world=3) for i in b]
    assert sorted(seen) == list(range(11))  # 11 over 3 processes: nothing padded, nothing repeated
    with pytest.raises(ConfigError, match="cannot be shared by 4 processes"):
        eval_loader(TensorDataset(torch.arange(3)), batch_size=2, rank=0, world=4)


def test_global_batches_are_shared_in_order():
    """Process r's k-th batch is its part of global batch k: together they are the 1-process batch."""
    one = [b[0].tolist() for b in ResumableLoader(TensorDataset(torch.arange(22)), batch_size=6, seed=5)]
    parts = [[b[0].tolist() for b in ResumableLoader(TensorDataset(torch.arange(22)), batch_size=6, seed=5,
                                                     world=(r, 2))] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(one) == 4  # the same number of steps
    assert [a + b for a, b in zip(*parts)] == one  # 6 = 3 + 3, and the last batch of 4 = 2 + 2


def test_last_small_batch_and_resume_on_shares():
    sampler = EpochShuffle(7, seed=0)
    shares = [list(GlobalBatchShare(sampler, 4, r, 2)) for r in range(2)]
    order = list(sampler)
    assert shares[0] == order[0:2] + order[4:6] and shares[1] == order[2:4] + order[6:7]  # last batch 3 = 2 + 1
    assert [len(GlobalBatchShare(sampler, 4, r, 2)) for r in range(2)] == [4, 3]
    a = ResumableLoader(TensorDataset(torch.arange(22)), batch_size=6, seed=5, world=(1, 2))
    whole = [b[0].tolist() for b in a]
    b = ResumableLoader(TensorDataset(torch.arange(22)), batch_size=6, seed=5, world=(1, 2))
    b.load_state_dict({"epoch": 0, "batches": 2})
    assert [x[0].tolist() for x in b] == whole[2:]  # a resume skips whole global batches


def test_global_batch_that_does_not_split_is_refused():
    assert device_batch(64, 4) == 16
    with pytest.raises(ConfigError, match=r"task.batch_size=31 is the global batch .* 3 processes.* use task.batch_size=30 or 33"):
        device_batch(31, 3)
    with pytest.raises(ConfigError, match=r"task.batch_size=6 .* 4 processes .* use task.batch_size=4 or 8"):
        device_batch(6, 4)


# ---------------------------------------------------------------- 2 processes against 1, per task
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.classify.test_data import write_ts
    from tests.forecast.test_forecast_data import write_csv

    d = tmp_path_factory.mktemp("ddp_data")
    rng = np.random.default_rng(0)
    for name, n in (("TRAIN", 30), ("TEST", 21)):
        write_ts(d / f"Toy_{name}.ts", [rng.normal(size=(rng.integers(5, 9), 2)) for _ in range(n)],
                 [str(i % 3) for i in range(n)])
    write_csv(d / "toy.csv", n=210, values=rng.normal(size=(210, 3)))  # 37 test windows of 12 -> 6
    return d


def collected(data: Path) -> None:
    pytest.importorskip("mujoco")
    from aaren_bench.cli import main as cli

    out = data / "collected.hdf5"
    if not out.exists():
        assert cli(["collect", "--env", "halfcheetah", "--episodes", "3", "--max-steps", "30", "--seed", "1",
                    "--out", str(out)]) == 0


def ddp_run(task: str, devices: int, data: Path, out: Path, weights: Path | None = None) -> dict:
    cmd = [sys.executable, str(REPO / "tests" / "ddp_run.py"), task, str(devices), str(data), str(out)]
    cmd += ["--weights", str(weights)] if weights else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("task", ["classify", "forecast", "events", "rl"])
def test_two_processes_measure_what_one_measures(task, data, tmp_path):
    if task == "rl":
        collected(data)
    two = ddp_run(task, 2, data, tmp_path / "two")
    one = ddp_run(task, 1, data, tmp_path / "one", weights=tmp_path / "two" / "weights.pt")
    for r in (two["metrics"], one["metrics"], one["metrics_of_weights"]):
        r.pop("test/env_steps_per_s", None)  # a speed, not a measurement
    assert two["world"] == 2 and one["world"] == 1
    key, n = TEST_SAMPLES[task]
    assert two["metrics"][key] == one["metrics"][key] == n  # every test sample once
    # the same weights tested by 1 process over the whole set: the same numbers
    assert two["metrics"] == pytest.approx(one["metrics_of_weights"], rel=1e-6, abs=1e-9)
    # the same training: the steps, and (float noise apart) the model
    assert two["steps"] == one["steps"]
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-4, abs=1e-6)
