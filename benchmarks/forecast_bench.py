"""Forecasting benchmark: speed, accuracy at a CPU profile, head sizes, and the anchor check.

Modes (figures in docs/benchmarks/forecast.md):

speed       seconds per training iteration at the paper size (ETTh1, horizon 192, d_model 512,
            d_ff 2048, batch 32, CPU), data loading included, for our backbones under the given
            protocols; ``--tslib DIR`` also times the anchor's own code (a checkout of
            thuml/Time-Series-Library at a68756f) in the same process, interleaved, so that the
            ratio does not depend on how loaded the machine is.
                python benchmarks/forecast_bench.py speed --models transformer aaren --protocols suite tslib --tslib /tmp/tslib
profile     trains to early stopping at d_model 128, d_ff 256 (everything else as the protocol says)
            through the same code path as train.py (one record per cell under --runs, tag cpu128),
            and prints test MSE/MAE.
                python benchmarks/forecast_bench.py profile --datasets ETTh1 --models transformer aaren --protocol tslib
evaluate    tests the best checkpoint so far of profile runs; ``--drop-last-test`` tests as the
            anchor's test loader does (drops the last smaller batch).
heads       head parameter counts for every forecasting dataset at horizons 96 and 720 (no data read).
equivalence loads the anchor's Transformer weights into ours under protocol=tslib and compares
            outputs (``--tslib DIR``): our Transformer under tslib is the anchor's model.

Set AAREN_DATA to the data folder. Threads: ``--threads`` (default 1; the machine is shared).
Extra Hydra overrides go after ``--``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANCHOR = {"s_per_iter": 3.1, "first_epoch_s": 816.0, "iters_per_epoch": 261}
PROFILE = ["task.backbone.d_model=128", "task.backbone.d_ff=256", "tag=cpu128"]
DATASETS = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange", "Traffic", "ECL")


def compose(overrides: list[str]):
    from aaren_bench.study import compose_config

    return compose_config(overrides)


# --------------------------------------------------------------------------------------------- the anchor's code
def anchor_args(n_channels: int, pred_len: int, d_model: int, d_ff: int, **kw) -> SimpleNamespace:
    """The anchor's run.py defaults with its ETTh1 script's settings (Transformer_ETTh1.sh)."""
    a = dict(task_name="long_term_forecast", pred_len=pred_len, output_attention=False, enc_in=n_channels,
             dec_in=n_channels, c_out=n_channels, d_model=d_model, embed="timeF", freq="h", dropout=0.1, factor=3,
             n_heads=8, d_ff=d_ff, activation="gelu", e_layers=2, d_layers=1, seq_len=96, label_len=48,
             features="M", target="OT", seasonal_patterns="Monthly", batch_size=32, num_workers=0,
             augmentation_ratio=0)
    a.update(kw)
    return SimpleNamespace(**a)


def import_anchor(tslib: str):
    """The anchor's ``models.Transformer`` and ``data_provider`` from a checkout at ``tslib``.

    Its package imports einops / reformer_pytorch for other models: stub them when absent.
    """
    import types

    for name, attrs in (("einops", ("rearrange", "repeat")), ("reformer_pytorch", ("LSHSelfAttention",)), ("patoolib", ())):
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            for a in attrs:
                setattr(mod, a, None)
            sys.modules[name] = mod
    sys.path.insert(0, str(Path(tslib).resolve()))
    from data_provider.data_factory import data_provider  # noqa: E402
    from models import Transformer  # noqa: E402

    return Transformer, data_provider


def anchor_step(tslib: str, d_model: int, d_ff: int, data_root: str):
    """(model, step) for the anchor's ETTh1-H192 training iteration, as its exp loop does it."""
    Transformer, data_provider = import_anchor(tslib)
    a = anchor_args(7, 192, d_model, d_ff, data="ETTh1", root_path=str(Path(data_root) / "ETT-small"),
                    data_path="ETTh1.csv")
    model = Transformer.Model(a).float()
    _, loader = data_provider(a, "train")
    it = iter(loader)

    def step():
        bx, by, bxm, bym = (t.float() for t in next(it))
        dec = torch.cat([by[:, : a.label_len], torch.zeros_like(by[:, -a.pred_len :])], 1)
        return F.mse_loss(model(bx, bxm, dec, bym)[:, -a.pred_len :], by[:, -a.pred_len :])

    return model, step, len(loader)


