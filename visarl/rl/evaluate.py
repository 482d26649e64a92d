"""Evaluation of a SAC policy: M deterministic episodes in a vector env of worker processes.

Success follows Meta-World's own evaluations: an episode succeeds if ``info["success"]`` was 1 at ANY step
(not only the last one), and the success rate is the fraction of successful episodes. Each evaluation resets
its envs with the same seed, so every evaluation of a run sees the same M object/goal layouts: the learning
curve then compares policies, not layouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visarl.core.progress import progress as progress_bar

ObserveFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Env observations -> the same dict with what the policy derives from them (a saliency map, an embedding)."""


def to_policy_obs(obs: Mapping[str, np.ndarray], keys: Sequence[str], device: torch.device | str) -> dict[str, Tensor]:
    """Env observations (rgb [n, H, W, 3], saliency [n, H, W], state [n, S]) -> the encoder's tensors on ``device``.

    Images become uint8 [n, C, H, W] (converted to float on the device by the encoder: a 4x smaller copy).
    """
    out = {}
    for k in keys:
        v = torch.from_numpy(np.ascontiguousarray(obs[k]))
        if v.ndim == 4:
            v = v.permute(0, 3, 1, 2)
        elif v.ndim == 3:
            v = v.unsqueeze(1)
        out[k] = v.to(device, non_blocking=True)
    return out


def done_info(info: Mapping[str, Any], key: str, done: np.ndarray, default: float = 0.0) -> np.ndarray:
    """``info[key]`` per env, taken from ``info["final_info"]`` where an episode just ended.

    With gymnasium's same-step autoreset, ``info`` of a finished env describes the NEW episode's reset; the
    last step's info is under ``final_info``.
    """
    n = len(done)
    values = np.asarray(info.get(key, np.full(n, default)), dtype=np.float64).copy()
    final = info.get("final_info")
    if final is not None and done.any():
        fin = np.asarray(final.get(key, np.full(n, default)), dtype=np.float64)
        values[done] = fin[done]
    return values


def final_obs(obs: Mapping[str, np.ndarray], info: Mapping[str, Any], done: np.ndarray) -> dict[str, np.ndarray]:
    """Observations after the step, with the finished episodes' last observation in place of the reset one."""
    out = {k: v.copy() for k, v in obs.items()}
    for i in np.flatnonzero(done):
        for k, v in info["final_obs"][i].items():
            out[k][i] = v
    return out


def frame_strip(frames: Sequence[np.ndarray], num: int) -> np.ndarray:
    """``num`` frames evenly spaced over a rollout, side by side: [H, num * W, 3] uint8."""
    if not frames:
        raise ValueError("no frames to make a strip from")
    idx = np.linspace(0, len(frames) - 1, min(num, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in idx], axis=1)


@dataclass
class EvalResult:
    """One evaluation: means over its episodes, the per-episode values, and a frame strip of one rollout."""

    step: int
    success_rate: float
    episode_return: float
    episode_length: float
    episodes: int
    seconds: float
    successes: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    strip: np.ndarray | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (no frames), as stored in eval.json's curve."""
        d = asdict(self)
        d.pop("strip")
        d["return"] = d.pop("episode_return")
        return d


class Evaluator:
    """Runs ``episodes`` deterministic episodes over ``num_envs`` envs; the env is kept between evaluations.

    ``make_envs(num_envs)`` builds the vector env (same-step autoreset); ``observe`` adds the keys the policy
    derives from a frame (a saliency map, a frozen encoder's embedding). Episodes are dealt out so env i runs
    ``episodes // n`` (+1 for the first ``episodes % n``) episodes; envs that are done keep stepping but their
    steps are ignored.
    """

    def __init__(
        self,
        make_envs: Callable[[int], Any],
        num_envs: int,
        episodes: int,
        seed: int,
        obs_keys: Sequence[str],
        observe: ObserveFn | None = None,
        strip_frames: int = 8,
        progress: bool = False,
    ) -> None:
        self.make_envs = make_envs
        self.progress = progress
        self.num_envs = max(1, min(num_envs, episodes))
        self.episodes = episodes
        self.seed = seed
        self.obs_keys = tuple(obs_keys)
        self.observe = observe
        self.strip_frames = strip_frames
        self.envs: Any = None

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None

    def _label(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.observe(obs) if self.observe is not None else obs

    @torch.no_grad()
    def run(self, policy: Callable[[dict[str, Tensor]], Tensor], device: torch.device | str, step: int) -> EvalResult:
        """Evaluate ``policy`` (obs tensors -> actions [n, A] in [-1, 1]); ``step`` is recorded with the result."""
        t0 = time.perf_counter()
        if self.envs is None:
            self.envs = self.make_envs(self.num_envs)
        n = self.num_envs
        quota = np.full(n, self.episodes // n) + (np.arange(n) < self.episodes % n)
        obs, _ = self.envs.reset(seed=self.seed)
        obs = self._label(dict(obs))
        done_count = np.zeros(n, int)
        ep_return, ep_len, ep_success = np.zeros(n), np.zeros(n, int), np.zeros(n, bool)
        returns, lengths, successes = [], [], []
        frames = [obs["rgb"][0].copy()]  # env 0's first episode, for the strip
        recording = True
        bar = progress_bar(self.episodes, f"eval @ {step}", "episode", self.progress, leave=False)
        while (done_count < quota).any():
            action = policy(to_policy_obs(obs, self.obs_keys, device)).float().cpu().numpy()
            nxt, reward, terminated, truncated, info = self.envs.step(action)
            done = np.asarray(terminated) | np.asarray(truncated)
            active = done_count < quota
            ep_return += np.where(active, reward, 0.0)
            ep_len += active
            ep_success |= active & (done_info(info, "success", done) > 0)
            if recording:
                frames.append((info["final_obs"][0]["rgb"] if done[0] else nxt["rgb"][0]).copy())
                recording = not done[0]
            for i in np.flatnonzero(done & active):
                returns.append(float(ep_return[i]))
                lengths.append(int(ep_len[i]))
                successes.append(float(ep_success[i]))
                done_count[i] += 1
                bar.update(1)
            ep_return[done], ep_len[done], ep_success[done] = 0.0, 0, False
            obs = self._label(dict(nxt))
        bar.close()
        return EvalResult(
            step=int(step),
            success_rate=float(np.mean(successes)),
            episode_return=float(np.mean(returns)),
            episode_length=float(np.mean(lengths)),
            episodes=len(returns),
            seconds=time.perf_counter() - t0,
            successes=successes,
            returns=returns,
            strip=frame_strip(frames, self.strip_frames),
        )
