"""Right padding: the causal transformer keeps its fused kernel, and nothing else changes.

A batch padded on the right (every row's valid tokens first) needs no mask in a causal model:
no valid position sees a later one. The maker of the batch says so (``padding="right"``, a
constant beside each task's collate); the transformer then calls
``scaled_dot_product_attention(..., is_causal=True)`` without a (B, N, N) mask. Checked here:
the promise holds where the batches are made, the valid outputs and every gradient equal the
masked path's, padded outputs stay finite, a mask without the promise (left padding) is still
applied, and a whole task's loss and gradients do not move.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from aaren_bench.nn import build_backbone


def _backbone(norm_first: bool = True, causal: bool = True):
    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(name="transformer", mixer="transformer", d_model=16, n_layers=2, n_heads=2, d_ff=32,
                                dropout=0.0, norm_first=norm_first, causal=causal))
    return build_backbone(cfg).train()


def _right_padded(B: int = 4, N: int = 12, lengths=(12, 7, 1, 0)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, 16, generator=g)
    mask = torch.arange(N)[None] < torch.tensor(lengths)[:, None]  # (B, N), a row with no valid token too
    return x, mask


class _Recorder:
    """Stands in for F.scaled_dot_product_attention and records each call's mask and causal flag."""

    def __init__(self):
        self.calls, self._sdpa = [], F.scaled_dot_product_attention

    def __call__(self, *args, **kwargs):
        self.calls.append((kwargs.get("attn_mask") is not None, kwargs.get("is_causal", False)))
        return self._sdpa(*args, **kwargs)


