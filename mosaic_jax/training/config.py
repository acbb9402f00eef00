"""Training configuration: one frozen dataclass, validated on construction.

Every field is also a ``mosaic-jax train`` flag (``--learning-rate``, ``--mesh-fsdp`` ...),
generated from this dataclass, so the command line and the in-process API never drift.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mosaic_jax.config import ATTENTION_IMPLS, require

COMPUTE_DTYPES = ("bfloat16", "float32")
LEVEL_WEIGHTINGS = ("pressure", "uniform")
LOSS_NORMALIZATIONS = ("state", "residual")




@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run.

    Objective (see ``loss.py``): the almost-fair CRPS of ``ensemble_members`` members per
    initial condition, averaged over ``rollout_steps`` autoregressive steps, with WeatherBench2
    cell-area latitude weights and per-channel weights ``variable_weight(var) * level_weight``.

    Attributes:
      learning_rate: peak AdamW learning rate (after linear warmup from 0).
      warmup_steps: linear warmup length; then cosine decay to ``learning_rate * final_lr_fraction``
        at ``total_steps``.
      total_steps: number of optimizer steps of the run (resuming continues up to it).
      grad_clip: clip the global gradient norm to this (0 disables).
      weight_decay, adam_b1, adam_b2: AdamW (decoupled weight decay on every weight; the model
        has no biases or norm scales).
      batch_size: initial conditions per step, over all devices and hosts.
      ensemble_members: M >= 2 members per initial condition, differing only by their noise.
      rollout_steps: K; the loss is the mean over K autoregressive steps, with gradients
        through the rollout (K > 1 is fine-tuning; each member carries its own noise).
      crps_alpha: alpha of the almost-fair CRPS (1: fair CRPS, 0: plain ensemble CRPS;
        AIFS-CRPS uses 0.95).
      variable_weights: ``((name, weight), ...)``; a name is a variable (``temperature``), a
        channel (``temperature_850``) or a surface field; unlisted ones weigh 1.
      level_weighting: ``pressure`` (weight proportional to the level's pressure, mean 1 over the
        variable's levels, as GraphCast/AIFS) or ``uniform``.
      loss_normalization: ``state``: the CRPS of variables normalized by their state std (as the
        model sees them). ``residual``: each channel's CRPS is further scaled by
        ``state_std / residual_std`` (the std of its one-step change), so a channel counts by how
        well its *change* is predicted, as GraphCast normalizes its targets. Slowly changing fields
        (geopotential, temperature) otherwise weigh almost nothing against noisy ones (vertical
        velocity) over a single step. Needs statistics with the residual pair.
      mesh_data, mesh_ensemble, mesh_fsdp: device mesh shape; -1 in ``mesh_data`` takes the
        devices left over. Initial conditions split over data x fsdp, members over ensemble,
        parameters and optimizer state over fsdp.
      fsdp_min_size: parameters with fewer elements stay replicated.
      checkpoint_every, keep_checkpoints, keep_best: checkpoint interval (steps), how many of the
        latest to keep, and how many best by validation loss to keep besides.
      eval_every, eval_batches: validation interval (steps; 0 disables) and batches per validation.
      log_every: TensorBoard scalar interval (steps).
      max_consecutive_nonfinite: stop after this many skipped (non-finite) steps in a row.
      compute_dtype: ``bfloat16`` or ``float32`` activations; parameters and optimizer state stay
        float32 (master weights).
      remat: rematerialise every transformer block (and each rollout step) in the backward pass.
      overlap_collectives: let XLA's latency-hiding scheduler (on by default on GPUs) overlap the
        collectives (FSDP all-gathers, gradient reductions) with compute. To hide them it
        reorders the step and keeps more activations live: paper-era5 under FSDP 8 on 8 H100s
        needs 71.4 GiB per GPU at batch 64 with it and 47.6 without (docs/training.md). The
        collectives of a 214 M-parameter model are small next to its step, so turning this off
        is how to fit more initial conditions per GPU on a multi-GPU mesh. No effect on 1 device.
      attention_impl: ``auto`` | ``xla`` | ``pallas`` | ``pallas-fused``: the attention's and the
        cSwiGLU gate backward's kernels (``pallas`` on an H100 under ``auto``); ``pallas-fused``
        also runs the cSwiGLU up-projection with its gate as one kernel in the forward (the
        backward recomputes the product; without remat that is an extra GEMM per block).
      seed: parameter init, data order and member noise.
      train_start, train_end, val_start, val_end: periods (ISO times) of the store; by default the
        last ``val_fraction`` of the store's times is held out for validation.
      worker_count: grain reader processes (0: threads in this process).
      peak_tflops: peak dense TFLOP/s per device for the MFU estimate (default: from the device kind).
    """

    learning_rate: float = 3e-4
    warmup_steps: int = 1000
    total_steps: int = 100_000
    final_lr_fraction: float = 0.01
    grad_clip: float = 1.0
    weight_decay: float = 0.1
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    batch_size: int = 16
    ensemble_members: int = 2
    rollout_steps: int = 1
    crps_alpha: float = 0.95
    variable_weights: tuple[tuple[str, float], ...] = ()
    level_weighting: str = "pressure"
    loss_normalization: str = "state"
    mesh_data: int = -1
    mesh_ensemble: int = 1
    mesh_fsdp: int = 1
    fsdp_min_size: int = 4096
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    keep_best: int = 1
    eval_every: int = 1000
    eval_batches: int = 4
    log_every: int = 10
    max_consecutive_nonfinite: int = 10
    compute_dtype: str = "bfloat16"
    remat: bool = True
    overlap_collectives: bool = True
    attention_impl: str = "auto"
    seed: int = 0
    train_start: str | None = None
    train_end: str | None = None
    val_start: str | None = None
    val_end: str | None = None
    val_fraction: float = 0.1
    worker_count: int = 0
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        vw = tuple((str(k), float(v)) for k, v in (self.variable_weights.items()
                                                    if isinstance(self.variable_weights, dict)
                                                    else self.variable_weights))
        object.__setattr__(self, "variable_weights", vw)
        require(self.learning_rate > 0, "learning_rate", f"must be positive, got {self.learning_rate}")
        require(self.total_steps >= 1, "total_steps", f"must be >= 1, got {self.total_steps}")
        require(0 <= self.warmup_steps <= self.total_steps, "warmup_steps",
                 f"must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")
        require(0 <= self.final_lr_fraction <= 1, "final_lr_fraction", "must be in [0, 1]")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.ensemble_members >= 1, "ensemble_members", f"must be >= 1, got {self.ensemble_members}")
        require(self.rollout_steps >= 1, "rollout_steps", f"must be >= 1, got {self.rollout_steps}")
        require(0.0 <= self.crps_alpha <= 1.0, "crps_alpha", f"must be in [0, 1], got {self.crps_alpha}")
        require(all(w >= 0 for _, w in vw), "variable_weights", "weights must be >= 0")
        require(self.level_weighting in LEVEL_WEIGHTINGS, "level_weighting",
                 f"must be one of {LEVEL_WEIGHTINGS}, got {self.level_weighting!r}")
        require(self.loss_normalization in LOSS_NORMALIZATIONS, "loss_normalization",
                 f"must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}")
        require(self.mesh_data == -1 or self.mesh_data >= 1, "mesh_data", "must be >= 1 or -1 (all the rest)")
        require(self.mesh_ensemble >= 1, "mesh_ensemble", "must be >= 1")
        require(self.mesh_fsdp >= 1, "mesh_fsdp", "must be >= 1")
        require(self.ensemble_members % self.mesh_ensemble == 0, "mesh_ensemble",
                 f"ensemble_members={self.ensemble_members} is not divisible by mesh_ensemble={self.mesh_ensemble}")
        require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        require(self.keep_best >= 0, "keep_best", "must be >= 0")
        require(self.eval_every >= 0, "eval_every", "must be >= 0 (0 disables validation)")
        require(self.eval_batches >= 1, "eval_batches", "must be >= 1")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite", "must be >= 1")
        require(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype",
                 f"must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        require(self.attention_impl in ATTENTION_IMPLS, "attention_impl",
                 f"must be one of {', '.join(ATTENTION_IMPLS)}, got {self.attention_impl!r}")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        require(self.worker_count >= 0, "worker_count", "must be >= 0")
        require(self.peak_tflops is None or self.peak_tflops > 0, "peak_tflops", "must be positive")

    # ---- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variable_weights"] = [list(x) for x in self.variable_weights]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train config: unknown field(s) {unknown}")
        d = dict(d)
        if "variable_weights" in d and not isinstance(d["variable_weights"], dict):
            d["variable_weights"] = tuple(tuple(x) for x in d["variable_weights"])
        return cls(**d)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "TrainConfig":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
