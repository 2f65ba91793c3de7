"""Offline-RL benchmark: Decision Aaren vs Decision Transformer on collected HalfCheetah data.

For each backbone (the task's default sizes, identical for both): train for a fixed number
of steps on a HalfCheetah dataset collected here with `aaren-bench collect`, then evaluate
in the simulator with the DT windowed protocol. Prints the normalised score, training
steps/s and evaluation env steps/s, and the per-step acting cost (act + update, one
episode) at episode step 10 vs step 1000 for both acting modes, with the streaming
state's size. Aaren streaming must stay flat; the Transformer's KV cache grows.

    nice -n 5 .venv/bin/python benchmarks/rl_bench.py --steps 500 --episodes 2 \\
        --json /tmp/rl-bench.json

Timings on a shared machine are noisy: compare the two backbones within one run.
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

from aaren_bench.run import build  # noqa: E402
from aaren_bench.study import compose_config  # noqa: E402
from tasks.rl.acting import run_episodes  # noqa: E402
from tasks.rl.collect import collect  # noqa: E402
from tasks.rl.d4rl import normalized_score  # noqa: E402
from tasks.rl.envs import make_env  # noqa: E402
from tasks.rl.module import masked_mse  # noqa: E402


def compose(kind: str, data: Path, seed: int, overrides: list[str]):
    return compose_config(["dataset=halfcheetah-collected", f"model={kind}", f"dataset.file={data}", f"seed={seed}",
                           *overrides])


def train_steps(module, dm, steps: int, grad_clip: float) -> tuple[float, float]:
    """Train ``steps`` steps as the task does (AdamW, warm-up, clip).

    Returns steps per second of wall time and of process CPU time, after 5 warm-up steps.
    """
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    module.train()
    it, t0 = iter(dm.train_dataloader()), None
    for i in range(steps + 5):
        if i == 5:
            t0, c0 = time.perf_counter(), time.process_time()
        try:
            b = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            b = next(it)
        pred = module.model(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
        loss = masked_mse(pred, b["actions"], b["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        opt.step()
        sched.step()
    return steps / (time.perf_counter() - t0), steps / max(time.process_time() - c0, 1e-9)


def acting_cost(module, mode: str, ep_len: int, seed: int, at=(10, 1000)) -> dict:
    """Per-step time (median over 11 steps around each point) and state size, one episode."""
    agent = module.make_agent(mode)
    env = make_env("halfcheetah", 17, 6, ep_len)
    obs, _ = env.reset(seed=seed)
    agent.reset(1)
    nbytes = {}
    for t in range(ep_len):
        a = agent.act(obs[None].astype(np.float32))
        obs, r, term, trunc, _ = env.step(a[0])
        agent.update(a, np.array([r], np.float32))
        if mode == "stream" and t + 1 in at:
            nbytes[t + 1] = agent.state.nbytes()
        if term or trunc:
            break
    env.close()
    wall, cpu = np.array(agent.step_seconds), np.array(agent.step_cpu_seconds)
    out = {}
    for s in at:
        if s <= len(wall):
            lo, hi = max(0, s - 6), min(len(wall), s + 5)
            out[f"ms_at_{s}"] = float(np.median(wall[lo:hi]) * 1e3)
            out[f"cpu_ms_at_{s}"] = float(np.median(cpu[lo:hi]) * 1e3)
            if s in nbytes:
                out[f"state_bytes_at_{s}"] = nbytes[s]
    return out


def print_cost(r: dict) -> None:
    for mode in ("window", "stream"):
        c = r[f"act_{mode}"]
        size = "".join(f"  state {c[f'state_bytes_at_{s}']:,} B @{s}" for s in (10, 1000) if f"state_bytes_at_{s}" in c)
        print(f"{'':12s} act[{mode:6s}] wall {c.get('ms_at_10', float('nan')):.2f} ms @10  "
              f"{c.get('ms_at_1000', float('nan')):.2f} ms @1000 | cpu {c.get('cpu_ms_at_10', float('nan')):.2f} ms @10  "
              f"{c.get('cpu_ms_at_1000', float('nan')):.2f} ms @1000{size}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="training steps per backbone")
    p.add_argument("--episodes", type=int, default=2, help="evaluation episodes (windowed protocol)")
    p.add_argument("--ep-len", type=int, default=1000)
    p.add_argument("--collect-episodes", type=int, default=10)
    p.add_argument("--policy", default="random", help="collection policy: random or a TorchScript file")
    p.add_argument("--data", default="/tmp/rl-bench/halfcheetah_collected-v2.hdf5")
    p.add_argument("--models", default="aaren,transformer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost-only", action="store_true", help="only the per-step acting cost (untrained models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures here (atomically)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. task.batch_size=32")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    if not data.exists():
        collect("halfcheetah", args.policy, args.collect_episodes, data, seed=args.seed)
    results = {"args": vars(args), "torch_threads": torch.get_num_threads(), "models": {}}
    for kind in args.models.split(","):
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        cfg = compose(kind, data, args.seed, args.overrides)
        _, dm, module, _ = build(cfg)
        dm.prepare_data()  # outside a trainer: what its hooks do before the first step
        dm.setup("fit")
        module.adopt_statistics(dm)
        r = {"params": sum(p.numel() for p in module.parameters())}
        if args.cost_only:  # acting cost does not depend on the weights: untrained model
            module.eval()
            r.update({f"act_{mode}": acting_cost(module, mode, args.ep_len, args.seed) for mode in ("window", "stream")})
            results["models"][kind] = r
            print(f"{kind:12s} params {r['params']:,} (untrained, acting cost only)", flush=True)
            print_cost(r)
            continue
        r["train_steps_per_s"], r["train_steps_per_cpu_s"] = train_steps(module, dm, args.steps, float(cfg.task.grad_clip))
        module.eval()
        envs = [make_env("halfcheetah", 17, 6, args.ep_len) for _ in range(args.episodes)]
        seeds = [int(cfg.task.eval_seed) + 1000 * args.seed + i for i in range(args.episodes)]
        c0 = time.process_time()
        stats = run_episodes(module.make_agent("window"), envs, seeds, args.ep_len)
        r["eval_env_steps_per_cpu_s"] = float(stats.lengths.sum()) / max(time.process_time() - c0, 1e-9)
        scores = normalized_score("halfcheetah", stats.returns)
        r.update(return_mean=float(stats.returns.mean()), normalized_score=float(scores.mean()),
                 normalized_score_std=float(scores.std()), eval_env_steps_per_s=stats.env_steps_per_s)
        for mode in ("window", "stream"):
            r[f"act_{mode}"] = acting_cost(module, mode, args.ep_len, seeds[0])
        results["models"][kind] = r
        print(f"{kind:12s} params {r['params']:,}  score {r['normalized_score']:.2f} +- {r['normalized_score_std']:.2f} "
              f"(return {r['return_mean']:.1f})  train {r['train_steps_per_s']:.2f} steps/s "
              f"({r['train_steps_per_cpu_s']:.2f} per CPU s)  eval {r['eval_env_steps_per_s']:.0f} env steps/s "
              f"({r['eval_env_steps_per_cpu_s']:.0f} per CPU s)", flush=True)
        print_cost(r)
    if args.json:
        from aaren_bench.results import write_json_atomic

        write_json_atomic(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
