"""F-measure and MAE against an independent plain-numpy computation, edge cases and batch splits included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visarl.saliency.metrics import FMeasure, MeanAbsoluteError

BETA2 = 0.3


# ---- the reference: plain numpy, loops, no torch -------------------------------------------------------------


def _np_precision_recall(pred_bin: np.ndarray, true_bin: np.ndarray) -> tuple[float, float]:
    tp = int(np.sum(pred_bin & true_bin))
    n_pred, n_true = int(pred_bin.sum()), int(true_bin.sum())
    if n_pred == 0 and n_true == 0:
        return 1.0, 1.0  # nothing to find and nothing claimed
    precision = tp / n_pred if n_pred > 0 else 0.0
    recall = tp / n_true if n_true > 0 else 0.0
    return precision, recall


def _np_f(precision: float, recall: float) -> float:
    if precision == 0 and recall == 0:
        return 0.0
    return (1 + BETA2) * precision * recall / (BETA2 * precision + recall)


def np_fmeasure(preds: list[np.ndarray], targets: list[np.ndarray], num_thresholds: int = 256) -> dict[str, float]:
    adaptive = []
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    precisions = np.zeros(num_thresholds)
    recalls = np.zeros(num_thresholds)
    for pred, target in zip(preds, targets, strict=True):
        pred = pred.astype(np.float64)
        true_bin = target > 0.5
        t = min(2 * pred.mean(), 1.0)
        adaptive.append(_np_f(*_np_precision_recall((pred >= t) & (pred > 0), true_bin)))
        for i, t in enumerate(thresholds):
            p, r = _np_precision_recall((pred >= t) & (pred > 0), true_bin)
            precisions[i] += p
            recalls[i] += r
    precisions /= len(preds)
    recalls /= len(preds)
    max_f = max(_np_f(p, r) for p, r in zip(precisions, recalls, strict=True))
    return {"adaptive": float(np.mean(adaptive)), "max": max_f}


def np_mae(preds: list[np.ndarray], targets: list[np.ndarray]) -> float:
    per_image = []
    for pred, target in zip(preds, targets, strict=True):
        total = 0.0
        for a, b in zip(pred.ravel().tolist(), target.ravel().tolist(), strict=True):
            total += abs(a - b)
        per_image.append(total / pred.size)
    return sum(per_image) / len(per_image)


# ---- data ----------------------------------------------------------------------------------------------------


def _maps(rng: np.random.Generator, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Random predictions on a 1/1024 grid (exact in float32 and never equal to an interior threshold i/255,
    so float32 and float64 binarisations agree) with exact 0s and 1s, and soft targets; the batch includes the
    edge cases: empty and full targets, empty (all-zero) and full predictions."""
    preds = rng.integers(0, 1025, size=(n, h, w)) / 1024
    preds[rng.random((n, h, w)) < 0.2] = 0.0
    blob_centre = rng.random((n, 1, 1)) * 0.6 + 0.2
    targets = np.clip(rng.random((n, h, w)) * 0.6 + blob_centre - 0.3, 0, 1)
    preds = np.clip(0.6 * preds + 0.4 * targets, 0, 1)  # correlated with the target, so F is informative
    preds = np.round(preds * 1024) / 1024
    targets[0] = 0.0  # empty target, empty prediction: F = 1
    preds[0] = 0.0
    targets[1] = 0.0  # empty target, some prediction: F = 0
    targets[2] = 1.0  # full target, empty prediction: F = 0
    preds[2] = 0.0
    targets[3] = 1.0  # full target, full prediction: F = 1
    preds[3] = 1.0
    preds[4] = 1.0  # full prediction of an ordinary target
    return preds.astype(np.float32), targets.astype(np.float32)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (16, 12), (33, 5)])
def test_fmeasure_and_mae_match_numpy(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 100 + w)
    preds, targets = _maps(rng, 12, h, w)
    fm, mae = FMeasure(), MeanAbsoluteError()
    fm.update(torch.from_numpy(preds), torch.from_numpy(targets))
    mae.update(torch.from_numpy(preds)[:, None], torch.from_numpy(targets)[:, None])  # [B, 1, H, W] too
    got = fm.compute()
    expected = np_fmeasure(list(preds), list(targets))
    assert set(got) == {"adaptive", "max"}
    assert got["adaptive"].item() == pytest.approx(expected["adaptive"], abs=1e-5)
    assert got["max"].item() == pytest.approx(expected["max"], abs=1e-5)
    assert mae.compute().item() == pytest.approx(np_mae(list(preds), list(targets)), abs=1e-6)
    assert 0 < expected["adaptive"] < 1 and 0 < expected["max"] < 1  # the data is not degenerate


