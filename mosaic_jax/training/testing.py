"""Small configurations for tests and CPU smoke runs of the training code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mosaic_jax import variables
from mosaic_jax.config import BottleneckConfig, ModelConfig, StageConfig

if TYPE_CHECKING:
    from mosaic_jax.training.config import TrainConfig

MICRO_CHANNELS = variables.SURFACE_VARIABLES + ("geopotential_500", "temperature_500", "temperature_850")
MICRO_LEVELS = (500, 850)


def micro_config() -> ModelConfig:
    """A 48-pixel model on the 22.5 degree grid (16 x 9), 7 channels: compiles in seconds."""
    stage = StageConfig(nside=2, dim=16, num_heads=2, block_attn_size=16, sparse_block_size=4, sparse_block_count=2,
                        encoder_depth=1, decoder_depth=1, mlp_ratio=2.0, gqa_ratio=1)
    bottleneck = BottleneckConfig(nside=1, dim=16, num_heads=2, block_attn_size=12, sparse_block_size=4,
                                  sparse_block_count=1, depth=1, mlp_ratio=2.0, gqa_ratio=1)
    return ModelConfig(stages=(stage,), bottleneck=bottleneck, k_neighbors=4, num_history_steps=2, n_lon=16, n_lat=9,
                       channels=MICRO_CHANNELS, step_hours=6, history_spacing_hours=6)


def make_micro_store(path: str | Path, *, days: int = 6) -> Path:
    """A synthetic store on the 22.5 degree grid with only the micro config's levels."""
    import numpy as np

    from mosaic_jax.data import make_demo_data

    end = np.datetime64("2020-01-01T00") + np.timedelta64(24 * days - 6, "h")
    return make_demo_data(path, resolution_deg=22.5, start="2020-01-01", end=str(end), freq_hours=6,
                          levels=MICRO_LEVELS, overwrite=True)


def micro_train_config(**overrides) -> TrainConfig:
    from mosaic_jax.training.config import TrainConfig

    base = dict(total_steps=4, warmup_steps=1, batch_size=2, ensemble_members=2, learning_rate=1e-3,
                checkpoint_every=2, eval_every=2, eval_batches=1, log_every=1, compute_dtype="float32",
                fsdp_min_size=0, keep_checkpoints=3)
    base.update(overrides)
    return TrainConfig(**base)


def _worker(argv: list[str] | None = None) -> int:
    """``python -m mosaic_jax.training.testing STORE WORKDIR [--overrides JSON] [--max-steps N]
    [--coordinator HOST:PORT --num-processes N --process-id I] [--nan-from-step S]``: one micro
    training run in this process; prints ``RESULT <json>`` at the end (tests drive it)."""
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("workdir")
    p.add_argument("--overrides", default="{}")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--nan-from-step", type=int, help="make every batch from this step on NaN")
    a = p.parse_args(argv)
    from mosaic_jax.training import distributed

    distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    from mosaic_jax.training import loop

    if a.nan_from_step is not None:
        import numpy as np

        put, count = loop.shd.put_batch, [0]

        def nan_put(batch, sharding):
            count[0] += 1
            if count[0] >= a.nan_from_step:
                batch = dict(batch, history=np.full_like(batch["history"], np.nan))
            return put(batch, sharding)

        loop.shd.put_batch = nan_put
    try:
        result = loop.train(micro_config(), micro_train_config(**json.loads(a.overrides)), a.store, a.workdir,
                            progress=False, max_steps=a.max_steps)
    except loop.NonFiniteError as e:
        print(f"NONFINITE {e}", flush=True)
        return 3
    print("RESULT " + json.dumps({k: v for k, v in result.items() if not k.startswith("val_") or "/" not in k}),
          flush=True)
    return 0



def worker_env(cache_dir: str | Path | None = None, *, cpu_devices: int | None = None) -> dict[str, str]:
    """Environment for a child process: CPU only, optional fake device count (set before jax
    is imported there), a shared persistent compilation cache."""
    import os

    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    if cpu_devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    # tests run tiny programs a few times: cheap LLVM code generation halves compile times
    flags += ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
    env["XLA_FLAGS"] = " ".join(flags)
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def parse_result(stdout: str) -> dict:
    """The ``RESULT {json}`` line a worker prints."""
    import json

    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"no RESULT line in worker output:\n{stdout[-4000:]}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    raise SystemExit(_worker())
