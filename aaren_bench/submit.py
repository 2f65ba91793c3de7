"""The ``train.py -m`` commands that run a study, or only its unfinished cells.

Hydra sweeps are cartesian products; a dataset selects its task, so sweeping ``dataset``
never produces an invalid pair. ``+matrix=paper`` holds the paper's sweep (38 datasets x 2
backbones x 5 seeds); a command line value (``dataset=...``, ``seed=...``) narrows it.
Forecasting horizons other than the default are a sweep of ``task.pred_len`` over the
forecasting datasets alone (other tasks have no such key).
"""
from __future__ import annotations

import shlex
from collections import defaultdict

from aaren_bench.study import DEFAULT_HORIZON, DEFAULT_PROTOCOL, MODELS, PAPER_DATASETS, SEEDS, TASK_ORDER, Cell

ALL_PAPER = [n for t in TASK_ORDER for n in PAPER_DATASETS[t]]


def _command(datasets: list[str], protocol: str, models, seeds, horizons, launcher: str, tag: str | None) -> str:
    c = ["python", "train.py", "-m", "+matrix=paper"]
    if sorted(datasets) != sorted(ALL_PAPER):
        c.append(f"dataset={','.join(datasets)}")
    if protocol != DEFAULT_PROTOCOL:
        c.append(f"protocol={protocol}")
    if tag:
        c.append(f"tag={tag}")
    if horizons is not None and tuple(horizons) != (DEFAULT_HORIZON,):
        c.append(f"task.pred_len={','.join(map(str, horizons))}")
    if tuple(models) != MODELS:
        c.append(f"model={','.join(models)}")
    if tuple(seeds) != SEEDS:
        c.append(f"seed={','.join(map(str, seeds))}")
    c.append(f"hydra/launcher={launcher}")
    return shlex.join(c)


def commands(cells: list[Cell], launcher: str = "slurm") -> list[str]:
    """The fewest sweeps that cover ``cells`` (and, being sweeps, perhaps a few finished cells,
    which ``skip_done`` skips): cells are grouped by protocol, then by their set of (backbone,
    seed) and horizons, one command per group listing its datasets."""
    # (protocol, dataset, horizon) -> {(model, seed)}
    runs: dict[tuple, set] = defaultdict(set)
    for c in cells:
        runs[(c.protocol, c.tag, c.task, c.dataset, c.horizon)].add((c.model, c.seed))
    # (protocol, dataset) -> horizons, and the (model, seed) grid they share
    by_ds: dict[tuple, dict] = defaultdict(lambda: {"horizons": set(), "grid": set()})
    for (proto, tag, task, ds, h), grid in runs.items():
        d = by_ds[(proto, tag, task, ds)]
        if h is not None:
            d["horizons"].add(h)
        d["grid"] |= grid
    groups: dict[tuple, list[str]] = defaultdict(list)
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    for (proto, tag, task, ds), d in sorted(by_ds.items(),
                                            key=lambda kv: (kv[0][0], kv[0][1] or "", order.get(kv[0][2], 9), kv[0][3])):
        models = tuple(m for m in MODELS + tuple(sorted({m for m, _ in d["grid"]} - set(MODELS)))
                       if m in {m for m, _ in d["grid"]})
        seeds = tuple(sorted({s for _, s in d["grid"]}))
        # the default horizon is the config's own: such a dataset shares a sweep with other tasks
        horizons = tuple(sorted(d["horizons"])) if d["horizons"] - {DEFAULT_HORIZON} else None
        groups[(proto, tag, models, seeds, horizons)].append(ds)
    out = []
    for (proto, tag, models, seeds, horizons), datasets in groups.items():
        out.append(_command(datasets, proto, models, seeds, horizons, launcher, tag))
    return out
