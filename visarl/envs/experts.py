"""Meta-World's scripted experts (``metaworld.policies``) behind a batched interface, and a success cut-off.

Meta-World 3 ships a hand-written policy per task that reads the 39-d state (hand, gripper, objects, goal) and
returns an action in [-1, 1]^4. It needs no training, so demonstrations cost only render time: the probe stage
clones it, and ``stage: collect`` can use it (``policy: scripted``) to build a pretraining dataset quickly.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from visarl.envs.metaworld_env import MetaWorldPixelEnv, resolve_task


class ScriptedExpert:
    """The task's scripted policy: states ``[n, 39]`` -> actions float32 ``[n, 4]`` in [-1, 1].

    ``noise`` adds Gaussian noise of that standard deviation to every action (then clipped to [-1, 1]), drawn from
    ``rng``; 0 gives the expert's own actions, which are a deterministic function of the state.
    """

    def __init__(self, task: str, noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        full = resolve_task(task)
        if full not in ENV_POLICY_MAP:
            raise ValueError(f"Meta-World has no scripted policy for {full!r}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.task = full
        self.policy = ENV_POLICY_MAP[full]()
        self.noise = float(noise)
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def __call__(self, states: np.ndarray) -> np.ndarray:
        states = np.asarray(states, dtype=np.float64)
        single = states.ndim == 1
        states = states[None] if single else states
        with warnings.catch_warnings():  # metaworld warns that its gains saturate; clipping is the intent
            warnings.filterwarnings("ignore", message="Constant")
            actions = np.stack([np.asarray(self.policy.get_action(s), dtype=np.float32) for s in states])
        if self.noise > 0:
            actions = actions + self.rng.normal(0.0, self.noise, actions.shape).astype(np.float32)
        actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
        return actions[0] if single else actions


class EndOnSuccess(gym.Wrapper):
    """Ends an episode (``truncated=True``) at its first successful step.

    An episode counts as a success if ``info["success"]`` is 1 at any step (Meta-World's and visarl's rule), so
    cutting it there changes no success rate: it only saves the steps after success, which dominate the cost of
    evaluating a good policy.
    """

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("success", 0.0) > 0 and not terminated:
            truncated = True
        return obs, reward, terminated, truncated, info


class EnvFactory:
    """Picklable constructor of one pixel env, optionally ending episodes at success (for vector-env workers)."""

    def __init__(self, kwargs: dict[str, Any], end_on_success: bool = False, seed: int | None = None) -> None:
        self.kwargs, self.end_on_success, self.seed = dict(kwargs), end_on_success, seed

    def __call__(self) -> gym.Env:
        env = MetaWorldPixelEnv(seed=self.seed, **self.kwargs)
        return EndOnSuccess(env) if self.end_on_success else env


def make_eval_envs(
    num_envs: int, env_kwargs: dict[str, Any], *, end_on_success: bool = True, asynchronous: bool = False
) -> gym.vector.VectorEnv:
    """``num_envs`` envs with same-step autoreset (as :class:`visarl.rl.evaluate.Evaluator` expects)."""
    fns = [EnvFactory(env_kwargs, end_on_success) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
