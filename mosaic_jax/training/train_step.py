"""The train and eval steps as pure functions of (state, batch), ready for ``jax.jit``.

State is a dict pytree (Orbax saves it as is)::

    {"step": int32, "params": float32 tree, "opt_state": optax state,
     "consecutive_nonfinite": int32, "total_nonfinite": int32}

A step whose loss or gradient norm is not finite keeps ``params`` and ``opt_state`` (so the
learning-rate schedule does not advance either), increments the counters, and still advances
``step`` (the batch is consumed). Member noise is drawn from ``fold_in(seed, step)``, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from mosaic_jax.attention import BatchSharding
from mosaic_jax.config import ModelConfig
from mosaic_jax.flop_count import count_flops
from mosaic_jax.model import Mosaic, init_params
from mosaic_jax.training import sharding as shd
from mosaic_jax.training.config import TrainConfig
from mosaic_jax.training.loss import crps_loss, ensemble_mean_mse_per_channel

State = dict[str, Any]
Batch = dict[str, jax.Array]

BATCH_KEYS = ("history", "targets", "day_year")


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, cosine decay to ``final_lr_fraction`` of it."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_steps,
        decay_steps=max(tc.total_steps, tc.warmup_steps + 1), end_value=tc.learning_rate * tc.final_lr_fraction)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the float32 master weights."""
    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts.append(optax.adamw(learning_rate_schedule(tc), b1=tc.adam_b1, b2=tc.adam_b2,
                             weight_decay=tc.weight_decay))
    return optax.chain(*parts)


def make_model(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh | None = None) -> Mosaic:
    """The model as the train step runs it; on a mesh, the batch the model sees (members x
    initial conditions) is split over ``AXIS_RULES["batch_member"]``."""
    dtype = jnp.bfloat16 if tc.compute_dtype == "bfloat16" else jnp.float32
    batch = None if mesh is None else BatchSharding(mesh, shd.AXIS_RULES["batch_member"])
    return Mosaic(cfg, dtype=dtype, attention_impl=tc.attention_impl, remat=tc.remat, batch_sharding=batch)


def fresh_state(params: Any, tx: optax.GradientTransformation) -> State:
    """Step 0 with ``params`` (float32 master copy) and a new optimizer state."""
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
    zero = jnp.zeros((), jnp.int32)
    return {"step": zero, "params": params, "opt_state": tx.init(params),
            "consecutive_nonfinite": zero, "total_nonfinite": zero}


def init_state(cfg: ModelConfig, tc: TrainConfig, tx: optax.GradientTransformation, key: jax.Array) -> State:
    """From-scratch parameters (SPEC.md's init) and a new optimizer state."""
    return fresh_state(init_params(cfg, key), tx)


def advance_day_year(day_year: jax.Array, step_hours: float) -> jax.Array:
    """Day progress += step/24 and year progress += step/24/365.25, both modulo 1."""
    inc = jnp.asarray([step_hours / 24.0, step_hours / 24.0 / 365.25], jnp.float32)
    return jnp.mod(day_year + inc, 1.0)


