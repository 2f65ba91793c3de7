"""The attention prefix scan: softmax attention of a fixed query over every prefix.

Given scores ``s`` of shape (B, H, N) and values ``v`` of shape (B, H, N, D), every
function here returns ``o`` of shape (B, H, N, D) with

    o_k = sum_{i<=k} exp(s_i) v_i / sum_{i<=k} exp(s_i)

Positions where ``mask`` is False take no part (their score is -inf). A position
with no valid token at or before it has no defined softmax; its output is 0.

Four implementations of the same function, from the most readable to the fastest:

- :func:`scan_reference`: the sequential recurrence of the paper, one token at a time
  (running max ``m``, denominator ``c``, numerator ``a``), started from m = -inf.
- :func:`scan_oracle`: the naive O(N^2) masked softmax; the ground truth.
- :func:`scan_hillis_steele`: the paper's parallel algorithm, a Hillis-Steele scan with
  the associative operator on triples (m, c, a); O(N log N) work.
- :func:`scan`: the fast exact scan used for training (:mod:`aaren_bench.ops.chunked`).
  Blocks of ``chunk`` tokens are handled as small lower-triangular softmax matrices whose
  rows are referenced to each position's own log-sum-exp (every weight <= 1: no overflow,
  no 0/0, for any score magnitude); the blocks are linked by the same scan over one
  summary per block. O(N * chunk * D) flops in batched matrix products, O(N) memory, and
  an exact hand-written backward of the same cost.

:func:`scan_step` advances the explicit state (m, c, a) by one token: the constant-size
streaming form; ``scan(..., initial_state=state)`` continues a whole block from a state
(the outputs are those of one scan over the earlier tokens followed by these). Every
function accumulates half-precision inputs in float32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from aaren_bench.ops.chunked import ChunkedScan

__all__ = [
    "ScanState",
    "init_state",
    "scan",
    "scan_hillis_steele",
    "scan_oracle",
    "scan_reference",
    "scan_step",
]


class ScanState(NamedTuple):
    """State of the recurrence after some prefix.

    m: (B, H) running max of the scores (-inf before any valid token)
    c: (B, H) sum of exp(s_i - m)
    a: (B, H, D) sum of exp(s_i - m) v_i
    """

    m: Tensor
    c: Tensor
    a: Tensor

    def nbytes(self) -> int:
        """Bytes held by the state's tensors (constant: independent of the prefix length)."""
        return sum(t.numel() * t.element_size() for t in self)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(s: Tensor, v: Tensor, mask: Tensor | None) -> None:
    if s.dim() != 3 or v.dim() != 4 or s.shape != v.shape[:3]:
        raise ValueError(
            f"scan expects scores (B, H, N) and values (B, H, N, D) with the same B, H, N; "
            f"got scores {tuple(s.shape)} and values {tuple(v.shape)}"
        )
    if mask is not None and mask.shape != (s.shape[0], s.shape[2]) and mask.shape != s.shape:
        raise ValueError(
            f"mask must be (B, N) or (B, H, N) with True at valid tokens; got {tuple(mask.shape)} "
            f"for scores {tuple(s.shape)}"
        )


