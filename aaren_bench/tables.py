"""`aaren-bench tables`: the paper's Tables 1-4 rebuilt from the result records.

One table per task and protocol (1 offline RL, 2 event forecasting, 3 long-term
forecasting, 4 UEA classification; ``suite`` first, then every other protocol that has
records). A cell is mean ± sample std (ddof 1) over the seeds of one dataset and backbone,
with ``(n=k)`` when fewer seeds than expected were found; a cell without any record reads
``missing``. Every backbone with records gets its columns (the Transformer first). Tagged
cells (runs that changed what is measured) are left out unless ``--tags`` asks for them;
then they are their own rows. The published-reference column comes from the versioned file
``aaren_bench/references.yaml``, only under the protocol the reference followed, and is left
empty where no checked number exists.

Verdict (on each table's first metric), for each backbone against the Transformer, only
where both have at least 2 seeds (fewer: ``n<2``, no verdict): **comparable** when the
intervals mean ± std overlap; otherwise **better** / **worse** in the metric's direction.
Welch's two-sided t-test p-value is printed beside it. The rule is in the caption and in
docs/protocol/matrix.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from aaren_bench.results import scan_records
from aaren_bench.study import DEFAULT_HORIZON, DEFAULT_PROTOCOL, HORIZONS, PAPER_DATASETS

log = logging.getLogger("aaren_bench")

REFERENCES = Path(__file__).with_name("references.yaml")
LABELS = {"transformer": "Transformer", "aaren": "Aaren", "linear_attn": "LinearAttn", "mamba2": "Mamba2"}
BASELINE = "transformer"
MIN_SEEDS = 2  # a verdict needs at least this many seeds on both sides


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


def verdict(other: Summary | None, transformer: Summary | None, higher_better: bool, label: str = "Aaren") -> str:
    """comparable when mean ± std intervals overlap, else better/worse; only with >= 2 seeds on both sides."""
    if other is None or transformer is None:
        gone = [name for name, s in ((label, other), ("Transformer", transformer)) if s is None]
        return "missing" if len(gone) == 2 else f"missing {gone[0]}"
    if other.n < MIN_SEEDS or transformer.n < MIN_SEEDS:
        return "n<2"
    if abs(other.mean - transformer.mean) <= other.std + transformer.std:
        return "comparable"
    better = (other.mean > transformer.mean) == higher_better
    return f"{label} better" if better else f"{label} worse"


# --- collecting ---------------------------------------------------------------------------

def load_references(path: str | Path = REFERENCES) -> dict:
    """{task: {dataset: {"value", "std", "source", "protocol", ...}}} of checked published numbers."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if "version" not in data:
        raise ValueError(f"{path}: a references file needs a top-level 'version'")
    return data.get("references") or {}


def collect(runs_root: str | Path, tags: bool = False, report: bool = True) -> dict:
    """{(task, protocol, row, model): {metric: [values over seeds]}}; row = dataset + variant
    (+ ``+tag`` for a tagged cell, which is skipped unless ``tags``). One record per cell key;
    ``_records`` counts them, ``_problems`` lists what was not counted (logged when ``report``)."""
    records, problems = scan_records(runs_root)
    out: dict = {"_records": len(records), "_problems": problems}
    for msg in problems if report else ():
        log.warning("warning: %s", msg)
    for rec in records:
        c = rec["_cell"]
        if c.tag and not tags:
            out.setdefault("_skipped_tagged", []).append(c.key)
            continue
        row = c.row + (f" +{c.tag}" if c.tag else "")
        d = out.setdefault((c.task, c.protocol, row, c.model), {})
        for k, v in (rec.get("metrics") or {}).items():
            d.setdefault(k, []).append(v)
        d.setdefault("_seeds", []).append(c.seed)
    return out


def protocols_of(spec: "TableSpec", collected: dict) -> list[str]:
    """The protocols a task's table is built for: suite, then every other one with records."""
    found = {k[1] for k in collected if isinstance(k, tuple) and k[0] == spec.task}
    return [DEFAULT_PROTOCOL] + sorted(found - {DEFAULT_PROTOCOL})


def backbones_of(collected: dict) -> list[str]:
    """The Transformer and Aaren (always: the paper's two columns), then every other backbone
    with records, by name."""
    found = {k[3] for k in collected if isinstance(k, tuple)}
    first = [BASELINE, "aaren"]
    return first + sorted(found - set(first))


