"""visarl.annotate.simulated: click counts, kinds, tip bias, jitter and visibility of the simulated annotator,
and the state-based keypoint projection it relies on, checked against the live simulator."""

from __future__ import annotations

import numpy as np
import pytest

from visarl.annotate.simulated import SimulatedAnnotator, SimulatedConfig, frame_rng, from_config, project_keypoints
from visarl.config import ConfigError

H = W = 64
KINDS = ["gripper", "object", "goal"]
TIP, HAND, OBJ, GOAL = np.array([20.0, 30.0]), np.array([20.0, 22.0]), np.array([45.0, 45.0]), np.array([50.0, 10.0])
XY = np.stack([TIP, OBJ, GOAL])  # [K, 2]


def _many(annotator: SimulatedAnnotator, n: int, visible=(True, True, True), seed: int = 0) -> list[np.ndarray]:
    xy = np.broadcast_to(XY, (n, 3, 2))
    vis = np.broadcast_to(np.array(visible), (n, 3))
    return annotator.annotate(xy, vis, KINDS, np.broadcast_to(HAND, (n, 2)), H, W, seed)


def _segment_t(p: np.ndarray) -> np.ndarray:
    """Position of points [M, 2] along the tip -> hand segment (0 = tip, 1 = hand)."""
    d = HAND - TIP
    return (p - TIP) @ d / (d @ d)


def _nearest_kind(p: np.ndarray) -> np.ndarray:
    """0 gripper (distance to the tip-hand segment), 1 object, 2 goal: the keypoints are far apart."""
    t = np.clip(_segment_t(p), 0, 1)[:, None]
    seg = np.linalg.norm(p - (TIP + t * (HAND - TIP)), axis=1)
    return np.argmin(np.stack([seg, np.linalg.norm(p - OBJ, axis=1), np.linalg.norm(p - GOAL, axis=1)], 1), axis=1)


def test_click_count_kinds_tip_bias_and_jitter_match_the_model():
    ann = SimulatedAnnotator(clicks_mean=25, clicks_std=5.8, min_clicks=5, max_clicks=60, jitter=1.0, tip_bias=3.0)
    clicks = _many(ann, 400)
    counts = np.array([len(c) for c in clicks])
    assert counts.min() >= 5 and counts.max() <= 60
    assert abs(counts.mean() - 25) < 1.0 and abs(counts.std() - 5.8) < 0.8  # paper: 25 +- 5.8
    pts = np.concatenate(clicks)
    kind = _nearest_kind(pts)
    np.testing.assert_allclose(np.bincount(kind, minlength=3) / len(kind), [0.5, 0.3, 0.2], atol=0.02)
    # Gripper clicks: Beta(1, 3) of the way up from the tip, mean 1/4; more of them in the lower half.
    t = _segment_t(pts[kind == 0])
    assert abs(t.mean() - 0.25) < 0.03 and (t < 0.5).mean() > 0.75
    # Goal clicks: isotropic jitter with the requested std per axis.
    dev = pts[kind == 2] - GOAL
    np.testing.assert_allclose(dev.std(axis=0), [1.0, 1.0], rtol=0.1)
    np.testing.assert_allclose(dev.mean(axis=0), [0.0, 0.0], atol=0.1)


def test_only_visible_keypoints_get_clicks_and_clicks_stay_in_the_frame():
    ann = SimulatedAnnotator(jitter=2.0)
    pts = np.concatenate(_many(ann, 50, visible=(True, False, True)))
    assert np.linalg.norm(pts - OBJ, axis=1).min() > 10  # the hidden object got nothing
    assert all(len(c) == 0 for c in _many(ann, 5, visible=(False, False, False)))
    # A keypoint on the frame's corner: jitter would push half the clicks out; they are clipped to the frame.
    corner = ann.annotate(np.zeros((20, 3, 2)), np.array([[True, False, False]] * 20), KINDS, None, H, W, 0)
    pts = np.concatenate(corner)
    assert pts.min() >= -0.5 and (pts == -0.5).any() and pts.max() < 10  # 5 sigma
    with pytest.raises(ValueError, match="unknown keypoint kinds"):
        SimulatedAnnotator(weights={"elbow": 1.0})


