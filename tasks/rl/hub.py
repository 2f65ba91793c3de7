"""D4RL -v2 from the Hugging Face hub: a second source for 9 of the 12 RL datasets.

D4RL's canonical host (``aaren_bench/data/catalog_rl.py``) is often unreachable. The hub
dataset ``edbeeching/decision_transformer_gym_replay`` holds the trajectories that
Decision Transformer trained on, for {halfcheetah, hopper, walker2d} x {medium,
medium-replay, expert} -v2 (configs ``<env>-<kind>-v2``); medium-expert is built here from
medium + expert. It has no ant data, so ant-* come from D4RL only.

Which revision. The repository's ``main`` branch holds only a loading script (datasets >= 4
refuses to run scripts: "Dataset scripts are no longer supported"). The hub's parquet
converter wrote the same rows as plain parquet files to the branch
``refs/convert/parquet``, laid out as ``<config>/train/0000.parquet``, with no loading
script and no config list. So a config is read with ``data_dir=<config>`` at a pinned
commit of that branch::

    datasets.load_dataset(HUB_REPO, data_dir="hopper-medium-v2", revision=HUB_REVISION, split="train")

``HUB_REVISION`` is the head of ``refs/convert/parquet`` as listed on the hub's commit page
(0454936, "Delete old duckdb index files"); the parquet files were last rewritten at
ad9a9f9 (2023-09-05) from ``main`` at 4441c97, the last commit of the loading script.

What a row is. One row per trajectory with four columns, each a list over its T steps:
observations (T, obs_dim) float32, actions (T, act_dim) float32, rewards (T,) float32,
dones (T,) bool. The rows were made by DT's ``gym/data/download_d4rl_datasets.py``: it
walks a D4RL -v2 file and closes a trajectory at every ``terminals[i] or timeouts[i]``;
the hub script then writes ``dones = traj.get("dones", traj.get("terminals"))`` and the
pickled trajectories have no "dones", so ``dones`` is D4RL's ``terminals``.

Mapping onto the D4RL layout (``tasks/rl/d4rl.py``), row after row in hub order:

    observations, actions, rewards  the row's steps, concatenated
    terminals                       dones
    timeouts                        True at the last step of a row whose last ``dones`` is
                                    False (DT closed that trajectory at a time limit)

so ``split_trajectories`` gives back exactly the hub's rows. What is lost against the
canonical file:

- ``timeouts`` is reconstructed, not read: a step that was both terminal and a timeout
  comes back as terminal only (the trajectory ends there either way).
- transitions after the last end flag of a D4RL file (a trailing, unfinished episode):
  DT's script never closed them into a trajectory, so they are not on the hub, while our
  loader keeps them from a canonical file. The hub copy can be a few hundred transitions
  shorter.
- ``next_observations``, ``infos/*`` (qpos, qvel, action log-probs) and ``metadata/*``.

medium-expert. D4RL made ``<env>_medium_expert-v2`` with ``scripts/generation/mujoco/
stitch_dataset.py``: the first file cut after its last end flag, then the whole second
file. Here the medium rows come first, then the expert rows (``MEDIUM_EXPERT``), the order
reported for D4RL's medium-expert sets (D4RL issue #19); it is recorded in the sidecar and
could not be checked against a canonical -v2 file on these machines. Only the sampling
order of trajectories depends on it, not the set of transitions.

Where it goes. Beside the canonical file, under a name that says where it came from:
``<data_root>/d4rl/<env>_<kind>-v2.hub.hdf5`` (written atomically) and the sidecar
``<same>.hub.json``: source, repo, revision, configs in order, the sha256 of the rows read
per config (``rows_sha256``) and of the written file. A present copy is reused after its
sha256 and its recorded repo/revision/configs are checked; a changed file is an error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from aaren_bench.data import ChecksumError, DatasetNotFound, DatasetSpec, default_data_root, fetch, get, sha256sum
from tasks.rl.d4rl import D4RLFormatError, write_d4rl

HUB_REPO = "edbeeching/decision_transformer_gym_replay"
HUB_BRANCH = "refs/convert/parquet"
HUB_REVISION = "0454936d25d743983c2134ac3827a502b9e8a9ac"  # head of refs/convert/parquet
HUB_ENVS = ("halfcheetah", "hopper", "walker2d")
HUB_KINDS = ("medium", "medium-replay", "expert")
MEDIUM_EXPERT = ("medium", "expert")  # the order of D4RL's medium-expert files
COLUMNS = ("observations", "actions", "rewards", "dones")
SOURCE = "huggingface-hub"
MAPPING = (
    "terminals = dones; timeouts = True at the last step of a row whose last dones is False; "
    "no next_observations, infos/* or metadata/*; D4RL transitions after a file's last end flag are absent"
)

Loader = Callable[..., object]  # (repo, *, data_dir, revision, split) -> datasets.Dataset


class NotOnHub(DatasetNotFound):
    """The hub dataset has no data for this dataset name (ant, collected data)."""


class HubFormatError(D4RLFormatError):
    """The hub's rows do not have the expected columns or shapes."""


