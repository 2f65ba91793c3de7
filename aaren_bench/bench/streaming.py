"""The paper's efficiency figure: streaming inference one token at a time.

Aaren, the Transformer, linear attention and Mamba-2 (same block, same size) each consume the
same sequence token by token through ``Backbone.step``. The models take turns at every token,
so all see the same background load. Recorded every ``every`` tokens: the bytes held by the state
(measured from its tensors, ``BackboneState.nbytes()``), the cumulative time, and the
median time of one step over the last ``every`` tokens.

To compare Aaren's step far into the sequence with its step near the start without load
drifting in between, Aaren's state after the first ``every`` tokens is kept, and at every
later token one more step is timed from that early state (its result is thrown away):
``early_step_ms_median`` is measured in the same window as ``step_ms_median``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from aaren_bench.bench.measure import sync
from aaren_bench.nn import Backbone, mixer_factory


@dataclass
class StreamSizes:
    batch: int = 1
    tokens: int = 16384
    every: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256


BACKBONES = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")


def build(kind: str, sizes: StreamSizes, device: torch.device) -> Backbone:
    torch.manual_seed(0)
    mixer = mixer_factory(kind, n_heads=sizes.n_heads)
    model = Backbone(mixer, d_model=sizes.d_model, n_layers=sizes.n_layers, d_ff=sizes.d_ff, dropout=0.0)
    return model.to(device).eval()


def _timed(fn, device: torch.device, keep=None) -> float:
    """Seconds for fn(); with keep=(states, k), store fn's new state in states[k]."""
    sync(device)
    t0 = time.perf_counter()
    _, state = fn()
    sync(device)
    dt = time.perf_counter() - t0
    if keep is not None:
        keep[0][keep[1]] = state
    return dt


@torch.no_grad()
def run_streaming(sizes: StreamSizes, device: torch.device, log=print, backbones=BACKBONES) -> list[dict]:
    """One row per (backbone, checkpoint): tokens, state bytes, cumulative and per-step time."""
    if sizes.tokens < sizes.every or sizes.tokens % sizes.every:
        raise ValueError(f"tokens ({sizes.tokens}) must be a positive multiple of every ({sizes.every})")
    models = {k: build(k, sizes, device) for k in backbones}
    early_kind = "aaren" if "aaren" in models else None  # the constant-time check is Aaren's
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    states = {k: m.init_state(sizes.batch, device=device) for k, m in models.items()}
    x = torch.randn(sizes.batch, sizes.tokens, sizes.d_model, generator=torch.Generator().manual_seed(0)).to(device)
    for k, m in models.items():  # warm-up on a throw-away state
        m.step(x[:, 0], m.init_state(sizes.batch, device=device))
    total = {k: 0.0 for k in models}
    window = {k: [] for k in models}
    early_state, early_window = None, []
    rows = []
    for t in range(sizes.tokens):
        # the extra early-state step goes first at odd tokens, last at even ones: no order bias
        if early_state is not None and t % 2:
            early_window.append(_timed(lambda: models[early_kind].step(x[:, t], early_state), device))
        for k in models:
            dt = _timed(lambda: models[k].step(x[:, t], states[k]), device, keep=(states, k))
            total[k] += dt
            window[k].append(dt)
        if early_state is not None and not t % 2:
            early_window.append(_timed(lambda: models[early_kind].step(x[:, t], early_state), device))
        if (t + 1) % sizes.every == 0:
            for k in models:
                early = early_window if k == early_kind and early_window else [float("nan")]
                rows.append(
                    {"backbone": k, "tokens": t + 1, "state_bytes": states[k].nbytes(), "cumulative_s": total[k],
                     "step_ms_median": 1e3 * statistics.median(window[k]), "step_ms_min": 1e3 * min(window[k]),
                     "early_step_ms_median": 1e3 * statistics.median(early),
                     "batch": sizes.batch, "d_model": sizes.d_model, "n_layers": sizes.n_layers, "params": params[k]}
                )
                window[k] = []
            early_window = []
            if early_state is None and early_kind:
                early_state = states[early_kind]
            if (t + 1) % (sizes.every * 16) == 0 or t + 1 == sizes.tokens:
                log(f"streaming {t + 1} tokens: " + "; ".join(
                    f"{r['backbone']} state {r['state_bytes']} B, {r['cumulative_s']:.1f} s" for r in rows[-len(models):]))
    return rows
