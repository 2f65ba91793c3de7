"""Backbones: streaming equals parallel, padding, parameter counts, shapes, errors."""
from __future__ import annotations

import pytest
import torch

from aaren_bench.nn import Backbone, KVCache, state_nbytes
from aaren_bench.ops import ScanState

KINDS = ["aaren", "transformer"]


def make(kind, **kw):
    torch.manual_seed(0)
    args = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    args.update(kw)
    return Backbone(kind, **args).double().eval()


def stream(model, x, mask=None):
    state = model.init_state(x.shape[0], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if mask is None else mask[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-ln", "pre-ln"])
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_parallel(kind, norm_first):
    model = make(kind, norm_first=norm_first)
    x = torch.randn(3, 23, 32, dtype=torch.float64)
    y_par = model(x)
    y_seq, _ = stream(model, x)
    torch.testing.assert_close(y_seq, y_par, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["right", "left", "holes"])
def test_streaming_equals_parallel_with_padding(kind, layout):
    model = make(kind)
    B, N = 4, 17
    x = torch.randn(B, N, 32, dtype=torch.float64)
    mask = torch.ones(B, N, dtype=torch.bool)
    if layout == "right":
        mask[1, 10:] = False
        mask[2, 3:] = False
    elif layout == "left":
        mask[1, :5] = False
        mask[3, :16] = False
    else:
        mask = torch.rand(B, N, generator=torch.Generator().manual_seed(1)) > 0.4
    y_par = model(x, padding_mask=mask)
    y_seq, _ = stream(model, x, mask)
    torch.testing.assert_close(y_seq[mask], y_par[mask], atol=1e-10, rtol=1e-10)
    assert torch.isfinite(y_par).all()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_leak(kind):
    """Changing padded tokens must not change any output at a valid position."""
    model = make(kind)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, [0, 4, 5]] = False
    x2 = x.clone()
    x2[~mask] = 1e3 * torch.randn_like(x2[~mask])
    torch.testing.assert_close(model(x, mask)[mask], model(x2, mask)[mask])


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind):
    model = make(kind)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(model(x)[:, :6], model(x2)[:, :6])
    assert not torch.allclose(model(x)[:, 6:], model(x2)[:, 6:])


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_state_then_stream(kind):
    """forward(..., return_state=True) on a prefix, then step: equals forward on the whole."""
    model = make(kind)
    x = torch.randn(2, 15, 32, dtype=torch.float64)
    _, state = model(x[:, :9], return_state=True)
    ys = []
    for t in range(9, 15):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), model(x)[:, 9:], atol=1e-10, rtol=1e-10)


def test_state_size_constant_for_aaren_and_growing_for_transformer():
    sizes = {}
    for kind in KINDS:
        model = make(kind)
        state = model.init_state(1, dtype=torch.float64)
        seen = []
        for t in range(64):
            _, state = model.step(torch.randn(1, 32, dtype=torch.float64), state)
            if t + 1 in (8, 64):
                seen.append(state_nbytes(state))
        sizes[kind] = seen
    assert sizes["aaren"][0] == sizes["aaren"][1]
    assert sizes["transformer"][1] >= 8 * sizes["transformer"][0] // 2  # grows with the tokens
    assert all(isinstance(s, KVCache) for s in make("transformer").init_state(1))
    assert all(isinstance(s, ScanState) for s in make("aaren").init_state(1))


def test_parameter_counts_match_the_paper():
    """One layer, d_model 512, d_ff 2048, post-LN: 3,152,384 (Transformer) vs 3,152,896 (Aaren)."""
    counts = {k: sum(p.numel() for p in Backbone(k, 512, 1, 8, 2048).parameters()) for k in KINDS}
    assert counts == {"transformer": 3_152_384, "aaren": 3_152_896}
    deep = {k: sum(p.numel() for p in Backbone(k, 64, 3, 4, 128).parameters()) for k in KINDS}
    assert deep["aaren"] - deep["transformer"] == 3 * 64  # one query per layer


def test_bad_inputs_have_clear_errors():
    model = make("aaren")
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(2, 5, 31, dtype=torch.float64))
    with pytest.raises(ValueError, match="padding_mask"):
        model(torch.randn(2, 5, 32, dtype=torch.float64), padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown backbone"):
        Backbone("lstm")
    with pytest.raises(ValueError, match="divisible"):
        Backbone("aaren", d_model=30, n_heads=4)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_runs(kind):
    model = Backbone(kind, d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.0)
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), model(x), atol=0.1, rtol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_streaming_equals_parallel(kind):
    model = make(kind).float().cuda()
    x = torch.randn(2, 40, 32, device="cuda")
    y_seq, _ = stream(model, x)
    torch.testing.assert_close(y_seq, model(x), atol=1e-4, rtol=1e-4)
