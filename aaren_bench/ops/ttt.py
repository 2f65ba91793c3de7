"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time)"): an RNN whose state is the
weight of an inner linear model, trained by gradient descent while the sequence is read.

Per head, with the training view k_s, the label view v_s and the test view q_t (P,) (learned
projections of the token, made by the layer), the inner model and its loss are

    f(x; W, b) = x + LN(W x + b)                           (LN over P, learned gamma, beta)
    l(W, b; s) = 1/2 || f(k_s; W, b) - v_s ||^2 = 1/2 || LN(W k_s + b) - (v_s - k_s) ||^2

(``residual=False``: f(x) = LN(W x + b) and the target is v_s; ``ln=None``: no LN;
``inner_bias=False``: b = 0 stays 0). Mini-batch gradient descent over mini-batches of ``b``
valid tokens: inside a mini-batch that started from (W0, b0), every gradient is taken at
(W0, b0), g_s = dl/dZ at Z = W0 k_s + b0, and token t (the i-th of its mini-batch) reads

    G_t = sum_{s<=t in the mini-batch} eta_s g_s k_s^T,    W_t = W0 - c_i G_t,    (b likewise)
    z_t = f(q_t; W_t, b_t)

with eta_s >= 0 the token-dependent inner rate (the layer's eta_base sigma(w . x_s) / P) and
c_i the per-position scale (the authors' code: max(0, 1/i + a learned offset)); the last
token of a mini-batch commits W0 <- W_t. With b = 1, no LN, no residual, no bias and c = 1
this is the delta rule W_t = W_{t-1} - eta_t (W_{t-1} k_t - v_t) k_t^T.

The state is (W0, b0, G_W, G_b, count): the weights at the start of the current mini-batch,
the rate-weighted gradient sums inside it and how many of its tokens were seen (B,); the LN's
gamma, beta are parameters of the layer, not state (they are not trained by the inner loop).

Padding (``mask`` (B, N), True = valid): a padded token's inputs are replaced by zeros, its
rate by 0, and it is not counted: mini-batches are made of valid tokens only (streaming with
holes equals the parallel form), the state is left exactly as it was, and its output is 0.

Three forms of the same function:

- :func:`ttt_linear_reference`: the primal form, one token at a time (:func:`ttt_linear_step`).
- :func:`ttt_linear_chunked`: the dual form (the paper's Sec. 2.5). Valid tokens are placed in
  a grid of mini-batches after the ``count`` tokens the state has already seen; one mini-batch
  (rows Q, K, V (b, P), G the gradients at W0, eta, c) gives all its outputs by matrix products,

      Z_q = Q W0^T + b0 - c o (Q G_W^T + G_b + tril(Q K^T + 1) diag(eta) G)

  and the sums G_W + G^T diag(eta) K, G_b + eta^T G; mini-batches follow one another.
- :func:`ttt_linear_step`: one token on the explicit state (streaming).

The gradient through LN is written out (:func:`ln_l2_grad`, checked against autograd), so the
outer gradients flow through the inner updates by plain autograd. Half-precision inputs
accumulate in float32; outputs come back in v's dtype; every function returns
``(y, final_state or None)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TTTState", "ln_fwd", "ln_l2_grad", "ttt_linear_chunked", "ttt_linear_init_state",
           "ttt_linear_reference", "ttt_linear_step"]

LN_EPS = 1e-6


@dataclass
class TTTState:
    """W: (B, H, P, P) and b: (B, H, P) at the start of the current mini-batch; GW, Gb: the
    rate-weighted gradient sums inside it; count: (B,) its tokens seen so far (0 .. b-1)."""

    W: Tensor
    b: Tensor
    GW: Tensor
    Gb: Tensor
    count: Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.W, self.b, self.GW, self.Gb, self.count))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ttt_linear_init_state(W0: Tensor, b0: Tensor, batch: int, dtype=torch.float32) -> TTTState:
    """The empty history: the inner model's initial weights W0 (H, P, P), b0 (H, P) (parameters
    of the layer, learned by the outer loop), no gradient yet, count 0."""
    dtype = _acc_dtype(dtype)
    W = W0.to(dtype).expand(batch, *W0.shape)
    b = b0.to(dtype).expand(batch, *b0.shape)
    return TTTState(W, b, torch.zeros_like(W), torch.zeros_like(b),
                    torch.zeros(batch, dtype=torch.long, device=W0.device))


