"""Device-to-host reads, counted on any device (the CPU included).

On a GPU every read of a tensor's value by the host (``float(t)``, ``t.item()``, ``bool(t)``,
``if t.any():``, ``torch.equal``) waits for every queued kernel: the GPU idles while the host
catches up, and a compiled graph breaks there. On the CPU the same reads cost nothing, so they
go unnoticed; but they reach the dispatcher as the same few aten operations whatever the
device, and a dispatch mode sees them::

    with SyncCounter() as syncs:
        loss = module.training_step(batch, 0); loss.backward(); opt.step()
    assert syncs.total == 0, syncs.report()

Counted (:data:`SYNC_OPS`): ``aten._local_scalar_dense`` (what ``item``, ``float``, ``int``,
``bool`` and ``is_nonzero`` end in), ``aten.equal``, and a copy of a non-CPU tensor to the
CPU (``.cpu()``, ``.tolist()`` and ``.numpy()`` of a device tensor). Not seen: a read of a
tensor that already lives on the CPU by ``.tolist()`` / ``.numpy()`` (no operation reaches the
dispatcher), which is no sync where the data is on the host anyway.

``host``: tensors that live on the CPU on every device, whose reads are no sync and are
counted apart (``host_reads``). :func:`optimizer_host_state` lists the usual ones: the step
counts of torch's non-capturable optimisers (Adam, AdamW, RAdam), which torch keeps on the
CPU beside CUDA parameters so that the update reads them without a sync.
"""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SYNC_OPS = (aten._local_scalar_dense, aten.equal, aten.is_nonzero, aten.item)
_COPIES = (aten._to_copy, aten.copy_)
_REPO = str(Path(__file__).resolve().parents[2])


def _to_host(func, args, kwargs) -> bool:
    """A copy from a non-CPU tensor into host memory."""
    if func.overloadpacket is aten._to_copy:
        src, dev = args[0], kwargs.get("device")
        return src.device.type != "cpu" and dev is not None and torch.device(dev).type == "cpu"
    dst, src = args[0], args[1]
    return src.device.type != "cpu" and dst.device.type == "cpu"


def _caller() -> str:
    """file:line of the innermost frame of this repository outside this module (where the read is)."""
    for frame in reversed(traceback.extract_stack()):
        if (frame.filename.startswith(_REPO) and frame.filename != __file__
                and "site-packages" not in frame.filename):  # a virtualenv inside the checkout is not the project
            return f"{Path(frame.filename).relative_to(_REPO)}:{frame.lineno}"
    return "?"


class SyncCounter(TorchDispatchMode):
    """Counts device-to-host reads while active; ``where`` maps file:line -> count."""

    def __init__(self, where: bool = True, host=()):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.where: collections.Counter[str] = collections.Counter()
        self.host_reads = 0
        self._locate, self._host = where, {id(t) for t in host}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        hit = packet in SYNC_OPS or (packet in _COPIES and _to_host(func, args, kwargs))
        if hit and args and id(args[0]) in self._host:
            self.host_reads += 1
        elif hit:
            self.counts[str(packet)] += 1
            if self._locate:
                self.where[_caller()] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        """One line per place that read the device, most frequent first."""
        if not self.total:
            return "no device-to-host reads"
        lines = [f"{n:4d}  {place}" for place, n in self.where.most_common()]
        return f"{self.total} device-to-host reads ({dict(self.counts)}):\n" + "\n".join(lines)


def optimizer_host_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimiser's per-parameter step counts (0-dim tensors kept on the CPU unless the
    optimiser is capturable or fused); they exist after its first step."""
    return [st["step"] for st in optimizer.state.values()
            if isinstance(st.get("step"), torch.Tensor) and st["step"].dim() == 0 and st["step"].device.type == "cpu"]


def count_syncs(fn, *args, **kwargs) -> tuple[object, SyncCounter]:
    """``fn(*args, **kwargs)`` under a :class:`SyncCounter`: (its result, the counter)."""
    with SyncCounter() as counter:
        out = fn(*args, **kwargs)
    return out, counter


class OpCounter(TorchDispatchMode):
    """Counts the aten operations that reach the dispatcher (each a kernel launch on a GPU,
    short of fusion): ``total``, and ``counts`` by name."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def layer_ops(mixer: str, length: int, batch: int = 16, d_model: int = 128, n_heads: int = 8, device="cpu") -> int:
    """aten operations of one backbone layer's forward and backward at (batch, length, d_model),
    the mask included (half the rows padded). Every tensor is made on ``device``: ``meta``
    counts without computing (for the lengths a CPU cannot afford), which is exact as long as
    the layer reads nothing on the host."""
    from omegaconf import OmegaConf

    from aaren_bench.nn import build_backbone

    cfg = OmegaConf.create(dict(name=mixer, mixer=mixer, d_model=d_model, n_layers=1, n_heads=n_heads,
                                d_ff=2 * d_model, dropout=0.0, norm_first=True))
    model = build_backbone(cfg).to(device)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    mask[::2, length // 2:] = False
    with OpCounter() as ops:
        y, _ = model(x, mask)
        y.sum().backward()
    return ops.total
