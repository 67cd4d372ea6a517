"""Point binning kernels against a plain numpy version."""

from __future__ import annotations

import numpy as np

from tissuestack.kernels._bin import bin_points_count, bin_points_max


def _slow_cells(px, py, height, width):
    ok = (px >= 0) & (py >= 0) & (px <= width) & (py <= height)
    j = np.minimum(np.floor(np.where(ok, px, 0)).astype(int), width - 1)
    i = np.minimum(np.floor(np.where(ok, py, 0)).astype(int), height - 1)
    return ok, i, j


def test_bin_points_count_and_max_match_numpy():
    rng = np.random.default_rng(0)
    n, h, w, k = 5000, 7, 11, 4
    px = rng.uniform(-1, w + 1, n)
    py = rng.uniform(-1, h + 1, n)
    px[:3] = [w, 0.0, np.nan]  # far edge: last pixel; near edge: first; NaN: skipped
    py[:3] = [h, 0.0, 1.0]
    codes = rng.integers(-1, k, n)
    values = rng.uniform(0, 10, n)
    values[::50] = np.nan
    ok, i, j = _slow_cells(px, py, h, w)
    expected = np.zeros((h, w, k), dtype=np.int64)
    keep = ok & (codes >= 0)
    np.add.at(expected, (i[keep], j[keep], codes[keep]), 1)
    counts = bin_points_count(px, py, codes, k, h, w)
    assert np.array_equal(counts, expected)
    assert counts[h - 1, w - 1].sum() >= (codes[0] >= 0)
    top = np.full((h, w), -np.inf)
    keep = ok & np.isfinite(values)
    np.maximum.at(top, (i[keep], j[keep]), values[keep])
    top[top == -np.inf] = -1.0
    assert np.array_equal(bin_points_max(px, py, values, -1.0, h, w), top)


def test_mapped_count_equals_mapping_first_then_counting():
    """The fused kernel (affine and code table applied per point) bins exactly as mapping the coordinates to
    pixels and the ids to codes first, for float32 and float64 input, NaNs and points outside."""
    from tissuestack.kernels._bin import bin_points_count_mapped

    rng = np.random.default_rng(5)
    n = 5000
    m = np.array([[0.37, 0.05, 3.2], [-0.04, 0.41, -1.7]])
    lut = np.array([2, -1, 0, 1, 2], dtype=np.int32)
    ids = rng.integers(0, 5, n).astype(np.int32)
    for dtype in (np.float32, np.float64):
        x = rng.uniform(-20, 160, n).astype(dtype)
        y = rng.uniform(-20, 160, n).astype(dtype)
        x[:7] = np.nan
        px = m[0, 0] * x.astype(np.float64) + m[0, 1] * y.astype(np.float64) + m[0, 2]
        py = m[1, 0] * x.astype(np.float64) + m[1, 1] * y.astype(np.float64) + m[1, 2]
        expected = bin_points_count(px, py, lut[ids], 3, 40, 50)
        got = bin_points_count_mapped(x, y, m, ids, lut, 3, 40, 50)
        np.testing.assert_array_equal(got, expected)
        assert expected.sum() > 1000 and expected.sum() < n
