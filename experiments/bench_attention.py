"""Benchmark of Mosaic attention on a Hopper GPU (issue 3), written to experiments/results/attention.md.

What it measures, all in one run on one device:
  0. correctness at the published shapes: each kernel branch (selected, local) against the
     float32 pure-JAX reference on the same selection, output and q/k/v gradients, and the
     whole attention pallas vs xla; relative L2, bound 2e-2 for bf16 (as the CPU tests);
  1. the bf16 matmul rate of this GPU (8192^3, the ceiling every TFLOP/s is compared with);
  2. the selection-branch kernels alone at the stage-1 shape: forward (also on the two other
     softmax schedules, SOFTMAX_SCHEDULES: the compute warpgroups taking turns on the tensor
     cores, or each one's softmax under its own next wgmma), and backward (dq + dk/dv
     kernels; also with the overlap, which puts dq's exponentials under its dP wgmma)
     -- targets 50% / 35% of the measured matmul rate;
  3. the whole Mosaic attention, impl="pallas" (and its forward variants, VARIANT_CONFIGS: the
     fused local+selected kernel and the two schedules, alone and together; each kept off by
     default unless it wins here)
     and impl="xla", forward and forward+backward,
     at the three stage shapes of the published config, in ms and TFLOP/s (FLOPs of the
     three branches as defined, pallas_kernels/mosaic_attention/flops.py), beside dense
     cuDNN flash attention's forward over the same tokens; then the forward targets at
     stage 1 (>= 3x faster than xla, >= 20x faster than dense);
  (Stage 1's correctness, then 1 and 2, then stage 1's whole attention; then each other stage's
  correctness and whole attention. The results file is rewritten after each, so a run stopped
  at its time limit keeps stage 1 first.)
  4. the scaling figure: Mosaic (pallas) vs dense cuDNN flash attention
     (jax.nn.dot_product_attention(implementation="cudnn")) vs the xla path, forward,
     8k -> 512k tokens at the stage-1 heads (dense and xla until they fail to fit).

Timing: device time from CUPTI (jax.experimental.mosaic.gpu.profiler.measure, the sum of
the kernels' durations, median over --iters runs after a warm-up), with the host
wall-clock median beside it; inputs rotate among 3 random sets so repeated runs do not
measure L2. Usage (on an H100):

    python experiments/bench_attention.py                 # everything, writes the results
    python experiments/bench_attention.py --skip-scaling  # sections 1-3 only
    python experiments/bench_attention.py --dry-run       # CPU: FLOP tables and what the targets ask
    python experiments/bench_attention.py --interpret-smoke  # CPU: run every code path once
                                                          # on tiny shapes in interpret mode
"""

from __future__ import annotations

import argparse
import datetime
import functools
import statistics
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mosaic_jax.attention import kernel_device_problem, reference  # noqa: E402
from pallas_kernels.mosaic_attention import flops  # noqa: E402
from pallas_kernels.mosaic_attention import mosaic_attention as pallas_mosaic_attention  # noqa: E402
from pallas_kernels.mosaic_attention.config import PUBLISHED_STAGES, SelectionConfig  # noqa: E402
from pallas_kernels.mosaic_attention.local_kernel import local_attention  # noqa: E402
from pallas_kernels.mosaic_attention.selection_kernel import (  # noqa: E402
    selected_attention,
    selection_backward_dkv,
    selection_backward_dq,
    selection_forward,
)

RESULTS = REPO / "experiments" / "results" / "attention.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

STAGES = PUBLISHED_STAGES  # (name, tokens, Hq, Hk, head_dim, block_attn, sparse block, top-k)
SCALING_LENGTHS = [8_192 * 2**i for i in range(7)]  # 8k .. 512k
TINY_STAGES = [("tiny", 512, 2, 1, 64, 256, 128, 2)]  # --interpret-smoke (local tile = sparse block: fusable)
# The forward kernels' softmax schedules besides the default (SelectionConfig): the two compute
# warpgroups taking turns on the tensor cores, or each one issuing its next QK^T and PV before its softmax.
SOFTMAX_SCHEDULES = {"ping-pong": SelectionConfig(pingpong=True),
                     "overlap": SelectionConfig(intra_warpgroup_overlap=True)}
