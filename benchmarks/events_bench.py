"""Train both backbones on Sin and Wiki under each protocol for a few epochs; print NLL / RMSE /
accuracy by our formulas and by Meta TPP's, and seconds per epoch.

    nice -n 5 .venv/bin/python benchmarks/events_bench.py --epochs 3 --lr 1e-3
    nice -n 5 .venv/bin/python benchmarks/events_bench.py --datasets Wiki --protocols suite metatpp --epochs 1 --json out.json

Uses the task's own ``build`` (same data, model, loss and metrics as ``train.py task=events
protocol=<p>``) with the Lightning Trainer and no files written. Validation after every epoch;
the weights tested are those of the best validation epoch by the protocol's selection metric
(suite: val/nll; metatpp: Meta TPP's val/rmse), as the run loop does; when another epoch is
selected, the last epoch's weights are tested too (a second line). Wiki needs the raw file
under $AAREN_DATA (events/wikipedia_jodie.npz) or Meta TPP's real/wiki.npz. For Sin the
closed-form NLL of the true process on the test split is printed as a floor (when Sin is the
generated one). Seconds per epoch are the mean wall time of the training epochs (without
validation) measured in this process; compare backbones within one run, on one machine.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import lightning as L
import torch

from aaren_bench.results import write_json_atomic
from aaren_bench.run import build
from aaren_bench.study import compose_config
from tasks.events import synthetic

COLUMNS = ("nll", "rmse", "acc", "nll_metatpp", "rmse_metatpp", "acc_metatpp")


class EpochTimer(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.perf_counter() - self._t)


class BestWeights(L.Callback):
    """Keep (in memory) the weights of the best validation epoch by ``metric``."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.sign = metric, (1.0 if mode == "min" else -1.0)
        self.best, self.state, self.epoch = float("inf"), None, None

    def on_validation_end(self, trainer, module):
        v = self.sign * float(trainer.callback_metrics[self.metric])
        if v < self.best:
            self.best, self.state, self.epoch = v, copy.deepcopy(module.state_dict()), trainer.current_epoch


def run_one(dataset: str, model: str, protocol: str, epochs: int, lr: float | None, seed: int, threads: int,
            extra: list[str]) -> dict:
    torch.set_num_threads(threads)
    overrides = [f"dataset={dataset}", f"model={model}", f"protocol={protocol}", "logger=none", f"seed={seed}", *extra]
    if lr is not None:
        overrides.append(f"task.optimizer.lr={lr}")
    cfg = compose_config(overrides)
    L.seed_everything(seed, workers=True)
    task, dm, module, _ = build(cfg)
    sel = task.selection(cfg)
    timer, best = EpochTimer(), BestWeights(sel.metric, sel.mode)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, best], num_sanity_val_steps=0,
        **{k: cfg.trainer[k] for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
           if cfg.trainer.get(k) is not None},
    )
    trainer.fit(module, datamodule=dm)
    last = copy.deepcopy(module.state_dict())
    module.load_state_dict(best.state)
    metrics = {k: float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()}
    if best.epoch + 1 != epochs:  # also the last epoch's weights: what the selection metric changed
        module.load_state_dict(last)
        last_metrics = {k: float(v) for k, v in trainer.test(module, datamodule=dm, verbose=False)[0].items()}
    else:
        last_metrics = metrics
    out = {
        "dataset": dataset, "model": model, "protocol": protocol, "epochs": epochs, "lr": cfg.task.optimizer.lr,
        "selection": sel.metric, "best_epoch": best.epoch + 1,
        "sec_per_epoch": sum(timer.times) / max(len(timer.times), 1), "metrics": metrics,
        "metrics_last_epoch": last_metrics,
        "params": sum(p.numel() for p in module.parameters()), "data_source": dm.data_source,
        "train_sequences": len(dm.splits["train"]), "train_events": dm.splits["train"].n_events,
        "task": {k: cfg.task[k] for k in ("loss", "l2", "time_encoding", "time_encoding_at")}
        | {"weight_decay": cfg.task.optimizer.weight_decay},
    }
    if dataset == "Sin" and dm.data_source.get("kind") == "generated":
        test = dm.splits["test"]
        n, ll = sum(len(t) - 1 for t in test.times), synthetic.sin_log_likelihood(test)
        out["true_test_nll"] = -ll / n
        out["true_test_nll_metatpp"] = -ll / sum(len(t) + 1 for t in test.times)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["Sin", "Wiki"])
    ap.add_argument("--models", nargs="+", default=["aaren", "transformer"])
    ap.add_argument("--protocols", nargs="+", default=["suite", "metatpp"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=None, help="override the protocols' Adam lr (1e-4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is fastest on a shared machine)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file (atomically, after each row)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.n_seqs=200")
    a = ap.parse_args(argv)
    os.environ.setdefault("AAREN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    rows = []
    print(f"{'dataset':8} {'protocol':8} {'model':12} {'ep':>3} {'best':>4} {'s/ep':>7} "
          + " ".join(f"{c:>12}" for c in COLUMNS) + "  note", flush=True)
    for ds in a.datasets:
        for protocol in a.protocols:
            for model in a.models:
                r = run_one(ds, model, protocol, a.epochs, a.lr, a.seed, a.threads, a.overrides)
                rows.append(r)
                m = r["metrics"]
                cells = " ".join(f"{m[f'test/{c}']:>12.5g}" if f"test/{c}" in m else f"{'n/a':>12}" for c in COLUMNS)
                note = (f"true NLL {r['true_test_nll']:.4f} / metatpp {r['true_test_nll_metatpp']:.4f}"
                        if "true_test_nll" in r else "")
                print(f"{ds:8} {protocol:8} {model:12} {r['epochs']:>3} {r['best_epoch']:>4} {r['sec_per_epoch']:>7.1f} "
                      f"{cells}  {note}", flush=True)
                if r["best_epoch"] != r["epochs"]:
                    m = r["metrics_last_epoch"]
                    cells = " ".join(f"{m[f'test/{c}']:>12.5g}" if f"test/{c}" in m else f"{'n/a':>12}" for c in COLUMNS)
                    print(f"{'':8} {'':8} {'(last epoch)':12} {'':>3} {r['epochs']:>4} {'':>7} {cells}", flush=True)
                if a.json:
                    write_json_atomic(a.json, {"rows": rows, "torch": torch.__version__, "threads": a.threads,
                                               "argv": argv})
    return rows


if __name__ == "__main__":
    main()