@pytest.fixture
def sdpa(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(F, "scaled_dot_product_attention", rec)
    return rec


def _run(model, x, mask, padding):
    """Valid outputs, input gradient and parameter gradients of a loss over the valid positions."""
    model.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    y, _ = model(xi, mask, padding=padding)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y * w * mask[..., None]).sum().backward()
    return y, xi.grad, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_right_padding_takes_the_fused_kernel_and_equals_the_masked_path(norm_first, sdpa):
    model = _backbone(norm_first)
    x, mask = _right_padded()
    y0, gx0, gp0 = _run(model, x, mask, "any")
    assert sdpa.calls == [(True, False)] * 2  # the masked path in both layers
    sdpa.calls.clear()
    y1, gx1, gp1 = _run(model, x, mask, "right")
    assert sdpa.calls == [(False, True)] * 2  # no mask, the causal kernel
    m = mask[..., None]
    torch.testing.assert_close(y1 * m, y0 * m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(y1).all()  # the padded outputs differ, but stay finite
    assert not torch.allclose(y1 * ~m, y0 * ~m)  # ... and do differ: the mask really was skipped


def test_left_padding_keeps_the_mask(sdpa):
    model = _backbone()
    x, right = _right_padded(lengths=(12, 7, 3, 5))
    left = right.flip(-1)  # the same lengths, valid tokens last
    y, _ = model(x, left)
    assert sdpa.calls == [(True, False)] * 2
    for b in range(x.shape[0]):  # each row's valid outputs are those of its valid tokens alone
        alone, _ = model(x[b : b + 1, left[b]])
        torch.testing.assert_close(y[b, left[b]], alone[0], rtol=1e-5, atol=1e-6)


def test_a_history_keeps_the_mask(sdpa):
    """With a state the history may hold padding before the new tokens: the promise is not enough."""
    model = _backbone().eval()
    x, mask = _right_padded(lengths=(12, 7, 3, 5))
    _, state = model(x[:, :4], mask[:, :4], output_state=True, padding="right")
    sdpa.calls.clear()
    y, _ = model(x[:, 4:], mask[:, 4:], state=state, padding="right")
    assert sdpa.calls == [(True, False)] * 2
    whole, _ = model(x, mask)
    m = mask[:, 4:, None]
    torch.testing.assert_close(y * m, whole[:, 4:] * m, rtol=1e-5, atol=1e-6)


def test_bidirectional_keeps_the_mask(sdpa):
    model = _backbone(causal=False)
    x, mask = _right_padded(lengths=(12, 7, 3, 5))
    model(x, mask, padding="right")
    assert all(masked and not causal for masked, causal in sdpa.calls) and len(sdpa.calls) == 2


def test_a_mixer_without_the_argument_is_not_told():
    cfg = OmegaConf.create(dict(name="aaren", mixer="aaren", d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0))
    model = build_backbone(cfg)
    assert not model.blocks[0].takes_padding and _backbone().blocks[0].takes_padding
    x, mask = _right_padded()
    torch.testing.assert_close(model(x, mask, padding="right")[0], model(x, mask)[0], rtol=0, atol=0)


def test_an_unknown_padding_is_refused():
    x, mask = _right_padded()
    with pytest.raises(ValueError, match="padding must be one of"):
        _backbone()(x, mask, padding="left")


# --------------------------------------------------------------------------------------
# the promise, where each task makes its batches
# --------------------------------------------------------------------------------------

def _is_right_padded(mask: torch.Tensor) -> bool:
    m = torch.as_tensor(mask).long()
    return bool((m.cumprod(-1) == m).all())


def test_every_collate_pads_on_the_right():
    from tasks.classify import data as classify_data
    from tasks.events import data as events_data
    from tasks.rl import data as rl_data

    assert classify_data.PADDING == events_data.PADDING == rl_data.PADDING == "right"
    _, mask = classify_data.pad([np.ones((n, 2), np.float32) for n in (5, 2, 4)], 6)
    assert _is_right_padded(mask) and mask.sum(-1).tolist() == [5, 2, 4]

    seqs = events_data.EventSeqs(times=[np.array([0.5, 1.0, 2.0]), np.array([0.3])],
                                 marks=[np.zeros(3, np.int64), np.zeros(1, np.int64)],
                                 t_start=np.zeros(2), t_end=np.array([3.0, 1.0]), num_marks=1)
    batch = events_data.collate(seqs, [1, 0])
    assert _is_right_padded(batch["mask"]) and batch["mask"].sum(-1).tolist() == [1, 3]

    from tasks.rl.d4rl import StateStats, Trajectory

    trajs = [Trajectory(np.zeros((n, 3), np.float32), np.zeros((n, 2), np.float32), np.ones(n, np.float32),
                        np.zeros(n, bool)) for n in (10, 3)]
    windows = rl_data.WindowDataset(trajs, StateStats(np.zeros(3, np.float32), np.ones(3, np.float32),
                                                      np.zeros(3, bool)), context_len=5, rtg_scale=1.0)
    masks = torch.stack([windows[(i, s)]["mask"] for i, s in ((0, 0), (0, 8), (1, 0), (1, 2))])
    assert _is_right_padded(masks) and masks.sum(-1).tolist() == [5, 2, 3, 1]


# --------------------------------------------------------------------------------------
# a whole task: loss and gradients with the promise and without
# --------------------------------------------------------------------------------------

MODELS = {"classify": "tasks.classify.model", "events": "tasks.events.model", "rl": "tasks.rl.model"}


@pytest.mark.filterwarnings("ignore:.*self.log.*")  # no trainer attached: logging is skipped
@pytest.mark.parametrize("task", list(MODELS))
def test_a_task_with_the_promise_has_the_same_loss_and_gradients(task, monkeypatch, sdpa, one_thread):
    import importlib

    from aaren_bench.bench.tasksteps import probe

    p = probe(task, "transformer", batch=4, overrides=("model.dropout=0.0",))
    p.module.eval()  # no dropout anywhere: the two passes see the same network
    results = []
    for padding in ("right", "any"):
        monkeypatch.setattr(importlib.import_module(MODELS[task]), "PADDING", padding)
        sdpa.calls.clear()
        p.module.zero_grad(set_to_none=True)
        loss = p.module.training_step(p.batch, 0)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        loss.backward()
        results.append((loss.detach(), {n: q.grad.clone() for n, q in p.module.named_parameters() if q.grad is not None},
                        list(sdpa.calls)))
    (l1, g1, calls1), (l0, g0, calls0) = results
    assert calls1 and all(causal and not masked for masked, causal in calls1), calls1
    assert calls0 and all(masked for masked, _ in calls0), calls0
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
