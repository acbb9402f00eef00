"""Training samples and the iterator that feeds them to the train step.

A :class:`TrainingSource` is random access (an index -> one sample), so grain can
shuffle it deterministically per epoch, split it across worker processes and record
its position exactly. Batches are formed before the worker split, so a batch's
contents do not depend on the number of workers.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from mosaic_jax.data.normalization import NormStats
from mosaic_jax.data.store import WeatherStore
from mosaic_jax.data.timefeatures import (day_year_progress, format_time, hours_since_epoch, to_datetime64,
                                          to_datetime64_array)


class TrainingSource:
    """Samples for init times: ``num_history_steps`` states ``history_spacing_hours``
    apart ending at the init time, and ``num_targets`` states ``step_hours`` apart after it.

    ``sample = {history (T, lon, lat, C), targets (K, lon, lat, C)`` (both normalized
    with the state statistics), ``day_year (2,)`` at the init time, ``init_time``
    (int64 hours since 1970)``}``. Init times are ``init_times`` if given, else every
    store time in ``[start, end]`` whose whole window lies in the store.
    """

    def __init__(self, store: WeatherStore, stats: NormStats, *, num_history_steps: int,
                 history_spacing_hours: int, step_hours: int, num_targets: int = 1,
                 init_times: Sequence[Any] | None = None, start: Any = None, end: Any = None) -> None:
        if num_history_steps < 1 or num_targets < 0:
            raise ValueError(f"num_history_steps must be >= 1 and num_targets >= 0, got "
                             f"{num_history_steps}, {num_targets}")
        if history_spacing_hours <= 0 or step_hours <= 0:
            raise ValueError("history_spacing_hours and step_hours must be positive")
        if stats.num_channels != store.num_channels:
            raise ValueError(f"statistics have {stats.num_channels} channels, the store reads {store.num_channels}")
        self.store, self.stats = store, stats
        self.num_history_steps, self.num_targets = int(num_history_steps), int(num_targets)
        self.history_spacing_hours, self.step_hours = int(history_spacing_hours), int(step_hours)
        offsets_h = [-(num_history_steps - 1 - j) * history_spacing_hours for j in range(num_history_steps)]
        offsets_h += [k * step_hours for k in range(1, num_targets + 1)]
        self.offsets = np.array(offsets_h, dtype="timedelta64[h]").astype("timedelta64[ns]")

        times = store.times
        if init_times is not None:
            inits = to_datetime64_array(init_times)
            store.indices_of(inits)  # each init time must be in the store (clear error otherwise)
        else:
            lo = times[0] if start is None else to_datetime64(start)
            hi = times[-1] if end is None else to_datetime64(end)
            inits = times[(times >= lo) & (times <= hi)]
        window = inits[:, None] + self.offsets[None, :]
        pos = np.searchsorted(times, window)
        inside = (pos < times.size) & (times[np.minimum(pos, times.size - 1)] == window)
        ok = inside.all(axis=1)
        if init_times is not None and not ok.all():
            bad = inits[~ok][0]
            raise ValueError(f"init time {format_time(bad)} needs states at offsets {offsets_h} h that are not all "
                             f"in the store ({store.time_range_str()})")
        if not ok.any():
            raise ValueError(f"no init time has its whole window (offsets {offsets_h} h) in the store within the "
                             f"requested range; store: {store.time_range_str()}")
        self.init_times = inits[ok]
        self._windows = pos[ok]  # (n, T + K) store indices
        self._day_year = day_year_progress(self.init_times)
        self._hours = hours_since_epoch(self.init_times)

    def __len__(self) -> int:
        return int(self.init_times.size)

    def __repr__(self) -> str:
        return (f"TrainingSource({len(self)} samples, history {self.num_history_steps}x{self.history_spacing_hours} h, "
                f"{self.num_targets} target(s) every {self.step_hours} h, {self.store!r})")

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range (0..{len(self) - 1})")
        return {k: v[0] for k, v in self.batch([i % len(self)]).items()}

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Samples ``indices`` stacked on a leading axis, read straight into the batch
        arrays (in a grain worker: into shared memory, so nothing is copied on the way)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"samples {indices} out of range (0..{len(self) - 1})")
        store, b, t = self.store, indices.size, self.num_history_steps
        grid = (store.longitude.size, store.latitude.size, store.num_channels)
        history = _new_array((b, t, *grid))
        targets = _new_array((b, self.num_targets, *grid))
        for j, i in enumerate(indices):
            store.states(self._windows[i], stats=self.stats,
                         out=[history[j, s] for s in range(t)] + [targets[j, k] for k in range(self.num_targets)])
        return {"history": history, "targets": targets, "day_year": self._day_year[indices],
                "init_time": self._hours[indices]}


_IN_GRAIN_WORKER = False


def _mark_grain_worker(index: int, count: int) -> None:
    """grain's worker_init_fn: batches built in this process go to shared memory."""
    global _IN_GRAIN_WORKER
    _IN_GRAIN_WORKER = True


