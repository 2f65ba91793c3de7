"""Issue 23's cause, shown under gdb: MKL VML's lazy CPU detection racing between two threads.

ATen hands ``exp`` / ``log`` of a contiguous float tensor to MKL's vector math library (VML) in
parallel pieces; VML detects the CPU type on its first call, into a static variable, storing
first the raw CPU code and then the mapped kernel-table index (see aaren_bench/ops/vector_math.py).
A thread whose first VML call falls between the two stores reads the raw code as the index and
may run another kernel (on an AVX-512 machine: the low-accuracy "EP" one). This script runs
the issue's call (the fast scan on s (2, 1, 100), v (2, 1, 100, 8), seed 0, two threads) in a
child under gdb, in one of two modes:

    python benchmarks/vml_race.py check [--repo PATH]
        where the detection runs: one line per entry into VML's detection path (thread, and
        whether an OpenMP parallel region is on its stack), then the child's result line.
        Fixed code: one entry, outside any parallel region (aaren_bench.ops settles it on import).

    python benchmarks/vml_race.py force [--repo PATH] [--raw 9] [--standin 3]
        forces the bad interleaving: the first thread to detect is held right after storing the
        raw code, which is set to ``--raw`` (this machine's own code may map to itself, making
        the race harmless here), while the other thread makes its VML call; ``--standin`` is
        the table row the held thread then gets for that code (3, the AVX2 kernels, instead of
        the AVX-512 row 5 that an AVX2-only CPU cannot run). Prints the kernel each thread ran
        and the child's output hash and largest error against float64.

``--repo`` picks the code the child imports (default: this checkout). Needs gdb and a torch
CPU build with MKL linked in (the symbols below); the offsets inside the detection function
are read from its disassembly, not hard-coded.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DETECT = "mkl_vml_serv_cpu_detect"  # VML's cached CPU type
INIT_PATH = "mkl_vml_serv_GetDebugCpuType"  # called only when that cache is still empty


def child() -> None:
    """The issue's call, first VML use of the process; prints its hash and float64 error."""
    import torch

    from aaren_bench.ops.scan import scan, scan_oracle

    torch.set_num_threads(2)
    torch.manual_seed(0)
    s, v = torch.randn(2, 1, 100), torch.randn(2, 1, 100, 8)
    o = scan(s, v)
    err = (o.double() - scan_oracle(s.double(), v.double())).abs()
    digest = hashlib.sha1(o.numpy().tobytes()).hexdigest()[:12]
    print(f"RESULT hash {digest} max_err {err.max().item():.3g} "
          f"(batch 0: {err[0].max().item():.3g}, batch 1: {err[1].max().item():.3g})", flush=True)


def run(mode: str, repo: Path, raw: int, standin: int, timeout: int = 600) -> str:
    """Run the child under gdb with this file as the gdb script; return gdb's filtered output."""
    if shutil.which("gdb") is None:
        raise RuntimeError("gdb is not installed: install it (apt-get install gdb) to run this check")
    env = dict(os.environ, PYTHONPATH=str(repo), VML_RACE_MODE=mode, VML_RACE_RAW=str(raw),
               VML_RACE_STANDIN=str(standin))
    cmd = ["gdb", "-q", "-batch", "-nx", "-x", str(Path(__file__).resolve()),
           "--args", sys.executable, str(Path(__file__).resolve()), "child"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines()
             if ln.startswith(("RESULT", "INIT", "KERNEL", "FORCE", "Traceback", "Python Exception"))
             or "Error" in ln or "ptrace" in ln.lower() or "not permitted" in ln]
    return "\n".join(lines)


# ---- the part below runs inside gdb (this file given to gdb -x) ---------------------------

def _gdb_detect_layout(gdb) -> dict:
    """Addresses inside the detection function, read from its disassembly: the cached type,
    the instruction after the raw code is stored, and the raw -> index table."""
    text = gdb.execute(f"x/40i {DETECT}", to_string=True).splitlines()
    out = {}
    cache = re.search(r"# (0x[0-9a-f]+) <" + DETECT + r"\.", text[0])
    out["cache"] = int(cache.group(1), 16)
    for i, line in enumerate(text):
        if "call" in line and "mkl_serv_vml_cpu_detect" in line:
            out["after_store"] = int(re.search(r"(0x[0-9a-f]+)", text[i + 2]).group(1), 16)
        if "lea" in line and "(%rip)" in line and "table" not in out and "after_store" in out:
            out["table"] = int(re.search(r"# (0x[0-9a-f]+)", line).group(1), 16)
    return out