def test_accumulation_equals_one_update_across_splits_and_sizes() -> None:
    rng = np.random.default_rng(7)
    batches = [_maps(rng, n, h, w) for n, h, w in ((6, 8, 8), (5, 16, 12), (7, 8, 8))]
    all_preds = [p for preds, _ in batches for p in preds]
    all_targets = [t for _, targets in batches for t in targets]
    expected_f = np_fmeasure(all_preds, all_targets)
    expected_mae = np_mae(all_preds, all_targets)

    # Images of the same size in one big update vs. split unevenly; other sizes arrive in their own updates.
    big = np.concatenate([batches[0][0], batches[2][0]]), np.concatenate([batches[0][1], batches[2][1]])
    splits = {
        "one big": [big, batches[1]],
        "uneven": [(big[0][:1], big[1][:1]), batches[1], (big[0][1:9], big[1][1:9]), (big[0][9:], big[1][9:])],
        "singles": [(p[None], t[None]) for p, t in zip(all_preds, all_targets, strict=True)],
    }
    for name, parts in splits.items():
        fm, mae = FMeasure(), MeanAbsoluteError()
        for preds, targets in parts:
            fm.update(torch.from_numpy(preds), torch.from_numpy(targets))
            mae.update(torch.from_numpy(preds), torch.from_numpy(targets))
        got = fm.compute()
        assert got["adaptive"].item() == pytest.approx(expected_f["adaptive"], abs=1e-5), name
        assert got["max"].item() == pytest.approx(expected_f["max"], abs=1e-5), name
        assert mae.compute().item() == pytest.approx(expected_mae, abs=1e-6), name


def _single(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    fm = FMeasure()
    fm.update(torch.from_numpy(pred[None].astype(np.float32)), torch.from_numpy(target[None].astype(np.float32)))
    return {k: v.item() for k, v in fm.compute().items()}


def test_edge_cases_have_the_documented_values() -> None:
    zeros, ones = np.zeros((6, 6)), np.ones((6, 6))
    blob = zeros.copy()
    blob[1:3, 2:5] = 1.0
    assert _single(zeros, zeros) == {"adaptive": 1.0, "max": 1.0}  # empty vs empty
    assert _single(ones, ones) == {"adaptive": 1.0, "max": 1.0}  # full vs full
    assert _single(blob, blob) == pytest.approx({"adaptive": 1.0, "max": 1.0})  # perfect
    assert _single(zeros, blob) == {"adaptive": 0.0, "max": 0.0}  # nothing predicted
    assert _single(blob, zeros)["adaptive"] == 0.0  # something predicted, nothing there
    # A full prediction of the blob: P = 6/36, R = 1 at every threshold.
    f_full = 1.3 * (6 / 36) / (0.3 * 6 / 36 + 1)
    assert _single(ones, blob) == pytest.approx({"adaptive": f_full, "max": f_full})
    # Thresholds are inclusive (pred >= t): only t = 1 separates the blob (1.0) from the background (0.999).
    assert _single(np.where(blob > 0, 1.0, 0.999), blob)["max"] == pytest.approx(1.0)
    # Adaptive threshold 2 * mean: a faint uniform background below it is dropped.
    pred = blob * 0.9 + 0.05
    assert _single(pred, blob)["adaptive"] == pytest.approx(1.0)


def test_mae_edge_cases() -> None:
    mae = MeanAbsoluteError()
    mae.update(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))  # 1.0
    mae.update(torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 0.25))  # 0.0: images count equally
    assert mae.compute().item() == pytest.approx(0.5)


def test_bad_inputs_are_rejected() -> None:
    fm, mae = FMeasure(), MeanAbsoluteError()
    with pytest.raises(ValueError, match="shapes differ"):
        fm.update(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 1\]"):
        mae.update(torch.rand(2, 4, 4) + 1.0, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        fm.update(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))


def test_state_is_summed_for_distributed_reduction() -> None:
    fm = FMeasure()
    assert all(fm._reductions[name].__name__ == "dim_zero_sum" for name in fm._defaults)
    fm.update(torch.rand(3, 4, 4), torch.rand(3, 4, 4))
    fm.reset()
    assert fm.n_images.item() == 0
