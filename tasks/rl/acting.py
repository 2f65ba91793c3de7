"""Acting in the simulator with a trained Decision model, and running evaluation episodes.

Two acting modes (``task.acting``):
- ``window`` (the Decision Transformer protocol): at step t the model reads the last K
  steps (R, s, a) with the current R_t, s_t, and acts from the s_t token. Each step
  re-encodes up to 3K - 1 tokens.
- ``stream``: the model is a true RNN over the whole episode: R_t and s_t are fed to the
  backbone's ``step`` on its state, then the action taken. Aaren's state has a constant
  size; the Transformer's KV cache grows with the episode. Over the first K steps both
  modes see the same history and give the same actions.

Several episodes run in lockstep (one batch); an episode that has ended keeps its last
observation and its actions are ignored. R_{t+1} = R_t - r_t, starting at the target.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from tasks.rl.model import DecisionModel

MODES = ("window", "stream")


class Agent:
    """Decides actions for n lockstep episodes; call ``reset``, then ``act`` / ``update`` each step."""

    def __init__(
        self,
        model: DecisionModel,
        target_return: float,
        rtg_scale: float,
        context_len: int,
        mode: str = "window",
        max_ep_len: int = 1000,
    ):
        if mode not in MODES:
            raise ValueError(f"acting mode must be one of {MODES}; got {mode!r} (task.acting)")
        self.model, self.mode = model, mode
        self.target, self.scale, self.K, self.max_len = float(target_return), float(rtg_scale), int(context_len), int(max_ep_len)
        self.step_seconds: list[float] = []  # wall time of each step's ``act`` + ``update``
        self.step_cpu_seconds: list[float] = []  # the same in process CPU time (less sensitive to a busy machine)

    @property
    def device(self):
        return self.model.state_mean.device

    def reset(self, n: int) -> None:
        dev, S, A = self.device, self.model.obs_dim, self.model.act_dim
        self.model.check_horizon(self.max_len)
        self.n, self.t = n, 0
        self.rtg = torch.full((n,), self.target / self.scale, device=dev)  # scaled R_t (n,)
        self.step_seconds, self.step_cpu_seconds = [], []
        if self.mode == "window":
            self.states = torch.zeros(n, self.max_len, S, device=dev)
            self.actions = torch.zeros(n, self.max_len, A, device=dev)
            self.rtgs = torch.zeros(n, self.max_len, device=dev)
        else:
            self.state = self.model.init_state(n, device=dev)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """obs (n, S) raw observations at step t -> actions (n, A) in [-1, 1]."""
        if self.t >= self.max_len:
            raise RuntimeError(f"episode longer than max_ep_len={self.max_len}")
        t0, c0 = time.perf_counter(), time.process_time()
        s = self.model.normalize(torch.as_tensor(obs, dtype=torch.float32, device=self.device))  # (n, S)
        tt = torch.full((self.n,), self.t, dtype=torch.long, device=self.device)
        if self.mode == "window":
            self.states[:, self.t], self.rtgs[:, self.t] = s, self.rtg
            lo, hi = max(0, self.t + 1 - self.K), self.t + 1
            steps = torch.arange(lo, hi, device=self.device).expand(self.n, -1)  # (n, k)
            # actions[:, t] is still zero: by causality it cannot reach the s_t output
            pred = self.model(self.states[:, lo:hi], self.actions[:, lo:hi], self.rtgs[:, lo:hi], steps)
            a = pred[:, -1]  # (n, A)
        else:
            a, self.state = self.model.act_step(self.state, self.rtg, s, tt)
        self.step_seconds.append(time.perf_counter() - t0)
        self.step_cpu_seconds.append(time.process_time() - c0)
        return a.cpu().numpy()

    @torch.no_grad()
    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Record the actions taken (n, A) and rewards received (n,) at step t; advance to t + 1."""
        t0, c0 = time.perf_counter(), time.process_time()
        a = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        if self.mode == "window":
            self.actions[:, self.t] = a
        else:
            tt = torch.full((self.n,), self.t, dtype=torch.long, device=self.device)
            self.state = self.model.observe_action(self.state, a, tt)
        self.rtg = self.rtg - torch.as_tensor(rewards, dtype=torch.float32, device=self.device) / self.scale
        self.t += 1
        if self.step_seconds:
            self.step_seconds[-1] += time.perf_counter() - t0
            self.step_cpu_seconds[-1] += time.process_time() - c0


@dataclass
class EpisodeStats:
    returns: np.ndarray  # (n,)
    lengths: np.ndarray  # (n,) env steps
    wall_s: float
    act_seconds: list[float] = field(default_factory=list)  # per step, for all n episodes together

    @property
    def env_steps_per_s(self) -> float:
        return float(self.lengths.sum()) / max(self.wall_s, 1e-9)


def run_episodes(agent: Agent, envs: list, seeds: list[int], max_steps: int = 1000) -> EpisodeStats:
    """Run one episode per env in lockstep, each reset with its own seed."""
    if len(envs) != len(seeds):
        raise ValueError(f"{len(envs)} environments but {len(seeds)} seeds")
    n = len(envs)
    obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)]).astype(np.float32)
    for env, s in zip(envs, seeds):
        env.action_space.seed(int(s))
    agent.reset(n)
    active = np.ones(n, dtype=bool)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    t0 = time.perf_counter()
    for _ in range(max_steps):
        actions = agent.act(obs)
        rewards = np.zeros(n, dtype=np.float32)
        for i in np.nonzero(active)[0]:
            o, r, terminated, truncated, _ = envs[i].step(actions[i])
            obs[i], rewards[i] = o, r
            returns[i] += r
            lengths[i] += 1
            if terminated or truncated:
                active[i] = False
        if not active.any():
            break
        agent.update(actions, rewards)
    return EpisodeStats(returns, lengths, time.perf_counter() - t0, list(agent.step_seconds))
