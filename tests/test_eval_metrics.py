"""Metrics against independent float64 numpy implementations and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from mosaic_jax import evaluation as ev


# ---------------------------------------------------------------------------------------
# Independent references, written from the definitions with explicit loops / float64.
# ---------------------------------------------------------------------------------------
def ref_weights(lat_deg: np.ndarray) -> np.ndarray:
    """Cell area between midpoints (closed by the poles), by numerical quadrature of cos."""
    lat = np.sort(np.asarray(lat_deg, dtype=np.float64))
    out = []
    for i in range(lat.size):
        lo = -90.0 if i == 0 else (lat[i - 1] + lat[i]) / 2
        hi = 90.0 if i == lat.size - 1 else (lat[i] + lat[i + 1]) / 2
        area, _ = integrate.quad(lambda p: math.cos(math.radians(p)), lo, hi)
        out.append(area)
    out = np.array(out)
    return out / out.mean()


def ref_spatial_mean(field: np.ndarray, w: np.ndarray) -> float:
    n_lat, n_lon = field.shape
    num = sum(w[i] * field[i, j] for i in range(n_lat) for j in range(n_lon))
    return num / (w.sum() * n_lon)


def ref_rmse(f: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """(time, lat, lon): sqrt of the time mean of the weighted MSE."""
    return math.sqrt(np.mean([ref_spatial_mean((f[t] - y[t]) ** 2, w) for t in range(f.shape[0])]))


def ref_crps_point(x: np.ndarray, y: float) -> float:
    m = x.size
    skill = np.mean(np.abs(x - y))
    pairs = sum(abs(x[i] - x[j]) for i in range(m) for j in range(m))
    return skill - pairs / (2 * m * (m - 1))


def gaussian_crps(mu: np.ndarray, sigma: float, y: np.ndarray) -> np.ndarray:
    """Closed form CRPS of N(mu, sigma^2) at y (Gneiting et al. 2005)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


LAT = np.linspace(-90, 90, 25)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------
# Latitude weights
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lat", [np.linspace(-90, 90, 121), np.linspace(-90, 90, 25),
                                 np.linspace(-88.59375, 88.59375, 64)])
def test_latitude_weights_match_cell_areas_and_sum_like_wb2(lat: np.ndarray) -> None:
    w = ev.latitude_weights(lat)
    np.testing.assert_allclose(w, ref_weights(lat), rtol=1e-10)
    # WB2 normalises to mean 1: the weights sum to the number of rows.
    assert w.sum() == pytest.approx(lat.size, rel=1e-12)
    # Unnormalised cell areas tile the sphere: sum of sin differences = 2.
    areas = w * 2 / lat.size
    assert areas.sum() == pytest.approx(2.0)
    np.testing.assert_allclose(w, w[::-1], rtol=1e-12)  # symmetric grid -> symmetric weights


def test_latitude_weights_are_not_plain_cosine_at_the_poles() -> None:
    lat = np.linspace(-90, 90, 121)
    w = ev.latitude_weights(lat)
    assert w[0] > 0  # cos(-90) would be 0
    # Pole cell: the cap from 89.25 to 90 degrees.
    cap = 1 - math.sin(math.radians(89.25))
    assert w[-1] == pytest.approx(cap / (2 / 121), rel=1e-10)
    # Interior rows are proportional to cos(lat).
    ratio = w[1:-1] / np.cos(np.deg2rad(lat[1:-1]))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)


def test_latitude_weights_follow_input_order() -> None:
    np.testing.assert_allclose(ev.latitude_weights(LAT[::-1]), ev.latitude_weights(LAT)[::-1])
    with pytest.raises(ValueError, match="distinct"):
        ev.latitude_weights(np.array([0.0, 0.0, 10.0]))


# ---------------------------------------------------------------------------------------
# Deterministic metrics
# ---------------------------------------------------------------------------------------
def test_rmse_bias_against_reference(rng: np.random.Generator) -> None:
    f = rng.normal(size=(5, 25, 12))
    y = rng.normal(size=(5, 25, 12)) + 0.3
    w = ref_weights(LAT)
    assert float(ev.rmse(f, y, w)) == pytest.approx(ref_rmse(f, y, w), rel=1e-12)
    ref_bias = np.mean([ref_spatial_mean(f[t] - y[t], w) for t in range(5)])
    assert float(ev.bias(f, y, w)) == pytest.approx(ref_bias, rel=1e-12)
    # The time mean comes before the square root.
    per_t = ev.rmse(f, y, w, time_axis=None)
    assert float(ev.rmse(f, y, w)) != pytest.approx(float(per_t.mean()), rel=1e-6)
    assert float(ev.rmse(f, y, w)) == pytest.approx(math.sqrt(float((per_t**2).mean())), rel=1e-12)


