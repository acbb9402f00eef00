"""Geometry against healpy, brute-force float64 great-circle distances and the release's buffers."""

from __future__ import annotations

import healpy
import numpy as np
import pytest

from mosaic_jax import grids
from tests.conftest import shared_file


@pytest.mark.parametrize("nside", [1, 2, 4, 8, 16])
def test_healpix_counts_and_nesting(nside):
    lon, lat = grids.healpix_points(nside)
    assert lon.shape == lat.shape == (12 * nside**2,)
    assert np.all((lat > -90) & (lat < 90)) and np.all((lon >= 0) & (lon < 360))
    # Children of coarse pixel j are fine pixels 4j..4j+3: each fine centre lies in pixel p // 4.
    fine_lon, fine_lat = grids.healpix_points(2 * nside)
    parent = healpy.ang2pix(nside, fine_lon, fine_lat, nest=True, lonlat=True)
    np.testing.assert_array_equal(parent, np.arange(12 * (2 * nside) ** 2) // 4)


def _great_circle(a_xyz, b_xyz):
    return np.arccos(np.clip(a_xyz @ b_xyz.T, -1.0, 1.0))


@pytest.mark.parametrize("to_healpix", [True, False])
def test_knn_are_nearest_by_great_circle(to_healpix):
    n_lon, n_lat, nside, k = 24, 13, 4, 6
    idx, rel = grids.interpolation_geometry(n_lon, n_lat, nside, k, to_healpix)
    ll = grids.lonlat_to_xyz(*grids.latlon_points(n_lon, n_lat))
    hp = grids.lonlat_to_xyz(*grids.healpix_points(nside))
    target, source = (hp, ll) if to_healpix else (ll, hp)
    dist = _great_circle(target, source)
    kth = np.sort(dist, axis=1)[:, k - 1]
    chosen = np.take_along_axis(dist, idx, axis=1)
    # Every chosen neighbour is within the k-th smallest distance (ties allowed), no duplicates.
    assert np.all(chosen <= kth[:, None] + 1e-6)
    assert all(len(set(row)) == k for row in idx)
    # rel is the unit direction target - source, or zero where they coincide.
    expected = target[:, None, :] - source[idx]
    norm = np.linalg.norm(expected, axis=-1, keepdims=True)
    expected = np.where(norm > 0, expected / np.maximum(norm, 1e-300), 0.0)
    np.testing.assert_allclose(rel, expected, atol=1e-6)


def test_neighbours_match_release_buffers():
    """The published checkpoint stores its neighbour tables: ours must be identical (ties included)."""
    from mosaic_jax.torch_zip import load_torch_checkpoint

    sd = load_torch_checkpoint(shared_file("fixtures/parity_tiny.pt"))["model_state_dict"]
    for key, to_hp in (("interp_to_hp", True), ("interp_to_ll", False)):
        idx, rel = grids.interpolation_geometry(48, 25, 8, 8, to_hp)
        np.testing.assert_array_equal(idx, sd[f"model.{key}.neighbors"])
        np.testing.assert_allclose(rel, sd[f"model.{key}.rel_pos"], atol=2e-5)  # release: float32 geometry
    np.testing.assert_allclose(grids.child_offsets(4), sd["model.downsample_layers.0.rel_pos"], atol=1e-5)
    np.testing.assert_allclose(grids.child_offsets(2), sd["model.upsample_layers.0.rel_pos"], atol=1e-5)
    angles = grids.rope_angles(8, 16, 10000.0)
    np.testing.assert_allclose(np.cos(angles), sd["model.encoder_stages.0.blocks.0.attention.q_rope.cos_freqs"],
                               atol=1e-6)


def test_rope_angles_formula():
    nside, d, theta = 2, 8, 10000.0
    lon, lat = (np.deg2rad(a) for a in grids.healpix_points(nside))
    ang = grids.rope_angles(nside, d, theta)
    for i in range(d // 2):
        j = i if i < d // 4 else i - d // 4
        coord = lon if i < d // 4 else lat
        np.testing.assert_allclose(ang[:, i], coord * theta ** (-4.0 * j / d), rtol=1e-6)


def test_child_offsets_against_healpy():
    coarse = 4
    theta_p, phi_p = healpy.pix2ang(coarse, np.arange(12 * coarse**2), nest=True)
    parent = healpy.ang2vec(theta_p, phi_p)
    children = healpy.ang2vec(*healpy.pix2ang(2 * coarse, np.arange(12 * (2 * coarse) ** 2), nest=True))
    rel = (children.reshape(-1, 4, 3) - parent[:, None, :]).reshape(-1, 12)
    expected = (rel - rel.mean(0)) / (rel.std(0, ddof=1) + 1e-6)
    np.testing.assert_allclose(grids.child_offsets(coarse), expected, atol=2e-5)


def test_knn_rejects_too_many_neighbours():
    with pytest.raises(ValueError, match="k_neighbors"):
        grids.great_circle_knn(grids.healpix_points(1), grids.healpix_points(1), 13)
