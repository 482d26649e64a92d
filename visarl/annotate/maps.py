"""Clicks -> saliency maps: re-exported from :mod:`visarl.core.maps`, the one implementation (see its docstring
for the coordinates, the sigma reference of 400 px and the sum / max combination)."""

from visarl.core.maps import (
    COMBINE,
    COMBINE_MODES,
    REFERENCE_SIZE,
    SIGMA,
    clicks_to_map,
    frame_sigma,
    maps_from_clicks,
    points_to_maps,
)

__all__ = [
    "COMBINE",
    "COMBINE_MODES",
    "REFERENCE_SIZE",
    "SIGMA",
    "clicks_to_map",
    "frame_sigma",
    "maps_from_clicks",
    "points_to_maps",
]