def test_axes_are_explicit(rng: np.random.Generator) -> None:
    """(lon, level, time, lat) layout gives the same as the canonical (time, level, lat, lon)."""
    f = rng.normal(size=(4, 3, 25, 12))
    y = rng.normal(size=(4, 3, 25, 12))
    w = ev.latitude_weights(LAT)
    ref = ev.rmse(f, y, w)
    perm = (3, 1, 0, 2)
    got = ev.rmse(f.transpose(perm), y.transpose(perm), w, time_axis=2, lat_axis=3, lon_axis=0)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert ref.shape == (3,)


def test_acc_against_reference(rng: np.random.Generator) -> None:
    clim = rng.normal(size=(4, 25, 12))
    y = clim + rng.normal(size=(4, 25, 12))
    f = y + 0.7 * rng.normal(size=(4, 25, 12)) + 0.2
    w = ref_weights(LAT)
    per = []
    for t in range(4):
        fa, ya = f[t] - clim[t], y[t] - clim[t]
        per.append(ref_spatial_mean(fa * ya, w) / math.sqrt(ref_spatial_mean(fa**2, w) * ref_spatial_mean(ya**2, w)))
    assert float(ev.acc(f, y, clim, w)) == pytest.approx(np.mean(per), rel=1e-12)
    assert float(ev.acc(y, y, clim, w)) == pytest.approx(1.0)
    assert np.isnan(ev.acc(clim, y, clim, w))  # climatology forecast: zero anomaly


# ---------------------------------------------------------------------------------------
# Ensemble metrics
# ---------------------------------------------------------------------------------------
def test_crps_fair_against_pairwise_reference(rng: np.random.Generator) -> None:
    x = rng.normal(size=(6, 3, 25, 12))  # member, time, lat, lon
    y = rng.normal(size=(3, 25, 12))
    point = ev.crps_fair_pointwise(x, y)
    for idx in [(0, 0, 0), (1, 5, 7), (2, 24, 11)]:
        assert point[idx] == pytest.approx(ref_crps_point(x[(slice(None),) + idx], y[idx]), rel=1e-12)
    w = ref_weights(LAT)
    ref = np.mean([ref_spatial_mean(np.vectorize(lambda i, j, t=t: ref_crps_point(x[:, t, i, j], y[t, i, j]))(
        *np.indices((25, 12))), w) for t in range(3)])
    assert float(ev.crps_fair(x, y, w)) == pytest.approx(ref, rel=1e-12)
    # One member: CRPS of a point forecast = absolute error.
    np.testing.assert_allclose(ev.crps_fair_pointwise(x[:1], y), np.abs(x[0] - y))


def test_crps_fair_of_large_gaussian_ensemble_matches_closed_form(rng: np.random.Generator) -> None:
    n_pts, m, sigma = 400, 2000, 1.7
    mu = rng.normal(size=n_pts)
    y = rng.normal(size=n_pts) * 2.0
    x = mu[None] + sigma * rng.standard_normal((m, n_pts))
    got = ev.crps_fair_pointwise(x, y)
    np.testing.assert_allclose(got.mean(), gaussian_crps(mu, sigma, y).mean(), rtol=5e-3)
    # Per point the estimate has a sampling sd of about sigma / sqrt(m) ~ 0.04: allow 5 sd.
    np.testing.assert_allclose(got, gaussian_crps(mu, sigma, y), atol=0.2)


def test_crps_fair_is_unbiased_for_small_ensembles(rng: np.random.Generator) -> None:
    """With 4 members the fair CRPS still estimates the gaussian CRPS; the plain one does not."""
    n_pts, m = 200_000, 4
    y = rng.normal(size=n_pts)
    x = rng.standard_normal((m, n_pts))
    expected = gaussian_crps(np.zeros(n_pts), 1.0, y).mean()
    assert ev.crps_fair_pointwise(x, y).mean() == pytest.approx(expected, rel=0.01)
    plain = np.abs(x - y).mean(0) - np.abs(x[:, None] - x[None]).sum((0, 1)) / (2 * m * m)
    assert plain.mean() > expected * 1.05


