"""Each task's module at a suite size, on synthetic batches: what the device checks step.

``probe(task, mixer)`` builds a task's LightningModule exactly as a run does (the config
``task=<task> model=<mixer>`` composes, ``Task.build_module`` builds it around
``build_backbone(cfg.model)``), from a stand-in datamodule that gives only the data sizes,
and makes batches of the shapes the task's loaders give (the default dataset of each task:
JapaneseVowels, ETTh1, Sin, HalfCheetah). No file is read, so it runs anywhere.

``train_step(module, opt, batch)`` is one optimiser step as the trainer runs it (forward,
loss, backward, step, zero_grad), without Lightning's own bookkeeping (logging to a file,
the progress bar), which is not the model's cost.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from aaren_bench.task import load_task, optimizer_factory

TASK_DATASETS = {"classify": "JapaneseVowels", "forecast": "ETTh1", "events": "Sin", "rl": "halfcheetah-collected"}
MIXERS = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")


@dataclass
class Probe:
    task: str
    mixer: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: object  # a training batch on the module's device
    val_batch: object | None  # a validation batch (None: the task validates by acting, RL)


def _sizes(task: str, cfg) -> SimpleNamespace:
    """A stand-in datamodule: the sizes ``Task.build_module`` reads from the data."""
    if task == "classify":
        return SimpleNamespace(n_channels=12, n_classes=9, max_len=29)
    if task == "forecast":
        return SimpleNamespace(n_channels=7, n_marks=4)
    if task == "events":
        return SimpleNamespace(num_marks=1)
    return SimpleNamespace(obs_dim=17, act_dim=6)  # the statistics keep their defaults: mean 0, std 1


def _batch(task: str, cfg, dm, B: int, N: int | None, g: torch.Generator):
    """A batch as the task's loader gives it; right padding where the task pads (half the rows shorter)."""
    lengths = lambda n: torch.where(torch.arange(B) % 2 == 0, n, max(1, n // 2))  # noqa: E731
    if task == "classify":
        n = N or dm.max_len
        mask = torch.arange(n)[None] < lengths(n)[:, None]
        x = torch.randn(B, n, dm.n_channels, generator=g) * mask[..., None]
        return x, mask, torch.randint(dm.n_classes, (B,), generator=g)
    if task == "forecast":
        t = cfg.task
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        return (r(B, t.seq_len, dm.n_channels), r(B, t.seq_len, dm.n_marks), r(B, t.pred_len, dm.n_channels),
                r(B, t.label_len + t.pred_len, dm.n_marks))
    if task == "events":
        n = N or 64
        mask = torch.arange(n)[None] < lengths(n)[:, None]
        dts = torch.where(mask, torch.rand(B, n, generator=g) + 0.05, torch.ones(B, n))
        times = (dts * mask).cumsum(-1)
        return {"times": times, "dts": dts, "marks": torch.zeros(B, n, dtype=torch.long), "mask": mask,
                "last_gap": torch.rand(B, generator=g), "end_mark": torch.full((B,), -1, dtype=torch.long)}
    K = N or int(cfg.task.context_len)
    mask = torch.arange(K)[None] < lengths(K)[:, None]
    steps = torch.arange(K).expand(B, K) * mask
    return {"states": torch.randn(B, K, dm.obs_dim, generator=g), "actions": torch.rand(B, K, dm.act_dim, generator=g) * 2 - 1,
            "rtg": torch.randn(B, K, generator=g), "timesteps": steps, "mask": mask}


def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(t.to(device) for t in batch)


def probe(task: str, mixer: str, device="cpu", batch: int = 16, length: int | None = None, seed: int = 0,
          overrides: tuple[str, ...] = ()) -> Probe:
    """The module of ``task`` around ``mixer`` at the suite's sizes, with its optimiser and batches."""
    from aaren_bench.nn import build_backbone
    from aaren_bench.study import compose_config

    cfg = compose_config([f"dataset={TASK_DATASETS[task]}", f"model={mixer}", *overrides])
    torch.manual_seed(seed)
    dm = _sizes(task, cfg)
    module = load_task(task).build_module(cfg, dm, build_backbone(cfg.model), optimizer_factory(cfg.task.optimizer))
    if task == "events":  # setup sets the scale from the data; the synthetic batches are in unit time
        module.model.set_time_scale(1.0)
    module = module.to(device).train()
    g = torch.Generator().manual_seed(seed)
    train_b = to_device(_batch(task, cfg, dm, batch, length, g), device)
    val_b = None if task == "rl" else to_device(_batch(task, cfg, dm, batch, length, g), device)
    return Probe(task, mixer, module, optimizer_factory(cfg.task.optimizer)(module.parameters()), train_b, val_b)


def train_step(p: Probe) -> torch.Tensor:
    """One optimiser step of the probe's module on its training batch; the loss (not read)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no trainer attached: logging is skipped
        loss = p.module.training_step(p.batch, 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    loss.backward()
    p.optimizer.step()
    p.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def validation_batch(p: Probe) -> None:
    """One validation batch of the probe's module, as ``validation_step`` runs it."""
    p.module.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        if hasattr(p.module, "on_validation_epoch_start"):
            p.module.on_validation_epoch_start()
        p.module.validation_step(p.val_batch, 0)
    p.module.train()


def sync_row(task: str, mixer: str, **kw) -> dict:
    """Device-to-host reads of one training step (after a first, warm-up step) and of one
    validation batch of ``task`` with ``mixer``, with the places that made them."""
    from aaren_bench.bench.syncs import SyncCounter, optimizer_host_state

    p = probe(task, mixer, **kw)
    train_step(p)  # the optimiser's state exists from here on
    with SyncCounter(host=optimizer_host_state(p.optimizer)) as train:
        train_step(p)
    row = {"task": task, "mixer": mixer, "train_syncs": train.total, "train_where": dict(train.where)}
    if p.val_batch is not None:
        with SyncCounter() as val:
            validation_batch(p)
        row.update(val_syncs=val.total, val_where=dict(val.where))
    return row
