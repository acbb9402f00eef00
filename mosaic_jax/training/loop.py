"""The training loop: data, mesh, compiled step, checkpoints, validation, logging.

``train(model_cfg, train_cfg, data_path, workdir)`` trains from scratch or resumes from the
workdir's latest checkpoint. Every process of a multi-host run calls it with the same
arguments (after ``distributed.initialize``); each reads its own slice of every global batch.

Workdir layout::

    train_config.json, model_config.json   the configs of the run (written by process 0)
    stats.npz                              normalization statistics (computed if not given)
    checkpoints/<step>/                    Orbax: state, data-iterator position, metadata
    tensorboard/                           event files
    metrics.jsonl                          the same scalars, one JSON line per logged step
    model/                                 final parameters (``mosaic_jax.checkpoint`` format)
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from mosaic_jax.config import ModelConfig
from mosaic_jax.training import distributed
from mosaic_jax.training import sharding as shd
from mosaic_jax.training.checkpointing import Checkpointer, abstract_with_shardings
from mosaic_jax.training.config import TrainConfig
from mosaic_jax.training.loss import residual_channel_scale
from mosaic_jax.training.metrics import CompiledMemory, Throughput, Writer, device_memory_limit, format_postfix, \
    memory_summary, peak_flops_per_device
from mosaic_jax.training.train_step import BATCH_KEYS, abstract_batch, build_step_fns, fresh_state, init_state, \
    jit_eval_step, jit_train_step, train_step_compiler_options, train_step_flops

STATS_FILE = "stats.npz"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and returns.
    A second signal falls through to the default handler (so a second Ctrl-C kills)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _say(msg: str) -> None:
    if distributed.is_primary():
        from tqdm import tqdm

        tqdm.write(msg)


def split_periods(times: np.ndarray, cfg: ModelConfig, tc: TrainConfig) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``((train_start, train_end), (val_start, val_end))`` of init times.

    Without ``val_start`` the last ``val_fraction`` of the store's times is held out; training
    init times then end early enough that no training target falls in the validation period.
    """
    from mosaic_jax.data.timefeatures import to_datetime64

    if tc.val_start is not None:
        val_lo = to_datetime64(tc.val_start)
    else:
        val_lo = times[min(int(len(times) * (1.0 - tc.val_fraction)), len(times) - 1)]
    val_hi = None if tc.val_end is None else to_datetime64(tc.val_end)
    if tc.train_end is not None:
        train_hi = to_datetime64(tc.train_end)
    else:
        train_hi = val_lo - np.timedelta64(tc.rollout_steps * cfg.step_hours, "h") - np.timedelta64(1, "m")
    train_lo = None if tc.train_start is None else to_datetime64(tc.train_start)
    return (train_lo, train_hi), (val_lo, val_hi)


def _stats(store: Any, workdir: Path, stats_path: str | Path | None, period: tuple[Any, Any], step_hours: int) -> Any:
    from mosaic_jax.data import NormStats, compute_stats

    if stats_path is not None:
        stats = NormStats.load(stats_path)
    elif (workdir / STATS_FILE).exists():
        return NormStats.load(workdir / STATS_FILE)
    else:
        _say("computing normalization statistics over the training period ...")
        stats = compute_stats(store, start=period[0], end=period[1], step_hours=step_hours)
    if distributed.is_primary():
        stats.save(workdir / STATS_FILE)
    return stats


def _replicated_array(x: np.ndarray, sharding: Any) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _check_resume_compatible(meta: dict[str, Any], cfg: ModelConfig) -> None:
    saved = meta.get("model_config")
    if saved is not None and ModelConfig.from_dict(saved) != cfg:
        raise ValueError("the workdir's checkpoint was trained with a different model config; use another --workdir")


def check_step_fits(compiled: Any, tc: TrainConfig, num_devices: int, limit: int | None) -> None:
    """Raise ValueError before the first step where the compiled step's buffers (XLA's
    assignment per device) exceed the allocator's ``limit``: it would fail there anyway, with
    an out-of-memory error that names neither the batch nor the ways to fit it."""
    if limit is None:
        return
    need = CompiledMemory.of(compiled).total
    if need <= limit:
        return
    ways = [f"a smaller --batch-size (now {tc.batch_size})"]
    if tc.overlap_collectives and num_devices > 1:
        ways.append("--no-overlap-collectives (XLA's latency-hiding scheduler keeps more activations live; "
                    "docs/training.md)")
    if not tc.remat:
        ways.append("--remat")
    ways.append("XLA_PYTHON_CLIENT_MEM_FRACTION above its default 0.75")
    raise ValueError(f"the compiled train step needs {need / 2**30:.1f} GiB per device and JAX's allocator has "
                     f"{limit / 2**30:.1f} GiB; to fit, try " + ", or ".join(ways))


