"""The anchor's protocol (protocol=tslib): encoder-decoder shapes and masks, the embedding, no instance
norm, ECL univariate, the loaders' batch rules, the lr schedule, head sizes, configs and a short fit."""
from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from aaren_bench.nn import build_backbone
from aaren_bench.study import compose_config
from tasks.forecast import TASK, decoder_mixer
from tasks.forecast.data import ForecastDataModule
from tasks.forecast.embed import DataEmbedding
from tasks.forecast.model import EncoderDecoder, Forecaster
from tasks.forecast.module import ForecastModule

MODELS = ["aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt"]
SEQ, LABEL, PRED, C, F = 12, 4, 6, 3, 4


def model_cfg(kind, causal=True, d=16):
    cfg = dict(name=kind, mixer=kind, d_model=d, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)
    if kind in ("aaren", "transformer"):
        cfg["causal"] = causal
    return cfg


def encdec(kind, instance_norm=False, pred=PRED):
    """The anchor's layout around a tiny backbone (bidirectional for the transformer, as under tslib)."""
    torch.manual_seed(0)
    m = model_cfg(kind, causal=kind != "transformer")
    net = EncoderDecoder(build_backbone(m), decoder_mixer(m), C, F, SEQ, LABEL, pred, n_heads=2, d_ff=32, dropout=0.0,
                         instance_norm=instance_norm)
    return net.double().eval()


def batch(B=2, pred=PRED):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, SEQ, C, generator=g, dtype=torch.float64),
            torch.rand(B, SEQ, F, generator=g, dtype=torch.float64) - 0.5,
            torch.rand(B, LABEL + pred, F, generator=g, dtype=torch.float64) - 0.5)


# ---------------------------------------------------------------- shapes and masks
@pytest.mark.parametrize("kind", ["transformer", "aaren"])
def test_encoder_decoder_shapes(kind):
    net = encdec(kind)
    x, xm, ym = batch()
    assert net.encode(x, xm).shape == (2, SEQ, 16)
    assert net(x, xm, ym).shape == (2, PRED, C)


@pytest.mark.parametrize("kind", ["transformer", "aaren"])
def test_decoder_self_attention_is_causal(kind):
    """Changing decoder step j changes no decoder output before j (and does change j)."""
    net = encdec(kind)
    layer = net.decoder[0]
    g = torch.Generator().manual_seed(2)
    h, memory = torch.randn(2, LABEL + PRED, 16, generator=g, dtype=torch.float64), torch.randn(2, SEQ, 16, generator=g, dtype=torch.float64)
    out = layer(h, memory)
    for j in (1, LABEL, LABEL + PRED - 1):
        h2 = h.clone()
        h2[:, j] += 1.0
        out2 = layer(h2, memory)
        torch.testing.assert_close(out2[:, :j], out[:, :j], rtol=0, atol=1e-12)
        assert not torch.allclose(out2[:, j], out[:, j])


