"""Forecast verification metrics, as WeatherBench2 defines them, on plain arrays.

Every function is pure and takes its axes explicitly. Axis arguments (``time_axis``,
``lat_axis``, ``lon_axis``) index the *truth* layout; an ensemble carries one extra
axis, ``member_axis`` (indexed in the ensemble's own layout), and once that axis is
removed its layout must match the truth's. ``time_axis=None`` means "no time axis":
the per-sample value is returned (what the streaming evaluator accumulates).

Inputs may be numpy or jax arrays; the result has the same kind (``rank_of_truth`` and
``rank_histogram`` use a numpy RNG for tie-breaking and always return numpy).
NaNs propagate (no skipna): mask before calling if your data has gaps.

Definitions (WeatherBench2, Rasp et al. 2024, JAMES, sections 4.1-4.2):

* Spatial averages use area weights ``w`` (``latitude_weights``), normalised to mean 1.
* ``rmse = sqrt(mean_t(spatial_mean((f - y)^2)))``: the time mean is taken *before* the
  square root.
* ``bias = mean_t(spatial_mean(f - y))``.
* ``acc = mean_t(spatial_mean(f'y') / sqrt(spatial_mean(f'^2) spatial_mean(y'^2)))`` with
  anomalies ``f' = f - c``, ``y' = y - c`` against the climatology ``c`` at the valid time
  (uncentred: anomalies are not re-centred on their spatial mean).
* Fair CRPS (Ferro 2014): ``mean_m |x_m - y| - 1/(2 M (M-1)) sum_{m,n} |x_m - x_n|``, an
  unbiased estimate of the CRPS of the distribution the M members are drawn from.
* Spread ``= sqrt(mean_t(spatial_mean(var_m(x))))`` with the unbiased (ddof=1) member
  variance; skill ``= ensemble_mean_rmse``.
* Spread-skill ratio: for an exchangeable ensemble of M members,
  ``E[(mean_m x - y)^2] = (1 + 1/M) E[var_m(x)]``, so ``spread / skill -> sqrt(M/(M+1))``,
  not 1. With ``finite_ensemble_correction=True`` (the default here) the ratio is multiplied
  by ``sqrt((M+1)/M)`` (Fortin et al. 2014), so a perfectly reliable ensemble scores 1 for
  any M. WeatherBench2's ``SpreadSkillRatio`` applies no correction: pass ``False`` to
  reproduce it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # numpy or jax array


def _xp(*arrays: Any) -> Any:
    """numpy, or jax.numpy if any input is a jax array (imported lazily: jax is slow to load)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] in ("jax", "jaxlib"):
            import jax.numpy as jnp

            return jnp
    return np