class HubCopyError(ValueError):
    """A converted hub copy cannot be trusted: no sidecar, or converted from other inputs."""


class _SourceFailed(Exception):
    """Internal: why the hub could not provide the data (becomes a DatasetNotFound)."""


# --- names and paths ------------------------------------------------------------------------------------------


def _spec(name: str | DatasetSpec) -> DatasetSpec:
    return get(name) if isinstance(name, str) else name


def _env_kind(spec: DatasetSpec) -> tuple[str, str]:
    env = spec.info.get("env") or spec.name.split("-", 1)[0]
    return env, spec.name[len(env) + 1:]


def hub_configs(name: str | DatasetSpec) -> tuple[str, ...]:
    """The hub configs that make dataset ``name``, in concatenation order.

    ``hopper-medium`` -> ("hopper-medium-v2",); ``hopper-medium-expert`` ->
    ("hopper-medium-v2", "hopper-expert-v2"). Raises :class:`NotOnHub` for anything else.
    """
    spec = _spec(name)
    env, kind = _env_kind(spec)
    kinds = MEDIUM_EXPERT if kind == "medium-expert" else (kind,)
    if env not in HUB_ENVS or any(k not in HUB_KINDS for k in kinds):
        raise NotOnHub(
            f"the hub dataset {HUB_REPO} has no data for {spec.name!r}: it holds only "
            f"{{{', '.join(HUB_ENVS)}}} x {{{', '.join(HUB_KINDS)}}} -v2 (medium-expert is built from medium + expert), "
            f"and no {env} data. {spec.name!r} must come from its canonical source: "
            f"{spec.files[0].url or spec.note}"
        )
    return tuple(f"{env}-{k}-v2" for k in kinds)


def hub_paths(name: str | DatasetSpec, data_root: str | Path | None = None) -> tuple[Path, Path]:
    """(HDF5 copy, sidecar JSON) beside the canonical file: ``d4rl/<stem>.hub.hdf5`` / ``.hub.json``."""
    spec = _spec(name)
    canonical = _root(data_root) / spec.files[0].path
    stem = canonical.name.removesuffix(".hdf5")
    return canonical.with_name(f"{stem}.hub.hdf5"), canonical.with_name(f"{stem}.hub.json")


def _root(data_root: str | Path | None) -> Path:
    return Path(data_root).expanduser() if data_root else default_data_root()


def hub_offline() -> str | None:
    """The variable that puts the hub offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), if one is set."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


# --- rows -> D4RL arrays --------------------------------------------------------------------------------------


def _arrow_table(ds):
    """A pyarrow Table from a datasets.Dataset (or DatasetDict with a train split, or a Table)."""
    import pyarrow as pa

    if isinstance(ds, pa.Table):
        return ds
    if hasattr(ds, "keys") and "train" in ds.keys():
        ds = ds["train"]
    return ds.with_format("arrow")[:]


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _column(table, name: str, where: str):
    """Column ``name`` as one list per row (extension types unwrapped), plus its row lengths."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    if isinstance(col.type, pa.ExtensionType):
        col = col.storage
    if not _is_list(col.type):
        raise HubFormatError(f"{where}: column {name!r} holds {col.type}, expected one list of steps per trajectory")
    if col.null_count:
        raise HubFormatError(f"{where}: column {name!r} has {col.null_count} missing row(s)")
    return col, pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def _values(steps, name: str, where: str, vector: bool) -> np.ndarray:
    """Step values of one column: (n, dim) for vectors, (n,) for scalars ((T, 1) rows accepted)."""
    import pyarrow.compute as pc

    if steps.null_count:
        raise HubFormatError(f"{where}: column {name!r} has {steps.null_count} missing step(s)")
    if _is_list(steps.type):
        dims = np.unique(pc.list_value_length(steps).to_numpy(zero_copy_only=False))
        if len(dims) != 1 or (not vector and dims[0] != 1):
            raise HubFormatError(f"{where}: column {name!r} has steps of sizes {dims.tolist()}; expected one size"
                                 + ("" if vector else " of 1"))
        flat = steps.flatten()
        if flat.null_count:
            raise HubFormatError(f"{where}: column {name!r} has {flat.null_count} missing value(s)")
        return flat.to_numpy(zero_copy_only=False).reshape(len(steps), int(dims[0])) if vector else flat.to_numpy(
            zero_copy_only=False)
    if vector:
        raise HubFormatError(f"{where}: column {name!r} holds {steps.type} per step, expected a vector per step")
    return steps.to_numpy(zero_copy_only=False)


