"""The backbones: one stack of identical blocks around a token mixer.

``Backbone(mixer=factory, d_model, ...)`` with ``factory(d_model) -> mixer`` (e.g.
``mixer_factory("aaren", n_heads=8)``); ``build_backbone(model_cfg)`` builds it from a
model config (``conf/model/*.yaml``). The block (norms, feed-forward, residuals,
dropout) is shared; only the mixer differs. Post-LN by default (``norm_first=False``,
as ``torch.nn.TransformerEncoderLayer`` and the paper's parameter count);
``norm_first=True`` gives a pre-LN stack with a final LayerNorm.

A task asks for ``d_model`` and calls ``forward`` (parallel) or ``init_state`` / ``step``
(streaming, one token at a time); it never needs to know which mixer it holds. Both
return ``(output, state)``; the state is a :class:`BackboneState` (one mixer state per
layer) that knows its size in bytes.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from aaren_bench.nn.mixers import check_padding, mixer_factory

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
# model-config keys the backbone itself takes; every other key is an option of the mixer
_BACKBONE_KEYS = ("d_model", "n_layers", "d_ff", "dropout", "activation", "norm_first", "norm_eps", "ff_dropout", "init")
# init schemes of the stack (an anchor's, under its protocol): default keeps PyTorch's
INITS = ("default", "gpt2", "xavier_attn")


@dataclass
class BackboneState:
    """The streaming state of a backbone: one mixer state per layer, bottom first."""

    layers: list[Any]

    def nbytes(self) -> int:
        return sum(st.nbytes() for st in self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


class Block(nn.Module):
    """Mixer and feed-forward with residuals, dropout and LayerNorms (post-LN unless ``norm_first``).

    ``ff_dropout``: a dropout inside the feed-forward after the activation (TSLib, THP); GPT-2
    and min-DT have none there (``False``). ``norm_eps``: the LayerNorms' epsilon (THP: 1e-6).
    """

    def __init__(self, mixer: nn.Module, d_model: int, d_ff: int, dropout: float, activation: str, norm_first: bool,
                 norm_eps: float = 1e-5, ff_dropout: bool = True):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.mixer = mixer
        inner = [nn.Dropout(dropout)] if ff_dropout else []
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), _ACTIVATIONS[activation](), *inner, nn.Linear(d_ff, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model, eps=norm_eps), nn.LayerNorm(d_model, eps=norm_eps)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm_first = norm_first
        # a mixer that can use the mask's layout says so by taking ``padding`` (mixers.PADDINGS)
        self.takes_padding = "padding" in inspect.signature(mixer.forward).parameters

    def _around(self, x: Tensor, mix) -> tuple[Tensor, Any]:
        """The block's shared arithmetic around a mixer call ``mix(h) -> (y, state)``."""
        if self.norm_first:
            y, state = mix(self.norm1(x))
            x = x + self.drop1(y)
            x = x + self.drop2(self.ff(self.norm2(x)))
        else:
            y, state = mix(x)
            x = self.norm1(x + self.drop1(y))
            x = self.norm2(x + self.drop2(self.ff(x)))
        return x, state

    def forward(self, x: Tensor, mask: Tensor | None = None, state=None, output_state: bool = False,
                padding: str = "any"):
        check_padding(padding)
        told = {"padding": padding} if self.takes_padding else {}
        return self._around(x, lambda h: self.mixer(h, mask, state, output_state, **told))

    def step(self, x_t: Tensor, state, mask_t: Tensor | None = None):
        return self._around(x_t, lambda h: self.mixer.step(h, state, mask_t))


