"""Backbones: one API for parallel, continued and streaming runs; padding, causality,
parameter counts, the mixer registry and config, state sizes, the sinusoidal encoding."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from aaren_bench.nn import (
    MIXERS,
    Backbone,
    BackboneState,
    KVCache,
    build_backbone,
    mixer_factory,
    register_mixer,
    sinusoidal,
    state_nbytes,
)
from aaren_bench.ops import ScanState

KINDS = ["aaren", "transformer"]
CONF = str(Path(__file__).resolve().parents[1] / "conf")


def make(kind, **kw):
    torch.manual_seed(0)
    cfg = dict(mixer=kind, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    cfg.update(kw)
    return build_backbone(cfg).double().eval()


def stream(model, x, mask=None, state=None):
    state = model.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if mask is None else mask[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


def holes(B, N, seed=1):
    """A random padding mask with holes anywhere; row 0 starts with 6 padded tokens."""
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[0, :6] = False
    return mask


TIGHT = dict(atol=1e-10, rtol=1e-10)

# --------------------------------------------------------------------------------------
# parallel == streaming == continued
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-ln", "pre-ln"])
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_parallel(kind, norm_first):
    model = make(kind, norm_first=norm_first)
    x = torch.randn(3, 23, 32, dtype=torch.float64)
    y_par, state = model(x)
    assert state is None  # no state unless asked for
    y_seq, _ = stream(model, x)
    torch.testing.assert_close(y_seq, y_par, **TIGHT)


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
        mask = holes(B, N)
    y_par, _ = model(x, mask)
    y_seq, _ = stream(model, x, mask)
    torch.testing.assert_close(y_seq[mask], y_par[mask], **TIGHT)
    assert torch.isfinite(y_par).all()


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "holes"])
@pytest.mark.parametrize("split", [1, 6, 13], ids=lambda k: f"split{k}")
@pytest.mark.parametrize("kind", KINDS)
def test_forward_continues_from_a_state(kind, split, masked):
    """forward(x[:, :k], output_state) then forward(x[:, k:], state) == forward(x), and the
    final states agree (the same next outputs when streaming on from either)."""
    model = make(kind, norm_first=split % 2 == 0)
    B, N = 3, 19
    x = torch.randn(B, N + 5, 32, dtype=torch.float64)
    mask = holes(B, N + 5) if masked else None
    cut = lambda m, a, b: None if m is None else m[:, a:b]  # noqa: E731
    y_full, st_full = model(x[:, :N], cut(mask, 0, N), output_state=True)
    y1, st = model(x[:, :split], cut(mask, 0, split), output_state=True)
    y2, st = model(x[:, split:N], cut(mask, split, N), state=st, output_state=True)
    y = torch.cat([y1, y2], 1)
    valid = torch.ones(B, N, dtype=torch.bool) if mask is None else mask[:, :N]
    torch.testing.assert_close(y[valid], y_full[valid], **TIGHT)
    assert isinstance(st, BackboneState) and len(st) == 2
    # the states carry on identically, in parallel and step by step
    after_full, _ = model(x[:, N:], cut(mask, N, N + 5), state=st_full)
    after_split, _ = stream(model, x[:, N:], cut(mask, N, N + 5), state=st)
    torch.testing.assert_close(after_split, after_full, **TIGHT)
    torch.testing.assert_close(after_full, model(x, mask)[0][:, N:], **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_continuing_after_an_all_padding_prefix(kind):
    """A prefix with no valid token at all leaves the empty state: outputs as without it."""
    model = make(kind)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, :4] = False
    _, st = model(x[:, :4], mask[:, :4], output_state=True)
    y, _ = model(x[:, 4:], state=st)
    torch.testing.assert_close(y, model(x[:, 4:])[0], **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_state_then_stream(kind):
    """forward(..., output_state=True) on a prefix, then step: equals forward on the whole."""
    model = make(kind)
    x = torch.randn(2, 15, 32, dtype=torch.float64)
    _, state = model(x[:, :9], output_state=True)
    ys, _ = stream(model, x[:, 9:], state=state)
    torch.testing.assert_close(ys, model(x)[0][:, 9:], **TIGHT)


def test_gradients_through_a_continued_forward():
    """Training on a sequence in two chunks with the state carried over: the same gradients."""
    model = make("aaren")
    x = torch.randn(2, 21, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 21, 32, dtype=torch.float64)
    g_full = torch.autograd.grad((model(x)[0] * w).sum(), [x, *model.parameters()])
    y1, st = model(x[:, :8], output_state=True)
    y2, _ = model(x[:, 8:], state=st)
    g_split = torch.autograd.grad((torch.cat([y1, y2], 1) * w).sum(), [x, *model.parameters()])
    for a, b in zip(g_split, g_full):
        torch.testing.assert_close(a, b, **TIGHT)


# --------------------------------------------------------------------------------------
# padding and causality
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,causal", [("aaren", True), ("transformer", True), ("transformer", False)],
                         ids=["aaren", "transformer", "transformer-bidirectional"])
def test_padding_does_not_leak(kind, causal):
    """Changing padded tokens must not change any output at a valid position."""
    model = make(kind, causal=causal)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, [0, 4, 5]] = False
    x2 = x.clone()
    x2[~mask] = 1e3 * torch.randn_like(x2[~mask])
    torch.testing.assert_close(model(x, mask)[0][mask], model(x2, mask)[0][mask])


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind):
    model = make(kind)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(model(x)[0][:, :6], model(x2)[0][:, :6])
    assert not torch.allclose(model(x)[0][:, 6:], model(x2)[0][:, 6:])


def test_bidirectional_transformer_sees_the_whole_sequence():
    """causal=false: every position attends to every valid token, as plain softmax attention."""
    model = make("transformer", causal=False, n_layers=1)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 9] += 1.0
    assert not torch.allclose(model(x)[0][:, 0], model(x2)[0][:, 0])  # the last token reaches the first
    # the mixer against a hand-written masked softmax attention
    mix = model.blocks[0].mixer
    mask = holes(2, 10)
    mask[1] = False  # a sequence with no valid token outputs 0
    q, k, v = (mix.heads(p(x)) for p in (mix.q_proj, mix.k_proj, mix.v_proj))
    logits = (q @ k.transpose(-1, -2) / math.sqrt(mix.d_head)).masked_fill(~mask[:, None, None, :], -math.inf)
    o = torch.nan_to_num(logits.softmax(-1)) @ v
    torch.testing.assert_close(mix(x, mask)[0], mix.out_proj(mix.merge(o)), **TIGHT)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "padded"])
def test_attention_dropout_drops_weights_only_while_training(causal, masked):
    """attn_dropout (the tslib protocols' 0.1): off in eval (the outputs equal a model without
    it), random while training, and unbiased: the mean over many draws is the eval output (a
    dropout without the 1/(1-p) rescaling, or on the values, fails this)."""
    mix = make("transformer", causal=causal, n_layers=1, attn_dropout=0.5).blocks[0].mixer
    ref = make("transformer", causal=causal, n_layers=1).blocks[0].mixer
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True, False, True]]) if masked else None
    expected = ref(x, mask)[0]
    torch.testing.assert_close(mix(x, mask)[0], expected, **TIGHT)  # eval: no dropout
    mix.train()
    torch.manual_seed(0)
    draws = torch.stack([mix(x, mask)[0] for _ in range(4000)])
    assert not torch.allclose(draws[0], draws[1])
    spread = draws.std(0).max().item()
    assert spread > 1e-3
    # the mean of 4000 draws is within a few standard errors of the expectation
    assert (draws.mean(0) - expected).abs().max().item() < 6 * spread / math.sqrt(len(draws))
    with pytest.raises(ValueError, match="attn_dropout"):
        make("transformer", attn_dropout=1.0)


def test_bidirectional_cannot_stream_and_aaren_cannot_be_bidirectional():
    model = make("transformer", causal=False)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot stream"):
        model.blocks[0].mixer.step(x[:, 0], None)
    with pytest.raises(ValueError, match="cannot stream"):
        model.init_state(2)
    with pytest.raises(ValueError, match="cannot stream"):
        model(x, output_state=True)
    with pytest.raises(ValueError, match="causal"):
        make("aaren", causal=False)


# --------------------------------------------------------------------------------------
# states, sizes, parameters
# --------------------------------------------------------------------------------------


def test_state_size_constant_for_aaren_and_growing_for_transformer():
    sizes = {}
    for kind in KINDS:
        model = make(kind)
        state = model.init_state(1, dtype=torch.float64)
        seen = []
        for t in range(64):
            _, state = model.step(torch.randn(1, 32, dtype=torch.float64), state)
            if t + 1 in (8, 64):
                seen.append(state.nbytes())
        sizes[kind] = seen
        assert state_nbytes(state) == state.nbytes() == sum(layer.nbytes() for layer in state)
    assert sizes["aaren"][0] == sizes["aaren"][1] == 2 * (4 + 4 + 4 * 8) * 8  # (m, c, a) per layer, float64
    assert sizes["transformer"][1] >= 8 * sizes["transformer"][0] // 2  # grows with the tokens
    assert all(isinstance(s, KVCache) for s in make("transformer").init_state(1))
    assert all(isinstance(s, ScanState) for s in make("aaren").init_state(1))


def test_parameter_counts_match_the_paper():
    """One layer, d_model 512, d_ff 2048, post-LN: 3,152,384 (Transformer) vs 3,152,896 (Aaren)."""
    count = lambda kind, d, L, H, ff: sum(  # noqa: E731
        p.numel() for p in Backbone(mixer_factory(kind, n_heads=H), d, L, ff).parameters()
    )
    assert {k: count(k, 512, 1, 8, 2048) for k in KINDS} == {"transformer": 3_152_384, "aaren": 3_152_896}
    assert count("aaren", 64, 3, 4, 128) - count("transformer", 64, 3, 4, 128) == 3 * 64  # one query per layer


# --------------------------------------------------------------------------------------
# registry, config, errors
# --------------------------------------------------------------------------------------


def test_a_new_mixer_joins_with_one_line():
    @register_mixer("mean-test")
    class Mean(nn.Module):
        """Causal running mean (a toy mixer): only the contract matters here."""

        def __init__(self, d_model, n_heads):
            super().__init__()

        def forward(self, x, mask=None, state=None, output_state=False):
            n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
            return x.cumsum(1) / n, None

    try:
        model = build_backbone(dict(mixer="mean-test", d_model=8, n_layers=1, n_heads=1, d_ff=8, dropout=0.0))
        assert isinstance(model.blocks[0].mixer, Mean)
        assert model(torch.randn(2, 3, 8))[0].shape == (2, 3, 8)
        with pytest.raises(ValueError, match="already registered"):
            register_mixer("mean-test")(Mean)
    finally:
        del MIXERS["mean-test"]


@pytest.mark.parametrize("kind", KINDS)
def test_model_configs_build_and_pass_mixer_options(kind):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("config", overrides=[f"model={kind}", "task.backbone.d_model=16", "task.backbone.n_heads=2"])
        extra = ["model.scan_chunk=8"] if kind == "aaren" else ["model.causal=false"]
        changed = compose("config", overrides=[f"model={kind}", *extra])
    model = build_backbone(cfg.model)
    mixer = model.blocks[0].mixer
    assert type(mixer) is MIXERS[kind] and model.d_model == 16 and mixer.n_heads == 2
    assert len(model.blocks) == cfg.task.backbone.n_layers
    mixer = build_backbone(changed.model).blocks[0].mixer
    if kind == "aaren":
        assert mixer.scan_chunk == 8
    else:
        assert mixer.causal is False


@pytest.mark.parametrize("task, protocol, expected", [
    ("classify", "suite", 0.0), ("classify", "tslib", 0.1),
    ("forecast", "suite", 0.0), ("forecast", "tslib", 0.1), ("forecast", "paper", 0.1)])
def test_the_anchor_protocols_drop_attention_weights(task, protocol, expected):
    """TSLib's FullAttention drops attention weights with the model's dropout: the tslib (and
    paper) protocols give the transformer's mixer 0.1; Aaren has no weights to drop."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose("config", overrides=[f"task={task}", f"protocol={protocol}", "model=transformer"])
        aaren = compose("config", overrides=[f"task={task}", f"protocol={protocol}", "model=aaren"])
    assert build_backbone(cfg.model).blocks[0].mixer.attn_dropout == expected
    assert "attn_dropout" not in aaren.model
    build_backbone(aaren.model)


