"""Equivalence fixtures written by each anchor's own code at its commit (tests/data/anchors/).

Each fixture holds a small model's weights (under the anchor's names), a batch of inputs, and
the anchor's outputs and loss on it, plus the anchor's parameter count and the commit it was
made at; ``tests/test_anchor_equivalence.py`` loads the weights into our model under that
protocol and checks the same outputs and loss, with no anchor code (``pytest -k equivalence``).

    python benchmarks/anchor_fixtures.py tslib   --anchor /path/Time-Series-Library@a68756f [--data DIR]
    python benchmarks/anchor_fixtures.py mindt   --anchor /path/min-decision-transformer@d669424
    python benchmarks/anchor_fixtures.py dt      --anchor /path/decision-transformer@e2d82e6
    python benchmarks/anchor_fixtures.py metatpp --anchor /path/meta-tpp@a930b18

The anchor checkout lives outside this project (extracted from its repository at the commit
below, e.g. ``git archive a68756f | tar -x -C DIR``); its code is run, never copied. Each
anchor runs in its own process (their package names collide). ``tslib`` also stores, from
the real ETTh1 file (``--data``: the folder holding ETT-small/), the anchor loader's windows
for a few indices, one training step with dropout off, and the per-tensor statistics of the
anchor's initial weights at the CPU profile.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "anchors"
COMMITS = {"tslib": "a68756f", "metatpp": "a930b18", "dt": "e2d82e6", "mindt": "d669424"}
REPOS = {"tslib": "thuml/Time-Series-Library", "metatpp": "BorealisAI/meta-tpp", "dt": "kzl/decision-transformer",
         "mindt": "nikhilbarhate99/min-decision-transformer"}


def save(name: str, anchor: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"repo": REPOS[anchor], "commit": COMMITS[anchor], **payload}
    path = OUT / f"{name}.pt"
    torch.save(payload, path)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.1f} KiB ({REPOS[anchor]} at {COMMITS[anchor]})")
    return path


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def clone_sd(model) -> dict:
    """The parameters (buffers such as GPT-2's 1024 x 1024 causal mask are rebuilt by each code)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ------------------------------------------------------------------------------------ TSLib (a68756f)
FC = dict(pred_len=24, d_model=16, d_ff=32, n_heads=8)  # a small forecasting model, ETTh1's 7 channels
CL = dict(seq_len=12, n_channels=3, n_classes=4, d_model=16, d_ff=32, n_heads=8, e_layers=3)


def tslib_forecast(tslib: str, data: str | None) -> None:
    from benchmarks.forecast_bench import anchor_args, import_anchor

    Transformer, data_provider = import_anchor(tslib)
    a = anchor_args(7, FC["pred_len"], FC["d_model"], FC["d_ff"], n_heads=FC["n_heads"])
    torch.manual_seed(0)
    model = Transformer.Model(a).float().eval()
    g = torch.Generator().manual_seed(1)
    B, H, L = 4, a.pred_len, a.label_len
    x, xm = torch.randn(B, 96, 7, generator=g), torch.rand(B, 96, 4, generator=g) - 0.5
    y = torch.randn(B, L + H, 7, generator=g)
    ym = torch.rand(B, L + H, 4, generator=g) - 0.5
    y[:, :L] = x[:, -L:]  # the anchor's seq_y starts with the last label_len inputs
    dec = torch.cat([y[:, :L], torch.zeros(B, H, 7)], 1)
    with torch.no_grad():
        out = model(x, xm, dec, ym)
    payload = {"weights": clone_sd(model), "x": x, "x_mark": xm, "y": y, "y_mark": ym, "out": out,
               "loss": F.mse_loss(out[:, -H:], y[:, -H:]), "n_params": n_params(model), "sizes": FC}
    payload["step"] = tslib_train_step(Transformer, anchor_args(7, H, FC["d_model"], FC["d_ff"], n_heads=FC["n_heads"],
                                                                dropout=0.0), payload)
    payload["init_stats"] = tslib_init_stats(Transformer, anchor_args(7, 192, 128, 256))
    if data:
        payload["windows"] = tslib_windows(data_provider, data)
    save("tslib_forecast", "tslib", payload)


def tslib_train_step(Transformer, a, p: dict) -> dict:
    """One step of exp_long_term_forecasting.train (dropout 0): MSE, backward, Adam(lr 1e-4)."""
    model = Transformer.Model(a).float().train()
    model.load_state_dict(p["weights"], strict=False)  # buffers (the position table) are rebuilt
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    H, L = a.pred_len, a.label_len
    dec = torch.cat([p["y"][:, :L], torch.zeros_like(p["y"][:, -H:])], 1)
    out = model(p["x"], p["x_mark"], dec, p["y_mark"])[:, -H:]
    loss = F.mse_loss(out, p["y"][:, -H:])
    opt.zero_grad()
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
    opt.step()
    return {"loss": loss.detach(), "grads": grads, "after": clone_sd(model), "lr": 1e-4}


def tslib_init_stats(Transformer, a) -> dict:
    """Per-tensor (numel, mean, std) of the anchor's initial weights (its run.py seed 2021), CPU profile."""
    torch.manual_seed(2021)
    model = Transformer.Model(a).float()
    return {k: (v.numel(), float(v.float().mean()), float(v.float().std()) if v.numel() > 1 else 0.0)
            for k, v in model.named_parameters()}


def tslib_windows(data_provider, data: str) -> dict:
    """The anchor loader's items (seq_x, seq_y, seq_x_mark, seq_y_mark after its scaler) on ETTh1, H 192."""
    from benchmarks.forecast_bench import anchor_args

    a = anchor_args(7, 192, 16, 32, data="ETTh1", root_path=str(Path(data) / "ETT-small"), data_path="ETTh1.csv")
    out = {}
    for flag in ("train", "val", "test"):
        ds, _ = data_provider(a, flag)
        idx = [0, 1, len(ds) // 2, len(ds) - 1]
        items = [ds[i] for i in idx]
        out[flag] = {"len": len(ds), "index": idx,
                     **{k: torch.stack([torch.as_tensor(it[j], dtype=torch.float32) for it in items])
                        for j, k in enumerate(("x", "y", "x_mark", "y_mark"))}}
    return out


def tslib_classify(tslib: str) -> None:
    from benchmarks.forecast_bench import anchor_args, import_anchor

    Transformer, _ = import_anchor(tslib)
    c = CL
    a = anchor_args(c["n_channels"], 0, c["d_model"], c["d_ff"], task_name="classification", seq_len=c["seq_len"],
                    num_class=c["n_classes"], n_heads=c["n_heads"], e_layers=c["e_layers"])
    torch.manual_seed(0)
    model = Transformer.Model(a).float().eval()
    g = torch.Generator().manual_seed(1)
    B = 5
    x = torch.randn(B, c["seq_len"], c["n_channels"], generator=g)
    pad = torch.ones(B, c["seq_len"])
    pad[1, 9:], pad[3, 5:] = 0, 0  # shorter series, right-padded (its collate_fn)
    x = x * pad[..., None]
    y = torch.randint(0, c["n_classes"], (B,), generator=g)
    with torch.no_grad():
        logits = model(x, pad, None, None)
    save("tslib_classify", "tslib", {"weights": clone_sd(model), "x": x, "padding_mask": pad, "labels": y,
                                      "logits": logits, "loss": F.cross_entropy(logits, y), "n_params": n_params(model),
                                      "sizes": c})

# ------------------------------------------------------------------------------------ the DT codes
DT = dict(state_dim=3, act_dim=2, h_dim=16, n_blocks=2, context_len=4, max_timestep=64)


def dt_batch(pad_left: bool) -> dict:
    """A batch of 3 windows of K steps; the second is 2 steps short, padded (kzl: on the left, min-DT: right)."""
    g = torch.Generator().manual_seed(1)
    B, K = 3, DT["context_len"]
    b = {"states": torch.randn(B, K, DT["state_dim"], generator=g),
         "actions": torch.rand(B, K, DT["act_dim"], generator=g) * 2 - 1,
         "rtg": torch.rand(B, K, 1, generator=g) * 3,
         "timesteps": torch.randint(0, DT["max_timestep"] - K, (B, 1), generator=g) + torch.arange(K)}
    mask = torch.ones(B, K, dtype=torch.long)
    if pad_left:
        mask[1, :2] = 0
    else:
        mask[1, 2:] = 0
    for k in ("states", "actions", "rtg"):
        b[k] = b[k] * mask[..., None]
    b["timesteps"] = b["timesteps"] * mask
    b["mask"] = mask
    return b


def dt_outputs(forward, model, b: dict) -> dict:
    """Action predictions in eval mode, and in train mode under seed 7 (the dropout masks), with the MSE."""
    valid = b["mask"].reshape(-1) > 0
    out = {}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        torch.manual_seed(7)
        pred = forward(model, b)
        target = b["actions"].reshape(-1, DT["act_dim"])[valid]
        out[mode] = {"actions": pred.detach(), "loss": F.mse_loss(pred.reshape(-1, DT["act_dim"])[valid], target).detach()}
    return out


def mindt(anchor: str) -> None:
    sys.path.insert(0, str(Path(anchor).resolve()))
    from decision_transformer.model import DecisionTransformer  # noqa: E402

    torch.manual_seed(0)
    model = DecisionTransformer(state_dim=DT["state_dim"], act_dim=DT["act_dim"], n_blocks=DT["n_blocks"],
                                h_dim=DT["h_dim"], context_len=DT["context_len"], n_heads=1, drop_p=0.1,
                                max_timestep=DT["max_timestep"])
    b = dt_batch(pad_left=False)

    def forward(m, b):  # scripts/train.py: model.forward(timesteps, states, actions, returns_to_go)
        return m(b["timesteps"], b["states"], b["actions"], b["rtg"])[1]

    unused = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("predict_state", "predict_rtg")))
    save("mindt", "mindt", {"weights": clone_sd(model), "batch": b, "out": dt_outputs(forward, model, b),
                            "n_params": n_params(model), "n_params_unused": unused, "sizes": DT})


