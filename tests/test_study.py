"""The study: cell keys built and parsed in one place, run identity, the paper sweep, plan and submit."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from aaren_bench import plan as P
from aaren_bench.cli import main
from aaren_bench.errors import ConfigError
from aaren_bench.results import write_json_atomic
from aaren_bench.study import (
    CONF,
    HORIZONS,
    PAPER_DATASETS,
    Cell,
    CellKeyError,
    canonical_override,
    measuring_overrides,
    normalize_argv,
    paper_study,
    protocols,
    run_tag,
)
from aaren_bench.submit import commands


def test_paper_has_38_and_every_one_has_a_config():
    assert sum(len(v) for v in PAPER_DATASETS.values()) == 38
    assert {t: len(v) for t, v in PAPER_DATASETS.items()} == {"rl": 12, "events": 8, "forecast": 8, "classify": 10}
    assert len(paper_study().datasets) == 38


@pytest.mark.parametrize("cell", [
    Cell("forecast", "ETTh1", "aaren", 0, "suite", 192),
    Cell("classify", "JapaneseVowels", "transformer", 3, "tslib"),
    Cell("rl", "hopper-medium-replay", "aaren", 4, "mindt", tag="x1a2b3c4d"),
    Cell("forecast", "ETTh1", "transformer", 1, "tslib", 720, tag="lr3e-4"),
], ids=str)
def test_key_round_trip(cell):
    assert Cell.parse(cell.key) == cell
    assert cell.key.count("/") == 4 and cell.key.endswith(f"/{cell.model}/seed{cell.seed}")


def test_legacy_keys_and_records_read_as_their_protocol():
    assert Cell.parse("forecast/ETTh1-H96/aaren/seed2") == Cell("forecast", "ETTh1", "aaren", 2, "suite", 96)
    old = {"task": "classify", "dataset": "Handwriting", "variant": "", "model": "aaren", "seed": 0,
           "metrics": {}, "config": {"task": {"protocol": "tslib"}}}
    assert Cell.from_record(old).protocol == "tslib"
    old["config"]["task"]["protocol"] = "holdout"
    assert Cell.from_record(old).protocol == "suite"
    fc = {"task": "forecast", "dataset": "ETTh1", "variant": "-H336", "model": "aaren", "seed": 1, "metrics": {}}
    assert Cell.from_record(fc) == Cell("forecast", "ETTh1", "aaren", 1, "suite", 336)
    with pytest.raises(CellKeyError):
        Cell.parse("not/a/key")


def test_measuring_overrides_and_tags():
    neutral = ["seed=3", "model=aaren", "dataset=ETTh1", "task=forecast", "protocol=tslib", "logger=wandb",
               "trainer=gpu", "trainer.devices=2", "trainer.num_nodes=2", "trainer.strategy=ddp",
               "model.use_kernel=true", "model.scan_chunk=8", "model.chunk=16", "paths.runs=/x", "hydra/launcher=slurm",
               "hydra.launcher.partition=gpu", "+matrix=paper", "task.pred_len=96", "task.num_workers=4",
               "skip_done=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
               "trainer.deterministic=true"]
    assert measuring_overrides(neutral) == []
    assert run_tag(None, neutral) is None
    measuring = ["dataset.file=/tmp/x.hdf5", "trainer.limit_train_batches=2", "model.d_model=64",
                 "task.optimizer.lr=3e-4", "task.max_ep_len=10", "+task.extra=1", "trainer.precision=bf16-mixed",
                 "matmul_precision=highest"]
    for o in measuring:
        assert measuring_overrides(neutral + [o]) == [o], o
        tag = run_tag(None, neutral + [o])
        assert tag and tag.startswith("x") and len(tag) == 9
        assert tag == run_tag(None, [o] + neutral), "the tag depends on the overrides, not their order"
    assert run_tag("smoke", measuring) == "smoke"
    with pytest.raises(ValueError, match="letters"):
        run_tag("a/b", [])


def test_trainer_choices_keep_the_precision():
    """`trainer=<choice>` is neutral, so no trainer file may change the precision (a measuring setting)
    or the sharing of the data between processes."""
    default = OmegaConf.load(CONF / "trainer" / "default.yaml")
    assert default.use_distributed_sampler is False  # the datamodules share each split themselves
    for path in sorted((CONF / "trainer").glob("*.yaml")):
        node = OmegaConf.load(path)
        assert node.get("precision", default.precision) == default.precision, path.name
        assert node.get("use_distributed_sampler", False) is False, path.name


def test_normalize_argv():
    assert normalize_argv(["task=rl", "model=aaren"]) == ["task=rl", "model=aaren", "dataset=hopper-medium"]
    assert normalize_argv(["task=forecast", "dataset=ETTm1"]) == ["task=forecast", "dataset=ETTm1"]
    assert normalize_argv(["+protocol=tslib", "dataset=Handwriting"]) == ["protocol=tslib", "dataset=Handwriting"]
    assert normalize_argv(["-m", "+matrix=paper", "task=rl"]) == ["-m", "+matrix=paper", "task=rl"]
    with pytest.raises(ConfigError, match="sweep dataset"):
        normalize_argv(["-m", "task=rl,forecast"])
    with pytest.raises(ConfigError, match="unknown task"):
        normalize_argv(["task=nope"])


@pytest.mark.parametrize("argv", [
    ["task=rl", "model=aaren", "--cfg", "job"], ["--cfg", "job", "task=rl", "model=aaren"],
    ["task=rl", "-c", "job", "model=aaren"], ["task=rl", "--info", "model=aaren"],
    ["task=rl", "--info", "defaults", "model=aaren"], ["-m", "task=rl", "model=aaren"],
    ["task=rl", "--multirun", "model=aaren"], ["--config-name", "config", "task=rl", "model=aaren"],
    ["task=rl", "--cfg=job", "model=aaren"],
])
def test_normalize_argv_keeps_hydra_flags_apart_from_the_overrides(argv):
    """Hydra reads its overrides as one run of words: the flags (with their values) go first,
    the overrides after them, the task's default dataset among the overrides."""
    out = normalize_argv(argv)
    n_flags = len(out) - 3
    assert out[n_flags:] == ["task=rl", "model=aaren", "dataset=hopper-medium"]
    assert [a for a in argv if a not in out[n_flags:]] == out[:n_flags]


