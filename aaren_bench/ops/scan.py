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

Non-finite input. A token *takes no part* when it is masked or its score is -inf: its
weight is exactly 0, its value is never read (NaN or inf there changes nothing) and its
gradients are exactly 0. Any other token is *bad* when its score is NaN or +inf or one
of its values is not finite. The outputs at and after a bad token (per batch row and
head) are NaN, and so is the state after it (a NaN initial state spoils every output
of the scan that continues it); nothing before it changes. Every
implementation first cleans the values by selection, never by multiplying with a zero
weight (non-finite values become 0: they belong to tokens whose weight is 0), and computes
on finite values only. The references and the state paths score bad tokens -inf like
masked ones and write NaN over the spoiled tail afterwards; the fast scan scores them NaN,
which its core turns into exactly that tail (:mod:`aaren_bench.ops.chunked` says why
nothing before it changes). So the outputs before the first bad token are the clean
prefix's, bit for bit, and no NaN ever meets a zero weight. Backward: a zero upstream
gradient (of either sign) at a spoiled output passes nothing, so a loss that ignores those
outputs gets exactly the clean prefix's gradients; any other upstream gradient there, down
to the smallest subnormal, is charged, as NaN, to the score and value of the bad tokens of
that row and to nothing else (masked tokens keep gradient 0), so an optimizer step on a NaN
loss is poisoned as visibly as the loss.

All of this happens on the device, on every device, by selection: no host read (on a GPU a
read is a sync and a compiled graph's break), and the same path for clean and bad input.
The references and the scan's state paths clean with :func:`_clean` and spoil with
:class:`_Spoil`; the fast scan without a state folds the same guard into one Function around
the chunked core (:class:`_GuardedScan`), whose cost on clean input is two reads, the copies
the bare scan makes of a layer's transposed inputs, and 18 small kernels (measured in
docs/BENCHMARKS.md, section 4).

Mixed precision. Every function turns autocast off inside and computes in float32
(float64 stays float64) whatever the input dtype or autocast region, as autocast itself
does for softmax and log-sum-exp; o comes back in v's dtype. Call backward after the
autocast region, as torch recommends (the references' autograd backward would otherwise
run its products in half; the fast scan's hand-written backward turns autocast off
itself). Why explicit, not ``torch.amp.custom_fwd``: see
:class:`aaren_bench.ops.chunked.ChunkedScan`.

N = 0 gives an empty output joined to the graphs of s and v, so backward runs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from aaren_bench.ops.chunked import ChunkedScan, autocast_off, scan_core, scan_core_backward

__all__ = [
    "ScanState",
    "init_state",
    "scan",
    "scan_hillis_steele",
    "scan_oracle",
    "scan_reference",
    "scan_step",
]

NAN = float("nan")
NEG_INF = float("-inf")


class ScanState(NamedTuple):
    """State of the recurrence after some prefix.

    m: (B, H) running max of the scores (-inf before any valid token)
    c: (B, H) sum of exp(s_i - m)
    a: (B, H, D) sum of exp(s_i - m) v_i

    After a bad token (see the module docstring) all three are NaN.
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


def _check_state(state: ScanState, v: Tensor) -> None:
    B, H, _, D = v.shape
    if state.m.shape != (B, H) or state.c.shape != (B, H) or state.a.shape != (B, H, D):
        raise ValueError(
            f"initial_state must hold m, c (B, H) = {(B, H)} and a (B, H, D) = {(B, H, D)}; got "
            f"m {tuple(state.m.shape)}, c {tuple(state.c.shape)}, a {tuple(state.a.shape)}"
        )


def _safe_ref(m: Tensor) -> Tensor:
    """A reference for exp(s - ref): the running max, or 0 where it is still -inf."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0 (then num == 0 too: no valid token yet)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))[..., None]


def _empty(s: Tensor, v: Tensor) -> Tensor:
    """The output for N = 0, (B, H, 0, D), joined to the graphs of s and v (backward runs)."""
    return (s[..., None] * v).to(v.dtype)