FUSED = "pallas, fused forward"  # SelectionConfig(fuse_forward=True): local + selected in one kernel
PINGPONG, FUSED_PINGPONG = "pallas, ping-pong", "pallas, fused forward, ping-pong"
OVERLAP, FUSED_OVERLAP = "pallas, overlap", "pallas, fused forward, overlap"
VARIANT_CONFIGS = {  # impl="pallas" with other forward kernels (and, for the overlap, another dq kernel)
    FUSED: SelectionConfig(fuse_forward=True),
    PINGPONG: SOFTMAX_SCHEDULES["ping-pong"],
    FUSED_PINGPONG: SelectionConfig(fuse_forward=True, pingpong=True),
    OVERLAP: SOFTMAX_SCHEDULES["overlap"],
    FUSED_OVERLAP: SelectionConfig(fuse_forward=True, intra_warpgroup_overlap=True),
}
# Timed and checked forward only: differentiated, each runs the backward kernels of "pallas" or,
# with the overlap, of OVERLAP (whose dq kernel differs), and those rows time and check them.
FORWARD_ONLY = tuple(impl for impl in VARIANT_CONFIGS if impl != OVERLAP)
DENSE = "dense cuDNN flash"  # full attention over the same tokens: the 20x baseline
TOL_BF16 = 2e-2  # relative L2 bound for bf16 inputs (issue 3; the CPU tests use the same)


# ----------------------------------------------------------------------------- timing


def _inputs(seed, b, n, hq, hk, d, dtype=jnp.bfloat16):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, n, hq, d), dtype)
    k = jax.random.normal(ks[1], (b, n, hk, d), dtype)
    v = jax.random.normal(ks[2], (b, n, hk, d), dtype)
    gates = jax.nn.softmax(jax.random.normal(ks[3], (b, n, hq, 3), jnp.float32), axis=-1)
    return q, k, v, gates


def time_fn(fn, arg_sets, iters: int) -> dict:
    """Median device ms (CUPTI) and wall ms of ``fn(*args)``, cycling over ``arg_sets``."""
    for args in arg_sets:  # compile + warm up
        jax.block_until_ready(fn(*args))
    wall = []
    for i in range(iters):
        args = arg_sets[i % len(arg_sets)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        wall.append((time.perf_counter() - t0) * 1e3)
    device = []
    try:
        from jax.experimental.mosaic.gpu import profiler

        for i in range(iters):
            _, ms = profiler.measure(fn)(*arg_sets[i % len(arg_sets)])
            if ms is not None:
                device.append(ms)
    except Exception as e:  # CUPTI unavailable: report wall-clock only, and say so
        print(f"  (CUPTI timing unavailable: {type(e).__name__}: {e})")
    return {"device_ms": statistics.median(device) if device else None, "wall_ms": statistics.median(wall)}


def best_ms(t: dict) -> float:
    return t["device_ms"] if t["device_ms"] is not None else t["wall_ms"]


def tflops(flop: float, ms: float) -> float:
    return flop / (ms * 1e-3) / 1e12


def matmul_rate(iters: int, size: int = 8192) -> dict:
    ks = jax.random.split(jax.random.key(0), 6)
    sets = [(jax.random.normal(ks[2 * i], (size, size), jnp.bfloat16),
             jax.random.normal(ks[2 * i + 1], (size, size), jnp.bfloat16)) for i in range(3)]
    mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    t = time_fn(mm, sets, iters)
    return t | {"size": size, "tflops": tflops(2.0 * size**3, best_ms(t))}


# ----------------------------------------------------------------------------- sections


def _rel_l2(x, ref) -> float:
    x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
    if not bool(jnp.isfinite(x).all()):
        return float("nan")
    return float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))


def _within_bound(errors: dict) -> bool:
    return all(e <= TOL_BF16 for e in errors.values())  # NaN compares False: not within


