"""Channel layout of the published Mosaic model (SPEC.md, "Shapes and conventions").

The 82 predicted channels are 4 surface fields followed by 6 atmospheric
variables at 13 pressure levels, variable-major. Static fields are inputs only.
Names follow WeatherBench2's zarr variable names, so a channel ``{var}_{level}``
is ``store[var].sel(level=level)``.
"""

from __future__ import annotations

SURFACE_VARIABLES: tuple[str, ...] = (
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
    "mean_sea_level_pressure",
)
ATMOSPHERIC_VARIABLES: tuple[str, ...] = (
    "geopotential",
    "specific_humidity",
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
    "vertical_velocity",
)
PRESSURE_LEVELS: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
STATIC_VARIABLES: tuple[str, ...] = ("geopotential_at_surface", "land_sea_mask", "soil_type")


def channel_names(
    surface: tuple[str, ...] = SURFACE_VARIABLES,
    atmospheric: tuple[str, ...] = ATMOSPHERIC_VARIABLES,
    levels: tuple[int, ...] = PRESSURE_LEVELS,
) -> tuple[str, ...]:
    """Channel names in model order: surface, then ``{var}_{level}`` variable-major."""
    return tuple(surface) + tuple(f"{v}_{lvl}" for v in atmospheric for lvl in levels)


CHANNELS: tuple[str, ...] = channel_names()
assert len(CHANNELS) == 82


def split_channel(name: str) -> tuple[str, int | None]:
    """``'temperature_850'`` -> ``('temperature', 850)``; a surface name -> ``(name, None)``."""
    var, _, tail = name.rpartition("_")
    if var and tail.isdigit():
        return var, int(tail)
    return name, None