@dataclasses.dataclass(frozen=True)
class StepFns:
    """Everything a run jits: built once from the configs, the mesh and the static fields."""

    cfg: ModelConfig
    tc: TrainConfig
    mesh: Mesh | None
    loss_weights: Any          # (lat, C) float32
    lat_weights: Any           # (lat,) float32
    tx: optax.GradientTransformation

    @property
    def model(self) -> Mosaic:
        return make_model(self.cfg, self.tc, self.mesh)

    def _constrain(self, x: jax.Array, *logical: str | None) -> jax.Array:
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, shd.logical_spec(*logical)))

    def rollout(self, params: Any, history: jax.Array, day_year: jax.Array, static: jax.Array, key: jax.Array,
                *, members: int, steps: int, remat: bool) -> jax.Array:
        """``(K, M, B, lon, lat, C)`` autoregressive ensemble forecasts, gradients through all of it.

        Every member gets fresh noise at every step (``fold_in(key, k)``, drawn per initial
        condition and member so the draw does not depend on the mesh). The rollout is a
        ``lax.scan``; with ``remat`` each step is rematerialised, so the backward pass keeps
        only the states between steps.
        """
        cfg = self.cfg
        b = history.shape[0]
        model = self.model
        # member-major flattening (m, b): the members of a row sit on the ensemble mesh axis
        x = jnp.broadcast_to(history[None], (members, *history.shape)).reshape(members * b, *history.shape[1:])
        dy = jnp.broadcast_to(day_year[None], (members, b, 2)).reshape(members * b, 2)
        x = self._constrain(x, "batch_member")

        def one_step(carry: tuple[jax.Array, jax.Array], k: jax.Array) -> tuple[Any, jax.Array]:
            x, dy = carry
            eps = jax.random.normal(jax.random.fold_in(key, k), (members, b, cfg.noise_dim), jnp.float32)
            eps = self._constrain(eps.reshape(members * b, cfg.noise_dim), "batch_member")
            y = model.apply({"params": params}, x, dy, eps, static)
            y = self._constrain(y, "batch_member")
            x_next = jnp.concatenate([x[:, 1:], y[:, None].astype(x.dtype)], axis=1)
            return (x_next, advance_day_year(dy, cfg.step_hours)), y

        if remat and steps > 1:
            one_step = jax.checkpoint(one_step)
        _, ys = jax.lax.scan(one_step, (x, dy), jnp.arange(steps))
        return ys.reshape(steps, members, b, *ys.shape[2:])

    def loss(self, params: Any, batch: Batch, static: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
        """Mean over the K rollout steps of the weighted almost-fair CRPS."""
        tc = self.tc
        k = tc.rollout_steps
        preds = self.rollout(params, batch["history"], batch["day_year"], static, key,
                             members=tc.ensemble_members, steps=k, remat=tc.remat)
        targets = jnp.swapaxes(batch["targets"][:, :k], 0, 1)  # (K, B, lon, lat, C)
        losses, diags = [], []
        for i in range(k):
            loss_i, diag_i = crps_loss(preds[i], targets[i], alpha=tc.crps_alpha, weights=self.loss_weights)
            losses.append(loss_i)
            diags.append(diag_i)
        loss = jnp.mean(jnp.stack(losses))
        diag = jax.tree_util.tree_map(lambda *a: jnp.mean(jnp.stack(a), axis=0), *diags)
        return loss, diag

    def train_step(self, state: State, batch: Batch, static: jax.Array) -> tuple[State, dict[str, jax.Array]]:
        tc = self.tc
        key = jax.random.fold_in(jax.random.PRNGKey(tc.seed), state["step"])
        (loss, diag), grads = jax.value_and_grad(self.loss, has_aux=True)(state["params"], batch, static, key)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = self.tx.update(grads, state["opt_state"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)

        def keep_if_bad(new: Any, old: Any) -> Any:
            return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)

        applied = state["step"] - state["total_nonfinite"]  # optimizer updates so far
        bad = (~ok).astype(jnp.int32)
        new_state = {
            "step": state["step"] + 1,
            "params": keep_if_bad(new_params, state["params"]),
            "opt_state": keep_if_bad(new_opt, state["opt_state"]),
            "consecutive_nonfinite": jnp.where(ok, 0, state["consecutive_nonfinite"] + 1).astype(jnp.int32),
            "total_nonfinite": state["total_nonfinite"] + bad,
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate_schedule(tc)(applied),
                   "skill": diag["skill"], "spread": diag["spread"], "finite": ok,
                   "consecutive_nonfinite": new_state["consecutive_nonfinite"],
                   "total_nonfinite": new_state["total_nonfinite"]}
        return new_state, metrics

    def eval_step(self, params: Any, batch: Batch, static: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """Validation over the K rollout steps: the objective, the fair CRPS and the ensemble-mean
        MSE per channel (latitude-weighted, normalized units), as sums over the batch."""
        tc = self.tc
        k = tc.rollout_steps
        preds = self.rollout(params, batch["history"], batch["day_year"], static, key,
                             members=tc.ensemble_members, steps=k, remat=False)
        targets = jnp.swapaxes(batch["targets"][:, :k], 0, 1)
        loss = jnp.mean(jnp.stack([crps_loss(preds[i], targets[i], alpha=tc.crps_alpha,
                                             weights=self.loss_weights)[0] for i in range(k)]))
        fair = jnp.stack([crps_loss(preds[i], targets[i], alpha=1.0, weights=self.lat_weights[:, None])[1][
            "crps_per_channel"] for i in range(k)])  # (K, C)
        mse = jnp.stack([ensemble_mean_mse_per_channel(preds[i], targets[i], self.lat_weights) for i in range(k)])
        return {"loss": loss, "crps_per_channel": fair[-1], "mse_per_channel": mse[-1],
                "crps": jnp.mean(fair[-1]), "rmse": jnp.mean(jnp.sqrt(mse[-1]))}


def build_step_fns(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh | None, stats: Any = None) -> StepFns:
    """The jitted step functions' ingredients; ``stats`` (``NormStats``) is needed only for
    ``tc.loss_normalization == 'residual'``."""
    from mosaic_jax.training.loss import latitude_weights, loss_weights, residual_channel_scale

    if tc.rollout_steps > 1 and cfg.history_spacing_hours != cfg.step_hours:
        raise ValueError(f"rollout_steps: a rollout of {tc.rollout_steps} steps feeds predictions back as history, "
                         f"which needs history_spacing_hours ({cfg.history_spacing_hours}) == step_hours "
                         f"({cfg.step_hours})")
    scale = residual_channel_scale(stats) if tc.loss_normalization == "residual" else None
    lw = jnp.asarray(loss_weights(cfg.latitudes, cfg.channels, variable_weights=tc.variable_weights,
                                  level_weighting=tc.level_weighting, channel_scale=scale))
    latw = jnp.asarray(latitude_weights(cfg.latitudes), jnp.float32)
    return StepFns(cfg=cfg, tc=tc, mesh=mesh, loss_weights=lw, lat_weights=latw, tx=make_optimizer(tc))


def abstract_batch(cfg: ModelConfig, tc: TrainConfig, batch_size: int, sharding: Any = None) -> Batch:
    f32 = jnp.float32
    grid = (cfg.n_lon, cfg.n_lat, cfg.num_channels)
    return {"history": jax.ShapeDtypeStruct((batch_size, cfg.num_history_steps, *grid), f32, sharding=sharding),
            "targets": jax.ShapeDtypeStruct((batch_size, tc.rollout_steps, *grid), f32, sharding=sharding),
            "day_year": jax.ShapeDtypeStruct((batch_size, 2), f32, sharding=sharding)}


def jit_train_step(fns: StepFns, state_sharding: Any, batch_sharding: Any, static_sharding: Any) -> Callable:
    """``jax.jit`` with explicit shardings; the state is donated."""
    metric_sharding = None if fns.mesh is None else shd.replicated(fns.mesh)
    return jax.jit(fns.train_step, in_shardings=(state_sharding, batch_sharding, static_sharding),
                   out_shardings=(state_sharding, metric_sharding), donate_argnums=(0,))


def train_step_compiler_options(tc: TrainConfig) -> dict[str, bool]:
    """XLA options for compiling the train step (``lowered.compile(...)``): every caller that
    compiles it passes these, so a step measured ahead of time is the step that runs."""
    return {} if tc.overlap_collectives else {"xla_gpu_enable_latency_hiding_scheduler": False}


def lower_train_step(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh) -> jax.stages.Lowered:
    """The jitted train step lowered for abstract state, batch and statics on ``mesh``: nothing
    is allocated. For compiling ahead of time (memory, cost analysis), also on compile-only
    devices (``mosaic_jax.deviceless``)."""
    from mosaic_jax.training.checkpointing import abstract_with_shardings

    fns = build_step_fns(cfg, tc, mesh)
    abstract = jax.eval_shape(lambda k: init_state(cfg, tc, fns.tx, k), jax.random.key(0))
    sh = shd.state_shardings(mesh, abstract, min_size=tc.fsdp_min_size)
    bsh, rep = shd.batch_sharding(mesh), shd.replicated(mesh)
    static = jax.ShapeDtypeStruct((cfg.n_lon, cfg.n_lat, cfg.num_static), jnp.float32, sharding=rep)
    return jit_train_step(fns, sh, bsh, rep).lower(abstract_with_shardings(abstract, sh),
                                                   abstract_batch(cfg, tc, tc.batch_size, bsh), static)


def train_step_flops(cfg: ModelConfig, tc: TrainConfig, batch_size: int | None = None) -> float:
    """Matrix FLOPs of one train step over the whole batch, counted from its jaxpr
    (``mosaic_jax.flop_count``): with ``tc.remat`` the recomputation is included (hardware
    FLOPs), without it they are the model FLOPs that MFU divides by. The attention is traced
    on its pure-JAX path, which defines the FLOPs the Pallas kernels perform; nothing runs.
    """
    tc = dataclasses.replace(tc, attention_impl="xla", mesh_data=1, mesh_ensemble=1, mesh_fsdp=1,
                             batch_size=batch_size or tc.batch_size, loss_normalization="state")
    fns = build_step_fns(cfg, tc, None)
    state = jax.eval_shape(lambda k: init_state(cfg, tc, fns.tx, k), jax.random.key(0))
    static = jax.ShapeDtypeStruct((cfg.n_lon, cfg.n_lat, cfg.num_static), jnp.float32)
    return count_flops(fns.train_step, state, abstract_batch(cfg, tc, tc.batch_size), static)


def jit_eval_step(fns: StepFns, params_sharding: Any, batch_sharding: Any, static_sharding: Any) -> Callable:
    rep = None if fns.mesh is None else shd.replicated(fns.mesh)
    return jax.jit(fns.eval_step, in_shardings=(params_sharding, batch_sharding, static_sharding, rep),
                   out_shardings=rep)
