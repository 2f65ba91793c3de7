"""Every task/dataset config composes, resolves, and runs a smoke pass (fast_dev_run).

Where a dataset's files are not on this machine the smoke pass must fail with the
registry's clear "missing" message; the test then skips, saying so.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aaren_bench.data import DatasetNotFound
from aaren_bench.run import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def dataset_configs() -> list[tuple[str, str]]:
    out = []
    for p in sorted((CONF / "dataset").glob("*.yaml")):
        body = yaml.safe_load(p.read_text()) or {}
        ds = body.get("dataset")
        if isinstance(ds, dict) and "task" in ds:
            out.append((ds["task"], p.stem))
    return out


CONFIGS = dataset_configs()


def compose_cell(task: str, name: str, *extra: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=[f"task={task}", f"dataset={name}", *extra])


def test_every_task_has_a_default_dataset():
    tasks = {t for t, _ in CONFIGS}
    for task in tasks:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose("config", overrides=[f"task={task}"])
        assert cfg.dataset.task == task


@pytest.mark.parametrize("task,name", CONFIGS, ids=[f"{t}-{n}" for t, n in CONFIGS])
def test_config_resolves(task, name):
    for model in ("aaren", "transformer"):
        cfg = compose_cell(task, name, f"model={model}")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["dataset"]["name"] == name and resolved["task"]["name"] == task
        assert resolved["cell"].startswith(f"{task}/{name}") and resolved["cell"].endswith(f"/{model}/seed0")


@pytest.mark.parametrize("task,name", CONFIGS, ids=[f"{t}-{n}" for t, n in CONFIGS])
def test_smoke_fast_dev_run(task, name, runs_dir, shared_data, tmp_path, monkeypatch):
    # a writable data root that sees the shared (read-only) datasets: data a task makes
    # itself (the collected RL dataset) lands in the temporary folder
    root = tmp_path / "data"
    root.mkdir()
    for entry in shared_data.iterdir():
        (root / entry.name).symlink_to(entry.resolve())
    monkeypatch.setenv("AAREN_DATA", str(root))
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    cfg = compose_cell(task, name, "trainer=debug", "trainer.enable_progress_bar=false")
    try:
        rec = train(cfg)
    except DatasetNotFound as e:
        msg = str(e)
        assert name in msg or name.lower() in msg.lower()
        assert "place" in msg or "fetch" in msg
        pytest.skip(f"{name}: data not on this machine (the missing-data error was checked)")
    assert rec["metrics"], f"{name}: the smoke run logged no test metric"


def _offline(*a, **k):
    import urllib.error

    raise urllib.error.URLError("tests run offline")
