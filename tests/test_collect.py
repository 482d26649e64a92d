"""stage: collect end to end through visarl.fit, at tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visarl.config import ConfigError
from visarl.data.shards import ShardReader, list_shards
from visarl.fit import run


@pytest.mark.parametrize("num_envs", [1, 2])
def test_collect_random_writes_whole_episodes(tmp_path, num_envs):
    data_dir = tmp_path / "replay"
    overrides = [f"output_dir={tmp_path}/runs", "run=r", f"data_dir={data_dir}", f"num_envs={num_envs}"]
    run("conf/collect/random_tiny.yaml", overrides)  # 60 steps, 20-step episodes, 32 rows per shard
    shards = list_shards(data_dir)
    assert len(shards) >= 2
    rows = [ShardReader(p).load() for p in shards]
    transitions = sum(int(r["has_next"].sum()) for r in rows)
    assert transitions == 60
    for r in rows:
        assert r["rgb"].dtype == np.uint8 and r["rgb"].shape[1:] == (64, 64, 3)
        assert r["state"].shape[1:] == (39,)
        assert not r["terminated"].any()  # Meta-World only truncates
        # Truncation exactly at the episode limit: the transition from step 19 ends the episode.
        assert np.array_equal(np.flatnonzero(r["truncated"]), np.flatnonzero(r["has_next"] & (r["step"] == 19)))
        assert np.all(np.abs(r["action"][r["has_next"]]) <= 1.0)
        assert r["rgb"].std() > 5  # real frames, not blank
    summary = json.loads((tmp_path / "runs" / "random_tiny" / "r" / "collect.json").read_text())
    assert summary["data_dir"] == str(data_dir)


def test_collect_refuses_to_mix_into_existing_data(tmp_path):
    data_dir = tmp_path / "replay"
    base = [f"output_dir={tmp_path}/runs", f"data_dir={data_dir}", "num_steps=20"]
    run("conf/collect/random_tiny.yaml", base + ["run=a"])
    before = sorted(p.name for p in data_dir.iterdir())
    with pytest.raises(ConfigError, match="already holds"):
        run("conf/collect/random_tiny.yaml", base + ["run=b"])
    assert sorted(p.name for p in data_dir.iterdir()) == before
    assert not (tmp_path / "runs" / "random_tiny" / "b").exists()  # the rejected run leaves no directory
    run("conf/collect/random_tiny.yaml", base + ["run=c", "append=true"])
    assert len(list_shards(data_dir)) > len(before)
