"""Meta-World v3 single-task (MT1) pixel environment with the gymnasium API.

Observations are ``{"rgb": uint8 [H, W, 3] upright, "state": float32 [39]}``; ``info["success"]`` is
0.0 or 1.0. Object and goal positions are re-drawn at every reset from the env's own seeded generator,
as the paper requires ("Object and goal positions are randomized at the start of every episode",
Sec. IV), so ``reset(seed=s)`` followed by N resets reproduces the same N+1 layouts.

Why not ``gym.make("Meta-World/MT1", ...)``: it wraps the task in a ``RandomTaskSelectWrapper`` over
50 layouts pre-sampled at construction, ``reset(seed=...)`` changes nothing (Meta-World's ``reset``
ignores its seed; only the constructor's seed matters), and its render path is ~13x slower.
Meta-World's own reset also returns (and would draw) the previous layout's goal marker and, for
faucet/drawer, object position: :meth:`MetaWorldPixelEnv.reset` recomputes both.
"""

from __future__ import annotations

import difflib
from typing import Any, NamedTuple

from visarl.envs.rendering import configure_gl

configure_gl()  # before mujoco is imported (by gymnasium.envs.mujoco / metaworld)

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from visarl.envs.rendering import CameraModel, FrameRenderer  # noqa: E402

TASK_ALIASES: dict[str, str] = {
    "reach": "reach-v3",
    "faucet-open": "faucet-open-v3",
    "door-open": "door-open-v3",
    "drawer-open": "drawer-open-v3",
}
"""The paper's four tasks (Sec. IV) by short name."""

CAMERAS: tuple[str, ...] = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
"""Cameras of Meta-World's Sawyer scene (``xyz_base.xml``); the first five are fixed in the world."""

DEFAULT_CAMERA = "corner"
"""The authors' camera: their training script renders observations from ``cameras = ["corner"]`` for
``--cameras 0``, the setting of every command in their README (aliang8/visarl, visarl/online_rl_train.py).
That script also runs ``model.cam_pos[2][:] = [0.75, 0.075, 0.7]``: camera id 2 of Meta-World's Sawyer scene
is ``corner2`` (the order is topview, corner, corner2, ... in v2 as in v3), so the line moves corner2, which
their pixel observations do not use (only the evaluation videos of state-based agents), and leaves
``corner`` at its stock pose. Meta-World v3's ``corner4`` is exactly that moved corner2 (same position,
euler angles and fovy; see tests/test_envs.py), so ``camera=corner4`` gives the authors' moved view if
wanted. Over 100 random layouts of each of the four paper tasks, ``corner`` frames keep the gripper,
the object and the goal in view and unoccluded at reset."""

TCP_OFFSET = np.array([0.0, 0.0, -0.045])
"""Gripper tip (``tcp_center``, between the finger pads) minus the hand body position (state[0:3]).
The hand's orientation is held fixed by the mocap weld, so this is constant to within ~1.5 mm
(measured over random actions on all 50 tasks), below 0.2 px at 64x64."""

STATE_DIM = 39
"""Meta-World's observation: hand xyz (0:3), gripper opening (3), up to two objects as xyz + quaternion
(4:11, 11:18), the same 18 values of the previous step (18:36) and the goal xyz (36:39)."""


def task_names() -> list[str]:
    """Every valid task name: Meta-World's v3 MT1 tasks, then the paper's short names."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS) + list(TASK_ALIASES)


def resolve_task(name: str) -> str:
    """Full Meta-World name of a task ('reach' -> 'reach-v3'); ValueError listing the valid names."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    full = TASK_ALIASES.get(name, name)
    if full in ALL_V3_ENVIRONMENTS:
        return full
    valid = task_names()
    near = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown Meta-World task {name!r}.{hint} Valid tasks: {', '.join(valid)}")


class Keypoint(NamedTuple):
    """A task-relevant point in the current upright frame."""

    name: str
    """'gripper', 'object' (or 'object0', 'object1' for two-object tasks) or 'goal'."""
    kind: str
    """'gripper', 'object' or 'goal'."""
    x: float
    """Column, pixel centres at integers."""
    y: float
    """Row, pixel centres at integers (row 0 is the top of the upright frame)."""
    visible: bool
    """In the frame (and, for :meth:`MetaWorldPixelEnv.keypoints` with ``occlusion=True``, not hidden)."""


