"""`aaren-bench gpu-check` without CUDA: says so, runs CPU parts, writes its CSV, exits 0."""
from __future__ import annotations

import csv

import pytest
import torch

from aaren_bench.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_check_on_cpu(tmp_path, capsys):
    assert main(["gpu-check", "--out", str(tmp_path), "--parts", "ops,kernels"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device here" in out and any(line.startswith("part ") for line in out.splitlines())
    rows = list(csv.DictReader(open(tmp_path / "gpu_check.csv")))
    ops = {r["item"]: int(r["value"]) for r in rows if r["part"] == "ops"}
    assert ops["mamba2 N=1024"] == ops["mamba2 N=16384"]  # flat in N
    assert {r["item"] for r in rows if r["part"] == "kernels"} == {"fla", "mamba_ssm"}


def test_gpu_check_refuses_unknown_parts(tmp_path):
    with pytest.raises(SystemExit, match="unknown part"):
        main(["gpu-check", "--out", str(tmp_path), "--parts", "warp"])


@pytest.mark.parametrize("task", ["classify", "events"])  # the backbone at module.backbone and module.model.backbone
def test_compile_pair_times_both_and_counts_one_graph(task, one_thread):
    """The compile part's measurement on one pair (aot_eager: no C++ compilation in CI; the
    device check uses inductor)."""
    from aaren_bench.bench.gpucheck import compile_pair

    torch._dynamo.reset()
    with torch._dynamo.config.patch(cache_size_limit=64):
        r = compile_pair(task, "transformer", torch.device("cpu"), rounds=2, backend="aot_eager")
    assert (r["graphs"], r["breaks"], r["recompiles"]) == (1, 0, 0), r
    assert r["finite"] and r["eager_s"] > 0 and r["compiled_s"] > 0 and r["first_s"] > 0


def test_gpu_check_refuses_unknown_mixers(tmp_path):
    with pytest.raises(SystemExit, match="unknown backbone"):
        main(["gpu-check", "--out", str(tmp_path), "--parts", "compile", "--mixers", "rnn"])
