"""The main job end to end on the embedded dataset: data -> CRPS training -> ensemble
forecasts from held-out initial conditions -> evaluation against persistence and climatology.

Every stage is the library's own public path (``make_demo_data``, ``training.train``,
``forecast.run_forecast``, ``evaluation.evaluate_forecasts``); the demo only chooses sizes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_jax.config import ModelConfig, get_config


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run. The defaults finish in well under 15 minutes on 2 CPU cores."""

    model: ModelConfig = dataclasses.field(default_factory=lambda: get_config("demo"))
    resolution_deg: float = 7.5
    data_start: str = "2020-01-01"
    data_end: str = "2020-12-31T18:00"
    train_end: str = "2020-10-31T18:00"
    val_start: str = "2020-11-01"
    val_end: str = "2020-11-30T18:00"
    train_steps: int = 3000
    batch_size: int = 2
    ensemble_members: int = 2
    learning_rate: float = 1e-3
    eval_every: int = 250
    forecast_inits: tuple[str, ...] = tuple(f"2020-12-{d:02d}T00" for d in range(1, 15, 2))
    forecast_members: int = 4
    forecast_steps: int = 40
    seed: int = 0


def run_demo(out_dir: str | Path, settings: DemoSettings = DemoSettings(), *, progress: bool = True
             ) -> dict[str, Any]:
    """Run every stage into ``out_dir``; returns the paths written and the headline scores."""
    import jax.numpy as jnp

    from mosaic_jax.data import NormStats, WeatherStore, make_demo_data
    from mosaic_jax.evaluation import evaluate_forecasts
    from mosaic_jax.forecast import run_forecast
    from mosaic_jax.training import TrainConfig, load_trained_model, train

    s = settings
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = time.perf_counter()
        print(f"\n== {name} ==", flush=True)

    stage("1/4 embedded dataset")
    store_path = out / "demo.zarr"
    if not store_path.exists():
        make_demo_data(store_path, resolution_deg=s.resolution_deg, start=s.data_start, end=s.data_end,
                       seed=s.seed, progress=progress)
    print(f"store: {store_path}")

    stage("2/4 CRPS training")
    workdir = out / "train"
    tc = TrainConfig(learning_rate=s.learning_rate, warmup_steps=min(50, s.train_steps // 10),
                     total_steps=s.train_steps, batch_size=s.batch_size, ensemble_members=s.ensemble_members,
                     compute_dtype="float32", remat=False, eval_every=s.eval_every, eval_batches=2,
                     checkpoint_every=max(s.train_steps // 3, 1), log_every=10, train_start=s.data_start,
                     train_end=s.train_end, val_start=s.val_start, val_end=s.val_end, seed=s.seed,
                     attention_impl="xla", loss_normalization="residual")
    metrics = train(s.model, tc, store_path, workdir, progress=progress)
    cfg, params = load_trained_model(workdir)
    stats = NormStats.load(workdir / "stats.npz")

    stage("3/4 ensemble forecasts from held-out initial conditions")
    store = WeatherStore(store_path, channels=cfg.channels, static_variables=cfg.static_variables,
                         grid=(cfg.n_lon, cfg.n_lat))
    forecast_path = out / "forecast.zarr"
    summary = run_forecast(cfg, params, store, stats, init_time=list(s.forecast_inits), num_steps=s.forecast_steps,
                           num_members=s.forecast_members, output=forecast_path, seed=s.seed, dtype=jnp.float32,
                           attention_impl="xla", progress=progress)
    print(summary.line())

    stage("4/4 evaluation against persistence and climatology")
    evaluation = evaluate_forecasts(forecast_path, store_path, out / "evaluation",
                                    climatology_period=(s.data_start, s.data_end), progress=progress)
    timings["end"] = time.perf_counter()
    names = list(timings)
    durations = {n: timings[b] - timings[n] for n, b in zip(names[:-1], names[1:])}
    return {"out_dir": out, "store": store_path, "workdir": workdir, "forecast": forecast_path,
            "train_metrics": metrics, "evaluation": evaluation, "durations": durations}


def skill_vs_persistence(scorecard_csv: Path, lead_hours: float) -> list[tuple[str, float, float]]:
    """(variable, model RMSE, persistence RMSE) rows of the scorecard at one lead time."""
    import pandas as pd

    table = pd.read_csv(scorecard_csv)
    rows = table[np.isclose(table["lead_hours"].astype(float), lead_hours)]
    return [(r["variable"], float(r["rmse"]), float(r["rmse_persistence"])) for _, r in rows.iterrows()]
