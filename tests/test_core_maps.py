"""visarl.core.maps: the defaults, the sum combination by hand, and every map producer drawing the same blobs."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from visarl.core.maps import COMBINE, REFERENCE_SIZE, SIGMA, clicks_to_map, frame_sigma, points_to_maps


def test_defaults_follow_paper_and_authors_page():
    assert (SIGMA, REFERENCE_SIZE, COMBINE) == (10.0, 400.0, "sum")
    # The authors' maps: exp(-4 ln2 d^2 / 25^2) on a 400 px canvas, a Gaussian of std 25 / (2 sqrt(2 ln 2)).
    authors_std = 25 / (2 * math.sqrt(2 * math.log(2)))
    assert authors_std == pytest.approx(10.62, abs=0.01) and abs(authors_std - SIGMA) / SIGMA < 0.07
    d = np.arange(0, 40.0)
    np.testing.assert_allclose(np.exp(-4 * math.log(2) * d**2 / 25**2), np.exp(-0.5 * (d / authors_std) ** 2))
    assert frame_sigma(SIGMA, 64, 64) == pytest.approx(1.6)


def test_sum_then_normalise_by_hand():
    # Clicks at (x=2, y=2) and (x=5, y=2), sigma 1 px. Unnormalised: pixel (2, 2) = 1 + e^-4.5 (the peak, as is
    # pixel (2, 5)); pixel (2, 3) = e^-0.5 + e^-2; pixel (3, 3) = e^-0.5 * (e^-0.5 + e^-2).
    m = clicks_to_map([[2.0, 2.0], [5.0, 2.0]], 5, 8, sigma=1.0, reference_size=None)
    peak = 1.0111089965382423  # 1 + e^-4.5
    assert m[2, 2] == pytest.approx(1.0) and m[2, 5] == pytest.approx(1.0) and m.max() == pytest.approx(1.0)
    assert m[2, 3] == pytest.approx(0.7337151, rel=1e-6)  # (0.6065307 + 0.1353353) / peak
    assert m[3, 3] == pytest.approx(0.7337151 * 0.6065307, rel=1e-6)
    assert m[2, 0] == pytest.approx((math.exp(-2) + math.exp(-12.5)) / peak, rel=1e-6)
    # The same click twice weighs twice: with a third click alone, the doubled spot is the peak.
    m = clicks_to_map([[1.0, 1.0], [1.0, 1.0], [6.0, 1.0]], 3, 8, sigma=1.0, reference_size=None)
    assert m[1, 1] == pytest.approx(1.0)
    assert m[1, 6] == pytest.approx((1 + 2 * math.exp(-12.5)) / (2 + math.exp(-12.5)), rel=1e-6)
    assert clicks_to_map([[1.0, 1.0], [6.0, 1.0]], 3, 8, 1.0, None, "max")[1, 6] == pytest.approx(1.0)


def _keypoints() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.5, 63.5, (5, 3, 2))
    visible = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 0]], bool)
    xy[~visible] = np.nan  # whatever an invisible keypoint holds must not matter
    return xy, visible


def test_batched_points_equal_clicks_of_the_visible_points():
    xy, visible = _keypoints()
    maps = points_to_maps(xy, visible, 64, 64)
    for b in range(len(xy)):
        np.testing.assert_array_equal(maps[b], clicks_to_map(xy[b][visible[b]], 64, 64))
    assert not maps[2].any()


@pytest.mark.parametrize("combine", ["sum", "max"])
def test_oracle_sources_equal_annotation_clicks(combine):
    """The RL oracle source and the shard oracle draw exactly the annotator's blobs for the same points."""
    import torch

    from visarl.mae.oracle import oracle_maps
    from visarl.rl.saliency_source import OracleSaliency

    xy, visible = _keypoints()
    expected = np.stack([np.round(clicks_to_map(xy[b][visible[b]], 64, 64, combine=combine) * 255) for b in range(5)])
    source = OracleSaliency(lambda states: (xy, visible), combine=combine)
    got = source(torch.zeros(5, 3, 64, 64, dtype=torch.uint8), np.zeros((5, 39)))
    assert got.shape == (5, 1, 64, 64) and got.dtype == torch.uint8
    np.testing.assert_array_equal(got[:, 0].numpy(), expected.astype(np.uint8))
    np.testing.assert_array_equal(oracle_maps(xy, visible, 64, 64, combine=combine), expected.astype(np.uint8))
    defaults = OracleSaliency()
    assert (defaults.sigma, defaults.reference_size, defaults.combine) == (SIGMA, REFERENCE_SIZE, COMBINE)
    assert defaults.sigma_px(64, 96) == pytest.approx(10 * 96 / 400)


def test_core_imports_no_other_visarl_package():
    code = "import sys, visarl.core; print(sorted(m for m in sys.modules if m.startswith('visarl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['visarl', 'visarl.core', 'visarl.core.maps']"
