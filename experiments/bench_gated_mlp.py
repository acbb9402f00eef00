"""The cSwiGLU gate's kernels on the GPU against XLA: the up-projection and the gate's backward.

Forward: XLA runs ``silu(x @ W1 + bias) * (x @ W3)`` as GEMMs writing the two (N, hidden)
products and an elementwise pass over them; ``gated_up_projection`` writes only the result.
The forecast step's roofline (forecast.md) charges both at the tensor cores' peak; this
measures whether the Pallas GEMM gets there. It decides whether ``--attention-impl
pallas-fused`` keeps the kernel.

Backward: given a, b, the cotangent dh and the bias, the train step needs h again, da, db and
the bias's gradient. XLA's autodiff form moves ten (N, hidden) activations for them, the
``gate_backward`` kernel six; the train roofline (train.md) charges both at HBM bandwidth.
This measures the bandwidth each reaches.

    python experiments/bench_gated_mlp.py                     # H100: the model's three levels, 24 members
    python experiments/bench_gated_mlp.py --interpret-smoke   # CPU: every code path once, tiny shapes

Per level: median device ms (CUPTI, else wall) of each path; forward TFLOP/s against the bf16
matmul rate measured in the same run, backward GB/s of the activations each path must move at
least (the kernel's six passes) against HBM's; relative L2 errors against float32.
Appends a section to ``experiments/results/gated_mlp.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import TOL_BF16, _rel_l2, best_ms, matmul_rate, time_fn, tflops  # noqa: E402
from common import append_result  # noqa: E402

from mosaic_jax import cswiglu  # noqa: E402
from mosaic_jax.attention import kernel_device_problem  # noqa: E402
from pallas_kernels.gated_mlp import (  # noqa: E402
    gate_backward,
    gate_backward_reference,
    gated_up_projection_forward,
    launch_flops,
)

# (level, tokens, dim): the published model's three levels; hidden = 4 * dim (mlp_ratio 4)
LEVELS = [("stage 1 (nside 64)", 49_152, 768), ("stage 2 (nside 32)", 12_288, 1024),
          ("bottleneck (nside 16)", 3_072, 1280)]
TINY_LEVELS = [("tiny", 256, 128)]


def xla_path(x, w13, bias):
    """The model's cSwiGLU up-projection as XLA runs it (mosaic_jax.cswiglu, bf16 compute)."""
    return cswiglu.gate(*cswiglu.up_products(x, w13), bias.astype(x.dtype))


def xla_gate_backward(a, b, dh, bias):
    """What autodiff runs for the gate in the remat'd train step: h again, then its VJP."""
    h, vjp = jax.vjp(cswiglu.gate, a, b, bias.astype(a.dtype))
    return (h, *vjp(dh))


HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}


def float32_product(x, w13, bias):
    hidden = w13.shape[1] // 2
    ab = jnp.dot(x.astype(jnp.float32), w13.astype(jnp.float32))
    return nn.silu(ab[..., :hidden] + bias[:, None, :]) * ab[..., hidden:]


