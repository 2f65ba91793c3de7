"""`aaren-bench plan` and the matrix sweep configs (conf/matrix): jobs, cells, status, estimate."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from aaren_bench import matrix as M
from aaren_bench.cli import main
from aaren_bench.results import write_json_atomic

CONF = M.CONF


@pytest.fixture(scope="module")
def plan():
    return M.build_plan()


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_paper_has_38():
    assert sum(len(v) for v in M.PAPER_DATASETS.values()) == 38
    assert {t: len(v) for t, v in M.PAPER_DATASETS.items()} == {"rl": 12, "events": 8, "forecast": 8, "classify": 10}


def test_discover_every_dataset_config(plan):
    files = sorted(CONF.glob("dataset/*.yaml"))
    found = {d.name for d in M.discover()[0]}
    # the task-default files (a defaults list only) are the only ones left out
    left = {p.stem for p in files} - found
    assert left <= {"classify", "forecast", "events", "rl"}, left
    assert {d.name for d in plan.datasets} | {d.name for d in plan.extra} == found
    n = len(plan.datasets)
    assert n + sum(len(v) for v in plan.missing.values()) == 38
    assert len(plan.jobs) == n * 2 * 5
    assert len({j.cell for j in plan.jobs}) == len(plan.jobs), "two jobs must never share a run folder"


def test_paper_names_and_aliases():
    assert M.paper_name("JapaneseVowels", "classify") == "JapaneseVowels"
    assert M.paper_name("so", "events") == "StackOverflow"
    assert M.paper_name("halfcheetah-collected", "rl") is None
    assert M.paper_name("JapaneseVowels", "rl") is None  # the task must match too


def test_matrix_configs_in_sync():
    stale = M.stale_cell_configs()
    assert not stale, "conf/matrix is out of date: run `aaren-bench plan --write-configs`\n" + "\n".join(stale)


def test_write_configs(tmp_path):
    conf = tmp_path / "conf"
    (conf / "dataset").mkdir(parents=True)
    (conf / "dataset" / "ETTh1.yaml").write_text("# @package _global_\ndataset:\n  name: ETTh1\n  task: forecast\n")
    (conf / "dataset" / "Toy.yaml").write_text("# @package _global_\ndataset:\n  name: Toy\n  task: classify\n")
    (conf / "dataset" / "forecast.yaml").write_text("# @package _global_\ndefaults:\n  - ETTh1\n")
    (conf / "matrix" / "cell").mkdir(parents=True)
    (conf / "matrix" / "cell" / "classify-Gone.yaml").write_text("x: 1\n")
    assert M.stale_cell_configs(conf)
    M.write_cell_configs(conf)
    assert M.stale_cell_configs(conf) == []
    assert not (conf / "matrix" / "cell" / "classify-Gone.yaml").exists()
    text = (conf / "matrix" / "cell" / "forecast-ETTh1.yaml").read_text()
    assert "override /task: forecast" in text and "pred_len: 192" in text
    assert (conf / "matrix" / "extra" / "classify-Toy.yaml").exists()  # not one of the 38


def _grid(matrix: str) -> dict:
    """hydra.sweeper.params of +matrix=<matrix>, expanded by Hydra's own override parser."""
    cfg = _compose([f"+matrix={matrix}"])
    grid = {}
    for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]):
        vals = o.value()
        if hasattr(vals, "filter"):  # glob(...) over the group's options
            options = sorted(p.stem for p in CONF.glob(f"{o.key_or_group}/*.yaml"))
            grid[o.key_or_group] = vals.filter(options)
        else:
            grid[o.key_or_group] = list(o.sweep_string_iterator())
    return grid


def test_sweep_params_expand_to_the_plan(plan):
    grid = _grid("paper")
    assert sorted(grid["matrix/cell"]) == sorted(f"{d.task}-{d.name}" for d in plan.datasets)
    assert grid["model"] == ["aaren", "transformer"] and grid["seed"] == ["0", "1", "2", "3", "4"]
    assert len(grid["matrix/cell"]) * len(grid["model"]) * len(grid["seed"]) == len(plan.jobs)


def test_horizons_and_extra_sweeps():
    p = M.build_plan(horizons=M.HORIZONS, tasks=("forecast",))
    grid = _grid("paper_horizons")
    assert sorted(grid["matrix/cell"]) == sorted(f"forecast-{d.name}" for d in p.datasets)
    assert grid[M.HORIZON_KEY] == [str(h) for h in M.HORIZONS]
    assert len(grid["matrix/cell"]) * 4 * 2 * 5 == len(p.jobs)
    extra = _grid("extra")["matrix/extra"]
    assert sorted(extra) == sorted(f"{d.task}-{d.name}" for d in M.build_plan().extra)


