"""The prefix scan under autocast (mixed precision), and a backbone trained under it.

Every scan implementation turns autocast off inside and computes in float32, so:
- float32 inputs inside an autocast region give exactly the float32 result (outputs and
  gradients), whatever the region's dtype;
- half-precision inputs give exactly the float32 result on the same (rounded) inputs,
  rounded once to the input dtype at the end (the output, and each input gradient);
- backward runs after the region, as torch recommends and Lightning does; the fast scan's
  hand-written backward turns autocast off itself, so it is exact even when called inside
  the region (the references' autograd backward would then run its products in half).
"""
from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from omegaconf import OmegaConf

from aaren_bench.ops import (
    init_state,
    scan,
    scan_hillis_steele,
    scan_oracle,
    scan_reference,
    scan_step,
)

HALF = {"bf16": torch.bfloat16, "f16": torch.float16}


def step_chain(s, v, mask=None):
    B, H, N, D = v.shape
    state = init_state(B, H, D, device=v.device, dtype=v.dtype)
    outs = []
    for k in range(N):
        o_k, state = scan_step(s[:, :, k], v[:, :, k], state, None if mask is None else mask[:, k])
        outs.append(o_k)
    return torch.stack(outs, dim=2)


IMPLS = {
    "fast": partial(scan, chunk=8),
    "reference": scan_reference,
    "oracle": scan_oracle,
    "hillis-steele": scan_hillis_steele,
    "step": step_chain,
}


def make_inputs(device, B=2, H=3, N=45, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, N, generator=g) * 2
    v = torch.randn(B, H, N, D, generator=g)
    mask = torch.rand(B, N, generator=g) > 0.2
    mask[0, :4] = False
    # an upstream gradient that half precision holds exactly, so both runs see the same one
    w = torch.randn(B, H, N, D, generator=g).to(torch.bfloat16).to(torch.float16).float()
    return s.to(device), v.to(device), mask.to(device), w.to(device)


def grads(fn, s, v, mask, w, autocast=None, backward_inside=False):
    """Output and input gradients of sum(o * w), the forward (and maybe backward) under autocast."""
    s = s.detach().clone().requires_grad_()
    v = v.detach().clone().requires_grad_()
    region = torch.autocast(**autocast) if autocast else torch.autocast(s.device.type, enabled=False)
    with region:
        o = fn(s, v, mask)
        loss = (o.float() * w).sum()
        if backward_inside:
            ds, dv = torch.autograd.grad(loss, (s, v))
    if not backward_inside:
        ds, dv = torch.autograd.grad(loss, (s, v))
    return o.detach(), ds, dv


def check_autocast(impl, device, amp_dtype, in_dtype, backward_inside, exact):
    s, v, mask, w = make_inputs(device)
    s_in, v_in = s.to(in_dtype), v.to(in_dtype)
    amp = dict(device_type=device, dtype=amp_dtype)
    o, ds, dv = grads(IMPLS[impl], s_in, v_in, mask, w, amp, backward_inside)
    assert o.dtype == ds.dtype == dv.dtype == in_dtype
    assert all(torch.isfinite(t.float()).all() for t in (o, ds, dv))
    # the float32 computation on the same inputs, rounded once to the input dtype
    o32, ds32, dv32 = grads(IMPLS[impl], s_in.float(), v_in.float(), mask, w)
    ulp = torch.finfo(in_dtype).eps
    tol = dict(rtol=0.0, atol=0.0) if exact else dict(rtol=4 * ulp, atol=4 * ulp)
    for got, want in [(o, o32), (ds, ds32), (dv, dv32)]:
        torch.testing.assert_close(got, want.to(in_dtype), **tol)
    if in_dtype != torch.float32:
        # against float32 inputs that were never rounded: rounding the inputs moves every
        # score and value by half an ulp, and o and dv are smooth averages of them (and of
        # w), so they move by about an ulp of their peak; rounding the result adds half an
        # ulp. Allowed: 4 ulps of the peak (measured: under 1)
        o_ref, _, dv_ref = grads(IMPLS[impl], s, v, mask, w)
        for got, want in [(o, o_ref), (dv, dv_ref)]:
            torch.testing.assert_close(got.float(), want, atol=4 * ulp * want.abs().max().item(), rtol=0.0)


# (implementation, backward inside the autocast region)
CASES = [(impl, False) for impl in IMPLS] + [("fast", True)]
CASE_IDS = [f"{impl}-backward-{'inside' if inside else 'after'}" for impl, inside in CASES]


@pytest.mark.parametrize("in_dtype", ["f32", "amp"])  # float32 inputs, or inputs in the region's dtype
@pytest.mark.parametrize("amp_dtype", list(HALF))
@pytest.mark.parametrize("impl,backward_inside", CASES, ids=CASE_IDS)
def test_scan_under_cpu_autocast(impl, backward_inside, amp_dtype, in_dtype):
    in_dtype = torch.float32 if in_dtype == "f32" else HALF[amp_dtype]
    check_autocast(impl, "cpu", HALF[amp_dtype], in_dtype, backward_inside, exact=True)


