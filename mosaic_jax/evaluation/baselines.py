"""Reference forecasts, scored by exactly the code that scores the model.

Both return a one-member "ensemble" ``(1, lead, ...)`` so that they go through the same
per-sample statistics as the model (their CRPS is then the mean absolute error, the CRPS
of a point forecast; spread and rank histograms are undefined for them).

* Persistence: the truth at the init time, for every lead.
* Climatology: the climatology at each valid time (its ACC is undefined: zero anomaly).
"""

from __future__ import annotations

import numpy as np

BASELINES: tuple[str, ...] = ("persistence", "climatology")


def persistence_forecast(truth_at_init: np.ndarray, n_leads: int) -> np.ndarray:
    """``(1, n_leads, ...)``: the initial truth repeated (a view, no copy)."""
    x = np.asarray(truth_at_init)
    return np.broadcast_to(x[None, None], (1, n_leads) + x.shape)


def climatology_forecast(climatology_at_valid: np.ndarray) -> np.ndarray:
    """``(1, lead, ...)``: the climatology at each lead's valid time."""
    return np.asarray(climatology_at_valid)[None]
