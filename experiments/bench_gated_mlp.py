"""The cSwiGLU up-projection on the GPU: the Pallas kernel (gate in the GEMM epilogue) against XLA.

XLA runs ``silu(x @ W1 + bias) * (x @ W3)`` as a GEMM writing the (N, 2*hidden) product and an
elementwise pass over it; ``pallas_kernels/gated_mlp`` writes only the (N, hidden) result. The
forecast step's roofline (forecast.md) charges both at the tensor cores' peak; this measures
whether the Pallas GEMM gets there. It decides whether ``--attention-impl pallas-fused`` keeps
the kernel.

    python experiments/bench_gated_mlp.py                     # H100: the model's three levels, 24 members
    python experiments/bench_gated_mlp.py --interpret-smoke   # CPU: every code path once, tiny shapes

Per level: median device ms (CUPTI, else wall) of each path, TFLOP/s against the bf16 matmul
rate measured in the same run, and each path's relative L2 error against the float32 product.
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

from pallas_kernels.gated_mlp import gated_up_projection_forward, launch_flops  # noqa: E402

# (level, tokens, dim): the published model's three levels; hidden = 4 * dim (mlp_ratio 4)
LEVELS = [("stage 1 (nside 64)", 49_152, 768), ("stage 2 (nside 32)", 12_288, 1024),
          ("bottleneck (nside 16)", 3_072, 1280)]
TINY_LEVELS = [("tiny", 256, 128)]


def xla_path(x, w13, bias):
    """The model's cSwiGLU up-projection as XLA runs it (modules.CSwiGLU, bf16 compute)."""
    hidden = w13.shape[1] // 2
    ab = jnp.dot(x, w13)
    return nn.silu(ab[..., :hidden] + bias.astype(x.dtype)[:, None, :]) * ab[..., hidden:]


def float32_product(x, w13, bias):
    hidden = w13.shape[1] // 2
    ab = jnp.dot(x.astype(jnp.float32), w13.astype(jnp.float32))
    return nn.silu(ab[..., :hidden] + bias[:, None, :]) * ab[..., hidden:]


def bench_level(name: str, tokens: int, dim: int, members: int, iters: int) -> dict:
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
    return row


def render(rows: list[dict], matmul: dict | None) -> str:
    peak = matmul["tflops"] if matmul else None
    lines = ["| level | members x tokens, dim -> hidden | GFLOP | path | ms | TFLOP/s | of matmul rate | rel L2 vs float32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for path in ("xla", "pallas"):
            c = r[path]
            shape = f"{r['members']} x {r['tokens']:,}, {r['dim']} -> {r['hidden']}"
            if "error" in c:
                lines.append(f"| {r['level']} | {shape} | {r['gflop']:.0f} | {path} | fails: {c['error']} | | | |")
                continue
            share = f"{c['tflops'] / peak:.0%}" if peak else "-"
            ok = "" if c["rel_l2"] <= TOL_BF16 else " (over the 2e-2 bound)"
            lines.append(f"| {r['level']} | {shape} | {r['gflop']:.0f} | {path} | {c['ms']:.3f} | {c['tflops']:.0f} "
                         f"| {share} | {c['rel_l2']:.1e}{ok} |")
    head = (f"bf16 matmul rate measured in the same run (8192^3): {peak:.0f} TFLOP/s. " if peak else "")
    return (head + "FLOPs: both products, 2 x tokens x dim x 2*hidden per member. 'xla' is the model's "
            "path without the kernel (GEMM, then the gate as an elementwise pass); 'pallas' the kernel.\n\n"
            + "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=24)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--interpret-smoke", action="store_true",
                   help="CPU check of every code path on a tiny shape in GPU interpret mode; writes nothing")
    args = p.parse_args(argv)
    if args.interpret_smoke:
        from jax.experimental.pallas import mosaic_gpu as plgpu

        with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
            rows = [bench_level(*level, members=2, iters=1) for level in TINY_LEVELS]
        print(render(rows, None))
        bad = [r for r in rows for path in ("xla", "pallas") if "error" in r[path] or r[path]["rel_l2"] > TOL_BF16]
        print("interpret smoke:", "FAILED" if bad else "ok (timings on CPU are meaningless)")
        return 1 if bad else 0
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        print(f"no GPU ({dev}); use --interpret-smoke on the CPU", file=sys.stderr)
        return 2
    matmul = matmul_rate(args.iters)
    rows = []
    for level in LEVELS:
        rows.append(bench_level(*level, members=args.members, iters=args.iters))
    body = render(rows, matmul)
    print(body)
    print("->", append_result("gated_mlp", f"cSwiGLU up-projection, {args.members} members: kernel vs XLA", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