@pytest.mark.gpu
@pytest.mark.parametrize("in_dtype", ["f32", "amp"])
@pytest.mark.parametrize("amp_dtype", list(HALF))
@pytest.mark.parametrize("impl,backward_inside", CASES, ids=CASE_IDS)
def test_scan_under_cuda_autocast(impl, backward_inside, amp_dtype, in_dtype):
    in_dtype = torch.float32 if in_dtype == "f32" else HALF[amp_dtype]
    check_autocast(impl, "cuda", HALF[amp_dtype], in_dtype, backward_inside, exact=False)


@pytest.mark.parametrize("in_dtype", list(HALF))
def test_half_inputs_without_autocast_backward(in_dtype):
    """fp16 / bf16 inputs outside autocast: half gradients, the float32 ones rounded once."""
    s, v, mask, w = make_inputs("cpu")
    dtype = HALF[in_dtype]
    o, ds, dv = grads(IMPLS["fast"], s.to(dtype), v.to(dtype), mask, w)
    o32, ds32, dv32 = grads(IMPLS["fast"], s.to(dtype).float(), v.to(dtype).float(), mask, w)
    assert o.dtype == ds.dtype == dv.dtype == dtype
    for got, want in [(o, o32), (ds, ds32), (dv, dv32)]:
        torch.testing.assert_close(got, want.to(dtype), rtol=0.0, atol=0.0)


# --------------------------------------------------------------------------------------
# a backbone trained under CPU bf16 autocast (trainer.precision=bf16-mixed)
# --------------------------------------------------------------------------------------


def build(kind):
    """A small backbone from a model config (works with the config keys of either
    build_backbone: ``name`` selects the mixer today, ``mixer`` under the mixer contract)."""
    from aaren_bench.nn import build_backbone

    torch.manual_seed(0)
    cfg = dict(name=kind, mixer=kind, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    return build_backbone(OmegaConf.create(cfg))


@pytest.mark.parametrize("kind", ["aaren", "transformer"])
def test_backbone_trains_under_cpu_bf16_autocast(kind, one_thread):
    """Four Adam steps, fp32 and bf16-mixed side by side from the same weights: finite
    gradients, and losses within 2e-3 relative (a bf16 half-ulp: each output element carries
    about one bf16 rounding from the last products, independent across the ~2,400 elements
    the loss averages, so the loss itself moves far less; 3e-5 to 7e-5 is typical here)."""
    fp32 = build(kind)
    mixed = copy.deepcopy(fp32)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 24, 32, generator=g)
    target = torch.randn(4, 24, 32, generator=g)
    mask = torch.rand(4, 24, generator=g) > 0.2
    mask[1, 18:] = False

    def loss_of(model, amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x, mask)
            y = out[0] if isinstance(out, tuple) else out  # (y, state) under the mixer contract
            return ((y.float() - target) ** 2)[mask].mean()

    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (fp32, mixed)]
    for _ in range(4):
        losses = []
        for model, opt, amp in zip((fp32, mixed), opts, (False, True)):
            opt.zero_grad()
            loss = loss_of(model, amp)
            loss.backward()
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=2e-3)
    flat = [torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]) for m in (fp32, mixed)]
    # the last step's whole gradient: a couple of bf16 roundings (2^-8 each) through two
    # layers move it by about 1% (0.7-0.8% measured); 5% allowed
    assert (flat[1] - flat[0]).norm() <= 0.05 * flat[0].norm()


# --------------------------------------------------------------------------------------
# the chunked linear attention and SSD: float32 inside an autocast region too
# --------------------------------------------------------------------------------------


def _family_case(kind: str):
    from aaren_bench.ops.linear_attn import linear_attn_chunked
    from aaren_bench.ops.ssd import ssd_chunked

    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    if kind == "linear_attn":
        return partial(linear_attn_chunked, chunk=8), [r(2, 2, 40, 8), r(2, 2, 40, 8), r(2, 2, 40, 8)], mask
    inputs = [r(2, 2, 40, 8), torch.rand(2, 2, 40, generator=g), -torch.rand(2, generator=g), r(2, 1, 40, 4), r(2, 1, 40, 4)]
    return partial(ssd_chunked, chunk=8), inputs, mask


@pytest.mark.parametrize("kind", ["linear_attn", "ssd"])
def test_chunked_family_is_float32_under_bf16_autocast(kind):
    """float32 inputs in a bf16 autocast region: exactly the float32 outputs and gradients (the
    products used to read bf16 roundings: relative errors of about 4e-3)."""
    fn, inputs, mask = _family_case(kind)
    w = torch.randn(2, 2, 40, 8, generator=torch.Generator().manual_seed(4))
    results = []
    for amp in (False, True):
        xs = [t.clone().requires_grad_() for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y, _ = fn(*xs, mask=mask)
        assert y.dtype == torch.float32
        grads = torch.autograd.grad((y * w).sum(), xs)
        results.append((y.detach(), *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
