"""The stack options an anchor protocol sets (norm_eps, ff_dropout, init, qkv_bias, head_dropout):
each changes what it says, the defaults change nothing, and every protocol file sets its anchor's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from aaren_bench.nn import build_backbone
from aaren_bench.study import compose_config


def make(kind="transformer", **kw):
    torch.manual_seed(0)
    cfg = dict(mixer=kind, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.1)
    cfg.update(kw)
    return build_backbone(cfg)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_defaults_are_the_suite_stack():
    m = make()
    block = m.blocks[0]
    assert block.norm1.eps == 1e-5 and isinstance(block.ff[2], nn.Dropout)
    assert block.mixer.q_proj.bias is not None and block.mixer.head_drop.p == 0.0


@pytest.mark.parametrize("kind", ["transformer", "aaren"])
def test_qkv_bias_false_drops_three_biases_per_layer(kind):
    assert n_params(make(kind)) - n_params(make(kind, qkv_bias=False)) == 2 * 3 * 32
    assert make(kind, qkv_bias=False).blocks[1].mixer.v_proj.bias is None


def test_norm_eps_and_ff_dropout():
    m = make(norm_eps=1e-6, ff_dropout=False, norm_first=True)
    assert all(n.eps == 1e-6 for n in m.modules() if isinstance(n, nn.LayerNorm))
    assert not any(isinstance(x, nn.Dropout) for x in m.blocks[0].ff)
    assert n_params(m) == n_params(make(norm_first=True))  # a dropout has no parameters


def test_gpt2_init_is_normal_002_with_zero_biases():
    torch.manual_seed(0)
    m = build_backbone(dict(mixer="transformer", d_model=256, n_layers=2, n_heads=4, d_ff=1024, dropout=0.1, init="gpt2"))
    w = torch.cat([x.weight.flatten() for x in m.modules() if isinstance(x, nn.Linear)])
    assert abs(float(w.std()) - 0.02) < 5e-4 and abs(float(w.mean())) < 5e-4
    assert all(float(x.bias.abs().max()) == 0 for x in m.modules() if isinstance(x, nn.Linear))
    default = torch.cat([x.weight.flatten() for x in make(d_model=256, d_ff=1024).modules() if isinstance(x, nn.Linear)])
    assert abs(float(default.std()) - 0.02) > 5e-3  # the default differs: the check can fail


def test_xavier_attn_init_touches_only_the_attention_projections():
    torch.manual_seed(0)
    m = make(d_model=64, init="xavier_attn")
    bound = (6 / (64 + 64)) ** 0.5
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        w = getattr(m.blocks[0].mixer, name).weight
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound  # default: 1/sqrt(64)=0.125 < 0.9*0.217
    torch.manual_seed(0)
    ff_default = make(d_model=64).blocks[0].ff[0].weight
    assert torch.equal(m.blocks[0].ff[0].weight, ff_default)  # the feed-forward keeps PyTorch's init


@pytest.mark.parametrize("kind", ["transformer", "aaren"])
def test_head_dropout_drops_before_the_output_projection(kind):
    m = make(kind, head_dropout=0.5, dropout=0.0, n_layers=1).train()
    x = torch.randn(2, 6, 32)
    a, b = m(x)[0], m(x)[0]
    assert not torch.allclose(a, b)  # masks differ between two calls
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])
    with pytest.raises(ValueError, match="head_dropout"):
        make(kind, head_dropout=1.0)


def test_bad_init_has_a_clear_error():
    with pytest.raises(ValueError, match="init must be one of"):
        make(init="kaiming")


@pytest.mark.parametrize("task, protocol, expected", [
    ("events", "metatpp", dict(attn_dropout=0.1, qkv_bias=False, init="xavier_attn", norm_eps=1e-6, ff_dropout=True)),
    ("events", "suite", dict(attn_dropout=0.0, qkv_bias=True, init="default", norm_eps=1e-5, ff_dropout=True)),
    ("rl", "dt", dict(attn_dropout=0.1, init="gpt2", ff_dropout=False, head_dropout=0.0)),
    ("rl", "mindt", dict(attn_dropout=0.0, init="default", ff_dropout=False, head_dropout=0.1)),
    ("rl", "suite", dict(attn_dropout=0.0, init="default", ff_dropout=True, head_dropout=0.0)),
    ("classify", "tslib", dict(causal=False, attn_dropout=0.1)),
    ("classify", "suite", dict(causal=True, attn_dropout=0.0)),
])
def test_each_protocol_sets_its_anchors_stack(task, protocol, expected):
    cfg = compose_config([f"task={task}", f"protocol={protocol}", "model=transformer", "logger=none"])
    for k, v in expected.items():
        assert cfg.model[k] == v, (k, cfg.model[k])
    build_backbone(cfg.model)
    aaren = compose_config([f"task={task}", f"protocol={protocol}", "model=aaren", "logger=none"])
    assert aaren.model.causal is True and aaren.model.head_dropout == expected.get("head_dropout", 0.0)
    build_backbone(aaren.model)


def test_dt_protocol_drops_the_embedded_tokens_and_orders_kzl_targets():
    cfg = compose_config(["task=rl", "protocol=dt", "model=transformer", "logger=none"])
    assert cfg.task.embed_dropout == 0.1
    assert list(cfg.task.target_returns.halfcheetah) == [12000, 6000]  # experiment.py's env_targets
    assert compose_config(["task=rl", "model=transformer", "logger=none"]).task.embed_dropout == 0.0
