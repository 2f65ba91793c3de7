"""The anchor's layout (``task.layout=encoder_decoder``): Time-Series-Library's Transformer at a68756f.

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

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.forecast.embed import DataEmbedding
from tasks.forecast.head import count, instance_norm

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


class EncoderDecoder(nn.Module):
    """(x (B, L, C), x_mark (B, L, F), y_mark (B, label_len + pred_len, F)) -> forecast (B, pred_len, C)."""

    def __init__(self, encoder: nn.Module, decoder_mixer: Callable[[int], nn.Module], n_channels: int,
                 n_marks: int, seq_len: int, label_len: int, pred_len: int, n_heads: int, d_ff: int,
                 dropout: float = 0.1, activation: str = "gelu", decoder_layers: int = 1,
                 instance_norm: bool = False, value_embedding: str = "circular_conv"):
        super().__init__()
        d = encoder.d_model
        self.seq_len, self.label_len, self.pred_len, self.n_channels = seq_len, label_len, pred_len, n_channels
        self.instance_norm = instance_norm
        self.enc_embed = DataEmbedding(n_channels, n_marks, d, dropout, max_len=seq_len, value=value_embedding)
        self.dec_embed = DataEmbedding(n_channels, n_marks, d, dropout, max_len=label_len + pred_len,
                                       value=value_embedding)
        self.backbone = encoder
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(
            DecoderLayer(decoder_mixer(d), d, n_heads, d_ff, dropout, activation) for _ in range(decoder_layers)
        )
        self.dec_norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, n_channels)

    def parameter_split(self) -> dict[str, int]:
        """embedding: both embeddings; backbone: the encoder's blocks; head: the encoder's final
        LayerNorm, the decoder (its self-mixer, cross-attention, feed-forward, norms) and the projection."""
        return {"embedding": count(self.enc_embed, self.dec_embed), "backbone": count(self.backbone),
                "head": count(self.enc_norm, self.decoder, self.dec_norm, self.proj)}

    def encode(self, z: Tensor, x_mark: Tensor) -> Tensor:
        """(B, L, C), (B, L, F) -> encoder output (B, L, D)."""
        h, _ = self.backbone(self.enc_embed(z, x_mark))
        return self.enc_norm(h)

    def decode(self, dec_in: Tensor, y_mark: Tensor, memory: Tensor) -> Tensor:
        """(B, label_len + pred_len, C), (B, label_len + pred_len, F), (B, L, D) -> (B, label_len + pred_len, C)."""
        h = self.dec_embed(dec_in, y_mark)
        for layer in self.decoder:
            h = layer(h, memory)
        return self.proj(self.dec_norm(h))

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        B, L, C = x.shape
        if L != self.seq_len or C != self.n_channels:
            raise ValueError(f"expected input (batch, {self.seq_len}, {self.n_channels}); got {tuple(x.shape)}")
        z, mean, std = instance_norm(x) if self.instance_norm else (x, None, None)
        memory = self.encode(z, x_mark)  # (B, L, D)
        dec_in = torch.cat([z[:, L - self.label_len :], z.new_zeros(B, self.pred_len, C)], 1)  # known + zeros
        out = self.decode(dec_in, y_mark, memory)[:, -self.pred_len :]  # (B, pred_len, C)
        return out * std + mean if self.instance_norm else out
