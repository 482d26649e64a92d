"""visarl.core.runtime and visarl.core.io: the latest checkpoint follows the last epoch whatever the metric does,
resume continues from it, unreadable checkpoints are clean errors, Lightning's noise is filtered, writes are atomic."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from visarl.config import ConfigError, TrainerConfig
from visarl.core.io import atomic_torch_save, atomic_write, atomic_write_text
from visarl.core.runtime import (
    build_trainer,
    checkpoint_callbacks,
    last_checkpoint,
    quiet_lightning,
    resume_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RisingVal(pl.LightningModule):
    """A model whose val/loss gets worse every epoch (lr 0: nothing learns), the case where Lightning 2.6's
    ``monitor`` + ``save_top_k=1`` + ``save_last=True`` leaves last.ckpt at epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.start_epoch = -1

    def on_train_start(self) -> None:
        self.start_epoch = self.current_epoch

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", 1.0 + self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


def _fit(run_dir: Path, epochs: int, resume: bool) -> tuple[RisingVal, pl.Trainer]:
    module = RisingVal()
    callbacks = checkpoint_callbacks(run_dir, monitor="val/loss", mode="min")
    trainer = build_trainer(
        TrainerConfig(accelerator="cpu", max_epochs=epochs, enable_progress_bar=False), run_dir, callbacks=callbacks
    )
    ckpt = resume_checkpoint(run_dir, resume, "test")
    with quiet_lightning():
        trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt)
    return module, trainer


def test_last_checkpoint_is_the_last_epoch_when_the_metric_never_improves(tmp_path):
    _fit(tmp_path, 4, resume=False)
    last = torch.load(last_checkpoint(tmp_path), weights_only=False)
    assert last["epoch"] == 3 and last["global_step"] == 8  # the last epoch, not the best (epoch 0)
    best = [p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt")]
    assert best == ["best-0000.ckpt"]

    module, trainer = _fit(tmp_path, 6, resume=True)
    assert module.start_epoch == 4  # continues after the last epoch, not after the best
    assert trainer.global_step == 12


def test_resume_without_a_checkpoint_starts_over(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path, True, "test") is None
    assert "training from the start" in caplog.text
    assert resume_checkpoint(tmp_path, False, "test") is None


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_last_checkpoint_is_a_config_error_naming_the_file(tmp_path, content):
    last = last_checkpoint(tmp_path)
    last.parent.mkdir(parents=True)
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 3}, last)
        last.write_bytes(last.read_bytes()[:-300])
    else:
        last.write_bytes(content)
    with pytest.raises(ConfigError, match=str(last)):
        resume_checkpoint(tmp_path, True, "test")


def test_lightning_checkpoint_with_arbitrary_objects_is_still_accepted(tmp_path):
    last = last_checkpoint(tmp_path)
    last.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "hyper_parameters": {"path": Path("x")}}, last)  # not weights-only loadable
    assert resume_checkpoint(tmp_path, True, "test") == last


def test_build_trainer_is_quiet(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = RisingVal()
        module.layer.eval()  # a module in eval mode at the start of training, as visarl's frozen parts are
        trainer = build_trainer(
            TrainerConfig(accelerator="cpu", max_epochs=1, enable_progress_bar=False),
            tmp_path,
            callbacks=checkpoint_callbacks(tmp_path),
        )
        with quiet_lightning():
            trainer.fit(module, _loader(), _loader())
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text + "\n".join(str(w.message) for w in caught)
    assert "litlogger" not in text and "Tip:" not in text
    assert "in eval mode" not in text
    assert "LeafSpec" not in text
    assert "Total params" not in text  # no model-summary table
    if not torch.cuda.is_available():
        assert "GPU available: False" not in text  # nothing to act on


def test_quiet_lightning_keeps_a_gpu_the_run_leaves_unused(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO), quiet_lightning():
        rank_zero_info("GPU available: True (cuda), used: False")
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=4` reached.")
        rank_zero_info("Loading `train_dataloader` to estimate number of stepping batches.")
    assert "GPU available: True (cuda), used: False" in caplog.text
    assert "available: False" not in caplog.text and "stopped" not in caplog.text and "Loading" not in caplog.text


def test_progress_bars_appear_with_their_total(tmp_path, capfd):
    trainer = build_trainer(
        TrainerConfig(accelerator="cpu", max_epochs=2, enable_progress_bar=True),
        tmp_path,
        callbacks=checkpoint_callbacks(tmp_path),
    )
    with quiet_lightning():
        trainer.fit(RisingVal(), _loader(), _loader())
        trainer.validate(RisingVal(), _loader(), verbose=False)
    out = capfd.readouterr()
    text = (out.out + out.err).replace("\r", "\n")
    assert "Epoch 1: 100%" in text and "2/2" in text and "Sanity Checking DataLoader 0" in text
    assert "0/?" not in text  # Lightning's stock bar draws each bar once before it knows its length


def test_quiet_lightning_keeps_other_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_lightning():
            warnings.warn("something the user can act on", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user can act on"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a" / "f.txt"
    atomic_write_text(target, "old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["f.txt"]  # no temporary left behind
    atomic_torch_save({"x": torch.ones(2)}, target)
    assert torch.load(target, weights_only=True)["x"].sum() == 2


def test_rl_progress_bars_count_env_steps_and_eval_episodes_to_a_total(tmp_path, capfd):
    from visarl.fit import run

    overrides = ["trainer.enable_progress_bar=true", "eval.every=60", "eval.episodes=3", "eval.num_envs=1"]
    run("conf/rl/tiny.yaml", [f"output_dir={tmp_path}", "run=r", *overrides])
    out = capfd.readouterr()
    text = (out.out + out.err).replace("\r", "\n")
    assert "rl reach: 100%" in text and "60/60" in text
    assert "eval @ 60: 100%" in text and "3/3" in text  # the evaluation's own bar, over its episodes
    assert "0/?" not in text  # no bar without a total
    assert "Tip:" not in text and "LeafSpec" not in text
