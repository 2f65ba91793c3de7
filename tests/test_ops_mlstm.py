"""xLSTM's mLSTM cell: the chunked form, the recurrence and the token-by-token step compute the same function.

Compared on outputs, final states (C~, n~, m) and the gradients w.r.t. every input (q, k, v, both
gate pre-activations and the initial state), over a grid of shapes, masks (holes, leading
padding, an all-padded row) and block lengths, in float64 to ~1e-10; plus finite differences,
NaN placed in padding, the stabilised form against the unstabilised definition, the identity
with linear attention, and float32 at N = 16384 with input gates far beyond exp's range.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aaren_bench.ops import (
    MLSTMState,
    mlstm_chunked,
    mlstm_init_state,
    mlstm_reference,
    mlstm_step,
)
from tests.test_ops_linear_attn import GRID, grid_id  # the same shapes as linear attention

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def make_inputs(B, H, N, Dk, Dv, dtype=torch.float64, masked=True, with_state=True, gate_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = rnd(B, H, N, Dk), rnd(B, H, N, Dk), rnd(B, H, N, Dv)
    i_pre, f_pre = rnd(B, H, N) * gate_scale, rnd(B, H, N) * gate_scale + 2.0
    mask = None
    if masked:
        mask = torch.rand(B, N, generator=g) > 0.3  # holes
        mask[0, : min(N, 3)] = False  # a row that starts with padding
        if B > 2:
            mask[-1] = False  # a row with no valid token at all
    state = MLSTMState(rnd(B, H, Dk, Dv), rnd(B, H, Dk), rnd(B, H)) if with_state else None
    cast = lambda t: t.to(dtype)  # noqa: E731
    if state is not None:
        state = MLSTMState(cast(state.C), cast(state.n), cast(state.m))
    return cast(q), cast(k), cast(v), cast(i_pre), cast(f_pre), mask, state


def run(fn, q, k, v, i_pre, f_pre, mask, state, seed=1, **kw):
    """fn's output and final state, and the gradients of a random linear loss of both w.r.t.
    q, k, v, the gate pre-activations and the initial state (C~, n~, m)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, i_pre, f_pre)]
    if state is not None:
        state = MLSTMState(*(t.detach().clone().requires_grad_() for t in (state.C, state.n, state.m)))
        leaves += [state.C, state.n, state.m]
    y, last = fn(*leaves[:5], mask, initial_state=state, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    outs = (y, last.C, last.n, last.m)
    w = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in outs]
    loss = sum((t * wt).sum() for t, wt in zip(outs, w))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [t.detach() for t in outs] + list(grads)


NAMES = ["y", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


def assert_all_close(a, b, tol=TOL[torch.float64]):
    for name, x, y in zip(NAMES, a, b):
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{name}: {m}")


def stream(q, k, v, i_pre, f_pre, mask, initial_state=None, output_final_state=True, **kw):
    """mlstm_step called token by token, as a streaming caller does."""
    B, H, N, Dk = q.shape
    state = initial_state or mlstm_init_state(B, H, Dk, v.shape[-1], dtype=v.dtype)
    ys = []
    for t in range(N):
        y, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i_pre[:, :, t], f_pre[:, :, t], state,
                              None if mask is None else mask[:, t], **kw)
        ys.append(y)
    return torch.stack(ys, 2), state