def test_spread_and_ensemble_mean_rmse_against_reference(rng: np.random.Generator) -> None:
    x = rng.normal(size=(5, 3, 25, 12))
    y = rng.normal(size=(3, 25, 12))
    w = ref_weights(LAT)
    var = np.array([[[np.var(x[:, t, i, j], ddof=1) for j in range(12)] for i in range(25)] for t in range(3)])
    ref_spread = math.sqrt(np.mean([ref_spatial_mean(var[t], w) for t in range(3)]))
    assert float(ev.spread(x, w)) == pytest.approx(ref_spread, rel=1e-12)
    assert float(ev.ensemble_mean_rmse(x, y, w)) == pytest.approx(ref_rmse(x.mean(0), y, w), rel=1e-12)
    m = 5
    assert float(ev.spread_skill_ratio(x, y, w, finite_ensemble_correction=False)) == pytest.approx(
        ref_spread / ref_rmse(x.mean(0), y, w), rel=1e-12)
    assert float(ev.spread_skill_ratio(x, y, w)) == pytest.approx(
        ref_spread / ref_rmse(x.mean(0), y, w) * math.sqrt((m + 1) / m), rel=1e-12)


@pytest.mark.parametrize("m", [2, 5, 20])
def test_spread_skill_ratio_is_one_for_an_exchangeable_ensemble(rng: np.random.Generator, m: int) -> None:
    """Truth and members drawn from the same distribution: corrected SSR -> 1, WB2's -> sqrt(M/(M+1))."""
    t, shape = 40, (25, 48)
    center = 3 * rng.normal(size=(t,) + shape)  # predictable part, varies in space and time
    scale = 0.5 + np.abs(np.cos(np.deg2rad(LAT)))[None, :, None]  # heteroscedastic
    y = center + scale * rng.standard_normal((t,) + shape)
    x = center[None] + scale[None] * rng.standard_normal((m, t) + shape)
    w = ev.latitude_weights(LAT)
    assert float(ev.spread_skill_ratio(x, y, w)) == pytest.approx(1.0, abs=0.02)
    assert float(ev.spread_skill_ratio(x, y, w, finite_ensemble_correction=False)) == pytest.approx(
        math.sqrt(m / (m + 1)), abs=0.02)


def test_rank_histogram(rng: np.random.Generator) -> None:
    m = 4
    x = rng.normal(size=(m, 30, 25, 12))
    y = rng.normal(size=(30, 25, 12))
    counts = ev.rank_histogram(x, y, normalize=False)
    ref = np.zeros(m + 1)
    for idx in np.ndindex(y.shape):
        ref[int(np.sum(x[(slice(None),) + idx] < y[idx]))] += 1
    np.testing.assert_array_equal(counts, ref)
    np.testing.assert_allclose(ev.rank_histogram(x, y, ev.latitude_weights(LAT), lat_axis=-2),
                               np.full(m + 1, 1 / (m + 1)), atol=0.01)
    # Truth below every member: all mass in rank 0.
    np.testing.assert_array_equal(ev.rank_histogram(x, y - 100), [1, 0, 0, 0, 0])


def test_rank_histogram_breaks_ties_at_random(rng: np.random.Generator) -> None:
    """A discrete but exchangeable ensemble (many ties) still gives a flat histogram."""
    m = 3
    x = rng.integers(0, 3, size=(m, 200_000)).astype(float)
    y = rng.integers(0, 3, size=200_000).astype(float)
    np.testing.assert_allclose(ev.rank_histogram(x, y, rng=0), np.full(m + 1, 0.25), atol=0.005)


def test_metrics_accept_jax_arrays(rng: np.random.Generator) -> None:
    jnp = pytest.importorskip("jax.numpy")
    x = rng.normal(size=(4, 2, 25, 12)).astype(np.float32)
    y = rng.normal(size=(2, 25, 12)).astype(np.float32)
    w = ev.latitude_weights(LAT)
    for fn, args in [(ev.crps_fair, (x, y, w)), (ev.spread_skill_ratio, (x, y, w)), (ev.rmse, (x[0], y, w)),
                     (ev.acc, (x[0], y, x[1], w))]:
        got = fn(*[jnp.asarray(a) if a is not w else a for a in args])
        assert type(got).__module__.startswith("jax")
        np.testing.assert_allclose(np.asarray(got), fn(*args), rtol=2e-5)
