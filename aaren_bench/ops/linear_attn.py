"""Causal linear attention (Katharopoulos et al. 2020): attention as an RNN with a matrix state.

With the positive feature map phi(x) = elu(x) + 1 on queries and keys (B, H, N, Dk) and values
(B, H, N, Dv), every function here computes, per head,

    y_t = sum_{s<=t} (phi(q_t) . phi(k_s)) v_s / sum_{s<=t} phi(q_t) . phi(k_s)
        = phi(q_t)^T S_t / phi(q_t)^T z_t,   S_t = S_{t-1} + phi(k_t) v_t^T,  z_t = z_{t-1} + phi(k_t)

started from an initial state (S_0, z_0) (zeros: the empty history). The state is one Dk x Dv
matrix and one Dk vector per head, whatever the length.

Padding (``mask`` (B, N), True = valid): the inputs of a padded token are replaced by zeros before
anything is computed (NaN or inf placed there never reaches a valid output or gradient) and its
features are then zeroed: phi(k) = 0 adds nothing to S or z (the state is left exactly as it
was), and phi(q) = 0 makes its own output 0. A position whose denominator is 0 (no valid token
yet and an empty initial state) has no defined ratio; its output is 0.

Four forms of the same function:

- :func:`linear_attn_naive`: the masked attention matrix A_ts = [s <= t] phi(q_t) . phi(k_s),
  O(N^2) memory; the ground truth.
- :func:`linear_attn_reference`: the recurrence, one token at a time (:func:`linear_attn_step`).
- :func:`linear_attn_chunked`: the training form. Split the tokens into J blocks of C. With
  (S_j, z_j) the state after the blocks before j, and Q, K, V the rows of block j (features),

      numerator   = Q S_j + tril(Q K^T) V
      denominator = Q z_j + tril(Q K^T) 1
      S_{j+1} = S_j + K^T V,   z_{j+1} = z_j + K^T 1

  Carrying a column of ones beside the values (V1 = [V, 1], state [S, z]) gives numerator and
  denominator from the same products; the block states are an exclusive cumulative sum over
  blocks. O(N C (Dk + Dv) + N Dk Dv) work in batched matrix products, O(N C + (N / C) Dk Dv)
  memory: linear in N. Nothing here can overflow or cancel: no exponential of an input
  (phi(x) = exp(x) only for x < 0), and the denominator is a sum of positive terms.
- :func:`linear_attn_step`: one token on the explicit state (streaming).

Half-precision inputs accumulate in float32 (float64 stays float64); outputs come back in the
values' dtype. Every function returns ``(y, final_state or None)``.

Optional fast path: ``linear_attn_chunked(..., use_kernel=True)`` calls flash-linear-attention's
``chunk_linear_attn`` on CUDA when ``fla`` is importable (never required; the torch path
otherwise).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aaren_bench.ops.chunked import acc_dtype as _acc_dtype
from aaren_bench.ops.chunked import float32_inside as _float32_inside
from aaren_bench.ops.kernels import USED, kernel

__all__ = [
    "LinearAttnState",
    "feature_map",
    "linear_attn_chunked",
    "linear_attn_init_state",
    "linear_attn_naive",
    "linear_attn_reference",
    "linear_attn_step",
]


@dataclass
class LinearAttnState:
    """The history after some prefix, per head.

    S: (B, H, Dk, Dv) sum of phi(k_s) v_s^T
    z: (B, H, Dk) sum of phi(k_s)
    """

    S: Tensor
    z: Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.S, self.z))


def feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0 (x + 1 for x > 0, exp(x) for x <= 0)."""
    return F.elu(x) + 1.0


def linear_attn_init_state(batch: int, heads: int, dk: int, dv: int, device=None, dtype=torch.float32) -> LinearAttnState:
    """The empty history: S = 0, z = 0."""
    dtype = _acc_dtype(dtype)
    return LinearAttnState(
        torch.zeros(batch, heads, dk, dv, device=device, dtype=dtype),
        torch.zeros(batch, heads, dk, device=device, dtype=dtype),
    )


