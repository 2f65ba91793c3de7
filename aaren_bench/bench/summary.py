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
    N = 8192 if ("fast", "forward", 8192) in t else max(r["N"] for r in rows)
    judged = N == 8192 and sizes.batch == 16 and sizes.dim == 128
    out = [f"Scan kernel (B={sizes.batch}, H={sizes.heads}, D={sizes.dim}, N={N}, chunk {sizes.chunk}; median, min in brackets)"]

    def ratio(a, b, pass_):
        ra, rb = t[(a, pass_, N)], t[(b, pass_, N)]
        return ra["median_s"] / rb["median_s"], ra["min_s"] / rb["min_s"], ra, rb

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
    for n in sorted({r["N"] for r in rows}):
        parts = [f"{v} {p[:3] if p == 'forward' else 'f+b'} {t[(v, p, n)]['median_s'] * 1e3:.1f}"
                 for v in ("cumsum", "fast", "hillis-steele", "oracle") for p in ("forward", "forward+backward") if (v, p, n) in t]
        out.append(f"    N={n} (ms): " + ", ".join(parts))
    return out


def _streaming(rows: list[dict], sizes) -> list[str]:
    a = [r for r in rows if r["backbone"] == "aaren"]
    tr = [r for r in rows if r["backbone"] == "transformer"]
    judged = sizes.tokens >= 16384
    first, last = a[0], a[-1]
    out = [f"Streaming (batch {sizes.batch}, d_model {sizes.d_model}, {sizes.n_layers} layers, {sizes.tokens} tokens; "
           f"per-step medians over windows of {sizes.every} tokens)"]
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
    sizes_a = {r["state_bytes"] for r in a}
    out.append(f"  {_verdict(len(sizes_a) == 1, True)} Aaren state size independent of N: {sorted(sizes_a)} bytes")
    half = min(tr, key=lambda r: abs(r["tokens"] - tr[-1]["tokens"] / 2))
    growth = tr[-1]["state_bytes"] / half["state_bytes"]
    out.append(f"  {_verdict(1.5 <= growth <= 2.5, True)} Transformer KV cache grows linearly: "
               f"{half['state_bytes'] / MIB:.2f} MiB at {half['tokens']} tokens, {tr[-1]['state_bytes'] / MIB:.2f} MiB at "
               f"{tr[-1]['tokens']} ({growth:.2f}x; {tr[-1]['state_bytes'] / tr[-1]['tokens']:.0f} B/token, capacity doubles)")
    tr_r = tr[-1]["step_ms_median"] / tr[0]["step_ms_median"]
    out.append(f"  [info] Transformer step at token {tr[-1]['tokens']}: {tr[-1]['step_ms_median']:.3f} ms "
               f"({tr_r:.1f}x its first window); cumulative time {tr[-1]['cumulative_s']:.1f} s vs Aaren {last['cumulative_s']:.1f} s")
    return out


def _layer(rows: list[dict], sizes) -> list[str]:
    done = {(r["backbone"], r["N"]): r for r in rows if not r.get("skipped")}
    out = [f"Layer training step (batch {sizes.batch}, d_model {sizes.d_model}, {sizes.n_heads} head(s); median)"]
    for N in sorted({r["N"] for r in rows}):
        a, t = done.get(("aaren", N)), done.get(("transformer", N))
        if a is None or t is None:
            missing = [k for k, r in (("aaren", a), ("transformer", t)) if r is None]
            out.append(f"  [n/a]  N={N}: {', '.join(missing)} skipped (time budget)")
            continue
        r = a["median_s"] / t["median_s"]
        judged = N >= 2048 and sizes.batch == 16
        mem = f"peak {a['peak_bytes'] / MIB:.0f} vs {t['peak_bytes'] / MIB:.0f} MiB, saved {a['saved_bytes'] / MIB:.0f} vs {t['saved_bytes'] / MIB:.0f} MiB"
        out.append(f"  {_verdict(r <= 1, judged)} N={N}: Aaren {a['median_s'] * 1e3:.0f} ms vs Transformer {t['median_s'] * 1e3:.0f} ms "
                   f"= {r:.2f}x ({mem})")
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
