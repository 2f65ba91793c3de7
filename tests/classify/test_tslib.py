"""protocol=tslib for classification: the Time-Series-Library's setup at a68756f, key by key."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from aaren_bench.nn import build_backbone
from aaren_bench.run import build, train
from aaren_bench.study import compose_config
from tasks.classify import TASK
from tasks.classify.data import fit_scaler, instance_norm, pad
from tasks.classify.model import SeriesClassifier
from tasks.classify.module import Classifier, tslib_cls_factor
from tests.classify.test_data import write_ts

TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=16", "model.n_layers=1"]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]
MODELS = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")


# ---- the learning rate --------------------------------------------------------------------------

def test_lr_schedule_values_per_epoch():
    """a68756f: after 1-based epoch E in {5, 10, 15, ...}, lr = lr0 * 0.5 ** (E - 1) (lradj type1)."""
    lr0 = 1e-3
    hand = [1e-3] * 5 + [6.25e-5] * 5 + [1e-3 / 512] * 5 + [1e-3 / 16384] * 5 + [1e-3 / 2 ** 19]
    got = [lr0 * tslib_cls_factor(e) for e in range(21)]
    assert got == pytest.approx(hand, rel=1e-12)
    assert got[10] == pytest.approx(1.953125e-6)  # "about 2e-6 at epoch 10" is the rate of epochs 11-15


class _LrLog(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _toy_module(lr_schedule: str, **kw) -> Classifier:
    cfg = compose_config(["model=aaren", *TINY])
    opt = lambda params: torch.optim.RAdam(params, lr=1e-3)  # noqa: E731
    model = SeriesClassifier(build_backbone(cfg.model), n_channels=2, n_classes=3, max_len=6, **kw)
    return Classifier(model, opt, lr_schedule=lr_schedule)


def _toy_loader(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, 2, generator=g), torch.arange(n) % 3
    return DataLoader(TensorDataset(x, torch.ones(n, 6, dtype=torch.bool), y), batch_size=4)


@pytest.mark.parametrize("schedule, hand", [
    ("tslib_cls", [1e-3] * 5 + [6.25e-5] * 5 + [1e-3 / 512] * 2),
    ("none", [1e-3] * 12),
])
def test_lr_schedule_in_a_fit(schedule, hand, one_thread):
    """The rate each epoch actually trains at, read from the optimizer."""
    log = _LrLog()
    trainer = L.Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[log], accelerator="cpu")
    trainer.fit(_toy_module(schedule), train_dataloaders=_toy_loader())
    assert log.lrs == pytest.approx(hand, rel=1e-9)


# ---- normalisation --------------------------------------------------------------------------------

def test_instance_norm_by_hand():
    """Centre each channel over the series' real steps, divide each step by the spread across its channels."""
    s = np.array([[1.0, 4.0], [3.0, 0.0], [5.0, 2.0]])  # (3 steps, 2 channels)
    x, m = pad([s.astype(np.float32)], 4)
    got = instance_norm(x, m)
    c = s - s.mean(0)  # channel means 3 and 2 -> [[-2, 2], [0, -2], [2, 0]]
    assert c.tolist() == [[-2, 2], [0, -2], [2, 0]]
    var = [4.0, 1.0, 1.0]  # population variance across the two channels at each step
    hand = c / np.sqrt(np.array(var)[:, None] + 1e-5)
    np.testing.assert_allclose(got[0, :3], hand, rtol=1e-6)
    assert got[0, 3].tolist() == [0.0, 0.0]  # padding stays zero
    # the same arithmetic in torch on the unpadded series (the library's instance_norm)
    t = torch.from_numpy(s)
    t = t - t.mean(0, keepdim=True)
    t = t / torch.sqrt(torch.var(t, dim=1, keepdim=True, unbiased=False) + 1e-5)
    np.testing.assert_allclose(got[0, :3], t.numpy(), rtol=1e-6)


