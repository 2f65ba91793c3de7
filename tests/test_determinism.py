"""Run-to-run determinism with two intra-op threads, in fresh processes (issue 23).

The test session pins fewer threads, which hides any race between threads; so each case
(the fast scan plain, masked and with a NaN score; every registered mixer without and with
a padded row; forward and backward) runs in fresh child processes with
``torch.set_num_threads(2)`` (benchmarks/determinism.py ``--child``). Every child must give
the same bits for the output and all gradients, the same bits on repeated calls with fresh
allocations inside itself, and stay within the float64-oracle bound.

The cause of issue 23 (MKL's vector math library detecting the CPU lazily, racing between
the two threads of the first parallel exp; aaren_bench/ops/vector_math.py) cannot show on a
machine whose raw CPU code equals its kernel index, so the check above cannot catch it
there; the second test watches the race's precondition directly under gdb: the detection
must run once, in the main thread, outside any parallel region.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

PROCS, REPEATS = 4, 2
# the largest error against the float64 computation seen over 80 children on the CPU is
# 1.2e-7 (scan) and 7.0e-7 (mixers); the fault of issue 23 gave 5.2e-5 on the scan
BOUND = {"scan": 1e-6, "mixer": 5e-6}


def _children() -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(REPO / "benchmarks" / "determinism.py"), "--child", "--threads", "2",
           "--repeats", str(REPEATS)]
    out = []
    for _ in range(PROCS):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def test_every_op_is_bit_identical_across_fresh_two_thread_processes():
    results = _children()
    cases = set(results[0])
    assert {"scan/plain", "scan/padded", "scan/nonfinite"} <= cases
    assert {c.split("/")[0] for c in cases} >= {"aaren", "transformer", "linear_attn", "mamba2"}
    for name in sorted(cases):
        rows = [r[name] for r in results]
        assert all(r["stable"] for r in rows), f"{name}: repeated calls in one process differ"
        assert len({r["out"] for r in rows}) == 1, f"{name}: outputs differ across processes"
        assert len({r["grads"] for r in rows}) == 1, f"{name}: gradients differ across processes"
        bound = BOUND["scan" if name.startswith("scan/") else "mixer"]
        worst = max(r["err"] for r in rows)
        assert worst <= bound, f"{name}: error {worst:.2e} against float64 above {bound:.0e}"


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb (apt-get install gdb) to watch MKL's CPU detection")
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL: no vector math library to race")
def test_vector_math_detects_the_cpu_once_outside_any_parallel_region():
    cmd = [sys.executable, str(REPO / "benchmarks" / "vml_race.py"), "check"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    entries = [ln for ln in lines if ln.startswith("INIT")]
    if not any(ln.startswith("RESULT") for ln in lines) and ("ptrace" in done.stdout.lower()
                                                            or "not permitted" in done.stdout):
        pytest.skip(f"gdb may not trace processes here: {done.stdout[-300:]}")
    assert any(ln.startswith("RESULT") for ln in lines), done.stdout + done.stderr[-2000:]
    if not entries:
        pytest.skip("this torch build has no mkl_vml_serv_GetDebugCpuType symbol to watch")
    # on the code before the fix: two entries, both inside the scan's first parallel exp
    assert entries == ["INIT thread 1 parallel_region False"], "\n".join(entries)
