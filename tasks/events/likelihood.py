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
RMSE = sqrt(mean over scored events of (E[tau_{i+1} | h_i] - tau_{i+1})^2); accuracy over the
same scored events.

Meta TPP's own formulas (``src/utils/metrics.py`` with its THP+ loss, reported beside ours as
``*_metatpp``) work on its file layout, where a sequence of n events is n + 1 "entries": the
n gaps (the first from the window start) and the window-end gap t_end - t_n. Its targets are
entries 2..n+1 (events 2..n and the window-end gap), each predicted from the state before it:

    nll_metatpp  = -(sum of log L') / sum_s (n_s + 1)          every valid entry, scored or not
    rmse_metatpp = sqrt( sum_s (sum_{j=2}^{n_s+1} (yhat_j - y_j))^2 / sum_s n_s )
                                                            errors summed within a sequence, then squared
    acc_metatpp  = #(argmax_j == k_j, j = 2..n_s+1) / sum_s n_s
                                                            the window-end entry counts, with the mark its
                                                            file stores there (none: a miss)

log L' is log L computed as Meta TPP does: densities and survival at tau + 1e-12, each
component's CDF clamped to [1e-5, 1 - 1e-5] in the survival term (so log S >= log 1e-5),
plus, on marked data, the mark log-probability of the window-end entry given h_n
(``end_mark_ll``: a pseudo-event, which Meta TPP's shifted mask scores);
yhat is the mixture mean minus 1e-12.
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
    "add_sums",
    "lognormal_mixture_log_prob",
    "lognormal_mixture_log_survival_metatpp",
    "lognormal_mixture_log_survival",
    "lognormal_mixture_mean",
    "end_mark_ll",
    "sequence_scores",
    "metric_sum_tensors",
    "metric_sums",
    "split_metrics",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
META_TPP_SHIFT = 1e-12  # Meta TPP evaluates its log-normals at tau + 1e-12 and predicts mean - 1e-12
META_TPP_CDF_CLAMP = 1e-5  # ... and clamps each component's CDF to [1e-5, 1 - 1e-5] in the survival


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


def lognormal_mixture_log_survival_metatpp(tau: Tensor, mix: Mixture) -> Tensor:
    """Meta TPP's log S(tau): at tau + 1e-12, each component's CDF clamped to [1e-5, 1 - 1e-5]."""
    z = ((tau + META_TPP_SHIFT).log()[..., None] - mix.mu) / mix.sigma
    cdf = torch.special.ndtr(z).clamp(META_TPP_CDF_CLAMP, 1 - META_TPP_CDF_CLAMP)
    return torch.logsumexp(mix.log_w + torch.log(1.0 - cdf), dim=-1)


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


def end_mark_ll(mark_logits: Tensor | None, batch: dict) -> Tensor:
    """Meta TPP's extra mark term, (B,): log P(k_end | h_n), the mark head at each sequence's last
    event scored against the mark its file stores at the window-end entry (a pseudo-event), class 0
    where none is stored (its ``where(marks - 1 >= 0, marks - 1, 0)``). Its ``masks_without_last``
    (``tpp_network.py``) is shifted by one against the targets, so this term is in its loss and NLL.
    Zeros for unmarked data."""
    mask = batch["mask"]
    B = mask.shape[0]
    if mark_logits is None:
        return torch.zeros(B, dtype=torch.float32, device=mask.device)
    ar = torch.arange(B, device=mask.device)
    last = mask.sum(-1) - 1  # (B,)
    end = batch.get("end_mark", torch.full((B,), -1, dtype=torch.long, device=mask.device)).clamp_min(0)
    return F.log_softmax(mark_logits[ar, last], dim=-1).gather(-1, end[:, None]).squeeze(-1)


class MetricSums(NamedTuple):
    """Sums over a batch, to be added up over a whole split before dividing (``add_sums``, ``split_metrics``).
    Python numbers from ``metric_sums``, 0-dim device tensors from ``metric_sum_tensors``."""

    nll: float  # -(time_ll + mark_ll + surv_ll)
    nll_time: float  # -(time_ll + surv_ll)
    nll_mark: float  # -mark_ll
    n_events: int  # scored events
    sq_err: float  # sum of (E[tau_{i+1} | h_i] - tau_{i+1})^2
    correct: int  # argmax mark == true mark
    # Meta TPP's formulas (module docstring)
    nll_metatpp: float  # -(log L') with Meta TPP's shift and survival clamp
    n_entries: int  # sum (n_s + 1): every valid entry of its layout
    sq_seq: float  # sum over sequences of (sum of its errors over entries 2..n+1)^2
    n_targets: int  # sum n_s: entries 2..n+1
    correct_metatpp: int  # hits over entries 2..n+1 (the window-end entry against its stored mark)


def add_sums(a: MetricSums, b: MetricSums) -> MetricSums:
    return MetricSums(*(x + y for x, y in zip(a, b)))


def metric_sum_tensors(mix: Mixture, mark_logits: Tensor | None, batch: dict) -> MetricSums:
    """The per-batch sums of :func:`metric_sums` as 0-dim tensors on the batch's device (float64
    for the likelihoods and errors, int64 for the counts): nothing is read on the host, so a
    validation batch does not stall a GPU (``metrics.EventMetrics`` adds them up on the device)."""
    sc = sequence_scores(mix, mark_logits, batch)
    dts, mask = batch["dts"], batch["mask"]
    tgt_valid = mask[:, 1:]
    B = mask.shape[0]
    ar = torch.arange(B, device=mask.device)
    last = mask.sum(-1) - 1  # (B,) position of each sequence's last event
    f64 = lambda x: x.double()  # noqa: E731
    zero = lambda x: torch.zeros_like(x, dtype=torch.float64)  # noqa: E731

    mean = lognormal_mixture_mean(mix)  # (B, N): the expected next gap after each event
    err = torch.where(tgt_valid, f64(mean[:, :-1]) - f64(dts[:, 1:]), zero(mean[:, :-1]))  # (B, N-1)
    correct = correct_mt = torch.zeros((), dtype=torch.long, device=mask.device)
    if mark_logits is not None:
        pred_mark = mark_logits.argmax(-1)  # (B, N)
        hit = (pred_mark[:, :-1] == batch["marks"][:, 1:]) & tgt_valid
        correct = hit.sum()
        end_mark = batch.get("end_mark", torch.full((B,), -1, dtype=torch.long, device=mask.device))
        correct_mt = correct + (pred_mark[ar, last] == end_mark).sum()

    # Meta TPP: the same terms at tau + 1e-12, its clamped survival; errors summed per sequence, then squared
    head = Mixture(*(p[:, :-1] for p in mix))
    tgt_dt = torch.where(tgt_valid, dts[:, 1:], torch.ones_like(dts[:, 1:]))
    lp = lognormal_mixture_log_prob(tgt_dt + META_TPP_SHIFT, head)
    time_mt = torch.where(tgt_valid, lp, torch.zeros_like(lp)).sum(-1)
    surv_mt = lognormal_mixture_log_survival_metatpp(batch["last_gap"], Mixture(*(p[ar, last] for p in mix)))
    yhat = f64(mean) - META_TPP_SHIFT
    err_mt = torch.where(tgt_valid, yhat[:, :-1] - f64(dts[:, 1:]), zero(mean[:, :-1])).sum(-1)  # (B,)
    err_mt = err_mt + yhat[ar, last] - f64(batch["last_gap"])  # the window-end entry

    n_seq_events = mask.sum()
    return MetricSums(
        nll=-(sc.time_ll + sc.mark_ll + sc.surv_ll).double().sum(),
        nll_time=-(sc.time_ll + sc.surv_ll).double().sum(),
        nll_mark=-sc.mark_ll.double().sum(),
        n_events=sc.n_scored.sum(),
        sq_err=(err**2).sum(),
        correct=correct,
        nll_metatpp=-(time_mt + sc.mark_ll + end_mark_ll(mark_logits, batch) + surv_mt).double().sum(),
        n_entries=n_seq_events + B,
        sq_seq=(err_mt**2).sum(),
        n_targets=n_seq_events,
        correct_metatpp=correct_mt,
    )


def metric_sums(mix: Mixture, mark_logits: Tensor | None, batch: dict) -> MetricSums:
    """Exact per-batch sums for NLL, RMSE and accuracy, ours and Meta TPP's (see the module docstring),
    as Python numbers (read from the device: for a validation loop use :func:`metric_sum_tensors`)."""
    sums = metric_sum_tensors(mix, mark_logits, batch)
    return MetricSums(*(int(v) if not v.is_floating_point() else float(v) for v in sums))


def split_metrics(s: MetricSums, marked: bool) -> dict[str, float]:
    """Summed ``MetricSums`` of a whole split -> its metrics (ours and ``*_metatpp``); marks only when ``marked``."""
    n, m, e = max(s.n_events, 1), max(s.n_targets, 1), max(s.n_entries, 1)
    out = {
        "nll": s.nll / n,
        "nll_time": s.nll_time / n,
        "rmse": (s.sq_err / n) ** 0.5,
        "nll_metatpp": s.nll_metatpp / e,
        "rmse_metatpp": (s.sq_seq / m) ** 0.5,
    }
    if marked:
        out.update({"nll_mark": s.nll_mark / n, "acc": s.correct / n, "acc_metatpp": s.correct_metatpp / m})
    return out