def test_sample_std_over_real_steps_as_pandas():
    """per-split statistics with std_ddof=1: pandas' DataFrame.std() over the split's real steps."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(n, 3)).astype(np.float32) for n in (3, 5, 4)]
    x, m = pad(series, 6)
    mean, std = fit_scaler(x, m, ddof=1)
    frame = pd.DataFrame(np.concatenate(series).astype(np.float64))
    np.testing.assert_allclose(mean, frame.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, frame.std().to_numpy(), rtol=1e-12)


def _uea_root(tmp_path: Path, names) -> Path:
    """A data root with synthetic TRAIN/TEST files of each name's catalog channels and classes, shorter
    series (no pinned checksums)."""
    from tasks.classify.catalog import UEA

    rng = np.random.default_rng(1)
    for name in names:
        d = tmp_path / name
        d.mkdir(parents=True)
        dims, classes = UEA[name][2], UEA[name][4]
        for split, n in (("TRAIN", 9), ("TEST", 6)):
            series = [rng.normal(loc=5.0, scale=3.0, size=(rng.integers(4, 8), dims)) for _ in range(n)]
            write_ts(d / f"{name}_{split}.ts", series, [str(i % classes) for i in range(n)], name=name)
    return tmp_path


@pytest.mark.parametrize("protocol", ["suite", "tslib"])
def test_only_ethanolconcentration_is_instance_normalised(tmp_path, protocol):
    root = _uea_root(tmp_path, ("EthanolConcentration", "Heartbeat"))
    for name in ("EthanolConcentration", "Heartbeat"):
        cfg = compose_config([f"dataset={name}", f"protocol={protocol}", f"paths.data_root={root}"])
        dm = TASK.build_datamodule(cfg)
        dm.setup()
        x, m, _ = dm.train_set.tensors
        x, m = x.numpy().astype(np.float64), m.numpy()
        normalised = dm.instance_norm
        assert normalised == (protocol == "tslib" and name == "EthanolConcentration"), (protocol, name)
        # instance-normalised: every real step has unit variance across its channels, var / (var + 1e-5)
        off = np.abs(x[m].var(axis=1) - 1).max()  # over real steps
        assert off < 1e-2 if normalised else off > 0.1
        if not normalised:  # standardised by the split's statistics only
            assert np.abs(x[m].mean(0)).max() < 1e-5


def test_per_split_statistics_and_test_as_validation(tmp_path):
    root = _uea_root(tmp_path, ("Heartbeat",))
    dm = TASK.build_datamodule(compose_config(["dataset=Heartbeat", "protocol=tslib", f"paths.data_root={root}"]))
    dm.setup()
    assert (dm.validation, dm.statistics, dm.std_ddof) == ("test", "per_split", 1)
    assert len(dm.train_set) == 9 and len(dm.val_set) == len(dm.test_set) == 6
    for part in (dm.train_set, dm.test_set):
        x, m, _ = part.tensors
        real = x[m].double()
        assert real.mean(0).abs().max() < 1e-5 and real.std(0, unbiased=True).sub(1).abs().max() < 1e-5
    suite = TASK.build_datamodule(compose_config(["dataset=Heartbeat", f"paths.data_root={root}"]))
    suite.setup()
    assert (suite.validation, suite.statistics) == ("holdout", "train") and len(suite.val_set) == 2  # 1 of each class


# ---- the embedding --------------------------------------------------------------------------------

def test_circular_embedding_by_hand():
    """Step k: W[:, :, 0] x[k-1] + W[:, :, 1] x[k] + W[:, :, 2] x[k+1], indices modulo the padded
    length, plus the sinusoidal position sin/cos(k / 10000^(2i/D)); no bias."""
    module = _toy_module("none", embed="circular").model.eval()
    D = module.backbone.d_model
    assert module.value_embed.bias is None and module.value_embed.weight.shape == (D, 2, 3)
    x = torch.randn(1, 6, 2)
    W = module.value_embed.weight.detach()  # (D, C, 3)
    got = module.embed(x)[0].detach()  # (6, D)
    for k in range(6):
        conv = sum(W[:, :, j] @ x[0, (k - 1 + j) % 6] for j in range(3))
        i = torch.arange(D // 2, dtype=torch.float64)
        angle = k / 10000 ** (2 * i / D)
        pos = torch.stack([angle.sin(), angle.cos()], -1).flatten().float()
        torch.testing.assert_close(got[k], conv + pos, rtol=1e-5, atol=1e-5)


def test_circular_embedding_init_is_kaiming_normal():
    torch.manual_seed(0)
    w = SeriesClassifier(build_backbone(compose_config(["model=aaren", "model.d_model=256", "model.n_heads=2",
                                                  "model.d_ff=16", "model.n_layers=1"]).model),
                         n_channels=12, n_classes=3, max_len=6, embed="circular").value_embed.weight.detach()
    # fan_in = 12 channels x 3 taps; gain sqrt(2) (leaky_relu, slope 0): std sqrt(2 / 36)
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 36), rel=0.05)


def test_causal_embedding_does_not_look_ahead():
    module = _toy_module("none", embed="causal_conv").model.eval()
    x = torch.randn(1, 6, 2)
    y = x.clone()
    y[0, 4:] += 1.0
    torch.testing.assert_close(module.embed(x)[0, :4], module.embed(y)[0, :4])
    circular = _toy_module("none", embed="circular").model.eval()
    assert not torch.allclose(circular.embed(x)[0, 3], circular.embed(y)[0, 3])  # reads step 4


# ---- composing and a short fit ----------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_compose_japanesevowels_tslib(model):
    cfg = compose_config(["dataset=JapaneseVowels", "protocol=tslib", f"model={model}"])
    t = cfg.task
    assert cfg.cell == f"classify/JapaneseVowels/tslib/{model}/seed0"
    assert (t.validation, t.statistics, t.std_ddof, t.embed, t.lr_schedule) == ("test", "per_split", 1, "circular", "tslib_cls")
    assert list(t.instance_norm_datasets) == ["EthanolConcentration"] and not t.mask_padding and t.final_norm
    assert TASK.selection(cfg).metric == "val/acc_tie_later" and t.patience == 10 and t.max_epochs == 100
    built = build(cfg)
    assert built.module.model.embed_kind == "circular" and isinstance(built.module.model.final_norm, torch.nn.LayerNorm)
    if model == "transformer":  # the library's encoder is bidirectional: so is ours under its protocol
        assert not built.backbone.blocks[0].mixer.causal
        suite = build(compose_config(["dataset=JapaneseVowels", "model=transformer"]))
        assert suite.backbone.blocks[0].mixer.causal  # the paper's causal twin stays the suite's
    else:
        with pytest.raises(ValueError, match="causal"):
            build(compose_config(["dataset=JapaneseVowels", "protocol=tslib", f"model={model}", "++model.causal=false"]))


def test_suite_protocol_is_unchanged():
    t = compose_config(["dataset=JapaneseVowels"]).task
    assert (t.validation, t.statistics, t.std_ddof, t.embed, t.lr_schedule, t.monitor) == (
        "holdout", "train", 0, "causal_conv", "none", "val/acc")
    assert list(t.instance_norm_datasets) == [] and t.mask_padding and not t.final_norm


def test_transformer_params_match_the_library():
    """The library's Transformer on JapaneseVowels (12 channels, length 29, 9 classes): conv 4,608 +
    3 encoder layers x 132,480 + final LayerNorm 256 + head 33,417 = 435,721 (its unused
    time-feature embedding, 512 more, left out)."""
    built = build(compose_config(["dataset=JapaneseVowels", "protocol=tslib", "model=transformer"]))
    assert sum(p.numel() for p in built.module.parameters()) == 4608 + 3 * 132480 + 256 + 33417


def test_padding_reaches_the_bidirectional_backbone_only_under_tslib():
    """mask_padding=false: a bidirectional encoder's real steps see the padded ones (the library's);
    a causal backbone's real steps do not, masked or not."""
    torch.manual_seed(0)
    cfg = compose_config(["model=transformer", "model.causal=false", *TINY])
    x, mask = torch.randn(2, 6, 2), torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    x[0, 4:] = 0.0
    for mask_padding in (True, False):
        torch.manual_seed(0)
        m = SeriesClassifier(build_backbone(cfg.model), 2, 3, 6, embed="linear", mask_padding=mask_padding).eval()
        seen = {}
        m.backbone.register_forward_hook(lambda mod, args, out: seen.update(mask=args[1]))
        m(x, mask)
        assert (seen["mask"] is None) == (not mask_padding)


