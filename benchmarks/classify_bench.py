"""Classification accuracy and speed: backbones x protocols on UEA datasets.

    AAREN_DATA=../shared/data python benchmarks/classify_bench.py \
        --datasets JapaneseVowels Handwriting --protocols suite tslib \
        --models transformer-bidir transformer aaren

Each configuration is a normal run of the suite (same configs as train.py) in a scratch runs
folder; the table gives test accuracy, test log loss, epochs run and seconds per training
epoch (fit wall time / epochs, validation included). ``transformer-bidir`` is the transformer
with ``model.causal=false`` (the Time-Series-Library's own encoder), run under ``tag=bidir``;
under ``protocol=tslib`` plain ``transformer`` is that encoder already (the protocol sets it),
and ``transformer-causal`` (``model.causal=true``, ``tag=causal``) is the paper's causal one.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from aaren_bench.run import train
from aaren_bench.study import compose_config

CONF = str(Path(__file__).resolve().parents[1] / "conf")


# benchmark names that are a model config plus overrides (a tag keeps them out of the model's own cell)
VARIANTS = {"transformer-bidir": ["model=transformer", "model.causal=false", "tag=bidir"],
            "transformer-causal": ["model=transformer", "model.causal=true", "tag=causal"]}


def run_one(dataset: str, protocol: str, model: str, seed: int, runs: Path, extra: list[str]) -> dict:
    over = ["task=classify", f"dataset={dataset}", *VARIANTS.get(model, [f"model={model}"]), f"seed={seed}",
            f"protocol={protocol}", f"paths.runs={runs}", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", *extra]
    cfg = compose_config(over)
    t0 = time.perf_counter()
    rec = train(cfg)
    epochs = max(1, rec["epochs"])  # epochs completed
    return {"dataset": dataset, "protocol": protocol, "model": model, "seed": seed,
            "acc": rec["metrics"]["test/acc"], "logloss": rec["metrics"]["test/loss"], "epochs": epochs,
            "s_per_epoch": rec["wall_time_s"]["fit"] / epochs, "wall_s": time.perf_counter() - t0, "cell": rec["cell"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["JapaneseVowels", "Handwriting"])
    ap.add_argument("--protocols", nargs="+", default=["suite", "tslib"], choices=["suite", "tslib"])
    ap.add_argument("--models", nargs="+", default=["transformer", "aaren"],
                    help=f"model configs or {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--runs", default=None, help="runs folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: shared machines)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=5")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="classify-bench-"))
    rows = []
    for ds in args.datasets:
        for proto in args.protocols:
            for model in args.models:
                for seed in args.seeds:
                    rows.append(run_one(ds, proto, model, seed, runs / proto, args.overrides))
                    r = rows[-1]
                    print(f"{ds:16s} {proto:8s} {model:17s} seed {seed}: acc {r['acc']:.3f}  logloss {r['logloss']:.3f}  "
                          f"{r['epochs']} epochs, {r['s_per_epoch']:.2f} s/epoch ({r['cell']})", flush=True)
    print("\n| dataset | protocol | backbone | seed | test acc | test log loss | epochs | s / epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['protocol']} | {r['model']} | {r['seed']} | {r['acc']:.3f} | {r['logloss']:.3f} "
              f"| {r['epochs']} | {r['s_per_epoch']:.2f} |")


if __name__ == "__main__":
    main()
