"""Forecasting model: heads, instance normalisation, exact metrics, the LR schedule, configs and a smoke run."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from aaren_bench.nn import build_backbone
from tasks.forecast.metrics import forecast_metrics, mse_mae, update_errors
from tasks.forecast.model import Forecaster, instance_norm
from tasks.forecast.module import ForecastModule, type1_factor

KINDS = ["aaren", "transformer"]


def net(kind, head="patch", seq=12, label=4, pred=6, C=3, F=4):
    torch.manual_seed(0)
    bb = build_backbone(dict(mixer=kind, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0))
    return Forecaster(bb, C, F, seq, label, pred, head=head, dropout=0.0).double().eval()


def batch(B=5, seq=12, label=4, pred=6, C=3, F=4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, seq, C, generator=g, dtype=torch.float64), torch.rand(B, seq, F, generator=g, dtype=torch.float64) - 0.5,
            torch.rand(B, label + pred, F, generator=g, dtype=torch.float64) - 0.5)


# ---------------------------------------------------------------- metrics against hand-computed values
def test_mse_mae_hand_values():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    mse, mae = mse_mae(pred, target)  # errors 1, 0, -2, 3
    assert mse == pytest.approx((1 + 0 + 4 + 9) / 4) and mae == pytest.approx((1 + 0 + 2 + 3) / 4)


def test_error_metrics_are_exact_over_unequal_batches():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(70, 8, 3, generator=g), torch.randn(70, 8, 3, generator=g)
    m = forecast_metrics()
    for i in range(0, 70, 32):  # 32, 32, 6: a mean of batch means would weigh the last batch 5x too much
        update_errors(m, p[i : i + 32], t[i : i + 32])
    err = p.double() - t.double()
    assert float(m["mse"].compute()) == pytest.approx(float((err**2).mean()), rel=1e-12)
    assert float(m["mae"].compute()) == pytest.approx(float(err.abs().mean()), rel=1e-12)
    assert float(m["samples"].compute()) == 70
    m.apply(lambda x: x.reset() if hasattr(x, "reset") else None)
    assert m["mse"].sum_squared_error.dtype == torch.float64  # the float64 sums survive a reset
    with pytest.raises(ValueError, match="differ in shape"):
        update_errors(m, p, t[:, :4])


# ---------------------------------------------------------------- heads and normalisation
def test_instance_norm_statistics():
    x = torch.tensor([[[1.0, 10.0], [3.0, 10.0]]])  # (1, 2, 2)
    z, mean, std = instance_norm(x, eps=0.0 + 1e-12)
    assert mean.tolist() == [[[2.0, 10.0]]]
    assert torch.allclose(z[0, :, 0], torch.tensor([-1.0, 1.0]))
    assert torch.all(z[0, :, 1] == 0)


@pytest.mark.parametrize("head", ["patch", "last", "decoder"])
@pytest.mark.parametrize("kind", KINDS)
def test_forecast_shape_and_normalisation_equivariance(kind, head):
    """Instance normalisation + de-normalisation: forecasting x+b gives forecast+b exactly, and a*x gives
    a*forecast up to the eps (1e-5) added to the variance."""
    m = net(kind, head)
    x, xm, ym = batch()
    y = m(x, xm, ym)
    assert y.shape == (5, 6, 3)
    a, b = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64), torch.tensor([10.0, -4.0, 0.3], dtype=torch.float64)
    torch.testing.assert_close(m(x + b, xm, ym), y + b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m(a * x, xm, ym), a * y, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(m(a * x, xm, ym), y, atol=1e-2)  # the scale does reach the forecast


@pytest.mark.parametrize("head,n_tokens", [("patch", 12), ("last", 12), ("decoder", 12 + 4 + 6)])
def test_both_backbones_see_the_same_tokens(head, n_tokens):
    """The backbone is the only difference: the same embedded sequence goes into either one."""
    seen, embed = {}, None
    for kind in KINDS:
        m = net(kind, head)
        embed = embed or m.embed.state_dict()
        m.embed.load_state_dict(embed)  # same embedding weights: the sequences must then be identical
        m.backbone.register_forward_hook(lambda mod, inp, out, k=kind: seen.__setitem__(k, inp[0].detach()))
        m(*batch())
    assert seen["aaren"].shape == (5, n_tokens, 16)
    torch.testing.assert_close(seen["aaren"], seen["transformer"])


@pytest.mark.parametrize("head", ["patch", "decoder"])
def test_future_calendar_features_reach_the_forecast(head):
    """The patch and decoder heads read the calendar features of the steps to forecast (never their values:
    they only receive x, x_mark and y_mark)."""
    m = net("aaren", head)
    x, xm, ym = batch()
    y1 = m(x, xm, ym)
    ym2 = ym.clone()
    ym2[:, -6:] += 0.1  # future calendar features do matter for this head
    assert not torch.allclose(m(x, xm, ym2), y1)


def test_bad_shapes_and_head():
    m = net("aaren")
    x, xm, ym = batch()
    with pytest.raises(ValueError, match=r"expected input \(batch, 12, 3\)"):
        m(x[:, :10], xm[:, :10], ym)
    with pytest.raises(ValueError, match="task.head"):
        net("aaren", head="mlp")


# ---------------------------------------------------------------- schedule and exact test metrics through Lightning
def test_type1_schedule_as_tslib():
    assert [type1_factor(e) for e in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_logged_test_metrics_are_exact_over_every_window():
    m = net("transformer").float()
    module = ForecastModule(m, optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    g = torch.Generator().manual_seed(0)
    n = 37  # batch 16: 16 + 16 + 5, nothing dropped
    data = TensorDataset(torch.randn(n, 12, 3, generator=g), torch.rand(n, 12, 4, generator=g),
                         torch.randn(n, 6, 3, generator=g), torch.rand(n, 10, 4, generator=g))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    out = trainer.test(module, DataLoader(data, batch_size=16), verbose=False)[0]
    with torch.no_grad():
        pred = m(data.tensors[0], data.tensors[1], data.tensors[3])
    mse, mae = mse_mae(pred, data.tensors[2])
    assert out["test/mse"] == pytest.approx(mse, rel=1e-5) and out["test/mae"] == pytest.approx(mae, rel=1e-5)


@pytest.mark.parametrize("pred,patch_len", [(6, 2), (5, 2), (6, 24), (7, 1)])
def test_patch_head_covers_the_horizon_and_each_patch_reads_its_own_embedding(pred, patch_len):
    """ceil(pred / patch_len) patches, the last one cut to the horizon; changing the calendar features
    of patch p's first step changes exactly that patch's steps."""
    torch.manual_seed(0)
    bb = build_backbone(dict(mixer="aaren", d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0))
    m = Forecaster(bb, 3, 4, 12, 4, pred, head="patch", dropout=0.0, patch_len=patch_len).double().eval()
    x, xm, ym = batch(pred=pred)
    y = m(x, xm, ym)
    assert y.shape == (5, pred, 3)
    for p, start in enumerate(range(0, pred, patch_len)):
        ym2 = ym.clone()
        ym2[:, 4 + start] += 0.3  # the first step of patch p (y_mark holds label_len = 4 steps first)
        changed = (m(x, xm, ym2) - y).abs().amax((0, 2)) > 1e-12  # (pred,)
        expect = torch.zeros(pred, dtype=torch.bool)
        expect[start : start + patch_len] = True
        assert changed.tolist() == expect.tolist()