def test_numbers_in_overrides_are_one_cell_whatever_their_spelling():
    spellings = ["task.optimizer.lr=1e-3", "task.optimizer.lr=0.001", "task.optimizer.lr=1.0e-3", "task.optimizer.lr=1E-3"]
    assert len({run_tag(None, [o]) for o in spellings}) == 1
    assert run_tag(None, ["trainer.max_epochs=3"]) == run_tag(None, ["trainer.max_epochs=3.0"])
    assert run_tag(None, ["task.optimizer.lr=1e-3"]) != run_tag(None, ["task.optimizer.lr=1e-4"])
    assert canonical_override("task.features=S") == "task.features=S"
    assert canonical_override("dataset.file=/data/1e3.csv") == "dataset.file=/data/1e3.csv"


def _grid(matrix: str) -> dict:
    """hydra.sweeper.params of +matrix=<matrix>, expanded by Hydra's own override parser."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+matrix={matrix}"], return_hydra_config=True)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    return {o.key_or_group: list(o.sweep_string_iterator()) for o in parsed}


def test_paper_sweep_is_the_study_and_composes_to_valid_pairs():
    grid = _grid("paper")
    assert sorted(grid["dataset"]) == sorted(n for v in PAPER_DATASETS.values() for n in v)
    assert grid["model"] == ["aaren", "transformer"] and grid["seed"] == ["0", "1", "2", "3", "4"]
    study_cells = paper_study().cells(protocols())
    assert len(grid["dataset"]) * len(grid["model"]) * len(grid["seed"]) == len(study_cells) == 380
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in grid["dataset"]:
            cfg = compose("config", overrides=["+matrix=paper", f"dataset={name}", "model=transformer", "seed=3"])
            want = next(c for c in study_cells if c.dataset == name and c.model == "transformer" and c.seed == 3)
            assert cfg.cell == want.key


def test_horizon_sweep():
    grid = _grid("paper_horizons")
    assert sorted(grid["dataset"]) == sorted(PAPER_DATASETS["forecast"])
    assert grid["task.pred_len"] == [str(h) for h in HORIZONS]
    assert len(paper_study(horizons=HORIZONS).cells(protocols())) == (30 + 8 * 4) * 10


def test_protocols_multiply_only_the_tasks_that_define_them():
    defined = protocols()
    study = paper_study(protocols=("suite", "tslib"))
    cells = study.cells(defined)
    tslib = [c for c in cells if c.protocol == "tslib"]
    assert {c.task for c in tslib} == {t for t, ps in defined.items() if "tslib" in ps}
    assert len(cells) == 380 + len(tslib)


def test_submit_commands():
    cells = paper_study().cells(protocols())
    assert commands(cells) == ["python train.py -m +matrix=paper hydra/launcher=slurm"]
    some = [c for c in cells if c.dataset in ("JapaneseVowels", "Handwriting") and c.seed == 0]
    assert commands(some, "local") == [
        "python train.py -m +matrix=paper dataset=Handwriting,JapaneseVowels seed=0 hydra/launcher=local"]
    fc = paper_study(horizons=HORIZONS, tasks=("forecast",), protocols=("tslib",)).cells({"forecast": ("tslib",)})
    (cmd,) = commands(fc)
    assert "protocol=tslib" in cmd and "task.pred_len=96,192,336,720" in cmd and "dataset=ECL,ETTh1," in cmd


def test_status_and_estimate(tmp_path):
    runs = tmp_path / "runs"
    cells = [Cell("classify", "JapaneseVowels", "aaren", s) for s in range(5)]
    write_json_atomic(runs / cells[0].key / "result.json",
                      {"task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 0,
                       "metrics": {"test/acc": 0.9}, "wall_time_s": {"total": 7200.0}, "device": "cuda:0"})
    (runs / cells[1].key / "checkpoints").mkdir(parents=True)
    (runs / cells[1].key / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (runs / cells[2].key).mkdir(parents=True)
    (runs / cells[2].key / "result.json").write_text('{"task": "classify", "met')  # torn: not done
    write_json_atomic(runs / cells[3].key / "failed.json", {"cell": cells[3].key, "reason": "test/loss is nan"})
    assert [P.cell_status(c, runs) for c in cells] == ["done", "started", "pending", "failed", "pending"]
    measured = P.measured_hours(runs)
    assert measured[("classify", "*")][0] == pytest.approx(2.0)
    assert P.cell_hours(cells[4], measured) == (pytest.approx(2.0), "measured (dataset, cuda)")
    assert P.cell_hours(Cell("rl", "hopper-medium", "aaren", 0), measured)[1] == "assumed"


def test_plan_command(tmp_path, capsys):
    runs = tmp_path / "runs"
    done = Cell("classify", "JapaneseVowels", "aaren", 0)
    write_json_atomic(runs / done.key / "result.json",
                      {"task": "classify", "dataset": "JapaneseVowels", "model": "aaren", "seed": 0, "protocol": "suite",
                       "metrics": {}, "wall_time_s": {"total": 36.0}, "device": "cpu"})
    failed = Cell("classify", "Handwriting", "aaren", 0)
    write_json_atomic(runs / failed.key / "failed.json", {"cell": failed.key, "reason": "test metrics are not finite"})
    script = tmp_path / "submit.sh"
    assert main(["plan", "--runs", str(runs), "--jobs", "--emit", str(script)]) == 0
    out = capsys.readouterr().out
    assert "# aaren-bench plan: 380 jobs" in out
    assert "total: 380 jobs, 1 done, 1 failed, 379 to run" in out
    assert f"done     {done.key}" in out and f"failed   {failed.key}" in out
    assert "test metrics are not finite" in out
    assert "python train.py -m +matrix=paper hydra/launcher=slurm" in script.read_text()

    assert main(["plan", "--runs", str(runs), "--tasks", "classify", "--seeds", "0", "--pending",
                 "--launcher", "local"]) == 0
    out = capsys.readouterr().out
    assert "dataset=JapaneseVowels model=transformer seed=0 hydra/launcher=local" in out
    assert "model=aaren" not in out.split("JapaneseVowels model=transformer")[0].splitlines()[-1]


def test_plan_bad_input(tmp_path, capsys):
    assert main(["plan", "--runs", str(tmp_path), "--horizons", "100"]) == 2
    assert main(["plan", "--runs", str(tmp_path), "--models", "rnn"]) == 2
    assert main(["plan", "--runs", str(tmp_path), "--conf", str(tmp_path)]) == 2
    assert main(["plan", "--runs", str(tmp_path), "--protocols", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown horizon" in err and "no model config" in err and "no dataset configs" in err
    assert "unknown protocol" in err
