"""Synthetic point processes, sampled exactly by thinning, with closed-form log-likelihoods.

Sin (the suite's generated stand-in for Meta TPP's ``synthetic/sin.npz``):
    intensity lambda(t) = 1 + sin(t) on the window [0, 100], 1000 sequences, seed 0.
Sampling by thinning (Lewis & Shedler): candidates from a homogeneous Poisson process of
rate lambda_max = 2 (cumulated Exp(2) gaps until past the window end), each kept with
probability lambda(t) / 2. Every draw comes from one ``numpy.random.Generator(PCG64(seed))``
consumed in a fixed order, so the same arguments give the same sequences on every machine.

Hawkes (exponential kernel): lambda(t) = mu + alpha * sum_{t_j < t} exp(-beta (t - t_j)),
sampled by Ogata's thinning (the intensity decays between events, so its value just after
the current time bounds it until the next event).

The log-likelihoods are returned *conditional on the first event* (the first event is
context only, as in ``likelihood.py``):
    log L = sum_{i>=2} log lambda(t_i) - integral_{t_1}^{T} lambda(t) dt.
"""
from __future__ import annotations

import numpy as np

from tasks.events.data import EventSeqs

SIN_DEFAULTS = {"n_seqs": 1000, "t_end": 100.0, "seed": 0}


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _poisson_candidates(rng, rate: float, t0: float, t1: float) -> np.ndarray:
    """Homogeneous Poisson points of ``rate`` on (t0, t1]: cumulated Exp(rate) gaps, drawn in blocks."""
    mean = rate * (t1 - t0)
    block = int(mean + 10 * np.sqrt(mean) + 10)
    pts, t = [], t0
    while True:
        c = t + np.cumsum(rng.exponential(1.0 / rate, size=block))
        if c[-1] > t1:
            pts.append(c[c <= t1])
            return np.concatenate(pts)
        pts.append(c)
        t = c[-1]


def sin_intensity(t):
    return 1.0 + np.sin(t)


def sin_integral(a, b):
    """integral_a^b (1 + sin t) dt"""
    return (b - a) + np.cos(a) - np.cos(b)


def generate_sin(n_seqs: int = 1000, t_end: float = 100.0, seed: int = 0) -> EventSeqs:
    """The Sin dataset: ``n_seqs`` sequences of the lambda(t) = 1 + sin(t) process on [0, t_end]."""
    rng = _rng(seed)
    times = []
    for _ in range(n_seqs):
        cand = _poisson_candidates(rng, 2.0, 0.0, t_end)
        u = rng.uniform(size=cand.shape[0])
        times.append(cand[u * 2.0 < sin_intensity(cand)])
    # a sequence without events has no event to predict; with ~100 expected events this never
    # happens for the defaults, and drop_empty keeps the generator total for small windows
    return EventSeqs.build(times, None, t_start=0.0, t_end=t_end, num_marks=1, drop_empty=True, source="sin")


def sin_log_likelihood(seqs: EventSeqs) -> float:
    """Sum over sequences of the true log-likelihood, conditional on each first event."""
    total = 0.0
    for t, T in zip(seqs.times, seqs.t_end):
        total += np.log(sin_intensity(t[1:])).sum() - sin_integral(t[0], T)
    return float(total)


def generate_poisson(rate: float, n_seqs: int, t_end: float, seed: int) -> EventSeqs:
    rng = _rng(seed)
    times = [_poisson_candidates(rng, rate, 0.0, t_end) for _ in range(n_seqs)]
    return EventSeqs.build(times, None, t_start=0.0, t_end=t_end, num_marks=1, drop_empty=True, source="poisson")


def poisson_log_likelihood(seqs: EventSeqs, rate: float) -> float:
    return float(sum((len(t) - 1) * np.log(rate) - rate * (T - t[0]) for t, T in zip(seqs.times, seqs.t_end)))


def generate_hawkes(mu: float, alpha: float, beta: float, n_seqs: int, t_end: float, seed: int) -> EventSeqs:
    """Univariate exponential-kernel Hawkes process by Ogata thinning (needs alpha < beta for stationarity)."""
    if not alpha < beta:
        raise ValueError(f"the Hawkes process explodes unless alpha < beta; got alpha={alpha}, beta={beta}")
    rng = _rng(seed)
    times = []
    for _ in range(n_seqs):
        out, t, excite = [], 0.0, 0.0  # excite = sum_j alpha exp(-beta (t - t_j)) at time t
        while True:
            bound = mu + excite
            w = rng.exponential(1.0 / bound)
            t_new = t + w
            if t_new > t_end:
                break
            excite *= np.exp(-beta * w)
            if rng.uniform() * bound <= mu + excite:
                out.append(t_new)
                excite += alpha
            t = t_new
        times.append(np.asarray(out))
    return EventSeqs.build(times, None, t_start=0.0, t_end=t_end, num_marks=1, drop_empty=True, source="hawkes")


def hawkes_log_likelihood(seqs: EventSeqs, mu: float, alpha: float, beta: float) -> float:
    """Closed form, conditional on each first event (see the module docstring)."""
    total = 0.0
    for t, T in zip(seqs.times, seqs.t_end):
        A, ll = 0.0, 0.0  # A_i = sum_{j<i} exp(-beta (t_i - t_j))
        for i in range(1, len(t)):
            A = np.exp(-beta * (t[i] - t[i - 1])) * (1.0 + A)
            ll += np.log(mu + alpha * A)
        # integral_{t_1}^{T} lambda = mu (T - t_1) + (alpha / beta) sum_j (1 - exp(-beta (T - t_j)))
        comp = mu * (T - t[0]) + (alpha / beta) * np.sum(1.0 - np.exp(-beta * (T - t)))
        total += ll - comp
    return float(total)
