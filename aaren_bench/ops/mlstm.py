"""xLSTM's mLSTM cell (Beck et al. 2024): a matrix-memory LSTM with exponential gating.

Per head, with queries q_t, keys k_t (Dk,), values v_t (Dv,) and two scalar gate
pre-activations per head and step (i~_t input, f~_t forget):

    i_t = exp(i~_t),   f_t = sigmoid(f~_t)   (``forget="sigmoid"``, the authors' code)
                       f_t = exp(f~_t)       (``forget="exp"``, the paper's other choice)
    C_t = f_t C_{t-1} + i_t k_t v_t^T         (Dk x Dv; the paper writes v k^T and reads C q)
    n_t = f_t n_{t-1} + i_t k_t               (Dk, the normaliser)
    h_t = C_t^T q_t / max(|n_t . q_t|, 1)

(the 1 / sqrt(Dk) of the keys and the output gate sigma(W_o x) belong to the layer,
:class:`aaren_bench.nn.matrix.MLSTMMixer`).

The max-stabiliser. exp(i~) overflows float32 at i~ > 88, and a product of forget gates
underflows, so nothing here stores C_t, n_t themselves. The state is (C~, n~, m) with

    m_t = max(log f_t + m_{t-1}, i~_t),   C~_t = exp(-m_t) C_t,   n~_t = exp(-m_t) n_t
    C~_t = exp(log f_t + m_{t-1} - m_t) C~_{t-1} + exp(i~_t - m_t) k_t v_t^T      (exponents <= 0)
    h_t  = C~_t^T q_t / (max(|n~_t . q_t|, exp(-m_t)) + eps)

(read without forming exp(-m_t) when m_t < 0, see :func:`_readout`), which is h_t above (up to eps, 1e-6 as in the authors' code) for every m. The empty history
is C~ = 0, n~ = 0, m = 0 (the authors' recurrent step). Every form below computes this same
m_t (the recurrence's, not a per-form choice), so they agree to rounding even with eps.
``normalize=False`` reads h_t = C_t^T q_t = exp(m_t) C~_t^T q_t (no normaliser; it can
overflow for large m and is there for the identity with linear attention).

Padding (``mask`` (B, N), True = valid): the inputs of a padded token are replaced by zeros
(NaN or inf there reach nothing), then log f = 0 and i~ = -inf: m, C~, n~ stay exactly as they
were; its output is 0 (q = 0).

Three forms of the same function:

- :func:`mlstm_reference`: the recurrence, one token at a time (:func:`mlstm_step`).
- :func:`mlstm_chunked`: the training form. Blocks of C tokens; inside block j, with
  seg[t, s] = sum_{s<r<=t} log f_r (:func:`aaren_bench.ops.ssd.segsum`, summed directly),
  b_t = sum_{r<=t} log f_r and the state (C~_j, n~_j, m_j) entering the block,

      logD[t, s] = seg[t, s] + i~_s                         (s <= t; -inf above)
      m_t        = max(m_j + b_t, max_s logD[t, s])          (= the recurrence's m_t)
      numerator  = sum_s exp(logD[t, s] - m_t) (q_t . k_s) v_s + exp(m_j + b_t - m_t) C~_j^T q_t
      n~_t . q_t = sum_s exp(logD[t, s] - m_t) (q_t . k_s)   + exp(m_j + b_t - m_t) n~_j . q_t

  and the state leaving it is the same sums at the block's last t. Every exponent is <= 0
  by the max, in the forward and the backward: nothing overflows at any length (checked at
  N = 16384 with input-gate pre-activations far beyond 88). C x C products inside a block,
  J steps of the recurrence on (C~, n~, m) between blocks: linear in N.
- :func:`mlstm_step`: one token on the explicit state (streaming).

Half-precision inputs accumulate in float32 (float64 stays float64); outputs come back in v's
dtype. Every function returns ``(y, final_state or None)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aaren_bench.ops.ssd import segsum

__all__ = ["MLSTMState", "mlstm_chunked", "mlstm_init_state", "mlstm_reference", "mlstm_step"]

EPS = 1e-6
FORGET = ("sigmoid", "exp")


@dataclass
class MLSTMState:
    """The history after some prefix, per head, stabilised by exp(-m).

    C: (B, H, Dk, Dv) exp(-m) sum of gated k v^T;  n: (B, H, Dk) exp(-m) sum of gated k;
    m: (B, H) the log-space stabiliser.
    """

    C: Tensor
    n: Tensor
    m: Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.C, self.n, self.m))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def mlstm_init_state(batch: int, heads: int, dk: int, dv: int, device=None, dtype=torch.float32) -> MLSTMState:
    """The empty history: C~ = 0, n~ = 0, m = 0."""
    dtype = _acc_dtype(dtype)
    z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
    return MLSTMState(z(batch, heads, dk, dv), z(batch, heads, dk), z(batch, heads))


def _check(q, k, v, i_pre, f_pre, mask, forget) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"mLSTM expects q, k (B, H, N, Dk) and v (B, H, N, Dv) with the same B, H, N; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if i_pre.shape != q.shape[:3] or f_pre.shape != q.shape[:3]:
        raise ValueError(f"gate pre-activations must be (B, H, N) = {tuple(q.shape[:3])}; "
                         f"got {tuple(i_pre.shape)} and {tuple(f_pre.shape)}")
    if mask is not None and mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"mask must be (B, N) = {(q.shape[0], q.shape[2])} with True at valid tokens; got {tuple(mask.shape)}")
    if forget not in FORGET:
        raise ValueError(f"forget must be one of {FORGET}; got {forget!r}")


def _inputs(q, k, v, i_pre, f_pre, mask, forget, dtype):
    """q, k, v, log f, i~ in ``dtype``; at padded tokens q = k = v = 0, log f = 0, i~ = -inf."""
    q, k, v, i_pre, f_pre = (t.to(dtype) for t in (q, k, v, i_pre, f_pre))
    if mask is not None:
        valid = mask.bool()[:, None, :]  # (B, 1, N)
        q, k, v = (t.masked_fill(~valid[..., None], 0.0) for t in (q, k, v))
        i_pre, f_pre = i_pre.masked_fill(~valid, 0.0), f_pre.masked_fill(~valid, 0.0)
    log_f = F.logsigmoid(f_pre) if forget == "sigmoid" else f_pre
    if mask is not None:
        log_f = log_f.masked_fill(~valid, 0.0)
        i_pre = i_pre.masked_fill(~valid, float("-inf"))
    return q, k, v, i_pre, log_f


def _state_or_empty(state, B, H, Dk, Dv, device, dtype) -> MLSTMState:
    if state is None:
        return mlstm_init_state(B, H, Dk, Dv, device=device, dtype=dtype)
    if state.C.shape != (B, H, Dk, Dv) or state.n.shape != (B, H, Dk) or state.m.shape != (B, H):
        raise ValueError(
            f"initial state must be C {(B, H, Dk, Dv)}, n {(B, H, Dk)}, m {(B, H)}; "
            f"got C {tuple(state.C.shape)}, n {tuple(state.n.shape)}, m {tuple(state.m.shape)}"
        )
    return MLSTMState(state.C.to(dtype), state.n.to(dtype), state.m.to(dtype))


def _readout(num: Tensor, qn: Tensor, m: Tensor, normalize: bool, eps: float) -> Tensor:
    """h = num / (max(|n~ . q|, exp(-m)) + eps), or exp(m) num without the normaliser.

    exp(-m) itself overflows when every gate has been closed for long (m < -88 in float32), so
    with s = exp(min(m, 0)) and r = exp(-max(m, 0)) (both in (0, 1], exp(-m) = r / s) this is
    num s / (max(|n~ . q| s, r) + eps s): the same number, no exponent above 0.
    """
    if not normalize:
        return num * torch.exp(m)[..., None]
    s, r = torch.exp(m.clamp(max=0.0)), torch.exp(-m.clamp(min=0.0))
    return num * s[..., None] / (torch.maximum(qn.abs() * s, r) + eps * s)[..., None]


# --------------------------------------------------------------------------------------
# Streaming form and the readable reference
# --------------------------------------------------------------------------------------


def mlstm_step(q_t, k_t, v_t, i_t, f_t, state: MLSTMState, mask_t=None, forget="sigmoid", normalize=True, eps=EPS):
    """One token: q_t, k_t (B, H, Dk), v_t (B, H, Dv), gate pre-activations i_t, f_t (B, H)
    -> y_t (B, H, Dv), the new state. mask_t (B,): a padded token leaves the state unchanged."""
    q, k, v, i_pre, log_f = _inputs(
        q_t[:, :, None], k_t[:, :, None], v_t[:, :, None], i_t[:, :, None], f_t[:, :, None],
        None if mask_t is None else mask_t[:, None], forget, state.C.dtype,
    )
    q, k, v, i_pre, log_f = q[:, :, 0], k[:, :, 0], v[:, :, 0], i_pre[:, :, 0], log_f[:, :, 0]
    m = torch.maximum(log_f + state.m, i_pre)  # (B, H)
    fa, ia = torch.exp(log_f + state.m - m), torch.exp(i_pre - m)  # both <= 1
    C = fa[..., None, None] * state.C + ia[..., None, None] * k[..., :, None] * v[..., None, :]
    n = fa[..., None] * state.n + ia[..., None] * k
    num = torch.einsum("bhk,bhkv->bhv", q, C)
    y = _readout(num, (q * n).sum(-1), m, normalize, eps)
    return y.to(v_t.dtype), MLSTMState(C, n, m)


def mlstm_reference(q, k, v, i_pre, f_pre, mask=None, initial_state=None, output_final_state=False,
                    forget="sigmoid", normalize=True, eps=EPS):
    """The recurrence, token by token: N sequential steps."""
    _check(q, k, v, i_pre, f_pre, mask, forget)
    B, H, N, Dk = q.shape
    Dv = v.shape[-1]
    state = _state_or_empty(initial_state, B, H, Dk, Dv, q.device, _acc_dtype(v.dtype))
    ys = []
    for t in range(N):
        y_t, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i_pre[:, :, t], f_pre[:, :, t], state,
                                None if mask is None else mask[:, t], forget, normalize, eps)
        ys.append(y_t)
    y = torch.stack(ys, dim=2) if ys else v.new_zeros(B, H, 0, Dv)
    return y, (state if output_final_state else None)


# --------------------------------------------------------------------------------------
# The chunked form for training
# --------------------------------------------------------------------------------------


def mlstm_chunked(q, k, v, i_pre, f_pre, mask=None, chunk=64, initial_state=None, output_final_state=False,
                  forget="sigmoid", normalize=True, eps=EPS):
    """Blocks of ``chunk`` tokens: stabilised gated attention inside, the recurrence between.

    q, k (B, H, N, Dk), v (B, H, N, Dv), i_pre, f_pre (B, H, N), mask (B, N) True = valid;
    ``chunk`` >= 1 (any value gives the same result). Returns y (B, H, N, Dv) in v's dtype
    and the state after the last token if asked. Plain autograd; see the module docstring.
    """
    _check(q, k, v, i_pre, f_pre, mask, forget)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive block length; got {chunk}")
    B, H, N, Dk = q.shape
    Dv, out_dtype = v.shape[-1], v.dtype
    dtype = _acc_dtype(v.dtype)
    state = _state_or_empty(initial_state, B, H, Dk, Dv, q.device, dtype)
    if N == 0:
        return v.new_zeros(B, H, 0, Dv), (state if output_final_state else None)
    q, k, v, i_pre, log_f = _inputs(q, k, v, i_pre, f_pre, mask, forget, dtype)
    C = min(chunk, N)
    J = -(-N // C)
    pad = J * C - N  # the tail: f = 1, i = 0, no input; cut off below
    q, k, v = (F.pad(t, (0, 0, 0, pad)).view(B, H, J, C, t.shape[-1]) for t in (q, k, v))
    log_f = F.pad(log_f, (0, pad)).view(B, H, J, C)
    i_pre = F.pad(i_pre, (0, pad), value=float("-inf")).view(B, H, J, C)

    log_D = segsum(log_f) + i_pre[..., None, :]  # (B, H, J, C, C): [t, s], -inf above the diagonal
    b = torch.cumsum(log_f, dim=-1)  # (B, H, J, C): sum_{r<=t} log f_r inside the block
    m, m_in, C_in, n_in = _between_blocks(log_D, b, k, v, state)
    from_in = torch.exp(m_in[..., None] + b - m)  # (B, H, J, C): decay of the entering state, <= 1
    S = (q @ k.transpose(-1, -2)) * torch.exp(log_D - m[..., None])  # (B, H, J, C, C)
    num = S @ v + from_in[..., None] * (q @ C_in)  # (B, H, J, C, Dv)
    qn = S.sum(-1) + from_in * torch.einsum("bhjtk,bhjk->bhjt", q, n_in)
    y = _readout(num, qn, m, normalize, eps).reshape(B, H, J * C, Dv)[:, :, :N]
    if not output_final_state:
        return y.to(out_dtype), None
    return y.to(out_dtype), _block_end(log_D[:, :, -1], b[:, :, -1], k[:, :, -1], v[:, :, -1], C_in[:, :, -1],
                                     n_in[:, :, -1], m_in[:, :, -1])


def _block_end(log_D, b, k, v, C_in, n_in, m_in) -> MLSTMState:
    """The state leaving one block from the state entering it: log_D (B, H, C, C), b (B, H, C),
    k (B, H, C, Dk), v (B, H, C, Dv), C_in (B, H, Dk, Dv), n_in (B, H, Dk), m_in (B, H)."""
    m_out = torch.maximum(m_in + b[..., -1], log_D[..., -1, :].amax(-1))  # (B, H)
    decay = torch.exp(m_in + b[..., -1] - m_out)  # (B, H), <= 1
    w = torch.exp(log_D[..., -1, :] - m_out[..., None])  # (B, H, C), <= 1
    C_out = decay[..., None, None] * C_in + torch.einsum("bhs,bhsk,bhsv->bhkv", w, k, v)
    n_out = decay[..., None] * n_in + torch.einsum("bhs,bhsk->bhk", w, k)
    return MLSTMState(C_out, n_out, m_out)


def _between_blocks(log_D, b, k, v, state: MLSTMState):
    """The recurrence over blocks: m at every token (B, H, J, C) and the states entering each
    block, C~ (B, H, J, Dk, Dv), n~ (B, H, J, Dk), m (B, H, J)."""
    row_max = log_D.amax(-1)  # (B, H, J, C): -inf where no valid token yet in the block
    ms, C_in, n_in, m_in = [], [], [], []
    # unbind once: indexing [:, :, j] in the loop would give each block a full-size gradient buffer
    blocks = zip(*(t.unbind(2) for t in (log_D, b, k, v, row_max)))
    for log_D_j, b_j, k_j, v_j, row_max_j in blocks:
        C_in.append(state.C), n_in.append(state.n), m_in.append(state.m)
        ms.append(torch.maximum(state.m[..., None] + b_j, row_max_j))  # (B, H, C)
        state = _block_end(log_D_j, b_j, k_j, v_j, state.C, state.n, state.m)
    return torch.stack(ms, 2), torch.stack(m_in, 2), torch.stack(C_in, 2), torch.stack(n_in, 2)
