"""The decoder's layers of the anchor's layout (``task.layout=encoder_decoder``, :class:`tasks.forecast.model.EncoderDecoder`):
Time-Series-Library's Transformer at a68756f.

    x (B, L, C) --[DataEmbedding: circular conv + position + calendar, dropout]--> (B, L, D)
      --> encoder: the backbone (n_layers blocks; its self-attention is the mixer) --> LayerNorm
    [x[:, L - label_len:], zeros (B, pred_len, C)] --[a second DataEmbedding]--> (B, label_len + pred_len, D)
      --> decoder_layers x DecoderLayer(causal self-mixer, softmax cross-attention over every
          encoder step, feed-forward; post-LN) --> LayerNorm --> Linear(D -> C) per step
      --> the last pred_len steps (B, pred_len, C)

The encoder is the backbone the run loop built (``Backbone``: post-LN blocks of mixer,
dropout, residual, LayerNorm, Linear-act-dropout-Linear feed-forward, dropout, residual,
LayerNorm: the anchor's ``EncoderLayer`` with its kernel-1 convolutions written as Linear).
With ``model=transformer`` under ``protocol=tslib`` the mixer is bidirectional
(``model.causal=false``), as the anchor's encoder (``FullAttention(mask_flag=False)``); the
causal-only mixers (aaren, linear_attn, mamba2, mlstm, ttt) stay causal. The decoder's self-attention is a
causal mixer of the same kind (``decoder_mixer``: the anchor's ``FullAttention(mask_flag=True)``
for the transformer, the mixer itself for the others); its cross-attention is softmax attention
for every backbone (:class:`CrossAttention`).

``instance_norm`` (off in the anchor, on under ``protocol=paper``): the encoder input and the
decoder's known steps are the normalised window, the output is de-normalised (as the anchor's
``Nonstationary_Transformer`` does around the same layout).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class CrossAttention(nn.Module):
    """Multi-head softmax attention of decoder queries over every encoder step (no mask).

    Query, key, value and output projections with bias, scale 1/sqrt(d_head), dropout on the
    attention weights while training (the anchor's ``AttentionLayer(FullAttention(False))``).
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head, self.attn_dropout = n_heads, d_model // n_heads, attn_dropout
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def _heads(self, t: Tensor) -> Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, N, Dh)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """x (B, Nq, D) queries, memory (B, Nk, D) keys and values -> (B, Nq, D)."""
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        B, H, N, Dh = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, N, H * Dh))


class DecoderLayer(nn.Module):
    """x = LN(x + drop(self_mix(x))); x = LN(x + drop(cross(x, memory))); x = LN(x + drop(W2 drop(act(W1 x))))."""

    def __init__(self, self_mixer: nn.Module, d_model: int, n_heads: int, d_ff: int, dropout: float,
                 activation: str = "gelu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.self_mixer = self_mixer
        self.cross = CrossAttention(d_model, n_heads, attn_dropout=dropout)
        self.ff1, self.ff2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        y, _ = self.self_mixer(x)  # causal: step t sees decoder steps <= t
        x = self.norm1(x + self.drop(y))
        x = self.norm2(x + self.drop(self.cross(x, memory)))
        y = self.drop(self.ff2(self.drop(self.act(self.ff1(x)))))
        return self.norm3(x + y)