def check_correctness(stage, batch: int) -> dict:
    """Kernels against the float32 pure-JAX reference at one published shape.

    Per branch (selected on the selection the model would make, local on its fixed blocks):
    relative L2 of the output and of dq, dk, dv for a random cotangent, the reference run on
    the bf16 inputs upcast. Whole attention: pallas vs xla on the same bf16 inputs (both
    select from the same block scores), output and gradients of q, k, v and the gates.
    """
    name, n, hq, hk, d, block, bs, top_k = stage
    q, k, v, gates = _inputs(7, batch, n, hq, hk, d)
    cot = jax.random.normal(jax.random.key(8), q.shape, jnp.float32)
    idx = jax.jit(reference.select_blocks, static_argnums=(2, 3))(q, k, bs, top_k)
    up = lambda x: x.astype(jnp.float32)  # noqa: E731

    def out_and_grads(fn, *args):
        return jax.jit(lambda *a: (lambda o, vjp: (o, *vjp(cot)))(*jax.vjp(fn, *a)))(*args)

    branches = {
        "selected": (lambda q, k, v: selected_attention(q, k, v, idx, bs),
                     lambda q, k, v: reference.selected_attention(q, k, v, idx, bs)),
        "local": (lambda q, k, v: local_attention(q, k, v, block),
                  lambda q, k, v: reference.local_attention(q, k, v, block)),
    }
    row = {"stage": name}
    for branch, (kernel, ref) in branches.items():
        got = out_and_grads(kernel, q, k, v)
        want = out_and_grads(ref, up(q), up(k), up(v))
        row[branch] = {key: _rel_l2(a, b) for key, a, b in zip(("o", "dq", "dk", "dv"), got, want)}
        del got, want
    want = out_and_grads(_attention(stage, "xla"), q, k, v, gates)

    def whole_vs_xla(impl: str) -> dict:
        got = out_and_grads(_attention(stage, impl), q, k, v, gates)
        return {key: _rel_l2(a, b) for key, a, b in zip(("o", "dq", "dk", "dv", "dgates"), got, want)}

    row["whole (vs xla)"] = whole_vs_xla("pallas")
    for impl in VARIANT_CONFIGS:  # the kernels' variants: output only where only the forward differs
        what = f"whole, {impl.removeprefix('pallas, ')} (vs xla)"
        if impl in FORWARD_ONLY:
            row[what] = {"o": _rel_l2(jax.jit(_attention(stage, impl))(q, k, v, gates), want[0])}
        else:
            row[what] = whole_vs_xla(impl)
    return row


def bench_selection(stage, iters: int, batch: int, schedules: dict[str, SelectionConfig] = SOFTMAX_SCHEDULES) -> dict:
    name, n, hq, hk, d, _, bs, top_k = stage
    sets = [_inputs(s, batch, n, hq, hk, d)[:3] for s in range(3)]
    sets = [(q, k, v, reference.select_blocks(q, k, bs, top_k)) for q, k, v in sets]
    sel = flops.mosaic_flops(batch, n, hq, d, block_attn_size=1024, sparse_block_size=bs, top_k=top_k).selected

    def fwd_bwd(q, k, v, idx, config):
        o, lse = selection_forward(q, k, v, idx, block_size=bs, config=config)
        do = o.astype(q.dtype)  # any cotangent of the right shape: cost is data-independent
        delta = jnp.einsum("bnhd,bnhd->bhn", o, do.astype(jnp.float32))
        dq = selection_backward_dq(q, k, v, do, lse, delta, idx, block_size=bs, config=config)
        dk, dv = selection_backward_dkv(q, k, v, do, lse, delta, idx, block_size=bs, config=config)
        return dq, dk, dv

    def timings(config: SelectionConfig, backward: bool) -> dict:
        t_fwd = time_fn(jax.jit(functools.partial(selection_forward, block_size=bs, config=config)), sets, iters)
        out = {"fwd": t_fwd, "fwd_tflops": tflops(sel, best_ms(t_fwd))}
        if backward:
            t_fb = time_fn(jax.jit(functools.partial(fwd_bwd, config=config)), sets, iters)
            bwd_ms = best_ms(t_fb) - best_ms(t_fwd)  # the backward kernels + delta, without the forward
            out |= {"fwd_bwd": t_fb, "bwd_ms": bwd_ms, "bwd_tflops": tflops(flops.BWD_FACTOR * sel, bwd_ms)}
        return out

    out = {"stage": name, **timings(SelectionConfig(), backward=True)}
    # the schedules' forward; the overlap's backward too (its dq kernel differs)
    out["schedules"] = {schedule: timings(config, backward=config.intra_warpgroup_overlap)
                        for schedule, config in schedules.items()}
    return out


