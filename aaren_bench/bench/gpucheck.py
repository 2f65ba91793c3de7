"""`aaren-bench gpu-check`: what a GPU run costs, measured the first time a GPU is there.

    aaren-bench gpu-check                     # on a CUDA machine: every part (about 5 minutes on one H100)
    aaren-bench gpu-check --out gpu_check     # the table is also written to gpu_check/gpu_check.csv
    aaren-bench gpu-check --parts syncs,ops   # some parts only (see PARTS)

Without CUDA it says so, runs the parts that mean something on a CPU (host reads, operation
counts, the scan against a copy, the guard's cost, the kernels) and exits 0. One row per figure
(part, item, value, unit, note), printed as one table and written as CSV:

- ``tests``: ``pytest -m gpu`` (CUDA only): passed / failed / skipped;
- ``kernels``: which optional kernels (fla, mamba-ssm) import, and so would run with use_kernel;
- ``syncs``: device-to-host reads per training step and per validation batch (both must be 0),
  per task and backbone (aaren_bench.bench.syncs);
- ``ops``: aten operations per layer forward+backward at N = 64, 1024, 16384 (meta device);
- ``bf16``: a few bf16-autocast training steps of every task and backbone: ms per step, finite;
- ``compile``: eager and compiled (inductor) training-step time per backbone at the suite's
  classify, forecast and events sizes, in one process: per pair the first compiled step alone
  (the compilation), then interleaved eager and compiled steps; graphs, breaks, recompiles
  (CPU: only when asked, compiling C++ takes minutes per pair; ``--mixers`` picks backbones);
- ``scan``: the fast scan's forward and forward+backward at B16 N8192 D128 against a device copy
  of the same bytes (the memory floor);
- ``guard``: the scan with its non-finite guard against the bare chunked scan (forward, forward+backward);
- ``streaming``: per-token step time and state size of each backbone (aaren_bench.bench.streaming).
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import torch

from aaren_bench.bench.measure import sync, time_interleaved
from aaren_bench.bench.tasksteps import MIXERS

PARTS = ("tests", "syncs", "ops", "bf16", "compile", "scan", "guard", "streaming", "kernels")
# bf16 and compile are GPU figures: a CPU without bf16 matrix units runs bf16 products many times
# slower than float32, and inductor compiles C++ for minutes; ask for them with --parts
CPU_PARTS = ("syncs", "ops", "scan", "guard", "kernels")
COMPILE_TASKS = ("classify", "forecast", "events")


def _row(part: str, item: str, value, unit: str = "", note: str = "") -> dict:
    return {"part": part, "item": item, "value": value, "unit": unit, "note": note}


def part_tests(device: torch.device) -> list[dict]:
    """``pytest -m gpu`` in a subprocess; the summary line's counts."""
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
                             capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return [_row("tests", "pytest -m gpu", "FAIL", "", "did not finish in 240 s")]
    last = (out.stdout.strip().splitlines() or ["no output"])[-1]
    return [_row("tests", "pytest -m gpu", "pass" if out.returncode == 0 else "FAIL", "", last)]


def _kernel_vs_torch(fn, inputs: list[torch.Tensor], **kw) -> float:
    """Largest difference of outputs and input gradients between ``use_kernel`` and the torch path."""
    results = []
    for use in (False, True):
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y, _ = fn(*xs, use_kernel=use, **kw)
        grads = torch.autograd.grad(y.float().sum(), [x for x in xs if x.requires_grad])
        results.append([y, *grads])
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(*results))


def part_kernels(device: torch.device) -> list[dict]:
    from aaren_bench.ops import linear_attn_chunked, ssd_chunked
    from aaren_bench.ops.kernels import USED, available

    rows = []
    for name, (ok, why) in available().items():
        note = why
        if ok and device.type == "cuda":
            g = torch.Generator(device="cpu").manual_seed(0)
            r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
            if name == "fla":
                err = _kernel_vs_torch(linear_attn_chunked, [r(2, 4, 256, 32) for _ in range(3)])
            else:
                dt = torch.rand(2, 4, 256, generator=g).to(device)
                err = _kernel_vs_torch(ssd_chunked, [r(2, 4, 256, 32), dt, -torch.rand(4).to(device), r(2, 1, 256, 16),
                                                     r(2, 1, 256, 16)])
            note += f"; ran: outputs and gradients within {err:.1e} of the torch path"
        rows.append(_row("kernels", name, "imports" if ok else "no", "", note + ("" if name in USED or not ok else "")))
    return rows


