"""Training Mosaic: the almost-fair CRPS objective, sharded train step, Orbax checkpoints, loop.

Public API::

    TrainConfig                      the run's hyper-parameters (frozen, validated)
    crps_loss(pred, target, *, alpha, weights) -> (loss, diagnostics)
    loss_weights / latitude_weights / channel_weights
    make_mesh(data, ensemble, fsdp)  the (data, ensemble, fsdp) device mesh
    train(model_cfg, train_cfg, data_path, workdir, *, progress=True) -> final metrics dict
    load_trained_model(workdir)      (config, params) of a finished run, for forecasting
"""

from mosaic_jax.training.config import TrainConfig
from mosaic_jax.training.loss import channel_weights, crps_loss, crps_pointwise, latitude_weights, loss_weights
from mosaic_jax.training.sharding import MESH_AXES, make_mesh


def train(*args, **kwargs):  # noqa: D103 - documented in loop.train
    from mosaic_jax.training.loop import train as _train

    return _train(*args, **kwargs)


train.__doc__ = "See :func:`mosaic_jax.training.loop.train`."


def load_trained_model(workdir):
    """``(ModelConfig, params)`` of the final model of a run (``<workdir>/model``)."""
    from pathlib import Path

    from mosaic_jax.checkpoint import load_model
    from mosaic_jax.training.loop import MODEL_DIR

    return load_model(Path(workdir) / MODEL_DIR)


__all__ = [
    "MESH_AXES",
    "TrainConfig",
    "channel_weights",
    "crps_loss",
    "crps_pointwise",
    "latitude_weights",
    "load_trained_model",
    "loss_weights",
    "make_mesh",
    "train",
]
