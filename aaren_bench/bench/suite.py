"""`aaren-bench bench`: the efficiency suite (CSV files, PNG plots, a text summary).

    aaren-bench bench                      # full sizes, every mixer (CPU: one to two hours on 2 cores)
    aaren-bench bench --tiny               # seconds: proves the suite works (CI)
    aaren-bench bench --only kernel --kernel-lengths 8192
    aaren-bench bench --mixers aaren,transformer   # only these backbones (and their kernels)
    python -m aaren_bench.bench.suite --out bench_results

Writes into ``--out`` (default ``bench_results/``): ``streaming.csv``, ``kernel.csv``,
``layer.csv``, the matching ``.png`` plots and ``summary.txt`` (the targets of the
efficiency issue with their measured values). Runs on CUDA when available
(``--device``), else on CPU with ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

# OpenMP threads that spin while waiting cost a scheduling slice at every operation on a
# machine shared with other processes (measured: the fast scan 1.0-2.4x cumsum with
# spinning, 0.7x without). OpenMP reads this once, when torch is first imported: set it
# in the environment yourself if torch was imported before this module.
_OMP_POLICY_USER = os.environ.get("OMP_WAIT_POLICY")
_OMP_POLICY_SET_HERE = _OMP_POLICY_USER is None and "torch" not in sys.modules
if _OMP_POLICY_SET_HERE:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

from aaren_bench.bench.kernel import KernelSizes, run_kernel  # noqa: E402
from aaren_bench.bench.layer import BACKBONES as MIXERS  # noqa: E402
from aaren_bench.bench.layer import LayerSizes, run_layer  # noqa: E402
from aaren_bench.bench.measure import hardware, write_csv, write_text  # noqa: E402
from aaren_bench.bench.plots import plot_kernel, plot_layer, plot_streaming  # noqa: E402
from aaren_bench.bench.streaming import StreamSizes, run_streaming  # noqa: E402
from aaren_bench.bench.summary import summarise  # noqa: E402

log = logging.getLogger("aaren_bench.bench")
PARTS = ("streaming", "kernel", "layer")

TINY = {
    "streaming": StreamSizes(batch=1, tokens=256, every=32, d_model=16, n_heads=2, n_layers=1, d_ff=32),
    "kernel": KernelSizes(batch=2, heads=1, dim=8, lengths=(64, 256), repeats=2, chunk=16, family_chunk=16,
                          oracle_max_n=256, hillis_steele_backward_max_n=256),
    "layer": LayerSizes(batch=2, lengths=(64, 128), d_model=16, n_heads=2, d_ff=32, repeats=2, scan_chunk=16, chunk=16),
}
FULL = {"streaming": StreamSizes(every=128), "kernel": KernelSizes(), "layer": LayerSizes()}


def _lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths such as 1024,8192; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive integers; got {text!r}")
    return values


def _mixers(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in MIXERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected comma-separated mixers from {', '.join(MIXERS)}; got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="output folder (default: bench_results)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a quick check that everything runs (CI)")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--mixers", type=_mixers, default=MIXERS,
                        help=f"comma-separated backbones to measure (default: all, {','.join(MIXERS)})")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, help="timing rounds (default: 7 kernel, 3 layer)")
    parser.add_argument("--kernel-lengths", type=_lengths, help="scan kernel lengths, e.g. 1024,8192")
    parser.add_argument("--layer-lengths", type=_lengths, help="layer training-step lengths, e.g. 256,2048,16384")
    parser.add_argument("--layer-batch", type=int, help="batch of the layer training step (default 16)")
    parser.add_argument("--max-step-s", type=float, help="layer: skip lengths whose predicted step exceeds this (s)")
    parser.add_argument("--stream-tokens", type=int, help="tokens to stream (default 16384)")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def _sizes(args) -> dict:
    sizes = dict(TINY if args.tiny else FULL)
    if args.repeats:
        sizes["kernel"] = replace(sizes["kernel"], repeats=args.repeats)
        sizes["layer"] = replace(sizes["layer"], repeats=args.repeats)
    if args.kernel_lengths:
        sizes["kernel"] = replace(sizes["kernel"], lengths=args.kernel_lengths)
    if args.layer_lengths:
        sizes["layer"] = replace(sizes["layer"], lengths=args.layer_lengths)
    if args.layer_batch:
        sizes["layer"] = replace(sizes["layer"], batch=args.layer_batch)
    if args.max_step_s:
        sizes["layer"] = replace(sizes["layer"], max_step_s=args.max_step_s)
    if args.stream_tokens:
        s = sizes["streaming"]
        if args.stream_tokens % s.every:
            raise SystemExit(f"--stream-tokens must be a multiple of {s.every}; got {args.stream_tokens}")
        sizes["streaming"] = replace(s, tokens=args.stream_tokens)
    return sizes


def run(args) -> int:
    device = _device(args.device)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1; got {args.threads}")
    torch.set_num_threads(args.threads)
    sizes = _sizes(args)
    parts = args.only or list(PARTS)
    out: Path = args.out
    where = hardware(device)
    if device.type == "cpu":
        if _OMP_POLICY_SET_HERE:
            where += ", OMP_WAIT_POLICY=PASSIVE (set by the suite)"
        elif _OMP_POLICY_USER is not None:
            where += f", OMP_WAIT_POLICY={_OMP_POLICY_USER}"
        else:
            where += ", OMP_WAIT_POLICY unset (torch was loaded first; export OMP_WAIT_POLICY=PASSIVE on a shared machine)"
    log.info("efficiency suite on %s -> %s", where, out)
    results, started = {}, time.time()
    for part in parts:
        t0 = time.time()
        if part == "streaming":
            rows = run_streaming(sizes[part], device, log.info, args.mixers)
            plot = plot_streaming
        elif part == "kernel":
            rows = run_kernel(sizes[part], device, log.info, args.mixers)
            plot = plot_kernel
        else:
            rows = run_layer(sizes[part], device, log.info, args.mixers)
            plot = plot_layer
        write_csv(out / f"{part}.csv", rows)
        plot(rows, out / f"{part}.png", f"{part}: {where}")
        results[part] = rows
        log.info("%s done in %.0f s: %s, %s", part, time.time() - t0, out / f"{part}.csv", out / f"{part}.png")
    command = "aaren-bench bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv)
    text = summarise(results, sizes, where, command, time.time() - started)
    write_text(out / "summary.txt", text)
    log.info("\n%s", text)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m aaren_bench.bench.suite", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