def ln_fwd(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = LN_EPS) -> Tensor:
    """LayerNorm over the last axis (biased variance), or x itself when weight is None."""
    if weight is None:
        return x
    mu = x.mean(-1, keepdim=True)
    std = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
    return weight * (x - mu) / std + bias


def ln_l2_grad(x: Tensor, target: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = LN_EPS) -> Tensor:
    """d/dx of 1/2 ||LN(x) - target||^2 (of 1/2 ||x - target||^2 when weight is None)."""
    if weight is None:
        return x - target
    P = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    std = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
    x_hat = (x - mu) / std
    g_hat = (weight * x_hat + bias - target) * weight
    return (P * g_hat - g_hat.sum(-1, keepdim=True) - x_hat * (g_hat * x_hat).sum(-1, keepdim=True)) / (P * std)


def _check(q, k, v, eta, scale, ln, mask, mini_batch) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"TTT-Linear expects q, k, v (B, H, N, P) of one shape; "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if eta.shape != q.shape[:3]:
        raise ValueError(f"the inner rate eta must be (B, H, N) = {tuple(q.shape[:3])}; got {tuple(eta.shape)}")
    if mini_batch < 1 or scale.shape != (mini_batch,):
        raise ValueError(f"token_scale must be (mini_batch,) = ({mini_batch},) with mini_batch >= 1; got {tuple(scale.shape)}")
    if ln is not None and (ln[0].shape != (q.shape[1], q.shape[3]) or ln[1].shape != ln[0].shape):
        raise ValueError(f"ln weight and bias must be (H, P) = {(q.shape[1], q.shape[3])}")
    if mask is not None and mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"mask must be (B, N) = {(q.shape[0], q.shape[2])} with True at valid tokens; got {tuple(mask.shape)}")


def _check_state(state: TTTState, B, H, P, mini_batch) -> None:
    if state.W.shape != (B, H, P, P) or state.b.shape != (B, H, P) or state.GW.shape != state.W.shape \
            or state.Gb.shape != state.b.shape or state.count.shape != (B,):
        raise ValueError(f"the state must be W, GW {(B, H, P, P)}, b, Gb {(B, H, P)}, count {(B,)}; "
                         f"got W {tuple(state.W.shape)}, b {tuple(state.b.shape)}, count {tuple(state.count.shape)}")


