"""Likelihood and metric math for marked temporal point processes, as plain functions.

The next inter-event time tau has a mixture of K log-normals,

    p(tau) = sum_k w_k LogNormal(tau; mu_k, sigma_k),
    S(tau) = P(next gap > tau) = sum_k w_k Phi(-(log tau - mu_k) / sigma_k),
    E[tau] = sum_k w_k exp(mu_k + sigma_k^2 / 2),

and the next mark a categorical distribution (independent of tau given the history).

Scoring convention (Meta TPP's): a sequence t_1 < ... < t_n in a window [t_start, t_end]
is scored conditionally on its first event. The state h_i has seen events 1..i; it scores
event i+1 (gap tau_{i+1} and mark k_{i+1}), and h_n scores the survival of the last
interval, t_end - t_n:

    log L = sum_{i=1}^{n-1} [log p(tau_{i+1} | h_i) + log P(k_{i+1} | h_i)] + log S(t_end - t_n | h_n).

NLL per event = -(sum of log L over a split) / (number of scored events, sum_s (n_s - 1)).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Mixture",
    "MetricSums",
    "lognormal_mixture_log_prob",
    "lognormal_mixture_log_survival",
    "lognormal_mixture_mean",
    "sequence_scores",
    "metric_sums",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Mixture(NamedTuple):
    """Log-normal mixture parameters, each (..., K): log-weights, means and scales of log tau."""

    log_w: Tensor
    mu: Tensor
    sigma: Tensor


def lognormal_mixture_log_prob(tau: Tensor, mix: Mixture) -> Tensor:
    """log p(tau): tau (...,) > 0 -> (...,)."""
    log_tau = tau.log()[..., None]  # (..., 1)
    z = (log_tau - mix.mu) / mix.sigma  # (..., K)
    log_comp = -0.5 * z**2 - mix.sigma.log() - _HALF_LOG_2PI - log_tau
    return torch.logsumexp(mix.log_w + log_comp, dim=-1)


def lognormal_mixture_log_survival(tau: Tensor, mix: Mixture) -> Tensor:
    """log S(tau) = log P(gap > tau): tau (...,) >= 0 -> (...,); exactly 0 at tau = 0."""
    pos = tau > 0
    log_tau = torch.where(pos, tau, torch.ones_like(tau)).log()[..., None]
    z = (log_tau - mix.mu) / mix.sigma
    log_s = torch.logsumexp(mix.log_w + torch.special.log_ndtr(-z), dim=-1)
    return torch.where(pos, log_s, torch.zeros_like(log_s))


def lognormal_mixture_mean(mix: Mixture) -> Tensor:
    """E[tau] (...,) of the mixture."""
    return torch.logsumexp(mix.log_w + mix.mu + 0.5 * mix.sigma**2, dim=-1).exp()


class SeqScores(NamedTuple):
    """Per-sequence log-likelihood parts, each (B,)."""

    time_ll: Tensor
    mark_ll: Tensor
    surv_ll: Tensor
    n_scored: Tensor


def sequence_scores(mix: Mixture, mark_logits: Tensor | None, batch: dict) -> SeqScores:
    """Log-likelihood parts of a padded batch under per-position predictions.

    mix: Mixture with (B, N, K) tensors, position i predicting the event after event i;
    mark_logits: (B, N, M) or None for unmarked data;
    batch: ``data.collate`` output (dts, marks, mask (B, N), last_gap (B,)).
    """
    dts, mask = batch["dts"], batch["mask"]
    B, N = mask.shape
    # the target of position i is event i+1: shift the targets left by one
    tgt_valid = mask[:, 1:]  # (B, N-1): event i+1 exists
    tgt_dt = torch.where(tgt_valid, dts[:, 1:], torch.ones_like(dts[:, 1:]))
    head = Mixture(*(p[:, :-1] for p in mix))  # (B, N-1, K)
    lp = lognormal_mixture_log_prob(tgt_dt, head)  # (B, N-1)
    time_ll = torch.where(tgt_valid, lp, torch.zeros_like(lp)).sum(-1)
    if mark_logits is not None:
        logp = F.log_softmax(mark_logits[:, :-1], dim=-1)  # (B, N-1, M)
        mlp = logp.gather(-1, batch["marks"][:, 1:, None]).squeeze(-1)
        mark_ll = torch.where(tgt_valid, mlp, torch.zeros_like(mlp)).sum(-1)
    else:
        mark_ll = torch.zeros_like(time_ll)
    last = mask.sum(-1) - 1  # (B,) index of the last event
    ar = torch.arange(B, device=mask.device)
    last_mix = Mixture(*(p[ar, last] for p in mix))  # (B, K)
    surv_ll = lognormal_mixture_log_survival(batch["last_gap"], last_mix)
    return SeqScores(time_ll, mark_ll, surv_ll, tgt_valid.sum(-1))


class MetricSums(NamedTuple):
    """Sums over a batch, to be added up over a whole split before dividing."""

    nll: float  # -(time_ll + mark_ll + surv_ll)
    nll_time: float  # -(time_ll + surv_ll)
    nll_mark: float  # -mark_ll
    n_events: int  # scored events
    sq_err: float  # sum of (E[tau_{i+1} | h_i] - tau_{i+1})^2
    correct: int  # argmax mark == true mark


def metric_sums(mix: Mixture, mark_logits: Tensor | None, batch: dict) -> MetricSums:
    """Exact per-batch sums for NLL, RMSE and accuracy (see the module docstring)."""
    sc = sequence_scores(mix, mark_logits, batch)
    tgt_valid = batch["mask"][:, 1:]
    pred = lognormal_mixture_mean(Mixture(*(p[:, :-1] for p in mix)))  # (B, N-1)
    err = torch.where(tgt_valid, pred.double() - batch["dts"][:, 1:].double(), torch.zeros_like(pred, dtype=torch.float64))
    correct = 0
    if mark_logits is not None:
        hit = (mark_logits[:, :-1].argmax(-1) == batch["marks"][:, 1:]) & tgt_valid
        correct = int(hit.sum())
    return MetricSums(
        nll=-float((sc.time_ll + sc.mark_ll + sc.surv_ll).double().sum()),
        nll_time=-float((sc.time_ll + sc.surv_ll).double().sum()),
        nll_mark=-float(sc.mark_ll.double().sum()),
        n_events=int(sc.n_scored.sum()),
        sq_err=float((err**2).sum()),
        correct=correct,
    )
