"""`aaren-bench plan`: the study's cells, what is done, what it costs, how to submit it.

The study (``aaren_bench.study``) is derived from the dataset configs that exist, checked
against the paper's 38 datasets, crossed with the backbones, seeds and protocols
(forecasting at horizon 192, or all four with ``--horizons all``). Each cell is done (a
valid record), failed (``failed.json``: not finite, rerun), started (a checkpoint: it
resumes) or pending.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from aaren_bench.results import iter_records, load_failure, load_record
from aaren_bench.study import (
    CONF,
    DEFAULT_HORIZON,
    DEFAULT_PROTOCOL,
    HORIZONS,
    MODELS,
    SEEDS,
    TASK_ORDER,
    Cell,
    missing_paper_datasets,
    paper_study,
    protocols,
)
from aaren_bench.submit import commands

# Assumed wall time of one run on one GPU, in hours, used only when no record of the task
# exists yet. Basis: the protocol's step/epoch budgets (docs/protocol/matrix.md, "Estimate").
ASSUMED_HOURS = {"classify": 0.15, "forecast": 0.5, "events": 0.5, "rl": 1.5}
# Forecasting cost grows with the horizon (decoder length) and the number of channels.
FORECAST_SIZE = {"Traffic": 6.0, "ECL": 3.0, "Weather": 1.5, "ETTm1": 2.0, "ETTm2": 2.0}


def cell_status(cell: Cell, runs_root: Path) -> str:
    """done (a valid record), failed (failed.json, no record), started (a checkpoint), or pending."""
    run_dir = runs_root / cell.key
    if load_record(run_dir / "result.json") is not None:
        return "done"
    if load_failure(run_dir) is not None:
        return "failed"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return "started"
    return "pending"


def measured_hours(runs_root: Path) -> dict[tuple[str, str], tuple[float, int, str]]:
    """Median wall time (hours) of existing records per (task, dataset) and per (task, "*"):
    {key: (hours, n_records, devices)}."""
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


def cell_hours(cell: Cell, measured) -> tuple[float, str]:
    """(hours, basis) for one cell: measured on the dataset, else on the task, else assumed."""
    for key, what in (((cell.task, cell.dataset), "dataset"), ((cell.task, "*"), "task")):
        if key in measured:
            return measured[key][0], f"measured ({what}, {measured[key][2]})"
    h = ASSUMED_HOURS.get(cell.task, 1.0)
    if cell.task == "forecast":
        h *= FORECAST_SIZE.get(cell.dataset, 1.0) * (cell.horizon or DEFAULT_HORIZON) / DEFAULT_HORIZON
    return h, "assumed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", "runs"),
                   help="runs folder holding <cell>/result.json (default: $AAREN_RUNS or runs)")
    p.add_argument("--conf", default=str(CONF), help="the Hydra config folder (default: the package's conf/)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of backbones (default: aaren,transformer)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma list (default: 0,1,2,3,4)")
    p.add_argument("--horizons", default=str(DEFAULT_HORIZON),
                   help="forecasting horizons: a comma list or 'all' (96,192,336,720); default 192")
    p.add_argument("--protocols", default=DEFAULT_PROTOCOL,
                   help="comma list of protocols, or 'all' (every protocol a task defines); default suite. "
                        "A task is planned only under the protocols it defines")
    p.add_argument("--tasks", default=None, help="comma list of tasks to plan (default: all)")
    p.add_argument("--tag", default=None,
                   help="plan a named study beside the paper's (its cells are <protocol>+<tag>, as train.py tag=...)")
    p.add_argument("--include-extra", action="store_true",
                   help="also plan dataset configs that are not among the paper's 38")
    p.add_argument("--gpus", type=int, default=8, help="jobs running at once (GPUs), for the wall-clock estimate (default 8)")
    p.add_argument("--jobs", action="store_true", help="print every cell and its status, not just the summary")
    p.add_argument("--assumed", action="store_true",
                   help="estimate from the per-task assumptions only, ignoring the wall times of records")
    p.add_argument("--launcher", default="slurm", help="hydra/launcher for the submit commands (default: slurm)")
    p.add_argument("--pending", action="store_true", help="submit commands for the unfinished cells only")
    p.add_argument("--emit", metavar="FILE", help="also write the submit commands to FILE as a shell script")


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
    defined = protocols(conf)
    every = sorted({p for ps in defined.values() for p in ps})
    wanted = tuple(every) if args.protocols == "all" else tuple(p for p in args.protocols.split(",") if p)
    unknown = [p for p in wanted if p not in every]
    if unknown:
        print(f"plan: unknown protocol(s) {unknown}; defined: {every} (conf/task_protocol/)", file=sys.stderr)
        return 2
    seeds = _ints(args.seeds, "seeds")
    tasks = tuple(args.tasks.split(",")) if args.tasks else None
    study = paper_study(conf, args.include_extra, tasks, models=models, seeds=seeds, horizons=horizons,
                        protocols=wanted, tag=args.tag)
    cells = study.cells(defined)
    runs = Path(args.runs)
    statuses = {c: cell_status(c, runs) for c in cells}
    measured = {} if args.assumed else measured_hours(runs)

    print(f"# aaren-bench plan: {len(cells)} jobs = {len(study.datasets)} datasets x {len(models)} backbones "
          f"x {len(seeds)} seeds under {', '.join(wanted)}"
          + (f" (forecast x {len(horizons)} horizons)" if len(horizons) > 1 else ""))
    print(f"runs folder: {runs.resolve()}\n")
    header = (f"{'task':<9} {'dataset':<26} {'protocol':<8} {'jobs':>5} {'done':>5} {'failed':>6} {'started':>8} "
              f"{'pending':>8} {'hours':>7}  basis")
    print(header)
    print("-" * len(header))
    total_h = pending_h = 0.0
    rows: dict[tuple, list[Cell]] = {}
    for c in cells:
        rows.setdefault((c.task, c.dataset, c.protocol), []).append(c)
    extra = {d.name for d in study.datasets if not d.in_paper}
    for (task, ds, proto), cs in rows.items():
        st = [statuses[c] for c in cs]
        hb = [cell_hours(c, measured) for c in cs]
        h = sum(x for x, _ in hb)
        ph = sum(x for (x, _), s in zip(hb, st) if s != "done")
        total_h += h
        pending_h += ph
        name = ds + (" (extra)" if ds in extra else "")
        print(f"{task:<9} {name:<26} {proto:<8} {len(cs):>5} {st.count('done'):>5} {st.count('failed'):>6} "
              f"{st.count('started'):>8} {st.count('pending'):>8} {h:>7.2f}  {hb[0][1] if hb else ''}")
    n_done = sum(s == "done" for s in statuses.values())
    n_failed = sum(s == "failed" for s in statuses.values())
    print("-" * len(header))
    print(f"total: {len(cells)} jobs, {n_done} done, {n_failed} failed, {len(cells) - n_done} to run; "
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

    missing = missing_paper_datasets(conf)
    n_missing = sum(len(v) for v in missing.values())
    print(f"\npaper datasets with a config: {38 - n_missing} of 38")
    for t in TASK_ORDER:
        if missing.get(t):
            print(f"  missing ({t}): {', '.join(missing[t])}")
    print("protocols defined: " + "; ".join(f"{t}: {', '.join(defined.get(t, ()))}" for t in TASK_ORDER))
    for p in study.problems:
        print(f"problem: {p}")
    if n_failed:
        print("\nfailed cells (they run again when resubmitted):")
        for c, s in statuses.items():
            if s == "failed":
                print(f"  {c.key}: {((load_failure(runs / c.key) or {}).get('reason') or '?').strip().splitlines()[0]}")

    if args.jobs:
        print("\njobs:")
        for c in cells:
            print(f"  {statuses[c]:<8} {c.key}")

    todo = [c for c in cells if statuses[c] != "done"] if args.pending else cells
    cmds = commands(todo, args.launcher)
    print("\nsubmit (finished cells are skipped by skip_done=true; killed ones resume from last.ckpt):")
    for c in cmds or ["# nothing to run: every cell is done"]:
        print(f"  {c}")
    if args.emit:
        text = "#!/usr/bin/env bash\n# written by aaren-bench plan\nset -euo pipefail\n" + "\n".join(cmds) + "\n"
        Path(args.emit).write_text(text)
        os.chmod(args.emit, 0o755)
        print(f"written to {args.emit}")
    return 1 if study.problems else 0