@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
@pytest.mark.parametrize("with_state", [False, True], ids=["empty", "state"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
@pytest.mark.parametrize("shape", GRID, ids=grid_id)
def test_chunked_equals_reference(shape, masked, with_state, forget):
    inputs = make_inputs(*shape, masked=masked, with_state=with_state)
    if forget == "exp":  # log f = f~ must stay <= 0 for a decay: use -softplus
        inputs = (*inputs[:4], -F.softplus(inputs[4]), *inputs[5:])
    assert_all_close(run(mlstm_chunked, *inputs, chunk=16, forget=forget), run(mlstm_reference, *inputs, forget=forget))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_streaming_step_equals_parallel(masked):
    """Token-by-token steps with holes in the mask equal the chunked pass, state included."""
    inputs = make_inputs(3, 2, 40, 4, 5, masked=masked)
    assert_all_close(run(stream, *inputs), run(mlstm_chunked, *inputs, chunk=8))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64, 500], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("N", [1, 5, 16, 17, 65], ids=lambda n: f"N{n}")
def test_chunk_size_does_not_change_the_result(N, chunk):
    inputs = make_inputs(3, 2, N, 3, 4)
    assert_all_close(run(mlstm_chunked, *inputs, chunk=chunk), run(mlstm_reference, *inputs))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_gradcheck_float64(masked):
    """Finite differences through the chunked form (3 blocks, the last one short), state included."""
    q, k, v, i_pre, f_pre, mask, st = make_inputs(2, 2, 7, 2, 2, masked=masked)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i_pre, f_pre, st.C, st.n, st.m)]

    def f(q, k, v, i_pre, f_pre, C, n, m):
        y, s = mlstm_chunked(q, k, v, i_pre, f_pre, mask, chunk=3, initial_state=MLSTMState(C, n, m), output_final_state=True)
        return y, s.C, s.n, s.m

    assert torch.autograd.gradcheck(f, leaves)


def unstabilised(q, k, v, i_pre, f_pre):
    """The definition itself, with no stabiliser, in float64 (moderate gates only):
    h_t = C_t^T q_t / max(|n_t . q_t|, 1), C_t = sum_s (prod_{s<r<=t} f_r) i_s k_s v_s^T."""
    log_f = F.logsigmoid(f_pre)
    cum = torch.cumsum(log_f, -1)
    D = torch.exp(cum[..., :, None] - cum[..., None, :] + i_pre[..., None, :]).tril()  # (B, H, N, N)
    S = (q @ k.transpose(-1, -2)) * D
    return (S @ v) / S.sum(-1).abs().clamp(min=1.0)[..., None]


def test_stabilised_forms_are_the_definition():
    q, k, v, i_pre, f_pre, _, _ = make_inputs(2, 2, 50, 4, 3, masked=False, with_state=False, gate_scale=2.0)
    ref = unstabilised(q, k, v, i_pre, f_pre)
    for fn, kw in ((mlstm_chunked, dict(chunk=8)), (mlstm_reference, {})):
        y, _ = fn(q, k, v, i_pre, f_pre, eps=0.0, **kw)
        torch.testing.assert_close(y, ref, **TOL[torch.float64])


def test_gates_open_without_normaliser_is_unnormalised_linear_attention():
    """i = exp(0) = 1, f = exp(0) = 1, no normaliser: h_t = sum_{s<=t} (q_t . k_s) v_s."""
    q, k, v, _, _, _, _ = make_inputs(2, 3, 37, 4, 5, masked=False, with_state=False)
    zeros = torch.zeros(q.shape[:3], dtype=q.dtype)
    expected = (q @ k.transpose(-1, -2)).tril() @ v
    for fn, kw in ((mlstm_chunked, dict(chunk=8)), (mlstm_reference, {})):
        y, last = fn(q, k, v, zeros, zeros, forget="exp", normalize=False, output_final_state=True, **kw)
        torch.testing.assert_close(y, expected, **TOL[torch.float64])
        torch.testing.assert_close(last.C, k.transpose(-1, -2) @ v, **TOL[torch.float64])  # C = sum k v^T
        assert (last.m == 0).all()


def test_nan_in_padding_never_reaches_valid_outputs_or_gradients():
    q, k, v, i_pre, f_pre, mask, st = make_inputs(3, 2, 23, 3, 4)
    forms = [(mlstm_chunked, dict(chunk=4)), (mlstm_reference, {})]
    clean = [run(fn, q, k, v, i_pre, f_pre, mask, st, **kw) for fn, kw in forms]
    pad = ~mask[:, None, :]
    dirty = (q.masked_fill(pad[..., None], float("nan")), k.masked_fill(pad[..., None], float("inf")),
             v.masked_fill(pad[..., None], float("nan")), i_pre.masked_fill(pad, float("inf")),
             f_pre.masked_fill(pad, float("nan")))
    for (fn, kw), ref in zip(forms, clean):
        out = run(fn, *dirty, mask, st, **kw)
        for name, a, b in zip(NAMES, out, ref):
            assert torch.isfinite(a).all(), f"{fn.__name__} {name}"
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{fn.__name__} {name}: {m}")


