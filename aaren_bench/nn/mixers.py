"""Token mixers: the only part in which the two backbones differ.

Every mixer has one signature for its two ways to run (the contract in CONTRACTS.md):

    mixer = SomeMixer(d_model, n_heads, **options)           # options from the model config
    y, state = mixer(x, mask=None, state=None, output_state=False)   # parallel (training)
    state = mixer.init_state(batch, device, dtype)                    # the empty history
    y_t, state = mixer.step(x_t, state, mask_t=None)                  # one token (streaming)

x (B, N, D), mask (B, N) True at valid tokens. ``state`` given to ``forward`` is the state
after an earlier prefix: the outputs continue it, exactly as one pass over prefix + x
would; the final state comes back only if ``output_state`` (else None). A masked token
never changes a state and never influences a valid output. A state is a small object of
tensors with ``.nbytes()``.

A mixer whose ``forward`` also takes ``padding`` (:data:`PADDINGS`) is told what the maker of
the batch knows of the mask's layout: ``"right"``: in every row the valid tokens come first,
then padding only; ``"any"``: nothing. It may use the promise to skip work (the causal
transformer keeps its fused kernel: under right padding no valid position sees a padded
one); the outputs at valid positions are the same either way, those at padded positions may
differ (finite). A mixer without the argument is never given it. The promise is never
checked on the device tensor: reading the mask on the host would stall a GPU.

At position k the output is attention over the *valid* tokens at or before k (a position
with no valid token at or before it outputs 0); only the transformer with
``causal=False`` looks ahead. Both mixers have the same projections (query, key, value,
output, with bias unless ``qkv_bias=False``, THP's): their parameter counts differ only by
Aaren's learned query token.

A new mixer joins the registry with one line, ``@register_mixer("name")`` above its class.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.ops import ScanState, init_state, scan, scan_step

MIXERS: dict[str, type[nn.Module]] = {}
PADDINGS = ("any", "right")  # what a caller may promise about a mask's layout (module docstring)


def check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS} (\"right\": every row's valid tokens come first, "
                         f"as a collate that pads at the end makes them; \"any\": no promise); got {padding!r}")


def register_mixer(name: str):
    """Class decorator: ``MIXERS[name] = cls`` (``model.mixer=name`` then builds it)."""

    def add(cls):
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} is already registered ({MIXERS[name].__name__})")
        MIXERS[name] = cls
        return cls

    return add


def mixer_factory(name: str, **options) -> Callable[[int], nn.Module]:
    """A factory ``d_model -> mixer`` for the registered mixer ``name`` with ``options``
    (n_heads, and e.g. scan_chunk, causal); options are checked here, not at first use."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)} (model.mixer)")
    cls = MIXERS[name]
    try:
        inspect.signature(cls).bind(0, **options)  # 0 stands for d_model
    except TypeError as err:
        takes = [p for p in inspect.signature(cls).parameters if p != "d_model"]
        raise ValueError(f"mixer {name!r} takes options {takes}; got {sorted(options)} ({err})") from None
    return functools.partial(cls, **options)


class _Projections(nn.Module):
    """Q, K, V and output projections shared by both mixers."""

    def __init__(self, d_model: int, n_heads: int, qkv_bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=qkv_bias)  # qkv_bias=False: THP's (Meta TPP)
        self.k_proj = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=qkv_bias)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, t: Tensor) -> Tensor:
        """(B, N, D) -> (B, H, N, Dh)"""
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.d_head).transpose(1, 2)

    def merge(self, t: Tensor) -> Tensor:
        """(B, H, N, Dh) -> (B, N, D)"""
        B, H, N, Dh = t.shape
        return t.transpose(1, 2).reshape(B, N, H * Dh)


