"""The hub source: local parquet in the hub's schema -> D4RL-layout HDF5 -> the D4RL loader.

No network: the hub's parquet branch is imitated by a local folder ``<config>/train/*.parquet``
that ``datasets.load_dataset`` reads through the same call the real source makes.
"""
from __future__ import annotations

import json
import urllib.error

import h5py
import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from aaren_bench.data import ChecksumError, DatasetNotFound, get, sha256sum  # noqa: E402
from tasks.rl import hub  # noqa: E402
from tasks.rl.d4rl import load_d4rl, split_trajectories  # noqa: E402

FEATURES = datasets.Features({
    "observations": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    "actions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    "rewards": datasets.Sequence(datasets.Value("float32")),
    "dones": datasets.Sequence(datasets.Value("bool")),
})
# hopper: obs 11, act 3. (row lengths, whether each row ends in a terminal), per config
ROWS = {
    "hopper-medium-v2": ([4, 5, 2], [True, False, True]),
    "hopper-expert-v2": ([6, 3], [False, True]),
    "hopper-medium-replay-v2": ([3, 3, 1, 2], [True, True, True, False]),
}


def make_rows(config: str) -> dict[str, list]:
    """Trajectories whose values say where they come from: reward = 100 config + 10 row + step."""
    lengths, term = ROWS[config]
    c = list(ROWS).index(config)
    out = {k: [] for k in FEATURES}
    for r, (n, t) in enumerate(zip(lengths, term)):
        rng = np.random.default_rng([c, r])
        out["observations"].append(rng.standard_normal((n, 11)).astype(np.float32).tolist())
        out["actions"].append(rng.uniform(-1, 1, (n, 3)).astype(np.float32).tolist())
        out["rewards"].append([100.0 * c + 10 * r + s for s in range(n)])
        out["dones"].append([False] * (n - 1) + [t])
    return out


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """A local folder laid out like the hub's refs/convert/parquet branch (medium in two shards)."""
    root = tmp_path_factory.mktemp("hub")
    for config in ROWS:
        ds = datasets.Dataset.from_dict(make_rows(config), features=FEATURES)
        (root / config / "train").mkdir(parents=True)
        shards = [ds.select(range(2)), ds.select(range(2, len(ds)))] if config == "hopper-medium-v2" else [ds]
        for i, shard in enumerate(shards):
            shard.to_parquet(str(root / config / "train" / f"{i:04d}.parquet"))
    return root


@pytest.fixture
def loader(hub_dir, tmp_path):
    """``datasets.load_dataset`` on the local folder; records the (repo, data_dir, revision) asked for."""

    def load(repo, *, data_dir, revision, split):
        load.calls.append((repo, data_dir, revision, split))
        return datasets.load_dataset(str(hub_dir), data_dir=data_dir, split=split, cache_dir=str(tmp_path / "cache"))

    load.calls = []
    return load


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def no_download(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)


def test_configs_and_paths(tmp_path):
    assert hub.hub_configs("hopper-medium") == ("hopper-medium-v2",)
    assert hub.hub_configs("walker2d-medium-replay") == ("walker2d-medium-replay-v2",)
    assert hub.hub_configs("halfcheetah-medium-expert") == ("halfcheetah-medium-v2", "halfcheetah-expert-v2")
    path, sidecar = hub.hub_paths("hopper-medium-expert", tmp_path)
    assert path == tmp_path / "d4rl" / "hopper_medium_expert-v2.hub.hdf5"
    assert sidecar == tmp_path / "d4rl" / "hopper_medium_expert-v2.hub.json"
    for name in ("ant-medium", "ant-medium-expert", "halfcheetah-collected"):
        with pytest.raises(hub.NotOnHub, match=f"has no data for '{name}'"):
            hub.hub_configs(name)


def test_ant_is_not_on_the_hub(tmp_path, loader):
    with pytest.raises(hub.NotOnHub, match="no ant data") as e:
        hub.fetch_from_hub("ant-medium-replay", tmp_path, loader=loader)
    assert get("ant-medium-replay").files[0].url in str(e.value)
    assert loader.calls == []


