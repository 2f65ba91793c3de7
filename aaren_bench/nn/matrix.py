"""The matrix-state members of the family, as token mixers beside Aaren and the Transformer.

- :class:`MLSTMMixer`: xLSTM's mLSTM cell (Beck et al. 2024), multi-head: query, key, value
  projections, an exponential input gate and a sigmoid forget gate per head (scalars from the
  token), the normalised, max-stabilised matrix memory (:mod:`aaren_bench.ops.mlstm`), the
  authors' per-head LayerNorm of the cell output, the output gate sigma(W_o x + b_o) and an
  output projection. State per head: a d_qk x d_head matrix, a d_qk normaliser and m.
- :class:`TTTLinearMixer`: TTT-Linear (Sun et al. 2024): query, key, value projections, the
  inner model f(x) = x + LN(W x + b) per head trained by mini-batch gradient descent on
  1/2 ||f(k) - v||^2 with the token-dependent rate eta_base sigma(w . x) / P and the per-position
  scale of the authors' code (:mod:`aaren_bench.ops.ttt`), a LayerNorm of the output, and an
  output projection. State per head: the inner W (P x P) and b, their gradient sums inside the
  current mini-batch, and the count.

Each is sized so that its parameter count matches the attention mixers' 4 d^2 + 4 d (the rules:
:func:`mlstm_dims`, :func:`ttt_dims`; docs/protocol/family.md). Both follow the mixer contract
(``forward(x, mask, state, output_state)`` -> ``(y, state or None)``, ``init_state``, ``step``;
states with ``.nbytes()``); a padded token leaves the state unchanged, never influences a valid
output, and gives a zero output before the output projection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aaren_bench.nn.family import _clean, _require_causal, attention_mixer_params
from aaren_bench.nn.mixers import register_mixer
from aaren_bench.ops.mlstm import (
    MLSTMState,
    mlstm_chunked,
    mlstm_init_state,
    mlstm_step,
)
from aaren_bench.ops.ttt import (
    TTTState,
    ttt_linear_chunked,
    ttt_linear_init_state,
    ttt_linear_step,
)

__all__ = ["MLSTMDims", "MLSTMMixer", "MLSTMState", "TTTDims", "TTTLinearMixer", "TTTState", "mlstm_dims", "ttt_dims"]


def _closest(make, sizes):
    """The dims among ``make(size)`` whose parameter count is closest to 4 d^2 + 4 d (ties: smaller)."""
    options = [make(s) for s in sizes]
    target = attention_mixer_params(options[0].d_model)
    return min(options, key=lambda dims: (abs(dims.params - target), dims.params))


def _heads_ok(d_model: int, n_heads: int) -> None:
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")


# --------------------------------------------------------------------------------------
# mLSTM
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLSTMDims:
    """Sizes of one mLSTM layer: values and gates at d_model, queries and keys at qk_head per head."""

    d_model: int
    n_heads: int
    qk_head: int

    @property
    def params(self) -> int:
        d, H, e = self.d_model, self.n_heads, self.n_heads * self.qk_head
        qk = 2 * (d * e + e)  # query and key projections with bias
        v_o = 2 * (d * d + d)  # value projection and output gate with bias
        gates = 2 * (d * H + H)  # input and forget gate pre-activations, one per head
        return qk + v_o + gates + d + (d * d + d)  # + per-head norm weight + output projection


def mlstm_dims(d_model: int, n_heads: int, qk_head: int | None = None) -> MLSTMDims:
    """The mLSTM layer's sizes; ``qk_head`` None picks the per-head query/key width whose
    parameter count is closest to the attention mixers' (about half the value width, the
    factor xLSTM 7B uses)."""
    _heads_ok(d_model, n_heads)
    if qk_head is not None:
        return MLSTMDims(d_model, n_heads, qk_head)
    return _closest(lambda s: MLSTMDims(d_model, n_heads, s), range(1, d_model // n_heads + 1))


@register_mixer("mlstm")
class MLSTMMixer(nn.Module):
    """xLSTM's mLSTM cell as a token mixer (see the module docstring).

    Options: ``qk_head`` (None: matched parameters), ``chunk`` (block length of the parallel
    form; any value gives the same result), ``forget`` ("sigmoid", the authors' code, or "exp").
    Initialisation as the authors' cell: gate weights 0, forget-gate biases linearly spaced in
    [3, 6] over the heads, input-gate biases N(0, 0.1); PyTorch's defaults elsewhere.
    """

    def __init__(self, d_model: int, n_heads: int, qk_head: int | None = None, chunk: int = 64,
                 forget: str = "sigmoid", norm_eps: float = 1e-5, causal: bool = True):
        super().__init__()
        _require_causal(causal, "mlstm")
        self.dims = dims = mlstm_dims(d_model, n_heads, qk_head)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.chunk, self.forget, self.norm_eps = chunk, forget, norm_eps
        e = n_heads * dims.qk_head
        self.q_proj, self.k_proj = nn.Linear(d_model, e), nn.Linear(d_model, e)
        self.v_proj, self.o_gate = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.igate, self.fgate = nn.Linear(d_model, n_heads), nn.Linear(d_model, n_heads)
        self.norm_weight = nn.Parameter(torch.ones(d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        with torch.no_grad():
            for gate in (self.igate, self.fgate):
                gate.weight.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, n_heads))
            self.igate.bias.normal_(0.0, 0.1)

    def _project(self, x: Tensor):
        """x (..., D) -> q, k (..., H, qk_head), v (..., H, Dh), i~, f~ (..., H); keys / sqrt(qk_head)."""
        H, s = self.n_heads, self.dims.qk_head
        q = self.q_proj(x).unflatten(-1, (H, s))
        k = self.k_proj(x).unflatten(-1, (H, s)) / math.sqrt(s)
        v = self.v_proj(x).unflatten(-1, (H, self.d_head))
        return q, k, v, self.igate(x), self.fgate(x)

    def _out(self, h: Tensor, x: Tensor) -> Tensor:
        """Per-head LayerNorm (weight only), output gate, output projection: h (..., H, Dh), x (..., D)."""
        h = F.layer_norm(h, (self.d_head,), eps=self.norm_eps).flatten(-2) * self.norm_weight.to(h.dtype)
        return self.out_proj(torch.sigmoid(self.o_gate(x)) * h)

    def forward(self, x: Tensor, mask: Tensor | None = None, state: MLSTMState | None = None, output_state: bool = False):
        x = _clean(x, mask)
        q, k, v, i_pre, f_pre = (t.transpose(1, 2) for t in self._project(x))  # (B, H, N, .), (B, H, N)
        h, state = mlstm_chunked(q, k, v, i_pre, f_pre, mask, chunk=self.chunk, initial_state=state,
                                 output_final_state=output_state, forget=self.forget)
        return self._out(h.transpose(1, 2), x), state

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> MLSTMState:
        return mlstm_init_state(batch, self.n_heads, self.dims.qk_head, self.d_head, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: MLSTMState, mask_t: Tensor | None = None):
        x_t = _clean(x_t, mask_t)
        h, state = mlstm_step(*self._project(x_t), state, mask_t, forget=self.forget)
        return self._out(h, x_t), state


# --------------------------------------------------------------------------------------
# TTT-Linear
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TTTDims:
    """Sizes of one TTT-Linear layer: n_heads inner models of width head_dim."""

    d_model: int
    n_heads: int
    head_dim: int
    mini_batch: int = 16

    @property
    def params(self) -> int:
        d, H, P = self.d_model, self.n_heads, self.head_dim
        e = H * P
        projections = 4 * d * e  # query, key, value, output; no bias (the authors' layer)
        rate = H * d + H  # the inner rate's gate, one per head
        inner = H * P * P + H * P + 2 * e  # the initial W and b, the inner LN's gamma and beta
        return projections + rate + inner + 2 * e + self.mini_batch  # + output LayerNorm, position offsets


def ttt_dims(d_model: int, n_heads: int, head_dim: int | None = None, mini_batch: int = 16) -> TTTDims:
    """TTT-Linear's sizes; ``head_dim`` None picks the inner width (at most d_model / n_heads)
    whose parameter count is closest to the attention mixers'."""
    _heads_ok(d_model, n_heads)
    if mini_batch < 1:
        raise ValueError(f"mini_batch must be >= 1; got {mini_batch}")
    if head_dim is not None:
        return TTTDims(d_model, n_heads, head_dim, mini_batch)
    return _closest(lambda s: TTTDims(d_model, n_heads, s, mini_batch), range(1, d_model // n_heads + 1))


@register_mixer("ttt")
class TTTLinearMixer(nn.Module):
    """TTT-Linear as a token mixer (see the module docstring).

    Options: ``head_dim`` (None: matched parameters), ``mini_batch`` (b, 16 as the paper),
    ``base_lr`` (eta_base, 1 for TTT-Linear). Initialisation as the authors' code: W ~ N(0, 0.02),
    b = 0, rate gate N(0, 0.02) with bias 0, inner LN gamma 1, beta 0, position offsets 0.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int | None = None, mini_batch: int = 16,
                 base_lr: float = 1.0, causal: bool = True):
        super().__init__()
        _require_causal(causal, "ttt")
        self.dims = dims = ttt_dims(d_model, n_heads, head_dim, mini_batch)
        H, P = n_heads, dims.head_dim
        self.d_model, self.n_heads, self.head_dim, self.base_lr = d_model, H, P, base_lr
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, H * P, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(H * P, d_model, bias=False)
        self.lr_weight = nn.Parameter(torch.randn(H, d_model) * 0.02)
        self.lr_bias = nn.Parameter(torch.zeros(H))
        self.W0 = nn.Parameter(torch.randn(H, P, P) * 0.02)
        self.b0 = nn.Parameter(torch.zeros(H, P))
        self.ln_weight, self.ln_bias = nn.Parameter(torch.ones(H, P)), nn.Parameter(torch.zeros(H, P))
        self.post_norm = nn.LayerNorm(H * P, eps=1e-6)
        self.register_buffer("token_idx", 1.0 / torch.arange(1, mini_batch + 1, dtype=torch.float32), persistent=False)
        self.token_offset = nn.Parameter(torch.zeros(mini_batch))

    def _project(self, x: Tensor):
        """x (..., D) -> q, k, v (..., H, P), eta (..., H)."""
        H, P = self.n_heads, self.head_dim
        q, k, v = (p(x).unflatten(-1, (H, P)) for p in (self.q_proj, self.k_proj, self.v_proj))
        eta = self.base_lr * torch.sigmoid(x @ self.lr_weight.to(x.dtype).t() + self.lr_bias.to(x.dtype)) / P
        return q, k, v, eta

    def _scale(self) -> Tensor:
        return (self.token_idx + self.token_offset).clamp(min=0.0)

    def _out(self, z: Tensor, mask: Tensor | None) -> Tensor:
        """LayerNorm of the merged heads, zero at padded tokens, output projection: z (..., H, P)."""
        y = self.post_norm(z.flatten(-2))
        return self.o_proj(_clean(y, mask))

    def forward(self, x: Tensor, mask: Tensor | None = None, state: TTTState | None = None, output_state: bool = False):
        x = _clean(x, mask)
        q, k, v, eta = self._project(x)
        state = self.init_state(x.shape[0], dtype=x.dtype) if state is None else state
        z, state = ttt_linear_chunked(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), eta.transpose(1, 2),
                                      self._scale(), state, mask, (self.ln_weight, self.ln_bias),
                                      output_final_state=output_state)
        return self._out(z.transpose(1, 2), mask), state

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> TTTState:
        return ttt_linear_init_state(self.W0, self.b0, batch, dtype)

    def step(self, x_t: Tensor, state: TTTState, mask_t: Tensor | None = None):
        x_t = _clean(x_t, mask_t)
        z, state = ttt_linear_step(*self._project(x_t), self._scale(), state, mask_t, (self.ln_weight, self.ln_bias))
        return self._out(z, mask_t), state