@register_mixer("aaren")
class AarenMixer(_Projections):
    """Attention of one learned query over every prefix, computed as a prefix scan.

    The query token q0 (D,) is a parameter of the layer; it goes through the query
    projection, so each head has its own query. Keys and values are projections of the
    layer's input, i.e. the previous layer's outputs. The state is the scan's (m, c, a)
    (:class:`aaren_bench.ops.ScanState`): constant size however long the history.
    """

    def __init__(self, d_model: int, n_heads: int, scan_chunk: int = 32, causal: bool = True,
                 qkv_bias: bool = True, head_dropout: float = 0.0):
        if not causal:
            raise ValueError("the aaren mixer is causal by construction (a prefix scan): "
                             "model.causal=false is only for model=transformer")
        super().__init__(d_model, n_heads, qkv_bias)
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))
        self.scan_chunk = scan_chunk
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1); got {head_dropout}")
        self.head_drop = nn.Dropout(head_dropout)  # on the attention output before out_proj (min-DT's att_drop)

    def _q(self) -> Tensor:
        return self.q_proj(self.query).view(self.n_heads, self.d_head)  # (H, Dh)

    def forward(self, x: Tensor, mask: Tensor | None = None, state: ScanState | None = None,
                output_state: bool = False) -> tuple[Tensor, ScanState | None]:
        k, v = self.heads(self.k_proj(x)), self.heads(self.v_proj(x))  # (B, H, N, Dh)
        s = torch.einsum("bhnd,hd->bhn", k, self._q().to(k.dtype)) / math.sqrt(self.d_head)  # (B, H, N)
        out = scan(s, v, mask, chunk=self.scan_chunk, return_state=output_state, initial_state=state)
        o, state = out if output_state else (out, None)  # (B, H, N, Dh)
        return self.out_proj(self.head_drop(self.merge(o))), state

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> ScanState:
        return init_state(batch, self.n_heads, self.d_head, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: ScanState, mask_t: Tensor | None = None) -> tuple[Tensor, ScanState]:
        B = x_t.shape[0]
        k = self.k_proj(x_t).view(B, self.n_heads, self.d_head)  # (B, H, Dh)
        v = self.v_proj(x_t).view(B, self.n_heads, self.d_head)
        s = (k * self._q().to(k.dtype)).sum(-1) / math.sqrt(self.d_head)  # (B, H)
        o, state = scan_step(s, v, state, mask_t)  # (B, H, Dh)
        return self.out_proj(self.head_drop(o.reshape(B, self.d_model))), state


