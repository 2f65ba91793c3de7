"""Mixed precision: a few training steps of every task and backbone under bf16-mixed, with
finite gradients and losses close to float32's; 16-mixed too on CUDA (on CPU Lightning runs
16-mixed as bf16-mixed); bf16-true and 16-true are refused early with what to use instead.

Tolerance. Under autocast the matmuls read their inputs rounded to bfloat16 (8 significant
bits: a relative rounding error up to u = 2^-8 ~ 0.4%) and accumulate in float32; losses,
normalisations and the scan's running sums stay in float32. A loss is a mean over many
outputs whose rounding errors point every way, so it is off by much less than one rounding
of one input: the first step (same weights, same batch, no dropout) is held to u. The later
steps train from weights that drifted apart by the rounding of each update (Adam's first
updates are lr-sized whatever the gradient's size): held to 2u. Measured on CPU (4 steps,
tiny models): at most 6.4e-4 on the first step and 7.7e-4 over all steps, a tenth of the
bounds. A loss off by more is not rounding: a wrong cast, an overflow, float32 state lost.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from aaren_bench.errors import ConfigError
from aaren_bench.run import build, train
from aaren_bench.study import compose_config

BACKBONES = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")
STEPS = 4
U_BF16 = 2.0**-8
FIRST_RTOL, LATER_RTOL = U_BF16, 2 * U_BF16
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.n_layers=2", "task.backbone.dropout=0.0",
        "logger=none"]
TASKS = {
    "classify": ["dataset=JapaneseVowels", "task.batch_size=16"],
    "forecast": ["dataset=ETTh1", "task.pred_len=96", "task.seq_len=48", "task.label_len=24", "task.batch_size=8"],
    "events": ["dataset=Sin", "task.batch_size=8"],
    "rl": ["dataset=halfcheetah-collected", "task.batch_size=4", "task.context_len=5", "task.steps_per_epoch=8",
           "task.warmup_steps=1"],
}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A tiny D4RL-layout file written in the simulator (as tests/rl do)."""
    pytest.importorskip("mujoco")
    from aaren_bench.cli import main as cli

    out = tmp_path_factory.mktemp("d4rl") / "halfcheetah_collected-v2.hdf5"
    assert cli(["collect", "--env", "halfcheetah", "--episodes", "2", "--max-steps", "30", "--seed", "1",
                "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def etth1_like(tmp_path_factory):
    """A generated file in ETTh1's layout (hourly, 7 channels, OT last, the 12/4/4-month split's
    14,400 rows): daily and weekly cycles plus noise, so the test needs no data root or network."""
    n, channels = 14_400, ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
    t = np.arange(n)[:, None]
    rng = np.random.default_rng(0)
    values = (np.sin(2 * np.pi * t / 24 + np.arange(7)) + 0.5 * np.sin(2 * np.pi * t / 168)
              + 0.3 * rng.standard_normal((n, 7)))
    df = pd.DataFrame(values, columns=list(channels))
    df.insert(0, "date", pd.date_range("2016-07-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"))
    path = tmp_path_factory.mktemp("ett") / "ETTh1.csv"
    df.to_csv(path, index=False)
    return path


class Steps(L.Callback):
    """The loss of every training step, and whether every gradient was finite before each update."""

    def __init__(self):
        self.losses: list[float] = []
        self.finite: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach().float()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.finite.append(bool(grads) and all(torch.isfinite(g).all() for g in grads))


def config(task: str, model: str, collected: Path | None = None, *extra: str):
    over = [*TASKS[task], f"model={model}", *TINY, *extra]
    if task == "rl":
        over.append(f"dataset.file={collected}")
    return compose_config(over)


def run_steps(task: str, model: str, precision: str, accelerator: str = "cpu", collected: Path | None = None) -> Steps:
    """STEPS training steps of the built module under ``precision``, from seed 0 (the same initial
    weights and batches for every precision)."""
    cfg = config(task, model, collected)
    L.seed_everything(0)
    built = build(cfg)
    steps = Steps()
    L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=STEPS, limit_val_batches=0,
              num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[steps]).fit(built.module, datamodule=built.datamodule)
    return steps


_reference: dict = {}


def float32_losses(task, model, accelerator, collected) -> list[float]:
    key = (task, model, accelerator)
    if key not in _reference:
        _reference[key] = run_steps(task, model, "32-true", accelerator, collected).losses
    return _reference[key]


def check_mixed(task, model, precision, accelerator, collected):
    ref = float32_losses(task, model, accelerator, collected)
    mixed = run_steps(task, model, precision, accelerator, collected)
    assert len(mixed.losses) == len(ref) == STEPS
    assert all(mixed.finite) and len(mixed.finite) == STEPS, f"non-finite gradients under {precision}: {mixed.finite}"
    rel = [abs(m - r) / abs(r) for m, r in zip(mixed.losses, ref)]
    assert rel[0] <= FIRST_RTOL, f"first-step loss {mixed.losses[0]} vs float32 {ref[0]} (rel {rel[0]:.2e})"
    assert max(rel) <= LATER_RTOL, f"losses {mixed.losses} vs float32 {ref} (rel {[f'{r:.1e}' for r in rel]})"
    return mixed.losses, ref


def _collected_for(task, request):
    """The data a task's case needs besides the shipped/generated sets: RL's collected file;
    forecasting reads the generated ETTh1-layout file instead of the registry's (no download)."""
    if task == "forecast":
        path = request.getfixturevalue("etth1_like")
        mp = request.getfixturevalue("monkeypatch")
        for method in ("fetch", "paths"):  # the registry's files of ETTh1 are the generated one
            mp.setattr(f"aaren_bench.data.RegistryFiles.{method}", lambda self: {"ETTh1.csv": path})
    return request.getfixturevalue("collected") if task == "rl" else None


@pytest.mark.parametrize("model", BACKBONES)
@pytest.mark.parametrize("task", TASKS)
def test_bf16_mixed_trains_like_float32(task, model, request, one_thread):
    check_mixed(task, model, "bf16-mixed", "cpu", _collected_for(task, request))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ("bf16-mixed", "16-mixed"))
@pytest.mark.parametrize("model", BACKBONES)
@pytest.mark.parametrize("task", TASKS)
def test_mixed_precision_on_cuda(task, model, precision, request):
    check_mixed(task, model, precision, "gpu", _collected_for(task, request))


def test_run_loop_under_bf16_mixed(runs_dir):
    """The README's example precision through the whole run: fit, test, a record with finite metrics."""
    cfg = compose_config(["dataset=JapaneseVowels", "model=aaren", *TINY[:-1], "trainer.max_epochs=1",
                          "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                          "trainer.precision=bf16-mixed", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false", "tag=bf16"])
    rec = train(cfg)
    assert rec["precision"] == "bf16-mixed" and rec["global_steps"] == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in rec["metrics"].values())


@pytest.mark.parametrize("precision,instead", [("bf16-true", "bf16-mixed"), ("16-true", "16-mixed")])
def test_half_precision_weights_are_refused_with_what_to_use(precision, instead, runs_dir):
    cfg = compose_config(["dataset=JapaneseVowels", f"trainer.precision={precision}", "tag=half"])
    with pytest.raises(ConfigError, match=f"trainer.precision={instead}"):
        train(cfg)
    assert not runs_dir.exists()  # refused before a cell folder is made
