"""Offline RL: the 12 D4RL -v2 gym-MuJoCo datasets, and the locally collected one.

Canonical files (D4RL): ``<BASE>/<env>_<dataset with - as _>-v2.hdf5``, stored under the
data root as ``d4rl/<same name>``. No verified copy could be examined here, so no sha256
is pinned yet. A dataset config can point at any D4RL-layout file instead with
``dataset.file=...`` (e.g. one written by ``aaren-bench collect``; such a run is tagged, it
never lands in the D4RL dataset's cell).
"""
from __future__ import annotations

from aaren_bench.data.registry import DatasetSpec, RemoteFile, register
from tasks.rl.envs import ENVS as ENV_SPECS

BASE = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"
# (obs_dim, act_dim) of each environment: the env specs' facts (tasks/rl/envs.py), written once
ENVS = {name: (spec.obs_dim, spec.act_dim) for name, spec in ENV_SPECS.items()}
KINDS = ("medium", "medium-replay", "medium-expert")


def d4rl_file(env: str, kind: str) -> str:
    return f"{env}_{kind.replace('-', '_')}-v2.hdf5"


for _env, (_obs, _act) in ENVS.items():
    for _kind in KINDS:
        _file = d4rl_file(_env, _kind)
        register(
            DatasetSpec(
                name=f"{_env}-{_kind}",
                task="rl",
                files=(RemoteFile(path=f"d4rl/{_file}", url=f"{BASE}/{_file}"),),
                info={"env": _env, "obs_dim": _obs, "act_dim": _act, "source": "D4RL -v2"},
            )
        )

# Written here, on request, by `aaren-bench collect --dataset halfcheetah-collected` (real physics,
# random actions): the whole pipeline runs offline. The recipe is the fact; the file is its output.
COLLECTED = {
    "halfcheetah-collected": {"env": "halfcheetah", "policy": "random", "episodes": 10, "seed": 0, "max_steps": 1000},
}

for _name, _recipe in COLLECTED.items():
    _file = d4rl_file(_recipe["env"], _name.split("-", 1)[1])
    register(
        DatasetSpec(
            name=_name,
            task="rl",
            files=(RemoteFile(path=f"d4rl/{_file}", url=""),),
            info={"env": _recipe["env"], "obs_dim": ENVS[_recipe["env"]][0], "act_dim": ENVS[_recipe["env"]][1],
                  "source": "aaren-bench collect", "collect": _recipe},
            note=f"made on this machine by the simulator: run `aaren-bench collect --dataset {_name}` "
                 f"(writes <data root>/d4rl/{_file}), or place a D4RL-layout file there",
        )
    )
