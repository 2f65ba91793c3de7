"""The linear-attention and Mamba-2 mixers: the mixer contract, streaming, padding, sizes.

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
from aaren_bench.ops import LinearAttnState, gated_rms_norm, ssd_naive

TOL = dict(atol=1e-10, rtol=1e-10)
MIXERS = {
    "linear_attn": lambda d, h: LinearAttentionMixer(d, h, chunk=4),
    "mamba2": lambda d, h: Mamba2Mixer(d, h, d_state=8, headdim=8, chunk=4),
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
    for a, b in zip(tensors(after), tensors(state)):
        assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


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
    else:
        assert size0 == 2 * 8 * 4 * (8 * 8 + 8)


@pytest.mark.parametrize("kind", KINDS)
def test_causal_false_is_refused(kind):
    factory = {"linear_attn": LinearAttentionMixer, "mamba2": Mamba2Mixer}[kind]
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
        mamba = Mamba2Mixer(d, h)
        m2 = n_params(mamba)
        attn = attention_mixer_params(d)
        assert la == attn  # the Transformer's four projections with bias
        assert m2 == mamba.dims.params == mamba2_dims(d).params
        assert abs(m2 - attn) / attn < 0.035  # matched within 3.5 %
        counts = {"aaren": attn + d, "transformer": attn, "linear_attn": la, "mamba2": m2}
        dims = mamba.dims
        rows.append(
            f"{task:9s} d={d:3d} heads={h} | mixer: " + " ".join(f"{k}={v:,}" for k, v in counts.items())
            + f" | +block {block:,} | mamba2 d_inner={dims.d_inner} d_state={dims.d_state} headdim={dims.headdim}"
            f" nheads={dims.nheads} ({(m2 - attn) / attn:+.2%})"
        )
    with capsys.disabled():
        print("\nparameters per layer (mixer; the block adds the same feed-forward + norms to each):")
        print("\n".join(rows))


def test_mamba2_sizes_can_be_set():
    m = Mamba2Mixer(64, 1, d_state=16, headdim=16, expand=2)
    assert (m.dims.d_inner, m.dims.nheads, m.dims.d_state) == (128, 8, 16)
    with pytest.raises(ValueError, match="whole number of heads"):
        Mamba2Mixer(64, 1, headdim=48, expand=2)
