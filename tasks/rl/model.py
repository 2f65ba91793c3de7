"""The Decision model: (return-to-go, state, action) tokens around any backbone.

Each time step t contributes three tokens, in this order: R_t (return-to-go), s_t, a_t.
Each is a linear embedding of its value plus a learned embedding of the episode time step
t, then one LayerNorm; the backbone sees the interleaved sequence (B, 3T, D). The action
a_t is predicted (tanh head) from the backbone's output at the s_t token, so by causality
it sees R_0, s_0, a_0, ..., R_t, s_t and never a_t itself.

Two ways to run, equal where both see the same history (tested):
- ``forward``: a window of T steps in parallel (training; the windowed acting protocol);
- ``init_state`` / ``act_step`` / ``observe_action``: one token at a time on the
  backbone's streaming state (Aaren: constant memory per step; Transformer: a KV cache).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tasks.rl.data import PADDING


def interleave(r: Tensor, s: Tensor, a: Tensor) -> Tensor:
    """(B, T, D) x3 -> (B, 3T, D) ordered R_0, s_0, a_0, R_1, ..."""
    B, T, D = s.shape
    return torch.stack([r, s, a], dim=2).reshape(B, 3 * T, D)


class DecisionModel(nn.Module):
    def __init__(self, backbone: nn.Module, obs_dim: int, act_dim: int, max_timestep: int = 4096,
                 embed_dropout: float = 0.0):
        super().__init__()
        D = backbone.d_model
        self.backbone = backbone
        self.obs_dim, self.act_dim, self.max_timestep = obs_dim, act_dim, max_timestep
        self.embed_rtg = nn.Linear(1, D)
        self.embed_state = nn.Linear(obs_dim, D)
        self.embed_action = nn.Linear(act_dim, D)
        self.embed_time = nn.Embedding(max_timestep, D)
        self.embed_ln = nn.LayerNorm(D)
        self.embed_drop = nn.Dropout(embed_dropout)  # GPT-2's embd_pdrop on the token sequence (protocol dt)
        self.head = nn.Sequential(nn.Linear(D, act_dim), nn.Tanh())
        # dataset state statistics travel with the checkpoint (tasks.rl.d4rl.StateStats)
        self.register_buffer("state_mean", torch.zeros(obs_dim))
        self.register_buffer("state_std", torch.ones(obs_dim))
        self.register_buffer("state_keep", torch.ones(obs_dim))  # 0: a column constant in the data

    def set_state_stats(self, stats) -> None:
        """``stats``: a :class:`tasks.rl.d4rl.StateStats` (mean, std, keep)."""
        for buf, value in ((self.state_mean, stats.mean), (self.state_std, stats.std), (self.state_keep, stats.keep)):
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype))

    def normalize(self, states: Tensor) -> Tensor:
        """Raw observations (..., S) -> the model's inputs, as in training: constant columns are 0."""
        return (states - self.state_mean) / self.state_std * self.state_keep

    def check_horizon(self, steps: int) -> None:
        """Refuse episodes of more than ``max_timestep`` steps (time steps 0..steps-1 must have an
        embedding). Checked where the length is known on the host (the data's longest trajectory,
        the acting horizon), never on a batch: reading a device tensor would stall a GPU at every step."""
        if steps > self.max_timestep:
            raise ValueError(
                f"episodes of {steps} steps need time steps up to {steps - 1}, beyond the timestep embedding "
                f"({self.max_timestep}); raise task.max_timestep"
            )

    def embed(self, kind: str, value: Tensor, timesteps: Tensor) -> Tensor:
        """value (..., dim) and timesteps (...) -> token (..., D)"""
        layer = {"rtg": self.embed_rtg, "state": self.embed_state, "action": self.embed_action}[kind]
        return self.embed_ln(layer(value) + self.embed_time(timesteps))

    def forward(self, states: Tensor, actions: Tensor, rtg: Tensor, timesteps: Tensor, mask: Tensor | None = None) -> Tensor:
        """Predicted actions (B, T, A) from a window.

        states (B, T, S) already normalised; actions (B, T, A); rtg (B, T) already scaled;
        timesteps (B, T) long, below ``max_timestep`` (see :meth:`check_horizon`); mask (B, T) True at valid steps.
        """
        tokens = interleave(
            self.embed("rtg", rtg.unsqueeze(-1), timesteps),
            self.embed("state", states, timesteps),
            self.embed("action", actions, timesteps),
        )  # (B, 3T, D)
        token_mask = None if mask is None else mask.repeat_interleave(3, dim=1)  # (B, 3T)
        # right padding by timestep stays right padding by token
        h, _ = self.backbone(self.embed_drop(tokens), token_mask, padding=PADDING)  # (B, 3T, D)
        return self.head(h[:, 1::3])  # outputs at the state tokens -> (B, T, A)

    # -- streaming: one token at a time ------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=torch.float32):
        return self.backbone.init_state(batch, device=device, dtype=dtype)

    def act_step(self, state, rtg_t: Tensor, s_t: Tensor, t: Tensor):
        """Feed R_t then s_t; rtg_t (B,) scaled, s_t (B, S) normalised, t (B,) long -> (a_t (B, A), state)."""
        _, state = self.backbone.step(self.embed("rtg", rtg_t.unsqueeze(-1), t), state)
        h, state = self.backbone.step(self.embed("state", s_t, t), state)
        return self.head(h), state

    def observe_action(self, state, a_t: Tensor, t: Tensor):
        """Feed the action actually taken, a_t (B, A), at step t (B,) -> state."""
        _, state = self.backbone.step(self.embed("action", a_t, t), state)
        return state
