"""`aaren-bench fetch NAME...` and `aaren-bench datasets`: the registry from the command line."""
from __future__ import annotations

import argparse

from aaren_bench.data.registry import (
    ChecksumError,
    DatasetNotFound,
    all_specs,
    bundled_path,
    default_data_root,
    fetch,
    get,
)


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", help="dataset names (see `aaren-bench datasets`), or 'all'")
    p.add_argument("--data-root", default=None, help="where to put the files (default: $AAREN_DATA or ./data)")


def run_fetch(args) -> int:
    names = [s.name for s in all_specs()] if args.names == ["all"] else args.names
    failed = 0
    for name in names:
        try:
            spec = get(name)
            paths = fetch(spec, args.data_root)
            for rel, path in paths.items():
                print(f"ok  {name}: {path}")
            if not spec.files:
                print(f"--  {name}: nothing to download ({spec.note or 'generated locally'})")
        except (KeyError, DatasetNotFound, ChecksumError) as e:
            failed += 1
            print(f"ERR {e}")
    return 1 if failed else 0


def add_datasets_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="only this task's datasets")
    p.add_argument("--data-root", default=None)


def run_datasets(args) -> int:
    root = args.data_root or default_data_root()
    print(f"data root: {root}")
    for spec in sorted(all_specs(args.task), key=lambda s: (s.task, s.name)):
        try:
            paths = fetch(spec, root, download=False)
            inside = any(bundled_path(f) == paths.get(f.path) for f in spec.files)
            state = "present (inside an installed package)" if inside else "present"
        except DatasetNotFound:
            state = "missing"
        except ChecksumError:
            state = "CHECKSUM MISMATCH"
        print(f"{spec.task:9s} {spec.name:24s} {state}")
    return 0
