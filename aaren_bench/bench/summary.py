"""The text summary: each target of the efficiency issue with its measured value.

A target is judged only at the size it names (scan at N = 8192, streaming at 16k tokens,
layer at N >= 2048); at other sizes (``--tiny``) the same ratios are printed as "info".
"""
from __future__ import annotations

import statistics
from datetime import datetime, timezone

MIB = 2.0**20


def _verdict(ok: bool, judged: bool) -> str:
    if not judged:
        return "[info]"
    return "[PASS]" if ok else "[FAIL]"


def _kernel(rows: list[dict], sizes) -> list[str]:
    t = {(r["variant"], r["pass"], r["N"]): r for r in rows}
    N = 8192 if ("cumsum", "forward", 8192) in t else max(r["N"] for r in rows)
    judged = N == 8192 and sizes.batch == 16 and sizes.dim == 128
    out = [f"Kernels (B={sizes.batch}, H={sizes.heads}, D={sizes.dim}, N={N}, chunk {sizes.chunk} (Aaren), "
           f"{sizes.family_chunk} (linear attention, SSD); median, min in brackets)"]

    def ratio(a, b, pass_):
        ra, rb = t[(a, pass_, N)], t[(b, pass_, N)]
        return ra["median_s"] / rb["median_s"], ra["min_s"] / rb["min_s"], ra, rb

    if ("fast", "forward", N) in t:
        r, rmin, fa, cu = ratio("fast", "cumsum", "forward")
        out.append(f"  {_verdict(r <= 2, judged)} fast forward <= 2x cumsum: {r:.2f}x [{rmin:.2f}x] "
                   f"({fa['median_s'] * 1e3:.1f} ms vs {cu['median_s'] * 1e3:.1f} ms)")
        if ("hillis-steele", "forward", N) in t:
            r, rmin, hs, fa = ratio("hillis-steele", "fast", "forward")
            out.append(f"  {_verdict(r >= 10, judged)} fast forward >= 10x faster than Hillis-Steele: {r:.1f}x [{rmin:.1f}x] "
                       f"({hs['median_s'] * 1e3:.0f} ms vs {fa['median_s'] * 1e3:.1f} ms)")
        r, rmin, fa, cu = ratio("fast", "cumsum", "forward+backward")
        out.append(f"  {_verdict(r <= 4, judged)} fast forward+backward <= 4x cumsum forward+backward: {r:.2f}x [{rmin:.2f}x] "
                   f"({fa['median_s'] * 1e3:.1f} ms vs {cu['median_s'] * 1e3:.1f} ms)")
    for name, what in (("linear_attn", "linear attention (chunked)"), ("ssd", "Mamba-2 SSD (chunked)")):
        if (name, "forward", N) not in t:
            continue
        parts = []
        for pass_ in ("forward", "forward+backward"):
            r, _, me, cu = ratio(name, "cumsum", pass_)
            vs_fast = f", {me['median_s'] / t[('fast', pass_, N)]['median_s']:.2f}x fast" if ("fast", pass_, N) in t else ""
            parts.append(f"{pass_} {me['median_s'] * 1e3:.1f} ms = {r:.2f}x cumsum{vs_fast}")
        out.append(f"  [info] {what}: " + "; ".join(parts))
    for n in sorted({r["N"] for r in rows}):
        parts = [f"{v} {p[:3] if p == 'forward' else 'f+b'} {t[(v, p, n)]['median_s'] * 1e3:.1f}"
                 for v in ("cumsum", "fast", "linear_attn", "ssd", "hillis-steele", "oracle")
                 for p in ("forward", "forward+backward") if (v, p, n) in t]
        out.append(f"    N={n} (ms): " + ", ".join(parts))
    return out


