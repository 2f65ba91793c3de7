"""`aaren-bench plan`: the paper's matrix, what is done, what it costs, how to submit it.

The matrix is derived from the dataset configs that exist (``conf/dataset/<Name>.yaml`` with
``dataset.task``), checked against the paper's 38 datasets, crossed with the backbones and
seeds (forecasting at horizon 192, or all four horizons with ``--horizons all``).

Hydra sweeps are cartesian products, but a dataset belongs to one task. The sweep therefore
runs over one config group, ``matrix/cell``, with one option per dataset
(``conf/matrix/cell/<task>-<dataset>.yaml``) that selects both its task and its dataset::

    python train.py -m +matrix=paper hydra/launcher=slurm          # 38 x 2 x 5 jobs
    python train.py -m +matrix=paper_horizons hydra/launcher=slurm # forecasting at 96..720

``aaren-bench plan --write-configs`` (re)writes those options from ``conf/dataset``; a test
fails when they are out of date.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from aaren_bench.results import iter_records, load_record

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MODELS = ("aaren", "transformer")
SEEDS = (0, 1, 2, 3, 4)
HORIZONS = (96, 192, 336, 720)
DEFAULT_HORIZON = 192
HORIZON_KEY = "task.pred_len"
TASK_ORDER = ("rl", "events", "forecast", "classify")  # the paper's Tables 1-4

# The paper's 38 datasets (Feng et al. 2024; docs/shared PROTOCOL.md section 2), per task.
PAPER_DATASETS: dict[str, tuple[str, ...]] = {
    "rl": tuple(f"{env}-{kind}" for env in ("halfcheetah", "hopper", "walker2d", "ant")
                for kind in ("medium", "medium-replay", "medium-expert")),
    "events": ("MIMIC", "Wiki", "Reddit", "Mooc", "StackOverflow", "Sin", "Uber", "Taxi"),
    "forecast": ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange", "Traffic", "ECL"),
    "classify": ("EthanolConcentration", "FaceDetection", "Handwriting", "Heartbeat", "JapaneseVowels",
                 "PEMS-SF", "SelfRegulationSCP1", "SelfRegulationSCP2", "SpokenArabicDigits",
                 "UWaveGestureLibrary"),
}
# Other spellings a dataset config may use for a paper dataset (compared after normalising).
ALIASES = {"stackoverflow": ("so", "sofold1"), "uber": ("uberdrop",), "taxi": ("taxitimesjanfeb",),
           "wiki": ("wikipedia",), "exchange": ("exchangerate",), "ecl": ("electricity",)}

# Assumed wall time of one run on one GPU, in hours, used only when no record of the task
# exists yet. Basis: the protocol's step/epoch budgets (docs/protocol/matrix.md, "Estimate").
ASSUMED_HOURS = {"classify": 0.15, "forecast": 0.5, "events": 0.5, "rl": 1.5}
# Forecasting cost grows with the horizon (decoder length) and the number of channels.
FORECAST_SIZE = {"Traffic": 6.0, "ECL": 3.0, "Weather": 1.5, "ETTm1": 2.0, "ETTm2": 2.0}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class DatasetConf:
    """One ``conf/dataset/<Name>.yaml`` that names a dataset and its task."""

    name: str
    task: str
    path: Path
    paper_name: str | None  # the paper's name for it, None when it is not one of the 38


@dataclass(frozen=True)
class Job:
    task: str
    dataset: str
    model: str
    seed: int
    horizon: int | None = None

    @property
    def variant(self) -> str:
        return f"-H{self.horizon}" if self.horizon is not None else ""

    @property
    def cell(self) -> str:
        """The run's key, as ``cell`` in conf/config.yaml (forecast's variant is ``-H<pred_len>``)."""
        return f"{self.task}/{self.dataset}{self.variant}/{self.model}/seed{self.seed}"


@dataclass
class Plan:
    datasets: list[DatasetConf]
    jobs: list[Job]
    missing: dict[str, list[str]]  # task -> paper datasets without a config
    extra: list[DatasetConf]  # configs that are not one of the paper's 38
    problems: list[str] = field(default_factory=list)


def paper_name(name: str, task: str) -> str | None:
    """The paper's spelling of a dataset config's name, or None when it is not a paper dataset."""
    n = _norm(name)
    for paper in PAPER_DATASETS.get(task, ()):
        if n == _norm(paper) or n in ALIASES.get(_norm(paper), ()):
            return paper
    return None


def discover(conf_dir: str | Path = CONF) -> tuple[list[DatasetConf], list[str]]:
    """Every dataset config (a file that sets ``dataset.name`` and ``dataset.task``).

    Task-default files (``conf/dataset/<task>.yaml``, a defaults list only) are skipped.
    Returns the configs and a list of problems (unreadable file, name != file name).
    """
    out, problems = [], []
    for path in sorted(Path(conf_dir, "dataset").glob("*.yaml")):
        try:
            node = OmegaConf.load(path)
        except Exception as e:  # a broken file must not hide the rest of the plan
            problems.append(f"{path}: cannot be read ({e})")
            continue
        ds = node.get("dataset") if isinstance(node, dict) or OmegaConf.is_dict(node) else None
        if ds is None or "name" not in ds or "task" not in ds:
            continue
        name, task = str(ds["name"]), str(ds["task"])
        if name != path.stem:
            problems.append(f"{path}: dataset.name is {name!r} but the file is {path.stem!r}; "
                            "`dataset=<file name>` must select it, rename one of them")
        out.append(DatasetConf(name=path.stem, task=task, path=path, paper_name=paper_name(path.stem, task)))
    return out, problems


def build_plan(conf_dir=CONF, models=MODELS, seeds=SEEDS, horizons=(DEFAULT_HORIZON,), include_extra=False,
               tasks=None) -> Plan:
    datasets, problems = discover(conf_dir)
    have = {(d.task, d.paper_name) for d in datasets if d.paper_name}
    missing = {t: [n for n in names if (t, n) not in have] for t, names in PAPER_DATASETS.items()}
    extra = [d for d in datasets if d.paper_name is None]
    chosen = [d for d in datasets if d.paper_name or include_extra]
    if tasks:
        chosen = [d for d in chosen if d.task in tasks]
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    chosen.sort(key=lambda d: (order.get(d.task, 99), d.name.lower()))
    jobs = [
        Job(d.task, d.name, m, s, h if d.task == "forecast" else None)
        for d in chosen
        for h in (horizons if d.task == "forecast" else (None,))
        for m in models
        for s in seeds
    ]
    return Plan(datasets=chosen, jobs=jobs, missing=missing, extra=extra, problems=problems)


# --- the sweep's config options -----------------------------------------------------------

def cell_option(d: DatasetConf) -> str:
    return f"{d.task}-{d.name}"


def cell_yaml(d: DatasetConf) -> str:
    lines = [
        "# @package _global_",
        f"# written by `aaren-bench plan --write-configs` from conf/dataset/{d.name}.yaml: do not edit",
        f"# one option of the matrix sweep: selects task={d.task} and dataset={d.name}",
        "defaults:",
        f"  - override /task: {d.task}",
        f"  - override /dataset: {d.name}",
        "  - _self_",
    ]
    if d.task == "forecast":
        key = HORIZON_KEY.split(".", 1)[1]
        lines += ["task:", f"  {key}: {DEFAULT_HORIZON}   # the paper's main table; all four: +matrix=paper_horizons"]
    return "\n".join(lines) + "\n"


def expected_cell_configs(conf_dir=CONF) -> dict[Path, str]:
    """The files ``--write-configs`` writes: paper datasets under matrix/cell, others under matrix/extra."""
    datasets, _ = discover(conf_dir)
    out = {}
    for d in datasets:
        group = "cell" if d.paper_name else "extra"
        out[Path(conf_dir, "matrix", group, cell_option(d) + ".yaml")] = cell_yaml(d)
    return out


def stale_cell_configs(conf_dir=CONF) -> list[str]:
    """What differs between conf/matrix/{cell,extra} and the dataset configs (empty when in sync)."""
    want = expected_cell_configs(conf_dir)
    have = {p for g in ("cell", "extra") for p in Path(conf_dir, "matrix", g).glob("*.yaml")}
    out = [f"missing: {p}" for p in sorted(want) if p not in have]
    out += [f"out of date: {p}" for p in sorted(want) if p in have and p.read_text() != want[p]]
    out += [f"no such dataset config any more: {p}" for p in sorted(have - set(want))]
    return out


def write_cell_configs(conf_dir=CONF) -> list[Path]:
    want = expected_cell_configs(conf_dir)
    for g in ("cell", "extra"):
        for p in Path(conf_dir, "matrix", g).glob("*.yaml"):
            if p not in want:
                p.unlink()
    for p, text in want.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
    return sorted(want)


# --- done / estimate ----------------------------------------------------------------------

def job_status(job: Job, runs_root: Path) -> str:
    """done (a valid record), started (a checkpoint but no record: resumes), or pending."""
    run_dir = runs_root / job.cell
    if load_record(run_dir / "result.json") is not None:
        return "done"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return "started"
    return "pending"


def measured_hours(runs_root: Path) -> dict[tuple[str, str], tuple[float, int, str]]:
    """Median wall time (hours) of existing records per (task, dataset) and per (task, "*").

    Returns {key: (hours, n_records, devices)}.
    """
    by: dict[tuple[str, str], list[float]] = {}
    dev: dict[tuple[str, str], set] = {}
    for rec in iter_records(runs_root):
        t = (rec.get("wall_time_s") or {}).get("total")
        if not t:
            continue
        for key in ((rec["task"], rec["dataset"]), (rec["task"], "*")):
            by.setdefault(key, []).append(float(t) / 3600)
            dev.setdefault(key, set()).add(str(rec.get("device", "?")).split(":")[0])
    return {k: (statistics.median(v), len(v), ",".join(sorted(dev[k]))) for k, v in by.items()}


def job_hours(job: Job, measured) -> tuple[float, str]:
    """(hours, basis) for one job: measured on the dataset, else on the task, else assumed."""
    for key, what in (((job.task, job.dataset), "dataset"), ((job.task, "*"), "task")):
        if key in measured:
            return measured[key][0], f"measured ({what}, {measured[key][2]})"
    h = ASSUMED_HOURS.get(job.task, 1.0)
    if job.task == "forecast":
        h *= FORECAST_SIZE.get(job.dataset, 1.0) * (job.horizon or DEFAULT_HORIZON) / DEFAULT_HORIZON
    return h, "assumed"


# --- commands -----------------------------------------------------------------------------

def submit_commands(plan: Plan, statuses: dict[Job, str], launcher: str, horizons, only_pending: bool,
                    models=MODELS, seeds=SEEDS) -> list[str]:
    """The `train.py -m` command(s) that run the plan, or only its unfinished cells.

    The whole matrix is ``+matrix=paper`` (and ``+matrix=paper_horizons`` for other horizons);
    a subset lists its options of ``+matrix/cell`` (the command line wins over the sweep config).
    """
    base = ["python", "train.py", "-m"]
    tail = [f"hydra/launcher={launcher}"]
    if not only_pending:
        cells = [f"{d.task}-{d.name}" for d in plan.datasets if d.paper_name]  # extras: +matrix=extra
        n_paper = sum(len(v) for v in PAPER_DATASETS.values()) - sum(len(v) for v in plan.missing.values())
        whole = len(cells) == n_paper
        ms = [] if tuple(models) == MODELS else [f"model={','.join(models)}"]
        ms += [] if tuple(seeds) == SEEDS else [f"seed={','.join(map(str, seeds))}"]
        fc = [c for c in cells if c.startswith("forecast-")]
        others = [c for c in cells if not c.startswith("forecast-")]
        cmds = []
        if not cells:
            pass
        elif tuple(horizons) == (DEFAULT_HORIZON,):
            cmds.append(base + ["+matrix=paper"] + ([] if whole else [f"+matrix/cell={','.join(cells)}"]) + ms + tail)
        elif whole:  # the first sweep runs forecasting at 192; the second the other horizons
            rest = [h for h in horizons if h != DEFAULT_HORIZON]
            if DEFAULT_HORIZON in horizons:
                cmds.append(base + ["+matrix=paper"] + ms + tail)
            else:
                cmds.append(base + ["+matrix=paper", f"+matrix/cell={','.join(others)}"] + ms + tail)
            cmds.append(base + ["+matrix=paper_horizons", f"{HORIZON_KEY}={','.join(map(str, rest))}"] + ms + tail)
        else:  # forecasting at the requested horizons; every other task once
            if others:
                cmds.append(base + ["+matrix=paper", f"+matrix/cell={','.join(others)}"] + ms + tail)
            if fc:
                cmds.append(base + ["+matrix=paper_horizons", f"+matrix/cell={','.join(fc)}",
                                    f"{HORIZON_KEY}={','.join(map(str, horizons))}"] + ms + tail)
        extra = [f"{d.task}-{d.name}" for d in plan.datasets if not d.paper_name]
        if extra:
            whole_extra = len(extra) == len(plan.extra)
            cmds.append(base + ["+matrix=extra"] + ([] if whole_extra else [f"+matrix/extra={','.join(extra)}"])
                        + ms + tail)
        return [shlex.join(c) for c in cmds]
    # one command per (models, seeds, horizon) pattern of unfinished jobs, listing its cells
    in_paper = {d.name: bool(d.paper_name) for d in plan.datasets}
    todo: dict[tuple, set] = {}
    for j, st in statuses.items():
        if st != "done":
            todo.setdefault((j.task, j.dataset, j.horizon), set()).add((j.model, j.seed))
    groups: dict[tuple, list[str]] = {}
    for (task, ds, h), ms in todo.items():
        group = "cell" if in_paper.get(ds, True) else "extra"
        key = (tuple(sorted({m for m, _ in ms})), tuple(sorted({s for _, s in ms})), h, group)
        groups.setdefault(key, []).append(f"{task}-{ds}")
    cmds = []
    for (ms, ss, h, group), cells in sorted(groups.items(), key=lambda kv: str(kv[0])):
        matrix = "extra" if group == "extra" else ("paper" if h is None else "paper_horizons")
        c = base + [f"+matrix={matrix}", f"+matrix/{group}={','.join(sorted(cells))}",
                    f"model={','.join(ms)}", f"seed={','.join(map(str, ss))}"]
        if h is not None:
            c.append(f"{HORIZON_KEY}={h}")
        cmds.append(shlex.join(c + tail))
    return cmds


# --- the command line ---------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", "runs"),
                   help="runs folder holding <cell>/result.json (default: $AAREN_RUNS or runs)")
    p.add_argument("--conf", default=str(CONF), help="the Hydra config folder (default: the package's conf/)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list (default: aaren,transformer)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma list (default: 0,1,2,3,4)")
    p.add_argument("--horizons", default=str(DEFAULT_HORIZON),
                   help="forecasting horizons: a comma list or 'all' (96,192,336,720); default 192")
    p.add_argument("--tasks", default=None, help="comma list of tasks to plan (default: all)")
    p.add_argument("--include-extra", action="store_true",
                   help="also plan dataset configs that are not among the paper's 38 (conf/matrix/extra)")
    p.add_argument("--gpus", type=int, default=8, help="jobs running at once (GPUs), for the wall-clock estimate (default 8)")
    p.add_argument("--jobs", action="store_true", help="print every job (cell and status), not just the summary")
    p.add_argument("--assumed", action="store_true",
                   help="estimate from the per-task assumptions only, ignoring the wall times of records")
    p.add_argument("--launcher", default="slurm", help="hydra/launcher for the submit commands (default: slurm)")
    p.add_argument("--pending", action="store_true", help="submit commands for the unfinished cells only")
    p.add_argument("--emit", metavar="FILE", help="also write the submit commands to FILE as a shell script")
    p.add_argument("--write-configs", action="store_true",
                   help="(re)write conf/matrix/{cell,extra}/*.yaml from conf/dataset/*.yaml and exit")


def _ints(s: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"plan: --{what} must be a comma list of integers, got {s!r}") from None


def run(args: argparse.Namespace) -> int:
    conf = Path(args.conf)
    if not (conf / "dataset").is_dir():
        print(f"plan: no dataset configs under {conf}/dataset; pass --conf <repo>/conf", file=sys.stderr)
        return 2
    if args.write_configs:
        for p in write_cell_configs(conf):
            print(p)
        return 0
    horizons = HORIZONS if args.horizons == "all" else _ints(args.horizons, "horizons")
    bad = [h for h in horizons if h not in HORIZONS]
    if bad:
        print(f"plan: unknown horizon(s) {bad}; the paper's are {HORIZONS} (or --horizons all)", file=sys.stderr)
        return 2
    models = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in models if not (conf / "model" / f"{m}.yaml").exists()]
    if unknown:
        print(f"plan: no model config for {unknown}; choose from "
              f"{sorted(p.stem for p in (conf / 'model').glob('*.yaml'))}", file=sys.stderr)
        return 2
    tasks = tuple(args.tasks.split(",")) if args.tasks else None
    plan = build_plan(conf, models, _ints(args.seeds, "seeds"), horizons, args.include_extra, tasks)
    runs = Path(args.runs)
    statuses = {j: job_status(j, runs) for j in plan.jobs}
    measured = {} if args.assumed else measured_hours(runs)

    print(f"# aaren-bench plan: {len(plan.jobs)} jobs = {len(plan.datasets)} datasets x {len(models)} backbones "
          f"x {len(_ints(args.seeds, 'seeds'))} seeds" + (f" (forecast x {len(horizons)} horizons)"
                                                         if len(horizons) > 1 else ""))
    print(f"runs folder: {runs.resolve()}\n")
    header = f"{'task':<9} {'dataset':<26} {'jobs':>5} {'done':>5} {'started':>8} {'pending':>8} {'hours':>7}  basis"
    print(header)
    print("-" * len(header))
    total_h = pending_h = 0.0
    for d in plan.datasets:
        js = [j for j in plan.jobs if j.dataset == d.name]
        st = [statuses[j] for j in js]
        hb = [job_hours(j, measured) for j in js]
        h = sum(x for x, _ in hb)
        ph = sum(x for (x, _), s in zip(hb, st) if s != "done")
        total_h += h
        pending_h += ph
        name = d.name + ("" if d.paper_name else " (extra)")
        print(f"{d.task:<9} {name:<26} {len(js):>5} {st.count('done'):>5} {st.count('started'):>8} "
              f"{st.count('pending'):>8} {h:>7.2f}  {hb[0][1] if hb else ''}")
    n_done = sum(s == "done" for s in statuses.values())
    print("-" * len(header))
    print(f"total: {len(plan.jobs)} jobs, {n_done} done, {len(plan.jobs) - n_done} to run; "
          f"estimate {total_h:.1f} device-hours in all, {pending_h:.1f} for the unfinished jobs "
          f"(about {pending_h / max(args.gpus, 1):.1f} h of wall clock with {args.gpus} jobs at once)")
    if measured:
        print("measured basis (median wall time of existing records, hours):")
        for (t, ds), (h, n, dev) in sorted(measured.items()):
            if ds == "*":
                print(f"  {t}: {h:.3f} h over {n} records on {dev}")
    print("assumed basis (no record yet), hours per run on one GPU: "
          + ", ".join(f"{t} {h}" for t, h in ASSUMED_HOURS.items())
          + "; forecast x size factor x horizon/192 (docs/protocol/matrix.md)")

    n_missing = sum(len(v) for v in plan.missing.values())
    print(f"\npaper datasets with a config: {38 - n_missing} of 38")
    for t in TASK_ORDER:
        if plan.missing.get(t):
            print(f"  missing ({t}): {', '.join(plan.missing[t])}")
    if plan.extra:
        print(f"not in the paper ({'planned' if args.include_extra else 'not planned; --include-extra'}): "
              + ", ".join(f"{d.task}/{d.name}" for d in plan.extra))
    for p in plan.problems:
        print(f"problem: {p}")
    stale = stale_cell_configs(conf)
    if stale:
        print("\nconf/matrix is out of date with conf/dataset (run `aaren-bench plan --write-configs`):")
        for s in stale:
            print(f"  {s}")

    if args.jobs:
        print("\njobs:")
        for j in plan.jobs:
            print(f"  {statuses[j]:<8} {j.cell}")

    cmds = submit_commands(plan, statuses, args.launcher, horizons, args.pending, models, _ints(args.seeds, "seeds"))
    print("\nsubmit (finished cells are skipped by skip_done=true; killed ones resume from last.ckpt):")
    for c in cmds or ["# nothing to run: every cell is done"]:
        print(f"  {c}")
    if args.emit:
        text = "#!/usr/bin/env bash\n# written by aaren-bench plan\nset -euo pipefail\n" + "\n".join(cmds) + "\n"
        Path(args.emit).write_text(text)
        os.chmod(args.emit, 0o755)
        print(f"written to {args.emit}")
    return 1 if plan.problems else 0
