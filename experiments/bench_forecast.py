"""Time ensemble forecasts of the published presets, the way `mosaic-jax forecast` runs them.

Runs the jitted one-step function for all members on one device, pulls
each step to host as the command does, after a one-step warm-up that compiles. Reports wall
time, time per member-step, achieved TFLOP/s and MFU (matrix FLOPs counted from the step's
jaxpr, ``sampler.member_step_flops``) and peak device memory into
experiments/results/forecast.md.

    python experiments/bench_forecast.py --preset paper-era5 --members 24 --steps 10
    python experiments/bench_forecast.py --preset paper-hres --members 24 --steps 40

``--count-only`` runs nothing: it records the forecast's FLOPs and what a wall-time target
means against the peak (the least time at 100% of it, the MFU the target needs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from mosaic_jax.attention import default_impl, require_kernel_device  # noqa: E402
from mosaic_jax.config import ATTENTION_IMPLS, get_config  # noqa: E402
from mosaic_jax.forecast import peak_device_bytes  # noqa: E402
from mosaic_jax.model import init_params  # noqa: E402
from mosaic_jax.sampler import EnsembleSampler, member_keys, member_step_flops  # noqa: E402
from mosaic_jax.training.metrics import PEAK_TFLOPS, peak_flops_per_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-era5")
    ap.add_argument("--members", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--member-chunk", type=int, help="members per device pass (default: all)")
    ap.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    ap.add_argument("--attention-impl", default="auto", choices=ATTENTION_IMPLS)
    ap.add_argument("--repeats", type=int, default=2, help="timed forecasts; the best is reported")
    ap.add_argument("--peak-tflops", type=float, help="peak for MFU (default: from the device kind)")
    ap.add_argument("--count-only", action="store_true", help="count FLOPs against --target-s; run nothing")
    ap.add_argument("--target-s", type=float, nargs="*", default=[],
                    help="wall-time targets to express as the MFU they need (with --count-only)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results")
    args = ap.parse_args()

    cfg = get_config(args.preset)
    flops = member_step_flops(cfg) * args.members * args.steps
    if args.count_only:
        record_work(args, flops)
        return
    require_kernel_device(args.attention_impl)
    dtype = jnp.dtype(args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32"))
    sampler = EnsembleSampler(cfg, dtype=dtype, attention_impl=args.attention_impl)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    history = rng.standard_normal((cfg.num_history_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels)).astype(np.float32)
    static = jnp.asarray(rng.standard_normal((cfg.n_lon, cfg.n_lat, cfg.num_static)).astype(np.float32))
    chunk = args.member_chunk or args.members
    step = jax.jit(sampler.step, donate_argnums=(1, 2))

    def forecast(num_steps: int) -> float:
        start = time.perf_counter()
        for lo in range(0, args.members, chunk):
            ids = jnp.arange(lo, min(lo + chunk, args.members))
            keys = member_keys(jax.random.key(1), ids)
            hist = jnp.broadcast_to(jnp.asarray(history), (len(ids),) + history.shape)
            dy = jnp.zeros((len(ids), 2), jnp.float32)
            for s in range(num_steps):
                hist, dy, new = step(params, hist, dy, static, keys, jnp.int32(s))
                np.asarray(new)  # stream to host as the command does
        return time.perf_counter() - start

    t0 = time.perf_counter()
    lowered = step.lower(params, jnp.zeros((chunk,) + history.shape), jnp.zeros((chunk, 2)), static,
                         member_keys(jax.random.key(1), jnp.arange(chunk)), jnp.int32(0))
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    forecast(1)  # warm-up: compiles every chunk shape and runs each once
    wall = min(forecast(args.steps) for _ in range(args.repeats))
    per = wall / (args.members * args.steps)
    peak = peak_device_bytes()
    peak_flops = peak_flops_per_device(args.peak_tflops)
    impl = default_impl() if args.attention_impl == "auto" else args.attention_impl
    mfu = f"{100 * flops / (wall * peak_flops):.1f}%" if peak_flops else "-"
    lines = [
        "| preset | members | steps | dtype | attention | compile s | wall s | ms / member-step | TFLOP/s | MFU "
        "| peak device memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.preset} | {args.members} | {args.steps} | {dtype.name} | {impl} | {compile_s:.1f} | {wall:.2f} | "
        f"{per * 1e3:.1f} | {flops / wall / 1e12:.3g} | {mfu} | "
        f"{'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'} |",
        "",
        f"compiled step temp memory: {getattr(mem, 'temp_size_in_bytes', 0) / 2**30:.2f} GiB; wall is the best of "
        f"{args.repeats} run(s) after a one-step warm-up, each step pulled to host. {flops / 1e15:.3g} PFLOP in all "
        f"({flops / (args.members * args.steps) / 1e12:.3g} TFLOP per member-step, matrix FLOPs counted from the "
        f"step's jaxpr); MFU"
        + (f" against {peak_flops / 1e12:.0f} TFLOP/s." if peak_flops else " needs a known peak (--peak-tflops)."),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        print("recorded in", append_result("forecast", f"{args.preset}, {args.members} members x {args.steps} steps",
                                            body))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def record_work(args: argparse.Namespace, flops: float) -> None:
    """The forecast's FLOPs and, per wall-time target, the MFU it needs on one H100 / H200."""
    peak = (args.peak_tflops or PEAK_TFLOPS["H100"]) * 1e12
    per = flops / (args.members * args.steps)
    lines = [f"`{args.preset}`, {args.members} members x {args.steps} steps: {flops / 1e15:.3f} PFLOP of matrix "
             f"products ({per / 1e12:.3f} TFLOP per member-step, counted from the forecast step's jaxpr; "
             "elementwise work not counted). Nothing ran.", "",
             _row(["one GPU at", "least wall s (100% of peak)", *(f"MFU needed for {t:g} s" for t in args.target_s)]),
             _row(["---"] * (2 + len(args.target_s))),
             _row([f"{peak / 1e12:.0f} TFLOP/s dense bf16", f"{flops / peak:.2f}",
                   *(f"{100 * flops / (t * peak):.0f}%" for t in args.target_s)])]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        print("recorded in", append_result(
            "forecast", f"{args.preset}, {args.members} members x {args.steps} steps: FLOPs against the targets",
            body, device="none: FLOPs counted from the traced program on the CPU; nothing executed"))


if __name__ == "__main__":
    main()
