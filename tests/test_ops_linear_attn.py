"""Causal linear attention: the naive, sequential and chunked forms compute the same function.

Compared on outputs, final states and the gradients w.r.t. every input (q, k, v and the initial
state), over a grid of shapes, masks (holes, leading padding, an all-padded row) and block
lengths, in float64 to ~1e-10; plus finite differences, NaN placed in padding, and streaming.
"""
from __future__ import annotations

import pytest
import torch

from aaren_bench.ops import (
    LinearAttnState,
    linear_attn_chunked,
    linear_attn_init_state,
    linear_attn_naive,
    linear_attn_reference,
    linear_attn_step,
)

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def make_inputs(B, H, N, Dk, Dv, dtype=torch.float64, masked=True, with_state=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, N, Dk, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    v = torch.randn(B, H, N, Dv, generator=g, dtype=torch.float64).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(B, N, generator=g) > 0.3  # holes
        mask[0, : min(N, 3)] = False  # a row that starts with padding
        if B > 2:
            mask[-1] = False  # a row with no valid token at all
    state = None
    if with_state:  # a plausible history: z = sum of positive features, S of the same size
        z = torch.rand(B, H, Dk, generator=g, dtype=torch.float64) * 3
        S = torch.randn(B, H, Dk, Dv, generator=g, dtype=torch.float64)
        state = LinearAttnState(S.to(dtype), z.to(dtype))
    return q, k, v, mask, state


def run(fn, q, k, v, mask, state, seed=1, **kw):
    """fn's output and final state, and the gradients of a random linear loss of both
    w.r.t. q, k, v and the initial state (S, z)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    leaves = [q, k, v]
    if state is not None:
        state = LinearAttnState(state.S.detach().clone().requires_grad_(), state.z.detach().clone().requires_grad_())
        leaves += [state.S, state.z]
    y, last = fn(q, k, v, mask, initial_state=state, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (y, last.S, last.z)]
    loss = (y * w[0]).sum() + (last.S * w[1]).sum() + (last.z * w[2]).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [y.detach(), last.S.detach(), last.z.detach(), *grads]


NAMES = ["y", "S", "z", "dq", "dk", "dv", "dS0", "dz0"]


def assert_all_close(a, b, dtype=torch.float64):
    for name, x, y in zip(NAMES, a, b):
        torch.testing.assert_close(x, y, **TOL[dtype], msg=lambda m: f"{name}: {m}")


GRID = [
    # (B, H, N, Dk, Dv)
    (1, 1, 1, 1, 1),
    (2, 1, 2, 3, 2),
    (3, 2, 7, 4, 5),
    (3, 2, 33, 5, 3),
    (2, 3, 64, 8, 8),
    (3, 2, 129, 6, 4),
]


def grid_id(shape):
    return "B{}-H{}-N{}-Dk{}-Dv{}".format(*shape)


@pytest.mark.parametrize("with_state", [False, True], ids=["empty", "state"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
@pytest.mark.parametrize("shape", GRID, ids=grid_id)
@pytest.mark.parametrize("form", ["reference", "chunked"])
def test_forms_match_naive(form, shape, masked, with_state):
    q, k, v, mask, state = make_inputs(*shape, masked=masked, with_state=with_state)
    fn = linear_attn_reference if form == "reference" else linear_attn_chunked
    kw = {} if form == "reference" else dict(chunk=16)
    assert_all_close(run(fn, q, k, v, mask, state, **kw), run(linear_attn_naive, q, k, v, mask, state))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64, 500], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("N", [1, 5, 16, 17, 65], ids=lambda n: f"N{n}")
def test_chunk_size_does_not_change_the_result(N, chunk):
    """Any block length, including N not a multiple of it and blocks longer than N."""
    q, k, v, mask, state = make_inputs(3, 2, N, 4, 3)
    assert_all_close(run(linear_attn_chunked, q, k, v, mask, state, chunk=chunk), run(linear_attn_reference, q, k, v, mask, state))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_gradcheck_float64(masked):
    """Finite differences through the chunked form (3 blocks, the last one short), state included."""
    q, k, v, mask, state = make_inputs(2, 1, 7, 2, 2, masked=masked)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, state.S, state.z)]

    def f(q, k, v, S, z):
        y, last = linear_attn_chunked(q, k, v, mask, chunk=3, initial_state=LinearAttnState(S, z), output_final_state=True)
        return y, last.S, last.z

    assert torch.autograd.gradcheck(f, leaves)


def test_nan_in_padding_never_reaches_valid_outputs_or_gradients():
    q, k, v, mask, state = make_inputs(3, 2, 23, 4, 3)
    clean = [run(fn, q, k, v, mask, state, **kw) for fn, kw in
             [(linear_attn_chunked, dict(chunk=4)), (linear_attn_reference, {}), (linear_attn_naive, {})]]
    pad = ~mask[:, None, :, None]
    dirty = [t.masked_fill(pad, float("nan")) for t in (q, k, v)]
    dirty[1] = dirty[1].masked_fill(pad & (torch.arange(4) == 0), float("inf"))
    for (fn, kw), ref in zip([(linear_attn_chunked, dict(chunk=4)), (linear_attn_reference, {}), (linear_attn_naive, {})], clean):
        out = run(fn, *dirty, mask, state, **kw)
        for name, a, b in zip(NAMES, out, ref):
            assert torch.isfinite(a).all(), name
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{fn.__name__} {name}: {m}")


def test_padded_token_leaves_the_state_exactly_unchanged_and_outputs_zero():
    q, k, v, _, state = make_inputs(2, 2, 1, 3, 4)
    y, new = linear_attn_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, torch.tensor([False, True]))
    assert torch.equal(new.S[0], state.S[0]) and torch.equal(new.z[0], state.z[0])
    assert not torch.equal(new.S[1], state.S[1])
    assert (y[0] == 0).all()


def test_two_pieces_with_the_carried_state_equal_one_pass():
    q, k, v, mask, state = make_inputs(3, 2, 40, 4, 3)
    y, last = linear_attn_chunked(q, k, v, mask, chunk=8, initial_state=state, output_final_state=True)
    y1, mid = linear_attn_chunked(q[:, :, :13], k[:, :, :13], v[:, :, :13], mask[:, :13], chunk=8, initial_state=state, output_final_state=True)
    y2, end = linear_attn_chunked(q[:, :, 13:], k[:, :, 13:], v[:, :, 13:], mask[:, 13:], chunk=5, initial_state=mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), y, **TOL[torch.float64])
    torch.testing.assert_close(end.S, last.S, **TOL[torch.float64])
    torch.testing.assert_close(end.z, last.z, **TOL[torch.float64])


def test_no_valid_token_gives_zero_output_and_the_empty_state():
    q, k, v, _, _ = make_inputs(2, 1, 9, 3, 3, dtype=torch.float32)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 4:] = True
    y, last = linear_attn_chunked(q, k, v, mask, chunk=2, output_final_state=True)
    assert (y[0] == 0).all() and (y[1, :, :4] == 0).all() and (y[1, :, 4:] != 0).any()
    assert (last.S[0] == 0).all() and (last.z[0] == 0).all()


def test_output_is_a_convex_combination_of_the_values():
    """phi > 0: every output lies inside the range of the values seen so far (empty state)."""
    q, k, v, _, _ = make_inputs(2, 2, 50, 4, 3, masked=False, with_state=False)
    y, _ = linear_attn_chunked(q * 5, k * 5, v, chunk=8)
    assert (y <= torch.cummax(v, dim=2).values + 1e-12).all()
    assert (y >= torch.cummin(v, dim=2).values - 1e-12).all()


def test_float32_matches_float64():
    q, k, v, mask, state = make_inputs(2, 2, 300, 8, 8)
    y64, _ = linear_attn_reference(q, k, v, mask, initial_state=state)
    f32 = LinearAttnState(state.S.float(), state.z.float())
    y32, _ = linear_attn_chunked(q.float(), k.float(), v.float(), mask, chunk=32, initial_state=f32)
    torch.testing.assert_close(y32, y64.float(), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_accumulates_in_float32(dtype):
    q, k, v, mask, _ = make_inputs(2, 2, 100, 8, 8, dtype=dtype, with_state=False)
    y, last = linear_attn_chunked(q, k, v, mask, chunk=16, output_final_state=True)
    assert y.dtype == dtype and last.S.dtype == torch.float32
    y32, _ = linear_attn_reference(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(y.float(), y32, atol=1e-2, rtol=1e-2)


def test_state_size_and_shapes():
    st = linear_attn_init_state(3, 2, 4, 5, dtype=torch.float64)
    assert st.S.shape == (3, 2, 4, 5) and st.z.shape == (3, 2, 4)
    assert st.nbytes() == 3 * 2 * (4 * 5 + 4) * 8


def test_bad_inputs_have_clear_errors():
    q, k, v, mask, state = make_inputs(2, 2, 6, 3, 3)
    with pytest.raises(ValueError, match="expects q, k"):
        linear_attn_chunked(q, k[..., :2], v)
    with pytest.raises(ValueError, match="mask must be"):
        linear_attn_chunked(q, k, v, mask[:, :5])
    with pytest.raises(ValueError, match="initial state"):
        linear_attn_chunked(q, k, v, initial_state=LinearAttnState(state.S[:1], state.z[:1]))
    with pytest.raises(ValueError, match="chunk"):
        linear_attn_chunked(q, k, v, chunk=0)


@pytest.mark.gpu
def test_gpu_kernel_matches_torch_path():
    pytest.importorskip("fla")
    q, k, v, mask, state = make_inputs(2, 2, 200, 16, 16, dtype=torch.float32)
    q, k, v, mask = q.cuda(), k.cuda(), v.cuda(), mask.cuda()
    state = LinearAttnState(state.S.cuda(), state.z.cuda())
    w = torch.randn(2, 2, 200, 16, device="cuda")
    outs = []
    for use_kernel in (False, True):
        qkv = [t.clone().requires_grad_() for t in (q, k, v)]
        y, s = linear_attn_chunked(*qkv, mask, initial_state=state, output_final_state=True, use_kernel=use_kernel)
        outs.append((y, s.S, *torch.autograd.grad((y * w).sum(), qkv)))
    for a, b in zip(*outs):  # outputs, final state, and the gradients of q, k, v
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
