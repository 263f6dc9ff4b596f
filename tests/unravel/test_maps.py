"""Heat maps: point masks, outlier removal, blur and normalisation."""

import numpy as np
import pytest

from tf_segunravel.unravel.maps import gaussian_blur, heatmaps, inlier_mask


def test_isolated_points_are_outliers():
    # Class 1 of image 0: a tight cluster of 30 and one far point; radius 0.05 * diag(100^2).
    cluster = [(0, 1, 50 + i % 5, 50 + i // 5) for i in range(30)]
    points = np.array([*cluster, (0, 1, 2, 2), (0, 2, 2, 2)], np.int32)
    keep = inlier_mask(points, 100, 100, 0.05).numpy()
    assert keep[:30].all()
    assert not keep[30]  # 1 of 31 points (3%) near it: below 5%
    assert keep[31]  # alone in its own class: 100% of its class is near


def test_heatmap_peaks_at_the_points_and_is_normalised():
    points = np.array([[0, 1, 10, 20], [0, 1, 30, 5], [1, 0, 7, 7]], np.int32)
    counts = np.array([3, 1, 2])
    maps = heatmaps(points, counts, 2, 3, 40, 32, sigma=2.0, outlier_radius=0).numpy()
    assert maps.shape == (2, 3, 40, 32)
    assert maps.max() <= 1.0 and maps.min() >= 0.0
    assert np.unravel_index(maps[0, 1].argmax(), (40, 32)) == (10, 20)
    assert maps[0, 1, 30, 5] == pytest.approx(1 / 3, rel=0.05)  # count-weighted
    plain = heatmaps(
        points, counts, 2, 3, 40, 32, sigma=2.0, outlier_radius=0, weighted=False
    ).numpy()
    assert plain[0, 1, 30, 5] == pytest.approx(1.0, rel=0.05)
    assert not maps[0, 0].any() and not maps[1, 2].any()


def test_gaussian_blur_preserves_mass_inside_and_is_symmetric():
    spike = np.zeros((1, 41, 41), np.float32)
    spike[0, 20, 20] = 1
    blurred = gaussian_blur(spike, 3.0).numpy()[0]
    assert blurred.sum() == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(blurred, blurred.T, atol=1e-7)
    np.testing.assert_allclose(blurred, blurred[::-1], atol=1e-7)
    assert np.asarray(gaussian_blur(spike, 0))[0, 20, 20] == 1