def test_conversion_reads_back_as_the_hub_rows(tmp_path, loader):
    path = hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    assert path == tmp_path / "d4rl" / "hopper_medium-v2.hub.hdf5"
    assert loader.calls == [(hub.HUB_REPO, "hopper-medium-v2", hub.HUB_REVISION, "train")]

    data = load_d4rl(path)  # the suite's own reader and checks
    rows = make_rows("hopper-medium-v2")
    np.testing.assert_array_equal(data["terminals"], np.concatenate(rows["dones"]))
    np.testing.assert_array_equal(np.nonzero(data["timeouts"])[0], [8])  # row 2 (rows 4..8) ends without a terminal
    trajs = split_trajectories(data)
    assert [len(t) for t in trajs] == [4, 5, 2]
    assert [t.terminal for t in trajs] == [True, False, True]
    for t, obs, act, rew in zip(trajs, rows["observations"], rows["actions"], rows["rewards"]):
        np.testing.assert_array_equal(t.observations, np.array(obs, np.float32))
        np.testing.assert_array_equal(t.actions, np.array(act, np.float32))
        np.testing.assert_array_equal(t.rewards, np.array(rew, np.float32))
    with h5py.File(path) as f:
        assert f["metadata/source"][()].decode() == "huggingface-hub"
        assert f["metadata/revision"][()].decode() == hub.HUB_REVISION
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging files left


def test_medium_expert_is_medium_then_expert(tmp_path, loader):
    path = hub.fetch_from_hub("hopper-medium-expert", tmp_path, loader=loader)
    assert [c[1] for c in loader.calls] == ["hopper-medium-v2", "hopper-expert-v2"]
    trajs = split_trajectories(load_d4rl(path))
    assert [len(t) for t in trajs] == [4, 5, 2, 6, 3]
    assert [t.terminal for t in trajs] == [True, False, True, False, True]
    assert [int(t.rewards[0]) // 100 for t in trajs] == [0, 0, 0, 1, 1]  # config index encoded in the rewards
    meta = json.loads(hub.hub_paths("hopper-medium-expert", tmp_path)[1].read_text())
    assert meta["configs"] == ["hopper-medium-v2", "hopper-expert-v2"]
    assert [i["config"] for i in meta["inputs"]] == meta["configs"]
    assert [i["trajectories"] for i in meta["inputs"]] == [3, 2]
    assert meta["transitions"] == 20 and meta["trajectories"] == 5


def test_sidecar_records_the_source(tmp_path, loader):
    path = hub.fetch_from_hub("hopper-medium-replay", tmp_path, loader=loader)
    meta = json.loads(hub.hub_paths("hopper-medium-replay", tmp_path)[1].read_text())
    assert meta["source"] == "huggingface-hub" and meta["repo"] == hub.HUB_REPO
    assert meta["revision"] == hub.HUB_REVISION and meta["branch"] == "refs/convert/parquet"
    assert meta["configs"] == ["hopper-medium-replay-v2"] and meta["file"] == path.name
    assert meta["sha256"] == sha256sum(path)
    assert meta["canonical"]["url"] == get("hopper-medium-replay").files[0].url
    # the rows' checksum depends on the rows only, and the conversion is reproducible byte for byte
    again = hub.fetch_from_hub("hopper-medium-replay", tmp_path / "other", loader=loader)
    meta2 = json.loads(hub.hub_paths("hopper-medium-replay", tmp_path / "other")[1].read_text())
    assert meta2["inputs"][0]["rows_sha256"] == meta["inputs"][0]["rows_sha256"]
    assert sha256sum(again) == meta["sha256"]


def test_second_call_reuses_the_verified_copy(tmp_path, loader):
    path = hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    mtime = path.stat().st_mtime_ns

    def unreachable(*a, **k):
        raise AssertionError("the hub must not be contacted again")

    assert hub.fetch_from_hub("hopper-medium", tmp_path, loader=unreachable) == path
    assert path.stat().st_mtime_ns == mtime
    assert len(loader.calls) == 1


def test_changed_copy_is_detected(tmp_path, loader):
    path = hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    with h5py.File(path, "r+") as f:
        f["rewards"][0] = 123.0
    with pytest.raises(ChecksumError, match="changed after conversion"):
        hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)