def _check(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"linear attention expects q, k (B, H, N, Dk) and v (B, H, N, Dv) with the same B, H, N; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if mask is not None and mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"mask must be (B, N) = {(q.shape[0], q.shape[2])} with True at valid tokens; got {tuple(mask.shape)}")


def _features(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dtype: torch.dtype):
    """phi(q), phi(k), v in ``dtype``; zeros at padded tokens (inputs cleaned before phi)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if mask is None:
        return feature_map(q), feature_map(k), v
    pad = ~mask.bool()[:, None, :, None]  # (B, 1, N, 1)
    q, k, v = q.masked_fill(pad, 0.0), k.masked_fill(pad, 0.0), v.masked_fill(pad, 0.0)
    return feature_map(q).masked_fill(pad, 0.0), feature_map(k).masked_fill(pad, 0.0), v


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (no valid token yet, or a padded position)."""
    ok = den > 0
    y = num / torch.where(ok, den, torch.ones_like(den))[..., None]
    return torch.where(ok[..., None], y, torch.zeros_like(y))


def _state_or_zeros(state: LinearAttnState | None, B, H, Dk, Dv, device, dtype) -> LinearAttnState:
    if state is None:
        return linear_attn_init_state(B, H, Dk, Dv, device=device, dtype=dtype)
    if state.S.shape != (B, H, Dk, Dv) or state.z.shape != (B, H, Dk):
        raise ValueError(
            f"initial state must be S {(B, H, Dk, Dv)} and z {(B, H, Dk)}; "
            f"got S {tuple(state.S.shape)}, z {tuple(state.z.shape)}"
        )
    return LinearAttnState(state.S.to(dtype), state.z.to(dtype))


# --------------------------------------------------------------------------------------
# Streaming form
# --------------------------------------------------------------------------------------


@_float32_inside
def linear_attn_step(
    q_t: Tensor, k_t: Tensor, v_t: Tensor, state: LinearAttnState, mask_t: Tensor | None = None
) -> tuple[Tensor, LinearAttnState]:
    """One token: q_t, k_t (B, H, Dk), v_t (B, H, Dv) -> y_t (B, H, Dv), the new state.

    mask_t (B,), True where the token is valid; a padded token leaves the state unchanged and
    outputs 0.
    """
    dtype = state.S.dtype
    fq, fk, v = _features(q_t[:, :, None], k_t[:, :, None], v_t[:, :, None], None if mask_t is None else mask_t[:, None], dtype)
    fq, fk, v = fq[:, :, 0], fk[:, :, 0], v[:, :, 0]  # (B, H, Dk), (B, H, Dk), (B, H, Dv)
    S = state.S + fk[..., :, None] * v[..., None, :]
    z = state.z + fk
    num = torch.einsum("bhk,bhkv->bhv", fq, S)
    den = torch.einsum("bhk,bhk->bh", fq, z)
    return _ratio(num, den).to(v_t.dtype), LinearAttnState(S, z)


# --------------------------------------------------------------------------------------
# Readable references
# --------------------------------------------------------------------------------------


@_float32_inside
def linear_attn_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    initial_state: LinearAttnState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, LinearAttnState | None]:
    """The recurrence, token by token: N sequential steps."""
    _check(q, k, v, mask)
    B, H, N, Dk = q.shape
    Dv = v.shape[-1]
    state = _state_or_zeros(initial_state, B, H, Dk, Dv, q.device, _acc_dtype(v.dtype))
    ys = []
    for t in range(N):
        y_t, state = linear_attn_step(q[:, :, t], k[:, :, t], v[:, :, t], state, None if mask is None else mask[:, t])
        ys.append(y_t)
    y = torch.stack(ys, dim=2) if ys else v.new_zeros(B, H, 0, Dv)
    return y, (state if output_final_state else None)


@_float32_inside
def linear_attn_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    initial_state: LinearAttnState | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, LinearAttnState | None]:
    """The masked attention matrix, O(N^2) memory: A = tril(phi(Q) phi(K)^T), y = A V / A 1."""
    _check(q, k, v, mask)
    B, H, N, Dk = q.shape
    Dv = v.shape[-1]
    dtype = _acc_dtype(v.dtype)
    state = _state_or_zeros(initial_state, B, H, Dk, Dv, q.device, dtype)
    fq, fk, vv = _features(q, k, v, mask, dtype)
    A = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, N, N)
    num = A @ vv + fq @ state.S  # (B, H, N, Dv)
    den = A.sum(-1) + torch.einsum("bhnk,bhk->bhn", fq, state.z)  # (B, H, N)
    y = _ratio(num, den).to(v.dtype)
    if not output_final_state:
        return y, None
    return y, LinearAttnState(state.S + fk.transpose(-1, -2) @ vv, state.z + fk.sum(-2))


