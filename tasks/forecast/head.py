"""Around the backbone: instance normalisation, the token embedding, and the forecasting heads.

The same :class:`Forecaster` wraps either backbone; only ``backbone`` differs. Two heads:

- ``last`` (default): the backbone reads the ``seq_len`` input tokens; the output at the
  last position (which has seen the whole window, causally) is projected to the whole
  horizon, (D,) -> (pred_len * C,). For Aaren this is reading the RNN's final state.
- ``decoder``: the backbone reads ``seq_len`` input tokens, then the last ``label_len``
  input steps again, then ``pred_len`` placeholder tokens (no value, a learned "unknown"
  vector, the position and the calendar features of the step to forecast); each
  placeholder's output is projected to its step's C values, (D,) -> (C,).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from aaren_bench.nn.embed import sinusoidal

HEADS = ("last", "decoder")


def instance_norm(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, L, C) -> (normalised x, mean (B, 1, C), std (B, 1, C)), statistics over time per window and channel."""
    mean = x.mean(1, keepdim=True)
    std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + eps)
    return (x - mean) / std, mean, std


class Embedding(nn.Module):
    """token = value embedding + position + calendar features, then dropout.

    values (B, N, C), marks (B, N, F), unknown (B, N) bool: True where the value is unknown
    (placeholders), which then get a learned vector instead of a value embedding.
    """

    def __init__(self, n_channels: int, n_marks: int, d_model: int, dropout: float, max_len: int = 4096):
        super().__init__()
        self.value = nn.Linear(n_channels, d_model)
        self.calendar = nn.Linear(n_marks, d_model, bias=False)
        self.unknown = nn.Parameter(torch.zeros(d_model))
        # (max_len, D) fixed sine/cosine table (Vaswani et al.; TSLib's PositionalEmbedding)
        self.register_buffer("positions", sinusoidal(torch.arange(max_len), d_model), persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, values: Tensor, marks: Tensor, unknown: Tensor | None = None) -> Tensor:
        N = values.shape[1]
        if N > self.positions.shape[0]:
            raise ValueError(f"sequence of {N} tokens exceeds the position table ({self.positions.shape[0]})")
        v = self.value(values)  # (B, N, D)
        if unknown is not None:
            v = torch.where(unknown[..., None], self.unknown.to(v.dtype), v)
        return self.drop(v + self.positions[:N] + self.calendar(marks))


class Forecaster(nn.Module):
    """(x (B, L, C), x_mark (B, L, F), y_mark (B, label_len + pred_len, F)) -> forecast (B, pred_len, C)."""

    def __init__(self, backbone: nn.Module, n_channels: int, n_marks: int, seq_len: int, label_len: int,
                 pred_len: int, head: str = "last", dropout: float = 0.1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"task.head must be one of {HEADS}, got {head!r}")
        d = backbone.d_model
        self.backbone, self.head = backbone, head
        self.seq_len, self.label_len, self.pred_len, self.n_channels = seq_len, label_len, pred_len, n_channels
        self.embed = Embedding(n_channels, n_marks, d, dropout, max_len=seq_len + label_len + pred_len)
        self.proj = nn.Linear(d, pred_len * n_channels if head == "last" else n_channels)

    def forward(self, x: Tensor, x_mark: Tensor, y_mark: Tensor) -> Tensor:
        B, L, C = x.shape
        if L != self.seq_len or C != self.n_channels:
            raise ValueError(f"expected input (batch, {self.seq_len}, {self.n_channels}); got {tuple(x.shape)}")
        z, mean, std = instance_norm(x)  # (B, L, C), (B, 1, C) x2
        if self.head == "last":
            h, _ = self.backbone(self.embed(z, x_mark))  # (B, L, D)
            out = self.proj(h[:, -1]).view(B, self.pred_len, C)
        else:
            known = z[:, L - self.label_len :]  # (B, label_len, C)
            values = torch.cat([z, known, z.new_zeros(B, self.pred_len, C)], 1)  # (B, L + label + pred, C)
            marks = torch.cat([x_mark, y_mark], 1)  # (B, L + label + pred, F)
            unknown = torch.zeros(values.shape[:2], dtype=torch.bool, device=x.device)
            unknown[:, -self.pred_len :] = True
            h, _ = self.backbone(self.embed(values, marks, unknown))  # (B, N, D)
            out = self.proj(h[:, -self.pred_len :])  # (B, pred_len, C)
        return out * std + mean  # de-normalised forecast
