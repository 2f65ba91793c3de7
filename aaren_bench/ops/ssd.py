"""Mamba-2's state space duality (SSD, Dao & Gu 2024): a scalar-decay RNN that is masked attention.

Per head, with a decay a_t = exp(dt_t A) in (0, 1] (A < 0 per head, dt_t >= 0 per head and step),
an input x_t (P,) and input/output projections B_t, C_t (S,) shared by the heads of a group:

    h_t = a_t h_{t-1} + dt_t x_t B_t^T                     (state h: P x S per head)
    y_t = h_t C_t
        = sum_{s<=t} L_ts (C_t . B_s) dt_s x_s  +  (prod_{r<=t} a_r) h_0 C_t

    L_ts = prod_{s<r<=t} a_r = exp(sum_{s<r<=t} dt_r A)    (the 1-semiseparable mask)

so y = (L o C B^T) (dt x): causal attention whose scores C_t . B_s are weighted by a decay.
Shapes: x (b, H, N, P), dt (b, H, N), A (H,), B and C (b, G, N, S) with G dividing H (head h
reads group h // (H / G)); the state h (b, H, P, S).

Numerical safety: everything is computed from log a_r = dt_r A <= 0. A decay over a segment,
exp(sum_{s<r<=t} log a_r), is the exponential of a sum formed directly (a masked cumulative
sum, :func:`segsum`), never the difference of two long cumulative sums (which cancels) and
never a product of many a's; every exponent is <= 0 (exp(-inf) = 0 above the diagonal), so
nothing can overflow, in the forward or the backward.

Padding (``mask`` (b, N), True = valid): at a padded step dt, x, B and C are replaced by zeros
before anything is computed (NaN or inf placed there never reaches a valid output or
gradient), so log a = 0 (a = 1) and the input dt x B^T = 0: the state is left exactly as it
was, and the step outputs 0 (C = 0).

Four forms of the same function:

- :func:`ssd_naive`: the masked attention form above, O(N^2) memory; the ground truth.
- :func:`ssd_reference`: the recurrence, one step at a time (:func:`ssd_step`).
- :func:`ssd_chunked`: the training form. Split the steps into J blocks of C; with h_j the
  state entering block j and t, s positions inside the block,

      y_t     = sum_{s<=t} exp(seg_ts) (C_t . B_s) dt_s x_s  +  exp(sum_{r<=t} log a_r) h_j C_t
      h_{j+1} = exp(sum_{r in block} log a_r) h_j  +  sum_s exp(seg_{last,s}) dt_s x_s B_s^T

  (seg = :func:`segsum` of the block's log a, every sum over at most C terms). Inside a block:
  C x C matrix products; between blocks: the recurrence unrolled as one more segment sum, over
  the J block decays, h_j = sum_{i<=j} exp(sum_{i<k<j} log A_k) own_i (a (J+1) x (J+1) matrix
  applied to the stacked states), so the number of operations does not grow with N.
  O(N C (P + S) + J^2 P S) work, O(N C + J^2 + J P S) memory.
- :func:`ssd_step`: one step on the explicit state (streaming).

Mamba-2's short causal convolution lives here too (:func:`causal_conv1d`,
:func:`causal_conv1d_step`): with padding it runs over the valid tokens only (a padded token is
skipped, not read as a zero), so streaming with holes equals the parallel form. And its gated
RMSNorm (:func:`gated_rms_norm`).

Half-precision inputs accumulate in float32 (float64 stays float64); outputs come back in x's
dtype. The SSD functions return ``(y, final_state or None)``.

Optional fast path: ``ssd_chunked(..., use_kernel=True)`` calls mamba-ssm's
``mamba_chunk_scan_combined`` on CUDA when ``mamba_ssm`` is importable (never required).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aaren_bench.ops.chunked import acc_dtype as _acc_dtype
from aaren_bench.ops.chunked import float32_inside as _float32_inside
from aaren_bench.ops.kernels import USED, kernel

__all__ = [
    "causal_conv1d",
    "causal_conv1d_step",
    "gated_rms_norm",
    "segsum",
    "ssd_chunked",
    "ssd_init_state",
    "ssd_naive",
    "ssd_reference",
    "ssd_step",
]


def segsum(log_a: Tensor) -> Tensor:
    """(..., T) -> (..., T, T): out[t, s] = sum_{s<r<=t} log_a[r] for s <= t, -inf above.

    Each entry is summed directly (a cumulative sum over r of the matrix M[r, s] = log_a[r]
    for r > s, else 0), so no entry is a difference of two large partial sums.
    """
    T = log_a.shape[-1]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=log_a.device).tril(-1)
    M = log_a[..., :, None].expand(*log_a.shape, T).masked_fill(~strictly_lower, 0.0)  # M[r, s]
    out = M.cumsum(dim=-2)  # out[t, s] = sum_{r<=t} M[r, s]
    lower = torch.ones(T, T, dtype=torch.bool, device=log_a.device).tril()
    return out.masked_fill(~lower, float("-inf"))


def ssd_init_state(batch: int, heads: int, headdim: int, d_state: int, device=None, dtype=torch.float32) -> Tensor:
    """The empty history: h = 0, (batch, heads, headdim, d_state)."""
    return torch.zeros(batch, heads, headdim, d_state, device=device, dtype=_acc_dtype(dtype))


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, mask: Tensor | None) -> None:
    if x.dim() != 4 or dt.shape != x.shape[:3] or A.shape != (x.shape[1],):
        raise ValueError(
            f"SSD expects x (b, H, N, P), dt (b, H, N), A (H,); got x {tuple(x.shape)}, dt {tuple(dt.shape)}, "
            f"A {tuple(A.shape)}"
        )
    b, H, N, _ = x.shape
    if B.dim() != 4 or B.shape != C.shape or B.shape[0] != b or B.shape[2] != N or H % B.shape[1]:
        raise ValueError(
            f"SSD expects B and C (b, G, N, S) with G dividing H = {H}; got B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if mask is not None and mask.shape != (b, N):
        raise ValueError(f"mask must be (b, N) = {(b, N)} with True at valid steps; got {tuple(mask.shape)}")


def _inputs(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, mask: Tensor | None, dtype: torch.dtype):
    """dt x (b, H, N, P), log a (b, H, N), B and C per head (b, H, N, S), zeros at padded steps."""
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    if mask is not None:
        pad = ~mask.bool()[:, None, :]  # (b, 1, N)
        dt = dt.masked_fill(pad, 0.0)
        x, B, C = (t.masked_fill(pad[..., None], 0.0) for t in (x, B, C))
    rep = x.shape[1] // B.shape[1]
    if rep > 1:
        B, C = B.repeat_interleave(rep, dim=1), C.repeat_interleave(rep, dim=1)
    return x * dt[..., None], dt * A[:, None], B, C


def _initial(state: Tensor | None, x: Tensor, d_state: int, dtype: torch.dtype) -> Tensor | None:
    if state is None:
        return None
    b, H, _, P = x.shape
    if state.shape != (b, H, P, d_state):
        raise ValueError(f"initial state must be (b, H, P, S) = {(b, H, P, d_state)}; got {tuple(state.shape)}")
    return state.to(dtype)


# --------------------------------------------------------------------------------------
# Streaming form
# --------------------------------------------------------------------------------------


@_float32_inside
def ssd_step(
    x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor, mask_t: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One step: x_t (b, H, P), dt_t (b, H), A (H,), B_t, C_t (b, G, S), state (b, H, P, S)
    -> y_t (b, H, P), the new state. mask_t (b,): a padded step leaves the state unchanged."""
    xd, log_a, Bh, Ch = _inputs(
        x_t[:, :, None], dt_t[:, :, None], A, B_t[:, :, None], C_t[:, :, None],
        None if mask_t is None else mask_t[:, None], state.dtype,
    )
    xd, log_a, Bh, Ch = xd[:, :, 0], log_a[:, :, 0], Bh[:, :, 0], Ch[:, :, 0]
    h = torch.exp(log_a)[..., None, None] * state + xd[..., :, None] * Bh[..., None, :]  # (b, H, P, S)
    y = torch.einsum("bhps,bhs->bhp", h, Ch)
    return y.to(x_t.dtype), h