def rows_of(spec: TableSpec, protocol: str, collected: dict, horizons) -> list[tuple[str, bool]]:
    """(row, in_paper) in the paper's order, then rows found only in the records."""
    if spec.task == "forecast":
        rows = [f"{d}-H{h}" for d in PAPER_DATASETS["forecast"] for h in horizons]
    else:
        rows = list(PAPER_DATASETS[spec.task])
    found = sorted({k[2] for k in collected if isinstance(k, tuple) and k[:2] == (spec.task, protocol)} - set(rows))
    if spec.task == "forecast":  # other horizons appear only when asked for
        found = [r for r in found if int(r.split(" +")[0].rsplit("-H", 1)[1]) in horizons]
    return [(r, True) for r in rows] + [(r, False) for r in found]


@dataclass
class Row:
    name: str
    in_paper: bool
    cells: dict  # (model, metric.key) -> Summary | None
    reference: dict | None
    verdicts: dict  # model -> verdict against the Transformer
    p: dict  # model -> Welch p | None


def build_table(spec: TableSpec, protocol: str, collected: dict, references: dict, horizons,
                backbones: list[str]) -> list[Row]:
    out = []
    primary = spec.metrics[0]
    for name, in_paper in rows_of(spec, protocol, collected, horizons):
        cells = {}
        for model in backbones:
            d = collected.get((spec.task, protocol, name, model), {})
            for m in spec.metrics:
                cells[(model, m.key)] = summarize(d.get(m.key, []))
        t = cells[(BASELINE, primary.key)]
        verdicts, ps = {}, {}
        for model in backbones:
            if model == BASELINE:
                continue
            a = cells[(model, primary.key)]
            verdicts[model] = verdict(a, t, primary.higher_better, LABELS.get(model, model))
            ps[model] = welch_p(a, t) if a and t else None
        ref_key = name.rsplit("-H", 1)[0] if spec.task == "forecast" else name
        ref = (references.get(spec.task) or {}).get(ref_key)
        if ref and ref.get("protocol", DEFAULT_PROTOCOL) != protocol:
            ref = None  # a published number only beside runs of the protocol it followed
        out.append(Row(name, in_paper, cells, ref, verdicts, ps))
    return out


# --- formatting ---------------------------------------------------------------------------

@dataclass
class Table:
    spec: TableSpec
    protocol: str
    backbones: list[str]
    rows: list[Row]
    seeds: int

    @property
    def others(self) -> list[str]:
        return [m for m in self.backbones if m != BASELINE]

    @property
    def stem(self) -> str:
        suffix = "" if self.protocol == DEFAULT_PROTOCOL else f"_{self.protocol}"
        return f"table{self.spec.number}_{self.spec.task}{suffix}"


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


def headers(t: Table) -> list[str]:
    h = ["dataset"]
    for m in t.spec.metrics:
        h += [f"{LABELS.get(b, b)} {m.label}" for b in t.backbones]
    h.append(f"published {t.spec.metrics[0].label}")
    for b in t.others:
        h += [f"verdict {LABELS.get(b, b)}", f"Welch p {LABELS.get(b, b)}"]
    return h


def row_values(t: Table, r: Row, pm: str = "±") -> list[str]:
    vals = [r.name + ("" if r.in_paper else " (extra)")]
    for m in t.spec.metrics:
        vals += [fmt_cell(r.cells[(b, m.key)], m, t.seeds, pm) for b in t.backbones]
    vals.append(fmt_ref(r.reference, t.spec.metrics[0]))
    for b in t.others:
        vals += [r.verdicts[b], "" if r.p.get(b) is None else f"{r.p[b]:.3f}"]
    return vals


def sources(rows: list[Row]) -> list[str]:
    return sorted({r.reference["source"] for r in rows if r.reference and r.reference.get("source")})


def caption(t: Table) -> str:
    n_done = sum(any(s is not None for s in r.cells.values()) for r in t.rows)
    counts = []
    for b in t.others:
        v = [r.verdicts[b] for r in t.rows]
        label = LABELS.get(b, b)
        counts.append(f"{label}: comparable {v.count('comparable')}, better {v.count(f'{label} better')}, "
                      f"worse {v.count(f'{label} worse')}, n<2 {v.count('n<2')}")
    return (f"Table {t.spec.number} ({t.protocol} protocol). {t.spec.title}. Mean ± std over seeds (expected "
            f"{t.seeds}; fewer shown as n=k). Verdict on {t.spec.metrics[0].label} against the Transformer, only where "
            f"both backbones have at least {MIN_SEEDS} seeds (else n<2): comparable when the mean ± std intervals "
            f"overlap, else better or worse. {n_done}/{len(t.rows)} rows with results; " + "; ".join(counts) + ".")