def kzl_dt(anchor: str) -> None:
    sys.path.insert(0, str((Path(anchor) / "gym").resolve()))
    from decision_transformer.models.decision_transformer import DecisionTransformer  # noqa: E402

    torch.manual_seed(0)
    # experiment.py's construction; transformers 4.5.1 (its environment) gives GPT2Config's defaults
    model = DecisionTransformer(state_dim=DT["state_dim"], act_dim=DT["act_dim"], max_length=DT["context_len"],
                                max_ep_len=DT["max_timestep"], hidden_size=DT["h_dim"], n_layer=DT["n_blocks"],
                                n_head=1, n_inner=4 * DT["h_dim"], activation_function="relu", n_positions=1024,
                                resid_pdrop=0.1, attn_pdrop=0.1)
    b = dt_batch(pad_left=True)

    def forward(m, b):  # SequenceTrainer.train_step: rewards are not used by the model
        return m(b["states"], b["actions"], None, b["rtg"], b["timesteps"], attention_mask=b["mask"])[1]

    unused = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("predict_state", "predict_return")))
    save("dt", "dt", {"weights": clone_sd(model), "batch": b, "out": dt_outputs(forward, model, b),
                      "n_params": n_params(model), "n_params_unused": unused, "sizes": DT})


# ------------------------------------------------------------------------------------ Meta TPP (a930b18)
TPP = dict(d_model=16, n_marks=3, n_layers=2)


