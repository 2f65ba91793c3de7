"""`aaren-bench collect`: write a D4RL-layout HDF5 dataset from gymnasium rollouts.

D4RL's files cannot be downloaded everywhere; this command produces a file with the same
keys and dtypes from a policy acting in the same simulator, so the whole pipeline (load ->
train -> evaluate -> normalised score) runs on real physics:

    aaren-bench collect --dataset halfcheetah-collected     # the catalog's recipe, into the data root
    python train.py dataset=halfcheetah-collected
    aaren-bench collect --env hopper --policy pi.pt --episodes 100 --out /path/to/that.hdf5
    python train.py dataset=hopper-medium dataset.file=/path/to/that.hdf5   # a tagged cell

Policies: ``random`` (uniform actions, seeded), a named controller (``gait`` for
halfcheetah: ``tasks.rl.controllers``), or the path of a TorchScript module mapping an
observation batch (B, obs_dim) float32 to actions (B, act_dim) in [-1, 1]. ``--noise``
adds Gaussian noise to a controller's or module's actions (clipped to [-1, 1]); a list
(``--noise 0,0.1,0.3``) gives episode e the noise ``noise[e % len(noise)]``, a mix of
behaviours in one file (medium-replay-like).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from tasks.rl.d4rl import write_d4rl
from tasks.rl.envs import ENVS, make_env

log = logging.getLogger("aaren_bench")


class Policy:
    """obs (obs_dim,) -> action (act_dim,) in the env's bounds; ``reset(noise)`` at each episode start."""

    def __init__(self, act, env, seed: int, reset=None):
        self.act, self.reset_fn = act, reset
        self.rng = np.random.default_rng(seed)
        self.low, self.high = env.action_space.low, env.action_space.high
        self.noise = 0.0

    def reset(self, noise: float = 0.0) -> None:
        self.noise = float(noise)
        if self.reset_fn:
            self.reset_fn()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = np.asarray(self.act(obs), dtype=np.float64)
        if a.shape != self.low.shape:
            raise ValueError(f"the policy returned actions of shape {a.shape}; the env needs {self.low.shape}")
        if self.noise:
            a = a + self.noise * self.rng.standard_normal(a.shape)
        return np.clip(a, self.low, self.high).astype(np.float32)


def load_policy(policy: str, env, seed: int, env_name: str | None = None) -> Policy:
    """``random``, a named controller of ``env_name`` (tasks.rl.controllers), or a TorchScript file."""
    from tasks.rl.controllers import controller, names

    if policy == "random":
        rng = np.random.default_rng(seed)
        low, high = env.action_space.low, env.action_space.high
        return Policy(lambda obs: rng.uniform(low, high), env, seed)
    named = controller(env_name, policy, env) if env_name else None
    if named is not None:
        return Policy(named, env, seed, reset=named.reset)
    path = Path(policy)
    if not path.exists():
        raise FileNotFoundError(f"--policy must be 'random', a named controller ({', '.join(names())}) or the path of "
                                f"a TorchScript policy; {path} does not exist")
    import torch

    net = torch.jit.load(str(path), map_location="cpu").eval()

    def act(obs):
        with torch.no_grad():
            return net(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()

    return Policy(act, env, seed)


def collect(env_name: str, policy: str, episodes: int, out: str | Path, seed: int = 0,
            max_steps: int = 1000, noise: float | list[float] = 0.0) -> Path:
    """Roll out ``episodes`` episodes (reset seeds seed, seed+1, ...) and write them to ``out``.

    ``noise``: the action-noise std, or one per episode cycled (episode e: noise[e % len]).
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1; got {episodes}")
    noises = [float(x) for x in (noise if isinstance(noise, (list, tuple)) else [noise])]
    if policy == "random" and any(noises):
        raise ValueError("--noise applies to a controller or a saved policy, not to 'random'")
    env = make_env(env_name, max_episode_steps=max_steps)
    act = load_policy(policy, env, seed, env_name)
    keys = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts", "infos/qpos", "infos/qvel")
    rows: dict[str, list] = {k: [] for k in keys}
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        act.reset(noises[ep % len(noises)])
        ret, done = 0.0, False
        while not done:
            a = act(obs)
            data = env.unwrapped.data  # physics state of the observation the action responds to
            rows["infos/qpos"].append(np.array(data.qpos))
            rows["infos/qvel"].append(np.array(data.qvel))
            nxt, r, terminated, truncated, _ = env.step(a)
            for k, v in (("observations", obs), ("next_observations", nxt), ("actions", a), ("rewards", r),
                         ("terminals", terminated), ("timeouts", truncated and not terminated)):
                rows[k].append(v)
            ret += float(r)
            obs, done = nxt, terminated or truncated
        returns.append(ret)
    env.close()
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    meta = {"env": env.spec.id, "policy": str(policy), "episodes": episodes, "seed": seed,
            "noise": ",".join(f"{x:g}" for x in noises), "source": "aaren-bench collect"}
    path = write_d4rl(out, arrays, meta)
    log.info("wrote %s: %d transitions, %d episodes, return %.1f +- %.1f", path, len(arrays["rewards"]), episodes,
             np.mean(returns), np.std(returns))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None,
                        help="a collected dataset of the catalog (e.g. halfcheetah-collected): its recipe, written "
                             "to its place in the data root; the other options are then not needed")
    parser.add_argument("--data-root", default=None, help="with --dataset: the data root (default: $AAREN_DATA or ./data)")
    parser.add_argument("--env", default=None, choices=sorted(ENVS), help="D4RL environment name")
    parser.add_argument("--policy", default="random",
                        help="'random', a named controller ('gait' for halfcheetah) or a TorchScript policy file")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    parser.add_argument("--out", default=None, help="HDF5 file to write (D4RL -v2 layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the policy and of episode resets")
    parser.add_argument("--max-steps", type=int, default=1000, help="time limit per episode (default 1000)")
    parser.add_argument("--noise", type=_noises, default=[0.0],
                        help="std of Gaussian noise added to a controller's or saved policy's actions; a "
                             "comma-separated list is cycled over the episodes (0,0.1,0.3: a mix of behaviours)")


def _noises(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--noise takes a number or a comma-separated list of numbers; got {text!r}") from None
    if any(not np.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--noise values must be finite and >= 0; got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    if args.dataset:
        from aaren_bench.data import default_data_root, get

        spec = get(args.dataset)
        recipe = spec.info.get("collect")
        if not recipe:
            raise SystemExit(f"collect: {args.dataset!r} has no collect recipe in the catalog; "
                             "use --env/--policy/--out for a file of your own")
        root = Path(args.data_root).expanduser() if args.data_root else default_data_root()
        out = root / spec.files[0].path
        collect(recipe["env"], recipe["policy"], int(recipe["episodes"]), out, int(recipe["seed"]),
                int(recipe["max_steps"]), recipe.get("noise", 0.0))
        print(f"wrote {out}")
        return 0
    if not args.env or not args.out:
        raise SystemExit("collect: give --dataset NAME, or --env and --out (see --help)")
    collect(args.env, args.policy, args.episodes, args.out, args.seed, args.max_steps, args.noise)
    return 0
