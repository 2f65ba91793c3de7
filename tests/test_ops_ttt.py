"""TTT-Linear: the dual (mini-batch parallel) form, the primal recurrence and the token-by-token
step compute the same function.

Compared on outputs, final states (W, b, G_W, G_b, count) and the gradients w.r.t. every input
(q, k, v, the inner rates, the per-position scales, the LN's gamma and beta and the initial
state), over a grid of shapes, mini-batch sizes, masks and initial states (rows at different
places in their mini-batch), in float64 to ~1e-10; plus finite differences, NaN placed in
padding, the LN gradient against autograd, and the identity with the delta rule.
"""
from __future__ import annotations

import pytest
import torch

from aaren_bench.ops import (
    TTTState,
    ln_fwd,
    ln_l2_grad,
    ttt_linear_chunked,
    ttt_linear_init_state,
    ttt_linear_reference,
    ttt_linear_step,
)

TOL = dict(atol=1e-10, rtol=1e-10)


def make_inputs(B, H, N, P, mb, masked=True, with_state=True, seed=0):
    """q, k, v, eta >= 0, token scales (mb,), LN (gamma, beta), mask, state. With a state, the
    rows sit at different places of their mini-batch with gradients already summed."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = rnd(B, H, N, P), rnd(B, H, N, P), rnd(B, H, N, P)
    eta = torch.rand(B, H, N, generator=g, dtype=torch.float64) * 0.5
    scale = 1.0 / torch.arange(1, mb + 1, dtype=torch.float64) + 0.1 * rnd(mb)
    ln = (1.0 + 0.2 * rnd(H, P), 0.2 * rnd(H, P))
    mask = None
    if masked:
        mask = torch.rand(B, N, generator=g) > 0.3
        mask[0, : min(N, 3)] = False
        if B > 2:
            mask[-1] = False
    W0, b0 = 0.3 * rnd(H, P, P), 0.1 * rnd(H, P)
    state = ttt_linear_init_state(W0, b0, B, torch.float64)
    if with_state:
        count = torch.randint(0, mb, (B,), generator=g)
        state = TTTState(0.3 * rnd(B, H, P, P), 0.1 * rnd(B, H, P), 0.1 * rnd(B, H, P, P) * (count > 0).view(B, 1, 1, 1),
                         0.1 * rnd(B, H, P) * (count > 0).view(B, 1, 1), count)
    return q, k, v, eta, scale, ln, mask, state


def run(fn, q, k, v, eta, scale, ln, mask, state, seed=1, **kw):
    """fn's output and final state, and the gradients of a random linear loss of both w.r.t.
    q, k, v, eta, the scales, LN's gamma, beta and the initial W, b, G_W, G_b."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, eta, scale, *ln, state.W, state.b, state.GW, state.Gb)]
    st = TTTState(*leaves[7:], state.count)
    y, last = fn(*leaves[:5], st, mask, ln=tuple(leaves[5:7]), output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    outs = (y, last.W, last.b, last.GW, last.Gb)
    w = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in outs]
    loss = sum((t * wt).sum() for t, wt in zip(outs, w))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [t.detach() for t in outs] + [last.count] + list(grads)


NAMES = ["y", "W", "b", "GW", "Gb", "count", "dq", "dk", "dv", "deta", "dscale", "dgamma", "dbeta",
         "dW0", "db0", "dGW0", "dGb0"]


def assert_all_close(a, b, tol=TOL):
    for name, x, y in zip(NAMES, a, b):
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{name}: {m}")


GRID = [
    # (B, H, N, P)
    (1, 1, 1, 1),
    (2, 1, 2, 3),
    (3, 2, 7, 4),
    (3, 2, 33, 5),
    (2, 3, 50, 4),
]


