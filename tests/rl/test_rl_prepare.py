"""Data prepared once (RL): building the datamodule and the module reads and downloads nothing;
``prepare_data`` downloads, ``setup`` reads the file once per process; the state statistics
travel in the checkpoint, so a resumed run keeps them even when the file changed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_bench.data import DatasetNotFound
from aaren_bench.run import build
from aaren_bench.study import compose_config
from tasks.rl import data as rl_data
from tasks.rl.d4rl import split_trajectories, state_stats, write_d4rl
from tests.prepared import assert_prepared_once, trainer

TINY = [
    "task.backbone.d_model=16", "task.backbone.n_layers=1", "task.backbone.d_ff=32", "task.batch_size=4",
    "task.steps_per_epoch=2", "task.warmup_steps=2", "task.context_len=5", "task.eval_curve=false",
    "task.monitor=null", "logger=none",
]


def arrays(shift: float = 0.0, scale: float = 1.0, n: int = 60) -> dict[str, np.ndarray]:
    """HalfCheetah-shaped data (17-d observations, 6-d actions), trajectories of 20 steps."""
    g = np.random.default_rng(0)
    timeouts = np.zeros(n, bool)
    timeouts[19::20] = True
    return {"observations": (g.standard_normal((n, 17)) * scale + shift).astype(np.float32),
            "actions": g.uniform(-1, 1, (n, 6)).astype(np.float32), "rewards": g.standard_normal(n).astype(np.float32),
            "terminals": np.zeros(n, bool), "timeouts": timeouts}


@pytest.fixture
def counted(monkeypatch):
    """Counts of full reads of a D4RL file (``load_d4rl``) and of downloads (the registry's)."""
    n = {"reads": 0, "downloads": 0}
    load = rl_data.load_d4rl

    def read(path):
        n["reads"] += 1
        return load(path)

    def download(url, dest, timeout=60.0):
        n["downloads"] += 1
        write_d4rl(dest, arrays())

    monkeypatch.setattr(rl_data, "load_d4rl", read)
    monkeypatch.setattr("aaren_bench.data.registry._download", download)
    return n


def test_build_reads_nothing_prepare_data_downloads_setup_reads_once(tmp_path, counted):
    cfg = compose_config(["dataset=halfcheetah-medium", "dataset.source=d4rl", f"paths.data_root={tmp_path}", *TINY])
    built = build(cfg)  # the sizes are the catalog's: no file is needed to build
    other = build(cfg).datamodule  # a process of the run that does not prepare the data
    assert (built.module.model.obs_dim, built.module.model.act_dim) == (17, 6)
    assert_prepared_once(built, other, counted, "downloads", missing=DatasetNotFound)
    built.module.adopt_statistics(built.datamodule)
    want = state_stats(split_trajectories(arrays()))
    torch.testing.assert_close(built.module.model.state_mean, torch.from_numpy(want.mean))
    torch.testing.assert_close(built.module.model.state_std, torch.from_numpy(want.std))


def test_resumed_run_keeps_the_statistics_it_started_with(tmp_path, counted):
    file = tmp_path / "d4rl" / "halfcheetah_collected-v2.hdf5"
    write_d4rl(file, arrays())
    cfg = compose_config(["dataset=halfcheetah-collected", f"paths.data_root={tmp_path}", *TINY])
    first = build(cfg)
    first_trainer = trainer(2)
    first_trainer.fit(first.module, datamodule=first.datamodule)
    started = state_stats(split_trajectories(arrays()))
    torch.testing.assert_close(first.module.model.state_mean, torch.from_numpy(started.mean))  # fit's setup set them
    first_trainer.save_checkpoint(tmp_path / "step2.ckpt")

    write_d4rl(file, arrays(shift=5.0, scale=3.0))  # the data changed under the run
    changed = state_stats(split_trajectories(arrays(shift=5.0, scale=3.0)))
    assert not np.allclose(changed.mean, started.mean)
    again = build(cfg)
    trainer(3).fit(again.module, datamodule=again.datamodule, ckpt_path=tmp_path / "step2.ckpt")
    torch.testing.assert_close(again.module.model.state_mean, torch.from_numpy(started.mean))
    torch.testing.assert_close(again.module.model.state_std, torch.from_numpy(started.std))
    np.testing.assert_array_equal(again.datamodule.stats.mean, started.mean)  # the training windows' too
    assert again.datamodule.stats.std.dtype == np.float32
