"""Every anchor's model, proven equal to ours under its protocol, against fixtures that the
anchor's own code wrote at its commit (``benchmarks/anchor_fixtures.py``; tests/data/anchors/).

No anchor code runs here: each test loads the anchor's weights into the model our config
builds under that protocol and checks the same outputs and loss to float tolerance, and the
same parameter count. ``pytest -k equivalence`` selects them; each prints its largest
difference. Weight names are mapped explicitly: a parameter left unmapped fails the load.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aaren_bench.nn import build_backbone
from aaren_bench.study import compose_config
from benchmarks.forecast_bench import _anchor_to_ours

FIXTURES = Path(__file__).parent / "data" / "anchors"
pytestmark = pytest.mark.usefixtures("one_thread")


def fixture(name: str) -> dict:
    path = FIXTURES / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: write it with benchmarks/anchor_fixtures.py (see its docstring)")
    return torch.load(path, weights_only=False)


def report(name: str, **diffs: float) -> float:
    worst = max(diffs.values())
    print(f"\n[equivalence] {name}: " + ", ".join(f"max |anchor - ours| {k} = {v:.2e}" for k, v in diffs.items()))
    return worst


def maxdiff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def no_dropout(m: nn.Module) -> nn.Module:
    for mod in m.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
        if hasattr(mod, "attn_dropout"):
            mod.attn_dropout = 0.0
    return m


# ------------------------------------------------------------------------------------ TSLib forecasting
def _forecast_net(sizes: dict, pred_len: int, seed: int = 0):
    from aaren_bench.run import build

    cfg = compose_config(["dataset=ETTh1", "model=transformer", "protocol=tslib", f"task.pred_len={pred_len}",
                          f"task.backbone.d_model={sizes['d_model']}", f"task.backbone.d_ff={sizes['d_ff']}",
                          f"task.backbone.n_heads={sizes.get('n_heads', 8)}", "logger=none"])
    torch.manual_seed(seed)
    return build(cfg).module.net


def test_equivalence_tslib_forecast_transformer():
    fx = fixture("tslib_forecast")
    net = _forecast_net(fx["sizes"], fx["sizes"]["pred_len"]).eval()
    net.load_state_dict(_anchor_to_ours(fx["weights"]), strict=True)
    H = fx["sizes"]["pred_len"]
    with torch.no_grad():
        out = net(fx["x"], fx["x_mark"], fx["y_mark"])
    loss = F.mse_loss(out, fx["y"][:, -H:])
    worst = report("TSLib forecasting Transformer", outputs=maxdiff(out, fx["out"]),
                   loss=abs(float(loss) - float(fx["loss"])))
    assert worst < 1e-5
    print(f"[equivalence] parameters: anchor {fx['n_params']}, ours {n_params(net)}")
    assert n_params(net) == fx["n_params"]


def test_equivalence_tslib_forecast_one_training_step():
    """One step of the anchor's training loop (dropout off, MSE, Adam lr 1e-4) from the same
    weights and batch: the same loss, gradients and updated weights."""
    fx = fixture("tslib_forecast")
    st, H = fx["step"], fx["sizes"]["pred_len"]
    net = no_dropout(_forecast_net(fx["sizes"], H).train())
    net.load_state_dict(_anchor_to_ours(fx["weights"]), strict=True)
    opt = torch.optim.Adam(net.parameters(), lr=st["lr"])
    loss = F.mse_loss(net(fx["x"], fx["x_mark"], fx["y_mark"]), fx["y"][:, -H:])
    opt.zero_grad()
    loss.backward()
    grads = _anchor_to_ours(st["grads"])
    g = max(maxdiff(p.grad, grads[k]) for k, p in net.named_parameters())
    opt.step()
    after = _anchor_to_ours(st["after"])
    w = max(maxdiff(p, after[k]) for k, p in net.named_parameters())
    worst = report("TSLib forecasting, one training step", loss=abs(float(loss) - float(st["loss"])), gradients=g,
                   updated_weights=w)
    assert worst < 1e-5


def test_equivalence_tslib_forecast_initial_weight_statistics():
    """Fresh weights at the CPU profile (d_model 128, d_ff 256, horizon 192): per tensor, the
    anchor's (its run.py seed) and ours have the same size and, within sampling noise, the same
    mean and spread; so the two codes start from the same distribution."""
    fx = fixture("tslib_forecast")
    names = _anchor_to_ours({k: torch.zeros(1) for k in fx["init_stats"]})
    ours = dict(_forecast_net({"d_model": 128, "d_ff": 256}, 192, seed=2021).named_parameters())
    assert set(ours) == set(names)
    worst = 0.0
    for k, (numel, mean, std) in fx["init_stats"].items():
        p = ours[next(iter(_anchor_to_ours({k: torch.zeros(1)})))]
        assert p.numel() == numel, k
        tol = 0.1 + 4 / numel**0.5  # sampling noise of a std over numel draws
        if std == 0:
            assert float(p.std()) == 0 and float(p.mean()) == pytest.approx(mean), k
            continue
        ratio = float(p.std()) / std
        worst = max(worst, abs(ratio - 1))
        assert abs(ratio - 1) < tol, (k, numel, std, float(p.std()))
        assert abs(float(p.mean()) - mean) < 4 * std / numel**0.5 + 1e-6, k
    print(f"\n[equivalence] TSLib initial weights: {len(names)} tensors, largest |std ratio - 1| = {worst:.3f}")


def test_equivalence_tslib_forecast_windows(shared_data):
    """The anchor loader's windows (inputs, targets and both time-feature blocks, after its
    scaler) on the real ETTh1 file equal ours under tslib, and each part has as many windows."""
    from aaren_bench.run import build

    fx = fixture("tslib_forecast")["windows"]
    cfg = compose_config(["dataset=ETTh1", "model=transformer", "protocol=tslib", "task.pred_len=192",
                          f"paths.data_root={shared_data}", "logger=none"])
    dm = build(cfg).datamodule
    dm.setup("fit")
    worst = {}
    for part, w in fx.items():
        ds = dm.datasets[part]
        assert len(ds) == w["len"], part
        items = [ds[i] for i in w["index"]]
        x, x_mark, y, y_mark = (torch.stack([it[j] for it in items]) for j in range(4))
        worst[part] = max(maxdiff(x, w["x"]), maxdiff(y, w["y"][:, -192:]), maxdiff(x_mark, w["x_mark"]),
                          maxdiff(y_mark, w["y_mark"]))
    assert report("TSLib ETTh1 windows", **worst) < 1e-5


# ------------------------------------------------------------------------------------ TSLib classification
UNUSED_CLASSIFY = ("enc_embedding.temporal_embedding.embed.weight",)  # built, never called: x_mark is None


def _classify_map(sd: dict) -> dict:
    """The anchor's classification Transformer under our SeriesClassifier's names. Its DataEmbedding
    builds a time-feature Linear that classification never calls (``UNUSED_CLASSIFY``)."""
    proj = {"query_projection": "q_proj", "key_projection": "k_proj", "value_projection": "v_proj",
            "out_projection": "out_proj"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if k in UNUSED_CLASSIFY:
            continue
        if k == "enc_embedding.value_embedding.tokenConv.weight":
            out["value_embed.weight"] = v
        elif p[:2] == ["encoder", "attn_layers"]:
            i, part = p[2], p[3]
            if part == "attention":
                out[f"backbone.blocks.{i}.mixer.{proj[p[4]]}.{p[5]}"] = v
            elif part in ("conv1", "conv2"):
                out[f"backbone.blocks.{i}.ff.{0 if part == 'conv1' else 3}.{p[4]}"] = v.squeeze(-1) if p[4] == "weight" else v
            else:
                out[f"backbone.blocks.{i}.{part}.{p[4]}"] = v
        elif p[:2] == ["encoder", "norm"]:
            out[f"final_norm.{p[2]}"] = v
        elif p[0] == "projection":
            out[f"head.{p[1]}"] = v
        else:
            raise KeyError(f"unmapped anchor parameter {k}")
    return out


def test_equivalence_tslib_classify_transformer():
    from tasks.classify.model import SeriesClassifier

    fx = fixture("tslib_classify")
    c = fx["sizes"]
    cfg = compose_config(["task=classify", "protocol=tslib", "model=transformer", f"task.backbone.d_model={c['d_model']}",
                          f"task.backbone.d_ff={c['d_ff']}", f"task.backbone.n_heads={c['n_heads']}",
                          f"task.backbone.n_layers={c['e_layers']}", "logger=none"])
    t = cfg.task
    module = SeriesClassifier(build_backbone(cfg.model), c["n_channels"], c["n_classes"], c["seq_len"],
                              readout=t.readout, embed=t.embed, mask_padding=t.mask_padding, final_norm=t.final_norm).eval()
    module.load_state_dict(_classify_map(fx["weights"]), strict=True)
    assert not module.backbone.blocks[0].mixer.causal  # the library's encoder sees the whole series
    with torch.no_grad():
        logits = module(fx["x"], fx["padding_mask"].bool())
    loss = F.cross_entropy(logits, fx["labels"])
    worst = report("TSLib classification Transformer", logits=maxdiff(logits, fx["logits"]),
                   loss=abs(float(loss) - float(fx["loss"])))
    assert worst < 1e-5
    unused = sum(fx["weights"][k].numel() for k in UNUSED_CLASSIFY)
    print(f"[equivalence] parameters: anchor {fx['n_params']} ({unused} never used), ours {n_params(module)}")
    assert n_params(module) == fx["n_params"] - unused


# ------------------------------------------------------------------------------------ the DT codes
def _decision_model(protocol: str, sizes: dict):
    from tasks.rl.model import DecisionModel

    cfg = compose_config(["task=rl", f"protocol={protocol}", "model=transformer", f"task.backbone.d_model={sizes['h_dim']}",
                          f"task.backbone.n_layers={sizes['n_blocks']}", "task.backbone.n_heads=1",
                          f"task.backbone.d_ff={4 * sizes['h_dim']}", "logger=none"])
    torch.manual_seed(0)
    return DecisionModel(build_backbone(cfg.model), sizes["state_dim"], sizes["act_dim"], sizes["max_timestep"],
                         embed_dropout=cfg.task.embed_dropout)


def _load(model: nn.Module, mapped: dict) -> None:
    """Load every parameter (strict on parameters; our dataset-statistics buffers stay as built)."""
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected and set(missing) <= {"state_mean", "state_std", "state_keep"}, (missing, unexpected)


def _check_dt(name: str, model: nn.Module, fx: dict, mapped: dict) -> None:
    """Eval and train mode (the same seed: both codes draw their dropout masks in the same order
    and shapes), on the valid steps of a padded batch: action predictions and the MSE."""
    b = fx["batch"]
    valid = b["mask"].bool()
    diffs = {}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        torch.manual_seed(7)
        pred = model(b["states"], b["actions"], b["rtg"][..., 0], b["timesteps"], valid)
        want = fx["out"][mode]
        loss = F.mse_loss(pred[valid], b["actions"][valid])
        diffs[f"{mode}_actions"] = maxdiff(pred[valid], want["actions"][valid])
        diffs[f"{mode}_loss"] = abs(float(loss) - float(want["loss"]))
    assert report(name, **diffs) < 1e-5
    unused = sum(v.numel() for k, v in fx["weights"].items() if k not in mapped["_from"])
    print(f"[equivalence] parameters: anchor {fx['n_params']} ({unused} never used for actions), ours {n_params(model)}")
    assert n_params(model) == fx["n_params"] - unused


def _mindt_map(sd: dict) -> dict:
    names = {"attention.q_net": "mixer.q_proj", "attention.k_net": "mixer.k_proj", "attention.v_net": "mixer.v_proj",
             "attention.proj_net": "mixer.out_proj", "mlp.0": "ff.0", "mlp.2": "ff.2", "ln1": "norm1", "ln2": "norm2"}
    out, used = {}, set()
    for k, v in sd.items():
        p = k.split(".")
        if p[0] == "transformer":
            new = f"backbone.blocks.{p[1]}.{names['.'.join(p[2:-1])]}.{p[-1]}"
        elif p[0] in ("embed_rtg", "embed_state", "embed_action", "embed_ln"):
            new = k
        elif p[0] == "embed_timestep":
            new = f"embed_time.{p[1]}"
        elif p[0] == "predict_action":
            new = f"head.0.{p[2]}"
        elif p[0] in ("predict_state", "predict_rtg"):  # trained by nothing in min-DT's loss
            continue
        else:
            raise KeyError(f"unmapped anchor parameter {k}")
        out[new] = v
        used.add(k)
    return {**out, "_from": used}


def test_equivalence_mindt():
    fx = fixture("mindt")
    model = _decision_model("mindt", fx["sizes"])
    mapped = _mindt_map(fx["weights"])
    _load(model, {k: v for k, v in mapped.items() if k != "_from"})
    _check_dt("min-DT", model, fx, mapped)


def _kzl_map(sd: dict) -> dict:
    """GPT-2's Conv1D stores (in, out): transposed into Linear; c_attn splits into Q, K, V."""
    out, used = {}, set()
    for k, v in sd.items():
        p = k.split(".")
        if p[:2] == ["transformer", "h"]:
            blk, part, leaf = f"backbone.blocks.{p[2]}", ".".join(p[3:-1]), p[-1]
            t = v.t() if leaf == "weight" and v.dim() == 2 else v
            if part == "attn.c_attn":
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                    out[f"{blk}.mixer.{name}.{leaf}"] = chunk
            else:
                new = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_proj": "mixer.out_proj", "mlp.c_fc": "ff.0",
                       "mlp.c_proj": "ff.2"}[part]
                out[f"{blk}.{new}.{leaf}"] = t
        elif p[:2] == ["transformer", "ln_f"]:
            out[f"backbone.final_norm.{p[2]}"] = v
        elif p[0] in ("embed_state", "embed_action", "embed_ln"):
            out[k] = v
        elif p[0] == "embed_return":
            out[f"embed_rtg.{p[1]}"] = v
        elif p[0] == "embed_timestep":
            out[f"embed_time.{p[1]}"] = v
        elif p[0] == "predict_action":
            out[f"head.0.{p[2]}"] = v
        elif k == "transformer.wte.weight" or p[0] in ("predict_state", "predict_return"):
            continue  # token table of a vocabulary of 1 (inputs_embeds are given); heads no loss trains
        else:
            raise KeyError(f"unmapped anchor parameter {k}")
        used.add(k)
    return {**out, "_from": used}


