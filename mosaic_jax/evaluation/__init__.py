"""Forecast evaluation the way WeatherBench2 defines it: skill, calibration and spectra.

Pure array functions (numpy or jax) live in ``metrics`` and ``spectra``; ``xr_metrics``
wraps them for xarray; ``evaluate_forecasts`` streams a forecast store against a WB2 truth
store and writes a tidy NetCDF, a scorecard and plots (``mosaic-jax evaluate``).
"""

from mosaic_jax.evaluation.metrics import (
    acc,
    bias,
    crps_fair,
    crps_fair_pointwise,
    ensemble_mean_rmse,
    ensemble_variance,
    latitude_weights,
    mse,
    rank_histogram,
    rank_of_truth,
    rmse,
    spatial_mean,
    spread,
    spread_skill_ratio,
)
from mosaic_jax.evaluation.spectra import (
    DEFAULT_BAND,
    EARTH_RADIUS_KM,
    band_mean,
    band_wavelength_km,
    spectral_ratio,
    wavelength_km,
    zonal_energy_spectrum,
)


def __getattr__(name: str):
    """``evaluate_forecasts`` is imported on first use: it pulls in xarray, pandas and tqdm."""
    if name == "evaluate_forecasts":
        from mosaic_jax.evaluation.evaluate import evaluate_forecasts

        return evaluate_forecasts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_BAND", "EARTH_RADIUS_KM", "acc", "band_mean", "band_wavelength_km", "bias", "crps_fair",
    "crps_fair_pointwise", "ensemble_mean_rmse", "ensemble_variance", "evaluate_forecasts", "latitude_weights",
    "mse", "rank_histogram", "rank_of_truth", "rmse", "spatial_mean", "spectral_ratio", "spread",
    "spread_skill_ratio", "wavelength_km", "zonal_energy_spectrum",
]
