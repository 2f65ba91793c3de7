"""Train both backbones on Sin and Wiki for a few epochs; print NLL / RMSE / accuracy and seconds per epoch.

    nice -n 5 .venv/bin/python benchmarks/events_bench.py --epochs 3 --lr 1e-3
    nice -n 5 .venv/bin/python benchmarks/events_bench.py --datasets Wiki --epochs 1 --json out.json

Uses the task's own ``build`` (same data, model and metrics as ``train.py task=events``),
with the Lightning Trainer, no checkpoints, the last epoch's weights. Wiki needs the raw file
under $AAREN_DATA (events/wikipedia_jodie.npz). For Sin the closed-form NLL of the true
process on the test split is printed as a floor. Seconds per epoch are the mean wall time of
the training epochs (without validation) measured in this process; compare backbones
within one run, on one machine.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import lightning as L
import torch

from aaren_bench.results import write_json_atomic
from aaren_bench.study import compose_config
from aaren_bench.run import build
from tasks.events import synthetic

CONF = str(Path(__file__).resolve().parents[1] / "conf")


class EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.perf_counter() - self._t)


def run_one(dataset: str, model: str, epochs: int, lr: float | None, seed: int, threads: int, extra: list[str]) -> dict:
    torch.set_num_threads(threads)
    overrides = ["task=events", f"dataset={dataset}", f"model={model}", "logger=none", f"seed={seed}", *extra]
    if lr is not None:
        overrides.append(f"task.optimizer.lr={lr}")
    cfg = compose_config(overrides)
    L.seed_everything(seed, workers=True)
    _, dm, module, _ = build(cfg)
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
        check_val_every_n_epoch=max(epochs, 1),
    )
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()}
    out = {
        "dataset": dataset, "model": model, "epochs": epochs, "lr": cfg.task.optimizer.lr,
        "sec_per_epoch": sum(timer.times) / max(len(timer.times), 1), "metrics": metrics,
        "params": sum(p.numel() for p in module.parameters()),
        "train_sequences": len(dm.splits["train"]), "train_events": dm.splits["train"].n_events,
    }
    if dataset == "Sin":
        test = dm.splits["test"]
        out["true_test_nll"] = -synthetic.sin_log_likelihood(test) / sum(len(t) - 1 for t in test.times)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["Sin", "Wiki"])
    ap.add_argument("--models", nargs="+", default=["aaren", "transformer"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=None, help="override the protocol's Adam lr (1e-4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is fastest on a shared machine)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file (atomically)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.n_seqs=200")
    a = ap.parse_args(argv)
    os.environ.setdefault("AAREN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    rows = []
    print(f"{'dataset':8} {'model':12} {'epochs':>6} {'s/epoch':>8} {'test NLL':>9} {'RMSE':>10} {'acc':>6}  note")
    for ds in a.datasets:
        for model in a.models:
            r = run_one(ds, model, a.epochs, a.lr, a.seed, a.threads, a.overrides)
            rows.append(r)
            m = r["metrics"]
            acc = f"{m['test/acc']:.3f}" if "test/acc" in m else "n/a"
            note = f"true NLL {r['true_test_nll']:.4f}" if "true_test_nll" in r else ""
            print(f"{ds:8} {model:12} {r['epochs']:>6} {r['sec_per_epoch']:>8.2f} {m['test/nll']:>9.4f} "
                  f"{m['test/rmse']:>10.4g} {acc:>6}  {note}", flush=True)
    if a.json:
        write_json_atomic(a.json, {"rows": rows, "torch": torch.__version__, "threads": a.threads})
    return rows


if __name__ == "__main__":
    main()