# --------------------------------------------------------------------------------------
# Readable references
# --------------------------------------------------------------------------------------


@_float32_inside
def ssd_reference(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    mask: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The recurrence, step by step: N sequential steps."""
    _check(x, dt, A, B, C, mask)
    b, H, N, P = x.shape
    S = B.shape[-1]
    h = _initial(initial_state, x, S, _acc_dtype(x.dtype))
    if h is None:
        h = ssd_init_state(b, H, P, S, device=x.device, dtype=x.dtype)
    ys = []
    for t in range(N):
        y_t, h = ssd_step(x[:, :, t], dt[:, :, t], A, B[:, :, t], C[:, :, t], h, None if mask is None else mask[:, t])
        ys.append(y_t)
    y = torch.stack(ys, dim=2) if ys else x.new_zeros(b, H, 0, P)
    return y, (h if output_final_state else None)


@_float32_inside
def ssd_naive(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    mask: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Masked attention with the 1-semiseparable mask, O(N^2) memory: y = (L o C B^T) (dt x)."""
    _check(x, dt, A, B, C, mask)
    dtype = _acc_dtype(x.dtype)
    h0 = _initial(initial_state, x, B.shape[-1], dtype)
    xd, log_a, Bh, Ch = _inputs(x, dt, A, B, C, mask, dtype)
    L = torch.exp(segsum(log_a))  # (b, H, N, N): L_ts, 0 above the diagonal
    y = ((Ch @ Bh.transpose(-1, -2)) * L) @ xd  # (b, H, N, P)
    if h0 is not None:
        from_start = torch.exp(torch.cumsum(log_a, dim=-1))  # (b, H, N): prod_{r<=t} a_r
        y = y + from_start[..., None] * torch.einsum("bhns,bhps->bhnp", Ch, h0)
    if not output_final_state:
        return y.to(x.dtype), None
    to_end = torch.exp(segsum(F.pad(log_a, (0, 1)))[..., -1, :-1])  # (b, H, N): prod_{s<r<=N} a_r
    h = torch.einsum("bhn,bhnp,bhns->bhps", to_end, xd, Bh)
    if h0 is not None:
        h = h + torch.exp(log_a.sum(-1))[..., None, None] * h0
    return y.to(x.dtype), h


# --------------------------------------------------------------------------------------
# The chunked form for training
# --------------------------------------------------------------------------------------


@_float32_inside
def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    mask: Tensor | None = None,
    chunk: int = 64,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_kernel: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Blocks of ``chunk`` steps: masked attention inside each block, the recurrence between.

    Shapes as in the module docstring; ``chunk`` >= 1 (any value gives the same result; N need
    not be a multiple). Returns y (b, H, N, P) in x's dtype and the final state (b, H, P, S)
    if asked. Plain autograd.
    """
    _check(x, dt, A, B, C, mask)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive block length; got {chunk}")
    b, H, N, P = x.shape
    S = B.shape[-1]
    dtype = _acc_dtype(x.dtype)
    h = _initial(initial_state, x, S, dtype)
    if N == 0:
        if h is None:
            h = ssd_init_state(b, H, P, S, device=x.device, dtype=x.dtype)
        return x.new_zeros(b, H, 0, P), (h if output_final_state else None)
    if use_kernel and _mamba_available(x):
        return _mamba_chunk(x, dt, A, B, C, mask, chunk, h, output_final_state)

    xd, log_a, Bh, Ch = _inputs(x, dt, A, B, C, mask, dtype)
    Cn = min(chunk, N)
    J = -(-N // Cn)
    pad = J * Cn - N  # the tail: a = 1, no input, C = 0; cut off below
    xd, Bh, Ch = (F.pad(t, (0, 0, 0, pad)).view(b, H, J, Cn, t.shape[-1]) for t in (xd, Bh, Ch))
    log_a = F.pad(log_a, (0, pad)).view(b, H, J, Cn)

    # inside each block: masked attention with the block's own decays
    L = torch.exp(segsum(log_a))  # (b, H, J, C, C)
    y = ((Ch @ Bh.transpose(-1, -2)) * L) @ xd  # (b, H, J, C, P)

    # what each block adds to the state by its end, and how much it decays what came before
    own = torch.einsum("bhjs,bhjsp,bhjsn->bhjpn", L[..., -1, :], xd, Bh)  # (b, H, J, P, S)
    from_start = torch.cumsum(log_a, dim=-1)  # (b, H, J, C): sum_{r<=t} log a_r within the block

    # between blocks: the state entering each block, h_in[z] = sum_{c<=z} decay(c..z) states[c], from
    # one segment sum over the blocks' total log-decays (the same masked cumulative sums as inside a
    # block): a fixed number of operations whatever N, no Python loop over the blocks
    if h is None:
        h = own.new_zeros(b, H, P, S)
    states = torch.cat([h[:, :, None], own], dim=2)  # (b, H, J + 1, P, S): the initial state, then each block's
    between = torch.exp(segsum(F.pad(from_start[..., -1], (1, 0))))  # (b, H, J + 1, J + 1)
    h_all = torch.einsum("bhzc,bhcpn->bhzpn", between, states)  # (b, H, J + 1, P, S)
    h_in, h = h_all[:, :, :-1], h_all[:, :, -1]  # entering each block; after the last
    y = y + torch.exp(from_start)[..., None] * torch.einsum("bhjtn,bhjpn->bhjtp", Ch, h_in)

    y = y.view(b, H, J * Cn, P)[:, :, :N]
    return y.to(x.dtype), (h if output_final_state else None)


def _mamba_available(t: Tensor) -> bool:
    return t.is_cuda and kernel("mamba_ssm") is not None  # the import is tried once per process


def _mamba_chunk(x, dt, A, B, C, mask, chunk, h0, output_final_state):
    """The same function through mamba-ssm's Triton kernel (dt already positive; padded steps
    get dt = 0, i.e. a = 1 and no input, exactly as above)."""
    mamba_chunk_scan_combined = kernel("mamba_ssm")
    USED.add("mamba_ssm")
    dtype = _acc_dtype(x.dtype)
    dt = dt.to(torch.float32)
    if mask is not None:
        pad = ~mask.bool()[:, None, :]
        dt = dt.masked_fill(pad, 0.0)
        x, B, C = (t.masked_fill(pad[..., None], 0.0) for t in (x, B, C))
    y, h = mamba_chunk_scan_combined(
        x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A.to(torch.float32),
        B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), chunk,
        initial_states=None if h0 is None else h0.to(torch.float32).contiguous(), return_final_states=True,
    )
    return y.transpose(1, 2).to(x.dtype), (h.to(dtype) if output_final_state else None)


# --------------------------------------------------------------------------------------
# Mamba-2's short causal convolution, over the valid tokens only
# --------------------------------------------------------------------------------------


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Depthwise causal convolution over the valid tokens: x (b, N, c), weight (c, K), bias (c,).

    y_t = bias + sum_{j<K} weight[:, j] u_{n(t) - (K - 1) + j}, where u is the sequence of the
    valid inputs, preceded by ``initial_state`` (b, c, K - 1) (the last K - 1 valid inputs seen
    before; zeros if None), and n(t) is token t's index in it. Padded positions output 0 and are
    skipped: the valid tokens are packed to the left (a stable sort of the mask), convolved,
    and put back. Returns y (b, N, c) in x's dtype and, if asked, the last K - 1 entries of u
    (b, c, K - 1): the streaming state.
    """
    b, N, c = x.shape
    K = weight.shape[-1]
    if weight.shape != (c, K):
        raise ValueError(f"conv weight must be (channels, kernel) = ({c}, K); got {tuple(weight.shape)}")
    dtype = _acc_dtype(x.dtype)
    u = x.to(dtype)
    if mask is not None:
        valid = mask.bool()
        u = u.masked_fill(~valid[..., None], 0.0)
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices  # valid positions first
        u = u.gather(1, order[..., None].expand(b, N, c))  # packed: valid tokens, then zeros
    hist = initial_state.to(dtype).transpose(1, 2) if initial_state is not None else u.new_zeros(b, K - 1, c)
    if hist.shape != (b, K - 1, c):
        raise ValueError(f"conv state must be (b, c, K - 1) = {(b, c, K - 1)}; got {tuple(initial_state.shape)}")
    seq = torch.cat([hist, u], dim=1)  # (b, K - 1 + N, c)
    y = F.conv1d(seq.transpose(1, 2), weight.to(dtype)[:, None, :], None if bias is None else bias.to(dtype), groups=c)
    y = y.transpose(1, 2)  # (b, N, c): y at packed index n
    if mask is not None:
        rank = (valid.cumsum(1) - 1).clamp(min=0)  # each token's packed index
        y = y.gather(1, rank[..., None].expand(b, N, c)).masked_fill(~valid[..., None], 0.0)
    if not output_final_state:
        return y.to(x.dtype), None
    count = valid.sum(1) if mask is not None else torch.full((b,), N, device=x.device)
    idx = count[:, None] + torch.arange(K - 1, device=x.device)  # (b, K - 1): the last K - 1 of seq
    last = seq.gather(1, idx[..., None].expand(b, K - 1, c)).transpose(1, 2)
    return y.to(x.dtype), last


