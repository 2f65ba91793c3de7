"""The real Wikipedia events (../shared/data/events/wikipedia_jodie.npz): conversion and a model pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_bench.data import fetch
from tasks.events.data import collate, split_sequences
from tasks.events.formats import PickleNotTrusted, load_ifl_npz, load_meta_tpp_npz, save_meta_tpp_npz
from tasks.events.wiki import convert_wiki


@pytest.fixture(scope="module")
def raw(shared_data):
    p = shared_data / "events" / "wikipedia_jodie.npz"
    if not p.exists():
        pytest.skip(f"{p} not found: set AAREN_DATA to the folder holding events/wikipedia_jodie.npz")
    return p


@pytest.fixture(scope="module")
def wiki(raw):
    return convert_wiki(raw, trust_pickle=True)


def test_raw_file_is_refused_without_trust(raw):
    with pytest.raises(PickleNotTrusted, match="object arrays"):
        load_ifl_npz(raw)


def test_registry_verifies_the_pinned_checksum(raw):
    paths = fetch("Wiki", data_root=raw.parent.parent, download=False)
    assert paths["events/wikipedia_jodie.npz"] == raw


def test_conversion_matches_the_documented_recipe(wiki):
    assert len(wiki) == 1000 and wiki.n_events == 157_471 and wiki.num_marks == 8227
    assert min(len(t) for t in wiki.times) == 84 and max(len(t) for t in wiki.times) == 1936
    assert np.all(wiki.t_end == 2_678_373.0) and np.all(wiki.t_start == 0.0)
    assert all(np.all(np.diff(t) > 0) for t in wiki.times)
    parts = split_sequences(wiki, [0.6, 0.2])
    assert [len(parts[k]) for k in ("train", "val", "test")] == [600, 200, 200]


def test_converted_file_loads_without_pickle(wiki, tmp_path):
    p = save_meta_tpp_npz(wiki.subset(range(50)), tmp_path / "wiki.npz")
    back = load_meta_tpp_npz(p, num_marks=8227)
    for a, b in zip(wiki.times[:50], back.times):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * a.max())
    assert all(np.array_equal(a, b) for a, b in zip(wiki.marks[:50], back.marks))


def test_a_model_scores_wiki_batches(wiki):
    from aaren_bench.nn import build_backbone
    from tasks.events.likelihood import metric_sums
    from tasks.events.model import EventModel

    train = wiki.subset(range(600))
    bb = build_backbone(dict(mixer="aaren", d_model=16, n_layers=1, n_heads=1, d_ff=16, dropout=0.0))
    model = EventModel(bb, wiki.num_marks, train.mean_inter_time(), 8).eval()
    with torch.no_grad():
        s = metric_sums(*model(collate(wiki, [0, 1, 2])), collate(wiki, [0, 1, 2]))
    assert s.n_events == sum(len(wiki.times[i]) - 1 for i in range(3))
    assert np.isfinite(s.nll) and np.isfinite(s.sq_err)