def rows_to_arrays(ds, where: str = "hub rows") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Hub rows (one per trajectory) -> D4RL's flat arrays, and the row lengths (R,).

    ``terminals`` = ``dones``; ``timeouts`` is set at the last step of each row that does
    not end in a terminal (see the module docstring for what this loses).
    """
    table = _arrow_table(ds)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise HubFormatError(f"{where}: missing column(s) {missing}; found {table.column_names}; expected {list(COLUMNS)}")
    if table.num_rows == 0:
        raise HubFormatError(f"{where}: holds no trajectories")
    out, lengths = {}, None
    for name in COLUMNS:
        col, rows = _column(table, name, where)
        if lengths is None:
            lengths = rows
        elif not np.array_equal(rows, lengths):
            bad = int(np.nonzero(rows != lengths)[0][0])
            raise HubFormatError(f"{where}: row {bad} has {rows[bad]} {name} but {lengths[bad]} observations; "
                                 f"every column of a row must have one entry per step")
        out[name] = _values(col.flatten(), name, where, vector=name in ("observations", "actions"))
    if (lengths == 0).any():
        raise HubFormatError(f"{where}: row(s) {np.nonzero(lengths == 0)[0][:5].tolist()} hold no steps")
    terminals = out.pop("dones").astype(bool)
    ends = np.cumsum(lengths) - 1
    timeouts = np.zeros_like(terminals)
    timeouts[ends] = ~terminals[ends]
    arrays = {
        "observations": out["observations"].astype(np.float32, copy=False),
        "actions": out["actions"].astype(np.float32, copy=False),
        "rewards": out["rewards"].astype(np.float32, copy=False),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    return arrays, lengths


def rows_sha256(arrays: dict[str, np.ndarray], lengths: np.ndarray) -> str:
    """sha256 of the rows as read: row lengths (int64), observations, actions, rewards (float32),
    dones (uint8), little-endian, in that order. Independent of parquet encoding and sharding."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    for k in ("observations", "actions", "rewards"):
        h.update(np.ascontiguousarray(arrays[k], dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(arrays["terminals"], dtype=np.uint8).tobytes())
    return h.hexdigest()


# --- the copy on disk -----------------------------------------------------------------------------------------


def verify_hub_copy(name: str | DatasetSpec, data_root: str | Path | None = None, revision: str = HUB_REVISION) -> dict:
    """Check a converted copy against its sidecar; return the sidecar record.

    Raises :class:`HubCopyError` when the sidecar is missing or records other inputs
    (repo, revision, configs), :class:`~aaren_bench.data.ChecksumError` when the file's
    sha256 differs from the one recorded at conversion.
    """
    spec = _spec(name)
    path, sidecar = hub_paths(spec, data_root)
    if not sidecar.exists():
        raise HubCopyError(
            f"{path} has no sidecar {sidecar.name}, so where it came from cannot be checked. "
            f"Delete {path} to convert it again from the hub, or place its sidecar beside it."
        )
    meta = json.loads(sidecar.read_text())
    want = {"source": SOURCE, "repo": HUB_REPO, "revision": revision, "configs": list(hub_configs(spec))}
    diff = {k: meta.get(k) for k, v in want.items() if meta.get(k) != v}
    if diff:
        raise HubCopyError(
            f"{path} was converted from {diff} (sidecar {sidecar.name}), but {spec.name!r} asks for "
            f"{ {k: want[k] for k in diff} }. Delete {path} and {sidecar} to convert again, "
            f"or pass revision={meta.get('revision')!r} to use the copy as it is."
        )
    got = sha256sum(path)
    if got != meta.get("sha256"):
        raise ChecksumError(
            f"{path} does not match the sha256 recorded in {sidecar.name} when it was converted\n"
            f"  expected sha256 {meta.get('sha256')}\n  found    sha256 {got}\n"
            f"The file changed after conversion. Delete {path} and {sidecar} and convert again "
            f"(python -m tasks.rl.hub {spec.name} --data-root {_root(data_root)})."
        )
    return meta


def _default_loader() -> Loader:
    try:
        import datasets
    except ImportError as e:
        raise _SourceFailed(f"the `datasets` package is not installed (pip install 'aaren-bench[hub]'): {e}") from e
    return datasets.load_dataset


def _convert(spec: DatasetSpec, root: Path, revision: str, loader: Loader | None) -> Path:
    configs = hub_configs(spec)
    path, sidecar = hub_paths(spec, root)
    off = hub_offline()
    if off:
        raise _SourceFailed(f"{off}=1 is set, so the hub was not contacted")
    loader = loader or _default_loader()
    parts, inputs = [], []
    for config in configs:
        try:
            ds = loader(HUB_REPO, data_dir=config, revision=revision, split="train")
        except Exception as e:  # the source failed, whatever the reason: report it with both sources
            raise _SourceFailed(f"loading {HUB_REPO} {config} failed: {type(e).__name__}: {e}") from e
        arrays, lengths = rows_to_arrays(ds, where=f"{HUB_REPO} {config}@{revision[:7]}")
        parts.append(arrays)
        inputs.append({"config": config, "trajectories": int(len(lengths)), "transitions": int(lengths.sum()),
                       "rows_sha256": rows_sha256(arrays, lengths)})
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    want = spec.info.get("obs_dim"), spec.info.get("act_dim")
    got = arrays["observations"].shape[1], arrays["actions"].shape[1]
    if (want[0] and want[0] != got[0]) or (want[1] and want[1] != got[1]):
        raise HubFormatError(f"{HUB_REPO} {'+'.join(configs)}: observations/actions have {got[0]}/{got[1]} dims, "
                             f"but {spec.name} has {want[0]}/{want[1]}")

    # HDF5 under a temporary name, then the sidecar, then the rename: a copy in place always has its sidecar
    staging = path.with_name(f".{path.name}.{os.getpid()}.staging")
    metadata = {"source": SOURCE, "repo": HUB_REPO, "revision": revision, "configs": ",".join(configs)}
    try:
        write_d4rl(staging, arrays, metadata)
        record = {
            "schema": 1,
            "source": SOURCE,
            "dataset": spec.name,
            "repo": HUB_REPO,
            "branch": HUB_BRANCH,
            "revision": revision,
            "configs": list(configs),
            "split": "train",
            "inputs": inputs,
            "file": path.name,
            "sha256": sha256sum(staging),
            "transitions": int(len(arrays["rewards"])),
            "trajectories": int(sum(i["trajectories"] for i in inputs)),
            "mapping": MAPPING,
            "canonical": {"path": spec.files[0].path, "url": spec.files[0].url},
            "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        from aaren_bench.results import write_json_atomic

        write_json_atomic(sidecar, record)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


# --- entry points ---------------------------------------------------------------------------------------------


def missing_message(
    spec: DatasetSpec, root: Path, hub_reason: str, canonical_reason: str | None = None, revision: str = HUB_REVISION
) -> str:
    """What is missing, why neither source gave it, and where to put the file."""
    f = spec.files[0]
    canonical = root / f.path
    path, sidecar = hub_paths(spec, root)
    lines = [f"dataset {spec.name!r} ({spec.task}) is missing from the data root {root}; its two sources:",
             f"  1. D4RL (canonical): {f.url or spec.note}",
             f"     not fetched: {canonical_reason}" if canonical_reason else "     (not tried here)"]
    lines.append(f"     place the file at {canonical}")
    try:
        configs = hub_configs(spec)
    except NotOnHub:
        lines.append(f"  2. Hugging Face hub ({HUB_REPO}): {hub_reason}")
    else:
        lines += [
            f"  2. Hugging Face hub: {HUB_REPO}, config(s) {' + '.join(configs)}, revision {revision[:7]} "
            f"({HUB_BRANCH})",
            f"     not fetched: {hub_reason}",
            f"     on a machine that reaches the hub: python -m tasks.rl.hub {spec.name} --data-root DIR, then copy "
            f"DIR/{Path(f.path).parent}/{path.name} and {sidecar.name} to {path.parent}/",
        ]
    lines.append("  (set AAREN_DATA or paths.data_root to use another data folder)")
    return "\n".join(lines)


def fetch_from_hub(
    name: str | DatasetSpec,
    data_root: str | Path | None = None,
    *,
    revision: str = HUB_REVISION,
    loader: Loader | None = None,
) -> Path:
    """The hub copy of dataset ``name`` in D4RL's layout, converting it on first use.

    ``loader(repo, data_dir=config, revision=revision, split="train")`` returns the rows of
    one config (default ``datasets.load_dataset``; tests pass one that reads local parquet).
    A present copy is verified against its sidecar and reused without contacting the hub.
    Raises :class:`NotOnHub` for ant and other datasets the hub lacks, and
    :class:`~aaren_bench.data.DatasetNotFound` naming both sources when the hub is unreachable.
    """
    spec, root = _spec(name), _root(data_root)
    hub_configs(spec)
    path, _ = hub_paths(spec, root)
    if path.exists():
        verify_hub_copy(spec, root, revision)
        return path
    try:
        return _convert(spec, root, revision, loader)
    except _SourceFailed as e:
        raise DatasetNotFound(missing_message(spec, root, str(e), revision=revision)) from e.__cause__


def canonical_source(spec: DatasetSpec) -> dict:
    f = spec.files[0]
    return {"source": "d4rl", "url": f.url, "file": f.path, "sha256": f.sha256 or None}


def locate(
    name: str | DatasetSpec,
    data_root: str | Path | None = None,
    *,
    download: bool = True,
    use_hub: bool = True,
    revision: str = HUB_REVISION,
    loader: Loader | None = None,
) -> tuple[Path, dict]:
    """The file of RL dataset ``name`` and where it came from (for the result record).

    In order: the canonical file if present; a verified hub copy if present; the canonical
    download; the hub conversion. Returns (path, source), source being
    ``{"source": "d4rl", "url", "file", "sha256"}`` or the hub copy's sidecar record.
    Raises :class:`~aaren_bench.data.DatasetNotFound` naming both sources when neither works.
    """
    spec, root = _spec(name), _root(data_root)
    canonical = root / spec.files[0].path
    hub_path, _ = hub_paths(spec, root)
    if canonical.exists():
        return next(iter(fetch(spec, root, download=False).values())), canonical_source(spec)
    if use_hub and hub_path.exists():
        return hub_path, verify_hub_copy(spec, root, revision)
    try:
        return next(iter(fetch(spec, root, download=download).values())), canonical_source(spec)
    except DatasetNotFound as e:
        if not use_hub:
            raise
        reasons = [ln.split("reason:", 1)[1].strip() for ln in str(e).splitlines() if "reason:" in ln]
        canonical_reason = reasons[0] if reasons else str(e)
        canonical_error = e
    try:
        hub_configs(spec)
        if not download:
            raise _SourceFailed("downloading is off")
        path = _convert(spec, root, revision, loader)
    except NotOnHub as e:
        raise DatasetNotFound(
            missing_message(spec, root, f"has no {_env_kind(spec)[0]} data", canonical_reason, revision)
        ) from e
    except _SourceFailed as e:
        raise DatasetNotFound(
            missing_message(spec, root, str(e), canonical_reason, revision)
        ) from (e.__cause__ or canonical_error)
    return path, verify_hub_copy(spec, root, revision)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tasks.rl.hub", description="Convert a D4RL -v2 dataset from the hub.")
    p.add_argument("name", help="e.g. hopper-medium, walker2d-medium-expert")
    p.add_argument("--data-root", default=None, help="data folder (default: $AAREN_DATA or <repo>/data)")
    p.add_argument("--revision", default=HUB_REVISION, help=f"commit of {HUB_BRANCH} (default: the pinned one)")
    args = p.parse_args(argv)
    print(fetch_from_hub(args.name, args.data_root, revision=args.revision))


if __name__ == "__main__":
    main()
