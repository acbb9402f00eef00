"""The interpolations' neighbour gathers, forward and backward: transpose plan vs autodiff.

Autodiff differentiates each of the k gathers ``values[:, idx[:, j]]`` into a scatter-add;
``mosaic_jax.neighbours`` differentiates them into gathers over the table's precomputed
transpose. This times both on the current device at a preset's two interpolation geometries
(lat-lon -> HEALPix and back), the ops the model runs: the key-direction gather
(B, S, H, 3) and the softmax-weighted value sum (B, S, H, dh), and checks that their
gradients agree.

    python experiments/bench_interpolation.py                       # paper-era5, batch of the device's default
    python experiments/bench_interpolation.py --preset demo --members 4

Appends a section to ``experiments/results/interpolation.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import _rel_l2, best_ms, time_fn  # noqa: E402
from common import append_result  # noqa: E402

from mosaic_jax import config, modules, neighbours  # noqa: E402


def ops(impl: str, plan: neighbours.TransposePlan):
    """(key_dirs, weights, values) -> (gathered key dirs, weighted value sum), as the model runs them."""
    if impl == "plan":
        return lambda kd, w, v: (neighbours.gather_neighbours(kd, plan),
                                 neighbours.weighted_neighbour_sum(w, v, plan))
    return lambda kd, w, v: (kd[:, plan.neighbours],
                             neighbours.weighted_neighbour_sum_reference(w, v, plan.neighbours))


def bench_direction(cfg, to_healpix: bool, members: int, dtype, iters: int) -> dict:
    top = cfg.stages[0]
    plan = modules.interpolation_plan(cfg.n_lon, cfg.n_lat, top.nside, cfg.k_neighbors, to_healpix)
    t, k = plan.neighbours.shape
    h, dh = top.num_heads, top.dim // top.num_heads
    ks = jax.random.split(jax.random.key(0), 5)
    key_dirs = jax.random.normal(ks[0], (members, plan.num_sources, h, 3), jnp.float32)
    weights = jax.nn.softmax(jax.random.normal(ks[1], (members, t, k, h), jnp.float32), axis=2)
    values = jax.random.normal(ks[2], (members, plan.num_sources, h, dh), dtype)
    cot_keys = jax.random.normal(ks[3], (members, t, k, h, 3), jnp.float32)
    cot_out = jax.random.normal(ks[4], (members, t, h, dh), jnp.float32)
    args, cots = (key_dirs, weights, values), (cot_keys, cot_out)
    row = {"direction": "lat-lon -> HEALPix" if to_healpix else "HEALPix -> lat-lon",
           "targets x k": f"{t} x {k}", "sources": plan.num_sources,
           "plan": f"width {plan.primary.shape[1]}, {plan.overflow.shape[0]} overflow rows, "
                   f"{plan.overflow_rows.shape[0]} heavy sources"}
    grads = {}
    for impl in ("autodiff", "plan"):
        fn = ops(impl, plan)

        def loss(kd, w, v, cot_keys, cot_out, fn=fn):
            g, out = fn(kd, w, v)
            return jnp.sum(g * cot_keys) + jnp.sum(out * cot_out)

        row[f"{impl} fwd ms"] = best_ms(time_fn(jax.jit(fn), [args], iters))
        grad = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))  # cotangents as arguments, not constants
        row[f"{impl} fwd+bwd ms"] = best_ms(time_fn(grad, [args + cots], iters))
        print(f"  {row['direction']} {impl}: fwd {row[f'{impl} fwd ms']:.3g} ms, "
              f"fwd+bwd {row[f'{impl} fwd+bwd ms']:.3g} ms", flush=True)
        grads[impl] = grad(*args, *cots)[1]
    row["max rel L2 (grads)"] = max(_rel_l2(a, b) for a, b in zip(grads["plan"], grads["autodiff"]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper-era5")
    p.add_argument("--members", type=int, default=None,
                   help="batch of member-forecasts (default: 12 on a GPU, the train step's 6 ICs x 2; 2 on a CPU)")
    p.add_argument("--dtype", default=None, help="values' dtype (default bfloat16 on a GPU, float32 on a CPU)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    members = args.members or (12 if on_gpu else 2)
    dtype = jnp.dtype(args.dtype or ("bfloat16" if on_gpu else "float32"))
    cfg = config.get_config(args.preset)
    rows = [bench_direction(cfg, to_hp, members, dtype, args.iters) for to_hp in (True, False)]
    cols = list(rows[0])
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                      + ["| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
                         + " |" for r in rows])
    body = (f"`{args.preset}` interpolation gathers, {members} member-forecasts, values in {dtype.name}, "
            f"median ms of {args.iters} runs after compilation (device time where CUPTI measures it, else "
            f"wall). `autodiff`: k gathers whose gradients "
            f"are scatter-adds (the model before `mosaic_jax/neighbours.py`); `plan`: the same gathers "
            f"differentiated into gathers over the table's transpose (the model now). fwd+bwd: value and "
            f"gradients of both ops for random cotangents.\n\n{table}")
    print(body)
    if not args.no_record:
        print("appended to", append_result("interpolation", f"Interpolation gathers {args.preset}", body))


if __name__ == "__main__":
    main()
