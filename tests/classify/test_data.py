"""UEA loading, padding, scaling, splits and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from aaren_bench.data import ChecksumError, DatasetNotFound, get
from tasks.classify.catalog import uea_files
from tasks.classify.data import UEADataModule, fit_scaler, pad, read_ts, stratified_split


def write_ts(path, series, labels, name="Toy"):
    """A minimal UEA .ts file: series is a list of (length, channels) arrays."""
    dims = series[0].shape[1]
    equal = len({len(s) for s in series}) == 1
    lines = [f"@problemName {name}", "@timeStamps false", "@missing true", "@univariate " + ("true" if dims == 1 else "false"),
             f"@dimensions {dims}", f"@equalLength {'true' if equal else 'false'}",
             f"@classLabel true {' '.join(sorted(set(labels)))}", "@data"]
    for s, y in zip(series, labels):
        chans = [",".join("NaN" if np.isnan(v) else repr(float(v)) for v in s[:, c]) for c in range(dims)]
        lines.append(":".join(chans) + f":{y}")
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_split(tmp_path, n=12, dims=2, seed=0, name="TRAIN", lengths=(5, 8)):
    rng = np.random.default_rng(seed)
    series = [rng.normal(size=(rng.integers(*lengths), dims)) for _ in range(n)]
    labels = [str(i % 3) for i in range(n)]
    return write_ts(tmp_path / f"Toy_{name}.ts", series, labels), series, labels


def test_pad_and_mask():
    x, m = pad([np.ones((2, 3), np.float32), 2 * np.ones((4, 3), np.float32)], 5)
    assert x.shape == (2, 5, 3) and m.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert x[0, 2:].sum() == 0 and x[1, :4].min() == 2


def test_scaler_uses_real_steps_only():
    x, m = pad([np.array([[1.0], [3.0]], np.float32), np.array([[5.0], [7.0], [9.0]], np.float32)], 4)
    mean, std = fit_scaler(x, m)
    # hand computation over the 5 real values 1, 3, 5, 7, 9
    assert mean.tolist() == pytest.approx([5.0])
    assert std.tolist() == pytest.approx([np.sqrt(8.0)])


def test_stratified_split_keeps_every_class():
    labels = np.array(["a"] * 10 + ["b"] * 5 + ["c"] * 2)
    tr, va = stratified_split(labels, 0.2, seed=0)
    assert set(tr) | set(va) == set(range(17)) and not set(tr) & set(va)
    assert sorted(labels[va].tolist()) == ["a", "a", "b", "c"]
    assert set(labels[tr]) == {"a", "b", "c"}
    assert np.array_equal(stratified_split(labels, 0.2, seed=0)[1], va)  # deterministic


def test_read_ts_roundtrip(tmp_path):
    path, series, labels = toy_split(tmp_path)
    got = read_ts(path)
    assert got.labels.tolist() == labels
    for a, b in zip(got.values, series):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_holdout_uses_train_statistics_and_tslib_per_split(tmp_path):
    """validation=holdout with train statistics (the suite's); validation=test with each split's own (the anchor's)."""
    tr, *_ = toy_split(tmp_path, name="TRAIN", seed=0)
    te, *_ = toy_split(tmp_path, name="TEST", seed=1)
    dm = UEADataModule(tr, te, name="Toy", validation="holdout", statistics="train", val_fraction=0.25)
    dm.setup()
    x, m, _ = dm.train_set.tensors
    assert abs(float(x[m].mean())) < 1e-5  # the train part is centred by its own statistics
    xt, mt, _ = dm.test_set.tensors
    assert abs(float(xt[mt].mean())) > 1e-3  # the test part is not re-centred
    assert len(dm.val_set) == 3 and len(dm.train_set) == 9
    dm2 = UEADataModule(tr, te, name="Toy", validation="test", statistics="per_split")
    dm2.setup()
    xt2, mt2, _ = dm2.test_set.tensors
    assert abs(float(xt2[mt2].mean())) < 1e-5  # the anchor scales every split by itself
    assert dm2.val_set is dm2.test_set or len(dm2.val_set) == len(dm2.test_set)


def test_nan_values_interpolated_with_warning_or_error(tmp_path):
    s = [np.array([[1.0], [np.nan], [3.0]]), np.array([[1.0], [2.0], [4.0]])]
    path = write_ts(tmp_path / "n.ts", s, ["a", "b"])
    with pytest.warns(UserWarning, match="missing values"):
        got = read_ts(path)
    assert got.values[0][:, 0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="NaN"):
        read_ts(path, nan_policy="error")


def test_train_test_dimension_mismatch(tmp_path):
    tr, *_ = toy_split(tmp_path, name="TRAIN", dims=2)
    te, *_ = toy_split(tmp_path, name="TEST", dims=3)
    with pytest.raises(ValueError, match="dimensions"):
        UEADataModule(tr, te, name="Toy")


def test_unseen_test_label(tmp_path):
    tr, *_ = toy_split(tmp_path, name="TRAIN")
    te = write_ts(tmp_path / "Toy_TEST.ts", [np.zeros((4, 2))], ["zebra"])
    with pytest.raises(ValueError, match="never seen"):
        UEADataModule(tr, te, name="Toy")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_text("@problemName x\n@data\n1,2:3,4\n")
    with pytest.raises(ValueError, match="could not read"):
        read_ts(bad)


def test_japanese_vowels_is_bundled_and_checksummed():
    train, test = uea_files("JapaneseVowels", data_root=None)
    assert train.name == "JapaneseVowels_TRAIN.ts" and test.exists()
    ds = read_ts(train)
    assert len(ds.values) == 270 and ds.channels == 12
    assert {len(v) for v in ds.values} <= set(range(7, 30))


def test_missing_dataset_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    with pytest.raises(DatasetNotFound) as e:
        uea_files("Heartbeat", tmp_path)
    msg = str(e.value)
    assert "Heartbeat/Heartbeat_TRAIN.ts" in msg and "timeseriesclassification.com" in msg
    assert "aaren-bench fetch Heartbeat" in msg and str(tmp_path) in msg


def test_checksum_mismatch(tmp_path):
    spec = get("Handwriting")
    for f in spec.files:
        (tmp_path / f.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.path).write_text("not the real file\n")
    with pytest.raises(ChecksumError, match="expected sha256"):
        uea_files("Handwriting", tmp_path)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError, match="JapaneseVowels"):
        get("JapaneseVowel")


def test_handwriting_real_file(shared_data):
    train, test = uea_files("Handwriting", shared_data)
    dm = UEADataModule(train, test, name="Handwriting")
    assert (dm.n_channels, dm.n_classes, dm.max_len) == (3, 26, 152)


def _offline(*a, **k):
    import urllib.error

    raise urllib.error.URLError("no network in this test")
