"""The token embedding of both layouts: value embedding + sinusoidal position + calendar features.

token_t = value(x)_t + P[t] + W_cal m_t, then dropout, where

- ``value`` is either ``linear`` (a Linear(C -> d_model) of step t alone: token t depends on
  no later step, the suite's choice for a causal stack) or ``circular_conv`` (the anchor's
  ``TokenEmbedding``: Conv1d(C -> d_model, kernel 3, circular padding, no bias, Kaiming-normal
  init), token t = W_0 x_{t-1} + W_1 x_t + W_2 x_{t+1}, indices modulo the sequence length,
  so the first token also reads the last step and the last token the first one);
- P[t] is the fixed sine/cosine table (:func:`aaren_bench.nn.embed.sinusoidal`), restarting
  at 0 for every sequence that is embedded (the anchor's encoder and decoder inputs both start
  at position 0);
- W_cal is a Linear(F -> d_model) without bias over the calendar features (the anchor's
  ``TimeFeatureEmbedding``, ``embed=timeF``).

Placeholders (``unknown`` True; only with ``placeholders=True``) get a learned vector instead
of a value embedding (the suite's ``head=decoder``); the anchor feeds zeros as values instead.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from aaren_bench.nn.embed import sinusoidal

VALUE_EMBEDDINGS = ("linear", "circular_conv")


class CircularConv(nn.Module):
    """(B, N, C) -> (B, N, D): Conv1d with kernel 3 and circular padding over time, no bias."""

    def __init__(self, n_channels: int, d_model: int):
        super().__init__()
        self.conv = nn.Conv1d(n_channels, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="leaky_relu")  # as the anchor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class DataEmbedding(nn.Module):
    """values (B, N, C), marks (B, N, F), unknown (B, N) bool or None -> tokens (B, N, D)."""

    def __init__(self, n_channels: int, n_marks: int, d_model: int, dropout: float, max_len: int,
                 value: str = "linear", placeholders: bool = False):
        super().__init__()
        if value not in VALUE_EMBEDDINGS:
            raise ValueError(f"task.value_embedding must be one of {VALUE_EMBEDDINGS}, got {value!r}")
        self.value = nn.Linear(n_channels, d_model) if value == "linear" else CircularConv(n_channels, d_model)
        self.calendar = nn.Linear(n_marks, d_model, bias=False)
        self.unknown = nn.Parameter(torch.zeros(d_model)) if placeholders else None
        self.register_buffer("positions", sinusoidal(torch.arange(max_len), d_model), persistent=False)  # (max_len, D)
        self.drop = nn.Dropout(dropout)

    def forward(self, values: Tensor, marks: Tensor, unknown: Tensor | None = None) -> Tensor:
        N = values.shape[1]
        if N > self.positions.shape[0]:
            raise ValueError(f"sequence of {N} tokens exceeds the position table ({self.positions.shape[0]})")
        v = self.value(values)  # (B, N, D)
        if unknown is not None:
            if self.unknown is None:
                raise ValueError("this embedding was built without placeholders (placeholders=False)")
            v = torch.where(unknown[..., None], self.unknown.to(v.dtype), v)
        return self.drop(v + self.positions[:N] + self.calendar(marks))
