"""HDF5 shard format: round trips against what was written, crash safety under SIGKILL, clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from _shard_helpers import ACTION, IMAGE, STATE, Truth, layouts, simple_dataset, write_dataset
from hypothesis import HealthCheck, given, settings

from visarl.data import shards
from visarl.data.shards import (
    SCHEMA_VERSION,
    ShardError,
    ShardReader,
    ShardWriter,
    dataset_info,
    list_shards,
    parse_shard_name,
    summarize,
    write_field,
)

REPO = Path(__file__).resolve().parents[1]


def check_against_truth(directory: Path, truth: Truth) -> None:
    """Every transition and frame in the shards is exactly what was written, each exactly once."""
    seen_transitions: Counter = Counter()
    seen_frames: Counter = Counter()
    for path in list_shards(directory):
        reader = ShardReader(path, full_check=True)
        data = reader.load()
        ep, step = data["episode"], data["step"]
        for row in range(len(reader)):
            key = (int(ep[row]), int(step[row]))
            frame = truth.frames[key]  # every row, continued ones included, is a frame that was written
            np.testing.assert_array_equal(data["rgb"][row], frame["rgb"])
            np.testing.assert_array_equal(data["state"][row], frame["state"])
            if not data["continued"][row]:
                seen_frames[key] += 1
        for row in reader.transition_indices():
            key = (int(ep[row]), int(step[row]))
            seen_transitions[key] += 1
            assert (ep[row + 1], step[row + 1]) == (key[0], key[1] + 1)
            expected = truth.transitions[key]
            np.testing.assert_array_equal(data["action"][row], expected["action"])
            for name in ("reward", "terminated", "truncated", "success"):
                assert data[name][row] == np.float32(expected[name]), (name, key)
        # rows without a next observation carry no transition data
        last = ~data["has_next"]
        assert not data["terminated"][last].any() and not data["truncated"][last].any()
        assert not data["action"][last].any()
    assert seen_transitions == Counter(truth.transitions.keys())
    assert seen_frames == Counter(truth.frames.keys())


# --------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("rows_per_shard, flush_every, chunk_rows", [(7, 0, 0), (23, 0, 2), (10_000, 0, 0), (40, 9, 0)])
def test_round_trip_interleaved_streams(tmp_path: Path, rows_per_shard: int, flush_every: int, chunk_rows: int):
    episodes = [
        [(9, "terminated"), (5, "truncated"), (4, "running")],
        [(13, "truncated"), (3, "terminated")],
        [(2, "terminated"), (7, "truncated"), (6, "terminated"), (11, "running")],
    ]
    truth = write_dataset(tmp_path, episodes, rows_per_shard, seed=rows_per_shard, flush_every=flush_every,
                          chunk_rows=chunk_rows)  # fmt: skip
    check_against_truth(tmp_path, truth)
    paths = list_shards(tmp_path)
    assert paths == truth.shards
    n_transitions = sum(n for eps in episodes for n, _ in eps)
    if rows_per_shard < n_transitions:
        assert len(paths) > 1
        continued = sum(int(ShardReader(p).read("continued").sum()) for p in paths)
        assert continued > 0  # episodes were split across shards
    else:
        assert len(paths) == 1
    for p in paths:
        reader = ShardReader(p)
        assert reader.attrs["task"] == "test-v3" and reader.attrs["config"] == "a: 1\n"
        assert reader.attrs["format"] == "visarl-shard" and reader.attrs["schema_version"] == SCHEMA_VERSION
        assert reader.attrs["complete"] is True and reader.attrs["image_size"] == IMAGE
        assert reader.fields["rgb"] == ((len(reader), IMAGE, IMAGE, 3), np.dtype(np.uint8))
        assert reader.fields["state"][1] == np.float32 and reader.fields["action"][0][1:] == (ACTION,)
        if rows_per_shard < 10_000:
            # a shard is cut as soon as it holds rows_per_shard rows (or one more: a first step adds two)
            assert len(reader) <= rows_per_shard + 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_property_random_layouts(layout):
    episodes, rows_per_shard, seed = layout
    with tempfile.TemporaryDirectory() as d:
        truth = write_dataset(Path(d), episodes, rows_per_shard, seed=seed)
        check_against_truth(Path(d), truth)
        info = dataset_info(d)
        assert info.transitions == len(truth.transitions) and info.frames == len(truth.frames)
        assert info.episodes == sum(len(e) for e in episodes)


def test_read_any_order_matches_load(tmp_path: Path):
    for chunk_rows, sub in ((0, "contiguous"), (3, "chunked")):
        write_dataset(tmp_path / sub, [[(9, "terminated")], [(5, "running")]], 1000, chunk_rows=chunk_rows)
        reader = ShardReader(list_shards(tmp_path / sub)[0])
        assert isinstance(reader._column("rgb"), np.memmap) == (chunk_rows == 0)  # both read paths run
        idx = np.array([5, 0, 5, len(reader) - 1, 2, 3, 4, 1])
        full = reader.load()
        for name in ("rgb", "state", "action", "terminated", "episode"):
            np.testing.assert_array_equal(reader.read(name, idx), full[name][idx])
            np.testing.assert_array_equal(reader.read(name, slice(2, 6)), full[name][2:6])
        with pytest.raises(IndexError):
            reader.read("rgb", [len(reader)])
        with pytest.raises(KeyError, match="saliency"):
            reader.read("saliency", [0])


def test_reader_pickles_without_its_handle(tmp_path: Path):
    simple_dataset(tmp_path)
    reader = ShardReader(list_shards(tmp_path)[0])
    expected = reader.read("rgb", [3, 1])  # opens the file and maps it
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._h5 is None and clone._cols == {}
    np.testing.assert_array_equal(clone.read("rgb", [3, 1]), expected)
    assert len(pickle.dumps(reader)) < reader.fields["rgb"][0][0] * IMAGE * IMAGE * 3  # no frames inside


def test_dataset_info_counts(tmp_path: Path):
    truth = simple_dataset(tmp_path)
    info = dataset_info([tmp_path])
    assert summarize(tmp_path) == {**dataclasses.asdict(info), "fields": list(info.fields)}
    json.dumps(summarize(tmp_path))
    successes = {e for (e, _), t in truth.transitions.items() if t["success"] > 0}
    assert (info.transitions, info.frames, info.episodes) == (len(truth.transitions), len(truth.frames), 9)
    assert info.successful_episodes == len(successes)
    assert info.shards == len(truth.shards) and "rgb" in info.fields and "saliency" not in info.fields
    assert info.rows == info.frames + sum(int(ShardReader(p).read("continued").sum()) for p in truth.shards)


# --------------------------------------------------------------------------------------------------
# writer behaviour


def test_writer_resumes_without_collisions(tmp_path: Path):
    first = simple_dataset(tmp_path)
    second = write_dataset(tmp_path, [[(4, "terminated")]], rows_per_shard=100, seed=3)
    other = write_dataset(tmp_path, [[(4, "terminated")]], rows_per_shard=100, seed=4, writer_id=1)
    names = [p.name for p in first.shards]
    assert second.shards[0].name == f"shard-w0-{len(names):06d}.h5"  # index continues after existing shards
    assert other.shards[0].name == "shard-w1-000000.h5"
    ids = [first.episodes, second.episodes, other.episodes]
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1 :])
    assert min(second.episodes) > max(first.episodes)
    assert min(other.episodes) >= 1 << 40
    merged = Truth({**first.frames, **second.frames, **other.frames},
                   {**first.transitions, **second.transitions, **other.transitions})  # fmt: skip
    check_against_truth(tmp_path, merged)


def test_writer_rejects_bad_input(tmp_path: Path):
    obs = {"rgb": np.zeros((IMAGE, IMAGE, 3), np.uint8), "state": np.zeros(STATE, np.float32)}
    with pytest.raises(ValueError, match="rows_per_shard"):
        ShardWriter(tmp_path, rows_per_shard=1)
    with pytest.raises(ValueError, match="complete"):
        ShardWriter(tmp_path, attrs={"complete": True})
    with pytest.raises(ValueError, match="config"):
        ShardWriter(tmp_path, attrs={"config": {"nested": 1}})
    writer = ShardWriter(tmp_path, rows_per_shard=10)
    with pytest.raises(ValueError, match="add_first"):
        writer.add_step(0, np.zeros(ACTION), 0.0, False, False, 0.0, obs)
    with pytest.raises(ValueError, match="rgb"):
        writer.add_first(0, {"rgb": np.zeros((IMAGE, IMAGE, 3), np.float32), "state": obs["state"]})
    with pytest.raises(ValueError, match="lacks"):
        writer.add_first(0, {"rgb": obs["rgb"]})
    writer.add_first(0, obs)
    with pytest.raises(ValueError, match="differs"):
        writer.add_step(0, np.zeros(ACTION), 0.0, False, False, 0.0, {**obs, "state": np.zeros(STATE + 1)})
    writer.add_step(0, np.zeros(ACTION), 0.0, False, False, 0.0, obs)
    with pytest.raises(ValueError, match="dims"):
        writer.add_step(0, np.zeros(ACTION + 1), 0.0, False, False, 0.0, obs)
    with writer:
        pass
    assert len(writer.shard_paths) == 1  # the running episode was written as a partial segment
    with pytest.raises(ValueError, match="closed"):
        writer.add_first(0, obs)


def test_writer_copies_observations(tmp_path: Path):
    """Vector envs reuse their observation buffers: the writer must keep copies."""
    buf = {"rgb": np.zeros((IMAGE, IMAGE, 3), np.uint8), "state": np.zeros(STATE, np.float32)}
    with ShardWriter(tmp_path) as writer:
        writer.add_first(0, buf)
        buf["rgb"][:] = 7
        writer.add_step(0, np.zeros(ACTION), 1.0, True, False, 1.0, buf)
        buf["rgb"][:] = 9
    rgb = ShardReader(writer.shard_paths[0]).read("rgb")
    assert rgb[0].max() == 0 and rgb[1].min() == 7


def test_add_first_on_running_stream_ends_it_without_flags(tmp_path: Path):
    obs = {"rgb": np.zeros((IMAGE, IMAGE, 3), np.uint8), "state": np.zeros(STATE, np.float32)}
    with ShardWriter(tmp_path) as writer:
        a = writer.add_first(0, obs)
        writer.add_step(0, np.ones(ACTION), 1.0, False, False, 0.0, obs)
        b = writer.add_first(0, obs)  # e.g. a reset without done
        writer.add_step(0, np.ones(ACTION), 1.0, True, False, 0.0, obs)
    data = ShardReader(writer.shard_paths[0]).load()
    np.testing.assert_array_equal(data["episode"], [a, a, b, b])
    np.testing.assert_array_equal(data["has_next"], [True, False, True, False])
    np.testing.assert_array_equal(data["terminated"], [False, False, True, False])


# --------------------------------------------------------------------------------------------------
# bad files


def _good_shard(directory: Path) -> Path:
    return simple_dataset(directory, rows_per_shard=1000).shards[0]


def _rewrite(path: Path, mutate) -> None:
    """Rewrite a shard (complete attribute included) after ``mutate(columns, attrs)``."""
    reader = ShardReader(path)
    columns, attrs = reader.load(), dict(reader.attrs)
    del attrs["complete"]
    mutate(columns, attrs)
    path.unlink()
    shards._write_shard(path, columns, attrs)


def _text(path: Path) -> None:
    path.unlink()
    path.write_text("this is not HDF5\n")


def _truncated(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _foreign(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("rgb", data=np.zeros((2, 4, 4, 3), np.uint8))


def _incomplete(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f.attrs["complete"]


BAD_FILES = {
    "text file": (_text, "not an HDF5|damaged"),
    "truncated": (_truncated, "damaged"),
    "foreign HDF5": (_foreign, "not a visarl shard"),
    "wrong schema": (lambda p: _rewrite(p, lambda c, a: a.update(schema_version=99)), "schema_version 99"),
    "incomplete": (_incomplete, "incomplete"),
    "missing dataset": (lambda p: _rewrite(p, lambda c, a: c.pop("reward")), "missing datasets"),
    "lengths": (lambda p: _rewrite(p, lambda c, a: c.update(reward=c["reward"][:-1])), "inconsistent lengths"),
    "crossing episodes": (
        lambda p: _rewrite(p, lambda c, a: c["has_next"].__setitem__(np.flatnonzero(~c["has_next"])[0], True)),
        "different episodes",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_errors_name_the_file(tmp_path: Path, kind: str):
    damage, message = BAD_FILES[kind]
    path = _good_shard(tmp_path)
    damage(path)
    with pytest.raises(ShardError, match=message) as err:
        ShardReader(path, full_check=True)
    assert str(path) in str(err.value)
    with pytest.raises(ShardError) as err:
        list_shards(tmp_path)
    assert str(path) in str(err.value)
    assert list_shards(tmp_path, strict=False) == []


def test_list_shards_ignores_temporary_and_other_files(tmp_path: Path):
    path = _good_shard(tmp_path)
    (tmp_path / f".{path.name}.tmp").write_bytes(b"partial")
    (tmp_path / ".hidden.h5").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("hi")
    assert list_shards(tmp_path) == [path]
    assert list_shards(tmp_path / "nowhere") == []  # nothing collected there yet
    with pytest.raises(NotADirectoryError, match="notes.txt"):
        list_shards(tmp_path / "notes.txt")


# --------------------------------------------------------------------------------------------------
# crash safety: real processes killed with SIGKILL

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from visarl.data import shards

    directory, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    marker = os.path.join(os.path.dirname(directory), "marker")

    def hang_after(name, calls):
        # stop forever right after the n-th call of shards.<name>, i.e. mid-way through writing a file
        original, count = getattr(shards, name), [0]
        def wrapper(*args, **kwargs):
            original(*args, **kwargs)
            count[0] += 1
            if count[0] == calls:
                open(marker, "w").close()
                time.sleep(600)
        setattr(shards, name, wrapper)

    rng = np.random.default_rng(seed)
    def obs():
        return {"rgb": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "state": rng.standard_normal(5)}

    if mode == "label":
        hang_after("_add_dataset", 1)
        path = shards.list_shards(directory)[0]
        n, h, w = shards.ShardReader(path).fields["rgb"][0][:3]
        shards.write_field(path, "saliency", np.full((n, h, w), 255, np.uint8))
        sys.exit(0)
    if mode == "hang":
        hang_after("_fill", 3)
    writer = shards.ShardWriter(directory, rows_per_shard=int(sys.argv[4]), attrs={"task": "t"})
    if mode == "random":
        open(marker, "w").close()
    for episode in range(10**6):
        writer.add_first(episode % 2, obs())
        for t in range(30):
            writer.add_step(episode % 2, rng.standard_normal(3), 1.0, False, t == 29, 0.0, obs())
    """
)