def test_weights_are_shared_between_two_objects():
    ann = SimulatedAnnotator(jitter=0.5, weights={"gripper": 0.0, "object": 1.0, "goal": 0.0})
    xy = np.broadcast_to(np.stack([TIP, OBJ, GOAL, GOAL]), (200, 4, 2))  # gripper, object0, object1, goal
    kinds = ["gripper", "object", "object", "goal"]
    pts = np.concatenate(ann.annotate(xy, np.ones((200, 4), bool), kinds, None, H, W, 1))
    near_obj = np.linalg.norm(pts - OBJ, axis=1) < 4
    near_goal = np.linalg.norm(pts - GOAL, axis=1) < 4  # object1 sits on the goal; the goal itself has weight 0
    assert near_obj.sum() + near_goal.sum() == len(pts)
    assert abs(near_obj.mean() - 0.5) < 0.04


def test_deterministic_per_seed_and_per_frame():
    ann = SimulatedAnnotator()
    a, b, c = _many(ann, 10, seed=3), _many(ann, 10, seed=3), _many(ann, 10, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(len(x) == len(y) and np.allclose(x, y) for x, y in zip(a, c, strict=True))
    # A frame's clicks do not depend on how many frames there are (a resumed or longer session agrees).
    assert all(np.array_equal(x, y) for x, y in zip(_many(ann, 4, seed=3), a[:4], strict=True))
    assert np.array_equal(
        ann.frame_clicks(XY, [True] * 3, KINDS, HAND, H, W, frame_rng(3, 2)), a[2]
    )  # frame_rng is what annotate uses


def test_config_checks_and_from_config():
    with pytest.raises(ConfigError, match="min_clicks"):
        SimulatedConfig(min_clicks=0)
    with pytest.raises(ConfigError, match="weights"):
        SimulatedConfig(goal_weight=-1.0)
    with pytest.raises(ConfigError, match="jitter_px"):
        SimulatedConfig(jitter_px=-1.0)
    ann = from_config(SimulatedConfig(clicks_mean=10, clicks_std=0, object_weight=0.0), jitter=1.5)
    assert ann.jitter == 1.5 and ann.weights["object"] == 0.0
    clicks = _many(ann, 20)
    assert all(len(c) == 10 for c in clicks)
    assert np.linalg.norm(np.concatenate(clicks) - OBJ, axis=1).min() > 10
    # The task's guidance decides which parts get clicks, whatever the weights say.
    guided = from_config(SimulatedConfig(), jitter=1.0, parts=("gripper", "goal"))
    assert guided.weights == {"gripper": 0.5, "object": 0.0, "goal": 0.2}
    with pytest.raises(ConfigError, match="guidance"):
        from_config(SimulatedConfig(gripper_weight=0.0, goal_weight=0.0), jitter=1.0, parts=("gripper", "goal"))


def test_each_click_is_labelled_with_the_part_it_aimed_at():
    ann = SimulatedAnnotator(jitter=0.5, tip_bias=50.0)  # clicks close to their keypoint
    rng = np.random.default_rng(0)
    pts, labels = ann.labelled_frame_clicks(XY, [True] * 3, KINDS, HAND, H, W, rng)
    assert len(labels) == len(pts) > 0 and set(labels) <= set(KINDS)
    np.testing.assert_array_equal(np.array(KINDS)[_nearest_kind(pts)], labels)
    # The unlabelled call draws the same clicks from the same generator state.
    np.testing.assert_array_equal(ann.frame_clicks(XY, [True] * 3, KINDS, HAND, H, W, np.random.default_rng(0)), pts)


def test_state_projection_matches_the_live_simulator():
    """The annotator never re-simulates: keypoints from stored states must equal the simulator's own."""
    from visarl.envs import DEFAULT_CAMERA, MetaWorldPixelEnv

    env = MetaWorldPixelEnv("reach", image_size=64, camera=DEFAULT_CAMERA)
    try:
        states, live = [], []
        obs, _ = env.reset(seed=5)
        rng = np.random.default_rng(0)
        for _ in range(6):
            states.append(obs["state"])
            live.append([(k.x, k.y) for k in env.keypoints(occlusion=False)])
            for _ in range(5):
                obs, *_ = env.step(rng.uniform(-1, 1, 4))
    finally:
        env.close()
    xy, visible, kinds, hands = project_keypoints(np.stack(states), "reach", DEFAULT_CAMERA, 64, 64)
    assert kinds == ["gripper", "object", "goal"] and visible.all()
    np.testing.assert_allclose(xy, np.array(live), atol=0.3)  # TCP offset constant to ~0.2 px (visarl.envs)
    tip_to_hand = np.linalg.norm(hands - xy[:, 0], axis=1)
    assert np.all((tip_to_hand > 1.0) & (tip_to_hand < 4.0))  # the hand body sits a few px above the tip
    assert np.all(hands[:, 1] < xy[:, 0, 1])  # above it in the upright frame