def bench_level(name: str, tokens: int, dim: int, members: int, iters: int, backward_sequences: int) -> dict:
    hidden = 4 * dim
    ks = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(ks[0], (members, tokens, dim), jnp.bfloat16)
    w13 = (jax.random.normal(ks[1], (dim, 2 * hidden)) * dim**-0.5).astype(jnp.bfloat16)
    bias = jax.random.normal(ks[2], (members, hidden), jnp.float32)
    flop = launch_flops([x.shape, w13.shape])
    want = jax.jit(float32_product)(x, w13, bias)
    row = {"level": name, "members": members, "tokens": tokens, "dim": dim, "hidden": hidden, "gflop": flop / 1e9}
    for label, fn in (("xla", jax.jit(xla_path)), ("pallas", jax.jit(gated_up_projection_forward))):
        try:
            err = _rel_l2(fn(x, w13, bias), want)
            t = time_fn(fn, [(x, w13, bias)], iters)
            row[label] = {"ms": best_ms(t), "tflops": tflops(flop, best_ms(t)), "rel_l2": err}
        except Exception as e:  # a kernel that fails is a result
            row[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
        print(name, label, row[label], flush=True)
    if backward_sequences:
        ks = jax.random.split(jax.random.key(1), 4)
        a, b, dh = (jax.random.normal(k, (backward_sequences, tokens, hidden), jnp.bfloat16) for k in ks[:3])
        bias = jax.random.normal(ks[3], (backward_sequences, hidden), jnp.float32)
        row["sequences"] = backward_sequences
        want = jax.jit(gate_backward_reference)(a, b, dh, bias)
        row["min_gb"] = 6 * a.size * a.dtype.itemsize / 1e9  # read a, b, dh; write h, da, db
        for label, fn in (("xla", jax.jit(xla_gate_backward)), ("pallas", jax.jit(gate_backward))):
            try:
                err = max(_rel_l2(g, w) for g, w in zip(fn(a, b, dh, bias), want))
                t = time_fn(fn, [(a, b, dh, bias)], iters)
                row[f"bwd_{label}"] = {"ms": best_ms(t), "gbps": row["min_gb"] / (best_ms(t) * 1e-3), "rel_l2": err}
            except Exception as e:  # a kernel that fails is a result
                row[f"bwd_{label}"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            print(name, "backward", label, row[f"bwd_{label}"], flush=True)
    return row


def _table(header: str, rows: list[dict], key: str, shape, size: str, rate: str, peak: float | None) -> list[str]:
    """Markdown rows, one per (level, path): ``r[key + path]`` holds ms, the ``rate`` figure and
    rel_l2 (or an error); ``shape(r)`` and ``r[size]`` describe the level; ``peak`` scales the rate."""
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for path in ("xla", "pallas"):
            c, cells = r[key + path], f"| {r['level']} | {shape(r)} | {r[size]:.1f} | {path} |"
            if "error" in c:
                lines.append(f"{cells} fails: {c['error']} | | | |")
                continue
            share = f"{c[rate] / peak:.0%}" if peak else "-"
            ok = "" if c["rel_l2"] <= TOL_BF16 else " (over the 2e-2 bound)"
            lines.append(f"{cells} {c['ms']:.3f} | {c[rate]:.0f} | {share} | {c['rel_l2']:.1e}{ok} |")
    return lines


def render(rows: list[dict], matmul: dict | None) -> str:
    peak = matmul["tflops"] if matmul else None
    lines = _table("| level | members x tokens, dim -> hidden | GFLOP | path | ms | TFLOP/s | of matmul rate "
                   "| rel L2 vs float32 |", rows, "",
                   lambda r: f"{r['members']} x {r['tokens']:,}, {r['dim']} -> {r['hidden']}", "gflop", "tflops", peak)
    head = (f"bf16 matmul rate measured in the same run (8192^3): {peak:.0f} TFLOP/s. " if peak else "")
    text = (head + "FLOPs: both products, 2 x tokens x dim x 2*hidden per member. 'xla' is the model's "
            "path without the kernel (GEMM, then the gate as an elementwise pass); 'pallas' the kernel.\n\n"
            + "\n".join(lines))
    rows = [r for r in rows if "sequences" in r]
    if not rows:
        return text
    hbm = next((v / 1e9 for k, v in HBM_BYTES_PER_S.items() if k in jax.devices()[0].device_kind), None)
    lines = _table("| level | sequences x tokens x hidden | GB (six passes) | path | ms | GB/s | of HBM "
                   "| max rel L2 vs float32 |", rows, "bwd_",
                   lambda r: f"{r['sequences']} x {r['tokens']:,} x {r['hidden']}", "min_gb", "gbps", hbm)
    return (text + "\n\nThe gate's backward (h again, da, db, the bias's gradient from a, b, dh): GB/s counts "
            "the six activation passes the kernel needs at least, for both paths (XLA's form moves ten); "
            "'of HBM' against the device's peak bandwidth.\n\n" + "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=24)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--backward-sequences", type=int, default=12,
                   help="sequences in the gate-backward timing (the train step's 6 initial conditions x 2 members); 0 skips it")
    p.add_argument("--interpret-smoke", action="store_true",
                   help="CPU check of every code path on a tiny shape in GPU interpret mode; writes nothing")
    args = p.parse_args(argv)
    if args.interpret_smoke:
        from pallas_kernels.testing import interpret

        with interpret():  # raises if a kernel raced
            rows = [bench_level(*level, members=2, iters=1, backward_sequences=2) for level in TINY_LEVELS]
        print(render(rows, None))
        bad = [r for r in rows for path in ("xla", "pallas", "bwd_xla", "bwd_pallas")
               if "error" in r[path] or r[path]["rel_l2"] > TOL_BF16]
        print("interpret smoke:", "FAILED" if bad else "ok (timings on CPU are meaningless)")
        return 1 if bad else 0
    if problem := kernel_device_problem():
        print(f"the kernels need a Hopper GPU: {problem}; use --interpret-smoke on the CPU", file=sys.stderr)
        return 2
    matmul = matmul_rate(args.iters)
    rows = []
    for level in LEVELS:
        rows.append(bench_level(*level, members=args.members, iters=args.iters,
                                backward_sequences=args.backward_sequences))
    body = render(rows, matmul)
    print(body)
    print("->", append_result("gated_mlp", f"cSwiGLU gate kernels vs XLA: up-projection ({args.members} members), "
                                           f"backward ({args.backward_sequences} sequences)", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