def _attention(stage, impl: str):
    """The whole Mosaic attention at a stage's block sizes ("pallas", a VARIANT_CONFIGS variant or "xla"),
    or DENSE attention over the same tokens."""
    if impl == DENSE:
        return lambda q, k, v, gates: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    _, _, _, _, _, block, bs, top_k = stage
    kw = dict(block_attn_size=block, sparse_block_size=bs, top_k=top_k)
    if impl == "pallas":
        return functools.partial(pallas_mosaic_attention, **kw)
    if impl in VARIANT_CONFIGS:
        return functools.partial(pallas_mosaic_attention, config=VARIANT_CONFIGS[impl], **kw)
    return functools.partial(reference.mosaic_attention, **kw)


def _mosaic_fns(stage, impl: str):
    f = _attention(stage, impl)
    fwd = jax.jit(f)

    def loss(q, k, v, g):
        return jnp.sum(f(q, k, v, g))

    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    return fwd, fwd_bwd


def bench_mosaic(stage, iters: int, batch: int, impls=("pallas", *VARIANT_CONFIGS, "xla", DENSE)) -> list[dict]:
    name, n, hq, hk, d, block, bs, top_k = stage
    sets = [_inputs(s, batch, n, hq, hk, d) for s in range(3)]
    fl = flops.mosaic_flops(batch, n, hq, d, block_attn_size=block, sparse_block_size=bs, top_k=top_k)
    rows = []
    for impl in impls:
        fwd, fwd_bwd = _mosaic_fns(stage, impl)
        row = {"stage": name, "impl": impl}
        passes = (("fwd", fwd, fl.forward), ("fwd_bwd", fwd_bwd, fl.forward_backward))
        if impl == DENSE:  # its own FLOPs, so the TFLOP/s columns compare rates; the targets are forward
            passes = (("fwd", fwd, flops.dense_flops(batch, n, hq, d)),)
        # FORWARD_ONLY variants' backward kernels are timed in the "pallas" or OVERLAP row
        for key, fn, fl_count in passes[:1] if impl in FORWARD_ONLY else passes:
            try:
                t = time_fn(fn, sets, iters)
                row[key] = t | {"tflops": tflops(fl_count, best_ms(t))}
            except Exception as e:
                row[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        rows.append(row)
    return rows


def bench_scaling(lengths, iters: int, batch: int, stage) -> list[dict]:
    _, _, hq, hk, d, block, bs, top_k = stage
    rows = []
    for n in lengths:
        sets = [_inputs(s, batch, n, hq, hk, d) for s in range(2)]
        row = {"n": n}
        candidates = {
            "pallas": _mosaic_fns(("", n, hq, hk, d, block, bs, top_k), "pallas")[0],
            "xla": _mosaic_fns(("", n, hq, hk, d, block, bs, top_k), "xla")[0],
            "dense_cudnn": jax.jit(_attention(None, DENSE)),
        }
        for key, fn in candidates.items():
            try:
                row[key] = best_ms(time_fn(fn, sets, max(3, iters // 4)))
            except Exception as e:  # out of memory, or cuDNN refusing the shape: recorded, not fatal
                row[key] = f"failed ({type(e).__name__})"
        rows.append(row)
        print("  scaling", row)
    return rows


# ----------------------------------------------------------------------------- report


def _fmt_ms(t):
    if not isinstance(t, dict):
        return str(t)
    if "error" in t:
        return t["error"]
    dev = f"{t['device_ms']:.3f}" if t["device_ms"] is not None else "n/a"
    return f"{dev} (wall {t['wall_ms']:.3f})"


def flop_table(batch: int) -> str:
    lines = ["| stage | tokens | local | compressed | selected | scoring | forward | fwd+bwd |",
             "|---|---|---|---|---|---|---|---|"]
    for name, n, hq, _, d, block, bs, top_k in STAGES:
        f = flops.mosaic_flops(batch, n, hq, d, block_attn_size=block, sparse_block_size=bs, top_k=top_k)
        g = lambda x: f"{x / 1e9:,.1f}"  # noqa: E731
        lines.append(f"| {name} | {n:,} | {g(f.local)} | {g(f.compressed)} | {g(f.selected)} | "
                     f"{g(f.selection_scoring)} | {g(f.forward)} | {g(f.forward_backward)} |")
    return "\n".join(lines) + f"\n\nGFLOP, batch {batch}; see flops.py for the formulas.\n"


def targets_table(batch: int, lengths=SCALING_LENGTHS) -> str:
    """What the issue's targets ask of the kernels, from FLOP counts and Hopper's issue rates alone."""
    name, n, hq, _, d, block, bs, top_k = STAGES[0]
    selected = flops.mosaic_flops(batch, n, hq, d, block_attn_size=block, sparse_block_size=bs, top_k=top_k).selected
    lines = [f"Selection kernels at the {name} shape: matrix FLOPs as run (recomputation included), and the time "
             "of their softmax exponentials (SFU) against that of their matrix products (tensor cores), each at "
             "Hopper's peak. A kernel whose exponentials do not overlap its wgmma cannot pass 1 / (1 + ratio) of "
             "the matmul peak.", "",
             "| kernel | GFLOP as run | exp2 / matmul time | ceiling without overlap |", "|---|---|---|---|"]
    for kernel in ("mosaic_selection_fwd", "mosaic_selection_bwd_dq", "mosaic_selection_bwd_dkv"):
        ratio = flops.exp_to_matmul_time(kernel, d)
        run = selected * flops.KERNEL_MATMULS[kernel] / 2
        lines.append(f"| {kernel} | {run / 1e9:,.1f} | {ratio:.2f} | {100 / (1 + ratio):.0f}% |")
    as_run = (flops.KERNEL_MATMULS["mosaic_selection_bwd_dq"] + flops.KERNEL_MATMULS["mosaic_selection_bwd_dkv"]) / 2
    lines += ["", f"The backward target (35% of the matmul rate) counts {flops.BWD_FACTOR}x the forward's FLOPs; "
              f"the dq and dk/dv kernels run {as_run}x, so it asks for {35 * as_run / flops.BWD_FACTOR:.0f}% of the "
              "rate in FLOPs as run.", "",
              f"Dense attention against Mosaic's forward ({hq} query heads, head_dim {d}, blocks {block} / {bs}, "
              f"top-k {top_k}): at equal FLOP rates Mosaic's speed-up is the FLOP ratio; for the 20x target it must "
              "run its FLOPs the last column's factor faster than dense flash attention runs its own.", "",
              "| tokens | dense GFLOP | Mosaic GFLOP | dense / Mosaic | rate factor for 20x |", "|---|---|---|---|---|"]
    for length in sorted({*lengths, n}):  # the stage's own length is where the issue sets the target
        dense = flops.dense_flops(batch, length, hq, d)
        mosaic = flops.mosaic_flops(batch, length, hq, d, block_attn_size=block, sparse_block_size=bs,
                                    top_k=top_k).forward
        lines.append(f"| {length:,} | {dense / 1e9:,.0f} | {mosaic / 1e9:,.1f} | {dense / mosaic:.1f} | "
                     f"{20 * mosaic / dense:.2f} |")
    return "\n".join(lines) + "\n"


def forward_targets(rows: list[dict], stage: str) -> list[str]:
    """The issue's forward targets at ``stage``: pallas >= 3x faster than xla, >= 20x than dense."""
    fwd = {r["impl"]: best_ms(r["fwd"]) for r in rows if r["stage"] == stage and "device_ms" in r.get("fwd", {})}
    if "pallas" not in fwd:
        return []
    lines = [f"Forward targets at {stage}:", ""]
    for impl, target in (("xla", 3), (DENSE, 20)):
        for mine in ("pallas", *VARIANT_CONFIGS):
            if impl in fwd and mine in fwd:
                ratio = fwd[impl] / fwd[mine]
                lines.append(f"- {impl} / {mine}: **{ratio:.1f}x** (target >= {target}x: "
                             f"{'met' if ratio >= target else 'not met'})")
    return lines + [""]


def render(meta, mm, sel, mosaic, scaling, batch, checks=None) -> str:
    out = [BEGIN, "## Measured (written by experiments/bench_attention.py)", ""]
    out += [f"- command: `{meta['command']}`", f"- device: {meta['device']}", f"- jax: {meta['jax']}",
            f"- date: {meta['date']}", f"- timer: CUPTI device time, median of {meta['iters']} runs "
            "(host wall-clock median in parentheses); 3 rotating random input sets", ""]
    if checks:
        out += [f"### Correctness at the published shapes (relative L2, bf16 inputs; bound {TOL_BF16:g})", "",
                "| stage | compared | o | dq | dk | dv | dgates | within bound |", "|---|---|---|---|---|---|---|---|"]
        for r in checks:
            if "error" in r:
                out.append(f"| {r['stage']} | - | {r['error']} | | | | | no |")
                continue
            for what, errs in r.items():
                if what == "stage":
                    continue
                cells = [f"{errs[k]:.2e}" if k in errs else "-" for k in ("o", "dq", "dk", "dv", "dgates")]
                ok = _within_bound(errs)
                out.append(f"| {r['stage']} | {what} | {' | '.join(cells)} | {'yes' if ok else '**NO**'} |")
        out.append("")
    if mm:
        out += [f"bf16 matmul {mm['size']}^3: {_fmt_ms(mm)} ms = **{mm['tflops']:.1f} TFLOP/s** (the reference rate)", ""]
    if sel:
        rate = mm["tflops"]
        out += ["### Selection branch kernels (stage-1 shape)", "",
                "| pass | ms | TFLOP/s | % of matmul rate | target |", "|---|---|---|---|---|",
                f"| forward | {_fmt_ms(sel['fwd'])} | {sel['fwd_tflops']:.1f} | "
                f"{100 * sel['fwd_tflops'] / rate:.0f}% | >= 50% |",
                f"| backward (fwd+bwd minus fwd) | {sel['bwd_ms']:.3f} | {sel['bwd_tflops']:.1f} | "
                f"{100 * sel['bwd_tflops'] / rate:.0f}% | >= 35% |"]
        for schedule, t in sel.get("schedules", {}).items():
            out.append(f"| forward, {schedule} | {_fmt_ms(t['fwd'])} | {t['fwd_tflops']:.1f} | "
                       f"{100 * t['fwd_tflops'] / rate:.0f}% | >= 50% |")
            if "bwd_ms" in t:
                out.append(f"| backward, {schedule} | {t['bwd_ms']:.3f} | {t['bwd_tflops']:.1f} | "
                           f"{100 * t['bwd_tflops'] / rate:.0f}% | >= 35% |")
        out.append("")
    if mosaic:
        out += ["### Whole Mosaic attention", "", "| stage | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
                "|---|---|---|---|---|---|"]
        for r in mosaic:
            tf = lambda t: f"{t['tflops']:.1f}" if "tflops" in t else "-"  # noqa: E731
            out.append(f"| {r['stage']} | {r['impl']} | {_fmt_ms(r['fwd'])} | {tf(r['fwd'])} | "
                       f"{_fmt_ms(r.get('fwd_bwd', 'not timed' if r['impl'] in FORWARD_ONLY else '-'))} | "
                       f"{tf(r.get('fwd_bwd', {}))} |")
        out += ["", "(The dense row's TFLOP/s counts dense attention's own FLOPs.)", ""]
        out += forward_targets(mosaic, mosaic[0]["stage"])  # the first stage benchmarked: stage 1 on a device
    if scaling:
        out += ["### Scaling, forward ms (stage-1 heads; targets at 49,152: pallas >= 3x faster than xla, "
                ">= 20x faster than dense)", "",
                "| tokens | mosaic pallas | mosaic xla | dense cuDNN flash | xla / pallas | dense / pallas |",
                "|---|---|---|---|---|---|"]
        for r in scaling:
            f = lambda x: f"{x:.3f}" if isinstance(x, float) else str(x)  # noqa: E731
            speedup = lambda key: (f"{r[key] / r['pallas']:.1f}x"  # noqa: E731
                                   if isinstance(r[key], float) and isinstance(r["pallas"], float) else "-")
            out.append(f"| {r['n']:,} | {f(r['pallas'])} | {f(r['xla'])} | {f(r['dense_cudnn'])} | "
                       f"{speedup('xla')} | {speedup('dense_cudnn')} |")
        out.append("")
    out += ["### FLOP counts", "", flop_table(batch), "### What the targets ask, counted", "", targets_table(batch),
            END]
    return "\n".join(out)


def write_results(block: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Mosaic attention benchmark\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--scaling-lengths", type=int, nargs="*", default=SCALING_LENGTHS)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--dry-run", action="store_true", help="print the FLOP tables and what the targets ask; no device work")
    p.add_argument("--interpret-smoke", action="store_true",
                   help="CPU check of every code path on a tiny shape in GPU interpret mode; writes nothing")
    args = p.parse_args(argv)

    if args.dry_run:
        print(flop_table(args.batch))
        print(targets_table(args.batch, args.scaling_lengths))
        return 0
    if args.interpret_smoke:
        from pallas_kernels.testing import interpret

        with interpret():  # raises if a kernel raced
            checks = check_correctness(TINY_STAGES[0], 1)
            print("correctness", checks)
            # The ping-pong variants run once each, in check_correctness. GPU interpret mode
            # simulates each warpgroup as an XLA CPU computation of its own; on a 2-core
            # machine their third launch in one process hung, with warpgroup 1 waiting at its
            # first turn for warpgroup 0, whose simulation had not started (a GPU runs every
            # warpgroup of a CTA at once).
            overlap_only = {"overlap": SOFTMAX_SCHEDULES["overlap"]}
            sel = bench_selection(TINY_STAGES[0], 1, 1, schedules=overlap_only)
            mosaic = bench_mosaic(TINY_STAGES[0], 1, 1, impls=("pallas", FUSED, OVERLAP, "xla", DENSE))
        print("selection", sel)
        print("mosaic", mosaic)
        meta = {"command": "--interpret-smoke", "device": "cpu (interpret mode)", "jax": jax.__version__,
                "date": "-", "iters": 1}
        print(render(meta, matmul_rate(1, size=256), sel, mosaic, None, 1, [checks]))  # the report renders
        # cuDNN is GPU-only: the dense row fails on the CPU by design
        bad = [r for r in mosaic for key in ("fwd", "fwd_bwd") if r["impl"] != DENSE and "error" in r.get(key, {})]
        bad += [what for what, errs in checks.items() if what != "stage" and not _within_bound(errs)]
        print("interpret smoke:", "FAILED" if bad else "ok (timings on CPU are meaningless)")
        return 1 if bad else 0

    if problem := kernel_device_problem():
        print(f"the kernels need a Hopper GPU: {problem}; use --dry-run or --interpret-smoke on the CPU",
              file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    meta = {"command": " ".join(["python", *sys.argv]), "device": f"{dev.device_kind} ({dev.platform})",
            "jax": jax.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "iters": args.iters}
    print(meta)
    checks, mm, sel, mosaic, scaling = [], None, None, [], None

    def save() -> None:  # after every section: a run stopped at its time limit keeps what it measured
        write_results(render(meta, mm, sel, mosaic, scaling, args.batch, checks), args.out)

    def check(stage) -> None:
        try:
            checks.append(check_correctness(stage, args.batch))
        except Exception as e:  # a failure here is a result: recorded, and the timings still run
            traceback.print_exc()
            checks.append({"stage": stage[0], "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
        print("correctness", checks[-1], flush=True)
        save()

    # Stage 1 whole first (the targets are there), then each other stage's checks and timings, so a
    # run stopped at its time limit has kept the most important figures.
    check(STAGES[0])
    mm = matmul_rate(args.iters)
    print("matmul", mm)
    try:
        sel = bench_selection(STAGES[0], args.iters, args.batch)
        print("selection", sel)
    except Exception:
        traceback.print_exc()
    save()
    for i, stage in enumerate(STAGES):
        if i:
            check(stage)
        mosaic += bench_mosaic(stage, args.iters, args.batch)
        print("mosaic", mosaic[-3:])
        save()
    if not args.skip_scaling:
        scaling = bench_scaling(args.scaling_lengths, args.iters, args.batch, STAGES[0])
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
