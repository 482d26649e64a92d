"""Meta-World pixel environments: fast headless rendering, upright frames, keypoint projection.

Importing this package chooses MuJoCo's headless GL backend (EGL, else OSMesa) before mujoco loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from visarl.envs.rendering import configure_gl

configure_gl()

import gymnasium as gym  # noqa: E402

from visarl.config import ConfigError, choice  # noqa: E402
from visarl.envs.metaworld_env import (  # noqa: E402
    CAMERAS,
    DEFAULT_CAMERA,
    STATE_DIM,
    TASK_ALIASES,
    Keypoint,
    MetaWorldPixelEnv,
    keypoint_names,
    keypoints_from_state,
    keypoints_from_states,
    resolve_task,
    task_names,
)
from visarl.envs.rendering import CameraModel, FrameRenderer  # noqa: E402

__all__ = [
    "CAMERAS",
    "DEFAULT_CAMERA",
    "STATE_DIM",
    "TASK_ALIASES",
    "CameraModel",
    "EnvConfig",
    "FrameRenderer",
    "Keypoint",
    "MetaWorldPixelEnv",
    "configure_gl",
    "env_kwargs",
    "keypoint_names",
    "keypoints_from_state",
    "keypoints_from_states",
    "make_env",
    "make_env_from_config",
    "make_vector_env",
    "resolve_task",
    "task_names",
]


@dataclass
class EnvConfig:
    """The pixel environment, as stage configs embed it under ``env:``."""

    task: str = "reach"
    """Meta-World v3 task ('reach-v3', ...) or a paper short name: reach, faucet-open, door-open, drawer-open."""
    image_size: int = 64
    """Square frame size in pixels (the paper uses 64)."""
    camera: str = DEFAULT_CAMERA
    """Meta-World camera; default corner, the authors' view (their --cameras 0; see DEFAULT_CAMERA)."""
    action_repeat: int = 1
    """Env steps per agent step, on top of Meta-World's frame_skip of 5; rewards are summed."""
    episode_length: int = 500
    """Agent steps per episode before truncation."""
    shadows: bool = False
    """Render shadows (slow on a software rasterizer: ~10x the frame time)."""
    reflections: bool = False
    """Render floor reflections."""
    skybox: bool = False
    """Render the skybox."""
    multisample: bool = False
    """4x multisample anti-aliasing."""

    def __post_init__(self) -> None:
        try:
            resolve_task(self.task)
        except ValueError as e:
            raise ConfigError(f"env.task: {e}") from None
        choice("env.camera", self.camera, CAMERAS)
        for name in ("image_size", "action_repeat", "episode_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"env.{name}: must be a positive integer, got {value!r}")


def env_kwargs(cfg: EnvConfig) -> dict[str, Any]:
    """Constructor keyword arguments of :class:`MetaWorldPixelEnv` for a config."""
    return asdict(cfg)


def make_env(task: str = "reach", seed: int | None = None, **kwargs: Any) -> MetaWorldPixelEnv:
    """One pixel env; ``seed`` seeds its first reset (see :class:`MetaWorldPixelEnv` for the kwargs)."""
    return MetaWorldPixelEnv(task, seed=seed, **kwargs)


def make_env_from_config(cfg: EnvConfig, seed: int | None = None) -> MetaWorldPixelEnv:
    """One pixel env built from an :class:`EnvConfig`."""
    return make_env(seed=seed, **env_kwargs(cfg))


class _EnvFactory:
    """Picklable env constructor for vector-env worker processes."""

    def __init__(self, seed: int | None, kwargs: dict[str, Any]) -> None:
        self.seed, self.kwargs = seed, kwargs

    def __call__(self) -> MetaWorldPixelEnv:
        return MetaWorldPixelEnv(seed=self.seed, **self.kwargs)


def make_vector_env(
    num_envs: int,
    seed: int | None = 0,
    *,
    asynchronous: bool = True,
    context: str | None = "spawn",
    autoreset_mode: str | gym.vector.AutoresetMode | None = None,
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """``num_envs`` pixel envs stepping together; env i is seeded ``seed + i``.

    Asynchronous (default) runs each env in its own process, with one renderer each, so rendering
    runs in parallel. Workers start with ``spawn`` by default, so no GL state is inherited through
    ``fork`` (scripts need the usual ``if __name__ == "__main__":`` guard; pass ``context="fork"``
    otherwise). Synchronous is safe too: each visarl renderer makes its own GL context current.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    fns = [_EnvFactory(None if seed is None else seed + i, env_kwargs) for i in range(num_envs)]
    extra: dict[str, Any] = {}
    if autoreset_mode is not None:
        extra["autoreset_mode"] = autoreset_mode
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, context=context, **extra)
    return gym.vector.SyncVectorEnv(fns, **extra)
