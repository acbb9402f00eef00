"""Zonal energy spectra and spectral ratios against a direct DFT and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from mosaic_jax import evaluation as ev
from mosaic_jax.evaluation import xr_metrics

R_KM = (6357 + 6378) / 2  # WB2: mean of polar and equatorial radii
LAT = np.linspace(-90, 90, 25)


def ref_spectrum_row(f: np.ndarray, lat_deg: float) -> np.ndarray:
    """WB2 definition, with an explicit float64 DFT: S[0] = C|F0|^2, S[k] = 2C|Fk|^2."""
    n = f.size
    c_m = 2 * math.pi * R_KM * 1000 * math.cos(math.radians(lat_deg))
    out = []
    for k in range(n // 2 + 1):
        fk = sum(f[j] * complex(math.cos(-2 * math.pi * k * j / n), math.sin(-2 * math.pi * k * j / n))
                 for j in range(n)) / n
        out.append((1 if k == 0 else 2) * c_m * abs(fk) ** 2)
    return np.array(out)


def test_spectrum_matches_direct_dft() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 25, 16))
    s = ev.zonal_energy_spectrum(x, LAT)
    assert s.shape == (2, 25, 9)
    for t, i in [(0, 3), (1, 12), (0, 20)]:
        np.testing.assert_allclose(s[t, i], ref_spectrum_row(x[t, i], LAT[i]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k0", [1, 3, 7])
def test_pure_zonal_sinusoid_peaks_at_its_wavenumber_with_the_right_energy(k0: int) -> None:
    n_lon, amp, offset = 48, 2.5, 0.7
    lon = np.deg2rad(np.arange(n_lon) * 360 / n_lon)
    row = offset + amp * np.cos(k0 * lon + 0.4)
    x = np.broadcast_to(row, (LAT.size, n_lon))
    s = ev.zonal_energy_spectrum(x, LAT)
    circ_m = 2 * np.pi * R_KM * 1000 * np.cos(np.deg2rad(LAT))
    for i in range(2, 23):  # rows away from the poles (C = 0 there)
        assert int(np.argmax(s[i, 1:])) + 1 == k0
        assert s[i, k0] == pytest.approx(circ_m[i] * amp**2 / 2, rel=1e-10)  # mean of A^2 cos^2 times C
        assert s[i, 0] == pytest.approx(circ_m[i] * offset**2, rel=1e-10)
        others = np.delete(s[i], [0, k0])
        assert np.all(others < 1e-20 * s[i, k0])
    wl = ev.wavelength_km(LAT, n_lon)
    assert wl[12, k0] == pytest.approx(2 * np.pi * R_KM / k0)  # equator
    assert wl[16, k0] == pytest.approx(2 * np.pi * R_KM * np.cos(np.deg2rad(LAT[16])) / k0)


def test_parseval_for_odd_number_of_longitudes() -> None:
    """No Nyquist bin: sum_k S[k] = (C/L) sum_l f^2 exactly."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 45))
    s = ev.zonal_energy_spectrum(x, LAT)
    circ_m = 2 * np.pi * R_KM * 1000 * np.cos(np.deg2rad(LAT))
    np.testing.assert_allclose(s.sum(-1), circ_m * (x**2).mean(-1), rtol=1e-10, atol=1e-6)


def test_spectrum_axes_and_jax() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 3, 16))  # lat, level, lon
    s = ev.zonal_energy_spectrum(x, LAT, lat_axis=0, lon_axis=2)
    ref = ev.zonal_energy_spectrum(x.transpose(1, 0, 2), LAT)
    np.testing.assert_allclose(s, ref.transpose(1, 0, 2), rtol=1e-12)
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_allclose(np.asarray(ev.zonal_energy_spectrum(jnp.asarray(x, dtype=jnp.float32), LAT,
                                                                   lat_axis=0, lon_axis=2)), s, rtol=1e-4)


