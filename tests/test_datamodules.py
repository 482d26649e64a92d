"""DataModules over shards: sampled transitions are exactly what was written, workers differ, memory is bounded."""

from __future__ import annotations

import pickle
import tempfile
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from _shard_helpers import ACTION, IMAGE, STATE, Truth, layouts, simple_dataset, write_dataset
from hypothesis import HealthCheck, given, settings
from torch.utils.data import DataLoader

from visarl.data.datamodules import (
    EpochShuffle,
    FrameDataModule,
    TransitionBatch,
    TransitionDataModule,
    TransitionDataset,
    shard_readers,
    split_by_episode,
)
from visarl.data.shards import ShardError, ShardReader, list_shards, write_field


def keys_of(states: torch.Tensor) -> list[tuple[int, int]]:
    """(episode, step) that the test helpers wrote into the first two state entries."""
    return [(int(e), int(s)) for e, s in states[:, :2].tolist()]


def check_batch(batch: TransitionBatch, truth: Truth) -> list[tuple[int, int]]:
    """Every sampled transition is one that was written: obs, next obs (same episode, step + 1), flags."""
    keys = keys_of(batch.obs["state"])
    assert keys_of(batch.next_obs["state"]) == [(e, s + 1) for e, s in keys]
    for i, key in enumerate(keys):
        t = truth.transitions[key]
        frame, nxt = truth.frames[key], truth.frames[(key[0], key[1] + 1)]
        np.testing.assert_array_equal(batch.obs["rgb"][i].numpy(), frame["rgb"].transpose(2, 0, 1))
        np.testing.assert_array_equal(batch.next_obs["rgb"][i].numpy(), nxt["rgb"].transpose(2, 0, 1))
        np.testing.assert_array_equal(batch.next_obs["state"][i].numpy(), nxt["state"])
        np.testing.assert_array_equal(batch.action[i].numpy(), t["action"])
        assert batch.reward[i].item() == np.float32(t["reward"])
        assert (batch.terminated[i].item(), batch.truncated[i].item()) == (t["terminated"], t["truncated"])
    return keys


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Truth]:
    directory = tmp_path_factory.mktemp("shards")
    return directory, simple_dataset(directory, rows_per_shard=17)


# --------------------------------------------------------------------------------------------------
# transitions


@pytest.mark.parametrize("cache", [False, True])
def test_transition_batches_shapes_dtypes_and_values(data, cache: bool):
    directory, truth = data
    dm = TransitionDataModule(str(directory), batch_size=32, cache=cache, seed=1)
    dm.setup("fit")
    assert all(r._h5 is None for r in dm.dataset.readers)  # no HDF5 handle open before workers fork
    assert dm.dataset.obs_shapes == {"rgb": (3, IMAGE, IMAGE), "state": (STATE,)} and dm.dataset.action_dim == ACTION
    batches = iter(dm.train_dataloader())
    for _ in range(5):
        b = next(batches)
        assert isinstance(b, TransitionBatch)
        assert b.obs["rgb"].shape == b.next_obs["rgb"].shape == (32, 3, IMAGE, IMAGE)
        assert b.obs["rgb"].dtype == torch.uint8 and b.obs["state"].dtype == torch.float32
        assert b.obs["state"].shape == (32, STATE) and b.action.shape == (32, ACTION)
        assert b.action.dtype == b.reward.dtype == torch.float32 and b.reward.shape == (32,)
        assert b.terminated.dtype == b.truncated.dtype == torch.bool and b.terminated.shape == (32,)
        check_batch(b, truth)


def test_cache_on_and_off_cover_the_same_transitions_uniformly(data):
    directory, truth = data
    counts = {}
    for cache in (False, True):
        ds = TransitionDataset(shard_readers([directory], ("rgb", "state")), 64, cache=cache)
        rng = np.random.default_rng(0)
        counts[cache] = Counter(k for _ in range(150) for k in keys_of(ds.sample(rng).obs["state"]))
        assert set(counts[cache]) == set(truth.transitions)  # support: every transition, nothing else
        assert ds.num_transitions == len(truth.transitions)
    # uniform over transitions, not over shards (shards differ in size): 9600 draws over ~83 transitions
    expected = 150 * 64 / len(truth.transitions)
    for c in counts.values():
        assert 0.6 * expected < min(c.values()) and max(c.values()) < 1.5 * expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_property_sampled_transitions_never_cross_episodes(layout):
    episodes, rows_per_shard, seed = layout
    with tempfile.TemporaryDirectory() as d:
        truth = write_dataset(Path(d), episodes, rows_per_shard, seed=seed)
        for cache in (False, True):
            ds = TransitionDataset(shard_readers(d, ("rgb", "state")), 16, cache=cache)
            rng = np.random.default_rng(seed)
            for _ in range(3):
                check_batch(ds.sample(rng), truth)


