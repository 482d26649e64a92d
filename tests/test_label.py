"""stage: label (every shard labelled, atomically, reruns skip) and the online PiCANet saliency source."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _label_helpers import SIZE, tiny_weights, write_shards

from visarl.config import ConfigError
from visarl.data.shards import ShardReader, list_shards
from visarl.fit import run
from visarl.saliency.online import PiCANetSaliency

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "conf" / "label" / "tiny.yaml")


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def expected_maps(weights: Path, rgb: np.ndarray) -> np.ndarray:
    """Independent reference: the net called directly, resized with plain F.interpolate, rounded to uint8."""
    from visarl.saliency.picanet import load_picanet

    net = load_picanet(weights)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    s = net.input_size
    with torch.no_grad():
        y = net(F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)).final
    y = F.interpolate(y, size=rgb.shape[1:3], mode="bilinear", align_corners=False, antialias=True)
    return (y[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_label_every_shard_then_rerun_skips(tmp_path) -> None:
    data = tmp_path / "replay"
    shards = write_shards(data, num_steps=50, rows_per_shard=20)
    assert len(shards) == 3
    weights = tiny_weights(tmp_path / "picanet.pt")
    base = [f"output_dir={tmp_path}/runs", f"data_dir={data}", f"checkpoint={weights}"]
    summary = run(TINY, [*base, "run=a", "batch_size=7"])  # batches that straddle nothing in particular
    assert summary["labelled_shards"] == 3 and summary["skipped_shards"] == 0
    assert summary["frames"] == sum(len(ShardReader(p)) for p in shards) and summary["fps"] > 0
    for path in list_shards(data):
        reader = ShardReader(path)
        sal = reader.read("saliency")
        assert sal.dtype == np.uint8 and sal.shape == (len(reader), SIZE, SIZE)
        np.testing.assert_allclose(sal, expected_maps(weights, reader.read("rgb")), atol=1)
        assert sal.std() > 0  # a real map, not a constant
    digests = {p.name: _digest(p) for p in shards}

    again = run(TINY, [*base, "run=b"])
    assert again["labelled_shards"] == 0 and again["skipped_shards"] == 3
    assert {p.name: _digest(p) for p in shards} == digests  # untouched

    other = tiny_weights(tmp_path / "other.pt", seed=1)
    redo = run(TINY, [*base, "run=c", f"checkpoint={other}", "overwrite=true"])
    assert redo["labelled_shards"] == 3
    reader = ShardReader(shards[0])
    np.testing.assert_allclose(reader.read("saliency"), expected_maps(other, reader.read("rgb")), atol=1)
    assert json.loads((tmp_path / "runs" / "tiny" / "c" / "label.json").read_text())["labelled_shards"] == 3


def test_label_killed_midway_leaves_whole_shards_and_rerun_finishes(tmp_path) -> None:
    """SIGKILL a real `python -m visarl.fit` once its first shard is done: every shard is then either fully
    labelled (right values) or byte-identical to before, and a rerun labels exactly the untouched ones."""
    data = tmp_path / "replay"
    shards = write_shards(data, num_steps=300, rows_per_shard=30)
    before = {p.name: _digest(p) for p in shards}
    weights = tiny_weights(tmp_path / "picanet.pt", input_size=128)  # slow enough to stop in the middle
    args = [f"output_dir={tmp_path}/runs", f"data_dir={data}", f"checkpoint={weights}", "batch_size=8"]
    state = tmp_path / "runs" / "tiny" / "k" / "label_state.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "visarl.fit", "--config", TINY, *args, "run=k"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "label finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    labelled, untouched = [], []
    names = [p.name for p in list_shards(data)]  # every file a reader accepts
    assert names == sorted(before)
    for path in list_shards(data):
        reader = ShardReader(path, full_check=True)
        if "saliency" in reader.fields:
            np.testing.assert_allclose(reader.read("saliency"), expected_maps(weights, reader.read("rgb")), atol=1)
            labelled.append(path.name)
        else:
            assert _digest(path) == before[path.name]
            untouched.append(path.name)
    assert labelled and untouched, (labelled, untouched)

    summary = run(TINY, [*args, "run=r"])
    assert summary["skipped_shards"] == len(labelled) and summary["labelled_shards"] == len(untouched)
    assert all("saliency" in ShardReader(p).fields for p in list_shards(data))


def test_label_errors_name_what_is_missing(tmp_path) -> None:
    data = tmp_path / "replay"
    write_shards(data, num_steps=10, rows_per_shard=20)
    base = [f"output_dir={tmp_path}/runs"]
    with pytest.raises(ConfigError, match=r"empty"):
        run(TINY, [*base, "run=a", f"data_dir={tmp_path}/empty", f"checkpoint={tmp_path}/x.pt"])
    with pytest.raises(ConfigError, match=r"nothere\.pt"):
        run(TINY, [*base, "run=b", f"data_dir={data}", f"checkpoint={tmp_path}/nothere.pt"])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ConfigError, match=r"foreign\.pt.*not a visarl PiCANet"):
        run(TINY, [*base, "run=c", f"data_dir={data}", f"checkpoint={foreign}"])
    assert "saliency" not in ShardReader(list_shards(data)[0]).fields


def test_online_source_on_a_batch_of_env_frames(tmp_path) -> None:
    """Two vectorized Meta-World envs: maps for their frames, batched == one at a time, uint8 [B, 1, H, W]."""
    from visarl.envs import make_vector_env

    envs = make_vector_env(2, seed=0, asynchronous=False, task="reach", image_size=64)
    try:
        obs, _ = envs.reset(seed=0)
        frames = [obs["rgb"]]
        for _ in range(2):
            obs, *_ = envs.step(envs.action_space.sample())
            frames.append(obs["rgb"])
    finally:
        envs.close()
    rgb = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2)  # [6, 3, 64, 64] uint8
    assert rgb.shape == (6, 3, 64, 64) and rgb.float().std() > 5

    source = PiCANetSaliency.from_checkpoint(tiny_weights(tmp_path / "p.pt", input_size=96), batch_size=4)
    assert source.input_size == 96 and not source.net.training
    maps = source(rgb, None)
    assert maps.dtype == torch.uint8 and maps.shape == (6, 1, 64, 64) and maps.device == rgb.device
    one_by_one = torch.cat([source(rgb[i : i + 1]) for i in range(6)])
    assert (maps.int() - one_by_one.int()).abs().max() <= 1
    np.testing.assert_allclose(
        maps[:, 0].numpy(), expected_maps(tmp_path / "p.pt", rgb.permute(0, 2, 3, 1).numpy()), atol=1
    )
    assert not torch.equal(maps[0], maps[1])  # two envs, two different frames and maps


def test_online_bf16_agrees_with_fp32(tmp_path) -> None:
    weights = tiny_weights(tmp_path / "p.pt")
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))
    fp32 = PiCANetSaliency.from_checkpoint(weights)(rgb).float()
    bf16 = PiCANetSaliency.from_checkpoint(weights, precision="bf16-mixed")(rgb).float()
    assert (fp32 - bf16).abs().mean() < 3 and fp32.std() > 5  # within ~1% of the 0-255 range on average
    with pytest.raises(ValueError, match="precision"):
        PiCANetSaliency.from_checkpoint(weights, precision="fp8")
    with pytest.raises(ValueError, match="uint8"):
        PiCANetSaliency.from_checkpoint(weights)(rgb.float())


def test_online_bad_checkpoint_names_the_file(tmp_path) -> None:
    notes = tmp_path / "notes.ckpt"
    notes.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.ckpt"):
        PiCANetSaliency.from_checkpoint(notes)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, other)
    with pytest.raises(ValueError, match=r"other\.pt.*something-else"):
        PiCANetSaliency.from_checkpoint(other)
