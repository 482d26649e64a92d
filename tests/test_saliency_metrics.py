"""F-measure and MAE: against PySODMetrics itself, an independent plain-numpy computation, edge cases, batch splits."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from visarl.saliency.metrics import GT_THRESHOLD, FMeasure, MeanAbsoluteError

BETA2 = 0.3
HAVE_PYSOD = importlib.util.find_spec("py_sod_metrics") is not None


# ---- the reference: plain numpy, loops, no torch (PySODMetrics' definitions, written out) ----------------------


def _np_f(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    if tp == 0:
        return 0.0, 0.0, 0.0  # no true positive: P = R = F = 0, whatever is empty
    precision, recall = tp / n_pred, tp / n_true
    return precision, recall, (1 + BETA2) * precision * recall / (BETA2 * precision + recall)


def np_fmeasure(preds: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    adaptive, curves, precisions, recalls = [], [], [], []
    for pred, target in zip(preds, targets, strict=True):
        pred = pred.astype(np.float64)
        true = target.astype(np.float64) > 128.5 / 255
        binary = pred >= min(2 * pred.mean(), 1.0)
        adaptive.append(_np_f(int(np.sum(binary & true)), int(binary.sum()), int(true.sum()))[2])
        q = np.floor(pred * 255)
        rows = [_np_f(int(np.sum((q >= k) & true)), int(np.sum(q >= k)), int(true.sum())) for k in range(256)]
        precisions.append([r[0] for r in rows])
        recalls.append([r[1] for r in rows])
        curves.append([r[2] for r in rows])
    p, r = np.mean(precisions, axis=0), np.mean(recalls, axis=0)
    mean_pr = [0.0 if a * b == 0 else (1 + BETA2) * a * b / (BETA2 * a + b) for a, b in zip(p, r, strict=True)]
    curve = np.mean(curves, axis=0)
    return {"adaptive": float(np.mean(adaptive)), "max": float(curve.max()), "max_mean_pr": max(mean_pr)}


def np_mae(preds: list[np.ndarray], targets: list[np.ndarray], binary: bool = True) -> float:
    per_image = []
    for pred, target in zip(preds, targets, strict=True):
        gt = (target.astype(np.float64) > 128.5 / 255).astype(np.float64) if binary else target.astype(np.float64)
        total = 0.0
        for a, b in zip(pred.astype(np.float64).ravel().tolist(), gt.ravel().tolist(), strict=True):
            total += abs(a - b)
        per_image.append(total / pred.size)
    return sum(per_image) / len(per_image)


# ---- data ----------------------------------------------------------------------------------------------------


def _maps(rng: np.random.Generator, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Random predictions with exact 0s and 1s, correlated soft targets, and the edge cases in the batch: empty and
    full targets, empty (all-zero) and full predictions."""
    preds = rng.random((n, h, w))
    preds[rng.random((n, h, w)) < 0.2] = 0.0
    blob_centre = rng.random((n, 1, 1)) * 0.6 + 0.2
    targets = np.clip(rng.random((n, h, w)) * 0.6 + blob_centre - 0.3, 0, 1)
    preds = np.clip(0.6 * preds + 0.4 * targets, 0, 1)  # correlated with the target, so F is informative
    targets[0] = 0.0  # empty target, empty prediction
    preds[0] = 0.0
    targets[1] = 0.0  # empty target, some prediction
    targets[2] = 1.0  # full target, empty prediction
    preds[2] = 0.0
    targets[3] = 1.0  # full target, full prediction
    preds[3] = 1.0
    preds[4] = 1.0  # full prediction of an ordinary target
    return preds.astype(np.float32), targets.astype(np.float32)