def save_final_model(path: Path, params: Any, cfg: ModelConfig, metadata: dict[str, Any]) -> None:
    """The final parameters in ``mosaic_jax.checkpoint``'s format (``forecast`` reads it)."""
    if jax.process_count() == 1:
        from mosaic_jax.checkpoint import save_model

        save_model(path, jax.device_get(params), cfg, metadata=metadata, overwrite=True)
        return
    # several processes: every one takes part in Orbax's (atomic) write; process 0 adds the config
    import shutil

    import orbax.checkpoint as ocp

    from mosaic_jax.checkpoint import CONFIG_FILE, PARAMS_DIR

    from jax.experimental import multihost_utils

    # host numpy copies (no device layout recorded), so any device count can read the model
    host_params = multihost_utils.process_allgather(params, tiled=True)
    if distributed.is_primary() and path.exists():
        shutil.rmtree(path)
    multihost_utils.sync_global_devices("mosaic_final_model_clean")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / PARAMS_DIR, host_params)
        ckptr.wait_until_finished()
    if distributed.is_primary():
        (path / CONFIG_FILE).write_text(json.dumps({"model_config": cfg.to_dict(), **metadata}, indent=1))
    multihost_utils.sync_global_devices("mosaic_final_model_done")


def _evaluate(eval_fn: Callable, params: Any, source: Any, tc: TrainConfig, batch_sharding: Any, static: jax.Array,
              channels: tuple[str, ...]) -> dict[str, float]:
    """Validation metrics averaged over the first ``eval_batches`` batches (fixed order and noise)."""
    from mosaic_jax.data import make_train_iterator

    nproc, pid = jax.process_count(), jax.process_index()
    n = min(tc.eval_batches, len(source) // tc.batch_size)
    it = make_train_iterator(source, batch_size=tc.batch_size // nproc, seed=0, shuffle=False, num_epochs=1,
                             shard_index=pid, shard_count=nproc)
    sums: dict[str, np.ndarray] = {}
    with it:
        for b in range(n):
            host = next(it)
            batch = shd.put_batch({k: host[k] for k in BATCH_KEYS}, batch_sharding)
            key = jax.random.fold_in(jax.random.PRNGKey(tc.seed + 1), b)
            m = jax.device_get(eval_fn(params, batch, static, key))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
    avg = {k: v / n for k, v in sums.items()}
    out = {"val_loss": float(avg["loss"]), "val_crps": float(avg["crps"]),
           "val_rmse": float(np.mean(np.sqrt(avg["mse_per_channel"])))}
    for i, c in enumerate(channels):
        out[f"val_crps/{c}"] = float(avg["crps_per_channel"][i])
        out[f"val_rmse/{c}"] = float(np.sqrt(avg["mse_per_channel"][i]))
    return out


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data_path: str | Path, workdir: str | Path, *,
          progress: bool = True, stats_path: str | Path | None = None, max_steps: int | None = None,
          mesh: Mesh | None = None, init_from: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) and return the final metrics.

    Args:
      model_cfg, train_cfg: the model and the run.
      data_path: a WeatherBench2-layout zarr store holding ``model_cfg.channels``.
      workdir: the run's directory; its latest checkpoint, if any, is resumed.
      progress: show a progress bar (process 0).
      stats_path: normalization statistics (npz); default: ``workdir/stats.npz``, computed over the
        training period if absent.
      max_steps: stop (with a checkpoint) after this many steps of this invocation, e.g. to split a
        run into jobs; the schedule still runs to ``train_cfg.total_steps``.
      mesh: a ready mesh (default: from ``train_cfg.mesh_*``).
      init_from: fine-tuning: a model directory (``mosaic_jax.checkpoint`` format, e.g. a previous
        run's ``workdir/model`` or a converted published checkpoint) whose parameters start the run,
        with a fresh optimizer. Ignored when the workdir already has a checkpoint (that is resumed).
    Returns:
      ``{"step", "loss", "grad_norm", "learning_rate", "total_nonfinite", "stopped", "samples_per_sec",
      "mfu", "flops_per_step", ...last validation metrics}``; ``stopped`` is ``"done"``, ``"max_steps"``
      or ``"signal"``.
    Raises:
      NonFiniteError: after ``max_consecutive_nonfinite`` skipped steps in a row.
    """
    from tqdm import tqdm

    from mosaic_jax.data import TrainingSource, WeatherStore, make_train_iterator

    cfg, tc = model_cfg, train_cfg
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    primary = distributed.is_primary()
    nproc, pid = jax.process_count(), jax.process_index()

    # ---- data --------------------------------------------------------------------------
    store = WeatherStore(data_path, channels=cfg.channels, static_variables=cfg.static_variables,
                         grid=(cfg.n_lon, cfg.n_lat))
    train_period, val_period = split_periods(store.times, cfg, tc)
    stats = _stats(store, workdir, stats_path, train_period, cfg.step_hours)
    if cfg.residual and not cfg.residual_scale:  # the head predicts the change in units of its std
        cfg = dataclasses.replace(cfg, residual_scale=tuple((1.0 / residual_channel_scale(stats)).tolist()))
    window = dict(num_history_steps=cfg.num_history_steps, history_spacing_hours=cfg.history_spacing_hours,
                  step_hours=cfg.step_hours, num_targets=tc.rollout_steps)
    train_src = TrainingSource(store, stats, start=train_period[0], end=train_period[1], **window)
    val_src = TrainingSource(store, stats, start=val_period[0], end=val_period[1], **window) if tc.eval_every else None
    if val_src is not None and len(val_src) < tc.batch_size:
        raise ValueError(f"validation period has {len(val_src)} samples, fewer than one batch of {tc.batch_size}; "
                         "widen it (--val-start/--val-fraction) or pass --eval-every 0")

    # ---- mesh and shardings ------------------------------------------------------------------
    mesh = mesh or shd.make_mesh(tc.mesh_data, tc.mesh_ensemble, tc.mesh_fsdp)
    n_rows = shd.mesh_size(mesh, "batch")
    if tc.batch_size % n_rows or tc.batch_size % nproc:
        raise ValueError(f"batch_size={tc.batch_size} must be divisible by data*fsdp={n_rows} and by the number "
                         f"of processes {nproc}")
    if tc.ensemble_members % mesh.shape[shd.ENSEMBLE]:
        raise ValueError(f"ensemble_members={tc.ensemble_members} is not divisible by the ensemble mesh axis "
                         f"({mesh.shape[shd.ENSEMBLE]})")
    fns = build_step_fns(cfg, tc, mesh, stats)
    key0 = jax.random.PRNGKey(tc.seed)
    abstract_state = jax.eval_shape(lambda k: init_state(cfg, tc, fns.tx, k), key0)
    state_sh = shd.state_shardings(mesh, abstract_state, min_size=tc.fsdp_min_size)
    abstract_state = abstract_with_shardings(abstract_state, state_sh)
    batch_sh, rep = shd.batch_sharding(mesh), shd.replicated(mesh)
    static = _replicated_array(store.static(), rep)

    if primary:
        (workdir / "train_config.json").write_text(tc.to_json())
        (workdir / "model_config.json").write_text(cfg.to_json())

    # ---- state: restore or initialise ---------------------------------------------------------
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, keep=tc.keep_checkpoints, keep_best=tc.keep_best)
    latest = ckpt.latest_step()
    data_state = None
    if latest is not None:
        state, data_state, meta = ckpt.restore(latest, abstract_state)
        _check_resume_compatible(meta, cfg)
        _say(f"resumed from {ckpt.directory / str(latest)} (step {latest})")
    elif init_from is not None:
        from mosaic_jax.checkpoint import load_model

        init_cfg, params = load_model(init_from)
        if init_cfg != cfg:
            raise ValueError(f"--init-from {init_from}: its model config differs from --config")
        state = jax.jit(lambda p: fresh_state(p, fns.tx), out_shardings=state_sh)(params)
        _say(f"fine-tuning from {init_from}")
    else:
        state = jax.jit(lambda k: init_state(cfg, tc, fns.tx, k), out_shardings=state_sh)(key0)
    start = int(jax.device_get(state["step"]))

    it = make_train_iterator(train_src, batch_size=tc.batch_size // nproc, seed=tc.seed,
                             worker_count=tc.worker_count, shard_index=pid, shard_count=nproc)
    if data_state is not None:
        it.set_state(data_state)

    # ---- compile ahead of time ------------------------------------------------------------------
    t0 = time.perf_counter()
    step_fn = jit_train_step(fns, state_sh, batch_sh, rep)
    compiled = step_fn.lower(abstract_state, abstract_batch(cfg, tc, tc.batch_size, batch_sh), static).compile(
        train_step_compiler_options(tc))
    _say(f"compiled train step in {time.perf_counter() - t0:.1f} s on {mesh.devices.size} device(s) "
         f"{dict(mesh.shape)}: {memory_summary(compiled)}")
    check_step_fits(compiled, tc, mesh.devices.size, device_memory_limit())
    peak = peak_flops_per_device(tc.peak_tflops)
    flops = None  # model FLOPs per device per step (no recomputation): MFU's numerator
    if peak is not None:  # counted only where an MFU can be reported (a known accelerator or --peak-tflops)
        flops = train_step_flops(cfg, dataclasses.replace(tc, remat=False)) / mesh.devices.size
        _say(f"{flops:.3g} model FLOPs per device per step; peak {peak / 1e12:.0f} TFLOP/s per device")
    eval_fn = jit_eval_step(fns, state_sh["params"], batch_sh, rep) if val_src is not None else None

    meta = {"model_config": cfg.to_dict(), "train_config": tc.to_dict(), "mesh": dict(mesh.shape),
            "process_count": nproc}
    tp = Throughput(tc.batch_size, flops, peak)
    writer = Writer(workdir / "tensorboard", workdir / "metrics.jsonl")
    stop_at = tc.total_steps if max_steps is None else min(tc.total_steps, start + max_steps)
    last: dict[str, Any] = {}
    val: dict[str, float] = {}
    stopped = "done" if stop_at == tc.total_steps else "max_steps"
    step = start
    pbar = tqdm(total=tc.total_steps, initial=start, disable=not (progress and primary), desc="train",
                unit="step", dynamic_ncols=True)
    try:
        with _StopRequest() as stop, it:
            while step < stop_at:
                if distributed.any_across_processes(stop.signum is not None):
                    stopped = "signal"
                    _say(f"stop requested (signal {stop.signum}): checkpointing step {step} and exiting")
                    break
                host = next(it)
                batch = shd.put_batch({k: host[k] for k in BATCH_KEYS}, batch_sh)
                state, m = compiled(state, batch, static)
                m = {k: v.item() for k, v in jax.device_get(m).items()}
                step += 1
                tp.tick()
                last = m
                if not m["finite"]:
                    _say(f"step {step}: non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}); "
                         f"skipped ({m['consecutive_nonfinite']} in a row, {m['total_nonfinite']} in total)")
                    if m["consecutive_nonfinite"] >= tc.max_consecutive_nonfinite:
                        raise NonFiniteError(
                            f"training stopped at step {step}: {m['consecutive_nonfinite']} consecutive steps had a "
                            f"non-finite loss or gradient (max_consecutive_nonfinite={tc.max_consecutive_nonfinite}); "
                            f"parameters are those of the last finite step; the latest checkpoint is step "
                            f"{ckpt.latest_step()} in {ckpt.directory}. Check the data, or lower the learning rate.")
                pbar.update(1)
                pbar.set_postfix(format_postfix(m, tp), refresh=False)
                if step % tc.log_every == 0:
                    writer.scalars(step, {"train/loss": m["loss"], "train/learning_rate": m["learning_rate"],
                                          "train/grad_norm": m["grad_norm"], "train/skill": m["skill"],
                                          "train/spread": m["spread"], "train/samples_per_sec": tp.samples_per_sec,
                                          "train/mfu": tp.mfu, "train/nonfinite_total": m["total_nonfinite"]})
                do_eval = eval_fn is not None and step % tc.eval_every == 0
                if do_eval:
                    val = _evaluate(eval_fn, state["params"], val_src, tc, batch_sh, static, cfg.channels)
                    tp.reset_clock()
                    writer.scalars(step, {("val/" + k[4:] if k.startswith("val_") else k): v for k, v in val.items()})
                    _say(f"step {step}: val loss {val['val_loss']:.4f}, CRPS {val['val_crps']:.4f}, "
                         f"RMSE {val['val_rmse']:.4f} (normalized units)")
                if step % tc.checkpoint_every == 0 or do_eval:
                    ckpt.save(step, state, it.get_state(), {**meta, "step": step},
                              metrics={"val_loss": val["val_loss"]} if do_eval else None)
            ckpt.save(step, state, it.get_state(), {**meta, "step": step})
            ckpt.wait()
    finally:
        pbar.close()
        writer.close()
        ckpt.close()

    if stopped == "done" and step == tc.total_steps:
        save_final_model(workdir / MODEL_DIR, state["params"], cfg,
                         {"trained_steps": step, "train_config": tc.to_dict(), "stats": str(workdir / STATS_FILE)})
        _say(f"final model written to {workdir / MODEL_DIR}")
    return {"step": step, **last, "stopped": stopped, "samples_per_sec": tp.samples_per_sec, "mfu": tp.mfu,
            "flops_per_step": flops, "step_time": tp.step_time, **val}