def ours_step(model: str, protocol: str, d_model: int, d_ff: int, overrides: list[str]):
    from aaren_bench.run import build

    cfg = compose(["dataset=ETTh1", f"model={model}", f"protocol={protocol}", "task.pred_len=192",
                   f"task.backbone.d_model={d_model}", f"task.backbone.d_ff={d_ff}", "logger=none", *overrides])
    _, dm, module, _ = build(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)

    def step():
        x, x_mark, y, y_mark = next(it)  # data loading is inside the timed interval
        return F.mse_loss(module(x, x_mark, y_mark), y)

    return module, step, len(loader)


def speed(args) -> dict:
    """Interleaved rounds: each round times one iteration of every entry, so load drifts hit all alike."""
    entries = [(f"{m}/{p}", lambda m=m, p=p: ours_step(m, p, args.d_model, args.d_ff, args.overrides))
               for p in args.protocols for m in args.models]
    if args.tslib:
        entries.append(("anchor", lambda: anchor_step(args.tslib, args.d_model, args.d_ff, args.data_root)))
    runs = {}
    for name, make in entries:
        torch.manual_seed(0)
        module, step, n_iter = make()
        module.train()
        runs[name] = SimpleNamespace(module=module, step=step, n_iter=n_iter, opt=torch.optim.Adam(module.parameters(), 1e-4),
                                     times=[])
    for r in range(args.warmup + args.iters):
        for name, run in runs.items():
            t = time.perf_counter()
            loss = run.step()
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            if r >= args.warmup:
                run.times.append(time.perf_counter() - t)
        print(f"[speed] round {r}: " + ", ".join(f"{n} {run.times[-1]:.2f}s" if run.times else n
                                                for n, run in runs.items()), flush=True)
    out = {}
    for name, run in runs.items():
        s = statistics.mean(run.times)
        out[name] = {"s_per_iter_mean": s, "s_per_iter_median": statistics.median(run.times),
                     "s_per_iter_min": min(run.times), "iters_per_epoch": run.n_iter, "epoch_s_extrapolated": s * run.n_iter,
                     "params": sum(p.numel() for p in run.module.parameters()), "timed_iters": args.iters}
        ratio = f"; {s / statistics.mean(runs['anchor'].times):.2f}x the anchor's time" if "anchor" in runs else ""
        print(f"[speed] {name:22s} {s:.3f} s/iter (median {statistics.median(run.times):.3f}, min {min(run.times):.3f}); "
              f"x {run.n_iter} = {s * run.n_iter:.0f} s/epoch{ratio}", flush=True)
    return out


