"""The two backbones: one stack of identical blocks around a chosen token mixer.

``Backbone(mixer="aaren" | "transformer", ...)``. The block (norms, feed-forward,
residuals, dropout) is shared; only the mixer differs. Post-LN by default
(``norm_first=False``, as ``torch.nn.TransformerEncoderLayer`` and the paper's parameter
count); ``norm_first=True`` gives a pre-LN stack with a final LayerNorm.

A task asks for ``d_model`` and calls ``forward`` (parallel) or ``init_state`` / ``step``
(streaming, one token at a time); it never needs to know which mixer it holds.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from aaren_bench.nn.mixers import MIXERS, AarenMixer, KVCache
from aaren_bench.ops import ScanState

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, d_model: int, d_ff: int, dropout: float, activation: str, norm_first: bool):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.mixer = mixer
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), _ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm_first = norm_first

    def _around(self, x: Tensor, mix):
        """The block's shared arithmetic around a mixer call ``mix(h) -> (y, extra)``."""
        if self.norm_first:
            y, extra = mix(self.norm1(x))
            x = x + self.drop1(y)
            x = x + self.drop2(self.ff(self.norm2(x)))
        else:
            y, extra = mix(x)
            x = self.norm1(x + self.drop1(y))
            x = self.norm2(x + self.drop2(self.ff(x)))
        return x, extra

    def forward(self, x: Tensor, mask: Tensor | None = None, return_state: bool = False):
        if return_state:
            return self._around(x, lambda h: self.mixer(h, mask, return_state=True))
        return self._around(x, lambda h: (self.mixer(h, mask), None))[0]

    def step(self, x_t: Tensor, state, mask_t: Tensor | None = None):
        return self._around(x_t, lambda h: self.mixer.step(h, state, mask_t))


class Backbone(nn.Module):
    """A causal sequence model: (B, N, d_model) -> (B, N, d_model)."""

    def __init__(
        self,
        mixer: str = "aaren",
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 8,
        d_ff: int = 256,
        dropout: float = 0.1,
        activation: str = "gelu",
        norm_first: bool = False,
        scan_chunk: int = 32,
    ):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown backbone {mixer!r}; choose one of {sorted(MIXERS)} (model=aaren or model=transformer)")
        self.kind, self.d_model = mixer, d_model

        def make_mixer():
            if mixer == "aaren":
                return AarenMixer(d_model, n_heads, scan_chunk=scan_chunk)
            return MIXERS[mixer](d_model, n_heads)

        self.blocks = nn.ModuleList(
            Block(make_mixer(), d_model, d_ff, dropout, activation, norm_first) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False):
        """x (B, N, D), padding_mask (B, N) True at valid tokens -> (B, N, D) [, state]."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"backbone expects (batch, length, {self.d_model}); got {tuple(x.shape)}")
        if padding_mask is not None and padding_mask.shape != x.shape[:2]:
            raise ValueError(f"padding_mask must be {tuple(x.shape[:2])} (batch, length); got {tuple(padding_mask.shape)}")
        states = []
        for block in self.blocks:
            if return_state:
                x, st = block(x, padding_mask, return_state=True)
                states.append(st)
            else:
                x = block(x, padding_mask)
        x = self.final_norm(x)
        return (x, states) if return_state else x

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> list[Any]:
        """The empty-history state: one entry per layer (Aaren: (m, c, a); Transformer: KV cache)."""
        return [b.mixer.init_state(batch, device=device, dtype=dtype) for b in self.blocks]

    def step(self, x_t: Tensor, state: list[Any], mask_t: Tensor | None = None):
        """One token x_t (B, D) -> (y_t (B, D), new state). Equals ``forward`` token by token."""
        new_state = []
        for block, st in zip(self.blocks, state):
            x_t, st = block.step(x_t, st, mask_t)
            new_state.append(st)
        return self.final_norm(x_t), new_state


def state_nbytes(state: list[Any]) -> int:
    """Bytes held by a streaming state, measured from its tensors."""
    total = 0
    for st in state:
        if isinstance(st, KVCache):
            total += st.nbytes()
        elif isinstance(st, ScanState):
            total += sum(t.numel() * t.element_size() for t in st)
        else:
            raise TypeError(f"unknown state entry {type(st).__name__}")
    return total


def build_backbone(cfg) -> Backbone:
    """Build from a model config (``conf/model/*.yaml``): name, d_model, n_layers, ..."""
    return Backbone(
        mixer=cfg.name,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
        activation=cfg.get("activation", "gelu"),
        norm_first=cfg.get("norm_first", False),
        scan_chunk=cfg.get("scan_chunk", 32),
    )
