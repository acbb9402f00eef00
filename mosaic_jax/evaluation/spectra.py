"""Zonal energy spectra per latitude row, as WeatherBench2 defines them.

Definition (WB2 ``ZonalEnergySpectrum``): let ``f[l]``, ``l = 0..L-1``, be the values along
the circle of latitude ``phi``, of circumference ``C = 2 pi R cos(phi)``. With the DFT
``F[k] = (1/L) sum_l f[l] exp(-2 pi i k l / L)``, ``k = 0..L//2``, the energy spectrum is

    S[0] = C |F[0]|^2,    S[k] = 2 C |F[k]|^2  (k > 0, positive and negative frequencies).

so that ``sum_k S[k] ~ integral f^2 dl`` along the circle (exact except for the Nyquist bin,
which WB2 also doubles; ``S`` has units of ``m * unit(f)^2``). Wavenumber ``k`` has the
wavelength ``C / k`` (reported in km). ``R`` is the mean of the polar and equatorial radii,
6367.5 km, as in WB2.

Spectral ratio: forecast spectra and truth spectra are each averaged over the latitude
rows of a band (default ``30 <= |lat| <= 60`` degrees, both hemispheres' mid-latitudes,
each row weighted equally), and, when a time axis is given, over time; the ratio of the two
averages is returned per wavenumber. A ratio below 1 at small scales is blurring (lost
energy), above 1 is noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mosaic_jax.evaluation.metrics import _xp

Array = Any

EARTH_RADIUS_KM: float = (6357.0 + 6378.0) / 2
DEFAULT_BAND: tuple[float, float] = (30.0, 60.0)


def circumference_km(lat_deg: Array, radius_km: float = EARTH_RADIUS_KM) -> np.ndarray:
    """Length of the circle of latitude: ``2 pi R cos(lat)`` (0 at the poles)."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    return np.clip(2 * np.pi * radius_km * np.cos(np.deg2rad(lat)), 0.0, None)


def zonal_wavenumbers(n_lon: int) -> np.ndarray:
    """Non-negative zonal wavenumbers resolved by ``n_lon`` points: ``0..n_lon//2``."""
    return np.arange(n_lon // 2 + 1)


def wavelength_km(lat_deg: Array, n_lon: int, radius_km: float = EARTH_RADIUS_KM) -> np.ndarray:
    """``(n_lat, n_lon//2 + 1)`` wavelengths ``C(lat) / k`` in km (inf for k = 0)."""
    c = circumference_km(lat_deg, radius_km)[:, None]
    k = zonal_wavenumbers(n_lon)[None, :].astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(k > 0, c / np.where(k > 0, k, 1.0), np.inf)


def zonal_energy_spectrum(x: Array, lat_deg: Array, *, lat_axis: int = -2, lon_axis: int = -1,
                          radius_km: float = EARTH_RADIUS_KM) -> Array:
    """WB2 zonal energy spectrum of every latitude row (``S`` in the module docstring).

    The longitude axis is replaced, in place, by ``n_lon//2 + 1`` wavenumbers. Longitudes
    must be equally spaced and cover the full circle. Energy uses the circumference in metres
    (WB2 units); wavelengths (``wavelength_km``) are in km.
    """
    xp = _xp(x)
    x = xp.asarray(x)
    la, lo = lat_axis % x.ndim, lon_axis % x.ndim
    if la == lo:
        raise ValueError("zonal_energy_spectrum: lat_axis and lon_axis must differ")
    n_lon = x.shape[lo]
    if np.shape(lat_deg) != (x.shape[la],):
        raise ValueError(f"zonal_energy_spectrum: {np.shape(lat_deg)} latitudes for an axis of {x.shape[la]}")
    coeffs = xp.fft.rfft(x, axis=lo) / n_lon
    power = xp.real(coeffs * xp.conj(coeffs))
    k = zonal_wavenumbers(n_lon)
    factor = np.where(k > 0, 2.0, 1.0)
    shape = [1] * x.ndim
    shape[lo] = -1
    circ_m = 1000.0 * circumference_km(lat_deg, radius_km)
    cshape = [1] * x.ndim
    cshape[la] = -1
    return power * xp.asarray(factor.reshape(shape), dtype=power.dtype) * xp.asarray(
        circ_m.reshape(cshape), dtype=power.dtype)


def band_rows(lat_deg: Array, band: tuple[float, float] = DEFAULT_BAND) -> np.ndarray:
    """Boolean mask of rows with ``band[0] <= |lat| <= band[1]``; raises if the band is empty."""
    lat = np.abs(np.asarray(lat_deg, dtype=np.float64))
    mask = (lat >= band[0] - 1e-9) & (lat <= band[1] + 1e-9)
    if not mask.any():
        raise ValueError(f"latitude band {band} contains no grid row")
    return mask


def band_mean(spectrum: Array, lat_deg: Array, *, lat_axis: int = -2,
              band: tuple[float, float] = DEFAULT_BAND) -> Array:
    """Mean of per-row spectra over the rows of the band (each row weighted equally)."""
    xp = _xp(spectrum)
    s = xp.asarray(spectrum)
    idx = np.flatnonzero(band_rows(lat_deg, band))
    return xp.take(s, xp.asarray(idx), axis=lat_axis % s.ndim).mean(axis=lat_axis % s.ndim)


def band_wavelength_km(lat_deg: Array, n_lon: int, band: tuple[float, float] = DEFAULT_BAND,
                       radius_km: float = EARTH_RADIUS_KM) -> np.ndarray:
    """Representative wavelength of each wavenumber in the band: mean circumference / k."""
    c = circumference_km(np.asarray(lat_deg)[band_rows(lat_deg, band)], radius_km).mean()
    k = zonal_wavenumbers(n_lon).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(k > 0, c / np.where(k > 0, k, 1.0), np.inf)


def spectral_ratio(forecast_spectrum: Array, truth_spectrum: Array, lat_deg: Array | None = None, *,
                   lat_axis: int = -2, time_axis: int | None = None,
                   band: tuple[float, float] = DEFAULT_BAND) -> Array:
    """Band-mean (and time-mean) forecast spectrum over band-mean truth spectrum, per wavenumber.

    Pass per-row spectra with ``lat_deg`` (rows outside ``band`` are ignored), or spectra
    already band-averaged with ``lat_deg=None``. ``time_axis`` (index in the input layout)
    is averaged before the division, so one quiet sample cannot dominate the ratio.
    """
    xp = _xp(forecast_spectrum, truth_spectrum)
    f, y = xp.asarray(forecast_spectrum), xp.asarray(truth_spectrum)
    if f.shape != y.shape:
        raise ValueError(f"spectral_ratio: shapes differ, {f.shape} vs {y.shape}")
    if time_axis is not None:
        t, la = time_axis % f.ndim, lat_axis % f.ndim
        if lat_deg is not None and la == t:
            raise ValueError("spectral_ratio: time_axis and lat_axis must differ")
        f, y = f.mean(axis=t), y.mean(axis=t)
        lat_axis = la - 1 if la > t else la
    if lat_deg is not None:
        f = band_mean(f, lat_deg, lat_axis=lat_axis, band=band)
        y = band_mean(y, lat_deg, lat_axis=lat_axis, band=band)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f / y