# --------------------------------------------------------------------------------------
# The chunked form for training
# --------------------------------------------------------------------------------------


@_float32_inside
def linear_attn_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    chunk: int = 64,
    initial_state: LinearAttnState | None = None,
    output_final_state: bool = False,
    use_kernel: bool = False,
) -> tuple[Tensor, LinearAttnState | None]:
    """Blocks of ``chunk`` tokens: products inside each block, a cumulative sum of block states.

    q, k (B, H, N, Dk), v (B, H, N, Dv), mask (B, N) True = valid; ``chunk`` >= 1 (any value
    gives the same result; N need not be a multiple). Returns y (B, H, N, Dv) in v's dtype and
    the state after the last token if asked. Plain autograd; see the module docstring.
    """
    _check(q, k, v, mask)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive block length; got {chunk}")
    B, H, N, Dk = q.shape
    Dv = v.shape[-1]
    dtype = _acc_dtype(v.dtype)
    state = _state_or_zeros(initial_state, B, H, Dk, Dv, q.device, dtype)
    if N == 0:
        return v.new_zeros(B, H, 0, Dv), (state if output_final_state else None)
    fq, fk, vv = _features(q, k, v, mask, dtype)
    v1 = torch.cat([vv, torch.ones_like(vv[..., :1])], dim=-1)  # (B, H, N, Dv + 1): [v, 1]
    S1 = torch.cat([state.S, state.z[..., None]], dim=-1)  # (B, H, Dk, Dv + 1): [S, z]
    if use_kernel and N >= H and _fla_available(q):  # fla refuses N < H (a layout check)
        out, S1_last = _fla_chunk(fq, fk, v1, S1)
    else:
        out, S1_last = _chunked_core(fq, fk, v1, S1, chunk)
    y = _ratio(out[..., :Dv], out[..., Dv]).to(v.dtype)
    if not output_final_state:
        return y, None
    return y, LinearAttnState(S1_last[..., :Dv], S1_last[..., Dv])


def _chunked_core(fq: Tensor, fk: Tensor, v1: Tensor, S1: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """[numerator, denominator] (B, H, N, Dv + 1) and the final [S, z] (B, H, Dk, Dv + 1)."""
    B, H, N, Dk = fq.shape
    C = min(chunk, N)
    J = -(-N // C)
    pad = J * C - N  # zero features in the tail: they add nothing and are cut off below
    fq, fk, v1 = (F.pad(t, (0, 0, 0, pad)).view(B, H, J, C, t.shape[-1]) for t in (fq, fk, v1))
    inside = (fq @ fk.transpose(-1, -2)).tril() @ v1  # (B, H, J, C, Dv + 1)
    kv = fk.transpose(-1, -2) @ v1  # (B, H, J, Dk, Dv + 1): each block's own sum
    before = torch.cumsum(kv, dim=2) - kv  # exclusive: the blocks before j
    states = S1[:, :, None] + before  # (B, H, J, Dk, Dv + 1): the state entering block j
    out = inside + fq @ states
    out = out.view(B, H, J * C, -1)[:, :, :N]
    return out, states[:, :, -1] + kv[:, :, -1]


# --------------------------------------------------------------------------------------
# Optional CUDA kernel (flash-linear-attention), never required
# --------------------------------------------------------------------------------------


def _fla_available(t: Tensor) -> bool:
    return t.is_cuda and kernel("fla") is not None  # the import is tried once per process


def _fla_chunk(fq: Tensor, fk: Tensor, v1: Tensor, S1: Tensor) -> tuple[Tensor, Tensor]:
    """The same [numerator, denominator] through fla's kernel: unnormalised linear attention of
    the features (scale 1) with the ones column carried in the values."""
    chunk_linear_attn = kernel("fla")
    USED.add("fla")
    kw = dict(scale=1.0, initial_state=S1.contiguous(), output_final_state=True, normalize=False)
    if "head_first" in inspect.signature(chunk_linear_attn).parameters:
        kw["head_first"] = False
    o, last = chunk_linear_attn(*(t.transpose(1, 2).contiguous() for t in (fq, fk, v1)), **kw)  # [B, N, H, .]
    return o.transpose(1, 2).to(fq.dtype), last.to(fq.dtype)
