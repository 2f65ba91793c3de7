"""The likelihood and metric code against hand computations, and the synthetic ground truths."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.events import synthetic
from tasks.events.data import EventSeqs, collate
from tasks.events.likelihood import (
    Mixture,
    lognormal_mixture_log_prob,
    lognormal_mixture_log_survival,
    lognormal_mixture_mean,
    metric_sums,
    sequence_scores,
)


def _pdf(x, w, mu, sig):
    return sum(wk / (x * sk * math.sqrt(2 * math.pi)) * math.exp(-((math.log(x) - mk) ** 2) / (2 * sk**2))
               for wk, mk, sk in zip(w, mu, sig))


def _sf(x, w, mu, sig):
    return sum(wk * 0.5 * math.erfc((math.log(x) - mk) / (sk * math.sqrt(2))) for wk, mk, sk in zip(w, mu, sig))


W, MU, SIG = [0.3, 0.7], [-0.5, 1.2], [0.8, 0.4]


def _mix(shape=()):
    t = lambda v: torch.tensor(v, dtype=torch.float64).expand(*shape, 2)  # noqa: E731
    return Mixture(t([math.log(w) for w in W]), t(MU), t(SIG))


@pytest.mark.parametrize("x", [0.05, 0.7, 1.0, 3.3, 25.0])
def test_mixture_density_survival_mean_by_hand(x):
    mix = _mix()
    assert float(lognormal_mixture_log_prob(torch.tensor(x, dtype=torch.float64), mix)) == pytest.approx(
        math.log(_pdf(x, W, MU, SIG)), rel=1e-12)
    assert float(lognormal_mixture_log_survival(torch.tensor(x, dtype=torch.float64), mix)) == pytest.approx(
        math.log(_sf(x, W, MU, SIG)), rel=1e-10)
    mean = sum(w * math.exp(m + s**2 / 2) for w, m, s in zip(W, MU, SIG))
    assert float(lognormal_mixture_mean(mix)) == pytest.approx(mean, rel=1e-12)


def test_survival_at_zero_is_one_and_far_tail_is_finite():
    mix = _mix()
    assert float(lognormal_mixture_log_survival(torch.tensor(0.0, dtype=torch.float64), mix)) == 0.0
    far = float(lognormal_mixture_log_survival(torch.tensor(1e6, dtype=torch.float64), mix))
    assert math.isfinite(far) and far < -100


def _seqs():
    # window [0, 10]; sequence A: 3 events, sequence B: 2 events (padded)
    return EventSeqs.build([[1.0, 1.5, 4.0], [2.0, 6.0]], [[0, 2, 1], [1, 1]], t_start=0.0, t_end=10.0, num_marks=3)


def test_sequence_nll_matches_hand_computation():
    seqs = _seqs()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in collate(seqs, [0, 1]).items()}
    B, N = batch["mask"].shape
    # a different mixture and mark distribution at every position
    g = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(B, N, 2, generator=g, dtype=torch.float64), -1)
    mu = torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    sig = torch.rand(B, N, 2, generator=g, dtype=torch.float64) + 0.3
    logits = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
    mix = Mixture(log_w, mu, sig)

    def pos(b, i):
        return log_w[b, i].exp().tolist(), mu[b, i].tolist(), sig[b, i].tolist()

    def logp_mark(b, i, k):
        return float(torch.log_softmax(logits[b, i], -1)[k])

    # sequence A: h_1 scores event 2 (gap 0.5, mark 2), h_2 scores event 3 (gap 2.5, mark 1), h_3 survives 6.0
    llA_time = math.log(_pdf(0.5, *pos(0, 0))) + math.log(_pdf(2.5, *pos(0, 1))) + math.log(_sf(6.0, *pos(0, 2)))
    llA_mark = logp_mark(0, 0, 2) + logp_mark(0, 1, 1)
    # sequence B: h_1 scores event 2 (gap 4.0, mark 1), h_2 survives 4.0; position 3 is padding
    llB_time = math.log(_pdf(4.0, *pos(1, 0))) + math.log(_sf(4.0, *pos(1, 1)))
    llB_mark = logp_mark(1, 0, 1)

    sc = sequence_scores(mix, logits, batch)
    assert (sc.time_ll + sc.surv_ll).tolist() == pytest.approx([llA_time, llB_time], rel=1e-10)
    assert sc.mark_ll.tolist() == pytest.approx([llA_mark, llB_mark], rel=1e-10)
    assert sc.n_scored.tolist() == [2, 1]

    s = metric_sums(mix, logits, batch)
    assert s.n_events == 3
    assert s.nll == pytest.approx(-(llA_time + llA_mark + llB_time + llB_mark), rel=1e-10)
    # RMSE: squared error of each predicted mean gap against the true gap, over scored events
    means = lognormal_mixture_mean(mix)
    se = (means[0, 0] - 0.5) ** 2 + (means[0, 1] - 2.5) ** 2 + (means[1, 0] - 4.0) ** 2
    assert s.sq_err == pytest.approx(float(se), rel=1e-10)
    pred = logits.argmax(-1)
    correct = int(pred[0, 0] == 2) + int(pred[0, 1] == 1) + int(pred[1, 0] == 1)
    assert s.correct == correct


def test_padding_positions_do_not_change_the_score():
    seqs = _seqs()
    a = collate(seqs, [1])
    b = collate(seqs, [1, 0])  # sequence B padded to length 3
    g = torch.Generator().manual_seed(1)
    mix3 = Mixture(torch.log_softmax(torch.randn(2, 3, 2, generator=g), -1), torch.randn(2, 3, 2, generator=g),
                   torch.rand(2, 3, 2, generator=g) + 0.5)
    mix1 = Mixture(*(p[:1, :2] for p in mix3))
    sb = sequence_scores(mix3, None, b)
    sa = sequence_scores(mix1, None, a)
    assert float(sa.time_ll + sa.surv_ll) == pytest.approx(float((sb.time_ll + sb.surv_ll)[0]), rel=1e-6)


def _numeric_loglik(t, T, lam):
    """sum log lambda(t_i), i >= 2, minus a fine trapezoid integral of lambda over [t_1, T]."""
    grid = np.linspace(t[0], T, 200_001)
    vals = lam(grid)
    integral = float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
    return float(np.sum(np.log(lam(t[1:])))) - integral


def test_hawkes_closed_form_matches_numeric_integration():
    mu, alpha, beta = 0.5, 0.8, 1.3
    seqs = synthetic.generate_hawkes(mu, alpha, beta, n_seqs=1, t_end=12.0, seed=3)
    t, T = seqs.times[0], seqs.t_end[0]

    def lam(x):
        x = np.atleast_1d(x)
        # left-continuous intensity: only events strictly before x excite
        d = x[:, None] - t[None, :]
        return mu + alpha * np.where(d > 0, np.exp(-beta * np.where(d > 0, d, 0)), 0).sum(1)

    assert synthetic.hawkes_log_likelihood(seqs, mu, alpha, beta) == pytest.approx(_numeric_loglik(t, T, lam), abs=1e-3)


def test_sin_and_poisson_closed_forms_match_numeric_integration():
    sin = synthetic.generate_sin(n_seqs=1, t_end=30.0, seed=5)
    assert synthetic.sin_log_likelihood(sin) == pytest.approx(
        _numeric_loglik(sin.times[0], 30.0, synthetic.sin_intensity), abs=1e-4)
    poi = synthetic.generate_poisson(2.0, n_seqs=1, t_end=10.0, seed=1)
    assert synthetic.poisson_log_likelihood(poi, 2.0) == pytest.approx(
        _numeric_loglik(poi.times[0], 10.0, lambda x: np.full_like(np.atleast_1d(x), 2.0, dtype=float)), abs=1e-6)