def part_syncs(device: torch.device) -> list[dict]:
    from aaren_bench.bench.tasksteps import sync_row

    rows = []
    for task in ("classify", "forecast", "events", "rl"):
        for mixer in MIXERS:
            r = sync_row(task, mixer, device=device, batch=4)
            rows.append(_row("syncs", f"{task}/{mixer} train step", r["train_syncs"], "reads",
                             "must be 0" if not r["train_syncs"] else f"READS: {r['train_where']}"))
            if "val_syncs" in r:
                rows.append(_row("syncs", f"{task}/{mixer} val batch", r["val_syncs"], "reads",
                                 "must be 0" if not r["val_syncs"] else f"READS: {r['val_where']}"))
    return rows


def part_ops(device: torch.device) -> list[dict]:
    from aaren_bench.bench.syncs import layer_ops

    return [_row("ops", f"{m} N={n}", layer_ops(m, n, device="meta"), "aten ops", "one layer fwd+bwd, B16 d128")
            for m in MIXERS for n in (64, 1024, 16384)]


def _probe_step_ms(p, steps: int, device: torch.device, amp: bool) -> tuple[float, bool]:
    from aaren_bench.bench.tasksteps import train_step

    losses, times = [], []
    for _ in range(steps + 1):  # the first is a warm-up (and the compile, for a compiled module)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = train_step(p)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    return 1e3 * sorted(times[1:])[len(times[1:]) // 2], finite


def part_bf16(device: torch.device, steps: int = 3) -> list[dict]:
    from aaren_bench.bench.tasksteps import probe

    rows = []
    for task in ("classify", "forecast", "events", "rl"):
        for mixer in MIXERS:
            ms, finite = _probe_step_ms(probe(task, mixer, device=device), steps, device, amp=True)
            rows.append(_row("bf16", f"{task}/{mixer}", round(ms, 2), "ms/step", "finite" if finite else "NOT FINITE"))
    return rows


