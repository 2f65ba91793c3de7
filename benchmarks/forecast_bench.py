"""Forecasting benchmark: (a) training speed at the TSLib ETTh1 paper size, (b) accuracy with a CPU profile.

(a) speed: our Transformer and Aaren at d_model 512, d_ff 2048, 2 layers, batch 32,
    ETTh1, horizon 192, CPU. Times ``--iters`` training iterations *including data
    loading* (the real train loader, shuffled, num_workers 0) after ``--warmup`` untimed ones,
    and extrapolates to one epoch (262 iterations). Anchor: the Time-Series-Library
    Transformer at 3.1 s/iteration, 816 s for its first epoch, on this machine class.
    ``--models ... anchor-shaped`` also times a torch.nn.Transformer encoder-decoder of the
    anchor's shapes in the same process (a stand-in, not the anchor's code) for a ratio
    that does not depend on how loaded the machine is.
        python benchmarks/forecast_bench.py speed --iters 20 --models transformer aaren anchor-shaped
(b) profile: d_model 128, d_ff 256, everything else as the paper settings; trains to early
    stopping through the same code path as ``train.py`` (one result record per cell under
    --runs) and prints test MSE/MAE.
        python benchmarks/forecast_bench.py profile --datasets ETTh1 --models transformer aaren
    Extra Hydra overrides go after ``--``: ... profile --datasets ETTm1 -- trainer.limit_train_batches=0.25
(c) evaluate: tests the best checkpoint so far of profile runs (e.g. stopped before early stopping).

Set AAREN_DATA to the data folder. Threads: ``--threads`` (default 2; use 1 on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANCHOR = {"s_per_iter": 3.1, "first_epoch_s": 816.0, "iters_per_epoch": 262, "test_mse_epoch1": 0.913}
PROFILE = ["task.backbone.d_model=128", "task.backbone.d_ff=256"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


class AnchorShapedTransformer(torch.nn.Module):
    """A stand-in with the anchor's *shapes*, not its code: TSLib's Transformer is an encoder-decoder
    (2 encoder layers over the 96 input steps, 1 decoder layer over 48 + 192 steps with cross-attention,
    d_model 512, 8 heads, d_ff 2048). Timing it in the same process as ours gives a load-independent ratio."""

    def __init__(self, c: int = 7, f: int = 4, label_len: int = 48, pred_len: int = 192):
        super().__init__()
        self.label_len, self.pred_len = label_len, pred_len
        self.enc_embed, self.dec_embed = torch.nn.Conv1d(c, 512, 3, padding=1), torch.nn.Conv1d(c, 512, 3, padding=1)
        self.enc_time, self.dec_time = torch.nn.Linear(f, 512, bias=False), torch.nn.Linear(f, 512, bias=False)
        self.net = torch.nn.Transformer(512, 8, 2, 1, 2048, 0.1, "gelu", batch_first=True)
        self.proj = torch.nn.Linear(512, c)

    def forward(self, x, x_mark, y_mark):
        dec_in = torch.cat([x[:, -self.label_len :], x.new_zeros(x.shape[0], self.pred_len, x.shape[2])], 1)  # (B, 240, C)
        src = self.enc_embed(x.transpose(1, 2)).transpose(1, 2) + self.enc_time(x_mark)
        tgt = self.dec_embed(dec_in.transpose(1, 2)).transpose(1, 2) + self.dec_time(y_mark)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.proj(self.net(src, tgt, tgt_mask=mask))[:, -self.pred_len :]


def count_gflop(module, batch) -> float:
    """Floating-point operations of one training iteration (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    x, x_mark, y, y_mark = batch
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(module(x, x_mark, y_mark), y).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def speed(args) -> dict:
    from aaren_bench.run import build

    out = {}
    for model in args.models:
        cfg = compose(["task=forecast", "dataset=ETTh1", f"model={'transformer' if model == 'anchor-shaped' else model}",
                       "task.pred_len=192", "logger=none"])
        torch.manual_seed(0)
        _, dm, module, _ = build(cfg)
        if model == "anchor-shaped":
            module = AnchorShapedTransformer()
        dm.setup("fit")
        loader = dm.train_dataloader()
        opt = torch.optim.Adam(module.parameters(), lr=1e-4)
        module.train()
        times, it = [], iter(loader)
        t = time.perf_counter()
        for i in range(args.warmup + args.iters):
            x, x_mark, y, y_mark = next(it)  # data loading is inside the timed interval
            loss = F.mse_loss(module(x, x_mark, y_mark), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            now = time.perf_counter()
            if i >= args.warmup:
                times.append(now - t)
            t = now
        n_iter = len(loader)
        s = statistics.mean(times)
        gflop = count_gflop(module, next(iter(loader)))
        out[model] = {
            "s_per_iter_mean": s,
            "s_per_iter_median": statistics.median(times),
            "s_per_iter_min": min(times),
            "iters_per_epoch": n_iter,
            "epoch_s_extrapolated": s * n_iter,
            "params": sum(p.numel() for p in module.parameters()),
            "gflop_per_iter": gflop,
            "timed_iters": args.iters,
        }
        print(
            f"[speed] {model:11s} {s:.3f} s/iter (median {statistics.median(times):.3f}, min {min(times):.3f}) over "
            f"{args.iters} iterations; x {n_iter} = {s * n_iter:.0f} s/epoch (extrapolated); {gflop:.0f} GFLOP/iter; "
            f"anchor {ANCHOR['s_per_iter']} s/iter, {ANCHOR['first_epoch_s']:.0f} s/epoch",
            flush=True,
        )
    return out


def profile(args) -> dict:
    from aaren_bench.run import train

    out = {}
    for ds in args.datasets:
        for model in args.models:
            overrides = [
                "task=forecast", f"dataset={ds}", f"model={model}", "task.pred_len=192", *PROFILE,
                "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                f"paths.runs={args.runs}", f"seed={args.seed}", *args.overrides,
            ]
            cfg = compose(overrides)
            t0 = time.perf_counter()
            rec = train(cfg)
            m = rec["metrics"]
            out[f"{ds}/{model}"] = {
                "test_mse": m.get("test/mse"), "test_mae": m.get("test/mae"), "epochs": rec.get("epochs"),
                "steps": rec.get("global_steps"), "wall_s": time.perf_counter() - t0, "overrides": args.overrides,
            }
            print(f"[profile] {ds}-H192 {model:11s} test MSE {m.get('test/mse'):.4f} MAE {m.get('test/mae'):.4f} "
                  f"({rec.get('epochs')} epochs, {rec.get('global_steps')} steps)", flush=True)
    return out


def evaluate(args) -> dict:
    """Test the best checkpoint so far of profile runs that have not finished (or re-test finished ones)."""
    import lightning as L

    from aaren_bench.run import build

    out = {}
    for ds in args.datasets:
        for model in args.models:
            cfg = compose(["task=forecast", f"dataset={ds}", f"model={model}", "task.pred_len=192", *PROFILE,
                           f"paths.runs={args.runs}", f"seed={args.seed}", *args.overrides])
            ckpt = Path(cfg.run_dir) / "checkpoints" / "best.ckpt"
            if not ckpt.exists():
                print(f"[evaluate] {ds} {model}: no checkpoint at {ckpt}", flush=True)
                continue
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            _, dm, module, _ = build(cfg)
            trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
            m = trainer.test(module, datamodule=dm, ckpt_path=str(ckpt), verbose=False)[0]
            best = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("ModelCheckpoint")), {})
            out[f"{ds}/{model}"] = {"test_mse": m["test/mse"], "test_mae": m["test/mae"], "ckpt_epoch": state["epoch"],
                                    "val_loss": float(best.get("best_model_score", float("nan")))}
            print(f"[evaluate] {ds}-H192 {model:11s} test MSE {m['test/mse']:.4f} MAE {m['test/mae']:.4f} "
                  f"(best checkpoint: epoch {state['epoch']}, val MSE {out[f'{ds}/{model}']['val_loss']:.4f})", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["speed", "profile", "evaluate"])
    p.add_argument("--models", nargs="+", default=["transformer", "aaren"])
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "Exchange"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", str(REPO / "runs" / "bench")))
    p.add_argument("--json", help="write the figures to this JSON file as well")
    p.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {"mode": args.mode, "threads": args.threads, "anchor": ANCHOR}
    res.update({"speed": speed, "profile": profile, "evaluate": evaluate}[args.mode](args))
    if args.json:
        from aaren_bench.results import write_json_atomic

        write_json_atomic(Path(args.json), res)
    return res


if __name__ == "__main__":
    main()