def _named_points(gripper: np.ndarray, objects: np.ndarray, goal: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    objs = np.asarray(objects).reshape(-1, 3)
    names = ["object"] if len(objs) == 1 else [f"object{i}" for i in range(len(objs))]
    points = [("gripper", "gripper", np.asarray(gripper))]
    points += [(n, "object", p) for n, p in zip(names, objs, strict=True)]
    points.append(("goal", "goal", np.asarray(goal)))
    return points


def _keypoints(points: list[tuple[str, str, np.ndarray]], xy: np.ndarray, visible: np.ndarray) -> list[Keypoint]:
    return [
        Keypoint(name, kind, float(x), float(y), bool(v))
        for (name, kind, _), (x, y), v in zip(points, xy, visible, strict=True)
    ]


def keypoint_names(n_objects: int = 1) -> list[tuple[str, str]]:
    """(name, kind) of each keypoint, in the order every keypoint function returns them."""
    return [(name, kind) for name, kind, _ in _named_points(np.zeros(3), np.zeros(3 * n_objects), np.zeros(3))]


def keypoints_from_states(states: np.ndarray, camera: CameraModel, n_objects: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Batched :func:`keypoints_from_state`: states [B, 39] -> (xy [B, K, 2] float, visible [B, K] bool).

    K = 2 + n_objects, ordered as :func:`keypoint_names`; ``visible`` means inside the frame.
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != STATE_DIM:
        raise ValueError(f"states must have shape [B, {STATE_DIM}], got {states.shape}")
    points = [states[:, 0:3] + TCP_OFFSET]  # gripper tip
    points += [states[:, 4 + 7 * i : 7 + 7 * i] for i in range(n_objects)]  # object i: xyz, then a quaternion
    points.append(states[:, 36:39])  # goal
    points = np.stack(points, axis=1)  # [B, K, 3]
    b, k = points.shape[:2]
    xy, depth = camera.project(points.reshape(-1, 3))
    visible = camera.in_frame(xy, depth)
    return xy.reshape(b, k, 2), visible.reshape(b, k)


def keypoints_from_state(state: np.ndarray, camera: CameraModel, n_objects: int = 1) -> list[Keypoint]:
    """Keypoints of a stored frame from its 39-d state alone, no simulation (``visible`` = in the frame).

    The gripper tip is the hand position plus :data:`TCP_OFFSET`; objects are state[4:7] (and
    state[11:14]); the goal is state[36:39] (observable, as in MT1). Needs a world-fixed camera.
    """
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (STATE_DIM,):
        raise ValueError(f"state must have shape ({STATE_DIM},), got {state.shape}")
    xy, visible = keypoints_from_states(state[None], camera, n_objects)
    return [
        Keypoint(name, kind, float(x), float(y), bool(v))
        for (name, kind), (x, y), v in zip(keypoint_names(n_objects), xy[0], visible[0], strict=True)
    ]


class MetaWorldPixelEnv(gym.Env):
    """One Meta-World v3 task with pixel + state observations, fresh layouts per reset, lean rendering.

    Args:
        task: Meta-World name ('reach-v3') or one of the paper's short names ('reach', 'faucet-open',
            'door-open', 'drawer-open').
        image_size: frame size, an int (square) or (height, width).
        camera: one of :data:`CAMERAS`.
        action_repeat: env steps per agent step, on top of Meta-World's own frame_skip of 5 physics
            steps; rewards are summed over them and one frame is rendered after the last.
        episode_length: agent steps before ``truncated=True`` (Meta-World never sets ``terminated``).
        shadows, reflections, skybox, multisample: rendering features, off for speed.
        seed: seeds the first ``reset()`` that is not given a seed, so a vector env's plain
            ``reset()`` is reproducible too.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str = "reach",
        *,
        image_size: int | tuple[int, int] = 64,
        camera: str = DEFAULT_CAMERA,
        action_repeat: int = 1,
        episode_length: int = 500,
        shadows: bool = False,
        reflections: bool = False,
        skybox: bool = False,
        multisample: bool = False,
        render_mode: str | None = "rgb_array",
        seed: int | None = None,
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = resolve_task(task)
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; valid cameras: {', '.join(CAMERAS)}")
        if action_repeat < 1 or episode_length < 1:
            raise ValueError(f"action_repeat and episode_length must be >= 1, got {action_repeat}, {episode_length}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.image_size = (int(height), int(width))
        self.camera = camera
        self.action_repeat = int(action_repeat)
        self.episode_length = int(episode_length)
        self.render_mode = render_mode

        # The raw task env, set up like MT1 (goal observable) but without the 50 frozen layouts: with
        # _freeze_rand_vec off and seeded_rand_vec on, each reset draws a fresh continuous layout from
        # the env's own np_random, which reset(seed=...) re-seeds.
        mw = ALL_V3_ENVIRONMENTS[self.task](width=width, height=height)
        mw._set_task_called = True
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        if mw._partially_observable:
            mw._partially_observable = False
            mw.__dict__.pop("sawyer_observation_space", None)  # cached property built for hidden goals
        # Meta-World refuses to step past its own 500-step horizon; ours counts agent steps.
        mw.max_path_length = self.episode_length * self.action_repeat
        self._mw = mw
        # one agent step is action_repeat * frame_skip (5) physics steps of 2.5 ms: 80 Hz without repeats
        self.metadata = {**self.metadata, "render_fps": round(1.0 / (mw.dt * self.action_repeat))}
        self._n_objects = len(mw._get_pos_objects()) // 3

        self._renderer = FrameRenderer(
            mw.model,
            camera,
            height,
            width,
            shadows=shadows,
            reflections=reflections,
            skybox=skybox,
            multisample=multisample,
        )
        self._fixed_camera = bool(mw.model.cam_bodyid[mw.model.camera(camera).id] == 0)
        self._camera = self._renderer.camera_model(mw.model, mw.data)

        self.observation_space = gym.spaces.Dict(
            {
                "rgb": gym.spaces.Box(0, 255, (height, width, 3), np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._frame: np.ndarray | None = None
        self._state: np.ndarray | None = None
        self._t = 0
        self._pending_seed = seed

    # ----------------------------------------------------------------------------------------------
    # gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        super().reset(seed=seed)
        if seed is not None:
            # Meta-World's reset ignores its seed; its layouts come from the generator seed() sets.
            self._mw.seed(int(seed))
            self.action_space.seed(int(seed))
        mw = self._mw
        mw.reset()
        # reset_model places the layout by editing the model (goal site, and for faucet/drawer the
        # object's base body) after the last physics step, so the drawn positions (data.site_xpos,
        # data.xpos) and the state Meta-World returns still show the previous layout. Recompute both.
        mujoco.mj_forward(mw.model, mw.data)
        current = mw._get_curr_obs_combined_no_goal()  # [18]
        mw._prev_obs = current.copy()  # at reset the "previous" half repeats the current one
        state = np.hstack([current, current, mw._get_pos_goal()])
        self._t = 0
        return self._observe(state), {"success": 0.0}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        total = 0.0
        terminated = False
        for _ in range(self.action_repeat):
            state, reward, terminated, _, info = self._mw.step(action)
            total += float(reward)
            if terminated:
                break
        self._t += 1
        truncated = self._t >= self.episode_length and not terminated
        info = {k: float(v) for k, v in info.items() if np.isscalar(v)}
        info["success"] = float(bool(info.get("success", 0.0)))
        return self._observe(state), total, bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """The last observed frame (rendering happens once per step, in :meth:`step`)."""
        return None if self._frame is None else self._frame.copy()

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_mw", None) is not None:
            self._mw.close()
            self._mw = None

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self._frame = self._renderer.render(self._mw.data)
        self._state = np.asarray(state, dtype=np.float32)
        return {"rgb": self._frame, "state": self._state.copy()}

    # ----------------------------------------------------------------------------------------------
    # extras

    @property
    def unwrapped_metaworld(self) -> Any:
        """The underlying Meta-World ``SawyerXYZEnv``."""
        return self._mw

    @property
    def n_objects(self) -> int:
        """How many objects the task reports in its state (1, or 2 for hammer / stick-push / stick-pull)."""
        return self._n_objects

    @property
    def camera_model(self) -> CameraModel:
        """The camera's pinhole model at the frame size; constant for world-fixed cameras."""
        if self._fixed_camera:
            return self._camera
        return self._renderer.camera_model(self._mw.model, self._mw.data)

    @property
    def layout(self) -> np.ndarray:
        """The random vector Meta-World drew for this episode's object/goal layout."""
        return np.array(self._mw._last_rand_vec, dtype=np.float64)

    def keypoints(self, occlusion: bool = True, depth_tolerance: float = 0.04) -> list[Keypoint]:
        """Keypoints of the current frame from the simulator's 3-D positions.

        Gripper tip (``tcp_center``), the task's object(s) (``_get_pos_objects()``) and the goal
        (``_target_pos``), projected with the camera's pose and fovy. With ``occlusion``, ``visible``
        also needs a depth render to show, in the 3x3 pixels around the point, a surface no more than
        ``depth_tolerance`` metres in front of it: the points are object centres (inside the handle,
        between the finger pads), so a surface a few cm in front is the thing itself.
        """
        if self._state is None:
            raise RuntimeError("call reset() before keypoints()")
        mw = self._mw
        points = _named_points(mw.tcp_center.copy(), mw._get_pos_objects().copy(), np.array(mw._target_pos))
        cam = self.camera_model
        xy, depth = cam.project(np.stack([p for _, _, p in points]))
        visible = cam.in_frame(xy, depth)
        if occlusion and visible.any():
            zbuf = self._renderer.render_depth(mw.data)  # [H, W]
            for i in np.flatnonzero(visible):
                c, r = int(round(xy[i, 0])), int(round(xy[i, 1]))
                window = zbuf[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
                visible[i] = bool((window >= depth[i] - depth_tolerance).any())
        return _keypoints(points, xy, visible)

    def keypoints_from_state(self, state: np.ndarray) -> list[Keypoint]:
        """Keypoints of a stored frame of this task and camera from its 39-d state (see module function)."""
        if not self._fixed_camera:
            raise ValueError(f"camera {self.camera!r} moves with the robot: its pose is not in the state")
        return keypoints_from_state(state, self._camera, self._n_objects)

    def keypoints_from_states(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batched: states [B, 39] -> (xy [B, K, 2], visible [B, K]) in this env's frames."""
        if not self._fixed_camera:
            raise ValueError(f"camera {self.camera!r} moves with the robot: its pose is not in the state")
        return keypoints_from_states(states, self._camera, self._n_objects)

    def render_segmentation(self) -> np.ndarray:
        """Upright segmentation [H, W, 2] (object id, mjtObj type) of the current state; -1 is background."""
        return self._renderer.render_segmentation(self._mw.data)