class Backbone(nn.Module):
    """A sequence model (B, N, d_model) -> (B, N, d_model): ``n_layers`` blocks around ``mixer(d_model)``."""

    def __init__(
        self,
        mixer: Callable[[int], nn.Module],
        d_model: int = 128,
        n_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.1,
        activation: str = "gelu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        ff_dropout: bool = True,
        init: str = "default",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r} (model.init)")
        if not callable(mixer):
            raise TypeError(f"mixer must be a factory d_model -> mixer, e.g. mixer_factory('aaren', n_heads=8); "
                            f"got {mixer!r} (build from a config with build_backbone)")
        self.d_model = d_model
        self.blocks = nn.ModuleList(
            Block(mixer(d_model), d_model, d_ff, dropout, activation, norm_first, norm_eps, ff_dropout)
            for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model, eps=norm_eps) if norm_first else nn.Identity()
        init_stack(self, init)

    def forward(self, x: Tensor, mask: Tensor | None = None, state: BackboneState | None = None,
                output_state: bool = False, padding: str = "any") -> tuple[Tensor, BackboneState | None]:
        """x (B, N, D), mask (B, N) True at valid tokens -> (y (B, N, D), final state or None).

        ``state``: the state after an earlier prefix (from ``output_state`` or ``step``);
        y then continues it, as one forward over prefix + x would.
        ``padding``: what the caller knows of the mask's layout, where the batch was made:
        ``"right"`` promises that each row's valid tokens come first (a prefix), ``"any"``
        promises nothing. The promise is never checked here (that would read the mask on the
        host); with it a causal mixer may skip the mask, since no valid position sees a later
        one (see :data:`aaren_bench.nn.mixers.PADDINGS`). Outputs at padded positions are then
        unspecified (finite): read only the valid ones.
        """
        check_padding(padding)
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"backbone expects (batch, length, {self.d_model}); got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be {tuple(x.shape[:2])} (batch, length) with True at valid tokens; "
                             f"got {tuple(mask.shape)}")
        layers = self._layers(state)
        out = []
        for block, st in zip(self.blocks, layers):
            x, st = block(x, mask, st, output_state, padding=padding)
            out.append(st)
        return self.final_norm(x), (BackboneState(out) if output_state else None)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> BackboneState:
        """The empty history (Aaren: (m, c, a) per layer; Transformer: an empty KV cache per layer)."""
        return BackboneState([b.mixer.init_state(batch, device=device, dtype=dtype) for b in self.blocks])

    def step(self, x_t: Tensor, state: BackboneState, mask_t: Tensor | None = None) -> tuple[Tensor, BackboneState]:
        """One token x_t (B, D), mask_t (B,) -> (y_t (B, D), new state). Equals ``forward`` token by token."""
        out = []
        for block, st in zip(self.blocks, self._layers(state)):
            x_t, st = block.step(x_t, st, mask_t)
            out.append(st)
        return self.final_norm(x_t), BackboneState(out)

    def _layers(self, state: BackboneState | None) -> list[Any]:
        if state is None:
            return [None] * len(self.blocks)
        if not isinstance(state, BackboneState) or len(state) != len(self.blocks):
            raise ValueError(f"state must be a BackboneState of {len(self.blocks)} layers (from init_state, step or "
                             f"forward(..., output_state=True)); got {type(state).__name__}")
        return state.layers


def init_stack(stack: nn.Module, scheme: str) -> None:
    """Initialise a stack's weights by an anchor's scheme (``INITS``), in place.

    gpt2: every Linear weight N(0, 0.02) with zero bias, every LayerNorm 1 / 0 (kzl's
    ``GPT2PreTrainedModel._init_weights``, with no scaled residual projections);
    xavier_attn: the attention projections' weights Xavier-uniform, biases as built
    (THP's ``MultiHeadAttention`` in Meta TPP); default: PyTorch's own.
    """
    if scheme == "gpt2":
        for m in stack.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    elif scheme == "xavier_attn":
        for name, m in stack.named_modules():
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj"):
                nn.init.xavier_uniform_(m.weight)


def state_nbytes(state: BackboneState) -> int:
    """Bytes held by a streaming state (``state.nbytes()``)."""
    return state.nbytes()


def build_backbone(cfg) -> Backbone:
    """Build from a model config (``conf/model/*.yaml``).

    ``mixer`` names the registered mixer; d_model, n_layers, d_ff, dropout, activation,
    norm_first, norm_eps, ff_dropout and init shape the stack; ``compile`` (default false) compiles
    the forward (:func:`compile_backbone`); every other key except ``name`` (n_heads, scan_chunk,
    causal, ...) is passed to the mixer, which rejects options it does not take.
    """
    cfg = {k: cfg[k] for k in cfg}  # a plain dict (resolves OmegaConf interpolations)
    if "mixer" not in cfg:
        raise ValueError(f"the model config needs `mixer:` (a registered mixer, e.g. aaren or transformer); "
                         f"got keys {sorted(cfg)}")
    options = {k: v for k, v in cfg.items() if k not in ("name", "mixer", "compile", *_BACKBONE_KEYS)}
    backbone = Backbone(
        mixer_factory(cfg["mixer"], **options),
        d_model=cfg["d_model"],
        n_layers=cfg["n_layers"],
        d_ff=cfg["d_ff"],
        dropout=cfg["dropout"],
        activation=cfg.get("activation", "gelu"),
        norm_first=cfg.get("norm_first", False),
        norm_eps=cfg.get("norm_eps", 1e-5),
        ff_dropout=cfg.get("ff_dropout", True),
        init=cfg.get("init", "default"),
    )
    if cfg.get("compile", False):
        compile_backbone(backbone)
    return backbone


def compile_backbone(backbone: Backbone) -> Backbone:
    """Compile the parallel ``forward`` in place (``torch.compile``; ``model.compile=true``).

    Every backbone's forward, masks included, is one graph without breaks (no host reads), so
    it compiles whole; outputs and gradients equal eager ones to float tolerance (tested).
    ``step`` stays eager (one token at a time, read by the host anyway). The parameters and their
    names are unchanged: checkpoints load either way. Speed only, never the result: neutral in
    the cell key.
    """
    backbone.compile()
    return backbone
