"""The forecasting networks: :class:`Forecaster` (the suite's layout, ``task.layout=stack``) and
:class:`EncoderDecoder` (the anchor's, ``task.layout=encoder_decoder``; its layers and their
derivation are in ``encdec.py``).

The suite's layout: one causal stack over the input window, then a head.

The same :class:`Forecaster` wraps every backbone; only ``backbone`` differs. Three heads
(``task.head``), each identical for every backbone:

- ``patch`` (default): the backbone reads the ``seq_len`` input tokens; its output at the last
  position h (which has seen the whole window; for Aaren the RNN's final state) is added to the
  embedding e_p of each horizon patch p of ``patch_len`` (S) steps (the input embedding's
  position and calendar parts of the patch's first step, no new parameters), and one MLP shared
  by all patches maps it to the patch's S x C values:
  y_p = W_2 drop(GELU(W_1 (h + e_p))), W_1 (D -> D), W_2 (D -> S C); the last patch is cut to
  the horizon. Parameters D^2 + D + (D + 1) S C: nothing grows with pred_len, and the backbone's
  cost does not either (it always reads seq_len tokens).
- ``last``: the same h projected by one Linear(D -> pred_len * C) to the whole horizon
  (D x pred_len x C parameters: 318 M for Traffic at 720 steps; kept for comparison).
- ``decoder``: the backbone reads the seq_len input tokens, the last ``label_len`` input steps
  again, then ``pred_len`` placeholder tokens (a learned "unknown" vector + position + calendar
  features of the step to forecast); each placeholder's output goes through one Linear(D -> C)
  shared by all steps. Few parameters, but the backbone reads seq_len + label_len + pred_len tokens.

``instance_norm`` (the paper's "normalized input", Liu et al. 2022): each input window is
standardised per channel with its own statistics, and the forecast de-normalised with them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from tasks.forecast.embed import DataEmbedding
from tasks.forecast.encdec import DecoderLayer

HEADS = ("patch", "last", "decoder")


def instance_norm(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, L, C) -> (normalised x, mean (B, 1, C), std (B, 1, C)), statistics over time per window and channel."""
    mean = x.mean(1, keepdim=True)
    std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + eps)
    return (x - mean) / std, mean, std


def count(*modules: nn.Module | nn.Parameter | None) -> int:
    """Parameters of modules (or single parameters), each counted once."""
    seen = {}
    for m in modules:
        if m is None:
            continue
        for p in ([m] if isinstance(m, nn.Parameter) else m.parameters()):
            seen[id(p)] = p.numel()
    return sum(seen.values())


class Forecaster(nn.Module):
    """(x (B, L, C), x_mark (B, L, F), y_mark (B, label_len + pred_len, F)) -> forecast (B, pred_len, C)."""

    def __init__(self, backbone: nn.Module, n_channels: int, n_marks: int, seq_len: int, label_len: int,
                 pred_len: int, head: str = "patch", dropout: float = 0.1, instance_norm: bool = True,
                 value_embedding: str = "linear", patch_len: int = 24):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"task.head must be one of {HEADS}, got {head!r}")
        if head == "decoder" and value_embedding != "linear":
            raise ValueError("task.head=decoder needs task.value_embedding=linear: a circular convolution over "
                             "input and placeholders would mix the placeholders into the last input token")
        d = backbone.d_model
        self.backbone, self.head, self.instance_norm = backbone, head, instance_norm
        if patch_len < 1:
            raise ValueError(f"task.patch_len must be a positive number of steps, got {patch_len}")
        self.seq_len, self.label_len, self.pred_len, self.n_channels = seq_len, label_len, pred_len, n_channels
        self.patch_len = patch_len
        self.embed = DataEmbedding(n_channels, n_marks, d, dropout, max_len=seq_len + label_len + pred_len,
                                   value=value_embedding, placeholders=head == "decoder")
        if head == "patch":
            self.proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, patch_len * n_channels))
        else:
            self.proj = nn.Linear(d, pred_len * n_channels if head == "last" else n_channels)

    def parameter_split(self) -> dict[str, int]:
        return {"embedding": count(self.embed), "backbone": count(self.backbone), "head": count(self.proj)}

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        B, L, C = x.shape
        if L != self.seq_len or C != self.n_channels:
            raise ValueError(f"expected input (batch, {self.seq_len}, {self.n_channels}); got {tuple(x.shape)}")
        z, mean, std = instance_norm(x) if self.instance_norm else (x, None, None)  # (B, L, C), (B, 1, C) x2
        if self.head == "decoder":
            known = z[:, L - self.label_len :]  # (B, label_len, C)
            values = torch.cat([z, known, z.new_zeros(B, self.pred_len, C)], 1)  # (B, L + label + pred, C)
            marks = torch.cat([x_mark, y_mark], 1)  # (B, L + label + pred, F)
            unknown = torch.zeros(values.shape[:2], dtype=torch.bool, device=x.device)
            unknown[:, -self.pred_len :] = True
            h, _ = self.backbone(self.embed(values, marks, unknown))  # (B, N, D)
            out = self.proj(h[:, -self.pred_len :])  # (B, pred_len, C)
        else:
            h, _ = self.backbone(self.embed(z, x_mark))  # (B, L, D)
            last = h[:, -1]  # (B, D): has seen the whole window
            if self.head == "last":
                out = self.proj(last).view(B, self.pred_len, C)
            else:
                starts = torch.arange(0, self.pred_len, self.patch_len, device=x.device)  # (P,) first step of each patch
                e = self.embed.positions[L + starts] + self.embed.calendar(y_mark[:, -self.pred_len :][:, starts])  # (B, P, D)
                out = self.proj(last[:, None] + e)  # (B, P, S * C)
                out = out.view(B, len(starts) * self.patch_len, C)[:, : self.pred_len]  # (B, pred_len, C)
        return out * std + mean if self.instance_norm else out


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