def test_copy_without_sidecar_or_from_other_revision(tmp_path, loader):
    path = hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    with pytest.raises(hub.HubCopyError, match="revision"):
        hub.fetch_from_hub("hopper-medium", tmp_path, revision="f" * 40, loader=loader)
    hub.hub_paths("hopper-medium", tmp_path)[1].unlink()
    with pytest.raises(hub.HubCopyError, match="no sidecar"):
        hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    assert path.exists()


@pytest.mark.parametrize("error", [ConnectionError("Couldn't reach the Hub"), OSError("Name or service not known")])
def test_unreachable_hub_names_both_sources(tmp_path, error):
    def down(*a, **k):
        raise error

    with pytest.raises(DatasetNotFound) as e:
        hub.fetch_from_hub("walker2d-medium-expert", tmp_path, loader=down)
    msg = str(e.value)
    spec = get("walker2d-medium-expert")
    assert spec.files[0].url in msg  # the canonical source
    assert hub.HUB_REPO in msg and "walker2d-medium-v2 + walker2d-expert-v2" in msg  # the second source
    assert str(tmp_path / spec.files[0].path) in msg  # where to put the canonical file
    assert "walker2d_medium_expert-v2.hub.hdf5" in msg and str(error) in msg
    assert not (tmp_path / "d4rl").exists() or not list((tmp_path / "d4rl").iterdir())


def test_hf_hub_offline_is_respected(tmp_path, loader, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotFound, match="HF_HUB_OFFLINE=1 is set") as e:
        hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    assert loader.calls == []
    assert get("hopper-medium").files[0].url in str(e.value) and hub.HUB_REPO in str(e.value)


def test_real_loader_offline(tmp_path, monkeypatch):
    """The default loader (datasets.load_dataset on the real repo) in offline mode: a clear error, no network."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    with pytest.raises(DatasetNotFound, match="loading edbeeching/decision_transformer_gym_replay hopper-medium-v2 failed"):
        hub.fetch_from_hub("hopper-medium", tmp_path)


def test_bad_rows_are_named(tmp_path):
    rows = make_rows("hopper-expert-v2")
    rows["rewards"][1] = rows["rewards"][1][:-1]
    bad = datasets.Dataset.from_dict(rows, features=FEATURES)
    with pytest.raises(hub.HubFormatError, match="row 1 has 2 rewards but 3 observations"):
        hub.fetch_from_hub("hopper-medium", tmp_path, loader=lambda *a, **k: bad)
    wrong = datasets.Dataset.from_dict({k: v for k, v in rows.items() if k != "dones"})
    with pytest.raises(hub.HubFormatError, match=r"missing column\(s\) \['dones'\]"):
        hub.fetch_from_hub("hopper-medium", tmp_path, loader=lambda *a, **k: wrong)


def test_locate_prefers_canonical_then_hub(tmp_path, loader, monkeypatch):
    no_download(monkeypatch)
    # no canonical file, no download: converted from the hub, source recorded
    path, source = hub.locate("hopper-medium", tmp_path, loader=loader)
    assert path.name == "hopper_medium-v2.hub.hdf5" and source["source"] == "huggingface-hub"
    # next time the verified copy is used without any network
    assert hub.locate("hopper-medium", tmp_path, loader=None)[0] == path
    # a canonical file, once present, wins
    canonical = tmp_path / get("hopper-medium").files[0].path
    canonical.write_bytes(path.read_bytes())
    path2, source2 = hub.locate("hopper-medium", tmp_path)
    assert path2 == canonical and source2 == {"source": "d4rl", "url": get("hopper-medium").files[0].url,
                                              "file": "d4rl/hopper_medium-v2.hdf5", "sha256": None}


def test_locate_with_neither_source(tmp_path, monkeypatch):
    no_download(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotFound) as e:
        hub.locate("hopper-medium-replay", tmp_path)
    msg = str(e.value)
    assert "download failed" in msg and "offline" in msg and "HF_HUB_OFFLINE=1" in msg
    assert get("hopper-medium-replay").files[0].url in msg and hub.HUB_REPO in msg
    with pytest.raises(DatasetNotFound) as e:
        hub.locate("ant-medium", tmp_path)
    assert get("ant-medium").files[0].url in str(e.value) and "has no ant data" in str(e.value)


def test_datamodule_reads_the_hub_copy(tmp_path, loader):
    from tasks.rl.data import RLDataModule

    path = hub.fetch_from_hub("hopper-medium-expert", tmp_path, loader=loader)
    dm = RLDataModule(path, rtg_scale=1000.0, obs_dim=11, act_dim=3)
    dm.setup()
    assert (dm.obs_dim, dm.act_dim) == (11, 3) and len(dm.trajs) == 5


def test_rewards_and_dones_stored_as_t_by_1(tmp_path):
    """Early versions of the hub's script stored rewards and dones as (T, 1) arrays: read them the same."""
    rows = make_rows("hopper-medium-v2")
    rows["rewards"] = [[[r] for r in row] for row in rows["rewards"]]
    rows["dones"] = [[[d] for d in row] for row in rows["dones"]]
    tall = datasets.Dataset.from_dict(rows, features=datasets.Features({
        **FEATURES, "rewards": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "dones": datasets.Sequence(datasets.Sequence(datasets.Value("bool")))}))
    flat = datasets.Dataset.from_dict(make_rows("hopper-medium-v2"), features=FEATURES)
    a, la = hub.rows_to_arrays(tall)
    b, lb = hub.rows_to_arrays(flat)
    np.testing.assert_array_equal(la, lb)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert hub.rows_sha256(a, la) == hub.rows_sha256(b, lb)


