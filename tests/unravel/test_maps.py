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
    size = {"batch": 2, "num_classes": 3, "height": 40, "width": 32}
    maps = heatmaps(points, counts, **size, sigma=2.0, outlier_radius=0).numpy()
    assert maps.shape == (2, 3, 40, 32)
    assert maps.max() <= 1.0 and maps.min() >= 0.0
    assert np.unravel_index(maps[0, 1].argmax(), (40, 32)) == (10, 20)
    assert maps[0, 1, 30, 5] == pytest.approx(1 / 3, rel=0.05)  # count-weighted
    plain = heatmaps(points, counts, **size, sigma=2.0, outlier_radius=0, weighted=False).numpy()
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


def inlier_reference(points, height, width, radius, min_share=0.05, rows=None, original=False):
    """Straight from the rule: per point (of `rows`), the count of its (image, class) group
    inside the square window of half-side floor(radius * diagonal), against min(5% of the
    group, half the group's densest window); `original`: against 5% of the group alone
    (CNN-Fixations' rule)."""
    reach = int(np.floor(np.float32(radius) * np.sqrt(np.float32(height**2 + width**2))))

    def near(group, y, x):
        return ((np.abs(group[:, 2] - y) <= reach) & (np.abs(group[:, 3] - x) <= reach)).sum()

    densest = {}
    keep = []
    for b, c, y, x in points if rows is None else points[rows]:
        group = points[(points[:, 0] == b) & (points[:, 1] == c)]
        threshold = min_share * len(group)
        if not original:
            if (b, c) not in densest:
                densest[b, c] = max(near(group, gy, gx) for _, _, gy, gx in group)
            threshold = min(threshold, 0.5 * densest[b, c])
        keep.append(near(group, y, x) > threshold)
    return np.array(keep)


def test_inlier_mask_matches_the_rule_point_for_point():
    rng = np.random.default_rng(3)
    clusters = rng.integers(0, 60, (5, 2))
    rows = []
    for i in range(600):
        b, c = rng.integers(0, 2), rng.integers(0, 3)
        if i % 7:  # mostly around one of a few centres, some anywhere
            y, x = clusters[(b + c) % 5] + rng.integers(-3, 4, 2)
        else:
            y, x = rng.integers(0, 64, 2)
        rows.append((b, c, np.clip(y, 0, 63), np.clip(x, 0, 63)))
    points = np.array(rows, np.int32)
    got = inlier_mask(points, 64, 64, 0.03).numpy()
    np.testing.assert_array_equal(got, inlier_reference(points, 64, 64, 0.03))
    assert 0 < (~got).sum() < len(got)  # the case has both inliers and outliers
    # Each group's densest window holds at least 10% of it: the original rule, exactly.
    np.testing.assert_array_equal(got, inlier_reference(points, 64, 64, 0.03, original=True))