def _new_array(shape: tuple[int, ...]) -> np.ndarray:
    if _IN_GRAIN_WORKER:
        from grain.python import SharedMemoryArray

        return SharedMemoryArray(shape, np.float32)
    return np.empty(shape, np.float32)


class TrainIterator:
    """A grain iterator that places each batch on devices; ``get_state``/``set_state``
    restore the exact position (the state is grain's, a small JSON-able dict)."""

    def __init__(self, dataset: Any, sharding: Any = None) -> None:
        self._it = iter(dataset)
        self._sharding = sharding

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._it)
        if self._sharding is None:
            # worker batches arrive in shared memory: copy so that it is released now,
            # not whenever (or after interpreter shutdown, noisily) the caller drops them
            return {k: np.array(v) if type(v) is not np.ndarray else v for k, v in batch.items()}
        import jax

        def put(x: np.ndarray, sharding: Any) -> Any:
            if jax.process_count() > 1:  # each host holds its slice of the global batch
                return jax.make_array_from_process_local_data(sharding, x)
            return jax.device_put(x, sharding)

        if isinstance(self._sharding, dict):
            return {k: put(v, self._sharding[k]) for k, v in batch.items()}
        return {k: put(v, self._sharding) for k, v in batch.items()}

    def get_state(self) -> dict[str, Any]:
        return self._it.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "TrainIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_train_iterator(source: TrainingSource, *, batch_size: int, seed: int, num_epochs: int | None = None,
                        worker_count: int = 0, shuffle: bool = True, sharding: Any = None,
                        num_threads: int | None = None, prefetch_batches: int = 2,
                        shard_index: int = 0, shard_count: int = 1) -> TrainIterator:
    """Batches of ``source`` samples: shuffled per epoch from ``seed`` (the same order
    for any ``worker_count``), remainders dropped, ``num_epochs=None`` for endless.

    ``worker_count`` processes read ahead (0: in this process, with ``num_threads``
    reader threads, default min(4, cores)). ``shard_index/shard_count`` deal each epoch's
    batches out to hosts (``batch_size`` is then per host). ``sharding`` (a
    ``jax.sharding.Sharding`` or a dict per key) places each batch on devices; with several
    JAX processes the host batches form one global array.
    """
    import grain

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) < batch_size * shard_count:
        raise ValueError(f"{len(source)} samples are fewer than one batch of {batch_size} per shard "
                         f"({shard_count} shard(s))")
    # batches of sample indices, read by source.batch: batch contents do not depend on workers
    ds = grain.MapDataset.range(len(source))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.map(source.batch).repeat(num_epochs)
    if num_threads is None:  # reads release the GIL: threads use the cores in-process
        num_threads = min(4, os.cpu_count() or 1) if worker_count == 0 else 1
    ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=max(prefetch_batches, num_threads, 1)))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app take defaults
            flags.FLAGS.mark_as_parsed()
        ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                            per_worker_buffer_size=max(prefetch_batches, 1)),
                              worker_init_fn=_mark_grain_worker)
    return TrainIterator(ids, sharding)

