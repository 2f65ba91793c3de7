"""Dataset registry (sources, checksums, download, cache) and shared data helpers."""
from aaren_bench.data.registry import (
    ChecksumError,
    DatasetNotFound,
    DatasetSpec,
    RegistryFiles,
    RemoteFile,
    all_specs,
    default_data_root,
    fetch,
    get,
    local_paths,
    locate,
    register,
    sha256sum,
    verify_file,
)

__all__ = [
    "ChecksumError",
    "DatasetNotFound",
    "DatasetSpec",
    "RegistryFiles",
    "RemoteFile",
    "all_specs",
    "default_data_root",
    "fetch",
    "get",
    "local_paths",
    "locate",
    "register",
    "sha256sum",
    "verify_file",
]
