"""Embeddings shared by the task heads: the one sinusoidal encoding.

Used for step positions (classify; forecast's table, TSLib's PositionalEmbedding) and for
real-valued event times (events, THP's temporal encoding): the same formula and layout.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal(positions: Tensor, d_model: int) -> Tensor:
    """Sinusoidal encoding of (possibly real-valued) positions: (...,) -> (..., d_model).

    Channel 2i is sin(p / 10000^(2i/d)), channel 2i+1 is cos(p / 10000^(2i/d)).
    """
    half = (d_model + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) * 2 / d_model)
    angle = positions.to(torch.float32)[..., None] * freq  # (..., half)
    enc = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)  # (..., 2 * half)
    return enc[..., :d_model]