def test_a_widely_spread_class_keeps_its_densest_parts():
    """A stride-1 network's large segment: 4,900 points over a 70 x 70 square of a 256 px
    image, windows of 15 x 15 (radius 0.02: half-side 7). No window can hold 5% of the class
    (246 points), so the original rule drops every point and the heat map is blank."""
    ys, xs = np.mgrid[90:160, 90:160]
    spread = np.stack([np.zeros(ys.size), np.ones(ys.size), ys.ravel(), xs.ravel()], 1)
    dense_corner = np.array([(0, 1, 95 + i % 3, 95 + i // 3) for i in range(15)])  # extra
    points = np.concatenate([spread, dense_corner]).astype(np.int32)
    original = inlier_reference(
        points, 256, 256, 0.02, original=True, rows=np.arange(0, len(points), 7)
    )
    assert not original.any()
    keep = inlier_mask(points, 256, 256, 0.02).numpy()
    assert 0 < keep.sum() < len(points)
    assert keep[-15:].all()  # the densest part stays
    # Inside the square every window holds 225 points or more: kept; at the square's corners
    # a window holds 64, below half the densest (240): dropped.
    index = {tuple(p[2:]): i for i, p in enumerate(points[:4900])}
    assert keep[index[(125, 125)]] and not keep[index[(159, 159)]]
    maps = heatmaps(points, np.ones(len(points)), batch=1, num_classes=2, height=256, width=256)
    assert maps.numpy()[0, 1].max() == pytest.approx(1.0)


def test_a_class_with_points_never_gets_a_blank_map():
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(1, 3000))
        points = np.stack(
            [np.zeros(n), rng.integers(0, 3, n), rng.integers(0, 96, n), rng.integers(0, 96, n)],
            1,
        ).astype(np.int32)
        keep = inlier_mask(points, 96, 96, 0.02).numpy()
        for cls in np.unique(points[:, 1]):
            assert keep[points[:, 1] == cls].any(), (trial, cls)
        sample = rng.choice(n, min(n, 40), replace=False)
        reference = inlier_reference(points, 96, 96, 0.02, rows=sample)
        np.testing.assert_array_equal(keep[sample], reference)


@pytest.mark.slow
def test_outlier_removal_scales_to_a_large_batch():
    """80,000 points, as a K = 3 unravel of a batch gives: a pairwise N x N comparison would
    need tens of gigabytes; counting per (image, class) grid needs a few megabytes."""
    rng = np.random.default_rng(0)
    n = 80_000
    groups = rng.integers(0, 32, n)
    centres = rng.integers(40, 473, (32, 2))
    spread = np.where(rng.random((n, 1)) < 0.9, 6, 200)  # tight clusters, some strays
    yx = np.clip(centres[groups] + rng.normal(0, 1, (n, 2)) * spread, 0, 512)
    points = np.concatenate([np.stack([groups // 4, groups % 4], 1), yx], 1).astype(np.int32)
    keep = inlier_mask(points, 513, 513, 0.02).numpy()
    assert keep.shape == (n,) and 0.8 < keep.mean() < 0.95  # strays go, clusters stay
    sample = rng.choice(n, 300, replace=False)
    reference = inlier_reference(points, 513, 513, 0.02, rows=sample)
    np.testing.assert_array_equal(keep[sample], reference)
    maps = heatmaps(
        points,
        np.ones(n, np.int64),
        batch=8,
        num_classes=4,
        height=513,
        width=513,
        sigma=4.0,
    ).numpy()
    assert maps.shape == (8, 4, 513, 513) and maps.max() == pytest.approx(1.0)


def _convolved(maps, sigma):
    """The blur as two one-channel convolutions of the taps (zeros beyond the border): the
    form the matrix products replaced, and a reference written apart from them."""
    import tensorflow as tf

    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    x = tf.constant(maps[..., None], tf.float32)
    x = tf.nn.conv2d(x, taps.reshape(-1, 1, 1, 1), 1, "SAME")
    return tf.nn.conv2d(x, taps.reshape(1, -1, 1, 1), 1, "SAME").numpy()[..., 0]


@pytest.mark.parametrize(
    ("shape", "sigma"), [((3, 40, 33), 2.0), ((2, 9, 70), 5.5), ((1, 6, 6), 20)]
)
def test_the_blur_is_the_separable_convolution(shape, sigma):
    # Dense random maps (every sum has many terms) and a kernel wider than the map.
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_allclose(
        gaussian_blur(maps, sigma).numpy(), _convolved(maps, sigma), atol=2e-6
    )


def _blur_matrix(size, sigma):
    """B[i, j] = tap (j - i) of the normalised kernel, 0 beyond 3 sigma (numpy, from the rule)."""
    radius = int(np.ceil(3 * sigma))
    total = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).sum()
    offset = np.arange(size)[None, :] - np.arange(size)[:, None]
    return np.where(np.abs(offset) <= radius, np.exp(-0.5 * (offset / sigma) ** 2) / total, 0)


def test_a_blur_per_axis_and_as_tensors_inside_a_graph():
    import tensorflow as tf

    maps = np.random.default_rng(1).random((2, 30, 20)).astype(np.float32)
    pair = gaussian_blur(maps, (3.0, 1.5)).numpy()  # 3 px along y, 1.5 px along x
    expected = _blur_matrix(30, 3.0) @ maps.astype(np.float64) @ _blur_matrix(20, 1.5)
    np.testing.assert_allclose(pair, expected, atol=2e-6)
    compiled = tf.function(lambda m, s: gaussian_blur(m, (s, s / 2)))
    np.testing.assert_allclose(compiled(maps, tf.constant(3.0)).numpy(), pair, atol=1e-6)


def _two_classes(ranking, labels=None):
    # Class 1: a cluster of points near (10, 10); class 0: one point at (30, 30).
    points = np.array([[0, 1, 10, 10], [0, 1, 11, 12], [0, 0, 30, 30]], np.int32)
    return heatmaps(
        points, np.ones(3), batch=1, num_classes=2, height=40, width=40, sigma=2.0,
        outlier_radius=0, ranking=ranking, labels=labels,
    ).numpy()[0]  # fmt: skip


def test_a_complete_ranking_breaks_only_the_ties():
    plain, dense = _two_classes("points"), _two_classes("density")
    assert (plain[1] == 0).mean() > 0.8  # most pixels tie at 0 without it
    assert (dense[1] > 0).all() and dense.max() <= 1
    # Where the blurred points differ by more than the tie-break, the order is theirs.
    apart = np.abs(plain[1].ravel()[:, None] - plain[1].ravel()[None, :]) > 2e-3
    order = np.sign(plain[1].ravel()[:, None] - plain[1].ravel()[None, :])
    dense_order = np.sign(dense[1].ravel()[:, None] - dense[1].ravel()[None, :])
    assert (order[apart] == dense_order[apart]).all()
    # Among the tied pixels, nearer the class's points ranks higher.
    assert dense[1, 10, 25] > dense[1, 10, 39] > 0 and dense[1, 25, 25] > dense[1, 39, 39]


def test_the_segment_ranking_puts_the_class_region_next():
    labels = np.zeros((1, 40, 40), np.int64)
    labels[0, :, 20:] = 1  # class 1's region: the right half, away from its points
    ranked = _two_classes("segment", labels)[1]
    plain = _two_classes("points")[1]
    far = plain == 0
    # The region (blurred at sigma = 2) first: inside it, over pixels 6 px or more outside.
    columns = np.arange(40)[None, :]
    inside, outside = far & (columns >= 20), far & (columns < 14)
    assert ranked[inside].min() > ranked[outside].max()
    assert (ranked > 0).all()
    with pytest.raises(ValueError, match="needs each pixel's labels"):
        _two_classes("segment")


def test_the_blur_in_score_cells_follows_the_geometry():
    from tf_segunravel.errors import InputError
    from tf_segunravel.unravel import FixationSettings
    from tf_segunravel.unravel.maps import heatmap_sigma

    geometry = np.array([[8.0, 3.5], [4.0, 1.5]], np.float32)  # stride 8 down, 4 across
    cells = FixationSettings(sigma=2.0, sigma_unit="score_cells")
    assert heatmap_sigma(cells, geometry, 64, 64) == (16.0, 8.0)
    assert heatmap_sigma(FixationSettings(sigma=5.0), geometry, 64, 64) == (5.0, 5.0)
    heatmap_sigma(cells, geometry, 16, 20)
    with pytest.raises(
        InputError,
        match=r"sigma=2 score cells: a heat-map blur of 16 px is "
        r"wider than the image \(12 x 10\); pass a sigma of at most 1.5",
    ):
        heatmap_sigma(cells, geometry, 12, 10)
    with pytest.raises(
        InputError,
        match=r"sigma_unit=score_cells: this model gives no score "
        r"grid geometry \(a SavedModel\); pass sigma_unit=pixels",
    ):
        heatmap_sigma(cells, None, 64, 64)
