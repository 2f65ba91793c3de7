"""Token mixers: the only part in which the two backbones differ.

Both mixers map x (B, N, D) to y (B, N, D) causally. At position k the output is
attention over the *valid* tokens at or before k (a padding mask removes tokens as
keys; a position with no valid token at or before it outputs 0). Both have the same
projections (query, key, value and output, with bias), so their parameter counts
differ only by Aaren's learned query token.

Each mixer has two ways to run:
- ``forward(x, mask, return_state)``: the whole sequence in parallel (training);
- ``step(x_t, state, mask_t)``: one token on an explicit state (streaming). Aaren's state
  is (m, c, a) of constant size; the Transformer's is a key/value cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.ops import ScanState, init_state, scan, scan_step


class _Projections(nn.Module):
    """Q, K, V and output projections shared by both mixers."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, t: Tensor) -> Tensor:
        """(B, N, D) -> (B, H, N, Dh)"""
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.d_head).transpose(1, 2)

    def merge(self, t: Tensor) -> Tensor:
        """(B, H, N, Dh) -> (B, N, D)"""
        B, H, N, Dh = t.shape
        return t.transpose(1, 2).reshape(B, N, H * Dh)


class AarenMixer(_Projections):
    """Attention of one learned query over every prefix, computed as a prefix scan.

    The query token q0 (D,) is a parameter of the layer; it goes through the query
    projection, so each head has its own query. Keys and values are projections of the
    layer's input, i.e. the previous layer's outputs.
    """

    def __init__(self, d_model: int, n_heads: int, scan_chunk: int = 32):
        super().__init__(d_model, n_heads)
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))
        self.scan_chunk = scan_chunk

    def _q(self) -> Tensor:
        return self.q_proj(self.query).view(self.n_heads, self.d_head)  # (H, Dh)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_state: bool = False):
        k, v = self.heads(self.k_proj(x)), self.heads(self.v_proj(x))  # (B, H, N, Dh)
        q = self._q().to(k.dtype)
        s = torch.einsum("bhnd,hd->bhn", k, q) / math.sqrt(self.d_head)  # (B, H, N)
        out = scan(s, v, mask, chunk=self.scan_chunk, return_state=return_state)
        o, state = out if return_state else (out, None)
        y = self.out_proj(self.merge(o))
        return (y, state) if return_state else y

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> ScanState:
        return init_state(batch, self.n_heads, self.d_head, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: ScanState, mask_t: Tensor | None = None):
        B = x_t.shape[0]
        k = self.k_proj(x_t).view(B, self.n_heads, self.d_head)
        v = self.v_proj(x_t).view(B, self.n_heads, self.d_head)
        s = (k * self._q().to(k.dtype)).sum(-1) / math.sqrt(self.d_head)  # (B, H)
        o, state = scan_step(s, v, state, mask_t)
        return self.out_proj(o.reshape(B, self.d_model)), state


@dataclass
class KVCache:
    """Keys and values seen so far, in buffers that grow by doubling.

    k, v: (B, H, capacity, Dh); valid: (B, capacity) bool; length: tokens stored.
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

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.valid))


class CausalSelfAttention(_Projections):
    """Causal multi-head softmax self-attention with ``scaled_dot_product_attention``."""

    def forward(self, x: Tensor, mask: Tensor | None = None, return_state: bool = False):
        B, N, _ = x.shape
        q, k, v = (self.heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if mask is None or bool(mask.all()):  # no padding: the fused causal path
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            valid = mask.bool()
            seen = valid.cumsum(-1) > 0  # (B, N): some valid token at or before k
            causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
            allowed = causal & valid[:, None, :]
            # rows with no valid key attend to themselves (no NaN), then are zeroed
            eye = torch.eye(N, dtype=torch.bool, device=x.device)
            allowed = allowed | (eye & ~seen[:, :, None])
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
            o = o * seen[:, None, :, None].to(o.dtype)
        y = self.out_proj(self.merge(o))
        if not return_state:
            return y
        valid = torch.ones(B, N, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        return y, KVCache(k.contiguous(), v.contiguous(), valid.contiguous(), N)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> KVCache:
        z = torch.zeros(batch, self.n_heads, 0, self.d_head, device=device, dtype=dtype)
        return KVCache(z, z.clone(), torch.zeros(batch, 0, dtype=torch.bool, device=device), 0)

    def step(self, x_t: Tensor, state: KVCache, mask_t: Tensor | None = None):
        B = x_t.shape[0]
        q, k, v = (p(x_t).view(B, self.n_heads, 1, self.d_head) for p in (self.q_proj, self.k_proj, self.v_proj))
        valid_t = torch.ones(B, dtype=torch.bool, device=x_t.device) if mask_t is None else mask_t.bool()
        state = state.append(k[:, :, 0].to(state.k.dtype), v[:, :, 0].to(state.v.dtype), valid_t)
        n = state.length
        keys_valid = state.valid[:, :n]  # (B, n)
        seen = keys_valid.any(-1)  # (B,)
        allowed = keys_valid.clone()
        allowed[:, -1] |= ~seen  # no valid key yet: attend to itself, then zero
        o = F.scaled_dot_product_attention(
            q, state.k[:, :, :n].to(q.dtype), state.v[:, :, :n].to(q.dtype), attn_mask=allowed[:, None, None, :]
        )  # (B, H, 1, Dh)
        o = o * seen[:, None, None, None].to(o.dtype)
        return self.out_proj(o.reshape(B, self.d_model)), state


MIXERS = {"aaren": AarenMixer, "transformer": CausalSelfAttention}
