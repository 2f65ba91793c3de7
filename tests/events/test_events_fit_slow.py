"""Likelihood recovery (slow): on processes with a closed-form log-likelihood, the fitted
model's test NLL per event comes within 2% of the true NLL per event.

The check can fail: on the Hawkes data the same tolerance rejects the maximum-likelihood
homogeneous Poisson fit (its NLL is about 20% above the truth; asserted in the test).
Time unit: the processes are simulated with rates of order 1, where the per-event NLL is
of order 1 (a relative tolerance depends on the time unit, since NLL shifts by log(unit)).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from aaren_bench.nn import build_backbone
from tasks.events import synthetic
from tasks.events.data import collate
from tasks.events.likelihood import metric_sums, sequence_scores
from tasks.events.model import EventModel

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

T_END = 60.0
# the extension that also feeds log(1 + gap / s): with the absolute-time encoding alone the fit
# stays about 7% above the true Hawkes NLL in this budget (docs/benchmarks/events.md)
ENCODING = "absolute+log_dt"


def _nll(model, seqs, bs=64) -> float:
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), bs):
            b = collate(seqs, range(i, min(i + bs, len(seqs))))
            s = metric_sums(*model(b), b)
            tot, n = tot + s.nll, n + s.n_events
    return tot / n


def fit(train, val, kind: str, epochs: int = 150, seed: int = 0, time_encoding: str = "absolute", verbose=False):
    """Adam 3e-3 halved on validation plateaus, batch 32, best epoch on validation NLL (faster than the protocol)."""
    torch.manual_seed(seed)
    bb = build_backbone(dict(mixer=kind, d_model=32, n_layers=2, n_heads=1, d_ff=64, dropout=0.0))
    model = EventModel(bb, 1, train.mean_inter_time(), 8, time_encoding=time_encoding)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    rng = np.random.default_rng(seed)
    best, best_state, stale = float("inf"), None, 0
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), 32):
            b = collate(train, order[i : i + 32])
            sc = sequence_scores(*model(b), b)
            loss = -(sc.time_ll + sc.surv_ll).sum() / sc.n_scored.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = _nll(model, val)
        sched.step(v)
        if verbose:
            print(f"epoch {_ + 1}: val nll {v:.4f}", flush=True)
        if v < best - 1e-4:
            best, best_state, stale = v, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= 12:
                break
    model.load_state_dict(best_state)
    return model


def _parts(seqs):
    """600 train / 200 val / 200 test sequences."""
    return seqs.subset(range(0, 600)), seqs.subset(range(600, 800)), seqs.subset(range(800, len(seqs)))


@pytest.mark.parametrize("kind", ["aaren", "transformer"])
def test_poisson_nll_within_2_percent(kind):
    rate = 1.0
    train, val, test = _parts(synthetic.generate_poisson(rate, 1000, T_END, seed=11))
    true = -synthetic.poisson_log_likelihood(test, rate) / sum(len(t) - 1 for t in test.times)
    model = fit(train, val, kind, time_encoding=ENCODING)
    got = _nll(model, test)
    print(f"poisson {kind}: fitted {got:.4f} true {true:.4f} rel {(got - true) / abs(true):+.2%}")
    assert abs(got - true) / abs(true) < 0.02


@pytest.mark.parametrize("kind", ["aaren", "transformer"])
def test_hawkes_nll_within_2_percent(kind):
    mu, alpha, beta = 0.5, 0.6, 1.0
    train, val, test = _parts(synthetic.generate_hawkes(mu, alpha, beta, 1000, T_END, seed=12))
    n = sum(len(t) - 1 for t in test.times)
    true = -synthetic.hawkes_log_likelihood(test, mu, alpha, beta) / n
    # the tolerance rejects a history-blind fit: the maximum-likelihood homogeneous Poisson process
    expo = sum(T - t[0] for t, T in zip(test.times, test.t_end))
    lam = n / expo
    poisson = -(n * np.log(lam) - lam * expo) / n
    assert (poisson - true) / abs(true) > 0.1
    model = fit(train, val, kind, time_encoding=ENCODING)
    got = _nll(model, test)
    print(f"hawkes {kind}: fitted {got:.4f} true {true:.4f} rel {(got - true) / abs(true):+.2%} (poisson {poisson:.4f})")
    assert abs(got - true) / abs(true) < 0.02
