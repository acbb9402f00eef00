"""The embedded dataset: a synthetic store in the WeatherBench2 layout.

Why synthetic and not noise: a new user must be able to train a model that beats
persistence without downloading anything, so the fields carry learnable physics.
Seven latent anomaly fields (upper/lower streamfunction, upper/lower temperature,
moisture, vertical motion, surface) are isotropic random fields on the sphere with
atmospheric spectra (energy ~ l^-3 to l^-5 beyond l~10, tapered towards the grid scale as
in coarse regridded ERA5; by spherical harmonic synthesis). Each 6 h step advects them by a
sheared zonal jet (an exact per-latitude shift in longitude), damps them and adds fresh noise
(AR(1), memories of weeks to months except vertical motion's 1.5 days), so a 6 h change is
mostly predictable motion, as in the atmosphere, and persistence is a baseline to beat.
Channels are a zonal, seasonal, diurnal climatology (hypsometric geopotential, lapse-rate temperature, Clausius-Clapeyron
humidity, jets, Hadley cell) plus level-dependent mixes of the latents and their
derivatives (winds from streamfunction gradients), so variables and levels are coupled
the way a model can learn from. Static fields (land-sea mask, orography, soil type) are
smooth random continents that modulate the diurnal and seasonal cycles.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mosaic_jax import variables
from mosaic_jax.atomic import atomic_path
from mosaic_jax.data.timefeatures import to_datetime64

R_DRY = 287.05        # J/(kg K)
GRAVITY = 9.80665     # m/s^2
EARTH_RADIUS = 6.371e6

# WeatherBench2 (ARCO ERA5) variable attributes.
ATTRS: dict[str, dict[str, str]] = {
    "2m_temperature": dict(long_name="2 metre temperature", short_name="t2m", units="K"),
    "10m_u_component_of_wind": dict(long_name="10 metre U wind component", short_name="u10", units="m s**-1"),
    "10m_v_component_of_wind": dict(long_name="10 metre V wind component", short_name="v10", units="m s**-1"),
    "mean_sea_level_pressure": dict(long_name="Mean sea level pressure", short_name="msl", units="Pa"),
    "geopotential": dict(long_name="Geopotential", short_name="z", units="m**2 s**-2"),
    "specific_humidity": dict(long_name="Specific humidity", short_name="q", units="kg kg**-1"),
    "temperature": dict(long_name="Temperature", short_name="t", units="K"),
    "u_component_of_wind": dict(long_name="U component of wind", short_name="u", units="m s**-1"),
    "v_component_of_wind": dict(long_name="V component of wind", short_name="v", units="m s**-1"),
    "vertical_velocity": dict(long_name="Vertical velocity", short_name="w", units="Pa s**-1"),
    "geopotential_at_surface": dict(long_name="Geopotential", short_name="z", units="m**2 s**-2"),
    "land_sea_mask": dict(long_name="Land-sea mask", short_name="lsm", units="(0 - 1)"),
    "soil_type": dict(long_name="Soil type", short_name="slt", units="~"),
}

# latent fields: name -> (spectral slope of E(l), memory in days, steering level in hPa)
LATENTS: dict[str, tuple[float, float, float]] = {
    "psi_upper": (-5.0, 120.0, 500.0),
    "psi_lower": (-5.0, 100.0, 850.0),
    "theta_upper": (-3.0, 60.0, 500.0),
    "theta_lower": (-3.0, 50.0, 850.0),
    "moisture": (-2.5, 30.0, 850.0),
    "ascent": (-5.0 / 3.0, 1.5, 500.0),
    "surface": (-3.0, 15.0, 850.0),
}
# weather systems move slower than the wind at their steering level (Rossby waves drift west
# relative to the flow)
_STEERING_FACTOR = 0.8
_SPECTRAL_PEAK = 10.0  # below this total wavenumber the spectra rise (the atmosphere's do too)
# energy tapers off as exp(-(l / (taper * lmax))^2) towards the grid scale, as in a field
# conservatively regridded from a finer one (WeatherBench2's coarse ERA5 grids hold little
# energy at their last wavenumbers), so a 6 h change is not dominated by grid-scale noise
_GRID_TAPER = 0.5


@dataclasses.dataclass(frozen=True)
class _Grid:
    lon: np.ndarray  # degrees, 0..360
    lat: np.ndarray  # degrees, south to north, poles included

    @classmethod
    def from_resolution(cls, deg: float) -> "_Grid":
        n_lon = 360.0 / deg
        if deg <= 0 or abs(n_lon - round(n_lon)) > 1e-9 or round(n_lon) % 2:
            raise ValueError(f"resolution {deg} deg must divide 360 into an even number of longitudes")
        n_lon = int(round(n_lon))
        return cls(lon=np.arange(n_lon) * (360.0 / n_lon), lat=np.linspace(-90.0, 90.0, n_lon // 2 + 1))

    @property
    def shape(self) -> tuple[int, int]:
        return self.lon.size, self.lat.size

    @property
    def phi(self) -> np.ndarray:  # (lat,) radians
        return np.deg2rad(self.lat)

    @property
    def weights(self) -> np.ndarray:  # (1, lat) area weights summing to 1 per row
        w = np.cos(self.phi).clip(min=0.0) + 1e-3
        return (w / (w.sum() * self.lon.size))[None, :]


class _SphereNoise:
    """Unit-variance isotropic random fields by spherical harmonic synthesis.

    ``f = sum_l [a_l0 P_l0 + sum_m 2 Re(a_lm P_lm e^{im lon})]`` with ``var a_lm = C_l``;
    the point variance is ``sum_l C_l (2l+1)/(4 pi)`` (addition theorem), used to
    normalise exactly.
    """

    def __init__(self, grid: _Grid) -> None:
        from scipy.special import sph_legendre_p_all

        self.grid = grid
        n_lon, n_lat = grid.shape
        self.lmax = min(n_lat - 1, n_lon // 2 - 1)
        colat = np.pi / 2 - grid.phi
        p = sph_legendre_p_all(self.lmax, self.lmax, colat)[0]  # (l, 2L+1 orders, lat)
        self.p = np.ascontiguousarray(np.transpose(p[:, : self.lmax + 1, :], (1, 2, 0)))  # (m, lat, l)
        ell = np.arange(self.lmax + 1)
        self.mask = (ell[:, None] >= ell[None, :]).astype(np.float64)  # [l, m]: l >= m

    def spectrum(self, slope: float) -> np.ndarray:
        """Angular power ``C_l`` for energy ``E(l) = (2l+1) C_l`` rising as ``l`` to the peak,
        then falling as ``l^slope``, tapered near the grid scale; normalised to unit point variance."""
        ell = np.arange(self.lmax + 1, dtype=np.float64)
        energy = ell / (1.0 + (ell / _SPECTRAL_PEAK) ** 2) ** ((1.0 - slope) / 2.0)
        energy *= np.exp(-((ell / (_GRID_TAPER * self.lmax)) ** 2))
        c = energy / (2 * ell + 1)
        return c / np.sum(c * (2 * ell + 1) / (4 * np.pi))

    def sample(self, rng: np.random.Generator, spectra: np.ndarray) -> np.ndarray:
        """``(n, lon, lat)`` fields, one per row of ``spectra`` (n, lmax+1)."""
        n, big_l = spectra.shape[0], self.lmax + 1
        re, im = rng.standard_normal((2, n, big_l, big_l))  # [n, l, m]
        amp = np.sqrt(spectra)[:, :, None] * self.mask
        coef = amp * np.where(np.arange(big_l) == 0, re, (re + 1j * im) / np.sqrt(2.0))
        g = np.matmul(self.p, np.transpose(coef, (2, 1, 0)))  # (m, lat, n)
        n_lon = self.grid.lon.size
        spec = np.zeros((n, n_lon // 2 + 1, self.grid.lat.size), np.complex128)
        spec[:, :big_l, :] = np.transpose(g, (2, 0, 1)) * n_lon
        return np.fft.irfft(spec, n=n_lon, axis=1)


def _gauss(x: np.ndarray, mu: float | np.ndarray, width: float) -> np.ndarray:
    return np.exp(-(((x - mu) / width) ** 2))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class _Climate:
    """Zonal-mean climatology as functions of pressure (hPa), latitude and season."""

    def __init__(self, grid: _Grid) -> None:
        self.lat = grid.lat
        self.phi = grid.phi
        self.sin = np.sin(self.phi)
        self.sgn = np.sign(self.lat)
        self.pole_taper = 1.0 - np.abs(self.sin) ** 8  # zonal winds vanish at the poles

    @staticmethod
    def season(times: np.ndarray) -> np.ndarray:
        """+1 at the northern summer solstice, -1 at the winter one."""
        idx = pd.DatetimeIndex(times)
        doy = idx.day_of_year.to_numpy() - 1 + (idx.hour.to_numpy() + idx.minute.to_numpy() / 60) / 24
        return np.sin(2 * np.pi * (doy - 80.0) / 365.25)

    def winter(self, s: np.ndarray) -> np.ndarray:
        """(t, lat) 1 in the winter hemisphere at solstice, 0 in summer."""
        return 0.5 * (1.0 - s[:, None] * self.sgn[None, :])

    def sea_level_temperature(self, s: np.ndarray) -> np.ndarray:
        decl = 23.44 * s[:, None]
        t = 259.0 + 40.0 * np.cos(np.deg2rad(self.lat[None, :] - 0.45 * decl))
        t -= 14.0 * np.abs(self.sin) ** 3 * self.winter(s)
        return t - 6.0 * np.maximum(0.0, -self.sin) ** 4  # the colder south pole

    def tropopause_temperature(self, s: np.ndarray) -> np.ndarray:
        return 193.0 + 28.0 * self.sin**2 - 32.0 * self.sin**4 * self.winter(s)

    def temperature(self, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        """(t, level, lat): lapse rate troposphere, isothermal above, warming aloft."""
        t0 = self.sea_level_temperature(s)[:, None, :]
        tt = self.tropopause_temperature(s)[:, None, :]
        pp = np.asarray(p, np.float64)[None, :, None]
        trop = t0 * (pp / 1000.0) ** 0.17
        strat = 4.0 * np.maximum(0.0, np.log(100.0 / pp)) * (1.0 - 0.5 * self.sin**2)
        return tt + 3.0 * _softplus((trop - tt) / 3.0) + strat

    def msl(self, s: np.ndarray) -> np.ndarray:
        a = np.abs(self.lat)
        itcz = 5.0 + 7.0 * s[:, None]
        return (101325.0 + 900.0 * _gauss(a, 32.0, 11.0) - 1400.0 * _gauss(a, 62.0, 10.0)
                - 500.0 * _gauss(self.lat[None, :], itcz, 10.0))

    def geopotential(self, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        """(t, level, lat) by the hypsometric equation integrated on a fixed fine grid, so
        each level's value does not depend on which other levels are requested."""
        fine = np.exp(np.linspace(np.log(1100.0), np.log(1.0), 600))
        t = self.temperature(fine, s)  # (t, fine, lat)
        lnp = np.log(fine)
        layers = 0.5 * (t[:, 1:] + t[:, :-1]) * (lnp[:-1] - lnp[1:])[None, :, None]
        z = np.concatenate([np.zeros_like(t[:, :1]), np.cumsum(layers, axis=1)], axis=1) * R_DRY
        i1000 = np.argmin(np.abs(fine - 1000.0))
        t0 = self.sea_level_temperature(s)
        z1000 = R_DRY * t0 * np.log(self.msl(s) / 100000.0)  # (t, lat)
        z = z - z[:, i1000:i1000 + 1] + z1000[:, None, :]
        out = np.empty((len(s), len(p), self.lat.size))
        for k, lvl in enumerate(p):  # interpolate in log pressure
            j = np.clip(np.searchsorted(-lnp, -np.log(lvl)), 1, fine.size - 1)
            w = (lnp[j - 1] - np.log(lvl)) / (lnp[j - 1] - lnp[j])
            out[:, k] = (1 - w) * z[:, j - 1] + w * z[:, j]
        return out

    def u(self, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        """(t, level, lat) zonal wind: seasonal subtropical jets, surface westerlies,
        trade easterlies, winter polar vortex aloft."""
        pp = np.asarray(p, np.float64)[None, :, None]
        lat = self.lat[None, None, :]
        out = np.zeros((len(s), pp.shape[1], self.lat.size))
        vert = 0.08 + 0.92 * np.exp(-np.log(pp / 200.0) ** 2 / (2 * 0.8**2))
        for sign in (1.0, -1.0):
            w = 0.5 * (1.0 - sign * s)[:, None, None]  # winter-ness of this hemisphere
            speed = 28.0 + 20.0 * w
            out += speed * vert * _gauss(lat, sign * (40.0 - 10.0 * w), 16.0)
            out += 45.0 * w * _gauss(np.abs(lat), 62.0, 10.0) * np.exp(-np.log(pp / 30.0) ** 2 / 0.72) * (
                np.sign(lat) == sign)
        low = np.clip((pp - 300.0) / 700.0, 0.0, 1.0)
        out += (4.0 * _gauss(np.abs(lat), 50.0, 12.0) - 3.0 * _gauss(np.abs(lat), 75.0, 8.0)) * low
        out -= 8.0 * _gauss(lat, 0.0, 15.0)
        return out * self.pole_taper

    def v(self, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        """(t, level, lat) Hadley cell: equatorward low, poleward aloft."""
        pp = np.asarray(p, np.float64)[None, :, None]
        rel = self.lat[None, None, :] - (5.0 + 7.0 * s)[:, None, None]
        return -1.8 * np.sin(np.pi * rel / 30.0) * _gauss(rel, 0.0, 20.0) * np.tanh((pp - 500.0) / 150.0)

    def omega(self, p: np.ndarray, s: np.ndarray) -> np.ndarray:
        pp = np.asarray(p, np.float64)[None, :, None]
        rel = self.lat[None, None, :] - (5.0 + 7.0 * s)[:, None, None]
        prof = np.exp(-np.log(pp / 500.0) ** 2 / (2 * 0.6**2))
        return (-0.05 * _gauss(rel, 0.0, 7.0) + 0.02 * _gauss(np.abs(self.lat)[None, None, :], 25.0, 8.0)) * prof


def _saturation_q(t: np.ndarray, p_pa: np.ndarray) -> np.ndarray:
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    return 0.622 * es / np.maximum(p_pa - 0.378 * es, 0.5 * p_pa)


def make_static_fields(grid: _Grid, seed: int) -> dict[str, np.ndarray]:
    """Random smooth continents (a third of the grid points), orography, soil types; (lon, lat)."""
    rng = np.random.default_rng([seed, 1])
    noise = _SphereNoise(grid)
    f = noise.sample(rng, np.stack([noise.spectrum(-4.0)] * 3))
    lat = grid.lat[None, :]
    cont = f[0] - 2.5 * (lat < -72)  # Antarctica
    thr = np.quantile(cont, 0.33)
    land = np.clip(0.5 - (cont - thr) / 0.4, 0.0, 1.0)  # fractional at the coasts, like a regridded mask
    height = land * (200.0 + 1200.0 * np.maximum(0.0, f[1] + 0.3) ** 1.5) + 2300.0 * land * (lat < -72)
    soil = np.where(land >= 0.5, 1.0 + np.floor(7.0 * (np.argsort(np.argsort(f[2].ravel())) / f[2].size)).reshape(
        f[2].shape), 0.0)
    return {
        "geopotential_at_surface": (GRAVITY * height).astype(np.float32),
        "land_sea_mask": land.astype(np.float32),
        "soil_type": np.minimum(soil, 7.0).astype(np.float32),
    }


class _Generator:
    """Steps the latent fields and turns them into WeatherBench2 variables."""

    def __init__(self, grid: _Grid, levels: Sequence[float], dt_hours: float, seed: int,
                 static: dict[str, np.ndarray]) -> None:
        self.grid = grid
        self.levels = np.asarray(levels, dtype=np.float64)
        self.clim = _Climate(grid)
        self.noise = _SphereNoise(grid)
        self.rng = np.random.default_rng([seed, 2])
        self.names = list(LATENTS)
        self.spectra = np.stack([self.noise.spectrum(LATENTS[k][0]) for k in self.names])
        self.decay = np.array([np.exp(-dt_hours / 24.0 / LATENTS[k][1]) for k in self.names])
        self.steer_p = np.array([LATENTS[k][2] for k in self.names])
        self.dt_s = dt_hours * 3600.0
        self.land = static["land_sea_mask"].astype(np.float64)
        self.height = static["geopotential_at_surface"].astype(np.float64) / GRAVITY
        self.state = self.noise.sample(self.rng, self.spectra)  # stationary start
        # fixed scales of the streamfunction gradients (measured once, so fields stay stationary)
        ref = self.noise.sample(np.random.default_rng([seed, 3]), np.stack([self.spectra[0]] * 16))
        gy, gx = self._gradients(ref)
        w = grid.weights
        self.grad_scale = (np.sqrt((gy**2 * w).sum((1, 2)).mean()), np.sqrt((gx**2 * w).sum((1, 2)).mean()))

    def _gradients(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d/d lat, d/d lon / cos lat) of (n, lon, lat) fields, unscaled."""
        dy = np.gradient(f, self.grid.phi, axis=-1)
        n_lon = self.grid.lon.size
        m = np.arange(n_lon // 2 + 1)[None, :, None]
        dx = np.fft.irfft(1j * m * np.fft.rfft(f, axis=1), n=n_lon, axis=1)
        return dy, dx / np.maximum(np.cos(self.grid.phi), np.cos(np.deg2rad(80.0)))

    def step(self, t: np.datetime64) -> None:
        """Advect by the jet at each latent's steering level, damp, add fresh noise."""
        s = self.clim.season(np.array([t]))
        u = self.clim.u(np.unique(self.steer_p), s)[0]  # (n_steer, lat)
        cos = np.maximum(np.cos(self.grid.phi), 1e-6)
        shift = _STEERING_FACTOR * u * self.dt_s / (EARTH_RADIUS * cos)  # radians of longitude per step
        shift = shift[np.searchsorted(np.unique(self.steer_p), self.steer_p)]  # (n_latent, lat)
        n_lon = self.grid.lon.size
        m = np.arange(n_lon // 2 + 1)[None, :, None]
        spec = np.fft.rfft(self.state, axis=1) * np.exp(-1j * m * shift[:, None, :])
        advected = np.fft.irfft(spec, n=n_lon, axis=1)
        innov = self.noise.sample(self.rng, self.spectra)
        d = self.decay[:, None, None]
        self.state = d * advected + np.sqrt(1.0 - d**2) * innov

    def fields(self, times: np.ndarray, latents: np.ndarray) -> dict[str, np.ndarray]:
        """WeatherBench2 variables for (t, latent, lon, lat) latents: (t, [level,] lon, lat)."""
        clim, p = self.clim, self.levels
        s = clim.season(times)
        lat = self.grid.lat
        L = {k: latents[:, i] for i, k in enumerate(self.names)}  # (t, lon, lat)
        gy_u, gx_u = self._gradients(L["psi_upper"])
        gy_l, gx_l = self._gradients(L["psi_lower"])
        sy, sx = self.grad_scale
        U_u, V_u, U_l, V_l = -gy_u / sy, gx_u / sx, -gy_l / sy, gx_l / sx

        storm = 0.35 + 0.65 * _gauss(np.abs(lat), 50.0, 22.0)  # (lat,) storm tracks
        h = np.clip(np.log(1000.0 / p) / np.log(20.0), 0.0, 1.2)
        c_up, c_lo = h**0.8, np.clip(1.0 - h, 0.0, None)
        norm = np.sqrt(c_up**2 + c_lo**2)
        c_up, c_lo = (c_up / norm)[None, :, None, None], (c_lo / norm)[None, :, None, None]

        def mix(lo: np.ndarray, up: np.ndarray) -> np.ndarray:  # (t, level, lon, lat)
            return c_lo * lo[:, None] + c_up * up[:, None]

        def prof(a: np.ndarray) -> np.ndarray:  # level amplitude -> broadcastable
            return np.asarray(a)[None, :, None, None]

        bump = np.exp(-np.log(p / 250.0) ** 2 / (2 * 0.7**2))

        def zon(x: np.ndarray) -> np.ndarray:  # (t, level, lat) -> (t, level, 1, lat)
            return x[:, :, None, :]

        out: dict[str, np.ndarray] = {}
        out["geopotential"] = zon(clim.geopotential(p, s)) + prof(800.0 + 700.0 * bump) * storm * mix(
            L["psi_lower"], L["psi_upper"])
        t_anom = prof(2.5 + 1.5 * np.exp(-np.log(p / 850.0) ** 2 / 0.5)) * storm * (
            0.5 * (L["psi_upper"] - L["psi_lower"])[:, None] / np.sqrt(2.0)
            + 0.85 * mix(L["theta_lower"], L["theta_upper"]))
        hour = pd.DatetimeIndex(times).hour.to_numpy() + pd.DatetimeIndex(times).minute.to_numpy() / 60.0
        local = (hour[:, None] + self.grid.lon[None, :] / 15.0) % 24.0  # (t, lon) local solar time
        decl = 23.44 * s
        sun = np.maximum(0.0, np.cos(np.deg2rad(lat[None, :] - decl[:, None])))  # (t, lat)
        diurnal = np.cos(2 * np.pi * (local - 15.0) / 24.0)[:, :, None] * sun[:, None, :] * (
            0.5 + 4.5 * self.land[None])  # (t, lon, lat), K at the surface
        near_sfc = np.clip((p - 800.0) / 200.0, 0.0, 1.0) ** 2
        temp = zon(clim.temperature(p, s)) + t_anom + 0.6 * prof(near_sfc) * diurnal[:, None]
        out["temperature"] = temp
        out["u_component_of_wind"] = zon(clim.u(p, s)) + prof(5.0 + 9.0 * bump) * storm * mix(U_l, U_u)
        out["v_component_of_wind"] = zon(clim.v(p, s)) + prof(6.0 + 12.0 * bump) * storm * mix(V_l, V_u)
        moist = (0.8 * L["moisture"] + 0.6 * L["theta_lower"])[:, None]
        rh = prof(0.75 * (p / 1000.0) ** 0.6 / (1.0 + (180.0 / p) ** 6))  # dry stratosphere
        out["specific_humidity"] = rh * _saturation_q(temp, prof(p * 100.0)) * np.exp(0.15 * moist - 0.011)
        out["specific_humidity"] += 2.6e-6 * np.exp(0.13 * L["theta_upper"][:, None])  # stratospheric water
        omega_amp = prof(0.01 + 0.16 * np.exp(-np.log(p / 550.0) ** 2 / (2 * 0.7**2)))
        storm_w = 0.8 + 0.3 * _gauss(np.abs(lat), 45.0, 20.0)
        out["vertical_velocity"] = zon(clim.omega(p, s)) + omega_amp * storm_w * (
            0.75 * L["ascent"][:, None] - 0.65 * mix(V_l, V_u))

        sin = np.sin(self.grid.phi)
        t2 = clim.sea_level_temperature(s)[:, None, :] - 0.0065 * self.height[None]
        t2 = t2 + self.land[None] * 8.0 * (s[:, None] * sin[None, :])[:, None, :] * np.abs(sin)
        t2 = t2 + diurnal + (1.5 + 2.5 * np.abs(sin)) * (0.6 * L["surface"] + 0.8 * L["theta_lower"])
        out["2m_temperature"] = t2
        u_sfc = clim.u(np.array([1000.0]), s)[:, 0, None, :]
        v_sfc = clim.v(np.array([1000.0]), s)[:, 0, None, :]
        out["10m_u_component_of_wind"] = 0.8 * u_sfc + 4.5 * storm * U_l
        out["10m_v_component_of_wind"] = 0.8 * v_sfc + 5.5 * storm * V_l
        out["mean_sea_level_pressure"] = clim.msl(s)[:, None, :] + 1100.0 * storm * L["psi_lower"]
        return {k: v.astype(np.float32) for k, v in out.items()}


def _blocks(grid: _Grid, times: np.ndarray, levels: Sequence[int], freq_hours: float, seed: int,
            static: dict[str, np.ndarray]) -> Any:
    """Yields ``(a, b, {variable: values for times[a:b]})`` in time order; blocks bound
    the float64 temporaries (~1e6 values per variable), the result does not depend on them."""
    n_lon, n_lat = grid.shape
    gen = _Generator(grid, levels, freq_hours, seed, static)
    block = max(1, min(32, 1_000_000 // (len(levels) * n_lon * n_lat)))
    for a in range(0, times.size, block):
        b = min(a + block, times.size)
        latents = np.empty((b - a, len(gen.names), n_lon, n_lat))
        for i in range(a, b):
            if i > 0:
                gen.step(times[i])
            latents[i - a] = gen.state
        yield a, b, gen.fields(times[a:b], latents)


def _time_axis(start: Any, end: Any, freq_hours: int) -> np.ndarray:
    if int(freq_hours) != freq_hours or freq_hours < 1:
        raise ValueError(f"freq_hours must be a positive integer, got {freq_hours}")
    t0, t1 = to_datetime64(start), to_datetime64(end)
    if t1 < t0:
        raise ValueError(f"end {end} is before start {start}")
    return pd.date_range(t0, t1, freq=f"{int(freq_hours)}h").to_numpy().astype("datetime64[ns]")


def make_demo_data(out_path: str | os.PathLike, *, resolution_deg: float = 7.5, start: Any = "2020-01-01",
                   end: Any = "2020-12-31T18:00", freq_hours: int = 6, seed: int = 0,
                   levels: Sequence[int] = variables.PRESSURE_LEVELS, overwrite: bool = False,
                   progress: bool = False) -> Path:
    """Write the synthetic store (zarr v2, consolidated, WeatherBench2 names, dims
    ``(time, [level,] longitude, latitude)``, latitude south to north, integer hours).

    Written into a temporary folder beside ``out_path`` and renamed, so a crash never
    leaves a half store under the final name.
    """
    import numcodecs
    import xarray as xr
    import zarr

    out = Path(out_path)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    grid = _Grid.from_resolution(resolution_deg)
    times = _time_axis(start, end, freq_hours)
    levels = [int(x) for x in levels]
    if not levels or len(set(levels)) != len(levels) or min(levels) <= 0:
        raise ValueError(f"levels must be distinct positive pressures in hPa, got {levels}")
    n_lon, n_lat = grid.shape
    static = make_static_fields(grid, seed)

    import dask.array as da

    compressor = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for var in variables.SURFACE_VARIABLES:
        data_vars[var] = (("time", "longitude", "latitude"),
                          da.zeros((times.size, n_lon, n_lat), chunks=(1, n_lon, n_lat), dtype=np.float32),
                          ATTRS[var])
        encoding[var] = {"chunks": (1, n_lon, n_lat), "compressors": (compressor,)}
    for var in variables.ATMOSPHERIC_VARIABLES:
        shape = (times.size, len(levels), n_lon, n_lat)
        data_vars[var] = (("time", "level", "longitude", "latitude"),
                          da.zeros(shape, chunks=(1, *shape[1:]), dtype=np.float32), ATTRS[var])
        encoding[var] = {"chunks": (1, *shape[1:]), "compressors": (compressor,)}
    for var, field in static.items():
        data_vars[var] = (("longitude", "latitude"), field, ATTRS[var])
        encoding[var] = {"compressors": (compressor,)}
    t0 = pd.Timestamp(times[0])
    encoding["time"] = {"units": f"hours since {t0:%Y-%m-%d %H:%M:%S}", "calendar": "proleptic_gregorian",
                        "dtype": "int64"}
    coords = {
        "time": ("time", times),
        "level": ("level", np.asarray(levels, np.int64), dict(long_name="pressure_level", units="millibars")),
        "longitude": ("longitude", grid.lon, dict(long_name="longitude", units="degrees_east")),
        "latitude": ("latitude", grid.lat, dict(long_name="latitude", units="degrees_north")),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs={
        "title": "mosaic-jax synthetic demo data in the WeatherBench2 layout",
        "source": (f"mosaic-jax make-demo-data (seed={seed}, resolution={resolution_deg} deg): advected "
                   "random fields with realistic climatology; not observations"),
    })

    with atomic_path(out) as tmp:
        ds.to_zarr(tmp, mode="w-", zarr_format=2, consolidated=True, compute=False, encoding=encoding)
        group = zarr.open_group(str(tmp), mode="r+", zarr_format=2)
        arrays = {name: group[name] for name in variables.SURFACE_VARIABLES + variables.ATMOSPHERIC_VARIABLES}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=times.size, desc=f"make-demo-data {n_lon}x{n_lat}", unit="step")
        for a, b, fields in _blocks(grid, times, levels, float(freq_hours), seed, static):
            for name, value in fields.items():
                arrays[name][a:b] = value
            if bar is not None:
                bar.update(b - a)
        if bar is not None:
            bar.close()
        zarr.consolidate_metadata(str(tmp), zarr_format=2)
    return out
