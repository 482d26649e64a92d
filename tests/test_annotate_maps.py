"""visarl.annotate.maps (re-exporting visarl.core.maps): clicks -> Gaussian saliency maps, against a per-pixel loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visarl.annotate.maps import clicks_to_map, frame_sigma, maps_from_clicks


def brute_force(clicks, h, w, s, combine):
    """Independent reference: a plain loop over pixels with math.exp and hypot."""
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            vals = [math.exp(-(math.hypot(j - x, i - y) ** 2) / (2 * s * s)) for x, y in clicks]
            if vals:
                out[i, j] = max(vals) if combine == "max" else sum(vals)
    if combine == "sum" and out.max() > 0:
        out /= out.max()
    return out


def test_peak_at_click_and_one_sigma():
    m = clicks_to_map([[20.0, 10.0]], 32, 40, sigma=3.0, reference_size=None)
    assert m.shape == (32, 40) and m.dtype == np.float32
    assert np.unravel_index(np.argmax(m), m.shape) == (10, 20)  # row = y, col = x
    assert m[10, 20] == pytest.approx(1.0)
    for r, c in [(10, 23), (10, 17), (13, 20), (7, 20)]:
        assert m[r, c] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert 0.0 <= m.min() and m.max() <= 1.0


@pytest.mark.parametrize("combine", ["max", "sum"])
def test_matches_brute_force(combine):
    clicks = [[3.0, 4.0], [9.25, 7.5], [10.0, 8.0], [-0.5, 15.5]]
    got = clicks_to_map(clicks, 16, 14, sigma=2.5, reference_size=None, combine=combine)
    np.testing.assert_allclose(got, brute_force(clicks, 16, 14, 2.5, combine), atol=1e-6)


def test_max_versus_sum():
    # Two clicks on one spot and one alone: max treats them alike, sum makes the doubled spot the peak.
    clicks = [[5.0, 5.0], [5.0, 5.0], [25.0, 5.0]]
    mx = clicks_to_map(clicks, 12, 32, sigma=2.0, reference_size=None, combine="max")
    sm = clicks_to_map(clicks, 12, 32, sigma=2.0, reference_size=None, combine="sum")
    assert mx[5, 5] == pytest.approx(1.0) and mx[5, 25] == pytest.approx(1.0)
    assert sm[5, 5] == pytest.approx(1.0) and sm[5, 25] == pytest.approx(0.5, abs=1e-6)
    # Midway between two close clicks, sum exceeds max (before normalisation both have peak 1 here).
    two = [[10.0, 6.0], [13.0, 6.0]]
    mid_max = clicks_to_map(two, 12, 24, 2.0, None, "max")[6, 11]
    mid_sum = clicks_to_map(two, 12, 24, 2.0, None, "sum")
    assert mid_sum.max() == pytest.approx(1.0)
    assert mid_sum[6, 11] > mid_max


def test_sigma_scales_with_reference_size():
    # sigma = 10 px at 224 px is 5 px on a 112 px frame and 10 px on a 224 px frame.
    assert frame_sigma(10.0, 112, 112, 224) == pytest.approx(5.0)
    assert frame_sigma(10.0, 64, 64, 224) == pytest.approx(10 * 64 / 224)
    assert frame_sigma(10.0, 48, 96, 224) == pytest.approx(10 * 96 / 224)  # the longer side
    assert frame_sigma(4.0, 64, 64, None) == 4.0
    # Defaults: sigma 10 px at 400 px (the authors' annotation page), so 5 px at 200 and 1.6 px at 64.
    assert frame_sigma(10.0, 64, 64) == pytest.approx(1.6)
    m200 = clicks_to_map([[50.0, 40.0]], 200, 200)
    assert m200[40, 55] == pytest.approx(math.exp(-0.5), rel=1e-6)
    m400 = clicks_to_map([[100.0, 80.0]], 400, 400)
    assert m400[80, 110] == pytest.approx(math.exp(-0.5), rel=1e-6)
    m64 = clicks_to_map([[30.0, 30.0]], 64, 64)
    assert m64[30, 32] == pytest.approx(math.exp(-0.5 * (2 / 1.6) ** 2), rel=1e-6)


def test_empty_clicks_give_zeros():
    for clicks in ([], np.zeros((0, 2))):
        m = clicks_to_map(clicks, 8, 9)
        assert m.shape == (8, 9) and m.dtype == np.float32 and not m.any()
    assert not clicks_to_map([], 8, 9, combine="sum").any()


def test_fractional_click_between_pixels():
    m = clicks_to_map([[4.5, 3.0]], 8, 10, sigma=1.0, reference_size=None, combine="max")
    # Equidistant pixels share the peak, below 1 with max; sum normalises the map's peak to 1.
    assert m[3, 4] == pytest.approx(m[3, 5]) == pytest.approx(math.exp(-0.5 * 0.25))
    s = clicks_to_map([[4.5, 3.0]], 8, 10, sigma=1.0, reference_size=None)
    assert s[3, 4] == pytest.approx(s[3, 5]) == pytest.approx(1.0)
    np.testing.assert_allclose(s, m / m.max(), rtol=1e-6)


def test_maps_from_clicks_rebuilds_each_frame():
    per = [np.array([[1.0, 2.0]]), np.zeros((0, 2)), np.array([[5.0, 5.0], [6.0, 1.0]])]
    out = maps_from_clicks(per, 8, 8, sigma=7.0, reference_size=56)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    for i, c in enumerate(per):
        np.testing.assert_array_equal(out[i], clicks_to_map(c, 8, 8, 7.0, 56))
    assert not out[1].any()


@pytest.mark.parametrize(
    "kwargs",
    [{"combine": "mean"}, {"sigma": 0.0}, {"sigma": -1.0}, {"reference_size": 0}, {"sigma": float("nan")}],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        clicks_to_map([[1.0, 1.0]], 4, 4, **kwargs)


def test_non_finite_click_raises():
    with pytest.raises(ValueError, match="finite"):
        clicks_to_map([[np.nan, 1.0]], 4, 4)
