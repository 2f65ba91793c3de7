"""The model never scores an event with a state that has seen it; streaming equals the batch pass."""
from __future__ import annotations

import pytest
import torch

from aaren_bench.nn import build_backbone
from tasks.events.data import EventSeqs, collate
from tasks.events.model import EventModel
from tasks.events.stream import StreamingPredictor

BACKBONES = ["aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt"]


def _model(kind, num_marks=4, time_encoding="absolute", seed=0):
    torch.manual_seed(seed)
    bb = build_backbone(dict(mixer=kind, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1))
    return EventModel(bb, num_marks=num_marks, time_scale=0.7, n_components=3, time_encoding=time_encoding).eval()


def _seqs(n=(7, 4, 9), num_marks=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    times = [torch.cumsum(torch.rand(k, generator=g, dtype=torch.float64) + 0.05, 0).numpy() + 0.2 for k in n]
    marks = [torch.randint(0, num_marks, (k,), generator=g).numpy() for k in n]
    return EventSeqs.build(times, marks, t_start=0.0, t_end=100.0, num_marks=num_marks)


@pytest.mark.parametrize("kind", BACKBONES)
def test_position_i_depends_only_on_events_up_to_i(kind):
    model = _model(kind, time_encoding="absolute+log_dt")
    seqs = _seqs()
    batch = collate(seqs, [2])
    mix, logits = model(batch)
    j = 5  # change event j (time and mark): outputs before j must not move, outputs from j on must
    b2 = {k: v.clone() for k, v in batch.items()}
    b2["times"][0, j] += 0.01
    b2["dts"][0, j] += 0.01
    b2["dts"][0, j + 1] -= 0.01
    b2["marks"][0, j] = (b2["marks"][0, j] + 1) % 4
    mix2, logits2 = model(b2)
    torch.testing.assert_close(mix2.mu[:, :j], mix.mu[:, :j])
    torch.testing.assert_close(logits2[:, :j], logits[:, :j])
    assert not torch.allclose(mix2.mu[:, j], mix.mu[:, j])


@pytest.mark.parametrize("kind", BACKBONES)
def test_padding_does_not_change_outputs(kind):
    model = _model(kind)
    seqs = _seqs()
    alone = model(collate(seqs, [1]))
    padded = model(collate(seqs, [1, 2]))  # sequence 1 padded from 4 to 9 events
    torch.testing.assert_close(padded[0].mu[0, :4], alone[0].mu[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1][0, :4], alone[1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("time_encoding", ["absolute", "absolute+log_dt"])
@pytest.mark.parametrize("kind", BACKBONES)
def test_streaming_equals_batch(kind, time_encoding):
    model = _model(kind, time_encoding=time_encoding)
    seqs = _seqs()
    idx = [0, 2]
    batch = collate(seqs, idx)
    mix, logits = model(batch)
    # stream sequence 2 (the longest) and sequence 0 side by side until sequence 0 ends
    for b, s in enumerate(idx):
        pred = StreamingPredictor(model, batch=1, t_start=0.0)
        for i, (t, k) in enumerate(zip(seqs.times[s], seqs.marks[s])):
            m, lg = pred.observe(t, int(k))
            torch.testing.assert_close(m.mu[0], mix.mu[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m.sigma[0], mix.sigma[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(m.log_w[0], mix.log_w[b, i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lg[0], logits[b, i], atol=1e-5, rtol=1e-5)


def test_aaren_stream_memory_is_constant_transformer_grows():
    seqs = _seqs(n=(40,))
    sizes = {}
    for kind in BACKBONES:
        pred = StreamingPredictor(_model(kind), batch=1)
        seen = []
        for t, k in zip(seqs.times[0], seqs.marks[0]):
            pred.observe(t, int(k))
            seen.append(pred.state_bytes())
        sizes[kind] = seen
    assert len(set(sizes["aaren"])) == 1
    assert sizes["transformer"][-1] > 4 * sizes["transformer"][3]


def test_streaming_rejects_bad_events_and_training_mode():
    model = _model("aaren")
    pred = StreamingPredictor(model)
    with pytest.raises(RuntimeError, match="observe"):
        pred.expected_gap()
    pred.observe(1.0, 0)
    assert pred.expected_gap().shape == (1,)
    with pytest.raises(ValueError, match="time order"):
        pred.observe(0.5, 0)
    with pytest.raises(ValueError, match="outside"):
        pred.observe(2.0, 9)
    with pytest.raises(ValueError, match="eval mode"):
        StreamingPredictor(model.train())
