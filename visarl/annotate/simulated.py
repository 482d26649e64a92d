"""The simulated annotator: clicks where a person would, on the projected keypoints of stored frames.

ViSaRL's annotators click "the end-effector position, typically with more saliency concentrated near the
gripper tip, as well as the task specific objects and the goal location", 25 +- 5.8 clicks a frame (Sec. III-B).
This module draws that: a click count from N(clicks_mean, clicks_std) (rounded, clipped), each click aimed at
the gripper, an object or the goal with the per-kind weights (renormalised over the keypoints inside the
frame), gripper clicks spread along the gripper from the tip up to the hand body with a Beta(1, tip_bias)
position (mass near the tip), and Gaussian jitter of ``jitter`` frame pixels on every click. It clicks only
the parts the task's guidance names (:mod:`visarl.annotate.guidance`: on reach, the gripper and the goal, not
the puck), the same description the page shows a person, and labels each click with the part it aimed at.

Where keypoints come from: the stored 39-d ``state`` of each frame (hand, object and goal positions) projected
with the shard's world-fixed camera (:func:`visarl.envs.keypoints_from_states`). Nothing is re-simulated: the
simulator cannot be set back to a stored frame from its observation alone (joint velocities, the arm's joint
angles and the layout's hidden parts are not in it), while the positions that matter are in the state exactly,
for any stored frame, whichever policy collected it. The cost is that occlusion is unknown: ``visible`` means
inside the frame, and a point hidden behind the arm still gets clicks (a person would click where it is too).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from visarl.annotate.guidance import PARTS
from visarl.config import ConfigError

KINDS = PARTS


@dataclass
class SimulatedConfig:
    """How the simulated annotator clicks (``annotator: simulated``)."""

    clicks_mean: float = 25.0
    """Mean clicks per frame (paper: 25 +- 5.8)."""
    clicks_std: float = 5.8
    """Standard deviation of the clicks per frame."""
    min_clicks: int = 5
    """Fewest clicks on a frame with a keypoint in view."""
    max_clicks: int = 60
    """Most clicks on a frame."""
    jitter_px: float = 12.5
    """Click scatter (std, px) at ``reference_size`` like sigma; 12.5 px at 400 is 2 px on a 64 px frame."""
    gripper_weight: float = 0.5
    """Share of clicks on the gripper (the shares are renormalised over the parts the task's guidance names)."""
    object_weight: float = 0.3
    """Share of clicks on the task's object(s), split evenly between them."""
    goal_weight: float = 0.2
    """Share of clicks on the goal."""
    tip_bias: float = 3.0
    """Gripper clicks lie at Beta(1, tip_bias) of the way from the tip to the hand body: higher = nearer the tip."""

    def __post_init__(self) -> None:
        if not self.clicks_mean > 0 or self.clicks_std < 0:
            raise ConfigError(
                f"simulated.clicks_mean must be > 0 and clicks_std >= 0, got {self.clicks_mean}, {self.clicks_std}"
            )
        if not 1 <= self.min_clicks <= self.max_clicks:
            raise ConfigError(
                f"simulated: need 1 <= min_clicks <= max_clicks, got {self.min_clicks}, {self.max_clicks}"
            )
        if self.jitter_px < 0 or self.tip_bias <= 0:
            raise ConfigError(
                f"simulated: jitter_px must be >= 0 and tip_bias > 0, got {self.jitter_px}, {self.tip_bias}"
            )
        weights = (self.gripper_weight, self.object_weight, self.goal_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"simulated: kind weights must be >= 0 with a positive sum, got {weights}")


class SimulatedAnnotator:
    """Draws clicks ``[M, 2]`` of ``(x=col, y=row)`` frame pixels for frames given their projected keypoints.

    All lengths are in frame pixels (the runner scales ``jitter_px`` from the reference resolution). Each frame
    has its own generator, seeded by ``(seed, frame index)``, so a frame's clicks do not depend on the others.
    """

    def __init__(
        self,
        clicks_mean: float = 25.0,
        clicks_std: float = 5.8,
        min_clicks: int = 5,
        max_clicks: int = 60,
        jitter: float = 2.0,
        weights: Mapping[str, float] | None = None,
        tip_bias: float = 3.0,
    ) -> None:
        self.clicks_mean, self.clicks_std = float(clicks_mean), float(clicks_std)
        self.min_clicks, self.max_clicks = int(min_clicks), int(max_clicks)
        self.jitter, self.tip_bias = float(jitter), float(tip_bias)
        self.weights = {"gripper": 0.5, "object": 0.3, "goal": 0.2, **(weights or {})}
        unknown = set(self.weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown keypoint kinds {sorted(unknown)}; kinds are {KINDS}")

    def frame_clicks(
        self,
        xy: np.ndarray,
        visible: np.ndarray,
        kinds: Sequence[str],
        hand: np.ndarray | None,
        height: int,
        width: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Clicks ``[M, 2]`` for one frame from keypoints ``xy [K, 2]``, ``visible [K]``, their ``kinds`` and the
        hand body's pixel ``hand [2]`` (None: gripper clicks sit on the tip). No visible keypoint: no clicks."""
        return self.labelled_frame_clicks(xy, visible, kinds, hand, height, width, rng)[0]

    def labelled_frame_clicks(
        self,
        xy: np.ndarray,
        visible: np.ndarray,
        kinds: Sequence[str],
        hand: np.ndarray | None,
        height: int,
        width: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, list[str]]:
        """:meth:`frame_clicks` and the part each click aimed at (``[M]``, from ``kinds``)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        visible = np.asarray(visible, bool).reshape(-1)
        per_kind = {k: max(1, sum(kk == k for kk in kinds)) for k in KINDS}
        # A kind's weight is shared by its keypoints (two objects: half each), then only visible ones count.
        w = np.array([self.weights.get(k, 0.0) / per_kind.get(k, 1) for k in kinds]) * visible
        if w.sum() <= 0:
            return np.zeros((0, 2)), []
        m = int(np.clip(np.rint(rng.normal(self.clicks_mean, self.clicks_std)), self.min_clicks, self.max_clicks))
        target = rng.choice(len(xy), size=m, p=w / w.sum())  # [M] keypoint each click aims at
        pts = xy[target].copy()
        on_gripper = np.array([kinds[t] == "gripper" for t in target], bool)
        if hand is not None and np.all(np.isfinite(hand)) and on_gripper.any():
            # Along the gripper, from the tip (t = 0) to the hand body (t = 1), mostly near the tip (paper).
            t = rng.beta(1.0, self.tip_bias, size=int(on_gripper.sum()))[:, None]
            pts[on_gripper] += t * (np.asarray(hand, np.float64) - pts[on_gripper])
        pts += rng.normal(0.0, self.jitter, size=pts.shape)
        # The store accepts clicks inside the frame only: [-0.5, W - 0.5] x [-0.5, H - 0.5].
        pts[:, 0] = np.clip(pts[:, 0], -0.5, width - 0.5)
        pts[:, 1] = np.clip(pts[:, 1], -0.5, height - 0.5)
        return pts, [str(kinds[t]) for t in target]

    def annotate(
        self,
        xy: np.ndarray,
        visible: np.ndarray,
        kinds: Sequence[str],
        hands: np.ndarray | None,
        height: int,
        width: int,
        seed: int,
    ) -> list[np.ndarray]:
        """Clicks for ``B`` frames: ``xy [B, K, 2]``, ``visible [B, K]``, ``hands [B, 2]`` (or None)."""
        return [
            self.frame_clicks(
                xy[i], visible[i], kinds, None if hands is None else hands[i], height, width, frame_rng(seed, i)
            )
            for i in range(len(xy))
        ]


def frame_rng(seed: int, frame: int) -> np.random.Generator:
    """The generator of frame ``frame``'s clicks: independent of the frame selection's ``default_rng(seed)``."""
    return np.random.default_rng([int(seed), 0x5A1, int(frame)])


def from_config(cfg: SimulatedConfig, jitter: float, parts: Sequence[str] = PARTS) -> SimulatedAnnotator:
    """The annotator of a config; ``jitter`` is ``cfg.jitter_px`` already in frame pixels. Parts not in
    ``parts`` (the task's guidance) get no clicks; ``ConfigError`` if that leaves no weight at all."""
    weights = {"gripper": cfg.gripper_weight, "object": cfg.object_weight, "goal": cfg.goal_weight}
    weights = {k: (w if k in parts else 0.0) for k, w in weights.items()}
    if sum(weights.values()) <= 0:
        raise ConfigError(f"simulated: the weights give no clicks to the guidance's parts {list(parts)}")
    return SimulatedAnnotator(
        clicks_mean=cfg.clicks_mean,
        clicks_std=cfg.clicks_std,
        min_clicks=cfg.min_clicks,
        max_clicks=cfg.max_clicks,
        jitter=jitter,
        weights=weights,
        tip_bias=cfg.tip_bias,
    )


@functools.lru_cache(maxsize=8)
def task_camera(task: str, camera: str, height: int, width: int) -> tuple[object, int]:
    """``(CameraModel, n_objects)`` of a task's world-fixed camera at a frame size (builds the env once)."""
    # lazy: importing visarl.envs loads MuJoCo and picks its GL backend
    from visarl.envs import STATE_DIM, MetaWorldPixelEnv

    env = MetaWorldPixelEnv(task, image_size=(height, width), camera=camera)
    try:
        env.keypoints_from_states(np.zeros((1, STATE_DIM)))  # raises for a camera that moves with the robot
        return env.camera_model, env.n_objects
    finally:
        env.close()


def project_keypoints(
    states: np.ndarray, task: str, camera: str, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Keypoints of stored frames from their states ``[B, 39]``: ``(xy [B, K, 2], visible [B, K], kinds [K],
    hands [B, 2])``, where ``hands`` is the hand body's pixel (NaN when out of the frame)."""
    # lazy: importing visarl.envs loads MuJoCo and picks its GL backend
    from visarl.envs import keypoint_names, keypoints_from_states

    cam, n_objects = task_camera(task, camera, height, width)
    xy, visible = keypoints_from_states(states, cam, n_objects)
    hands, depth = cam.project(np.asarray(states, np.float64)[:, 0:3])  # state[0:3] is the hand body
    hands[~cam.in_frame(hands, depth)] = np.nan
    return xy, visible, [kind for _, kind in keypoint_names(n_objects)], hands
