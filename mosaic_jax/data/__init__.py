"""Data layer: WeatherBench2 zarr stores, normalization statistics, training samples,
and the embedded synthetic dataset (see ``docs`` and SPEC.md for the conventions)."""

from mosaic_jax.data.demo import make_demo_data
from mosaic_jax.data.normalization import NormStats, compute_stats
from mosaic_jax.data.pipeline import TrainingSource, TrainIterator, make_train_iterator
from mosaic_jax.data.store import WeatherStore, open_store
from mosaic_jax.data.timefeatures import day_year_progress

__all__ = [
    "NormStats",
    "TrainIterator",
    "TrainingSource",
    "WeatherStore",
    "compute_stats",
    "day_year_progress",
    "make_demo_data",
    "make_train_iterator",
    "open_store",
]
