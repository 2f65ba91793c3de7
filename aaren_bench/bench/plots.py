"""PNG figures of the suite's CSV rows (matplotlib, Agg backend, atomic writes)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aaren_bench.bench.measure import publish  # noqa: E402

COLORS = {"aaren": "tab:blue", "transformer": "tab:red", "linear_attn": "tab:purple", "mamba2": "tab:brown",
          "mlstm": "tab:olive", "ttt": "tab:cyan",
          "fast": "tab:blue", "cumsum": "black", "hillis-steele": "tab:orange", "oracle": "tab:green",
          "ssd": "tab:brown"}
LABELS = {"fast": "aaren (fast scan)", "hillis-steele": "aaren (Hillis-Steele)", "oracle": "aaren (O(N^2) oracle)",
          "ssd": "mamba2 (SSD)", "linear_attn": "linear_attn",
          "mlstm": "mlstm (chunked)", "ttt": "ttt (dual form)"}
KERNEL_ORDER = ("cumsum", "fast", "linear_attn", "ssd", "mlstm", "ttt", "hillis-steele", "oracle")
MIB = 2.0**20
KIB = 2.0**10


def _backbones(rows: list[dict]) -> list[str]:
    """The backbones in the rows, in order of first appearance."""
    return list(dict.fromkeys(row["backbone"] for row in rows))


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def plot_streaming(rows: list[dict], path: Path, title: str) -> None:
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for k in _backbones(rows):
        r = [row for row in rows if row["backbone"] == k]
        n = [row["tokens"] for row in r]
        ax_mem.plot(n, [float(row["state_bytes"]) / KIB for row in r], label=k, color=COLORS.get(k))
        ax_time.plot(n, [row["cumulative_s"] for row in r], label=k, color=COLORS.get(k))
    ax_mem.set(xlabel="tokens streamed", ylabel="state memory (KiB, log scale)", yscale="log",
               title="memory held by the state")
    ax_time.set(xlabel="tokens streamed", ylabel="cumulative time (s)", title="cumulative time")
    for ax in (ax_mem, ax_time):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_kernel(rows: list[dict], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, pass_ in zip(axes, ("forward", "forward+backward")):
        for variant in KERNEL_ORDER:
            r = sorted((row["N"], row["median_s"]) for row in rows if row["variant"] == variant and row["pass"] == pass_)
            if r:
                ax.plot(*zip(*r), marker="o", label=LABELS.get(variant, variant), color=COLORS[variant],
                        ls=":" if variant in ("hillis-steele", "oracle") else "-")
        ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="median time (s)", title=pass_)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_layer(rows: list[dict], path: Path, title: str) -> None:
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for k in _backbones(rows):
        r = sorted((row["N"], row["median_s"], row["peak_bytes"], row["saved_bytes"]) for row in rows
                   if row["backbone"] == k and not row.get("skipped"))
        if not r:
            continue
        n, t, peak, saved = zip(*r)
        ax_t.plot(n, t, marker="o", label=k, color=COLORS.get(k))
        ax_m.plot(n, [p / MIB for p in peak], marker="o", label=f"{k}: peak", color=COLORS.get(k))
        ax_m.plot(n, [s / MIB for s in saved], ls="--", label=f"{k}: saved for backward", color=COLORS.get(k))
    ax_t.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="median time (s)", title="training step (fwd+bwd), one layer")
    ax_m.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="memory (MiB)", title="training memory, one layer")
    for ax in (ax_t, ax_m):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
