"""The registry's download path, tested on local files (file:// URLs): atomic, verified."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

from aaren_bench.data import ChecksumError, DatasetNotFound, DatasetSpec, RemoteFile, fetch


def spec_for(url, sha="", member=None, path="toy/file.csv"):
    return DatasetSpec(name="toy", task="classify", files=(RemoteFile(path, url, sha, member),))


def test_download_verifies_and_caches(tmp_path):
    src = tmp_path / "src.csv"
    src.write_text("a,b\n1,2\n")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    root = tmp_path / "root"
    paths = fetch(spec_for(src.as_uri(), sha), root)
    assert paths["toy/file.csv"].read_text() == "a,b\n1,2\n"
    assert not list((root / "toy").glob(".*part"))  # no temporary file left behind
    src.unlink()  # cached: a second fetch needs no source
    assert fetch(spec_for(src.as_uri(), sha), root)["toy/file.csv"].exists()


def test_download_from_zip_member(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("Toy/Toy_TRAIN.ts", "hello")
    paths = fetch(spec_for(z.as_uri(), member="Toy_TRAIN.ts", path="Toy/Toy_TRAIN.ts"), tmp_path / "root")
    assert paths["Toy/Toy_TRAIN.ts"].read_text() == "hello"


def test_bad_checksum_after_download(tmp_path):
    src = tmp_path / "src.csv"
    src.write_text("tampered\n")
    with pytest.raises(ChecksumError, match="does not match"):
        fetch(spec_for(src.as_uri(), "0" * 64), tmp_path / "root")


def test_unreachable_source(tmp_path):
    with pytest.raises(DatasetNotFound, match="download failed"):
        fetch(spec_for((tmp_path / "nowhere.csv").as_uri()), tmp_path / "root")


def test_failed_download_leaves_the_data_root_untouched(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFound):
        fetch(spec_for((tmp_path / "nowhere.csv").as_uri(), path="deep/er/file.csv"), root)
    assert not root.exists()


def test_cli_fetch_and_list(tmp_path, monkeypatch, capsys):
    import urllib.error

    from aaren_bench.cli import main

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert main(["fetch", "Heartbeat", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Heartbeat/Heartbeat_TRAIN.ts" in out and "timeseriesclassification.com" in out
    assert main(["datasets", "--task", "classify", "--data-root", str(tmp_path)]) == 0
    assert "JapaneseVowels           present (inside an installed package)" in capsys.readouterr().out
