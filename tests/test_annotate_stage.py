"""`stage: annotate` end to end through visarl.fit, and frame selection (random vs diverse k-center).

One tiny dataset is collected per module (conf/collect/random_tiny.yaml: 63 distinct frames of reach).
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _shard_helpers import write_dataset
from PIL import Image

from visarl import fit
from visarl.annotate.maps import clicks_to_map, frame_sigma
from visarl.annotate.select import (
    coverage,
    downsample,
    frame_pool,
    k_center,
    pixel_scale,
    random_indices,
    select_frames,
)
from visarl.annotate.stage import AnnotateConfig
from visarl.annotate.store import load_annotations
from visarl.config import ConfigError, build
from visarl.data.shards import ShardReader

TINY = "conf/annotate/simulated_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("annotate")
    data = root / "reach" / "replay"
    fit.run(
        "conf/collect/random_tiny.yaml",
        [f"data_dir={data}", f"output_dir={root / 'runs'}", "run=collect", "trainer.enable_progress_bar=false"],
    )
    return data


def _annotate(tmp: Path, data: Path, *overrides: str, config: str = TINY) -> dict:
    return fit.run(config, [f"data_dir={data}", f"output_dir={tmp / 'runs'}", *overrides])


def _states_at(data: Path, refs) -> np.ndarray:
    readers = {p.name: ShardReader(p) for p in sorted(data.glob("*.h5"))}
    return np.stack([readers[s].read("state", [r])[0] for s, r in refs])


# ------------------------------------------------------------------------------------------ simulated


def test_simulated_stage_end_to_end(tiny_data, tmp_path):
    summary = _annotate(tmp_path, tiny_data, "run=a", f"store={tmp_path}/a.jsonl", f"export={tmp_path}/a.h5")
    ann = load_annotations(tmp_path / "a.h5")
    assert summary["frames_annotated"] == 8 and ann.frames.shape == (8, 64, 64, 3)
    assert ann.attrs["selection"] == "random" and ann.attrs["seed"] == 0 and ann.attrs["annotator_kind"] == "simulated"
    assert set(ann.annotators) == {"simulated"} and ann.attrs["task"] == "reach"
    assert json.loads(ann.attrs["simulated"])["clicks_mean"] == 25.0
    assert len(set(ann.refs)) == 8
    # The frames are the shards' frames at the recorded references.
    readers = {p.name: ShardReader(p) for p in sorted(tiny_data.glob("*.h5"))}
    for frame, (shard, row) in zip(ann.frames, ann.refs, strict=True):
        np.testing.assert_array_equal(frame, readers[shard].read("rgb", [row])[0])
        assert not readers[shard].read("continued", [row])[0]
    counts = np.array([len(c) for c in ann.clicks])
    assert counts.min() >= 5 and counts.max() <= 60 and 12 <= counts.mean() <= 38
    # Maps are the Gaussians of the stored clicks; their peaks sit on projected keypoints (independent camera).
    np.testing.assert_allclose(ann.maps, ann.rebuild_maps(), atol=1e-6)
    from visarl.envs import DEFAULT_CAMERA, MetaWorldPixelEnv, keypoints_from_states

    env = MetaWorldPixelEnv("reach", image_size=64, camera=DEFAULT_CAMERA)
    xy, visible = keypoints_from_states(_states_at(tiny_data, ann.refs), env.camera_model, env.n_objects)
    env.close()
    assert visible.all()
    jitter = frame_sigma(12.5, 64, 64, 400)  # 2 px
    # Reach's guidance names the gripper and the goal, not the puck: the page shows it, the simulated annotator
    # follows it, and every click is labelled with the part it aimed at.
    assert "puck plays no part" in ann.attrs["guidance"] and ann.attrs["parts"] == "gripper,goal"
    labels = np.concatenate(ann.click_labels)
    assert set(labels) == {"gripper", "goal"}
    assert 0.6 < np.mean(labels == "gripper") < 0.83  # weights 0.5 : 0.2 renormalised, 0.71
    kind_index = {"gripper": 0, "goal": 2}
    near_max = []  # [8, 3]: the map's highest value within 2 px of each keypoint
    for i in range(8):
        peak = np.array(np.unravel_index(np.argmax(ann.maps[i]), (64, 64))[::-1], float)  # (x, y)
        assert np.linalg.norm(xy[i] - peak, axis=1).min() < 3 * jitter + 2.5  # + tip-to-hand spread of the gripper
        aim = xy[i][[kind_index[k] for k in ann.click_labels[i]]]  # [M, 2] the keypoint each click aimed at
        near = np.linalg.norm(ann.clicks[i] - aim, axis=1)
        assert np.median(near) < 2 * jitter and near.max() < 5 * jitter + 3
        c, r = np.clip(np.rint(xy[i]).astype(int), 0, 63).T
        near_max.append(
            [ann.maps[i, max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3].max() for x, y in zip(c, r, strict=True)]
        )
    # The gripper (most clicks, summed and scaled to peak 1) is marked on every frame, the goal on most.
    near_max = np.array(near_max)
    assert np.all(near_max[:, 0] > 0.5), near_max
    goal_marked = near_max[:, 2] > 0.1
    assert np.mean(goal_marked) >= 0.75

    # A config naming the puck too gets clicks on it.
    _annotate(
        tmp_path,
        tiny_data,
        "run=b",
        f"store={tmp_path}/b.jsonl",
        f"export={tmp_path}/b.h5",
        "parts=[gripper,object,goal]",
    )
    assert "object" in set(np.concatenate(load_annotations(tmp_path / "b.h5").click_labels))


def test_simulated_is_deterministic_per_seed_and_resumes(tiny_data, tmp_path):
    def once(name: str, seed: int) -> object:
        _annotate(
            tmp_path,
            tiny_data,
            f"run={name}",
            f"seed={seed}",
            f"store={tmp_path}/{name}.jsonl",
            f"export={tmp_path}/{name}.h5",
        )
        return load_annotations(tmp_path / f"{name}.h5")

    a, b, c = once("s0", 0), once("s0b", 0), once("s1", 1)
    assert a.refs == b.refs
    assert all(np.array_equal(x, y) for x, y in zip(a.clicks, b.clicks, strict=True))
    np.testing.assert_array_equal(a.maps, b.maps)
    assert a.refs != c.refs
    assert not any(len(x) == len(y) and np.allclose(x, y) for x, y in zip(a.clicks, c.clicks, strict=True))

    # A run killed mid-way (journal cut after a few clicks) is completed to the same clicks on a rerun.
    journal = tmp_path / "s0b.jsonl"
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join(lines[:60]) + b"\n")
    (tmp_path / "s0b.h5").unlink()
    once_again = _annotate(tmp_path, tiny_data, "run=s0c", f"store={journal}", f"export={tmp_path}/s0b.h5")
    again = load_annotations(tmp_path / "s0b.h5")
    assert once_again["clicks"] == sum(len(x) for x in a.clicks)
    assert all(np.array_equal(x, y) for x, y in zip(a.clicks, again.clicks, strict=True))

    # The same store with other frames (another seed) is refused, not mixed in.
    with pytest.raises(ConfigError, match="other frames"):
        _annotate(tmp_path, tiny_data, "run=s1b", "seed=1", f"store={journal}", f"export={tmp_path}/x.h5")


def test_default_paths_sit_beside_the_replay(tiny_data, tmp_path):
    cfg = build(AnnotateConfig, {"task": "reach"})
    from visarl.annotate.stage import resolve_paths

    assert resolve_paths(cfg) == (
        Path("data/reach/replay"),
        Path("data/reach/annotations/human.jsonl"),
        Path("data/reach/annotations.h5"),
        "human",
    )
    # Copy of the dataset so that the default export does not land beside the module's shared data.
    data = tmp_path / "reach" / "replay"
    data.mkdir(parents=True)
    for p in tiny_data.glob("*.h5"):
        (data / p.name).write_bytes(p.read_bytes())
    summary = _annotate(tmp_path, data, "run=d", "num_frames=3", "selection=diverse")
    assert summary["export"] == str(tmp_path / "reach" / "annotations.h5")
    assert (tmp_path / "reach" / "annotations" / "simulated.jsonl").is_file()
    assert load_annotations(summary["export"]).attrs["selection"] == "diverse"
    assert json.loads((tmp_path / "runs" / "simulated_tiny" / "d" / "annotate.json").read_text()) == summary


def test_clear_errors(tiny_data, tmp_path):
    missing = tmp_path / "nowhere" / "replay"
    with pytest.raises(ConfigError, match=str(missing)):
        _annotate(tmp_path, missing, "run=e1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"{empty}.*no shards"):
        _annotate(tmp_path, empty, "run=e2")
    with pytest.raises(ConfigError, match="asked for 1000 frames.*only 63"):
        _annotate(tmp_path, tiny_data, "run=e3", "num_frames=1000")
    with pytest.raises(ConfigError, match="task"):
        _annotate(tmp_path, tiny_data, "run=e4", "task=door-open")
    with pytest.raises(ConfigError, match="annotator_id"):
        build(AnnotateConfig, {"task": "reach", "annotator_id": "../x"})
    with pytest.raises(ConfigError, match="selection"):
        build(AnnotateConfig, {"task": "reach", "selection": "best"})


# ------------------------------------------------------------------------------------------ human


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        url + path.lstrip("/"), json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _serve_in_thread(tmp: Path, data: Path, run: str) -> tuple[threading.Thread, dict, str]:
    out: dict = {}

    def target() -> None:
        try:
            out["summary"] = _annotate(
                tmp,
                data,
                f"run={run}",
                "annotator=human",
                "port=0",
                "num_frames=4",
                "selection=diverse",
                f"store={tmp}/h.jsonl",
                f"export={tmp}/h.h5",
            )
        except BaseException as e:  # reported by the test
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    info = tmp / "runs" / "simulated_tiny" / run / "server.json"
    for _ in range(600):
        if info.exists() or "error" in out:
            break
        time.sleep(0.05)
    assert "error" not in out, out.get("error")
    return thread, out, json.loads(info.read_text())["url"]


def test_human_path_serves_saves_resumes_and_exports(tiny_data, tmp_path):
    thread, out, url = _serve_in_thread(tmp_path, tiny_data, "h1")
    try:
        with urllib.request.urlopen(url + "api/state", timeout=10) as r:
            state = json.loads(r.read())
        # The page gets the task's guidance, and where each frame sits in its episode with its neighbours there.
        assert "puck plays no part" in state["guidance"] and state["parts"] == ["gripper", "goal"]
        readers = {p.name: ShardReader(p) for p in sorted(tiny_data.glob("*.h5"))}
        for i, (shard, row) in enumerate(state["refs"]):
            assert state["episode"][i] == readers[shard].read("episode", [row])[0]
            assert state["step"][i] == readers[shard].read("step", [row])[0]
            assert 0 in state["context"][i] and set(state["context"][i]) <= set(range(-3, 4))
        shard, row = state["refs"][1]
        d = max(state["context"][1])
        with urllib.request.urlopen(url + f"api/context/1/{d}.png", timeout=10) as r:
            neighbour = np.asarray(Image.open(io.BytesIO(r.read())))
        ep, st = state["episode"][1], state["step"][1] + d
        # The same episode's frame d steps on, found independently in the shards (it may sit in another shard).
        matches = [
            r.read("rgb", [k])[0]
            for r in readers.values()
            for k in np.flatnonzero(
                (r.read("episode", np.arange(len(r))) == ep) & (r.read("step", np.arange(len(r))) == st)
            )
        ]
        assert matches and all(np.array_equal(neighbour, m) for m in matches)
        _post(url, "/api/click", {"frame": 0, "x": 10.0, "y": 20.0})
        _post(url, "/api/click", {"frame": 0, "x": 30.0, "y": 5.0})
        _post(url, "/api/undo", {"frame": 0})
        _post(url, "/api/click", {"frame": 2, "x": 40.0, "y": 41.5})
    finally:
        _post(url, "/api/done", {})
        thread.join(timeout=20)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert not (tmp_path / "runs" / "simulated_tiny" / "h1" / "server.json").exists()
    ann = load_annotations(tmp_path / "h.h5")
    assert ann.attrs["annotator_kind"] == "human" and ann.attrs["selection"] == "diverse" and ann.attrs["seed"] == 0
    assert [len(c) for c in ann.clicks] == [1, 0, 1, 0] and ann.annotators[0] == "human"
    np.testing.assert_array_equal(ann.clicks[0], [[10.0, 20.0]])
    np.testing.assert_allclose(ann.maps[2], clicks_to_map([[40.0, 41.5]], 64, 64))  # the stage passes the defaults
    assert (ann.attrs["reference_size"], ann.attrs["combine"]) == (400, "sum")
    assert out["summary"]["clicks"] == 2
    expected = select_frames(tiny_data, 4, "diverse", 0, feature_size=8)
    assert ann.refs == expected

    # Restarting the same config reopens the same frames with the clicks so far.
    thread, out, url = _serve_in_thread(tmp_path, tiny_data, "h2")
    try:
        with urllib.request.urlopen(url + "api/state", timeout=10) as r:
            state = json.loads(r.read())
        assert state["counts"] == [1, 0, 1, 0]
        _post(url, "/api/click", {"frame": 3, "x": 1.0, "y": 2.0})
    finally:
        _post(url, "/api/done", {})
        thread.join(timeout=20)
    assert "error" not in out, out.get("error")
    assert [len(c) for c in load_annotations(tmp_path / "h.h5").clicks] == [1, 0, 1, 1]


# ------------------------------------------------------------------------------------------ selection


def test_selection_is_deterministic_distinct_and_skips_continued_rows(tmp_path):
    # Episodes split over shards of 5 rows: every split repeats a frame as a `continued` row.
    truth = write_dataset(tmp_path, [[(12, "terminated"), (7, "truncated")], [(9, "running")]], rows_per_shard=5)
    pool = frame_pool(tmp_path)
    assert len(pool) == len(truth.frames) < sum(len(r) for r in pool.readers)
    for method in ("random", "diverse"):
        everything = select_frames(tmp_path, len(truth.frames), method, seed=1, feature_size=4)
        assert len(set(everything)) == len(everything)
        readers = {r.path.name: r for r in pool.readers}
        ids = {tuple(readers[s].read("state", [r])[0, :2].astype(int)) for s, r in everything}  # (episode, step)
        assert ids == set(truth.frames)  # each observation exactly once
        a = select_frames(tmp_path, 6, method, seed=3, feature_size=4)
        assert a == select_frames(tmp_path, 6, method, seed=3, feature_size=4)
        assert a != select_frames(tmp_path, 6, method, seed=4, feature_size=4)
    with pytest.raises(ValueError, match="only"):
        select_frames(tmp_path, len(truth.frames) + 1, "random")
    with pytest.raises(ValueError, match="method"):
        select_frames(tmp_path, 2, "best")


def test_context_is_the_same_episodes_neighbouring_steps_across_shards(tmp_path):
    # Episodes of 12, 7 and 9 steps split over shards of 5 rows (so neighbours sit in other shards).
    truth = write_dataset(tmp_path, [[(12, "terminated"), (7, "truncated")], [(9, "running")]], rows_per_shard=5)
    pool = frame_pool(tmp_path)
    idx = np.arange(len(pool))
    ctx = pool.context(idx, radius=2)
    ids = pool.read("state", idx)[:, :2].astype(int)  # (episode, step) of each pool frame
    last = {e: max(t for ee, t in truth.frames if ee == e) for e in truth.episodes}
    assert ctx.offsets.tolist() == [-2, -1, 0, 1, 2] and ctx.frames.shape == (len(pool), 5, 8, 8, 3)
    for n, (e, t) in enumerate(ids):
        assert (ctx.episode[n], ctx.step[n]) == (e, t)
        for k, d in enumerate(ctx.offsets):
            expect = 0 <= t + d <= last[e]
            assert ctx.available[n, k] == expect, (e, t, d)
            if expect:
                np.testing.assert_array_equal(ctx.frames[n, k], truth.frames[(e, t + d)]["rgb"])
            else:
                assert not ctx.frames[n, k].any()


def test_k_center_is_farthest_point_traversal_and_coverage_is_nearest_distance():
    x = np.random.default_rng(0).integers(0, 256, (200, 12), dtype=np.uint8)
    xf = x.astype(np.float64)
    d = np.linalg.norm(xf[:, None] - xf[None], axis=2)  # [N, N] brute force
    chosen = k_center(x, 10, seed=5)
    assert chosen[0] == np.random.default_rng(5).integers(200) and len(set(chosen)) == 10
    for k in range(1, 10):
        nearest = d[:, chosen[:k]].min(1)
        assert np.isclose(nearest[chosen[k]], nearest.max(), rtol=1e-5)  # the farthest from those chosen so far
    cov = coverage(x, chosen, scale=2.0)
    np.testing.assert_allclose(
        [cov.mean, cov.max], [d[:, chosen].min(1).mean() / 2, d[:, chosen].min(1).max() / 2], rtol=1e-5
    )
    # Identical frames: every index once, no repeats.
    same = np.zeros((5, 3), np.uint8)
    assert sorted(k_center(same, 5, 0)) == list(range(5))
    # Well separated clusters: k-center takes one frame from each, random usually misses some.
    blobs = np.repeat(np.arange(6)[:, None] * 40, 50, axis=0) + np.random.default_rng(1).integers(0, 3, (300, 1))
    assert len(set(blobs[k_center(blobs.astype(np.uint8), 6, 0), 0] // 40)) == 6
    assert len(set(random_indices(300, 6, 0))) == 6


def test_downsample_is_an_area_average():
    rgb = np.random.default_rng(2).integers(0, 256, (3, 12, 8, 3), dtype=np.uint8)
    out = downsample(rgb, 4)  # 12x8 -> 4x4: blocks of 3x2
    ref = rgb.reshape(3, 4, 3, 4, 2, 3).astype(np.float64).mean((2, 4))
    np.testing.assert_array_equal(out.reshape(3, 4, 4, 3), np.rint(ref))
    grey = downsample(rgb, 4, grey=True).reshape(3, 4, 4)
    np.testing.assert_allclose(grey, ref @ [0.299, 0.587, 0.114], atol=0.51)


def test_diverse_covers_the_data_better_than_random(tiny_data):
    pool = frame_pool(tiny_data)
    feats = pool.features(16)
    scale = pixel_scale(feats)
    for seed in range(5):
        kc = coverage(feats, k_center(feats, 8, seed), scale)
        rnd = coverage(feats, random_indices(len(pool), 8, seed), scale)
        assert kc.max <= rnd.max  # the k-center objective
        assert kc.mean <= rnd.mean * 1.1
