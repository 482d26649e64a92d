"""Pieces shared across stages that depend on no other visarl package (numpy only).

- :mod:`~visarl.core.maps`: points (annotation clicks, projected keypoints) -> Gaussian saliency maps.
"""

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