def _start_child(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    (tmp_path / "marker").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "marker").exists():
        if proc.poll() is not None:
            pytest.fail(f"child exited early: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "child never reached its marker"
        time.sleep(0.02)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _accepted_shards_are_whole(directory: Path) -> list[Path]:
    paths = list_shards(directory)  # strict: raises if any visible *.h5 is not a complete shard
    for p in paths:
        reader = ShardReader(p, full_check=True)
        assert len(reader.transition_indices()) > 0
    return paths


def test_sigkill_mid_shard_leaves_only_whole_shards(tmp_path: Path):
    data = tmp_path / "data"
    _kill(_start_child(tmp_path, str(data), "hang", "0", "40"))
    temps = sorted(p.name for p in data.iterdir() if p.name.startswith("."))
    assert temps == [".shard-w0-000002.h5.tmp"]  # the third shard: all data written, complete not yet set
    assert (data / temps[0]).stat().st_size > 0  # it really was killed mid-shard
    paths = _accepted_shards_are_whole(data)
    assert [p.name for p in paths] == ["shard-w0-000000.h5", "shard-w0-000001.h5"]
    # a writer started after the crash continues the numbering and leaves the stale temp file alone
    truth = write_dataset(data, [[(3, "terminated")]], rows_per_shard=100)
    assert truth.shards[0].name == "shard-w0-000002.h5"
    assert len(_accepted_shards_are_whole(data)) == 3


def test_sigkill_at_random_times(tmp_path: Path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    episodes: set[int] = set()
    for attempt in range(3):
        proc = _start_child(tmp_path, str(data), "random", str(attempt), "200")
        time.sleep(float(rng.uniform(0.1, 0.8)))
        _kill(proc)
        paths = _accepted_shards_are_whole(data)
        ids = np.concatenate([ShardReader(p).read("episode") for p in paths]) if paths else np.zeros(0, int)
        assert episodes <= set(ids.tolist())  # earlier shards survive later crashes untouched
        episodes = set(ids.tolist())


def test_write_field_adds_a_dataset(tmp_path: Path):
    path = _good_shard(tmp_path)
    n = len(ShardReader(path))
    saliency = np.random.default_rng(0).integers(0, 256, (n, IMAGE, IMAGE), dtype=np.uint8)
    write_field(path, "saliency", saliency)
    reader = ShardReader(path, full_check=True)
    np.testing.assert_array_equal(reader.read("saliency"), saliency)
    np.testing.assert_array_equal(reader.read("saliency", [4, 1]), saliency[[4, 1]])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="already has"):
        write_field(path, "saliency", saliency)
    write_field(path, "saliency", 255 - saliency, overwrite=True)
    np.testing.assert_array_equal(ShardReader(path).read("saliency"), 255 - saliency)
    with pytest.raises(ValueError, match="rows"):
        write_field(path, "depth", saliency[:-1])
    with pytest.raises(ValueError, match="core"):
        write_field(path, "reward", np.zeros(n, np.float32))


def test_write_field_killed_leaves_shard_untouched(tmp_path: Path):
    data = tmp_path / "data"
    path = simple_dataset(data, rows_per_shard=1000, seed=2).shards[0]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    _kill(_start_child(tmp_path, str(data), "label", "0"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert any(p.name.startswith(f".{path.name}") for p in data.iterdir())  # its temp copy was left behind
    assert list_shards(data) == [path] and "saliency" not in ShardReader(path, full_check=True).fields
    # labelling again succeeds over the stale temp file
    n = len(ShardReader(path))
    write_field(path, "saliency", np.zeros((n, IMAGE, IMAGE), np.uint8))
    assert "saliency" in ShardReader(path).fields
    assert not any(p.name.startswith(".") for p in data.iterdir())


def test_copied_directory_reads_the_same(tmp_path: Path):
    """Shards are self-contained files: a copied dataset reads back identically (memory maps use offsets)."""
    truth = simple_dataset(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    check_against_truth(tmp_path / "b", truth)


def test_parse_shard_name_reads_what_the_writer_names(tmp_path: Path):
    path = _good_shard(tmp_path)
    parsed = parse_shard_name(path.name)
    assert parsed is not None and (parsed.prefix, parsed.writer, parsed.index) == ("shard", 0, 0)
    assert parse_shard_name("run-a-w12-001234.h5") == ("run-a", 12, 1234)
    for name in ("shard-w0-12.h5", "shard-0-000001.h5", ".shard-w0-000001.h5.tmp", "notes.txt"):
        assert parse_shard_name(name) is None
