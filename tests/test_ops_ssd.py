"""Mamba-2's SSD: the naive (masked attention), sequential and chunked forms compute the same function.

Compared on outputs, final states and the gradients w.r.t. every input (x, dt, A, B, C and the
initial state), over a grid of shapes, groups, masks and block lengths, in float64 to ~1e-10;
plus finite differences, NaN placed in padding, strong decays in float32, and the masked causal
convolution and gated RMSNorm of the layer.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aaren_bench.ops import (
    causal_conv1d,
    causal_conv1d_step,
    gated_rms_norm,
    segsum,
    ssd_chunked,
    ssd_init_state,
    ssd_naive,
    ssd_reference,
    ssd_step,
)

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def make_inputs(b, H, G, N, P, S, dtype=torch.float64, masked=True, with_state=True, decay=1.0, seed=0):
    """x, dt > 0, A < 0, B, C, mask (holes, a row starting with padding, an all-padded row), h0.
    ``decay`` scales dt: |log a| = dt |A| is about decay per step."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = rnd(b, H, N, P)
    dt = F.softplus(rnd(b, H, N)) * decay
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 1.5 - 0.1
    B, C = rnd(b, G, N, S), rnd(b, G, N, S)
    mask = None
    if masked:
        mask = torch.rand(b, N, generator=g) > 0.3
        mask[0, : min(N, 3)] = False
        if b > 2:
            mask[-1] = False
    h0 = rnd(b, H, P, S) if with_state else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(x), cast(dt), cast(A), cast(B), cast(C), mask, cast(h0)


