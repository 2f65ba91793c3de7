"""Named behaviour policies for `aaren-bench collect`: hand-written controllers that move.

A learning check needs data from a behaviour that does something a random policy does
not, without a trained agent or a download. ``gait`` for halfcheetah is an open-loop
gait: every joint's torque is a sinusoid of the episode time, one frequency, one phase
per joint,

    a_j(t) = sin(2 pi f t dt + phi_j),    dt = the env's control step (0.05 s)

found by a short random search over f and phi and a local refinement (seeded reset noise,
three episodes each), then rounded. It runs forward at a steady pace: a return of about
1700 per 1000 steps in ``HalfCheetah-v4`` (a uniform random policy: about -280). With
Gaussian action noise (``collect --noise``) the return falls (about 1000-1500 at 0.1,
about 0 at 0.3): a mix of noise levels gives a medium-replay-like dataset.

The controller is deterministic; it needs the step count, so it has ``reset()``, called
at the start of every episode.
"""
from __future__ import annotations

import numpy as np


class SineGait:
    """Open-loop sinusoidal torques: obs -> action, counting steps from ``reset()``."""

    def __init__(self, dt: float, freq: float, phases: tuple[float, ...]):
        self.dt, self.freq, self.phases = float(dt), float(freq), np.asarray(phases, dtype=np.float64)
        self.t = 0

    def reset(self) -> None:
        self.t = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = np.sin(2 * np.pi * self.freq * self.t * self.dt + self.phases)
        self.t += 1
        return a.astype(np.float32)


# (env, name) -> factory(env) -> controller
CONTROLLERS = {
    ("halfcheetah", "gait"): lambda env: SineGait(env.unwrapped.dt, 1.91, (1.36, 3.35, 2.1, 4.56, 1.42, 4.72)),
}


def controller(env_name: str, name: str, env):
    """The named controller for this env, or None when ``name`` is not one."""
    factory = CONTROLLERS.get((env_name, name))
    return factory(env) if factory else None


def names() -> list[str]:
    return sorted({f"{name} ({env})" for env, name in CONTROLLERS})