def _masked_scores(s: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    s = s.to(dtype)
    if mask is None:
        return s
    if mask.dim() == 2:
        mask = mask[:, None, :]
    return s.masked_fill(~mask.bool(), float("-inf"))


def _safe_ref(m: Tensor) -> Tensor:
    """A reference for exp(s - ref): the running max, or 0 where it is still -inf."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def _check_state(state: ScanState, v: Tensor) -> ScanState:
    """The initial state for values v (B, H, N, D), in the accumulation dtype."""
    B, H, _, D = v.shape
    if state.m.shape != (B, H) or state.c.shape != (B, H) or state.a.shape != (B, H, D):
        raise ValueError(
            f"initial_state must hold m, c (B, H) = {(B, H)} and a (B, H, D) = {(B, H, D)}; got "
            f"m {tuple(state.m.shape)}, c {tuple(state.c.shape)}, a {tuple(state.a.shape)}"
        )
    return ScanState(*(t.to(_acc_dtype(v.dtype)) for t in state))


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0 (then num == 0 too: no valid token yet)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))[..., None]


# --------------------------------------------------------------------------------------
# Streaming form
# --------------------------------------------------------------------------------------


def init_state(batch: int, heads: int, dim: int, device=None, dtype=torch.float32) -> ScanState:
    """The empty prefix: m = -inf, c = 0, a = 0."""
    dtype = _acc_dtype(dtype)
    m = torch.full((batch, heads), float("-inf"), device=device, dtype=dtype)
    c = torch.zeros(batch, heads, device=device, dtype=dtype)
    a = torch.zeros(batch, heads, dim, device=device, dtype=dtype)
    return ScanState(m, c, a)


def scan_step(
    s_t: Tensor, v_t: Tensor, state: ScanState, mask_t: Tensor | None = None
) -> tuple[Tensor, ScanState]:
    """One token of the recurrence: s_t (B, H), v_t (B, H, D) -> o_t (B, H, D), new state.

    mask_t (B,) or (B, H), True where the token is valid; an invalid token leaves the
    state unchanged.
    """
    dtype = state.m.dtype
    s_t = s_t.to(dtype)
    if mask_t is not None:
        if mask_t.dim() == 1:
            mask_t = mask_t[:, None]
        s_t = s_t.masked_fill(~mask_t.bool(), float("-inf"))
    m_new = torch.maximum(state.m, s_t)
    ref = _safe_ref(m_new)
    old_scale = torch.exp(state.m - ref)  # exp(-inf) = 0 for the empty prefix
    new_w = torch.exp(s_t - ref)  # 0 for a masked token
    c = state.c * old_scale + new_w
    a = state.a * old_scale[..., None] + new_w[..., None] * v_t.to(dtype)
    o = _divide(a, c)
    return o.to(v_t.dtype), ScanState(m_new, c, a)


# --------------------------------------------------------------------------------------
# Readable references
# --------------------------------------------------------------------------------------


def scan_reference(
    s: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    return_state: bool = False,
    initial_state: ScanState | None = None,
):
    """The recurrence of the paper, token by token: O(N) sequential steps (from ``initial_state``
    if given, else from the empty prefix)."""
    _check(s, v, mask)
    B, H, N, D = v.shape
    if initial_state is None:
        state = init_state(B, H, D, device=v.device, dtype=v.dtype)
    else:
        state = _check_state(initial_state, v)
    s = _masked_scores(s, mask, state.m.dtype)
    outs = []
    for k in range(N):
        o_k, state = scan_step(s[:, :, k], v[:, :, k], state)
        outs.append(o_k)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, D)
    return (o, state) if return_state else o


def scan_oracle(s: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Naive O(N^2) memory: a causal masked softmax over the scores, then a matrix product."""
    _check(s, v, mask)
    dtype = _acc_dtype(v.dtype)
    N = s.shape[-1]
    s = _masked_scores(s, mask, dtype)
    causal = torch.ones(N, N, dtype=torch.bool, device=s.device).tril()
    logits = s[:, :, None, :].expand(*s.shape[:2], N, N).masked_fill(~causal, float("-inf"))
    ref = _safe_ref(logits.amax(dim=-1, keepdim=True))
    w = torch.exp(logits - ref)  # (B, H, N, N), rows referenced to their own max
    num = w @ v.to(dtype)
    return _divide(num, w.sum(-1)).to(v.dtype)


def _combine(left: ScanState, right: ScanState) -> ScanState:
    """The associative operator: the state of a prefix ``left`` followed by ``right``."""
    m = torch.maximum(left.m, right.m)
    ref = _safe_ref(m)
    wl = torch.exp(left.m - ref)
    wr = torch.exp(right.m - ref)
    return ScanState(m, left.c * wl + right.c * wr, left.a * wl[..., None] + right.a * wr[..., None])


def scan_hillis_steele(s: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """The paper's parallel scan: ceil(log2 N) rounds, each combining every position with
    the one ``2^r`` before it. O(N log N) work, plain torch ops."""
    _check(s, v, mask)
    dtype = _acc_dtype(v.dtype)
    s = _masked_scores(s, mask, dtype)
    leaf_c = torch.where(torch.isneginf(s), torch.zeros_like(s), torch.ones_like(s))
    # leaves (s_i, 1, v_i), states kept along dim 2 (positions)
    st = ScanState(s.clone(), leaf_c, v.to(dtype) * leaf_c[..., None])
    N = s.shape[-1]
    offset = 1
    while offset < N:
        shifted = ScanState(st.m[:, :, :-offset], st.c[:, :, :-offset], st.a[:, :, :-offset])
        tail = ScanState(st.m[:, :, offset:], st.c[:, :, offset:], st.a[:, :, offset:])
        merged = _combine(shifted, tail)
        st = ScanState(
            torch.cat([st.m[:, :, :offset], merged.m], dim=2),
            torch.cat([st.c[:, :, :offset], merged.c], dim=2),
            torch.cat([st.a[:, :, :offset], merged.a], dim=2),
        )
        offset *= 2
    return _divide(st.a, st.c).to(v.dtype)


# --------------------------------------------------------------------------------------
# The fast exact scan
# --------------------------------------------------------------------------------------


def _continue(state: ScanState, s: Tensor, o: Tensor, lam: Tensor) -> Tensor:
    """Outputs of a scan over (s, v) continued after the prefix summarised by ``state``.

    o (B, H, N, D) and lam (B, H, N) are the scan of s alone. With its running max m_k,
    its prefix up to k has softmax denominator exp(m_k + lam_k) and numerator that times
    o_k; the state's are exp(m0) c0 and exp(m0) a0. Both are taken relative to
    ref_k = max(m0, m_k): one of the two factors exp(. - ref_k) is 1, so nothing
    overflows or underflows to 0/0, and a large score never absorbs lam. ref cancels in
    the ratio, so it carries no gradient; lam's gradient is that of m + lam (ChunkedScan).
    """
    m = torch.cummax(s.detach(), dim=-1).values  # (B, H, N)
    m0 = state.m[..., None]  # (B, H, 1)
    ref = _safe_ref(torch.maximum(m0.detach(), m))  # (B, H, N)
    w0 = torch.exp(m0 - ref)  # (B, H, N), 0 for an empty state
    wn = torch.exp((m - ref) + lam)  # (B, H, N), 0 before the first valid token
    num = w0[..., None] * state.a[:, :, None] + wn[..., None] * o  # (B, H, N, D)
    return _divide(num, state.c[..., None] * w0 + wn)


def scan(
    s: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    chunk: int = 32,
    return_state: bool = False,
    initial_state: ScanState | None = None,
):
    """Fast exact prefix scan (method in :mod:`aaren_bench.ops.chunked`).

    s: (B, H, N) scores, v: (B, H, N, D) values, mask: (B, N) or (B, H, N), True = valid;
    ``chunk``: block length (any value >= 1 gives the same result, values below 2 act as
    2; it trades the C x C block products against the depth of the scan over block
    summaries: 16-32 is fastest on CPU at N = 8192, D = 128).
    ``initial_state``: the state after earlier tokens (from ``return_state`` or
    :func:`scan_step`); the outputs then continue that prefix, exactly as one scan over
    all the tokens would (and so does the returned state). Gradients reach it too.
    Returns o (B, H, N, D) in v's dtype, and the final :class:`ScanState` if asked.
    The backward is exact and hand-written; it keeps s, v, o and two numbers per position.
    """
    _check(s, v, mask)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive block length; got {chunk}")
    B, H, N, D = v.shape
    dtype = _acc_dtype(v.dtype)
    if initial_state is not None:
        initial_state = _check_state(initial_state, v)
    if N == 0:
        o = v.new_zeros(B, H, 0, D)
        state = initial_state if initial_state is not None else init_state(B, H, D, v.device, v.dtype)
        return (o, state) if return_state else o
    s = _masked_scores(s, mask, dtype).contiguous()
    o, lam = ChunkedScan.apply(s, v.to(dtype).contiguous(), chunk)  # (B, H, N, D), (B, H, N)
    if return_state:
        # state after the last token: the true running max m, and c, a relative to it
        m = s.amax(-1)  # (B, H), -inf before any valid token
        c = torch.exp(s - _safe_ref(m)[..., None]).sum(-1)  # (B, H), >= 1 or exactly 0
        state = ScanState(m, c, c[..., None] * o[:, :, -1])
    if initial_state is not None:
        o = _continue(initial_state, s, o, lam)
        state = _combine(initial_state, state) if return_state else None
    return (o.to(v.dtype), state) if return_state else o.to(v.dtype)