def run(fn, x, dt, A, B, C, mask, h0, seed=1, **kw):
    """fn's output and final state, and the gradients of a random linear loss of both w.r.t.
    x, dt, A, B, C and h0."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, dt, A, B, C)]
    if h0 is not None:
        h0 = h0.detach().clone().requires_grad_()
        leaves.append(h0)
    y, h = fn(*leaves[:5], mask, initial_state=h0, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    wy, wh = (torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (y, h))
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), leaves, allow_unused=True, materialize_grads=True)
    return [y.detach(), h.detach(), *grads]


NAMES = ["y", "h", "dx", "ddt", "dA", "dB", "dC", "dh0"]


def assert_all_close(a, b, dtype=torch.float64, tol=None):
    for name, x, y in zip(NAMES, a, b):
        torch.testing.assert_close(x, y, **(tol or TOL[dtype]), msg=lambda m: f"{name}: {m}")


GRID = [
    # (b, H, G, N, P, S)
    (1, 1, 1, 1, 1, 1),
    (2, 1, 1, 2, 3, 2),
    (3, 2, 1, 7, 4, 5),
    (3, 4, 2, 33, 3, 4),
    (2, 3, 3, 64, 4, 8),
    (3, 2, 1, 129, 5, 3),
]


def grid_id(shape):
    return "b{}-H{}-G{}-N{}-P{}-S{}".format(*shape)


@pytest.mark.parametrize("with_state", [False, True], ids=["empty", "state"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
@pytest.mark.parametrize("shape", GRID, ids=grid_id)
@pytest.mark.parametrize("form", ["reference", "chunked"])
def test_forms_match_naive(form, shape, masked, with_state):
    inputs = make_inputs(*shape, masked=masked, with_state=with_state)
    fn = ssd_reference if form == "reference" else ssd_chunked
    kw = {} if form == "reference" else dict(chunk=16)
    assert_all_close(run(fn, *inputs, **kw), run(ssd_naive, *inputs))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64, 500], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("N", [1, 5, 16, 17, 65], ids=lambda n: f"N{n}")
def test_chunk_size_does_not_change_the_result(N, chunk):
    """Any block length, including N not a multiple of it and blocks longer than N."""
    inputs = make_inputs(3, 2, 1, N, 3, 4)
    assert_all_close(run(ssd_chunked, *inputs, chunk=chunk), run(ssd_reference, *inputs))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_gradcheck_float64(masked):
    """Finite differences through the chunked form (3 blocks, the last one short), state included."""
    x, dt, A, B, C, mask, h0 = make_inputs(2, 2, 1, 7, 2, 2, masked=masked)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, h0)]

    def f(x, dt, A, B, C, h0):
        return ssd_chunked(x, dt, A, B, C, mask, chunk=3, initial_state=h0, output_final_state=True)

    assert torch.autograd.gradcheck(f, leaves)


def test_segsum_is_direct_and_masked():
    log_a = -torch.rand(2, 6, dtype=torch.float64)
    seg = segsum(log_a)
    for t in range(6):
        for s in range(6):
            expected = log_a[:, s + 1 : t + 1].sum(-1) if s <= t else torch.full((2,), float("-inf"), dtype=torch.float64)
            torch.testing.assert_close(seg[:, t, s], expected, atol=1e-15, rtol=0)
    # no cancellation: a tiny segment after a huge step keeps its value in float32
    # (a difference of cumulative sums would give (-1e6 - 6e-7) - (-1e6) = 0 or +-0.06)
    log_a = torch.tensor([-1e6] + [-1e-7] * 6)
    seg = segsum(log_a)
    torch.testing.assert_close(seg[6, 0], torch.tensor(-6e-7), atol=1e-12, rtol=1e-5)


def test_nan_in_padding_never_reaches_valid_outputs_or_gradients():
    x, dt, A, B, C, mask, h0 = make_inputs(3, 4, 2, 23, 3, 4)
    forms = [(ssd_chunked, dict(chunk=4)), (ssd_reference, {}), (ssd_naive, {})]
    clean = [run(fn, x, dt, A, B, C, mask, h0, **kw) for fn, kw in forms]
    pad = ~mask[:, None, :]
    dirty = (x.masked_fill(pad[..., None], float("nan")), dt.masked_fill(pad, float("inf")), A,
             B.masked_fill(pad[..., None], float("nan")), C.masked_fill(pad[..., None], float("-inf")))
    for (fn, kw), ref in zip(forms, clean):
        out = run(fn, *dirty, mask, h0, **kw)
        for name, a, b in zip(NAMES, out, ref):
            assert torch.isfinite(a).all(), f"{fn.__name__} {name}"
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{fn.__name__} {name}: {m}")


def test_padded_step_leaves_the_state_exactly_unchanged_and_outputs_zero():
    x, dt, A, B, C, _, h0 = make_inputs(2, 2, 1, 1, 3, 4)
    y, h = ssd_step(x[:, :, 0], dt[:, :, 0], A, B[:, :, 0], C[:, :, 0], h0, torch.tensor([False, True]))
    assert torch.equal(h[0], h0[0]) and not torch.equal(h[1], h0[1])
    assert (y[0] == 0).all()


def test_two_pieces_with_the_carried_state_equal_one_pass():
    x, dt, A, B, C, mask, h0 = make_inputs(3, 2, 1, 40, 3, 4)
    y, h = ssd_chunked(x, dt, A, B, C, mask, chunk=8, initial_state=h0, output_final_state=True)
    cut = lambda t, sl: t[:, :, sl]  # noqa: E731
    first, second = slice(0, 13), slice(13, None)
    y1, mid = ssd_chunked(*(cut(t, first) for t in (x, dt)), A, *(cut(t, first) for t in (B, C)), mask[:, first],
                          chunk=8, initial_state=h0, output_final_state=True)
    y2, end = ssd_chunked(*(cut(t, second) for t in (x, dt)), A, *(cut(t, second) for t in (B, C)), mask[:, second],
                          chunk=5, initial_state=mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), y, **TOL[torch.float64])
    torch.testing.assert_close(end, h, **TOL[torch.float64])


@pytest.mark.parametrize("decay", [1e-3, 1.0, 30.0, 1e4], ids=lambda d: f"decay{d:g}")
def test_strong_and_weak_decays_are_safe_in_float32(decay):
    """|log a| up to ~1e4 per step: L underflows to exact zeros, never to inf or NaN; the chunked
    float32 form agrees with the float64 recurrence on outputs and gradients."""
    inputs64 = make_inputs(2, 2, 1, 300, 4, 8, decay=decay)
    inputs32 = [None if t is None or t.dtype == torch.bool else t.float() for t in inputs64]
    inputs32[5] = inputs64[5]
    out32 = run(ssd_chunked, *inputs32, chunk=64)
    out64 = run(ssd_reference, *inputs64)
    for name, a, b in zip(NAMES, out32, out64):
        assert torch.isfinite(a).all(), name
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a.double() / scale, b / scale, atol=2e-5, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_accumulates_in_float32(dtype):
    x, dt, A, B, C, mask, _ = make_inputs(2, 2, 1, 100, 8, 8, dtype=dtype, with_state=False)
    y, h = ssd_chunked(x, dt, A, B, C, mask, chunk=16, output_final_state=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    y32, _ = ssd_reference(*(t.float() for t in (x, dt, A, B, C)), mask)
    torch.testing.assert_close(y.float(), y32, atol=3e-2, rtol=3e-2)


def test_bad_inputs_have_clear_errors():
    x, dt, A, B, C, mask, h0 = make_inputs(2, 4, 2, 6, 3, 3)
    with pytest.raises(ValueError, match="expects x"):
        ssd_chunked(x, dt[..., :5], A, B, C)
    with pytest.raises(ValueError, match="G dividing"):
        ssd_chunked(x, dt, A, B[:, :1].expand(2, 3, 6, 3), C[:, :1].expand(2, 3, 6, 3))
    with pytest.raises(ValueError, match="mask must be"):
        ssd_chunked(x, dt, A, B, C, mask[:, :5])
    with pytest.raises(ValueError, match="initial state"):
        ssd_chunked(x, dt, A, B, C, initial_state=h0[..., :2])
    assert ssd_init_state(2, 4, 3, 3).shape == (2, 4, 3, 3)


# --------------------------------------------------------------------------------------
# the convolution and the norm of the Mamba-2 layer
# --------------------------------------------------------------------------------------


def conv_inputs(b=3, N=21, c=5, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, N, c, generator=g, dtype=torch.float64)
    w = torch.randn(c, K, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    mask = torch.rand(b, N, generator=g) > 0.4
    mask[0, :3] = False
    h0 = torch.randn(b, c, K - 1, generator=g, dtype=torch.float64)
    return x, w, bias, mask, h0


def conv_stream(x, w, bias, mask, h0):
    ys, state = [], h0
    for t in range(x.shape[1]):
        y, state = causal_conv1d_step(x[:, t], state, w, bias, None if mask is None else mask[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


def test_conv_without_padding_is_mambas_padded_conv1d():
    x, w, bias, _, _ = conv_inputs()
    y, _ = causal_conv1d(x, w, bias)
    ref = F.conv1d(x.transpose(1, 2), w[:, None], bias, padding=w.shape[1] - 1, groups=x.shape[-1])[..., : x.shape[1]]
    torch.testing.assert_close(y, ref.transpose(1, 2), **TOL[torch.float64])


@pytest.mark.parametrize("K", [1, 2, 4], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_conv_streaming_equals_parallel(masked, K):
    """With holes the window skips padded tokens, in both forms; the final states agree too."""
    x, w, bias, mask, h0 = conv_inputs(K=K)
    mask = mask if masked else None
    y, last = causal_conv1d(x, w, bias, mask, initial_state=h0, output_final_state=True)
    y_seq, last_seq = conv_stream(x, w, bias, mask, h0)
    torch.testing.assert_close(y, y_seq, **TOL[torch.float64])
    torch.testing.assert_close(last, last_seq, atol=0, rtol=0)


def test_conv_skips_padding_rather_than_reading_zeros():
    """Valid outputs depend only on the valid tokens, in order: removing the holes changes nothing."""
    x, w, bias, mask, h0 = conv_inputs(b=1)
    y, _ = causal_conv1d(x, w, bias, mask, initial_state=h0)
    y_packed, _ = causal_conv1d(x[:, mask[0]], w, bias, initial_state=h0)
    torch.testing.assert_close(y[:, mask[0]], y_packed, **TOL[torch.float64])
    assert (y[:, ~mask[0]] == 0).all()


def test_conv_nan_in_padding_and_gradients():
    x, w, bias, mask, h0 = conv_inputs()
    dirty = x.masked_fill(~mask[..., None], float("nan"))
    outs = []
    for inp in (x, dirty):
        leaves = [t.clone().requires_grad_() for t in (inp, w, bias, h0)]
        y, last = causal_conv1d(leaves[0], leaves[1], leaves[2], mask, initial_state=leaves[3], output_final_state=True)
        grads = torch.autograd.grad(y.square().sum() + last.sum(), leaves)
        outs.append([y, last, *grads])
    for a, b in zip(*outs):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    leaves = [t.clone().requires_grad_() for t in (x, w, bias, h0)]
    assert torch.autograd.gradcheck(
        lambda x, w, b, h: causal_conv1d(x, w, b, mask, initial_state=h, output_final_state=True), leaves, fast_mode=True
    )


def test_gated_rms_norm_is_norm_after_gate():
    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 5, 12, generator=g, dtype=torch.float64), torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    w = torch.randn(12, generator=g, dtype=torch.float64)
    u = y * torch.sigmoid(z) * z
    ref = u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(gated_rms_norm(y, z, w, 1e-5), ref, **TOL[torch.float64])
    ug = u.view(2, 5, 3, 4)
    ref_g = (ug / torch.sqrt(ug.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 5, 12) * w
    torch.testing.assert_close(gated_rms_norm(y, z, w, 1e-5, group_size=4), ref_g, **TOL[torch.float64])


@pytest.mark.gpu
def test_gpu_kernel_matches_torch_path():
    pytest.importorskip("mamba_ssm")
    x, dt, A, B, C, mask, h0 = (None if t is None else t.cuda() for t in make_inputs(2, 4, 1, 200, 16, 16, dtype=torch.float32))
    w = torch.randn_like(x)
    outs = []
    for use_kernel in (False, True):
        xs = [t.clone().requires_grad_() for t in (x, dt, B, C)]
        y, h = ssd_chunked(xs[0], xs[1], A, xs[2], xs[3], mask, initial_state=h0, output_final_state=True,
                           use_kernel=use_kernel)
        outs.append((y, h, *torch.autograd.grad((y * w).sum(), xs)))
    for a, b in zip(*outs):  # outputs, final state, and the gradients of x, dt, B, C
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
