"""The main job's pipeline (make demo) end to end on a tiny configuration."""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from mosaic_jax.config import BottleneckConfig, StageConfig, get_config
from mosaic_jax.demo import DemoSettings, run_demo, skill_vs_persistence


def tiny_settings() -> DemoSettings:
    stage = StageConfig(nside=4, dim=16, num_heads=2, block_attn_size=48, sparse_block_size=12,
                        sparse_block_count=2, encoder_depth=1, decoder_depth=1, mlp_ratio=2.0, gqa_ratio=2)
    bottleneck = BottleneckConfig(nside=2, dim=16, num_heads=2, block_attn_size=12, sparse_block_size=4,
                                  sparse_block_count=2, depth=1, mlp_ratio=2.0, gqa_ratio=2)
    model = dataclasses.replace(get_config("demo"), stages=(stage,), bottleneck=bottleneck, n_lon=24, n_lat=13,
                                k_neighbors=4)
    return DemoSettings(model=model, resolution_deg=15.0, data_start="2020-01-01", data_end="2020-01-12T18:00",
                        train_end="2020-01-06T18:00", val_start="2020-01-07", val_end="2020-01-08T18:00",
                        train_steps=6, eval_every=3, forecast_inits=("2020-01-09T00", "2020-01-10T00"),
                        forecast_members=2, forecast_steps=4)


def test_demo_pipeline_end_to_end(tmp_path):
    result = run_demo(tmp_path / "demo", tiny_settings(), progress=False)
    ev = result["evaluation"]
    assert result["train_metrics"]["step"] == 6 and np.isfinite(result["train_metrics"]["loss"])
    fc = xr.open_zarr(result["forecast"])
    assert fc.sizes == {"time": 2, "member": 2, "prediction_timedelta": 4, "level": 13, "longitude": 24,
                        "latitude": 13}
    assert ev["scorecard_md"].exists() and ev["netcdf"].exists()
    assert any(p.name == "metrics_vs_lead.png" for p in ev["plots"])
    rows = skill_vs_persistence(ev["scorecard_csv"], 24)
    assert {r[0] for r in rows} >= {"Z500", "T850", "T2M"}
    assert all(np.isfinite(m) and np.isfinite(p) and p > 0 for _, m, p in rows)
    # the residual demo model's output scale comes from the run's own statistics
    from mosaic_jax.data import NormStats
    from mosaic_jax.training import load_trained_model

    cfg, _ = load_trained_model(result["workdir"])
    stats = NormStats.load(result["workdir"] / "stats.npz")
    np.testing.assert_allclose(cfg.residual_scale, stats.residual_std / stats.state_std, rtol=1e-12)
