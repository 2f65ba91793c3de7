"""A layer's training step (forward + backward) for every mixer of the family.

One block of each backbone (same norms, feed-forward, sizes; only the token mixer differs:
Aaren's scan, the Transformer's ``scaled_dot_product_attention`` with ``is_causal=True``,
linear attention's, Mamba-2's and mLSTM's chunked forms, TTT-Linear's dual form) on a batch of random inputs; the loss is the
mean square of the output. Time: the backbones take turns, median and minimum over rounds. Memory, per step: the peak above what was in use before it
(see :mod:`aaren_bench.bench.measure` for the method), and the bytes the autograd graph
keeps for the backward pass (unique storages of the saved tensors), which needs no
allocator support and is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from aaren_bench.bench.measure import peak_memory, time_interleaved
from aaren_bench.nn import Backbone, mixer_factory

BACKBONES = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")
# how a step's time grows with N, for skipping a length predicted to take too long
GROWTH = {"transformer": 2.0}  # the others are linear in N


@dataclass
class LayerSizes:
    batch: int = 16
    lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)
    d_model: int = 128
    n_heads: int = 1  # 128 dimensions per head
    d_ff: int = 256
    repeats: int = 3
    max_step_s: float = 60.0  # skip a length whose predicted step time exceeds this
    scan_chunk: int = 32
    chunk: int = 64  # linear attention's, Mamba-2's and mLSTM's block


def build(kind: str, sizes: LayerSizes, device: torch.device) -> Backbone:
    torch.manual_seed(0)
    options = {"aaren": {"scan_chunk": sizes.scan_chunk}, "linear_attn": {"chunk": sizes.chunk},
               "mamba2": {"chunk": sizes.chunk}, "mlstm": {"chunk": sizes.chunk}}.get(kind, {})
    mixer = mixer_factory(kind, n_heads=sizes.n_heads, **options)
    model = Backbone(mixer, d_model=sizes.d_model, n_layers=1, d_ff=sizes.d_ff, dropout=0.0)
    return model.to(device).train()


def _train_step(model: Backbone, x: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        model(x)[0].square().mean().backward()

    return step


def saved_for_backward_bytes(model: Backbone, x: torch.Tensor) -> int:
    """Bytes of the distinct storages the autograd graph saves during one forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x)[0].square().mean()
    del loss
    return sum(storages.values())


def run_layer(sizes: LayerSizes, device: torch.device, log=print, backbones=BACKBONES) -> list[dict]:
    """One row per (backbone, N): step time, peak memory, saved-for-backward bytes."""
    models = {k: build(k, sizes, device) for k in backbones}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    rows = []
    last: dict[str, tuple[int, float]] = {}
    for N in sizes.lengths:
        x = torch.randn(sizes.batch, N, sizes.d_model, generator=torch.Generator().manual_seed(N)).to(device)
        run = {}
        for k in backbones:
            if k in last:
                n0, t0 = last[k]
                predicted = t0 * (N / n0) ** GROWTH.get(k, 1.0)
                if predicted > sizes.max_step_s:
                    log(f"layer N={N}: {k} skipped (predicted step {predicted:.0f} s > max_step_s {sizes.max_step_s:g} s)")
                    rows.append({"backbone": k, "N": N, "batch": sizes.batch, "d_model": sizes.d_model, "skipped": "over time budget"})
                    continue
            run[k] = _train_step(models[k], x)
        if not run:
            continue
        res = time_interleaved(run, sizes.repeats, device)
        for k, step in run.items():
            peak = peak_memory(step, device)
            saved = saved_for_backward_bytes(models[k], x)
            last[k] = (N, res[k]["median"])
            rows.append(
                {"backbone": k, "N": N, "batch": sizes.batch, "d_model": sizes.d_model, "skipped": "",
                 "median_s": res[k]["median"], "min_s": res[k]["min"], "runs": res[k]["runs"],
                 "peak_bytes": peak, "saved_bytes": saved, "params": params[k]}
            )
        msg = ", ".join(f"{k} {res[k]['median'] * 1e3:.0f} ms" for k in run)
        if "transformer" in run:
            msg += " (/ transformer: " + ", ".join(
                f"{k} {res[k]['median'] / res['transformer']['median']:.2f}" for k in run if k != "transformer") + ")"
        log(f"layer N={N}: {msg}")
        del x, run
    return rows
