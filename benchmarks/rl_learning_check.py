"""Does return-conditioned training learn at all? A learning check that needs no D4RL file.

1. Collect a HalfCheetah dataset from a behaviour that moves: the deterministic ``gait``
   controller (tasks/rl/controllers.py) with Gaussian action noise cycled over the
   episodes (``--noise``), a medium-replay-like mix of good and poor episodes.
2. Measure, on the evaluation's own episode seeds, the return of the clean behaviour
   (the gait without noise) and of a uniform random policy.
3. Train both backbones (aaren, transformer) under ``protocol=mindt`` (uniform trajectory
   sampling, post-LN GELU block, an evaluation after every iteration, the best checkpoint
   evaluated again) at a reduced size for CPU, conditioned on the behaviour's return, and
   report the return they reach beside the behaviour's and the random policy's.

    nice -n 10 .venv/bin/python benchmarks/rl_learning_check.py --out /tmp/rl-learning-check \\
        --json /tmp/rl-learning-check/result.json

Everything the runs record (curve, data source) is in their result.json under --out/runs.
Not a D4RL result: a check that the pipeline learns a behaviour from data, for both backbones.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aaren_bench.run import train  # noqa: E402
from aaren_bench.study import compose_config  # noqa: E402
from tasks.rl.collect import collect, load_policy  # noqa: E402
from tasks.rl.d4rl import load_d4rl, normalized_score, split_trajectories  # noqa: E402
from tasks.rl.envs import make_env  # noqa: E402

ENV = "halfcheetah"


def rollout_returns(policy_name: str, seeds: list[int], max_steps: int) -> np.ndarray:
    """Returns of a collect policy (no noise) on episodes reset with these seeds."""
    out = []
    for s in seeds:
        env = make_env(ENV, max_episode_steps=max_steps)
        policy = load_policy(policy_name, env, seed=s, env_name=ENV)
        policy.reset(0.0)
        obs, _ = env.reset(seed=s)
        env.action_space.seed(s)
        ret, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, _ = env.step(policy(obs))
            ret += float(r)
            done = terminated or truncated
        env.close()
        out.append(ret)
    return np.array(out)


def figures(returns: np.ndarray) -> dict:
    scores = normalized_score(ENV, returns)
    return {"return": float(returns.mean()), "return_std": float(returns.std()),
            "normalized_score": float(scores.mean()), "episodes": int(len(returns))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/rl-learning-check", help="data, runs and results go here")
    p.add_argument("--episodes", type=int, default=36, help="episodes collected (1000 steps each)")
    p.add_argument("--noise", default="0,0.05,0.1,0.2,0.3,0.5", help="action-noise stds cycled over the episodes")
    p.add_argument("--models", default="aaren,transformer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000, help="training steps per backbone")
    p.add_argument("--eval-every", type=int, default=200, help="steps per iteration (min-DT: 100)")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides for the runs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    data = out / "halfcheetah_gait-mix.hdf5"
    noise = [float(x) for x in args.noise.split(",")]
    if not data.exists():
        collect(ENV, "gait", args.episodes, data, seed=args.seed, noise=noise)
    trajs = split_trajectories(load_d4rl(data))
    data_returns = np.array([float(t.rewards.sum()) for t in trajs])

    # the evaluation's episodes: the test resets episode i with eval_seed + 1000 seed + i (conf/task/rl.yaml)
    base = compose_config(["dataset=halfcheetah-collected", "protocol=mindt"])
    n_eval = int(base.task.eval_episodes)
    seeds = [int(base.task.eval_seed) + 1000 * args.seed + i for i in range(n_eval)]
    behaviour = rollout_returns("gait", seeds, int(base.task.max_ep_len))
    random_policy = rollout_returns("random", seeds, int(base.task.max_ep_len))
    target = float(np.round(behaviour.mean(), -1))
    print(f"data: {len(trajs)} episodes, return {data_returns.mean():.0f} +- {data_returns.std():.0f} "
          f"(max {data_returns.max():.0f}); behaviour (gait, no noise) {behaviour.mean():.0f}; random "
          f"{random_policy.mean():.0f}; conditioning target {target:.0f}", flush=True)

    data_figures = {"file": str(data), "episodes": len(trajs), "return": float(data_returns.mean()),
                    "return_std": float(data_returns.std()), "return_max": float(data_returns.max()), "noise": noise}
    results = {"args": vars(args), "data": data_figures,
               "target_return": target, "behaviour": figures(behaviour), "random": figures(random_policy), "models": {}}
    reduced = [
        "task.backbone.d_model=64", "task.backbone.n_layers=2", "task.backbone.d_ff=256", "task.batch_size=32",
        f"task.max_steps={args.steps}", f"task.steps_per_epoch={args.eval_every}", f"task.warmup_steps={args.warmup}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "checkpoint_every_min=null",
    ]
    for kind in args.models.split(","):
        t1 = time.time()
        cfg = compose_config(["dataset=halfcheetah-collected", f"dataset.file={data}", "protocol=mindt",
                              f"model={kind}", f"seed={args.seed}", f"dataset.target_return={target}", *reduced,
                              f"paths.runs={out / 'runs'}", "tag=learncheck", "skip_done=false", *args.overrides])
        rec = train(cfg)
        m, ev = rec["metrics"], rec["evaluation"]
        results["models"][kind] = {
            "cell": rec["cell"], "params": rec["params"]["total"],
            "test": {"return": m["test/return"], "return_std": m["test/return_std"],
                     "normalized_score": m["test/normalized_score"], "episodes": int(m["test/episodes"])},
            "best_eval": {"step": ev["best"]["step"], "return": ev["best"]["return"]},
            "last_eval": {"step": ev["last"]["step"], "return": ev["last"]["return"]},
            "curve": [(pt["step"], round(pt["return"], 1)) for pt in ev["curve"]],
            "wall_s": time.time() - t1,
        }
        r = results["models"][kind]
        print(f"{kind:12s} best checkpoint (step {r['best_eval']['step']}) evaluated again: return "
              f"{r['test']['return']:.0f} +- {r['test']['return_std']:.0f}; curve best {r['best_eval']['return']:.0f}, "
              f"last {r['last_eval']['return']:.0f}; {r['wall_s']:.0f} s", flush=True)
    results["wall_s"] = time.time() - t0

    rows = [("uniform random policy", results["random"]),
            ("behaviour: gait controller, no noise", results["behaviour"])]
    rows += [(f"Decision {k.capitalize()} (best checkpoint, evaluated again)", v["test"])
             for k, v in results["models"].items()]
    print(f"\n| policy (target return {target:.0f}) | return | normalised score |\n|---|---|---|")
    for name, f in rows:
        print(f"| {name} | {f['return']:.0f} +- {f['return_std']:.0f} | {f['normalized_score']:.1f} |")
    if args.json:
        from aaren_bench.results import write_json_atomic

        write_json_atomic(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
