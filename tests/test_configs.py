"""Every dataset config selects its task, composes, resolves, and runs a smoke pass (fast_dev_run).

Where a dataset's files are not on this machine the smoke pass must fail with the
registry's clear "missing" message; the test then skips, saying so.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aaren_bench.data import DatasetNotFound, get
from aaren_bench.run import train
from aaren_bench.study import CONF, discover_datasets, normalize_argv, protocols

DATASETS = discover_datasets()[0]


def compose_args(*args: str, conf: Path = CONF):
    """Compose as train.py does (its command line goes through normalize_argv first)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        return compose("config", overrides=normalize_argv(list(args), conf))


def test_no_problems_in_dataset_configs():
    assert discover_datasets()[1] == []


@pytest.mark.parametrize("d", DATASETS, ids=[d.name for d in DATASETS])
def test_dataset_selects_its_task(d):
    """`dataset=<name>` alone composes to its own task, for both backbones, and the catalog agrees."""
    assert get(d.name).task == d.task, "the dataset config and the catalog disagree on the task"
    for model in ("aaren", "transformer"):
        cfg = compose_args(f"dataset={d.name}", f"model={model}")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["dataset"]["name"] == d.name and resolved["task"]["name"] == d.task
        assert resolved["cell"].startswith(f"{d.task}/{d.name}") and resolved["cell"].endswith(f"/suite/{model}/seed0")


@pytest.mark.parametrize("task", ["classify", "forecast", "events", "rl"])
def test_a_task_alone_picks_its_default_dataset(task):
    cfg = compose_args(f"task={task}", "model=aaren")
    assert cfg.task.name == task and get(cfg.dataset.name).task == task
    assert cfg.dataset.name == OmegaConf.load(CONF / "task" / f"{task}.yaml").default_dataset


def test_readme_commands_compose():
    for args, (task, dataset, proto) in [
        (["task=forecast", "dataset=ETTh1"], ("forecast", "ETTh1", "suite")),
        (["+protocol=tslib", "dataset=Handwriting"], ("classify", "Handwriting", "tslib")),
        (["protocol=tslib", "dataset=Handwriting"], ("classify", "Handwriting", "tslib")),
        (["task=rl", "model=aaren", "dataset=hopper-medium"], ("rl", "hopper-medium", "suite")),
        (["task=events", "model=aaren"], ("events", "Sin", "suite")),
        ([], ("classify", "JapaneseVowels", "suite")),
    ]:
        cfg = compose_args(*args)
        assert (cfg.task.name, cfg.dataset.name, cfg.protocol.name) == (task, dataset, proto), args


def test_protocol_files_set_the_task_keys_and_the_command_line_wins():
    assert compose_args("dataset=Handwriting").task.protocol == "holdout"
    assert compose_args("dataset=Handwriting", "protocol=tslib").task.protocol == "tslib"
    cfg = compose_args("dataset=Handwriting", "protocol=tslib", "task.patience=3")
    assert cfg.task.patience == 3
    assert "suite" in protocols()["classify"] and "tslib" in protocols()["classify"]
    for task, names in protocols().items():
        assert "suite" in names, f"{task} must define the suite protocol"
        for n in names:
            assert (CONF / "protocol" / f"{n}.yaml").exists(), f"protocol {n} has no conf/protocol/{n}.yaml"


def test_a_protocol_a_task_does_not_define_is_an_error():
    from hydra.errors import MissingConfigException

    undefined = [p.stem for p in (CONF / "protocol").glob("*.yaml") if p.stem not in protocols().get("events", ())]
    if not undefined:
        pytest.skip("every protocol is defined for events")
    with pytest.raises(MissingConfigException, match="task_protocol"):
        compose_args("dataset=Sin", f"protocol={undefined[0]}")


def test_adding_a_dataset_is_one_config_file(tmp_path):
    """A copy of conf/ plus one file conf/dataset/Toy.yaml: it composes, selects its task, and the
    study finds it (as an extra dataset, since it is not one of the paper's)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "dataset" / "Toy.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /task: forecast\n  - _self_\n"
        "dataset:\n  name: Toy\n  split: ratio\n  target: OT\n")
    cfg = compose_args("dataset=Toy", "model=transformer", conf=conf)
    assert cfg.task.name == "forecast" and cfg.cell == "forecast/Toy-H192/suite/transformer/seed0"
    found = {d.name: d for d in discover_datasets(conf)[0]}
    assert found["Toy"].task == "forecast" and not found["Toy"].in_paper


@pytest.mark.parametrize("d", DATASETS, ids=[d.name for d in DATASETS])
def test_smoke_fast_dev_run(d, runs_dir, shared_data, tmp_path, monkeypatch):
    # a writable data root that sees the shared (read-only) datasets
    root = tmp_path / "data"
    root.mkdir()
    for entry in shared_data.iterdir():
        (root / entry.name).symlink_to(entry.resolve())
    monkeypatch.setenv("AAREN_DATA", str(root))
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    cfg = compose_args(f"dataset={d.name}", "trainer=debug", "trainer.enable_progress_bar=false")
    try:
        rec = train(cfg)
    except DatasetNotFound as e:
        msg = str(e)
        assert d.name in msg or d.name.lower() in msg.lower()
        assert "place" in msg or "fetch" in msg or "collect" in msg
        pytest.skip(f"{d.name}: data not on this machine (the missing-data error was checked)")
    assert rec["metrics"], f"{d.name}: the smoke run logged no test metric"
    assert not (runs_dir / cfg.cell).exists(), "a smoke run leaves no cell folder"


def _offline(*a, **k):
    import urllib.error

    raise urllib.error.URLError("tests run offline")
