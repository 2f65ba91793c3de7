"""The efficiency suite runs end to end at tiny sizes and writes its files.

These are not timed tests: the figures themselves come from `aaren-bench bench` at full
size (docs/BENCHMARKS.md). Here: every file appears, holds the expected rows, and the
measuring helpers measure what they claim.
"""
from __future__ import annotations

import csv
import importlib

import pytest
import torch

from aaren_bench.bench import measure, suite

FAMILY = ("aaren", "transformer", "linear_attn", "mamba2", "mlstm", "ttt")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["--tiny", "--out", str(out), "--device", "cpu", "--threads", "1", "--repeats", "1",
            "--stream-tokens", "64", "--kernel-lengths", "48", "--layer-lengths", "32"]
    assert suite.main(args) == 0
    return out


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_file_is_written(tiny_run):
    for part in ("streaming", "kernel", "layer"):
        assert (tiny_run / f"{part}.csv").stat().st_size > 0
        assert (tiny_run / f"{part}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tiny_run.glob(".*.tmp")), "temporary files left behind"
    assert (tiny_run / "summary.txt").stat().st_mode & 0o044, "results must be readable by others"


def test_kernel_rows_cover_every_variant(tiny_run):
    rows = read(tiny_run / "kernel.csv")
    got = {(r["variant"], r["pass"]) for r in rows}
    for variant in ("cumsum", "fast", "hillis-steele", "oracle", "linear_attn", "ssd", "mlstm", "ttt"):
        assert (variant, "forward") in got and (variant, "forward+backward") in got
    assert all(float(r["median_s"]) > 0 for r in rows)


def test_streaming_state_sizes(tiny_run):
    rows = read(tiny_run / "streaming.csv")
    state = {k: [int(r["state_bytes"]) for r in rows if r["backbone"] == k] for k in FAMILY}
    for k in ("aaren", "linear_attn", "mamba2", "mlstm", "ttt"):  # constant-size recurrent states
        assert len(state[k]) == 2 and len(set(state[k])) == 1, k
    kv = state["transformer"]
    assert len(kv) == 2 and kv[-1] > kv[0] > max(state["aaren"][0], state["linear_attn"][0], state["mamba2"][0])


def test_layer_rows_have_time_and_memory(tiny_run):
    rows = read(tiny_run / "layer.csv")
    assert {r["backbone"] for r in rows} == set(FAMILY)
    for r in rows:
        assert float(r["median_s"]) > 0 and int(r["saved_bytes"]) > 0 and int(r["params"]) > 0


def test_mixers_option_selects_backbones_and_kernels(tmp_path):
    args = ["--tiny", "--out", str(tmp_path), "--device", "cpu", "--threads", "1", "--repeats", "1",
            "--stream-tokens", "32", "--kernel-lengths", "32", "--layer-lengths", "16", "--mixers", "mamba2,aaren"]
    assert suite.main(args) == 0
    assert {r["backbone"] for r in read(tmp_path / "layer.csv")} == {"mamba2", "aaren"}
    assert {r["backbone"] for r in read(tmp_path / "streaming.csv")} == {"mamba2", "aaren"}
    assert {r["variant"] for r in read(tmp_path / "kernel.csv")} == {"cumsum", "ssd", "fast", "hillis-steele", "oracle"}
    text = (tmp_path / "summary.txt").read_text()
    assert "[PASS] Mamba-2 state size independent of N" in text and "Transformer KV cache" not in text


def test_summary_names_the_targets(tiny_run):
    text = (tiny_run / "summary.txt").read_text()
    assert "measured on:" in text
    assert "fast forward <= 2x cumsum" in text
    assert "[PASS] Aaren state size independent of N" in text
    assert "[PASS] Linear attention state size independent of N" in text
    assert "[PASS] Mamba-2 state size independent of N" in text
    assert "[PASS] Transformer KV cache grows linearly" in text
    assert "linear attention (chunked)" in text and "Mamba-2 SSD (chunked)" in text


def test_bench_is_an_aaren_bench_command():
    from aaren_bench.cli import COMMANDS

    module = importlib.import_module(COMMANDS["bench"][0])
    assert module is suite and callable(module.add_arguments) and callable(module.run)


def test_bad_arguments_say_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        suite.main(["--kernel-lengths", "abc", "--out", str(tmp_path)])
    assert "comma-separated lengths" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.main(["--mixers", "aaren,rwkv", "--out", str(tmp_path)])
    assert "comma-separated mixers" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            suite.main(["--device", "cuda", "--out", str(tmp_path)])


def test_interleaved_timing_runs_every_variant():
    calls = {"a": 0, "b": 0}

    def bump(k):
        return lambda: calls.__setitem__(k, calls[k] + 1)

    res = measure.time_interleaved({"a": bump("a"), "b": bump("b")}, repeats=3, device=torch.device("cpu"))
    assert calls == {"a": 4, "b": 4}  # one warm-up + three rounds each
    assert res["a"]["runs"] == 3 and 0 <= res["a"]["min"] <= res["a"]["median"]


def test_cpu_peak_memory_sees_a_large_allocation():
    if not measure.cpu_peak_supported():
        pytest.skip("/proc/self/clear_refs not available: the CPU peak is reported as NaN")
    n = 64 * 2**20

    def alloc():
        t = torch.ones(n // 4)  # 64 MiB, touched
        return float(t[-1])

    peak = measure.peak_memory(alloc, torch.device("cpu"))
    assert 0.9 * n <= peak <= 2 * n
    assert measure.peak_memory(lambda: None, torch.device("cpu")) < 0.1 * n


def test_cpu_peak_memory_counts_reused_heap_pages():
    """Small blocks come back from the heap on a second call: still counted."""
    if not measure.cpu_peak_supported():
        pytest.skip("/proc/self/clear_refs not available: the CPU peak is reported as NaN")
    m = 8 * 2**20

    def two_blocks():
        a, b = torch.ones(m // 4), torch.ones(m // 4)
        return float(a[-1] + b[-1])

    for _ in range(3):
        assert measure.peak_memory(two_blocks, torch.device("cpu")) >= 1.8 * m
