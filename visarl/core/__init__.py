"""Pieces shared across stages that depend on no other visarl package.

- :mod:`~visarl.core.maps`: points (annotation clicks, projected keypoints) -> Gaussian saliency maps (numpy).
- :mod:`~visarl.core.io`: atomic file writes.
- :mod:`~visarl.core.log`: rank-zero logging (``get_logger``) and the console handler ``visarl.fit`` installs.
- :mod:`~visarl.core.saliency`: the saliency-source protocol (frames -> maps), shared by predictors and agents.
- :mod:`~visarl.core.runtime`: the stage runtime (Trainer from ``cfg.trainer``, checkpoints, resume); imported
  by the stages that train, not here, so that importing visarl.core stays free of Lightning.
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
