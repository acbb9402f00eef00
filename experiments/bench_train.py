"""Training experiments: the loss curve of a small preset on the demo store, and train-step
throughput / MFU / largest batch for a preset (``paper-era5`` by default).

    # loss of the demo preset on the synthetic demo store, a few minutes on a CPU
    .venv/bin/python experiments/bench_train.py loss --minutes 4
    # throughput of paper-era5 (2 members, bf16, per-block remat), batch sweep for the largest that fits
    .venv/bin/python experiments/bench_train.py throughput --preset paper-era5 --batch-sizes 1 2 4 8 16
    # the step's FLOPs and what the MFU target means in initial conditions per second (runs nothing)
    .venv/bin/python experiments/bench_train.py flops --target-mfu 0.35

Both append a dated section to ``experiments/results/train.md``. ``throughput`` times the
compiled train step (AdamW, clipping, CRPS over 2 members) on synthetic batches, so it
measures the model and optimizer, not the data pipeline (``bench_data.py`` does that). MFU is
``model FLOPs / (step time x peak)``, HFU the same with the recomputation of remat counted; FLOPs
are counted from the step's jaxpr (``train_step.train_step_flops``: XLA's cost analysis misses
loop iterations and Pallas kernels). Peak: the device's dense bf16 rate (H100: 989 TFLOP/s) or
``--peak-tflops``; on a CPU none is assumed and MFU is not reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import NOT_OVERLAPPED, append_result  # noqa: E402


# ---------------------------------------------------------------------------------------------
def loss_curve(args: argparse.Namespace) -> None:
    import jax

    from mosaic_jax.config import get_config
    from mosaic_jax.data import make_demo_data
    from mosaic_jax.training import TrainConfig, train

    store = Path(args.store)
    if not store.exists():
        make_demo_data(store, start="2020-01-01", end=args.store_end)
    workdir = Path(args.workdir)
    if workdir.exists() and not args.resume:
        import shutil

        shutil.rmtree(workdir)
    cfg = get_config(args.preset)
    # a time budget: estimate the step count from a step time measured on the first run
    tc = TrainConfig(learning_rate=args.lr, warmup_steps=args.warmup, total_steps=args.steps, batch_size=args.batch,
                     ensemble_members=2, compute_dtype=args.dtype, remat=False, eval_every=args.eval_every,
                     eval_batches=4, checkpoint_every=args.eval_every, log_every=10, seed=0)
    t0 = time.perf_counter()
    result = train(cfg, tc, store, workdir, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    val_rows = [r for r in rows if "val/loss" in r]
    t_start = train_rows[0]["time"] if train_rows else t0

    def window_mean(lo: int, hi: int) -> float:
        vals = [r["train/loss"] for r in train_rows if lo < r["step"] <= hi]
        return sum(vals) / len(vals) if vals else float("nan")

    lines = ["| steps | train loss (mean over the window) | val loss (afCRPS) | val fair CRPS | val ens-mean RMSE |"
             " wall s |", "|---|---|---|---|---|---|"]
    for v in val_rows:
        s = v["step"]
        lines.append(f"| {max(0, s - args.eval_every)}-{s} | {window_mean(s - args.eval_every, s):.4f} | "
                     f"{v['val/loss']:.4f} | {v['val/crps']:.4f} | {v['val/rmse']:.4f} | {v['time'] - t_start:.0f} |")
    body = (f"Loss of the `{args.preset}` preset on the synthetic demo store ({store.name}, 48x25, 82 channels, "
            f"6-hourly, Jan-Apr 2020; last 10% of times held out), CPU, {args.dtype}, batch {args.batch} initial "
            f"conditions x 2 members, AdamW lr {args.lr} (warmup {args.warmup}, cosine to {args.steps} steps). "
            f"Losses in normalized units.\n\n" + "\n".join(lines) +
            f"\n\nTotal wall time {wall:.0f} s including compilation (devices: {jax.device_count()} x "
            f"{jax.devices()[0].platform}); {result.get('samples_per_sec') or 0:.2f} initial conditions/s.")
    print(body)
    if not args.no_record:
        print("->", append_result("train", f"Demo-store loss curve ({args.preset}, CPU)", body))


# ---------------------------------------------------------------------------------------------
def throughput(args: argparse.Namespace) -> None:
    import jax
    import numpy as np

    from mosaic_jax.attention import require_kernel_device
    from mosaic_jax.config import count_from_shapes, get_config
    from mosaic_jax.model import param_shapes
    from mosaic_jax.training import TrainConfig, make_mesh
    from mosaic_jax.training import sharding as shd
    from mosaic_jax.training.checkpointing import abstract_with_shardings
    from mosaic_jax.training.metrics import CompiledMemory, device_memory_limit, peak_flops_per_device
    from mosaic_jax.training.train_step import abstract_batch, build_step_fns, init_state, jit_train_step, \
        train_step_compiler_options, train_step_flops

    require_kernel_device(args.attention_impl)  # else its compile error would be recorded as a batch that fails
    cfg = get_config(args.preset)
    dev = jax.devices()[0]
    n_dev = jax.device_count()
    peak = peak_flops_per_device(args.peak_tflops)
    limit = device_memory_limit() or (args.memory_gb * 2**30 if args.memory_gb else None)
    rows = []
    largest_fit = None
    tc1 = TrainConfig(batch_size=1, ensemble_members=2, compute_dtype=args.dtype, remat=False, total_steps=1000,
                      warmup_steps=10)
    model_flops_1 = train_step_flops(cfg, tc1)  # per initial condition, no recomputation: MFU's numerator
    hardware_flops_1 = model_flops_1 if args.no_remat else train_step_flops(cfg, dataclasses.replace(tc1, remat=True))
    print(f"FLOPs per initial condition: model {model_flops_1:.4g}, with remat {hardware_flops_1:.4g}", flush=True)
    interrupted_at = None  # the batch size being measured when a time limit's SIGINT arrived
    try:
        for b in args.batch_sizes:
            tc = TrainConfig(batch_size=b, ensemble_members=2, compute_dtype=args.dtype, remat=not args.no_remat,
                             attention_impl=args.attention_impl, mesh_fsdp=args.fsdp, total_steps=1000, warmup_steps=10,
                             overlap_collectives=not args.no_overlap_collectives,
                             fsdp_min_size=4096)
            mesh = make_mesh(-1, 1, args.fsdp)
            if b % shd.mesh_size(mesh, "batch"):
                continue
            fns = build_step_fns(cfg, tc, mesh)
            abstract = jax.eval_shape(lambda k: init_state(cfg, tc, fns.tx, k), jax.random.PRNGKey(0))
            sh = shd.state_shardings(mesh, abstract, min_size=tc.fsdp_min_size)
            bsh, rep = shd.batch_sharding(mesh), shd.replicated(mesh)
            static_np = np.random.default_rng(0).standard_normal((cfg.n_lon, cfg.n_lat, cfg.num_static)).astype(np.float32)
            static = jax.device_put(static_np, rep)
            t0 = time.perf_counter()
            try:
                compiled = jit_train_step(fns, sh, bsh, rep).lower(
                    abstract_with_shardings(abstract, sh), abstract_batch(cfg, tc, b, bsh), static).compile(
                    train_step_compiler_options(tc))
            except Exception as e:  # noqa: BLE001 - an out-of-memory compile is a result here
                rows.append({"batch": b, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
                break
            compile_s = time.perf_counter() - t0
            need = CompiledMemory.of(compiled).total
            flops = hardware_flops_1 * b / n_dev  # per device, recomputation included
            row = {"batch": b, "compile_s": compile_s, "mem_gib": need / 2**30, "flops": flops}
            fits = limit is None or need <= limit
            row["fits"] = fits
            if fits and not args.compile_only:
                state = jax.jit(lambda k: init_state(cfg, tc, fns.tx, k), out_shardings=sh)(jax.random.PRNGKey(0))
                rng = np.random.default_rng(1)
                grid = (cfg.n_lon, cfg.n_lat, cfg.num_channels)
                batch = shd.put_batch({"history": rng.standard_normal((b, cfg.num_history_steps, *grid), np.float32),
                                       "targets": rng.standard_normal((b, 1, *grid), np.float32),
                                       "day_year": rng.uniform(size=(b, 2)).astype(np.float32)}, bsh)
                try:
                    state, m = compiled(state, batch, static)
                    jax.block_until_ready(m)
                    times = []
                    for _ in range(args.steps):
                        t = time.perf_counter()
                        state, m = compiled(state, batch, static)
                        jax.block_until_ready(m)
                        times.append(time.perf_counter() - t)
                except Exception as e:  # noqa: BLE001 - a runtime OOM is a result too
                    row.update(fits=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
                    rows.append(row)
                    break
                step = float(np.median(times))
                model_flops = model_flops_1 * b / n_dev
                row.update(step_s=step, samples_per_s=b / step, members_per_s=2 * b / step,
                           mfu=(model_flops / (step * peak)) if peak else None,
                           hfu=(flops / (step * peak)) if peak else None, loss=float(m["loss"]))
                del state
            rows.append(row)
            print(json.dumps(row), flush=True)
            if fits:
                largest_fit = b
            else:
                break
    except KeyboardInterrupt:  # experiments/device/checks.sh's limit: record what was measured
        interrupted_at = b
    n_params = count_from_shapes(param_shapes(cfg))
    head = ("| batch (ICs) | compile s | compiled memory GiB | fits | step s | samples/s (ICs) | member-forecasts/s |"
            " GFLOP/step/device (incl. remat) | MFU | HFU |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "compile_s" not in r:
            lines.append(f"| {r['batch']} | - | - | no ({r['error']}) | | | | | | |")
            continue
        f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"  # noqa: E731
        lines.append(f"| {r['batch']} | {r['compile_s']:.0f} | {f('mem_gib', '%.2f')} | {'yes' if r['fits'] else 'no'} "
                     f"| {f('step_s', '%.3f')} | {f('samples_per_s', '%.3f')} | {f('members_per_s', '%.3f')} | "
                     f"{r['flops'] / 1e9:.0f} | "
                     f"{'-' if r.get('mfu') is None else '%.1f%%' % (100 * r['mfu'])} | "
                     f"{'-' if r.get('hfu') is None else '%.1f%%' % (100 * r['hfu'])} |")
    platform = dev.platform.upper()
    body = (f"Train-step throughput, `{args.preset}` ({n_params:,} parameters), 2 members per initial condition, "
            f"{args.dtype} compute with float32 master weights, {'no remat' if args.no_remat else 'per-block remat'}, "
            f"attention `{args.attention_impl}`, {n_dev} {platform} device(s), mesh fsdp={args.fsdp}"
            f"{NOT_OVERLAPPED if args.no_overlap_collectives else ''}. "
            f"Synthetic batches; median of {args.steps} steps after one warm-up. "
            f"Memory budget: {'%.1f GiB' % (limit / 2**30) if limit else 'none'}; largest batch that fits: "
            f"{largest_fit}. Peak for MFU: "
            f"{'%.0f TFLOP/s' % (peak / 1e12) if peak else 'none (no MFU on ' + platform + ')'}"
            f". MFU counts model FLOPs ({model_flops_1:.4g} per initial condition: the step's matrix FLOPs "
            f"without remat, counted from its jaxpr); HFU counts {hardware_flops_1:.4g}, recomputation "
            f"included.\n\n" + "\n".join(lines))
    if interrupted_at is not None:
        body += f"\n\nStopped by an interrupt (the time limit) while measuring batch {interrupted_at}."
    if args.note:
        body += "\n\n" + args.note
    print(body)
    if not args.no_record:
        print("->", append_result("train", f"Throughput {args.preset} ({platform})", body))


def flops(args: argparse.Namespace) -> None:
    """Model and hardware FLOPs of a train step, and the throughput an MFU target means on an H100."""
    from mosaic_jax.config import get_config
    from mosaic_jax.training import TrainConfig
    from mosaic_jax.training.metrics import PEAK_TFLOPS
    from mosaic_jax.training.train_step import train_step_flops

    cfg = get_config(args.preset)
    tc = TrainConfig(batch_size=1, ensemble_members=args.members, remat=False, total_steps=1000, warmup_steps=10)
    model = train_step_flops(cfg, tc)
    hardware = train_step_flops(cfg, dataclasses.replace(tc, remat=True))
    peak = (args.peak_tflops or PEAK_TFLOPS["H100"]) * 1e12
    lines = [f"`{args.preset}` train step, {args.members} members per initial condition (IC): {model / 1e12:.2f} TFLOP "
             f"of matrix products per IC (model FLOPs: forward and backward, no recomputation), {hardware / 1e12:.2f} "
             "TFLOP with per-block remat; counted from the step's jaxpr, attention as its three branches define it. "
             "Nothing ran.", "",
             "| MFU | ICs/s on one GPU at " f"{peak / 1e12:.0f} TFLOP/s | step s per IC |", "|---|---|---|"]
    for mfu in args.target_mfu:
        rate = mfu * peak / model
        lines.append(f"| {100 * mfu:.0f}% | {rate:.2f} | {1 / rate:.3f} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        print("->", append_result("train", f"{args.preset} train-step FLOPs against the MFU target", body,
                                  device="none: FLOPs counted from the traced program on the CPU; nothing executed"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    lc = sub.add_parser("loss")
    lc.add_argument("--preset", default="demo")
    lc.add_argument("--store", default="/tmp/mosaic_demo_train.zarr")
    lc.add_argument("--store-end", default="2020-04-30T18:00")
    lc.add_argument("--workdir", default="/tmp/mosaic_demo_train_run")
    lc.add_argument("--resume", action="store_true")
    lc.add_argument("--steps", type=int, default=300)
    lc.add_argument("--warmup", type=int, default=20)
    lc.add_argument("--lr", type=float, default=1e-3)
    lc.add_argument("--batch", type=int, default=2)
    lc.add_argument("--dtype", default="float32")
    lc.add_argument("--eval-every", type=int, default=50)
    lc.add_argument("--no-progress", action="store_true")
    lc.add_argument("--no-record", action="store_true")
    lc.set_defaults(func=loss_curve)
    tp = sub.add_parser("throughput")
    tp.add_argument("--preset", default="paper-era5")
    tp.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    tp.add_argument("--dtype", default="bfloat16")
    tp.add_argument("--no-remat", action="store_true")
    tp.add_argument("--attention-impl", default="auto")
    tp.add_argument("--fsdp", type=int, default=1)
    tp.add_argument("--no-overlap-collectives", action="store_true",
                    help="TrainConfig.overlap_collectives=False: XLA's latency-hiding scheduler off")
    tp.add_argument("--steps", type=int, default=5)
    tp.add_argument("--peak-tflops", type=float)
    tp.add_argument("--memory-gb", type=float, help="memory budget where the device reports none (CPU)")
    tp.add_argument("--compile-only", action="store_true", help="only compile and report memory")
    tp.add_argument("--note", help="a line appended to the recorded result")
    tp.add_argument("--no-record", action="store_true")
    tp.set_defaults(func=throughput)
    fl = sub.add_parser("flops", help="count the step's FLOPs; what an MFU target means in ICs/s (runs nothing)")
    fl.add_argument("--preset", default="paper-era5")
    fl.add_argument("--members", type=int, default=2)
    fl.add_argument("--target-mfu", type=float, nargs="+", default=[0.35])
    fl.add_argument("--peak-tflops", type=float, help="default: the H100's dense bf16 rate")
    fl.add_argument("--no-record", action="store_true")
    fl.set_defaults(func=flops)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
