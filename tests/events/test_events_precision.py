"""The events model under bf16 autocast at a large time scale: the shift to data units in float32.

Scaling every time by s and the model's time scale with it changes nothing the backbone sees
(it reads times / s): the per-event NLL moves by exactly the Jacobian, log s per scored time.
Under autocast that holds to float32 rounding only if the log-scale shift is added in float32;
added in bfloat16 (8 bits) at s = 3e4 (log s = 10.3, bf16 spacing 0.0625) it was off by 1e-3
nats/event here, and more with the sharp mixtures training makes: held to 2e-4.
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from aaren_bench.nn import build_backbone
from tasks.events.likelihood import sequence_scores
from tasks.events.model import EventModel


def _nll(scale: float, amp: bool) -> float:
    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(name="aaren", mixer="aaren", d_model=32, n_layers=2, n_heads=2, d_ff=64,
                                dropout=0.0, norm_first=True))
    model = EventModel(build_backbone(cfg), num_marks=1, time_scale=scale).eval()
    g = torch.Generator().manual_seed(0)
    B, N = 16, 64
    dts = (torch.rand(B, N, generator=g) * 2 + 0.05) * scale
    batch = {"times": dts.cumsum(-1), "dts": dts, "marks": torch.zeros(B, N, dtype=torch.long),
             "mask": torch.ones(B, N, dtype=torch.bool), "last_gap": torch.rand(B, generator=g) * scale,
             "end_mark": torch.full((B,), -1)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        mix, logits = model(batch)
        assert mix.mu.dtype == torch.float32  # the shifted means never round to half precision
        sc = sequence_scores(mix, logits, batch)
    return float(-(sc.time_ll + sc.mark_ll + sc.surv_ll).sum() / sc.n_scored.sum())


def test_time_shift_is_float32_under_autocast(one_thread):
    jacobian = _nll(3e4, amp=False) - _nll(1.0, amp=False)  # log(3e4) per scored time, in float32
    shifted = _nll(3e4, amp=True) - _nll(1.0, amp=True)
    assert shifted == pytest.approx(jacobian, abs=2e-4)