def _gdb_check(gdb) -> None:
    class Entry(gdb.Breakpoint):
        def stop(self):
            bt = gdb.execute("bt", to_string=True)
            parallel = "GOMP_parallel" in bt or "invoke_parallel" in bt or "libgomp" in bt
            print(f"INIT thread {gdb.selected_thread().num} parallel_region {parallel}", flush=True)
            return False

    Entry(INIT_PATH)
    gdb.execute("run")


def _in_omp(gdb, thread) -> bool:
    """Whether ``thread`` runs OpenMP code (the pool's worker, or the master inside a region)."""
    thread.switch()
    return "gomp" in gdb.execute("bt", to_string=True).lower()


def _gdb_force(gdb, raw: int, standin: int) -> None:
    class Kernel(gdb.Breakpoint):
        def stop(self):
            print(f"KERNEL thread {gdb.selected_thread().num} {self.location}", flush=True)
            return False

    class FirstParallel(gdb.Breakpoint):  # the first VML call made inside a parallel region
        def stop(self):
            return "gomp" in gdb.execute("bt", to_string=True).lower()

    first = FirstParallel(DETECT)
    gdb.execute("run")
    first.delete()
    lay = _gdb_detect_layout(gdb)
    held = gdb.selected_thread()
    if int(gdb.parse_and_eval(f"*(int*){lay['cache']}")) != -1:
        print("FORCE cpu type detected before the first parallel call: no interleaving possible",
              flush=True)
        gdb.execute("continue")
        return
    gdb.execute("set scheduler-locking on")
    stored = gdb.Breakpoint(f"*{lay['after_store']}")
    gdb.execute("continue")  # the held thread stores its raw code
    stored.delete()
    own = int(gdb.parse_and_eval("$eax"))
    for cmd in (f"set var *(int*){lay['cache']} = {raw}", f"set var $eax = {raw}",
                f"set var *(int*){lay['table'] + 4 * raw} = {standin}"):
        gdb.execute(cmd)
    print(f"FORCE thread {held.num} held after storing raw code {own} (set to {raw}, row {standin})", flush=True)
    names = {ln.split()[-1] for ln in gdb.execute("info functions ^mkl_vml_kernel_sExp_", to_string=True)
             .splitlines() if "mkl_vml_kernel_sExp_" in ln}
    for n in sorted(names):
        Kernel(n)
    other = next(t for t in gdb.selected_inferior().threads() if t.num != held.num and _in_omp(gdb, t))
    other.switch()
    reached = gdb.Breakpoint("mkl_vml_serv_threader_s_1i_1o")
    gdb.execute("continue")  # only the other thread runs: detection read, kernel chosen
    reached.delete()
    print(f"FORCE thread {other.num} ran while thread {held.num} was held", flush=True)
    gdb.execute("set scheduler-locking off")
    gdb.execute("continue")


def _in_gdb() -> None:
    import gdb  # noqa: F401  (only inside gdb)

    for cmd in ("set pagination off", "set confirm off", "set breakpoint pending on"):
        gdb.execute(cmd)
    mode = os.environ["VML_RACE_MODE"]
    if mode == "check":
        _gdb_check(gdb)
    else:
        _gdb_force(gdb, int(os.environ["VML_RACE_RAW"]), int(os.environ["VML_RACE_STANDIN"]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["check", "force", "child"])
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose aaren_bench the child imports")
    p.add_argument("--raw", type=int, default=9, help="raw CPU code to stand in (9: an AVX-512 machine)")
    p.add_argument("--standin", type=int, default=3, help="kernel row the held thread gets for it")
    args = p.parse_args(argv)
    if args.mode == "child":
        child()
        return
    print(run(args.mode, args.repo.resolve(), args.raw, args.standin))


if __name__ == "__main__":
    try:
        import gdb  # noqa: F401
    except ImportError:
        main()
    else:
        _in_gdb()