def tpp_batch() -> dict:
    """Meta TPP's layout: per sequence n inter-event times and the window-end gap, 1-based marks, masks."""
    g = torch.Generator().manual_seed(1)
    n_entries, S = [6, 4, 5], 6
    times = torch.zeros(3, S, 1)
    marks = torch.zeros(3, S, 1, dtype=torch.long)
    masks = torch.zeros(3, S, 1)
    for s, n in enumerate(n_entries):
        times[s, :n, 0] = torch.rand(n, generator=g) * 2 + 0.05
        marks[s, :n, 0] = torch.randint(1, TPP["n_marks"] + 1, (n,), generator=g)
        masks[s, :n] = 1
    marks[1, n_entries[1] - 1] = 0  # no mark stored at this window-end entry (padding value)
    return {"times": times, "marks": marks, "masks": masks}


def _metatpp_metrics(anchor: str):
    """Its src/utils/metrics.py, loaded alone (src/utils/__init__ pulls in its logging and rich tooling)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("metatpp_metrics", Path(anchor) / "src" / "utils" / "metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MaskedAccuracy, mod.MaskedRMSE, mod.MeanMetricWithCount


def metatpp(anchor: str) -> None:
    import types

    sys.path.insert(0, str(Path(anchor).resolve()))
    nfe = types.ModuleType("nfe.models")  # the neural-flow models THP+ does not use (not in its requirements)
    for a in ("ODEModel", "ResNetFlow", "CouplingFlow"):
        setattr(nfe, a, None)
    sys.modules.update({"nfe": types.ModuleType("nfe"), "nfe.models": nfe})
    from src.models.tpp.tpp_network import TransformerMix  # noqa: E402
    MaskedAccuracy, MaskedRMSE, MeanMetricWithCount = _metatpp_metrics(anchor)

    d = TPP["d_model"]
    tensor = torch.tensor  # its TransformerEncoder puts a buffer on 'cuda' at construction: build it on the CPU
    torch.tensor = lambda *a, device=None, **k: tensor(*a, **k)
    try:
        torch.manual_seed(0)
        net = TransformerMix(name="thp_mix", activation={"name": "tanh"}, num_classes=TPP["n_marks"], d_model=d,
                             d_inner=d, n_layers=TPP["n_layers"], n_head=1, d_k=d, d_v=d, dropout=0.1, attn_l=0,
                             base_l=0, num_latent=64, vi_method="None", compute_acc=True)
    finally:
        torch.tensor = tensor
    net.eval()
    b = tpp_batch()
    with torch.no_grad():
        out = net(b["times"], b["marks"], b["masks"])
    nll_sum = -torch.sum(out["event_ll"] + out["surv_ll"])  # TPPLitModule.model_step (eval: no L2)
    nll, rmse, acc = MeanMetricWithCount(), MaskedRMSE(), MaskedAccuracy()  # its validation_step
    nll(nll_sum, b["masks"].sum())
    m = b["masks"].bool()[:, 1:, 0]
    rmse(out["time_preds"].squeeze(-1), b["times"][:, 1:, 0], m)
    acc(out["class_preds"], b["marks"][:, 1:, 0], m)
    net.train()
    loss = -torch.sum(sum(net(b["times"], b["marks"], b["masks"])[k] for k in ("event_ll", "surv_ll")))
    loss.backward()  # which parameters THP+ uses: those that get a gradient
    used = sum(p.numel() for p in net.parameters() if p.grad is not None)
    save("metatpp", "metatpp", {
        "weights": clone_sd(net), "batch": b, "event_ll": out["event_ll"], "surv_ll": out["surv_ll"],
        "time_preds": out["time_preds"], "cls_preds": out["class_preds"], "nll": nll.compute(), "rmse": rmse.compute(),
        "acc": acc.compute(), "n_params": n_params(net), "n_params_used": used, "sizes": TPP})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("anchor_name", choices=sorted(COMMITS))
    p.add_argument("--anchor", required=True, help="the anchor's checkout at its commit (outside this project)")
    p.add_argument("--data", help="tslib: the folder holding ETT-small/ (the anchor loader's windows)")
    args = p.parse_args(argv)
    if not Path(args.anchor).is_dir():
        raise SystemExit(f"--anchor {args.anchor}: no such folder; extract {REPOS[args.anchor_name]} at "
                         f"{COMMITS[args.anchor_name]} there first")
    torch.set_num_threads(1)
    if args.anchor_name == "tslib":
        tslib_forecast(args.anchor, args.data)
        tslib_classify(args.anchor)
    else:
        {"mindt": mindt, "dt": kzl_dt, "metatpp": metatpp}[args.anchor_name](args.anchor)


if __name__ == "__main__":
    main()