def _empty_result(s: Tensor, v: Tensor, return_state: bool, initial_state: ScanState | None):
    """What a scan over no tokens returns: no outputs, and the state it started from."""
    o = _empty(s, v)
    if not return_state:
        return o
    B, H, _, D = v.shape
    if initial_state is None:
        return o, init_state(B, H, D, v.device, v.dtype)
    return o, ScanState(*(t.to(_acc_dtype(v.dtype)) for t in initial_state))


# --------------------------------------------------------------------------------------
# Non-finite input: clean first, then spoil the tail (see the module docstring)
# --------------------------------------------------------------------------------------


def _lead(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` over the leading dims of ``like``, viewed to broadcast over the rest."""
    return mask.view(*mask.shape, *([1] * (like.dim() - mask.dim())))


def _scale(v: Tensor) -> Tensor:
    """(D,): 2^-32 in each entry, the weights of a scaled row sum of v (2^-32 is exact)."""
    return v.new_full((v.shape[-1],), 2.0**-32)


def _scaled_sums(v: Tensor) -> Tensor:
    """(..., D) -> (...): each float32 row's sum times 2^-32, in one matrix-vector product that
    reads v in place (its leading dims taken in memory order: a layer's v is a transposed view,
    which matmul would otherwise copy)."""
    if v.is_contiguous():
        return v @ _scale(v)
    order = sorted(range(v.dim() - 1), key=lambda i: -v.stride(i))
    sums = v.permute(*order, v.dim() - 1) @ _scale(v)
    return sums.permute(*sorted(range(len(order)), key=order.__getitem__))


def _finite_rows(v: Tensor) -> Tensor:
    """(..., D) -> (...): whether every value of the row is finite, decided on the device.

    NaN and +-inf survive a sum, so a row is finite exactly when its sum is, provided no sum
    of finite values can overflow: every value is scaled by 2^-32 first, inside one
    matrix-vector product (a read of v, no copy), which keeps a sum of up to 2^24 values of
    float32's range finite (2^-32 is exact; what it sends below the smallest normal number
    stays finite). float64 rows are tested value by value.
    """
    if not v.shape[-1]:
        return torch.ones(v.shape[:-1], dtype=torch.bool, device=v.device)
    if v.dtype == torch.float64:
        return torch.isfinite(v).all(-1)
    return torch.isfinite(_scaled_sums(v))


def _token_total(s: Tensor, v: Tensor) -> Tensor:
    """(B, H, N): a number per token that is finite exactly when its score and every one of its
    values are. float32: s * 2^-32 plus the scaled row sum (:func:`_scaled_sums`; the total
    stays below 2^121, so only NaN or inf in s or v makes it non-finite), one product and one
    add. float64: 0 or NaN, tested value by value."""
    if v.dtype == torch.float64 or not v.shape[-1]:
        return torch.zeros_like(s).masked_fill_(~(torch.isfinite(s) & _finite_rows(v)), NAN)
    if v.is_contiguous() and s.is_contiguous():  # the product and the add in one call
        return torch.addmv(s.view(-1), v.view(-1, v.shape[-1]), _scale(v), beta=2.0**-32).view(s.shape)
    return torch.add(_scaled_sums(v), s, alpha=2.0**-32)


def _mask_scores(s: Tensor, mask: Tensor | None) -> Tensor:
    """s with -inf at the tokens ``mask`` (B, N) or (B, H, N) leaves out."""
    if mask is None:
        return s
    mask = mask.bool()
    return s.masked_fill(~(mask[:, None, :] if mask.dim() == 2 else mask), NEG_INF)


def _out_tokens(s: Tensor, mask: Tensor | None) -> Tensor:
    """(B, H, N): the tokens that take no part, masked or scored -inf."""
    return torch.isneginf(_mask_scores(s, mask))


class _Clean(NamedTuple):
    s: Tensor  # (B, H, N) scores; -inf at every token that takes no part, bad ones included
    v: Tensor  # (B, H, N, D) values, finite everywhere
    start: ScanState | None  # the initial state; the empty one where it was spoiled
    spoiled: Tensor  # (B, H, N) at or after a bad token
    blame: list[tuple[Tensor, Tensor]]  # (culprits, source) pairs for _spoil


def _clean(
    s: Tensor, v: Tensor, mask: Tensor | None, dtype: torch.dtype, start: ScanState | None = None
) -> _Clean:
    """Scores, values and initial state in ``dtype``, with nothing non-finite left to read.

    Out: masked tokens and tokens scored -inf (weight exactly 0). Bad: the other tokens with
    a NaN or +inf score or a non-finite value. Both get score -inf (masked_fill, so their
    score gradient is exactly 0) and every non-finite value becomes 0 (it belongs to an out
    or a bad token, whose value is never read). A spoiled (NaN) ``start`` becomes the empty
    state and spoils every position. Only selections: no 0 * NaN anywhere.
    """
    s_in, v_in = s, v
    s, v = s.to(dtype), v.to(dtype)
    v_finite = _finite_rows(v)  # (B, H, N)
    out = _out_tokens(s, mask)
    bad = ~out & ~(torch.isfinite(s) & v_finite)
    s = s.masked_fill(out | bad, NEG_INF)
    v = torch.where(v_finite[..., None], v, 0.0)
    spoiled = bad.cumsum(-1) > 0
    blame = [(bad, s_in), (bad, v_in)]
    if start is not None:
        given, start = start, ScanState(*(t.to(dtype) for t in start))
        spent = torch.isnan(start.m)  # (B, H): a spoiled state is NaN
        start = ScanState(
            start.m.masked_fill(spent, NEG_INF),
            start.c.masked_fill(spent, 0.0),
            start.a.masked_fill(spent[..., None], 0.0),
        )
        spoiled = spoiled | spent[..., None]
        blame += [(spent, t) for t in given]
    return _Clean(s, v, start, spoiled, blame)


class _Spoil(torch.autograd.Function):
    """``t`` with NaN at its ``spoiled`` rows (a bool over t's leading dims).

    Backward: the upstream gradient at spoiled entries is dropped. Where one of them is
    nonzero in a (batch, head) row, the gradient of each ``sources[j]`` is NaN at that
    row's ``culprits[j]`` (a bool over the source's leading dims) and 0 elsewhere.
    """

    @staticmethod
    def forward(ctx, t: Tensor, spoiled: Tensor, culprits: tuple[Tensor, ...], *sources: Tensor):
        ctx.spoiled, ctx.culprits = spoiled, culprits
        ctx.sources = [(x.shape, x.dtype, x.device) for x in sources]
        # + NaN or + (-0.0) per row: one broadcast add, the cheapest full pass (x + -0.0 is x, bit for bit)
        return t + _lead(torch.full_like(spoiled, -0.0, dtype=t.dtype).masked_fill_(spoiled, NAN), t)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        spoiled = _lead(ctx.spoiled, g)
        # rows with a nonzero entry: |g| sums to 0 only when every entry is 0 (no cancellation)
        flat = g.reshape(*ctx.spoiled.shape, -1).abs()
        nonzero = (flat @ flat.new_ones(flat.shape[-1])) != 0  # over t's leading dims
        hit = (nonzero & ctx.spoiled).reshape(*g.shape[:2], -1).any(-1)  # (B, H)
        grads = []
        for culprit, (shape, dtype, device), need in zip(ctx.culprits, ctx.sources, ctx.needs_input_grad[3:]):
            if not need:
                grads.append(None)
                continue
            charge = culprit & _lead(hit, culprit)
            nan_at = torch.zeros(charge.shape, dtype=dtype, device=device).masked_fill_(charge, NAN)
            grads.append(nan_at.view(*charge.shape, *([1] * (len(shape) - charge.dim()))).expand(shape))
        return (torch.where(spoiled, 0.0, g), None, None, *grads)


def _spoil(t: Tensor, spoiled: Tensor, blame: list[tuple[Tensor, Tensor]]) -> Tensor:
    """NaN over the spoiled rows of t; their gradient charged to ``blame``'s (culprits, source)."""
    return _Spoil.apply(t, spoiled, tuple(c for c, _ in blame), *(x for _, x in blame))


def _finish(o: Tensor, state: ScanState | None, cl: _Clean, dtype: torch.dtype):
    """A parallel form's output (and state): NaN over the spoiled tail, o in ``dtype``."""
    o = _spoil(o, cl.spoiled, cl.blame).to(dtype)
    if state is None:
        return o
    last = cl.spoiled[..., -1]  # (B, H)
    state = ScanState(*(_spoil(t, last, cl.blame) for t in state))
    return o, state


# --------------------------------------------------------------------------------------
# Streaming form
# --------------------------------------------------------------------------------------


def init_state(batch: int, heads: int, dim: int, device=None, dtype=torch.float32) -> ScanState:
    """The empty prefix: m = -inf, c = 0, a = 0."""
    dtype = _acc_dtype(dtype)
    m = torch.full((batch, heads), NEG_INF, device=device, dtype=dtype)
    c = torch.zeros(batch, heads, device=device, dtype=dtype)
    a = torch.zeros(batch, heads, dim, device=device, dtype=dtype)
    return ScanState(m, c, a)


def _advance(s_t: Tensor, v_t: Tensor, state: ScanState) -> tuple[Tensor, ScanState]:
    """The recurrence on a clean token: s_t (B, H) finite or -inf, v_t (B, H, D) finite."""
    m_new = torch.maximum(state.m, s_t)
    ref = _safe_ref(m_new)
    old_scale = torch.exp(state.m - ref)  # exp(-inf) = 0 for the empty prefix
    new_w = torch.exp(s_t - ref)  # 0 for a token that takes no part
    c = state.c * old_scale + new_w
    a = state.a * old_scale[..., None] + new_w[..., None] * v_t
    return _divide(a, c), ScanState(m_new, c, a)


def scan_step(
    s_t: Tensor, v_t: Tensor, state: ScanState, mask_t: Tensor | None = None
) -> tuple[Tensor, ScanState]:
    """One token of the recurrence: s_t (B, H), v_t (B, H, D) -> o_t (B, H, D), new state.

    mask_t (B,) or (B, H), True where the token is valid; an invalid token leaves the
    state unchanged. A bad token, or a spoiled (NaN) state, gives a NaN output and a NaN
    state; the gradient of those is dropped when it is 0 and otherwise charged, as NaN, to
    the bad token or to the spoiled state (so, step by step, to the bad token).
    """
    # the plain step, kept when its output is finite: then nothing was bad, spoiled or
    # unreadable (NaN and inf all reach o, and so its sum), and the careful path below
    # would compute the same numbers with some twenty more small operations. Only
    # elementwise operations (nothing autocast runs in half); on an accelerator, reading
    # the sum is one host sync per token, which a streaming loop makes anyway.
    s = s_t.to(state.m.dtype)
    if mask_t is not None:
        s = s.masked_fill(~(mask_t[:, None] if mask_t.dim() == 1 else mask_t).bool(), NEG_INF)
    o, new = _advance(s, v_t.to(state.m.dtype), state)
    if math.isfinite(o.sum().item()):
        return o.to(v_t.dtype), new
    with autocast_off(v_t):
        mask = None if mask_t is None else mask_t[..., None]  # (B, 1) or (B, H, 1): N = 1
        cl = _clean(s_t[..., None], v_t[..., None, :], mask, state.m.dtype, start=state)
        o, new = _advance(cl.s[..., 0], cl.v[..., 0, :], cl.start)
        spoiled = cl.spoiled[..., 0]  # (B, H)
        o = _spoil(o, spoiled, cl.blame)
        new = ScanState(*(_spoil(t, spoiled, cl.blame) for t in new))
    return o.to(v_t.dtype), new


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
    """The recurrence of the paper, token by token: O(N) sequential steps (from
    ``initial_state`` if given, else from the empty prefix)."""
    _check(s, v, mask)
    B, H, N, D = v.shape
    dtype = _acc_dtype(v.dtype)
    if initial_state is not None:
        _check_state(initial_state, v)
    if N == 0:
        return _empty_result(s, v, return_state, initial_state)
    with autocast_off(v):
        cl = _clean(s, v, mask, dtype, initial_state)
        state = cl.start if cl.start is not None else init_state(B, H, D, v.device, dtype)
        outs = []
        for k in range(N):
            o_k, state = _advance(cl.s[:, :, k], cl.v[:, :, k], state)
            outs.append(o_k)
        return _finish(torch.stack(outs, dim=2), state if return_state else None, cl, v.dtype)


def scan_oracle(s: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Naive O(N^2) memory: a causal masked softmax over the scores, then a matrix product."""
    _check(s, v, mask)
    N = s.shape[-1]
    if N == 0:
        return _empty(s, v)
    with autocast_off(v):
        cl = _clean(s, v, mask, _acc_dtype(v.dtype))
        causal = torch.ones(N, N, dtype=torch.bool, device=s.device).tril()
        logits = cl.s[:, :, None, :].expand(*s.shape[:2], N, N).masked_fill(~causal, NEG_INF)
        ref = _safe_ref(logits.amax(dim=-1, keepdim=True))
        w = torch.exp(logits - ref)  # (B, H, N, N), rows referenced to their own max
        return _finish(_divide(w @ cl.v, w.sum(-1)), None, cl, v.dtype)


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
    N = s.shape[-1]
    if N == 0:
        return _empty(s, v)
    with autocast_off(v):
        cl = _clean(s, v, mask, _acc_dtype(v.dtype))
        leaf_c = torch.where(torch.isneginf(cl.s), torch.zeros_like(cl.s), torch.ones_like(cl.s))
        # leaves (s_i, 1, v_i), states kept along dim 2 (positions)
        st = ScanState(cl.s.clone(), leaf_c, cl.v * leaf_c[..., None])
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
        return _finish(_divide(st.a, st.c), None, cl, v.dtype)


# --------------------------------------------------------------------------------------
# The fast exact scan
# --------------------------------------------------------------------------------------


_BITS = {4: (torch.int32, 0x7FFFFFFF), 8: (torch.int64, 0x7FFFFFFFFFFFFFFF)}  # float32, float64: every bit but the sign


def _drop_spoiled(g: Tensor, spoiled: Tensor) -> tuple[Tensor, Tensor]:
    """The upstream gradient with its ``spoiled`` rows (a bool over its leading dims) set to
    +0.0 and every other bit kept, NaN and -0.0 included (written contiguous: a layer's gradient
    arrives as a transposed view, and this is the copy the bare scan makes), and the (B, H) rows
    with a nonzero (or NaN) entry there.

    Both are ANDs of g's bits with one mask per row, each as cheap as a copy (``torch.where``
    with a per-row condition costs about two on the CPU): all bits or none for the dropped
    copy; every bit but the sign, or none, for |g| over the spoiled rows, whose largest entry
    per (B, H) row is nonzero exactly when one of them is (NaN included). No sum, so nothing
    cancels and nothing underflows: the smallest subnormal charges, -0.0 does not; and the
    reduction runs over whole rows, not one per position (which the CPU does slowly)."""
    bits, magnitude = _BITS[g.element_size()]
    spoiled = spoiled.to(bits)[..., None]  # 1 or 0
    out = torch.empty(g.shape, dtype=bits, device=g.device)  # one buffer: |g| there, then the copy
    if g.shape[-1]:
        hit = torch.bitwise_and(g.view(bits), spoiled * magnitude, out=out).view(g.dtype).amax((-2, -1)) != 0
    else:
        hit = torch.zeros(g.shape[:2], dtype=torch.bool, device=g.device)
    return torch.bitwise_and(g.view(bits), spoiled - 1, out=out).view(g.dtype), hit  # -1: all bits, or 0


class _GuardedScan(torch.autograd.Function):
    """The fast scan of raw input, the guard included: o (B, H, N, D) from s (B, H, N), with
    -inf at the tokens that take no part, and v (B, H, N, D), both in the accumulation dtype.

    The guard of the module docstring, all on the device, for two reads and the copies the
    bare scan makes of a layer's transposed inputs. Forward: one number per token that is
    finite exactly when its score and values are (:func:`_token_total`, one matrix-vector
    product), added to the score times 0, so that a bad token is scored NaN (0 * inf and
    0 * NaN are NaN) and every other score is unchanged; tokens scored -inf keep -inf (their
    values are never read, finite or not); the non-finite values are zeroed elementwise
    (``nan_to_num``, into the contiguous copy). The core
    (:func:`aaren_bench.ops.chunked.scan_core`) turns a NaN score into NaN outputs, running
    max and log-sum at and after it and changes nothing before it, bit for bit: that is the
    spoiled tail, for no pass of its own. Backward: the spoiled positions are those whose
    running max is NaN; the upstream gradient's spoiled rows are dropped and tested by ANDs
    of its bits (:func:`_drop_spoiled`; the copy is the one a layer's transposed gradient
    needs anyway); the core gives the dropped rows weight 0 and delta 0 (``dead``). A bad
    token keeps its NaN score in a hit row, which makes exactly its own column of the block
    weights NaN (``tril_`` removes the entries above the diagonal by selection), so its score
    and value gradients come out NaN and nothing else changes; elsewhere it is scored -inf,
    weighs 0 and gets gradient 0, as out tokens do.
    """

    @staticmethod
    def forward(ctx, s: Tensor, v: Tensor, chunk: int):
        out = torch.isneginf(s)  # masked or scored -inf: their values are never read
        # s + 0 * total: s where the token's score and values are finite (a score -0.0 may
        # become +0.0, which changes no weight), NaN where one is not (0 * inf, 0 * NaN are NaN)
        s = torch.where(out, s, torch.add(s, _token_total(s, v), alpha=0.0)).contiguous()
        # written contiguous: a layer's v is a transposed view, and this is the copy the bare scan makes
        v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0, out=torch.empty(v.shape, dtype=v.dtype, device=v.device))
        # NaN at and after a bad token (autocast is off: see scan). The output is kept for
        # backward as it is returned, NaN rows and all (their delta is dropped there)
        o, m, lam = scan_core(s, v, chunk)
        ctx.save_for_backward(s, v, o, m, lam)
        ctx.chunk = chunk
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        s, v, o, m, lam = ctx.saved_tensors
        spoiled = torch.isnan(m)  # at and after a bad token
        do, hit = _drop_spoiled(g.to(o.dtype), spoiled)
        s = torch.where(hit[..., None], s, torch.nan_to_num(s, nan=NEG_INF, posinf=math.inf, neginf=NEG_INF))
        with autocast_off(v):
            ds, dv = scan_core_backward(s, v, o, m, lam, do, ctx.chunk, dead=spoiled)
        return ds, dv, None


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
    The backward is exact and hand-written; it keeps s, v, o and two numbers per position
    (o is the tensor returned, as for ``torch.exp``: change a clone of it, not o in place;
    torch refuses the in-place change with that advice).
    """
    _check(s, v, mask)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive block length; got {chunk}")
    dtype = _acc_dtype(v.dtype)
    if initial_state is not None:
        _check_state(initial_state, v)
    if v.shape[2] == 0:
        return _empty_result(s, v, return_state, initial_state)
    with autocast_off(v):
        if initial_state is None and not return_state:
            return _GuardedScan.apply(_mask_scores(s.to(dtype), mask), v.to(dtype), chunk).to(v.dtype)
        cl = _clean(s, v, mask, dtype, initial_state)
        o, lam = ChunkedScan.apply(cl.s.contiguous(), cl.v.contiguous(), chunk)  # (B, H, N, D), (B, H, N)
        state = None
        if return_state:
            # after the last token: the true running max m, and c, a relative to it
            m = cl.s.amax(-1)  # (B, H), -inf before any valid token
            c = torch.exp(cl.s - _safe_ref(m)[..., None]).sum(-1)  # (B, H), >= 1 or exactly 0
            state = ScanState(m, c, c[..., None] * o[:, :, -1])
        if cl.start is not None:
            o = _continue(cl.start, cl.s, o, lam)
            state = _combine(cl.start, state) if return_state else None
        return _finish(o, state, cl, v.dtype)
