"""Dataset registry (sources, checksums, download, cache) and shared data helpers."""
from aaren_bench.data.registry import (
    ChecksumError,
    DatasetNotFound,
    DatasetSpec,
    RemoteFile,
    all_specs,
    default_data_root,
    fetch,
    get,
    locate,
    register,
    sha256sum,
    verify_file,
)

__all__ = [
    "ChecksumError",
    "DatasetNotFound",
    "DatasetSpec",
    "RemoteFile",
    "all_specs",
    "default_data_root",
    "fetch",
    "get",
    "locate",
    "register",
    "sha256sum",
    "verify_file",
]
