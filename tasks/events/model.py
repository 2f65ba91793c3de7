"""THP+ around either backbone: event embedding -> causal backbone -> log-normal mixture + mark head.

Event i enters as   x_i = E[k_i] + PE((t_i - t_start) / s)   (+ W log(1 + tau_i / s) with
``time_encoding="absolute+log_dt"``), where PE is THP's sinusoidal encoding and s the
train split's mean inter-event time (so the encoding sees times in units of a typical gap).
The backbone output h_i has seen events 1..i only; it parametrises the next gap (mixture of
K log-normals, decoder MLP d -> d -> 3K with tanh as in Meta TPP) and the next mark (a
linear layer). The mixture is returned in the data's own time units (mu is shifted by
log s), so likelihoods need no rescaling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.embed import sinusoidal
from tasks.events.likelihood import Mixture

TIME_ENCODINGS = ("absolute", "absolute+log_dt")


class EventModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_marks: int,
        time_scale: float,
        n_components: int = 8,
        time_encoding: str = "absolute",
    ):
        super().__init__()
        if time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"time_encoding must be one of {TIME_ENCODINGS}, got {time_encoding!r}")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        d = backbone.d_model
        self.backbone = backbone
        self.num_marks, self.n_components, self.time_encoding = num_marks, n_components, time_encoding
        self.mark_emb = nn.Embedding(num_marks, d)
        self.dt_proj = nn.Linear(1, d) if time_encoding == "absolute+log_dt" else None
        self.decoder = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 3 * n_components))
        self.mark_head = nn.Linear(d, num_marks) if num_marks > 1 else None
        self.register_buffer("log_scale", torch.tensor(math.log(time_scale), dtype=torch.float64))

    @property
    def scale(self) -> float:
        return float(self.log_scale.exp())

    def embed(self, times: Tensor, dts: Tensor, marks: Tensor) -> Tensor:
        """times, dts (B, N) in data units (time since window start, gap); marks (B, N) -> (B, N, D)."""
        s = self.scale
        x = self.mark_emb(marks) + sinusoidal(times / s, self.backbone.d_model)  # THP's encoding
        if self.dt_proj is not None:
            x = x + self.dt_proj(torch.log1p(dts.clamp_min(0) / s)[..., None])
        return x

    def heads(self, h: Tensor) -> tuple[Mixture, Tensor | None]:
        """h (..., D) -> Mixture of (..., K) tensors in data units, mark logits (..., M) or None."""
        w, mu, sig = self.decoder(h).chunk(3, dim=-1)
        mix = Mixture(F.log_softmax(w, -1), mu + self.log_scale.to(mu.dtype), F.softplus(sig) + 1e-4)
        return mix, (self.mark_head(h) if self.mark_head is not None else None)

    def forward(self, batch: dict) -> tuple[Mixture, Tensor | None]:
        """Parallel pass: position i's outputs predict the event after event i. (B, N, K), (B, N, M)."""
        x = self.embed(batch["times"], batch["dts"], batch["marks"])  # (B, N, D)
        h, _ = self.backbone(x, batch["mask"])  # (B, N, D), causal
        return self.heads(h)