def test_every_cell_option_composes():
    """Each matrix/cell (and matrix/extra) option composes to its task and dataset, and the run
    key conf/config.yaml makes of it is the planner's cell."""
    p = M.build_plan(include_extra=True)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for d in p.datasets:
            group = "cell" if d.paper_name else "extra"
            cfg = compose("config", overrides=[f"+matrix/{group}={d.task}-{d.name}", "model=transformer", "seed=3"])
            assert cfg.task.name == d.task and cfg.dataset.name == d.name
            job = M.Job(d.task, d.name, "transformer", 3, M.DEFAULT_HORIZON if d.task == "forecast" else None)
            assert cfg.cell == job.cell


def test_status_done_started_pending(tmp_path):
    runs = tmp_path / "runs"
    jobs = [M.Job("classify", "JapaneseVowels", "aaren", s) for s in range(4)]
    write_json_atomic(runs / jobs[0].cell / "result.json",
                      {"task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 0,
                       "metrics": {"test/acc": 0.9}, "wall_time_s": {"total": 7200.0}, "device": "cuda:0"})
    (runs / jobs[1].cell / "checkpoints").mkdir(parents=True)
    (runs / jobs[1].cell / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (runs / jobs[2].cell).mkdir(parents=True)
    (runs / jobs[2].cell / "result.json").write_text('{"task": "classify", "met')  # torn: not done
    assert [M.job_status(j, runs) for j in jobs] == ["done", "started", "pending", "pending"]
    measured = M.measured_hours(runs)
    assert measured[("classify", "*")][0] == pytest.approx(2.0)
    assert M.job_hours(jobs[3], measured) == (pytest.approx(2.0), "measured (dataset, cuda)")
    assert M.job_hours(M.Job("classify", "Heartbeat", "aaren", 0), measured)[1] == "measured (task, cuda)"
    assert M.job_hours(M.Job("rl", "hopper-medium", "aaren", 0), measured)[1] == "assumed"


def test_plan_command(tmp_path, capsys):
    runs = tmp_path / "runs"
    job = M.Job("classify", "JapaneseVowels", "aaren", 0)
    write_json_atomic(runs / job.cell / "result.json",
                      {"task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 0,
                       "metrics": {}, "wall_time_s": {"total": 36.0}, "device": "cpu"})
    script = tmp_path / "submit.sh"
    assert main(["plan", "--runs", str(runs), "--jobs", "--emit", str(script)]) in (0, 1)
    out = capsys.readouterr().out
    n = len(M.build_plan().jobs)
    assert f"# aaren-bench plan: {n} jobs" in out
    assert f"total: {n} jobs, 1 done, {n - 1} to run" in out
    assert "done     classify/JapaneseVowels/aaren/seed0" in out
    assert "python train.py -m +matrix=paper hydra/launcher=slurm" in out
    assert "paper datasets with a config:" in out
    assert "python train.py -m +matrix=paper hydra/launcher=slurm" in script.read_text()

    assert main(["plan", "--runs", str(runs), "--tasks", "classify", "--seeds", "0", "--pending",
                 "--launcher", "local"]) in (0, 1)
    out = capsys.readouterr().out
    # JapaneseVowels still needs the transformer; the other datasets need both backbones
    assert "+matrix/cell=classify-JapaneseVowels model=transformer seed=0 hydra/launcher=local" in out
    assert "classify-Handwriting" in out and "model=aaren,transformer seed=0" in out

    if M.build_plan().extra:  # configs outside the paper's 38 go to their own sweep
        assert main(["plan", "--runs", str(runs), "--include-extra", "--seeds", "0,1"]) in (0, 1)
        out = capsys.readouterr().out
        assert "python train.py -m +matrix=paper seed=0,1 hydra/launcher=slurm" in out
        assert "python train.py -m +matrix=extra seed=0,1 hydra/launcher=slurm" in out


def test_plan_horizons_and_bad_input(tmp_path, capsys):
    p = M.build_plan(horizons=M.HORIZONS)
    n_fc = sum(d.task == "forecast" for d in p.datasets)
    assert len(p.jobs) == (len(p.datasets) + 3 * n_fc) * 10
    assert main(["plan", "--runs", str(tmp_path), "--horizons", "100"]) == 2
    assert main(["plan", "--runs", str(tmp_path), "--models", "rnn"]) == 2
    assert main(["plan", "--runs", str(tmp_path), "--conf", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown horizon" in err and "no model config" in err and "no dataset configs" in err
