"""The fast exact prefix scan: chunked, with an exact hand-written backward.

Inputs are already masked (-inf at invalid tokens) and in the accumulation dtype
(float32 or float64). Per position k, with the running max m_k = max_{i<=k} s_i:

    lam_k = log sum_{i<=k} exp(s_i - m_k)         (>= 0; m = lam = -inf for an empty prefix)
    o_k   = sum_{i<=k} p_ki v_i,  p_ki = exp(s_i - m_k - lam_k)

Every weight p_ki is <= 1 (s_i <= m_k, lam_k >= 0): nothing can overflow for any score
magnitude. The log-sum-exp m_k + lam_k is never formed as one number: at |s| ~ 1e4 a
float32 sum would lose lam's precision, so s_i - m_k (exact: both are scores) is always
taken first.

Forward (tokens split into J blocks of C):
1. inside each block, a lower-triangular C x C matrix W_ki = exp(s_i - m_loc_k),
   referenced to the block-local running max, gives the block-local (m, lam);
2. each block becomes one summary token (score m + lam, kept as the pair, and its
   softmax average), and the J summaries go through the same function (recursion);
3. each position merges its block-local prefix with the inherited one:
   o = P @ v_block + beta * o_in, P_ki = p_ki, beta_k = exp(L_in - m_k - lam_k).

Backward, with do = dLoss/do and delta_k = do_k . o_k:

    dv_i = sum_{k>=i} p_ki do_k
    ds_i = v_i . dv_i - sum_{k>=i} p_ki delta_k

Inside a block these are products with P^T; from later blocks the weights factor as
exp(s_i) exp(-m_k - lam_k), so their contribution is one more forward scan (of the
reversed block summaries, with scores -min m over the block), again with every weight
bounded. Only s, v, o and the per-position (m, lam) are kept for backward; nothing of
size N x N, and the C x C block matrix is recomputed.

Why a non-finite input cannot leak backwards in time. The caller
(:func:`aaren_bench.ops.scan.scan`) hands over values that are finite (non-finite ones
zeroed by selection) and scores that are finite, -inf (a token that takes no part) or NaN
(a bad token, in :class:`aaren_bench.ops.scan._GuardedScan`; :class:`ChunkedScan` gets no
NaN). With finite and -inf scores every number formed here is finite or -inf, and -inf
only meets exp (giving an exact 0), max and logaddexp, never inf - inf or 0 * inf. Output
k is then a function of the tokens <= k alone, in every bit: the entries above the diagonal
of W are removed by ``tril_`` (a selection, whatever exp gave there), so a later token only
ever enters as an exact 0 times a finite value, in P @ v and, one level up, in the
summaries' products, which cannot change a nonzero sum; the running max and the
log-sums are prefix operations. A NaN score at token i makes NaN exactly the outputs, m and
lam at and after i: the running max (``cummax``, ``maximum``) and every log-sum carry NaN
forward from i and never back; column i of W is NaN, but above the diagonal ``tril_``
removes it, so rows before i keep every bit; the block summary of i's block is scored NaN
and its value, the softmax average of a row of NaN weights, is taken as 0 (``nan_to_num``
of those weights, which for a clean block only turns the 0/0 of an empty block into 0, as
before), so one level up the same holds: NaN from that summary on, a finite value
everywhere, nothing earlier changed. Backward mirrors this: with a zero upstream gradient
from position p on (a loss that reads only outputs before p), rows k >= p add exact zeros
inside their blocks, and a later block whose [S, sigma] is all zero is taken out of the
suffix scan (score -inf) instead of sharing its normalisation, so the gradients before
p do not depend on the scores after p either, not even in the last bit. Rows marked
``dead`` (a spoiled tail, with NaN o, m and lam) get weight 0 and delta 0 there.

``lam`` is an output too (continuing a scan from an earlier state needs each position's
log-sum-exp). Its gradient is taken with m held fixed: d(m_k + lam_k)/ds_i = p_ki, so an
upstream dlam only changes delta to delta - dlam in the formula for ds.

Mixed precision: :class:`ChunkedScan` turns autocast off in forward and backward and
casts the incoming gradient to the saved dtype (see its docstring).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

NEG_INF = float("-inf")
POS_INF = float("inf")


def autocast_off(t: Tensor):
    """A context with autocast off for t's device type (nothing to do where it is off)."""
    try:
        on = torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type autocast does not know
        on = False
    return torch.autocast(t.device.type, enabled=False) if on else contextlib.nullcontext()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the chunked kernels: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def float32_inside(fn):
    """Run ``fn`` with autocast off: its products read the float32 copies of the inputs and
    accumulate in float32, as the chunked kernels' docstrings say (under autocast they would read
    bfloat16 roundings: a relative error of 4e-3 measured on the chunked forms of linear attention
    and SSD). The output still comes back in the input's dtype. Backward runs after the autocast
    region (as Lightning runs it), so it computes in float32 too."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        with autocast_off(args[0]):
            return fn(*args, **kwargs)

    return inner


def _pad_to(t: Tensor, length: int, dim: int, value: float) -> Tensor:
    """Pad ``t`` along ``dim`` (counted from the end, -1 or -2) to ``length``."""
    extra = length - t.shape[dim]
    if extra == 0:
        return t
    pad = (0, extra) if dim == -1 else (0, 0, 0, extra)
    return torch.nn.functional.pad(t, pad, value=value)


def _replace_inf(t: Tensor, neg: float = NEG_INF, pos: float = POS_INF) -> Tensor:
    """t with -inf -> ``neg`` and +inf -> ``pos`` (NaN kept): one elementwise op."""
    return torch.nan_to_num(t, nan=float("nan"), posinf=pos, neginf=neg)


def _shift_right(t: Tensor, dim: int, fill: float) -> Tensor:
    """Exclusive form of an inclusive prefix along ``dim`` (-1 or -2)."""
    first = torch.full_like(t.narrow(dim, 0, 1), fill)
    return torch.cat([first, t.narrow(dim, 0, t.shape[dim] - 1)], dim=dim)


def _shift_left(t: Tensor, dim: int, fill: float) -> Tensor:
    """Exclusive form of an inclusive suffix along ``dim`` (-1 or -2)."""
    last = torch.full_like(t.narrow(dim, 0, 1), fill)
    return torch.cat([t.narrow(dim, 1, t.shape[dim] - 1), last], dim=dim)


def scan_core(s: Tensor, v: Tensor, chunk: int, lo: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Forward only (no autograd).

    s (B, H, N) masked scores, v (B, H, N, D); ``lo`` (B, H, N), finite, optional: token i's
    score is then s_i + lo_i (the block summaries of the level below, kept as two numbers
    so that a large score never absorbs a small log-sum).
    Returns o (B, H, N, D), m (B, H, N) the running max of s, and lam (B, H, N) with
    log sum_{i<=k} exp(s_i + lo_i) = m_k + lam_k (m = lam = -inf for an empty prefix).
    """
    B, H, N, D = v.shape
    C = min(max(chunk, 2), N)  # a block of 2 or more, so the recursion shrinks
    J = -(-N // C)
    sb = _pad_to(s, J * C, -1, NEG_INF).view(B, H, J, C)
    vb = _pad_to(v, J * C, -2, 0.0).view(B, H, J, C, D)

    # 1. block-local prefixes, each row referenced to its block-local running max
    m_loc = torch.cummax(sb, dim=-1).values  # (B, H, J, C)
    x = sb[..., None, :] - _replace_inf(m_loc, neg=0.0)[..., :, None]  # (B, H, J, C, C)
    if lo is not None:
        x.add_(_pad_to(lo, J * C, -1, 0.0).view(B, H, J, 1, C))
    W = x.exp_().tril_()  # above the diagonal exp may overflow: tril_ discards it
    den_loc = W.sum(-1)  # (B, H, J, C): >= exp(min lo) > 0, or 0 for an empty prefix
    lam_loc = torch.log(den_loc)

    # 2. what each block inherits: the same scan over one summary token per block
    if J > 1:
        # 0/0 (an empty block) and NaN (a block with a NaN score) give weight 0: the summary's
        # value stays finite, and its score (NaN) carries the spoiling up
        last = torch.nan_to_num(W[..., -1:, :] / den_loc[..., -1:, None], nan=0.0)
        tok_v = (last @ vb).squeeze(-2)  # (B, H, J, D): each block's softmax average
        tok_lo = _replace_inf(lam_loc[..., -1], neg=0.0).contiguous()
        o_blk, m_blk, lam_blk = scan_core(m_loc[..., -1].contiguous(), tok_v, chunk, tok_lo)
        m_in = _shift_right(m_blk, -1, NEG_INF)[..., None]  # (B, H, J, 1)
        lam_in = _shift_right(lam_blk, -1, NEG_INF)[..., None]
        o_in = _shift_right(o_blk, -2, 0.0)  # (B, H, J, D)
        m = torch.maximum(m_loc, m_in)
        ref = _replace_inf(m, neg=0.0)
        a_loc = m_loc - ref  # (B, H, J, C) <= 0, exact: both are scores
        a_in = (m_in - ref) + lam_in
        lam = torch.logaddexp(a_loc + lam_loc, a_in)
    else:
        m, lam, a_loc = m_loc, lam_loc, torch.zeros_like(m_loc)

    # 3. merge: P_ki = exp(s_i + lo_i - m_k - lam_k) = W_ki exp(m_loc_k - m_k - lam_k)
    lam_ref = _replace_inf(lam, neg=POS_INF)  # an empty prefix: every weight 0
    P = W.mul_(torch.exp(a_loc - lam_ref)[..., None])
    o = torch.matmul(P, vb)  # (B, H, J, C, D)
    if J > 1:
        o.addcmul_(torch.exp(a_in - lam_ref)[..., None], o_in[..., None, :])
    o = o.view(B, H, J * C, D)
    m, lam = m.reshape(B, H, J * C), lam.reshape(B, H, J * C)
    if J * C != N:
        o, m, lam = o[:, :, :N].contiguous(), m[..., :N].contiguous(), lam[..., :N].contiguous()
    return o, m, lam


def scan_core_backward(
    s: Tensor, v: Tensor, o: Tensor, m: Tensor, lam: Tensor, do: Tensor, chunk: int,
    dlam: Tensor | None = None, dead: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients (ds (B, H, N), dv (B, H, N, D)) of ``scan_core``'s o (and lam, m held
    fixed) for upstream do (and dlam). ``dead`` (B, H, N), optional: rows with do = 0 whose o,
    m and lam may be NaN (a spoiled tail, see :class:`aaren_bench.ops.scan._GuardedScan`); their
    delta is 0 and their weights are 0 (m taken as +inf)."""
    B, H, N, D = v.shape
    C = min(max(chunk, 2), N)
    J = -(-N // C)
    delta = torch.einsum("bhnd,bhnd->bhn", do, o)  # (B, H, N)
    if dlam is not None:
        delta = delta - dlam
    if dead is not None:
        delta = torch.where(dead, 0.0, delta)  # a selection (NaN there); where is half masked_fill's time on the CPU
    sb = _pad_to(s, J * C, -1, NEG_INF).view(B, H, J, C)
    # an empty prefix gets m = +inf, lam = 0: every weight of its row is exp(-inf) = 0; so
    # does a dead row (m and lam NaN)
    m_ref = torch.nan_to_num(_pad_to(m, J * C, -1, NEG_INF), nan=POS_INF, neginf=POS_INF).view(B, H, J, C)
    lam_ref = torch.nan_to_num(_pad_to(lam, J * C, -1, NEG_INF), nan=0.0, neginf=0.0).view(B, H, J, C)
    dob = _pad_to(do, J * C, -2, 0.0).view(B, H, J, C, D)
    deltab = _pad_to(delta, J * C, -1, 0.0).view(B, H, J, C)

    # inside each block: the transposed attention weights
    x = sb[..., None, :] - m_ref[..., :, None]  # (B, H, J, C, C)
    P = x.sub_(lam_ref[..., :, None]).exp_().tril_()  # P_ki = exp(s_i - m_k - lam_k) <= 1
    Pt = P.transpose(-1, -2)
    dv = torch.matmul(Pt, dob)  # (B, H, J, C, D)
    e = torch.matmul(Pt, deltab[..., None]).squeeze(-1)  # (B, H, J, C)

    # from all later blocks: sum_{k later} exp(s_i - m_k - lam_k) [do_k, delta_k]
    if J > 1:
        m_first = m_ref.amin(-1)  # (B, H, J): the block's smallest running max (+inf: empty)
        w = torch.exp((_replace_inf(m_first, pos=0.0)[..., None] - m_ref) - lam_ref)  # <= 1
        S = (w[..., None, :] @ dob).squeeze(-2)  # (B, H, J, D)
        sigma = (w * deltab).sum(-1, keepdim=True)  # (B, H, J, 1)
        # = exp(s_i) sum_{blocks j' > j} exp(-m_first_j') [S, sigma]_j': a scan from the end
        vals = torch.cat([S, sigma], dim=-1)  # (B, H, J, D + 1)
        # a block with all-zero [S, sigma] adds exactly nothing: leave it out of the scan
        # (score -inf) rather than let its score reshape the others' normalisation
        score = (-m_first).masked_fill((vals == 0).all(-1), NEG_INF)
        o_suf, m_suf, lam_suf = scan_core(score.flip(-1).contiguous(), vals.flip(-2).contiguous(), chunk)
        o_x = _shift_left(o_suf.flip(-2), -2, 0.0)  # blocks after j only
        m_x = _shift_left(m_suf.flip(-1), -1, NEG_INF)[..., None]  # (B, H, J, 1)
        lam_x = _shift_left(lam_suf.flip(-1), -1, NEG_INF)[..., None]
        u = torch.exp((sb + m_x) + lam_x)  # (B, H, J, C) <= J: s_i <= m_first of later blocks
        dv.addcmul_(u[..., None], o_x[..., None, :D])
        e = e + u * o_x[..., D:]
    dv = dv.view(B, H, J * C, D)
    e = e.reshape(B, H, J * C)
    if J * C != N:
        dv, e = dv[:, :, :N].contiguous(), e[..., :N]
    ds = torch.einsum("bhnd,bhnd->bhn", v, dv) - e
    return ds, dv


class ChunkedScan(torch.autograd.Function):
    """(s, v) -> (o, lam) with the exact backward above; s, v clean (scores finite or -inf,
    values finite), both float32 or float64.

    lam (B, H, N) is relative to the running max of s (``torch.cummax``), which the caller
    takes without gradient: lam's gradient is that of m + lam.

    Mixed precision. Forward and backward run with autocast off for the inputs' device,
    and backward casts the incoming gradient to the dtype of the saved tensors. Under
    autocast the block products would otherwise run in bf16/fp16, o would come out in
    half precision, and backward would get a half gradient against float32 saved tensors
    (the crash under ``precision=bf16-mixed``). ``torch.amp.custom_fwd(cast_inputs=
    torch.float32)`` with ``custom_bwd`` would also do it, but binds one device type per
    decoration: this Function runs on the CPU and on CUDA, and a CUDA-bound decorator
    leaves a CPU autocast region on (and the reverse). The scan's accuracy argument (every
    weight <= 1, sums in float32) also wants float32 math whatever the region, as autocast
    itself keeps softmax and log-sum-exp in float32; turning autocast off says exactly that,
    for any device, and keeps float64 inputs in float64.
    """

    @staticmethod
    def forward(ctx, s: Tensor, v: Tensor, chunk: int):
        with autocast_off(v):
            o, m, lam = scan_core(s, v, chunk)
        ctx.save_for_backward(s, v, o, m, lam)
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)
        return o, lam

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do: Tensor | None, dlam: Tensor | None):
        s, v, o, m, lam = ctx.saved_tensors
        do = torch.zeros_like(o) if do is None else do.to(o.dtype).contiguous()
        dlam = None if dlam is None else dlam.to(o.dtype)
        with autocast_off(v):
            ds, dv = scan_core_backward(s, v, o, m, lam, do, ctx.chunk, dlam)
        return ds, dv, None