def test_no_images_in_memory_without_cache(tmp_path: Path):
    simple_dataset(tmp_path, rows_per_shard=40)
    rows = sum(len(ShardReader(p)) for p in list_shards(tmp_path))
    image_bytes = rows * IMAGE * IMAGE * 3
    lazy = TransitionDataset(shard_readers(tmp_path, ("rgb", "state")), 8, cache=False)
    lazy.sample(np.random.default_rng(0))  # opens files and maps them; maps are not copies
    assert len(pickle.dumps(lazy)) < image_bytes / 4  # what goes to each worker: bookkeeping only
    cached = TransitionDataset(shard_readers(tmp_path, ("rgb", "state")), 8, cache=True)
    assert len(pickle.dumps(cached)) > image_bytes  # the same measure does see images when they are held


def _first_batches(dm: TransitionDataModule, n: int) -> list[torch.Tensor]:
    dm.setup("fit")
    loader = dm.train_dataloader()
    out = []
    for b in loader:
        out.append(b.obs["state"][:, :2].clone())
        if len(out) == n:
            break
    del loader
    return out


def test_workers_are_seeded_differently_and_reproducibly(data):
    directory, _ = data
    first = _first_batches(TransitionDataModule(str(directory), batch_size=16, num_workers=2, seed=3), 2)
    assert not torch.equal(first[0], first[1])  # batch 0 from worker 0, batch 1 from worker 1
    again = _first_batches(TransitionDataModule(str(directory), batch_size=16, num_workers=2, seed=3), 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = _first_batches(TransitionDataModule(str(directory), batch_size=16, num_workers=2, seed=4), 2)
    assert not torch.equal(first[0], other[0])
    # a second pass over the same dataset does not replay the first
    dm = TransitionDataModule(str(directory), batch_size=16, seed=3)
    assert not torch.equal(_first_batches(dm, 1)[0], _first_batches(dm, 1)[0])


def test_missing_directory_or_key_is_named(tmp_path: Path, data):
    directory, _ = data
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TransitionDataModule(str(tmp_path / "nowhere")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        FrameDataModule(str(tmp_path / "empty")).setup()
    with pytest.raises(ShardError, match="saliency") as err:
        FrameDataModule(str(directory)).setup()  # default keys include saliency; not labelled yet
    assert str(directory) in str(err.value) and "label" in str(err.value)
    with pytest.raises(ValueError, match="bookkeeping"):
        TransitionDataModule(str(directory), keys=("rgb", "episode")).setup()


# --------------------------------------------------------------------------------------------------
# frames


@pytest.mark.parametrize("cache", [False, True])
def test_frames_each_once_without_continuation_duplicates(data, cache: bool):
    directory, truth = data
    continued = sum(int(ShardReader(p).read("continued").sum()) for p in list_shards(directory))
    assert continued > 0  # the data does hold duplicates to skip
    dm = FrameDataModule(str(directory), batch_size=16, cache=cache, keys=("rgb", "state"))
    dm.setup("fit")
    assert dm.val_dataloader() == []
    seen = Counter()
    for batch in dm.train_dataloader():
        assert batch["rgb"].dtype == torch.uint8 and batch["rgb"].shape[1:] == (3, IMAGE, IMAGE)
        for i, key in enumerate(keys_of(batch["state"])):
            seen[key] += 1
            np.testing.assert_array_equal(batch["rgb"][i].numpy(), truth.frames[key]["rgb"].transpose(2, 0, 1))
    assert seen == Counter(truth.frames.keys())
    assert len(dm.train_set) == len(truth.frames)
    single = dm.train_set[5]
    assert single["rgb"].shape == (3, IMAGE, IMAGE) and single["state"].shape == (STATE,)


def test_train_loader_is_shuffled(data):
    directory, _ = data
    dm = FrameDataModule(str(directory), batch_size=1000, keys=("state",))
    dm.setup()
    order = keys_of(next(iter(dm.train_dataloader()))["state"])
    assert order != sorted(order) and sorted(order) == sorted(set(order))


def test_epoch_order_depends_on_seed_and_epoch_only():
    """A resumed run builds a fresh loader at epoch e: its order must be the one the first process had at epoch e."""
    kept = EpochShuffle(50, seed=3)
    orders = []
    for epoch in range(3):
        kept.set_epoch(epoch)
        orders.append(list(kept))
    assert sorted(orders[0]) == list(range(50)) and len({tuple(o) for o in orders}) == 3
    fresh = EpochShuffle(50, seed=3)
    fresh.set_epoch(2)
    assert list(fresh) == orders[2] and list(fresh) == orders[2]  # and the same when iterated again
    other = EpochShuffle(50, seed=4)
    other.set_epoch(2)
    assert list(other) != orders[2]


def test_val_split_is_disjoint_by_episode_and_fixed_by_seed(data):
    directory, truth = data

    def split(seed: int) -> tuple[FrameDataModule, np.ndarray, np.ndarray]:
        dm = FrameDataModule(str(directory), batch_size=8, val_fraction=0.3, seed=seed, keys=("rgb", "state"))
        dm.setup("fit")
        return dm, dm.train_set.ids, dm.val_set.ids

    dm, train, val = split(0)
    assert all(r._h5 is None for r in dm.dataset.readers)  # no HDF5 handle open before workers fork
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(truth.frames)
    assert set(dm.train_set.episodes()).isdisjoint(dm.val_set.episodes())
    assert 0.15 < len(val) / len(truth.frames) < 0.45
    val_keys = {k for b in dm.val_dataloader() for k in keys_of(b["state"])}
    assert len(val_keys) == len(val) and {e for e, _ in val_keys} == set(dm.val_set.episodes())
    _, train2, val2 = split(0)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(train, train2)
    _, _, val3 = split(1)
    assert not np.array_equal(val, val3)


def test_split_by_episode_edge_cases():
    train, val = split_by_episode(np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 3]), 0.2, seed=0)
    assert len(val) and len(train) and len(np.intersect1d(train, val)) == 0
    train, val = split_by_episode(np.array([1, 2]), 0.9, seed=0)  # never empties the train side
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError, match="2 episodes"):
        split_by_episode(np.array([5, 5, 5]), 0.5, seed=0)