def test_equivalence_kzl_dt(monkeypatch):
    # kzl's batches pad on the left; the suite's loader pads on the right and promises it to the
    # backbone (tasks.rl.data.PADDING), which this batch would break: the mask is read in full here
    monkeypatch.setattr("tasks.rl.model.PADDING", "any")
    fx = fixture("dt")
    model = _decision_model("dt", fx["sizes"])
    # GPT-2's initialisation inside the stack: the anchor's fresh weights and ours have the same spread
    for k, v in fx["weights"].items():
        if k.startswith("transformer.h.0.") and k.endswith("weight") and v.dim() == 2:
            assert float(v.std()) == pytest.approx(0.02, rel=0.25), k
    ours = [m.weight for m in model.backbone.modules() if isinstance(m, nn.Linear)]
    assert all(float(w.std()) == pytest.approx(0.02, rel=0.25) for w in ours)
    mapped = _kzl_map(fx["weights"])
    _load(model, {k: v for k, v in mapped.items() if k != "_from"})
    _check_dt("kzl DT", model, fx, mapped)


# ------------------------------------------------------------------------------------ Meta TPP's THP+
def _tpp_map(sd: dict, log_scale: float, K: int = 8) -> dict:
    """THP+'s weights under our EventModel's names. Its mark table has a padding row 0 (marks are
    1-based); our mu is shifted by log s inside the model, so the decoder's mu bias is moved by -log s."""
    names = {"slf_attn.w_qs": "mixer.q_proj", "slf_attn.w_ks": "mixer.k_proj", "slf_attn.w_vs": "mixer.v_proj",
             "slf_attn.fc": "mixer.out_proj", "slf_attn.layer_norm": "norm1", "pos_ffn.w_1": "ff.0",
             "pos_ffn.w_2": "ff.3", "pos_ffn.layer_norm": "norm2"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if k == "encoder.event_emb.weight":
            out["mark_emb.weight"] = v[1:]
        elif p[:2] == ["encoder", "layer_stack"]:
            out[f"backbone.blocks.{p[2]}.{names['.'.join(p[3:-1])]}.{p[-1]}"] = v
        elif p[:3] == ["prob_dist", "decoder", "net"]:
            if k == "prob_dist.decoder.net.2.bias":
                v = v.clone()
                v[K : 2 * K] -= log_scale
            out[f"decoder.{p[3]}.{p[4]}"] = v
        elif p[0] == "mark_linear":
            out[f"mark_head.{p[1]}"] = v
        elif p[0] not in ("linear", "time_predictor"):  # its class and time decoders, which THP+ never calls
            raise KeyError(f"unmapped anchor parameter {k}")
    return out


def _tpp_batch(fx: dict, tmp_path) -> dict:
    """The anchor's batch (its .npz layout: gaps, the window-end gap, 1-based marks) through our reader."""
    import numpy as np

    from tasks.events.data import collate
    from tasks.events.formats import load_meta_tpp_npz

    b = fx["batch"]
    path = tmp_path / "batch.npz"
    np.savez(path, times=b["times"][..., 0].double().numpy(), marks=b["marks"][..., 0].numpy(),
             masks=b["masks"][..., 0].numpy())
    seqs = load_meta_tpp_npz(path, num_marks=fx["sizes"]["n_marks"], time_format="inter")
    return collate(seqs, list(range(len(b["times"]))))


def test_equivalence_metatpp_thp_plus(tmp_path):
    """THP+ under protocol=metatpp: per-window event and survival log-likelihoods (with the
    window-end mark term), time and mark predictions, and Meta TPP's NLL, RMSE and accuracy."""
    from tasks.events.likelihood import (
        Mixture,
        end_mark_ll,
        lognormal_mixture_log_prob,
        lognormal_mixture_log_survival_metatpp,
        lognormal_mixture_mean,
        metric_sums,
        sequence_scores,
        split_metrics,
    )
    from tasks.events.model import EventModel

    fx = fixture("metatpp")
    z = fx["sizes"]
    cfg = compose_config(["task=events", "protocol=metatpp", "model=transformer", f"task.backbone.d_model={z['d_model']}",
                          f"task.backbone.n_layers={z['n_layers']}", "task.backbone.n_heads=1",
                          f"task.backbone.d_ff={z['d_model']}", "logger=none"])
    t, s = cfg.task, 0.7
    model = EventModel(build_backbone(cfg.model), num_marks=z["n_marks"], time_scale=s, time_encoding=t.time_encoding,
                       time_encoding_at=t.time_encoding_at, scale_floor=t.scale_floor).eval()
    model.load_state_dict(_tpp_map(fx["weights"], float(torch.tensor(s).log())), strict=False)
    assert {k for k in model.state_dict() if k not in _tpp_map(fx["weights"], 0.0)} == {"log_scale"}
    batch = _tpp_batch(fx, tmp_path)
    with torch.no_grad():
        mix, logits = model(batch)
    mask, ar = batch["mask"], torch.arange(len(batch["mask"]))
    last = mask.sum(-1) - 1
    sc = sequence_scores(mix, logits, batch)
    head = Mixture(*(p[:, :-1] for p in mix))
    lp = lognormal_mixture_log_prob(torch.where(mask[:, 1:], batch["dts"][:, 1:], 1.0) + 1e-12, head)
    event_ll = torch.where(mask[:, 1:], lp, 0.0).sum(-1) + sc.mark_ll + end_mark_ll(logits, batch)
    surv_ll = lognormal_mixture_log_survival_metatpp(batch["last_gap"], Mixture(*(p[ar, last] for p in mix)))
    n = mask.shape[1]  # its positions 0..n-1 are our events (position n_s is its window-end entry)
    valid = mask  # (B, n): the positions that are events in both layouts
    preds = lognormal_mixture_mean(mix) - 1e-12
    got = split_metrics(metric_sums(mix, logits, batch), marked=True)
    worst = report("Meta TPP THP+", event_ll=maxdiff(event_ll, fx["event_ll"]), surv_ll=maxdiff(surv_ll, fx["surv_ll"]),
                   time_preds=maxdiff(preds[valid], fx["time_preds"][:, :n, 0][valid]),
                   nll=abs(got["nll_metatpp"] - float(fx["nll"])), rmse=abs(got["rmse_metatpp"] - float(fx["rmse"])))
    assert worst < 1e-5
    assert torch.equal(logits.argmax(-1)[valid], fx["cls_preds"][:, :n][valid])
    assert got["acc_metatpp"] == pytest.approx(float(fx["acc"]), abs=1e-7)
    print(f"[equivalence] parameters: anchor {fx['n_params']}, {fx['n_params_used']} used by THP+ "
          f"(its mark table's padding row of {z['d_model']} among them), ours {n_params(model)}")
    assert n_params(model) == fx["n_params_used"] - z["d_model"]
