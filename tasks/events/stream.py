"""Streaming prediction: feed events one at a time, read the next-event distribution after each.

    pred = StreamingPredictor(model, batch=1, t_start=0.0)
    for t, k in events:
        mix, mark_logits = pred.observe(t, k)   # distribution of the *next* gap and mark
        pred.expected_gap(), pred.log_survival(x)

With the Aaren backbone the state is a fixed-size (m, c, a) per layer: constant memory
however long the stream; with the Transformer it is a key/value cache that grows by one
entry per event. ``observe`` runs ``EventModel.step`` (the backbone's ``step``, layer by layer
when the encoding enters every layer); the tests check that its
outputs equal the parallel ``EventModel.forward`` position by position.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tasks.events.likelihood import (
    Mixture,
    lognormal_mixture_log_prob,
    lognormal_mixture_log_survival,
    lognormal_mixture_mean,
)
from tasks.events.model import EventModel


class StreamingPredictor:
    """Next-event predictions for B independent streams, updated one event at a time."""

    def __init__(self, model: EventModel, batch: int = 1, t_start: float | Tensor = 0.0, device=None):
        if model.training:
            raise ValueError("put the model in eval mode (model.eval()) before streaming: dropout would make steps random")
        self.model = model
        p = next(model.parameters())
        self.device = device or p.device
        self.state = model.init_state(batch, device=self.device, dtype=p.dtype)
        self.t_start = torch.as_tensor(t_start, dtype=torch.float64, device=self.device).expand(batch).clone()
        self.t_last = self.t_start.clone()
        self.n_seen = 0
        self.mix: Mixture | None = None
        self.mark_logits: Tensor | None = None

    @torch.no_grad()
    def observe(self, t, mark=0) -> tuple[Mixture, Tensor | None]:
        """Add one event per stream (t (B,) absolute time, mark (B,) int); return the next-event prediction.

        Mixture tensors are (B, K); mark logits (B, M) or None for unmarked data.
        """
        B = self.t_last.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device).expand(B)
        mark = torch.as_tensor(mark, dtype=torch.long, device=self.device).expand(B)
        if torch.any(t < self.t_last):
            raise ValueError(f"events must arrive in time order: got t={t.tolist()} after t={self.t_last.tolist()}")
        if torch.any((mark < 0) | (mark >= self.model.num_marks)):
            raise ValueError(f"mark {mark.tolist()} is outside [0, {self.model.num_marks})")
        dt = (t - self.t_last).float()  # (B,)
        h, self.state = self.model.step((t - self.t_start).float(), dt, mark, self.state)  # (B, D)
        self.t_last = t.clone()
        self.n_seen += 1
        self.mix, self.mark_logits = self.model.heads(h)
        return self.mix, self.mark_logits

    def _need(self):
        if self.mix is None:
            raise RuntimeError("no event observed yet: the first event is context only; call observe(t, mark) first")
        return self.mix

    def expected_gap(self) -> Tensor:
        """(B,) mean of the next inter-event time."""
        return lognormal_mixture_mean(self._need())

    def log_prob_gap(self, tau) -> Tensor:
        return lognormal_mixture_log_prob(torch.as_tensor(tau, dtype=torch.float32, device=self.device), self._need())

    def log_survival(self, tau) -> Tensor:
        """(B,) log P(no event within tau after the last one)."""
        return lognormal_mixture_log_survival(torch.as_tensor(tau, dtype=torch.float32, device=self.device), self._need())

    def state_bytes(self) -> int:
        return self.state.nbytes()
