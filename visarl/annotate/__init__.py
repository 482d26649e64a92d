"""Saliency annotation (ViSaRL Sec. III-B, Fig. 5): a person clicks what matters in ~30 frames of a task.

- :mod:`~visarl.annotate.guidance`: what to click on each task (shown on the page, followed by the simulated annotator).
- :mod:`~visarl.annotate.maps`: clicks -> Gaussian saliency maps (from :mod:`visarl.core.maps`: sigma 10 px at 400 px).
- :mod:`~visarl.annotate.store`: the crash-safe click journal, the HDF5 export and its reader.
- :mod:`~visarl.annotate.server`: the local web page (stdlib HTTP server, no extra dependency).
- :mod:`~visarl.annotate.select`: which frames to annotate, ``random`` (paper) or ``diverse`` (greedy k-center).
- :mod:`~visarl.annotate.simulated`: the simulated annotator, clicking on keypoints projected from stored states.
- :mod:`~visarl.annotate.stage`: ``stage: annotate`` (registered with ``visarl.fit``; not imported here).
"""

from visarl.annotate.guidance import PARTS, TASK_GUIDANCE, Guidance, task_guidance
from visarl.annotate.maps import COMBINE_MODES, clicks_to_map, frame_sigma, maps_from_clicks
from visarl.annotate.select import FrameContext, FramePool, coverage, frame_pool, k_center, select_frames
from visarl.annotate.simulated import SimulatedAnnotator, SimulatedConfig
from visarl.annotate.store import (
    EXPORT_FORMAT,
    SCHEMA_VERSION,
    Annotations,
    AnnotationStore,
    FrameRef,
    load_annotations,
)

__all__ = [
    "COMBINE_MODES",
    "EXPORT_FORMAT",
    "PARTS",
    "SCHEMA_VERSION",
    "TASK_GUIDANCE",
    "AnnotationStore",
    "Annotations",
    "FrameContext",
    "FramePool",
    "FrameRef",
    "Guidance",
    "SimulatedAnnotator",
    "SimulatedConfig",
    "clicks_to_map",
    "coverage",
    "frame_pool",
    "frame_sigma",
    "k_center",
    "load_annotations",
    "maps_from_clicks",
    "select_frames",
    "task_guidance",
]
