"""Compiled training: every backbone's forward, with a padding mask, is one graph without breaks,
and its outputs and gradients equal eager ones. (Graphs through ``aot_eager``: autograd traced
as inductor would see it, without compiling C++ on a 2-core CI; the device check times inductor.)"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from omegaconf import OmegaConf

from aaren_bench.nn import build_backbone
from aaren_bench.study import compose_config

MIXERS = ["aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt"]


def _backbone(mixer: str, compile: bool = False):
    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(name=mixer, mixer=mixer, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0,
                                norm_first=True, compile=compile))
    return build_backbone(cfg).train()


def _inputs(N: int = 24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, N, 16, generator=g)
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[0, N // 2:] = False  # right padding
    mask[2, 5:] = False
    return x, mask


@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_with_mask_is_one_graph(mixer, one_thread):
    dynamo.reset()
    explained = dynamo.explain(_backbone(mixer))(*_inputs())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_right_padded_transformer_is_one_graph_without_a_mask():
    """The promise of right padding takes the fused causal kernel, still in one graph."""
    dynamo.reset()
    x, mask = _inputs()
    explained = dynamo.explain(_backbone("transformer"))(x, mask, padding="right")
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    sdpa = [n for g in explained.graphs for n in g.graph.nodes if n.target is torch._C._nn.scaled_dot_product_attention]
    assert sdpa and all(n.kwargs.get("is_causal") and n.kwargs.get("attn_mask") is None for n in sdpa), sdpa


@pytest.mark.parametrize("mixer", MIXERS)
def test_compiled_equals_eager_outputs_and_gradients(mixer, one_thread):
    dynamo.reset()
    eager = _backbone(mixer)
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager", fullgraph=True)  # fullgraph: a break would be an error
    x, mask = _inputs()
    w = torch.randn(3, x.shape[1], 16, generator=torch.Generator().manual_seed(2)) * mask[..., None]
    outs = []
    for model in (eager, compiled):
        xi = x.clone().requires_grad_()
        y, _ = model(xi, mask)
        (y * w).sum().backward()
        outs.append((y.detach(), xi.grad, [p.grad for p in model.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = outs
    torch.testing.assert_close(y1 * mask[..., None], y0 * mask[..., None], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-5)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compile_is_an_option_neutral_in_the_cell_key():
    plain = compose_config(["model=aaren"])
    compiled = compose_config(["model=aaren", "model.compile=true"])
    assert plain.cell == compiled.cell
    backbone = build_backbone(compiled.model)
    assert backbone._compiled_call_impl is not None  # nn.Module.compile in place
    assert build_backbone(plain.model)._compiled_call_impl is None
    assert [n for n, _ in backbone.named_parameters()] == [n for n, _ in build_backbone(plain.model).named_parameters()]
