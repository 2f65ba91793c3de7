"""Train a tiny model of one task for a few steps and test it, on N CPU processes (Lightning's DDP
with gloo), then write what rank 0 saw: ``python tests/ddp_run.py TASK DEVICES DATA OUT [--weights W]``.

Used by tests/test_distributed.py, which runs it on 2 processes and on 1 and compares: the steps
and weights of training (the global batch is the same), and the test metrics of the 2-process
weights against a 1-process test of the same weights over the whole test set (the sample count
included). ``DATA`` holds the files the fixtures wrote (classify: Toy_{TRAIN,TEST}.ts, forecast:
toy.csv, rl: collected.hdf5); events data is generated here. ``--weights`` (1 process): also test
those weights (``metrics_of_weights``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aaren_bench.nn import build_backbone  # noqa: E402

BATCH = 4  # the global batch: 2 per process on 2 processes
STEPS = 4


def backbone():
    return build_backbone(dict(mixer="aaren", d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0))


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def classify(data: Path):
    from tasks.classify.data import UEADataModule
    from tasks.classify.model import SeriesClassifier
    from tasks.classify.module import Classifier

    dm = UEADataModule(data / "Toy_TRAIN.ts", data / "Toy_TEST.ts", name="Toy", batch_size=BATCH)
    dm.setup()
    module = Classifier(SeriesClassifier(backbone(), n_channels=dm.n_channels, n_classes=dm.n_classes,
                                         max_len=dm.max_len, dropout=0.0), adam)
    return dm, module


def forecast(data: Path):
    from tasks.forecast.data import ForecastDataModule
    from tasks.forecast.model import Forecaster
    from tasks.forecast.module import ForecastModule

    dm = ForecastDataModule(data / "toy.csv", split="ratio", seq_len=12, label_len=4, pred_len=6, freq="h",
                            n_channels=3, batch_size=BATCH)
    net = Forecaster(backbone(), dm.n_channels, dm.n_marks, 12, 4, 6, head="patch", dropout=0.0, patch_len=3)
    return dm, ForecastModule(net, adam)


def events(data: Path):
    from tasks.events.data import EventDataModule, split_sequences
    from tasks.events.model import EventModel
    from tasks.events.module import EventModule
    from tasks.events.synthetic import generate_sin

    splits = split_sequences(generate_sin(n_seqs=40, t_end=10.0, seed=3), [16, 7])  # 17 test sequences
    dm = EventDataModule(splits, batch_size=BATCH)
    return dm, EventModule(EventModel(backbone(), num_marks=dm.num_marks), adam)  # the scale: in setup


def rl(data: Path):
    from tasks.rl.data import RLDataModule
    from tasks.rl.model import DecisionModel
    from tasks.rl.module import DecisionModule, Evaluation

    dm = RLDataModule(data / "collected.hdf5", rtg_scale=1000.0, context_len=5, batch_size=BATCH,
                      steps_per_epoch=STEPS, eval_episodes=3, eval_batch=2)
    dm.setup()
    model = DecisionModel(backbone(), dm.obs_dim, dm.act_dim, 64)
    model.set_state_stats(dm.stats)
    evaluation = Evaluation(env="halfcheetah", targets=(6000.0,), rtg_scale=1000.0, context_len=5, episodes=3,
                            max_ep_len=10)
    return dm, DecisionModule(model, adam, evaluation, warmup_steps=2)


BUILD = {"classify": classify, "forecast": forecast, "events": events, "rl": rl}


def trainer(devices: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                     max_steps=STEPS, limit_val_batches=0, use_distributed_sampler=False, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=sorted(BUILD))
    ap.add_argument("devices", type=int)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--weights", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0)
    dm, module = BUILD[a.task](a.data)
    t = trainer(a.devices)
    t.fit(module, datamodule=dm)
    trained = {k: v.clone() for k, v in module.state_dict().items()}
    metrics = {k: float(v) for k, v in t.test(module, datamodule=dm, verbose=False)[0].items()}
    out = {"world": t.world_size, "steps": int(t.global_step), "metrics": metrics}
    if a.weights:  # the other run's weights, tested here
        module.load_state_dict(torch.load(a.weights, weights_only=True))
        out["metrics_of_weights"] = {k: float(v) for k, v in t.test(module, datamodule=dm, verbose=False)[0].items()}
    if t.global_rank == 0:
        a.out.mkdir(parents=True, exist_ok=True)
        torch.save(trained, a.out / "weights.pt")
        (a.out / "result.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
