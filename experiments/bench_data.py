"""Training-sample throughput from a local 1.5 deg store with all 82 channels.

    .venv/bin/python experiments/bench_data.py [--store /tmp/mosaic_bench_1p5.zarr] [--samples 96]

Writes a synthetic 1.5 deg store (one month, 6-hourly) the first time, then times the
era5-variant samples (history 2 x 24 h, one 24 h target; 3 full states read,
normalized and batched per sample) through ``make_train_iterator`` single process and
with worker processes. Prints a markdown table and appends it, dated, to
experiments/results/data.md (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_result  # noqa: E402

from mosaic_jax.data import (NormStats, TrainingSource, WeatherStore, compute_stats, make_demo_data,  # noqa: E402
                             make_train_iterator)


def _source(store_path: Path) -> TrainingSource:
    store = WeatherStore(store_path, grid=(240, 121))
    stats_path = store_path.with_suffix(".stats.npz")
    if not stats_path.exists():
        compute_stats(store, step_hours=24).save(stats_path)
    return TrainingSource(store, NormStats.load(stats_path), num_history_steps=2, history_spacing_hours=24,
                          step_hours=24, num_targets=1)


def _time_iterator(source: TrainingSource, *, samples: int, batch_size: int, **kw) -> tuple[float, float, float]:
    """(seconds to the first batch, steady samples/s after it, CPU ms per sample in this
    process: what the loader takes from a training process)."""
    t0 = time.perf_counter()
    it = make_train_iterator(source, batch_size=batch_size, seed=0, **kw)
    next(it)
    t1, c1 = time.perf_counter(), time.process_time()
    n = 0
    while n < samples:
        batch = next(it)
        n += batch["history"].shape[0]
    t2, c2 = time.perf_counter(), time.process_time()
    it.close()
    return t1 - t0, n / (t2 - t1), 1000 * (c2 - c1) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=Path("/tmp/mosaic_bench_1p5.zarr"))
    ap.add_argument("--samples", type=int, default=96, help="samples timed per configuration")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to results/data.md")
    args = ap.parse_args()

    if not args.store.exists():
        t = time.perf_counter()
        make_demo_data(args.store, resolution_deg=1.5, start="2020-01-01", end="2020-01-31T18:00", progress=True)
        print(f"generated {args.store} in {time.perf_counter() - t:.1f} s")
    source = _source(args.store)
    sample_mb = sum(v.nbytes for v in source[0].values()) / 2**20
    print(f"{source}\nsample: {sample_mb:.1f} MiB ({', '.join(f'{k} {v.shape}' for k, v in source[0].items())})")

    # the bare source, no grain: what one core does
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(source))[: min(args.samples, len(source))]
    t, c = time.perf_counter(), time.process_time()
    for i in idx:
        source[int(i)]
    raw = len(idx) / (time.perf_counter() - t)
    raw_cpu = 1000 * (time.process_time() - c) / len(idx)

    rows = [("source[i] loop (no grain)", "-", "-", 0.0, raw, raw_cpu)]
    configs = [(0, 1), (0, 2), (0, 4), (1, 1), (2, 1), (2, 2), (3, 1)]
    for workers, threads in configs:
        first, rate, cpu = _time_iterator(source, samples=args.samples, batch_size=args.batch_size,
                                          worker_count=workers, num_threads=threads)
        name = f"make_train_iterator(batch_size={args.batch_size})"
        rows.append((name, str(workers), str(threads), first, rate, cpu))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"{source}; sample {sample_mb:.1f} MiB (3 full states). Machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, load average at the end {load} (other jobs share the machine); "
             f"store {args.store} in the page cache; {args.samples} samples timed per row after the first batch.", "",
             "| pipeline | worker processes | reader threads / process | first batch (s) | samples/s "
             "| main-process CPU ms / sample |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {w} | {th} | {first:.2f} | {rate:.1f} | {cpu:.0f} |"
              for name, w, th, first, rate, cpu in rows]
    body = "\n".join(lines)
    print("\n" + body)
    if not args.no_write:
        print(f"appended to {append_result('data', 'Sample throughput, 1.5 deg, 82 channels', body)}")


if __name__ == "__main__":
    main()
