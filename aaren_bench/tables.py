"""`aaren-bench tables`: the paper's Tables 1-4 rebuilt from the result records.

One table per task (1 offline RL, 2 event forecasting, 3 long-term forecasting,
4 UEA classification). A cell is mean ± sample std (ddof 1) over the seeds of one dataset
and backbone, with ``(n=k)`` when fewer seeds than expected were found; a cell without any
record reads ``missing``. The published-reference column comes from the versioned file
``aaren_bench/references.yaml`` and is left empty where no checked number exists.

Verdict (on each table's first metric): **comparable** when the intervals mean ± std of
Aaren and the Transformer overlap; otherwise **Aaren better** / **Aaren worse** in the
metric's direction. Welch's two-sided t-test p-value is printed beside it (needs >= 2 seeds
per backbone). The rule is described in docs/protocol/matrix.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from aaren_bench.matrix import DEFAULT_HORIZON, HORIZONS, PAPER_DATASETS
from aaren_bench.results import iter_records

REFERENCES = Path(__file__).with_name("references.yaml")
BACKBONES = (("transformer", "Transformer"), ("aaren", "Aaren"))


@dataclass(frozen=True)
class Metric:
    key: str  # the record's metric name, e.g. "test/acc"
    label: str
    higher_better: bool
    scale: float = 1.0  # shown value = recorded value x scale
    digits: int = 3


@dataclass(frozen=True)
class TableSpec:
    number: int
    task: str
    title: str
    metrics: tuple[Metric, ...]  # the first one decides the verdict


TABLES = (
    TableSpec(1, "rl", "Offline RL (D4RL): normalised score of the last evaluation",
              (Metric("test/normalized_score", "score", True, digits=1),)),
    TableSpec(2, "events", "Event forecasting: NLL per event, RMSE of the next inter-event time, mark accuracy",
              (Metric("test/nll", "NLL", False), Metric("test/rmse", "RMSE", False),
               Metric("test/acc", "acc (%)", True, 100.0, 1))),
    TableSpec(3, "forecast", "Long-term forecasting: MSE and MAE (standardised)",
              (Metric("test/mse", "MSE", False), Metric("test/mae", "MAE", False))),
    TableSpec(4, "classify", "UEA classification: test accuracy (%)",
              (Metric("test/acc", "acc (%)", True, 100.0, 1),)),
)


# --- statistics ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std (ddof 1); 0 for a single seed
    n: int
    values: tuple[float, ...]


def summarize(values) -> Summary | None:
    vals = tuple(float(v) for v in values if v is not None and not math.isnan(float(v)))
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return Summary(statistics.fmean(vals), std, len(vals), vals)


def welch_p(a: Summary, b: Summary) -> float | None:
    """Two-sided p-value of Welch's t-test, None with fewer than 2 values per side."""
    if a.n < 2 or b.n < 2:
        return None
    if a.std == 0 and b.std == 0:
        return 1.0 if a.mean == b.mean else 0.0
    from scipy import stats

    return float(stats.ttest_ind(a.values, b.values, equal_var=False).pvalue)


def verdict(aaren: Summary | None, transformer: Summary | None, higher_better: bool) -> str:
    """comparable when mean ± std intervals overlap, else which backbone is better."""
    if aaren is None or transformer is None:
        gone = [name for name, s in (("Aaren", aaren), ("Transformer", transformer)) if s is None]
        return "missing" if len(gone) == 2 else f"missing {gone[0]}"
    if abs(aaren.mean - transformer.mean) <= aaren.std + transformer.std:
        return "comparable"
    better = (aaren.mean > transformer.mean) == higher_better
    return "Aaren better" if better else "Aaren worse"


# --- collecting ---------------------------------------------------------------------------

