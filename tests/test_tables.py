"""`aaren-bench tables`: statistics, the verdict rule, missing cells and the three formats."""
from __future__ import annotations

import csv
import io

import pytest

from aaren_bench import tables as T
from aaren_bench.cli import main
from aaren_bench.results import write_json_atomic
from aaren_bench.study import Cell


def write_record(runs, task, dataset, model, seed, metrics, variant="", protocol="suite", tag=None):
    horizon = int(variant[2:]) if variant else None
    cell = Cell(task, dataset, model, seed, protocol, horizon, tag).key
    rec = {"task": task, "dataset": dataset, "variant": variant, "model": model, "seed": seed, "protocol": protocol,
           "tag": tag, "metrics": metrics, "cell": cell, "wall_time_s": {"total": 60.0}, "device": "cpu"}
    write_json_atomic(runs / cell / "result.json", rec)


def test_summary_and_welch():
    s = T.summarize([0.8, 0.9, 1.0])
    assert s.mean == pytest.approx(0.9) and s.std == pytest.approx(0.1) and s.n == 3
    assert T.summarize([]) is None and T.summarize([float("nan")]) is None
    one = T.summarize([0.5])
    assert one.std == 0.0 and T.welch_p(one, s) is None
    # scipy's Welch p for two clearly separated samples is small, for identical ones 1
    far = T.summarize([0.1, 0.12, 0.11])
    assert T.welch_p(s, far) < 0.01
    assert T.welch_p(s, T.summarize([0.8, 0.9, 1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "a, t, higher, want",
    [
        ([0.90, 0.92], [0.91, 0.93], True, "comparable"),
        ([0.95, 0.96], [0.80, 0.81], True, "Aaren better"),
        ([0.95, 0.96], [0.80, 0.81], False, "Aaren worse"),  # e.g. an error metric
        ([0.5, 0.5], [0.5, 0.5], True, "comparable"),
    ],
)
def test_verdict_rule(a, t, higher, want):
    assert T.verdict(T.summarize(a), T.summarize(t), higher) == want


def test_verdict_missing_and_too_few_seeds():
    s = T.summarize([1.0])
    assert T.verdict(None, None, True) == "missing"
    assert T.verdict(s, None, True) == "missing Transformer"
    assert T.verdict(None, s, True) == "missing Aaren"
    two = T.summarize([1.0, 1.1])
    assert T.verdict(s, two, True) == "n<2" and T.verdict(two, s, True) == "n<2"
    assert T.verdict(T.summarize([5.0, 5.1]), two, True, "Mamba2") == "Mamba2 better"


def test_references_only_checked_numbers():
    refs = T.load_references()
    assert refs["rl"]["halfcheetah-medium"]["value"] == 42.6 and refs["rl"]["halfcheetah-medium"]["spread"] == 0.1
    assert refs["rl"]["hopper-medium"]["value"] == 67.6 and refs["rl"]["hopper-medium"]["spread"] == 1.0
    # the DT paper gives "the mean and variance for three seeds": the label says so, not "std"
    assert all(r["spread_is"] == "variance over 3 seeds" and "std" not in r for r in refs["rl"].values())
    assert T.fmt_ref(refs["rl"]["hopper-medium"], None) == "67.6 ± 1.0 (variance over 3 seeds)"
    assert {r["protocol"] for r in refs["rl"].values()} == {"dt"}, "the DT paper's numbers follow kzl DT's protocol"
    n = sum(len(v or {}) for v in refs.values())
    assert n == 2, "only the two numbers PROTOCOL.md lists as checked may be printed"


def test_references_need_version(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("references: {}\n")
    with pytest.raises(ValueError, match="version"):
        T.load_references(p)


def test_tables_from_records(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, (a, t) in enumerate([(0.90, 0.91), (0.92, 0.93), (0.94, 0.95)]):
        write_record(runs, "classify", "JapaneseVowels", "aaren", seed, {"test/acc": a})
        write_record(runs, "classify", "JapaneseVowels", "transformer", seed, {"test/acc": t})
    write_record(runs, "classify", "Handwriting", "aaren", 0, {"test/acc": 0.3})  # transformer missing
    for seed in range(2):
        write_record(runs, "forecast", "ETTh1", "aaren", seed, {"test/mse": 0.40 + seed / 100, "test/mae": 0.4},
                     variant="-H192")
        write_record(runs, "forecast", "ETTh1", "transformer", seed, {"test/mse": 0.60 + seed / 100,
                                                                      "test/mae": 0.5}, variant="-H192")
        write_record(runs, "forecast", "ETTh1", "aaren", seed, {"test/mse": 9.0, "test/mae": 9.0}, variant="-H720")
    write_record(runs, "rl", "hopper-medium", "aaren", 0, {"test/normalized_score": 60.0})
    write_record(runs, "rl", "hopper-medium", "aaren", 0, {"test/normalized_score": 61.0}, protocol="dt")
    write_record(runs, "classify", "JapaneseVowels", "aaren", 0, {"test/acc": 0.1}, tag="xdeadbeef")  # not a result
    write_record(runs, "classify", "JapaneseVowels", "mamba2", 0, {"test/acc": 0.5})
    (runs / "classify" / "Heartbeat" / "suite" / "aaren" / "seed0").mkdir(parents=True)
    (runs / "classify" / "Heartbeat" / "suite" / "aaren" / "seed0" / "result.json").write_text('{"task": "cla')
    # a record written before the protocol was in the key: read as the protocol it ran under
    old = {"task": "classify", "dataset": "Handwriting", "variant": "", "model": "transformer", "seed": 0,
           "metrics": {"test/acc": 0.4}, "config": {"task": {"protocol": "tslib"}}}
    write_json_atomic(runs / "classify" / "Handwriting" / "transformer" / "seed0" / "result.json", old)

    out = tmp_path / "tables"
    assert main(["tables", "--runs", str(runs), "--out", str(out), "--seeds", "3"]) == 0
    md4 = (out / "table4_classify.md").read_text()
    jv = next(l for l in md4.splitlines() if l.startswith("| JapaneseVowels "))
    # transformer first, then Aaren, then every other backbone with records; the tagged run is left out
    assert "| 93.0 ± 2.0 | 92.0 ± 2.0 | 50.0 ± 0.0 (n=1) |" in jv and "| comparable |" in jv
    assert "| n<2 |" in jv, "one Mamba2 seed: no verdict"
    hw = next(l for l in md4.splitlines() if l.startswith("| Handwriting "))
    assert "| missing | 30.0 ± 0.0 (n=1) | missing |" in hw and "missing Transformer" in hw
    assert "| Heartbeat | missing | missing | missing |  | missing |" in md4  # a partial record is not a result
    assert len([l for l in md4.splitlines() if l.startswith("| ") and "dataset" not in l]) == 10
    assert "at least 2 seeds" in md4 and "(suite protocol)" in md4
    md4t = (out / "table4_classify_tslib.md").read_text()
    assert "| Handwriting | 40.0 ± 0.0 (n=1) |" in md4t, "an old tslib record lands in the tslib table"

    md3 = (out / "table3_forecast.md").read_text()
    row = next(l for l in md3.splitlines() if l.startswith("| ETTh1-H192 "))
    assert "Aaren better" in row  # lower MSE
    assert "H720" not in md3, "only horizon 192 unless asked for"
    assert "| Traffic-H192 | missing |" in md3

    md1 = (out / "table1_rl.md").read_text()
    assert "| hopper-medium | missing | 60.0 ± 0.0 (n=1) | missing |  |" in md1, "no DT-paper number beside suite runs"
    md1dt = (out / "table1_rl_dt.md").read_text()
    assert "| hopper-medium | missing | 61.0 ± 0.0 (n=1) | missing | 67.6 ± 1.0 (variance over 3 seeds) |" in md1dt
    assert "| walker2d-medium | missing | missing | missing |  |" in md1dt, "no reference where none was checked"

    tex = (out / "table4_classify.tex").read_text()
    assert "\\begin{tabular}" in tex and "93.0 $\\pm$ 2.0" in tex and "\\%" in tex
    rows = list(csv.DictReader(io.StringIO((out / "table4_classify.csv").read_text())))
    jv = next(r for r in rows if r["dataset"] == "JapaneseVowels")
    assert float(jv["aaren_mean"]) == pytest.approx(0.92) and jv["aaren_n"] == "3"
    assert jv["verdict_aaren"] == "comparable" and 0 < float(jv["welch_p_aaren"]) <= 1
    assert jv["verdict_mamba2"] == "n<2" and jv["protocol"] == "suite"

    assert main(["tables", "--runs", str(runs), "--tables", "3", "--horizons", "all", "--format", "csv"]) == 0
    printed = capsys.readouterr().out
    assert "ETTh1-H720" in printed and "ETTh1-H96" in printed


def test_tables_bad_input(tmp_path, capsys):
    assert main(["tables", "--runs", str(tmp_path / "nope")]) == 2
    assert "no runs folder" in capsys.readouterr().err
    tmp_path.joinpath("r").mkdir()
    assert main(["tables", "--runs", str(tmp_path / "r"), "--horizons", "x"]) == 2
