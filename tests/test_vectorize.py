"""to_polygons / to_circles and the pixel-edge tracing kernel, against brute force."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import tissuestack as ts
from tissuestack.errors import ValidationError
from tissuestack.kernels._trace import trace_rings


def _labels(mask: np.ndarray, chunks: int | tuple[int, int] | None = None, **kw) -> object:
    return ts.Labels2DModel.parse(np.asarray(mask), dims=("y", "x"), chunks=chunks, **kw)


def _check_exact(mask: np.ndarray, gdf: gpd.GeoDataFrame) -> None:
    """Brute force: index = nonzero labels, area = pixel count, valid, pixel centres inside <=> label."""
    ids, counts = np.unique(mask[mask != 0], return_counts=True)
    assert np.array_equal(gdf.index.to_numpy(), ids)
    assert np.array_equal(gdf.geometry.area.to_numpy(), counts.astype(float))
    geoms = np.asarray(gdf.geometry.array)
    assert shapely.is_valid(geoms).all(), shapely.is_valid_reason(geoms)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    for label, geom in zip(gdf.index, geoms, strict=True):
        assert np.array_equal(shapely.contains_xy(geom, xx + 0.5, yy + 0.5), mask == label), label


# ----------------------------------------------------------------------------------------------------- kernel
def test_kernel_rings_simple_and_areas_sum_to_pixel_counts():
    rng = np.random.default_rng(0)
    for _ in range(150):
        a = rng.integers(0, 4, rng.integers(1, 14, 2)).astype(np.int32)
        r = trace_rings(a)
        sums: dict[int, int] = {}
        for k in range(len(r.label)):
            xs, ys = r.xy[r.offsets[k] : r.offsets[k + 1]].T
            assert xs[0] == xs[-1] and ys[0] == ys[-1]
            assert shapely.is_simple(shapely.linearrings(np.c_[xs, ys]))
            assert list(r.bbox[k]) == [xs.min(), ys.min(), xs.max(), ys.max()]
            sums[int(r.label[k])] = sums.get(int(r.label[k]), 0) + int(r.area2[k])
        ids, counts = np.unique(a[a != 0], return_counts=True)
        assert sums == {int(i): 2 * int(c) for i, c in zip(ids, counts, strict=True)}


def test_kernel_one_pixel_and_orientation():
    r = trace_rings(np.array([[0, 0], [0, 7]], dtype=np.uint16))
    assert list(r.label) == [7] and list(r.area2) == [2]
    ring = r.xy
    assert shapely.Polygon(ring).equals(shapely.box(1, 1, 2, 2))
    assert shapely.is_ccw(shapely.linearrings(ring))  # exterior rings counter-clockwise in (x, y)


# ------------------------------------------------------------------------------------------------ to_polygons
@pytest.mark.parametrize("seed", range(4))
def test_random_masks_random_chunks_exact(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        h, w = rng.integers(1, 26, 2)
        mask = rng.integers(0, rng.integers(2, 6), (h, w)).astype(np.int32)
        mask.flat[0] = 1
        c = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        _check_exact(mask, ts.to_polygons(_labels(mask, chunks=c)))


def test_blobs_across_chunk_borders_one_geometry_each():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96]
    mask = np.zeros((96, 96), dtype=np.int64)
    for label, (cy, cx, r) in enumerate(rng.uniform([10, 10, 4], [86, 86, 14], (12, 3)), start=1):
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = label * 1000
    mask[40:60, 40:60] = 5  # a square with a hole, crossing the chunk corner at (48, 48)
    mask[45:55, 45:55] = 0
    g = ts.to_polygons(_labels(mask, chunks=16))
    _check_exact(mask, g)
    sq = g.geometry.loc[5]
    assert sq.geom_type == "Polygon" and len(sq.interiors) == 1 and sq.area == 300
    # the same geometries as from one chunk
    whole = ts.to_polygons(_labels(mask, chunks=96))
    assert shapely.equals(np.asarray(g.geometry.array), np.asarray(whole.geometry.array)).all()


def test_large_rasters_read_chunks_again_instead_of_keeping_them(monkeypatch):
    from tissuestack.ops import _vectorize

    rng = np.random.default_rng(8)
    mask = np.repeat(np.repeat(rng.integers(0, 30, (12, 10)), 4, axis=0), 5, axis=1).astype(np.int32)
    kept = ts.to_polygons(_labels(mask, chunks=(7, 9)))
    monkeypatch.setattr(_vectorize, "_KEEP_BYTES", 0)
    again = ts.to_polygons(_labels(mask, chunks=(7, 9)))
    _check_exact(mask, again)
    assert shapely.equals(np.asarray(kept.geometry.array), np.asarray(again.geometry.array)).all()


def test_holes_nested_label_and_island_in_own_hole():
    mask = np.zeros((11, 11), dtype=np.int32)
    mask[1:10, 1:10] = 1
    mask[3:8, 3:8] = 0  # hole in label 1
    mask[4:7, 4:7] = 2  # another label inside the hole (not touching)
    mask[5, 5] = 1  # an island of label 1 inside label 2 inside label 1's hole
    g = ts.to_polygons(_labels(mask, chunks=4))
    _check_exact(mask, g)
    one = g.geometry.loc[1]
    assert one.geom_type == "MultiPolygon" and len(one.geoms) == 2
    big = max(one.geoms, key=lambda p: p.area)
    assert len(big.interiors) == 1 and big.area == 81 - 25
    two = g.geometry.loc[2]
    assert two.geom_type == "Polygon" and len(two.interiors) == 1 and two.area == 8


def test_diagonal_pixels_become_valid_multipolygon():
    mask = np.array([[1, 0], [0, 1]], dtype=np.int32)
    g = ts.to_polygons(_labels(mask))
    _check_exact(mask, g)
    assert g.geometry.loc[1].geom_type == "MultiPolygon" and len(g.geometry.loc[1].geoms) == 2
    # a diamond of diagonal neighbours: 8 separate squares touching at corners
    diamond = np.zeros((5, 5), dtype=np.int32)
    for i, j in [(0, 2), (1, 1), (1, 3), (2, 0), (2, 4), (3, 1), (3, 3), (4, 2)]:
        diamond[i, j] = 3
    g = ts.to_polygons(_labels(diamond))
    _check_exact(diamond, g)
    assert len(g.geometry.loc[3].geoms) == 8


def test_pinch_vertex_hole_touching_shell_is_valid():
    # a ring of pixels around a hole, closed only through a corner: one polygon whose hole touches the shell
    mask = np.ones((3, 3), dtype=np.int32)
    mask[1, 1] = 0
    mask[0, 0] = 0
    g = ts.to_polygons(_labels(mask))
    _check_exact(mask, g)
    poly = g.geometry.loc[1]
    assert poly.geom_type == "Polygon" and len(poly.interiors) == 1 and poly.area == 7
    # the pinch on a chunk border
    big = np.zeros((8, 8), dtype=np.int32)
    big[2:7, 2:7] = 4
    big[4, 4] = 0
    big[3, 3] = 0
    big[2, 2] = 0
    _check_exact(big, ts.to_polygons(_labels(big, chunks=4)))


def test_label_ids_dtypes_and_empty_labels():
    mask = np.zeros((6, 6), dtype=np.uint16)
    mask[0, 0] = 7
    mask[5, 5] = 65535
    g = ts.to_polygons(_labels(mask, chunks=3))
    assert list(g.index) == [7, 65535] and g.index.dtype == np.uint16
    big = np.zeros((4, 4), dtype=np.int64)
    big[1:3, 1:3] = 2**40
    assert list(ts.to_polygons(_labels(big)).index) == [2**40]
    with pytest.raises(ValidationError, match="no nonzero pixel"):
        ts.to_polygons(_labels(np.zeros((5, 5), dtype=np.int32)))


def test_transformations_kept_and_multiscale_uses_full_resolution():
    mask = np.zeros((16, 16), dtype=np.int32)
    mask[2:9, 3:12] = 1
    mask[10:15, 1:4] = 2
    t = {"global": ts.Scale([0.5, 0.5], axes=("y", "x")), "other": ts.Translation([3, 4], axes=("x", "y"))}
    el = _labels(mask, chunks=8, transformations=t, scale_factors=[2])
    g = ts.to_polygons(el)
    _check_exact(mask, g)
    got = ts.get_transformation(g, get_all=True)
    assert set(got) == {"global", "other"}
    for cs in t:
        xy = ("x", "y")
        assert np.allclose(got[cs].to_affine_matrix(xy, xy), t[cs].to_affine_matrix(xy, xy))


def test_errors_for_3d_labels_images_and_points():
    with pytest.raises(ValidationError, match="2D"):
        ts.to_polygons(ts.Labels3DModel.parse(np.ones((2, 4, 4), dtype=np.int32), dims=("z", "y", "x")))
    with pytest.raises(ValidationError, match="labels"):
        ts.to_polygons(ts.Image2DModel.parse(np.ones((1, 4, 4)), dims=("c", "y", "x")))
    points = ts.PointsModel.parse(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    with pytest.raises(ValidationError, match="to_circles"):
        ts.to_polygons(points)


def test_circles_to_polygons():
    circles = ts.ShapesModel.parse(
        np.array([[0.0, 0.0], [10.0, 5.0]]),
        radius=np.array([1.0, 2.0]),
        index=["a", "b"],
        transformations={"global": ts.Scale([2.0, 2.0], axes=("x", "y"))},
    )
    circles["kind"] = ["s", "t"]
    g = ts.to_polygons(circles, buffer_resolution=64)
    assert list(g.index) == ["a", "b"] and "radius" not in g.columns and list(g["kind"]) == ["s", "t"]
    assert np.allclose(g.area, np.pi * np.array([1.0, 4.0]), rtol=1e-3)
    assert (g.area < np.pi * np.array([1.0, 4.0])).all()  # inscribed polygons
    assert np.allclose(shapely.get_coordinates(g.centroid), [[0, 0], [10, 5]])
    assert isinstance(ts.get_transformation(g, "global"), ts.Scale)
    coarse = ts.to_polygons(circles, buffer_resolution=2)
    assert shapely.get_num_coordinates(np.asarray(coarse.geometry.array)).tolist() == [9, 9]
    polys = ts.to_polygons(g)  # polygons stay as they are
    assert shapely.equals(np.asarray(polys.geometry.array), np.asarray(g.geometry.array)).all()


# ------------------------------------------------------------------------------------------------- to_circles
def test_labels_to_circles_equal_area_at_pixel_centroid():
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 5, (20, 17)).astype(np.int32)
    mask[mask == 3] = 0  # a missing id
    t = {"global": ts.Scale([2.0, 3.0], axes=("x", "y"))}
    c = ts.to_circles(_labels(mask, chunks=6, transformations=t))
    ids = np.unique(mask[mask != 0])
    assert np.array_equal(c.index.to_numpy(), ids)
    yy, xx = np.mgrid[:20, :17]
    for label in ids:
        sel = mask == label
        assert np.isclose(np.pi * c.loc[label, "radius"] ** 2, sel.sum())
        p = c.geometry.loc[label]
        assert np.isclose(p.x, (xx[sel] + 0.5).mean()) and np.isclose(p.y, (yy[sel] + 0.5).mean())
    assert isinstance(ts.get_transformation(c, "global"), ts.Scale)
    # the same centres as the polygons' centroids
    g = ts.to_polygons(_labels(mask, chunks=6))
    assert np.allclose(shapely.get_coordinates(g.centroid), shapely.get_coordinates(c.geometry))


def test_polygons_points_and_circles_to_circles():
    polys = ts.ShapesModel.parse(
        gpd.GeoDataFrame({"v": [1, 2]}, geometry=[shapely.box(0, 0, 2, 2), shapely.box(5, 5, 6, 9)]),
        transformations={"global": ts.Translation([1.0, 1.0], axes=("x", "y"))},
    )
    c = ts.to_circles(polys)
    assert np.allclose(np.pi * c["radius"] ** 2, [4.0, 4.0])
    assert np.allclose(shapely.get_coordinates(c.geometry), [[1, 1], [5.5, 7]])
    assert list(c["v"]) == [1, 2] and isinstance(ts.get_transformation(c, "global"), ts.Translation)
    again = ts.to_circles(c)
    assert np.array_equal(again["radius"], c["radius"])

    points = ts.PointsModel.parse(
        pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [4.0, 5.0, 6.0], "gene": ["a", "b", "a"]}),
        transformations={"global": ts.Scale([0.5, 0.5], axes=("x", "y"))},
    )
    pc = ts.to_circles(points, radius=1.5)
    assert np.allclose(shapely.get_coordinates(pc.geometry), [[1, 4], [2, 5], [3, 6]])
    assert (pc["radius"] == 1.5).all() and list(pc["gene"]) == ["a", "b", "a"]
    assert isinstance(ts.get_transformation(pc, "global"), ts.Scale)
    assert np.allclose(ts.to_circles(points, radius=np.array([1.0, 2.0, 3.0]))["radius"], [1, 2, 3])
    with pytest.raises(ValidationError, match="radius"):
        ts.to_circles(points)
    with pytest.raises(ValidationError, match="radius"):
        ts.to_circles(polys, radius=2.0)