def test_saliency_after_labelling(tmp_path: Path):
    truth = simple_dataset(tmp_path, rows_per_shard=30)
    written = {}
    for path in list_shards(tmp_path):
        reader = ShardReader(path)
        ep, step = reader.read("episode"), reader.read("step")
        sal = ((ep * 31 + step * 7) % 256).astype(np.uint8)[:, None, None] * np.ones((1, IMAGE, IMAGE), np.uint8)
        write_field(path, "saliency", sal)
        written.update({(int(e), int(s)): int(v) for e, s, v in zip(ep, step, sal[:, 0, 0], strict=True)})
    dm = FrameDataModule(str(tmp_path), batch_size=32, keys=("rgb", "saliency", "state"))
    dm.setup()
    for batch in dm.train_dataloader():
        assert batch["saliency"].shape[1:] == (1, IMAGE, IMAGE) and batch["saliency"].dtype == torch.uint8
        for i, key in enumerate(keys_of(batch["state"])):
            assert (batch["saliency"][i] == written[key]).all()
    tdm = TransitionDataModule(str(tmp_path), batch_size=16, keys=("rgb", "saliency", "state"))
    tdm.setup()
    b = next(iter(tdm.train_dataloader()))
    assert b.next_obs["saliency"].shape == (16, 1, IMAGE, IMAGE)
    check_batch(b, truth)
    for i, (e, s) in enumerate(keys_of(b.obs["state"])):
        assert (
            b.obs["saliency"][i, 0, 0, 0] == written[(e, s)]
            and b.next_obs["saliency"][i, 0, 0, 0] == written[(e, s + 1)]
        )


# --------------------------------------------------------------------------------------------------
# Lightning integration


class _Probe(pl.LightningModule):
    """Trains a linear map on whatever the batch holds; checks the batch reaches training_step intact."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3 * IMAGE * IMAGE, 1)
        self.seen = 0

    def _loss(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.net(rgb.float().flatten(1) / 255).pow(2).mean()

    def training_step(self, batch, batch_idx):
        rgb = batch.obs["rgb"] if isinstance(batch, TransitionBatch) else batch["rgb"]
        assert rgb.dtype == torch.uint8 and rgb.shape[1:] == (3, IMAGE, IMAGE)
        self.seen += 1
        return self._loss(rgb)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch["rgb"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("kind", ["transitions", "frames"])
def test_lightning_trainer_consumes_the_modules(data, kind: str):
    directory, _ = data
    if kind == "transitions":
        dm = TransitionDataModule(str(directory), batch_size=8)
    else:
        dm = FrameDataModule(str(directory), batch_size=8, val_fraction=0.25, keys=("rgb",))
    probe = _Probe()
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, datamodule=dm)
    assert probe.seen == 3 and trainer.global_step == 3


def test_loader_is_plain_pytorch(data):
    """The datasets also work with a hand-made DataLoader (no Lightning), e.g. inside an RL loop."""
    directory, truth = data
    ds = TransitionDataset(shard_readers(directory, ("rgb", "state")), 4)
    check_batch(next(iter(DataLoader(ds, batch_size=None))), truth)