def _streaming(rows: list[dict], sizes) -> list[str]:
    by = {}
    for r in rows:
        by.setdefault(r["backbone"], []).append(r)
    judged = sizes.tokens >= 16384
    out = [f"Streaming (batch {sizes.batch}, d_model {sizes.d_model}, {sizes.n_layers} layers, {sizes.tokens} tokens; "
           f"per-step medians over windows of {sizes.every} tokens)"]
    a = by.get("aaren")
    if a:
        first, last = a[0], a[-1]
        tail = [r for r in a if r["tokens"] > last["tokens"] - 1024 and r["early_step_ms_median"] == r["early_step_ms_median"]]
        if tail:
            ratios = sorted(r["step_ms_median"] / r["early_step_ms_median"] for r in tail)
            r = statistics.median(ratios)
            out.append(f"  {_verdict(r <= 1.2, judged)} Aaren step at tokens {tail[0]['tokens'] - sizes.every + 1}-{last['tokens']} "
                       f"within 1.2x of a step from its state at token {first['tokens']}, timed alternately in the same "
                       f"windows: {r:.2f}x (median over {len(tail)} windows; range {ratios[0]:.2f}-{ratios[-1]:.2f})")
        r0 = last["step_ms_median"] / first["step_ms_median"]
        out.append(f"  [info] Aaren step, last window vs first window (minutes apart, load may differ): {r0:.2f}x "
                   f"({last['step_ms_median']:.3f} ms vs {first['step_ms_median']:.3f} ms)")
    for k, name in (("aaren", "Aaren"), ("linear_attn", "Linear attention"), ("mamba2", "Mamba-2"), ("mlstm", "mLSTM"),
                    ("ttt", "TTT-Linear")):
        if k in by:
            sizes_k = {r["state_bytes"] for r in by[k]}
            out.append(f"  {_verdict(len(sizes_k) == 1, True)} {name} state size independent of N: {sorted(sizes_k)} bytes")
    tr = by.get("transformer")
    if tr:
        half = min(tr, key=lambda r: abs(r["tokens"] - tr[-1]["tokens"] / 2))
        growth = tr[-1]["state_bytes"] / half["state_bytes"]
        out.append(f"  {_verdict(1.5 <= growth <= 2.5, True)} Transformer KV cache grows linearly: "
                   f"{half['state_bytes'] / MIB:.2f} MiB at {half['tokens']} tokens, {tr[-1]['state_bytes'] / MIB:.2f} MiB at "
                   f"{tr[-1]['tokens']} ({growth:.2f}x; {tr[-1]['state_bytes'] / tr[-1]['tokens']:.0f} B/token, capacity doubles)")
    for k, r in by.items():
        out.append(f"  [info] {k}: state {r[-1]['state_bytes']:,} B at {r[-1]['tokens']} tokens; step {r[0]['step_ms_median']:.3f} ms "
                   f"(first window) -> {r[-1]['step_ms_median']:.3f} ms (last, {r[-1]['step_ms_median'] / r[0]['step_ms_median']:.1f}x); "
                   f"cumulative {r[-1]['cumulative_s']:.1f} s; {r[-1]['params']:,} parameters")
    return out


def _layer(rows: list[dict], sizes) -> list[str]:
    done = {(r["backbone"], r["N"]): r for r in rows if not r.get("skipped")}
    kinds = list(dict.fromkeys(r["backbone"] for r in rows))
    out = [f"Layer training step (batch {sizes.batch}, d_model {sizes.d_model}, {sizes.n_heads} head(s); median; "
           f"ratios to the Transformer; peak / saved-for-backward memory; the verdict: Aaren no slower than the "
           f"Transformer, judged at N >= 2048)"]
    for N in sorted({r["N"] for r in rows}):
        t = done.get(("transformer", N))
        parts = []
        for k in kinds:
            r = done.get((k, N))
            if r is None:
                parts.append(f"{k} skipped")
                continue
            ratio = f" = {r['median_s'] / t['median_s']:.2f}x" if t is not None and k != "transformer" else ""
            parts.append(f"{k} {r['median_s'] * 1e3:.0f} ms{ratio} ({r['peak_bytes'] / MIB:.0f} / {r['saved_bytes'] / MIB:.0f} MiB)")
        a = done.get(("aaren", N))
        if a is not None and t is not None:
            verdict = _verdict(a["median_s"] <= t["median_s"], N >= 2048 and sizes.batch == 16)
        else:
            verdict = "[n/a] " if "aaren" in kinds and "transformer" in kinds else "[info]"
        out.append(f"  {verdict} N={N}: " + ", ".join(parts))
    return out


def summarise(results: dict, sizes: dict, where: str, command: str, seconds: float) -> str:
    lines = [
        "aaren-bench efficiency suite",
        f"measured on: {where}",
        f"date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M}; command: {command}; {seconds:.0f} s",
        "",
    ]
    for part, fn in (("kernel", _kernel), ("streaming", _streaming), ("layer", _layer)):
        if part in results:
            lines += fn(results[part], sizes[part]) + [""]
    return "\n".join(lines)