class _Inner:
    """The inner model's fixed settings: LN (weight, bias) per head or None, residual, bias."""

    def __init__(self, ln, residual: bool, inner_bias: bool, dtype):
        self.w, self.bias = (None, None) if ln is None else (ln[0].to(dtype), ln[1].to(dtype))
        self.residual, self.inner_bias = residual, inner_bias

    def _ln(self, shape_like: Tensor):
        """weight, bias broadcast to (B, H, ..., P)."""
        if self.w is None:
            return None, None
        view = (self.w.shape[0],) + (1,) * (shape_like.dim() - 3) + (self.w.shape[1],)
        return self.w.view(view), self.bias.view(view)

    def grad(self, Z: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """dl/dZ at Z = W k + b: (B, H, ..., P)."""
        return ln_l2_grad(Z, v - k if self.residual else v, *self._ln(Z))

    def out(self, Zq: Tensor, q: Tensor) -> Tensor:
        o = ln_fwd(Zq, *self._ln(Zq))
        return q + o if self.residual else o


# --------------------------------------------------------------------------------------
# The primal form: streaming and the readable reference
# --------------------------------------------------------------------------------------


def ttt_linear_step(q_t, k_t, v_t, eta_t, token_scale, state: TTTState, mask_t=None, ln=None,
                    residual=True, inner_bias=True):
    """One token: q_t, k_t, v_t (B, H, P), eta_t (B, H), token_scale (b,), ln (weight, bias)
    (H, P) or None -> y_t (B, H, P), the new state. A padded token leaves the state unchanged."""
    dtype = state.W.dtype
    inner = _Inner(ln, residual, inner_bias, dtype)
    q, k, v, eta = (t.to(dtype) for t in (q_t, k_t, v_t, eta_t))
    valid = torch.ones(q.shape[0], dtype=torch.bool, device=q.device) if mask_t is None else mask_t.bool()
    q, k, v = (t.masked_fill(~valid[:, None, None], 0.0) for t in (q, k, v))
    eta = eta.masked_fill(~valid[:, None], 0.0)
    g = inner.grad(torch.einsum("bhij,bhj->bhi", state.W, k) + state.b, k, v) * eta[..., None]  # (B, H, P)
    GW = state.GW + g[..., :, None] * k[..., None, :]
    Gb = state.Gb + g if inner_bias else state.Gb
    c = token_scale.to(dtype)[state.count][:, None]  # (B, 1): this token's place in its mini-batch
    W, b = state.W - c[..., None, None] * GW, state.b - c[..., None] * Gb
    y = inner.out(torch.einsum("bhij,bhj->bhi", W, q) + b, q).masked_fill(~valid[:, None, None], 0.0)
    count = state.count + valid.long()
    full = count == token_scale.shape[0]  # the mini-batch is complete: commit
    keep = lambda new, old: torch.where(full.view(-1, *[1] * (old.dim() - 1)), new, old)  # noqa: E731
    state = TTTState(keep(W, state.W), keep(b, state.b), keep(torch.zeros_like(GW), GW),
                     keep(torch.zeros_like(Gb), Gb), torch.where(full, 0, count))
    return y.to(v_t.dtype), state


def ttt_linear_reference(q, k, v, eta, token_scale, initial_state: TTTState, mask=None, ln=None,
                         output_final_state=False, residual=True, inner_bias=True):
    """The primal form, token by token: N sequential steps. ``initial_state`` is required
    (it holds the inner model's initial weights: :func:`ttt_linear_init_state`)."""
    mb = token_scale.shape[0] if token_scale.dim() == 1 else -1
    _check(q, k, v, eta, token_scale, ln, mask, mb)
    B, H, N, P = q.shape
    _check_state(initial_state, B, H, P, mb)
    dtype = _acc_dtype(v.dtype)
    state = TTTState(*(t.to(dtype) for t in (initial_state.W, initial_state.b, initial_state.GW, initial_state.Gb)),
                     initial_state.count)
    ys = []
    for t in range(N):
        y_t, state = ttt_linear_step(q[:, :, t], k[:, :, t], v[:, :, t], eta[:, :, t], token_scale, state,
                                     None if mask is None else mask[:, t], ln, residual, inner_bias)
        ys.append(y_t)
    y = torch.stack(ys, dim=2) if ys else v.new_zeros(B, H, 0, P)
    return y, (state if output_final_state else None)


# --------------------------------------------------------------------------------------
# The dual form for training
# --------------------------------------------------------------------------------------


def _to_grid(x: Tensor, slot: Tensor, L: int) -> Tensor:
    """x (B, H, N, ...) -> (B, H, L, ...): token n at grid slot slot[b, n] (padded tokens go to
    an extra slot L, dropped)."""
    B, H, N = x.shape[:3]
    idx = slot.view(B, 1, N, *[1] * (x.dim() - 3)).expand_as(x)
    grid = x.new_zeros(B, H, L + 1, *x.shape[3:]).scatter(2, idx, x)
    return grid[:, :, :L]


def ttt_linear_chunked(q, k, v, eta, token_scale, initial_state: TTTState, mask=None, ln=None,
                       output_final_state=False, residual=True, inner_bias=True):
    """The dual form: one mini-batch of ``b = len(token_scale)`` valid tokens at a time, each
    in matrix products. Shapes as :func:`ttt_linear_step`, with N tokens; ``initial_state``
    required. Returns y (B, H, N, P) in v's dtype and the final state if asked."""
    mb = token_scale.shape[0] if token_scale.dim() == 1 else -1
    _check(q, k, v, eta, token_scale, ln, mask, mb)
    B, H, N, P = q.shape
    _check_state(initial_state, B, H, P, mb)
    dtype = _acc_dtype(v.dtype)
    if N == 0:
        state = TTTState(*(t.to(dtype) for t in (initial_state.W, initial_state.b, initial_state.GW,
                                                  initial_state.Gb)), initial_state.count)
        return v.new_zeros(B, H, 0, P), (state if output_final_state else None)
    inner, out_dtype = _Inner(ln, residual, inner_bias, dtype), v.dtype
    q, k, v, eta = (t.to(dtype) for t in (q, k, v, eta))
    valid = torch.ones(B, N, dtype=torch.bool, device=q.device) if mask is None else mask.bool()
    q, k, v = (t.masked_fill(~valid[:, None, :, None], 0.0) for t in (q, k, v))
    eta = eta.masked_fill(~valid[:, None, :], 0.0)
    # each valid token's slot in the grid of mini-batches, after the tokens the state has seen
    L = -(-(N + mb - 1) // mb) * mb  # enough for any count (< mb) without reading it on the host
    slot = initial_state.count[:, None] + valid.long().cumsum(1) - 1  # (B, N)
    slot = torch.where(valid, slot, L)
    Q, K, V, E = (_to_grid(t, slot, L) for t in (q, k, v, eta))
    seen = initial_state.count + valid.long().sum(1)  # (B,): tokens seen by the end
    W, b = initial_state.W.to(dtype), initial_state.b.to(dtype)
    GW, Gb = initial_state.GW.to(dtype), initial_state.Gb.to(dtype)
    c = token_scale.to(dtype)
    outs = []
    blocks = zip(*(t.view(B, H, L // mb, mb, *t.shape[3:]).unbind(2) for t in (Q, K, V, E)))
    for j, (Qj, Kj, Vj, Ej) in enumerate(blocks):
        Zq, GW, Gb = _mini_batch(Qj, Kj, Vj, Ej, c, W, b, GW, Gb, inner)
        outs.append(inner.out(Zq, Qj))
        full = ((j + 1) * mb <= seen).view(B, 1, 1)  # this row's mini-batch j is complete: commit
        W = torch.where(full[..., None], W - c[-1] * GW, W)
        b = torch.where(full, b - c[-1] * Gb, b)
        GW, Gb = torch.where(full[..., None], 0.0, GW), torch.where(full, 0.0, Gb)
    out = torch.cat(outs, 2).gather(2, slot.clamp(max=L - 1)[:, None, :, None].expand(B, H, N, P))
    y = out.masked_fill(~valid[:, None, :, None], 0.0).to(out_dtype)
    if not output_final_state:
        return y, None
    return y, TTTState(W, b, GW, Gb, seen % mb)


def _mini_batch(Q, K, V, E, c, W, b, GW, Gb, inner: _Inner):
    """One mini-batch in the dual form: Q, K, V (B, H, mb, P), E (B, H, mb) rates (0 at empty
    slots), c (mb,); W (B, H, P, P), b (B, H, P) at its start, GW, Gb the sums carried into it.
    Returns Z_q = W_t q_t + b_t for every slot, and the sums at its end."""
    G = inner.grad(K @ W.transpose(-1, -2) + b[..., None, :], K, V) * E[..., None]  # (B, H, mb, P): eta_s g_s
    A = (Q @ K.transpose(-1, -2) + float(inner.inner_bias)).tril()  # (B, H, mb, mb): q_t . k_s + 1, s <= t
    carried = Q @ GW.transpose(-1, -2) + Gb[..., None, :]  # (B, H, mb, P)
    Zq = Q @ W.transpose(-1, -2) + b[..., None, :] - c[:, None] * (carried + A @ G)
    GW = GW + G.transpose(-1, -2) @ K
    Gb = Gb + G.sum(-2) if inner.inner_bias else Gb
    return Zq, GW, Gb
