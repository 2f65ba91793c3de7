"""The dataset registry: what each dataset is, where it comes from, how to get it.

Every dataset of the suite is a :class:`DatasetSpec` (its name, task, files with their
canonical URLs and checksums, the facts its task needs such as channels or classes). Each
task's catalogue (``tasks/<task>/catalog.py``) registers its specs at import; :func:`get`
finds a spec by name across all of them.

:func:`fetch` is the one way a dataset's files are found: the data root first, then a copy
that ships inside an installed package (a declared ``bundled`` source, e.g. sktime's
JapaneseVowels), then the canonical download. Nothing is generated as a side effect:
data made in a simulator comes from an explicit command (``aaren-bench collect``).

Files live under a *data root*: ``$AAREN_DATA`` if set, else ``<repo>/data``, or whatever
a config passes (``paths.data_root``). :func:`fetch` returns local paths, downloading a
missing file into the root, verifying its size and sha256, and writing it atomically.
When a file is absent and cannot be downloaded, the error names the file, its URL and
where to put it.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aaren_bench.errors import SuiteError

__all__ = [
    "ChecksumError",
    "DatasetNotFound",
    "DatasetSpec",
    "RemoteFile",
    "all_specs",
    "default_data_root",
    "fetch",
    "get",
    "register",
    "sha256sum",
    "verify_file",
]


class DatasetNotFound(SuiteError, FileNotFoundError):
    """A dataset file is missing locally and could not be downloaded."""


class ChecksumError(SuiteError, ValueError):
    """A file on disk does not match the checksum pinned in the registry."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    path: where it lives under the data root (e.g. ``ETT-small/ETTh1.csv``).
    url: its canonical source; a ``.zip`` URL is unpacked and ``member`` taken from it.
    sha256: the pinned checksum ("" where no verified copy has been examined yet).
    """

    path: str
    url: str
    sha256: str = ""
    member: str | None = None  # the file inside a zip archive
    bundled: str | None = None  # "<package>:<path inside it>": a copy shipped with an installed package


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    files: tuple[RemoteFile, ...] = ()
    info: dict = field(default_factory=dict)  # sizes, classes, ... for docs and checks
    note: str = ""  # how to obtain it when no URL can serve it (licences, credentials)


_REGISTRY: dict[str, DatasetSpec] = {}
_LOADED = False


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"dataset {spec.name!r} registered twice with different specs")
    _REGISTRY[spec.name] = spec
    return spec


def _load_catalogues() -> None:
    global _LOADED
    if _LOADED:
        return
    import tasks

    for mod in pkgutil.iter_modules(tasks.__path__):
        if mod.ispkg and importlib.util.find_spec(f"tasks.{mod.name}.catalog") is not None:
            importlib.import_module(f"tasks.{mod.name}.catalog")
    _LOADED = True


def all_specs(task: str | None = None) -> list[DatasetSpec]:
    _load_catalogues()
    return [s for s in _REGISTRY.values() if task is None or s.task == task]


def get(name: str) -> DatasetSpec:
    _load_catalogues()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown dataset {name!r}. Known datasets: {valid}")
    return _REGISTRY[name]


def default_data_root() -> Path:
    env = os.environ.get("AAREN_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data"


def sha256sum(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, f: RemoteFile) -> None:
    if not f.sha256:
        return
    got = sha256sum(path)
    if got != f.sha256:
        raise ChecksumError(
            f"{path} does not match the pinned checksum\n  expected sha256 {f.sha256}\n  found    sha256 {got}\n"
            f"The file is corrupt or a different version. Delete it and run `aaren-bench fetch` again, "
            f"or place a verified copy from {f.url} there."
        )


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` atomically (a temporary file renamed into place).

    The source is opened first: a failed download leaves the data root untouched.
    """
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(resp, out, length=1 << 20)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def fetch(name_or_spec: str | DatasetSpec, data_root: str | Path | None = None, download: bool = True) -> dict[str, Path]:
    """Local paths of every file of a dataset, downloading what is missing.

    Returns {file.path: absolute path}. Raises :class:`DatasetNotFound` with what to do
    when a file is missing and cannot be fetched, :class:`ChecksumError` on a mismatch.
    """
    spec = get(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    root = Path(data_root).expanduser() if data_root else default_data_root()
    out: dict[str, Path] = {}
    for f in spec.files:
        local = root / f.path
        shipped = bundled_path(f)
        if not local.exists() and shipped is not None:
            verify_file(shipped, f)
            out[f.path] = shipped
            continue
        if not local.exists():
            if not download or not f.url:
                raise DatasetNotFound(_missing_message(spec, f, local, "downloading is off" if f.url else spec.note))
            with _download_lock(local):  # processes that share the data root download it once
                if not local.exists():
                    try:
                        _fetch_one(f, local)
                    except (urllib.error.URLError, OSError, zipfile.BadZipFile, TimeoutError) as e:
                        raise DatasetNotFound(_missing_message(spec, f, local, f"download failed: {e}")) from e
        verify_file(local, f)
        out[f.path] = local
    return out


@contextmanager
def _download_lock(local: Path):
    """An exclusive lock, in the system's temporary folder, on downloading ``local``: a second process
    of the node waits, then finds the file in place (nothing is written to the data root before the
    download succeeds; processes of other nodes write their own temporary files, renamed into place)."""
    key = hashlib.sha1(str(local.resolve()).encode()).hexdigest()[:16]
    fd = os.open(Path(tempfile.gettempdir()) / f"aaren-bench-download-{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def local_paths(name_or_spec: str | DatasetSpec, data_root: str | Path | None = None) -> dict[str, Path]:
    """Where a dataset's files lie now (the data root, else a bundled copy), without downloading or
    checking them again: for a datamodule's ``setup`` after ``prepare_data`` fetched them."""
    spec = get(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    root = Path(data_root).expanduser() if data_root else default_data_root()
    out = {}
    for f in spec.files:
        local, shipped = root / f.path, bundled_path(f)
        if not local.exists() and shipped is None:
            raise DatasetNotFound(_missing_message(spec, f, local, "it was not fetched (prepare_data)"))
        out[f.path] = local if local.exists() else shipped
    return out


@dataclass(frozen=True)
class RegistryFiles:
    """A registered dataset's files, for a datamodule: ``fetch`` (download what is missing and verify
    it) in ``prepare_data``, once per node, and ``paths`` (no download, no second checksum) in ``setup``."""

    name: str
    data_root: str | Path | None = None

    def fetch(self) -> dict[str, Path]:
        return fetch(self.name, self.data_root)

    def paths(self) -> dict[str, Path]:
        return local_paths(self.name, self.data_root)


def bundled_path(f: RemoteFile) -> Path | None:
    """The copy of ``f`` inside an installed package (``RemoteFile.bundled``), None when absent."""
    if not f.bundled:
        return None
    package, _, inner = f.bundled.partition(":")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / inner
    return path if path.exists() else None


def locate(name: str, data_root: str | Path | None = None) -> dict[str, Path] | None:
    """Local paths of a dataset's files without downloading; None when one is missing."""
    try:
        return fetch(name, data_root, download=False)
    except DatasetNotFound:
        return None


def _fetch_one(f: RemoteFile, local: Path) -> None:
    if f.member is None:
        _download(f.url, local)
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive.zip"
        _download(f.url, archive)
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(f.member)]
            if not names:
                raise zipfile.BadZipFile(f"{f.url} has no member {f.member}")
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, part = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".part")
            try:
                with z.open(names[0]) as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, local)
            except BaseException:
                Path(part).unlink(missing_ok=True)
                raise


def _missing_message(spec: DatasetSpec, f: RemoteFile, local: Path, why: str) -> str:
    lines = [
        f"dataset {spec.name!r} ({spec.task}) is missing its file {f.path}",
        f"  looked for: {local}",
    ]
    if why:
        lines.append(f"  reason: {why}")
    if f.url:
        lines.append(f"  canonical source: {f.url}" + (f" (member {f.member})" if f.member else ""))
        lines.append(f"  fetch it with: aaren-bench fetch {spec.name} --data-root {local.parents[len(Path(f.path).parts) - 1]}")
    lines.append(
        f"  or place the file at {local} yourself (set AAREN_DATA or paths.data_root to use another data folder)"
    )
    if f.sha256:
        lines.append(f"  expected sha256: {f.sha256}")
    return "\n".join(lines)
