"""Frames per second of visarl's Meta-World pixel env against Meta-World's stock gymnasium render path.

Each frame is one env step plus one 64x64 render of the same task from the same camera:

- stock: ``gymnasium.make("Meta-World/MT1", env_name=..., render_mode="rgb_array", width=64, height=64,
  camera_name=...)``, then ``step()`` + ``render()``;
- visarl: ``MetaWorldPixelEnv.step()`` (which renders once per step through a lean ``mujoco.Renderer``);
- visarl vector env with 1 and 2 worker processes (frames/s counts every env's frame).

The two single-process paths run in alternating blocks so that load from other processes on the
machine hits both alike; each stock block first makes the stock renderer's GL context current again.
The last line is ``render_speedup_vs_stock: X`` with X = visarl fps / stock fps.

    python benchmarks/render.py [--tasks reach door-open] [--steps 150] [--stock-steps 30]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import visarl.envs as E  # noqa: E402 - sets up headless GL before gymnasium/metaworld import mujoco


def _time_visarl(env: E.MetaWorldPixelEnv, steps: int, rng: np.random.Generator) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    return time.perf_counter() - t


def _time_stock(env, steps: int, rng: np.random.Generator) -> float:
    # gymnasium's offscreen viewer makes its GL context current only when created, so after visarl's
    # renderer has rendered it would draw into visarl's context (wrong frames, wrong timings). A process
    # running only the stock env has its context current all along: restore that, once per block.
    viewer = env.unwrapped.mujoco_renderer.viewer
    if viewer is not None:
        viewer.make_context_current()
    t = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        frame = env.render()
    assert frame.shape == (64, 64, 3)
    return time.perf_counter() - t


def _time_vector(num_envs: int, task: str, camera: str, steps: int, rng: np.random.Generator) -> float:
    vec = E.make_vector_env(num_envs, seed=0, task=task, camera=camera)
    try:
        vec.reset()
        vec.step(np.zeros((num_envs, 4), np.float32))  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            vec.step(rng.uniform(-1, 1, (num_envs, 4)).astype(np.float32))
        return time.perf_counter() - t
    finally:
        vec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["reach", "faucet-open", "door-open", "drawer-open"])
    parser.add_argument("--camera", default=E.DEFAULT_CAMERA)
    parser.add_argument("--steps", type=int, default=150, help="visarl steps per task and round")
    parser.add_argument("--stock-steps", type=int, default=25, help="stock steps per task and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating visarl/stock blocks per task")
    parser.add_argument("--vector-steps", type=int, default=150, help="vector-env steps (first task only)")
    args = parser.parse_args()

    import gymnasium as gym
    import metaworld  # noqa: F401 - registers Meta-World/MT1

    warnings.filterwarnings("ignore")  # the stock env's passive checker warns on every step
    rng = np.random.default_rng(0)
    # Reference frames, rendered before any stock renderer exists: checked again after each task's
    # timing so that a speed-up can never come from rendering into a broken GL context.
    reference = {}
    for task in args.tasks:
        env = E.make_env(task, camera=args.camera)
        reference[task] = env.reset(seed=0)[0]["rgb"]
        env.close()
    rows = []
    totals = {"visarl": [0, 0.0], "stock": [0, 0.0]}
    for task in args.tasks:
        ours = E.make_env(task, seed=0, camera=args.camera)
        stock = gym.make(
            "Meta-World/MT1",
            env_name=E.resolve_task(task),
            seed=0,
            render_mode="rgb_array",
            width=64,
            height=64,
            camera_name=args.camera,
        )
        ours.reset()
        stock.reset()
        _time_visarl(ours, 3, rng), _time_stock(stock, 2, rng)  # warm-up: GL contexts, shaders
        t_ours = t_stock = 0.0
        for _ in range(args.rounds):
            t_ours += _time_visarl(ours, args.steps, rng)
            t_stock += _time_stock(stock, args.stock_steps, rng)
        n_ours, n_stock = args.steps * args.rounds, args.stock_steps * args.rounds
        if not np.array_equal(ours.reset(seed=0)[0]["rgb"], reference[task]):
            raise RuntimeError(f"{task}: visarl frames changed during the benchmark (GL context clobbered?)")
        ours.close()
        stock.close()
        totals["visarl"][0] += n_ours
        totals["visarl"][1] += t_ours
        totals["stock"][0] += n_stock
        totals["stock"][1] += t_stock
        fps_o, fps_s = n_ours / t_ours, n_stock / t_stock
        rows.append((task, "1 (in-process)", fps_s, fps_o, fps_o / fps_s))

    vec_fps = {}
    for n in (1, 2):
        dt = _time_vector(n, args.tasks[0], args.camera, args.vector_steps, rng)
        vec_fps[n] = n * args.vector_steps / dt

    print(f"Meta-World step + 64x64 render, camera {args.camera}, frames/s")
    print(f"{'task':<14} {'stock':>8} {'visarl':>8} {'speedup':>8}")
    for task, _, fps_s, fps_o, ratio in rows:
        print(f"{task:<14} {fps_s:8.1f} {fps_o:8.1f} {ratio:8.1f}")
    fps_o = totals["visarl"][0] / totals["visarl"][1]
    fps_s = totals["stock"][0] / totals["stock"][1]
    print(f"{'all':<14} {fps_s:8.1f} {fps_o:8.1f} {fps_o / fps_s:8.1f}")
    print()
    print(f"visarl vector env ({args.tasks[0]}), frames/s over all envs")
    for n, fps in vec_fps.items():
        print(f"  {n} worker process{'es' if n > 1 else ''}: {fps:8.1f}")
    print(f"  2-worker / 1-worker: {vec_fps[2] / vec_fps[1]:.2f}")
    print(f"render_speedup_vs_stock: {fps_o / fps_s:.1f}")


if __name__ == "__main__":
    main()
