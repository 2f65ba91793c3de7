"""The six backbones of the attention-as-RNN family on three tasks, one seed: a check for the note.

Aaren, the Transformer, linear attention, Mamba-2, mLSTM and TTT-Linear (same block, same task settings; the
mixers' sizes: docs/protocol/family.md) on

- JapaneseVowels (classify): the task's own settings (early stopping on val/acc, patience 10);
- ETTh1, horizon 192 (forecast): the CPU profile of benchmarks/forecast_bench.py (d_model 128,
  d_ff 256), the task's epochs (10, patience 3) unless ``--forecast-epochs`` says fewer;
- Sin (events): the task's size (d_model 64, 2 layers), ``--events-epochs`` epochs (Meta TPP
  trains 2000; this is a short check, not the protocol's result).

Every run goes through ``aaren_bench.run.train`` (what ``train.py`` runs) with ``tag=family-check``,
so its record lands in the cell ``<task>/<dataset>/suite+family-check/<model>/seed<seed>`` under
``--runs`` and never in a paper cell; a cell already done is read back, not run again, so a
second call only prints the table.

    nice -n 10 python benchmarks/family_bench.py --forecast-epochs 3   # what docs/benchmarks/family.md shows
    python benchmarks/family_bench.py --datasets Sin --events-epochs 5
    python benchmarks/family_bench.py --markdown > table.md            # the table only, as markdown

Set AAREN_DATA to the folder holding ETT-small/ETTh1.csv.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")
DATASETS = ("JapaneseVowels", "ETTh1", "Sin")
PROFILE = ["task.backbone.d_model=128", "task.backbone.d_ff=256"]  # benchmarks/forecast_bench.py PROFILE
COLUMNS = {  # dataset -> (metric, better, shown as)
    "JapaneseVowels": [("test/acc", "max", "acc")],
    "ETTh1": [("test/mse", "min", "MSE"), ("test/mae", "min", "MAE")],
    "Sin": [("test/nll", "min", "NLL"), ("test/rmse", "min", "RMSE")],
}
TAG = "family-check"


def overrides_for(dataset: str, args) -> list[str]:
    if dataset == "JapaneseVowels":
        return ["dataset=JapaneseVowels"]
    if dataset == "ETTh1":
        extra = [f"task.default_epochs={args.forecast_epochs}"] if args.forecast_epochs else []
        return ["dataset=ETTh1", "task.pred_len=192", *PROFILE, *extra]
    if dataset == "Sin":
        return ["dataset=Sin", f"task.max_epochs={args.events_epochs}"]
    raise SystemExit(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")


def run_one(dataset: str, model: str, args) -> dict:
    from aaren_bench.run import train
    from aaren_bench.study import compose_config

    overrides = [*overrides_for(dataset, args), f"model={model}", f"seed={args.seed}", f"tag={TAG}",
                 f"paths.runs={args.runs}", "logger=csv", "trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false", *args.overrides]
    cfg = compose_config(overrides)
    t0 = time.perf_counter()
    rec = train(cfg)
    return {"record": rec, "seconds_here": time.perf_counter() - t0}


def table(results: dict, datasets, models) -> str:
    """A markdown table: one row per (dataset, metric), one column per backbone; best in bold."""
    head = "| dataset | metric | " + " | ".join(models) + " |"
    lines = [head, "|" + " --- |" * (len(models) + 2)]
    for ds in datasets:
        for metric, better, shown in COLUMNS[ds]:
            vals = {m: results.get((ds, m), {}).get("record", {}).get("metrics", {}).get(metric) for m in models}
            known = [v for v in vals.values() if v is not None]
            best = (max if better == "max" else min)(known) if known else None
            cells = []
            for m in models:
                v = vals[m]
                text = "-" if v is None else f"{v:.4f}"
                cells.append(f"**{text}**" if v is not None and v == best else text)
            lines.append(f"| {ds} | {shown} ({'higher' if better == 'max' else 'lower'} is better) | " + " | ".join(cells) + " |")
        ep = []
        for m in models:
            rec = results.get((ds, m), {}).get("record")
            if not rec:
                ep.append("-")
                continue
            fit = rec.get("wall_time_s", {}).get("fit", float("nan"))
            ep.append(f"{rec['epochs']} ep, {fit / max(rec['epochs'], 1):.1f} s/ep")
        lines.append(f"| {ds} | epochs, fit s/epoch | " + " | ".join(ep) + " |")
        params = []
        for m in models:
            rec = results.get((ds, m), {}).get("record")
            params.append(f"{rec['params']['backbone']:,}" if rec else "-")
        lines.append(f"| {ds} | backbone parameters | " + " | ".join(params) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared machine)")
    p.add_argument("--forecast-epochs", type=int, default=None, help="ETTh1 epochs (default: the task's 10, patience 3)")
    p.add_argument("--events-epochs", type=int, default=10, help="Sin epochs (default 10; Meta TPP trains 2000)")
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", str(REPO / "runs")), help="runs root (default: runs/)")
    p.add_argument("--json", help="also write the records' figures to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print only the markdown table at the end")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --); they change the cells' tag")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    results = {}
    for ds in args.datasets:
        for model in args.models:
            out = run_one(ds, model, args)
            results[(ds, model)] = out
            m = out["record"]["metrics"]
            shown = ", ".join(f"{name} {m[k]:.4f}" for k, _, name in COLUMNS[ds] if k in m)
            print(f"[family] {ds:14s} {model:11s} {shown} ({out['record']['epochs']} epochs, "
                  f"{out['seconds_here']:.0f} s here)", flush=True)
    text = table(results, args.datasets, args.models)
    print(text if args.markdown else "\n" + text)
    if args.json:
        from aaren_bench.results import write_json_atomic

        write_json_atomic(Path(args.json), {
            f"{ds}/{m}": {"metrics": r["record"]["metrics"], "epochs": r["record"]["epochs"],
                          "wall_time_s": r["record"]["wall_time_s"], "params": r["record"]["params"],
                          "cell": r["record"]["cell"]}
            for (ds, m), r in results.items()
        })
    return results


if __name__ == "__main__":
    main()