@dataclass
class KVCache:
    """Keys and values seen so far, in buffers that grow by doubling.

    k, v: (B, H, capacity, Dh); valid: (B, capacity) bool; length: tokens stored.
    ``append`` writes in place (amortised O(1) per token): keep using the returned cache.
    """

    k: Tensor
    v: Tensor
    valid: Tensor
    length: int = 0

    def append(self, k_t: Tensor, v_t: Tensor, valid_t: Tensor) -> "KVCache":
        cap = self.k.shape[2]
        if self.length == cap:  # grow: amortised O(1) per token
            new_cap = max(1, 2 * cap)
            grow = lambda t, dim: torch.cat(  # noqa: E731
                [t, t.new_zeros(*t.shape[:dim], new_cap - cap, *t.shape[dim + 1 :])], dim=dim
            )
            self.k, self.v, self.valid = grow(self.k, 2), grow(self.v, 2), grow(self.valid, 1)
        self.k[:, :, self.length] = k_t
        self.v[:, :, self.length] = v_t
        self.valid[:, self.length] = valid_t
        self.length += 1
        return self

    def stored(self) -> tuple[Tensor, Tensor, Tensor]:
        """The filled part: k, v (B, H, length, Dh), valid (B, length)."""
        n = self.length
        return self.k[:, :, :n], self.v[:, :, :n], self.valid[:, :n]

    def nbytes(self) -> int:
        """Bytes of the buffers (capacity, not only the filled part): grows with the history."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.valid))


@register_mixer("transformer")
class SelfAttention(_Projections):
    """Multi-head softmax self-attention with ``scaled_dot_product_attention``.

    ``causal=True`` (default): position k attends to the valid tokens at or before k, after
    any cached history (the state is a :class:`KVCache`). ``causal=False``: every position
    attends to every valid token of the sequence (padding is still masked as keys); such a
    layer has no streaming form, so ``step``, ``init_state`` and ``state`` raise.

    ``attn_dropout``: dropout on the attention weights in the parallel ``forward`` while
    training (0 by default; TSLib's ``FullAttention`` uses the model's dropout, so its protocol
    sets 0.1). ``head_dropout``: dropout on the attention output before the output projection
    (min-DT's ``att_drop``). ``step`` is for inference and never drops.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = True, attn_dropout: float = 0.0,
                 qkv_bias: bool = True, head_dropout: float = 0.0):
        super().__init__(d_model, n_heads, qkv_bias)
        for name, p in (("attn_dropout", attn_dropout), ("head_dropout", head_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {p}")
        self.causal = causal
        self.attn_dropout = float(attn_dropout)
        self.head_drop = nn.Dropout(head_dropout)

    def _p(self) -> float:
        return self.attn_dropout if self.training else 0.0

    def _need_causal(self, what: str) -> None:
        if not self.causal:
            raise ValueError(f"a bidirectional transformer (model.causal=false) sees the whole sequence at once: "
                             f"it cannot stream, so it has no {what}; use forward without state, or model.causal=true")

    def forward(self, x: Tensor, mask: Tensor | None = None, state: KVCache | None = None,
                output_state: bool = False, padding: str = "any") -> tuple[Tensor, KVCache | None]:
        B, N, _ = x.shape
        q, k, v = (self.heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, N, Dh)
        if not self.causal:
            if state is not None or output_state:
                self._need_causal("state")
            return self.out_proj(self.head_drop(self.merge(self._bidirectional(q, k, v, mask)))), None
        valid = torch.ones(B, N, dtype=torch.bool, device=x.device) if mask is None else mask.bool()  # (B, N)
        if state is not None and state.length:
            k0, v0, valid0 = state.stored()  # (B, H, P, Dh), (B, P)
            k, v = torch.cat([k0.to(k.dtype), k], 2), torch.cat([v0.to(v.dtype), v], 2)  # (B, H, P + N, Dh)
            valid = torch.cat([valid0, valid], 1)  # (B, P + N)
        P = k.shape[2] - N  # tokens of history
        # the fused causal path needs no history and either no mask or one padded on the right
        # (a valid query sees only earlier tokens, all valid; padded queries' outputs are unspecified).
        # Any other mask takes the masked path: telling them apart would read the mask on the host
        if P == 0 and (mask is None or padding == "right"):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._p())
        else:
            # query i (absolute position P + i) sees keys j <= P + i that are valid
            causal = torch.ones(N, P + N, dtype=torch.bool, device=x.device).tril(P)  # (N, P + N)
            allowed = causal & valid[:, None, :]  # (B, N, P + N)
            seen = allowed.any(-1)  # (B, N): some valid key at or before the query
            # rows with no valid key attend to themselves (no NaN), then are zeroed
            allowed[:, :, P:] |= torch.eye(N, dtype=torch.bool, device=x.device) & ~seen[:, :, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=self._p())  # (B, H, N, Dh)
            o = o * seen[:, None, :, None].to(o.dtype)
        y = self.out_proj(self.head_drop(self.merge(o)))
        if not output_state:
            return y, None
        return y, KVCache(k.contiguous(), v.contiguous(), valid.contiguous(), P + N)

    def _bidirectional(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """(B, H, N, Dh) x3 -> (B, H, N, Dh): every query over every valid key."""
        if mask is None:  # (a mask is never read on the host: see forward)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self._p())
        valid = mask.bool()  # (B, N)
        seen = valid.any(-1)  # (B,): a sequence with no valid token outputs 0
        allowed = valid | ~seen[:, None]  # (B, N)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :], dropout_p=self._p())
        return o * seen[:, None, None, None].to(o.dtype)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> KVCache:
        self._need_causal("init_state")
        z = torch.zeros(batch, self.n_heads, 0, self.d_head, device=device, dtype=dtype)
        return KVCache(z, z.clone(), torch.zeros(batch, 0, dtype=torch.bool, device=device), 0)

    def step(self, x_t: Tensor, state: KVCache, mask_t: Tensor | None = None) -> tuple[Tensor, KVCache]:
        self._need_causal("step")
        B = x_t.shape[0]
        q, k, v = (p(x_t).view(B, self.n_heads, 1, self.d_head) for p in (self.q_proj, self.k_proj, self.v_proj))
        valid_t = torch.ones(B, dtype=torch.bool, device=x_t.device) if mask_t is None else mask_t.bool()
        state = state.append(k[:, :, 0].to(state.k.dtype), v[:, :, 0].to(state.v.dtype), valid_t)
        keys, values, keys_valid = state.stored()  # (B, H, n, Dh), (B, n)
        seen = keys_valid.any(-1)  # (B,)
        allowed = keys_valid.clone()
        allowed[:, -1] |= ~seen  # no valid key yet: attend to itself, then zero
        o = F.scaled_dot_product_attention(
            q, keys.to(q.dtype), values.to(q.dtype), attn_mask=allowed[:, None, None, :]
        )  # (B, H, 1, Dh)
        o = o * seen[:, None, None, None].to(o.dtype)
        return self.out_proj(o.reshape(B, self.d_model)), state
