"""The Sin generator: deterministic, the documented size and split, and exact (time-rescaling test)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tasks.events import synthetic
from tasks.events.data import split_sequences


@pytest.fixture(scope="module")
def sin():
    return synthetic.generate_sin(**synthetic.SIN_DEFAULTS)


def test_sin_is_deterministic_with_meta_tpp_size_and_split(sin):
    again = synthetic.generate_sin(**synthetic.SIN_DEFAULTS)
    assert all(np.array_equal(a, b) for a, b in zip(sin.times, again.times))
    other = synthetic.generate_sin(n_seqs=3, seed=1)
    assert not np.array_equal(other.times[0], sin.times[0][: len(other.times[0])])
    parts = split_sequences(sin, [0.6, 0.2])
    assert len(sin) == 1000
    assert [len(parts[k]) for k in ("train", "val", "test")] == [600, 200, 200]
    assert np.all(sin.t_end == 100.0) and sin.num_marks == 1


def test_sin_event_count_matches_the_intensity_integral(sin):
    expected = len(sin) * synthetic.sin_integral(0.0, 100.0)
    assert abs(sin.n_events - expected) < 5 * np.sqrt(expected)


def test_sin_time_rescaled_gaps_are_unit_exponential(sin):
    # time-rescaling theorem: Lambda(t_i) - Lambda(t_{i-1}) are iid Exp(1) for the true intensity
    gaps = np.concatenate([np.diff(synthetic.sin_integral(0.0, np.concatenate([[0.0], t]))) for t in sin.times])
    assert stats.kstest(gaps, "expon").pvalue > 1e-3
    # and a wrong intensity (homogeneous, same mean rate) is rejected by the same test
    wrong = np.concatenate([np.diff(np.concatenate([[0.0], t])) for t in sin.times]) * sin.n_events / (len(sin) * 100.0)
    assert stats.kstest(wrong, "expon").pvalue < 1e-6
