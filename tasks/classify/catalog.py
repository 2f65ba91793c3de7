"""The 10 UEA classification datasets of the paper (sources: docs/protocol/classify.md).

Files live at ``<Name>/<Name>_{TRAIN,TEST}.ts`` under the data root (the
Time-Series-Library layout); a missing file is taken from the canonical zip archive.
JapaneseVowels ships inside the sktime package (a declared ``bundled`` source) and is read
from there when the data root has no copy, so the default run needs no download.
"""
from __future__ import annotations

from pathlib import Path

from aaren_bench.data.registry import DatasetSpec, RemoteFile, fetch, register

ARCHIVE = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"

# name: (train, test, dims, max length, classes, sha256 TRAIN, sha256 TEST)
UEA = {
    "JapaneseVowels": (270, 370, 12, 29, 9,
                       "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
                       "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462"),
    "Handwriting": (150, 850, 3, 152, 26,
                    "c187e2288bd7f0667ab7453de436feeadb5dd417c5778a6c62b71852b50736cc",
                    "156ee781ad41d58b4e5d48a907aef956f5a3756e1ab2d796c785db1a47863524"),
    "UWaveGestureLibrary": (120, 320, 3, 315, 8,
                            "e1d656037ceb880fe3d4ef7f83f2ee38459897ebaaada93527a17a86823bc92d",
                            "734b30171297cc4c209485020466d83dabd2b7ecf76edc10957354f2557d0964"),
    "EthanolConcentration": (261, 263, 3, 1751, 4, "", ""),
    "FaceDetection": (5890, 3524, 144, 62, 2, "", ""),
    "Heartbeat": (204, 205, 61, 405, 2, "", ""),
    "PEMS-SF": (267, 173, 963, 144, 7, "", ""),
    "SelfRegulationSCP1": (268, 293, 6, 896, 2, "", ""),
    "SelfRegulationSCP2": (200, 180, 7, 1152, 2, "", ""),
    "SpokenArabicDigits": (6599, 2199, 13, 93, 10, "", ""),
}

# JapaneseVowels ships inside sktime (the offline default): a declared source, checksummed like a download
BUNDLED = {"JapaneseVowels": "sktime:datasets/data/JapaneseVowels/JapaneseVowels_{split}.ts"}

for _name, (_ntr, _nte, _dims, _len, _cls, _sha_tr, _sha_te) in UEA.items():
    register(
        DatasetSpec(
            name=_name,
            task="classify",
            files=tuple(
                RemoteFile(
                    path=f"{_name}/{_name}_{split}.ts",
                    url=ARCHIVE.format(name=_name),
                    sha256=sha,
                    member=f"{_name}_{split}.ts",
                    bundled=BUNDLED[_name].format(split=split) if _name in BUNDLED else None,
                )
                for split, sha in (("TRAIN", _sha_tr), ("TEST", _sha_te))
            ),
            info={"train": _ntr, "test": _nte, "channels": _dims, "max_len": _len, "classes": _cls},
        )
    )


def uea_files(name: str, data_root) -> tuple[Path, Path]:
    """(TRAIN, TEST) ``.ts`` paths, found the registry's one way (data root, bundled copy, download)."""
    paths = fetch(name, data_root)
    return paths[f"{name}/{name}_TRAIN.ts"], paths[f"{name}/{name}_TEST.ts"]