def test_bad_inputs_have_clear_errors():
    model = make("aaren")
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(2, 5, 31, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(2, 5, 32, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="BackboneState of 2 layers"):
        model(torch.randn(2, 5, 32, dtype=torch.float64), state=make("aaren", n_layers=1).init_state(2))
    with pytest.raises(ValueError, match="unknown mixer"):
        make("lstm")
    with pytest.raises(ValueError, match="divisible"):
        make("aaren", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="takes options"):
        make("transformer", scan_chunk=8)
    with pytest.raises(ValueError, match="needs `mixer:`"):
        build_backbone(dict(name="aaren", d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.0))
    with pytest.raises(TypeError, match="factory"):
        Backbone("aaren")


# --------------------------------------------------------------------------------------
# the sinusoidal encoding, precision, devices
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [6, 7])
def test_sinusoidal_is_the_transformer_encoding(d):
    """Channel 2i: sin(p / 10000^(2i/d)), channel 2i+1: cos of the same; real positions too."""
    p = torch.tensor([0.0, 1.0, 2.5, 300.0])
    enc = sinusoidal(p, d)
    assert enc.shape == (4, d)
    for c in range(d):
        angle = p / 10000 ** (2 * (c // 2) / d)
        want = angle.sin() if c % 2 == 0 else angle.cos()
        torch.testing.assert_close(enc[:, c], want, atol=1e-5, rtol=1e-5)


def test_task_embeddings_use_the_one_sinusoidal():
    from tasks.events.model import EventModel
    from tasks.forecast.embed import DataEmbedding

    emb = DataEmbedding(n_channels=2, n_marks=3, d_model=16, dropout=0.0, max_len=50)
    assert torch.equal(emb.positions, sinusoidal(torch.arange(50), 16))
    ev = EventModel(make("aaren", d_model=16, n_layers=1).float(), num_marks=1, time_scale=2.0)
    t = torch.rand(2, 5) * 10
    marks = torch.zeros(2, 5, dtype=torch.long)
    torch.testing.assert_close(ev.embed(t, t, marks) - ev.mark_emb(marks), sinusoidal(t / 2.0, 16))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_runs(kind):
    torch.manual_seed(0)
    model = Backbone(mixer_factory(kind, n_heads=4), d_model=32, n_layers=1, d_ff=64, dropout=0.0)
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = model(x)
    assert torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), model(x)[0], atol=0.1, rtol=0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_streaming_equals_parallel(kind):
    model = make(kind).float().cuda()
    x = torch.randn(2, 40, 32, device="cuda")
    mask = holes(2, 40).cuda()
    y_seq, _ = stream(model, x, mask)
    torch.testing.assert_close(y_seq[mask], model(x, mask)[0][mask], atol=1e-4, rtol=1e-4)
    _, st = model(x[:, :17], mask[:, :17], output_state=True)
    y_rest, _ = model(x[:, 17:], mask[:, 17:], state=st)
    torch.testing.assert_close(y_rest, model(x, mask)[0][:, 17:], atol=1e-4, rtol=1e-4)