def load_references(path: str | Path = REFERENCES) -> dict:
    """{task: {dataset: {"value", "std", "source", ...}}} of checked published numbers."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if "version" not in data:
        raise ValueError(f"{path}: a references file needs a top-level 'version'")
    return data.get("references") or {}


def collect(runs_root: str | Path) -> dict:
    """{(task, row, model): {metric: [values over seeds]}}, row = dataset + variant."""
    out: dict = {}
    for rec in iter_records(runs_root):
        row = f"{rec['dataset']}{rec.get('variant', '') or ''}"
        d = out.setdefault((rec["task"], row, rec["model"]), {})
        for k, v in (rec.get("metrics") or {}).items():
            d.setdefault(k, []).append(v)
        d.setdefault("_seeds", []).append(rec["seed"])
    return out


def rows_of(spec: TableSpec, collected: dict, horizons) -> list[tuple[str, bool]]:
    """(row, in_paper) in the paper's order, then rows found only in the records."""
    if spec.task == "forecast":
        rows = [f"{d}-H{h}" for d in PAPER_DATASETS["forecast"] for h in horizons]
    else:
        rows = list(PAPER_DATASETS[spec.task])
    found = sorted({row for (t, row, _) in collected if t == spec.task} - set(rows))
    if spec.task == "forecast":  # other horizons appear only when asked for
        found = [r for r in found if not any(r.endswith(f"-H{h}") for h in HORIZONS) or
                 int(r.rsplit("-H", 1)[1]) in horizons]
    return [(r, True) for r in rows] + [(r, False) for r in found]


@dataclass
class Row:
    name: str
    in_paper: bool
    cells: dict  # (model, metric.key) -> Summary | None
    reference: dict | None
    verdict: str
    p: float | None


def build_table(spec: TableSpec, collected: dict, references: dict, horizons) -> list[Row]:
    out = []
    primary = spec.metrics[0]
    for name, in_paper in rows_of(spec, collected, horizons):
        cells = {}
        for model, _ in BACKBONES:
            d = collected.get((spec.task, name, model), {})
            for m in spec.metrics:
                cells[(model, m.key)] = summarize(d.get(m.key, []))
        a, t = cells[("aaren", primary.key)], cells[("transformer", primary.key)]
        ref_key = name.rsplit("-H", 1)[0] if spec.task == "forecast" else name
        ref = (references.get(spec.task) or {}).get(ref_key)
        out.append(Row(name, in_paper, cells, ref, verdict(a, t, primary.higher_better),
                       welch_p(a, t) if a and t else None))
    return out


# --- formatting ---------------------------------------------------------------------------

def fmt_cell(s: Summary | None, m: Metric, seeds: int, pm: str = "±") -> str:
    if s is None:
        return "missing"
    text = f"{s.mean * m.scale:.{m.digits}f} {pm} {s.std * m.scale:.{m.digits}f}"
    return text + (f" (n={s.n})" if s.n < seeds else "")


def fmt_ref(ref: dict | None, m: Metric) -> str:
    if not ref:
        return ""
    std = f" ± {ref['std']}" if ref.get("std") is not None else ""
    return f"{ref['value']}{std}"


def headers(spec: TableSpec) -> list[str]:
    h = ["dataset"]
    for m in spec.metrics:
        h += [f"{label} {m.label}" for _, label in BACKBONES]
    return h + [f"published {spec.metrics[0].label}", "verdict", "Welch p"]


def row_values(spec: TableSpec, r: Row, seeds: int, pm: str = "±") -> list[str]:
    vals = [r.name + ("" if r.in_paper else " (extra)")]
    for m in spec.metrics:
        vals += [fmt_cell(r.cells[(model, m.key)], m, seeds, pm) for model, _ in BACKBONES]
    return vals + [fmt_ref(r.reference, spec.metrics[0]), r.verdict, "" if r.p is None else f"{r.p:.3f}"]


def sources(rows: list[Row]) -> list[str]:
    return sorted({r.reference["source"] for r in rows if r.reference and r.reference.get("source")})


def caption(spec: TableSpec, rows: list[Row], seeds: int) -> str:
    n_done = sum(any(s is not None for s in r.cells.values()) for r in rows)
    verdicts = [r.verdict for r in rows]
    return (f"Table {spec.number}. {spec.title}. Mean ± std over seeds (expected {seeds}; fewer shown as n=k). "
            f"Verdict on {spec.metrics[0].label}: comparable when mean ± std intervals overlap. "
            f"{n_done}/{len(rows)} rows with results; comparable {verdicts.count('comparable')}, "
            f"Aaren better {verdicts.count('Aaren better')}, Aaren worse {verdicts.count('Aaren worse')}, "
            f"missing {verdicts.count('missing')}.")


