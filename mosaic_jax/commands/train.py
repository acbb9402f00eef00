"""``mosaic-jax train``: train or fine-tune Mosaic; resumes from the workdir's latest checkpoint.

Every ``TrainConfig`` field is a flag (``--learning-rate``, ``--rollout-steps``, ``--mesh-fsdp`` ...);
``--train-config FILE`` reads a JSON of fields first, flags override it. Multi-host runs start one
process per host (or per GPU) with the same command; the coordinator comes from
``--coordinator-address/--num-processes/--process-id``, from ``MOSAIC_COORDINATOR_ADDRESS`` etc.,
or from SLURM (``srun``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from mosaic_jax.training.config import TrainConfig

    g = p.add_argument_group("training configuration (defaults: mosaic_jax.training.TrainConfig)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        t = hints[f.name]
        default = f.default
        if f.name == "variable_weights":
            g.add_argument(_flag(f.name), default=None, metavar="VAR=W,...",
                           help="per-variable (or per-channel) loss weights, e.g. "
                                "'2m_temperature=1,mean_sea_level_pressure=0.1' (others 1)")
            continue
        if t is bool:
            g.add_argument(_flag(f.name), default=None, action=argparse.BooleanOptionalAction,
                           help=f"(default {default})")
            continue
        args = typing.get_args(t)
        base = next((a for a in args if a is not type(None)), t) if isinstance(t, types.UnionType) else t
        g.add_argument(_flag(f.name), type=base, default=None, metavar=base.__name__.upper(),
                       help=f"(default {default})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune Mosaic (CRPS, sharded, resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="model: preset name (tiny, demo, paper-era5, ...) or JSON file")
    p.add_argument("--data", required=True, help="training store (WeatherBench2-layout zarr)")
    p.add_argument("--workdir", required=True, help="run directory; its latest checkpoint is resumed")
    p.add_argument("--stats", help="normalization statistics .npz (default: workdir/stats.npz, computed if absent)")
    p.add_argument("--init-from", help="fine-tune: start from this model directory's parameters (fresh optimizer)")
    p.add_argument("--train-config", help="JSON file of TrainConfig fields (flags override it)")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps of this invocation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("multi-process (default: single process, or SLURM when srun runs several tasks)")
    d.add_argument("--coordinator-address", help="host:port of process 0")
    d.add_argument("--num-processes", type=int)
    d.add_argument("--process-id", type=int)
    d.add_argument("--cpu-devices", type=int,
                   help="CPU only: run on this many (fake) CPU devices, e.g. 8 to try a mesh without GPUs")
    _add_config_flags(p)
    p.set_defaults(func=run)


def train_config_from_args(args: argparse.Namespace) -> Any:
    from mosaic_jax.training.config import TrainConfig

    fields: dict[str, Any] = {}
    if args.train_config:
        fields.update(json.loads(open(args.train_config).read()))
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if f.name == "variable_weights":
            pairs = [x.split("=") for x in v.split(",") if x.strip()]
            if any(len(x) != 2 for x in pairs):
                raise ValueError(f"--variable-weights: expected VAR=W,..., got {v!r}")
            v = tuple((k.strip(), float(w)) for k, w in pairs)
        fields[f.name] = v
    return TrainConfig.from_dict(fields)


def run(args: argparse.Namespace) -> int:
    if args.cpu_devices:
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from mosaic_jax.training import distributed

    info = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from mosaic_jax.attention import require_kernel_device
    from mosaic_jax.config import get_config
    from mosaic_jax.training.loop import NonFiniteError, train

    cfg = get_config(args.config)
    tc = train_config_from_args(args)
    require_kernel_device(tc.attention_impl)
    if info.num_processes > 1 and info.process_id == 0:
        print(f"distributed: {info.num_processes} processes ({info.source})")
    try:
        result = train(cfg, tc, args.data, args.workdir, progress=not args.no_progress, stats_path=args.stats,
                       max_steps=args.max_steps, init_from=args.init_from)
    except NonFiniteError as e:
        print(f"mosaic-jax train: {e}", file=sys.stderr)
        return 1
    if distributed.is_primary():
        keys = ("step", "stopped", "loss", "val_loss", "val_crps", "val_rmse", "samples_per_sec", "mfu")
        print(json.dumps({k: result.get(k) for k in keys}))
    return 0
