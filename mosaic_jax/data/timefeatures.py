"""Time handling shared by the store, the samples and the demo generator.

Times are ``datetime64[ns]`` everywhere; the model sees them only through the day and
year progress of SPEC.md (step 1: ``d = hour/24``, ``y = (day_of_year - 1)/days_in_year``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def to_datetime64(t: Any) -> np.datetime64:
    """One time (string, datetime, pandas/numpy timestamp) as ``datetime64[ns]``."""
    try:
        return np.datetime64(pd.Timestamp(t).to_datetime64(), "ns")
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot read {t!r} as a time: {e}") from None


def to_datetime64_array(times: Any) -> np.ndarray:
    """Times as a 1-D ``datetime64[ns]`` array."""
    arr = np.atleast_1d(np.asarray(times))
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ns]")
    return np.array([to_datetime64(t) for t in arr], dtype="datetime64[ns]")


def hours_since_epoch(times: Any) -> np.ndarray:
    """Integer hours since 1970-01-01 (the ``init_time`` of a training sample)."""
    t = to_datetime64_array(times)
    return (t - np.datetime64("1970-01-01T00", "ns")) // np.timedelta64(1, "h")


def format_time(t: Any) -> str:
    """``2020-01-01T06:00``: minutes are the finest unit weather stores use."""
    return str(np.datetime64(to_datetime64(t), "m"))


def day_year_progress(times: Any) -> np.ndarray:
    """``(n, 2)`` float32: day progress ``hour/24`` (fractional hours kept) and year
    progress ``(day_of_year - 1)/days_in_year`` with 365 or 366 days (SPEC.md)."""
    idx = pd.DatetimeIndex(to_datetime64_array(times))
    seconds = (idx - idx.normalize()).total_seconds().to_numpy()
    day = seconds / 86400.0
    days_in_year = np.where(idx.is_leap_year, 366.0, 365.0)
    year = (idx.day_of_year.to_numpy() - 1) / days_in_year
    return np.stack([day, year], axis=-1).astype(np.float32)