def causal_conv1d_step(
    x_t: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None, mask_t: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token: x_t (b, c), state (b, c, K - 1) -> y_t (b, c), new state. A padded token
    outputs 0 and leaves the state unchanged."""
    u = x_t.to(state.dtype)
    if mask_t is not None:
        u = u.masked_fill(~mask_t.bool()[:, None], 0.0)
    window = torch.cat([state, u[..., None]], dim=-1)  # (b, c, K)
    y = (window * weight.to(state.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(state.dtype)
    new = window[..., 1:]
    if mask_t is not None:
        keep = mask_t.bool()
        y = y.masked_fill(~keep[:, None], 0.0)
        new = torch.where(keep[:, None, None], new, state)
    return y.to(x_t.dtype), new


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, eps: float = 1e-5, group_size: int | None = None) -> Tensor:
    """Mamba-2's gated RMSNorm (norm after the gate): rmsnorm(y * silu(z)) * weight, the mean
    square taken over groups of ``group_size`` channels (None: all of them)."""
    dtype = _acc_dtype(y.dtype)
    g = y.to(dtype) * F.silu(z.to(dtype))
    shape = g.shape
    if group_size is not None:
        g = g.unflatten(-1, (-1, group_size))
    g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)
    return (g.reshape(shape) * weight.to(dtype)).to(y.dtype)