@pytest.mark.parametrize("with_state", [False, True], ids=["empty", "state"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
@pytest.mark.parametrize("mb", [1, 4, 16], ids=lambda b: f"mb{b}")
@pytest.mark.parametrize("shape", GRID, ids=lambda s: "B{}-H{}-N{}-P{}".format(*s))
def test_dual_form_equals_the_recurrence(shape, mb, masked, with_state):
    inputs = make_inputs(*shape, mb, masked=masked, with_state=with_state)
    assert_all_close(run(ttt_linear_chunked, *inputs), run(ttt_linear_reference, *inputs))


@pytest.mark.parametrize("variant", ["no_ln", "no_residual", "no_bias"])
def test_inner_model_variants_agree(variant):
    q, k, v, eta, scale, ln, mask, st = make_inputs(3, 2, 21, 4, 4)
    kw = {"no_residual": dict(residual=False), "no_bias": dict(inner_bias=False)}.get(variant, {})
    ln = None if variant == "no_ln" else ln
    a = ttt_linear_chunked(q, k, v, eta, scale, st, mask, ln, output_final_state=True, **kw)
    b = ttt_linear_reference(q, k, v, eta, scale, st, mask, ln, output_final_state=True, **kw)
    torch.testing.assert_close(a[0], b[0], **TOL)
    torch.testing.assert_close(a[1].W, b[1].W, **TOL)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
def test_streaming_step_equals_parallel(masked):
    """ttt_linear_step token by token, holes included, equals the dual form, state included."""
    q, k, v, eta, scale, ln, mask, st = make_inputs(3, 2, 37, 4, 8, masked=masked)
    y, last = ttt_linear_chunked(q, k, v, eta, scale, st, mask, ln, output_final_state=True)
    state, ys = st, []
    for t in range(q.shape[2]):
        y_t, state = ttt_linear_step(q[:, :, t], k[:, :, t], v[:, :, t], eta[:, :, t], scale, state,
                                     None if mask is None else mask[:, t], ln)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 2), y, **TOL)
    for a, b in zip((state.W, state.b, state.GW, state.Gb, state.count), (last.W, last.b, last.GW, last.Gb, last.count)):
        torch.testing.assert_close(a, b, **TOL)


def test_gradcheck_float64():
    """Finite differences through the dual form (mini-batch 3 over 8 tokens with holes), every input."""
    q, k, v, eta, scale, ln, mask, st = make_inputs(2, 1, 8, 2, 3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, eta, scale, *ln, st.W, st.b, st.GW, st.Gb)]

    def f(q, k, v, eta, scale, gamma, beta, W, b, GW, Gb):
        y, s = ttt_linear_chunked(q, k, v, eta, scale, TTTState(W, b, GW, Gb, st.count), mask, (gamma, beta),
                                  output_final_state=True)
        return y, s.W, s.b, s.GW, s.Gb

    assert torch.autograd.gradcheck(f, leaves)


def test_ln_l2_grad_is_the_gradient():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 2, 5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    gamma, beta = (torch.randn(2, 1, 6, generator=g, dtype=torch.float64) for _ in range(2))
    x = x.requires_grad_()
    (auto,) = torch.autograd.grad(0.5 * (ln_fwd(x, gamma, beta) - y).square().sum(), x)
    torch.testing.assert_close(ln_l2_grad(x, y, gamma, beta), auto, **TOL)
    ref = torch.nn.functional.layer_norm(x, (6,), eps=1e-6) * gamma + beta
    torch.testing.assert_close(ln_fwd(x, gamma, beta), ref, **TOL)


