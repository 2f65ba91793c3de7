"""`aaren-bench <command>`: the suite's command line besides `train.py`.

Each command lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "fetch": ("aaren_bench.data.fetch_cli", "download and verify datasets into the data root"),
    "datasets": ("aaren_bench.data.fetch_cli", "list the registry: every dataset, its task and whether it is present"),
    "plan": ("aaren_bench.plan", "plan the paper's matrix: jobs, what is done, compute estimate"),
    "tables": ("aaren_bench.tables", "rebuild the paper's tables from the result records"),
    "bench": ("aaren_bench.bench.suite", "run the efficiency suite (CSV, PNG plots, summary)"),
    "collect": ("tasks.rl.collect", "write a D4RL-layout HDF5 dataset from gymnasium rollouts"),
    "gpu-check": ("aaren_bench.bench.gpucheck", "measure a GPU's costs: host reads, bf16 steps, compile, scan, kernels"),
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="aaren-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name != chosen:  # only the chosen command's module is imported
            continue
        mod = importlib.import_module(module)
        add = getattr(mod, f"add_{name}_arguments", None) or mod.add_arguments
        add(p)
        p.set_defaults(_run=getattr(mod, f"run_{name}", None) or mod.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
