"""Classification accuracy and speed: both backbones, both protocols, on UEA datasets.

    AAREN_DATA=../shared/data python benchmarks/classify_bench.py \
        --datasets JapaneseVowels Handwriting --protocols holdout tslib

Each configuration is a normal run of the suite (same configs as train.py) in a scratch runs
folder; the table gives test accuracy, test log loss, epochs run and seconds per training
epoch (fit wall time / epochs, validation included).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


from aaren_bench.run import train
from aaren_bench.study import compose_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def run_one(dataset: str, protocol: str, model: str, seed: int, runs: Path, extra: list[str]) -> dict:
    over = ["task=classify", f"dataset={dataset}", f"model={model}", f"seed={seed}", f"paths.runs={runs}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *extra]
    if protocol == "tslib":
        over.append("+protocol=tslib")
    cfg = compose_config(over)
    t0 = time.perf_counter()
    rec = train(cfg)
    epochs = max(1, rec["epochs"])  # epochs completed
    return {"dataset": dataset, "protocol": protocol, "model": model, "seed": seed,
            "acc": rec["metrics"]["test/acc"], "logloss": rec["metrics"]["test/loss"], "epochs": epochs,
            "s_per_epoch": rec["wall_time_s"]["fit"] / epochs, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["JapaneseVowels", "Handwriting"])
    ap.add_argument("--protocols", nargs="+", default=["holdout", "tslib"], choices=["holdout", "tslib"])
    ap.add_argument("--models", nargs="+", default=["transformer", "aaren"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--runs", default=None, help="runs folder (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=5")
    args = ap.parse_args()
    runs = Path(args.runs or tempfile.mkdtemp(prefix="classify-bench-"))
    rows = []
    for ds in args.datasets:
        for proto in args.protocols:
            for model in args.models:
                for seed in args.seeds:
                    rows.append(run_one(ds, proto, model, seed, runs / proto, args.overrides))
                    r = rows[-1]
                    print(f"{ds:16s} {proto:8s} {model:12s} seed {seed}: acc {r['acc']:.3f}  logloss {r['logloss']:.3f}  "
                          f"{r['epochs']} epochs, {r['s_per_epoch']:.2f} s/epoch", flush=True)
    print("\n| dataset | protocol | backbone | seed | test acc | test log loss | epochs | s / epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['protocol']} | {r['model']} | {r['seed']} | {r['acc']:.3f} | {r['logloss']:.3f} "
              f"| {r['epochs']} | {r['s_per_epoch']:.2f} |")


if __name__ == "__main__":
    main()
