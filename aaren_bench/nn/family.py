"""Two more members of the attention-as-RNN family, as token mixers beside Aaren and the Transformer.

- :class:`LinearAttentionMixer`: causal linear attention (Katharopoulos et al. 2020), phi = elu + 1,
  with the Transformer's four projections (query, key, value, output, with bias): the same
  parameter count, 4 d^2 + 4 d. State per head: a d_head x d_head matrix and a d_head vector.
- :class:`Mamba2Mixer`: the Mamba-2 layer (Dao & Gu 2024) as published: one input projection to
  (z, x, B, C, dt), a depthwise causal convolution (kernel 4) with SiLU on (x, B, C), the SSD
  recurrence with a scalar decay per head and step, the D skip, the gated RMSNorm
  rmsnorm(y * silu(z)) and the output projection. State: the SSM state per head (headdim x d_state)
  and the convolution's last (kernel - 1) inputs. Its width is chosen by :func:`mamba2_dims` so
  that its parameter count matches the attention mixers' (docs/protocol/family.md).

Both follow the mixer contract (plan: CONTRACTS.md): ``forward(x, mask, state, output_state)``
returns ``(y, state or None)``, ``init_state``, ``step``; the state knows its size
(``.nbytes()``). The math is in :mod:`aaren_bench.ops.linear_attn` and :mod:`aaren_bench.ops.ssd`.
A padded token (mask False) leaves the state unchanged, never influences a valid output, and
outputs what an all-zero mixer output gives (its inputs are replaced by zeros on entry, so
garbage placed there reaches neither the outputs nor the parameter gradients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.mixers import register_mixer
from aaren_bench.ops.linear_attn import (
    LinearAttnState,
    linear_attn_chunked,
    linear_attn_init_state,
    linear_attn_step,
)
from aaren_bench.ops.ssd import (
    causal_conv1d,
    causal_conv1d_step,
    gated_rms_norm,
    ssd_chunked,
    ssd_init_state,
    ssd_step,
)

__all__ = [
    "LinearAttentionMixer",
    "LinearAttnState",
    "Mamba2Dims",
    "Mamba2Mixer",
    "Mamba2State",
    "attention_mixer_params",
    "mamba2_dims",
]


def _require_causal(causal: bool, name: str) -> None:
    if not causal:
        raise ValueError(f"the {name} mixer is causal only; set model.causal=true (only the transformer mixer has a bidirectional form)")


def _clean(x: Tensor, mask: Tensor | None) -> Tensor:
    """x with zeros at padded tokens: garbage there (NaN included) reaches no parameter gradient."""
    if mask is None:
        return x
    return x.masked_fill(~mask.bool()[..., None], 0.0)


def _acc(t: Tensor) -> Tensor:
    """float64 stays float64; everything else in float32 (dt and the decays, as in Mamba-2)."""
    return t if t.dtype == torch.float64 else t.float()


def attention_mixer_params(d_model: int) -> int:
    """Query, key, value and output projections with bias (Transformer and linear attention)."""
    return 4 * d_model * d_model + 4 * d_model


# --------------------------------------------------------------------------------------
# Linear attention
# --------------------------------------------------------------------------------------


@register_mixer("linear_attn")
class LinearAttentionMixer(nn.Module):
    """Causal linear attention, phi(x) = elu(x) + 1, one state (S, z) per head.

    Options: ``chunk`` (block length of the parallel form; any value gives the same result),
    ``use_kernel`` (flash-linear-attention's kernel on CUDA when importable).
    """

    def __init__(self, d_model: int, n_heads: int, chunk: int = 64, use_kernel: bool = False, causal: bool = True):
        super().__init__()
        _require_causal(causal, "linear_attn")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.chunk, self.use_kernel = chunk, use_kernel
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, t: Tensor) -> Tensor:
        """(B, N, D) -> (B, H, N, Dh)"""
        B, N, _ = t.shape
        return t.view(B, N, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None = None, state: LinearAttnState | None = None, output_state: bool = False):
        x = _clean(x, mask)
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, H, N, Dh)
        o, state = linear_attn_chunked(
            q, k, v, mask, chunk=self.chunk, initial_state=state, output_final_state=output_state, use_kernel=self.use_kernel
        )
        B, H, N, Dh = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, N, H * Dh)), state

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> LinearAttnState:
        return linear_attn_init_state(batch, self.n_heads, self.d_head, self.d_head, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: LinearAttnState, mask_t: Tensor | None = None):
        x_t = _clean(x_t, mask_t)
        B = x_t.shape[0]
        q, k, v = (p(x_t).view(B, self.n_heads, self.d_head) for p in (self.q_proj, self.k_proj, self.v_proj))
        o, state = linear_attn_step(q, k, v, state, mask_t)
        return self.out_proj(o.reshape(B, self.d_model)), state


# --------------------------------------------------------------------------------------
# Mamba-2
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mamba2Dims:
    """The sizes of one Mamba-2 layer."""

    d_model: int
    d_inner: int
    d_state: int
    headdim: int
    ngroups: int = 1
    d_conv: int = 4

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels through the convolution: x, B and C."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def params(self) -> int:
        in_proj = self.d_model * (self.d_inner + self.conv_dim + self.nheads)  # z, (x, B, C), dt; no bias
        conv = self.conv_dim * self.d_conv + self.conv_dim  # depthwise, with bias
        per_head = 3 * self.nheads  # dt_bias, A_log, D
        norm = self.d_inner
        out_proj = self.d_inner * self.d_model  # no bias
        return in_proj + conv + per_head + norm + out_proj


def mamba2_dims(
    d_model: int,
    d_state: int | None = None,
    headdim: int | None = None,
    expand: float | None = None,
    d_conv: int = 4,
    ngroups: int = 1,
) -> Mamba2Dims:
    """Mamba-2's sizes at width ``d_model``; None picks the value matched to the attention mixers.

    - d_state: min(64, d_model // 2) (Mamba-2 uses 64-128 at d_model >= 768; the B and C
      projections cost 2 d_model d_state parameters, which must stay well below 4 d_model^2);
    - headdim: min(64, d_model) (Mamba-2's 64);
    - d_inner = expand * d_model if expand is given, else the multiple of headdim (a whole
      number of heads, divisible by ngroups) whose layer has the parameter count closest to
      the attention mixers' 4 d^2 + 4 d (ties: the smaller).
    """
    d_state = d_state if d_state is not None else max(1, min(64, d_model // 2))
    headdim = headdim if headdim is not None else min(64, d_model)
    if expand is not None:
        d_inner = int(round(expand * d_model))
        if d_inner % headdim or (d_inner // headdim) % ngroups:
            raise ValueError(
                f"expand * d_model = {d_inner} must be a whole number of heads of headdim {headdim}, "
                f"divisible into ngroups = {ngroups}"
            )
        return Mamba2Dims(d_model, d_inner, d_state, headdim, ngroups, d_conv)
    target = attention_mixer_params(d_model)
    step = headdim * ngroups
    candidates = [Mamba2Dims(d_model, n * step, d_state, headdim, ngroups, d_conv) for n in range(1, 4 * d_model // step + 2)]
    return min(candidates, key=lambda dims: (abs(dims.params - target), dims.d_inner))


@dataclass
class Mamba2State:
    """ssm: (B, nheads, headdim, d_state); conv: (B, conv_dim, d_conv - 1), the last valid inputs."""

    ssm: Tensor
    conv: Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ssm, self.conv))


@register_mixer("mamba2")
class Mamba2Mixer(nn.Module):
    """The Mamba-2 layer (mamba_ssm.modules.mamba2 with its defaults: ngroups 1, kernel 4, no
    projection biases, conv bias, gated RMSNorm after the gate), in plain torch.

    ``n_heads`` (the task's attention heads) does not apply: the SSM has d_inner / headdim heads.
    Sizes: see :func:`mamba2_dims`. ``chunk``: block length of the parallel form (any value gives
    the same result). ``use_kernel``: mamba-ssm's SSD kernel on CUDA when importable.
    Initialisation as Mamba-2: dt log-uniform in [dt_min, dt_max] through the inverse softplus
    into dt_bias, A = -U[1, 16], D = 1.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        d_state: int | None = None,
        headdim: int | None = None,
        expand: float | None = None,
        d_conv: int = 4,
        ngroups: int = 1,
        chunk: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        norm_eps: float = 1e-5,
        use_kernel: bool = False,
        causal: bool = True,
    ):
        super().__init__()
        _require_causal(causal, "mamba2")
        self.dims = dims = mamba2_dims(d_model, d_state, headdim, expand, d_conv, ngroups)
        self.d_model, self.chunk, self.use_kernel, self.norm_eps = d_model, chunk, use_kernel, norm_eps
        H = dims.nheads
        self.in_proj = nn.Linear(d_model, dims.d_inner + dims.conv_dim + H, bias=False)
        self.conv1d = nn.Conv1d(dims.conv_dim, dims.conv_dim, d_conv, groups=dims.conv_dim, bias=True)  # weights only
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.empty(H).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # as in mamba_ssm, for optimisers that honour it
        self.norm_weight = nn.Parameter(torch.ones(dims.d_inner))
        self.out_proj = nn.Linear(dims.d_inner, d_model, bias=False)

    def _split(self, zxbcdt: Tensor):
        d = self.dims
        return torch.split(zxbcdt, [d.d_inner, d.conv_dim, d.nheads], dim=-1)

    def _conv_weight(self) -> Tensor:
        return self.conv1d.weight[:, 0]  # (conv_dim, d_conv)

    def _out(self, y: Tensor, xs: Tensor, z: Tensor) -> Tensor:
        """D skip, gated RMSNorm, output projection: y, xs (..., H, P), z (..., d_inner)."""
        y = y + xs * self.D.to(y.dtype)[:, None]
        y = y.flatten(-2)
        y = gated_rms_norm(y, z, self.norm_weight, self.norm_eps, group_size=self.dims.d_inner // self.dims.ngroups)
        return self.out_proj(y)

    def forward(self, x: Tensor, mask: Tensor | None = None, state: Mamba2State | None = None, output_state: bool = False):
        d = self.dims
        B, N, _ = x.shape
        z, xBC, dt = self._split(self.in_proj(_clean(x, mask)))
        xBC, conv_state = causal_conv1d(
            xBC, self._conv_weight(), self.conv1d.bias, mask,
            initial_state=None if state is None else state.conv, output_final_state=output_state,
        )
        xs, Bm, Cm = torch.split(F.silu(xBC), [d.d_inner, d.ngroups * d.d_state, d.ngroups * d.d_state], dim=-1)
        xs = xs.view(B, N, d.nheads, d.headdim)  # (B, N, H, P)
        y, ssm_state = ssd_chunked(
            xs.transpose(1, 2),  # (B, H, N, P)
            F.softplus(_acc(dt) + self.dt_bias).transpose(1, 2),  # (B, H, N)
            -torch.exp(self.A_log),
            Bm.view(B, N, d.ngroups, d.d_state).transpose(1, 2),  # (B, G, N, S)
            Cm.view(B, N, d.ngroups, d.d_state).transpose(1, 2),
            mask,
            chunk=self.chunk,
            initial_state=None if state is None else state.ssm,
            output_final_state=output_state,
            use_kernel=self.use_kernel,
        )
        out = self._out(y.transpose(1, 2), xs, z)  # (B, N, D)
        return out, (Mamba2State(ssm_state, conv_state) if output_state else None)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> Mamba2State:
        d = self.dims
        ssm = ssd_init_state(batch, d.nheads, d.headdim, d.d_state, device=device, dtype=dtype)
        conv = torch.zeros(batch, d.conv_dim, d.d_conv - 1, device=device, dtype=ssm.dtype)
        return Mamba2State(ssm, conv)

    def step(self, x_t: Tensor, state: Mamba2State, mask_t: Tensor | None = None):
        d = self.dims
        B = x_t.shape[0]
        z, xBC, dt = self._split(self.in_proj(_clean(x_t, mask_t)))
        xBC, conv = causal_conv1d_step(xBC, state.conv, self._conv_weight(), self.conv1d.bias, mask_t)
        xs, Bm, Cm = torch.split(F.silu(xBC), [d.d_inner, d.ngroups * d.d_state, d.ngroups * d.d_state], dim=-1)
        xs = xs.view(B, d.nheads, d.headdim)
        y, ssm = ssd_step(
            xs,
            F.softplus(_acc(dt) + self.dt_bias),
            -torch.exp(self.A_log),
            Bm.view(B, d.ngroups, d.d_state),
            Cm.view(B, d.ngroups, d.d_state),
            state.ssm,
            mask_t,
        )
        return self._out(y, xs, z), Mamba2State(ssm, conv)
