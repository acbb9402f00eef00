"""Host-side geometry: lat-lon and HEALPix grids, neighbours, relative positions, RoPE angles.

Everything here is a numpy constant computed once per configuration (``functools.cache``)
and baked into the jitted model as a constant, never a parameter (SPEC.md, "Shapes and
conventions", "Cross-attention interpolation", "Down/Upsample").
"""

from __future__ import annotations

import functools

import healpy
import numpy as np
from sklearn.neighbors import BallTree

STANDARDIZE_EPS = 1e-6


def lonlat_to_xyz(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """Unit vectors ``(cos lat cos lon, cos lat sin lon, sin lat)``, shape (..., 3), float64."""
    lon = np.deg2rad(np.asarray(lon_deg, np.float64))
    lat = np.deg2rad(np.asarray(lat_deg, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def standardize_columns(a: np.ndarray) -> np.ndarray:
    """Per-column ``(a - mean) / (unbiased std + 1e-6)`` over rows, as the release does."""
    a = np.asarray(a, np.float64)
    return (a - a.mean(axis=0)) / (a.std(axis=0, ddof=1) + STANDARDIZE_EPS)


@functools.cache
def latlon_points(n_lon: int, n_lat: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (lon, lat) in degrees of the regular grid, lon-major: ``p = i_lon*n_lat + i_lat``.

    Latitude runs south to north including both poles; longitude starts at 0.
    """
    lon = np.arange(n_lon, dtype=np.float64) * (360.0 / n_lon)
    lat = np.linspace(-90.0, 90.0, n_lat, dtype=np.float64)
    lon2, lat2 = np.meshgrid(lon, lat, indexing="ij")
    return lon2.reshape(-1), lat2.reshape(-1)


@functools.cache
def healpix_points(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) in degrees of the NESTED HEALPix pixel centres (lon = phi, lat = 90 - theta)."""
    theta, phi = healpy.pix2ang(nside, np.arange(healpy.nside2npix(nside)), nest=True)
    return np.rad2deg(phi), 90.0 - np.rad2deg(theta)


def great_circle_knn(target_lonlat: tuple[np.ndarray, np.ndarray], source_lonlat: tuple[np.ndarray, np.ndarray],
                     k: int) -> np.ndarray:
    """Indices (n_target, k) of the k nearest sources by great-circle distance, nearest first.

    Symmetric grids have many exactly equidistant candidates, and which of them a
    checkpoint was trained with is a fact of the release, not of the geometry. The
    release's tables are reproduced exactly (verified against the fixture's buffers) by
    scikit-learn's haversine BallTree (default leaf size) on float32 (lat, lon) radians.
    """
    if k > len(source_lonlat[0]):
        raise ValueError(f"k_neighbors={k} is larger than the number of source points {len(source_lonlat[0])}")

    def radians(lonlat: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        lon, lat = (np.deg2rad(np.asarray(a).astype(np.float32)) for a in lonlat)
        return np.stack([lat, lon], axis=-1).astype(np.float64)

    _, idx = BallTree(radians(source_lonlat), metric="haversine").query(radians(target_lonlat), k=k)
    return np.asarray(idx, np.int32)


def relative_directions(target_xyz: np.ndarray, source_xyz: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``normalize(xyz_target - xyz_source)`` per (target, neighbour); zero vectors stay zero."""
    rel = target_xyz[:, None, :] - source_xyz[idx]
    norm = np.linalg.norm(rel, axis=-1, keepdims=True)
    return np.where(norm > 0, rel / np.where(norm > 0, norm, 1.0), 0.0)


@functools.cache
def interpolation_geometry(n_lon: int, n_lat: int, nside: int, k: int, to_healpix: bool
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices (n_target, k) int32 and relative directions (n_target, k, 3) float32."""
    ll, hp = latlon_points(n_lon, n_lat), healpix_points(nside)
    target, source = (hp, ll) if to_healpix else (ll, hp)
    idx = great_circle_knn(target, source, k)
    return idx, relative_directions(lonlat_to_xyz(*target), lonlat_to_xyz(*source), idx).astype(np.float32)


@functools.cache
def child_offsets(coarse_nside: int) -> np.ndarray:
    """Standardized child-minus-parent xyz offsets (n_coarse, 12), children child-major.

    With NESTED ordering the children of coarse pixel j are fine pixels 4j..4j+3.
    """
    parent = lonlat_to_xyz(*healpix_points(coarse_nside))
    child = lonlat_to_xyz(*healpix_points(2 * coarse_nside)).reshape(-1, 4, 3)
    rel = (child - parent[:, None, :]).reshape(-1, 12)
    return standardize_columns(rel).astype(np.float32)


@functools.cache
def grid_xyz_standardized(n_lon: int, n_lat: int) -> np.ndarray:
    """The lat-lon grid's xyz, standardized per column: the last 3 static input columns."""
    return standardize_columns(lonlat_to_xyz(*latlon_points(n_lon, n_lat))).astype(np.float32)


@functools.cache
def rope_angles(nside: int, head_dim: int, theta: float) -> np.ndarray:
    """Rotation angle of each (pixel, pair) for 2-D RoPE, shape (n_pix, head_dim/2), float32.

    Pair i rotates by ``lon * f_i`` for i < d/4 and ``lat * f_{i-d/4}`` otherwise, with
    ``f_j = theta^(-4j/d)`` and lon/lat in radians of the pixel centres.
    """
    if head_dim % 4:
        raise ValueError(f"head_dim={head_dim} must be divisible by 4 for 2-D RoPE")
    lon, lat = (np.deg2rad(a) for a in healpix_points(nside))
    freqs = theta ** (-4.0 * np.arange(head_dim // 4, dtype=np.float64) / head_dim)
    angles = np.concatenate([lon[:, None] * freqs, lat[:, None] * freqs], axis=1)
    return angles.astype(np.float32)
