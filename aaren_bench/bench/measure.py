"""How the suite measures: interleaved wall-clock timing, peak memory, atomic files.

Timing: every variant is warmed up once, then the variants take turns (one run each per
round) so that a burst of load from other processes hits all of them alike; the suite
reports the median and the minimum over rounds. On CUDA every run is synchronised.

Peak memory of a callable:
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
  memory allocated before the call;
- CPU (Linux): the process's peak resident set size during the call (``VmHWM`` in
  /proc/self/status, reset through /proc/self/clear_refs) minus its resident size before.
  Large tensors are mapped and unmapped by the C allocator, so this follows the live tensors;
  other processes do not count. Where /proc is not available the figure is left empty.
"""
from __future__ import annotations

import csv
import ctypes
import ctypes.util
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """{name: {"median": s, "min": s, "runs": n}}; fns run in turn, ``repeats`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up: first-call allocations, lazy initialisation
        fn()
        sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"median": statistics.median(ts), "min": min(ts), "runs": len(ts)} for name, ts in times.items()
    }


_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_bytes(field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+)\s+kB", _PROC_STATUS.read_text())
    if m is None:
        raise OSError(f"{field} not in {_PROC_STATUS}")
    return int(m.group(1)) * 1024


def _malloc_trim() -> None:
    """Return free heap pages to the system (glibc); a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_supported() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _rss_bytes("VmHWM")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Bytes of memory the call needed above what was in use before it (NaN if unknown)."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    if not cpu_peak_supported():
        return float("nan")
    _malloc_trim()
    before = _rss_bytes("VmRSS")
    _CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    fn()
    return float(max(0, _rss_bytes("VmHWM") - before))


def publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file the usual permissions (mkstemp makes it 0600),
    then rename it into place: readers see the old file or the new one, never half."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write rows atomically (a temporary file in the same folder, then a rename)."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hardware(device: torch.device) -> str:
    """A one-line description of where the figures were measured."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