def test_ties_count_as_improvements_under_tslib(runs_dir, one_thread):
    """With lr 0 every epoch has the same accuracy: on val/acc_tie_later each tie is an improvement, so
    patience 1 never stops and the last epoch is kept (the library's EarlyStopping); on val/acc
    the second epoch is no improvement and training stops there."""
    common = ["dataset=JapaneseVowels", "model=aaren", *TINY, *QUIET, "task.optimizer.lr=0", "task.patience=1",
              "trainer.max_epochs=4", "trainer.limit_train_batches=1", "trainer.limit_val_batches=3"]
    rec = train(compose_config([*common, "protocol=tslib", "tag=ties"]))
    assert rec["epochs"] == 4 and rec["best_checkpoint"].endswith("best.ckpt")
    best = torch.load(runs_dir / rec["cell"] / rec["best_checkpoint"], map_location="cpu", weights_only=False)
    assert best["epoch"] == 3
    rec2 = train(compose_config([*common, "protocol=tslib", "task.monitor=val/acc", "tag=first"]))
    assert rec2["epochs"] == 2


def test_short_fit_under_tslib(runs_dir, one_thread):
    cfg = compose_config(["dataset=JapaneseVowels", "protocol=tslib", "model=transformer", "model.causal=false",
                          *TINY, *QUIET, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "tag=smoke"])
    rec = train(cfg)
    assert rec["cell"] == "classify/JapaneseVowels/tslib+smoke/transformer/seed0"
    assert rec["selection"] == {"metric": "val/acc_tie_later", "mode": "max"}
    assert 0.0 <= rec["metrics"]["test/acc"] <= 1.0 and math.isfinite(rec["metrics"]["test/loss"])
    p = rec["params"]
    assert p["total"] == p["embedding"] + p["backbone"] + p["head"]
