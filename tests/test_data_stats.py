"""Normalization statistics: streaming computation against float64 numpy, the npz format, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic_jax import cli
from mosaic_jax.data import NormStats, WeatherStore, compute_stats, make_demo_data

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("stats") / "s.zarr", resolution_deg=15.0, start="2020-06-01",
                          end="2020-06-05T18:00", seed=1)


def _assert_close(got: NormStats, want: dict[str, np.ndarray]) -> None:
    """Stds to 1e-9 relative; means to 1e-9 of the channel's spread (some are ~0)."""
    for key, value in want.items():
        if key.endswith("std"):
            np.testing.assert_allclose(getattr(got, key), value, rtol=1e-9, err_msg=key)
        else:
            spread = want[key.replace("mean", "std")]
            assert np.all(np.abs(getattr(got, key) - value) <= 1e-9 * (spread + np.abs(value))), key


def _numpy_stats(x: np.ndarray, lag: int) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    r = x[lag:] - x[:-lag]
    c = x.shape[-1]
    return {"state_mean": x.reshape(-1, c).mean(0), "state_std": x.reshape(-1, c).std(0),
            "residual_mean": r.reshape(-1, c).mean(0), "residual_std": r.reshape(-1, c).std(0)}


@pytest.mark.parametrize("chunk_size,step_hours", [(1, 6), (3, 24), (64, 12)])
def test_streaming_stats_match_float64_numpy(store_path, chunk_size, step_hours):
    with WeatherStore(store_path) as s:
        x = s.states(np.arange(s.times.size))
        got = compute_stats(s, step_hours=step_hours, chunk_size=chunk_size)
    _assert_close(got, _numpy_stats(x, step_hours // 6))


def test_stats_over_a_time_range(store_path):
    with WeatherStore(store_path) as s:
        got = compute_stats(s, start="2020-06-02", end="2020-06-03T12:00", step_hours=24, chunk_size=2)
        i0, i1 = s.index_of("2020-06-02"), s.index_of("2020-06-03T12:00")
        x = s.states(np.arange(i0, i1 + 1))
    _assert_close(got, _numpy_stats(x, 4))  # residual pairs need both ends inside the range


def test_stats_errors(store_path):
    with WeatherStore(store_path) as s:
        with pytest.raises(ValueError, match="no store times in 2021-01-01T00:00..2021-02-01T00:00; the store covers"):
            compute_stats(s, start="2021-01-01", end="2021-02-01", step_hours=6)
        with pytest.raises(ValueError, match="no pair of times 240 h apart"):
            compute_stats(s, step_hours=240)


def test_save_load_is_the_published_format(tmp_path):
    rng = np.random.default_rng(0)
    stats = NormStats(state_mean=rng.normal(size=5), state_std=rng.uniform(1, 2, 5),
                      residual_mean=rng.normal(size=5), residual_std=rng.uniform(1, 2, 5))
    path = stats.save(tmp_path / "sub" / "norm.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["norm.npz"]  # no temp file left
    with np.load(path) as f:
        assert sorted(f.files) == ["residual_mean", "residual_std", "state_mean", "state_std"]
        assert all(f[k].shape == (5,) and f[k].dtype == np.float64 for k in f.files)
    back = NormStats.load(path)
    for key in ("state_mean", "state_std", "residual_mean", "residual_std"):
        np.testing.assert_array_equal(getattr(back, key), getattr(stats, key))
    x = rng.normal(size=(3, 4, 5)).astype(np.float32) * 10
    np.testing.assert_allclose(stats.denormalize(stats.normalize(x)), x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stats.normalize(x), (x - stats.state_mean) / stats.state_std, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="last axis has 4 channels, statistics have 5"):
        stats.normalize(x[..., :4])


def test_invalid_stats_and_files(tmp_path):
    with pytest.raises(ValueError, match="state_std: must be positive"):
        NormStats(np.zeros(2), np.array([1.0, 0.0]), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match=r"residual_mean: shape \(3,\), expected \(2,\)"):
        NormStats(np.zeros(2), np.ones(2), np.zeros(3), np.ones(2))
    with pytest.raises(FileNotFoundError):
        NormStats.load(tmp_path / "none.npz")
    np.savez(tmp_path / "bad.npz", state_mean=np.zeros(2))
    with pytest.raises(ValueError, match="missing key"):
        NormStats.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("variant", ["era5", "hres"])
def test_loads_published_stats_as_they_are(variant):
    path = REFERENCE / f"norm_stats_{variant}.npz"
    if not path.exists():
        pytest.skip(f"{path} absent (../shared is not checked out beside the repo)")
    stats = NormStats.load(path)
    assert stats.num_channels == 82
    assert 200 < stats.state_mean[0] < 320  # 2m_temperature in K
    with np.load(path) as f:
        assert set(stats.keys) == set(f.files)  # hres carries no residual statistics


def test_stats_cli(store_path, tmp_path, capsys):
    out = tmp_path / "norm.npz"
    assert cli.main(["stats", str(store_path), "--out", str(out), "--step-hours", "12", "--chunk-size", "5"]) == 0
    with WeatherStore(store_path) as s:
        want = compute_stats(s, step_hours=12)
    got = NormStats.load(out)
    np.testing.assert_allclose(got.residual_std, want.residual_std, rtol=1e-12)
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["stats", str(store_path), "--out", str(out), "--variant", "hres", "--start", "2030-01-01"]) == 2
    assert "the store covers 2020-06-01T00:00 to 2020-06-05T18:00" in capsys.readouterr().err