# --------------------------------------------------------------------------------------------- accuracy
def profile(args) -> dict:
    from aaren_bench.run import train

    out = {}
    for ds in args.datasets:
        for model in args.models:
            cfg = compose([f"dataset={ds}", f"model={model}", f"protocol={args.protocol}", "task.pred_len=192", *PROFILE,
                           "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                           f"paths.runs={args.runs}", f"seed={args.seed}", *args.overrides])
            t0 = time.perf_counter()
            rec = train(cfg)
            m = rec["metrics"]
            out[rec["cell"]] = {"test_mse": m.get("test/mse"), "test_mae": m.get("test/mae"), "epochs": rec.get("epochs"),
                                "steps": rec.get("global_steps"), "wall_s": time.perf_counter() - t0,
                                "params": rec.get("params")}
            print(f"[profile] {rec['cell']} test MSE {m.get('test/mse'):.4f} MAE {m.get('test/mae'):.4f} "
                  f"({rec.get('epochs')} epochs, {rec.get('global_steps')} steps)", flush=True)
    return out


def evaluate(args) -> dict:
    """Test the best checkpoint so far of profile runs (also runs that have not finished)."""
    import lightning as L

    from aaren_bench.run import build

    out = {}
    extra = ["task.drop_last.test=true"] if args.drop_last_test else []
    for ds in args.datasets:
        for model in args.models:
            base = [f"dataset={ds}", f"model={model}", f"protocol={args.protocol}", "task.pred_len=192", *PROFILE,
                    f"paths.runs={args.runs}", f"seed={args.seed}", *args.overrides]
            ckpt = Path(compose(base).run_dir) / "checkpoints" / "best.ckpt"
            if not ckpt.exists():
                print(f"[evaluate] {ds} {model}: no checkpoint at {ckpt}", flush=True)
                continue
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            _, dm, module, _ = build(compose(base + extra))
            trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
            m = trainer.test(module, datamodule=dm, ckpt_path=str(ckpt), verbose=False)[0]
            n = len(dm.test_dataloader().dataset)
            kept = len(dm.test_dataloader()) * dm.batch_size if args.drop_last_test else n
            key = f"{ds}/{args.protocol}/{model}" + ("/drop_last" if args.drop_last_test else "")
            out[key] = {"test_mse": m["test/mse"], "test_mae": m["test/mae"], "ckpt_epoch": state["epoch"],
                        "test_windows": min(kept, n), "of": n}
            print(f"[evaluate] {key} test MSE {m['test/mse']:.4f} MAE {m['test/mae']:.4f} over {min(kept, n)} of {n} "
                  f"windows (best checkpoint: epoch {state['epoch']})", flush=True)
    return out


# --------------------------------------------------------------------------------------------- sizes
def heads(args) -> dict:
    """Head parameters of every dataset (channels from the catalog) at horizons 96 and 720."""
    import tasks.forecast.catalog  # noqa: F401  (registers the datasets)
    from aaren_bench.data import get
    from aaren_bench.nn import build_backbone
    from tasks.forecast import decoder_mixer
    from tasks.forecast.model import EncoderDecoder, Forecaster

    d, dff = args.d_model, args.d_ff
    model = dict(name="transformer", mixer="transformer", d_model=d, n_layers=1, n_heads=8, d_ff=dff, dropout=0.1,
                 causal=True)
    bb = build_backbone(model)
    out = {}
    for ds in DATASETS:
        C = get(ds).info["channels"]
        for H in (96, 720):
            row = {}
            for head in ("last", "patch", "decoder"):
                net = Forecaster(bb, C, 4, 96, 48, H, head=head)
                row[head] = net.parameter_split()["head"]
            net = EncoderDecoder(bb, decoder_mixer(model), C, 4, 96, 48, H, n_heads=8, d_ff=dff)
            row["tslib_decoder"] = net.parameter_split()["head"]
            out[f"{ds}-H{H}"] = {"channels": C, **row}
            print(f"[heads] {ds:8s} C={C:4d} H={H:3d}: last {row['last']:>12,}  patch {row['patch']:>10,}  "
                  f"decoder {row['decoder']:>9,}  tslib decoder {row['tslib_decoder']:>10,}", flush=True)
    return out


# --------------------------------------------------------------------------------------------- the anchor check
def _anchor_to_ours(sd: dict) -> dict:
    """The anchor's Transformer state dict under our EncoderDecoder's names (kernel-1 convs -> Linear)."""
    out = {}
    proj = {"query_projection": "q_proj", "key_projection": "k_proj", "value_projection": "v_proj",
            "out_projection": "out_proj"}
    for k, v in sd.items():
        p = k.split(".")
        if p[0] in ("enc_embedding", "dec_embedding"):
            if p[1] == "position_embedding":
                continue
            side = "enc_embed" if p[0] == "enc_embedding" else "dec_embed"
            out[f"{side}.{'value.conv' if p[1] == 'value_embedding' else 'calendar'}.weight"] = v
        elif p[0] == "encoder" and p[1] == "attn_layers":
            i, part = p[2], p[3]
            if part == "attention":
                out[f"backbone.blocks.{i}.mixer.{proj[p[4]]}.{p[5]}"] = v
            elif part in ("conv1", "conv2"):
                out[f"backbone.blocks.{i}.ff.{0 if part == 'conv1' else 3}.{p[4]}"] = v.squeeze(-1) if p[4] == "weight" else v
            else:
                out[f"backbone.blocks.{i}.{part}.{p[4]}"] = v
        elif p[0] == "encoder" and p[1] == "norm":
            out[f"enc_norm.{p[2]}"] = v
        elif p[0] == "decoder" and p[1] == "layers":
            i, part = p[2], p[3]
            if part in ("self_attention", "cross_attention"):
                out[f"decoder.{i}.{'self_mixer' if part == 'self_attention' else 'cross'}.{proj[p[4]]}.{p[5]}"] = v
            elif part in ("conv1", "conv2"):
                out[f"decoder.{i}.{'ff1' if part == 'conv1' else 'ff2'}.{p[4]}"] = v.squeeze(-1) if p[4] == "weight" else v
            else:
                out[f"decoder.{i}.{part}.{p[4]}"] = v
        elif p[0] == "decoder":
            out[f"{'dec_norm' if p[1] == 'norm' else 'proj'}.{p[2]}"] = v
        else:
            raise KeyError(f"unmapped anchor parameter {k}")
    return out


def equivalence(args) -> dict:
    if not args.tslib:
        raise SystemExit("equivalence needs --tslib <checkout of thuml/Time-Series-Library at a68756f>")
    from aaren_bench.run import build

    Transformer, _ = import_anchor(args.tslib)
    out = {}
    for d, dff, H in ((args.d_model, args.d_ff, 192), (128, 256, 96)):
        cfg = compose(["dataset=ETTh1", "model=transformer", "protocol=tslib", f"task.pred_len={H}",
                       f"task.backbone.d_model={d}", f"task.backbone.d_ff={dff}", "logger=none"])
        torch.manual_seed(0)
        anchor = Transformer.Model(anchor_args(7, H, d, dff)).float().eval()
        _, _, module, _ = build(cfg)
        net = module.net.eval()
        net.load_state_dict(_anchor_to_ours(anchor.state_dict()), strict=True)
        g = torch.Generator().manual_seed(1)
        x, xm, ym = torch.randn(4, 96, 7, generator=g), torch.rand(4, 96, 4, generator=g) - 0.5, torch.rand(4, 48 + H, 4, generator=g) - 0.5
        dec = torch.cat([x[:, -48:], torch.zeros(4, H, 7)], 1)
        with torch.no_grad():
            ya = anchor(x, xm, dec, ym)
            yo = net(x, xm, ym)
        err = float((ya - yo).abs().max())
        n_a, n_o = sum(p.numel() for p in anchor.parameters()), sum(p.numel() for p in net.parameters())
        out[f"d{d}-H{H}"] = {"max_abs_diff": err, "params_anchor": n_a, "params_ours": n_o}
        print(f"[equivalence] d_model {d}, H {H}: parameters anchor {n_a:,} ours {n_o:,}; "
              f"max |anchor - ours| over a batch = {err:.2e}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["speed", "profile", "evaluate", "heads", "equivalence"])
    p.add_argument("--models", nargs="+", default=["transformer", "aaren"])
    p.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTm1", "Exchange"])
    p.add_argument("--protocol", default="suite", help="profile / evaluate: the protocol to run")
    p.add_argument("--protocols", nargs="+", default=["suite", "tslib"], help="speed: the protocols to time")
    p.add_argument("--tslib", help="a checkout of thuml/Time-Series-Library at a68756f (speed, equivalence)")
    p.add_argument("--data-root", default=os.environ.get("AAREN_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-last-test", action="store_true", help="evaluate: drop the last smaller test batch, as the anchor")
    p.add_argument("--runs", default=os.environ.get("AAREN_RUNS", str(REPO / "runs" / "bench")))
    p.add_argument("--json", help="write the figures to this JSON file as well")
    p.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    args = p.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    res = {"mode": args.mode, "threads": args.threads, "anchor": ANCHOR}
    modes = {"speed": speed, "profile": profile, "evaluate": evaluate, "heads": heads, "equivalence": equivalence}
    res.update(modes[args.mode](args))
    if args.json:
        from aaren_bench.results import write_json_atomic

        write_json_atomic(Path(args.json), res)
    return res


if __name__ == "__main__":
    main()
