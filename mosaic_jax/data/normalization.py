"""Per-channel normalization statistics: the npz format of the published release.

Files hold ``state_mean, state_std, residual_mean, residual_std``, each ``(C,)`` (the
published hres file has the first two only).
Means and stds are plain (unweighted) averages over every grid point and time, as the
published ones are (their 2 m temperature mean, 278 K, is the grid-point mean of an
equiangular grid, not the area mean); stds are population stds (ddof 0).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_jax.atomic import atomic_path
from mosaic_jax.data.timefeatures import format_time, to_datetime64

KEYS = ("state_mean", "state_std", "residual_mean", "residual_std")


@dataclasses.dataclass(frozen=True, eq=False)
class NormStats:
    """Normalization statistics for C channels (float64 as stored). The residual pair is
    optional: the published hres file carries state statistics only."""

    state_mean: np.ndarray
    state_std: np.ndarray
    residual_mean: np.ndarray | None = None
    residual_std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.residual_mean is None) != (self.residual_std is None):
            raise ValueError("NormStats: residual_mean and residual_std come together (both or neither)")
        c = np.shape(self.state_mean)
        for key in self.keys:
            a = np.asarray(getattr(self, key), dtype=np.float64)
            object.__setattr__(self, key, a)
            if a.ndim != 1 or a.shape != c:
                raise ValueError(f"NormStats.{key}: shape {a.shape}, expected {c} like state_mean")
            if not np.isfinite(a).all():
                raise ValueError(f"NormStats.{key}: non-finite values at channels {np.flatnonzero(~np.isfinite(a))}")
            if key.endswith("std") and (a <= 0).any():
                raise ValueError(f"NormStats.{key}: must be positive, not at channels {np.flatnonzero(a <= 0)}")
        # float32 copies for normalizing samples
        object.__setattr__(self, "_mean32", self.state_mean.astype(np.float32))
        object.__setattr__(self, "_inv_std32", (1.0 / self.state_std).astype(np.float32))
        object.__setattr__(self, "_std32", self.state_std.astype(np.float32))

    @property
    def keys(self) -> tuple[str, ...]:
        """The statistics present (the npz keys)."""
        return KEYS if self.residual_mean is not None else KEYS[:2]

    @property
    def num_channels(self) -> int:
        return int(self.state_mean.shape[0])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NormStats":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"normalization statistics not found: {path}")
        with np.load(path) as f:
            missing = [k for k in KEYS[:2] if k not in f]
            if missing:
                raise ValueError(f"{path}: missing key(s) {missing}; a stats file holds {list(KEYS)}")
            return cls(**{k: f[k] for k in KEYS if k in f})

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file in the same folder, then rename)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: getattr(self, k) for k in self.keys})
                f.flush()
                os.fsync(f.fileno())
        return Path(path).absolute()

    def _check(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.num_channels:
            raise ValueError(f"last axis has {x.shape[-1]} channels, statistics have {self.num_channels}")

    def normalize(self, x: Any) -> np.ndarray:
        """``(x - state_mean) / state_std`` over the last (channel) axis, float32."""
        x = np.asarray(x, dtype=np.float32)
        self._check(x)
        return (x - self._mean32) * self._inv_std32

    def denormalize(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        self._check(x)
        return x * self._std32 + self._mean32


class _Moments:
    """Streaming per-channel mean and M2, merged chunk by chunk (Chan et al.) in float64."""

    def __init__(self, c: int) -> None:
        self.n = 0
        self.mean = np.zeros(c, np.float64)
        self.m2 = np.zeros(c, np.float64)

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1, x.shape[-1]).astype(np.float64, copy=False)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        m2b = np.square(x - mb).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)


def compute_stats(store: Any, *, start: Any = None, end: Any = None, step_hours: int,
                  chunk_size: int = 8, progress: bool = False) -> NormStats:
    """State and residual (``x(t + step) - x(t)``) mean/std over the store times in
    ``[start, end]``, reading ``chunk_size`` times at once (memory stays bounded).

    ``store`` is a :class:`~mosaic_jax.data.WeatherStore`; a residual pair counts when
    both of its times are in the range and in the store.
    """
    times = store.times
    lo = times[0] if start is None else to_datetime64(start)
    hi = times[-1] if end is None else to_datetime64(end)
    sel = np.flatnonzero((times >= lo) & (times <= hi))
    if sel.size == 0:
        raise ValueError(f"no store times in {format_time(lo)}..{format_time(hi)}; the store covers "
                         f"{store.time_range_str()}")
    if step_hours <= 0:
        raise ValueError(f"step_hours must be positive, got {step_hours}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # partner of each selected time one step later, -1 where absent from the range
    target = times[sel] + np.timedelta64(int(step_hours), "h")
    pos = np.searchsorted(times[sel], target)
    pos_c = np.minimum(pos, sel.size - 1)
    partner = np.where(times[sel][pos_c] == target, sel[pos_c], -1)
    if not (partner >= 0).any():
        raise ValueError(f"no pair of times {step_hours} h apart in {format_time(lo)}..{format_time(hi)} "
                         f"(store: {store.time_range_str()})")

    c = store.num_channels
    state, resid = _Moments(c), _Moments(c)
    chunks = range(0, sel.size, chunk_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="stats", unit="chunk")
    for a in chunks:
        here, there = sel[a:a + chunk_size], partner[a:a + chunk_size]
        has = there >= 0
        need = np.union1d(here, there[has])
        block = store.states(need).astype(np.float64)
        state.update(block[np.searchsorted(need, here)])
        if has.any():
            resid.update(block[np.searchsorted(need, there[has])] - block[np.searchsorted(need, here[has])])
    return NormStats(state_mean=state.mean, state_std=state.std(),
                     residual_mean=resid.mean, residual_std=resid.std())