@pytest.mark.parametrize("kind", ["transformer", "aaren"])
def test_cross_attention_sees_every_encoder_step(kind):
    """Every decoder step, the first included, depends on every encoder output, the last included."""
    net = encdec(kind)
    layer = net.decoder[0]
    g = torch.Generator().manual_seed(3)
    h, memory = torch.randn(2, LABEL + PRED, 16, generator=g, dtype=torch.float64), torch.randn(2, SEQ, 16, generator=g, dtype=torch.float64)
    out = layer(h, memory)
    for k in (0, SEQ // 2, SEQ - 1):
        m2 = memory.clone()
        m2[:, k] += 1.0
        changed = (layer(h, m2) - out).abs().amax(-1)  # (B, N)
        assert bool((changed > 1e-9).all()), f"encoder step {k} does not reach every decoder step"


def test_encoder_is_bidirectional_for_the_transformer_and_causal_for_aaren():
    """Input step j is embedded into tokens j-1, j, j+1 (kernel 3); beyond that only attention carries it.
    The transformer's encoder output at step 0 depends on step 6; Aaren's steps 0..4 do not."""
    x, xm, _ = batch()
    x2 = x.clone()
    x2[:, 6] += 1.0
    tr, aa = encdec("transformer"), encdec("aaren")
    assert not torch.allclose(tr.encode(x2, xm)[:, 0], tr.encode(x, xm)[:, 0])
    torch.testing.assert_close(aa.encode(x2, xm)[:, :5], aa.encode(x, xm)[:, :5], rtol=0, atol=1e-12)
    assert not torch.allclose(aa.encode(x2, xm)[:, 5], aa.encode(x, xm)[:, 5])


def test_decoder_input_is_known_steps_then_zeros():
    """The decoder reads the last label_len input steps then zeros: the forecast does not depend on input
    steps outside the encoder except through those label steps, and never on future values."""
    net = encdec("transformer")
    seen = {}
    net.dec_embed.register_forward_hook(lambda mod, inp, out: seen.__setitem__("values", inp[0].detach()))
    x, xm, ym = batch()
    net(x, xm, ym)
    torch.testing.assert_close(seen["values"][:, :LABEL], x[:, SEQ - LABEL :])
    assert bool((seen["values"][:, LABEL:] == 0).all())


# ---------------------------------------------------------------- the embedding against a hand computation
def test_embedding_is_circular_conv_plus_positions_plus_calendar():
    torch.manual_seed(0)
    N, D = 5, 6
    emb = DataEmbedding(2, 3, D, dropout=0.0, max_len=N, value="circular_conv").double()
    g = torch.Generator().manual_seed(4)
    x, m = torch.randn(1, N, 2, generator=g, dtype=torch.float64), torch.randn(1, N, 3, generator=g, dtype=torch.float64)
    W = emb.value.conv.weight  # (D, 2, 3): out, in, kernel
    Wc = emb.calendar.weight  # (D, 3)
    assert emb.value.conv.bias is None and emb.calendar.bias is None
    expect = torch.zeros(N, D, dtype=torch.float64)
    for t in range(N):
        for k in range(3):
            expect[t] += W[:, :, k] @ x[0, (t - 1 + k) % N]  # circular padding: index -1 is N-1, N is 0
        for i in range(D):
            angle = t / 10000 ** ((i - i % 2) / D)
            expect[t, i] += math.sin(angle) if i % 2 == 0 else math.cos(angle)
        expect[t] += Wc @ m[0, t]
    torch.testing.assert_close(emb(x, m)[0], expect, rtol=0, atol=1e-6)  # the position table is float32


# ---------------------------------------------------------------- protocol keys
def test_no_instance_norm_under_tslib_and_normalised_input_under_suite_and_paper():
    assert compose_config(["dataset=ETTh1", "protocol=tslib"]).task.instance_norm is False
    assert compose_config(["dataset=ETTh1", "protocol=suite"]).task.instance_norm is True
    paper = compose_config(["dataset=ETTh1", "protocol=paper"])
    assert paper.task.instance_norm is True and paper.task.layout == "encoder_decoder" and paper.cell.split("/")[2] == "paper"
    # without instance norm a shift of the input is not a shift of the forecast; with it, it is exactly
    x, xm, ym = batch()
    b = torch.tensor([5.0, -3.0, 0.5], dtype=torch.float64)
    plain, normed = encdec("transformer"), encdec("transformer", instance_norm=True)
    assert not torch.allclose(plain(x + b, xm, ym), plain(x, xm, ym) + b, atol=1e-3)
    torch.testing.assert_close(normed(x + b, xm, ym), normed(x, xm, ym) + b, rtol=1e-9, atol=1e-9)


def test_tslib_keys_and_causal_flag_in_the_config():
    t = compose_config(["dataset=ETTh1", "protocol=tslib", "model=transformer"])
    assert (t.task.layout, t.task.value_embedding, t.task.decoder_layers, t.task.label_len) == ("encoder_decoder", "circular_conv", 1, 48)
    assert dict(t.task.drop_last) == {"train": True, "val": False, "test": False}
    assert (t.task.lr_schedule, t.task.max_epochs, t.task.patience, t.task.batch_size, t.task.optimizer.lr) == ("type1", 10, 3, 32, 1e-4)
    assert t.model.causal is False, "the anchor's encoder is bidirectional"
    assert compose_config(["dataset=ETTh1", "protocol=tslib", "model=aaren"]).model.causal is True
    s = compose_config(["dataset=ETTh1", "model=transformer"])
    assert s.model.causal is True and s.task.layout == "stack" and s.task.head == "patch" and s.task.patch_len == 24
    assert dict(s.task.drop_last) == {"train": False, "val": False, "test": False}


def test_ecl_is_univariate_under_tslib_and_multivariate_under_suite():
    assert compose_config(["dataset=ECL", "protocol=tslib"]).task.features == "S"
    assert compose_config(["dataset=ECL", "protocol=paper"]).task.features == "S"
    assert compose_config(["dataset=ECL"]).task.features == "M"
    assert compose_config(["dataset=ETTh1", "protocol=tslib"]).task.features == "M"
    assert compose_config(["dataset=ECL", "protocol=tslib"]).cell == "forecast/ECL-H192/tslib/aaren/seed0"


def write_csv(path, n=300, channels=("c0", "OT", "c2", "c3")):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(n, len(channels))) * np.arange(1, len(channels) + 1), columns=list(channels))
    df.insert(0, "date", pd.date_range("2020-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)
    return df


def test_univariate_datamodule_keeps_the_target_alone(tmp_path):
    """features=S (the anchor's ECL script): the model sees the target column only, scaled with its own
    training statistics; the file is still checked against the catalog's channel count."""
    df = write_csv(tmp_path / "u.csv")
    dm = ForecastDataModule(tmp_path / "u.csv", "ratio", seq_len=24, label_len=12, pred_len=24, n_channels=4, features="S")
    assert dm.n_channels == 1
    dm.setup()
    assert dm.columns == ["OT"]
    ot = df["OT"].to_numpy()
    n_train = int(0.7 * len(ot))
    np.testing.assert_allclose(dm.scaler.mean, [ot[:n_train].mean()], rtol=1e-6)
    x, _, y, _ = dm.datasets["train"][0]
    assert x.shape == (24, 1) and y.shape == (24, 1)
    np.testing.assert_allclose(x[:, 0].numpy(), (ot[:24] - ot[:n_train].mean()) / ot[:n_train].std(), rtol=1e-5)
    with pytest.raises(Exception, match="expected 5 channels"):
        ForecastDataModule(tmp_path / "u.csv", "ratio", 24, 12, 24, n_channels=5, features="S").setup()


def test_train_loader_drops_the_last_batch_val_and_test_keep_every_window(tmp_path):
    write_csv(tmp_path / "d.csv")
    dm = ForecastDataModule(tmp_path / "d.csv", "ratio", seq_len=24, label_len=12, pred_len=24, n_channels=4,
                            batch_size=32, drop_last={"train": True, "val": False, "test": False})
    dm.setup()
    n = {p: len(d) for p, d in dm.datasets.items()}
    assert n["train"] % 32 and n["test"] % 32  # each part has a smaller last batch to drop or keep
    assert sum(len(b[0]) for b in dm.train_dataloader()) == n["train"] // 32 * 32
    assert sum(len(b[0]) for b in dm.val_dataloader()) == n["val"]
    assert sum(len(b[0]) for b in dm.test_dataloader()) == n["test"]


# ---------------------------------------------------------------- head sizes
@pytest.mark.parametrize("d", [16, 64])
def test_default_head_does_not_grow_with_horizon_times_channels(d):
    bb = build_backbone(model_cfg("transformer", d=d) | {"n_layers": 1})
    size = {(H, Cn): Forecaster(bb, Cn, F, 96, 48, H).parameter_split()["head"] for H in (96, 720) for Cn in (1, 7, 862)}
    for Cn in (1, 7, 862):
        assert size[(96, Cn)] == size[(720, Cn)] == d * d + d + (d + 1) * 24 * Cn  # patch_len 24
    last = {H: Forecaster(bb, 862, F, 96, 48, H, head="last").parameter_split()["head"] for H in (96, 720)}
    assert last[720] == (d + 1) * 720 * 862 and last[720] > 7 * last[96]  # what the default avoids
    m = model_cfg("transformer", d=d)
    tslib = {H: EncoderDecoder(bb, decoder_mixer(m), 862, F, 96, 48, H, n_heads=2, d_ff=32).parameter_split()["head"]
             for H in (96, 720)}
    assert tslib[96] == tslib[720]


# ---------------------------------------------------------------- the lr schedule
def test_type1_lr_values_as_the_anchor_sets_them():
    """The anchor calls adjust_learning_rate(optimizer, epoch + 1) after each epoch: lr = lr0 * 0.5 ** (epoch + 1 - 1)
    for the next epoch. So epochs 0..5 run at lr0 x 1, 1, 1/2, 1/4, 1/8, 1/16."""
    module = ForecastModule(encdec("transformer"), optimizer=lambda p: torch.optim.Adam(p, lr=1e-4), lr_schedule="type1")
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for epoch in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    anchor = [1e-4] + [1e-4 * 0.5 ** ((e - 1) // 1) for e in range(1, 6)]
    assert lrs == pytest.approx(anchor, rel=1e-12)
    assert conf["lr_scheduler"]["interval"] == "epoch"


# ---------------------------------------------------------------- configs for every model, and a short fit
@pytest.mark.parametrize("model", MODELS)
def test_tslib_composes_and_builds_for_every_model(model):
    cfg = compose_config(["dataset=ETTh1", "protocol=tslib", f"model={model}", "task.backbone.d_model=16",
                          "task.backbone.n_heads=2", "task.backbone.d_ff=32"])
    assert cfg.cell.startswith("forecast/ETTh1-H192/tslib+x") and cfg.cell.endswith(f"/{model}/seed0")  # smaller: tagged
    dm = SimpleNamespace(n_channels=7, n_marks=4)
    module = TASK.build_module(cfg, dm, build_backbone(cfg.model), lambda p: torch.optim.Adam(p, 1e-4))
    assert isinstance(module.net, EncoderDecoder)
    split = module.parameter_split()
    assert set(split) == {"embedding", "backbone", "head"}
    assert sum(split.values()) == sum(p.numel() for p in module.parameters())
    x = torch.randn(2, 96, 7)
    out = module(x, torch.rand(2, 96, 4) - 0.5, torch.rand(2, 48 + 192, 4) - 0.5)
    assert out.shape == (2, 192, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("model", ["transformer", "aaren"])
def test_short_fit_under_tslib(shared_data, runs_dir, model, monkeypatch):
    """Three short epochs through run.train: the record names the protocol, the causal flag and the parameter
    split; the lr follows type1 (1, 1, 1/2 of lr0)."""
    import aaren_bench.run as run
    from aaren_bench.run import train

    lrs = []

    class LrLog(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    cfg = compose_config(["dataset=ETTh1", "protocol=tslib", f"model={model}", "logger=none", "task.pred_len=24",
                          "task.backbone.d_model=16", "task.backbone.n_heads=2", "task.backbone.d_ff=32",
                          "trainer.max_epochs=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                          "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "checkpoint_every_min=null",
                          f"paths.data_root={shared_data}", f"paths.runs={runs_dir}", "tag=short"])
    make = run.make_callbacks
    monkeypatch.setattr(run, "make_callbacks", lambda *a, **k: make(*a, **k) + [LrLog()])
    rec = train(cfg)
    assert rec["protocol"] == "tslib" and rec["cell"] == f"forecast/ETTh1-H24/tslib+short/{model}/seed0"
    assert rec["config"]["model"]["causal"] is (model != "transformer")
    assert rec["config"]["task"]["layout"] == "encoder_decoder" and rec["config"]["task"]["instance_norm"] is False
    assert set(rec["params"]) == {"embedding", "backbone", "head", "total"}
    assert all(math.isfinite(v) and v > 0 for v in rec["metrics"].values())
    assert lrs[:3] == pytest.approx([1e-4, 1e-4, 5e-5])
