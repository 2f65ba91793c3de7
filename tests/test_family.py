"""The linear-attention, Mamba-2, mLSTM and TTT-Linear mixers: the mixer contract, streaming, padding, sizes.

Streaming (``step``) equals the parallel ``forward`` token by token with holed masks; a forward
in two pieces with the carried state equals one forward; padding leaves the state unchanged and
garbage there reaches nothing; parameter counts at every task's settings (printed).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aaren_bench.nn.family import (
    LinearAttentionMixer,
    Mamba2Mixer,
    attention_mixer_params,
    mamba2_dims,
)
from aaren_bench.nn.matrix import MLSTMMixer, MLSTMState, TTTLinearMixer, TTTState, mlstm_dims, ttt_dims
from aaren_bench.ops import LinearAttnState, gated_rms_norm, ssd_naive

TOL = dict(atol=1e-10, rtol=1e-10)
MIXERS = {
    "linear_attn": lambda d, h: LinearAttentionMixer(d, h, chunk=4),
    "mamba2": lambda d, h: Mamba2Mixer(d, h, d_state=8, headdim=8, chunk=4),
    "mlstm": lambda d, h: MLSTMMixer(d, h, chunk=4),
    "ttt": lambda d, h: TTTLinearMixer(d, h, mini_batch=4),
}


def make(kind, d_model=32, n_heads=4, seed=0):
    torch.manual_seed(seed)
    return MIXERS[kind](d_model, n_heads).double().eval()


def inputs(B=4, N=19, D=32, layout="holes", seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    if layout == "none":
        return x, None
    mask = torch.rand(B, N, generator=g) > 0.4
    mask[0, :5] = False  # leading padding
    mask[1, -4:] = False  # trailing padding
    mask[2] = True
    return x, mask


def stream(model, x, mask=None, state=None):
    state = model.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if mask is None else mask[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


def tensors(state):
    if isinstance(state, MLSTMState):
        return [state.C, state.n, state.m]
    if isinstance(state, TTTState):
        return [state.W, state.b, state.GW, state.Gb, state.count]
    return [state.S, state.z] if isinstance(state, LinearAttnState) else [state.ssm, state.conv]


KINDS = list(MIXERS)


@pytest.mark.parametrize("layout", ["none", "holes"])
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_parallel(kind, layout):
    model = make(kind)
    x, mask = inputs(layout=layout)
    y, last = model(x, mask, output_state=True)
    y_seq, last_seq = stream(model, x, mask)
    torch.testing.assert_close(y_seq, y, **TOL)  # padded positions too
    for a, b in zip(tensors(last_seq), tensors(last)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("layout", ["none", "holes"])
@pytest.mark.parametrize("kind", KINDS)
def test_two_pieces_with_the_carried_state_equal_one_forward(kind, layout):
    model = make(kind)
    x, mask = inputs(N=23, layout=layout)
    y, last = model(x, mask, output_state=True)
    y1, mid = model(x[:, :10], None if mask is None else mask[:, :10], output_state=True)
    y2, end = model(x[:, 10:], None if mask is None else mask[:, 10:], state=mid, output_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, **TOL)
    for a, b in zip(tensors(end), tensors(last)):
        torch.testing.assert_close(a, b, **TOL)
    # and a prefix forward followed by streaming
    y_seq, _ = stream(model, x[:, 10:], None if mask is None else mask[:, 10:], state=mid)
    torch.testing.assert_close(y_seq, y[:, 10:], **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_returns_a_tuple(kind):
    model = make(kind)
    x, mask = inputs()
    out = model(x, mask)
    assert isinstance(out, tuple) and out[1] is None and out[0].shape == x.shape


@pytest.mark.parametrize("kind", KINDS)
def test_padded_step_leaves_the_state_unchanged(kind):
    model = make(kind)
    x, _ = inputs(B=2, layout="none")
    _, state = stream(model, x[:, :6])
    _, after = model.step(x[:, 6], state, torch.tensor([False, True]))
    for i, (a, b) in enumerate(zip(tensors(after), tensors(state))):
        assert torch.equal(a[0], b[0])
        if not (kind == "ttt" and i < 2):  # TTT's W and b move only when a mini-batch completes
            assert not torch.equal(a[1], b[1])


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_in_padding_reaches_neither_outputs_nor_gradients(kind):
    model = make(kind)
    x, mask = inputs()
    results = []
    for garbage in (0.0, float("nan")):
        model.zero_grad()
        xi = x.masked_fill(~mask[..., None], garbage).requires_grad_()
        y, last = model(xi, mask, output_state=True)
        (y[mask].square().sum() + sum(t.sum() for t in tensors(last))).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        assert all(torch.isfinite(g).all() for g in grads) and torch.isfinite(y).all()
        results.append((y[mask].detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind):
    model = make(kind)
    x, _ = inputs(layout="none")
    x2 = x.clone()
    x2[:, 9:] += 1.0
    torch.testing.assert_close(model(x)[0][:, :9], model(x2)[0][:, :9])
    assert not torch.allclose(model(x)[0][:, 9:], model(x2)[0][:, 9:])


@pytest.mark.parametrize("kind", KINDS)
def test_state_size_is_constant_and_measured(kind):
    model = make(kind)
    state = model.init_state(2, dtype=torch.float64)
    size0 = state.nbytes()
    _, state = stream(model, torch.randn(2, 30, 32, dtype=torch.float64))
    assert state.nbytes() == size0 == sum(t.numel() * 8 for t in tensors(state))
    if kind == "mamba2":
        d = model.dims
        assert size0 == 2 * 8 * (d.nheads * d.headdim * d.d_state + d.conv_dim * (d.d_conv - 1))
    elif kind == "mlstm":
        s = model.dims.qk_head
        assert size0 == 2 * 8 * 4 * (s * 8 + s + 1)
    elif kind == "ttt":
        P = model.head_dim
        assert size0 == 2 * 8 * 4 * 2 * (P * P + P) + 2 * 8  # (W, b) and their sums; the count
    else:
        assert size0 == 2 * 8 * 4 * (8 * 8 + 8)


@pytest.mark.parametrize("kind", KINDS)
def test_causal_false_is_refused(kind):
    factory = {"linear_attn": LinearAttentionMixer, "mamba2": Mamba2Mixer, "mlstm": MLSTMMixer, "ttt": TTTLinearMixer}[kind]
    with pytest.raises(ValueError, match="causal"):
        factory(32, 4, causal=False)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_runs(kind):
    torch.manual_seed(0)
    model = MIXERS[kind](32, 4)
    x, mask = inputs()
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = model(x, mask)
    assert torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), model(x, mask)[0], atol=0.1, rtol=0.1)


def test_mamba2_is_the_published_layer():
    """Without padding, the mixer equals Mamba-2's forward written out plainly: in_proj ->
    (z, xBC, dt); conv1d(padding=K-1) truncated, SiLU; SSD as masked attention with
    dt = softplus(dt + dt_bias), A = -exp(A_log); + D x; rmsnorm(y * silu(z)); out_proj."""
    model = make("mamba2")
    d = model.dims
    x, _ = inputs(layout="none")
    B, N, _ = x.shape
    z, xBC, dt = torch.split(model.in_proj(x), [d.d_inner, d.conv_dim, d.nheads], dim=-1)
    # Mamba's Conv1d(padding=K-1) truncated to N (the module's Conv1d only holds the weights)
    xBC = F.conv1d(xBC.transpose(1, 2), model.conv1d.weight, model.conv1d.bias, padding=d.d_conv - 1, groups=d.conv_dim)
    xBC = F.silu(xBC[..., :N].transpose(1, 2))
    xs, Bm, Cm = torch.split(xBC, [d.d_inner, d.d_state, d.d_state], dim=-1)
    xs = xs.view(B, N, d.nheads, d.headdim).transpose(1, 2)
    y, _ = ssd_naive(xs, F.softplus(dt + model.dt_bias).transpose(1, 2), -torch.exp(model.A_log), Bm[:, None], Cm[:, None])
    y = y + xs * model.D[:, None, None]
    y = y.transpose(1, 2).reshape(B, N, d.d_inner)
    y = gated_rms_norm(y, z, model.norm_weight, 1e-5)
    torch.testing.assert_close(model(x)[0], model.out_proj(y), **TOL)


# --------------------------------------------------------------------------------------
# sizes: the four backbones comparable in parameters at every task's settings
# --------------------------------------------------------------------------------------

# (task, d_model, n_heads, d_ff) from conf/task/*.yaml
TASKS = [("classify", 128, 8, 256), ("rl", 128, 1, 512), ("events", 64, 1, 64), ("forecast", 512, 8, 2048)]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_per_task(capsys):
    rows = []
    for task, d, h, d_ff in TASKS:
        block = 2 * d * d_ff + d_ff + d + 4 * d  # shared: feed-forward and two LayerNorms
        la = n_params(LinearAttentionMixer(d, h))
        mamba, mlstm, ttt = Mamba2Mixer(d, h), MLSTMMixer(d, h), TTTLinearMixer(d, h)
        m2, ml, tt = n_params(mamba), n_params(mlstm), n_params(ttt)
        attn = attention_mixer_params(d)
        assert la == attn  # the Transformer's four projections with bias
        assert m2 == mamba.dims.params == mamba2_dims(d).params
        assert ml == mlstm.dims.params == mlstm_dims(d, h).params
        assert tt == ttt.dims.params == ttt_dims(d, h).params
        assert abs(m2 - attn) / attn < 0.035  # matched within 3.5 %
        assert abs(ml - attn) / attn < 0.02 and abs(tt - attn) / attn < 0.02  # matched within 2 %
        counts = {"aaren": attn + d, "transformer": attn, "linear_attn": la, "mamba2": m2, "mlstm": ml, "ttt": tt}
        dims = mamba.dims
        rows.append(
            f"{task:9s} d={d:3d} heads={h} | mixer: " + " ".join(f"{k}={v:,}" for k, v in counts.items())
            + f" | +block {block:,} | mamba2 d_inner={dims.d_inner} d_state={dims.d_state} headdim={dims.headdim}"
            f" nheads={dims.nheads} ({(m2 - attn) / attn:+.2%}) | mlstm qk/head={mlstm.dims.qk_head}"
            f" ({(ml - attn) / attn:+.2%}) | ttt head_dim={ttt.head_dim} ({(tt - attn) / attn:+.2%})"
        )
    with capsys.disabled():
        print("\nparameters per layer (mixer; the block adds the same feed-forward + norms to each):")
        print("\n".join(rows))


def test_mlstm_layer_is_the_papers_cell():
    """Without padding, the mixer equals the paper's cell written out plainly (no stabiliser, float64):
    q, k / sqrt(d_qk), v, i = exp(w_i x + b_i), f = sigmoid(w_f x + b_f), C_t = f C + i k v^T,
    n_t = f n + i k, h = C^T q / max(|n . q|, 1); per-head LayerNorm; o = sigmoid(W_o x + b_o); out_proj."""
    model = make("mlstm")
    with torch.no_grad():  # gates that depend on the token
        model.igate.weight.normal_(0, 0.3)
        model.fgate.weight.normal_(0, 0.3)
    x, _ = inputs(layout="none")
    B, N, _ = x.shape
    q, k, v, i_pre, f_pre = model._project(x)
    C = torch.zeros(B, model.n_heads, model.dims.qk_head, model.d_head, dtype=x.dtype)
    n = torch.zeros(B, model.n_heads, model.dims.qk_head, dtype=x.dtype)
    hs = []
    for t in range(N):
        i, f = torch.exp(i_pre[:, t]), torch.sigmoid(f_pre[:, t])  # (B, H)
        C = f[..., None, None] * C + i[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = f[..., None] * n + i[..., None] * k[:, t]
        qn = (q[:, t] * n).sum(-1).abs().clamp(min=1.0)
        hs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], C) / qn[..., None])
    h = F.layer_norm(torch.stack(hs, 1), (model.d_head,), eps=1e-5).flatten(-2) * model.norm_weight
    expected = model.out_proj(torch.sigmoid(model.o_gate(x)) * h)
    torch.testing.assert_close(model(x)[0], expected, atol=1e-6, rtol=1e-6)  # eps = 1e-6 in the cell


def test_ttt_layer_is_the_papers_inner_loop():
    """Without padding, the mixer equals TTT-Linear written out plainly: per mini-batch of b
    tokens, gradients of 1/2 ||k + LN(W0 k + b0) - v||^2 taken at the mini-batch's start by
    autograd, W_t = W0 - c_i sum_{s<=t} eta_s grad_s, output q + LN(W_t q + b_t), post-norm, o_proj."""
    model = make("ttt")
    x, _ = inputs(N=11, layout="none")
    B, N, _ = x.shape
    q, k, v, eta = model._project(x)  # (B, N, H, P), (B, N, H)
    gamma, beta, c, mb = model.ln_weight, model.ln_bias, model._scale(), model.dims.mini_batch
    ln = lambda z: F.layer_norm(z, (model.head_dim,), eps=1e-6) * gamma + beta  # noqa: E731
    W, b = model.W0.detach().expand(B, *model.W0.shape), model.b0.detach().expand(B, *model.b0.shape)
    outs = []
    for start in range(0, N, mb):
        W0, b0 = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        GW, Gb = torch.zeros_like(W), torch.zeros_like(b)
        for i, t in enumerate(range(start, min(start + mb, N))):
            loss = 0.5 * (k[:, t] + ln(torch.einsum("bhij,bhj->bhi", W0, k[:, t]) + b0) - v[:, t]).square().sum()
            gW, gb = torch.autograd.grad(loss, (W0, b0), retain_graph=True)
            GW, Gb = GW + eta[:, t, :, None, None] * gW, Gb + eta[:, t, :, None] * gb
            W, b = W0 - c[i] * GW, b0 - c[i] * Gb
            outs.append(q[:, t] + ln(torch.einsum("bhij,bhj->bhi", W, q[:, t]) + b))
    expected = model.o_proj(model.post_norm(torch.stack(outs, 1).flatten(-2)))
    torch.testing.assert_close(model(x)[0], expected, **TOL)


def test_mamba2_sizes_can_be_set():
    m = Mamba2Mixer(64, 1, d_state=16, headdim=16, expand=2)
    assert (m.dims.d_inner, m.dims.nheads, m.dims.d_state) == (128, 8, 16)
    with pytest.raises(ValueError, match="whole number of heads"):
        Mamba2Mixer(64, 1, headdim=48, expand=2)