def _ours(preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    fm, mae, soft = FMeasure(), MeanAbsoluteError(GT_THRESHOLD), MeanAbsoluteError()
    p, t = torch.from_numpy(preds), torch.from_numpy(targets)
    fm.update(p, t)
    mae.update(p[:, None], t[:, None])  # [B, 1, H, W] too
    soft.update(p, t)
    out = {k: v.item() for k, v in fm.compute().items()}
    return {**out, "mae": mae.compute().item(), "mae_soft": soft.compute().item()}


# ---- PySODMetrics itself ---------------------------------------------------------------------------------------


def _pysod(preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """PySODMetrics 1.x on the same pairs: float predictions as given, ground truth binarised as ours does."""
    import py_sod_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure announces its successor, FmeasureV2
        fm, mae = py_sod_metrics.Fmeasure(), py_sod_metrics.MAE()
    for pred, target in zip(preds, targets, strict=True):
        gt = target > GT_THRESHOLD
        fm.step(pred.astype(np.float64), gt, normalize=False)
        mae.step(pred.astype(np.float64), gt, normalize=False)
    res = fm.get_results()["fm"]
    return {"adaptive": float(res["adp"]), "max": float(res["curve"].max()), "mae": float(mae.get_results()["mae"])}


@pytest.mark.skipif(not HAVE_PYSOD, reason="pysodmetrics is not installed (pip install -e .[dev])")
@pytest.mark.parametrize(("h", "w", "seed"), [(8, 8, 0), (16, 12, 1), (33, 5, 2), (24, 24, 3)])
def test_matches_pysodmetrics_on_random_pairs(h: int, w: int, seed: int) -> None:
    """Adaptive F, max F and MAE equal PySODMetrics' on random pairs (the batch holds an empty GT with an empty
    prediction, an empty GT with a prediction, a full GT with an empty and a full prediction)."""
    preds, targets = _maps(np.random.default_rng(seed), 12, h, w)
    ours, theirs = _ours(preds, targets), _pysod(preds, targets)
    for key in ("adaptive", "max", "mae"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert 0 < theirs["adaptive"] < 1 and 0 < theirs["max"] < 1  # the data is not degenerate


@pytest.mark.skipif(not HAVE_PYSOD, reason="pysodmetrics is not installed (pip install -e .[dev])")
@pytest.mark.parametrize(
    "case", ["empty gt, empty pred", "empty gt, some pred", "empty pred", "all ones", "all ones pred", "perfect"]
)
def test_matches_pysodmetrics_on_edge_cases(case: str) -> None:
    zeros, ones = np.zeros((1, 6, 6), np.float32), np.ones((1, 6, 6), np.float32)
    blob = zeros.copy()
    blob[0, 1:3, 2:5] = 1.0
    pred, target = {
        "empty gt, empty pred": (zeros, zeros),
        "empty gt, some pred": (blob * 0.7, zeros),
        "empty pred": (zeros, blob),
        "all ones": (ones, ones),
        "all ones pred": (ones, blob),
        "perfect": (blob, blob),
    }[case]
    ours, theirs = _ours(pred, target), _pysod(pred, target)
    for key in ("adaptive", "max", "mae"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (key, ours, theirs)


# ---- the numpy reference, splits, edge cases ---------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(8, 8), (16, 12), (33, 5)])
def test_fmeasure_and_mae_match_numpy(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 100 + w)
    preds, targets = _maps(rng, 12, h, w)
    got = _ours(preds, targets)
    expected = np_fmeasure(list(preds), list(targets))
    for key in ("adaptive", "max", "max_mean_pr"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["mae"] == pytest.approx(np_mae(list(preds), list(targets)), abs=1e-6)
    assert got["mae_soft"] == pytest.approx(np_mae(list(preds), list(targets), binary=False), abs=1e-6)
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
        fm, mae = FMeasure(), MeanAbsoluteError(GT_THRESHOLD)
        for preds, targets in parts:
            fm.update(torch.from_numpy(preds), torch.from_numpy(targets))
            mae.update(torch.from_numpy(preds), torch.from_numpy(targets))
        got = fm.compute()
        assert got["adaptive"].item() == pytest.approx(expected_f["adaptive"], abs=1e-6), name
        assert got["max"].item() == pytest.approx(expected_f["max"], abs=1e-6), name
        assert mae.compute().item() == pytest.approx(expected_mae, abs=1e-6), name


def _single(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    fm = FMeasure()
    fm.update(torch.from_numpy(pred[None].astype(np.float32)), torch.from_numpy(target[None].astype(np.float32)))
    return {k: v.item() for k, v in fm.compute().items() if k in ("adaptive", "max")}


def test_edge_cases_have_the_documented_values() -> None:
    zeros, ones = np.zeros((6, 6)), np.ones((6, 6))
    blob = zeros.copy()
    blob[1:3, 2:5] = 1.0
    assert _single(zeros, zeros) == {"adaptive": 0.0, "max": 0.0}  # empty GT: no true positive, F = 0
    assert _single(blob, zeros) == {"adaptive": 0.0, "max": 0.0}
    assert _single(ones, ones) == {"adaptive": 1.0, "max": 1.0}  # full vs full
    assert _single(blob, blob) == pytest.approx({"adaptive": 1.0, "max": 1.0})  # perfect
    # An all-zero prediction: its adaptive threshold is 0, so every pixel (zeros included) is salient, as at level
    # 0 of the curve: P = 6/36, R = 1.
    f_full = 1.3 * (6 / 36) / (0.3 * 6 / 36 + 1)
    assert _single(zeros, blob) == pytest.approx({"adaptive": f_full, "max": f_full})
    assert _single(ones, blob) == pytest.approx({"adaptive": f_full, "max": f_full})
    # Levels are floor(255 * pred) >= k: 0.999 and 1.0 fall on levels 254 and 255, so level 255 separates them.
    assert _single(np.where(blob > 0, 1.0, 0.999), blob)["max"] == pytest.approx(1.0)
    # ... but 0.9985 and 0.999 share level 254: no level separates them.
    assert _single(np.where(blob > 0, 0.999, 0.9985), blob)["max"] == pytest.approx(f_full)
    # Adaptive threshold 2 * mean: a faint uniform background below it is dropped.
    assert _single(blob * 0.9 + 0.05, blob)["adaptive"] == pytest.approx(1.0)


def test_dataset_max_f_is_the_max_of_the_mean_curve() -> None:
    """PySODMetrics' max F is the max of the mean per-image F curve, which differs from F of the image-averaged
    precision and recall (the older convention, also reported) when the images' best levels differ."""
    blob = np.zeros((8, 8))
    blob[2:5, 2:5] = 1.0
    a = np.where(blob > 0, 0.9, 0.1)  # separated at levels 26..229
    b = np.where(blob > 0, 0.3, 0.05)  # separated at levels 13..76
    fm = FMeasure()
    fm.update(torch.tensor(np.stack([a, b]), dtype=torch.float32), torch.tensor(np.stack([blob, blob])))
    got = fm.compute()
    assert got["max"].item() == pytest.approx(1.0)  # levels 26..76 separate both images
    c = np.where(blob > 0, 0.9, 0.6)  # separated only at levels 154..229: no level is perfect for both b and c
    fm.reset()
    b, c = b.astype(np.float32), c.astype(np.float32)
    fm.update(torch.from_numpy(np.stack([b, c])), torch.tensor(np.stack([blob, blob])))
    got = fm.compute()
    expected = np_fmeasure([b, c], [blob, blob])
    assert got["max"].item() == pytest.approx(expected["max"], abs=1e-6)
    assert got["max"].item() < 0.99
    assert got["max_mean_pr"].item() == pytest.approx(expected["max_mean_pr"], abs=1e-6)
    assert got["max_mean_pr"].item() != pytest.approx(got["max"].item(), abs=1e-3)


def test_ground_truth_binarisation_matches_uint8_gt_above_128() -> None:
    """Maps stored as uint8 and divided by 255: 128 is background, 129 salient (PySODMetrics' gt > 128)."""
    target = torch.tensor([[[128, 129]]], dtype=torch.uint8).float() / 255
    mae = MeanAbsoluteError(GT_THRESHOLD)
    mae.update(torch.zeros(1, 1, 2), target)
    assert mae.compute().item() == pytest.approx(0.5)


def test_mae_edge_cases() -> None:
    mae = MeanAbsoluteError(GT_THRESHOLD)
    mae.update(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))  # 1.0
    mae.update(torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 0.25))  # GT binarised to 0: 0.25
    assert mae.compute().item() == pytest.approx(0.625)  # images count equally
    soft = MeanAbsoluteError()
    soft.update(torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 0.25))
    assert soft.compute().item() == 0.0


def test_bad_inputs_are_rejected() -> None:
    fm, mae = FMeasure(), MeanAbsoluteError()
    with pytest.raises(ValueError, match="shapes differ"):
        fm.update(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 1\]"):
        mae.update(torch.rand(2, 4, 4) + 1.0, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        fm.update(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
    nan = torch.rand(2, 4, 4)
    nan[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="preds has NaN"):
        fm.update(nan, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="target has NaN"):
        mae.update(torch.rand(2, 4, 4), nan)


def test_state_is_summed_for_distributed_reduction() -> None:
    fm = FMeasure()
    assert all(fm._reductions[name].__name__ == "dim_zero_sum" for name in fm._defaults)
    fm.update(torch.rand(3, 4, 4), torch.rand(3, 4, 4))
    fm.reset()
    assert fm.n_images.item() == 0