# ---------------------------------------------------------------------------------------
# Latitude weights and spatial means
# ---------------------------------------------------------------------------------------
def latitude_weights(lat_deg: Array) -> np.ndarray:
    """Area weights of latitude rows, normalised to mean 1 (so they sum to ``n_lat``).

    Why not ``cos(lat)``: WeatherBench2 weights a row by the area of its cell. Cell bounds
    are the midpoints between neighbouring rows, closed by -90 and 90, so the area is
    ``sin(upper) - sin(lower)``. For interior rows of an equiangular grid this is
    proportional to ``cos(lat)``, but pole rows get the polar cap of half a cell instead
    of zero weight. Rows may come in any order; weights follow the input order.
    """
    lat = np.asarray(lat_deg, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2:
        raise ValueError(f"latitude_weights: expected a 1-D array of at least 2 latitudes, got shape {lat.shape}")
    order = np.argsort(lat)
    s = lat[order]
    if np.any(np.diff(s) <= 0):
        raise ValueError("latitude_weights: latitudes must be distinct")
    if s[0] < -90 or s[-1] > 90:
        raise ValueError(f"latitude_weights: latitudes must lie in [-90, 90], got [{s[0]}, {s[-1]}]")
    bounds = np.deg2rad(np.concatenate([[-90.0], (s[:-1] + s[1:]) / 2, [90.0]]))
    area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    out = np.empty_like(area)
    out[order] = area / area.mean()
    return out


def _norm_axes(ndim: int, *axes: int | None) -> list[int | None]:
    out = [None if a is None else a % ndim for a in axes]
    given = [a for a in out if a is not None]
    if len(set(given)) != len(given):
        raise ValueError(f"axes must be distinct, got {axes}")
    return out


def _canonical(x: Array, *, time_axis: int | None, lat_axis: int, lon_axis: int,
               member_axis: int | None = None) -> Array:
    """Move axes to ``(member?, time?, ..., lat, lon)``; axes index the layout without member."""
    xp = _xp(x)
    x = xp.asarray(x)
    off = 0
    if member_axis is not None:
        x = xp.moveaxis(x, member_axis % x.ndim, 0)
        off = 1
    nd = x.ndim - off
    t, la, lo = _norm_axes(nd, time_axis, lat_axis, lon_axis)
    src = [la + off, lo + off]
    dst = [x.ndim - 2, x.ndim - 1]
    if t is not None:
        src.insert(0, t + off)
        dst.insert(0, off)
    return xp.moveaxis(x, src, dst)


def spatial_mean(x: Array, weights: Array, *, lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Area-weighted mean over (lat, lon): ``sum(w x) / (sum(w) n_lon)``."""
    xp = _xp(x)
    x = _canonical(x, time_axis=None, lat_axis=lat_axis, lon_axis=lon_axis)
    w = xp.asarray(weights).astype(x.dtype)
    if w.shape != (x.shape[-2],):
        raise ValueError(f"spatial_mean: weights shape {w.shape} does not match {x.shape[-2]} latitudes")
    return xp.einsum("...ij,i->...", x, w) / (w.sum() * x.shape[-1])


def _time_mean(x: Array, time_axis: int | None) -> Array:
    return x if time_axis is None else x.mean(axis=0)


# ---------------------------------------------------------------------------------------
# Deterministic scores
# ---------------------------------------------------------------------------------------
def mse(forecast: Array, truth: Array, weights: Array, *, time_axis: int | None = 0,
        lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Time mean of the area-weighted mean squared error."""
    kw = dict(time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis)
    f, y = _canonical(forecast, **kw), _canonical(truth, **kw)
    return _time_mean(spatial_mean((f - y) ** 2, weights), time_axis)


def rmse(forecast: Array, truth: Array, weights: Array, *, time_axis: int | None = 0,
         lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """WB2 RMSE: square root of the time-mean of the weighted MSE (time mean first)."""
    xp = _xp(forecast, truth)
    return xp.sqrt(mse(forecast, truth, weights, time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis))


def bias(forecast: Array, truth: Array, weights: Array, *, time_axis: int | None = 0,
         lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Time mean of the area-weighted mean of ``forecast - truth`` (positive: too high)."""
    kw = dict(time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis)
    f, y = _canonical(forecast, **kw), _canonical(truth, **kw)
    return _time_mean(spatial_mean(f - y, weights), time_axis)


def acc(forecast: Array, truth: Array, climatology: Array, weights: Array, *,
        time_axis: int | None = 0, lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Anomaly correlation coefficient (uncentred), per sample, then averaged over time.

    ``climatology`` is the climatological field at each sample's valid time (same layout
    as ``truth``). A forecast equal to the climatology has zero anomaly: ACC is NaN.
    """
    xp = _xp(forecast, truth, climatology)
    kw = dict(time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis)
    f, y, c = _canonical(forecast, **kw), _canonical(truth, **kw), _canonical(climatology, **kw)
    fa, ya = f - c, y - c
    num = spatial_mean(fa * ya, weights)
    den = xp.sqrt(spatial_mean(fa**2, weights) * spatial_mean(ya**2, weights))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = num / den
    return _time_mean(per_sample, time_axis)


# ---------------------------------------------------------------------------------------
# Ensemble scores
# ---------------------------------------------------------------------------------------
def crps_fair_pointwise(ensemble: Array, truth: Array, *, member_axis: int = 0) -> Array:
    """Fair CRPS at every point (no averaging). One member: the CRPS of a point forecast, |x - y|.

    The pair term ``sum_{m,n} |x_m - x_n|`` is computed in O(M log M) from the sorted members:
    ``2 sum_k (2k - M + 1) x_(k)`` (0-based order statistics).
    """
    xp = _xp(ensemble, truth)
    x = xp.moveaxis(xp.asarray(ensemble), member_axis, 0)
    y = xp.asarray(truth)
    m = x.shape[0]
    skill = xp.abs(x - y[None]).mean(axis=0)
    if m == 1:
        return skill
    xs = xp.sort(x, axis=0)
    k = xp.arange(m, dtype=xs.dtype).reshape((m,) + (1,) * (xs.ndim - 1))
    pair_sum = 2.0 * ((2.0 * k - m + 1.0) * xs).sum(axis=0)
    return skill - 0.5 * pair_sum / (m * (m - 1))


def crps_fair(ensemble: Array, truth: Array, weights: Array, *, member_axis: int = 0,
              time_axis: int | None = 0, lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Fair (unbiased) ensemble CRPS, area-weighted over space and averaged over time."""
    kw = dict(time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis)
    x = _canonical(ensemble, member_axis=member_axis, **kw)
    y = _canonical(truth, **kw)
    return _time_mean(spatial_mean(crps_fair_pointwise(x, y, member_axis=0), weights), time_axis)


def ensemble_mean_rmse(ensemble: Array, truth: Array, weights: Array, *, member_axis: int = 0,
                       time_axis: int | None = 0, lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """RMSE of the ensemble mean: the "skill" of the spread-skill ratio."""
    xp = _xp(ensemble)
    mean = xp.asarray(ensemble).mean(axis=member_axis)
    return rmse(mean, truth, weights, time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis)


def ensemble_variance(ensemble: Array, weights: Array, *, member_axis: int = 0, time_axis: int | None = 0,
                      lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Time mean of the area-weighted unbiased (ddof=1) member variance; NaN for one member."""
    xp = _xp(ensemble)
    x = _canonical(ensemble, member_axis=member_axis, time_axis=time_axis, lat_axis=lat_axis,
                   lon_axis=lon_axis)
    if x.shape[0] < 2:
        return _time_mean(spatial_mean(xp.full(x.shape[1:], xp.nan, dtype=x.dtype), weights), time_axis)
    return _time_mean(spatial_mean(x.var(axis=0, ddof=1), weights), time_axis)


def spread(ensemble: Array, weights: Array, *, member_axis: int = 0, time_axis: int | None = 0,
           lat_axis: int = -2, lon_axis: int = -1) -> Array:
    """Ensemble spread: ``sqrt`` of the time-mean, area-weighted unbiased member variance."""
    xp = _xp(ensemble)
    return xp.sqrt(ensemble_variance(ensemble, weights, member_axis=member_axis, time_axis=time_axis,
                                     lat_axis=lat_axis, lon_axis=lon_axis))


def spread_skill_ratio(ensemble: Array, truth: Array, weights: Array, *, member_axis: int = 0,
                       time_axis: int | None = 0, lat_axis: int = -2, lon_axis: int = -1,
                       finite_ensemble_correction: bool = True) -> Array:
    """``spread / ensemble_mean_rmse``, times ``sqrt((M+1)/M)`` if ``finite_ensemble_correction``.

    With the correction a perfectly exchangeable ensemble scores 1 whatever its size
    (see the module docstring); without it, WeatherBench2's ``SpreadSkillRatio``.
    """
    kw = dict(member_axis=member_axis, time_axis=time_axis, lat_axis=lat_axis, lon_axis=lon_axis)
    ratio = spread(ensemble, weights, **kw) / ensemble_mean_rmse(ensemble, truth, weights, **kw)
    m = np.shape(ensemble)[member_axis]
    return ratio * np.sqrt((m + 1) / m) if finite_ensemble_correction else ratio


def rank_of_truth(ensemble: Array, truth: Array, *, member_axis: int = 0,
                  rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Rank of the truth among the M members at every point, in ``0..M``.

    Rank = number of members below the truth; ties with ``e`` equal members are broken
    uniformly at random among the ``e + 1`` possible ranks (Hamill 2001), so that a
    discrete-valued but reliable ensemble still gives a flat histogram.
    """
    x = np.moveaxis(np.asarray(ensemble), member_axis, 0)
    y = np.asarray(truth)[None]
    below = (x < y).sum(axis=0)
    equal = (x == y).sum(axis=0)
    if np.any(equal):
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        below = below + np.floor(gen.random(below.shape) * (equal + 1)).astype(below.dtype)
    return below


def rank_histogram(ensemble: Array, truth: Array, weights: Array | None = None, *, member_axis: int = 0,
                   lat_axis: int = -2, rng: np.random.Generator | int | None = 0,
                   normalize: bool = True) -> np.ndarray:
    """Histogram (length M+1) of the truth's rank over all points and samples.

    With ``weights`` (per latitude, ``lat_axis`` in the truth layout) each point counts in
    proportion to its cell area, so the histogram describes the globe rather than the grid.
    A reliable ensemble gives a flat histogram at ``1/(M+1)``.
    """
    m = np.shape(ensemble)[member_axis]
    ranks = rank_of_truth(ensemble, truth, member_axis=member_axis, rng=rng)
    if weights is None:
        w = np.ones(ranks.shape)
    else:
        shape = [1] * ranks.ndim
        shape[lat_axis % ranks.ndim] = -1
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64).reshape(shape), ranks.shape)
    counts = np.bincount(ranks.ravel(), weights=w.ravel(), minlength=m + 1).astype(np.float64)
    return counts / counts.sum() if normalize else counts