def test_mini_batch_one_without_ln_with_a_fixed_rate_is_the_delta_rule():
    """b = 1, no LN, no residual, no bias, c = 1, eta fixed: W_t = W_{t-1} - eta (W_{t-1} k_t - v_t) k_t^T
    and z_t = W_t q_t; with the residual, the same rule on the target v_t - k_t and z_t = q_t + W_t q_t."""
    q, k, v, _, _, _, _, _ = make_inputs(2, 2, 30, 5, 1, masked=False, with_state=False)
    eta0 = 0.3
    eta = torch.full(q.shape[:3], eta0, dtype=torch.float64)
    W0 = 0.2 * torch.randn(2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for residual in (False, True):
        W = W0.expand(2, 2, 5, 5)
        target = v - k if residual else v
        expected = []
        for t in range(q.shape[2]):
            W = W - eta0 * (W @ k[:, :, t, :, None] - target[:, :, t, :, None]) @ k[:, :, t, None, :]
            z = (W @ q[:, :, t, :, None])[..., 0]
            expected.append(q[:, :, t] + z if residual else z)
        state = ttt_linear_init_state(W0, torch.zeros(2, 5, dtype=torch.float64), 2, torch.float64)
        for fn in (ttt_linear_chunked, ttt_linear_reference):
            y, last = fn(q, k, v, eta, torch.ones(1, dtype=torch.float64), state, ln=None, output_final_state=True,
                         residual=residual, inner_bias=False)
            torch.testing.assert_close(y, torch.stack(expected, 2), **TOL)
            torch.testing.assert_close(last.W, W, **TOL)


def test_nan_in_padding_never_reaches_valid_outputs_or_gradients():
    q, k, v, eta, scale, ln, mask, st = make_inputs(3, 2, 23, 3, 4)
    clean = [run(fn, q, k, v, eta, scale, ln, mask, st) for fn in (ttt_linear_chunked, ttt_linear_reference)]
    pad = ~mask[:, None, :]
    dirty = (q.masked_fill(pad[..., None], float("nan")), k.masked_fill(pad[..., None], float("inf")),
             v.masked_fill(pad[..., None], float("nan")), eta.masked_fill(pad, float("nan")))
    for fn, ref in zip((ttt_linear_chunked, ttt_linear_reference), clean):
        out = run(fn, *dirty, scale, ln, mask, st)
        for name, a, b in zip(NAMES, out, ref):
            assert torch.isfinite(a.double()).all(), f"{fn.__name__} {name}"
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{fn.__name__} {name}: {m}")


def test_padded_step_leaves_the_state_exactly_unchanged_and_outputs_zero():
    q, k, v, eta, scale, ln, _, st = make_inputs(2, 2, 1, 3, 4)
    y, s = ttt_linear_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], eta[:, :, 0], scale, st, torch.tensor([False, True]), ln)
    assert torch.equal(s.W[0], st.W[0]) and torch.equal(s.GW[0], st.GW[0]) and s.count[0] == st.count[0]
    assert not torch.equal(s.GW[1], st.GW[1]) or not torch.equal(s.W[1], st.W[1])
    assert (y[0] == 0).all()


def test_two_pieces_with_the_carried_state_equal_one_pass():
    """Cut in the middle of a mini-batch (and at a different place in each row, with holes)."""
    q, k, v, eta, scale, ln, mask, st = make_inputs(3, 2, 40, 3, 6)
    y, last = ttt_linear_chunked(q, k, v, eta, scale, st, mask, ln, output_final_state=True)
    cut = lambda sl: [t[:, :, sl] for t in (q, k, v, eta)]  # noqa: E731
    y1, mid = ttt_linear_chunked(*cut(slice(0, 13)), scale, st, mask[:, :13], ln, output_final_state=True)
    y2, end = ttt_linear_chunked(*cut(slice(13, None)), scale, mid, mask[:, 13:], ln, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), y, **TOL)
    for a, b in zip((end.W, end.b, end.GW, end.Gb, end.count), (last.W, last.b, last.GW, last.Gb, last.count)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_accumulates_in_float32(dtype):
    q, k, v, eta, scale, ln, mask, st = make_inputs(2, 2, 40, 8, 16)
    half = [t.to(dtype) for t in (q, k, v, eta)]
    y, s = ttt_linear_chunked(*half, scale.float(), st, mask, ln, output_final_state=True)
    assert y.dtype == dtype and s.W.dtype == torch.float32
    y32, _ = ttt_linear_reference(*(t.float() for t in half), scale.float(), st, mask, ln)
    torch.testing.assert_close(y.float(), y32, atol=3e-2, rtol=3e-2)


def test_bad_inputs_have_clear_errors():
    q, k, v, eta, scale, ln, mask, st = make_inputs(2, 2, 6, 3, 4)
    with pytest.raises(ValueError, match="TTT-Linear expects"):
        ttt_linear_chunked(q, k[..., :2], v, eta, scale, st)
    with pytest.raises(ValueError, match="inner rate"):
        ttt_linear_chunked(q, k, v, eta[..., :5], scale, st)
    with pytest.raises(ValueError, match="token_scale"):
        ttt_linear_chunked(q, k, v, eta, scale[None], st)
    with pytest.raises(ValueError, match="ln weight"):
        ttt_linear_chunked(q, k, v, eta, scale, st, ln=(ln[0][:, :2], ln[1]))
    with pytest.raises(ValueError, match="mask must be"):
        ttt_linear_reference(q, k, v, eta, scale, st, mask[:, :5])
    with pytest.raises(ValueError, match="the state must be"):
        ttt_linear_chunked(q, k, v, eta, scale, TTTState(st.W[..., :2], st.b, st.GW, st.Gb, st.count))