# --- the run loop: a hub copy reaches the result record ---------------------------------------------------------

TINY_RUN = [
    "task.backbone.d_model=16", "task.backbone.n_layers=1", "task.backbone.d_ff=32",
    "task.batch_size=4", "task.steps_per_epoch=2", "task.max_steps=4", "task.warmup_steps=2", "task.context_len=5",
    "task.eval_episodes=2", "task.eval_batch=2", "task.max_ep_len=20",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
]


def test_hub_copy_reaches_the_record_with_its_source(tmp_path, loader, monkeypatch, runs_dir):
    """No canonical file, no download: the run trains on the converted hub copy, and the record says so."""
    pytest.importorskip("mujoco")
    from aaren_bench.run import train
    from aaren_bench.study import compose_config

    no_download(monkeypatch)
    path = hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)  # converted once (on a machine online)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the run itself contacts nothing
    rec = train(compose_config(["dataset=hopper-medium", f"paths.data_root={tmp_path}", "model=aaren", *TINY_RUN]))
    source = rec["data_source"]
    assert source["source"] == "huggingface-hub" and source["repo"] == hub.HUB_REPO
    assert source["revision"] == hub.HUB_REVISION and source["configs"] == ["hopper-medium-v2"]
    assert source["sha256"] == sha256sum(path) and source["file"] == path.name
    saved = json.loads((runs_dir / rec["cell"] / "result.json").read_text())
    assert saved["data_source"] == source
    assert saved["evaluation"]["curve"][-1]["step"] == 4 and np.isfinite(saved["metrics"]["test/normalized_score"])


def test_dataset_source_hub_on_request(tmp_path, loader, monkeypatch):
    """dataset.source=hub takes the hub copy even beside a canonical file; d4rl refuses the hub copy."""
    from aaren_bench.study import compose_config
    from tasks.rl import rl_file
    from tasks.rl.data import resolve_file

    no_download(monkeypatch)
    path = hub.fetch_from_hub("hopper-medium", tmp_path, loader=loader)
    canonical = tmp_path / get("hopper-medium").files[0].path
    canonical.write_bytes(path.read_bytes())
    cfg = compose_config(["dataset=hopper-medium", f"paths.data_root={tmp_path}", "dataset.source=hub"])
    assert resolve_file(rl_file(cfg)) == (path, hub.verify_hub_copy("hopper-medium", tmp_path))
    cfg = compose_config(["dataset=hopper-medium", f"paths.data_root={tmp_path}"])
    assert resolve_file(rl_file(cfg))[1]["source"] == "d4rl"
    canonical.unlink()
    cfg = compose_config(["dataset=hopper-medium", f"paths.data_root={tmp_path}", "dataset.source=d4rl"])
    with pytest.raises(DatasetNotFound, match="gym_mujoco_v2/hopper_medium-v2.hdf5"):
        resolve_file(rl_file(cfg))