def _graphs() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process (dynamo's counters)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def compile_pair(task: str, mixer: str, device: torch.device, rounds: int = 5, backend: str = "inductor") -> dict:
    """Eager against compiled training steps of ``task`` with ``mixer`` at the suite size, in this process.

    Two copies of the module (same seed, same batch): one eager, one with its backbone compiled
    as ``model.compile=true`` compiles it. The compiled copy's first step (tracing, forward and
    backward compilation, one step) is timed alone; then both take one more step (warm-up) and
    ``rounds`` interleaved rounds of one eager and one compiled step each: their medians.
    """
    from aaren_bench.bench.tasksteps import probe, train_step
    from aaren_bench.nn import Backbone

    eager, compiled = probe(task, mixer, device=device), probe(task, mixer, device=device)
    backbone = next(m for m in compiled.module.modules() if isinstance(m, Backbone))  # wherever the task holds it
    backbone.compile(backend=backend)
    graphs0, breaks0 = _graphs()
    sync(device)
    t0 = time.perf_counter()
    train_step(compiled)
    sync(device)
    first = time.perf_counter() - t0
    graphs1, breaks1 = _graphs()
    t = time_interleaved({"eager": lambda: train_step(eager), "compiled": lambda: train_step(compiled)}, rounds, device)
    loss = train_step(compiled)
    return {"task": task, "mixer": mixer, "eager_s": t["eager"]["median"], "compiled_s": t["compiled"]["median"],
            "first_s": first, "graphs": graphs1 - graphs0, "breaks": breaks1 - breaks0,
            "recompiles": _graphs()[0] - graphs1, "finite": bool(torch.isfinite(loss)), "rounds": rounds}


def part_compile(device: torch.device, mixers=MIXERS, rounds: int = 5) -> list[dict]:
    """Eager and compiled training steps of each backbone inside each task at its suite size, one
    pair at a time (each pair's row is printed as soon as it is measured)."""
    rows = []
    # every backbone compiles nn.Module's one call wrapper: room for all of them in dynamo's cache
    with torch._dynamo.config.patch(cache_size_limit=256, accumulated_cache_size_limit=1024):
        for mixer in mixers:
            for task in COMPILE_TASKS:
                # each pair compiles afresh, as a run does: otherwise the shapes of the pairs before it,
                # seen by nn.Module's shared call wrapper, make dynamo mark sizes dynamic
                torch._dynamo.reset()
                try:
                    r = compile_pair(task, mixer, device, rounds)
                except Exception as err:  # one pair's failure is a figure too; the others still run
                    rows.append(_row("compile", f"{task}/{mixer}", "FAIL", "", f"{type(err).__name__}: {err}"[:300]))
                    print(f"compile  {task}/{mixer}  FAIL {rows[-1]['note']}", flush=True)
                    continue
                note = (f"compiled {r['compiled_s']:.4f} s/step ({r['eager_s'] / r['compiled_s']:.2f}x eager's speed), "
                        f"first compiled step {r['first_s']:.0f} s, {r['graphs']} graph(s) {r['breaks']} break(s), "
                        f"{r['recompiles']} recompile(s), median of {r['rounds']}"
                        + ("" if r["finite"] else ", NOT FINITE"))
                rows.append(_row("compile", f"{task}/{mixer} eager", round(r["eager_s"], 4), "s/step", note))
                print(f"compile  {task}/{mixer}  eager {r['eager_s']:.4f} s/step  {note}", flush=True)
    return rows


def part_scan(device: torch.device, B: int = 16, N: int = 8192, D: int = 128) -> list[dict]:
    """The fast scan against a copy of the same bytes (values and scores in, outputs out)."""
    from aaren_bench.ops import scan

    g = torch.Generator(device="cpu").manual_seed(0)
    s = torch.randn(B, 1, N, generator=g).to(device).requires_grad_()
    v = torch.randn(B, 1, N, D, generator=g).to(device).requires_grad_()
    w = torch.randn(B, 1, N, D, generator=g).to(device)

    def fwd():
        with torch.no_grad():
            scan(s, v)

    def fwd_bwd():
        torch.autograd.grad((scan(s, v) * w).sum(), (s, v))

    copy = v.detach().clone()
    t = time_interleaved({"fwd": fwd, "fwd+bwd": fwd_bwd, "copy": lambda: copy.clone()}, 5, device)
    floor = t["copy"]["median"]
    return [_row("scan", f"B{B} N{N} D{D} {k}", round(1e3 * t[k]["median"], 3), "ms",
                 f"{t[k]['median'] / floor:.1f}x a copy of v ({1e3 * floor:.3f} ms)") for k in ("fwd", "fwd+bwd")]


def part_guard(device: torch.device) -> list[dict]:
    """The scan with its non-finite guard over the bare chunked scan, fwd and fwd+bwd, at the issue's
    size and a classify layer's, contiguous inputs and a layer's transposed views (aaren_bench.bench.guard)."""
    from aaren_bench.bench.guard import run_guard

    return [_row("guard", f"{r['size']} {r['layout']} {r['pass_']}", r["paired"], "x bare",
                 f"median of interleaved rounds; min/min {r['ratio']}x (guard {r['guard_ms']} ms, bare {r['bare_ms']} ms); aten ops "
                 f"{r['ops_guard']} vs {r['ops_bare']}; page faults per call {r['faults_guard']} vs {r['faults_bare']}")
            for r in run_guard(device, rounds=7)]


def part_streaming(device: torch.device) -> list[dict]:
    from aaren_bench.bench.streaming import StreamSizes, run_streaming

    sizes = StreamSizes(tokens=4096, every=1024) if device.type == "cuda" else StreamSizes(tokens=256, every=128)
    out = run_streaming(sizes, device, log=lambda *a, **k: None)
    last = out[-len(MIXERS):]  # the rows at the last token
    return [_row("streaming", f"{r['backbone']} t={r['tokens']}", round(r["step_ms_median"], 3), "ms/token",
                 f"state {r['state_bytes']} B") for r in last]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder of gpu_check.csv")
    parser.add_argument("--parts", default=None,
                        help=f"comma-separated parts of {','.join(PARTS)} (default: all on CUDA, {','.join(CPU_PARTS)} "
                             f"on a CPU)")
    parser.add_argument("--mixers", default=None,
                        help=f"comma-separated backbones for the compile part (default: {','.join(MIXERS)})")


def _table(rows: list[dict]) -> str:
    cols = ("part", "item", "value", "unit", "note")
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    lines = ["  ".join(c.ljust(width.get(c, 0)) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width.get(c, 0)) for c in cols) for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.parts:
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise SystemExit(f"gpu-check: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    else:
        parts = PARTS if cuda else CPU_PARTS
    unknown = sorted(set((args.mixers or "").split(",")) - set(MIXERS) - {""}) if getattr(args, "mixers", None) else []
    if unknown:
        raise SystemExit(f"gpu-check: unknown backbone(s) {unknown} in --mixers; choose from {', '.join(MIXERS)}")
    if not cuda:
        print("gpu-check: no CUDA device here; running the CPU parts only "
              f"({', '.join(p for p in parts if p != 'tests')}): the GPU figures wait for a GPU")
        parts = tuple(p for p in parts if p != "tests")
    rows, t0 = [], time.perf_counter()
    for part in parts:
        t = time.perf_counter()
        mixers = {"mixers": args.mixers.split(",")} if part == "compile" and getattr(args, "mixers", None) else {}
        rows += globals()[f"part_{part}"](device, **mixers)
        print(f"[{part}: {time.perf_counter() - t:.0f} s]", flush=True)
    rows.append(_row("total", "wall time", round(time.perf_counter() - t0, 1), "s", str(device)))
    print(_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu_check.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written {args.out / 'gpu_check.csv'}")
    return 0