def to_markdown(t: Table) -> str:
    h = headers(t)
    lines = [f"### {caption(t)}", "", "| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"]
    lines += ["| " + " | ".join(row_values(t, r)) + " |" for r in t.rows]
    lines += [f"\npublished: {s}" for s in sources(t.rows)]
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    h = headers(t)
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{_tex(caption(t))}}}", f"\\label{{tab:{t.spec.task}-{t.protocol}}}",
             "\\begin{tabular}{l" + "c" * (len(h) - 1) + "}", "\\toprule",
             " & ".join(_tex(x) for x in h) + " \\\\", "\\midrule"]
    for r in t.rows:
        vals = [_tex(v).replace("±", "$\\pm$") for v in row_values(t, r)]
        lines.append(" & ".join(vals) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"% published: {s}" for s in sources(t.rows)]
    lines += ["\\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "task", "protocol", "dataset", "in_paper", "metric"]
    for b in t.backbones:
        head += [f"{b}_mean", f"{b}_std", f"{b}_n"]
    head += ["published", "published_std"]
    for b in t.others:
        head += [f"verdict_{b}", f"welch_p_{b}"]
    w.writerow(head)
    for r in t.rows:
        for i, m in enumerate(t.spec.metrics):
            vals = []
            for b in t.backbones:
                s = r.cells[(b, m.key)]
                vals += ["", "", 0] if s is None else [repr(s.mean), repr(s.std), s.n]
            ref = r.reference if (r.reference and i == 0) else {}
            tail = []
            for b in t.others:
                tail += [r.verdicts[b] if i == 0 else "", "" if (r.p.get(b) is None or i) else repr(r.p[b])]
            w.writerow([t.spec.number, t.spec.task, t.protocol, r.name, int(r.in_paper), m.key, *vals,
                        ref.get("value", ""), ref.get("std", ""), *tail])
    return buf.getvalue()


def build_tables(runs_root, wanted=(1, 2, 3, 4), horizons=(DEFAULT_HORIZON,), seeds: int = 5, tags: bool = False,
                 references: dict | None = None) -> list[Table]:
    collected = collect(runs_root, tags)
    refs = load_references() if references is None else references
    backbones = backbones_of(collected)
    out = []
    for spec in TABLES:
        if spec.number not in wanted:
            continue
        for proto in protocols_of(spec, collected):
            out.append(Table(spec, proto, backbones, build_table(spec, proto, collected, refs, horizons, backbones),
                             seeds))
    return out


# --- the command line ---------------------------------------------------------------------

def add_tables_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", "runs"),
                   help="runs folder holding <cell>/result.json (default: $AAREN_RUNS or runs)")
    p.add_argument("--out", default=None, help="folder for table<N>_<task>[_<protocol>].{md,tex,csv} (default: print only)")
    p.add_argument("--tables", default="1,2,3,4", help="which tables (default: 1,2,3,4)")
    p.add_argument("--seeds", type=int, default=5, help="seeds expected per cell; fewer are flagged n=k (default 5)")
    p.add_argument("--horizons", default=str(DEFAULT_HORIZON), help="forecasting horizons: comma list or 'all'")
    p.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="what to print (default md)")
    p.add_argument("--references", default=str(REFERENCES), help="published numbers (versioned YAML)")
    p.add_argument("--tags", action="store_true",
                   help="also show tagged cells (runs that changed what is measured) as rows of their own")


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
    tables = build_tables(runs, wanted, horizons, args.seeds, args.tags, load_references(args.references))
    seen = collect(runs, False, report=False)
    skipped = seen.get("_skipped_tagged", []) if not args.tags else []
    print(f"<!-- aaren-bench tables from {runs.resolve()}: {seen['_records']} records (one per cell)"
          + (f", {len(seen['_problems'])} warnings above" if seen["_problems"] else "")
          + (f"; {len(skipped)} tagged records left out (--tags shows them)" if skipped else "") + " -->\n")
    for t in tables:
        texts = {"md": to_markdown(t), "latex": to_latex(t), "csv": to_csv(t)}
        print(texts[args.format])
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for ext, key in (("md", "md"), ("tex", "latex"), ("csv", "csv")):
                (out / f"{t.stem}.{ext}").write_text(texts[key])
    if args.out:
        print(f"written to {Path(args.out).resolve()}")
    return 0