def test_spectral_ratio_band_and_time_mean() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=(4, 25, 48))
    sy = ev.zonal_energy_spectrum(y, LAT)
    np.testing.assert_allclose(ev.spectral_ratio(sy, sy, LAT, time_axis=0), 1.0)
    np.testing.assert_allclose(ev.spectral_ratio(ev.zonal_energy_spectrum(3 * y, LAT), sy, LAT, time_axis=0), 9.0)
    # Rows outside the band do not matter.
    f = y.copy()
    outside = np.abs(LAT) < 30
    f[:, outside] *= 10
    np.testing.assert_allclose(ev.spectral_ratio(ev.zonal_energy_spectrum(f, LAT), sy, LAT, time_axis=0), 1.0)
    # Ratio of band-and-time means, not a mean of ratios.
    band = (np.abs(LAT) >= 30) & (np.abs(LAT) <= 60)
    sf = ev.zonal_energy_spectrum(f * 1.5, LAT)
    expected = sf[:, band].mean((0, 1)) / sy[:, band].mean((0, 1))
    np.testing.assert_allclose(ev.spectral_ratio(sf, sy, LAT, time_axis=0), expected, rtol=1e-12)
    # Time axis after the latitude axis.
    np.testing.assert_allclose(ev.spectral_ratio(sf.transpose(1, 0, 2), sy.transpose(1, 0, 2), LAT, lat_axis=0,
                                                 time_axis=1), expected, rtol=1e-12)
    wl = ev.band_wavelength_km(LAT, 48)
    assert wl[1] == pytest.approx(2 * np.pi * R_KM * np.cos(np.deg2rad(LAT[band])).mean())
    with pytest.raises(ValueError, match="no grid row"):
        ev.spectral_ratio(sf, sy, LAT, time_axis=0, band=(31, 32))


def test_xarray_wrappers_match_pure_functions() -> None:
    rng = np.random.default_rng(4)
    lon = np.arange(16) * 22.5
    lat_desc = LAT[::-1]
    time = np.arange(3)
    truth = xr.DataArray(rng.normal(size=(16, 25, 3)), dims=("longitude", "latitude", "time"),
                         coords={"longitude": lon, "latitude": lat_desc, "time": time})
    ens = xr.DataArray(rng.normal(size=(4, 3, 25, 16)), dims=("member", "time", "latitude", "longitude"),
                       coords={"longitude": lon, "latitude": lat_desc, "time": time})
    y = truth.sortby("latitude").transpose("time", "latitude", "longitude").values
    x = ens.sortby("latitude").values
    w = ev.latitude_weights(LAT)
    assert float(xr_metrics.crps_fair(ens, truth)) == pytest.approx(float(ev.crps_fair(x, y, w)), rel=1e-12)
    assert float(xr_metrics.rmse(ens.isel(member=0), truth)) == pytest.approx(float(ev.rmse(x[0], y, w)), rel=1e-12)
    assert float(xr_metrics.spread_skill_ratio(ens, truth)) == pytest.approx(
        float(ev.spread_skill_ratio(x, y, w)), rel=1e-12)
    assert float(xr_metrics.spread(ens)) == pytest.approx(float(ev.spread(x, w)), rel=1e-12)
    per_time = xr_metrics.rmse(ens.isel(member=0), truth, time_dim=None)
    assert per_time.dims == ("time",)
    s = xr_metrics.zonal_energy_spectrum(truth)
    assert s.dims == ("latitude", "time", "zonal_wavenumber") and "wavelength_km" in s.coords
    np.testing.assert_allclose(s.transpose("time", "latitude", "zonal_wavenumber").values,
                               ev.zonal_energy_spectrum(truth.transpose("time", "latitude", "longitude").values,
                                                        lat_desc), rtol=1e-12)
    with pytest.raises(ValueError):
        xr_metrics.rmse(ens.isel(member=0).assign_coords(longitude=lon + 1), truth)