def to_markdown(spec: TableSpec, rows: list[Row], seeds: int) -> str:
    h = headers(spec)
    lines = [f"### {caption(spec, rows, seeds)}", "", "| " + " | ".join(h) + " |",
             "|" + "|".join("---" for _ in h) + "|"]
    lines += ["| " + " | ".join(row_values(spec, r, seeds)) + " |" for r in rows]
    lines += [f"\npublished: {s}" for s in sources(rows)]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
        s = s.replace(a, b)
    return s


def to_latex(spec: TableSpec, rows: list[Row], seeds: int) -> str:
    h = headers(spec)
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{_tex(caption(spec, rows, seeds))}}}", f"\\label{{tab:{spec.task}}}",
             "\\begin{tabular}{l" + "c" * (len(h) - 1) + "}", "\\toprule",
             " & ".join(_tex(x) for x in h) + " \\\\", "\\midrule"]
    for r in rows:
        vals = [_tex(v).replace("±", "$\\pm$") for v in row_values(spec, r, seeds)]
        lines.append(" & ".join(vals) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% published: {s}" for s in sources(rows)]
    lines += ["\\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(spec: TableSpec, rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "task", "dataset", "in_paper", "metric", "transformer_mean", "transformer_std",
                "transformer_n", "aaren_mean", "aaren_std", "aaren_n", "published", "published_std",
                "verdict", "welch_p"])
    for r in rows:
        for i, m in enumerate(spec.metrics):
            vals = []
            for model, _ in BACKBONES:
                s = r.cells[(model, m.key)]
                vals += ["", "", 0] if s is None else [repr(s.mean), repr(s.std), s.n]
            ref = r.reference if (r.reference and i == 0) else {}
            w.writerow([spec.number, spec.task, r.name, int(r.in_paper), m.key, *vals, ref.get("value", ""),
                        ref.get("std", ""), r.verdict if i == 0 else "",
                        "" if (r.p is None or i) else repr(r.p)])
    return buf.getvalue()


# --- the command line ---------------------------------------------------------------------

def add_tables_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", "runs"),
                   help="runs folder holding <cell>/result.json (default: $AAREN_RUNS or runs)")
    p.add_argument("--out", default=None, help="folder for table<N>_<task>.{md,tex,csv} (default: print only)")
    p.add_argument("--tables", default="1,2,3,4", help="which tables (default: 1,2,3,4)")
    p.add_argument("--seeds", type=int, default=5, help="seeds expected per cell; fewer are flagged n=k (default 5)")
    p.add_argument("--horizons", default=str(DEFAULT_HORIZON), help="forecasting horizons: comma list or 'all'")
    p.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="what to print (default md)")
    p.add_argument("--references", default=str(REFERENCES), help="published numbers (versioned YAML)")


def run_tables(args: argparse.Namespace) -> int:
    runs = Path(args.runs)
    if not runs.is_dir():
        print(f"tables: no runs folder at {runs}; pass --runs <folder> or set AAREN_RUNS", file=sys.stderr)
        return 2
    try:
        wanted = {int(x) for x in args.tables.split(",")}
        horizons = HORIZONS if args.horizons == "all" else tuple(int(h) for h in args.horizons.split(","))
    except ValueError:
        print("tables: --tables and --horizons take comma lists of integers (or --horizons all)", file=sys.stderr)
        return 2
    collected = collect(runs)
    refs = load_references(args.references)
    n_rec = sum(len(d.get("_seeds", [])) for d in collected.values())
    print(f"<!-- aaren-bench tables: {n_rec} records from {runs.resolve()} -->\n")
    for spec in TABLES:
        if spec.number not in wanted:
            continue
        rows = build_table(spec, collected, refs, horizons)
        texts = {"md": to_markdown(spec, rows, args.seeds), "latex": to_latex(spec, rows, args.seeds),
                 "csv": to_csv(spec, rows)}
        print(texts[args.format])
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for ext, key in (("md", "md"), ("tex", "latex"), ("csv", "csv")):
                (out / f"table{spec.number}_{spec.task}.{ext}").write_text(texts[key])
    if args.out:
        print(f"written to {Path(args.out).resolve()}")
    return 0
