"""Time ensemble forecasts of the published presets, the way `mosaic-jax forecast` runs them.

Runs the jitted one-step function for all members (sharded over the local devices), pulls
each step to host as the command does, after one warm-up pass that compiles. Reports wall
time, time per member-step and peak device memory into experiments/results/forecast.md.

    python experiments/bench_forecast.py --preset paper-era5 --members 24 --steps 10
    python experiments/bench_forecast.py --preset paper-hres --members 24 --steps 40
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

from mosaic_jax.config import get_config  # noqa: E402
from mosaic_jax.forecast import peak_device_bytes  # noqa: E402
from mosaic_jax.model import init_params  # noqa: E402
from mosaic_jax.sampler import EnsembleSampler, member_keys  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-era5")
    ap.add_argument("--members", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--member-chunk", type=int, help="members per device pass (default: all)")
    ap.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    ap.add_argument("--attention-impl", default="auto")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to results")
    args = ap.parse_args()

    cfg = get_config(args.preset)
    dtype = jnp.dtype(args.dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32"))
    sampler = EnsembleSampler(cfg, dtype=dtype, attention_impl=args.attention_impl)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    history = rng.standard_normal((cfg.num_history_steps, cfg.n_lon, cfg.n_lat, cfg.num_channels)).astype(np.float32)
    static = jnp.asarray(rng.standard_normal((cfg.n_lon, cfg.n_lat, cfg.num_static)).astype(np.float32))
    chunk = args.member_chunk or args.members
    step = jax.jit(sampler.step, donate_argnums=(1, 2))

    def forecast() -> float:
        start = time.perf_counter()
        for lo in range(0, args.members, chunk):
            ids = jnp.arange(lo, min(lo + chunk, args.members))
            keys = member_keys(jax.random.key(1), ids)
            hist = jnp.broadcast_to(jnp.asarray(history), (len(ids),) + history.shape)
            dy = jnp.zeros((len(ids), 2), jnp.float32)
            for s in range(args.steps):
                hist, dy, new = step(params, hist, dy, static, keys, jnp.int32(s))
                np.asarray(new)  # stream to host as the command does
        return time.perf_counter() - start

    t0 = time.perf_counter()
    lowered = step.lower(params, jnp.zeros((chunk,) + history.shape), jnp.zeros((chunk, 2)), static,
                         member_keys(jax.random.key(1), jnp.arange(chunk)), jnp.int32(0))
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    forecast()  # warm-up
    wall = min(forecast() for _ in range(2))
    per = wall / (args.members * args.steps)
    peak = peak_device_bytes()
    lines = [
        f"| preset | members | steps | dtype | compile s | wall s | ms / member-step | peak device memory |",
        "|---|---|---|---|---|---|---|---|",
        f"| {args.preset} | {args.members} | {args.steps} | {dtype.name} | {compile_s:.1f} | {wall:.2f} | "
        f"{per * 1e3:.1f} | {'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'} |",
        "",
        f"compiled step temp memory: {getattr(mem, 'temp_size_in_bytes', 0) / 2**30:.2f} GiB; wall is the best of "
        "2 runs after one warm-up, each step pulled to host.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        print("recorded in", append_result("forecast", f"{args.preset}, {args.members} members x {args.steps} steps",
                                            body))


if __name__ == "__main__":
    main()
