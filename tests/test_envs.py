"""Tests for visarl.envs: the Meta-World pixel env, its rendering, keypoints and vector envs."""

from __future__ import annotations

import subprocess
import sys

import mujoco
import numpy as np
import pytest

import visarl.envs as E
from visarl.config import ConfigError

PAPER_TASKS = ["reach", "faucet-open", "door-open", "drawer-open"]
# Bodies (with their sub-bodies) that the object keypoint of each task must land on.
OBJECT_BODY = {"reach": "obj", "faucet-open": "faucet_link2", "door-open": "door_link", "drawer-open": "drawer_link"}
GOAL_SITE = {"reach": "goal", "faucet-open": "goal_open", "door-open": "goal", "drawer-open": "goal"}


@pytest.fixture(scope="module")
def reach_env():
    env = E.make_env("reach", seed=0)
    yield env
    env.close()


def _layouts(env: E.MetaWorldPixelEnv, seed: int | None, n: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    layouts, frames = [], []
    for i in range(n):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        layouts.append(env.layout)
        frames.append(obs["rgb"])
    return np.stack(layouts), frames


# --------------------------------------------------------------------------------------------------
# observations, API


def test_observation_shapes_and_dtypes(reach_env):
    obs, info = reach_env.reset(seed=1)
    assert reach_env.observation_space.contains(obs)
    assert obs["rgb"].shape == (64, 64, 3) and obs["rgb"].dtype == np.uint8
    assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
    assert obs["rgb"].std() > 10  # a picture, not a blank buffer
    obs, reward, terminated, truncated, info = reach_env.step(reach_env.action_space.sample())
    assert reach_env.observation_space.contains(obs)
    assert isinstance(reward, float) and info["success"] in (0.0, 1.0)
    assert terminated is False and truncated is False
    # MT1 semantics: the goal is observable in state[36:39].
    np.testing.assert_allclose(obs["state"][36:39], reach_env.unwrapped_metaworld._target_pos, atol=1e-6)
    np.testing.assert_array_equal(reach_env.render(), obs["rgb"])


def test_non_square_image_size():
    env = E.make_env("drawer-open", image_size=(48, 80))
    try:
        obs, _ = env.reset(seed=0)
        assert obs["rgb"].shape == (48, 80, 3)
        kp = {k.name: k for k in env.keypoints(occlusion=False)}
        assert kp["object"].visible and 0 <= kp["object"].x < 80 and 0 <= kp["object"].y < 48
    finally:
        env.close()


def test_unknown_task_lists_valid_names_and_suggests():
    with pytest.raises(ValueError) as e:
        E.make_env("door-opne")
    msg = str(e.value)
    assert "'door-open'" in msg.split("Valid")[0]  # nearest suggestion
    assert "reach-v3" in msg and "drawer-open" in msg and "pick-place-v3" in msg
    assert E.resolve_task("faucet-open") == "faucet-open-v3"
    assert E.resolve_task("push-v3") == "push-v3"


def test_env_config_validation():
    cfg = E.EnvConfig(task="door-open", image_size=32)
    assert E.env_kwargs(cfg)["task"] == "door-open"
    with pytest.raises(ConfigError, match="env.task"):
        E.EnvConfig(task="opne-door")
    with pytest.raises(ConfigError, match="image_size"):
        E.EnvConfig(image_size=0)
    with pytest.raises(ConfigError, match="camera"):
        E.EnvConfig(camera="corner9")


def test_truncation_at_episode_length():
    env = E.make_env("reach", seed=0, episode_length=5)
    try:
        env.reset()
        flags = [env.step(np.zeros(4, np.float32))[2:4] for _ in range(5)]
        assert flags == [(False, False)] * 4 + [(False, True)]
        env.reset()  # and a new episode starts cleanly
        assert env.step(np.zeros(4, np.float32))[2:4] == (False, False)
    finally:
        env.close()


def test_action_repeat_equals_repeated_steps():
    """One step with action_repeat=2 is two plain steps: same state and frame, summed reward."""
    a = np.array([0.6, -0.4, 0.5, 1.0], np.float32)
    one, two = E.make_env("reach", seed=3), E.make_env("reach", seed=3, action_repeat=2)
    try:
        one.reset(), two.reset()
        r1 = one.step(a)[1]
        obs1, r2 = one.step(a)[:2]
        obs2, r = two.step(a)[:2]
        np.testing.assert_allclose(obs2["state"], obs1["state"], atol=1e-6)
        np.testing.assert_array_equal(obs2["rgb"], obs1["rgb"])
        assert r == pytest.approx(r1 + r2)
        # and the hand really moved further than after one plain step
        assert np.linalg.norm(obs2["state"][:3] - obs2["state"][18:21]) > 0
    finally:
        one.close(), two.close()


# --------------------------------------------------------------------------------------------------
# layouts and determinism


def test_layouts_reproducible_per_seed_and_fresh_per_reset(reach_env):
    lay_a, frames_a = _layouts(reach_env, seed=7)
    lay_b, frames_b = _layouts(reach_env, seed=7)
    np.testing.assert_array_equal(lay_a, lay_b)
    for fa, fb in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(fa, fb)
    # fresh continuous layouts at every reset, not one of a few frozen ones
    assert len({tuple(row) for row in lay_a.round(6)}) == 3
    lay_c, _ = _layouts(reach_env, seed=8)
    assert not np.allclose(lay_a, lay_c)
    # the layout is really applied: goal position in the state follows the layout (reach: rand_vec[3:])
    obs, _ = reach_env.reset(seed=7)
    np.testing.assert_allclose(obs["state"][36:39], lay_a[0][3:], atol=1e-6)


def test_constructor_seed_seeds_first_plain_reset():
    env = E.make_env("door-open", seed=11)
    try:
        env.reset()
        first = env.layout
        env.reset(seed=11)
        np.testing.assert_array_equal(env.layout, first)
    finally:
        env.close()


# --------------------------------------------------------------------------------------------------
# rendering: upright frames


def test_default_camera_is_the_authors_view():
    """The authors render ``corner`` (their ``--cameras 0``); their ``model.cam_pos[2] = [0.75, 0.075, 0.7]`` moves
    camera id 2, which is corner2, and the moved corner2 is v3's corner4 (pose and fovy)."""
    assert E.DEFAULT_CAMERA == "corner" and E.EnvConfig().camera == "corner"
    env = E.make_env("reach", seed=0)
    try:
        assert env.camera == "corner"
        mw = env.unwrapped_metaworld
        model, data = mw.model, mw.data
        assert [model.camera(i).name for i in range(3)] == ["topview", "corner", "corner2"]
        np.testing.assert_allclose(model.cam_pos[model.camera("corner").id], [-1.1, -0.4, 0.6])  # stock pose
        stock = model.cam_pos[2].copy()
        model.cam_pos[2] = [0.75, 0.075, 0.7]
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        from visarl.envs.rendering import camera_model

        moved, c4 = camera_model(model, data, "corner2", 64, 64), camera_model(model, data, "corner4", 64, 64)
        model.cam_pos[2] = stock
        np.testing.assert_allclose(moved.pos, c4.pos, atol=1e-9)
        np.testing.assert_allclose(moved.mat, c4.mat, atol=1e-9)
        assert moved.fovy == c4.fovy and moved.rotate_180 == c4.rotate_180
    finally:
        env.close()


def test_frames_upright_against_gymnasium_render():
    """Meta-World's corner cameras render upside down; ours must equal gymnasium's frame turned by 180 deg.

    gymnasium's own renderer (with shadows, skybox, multisampling) is an independent reference: the
    turned version must match ours far better than the raw one or a mirror image.
    """
    from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

    env = E.make_env("drawer-open", seed=1)
    try:
        obs, _ = env.reset()
        mw = env.unwrapped_metaworld
        stock = MujocoRenderer(mw.model, mw.data, camera_id=mw.model.camera(env.camera).id, width=64, height=64)
        try:
            ref = stock.render("rgb_array").astype(float)
        finally:
            stock.close()
        ours = obs["rgb"].astype(float)
        # Compare where ours shows the scene: the stock renderer draws a skybox where ours is black.
        scene = ours.mean(-1) > 10

        def corr(img: np.ndarray) -> float:
            return float(np.corrcoef(ours[scene].ravel(), img[scene].ravel())[0, 1])

        upright = corr(ref[::-1, ::-1])
        others = [corr(ref), corr(ref[::-1]), corr(ref[:, ::-1])]
        assert upright > max(others) + 0.1, (upright, others)
        # and by itself: the empty background (black without skybox) is above the table, not below
        gray = ours.mean(-1)
        assert gray[:4].mean() < 20 < gray[-4:].mean()
    finally:
        env.close()


# --------------------------------------------------------------------------------------------------
# keypoints


def _subtree_geoms(model, body_name: str) -> set[int]:
    root = model.body(body_name).id
    bodies = set()
    for b in range(model.nbody):
        a = b
        while a != 0 and a != root:
            a = model.body_parentid[a]
        if a == root:
            bodies.add(b)
    return {g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies}


def _near(seg: np.ndarray, kp: E.Keypoint, ids: set[int], objtype: int, radius: int = 2) -> bool:
    r, c = int(round(kp.y)), int(round(kp.x))
    win = seg[max(r - radius, 0) : r + radius + 1, max(c - radius, 0) : c + radius + 1]
    return bool(np.isin(win[..., 0][win[..., 1] == objtype], list(ids)).any())


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_keypoints_match_segmentation_and_state(task):
    env = E.make_env(task, seed=5)
    try:
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        mw = env.unwrapped_metaworld
        model = mw.model
        gripper_ids = _subtree_geoms(model, "hand")
        object_ids = _subtree_geoms(model, OBJECT_BODY[task])
        goal_site = model.site(GOAL_SITE[task]).id
        checked = {"gripper": 0, "object": 0}
        states, singles = [], []
        for step in range(3):
            for _ in range(8 if step else 0):
                obs, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            kps = env.keypoints()
            seg = env.render_segmentation()
            by_kind = {k.kind: k for k in kps}
            assert [k.kind for k in kps] == ["gripper", "object", "goal"]
            for kind, ids in (("gripper", gripper_ids), ("object", object_ids)):
                kp = by_kind[kind]
                if kp.visible:
                    assert _near(seg, kp, ids, mujoco.mjtObj.mjOBJ_GEOM), (task, step, kp)
                    checked[kind] += 1
            goal_pixels = (seg[..., 1] == mujoco.mjtObj.mjOBJ_SITE) & (seg[..., 0] == goal_site)
            if goal_pixels.any():  # faucet's goal marker is 5 mm wide: often not drawn at 64x64
                assert _near(seg, by_kind["goal"], {goal_site}, mujoco.mjtObj.mjOBJ_SITE), (task, step)
            # from the stored 39-d state alone: same pixels (the gripper tip offset is ~1 mm off)
            from_state = env.keypoints_from_state(obs["state"])
            live = env.keypoints(occlusion=False)
            for a, b in zip(from_state, live, strict=True):
                assert (a.name, a.kind, a.visible) == (b.name, b.kind, b.visible)
                assert abs(a.x - b.x) < 0.25 and abs(a.y - b.y) < 0.25, (a, b)
            states.append(obs["state"])
            singles.append(from_state)
        # the batched version agrees with the single-state one
        xy, visible = env.keypoints_from_states(np.stack(states))
        assert xy.shape == (3, 3, 2) and visible.shape == (3, 3)
        for b, kps in enumerate(singles):
            np.testing.assert_allclose(xy[b], [(k.x, k.y) for k in kps])
            np.testing.assert_array_equal(visible[b], [k.visible for k in kps])
        assert checked["gripper"] >= 2 and checked["object"] >= 2, checked
    finally:
        env.close()


def test_keypoint_occlusion_and_out_of_frame():
    env = E.make_env("door-open", seed=2)
    try:
        obs, _ = env.reset()
        mw = env.unwrapped_metaworld
        cam = env.camera_model
        # Put the goal on the ray through the door cabinet's centre, 0.3 m further from the camera: same pixel,
        # hidden behind the cabinet (the handle sits on the cabinet's silhouette in some views, so not that ray).
        box = mw.data.body("door").xpos.copy()
        ray = (box - cam.pos) / np.linalg.norm(box - cam.pos)
        mw._target_pos = box + 0.3 * ray
        kp = {k.name: k for k in env.keypoints()}
        assert kp["object"].visible and not kp["goal"].visible
        np.testing.assert_allclose([kp["goal"].x, kp["goal"].y], cam.project(box[None])[0][0], atol=1e-6)
        assert env.keypoints(occlusion=False)[-1].visible
        # behind the camera, and far to the side: not in the frame
        mw._target_pos = cam.pos + cam.mat[:, 2]  # one metre behind (the camera looks along its -z)
        assert not env.keypoints()[-1].visible
        state = obs["state"].copy()
        state[36:39] = cam.pos + 5.0 * cam.mat[:, 0] - 0.5 * cam.mat[:, 2]
        assert not env.keypoints_from_state(state)[-1].visible
    finally:
        env.close()


def test_projection_against_hand_computation():
    """A point on the optical axis lands on the image centre; one at +x of the camera goes right (pre-turn)."""
    cam = E.CameraModel(np.zeros(3), np.eye(3), 90.0, 64, 64, rotate_180=False)
    xy, depth = cam.project(np.array([[0.0, 0.0, -2.0], [1.0, 1.0, -2.0]]))
    np.testing.assert_allclose(depth, [2.0, 2.0])
    f = 32.0  # (H/2) / tan(45 deg)
    np.testing.assert_allclose(xy, [[31.5, 31.5], [31.5 + f / 2, 31.5 - f / 2]])
    turned = cam._replace(rotate_180=True).project(np.array([[1.0, 1.0, -2.0]]))[0]
    np.testing.assert_allclose(turned, [[63 - 47.5, 63 - 15.5]])
    back = E.CameraModel.from_dict(cam.to_dict())
    np.testing.assert_array_equal(back.project(np.ones((1, 3)))[0], cam.project(np.ones((1, 3)))[0])


# --------------------------------------------------------------------------------------------------
# vector env


def test_async_vector_env_two_workers():
    vec = E.make_vector_env(2, seed=10, task="reach")
    try:
        obs, _ = vec.reset()
        assert obs["rgb"].shape == (2, 64, 64, 3) and obs["rgb"].dtype == np.uint8
        assert obs["state"].shape == (2, 39)
        assert not np.array_equal(obs["rgb"][0], obs["rgb"][1])
        # each worker's frame is exactly what env seed+i renders in this process
        for i in range(2):
            env = E.make_env("reach", seed=10 + i)
            try:
                ref, _ = env.reset()
                np.testing.assert_array_equal(obs["rgb"][i], ref["rgb"])
                np.testing.assert_allclose(obs["state"][i], ref["state"])
                a = np.full(4, 0.5, np.float32)
                ref2 = env.step(a)[0]
            finally:
                env.close()
            if i == 0:
                obs2 = vec.step(np.full((2, 4), 0.5, np.float32))[0]
            np.testing.assert_array_equal(obs2["rgb"][i], ref2["rgb"])
    finally:
        vec.close()


def test_gl_backend_choice():
    from visarl.envs.rendering import choose_backend

    def fail() -> bool:
        raise AssertionError("probed EGL although the user chose a backend")

    assert choose_backend({"MUJOCO_GL": "OSMesa "}, fail) == "osmesa"  # a user-set value is kept
    assert choose_backend({"PYOPENGL_PLATFORM": "egl"}, fail) == "egl"
    assert choose_backend({}, lambda: True) == "egl"
    import ctypes.util

    fallback = "osmesa" if ctypes.util.find_library("OSMesa") else None
    assert choose_backend({}, lambda: False) == fallback
    assert E.configure_gl() in ("egl", "osmesa") and E.configure_gl() == E.configure_gl()


def test_two_renderers_in_one_process(reach_env):
    """Interleaved stepping of two envs in one process gives the frames each gives alone."""
    act = np.array([0.5, 0.3, -0.2, 0.0], np.float32)
    door = E.make_env("door-open", seed=1)
    try:
        mixed_reach, mixed_door = [reach_env.reset(seed=4)[0]["rgb"]], [door.reset()[0]["rgb"]]
        for _ in range(3):
            mixed_reach.append(reach_env.step(act)[0]["rgb"])
            mixed_door.append(door.step(act)[0]["rgb"])
        alone = [reach_env.reset(seed=4)[0]["rgb"]] + [reach_env.step(act)[0]["rgb"] for _ in range(3)]
        for a, b in zip(mixed_reach, alone, strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(mixed_reach[-1], mixed_door[-1])
    finally:
        door.close()


def test_frames_survive_gymnasium_renderer_freed_beside_them(reach_env):
    """gymnasium's renderer frees its GL objects on garbage collection in whatever GL context is current;
    ours must not be current then, or its framebuffer is deleted and every later frame is noise."""
    import gc

    from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

    act = np.array([0.5, 0.5, 0.0, 0.0], np.float32)

    def frames(env: E.MetaWorldPixelEnv) -> list[np.ndarray]:
        return [env.reset(seed=2)[0]["rgb"]] + [env.step(act)[0]["rgb"] for _ in range(2)]

    expected = frames(reach_env)
    door = E.make_env("door-open", seed=0)
    mw = door.unwrapped_metaworld
    stock = MujocoRenderer(mw.model, mw.data, camera_id=mw.model.camera(door.camera).id, width=64, height=64)
    stock.render("rgb_array")
    stock.close()  # frees gymnasium's GL context but not its MjrContext
    env = E.make_env("reach")  # as in a loop over tasks that closes the last task's envs, then makes new ones
    try:
        del stock
        gc.collect()  # now gymnasium's MjrContext deletes its GL objects' ids in the current context
        for a, b in zip(frames(env), expected, strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        env.close()
        door.close()


def test_rendering_then_torchvision_import_does_not_crash():
    """Mesa (llvmpipe) and Triton both bundle LLVM: rendering first, then importing torchvision.ops
    (which pulls in Triton on CUDA builds) used to segfault the process."""
    code = (
        "from visarl.envs import make_env\n"
        "env = make_env('reach', seed=0); obs, _ = env.reset(); env.close()\n"
        "import torchvision.ops, torchvision.models\n"
        "print('ok', obs['rgb'].shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok (64, 64, 3)" in proc.stdout