def test_padded_step_leaves_the_state_exactly_unchanged_and_outputs_zero():
    q, k, v, i_pre, f_pre, _, st = make_inputs(2, 2, 1, 3, 4)
    y, s = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i_pre[:, :, 0], f_pre[:, :, 0], st, torch.tensor([False, True]))
    for new, old in zip((s.C, s.n, s.m), (st.C, st.n, st.m)):
        assert torch.equal(new[0], old[0]) and not torch.equal(new[1], old[1])
    assert (y[0] == 0).all()


def test_two_pieces_with_the_carried_state_equal_one_pass():
    q, k, v, i_pre, f_pre, mask, st = make_inputs(3, 2, 40, 3, 4)
    y, last = mlstm_chunked(q, k, v, i_pre, f_pre, mask, chunk=8, initial_state=st, output_final_state=True)
    first, second = slice(0, 13), slice(13, None)
    cut = lambda sl: [t[:, :, sl] for t in (q, k, v, i_pre, f_pre)] + [mask[:, sl]]  # noqa: E731
    y1, mid = mlstm_chunked(*cut(first), chunk=8, initial_state=st, output_final_state=True)
    y2, end = mlstm_chunked(*cut(second), chunk=5, initial_state=mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), y, **TOL[torch.float64])
    for a, b in zip((end.C, end.n, end.m), (last.C, last.n, last.m)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_no_overflow_at_16k_tokens_in_float32():
    """Input-gate pre-activations up to ~500 (exp overflows float32 at 88) and strong forgetting
    over N = 16384: the float32 chunked form is finite in outputs and gradients, and agrees
    with the float64 chunked form (itself equal to the recurrence above) to float32's
    conditioning (the normaliser |n . q| can be a near-cancelling sum of signed terms)."""
    q, k, v, i_pre, f_pre, mask, _ = make_inputs(1, 1, 16384, 4, 4, with_state=False, gate_scale=100.0, seed=3)
    out64 = run(mlstm_chunked, q, k, v, i_pre, f_pre, mask, None, chunk=64)
    out32 = run(mlstm_chunked, *(t.float() for t in (q, k, v, i_pre, f_pre)), mask, None, chunk=64)
    assert i_pre.max() > 300
    for name, a, b in zip(NAMES, out32, out64):
        assert torch.isfinite(a).all(), name
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a.double() / scale, b / scale, atol=5e-3, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_accumulates_in_float32(dtype):
    q, k, v, i_pre, f_pre, mask, _ = make_inputs(2, 2, 100, 8, 8, dtype=dtype, with_state=False)
    y, s = mlstm_chunked(q, k, v, i_pre, f_pre, mask, chunk=16, output_final_state=True)
    assert y.dtype == dtype and s.C.dtype == torch.float32
    y32, _ = mlstm_reference(*(t.float() for t in (q, k, v, i_pre, f_pre)), mask)
    torch.testing.assert_close(y.float(), y32, atol=5e-2, rtol=5e-2)


def test_bad_inputs_have_clear_errors():
    q, k, v, i_pre, f_pre, mask, st = make_inputs(2, 2, 6, 3, 3)
    with pytest.raises(ValueError, match="mLSTM expects"):
        mlstm_chunked(q, k[..., :2], v, i_pre, f_pre)
    with pytest.raises(ValueError, match="gate pre-activations"):
        mlstm_chunked(q, k, v, i_pre[..., :5], f_pre)
    with pytest.raises(ValueError, match="mask must be"):
        mlstm_chunked(q, k, v, i_pre, f_pre, mask[:, :5])
    with pytest.raises(ValueError, match="initial state"):
        mlstm_chunked(q, k, v, i_pre, f_pre, initial_state=MLSTMState(st.C[..., :2], st.n, st.m))
    with pytest.raises(ValueError, match="forget must be"):
        mlstm_reference(q, k, v, i_pre, f_pre, forget="tanh")
    with pytest.raises(ValueError, match="chunk"):
        mlstm_chunked(q, k, v, i_pre, f_pre, chunk=0)
    assert mlstm_init_state(2, 4, 3, 5).nbytes() == 4 * (2 * 4 * 3 * 5 + 2 * 4 * 3 + 2 * 4)
