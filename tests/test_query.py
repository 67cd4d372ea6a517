"""Spatial queries against slow, obviously correct implementations on random data."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import anndata as ad
import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import tissuestack as ts
from tissuestack.elements import (
    Image2DModel,
    Labels2DModel,
    PointsModel,
    ShapesModel,
    TableModel,
    get_meta,
    raster_levels,
)
from tissuestack.kernels._pip import points_in_polygon
from tissuestack.query import bounding_box_query, polygon_query
from tissuestack.query._index import shapes_index, shapes_tree
from tissuestack.transforms import Affine, Identity, Scale, Sequence, Translation

ROT45 = Affine(
    [
        [math.cos(math.pi / 4), -math.sin(math.pi / 4), 3.0],
        [math.sin(math.pi / 4), math.cos(math.pi / 4), -2.0],
    ],
    ("x", "y"),
    ("x", "y"),
)
GENERAL = Affine([[1.5, 0.4, 10.0], [-0.3, 0.8, 5.0]], ("x", "y"), ("x", "y"))
TRANSFORMS = {"identity": Identity(), "rot45": ROT45, "affine": GENERAL}


def _matrix(t, axes):
    m = t.to_affine_matrix(axes, axes)
    return m[:-1, :-1], m[:-1, -1]


def _target(coords, t, axes):
    """Brute force: transform row by row."""
    lin, off = _matrix(t, axes)
    return np.array([lin @ np.asarray(c, dtype=np.float64) + off for c in coords]).reshape(-1, len(axes))


def _points_frame(n=3000, seed=0, dims=2, npartitions=4, string_index=True):
    rng = np.random.default_rng(seed)
    data = {"x": rng.uniform(0, 100, n).astype(np.float32), "y": rng.uniform(0, 100, n).astype(np.float32)}
    if dims == 3:
        data["z"] = rng.uniform(0, 10, n).astype(np.float32)
    data["gene"] = pd.Categorical(rng.choice(["a", "b", "c"], n))
    index = [f"p{i * 3}" for i in range(n)] if string_index else np.arange(n) * 7 + 5
    return pd.DataFrame(data, index=index)


def _brute_box(pdf, t, axes, lo, hi):
    in_axes = [a for a in ("x", "y", "z") if a in pdf.columns]
    coords = pdf[in_axes].to_numpy(dtype=np.float64)
    tc = _target(coords, t, tuple(in_axes))
    keep = []
    for row in tc:
        ok = True
        for a, lo_a, hi_a in zip(axes, lo, hi, strict=True):
            if a in in_axes:
                v = row[in_axes.index(a)]
                ok &= lo_a <= v <= hi_a
        keep.append(ok)
    return pdf.index[np.array(keep, dtype=bool)]


# --------------------------------------------------------------------------------------------------- points
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_points_bbox_matches_brute_force(name):
    pdf = _points_frame()
    t = TRANSFORMS[name]
    df = PointsModel.parse(pdf, transformations={"global": t}, npartitions=4)
    assert df.npartitions == 4
    lo, hi = (20.0, 30.0), (70.0, 60.0)
    out = bounding_box_query(df, ("x", "y"), lo, hi, "global").compute()
    expected = _brute_box(pdf, t, ("x", "y"), lo, hi)
    assert len(expected) > 0
    assert list(out.index) == list(expected)
    pd.testing.assert_frame_equal(out, pdf.loc[expected], check_index_type=False)
    # the box given in the other axis order
    out2 = bounding_box_query(df, ("y", "x"), lo[::-1], hi[::-1], "global").compute()
    assert list(out2.index) == list(expected)


def test_points_on_edges_are_inside():
    xs, ys = np.meshgrid(np.arange(0, 11, dtype=np.float32), np.arange(0, 11, dtype=np.float32))
    pdf = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel()}, index=np.arange(121) * 2 + 1)
    df = PointsModel.parse(pdf, transformations={"global": Scale([0.5, 0.5], ("x", "y"))}, npartitions=3)
    out = bounding_box_query(df, ("x", "y"), (1.0, 1.5), (3.0, 2.5), "global").compute()
    # x in [2, 6] and y in [3, 5] in intrinsic units, boundaries included
    expect = pdf[(pdf.x >= 2) & (pdf.x <= 6) & (pdf.y >= 3) & (pdf.y <= 5)]
    assert len(expect) == 5 * 3
    pd.testing.assert_frame_equal(out, expect, check_index_type=False)
    # a zero-width box selects the points exactly on it
    line = bounding_box_query(df, ("x", "y"), (1.0, 0.0), (1.0, 5.0), "global").compute()
    assert (line.x == 2).all() and len(line) == 11


def test_points_3d_and_2d_box_on_3d_points():
    pdf = _points_frame(dims=3, seed=2, string_index=False)
    t = Sequence(
        [
            Affine(
                [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]],
                ("x", "y", "z"),
                ("x", "y", "z"),
            )
        ]
    )
    df = PointsModel.parse(pdf, transformations={"global": t}, npartitions=4)
    lo, hi = (10.0, 20.0, 4.0), (60.0, 50.0, 12.0)
    out = bounding_box_query(df, ("x", "y", "z"), lo, hi, "global").compute()
    assert list(out.index) == list(_brute_box(pdf, t, ("x", "y", "z"), lo, hi))
    out2 = bounding_box_query(df, ("x", "y"), lo[:2], hi[:2], "global").compute()
    expected2 = _brute_box(pdf, t, ("x", "y"), lo[:2], hi[:2])
    assert list(out2.index) == list(expected2) and len(out2) > len(out)
    # a 3D box on 2D points constrains x and y only
    df2 = PointsModel.parse(pdf[["x", "y"]], npartitions=2)
    out3 = bounding_box_query(df2, ("x", "y", "z"), (10, 20, 100), (60, 50, 200), "global").compute()
    assert list(out3.index) == list(_brute_box(pdf[["x", "y"]], Identity(), ("x", "y"), (10, 20), (60, 50)))


def test_points_empty_result_and_laziness():
    pdf = _points_frame()
    df = PointsModel.parse(pdf, npartitions=4)
    out = bounding_box_query(df, ("x", "y"), (200, 200), (300, 300), "global")
    assert get_meta(out).transformations == get_meta(df).transformations
    res = out.compute()
    assert len(res) == 0 and list(res.columns) == list(pdf.columns)


def test_many_boxes_equal_single_queries():
    pdf = _points_frame(seed=4)
    df = PointsModel.parse(pdf, transformations={"global": ROT45}, npartitions=4)
    rng = np.random.default_rng(1)
    lo = rng.uniform(-60, 60, (7, 2))
    hi = lo + rng.uniform(0, 50, (7, 2))
    many = bounding_box_query(df, ("x", "y"), lo, hi, "global")
    assert isinstance(many, list) and len(many) == 7
    computed = dask.compute(*many)
    for i in range(7):
        single = bounding_box_query(df, ("x", "y"), lo[i], hi[i], "global").compute()
        pd.testing.assert_frame_equal(computed[i], single)
        assert list(single.index) == list(_brute_box(pdf, ROT45, ("x", "y"), lo[i], hi[i]))
    # shapes and rasters in the vectorized form
    gdf = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=shapely.points(rng.uniform(0, 100, (50, 2))).tolist()), radius=2.0
    )
    res = bounding_box_query(gdf, ("x", "y"), lo + 60, hi + 60, "global")
    for i, r in enumerate(res):
        s = bounding_box_query(gdf, ("x", "y"), lo[i] + 60, hi[i] + 60, "global")
        assert (r is None and s is None) or list(r.index) == list(s.index)


def test_store_backed_points_push_down(tmp_path):
    pdf = _points_frame(n=200_000, seed=5, string_index=False)
    df = PointsModel.parse(pdf, transformations={"global": ROT45}, npartitions=4)
    ts.SpatialData(points={"pts": df}).write(tmp_path / "s.zarr")
    back = ts.read_zarr(tmp_path / "s.zarr")
    lazy = back["pts"]
    assert get_meta(lazy).source is not None
    lo, hi = (0.0, 10.0), (30.0, 40.0)
    out = bounding_box_query(lazy, ("x", "y"), lo, hi, "global")
    res = out.compute()
    expected = sorted(_brute_box(pdf, ROT45, ("x", "y"), lo, hi))
    assert len(expected) > 0 and sorted(res.index) == expected
    np.testing.assert_array_equal(
        res.sort_index()[["x", "y"]].to_numpy(), pdf.loc[expected, ["x", "y"]].to_numpy()
    )
    # the frame as read is queried by reading exactly the row groups whose statistics meet the box
    from tissuestack.elements import set_meta
    from tissuestack.query._index import intersecting_row_groups
    from tissuestack.store import ElementLocation, StoreRoot
    from tissuestack.store._points import points_row_group_stats, points_scan
    from tissuestack.transforms import affine_map

    stats = points_row_group_stats(ElementLocation(StoreRoot.open(tmp_path / "s.zarr"), "points", "pts"))
    b = affine_map(ROT45, ("x", "y"), ("x", "y")).intrinsic_bounds(lo, hi, ("x", "y"))
    touched = intersecting_row_groups(stats, b[0], b[1], ("x", "y"))
    assert len(stats) >= 3 and 0 < touched.sum() < len(stats)
    scan = points_scan(lazy)
    assert scan is not None and scan.row_group_stats()[["file", "row_group"]].equals(
        stats[["file", "row_group"]]
    )
    reads = [t for t in scan.tasks(np.ones(len(stats), dtype=bool))]
    assert sum(len(rgs) for _, rgs in reads) == len(stats)
    graph = dict(out.__dask_graph__())
    read_keys = [k for k in graph if isinstance(k, tuple) and "read-points-row-groups" in str(k[0])]
    assert 0 < len(read_keys) <= touched.sum() and out.npartitions == len(scan.tasks(touched))
    # a frame derived from it (a new dask expression) instead pushes the bounding box into dask's Parquet read
    derived = lazy[lazy["x"] > -1e9]
    set_meta(derived, get_meta(lazy).copy())
    assert points_scan(derived) is None
    out_d = bounding_box_query(derived, ("x", "y"), lo, hi, "global")
    plan = io.StringIO()
    with contextlib.redirect_stdout(plan):
        out_d.optimize(fuse=False).pprint()
    read = [line for line in plan.getvalue().splitlines() if "ReadParquet" in line]
    assert read and "filters=[[(" in read[0] and "('x', '>='" in read[0] and "('y', '<='" in read[0]
    pd.testing.assert_frame_equal(out_d.compute().sort_index(), res.sort_index())
    # container-level query on the store-backed object gives the same rows
    sub = bounding_box_query(back, ("x", "y"), lo, hi, "global")
    assert sorted(sub["pts"].compute().index) == expected
    # a box far away is known empty from the row-group statistics alone
    assert bounding_box_query(lazy, ("x", "y"), (1e6, 1e6), (2e6, 2e6), "global") is None
    assert "pts" not in bounding_box_query(back, ("x", "y"), (1e6, 1e6), (2e6, 2e6), "global")


def test_row_group_pruning_helper():
    from tissuestack.query._index import intersecting_row_groups

    stats = pd.DataFrame(
        {"x_min": [0, 10, np.nan], "x_max": [5, 20, np.nan], "y_min": [0, 0, 0], "y_max": [5, 5, 5]}
    )
    keep = intersecting_row_groups(stats, (6, 1), (9, 2), ("x", "y"))
    assert keep.tolist() == [False, False, True]
    keep = intersecting_row_groups(stats, (5, -np.inf), (10, np.inf), ("x", "y"))
    assert keep.tolist() == [True, True, True]


# --------------------------------------------------------------------------------------------------- shapes
def _random_polygons(n=80, seed=0, index=None):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 100, (n, 2))
    polys = [shapely.Point(*p).buffer(rng.uniform(0.5, 4), quad_segs=3) for p in c]
    return gpd.GeoDataFrame({"v": np.arange(n)}, geometry=polys, index=index)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_shapes_bbox_polygons_and_circles(name):
    t = TRANSFORMS[name]
    index = [f"s{i}" for i in range(0, 160, 2)]
    gdf = ShapesModel.parse(_random_polygons(index=index), transformations={"global": t})
    lin, off = _matrix(t, ("x", "y"))
    lo, hi = (20.0, 10.0), (60.0, 50.0)
    box = shapely.box(*lo, *hi)
    out = bounding_box_query(gdf, ("x", "y"), lo, hi, "global")
    expected = [
        i
        for i, g in zip(gdf.index, gdf.geometry, strict=True)
        if shapely.transform(g, lambda c: c @ lin.T + off).intersects(box)
    ]
    assert list(out.index) == expected
    assert get_meta(out).transformations["global"] == t

    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 100, (200, 2))
    radius = rng.uniform(0.5, 5, 200)
    circles = ShapesModel.parse(centres, radius=radius, transformations={"global": t})
    out = bounding_box_query(circles, ("x", "y"), lo, hi, "global")
    inv = np.linalg.inv(lin)
    box_intrinsic = shapely.transform(box, lambda c: (c - off) @ inv.T)
    expected = [
        i for i in range(200) if shapely.Point(*centres[i]).distance(box_intrinsic) <= radius[i] * (1 + 1e-12)
    ]
    assert list(out.index) == expected


@pytest.mark.parametrize("name", ["identity", "scale_shift", "rot45"])
def test_shapes_bbox_scan_and_tree_paths_agree_with_brute_force(name):
    # a few boxes scan the envelopes (and accept envelopes strictly inside the box without an exact test); many
    # boxes use the STRtree, which later few-box queries then reuse: all must equal shapely brute force
    t = {
        "identity": Identity(),
        "scale_shift": Sequence([Scale([2.0, 0.5], ("x", "y")), Translation([-3.0, 4.0], ("x", "y"))]),
        "rot45": ROT45,
    }[name]
    gdf = ShapesModel.parse(_random_polygons(n=400), transformations={"global": t})
    lin, off = _matrix(t, ("x", "y"))
    geoms_t = [shapely.transform(g, lambda c: c @ lin.T + off) for g in gdf.geometry]
    boxes = [((20.0, 10.0), (60.0, 50.0)), ((-5.0, 30.0), (45.0, 31.0)), ((100.0, 0.0), (180.0, 70.0))]

    def check_singles():
        for lo, hi in boxes:
            box = shapely.box(*lo, *hi)
            expected = [i for i, g in zip(gdf.index, geoms_t, strict=True) if g.intersects(box)]
            out = bounding_box_query(gdf, ("x", "y"), lo, hi, "global")
            assert (list(out.index) if out is not None else []) == expected

    check_singles()
    assert not shapes_index(gdf, False).has_tree  # a few boxes: envelopes scanned, no tree built
    many = bounding_box_query(gdf, ("x", "y"), [b[0] for b in boxes] * 6, [b[1] for b in boxes] * 6, "global")
    assert shapes_index(gdf, False).has_tree
    for k, part in enumerate(many):
        lo, hi = boxes[k % 3]
        box = shapely.box(*lo, *hi)
        expected = [i for i, g in zip(gdf.index, geoms_t, strict=True) if g.intersects(box)]
        assert (list(part.index) if part is not None else []) == expected
    check_singles()  # the tree, now built, is reused


def test_shapes_empty_and_cache():
    gdf = ShapesModel.parse(_random_polygons())
    assert bounding_box_query(gdf, ("x", "y"), (500, 500), (600, 600), "global") is None
    tree = shapes_tree(gdf, False)
    assert shapes_tree(gdf, False) is tree
    gdf2 = gdf.copy()
    assert shapes_tree(gdf2, False) is not tree


def test_polygon_query_shapes_clip():
    gdf = ShapesModel.parse(_random_polygons(seed=7), transformations={"global": GENERAL})
    lin, off = _matrix(GENERAL, ("x", "y"))
    poly = shapely.Polygon([(30, 20), (120, 40), (90, 110), (40, 90)], holes=[[(60, 50), (80, 55), (70, 70)]])
    out = polygon_query(gdf, poly, "global")
    expected = [
        i
        for i, g in zip(gdf.index, gdf.geometry, strict=True)
        if shapely.transform(g, lambda c: c @ lin.T + off).intersects(poly)
    ]
    assert list(out.index) == expected
    clipped = polygon_query(gdf, poly, "global", clip=True)
    assert set(clipped.index) <= set(expected)
    for i, g in zip(clipped.index, clipped.geometry, strict=True):
        g_t = shapely.transform(g, lambda c: c @ lin.T + off)
        ref = shapely.transform(gdf.geometry[i], lambda c: c @ lin.T + off).intersection(poly)
        assert abs(g_t.area - ref.area) <= 1e-9 * max(ref.area, 1)
        assert poly.buffer(1e-6).covers(g_t)


# --------------------------------------------------------------------------------------------------- polygons on points
def test_pip_kernel_matches_shapely():
    rng = np.random.default_rng(0)
    outer = shapely.Point(0, 0).buffer(1, quad_segs=32)
    poly = shapely.MultiPolygon(
        [outer.difference(shapely.Point(0.2, 0.1).buffer(0.3)), shapely.box(2, 2, 3, 3)]
    )
    x = rng.uniform(-1.5, 3.5, 50_000)
    y = rng.uniform(-1.5, 3.5, 50_000)
    coords = shapely.get_coordinates(poly)
    x[: len(coords)], y[: len(coords)] = coords[:, 0], coords[:, 1]  # vertices: on the boundary
    x[-3:], y[-3:] = [2.5, 3.0, np.nan], [2.0, 2.2, 1.0]  # on edges, NaN
    mask = points_in_polygon(poly, x, y)
    assert np.array_equal(mask, shapely.intersects_xy(poly, x, y))
    assert mask[: len(coords)].all() and mask[-3] and mask[-2] and not mask[-1]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_points_polygon_query_matches_brute_force(name):
    t = TRANSFORMS[name]
    pdf = _points_frame(seed=8)
    df = PointsModel.parse(pdf, transformations={"global": t}, npartitions=4)
    poly = shapely.MultiPolygon(
        [
            shapely.Polygon([(10, 10), (60, 15), (55, 60), (15, 50)], holes=[[(30, 30), (40, 30), (35, 40)]]),
            shapely.box(70, -20, 90, 0),
        ]
    )
    out = polygon_query(df, poly, "global").compute()
    tc = _target(pdf[["x", "y"]].to_numpy(dtype=np.float64), t, ("x", "y"))
    keep = [poly.covers(shapely.Point(*p)) for p in tc]
    expected = pdf.index[np.array(keep)]
    assert len(expected) > 0
    assert list(out.index) == list(expected)


def test_polygon_points_on_boundary():
    xs, ys = np.meshgrid(np.arange(11.0), np.arange(11.0))
    pdf = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel()})
    df = PointsModel.parse(pdf, npartitions=2)
    out = polygon_query(df, shapely.box(2, 3, 5, 6), "global").compute()
    assert len(out) == 4 * 4


def test_invalid_polygons():
    df = PointsModel.parse(_points_frame(), npartitions=2)
    with pytest.raises(TypeError, match="Polygon or MultiPolygon"):
        polygon_query(df, shapely.LineString([(0, 0), (1, 1)]), "global")
    with pytest.raises(TypeError):
        polygon_query(df, [(0, 0), (1, 0), (1, 1)], "global")
    with pytest.raises(ValueError, match="empty"):
        polygon_query(df, shapely.Polygon(), "global")
    with pytest.raises(ValueError, match="no area"):
        polygon_query(df, shapely.Polygon([(0, 0), (1, 1), (2, 2)]), "global")
    bowtie = shapely.Polygon([(0, 0), (100, 100), (100, 0), (0, 100)])
    with pytest.warns(UserWarning, match="make_valid"):
        out = polygon_query(df, bowtie, "global").compute()
    pdf = _points_frame()
    repaired = shapely.make_valid(bowtie)
    expected = pdf.index[
        shapely.intersects_xy(repaired, pdf.x.to_numpy(np.float64), pdf.y.to_numpy(np.float64))
    ]
    assert list(out.index) == list(expected)


# --------------------------------------------------------------------------------------------------- rasters
def _pixel_target(element, cs, pixel_xy):
    t = get_meta(element).transformations[cs]
    return t.apply(np.asarray(pixel_xy, dtype=np.float64), ("x", "y"))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_raster_crop_keeps_position(name):
    t = TRANSFORMS[name]
    data = np.arange(3 * 60 * 80, dtype=np.uint16).reshape(3, 60, 80)
    img = Image2DModel.parse(data, transformations={"global": t, "other": Scale([2.0, 3.0], ("x", "y"))})
    lo, hi = (20.0, 10.0), (45.0, 35.0)
    crop = bounding_box_query(img, ("x", "y"), lo, hi, "global")
    assert crop is not None and crop.sizes["x"] < 80
    # find the offset: the crop's pixel (0, 0) maps where the original's pixel (ox, oy) does
    shift = get_meta(crop).transformations["global"].transformations[0]
    ox, oy = (int(v) for v in shift.translation)
    for cs in ("global", "other"):
        np.testing.assert_allclose(_pixel_target(crop, cs, (0, 0)), _pixel_target(img, cs, (ox, oy)))
    np.testing.assert_array_equal(crop.values, data[:, oy : oy + crop.sizes["y"], ox : ox + crop.sizes["x"]])
    # every pixel whose square meets the box is in the crop, and the crop is the tightest such range
    lin, off = _matrix(t, ("x", "y"))
    inv = np.linalg.inv(lin)
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]])
    intr = (corners - off) @ inv.T
    assert ox == max(0, math.floor(intr[:, 0].min())) and oy == max(0, math.floor(intr[:, 1].min()))
    assert ox + crop.sizes["x"] == min(80, math.ceil(intr[:, 0].max()))
    assert oy + crop.sizes["y"] == min(60, math.ceil(intr[:, 1].max()))
    assert bounding_box_query(img, ("x", "y"), (1e4, 1e4), (2e4, 2e4), "global") is None


def test_raster_pixel_range_semantics():
    img = Image2DModel.parse(np.zeros((1, 20, 30), dtype=np.uint8))
    crop = bounding_box_query(img, ("x", "y"), (2, 3), (10, 7), "global")
    assert (crop.sizes["x"], crop.sizes["y"]) == (8, 4)
    crop = bounding_box_query(img, ("x", "y"), (2.5, 3.5), (2.5, 3.5), "global")
    assert (crop.sizes["x"], crop.sizes["y"]) == (1, 1)
    crop = bounding_box_query(img, ("x", "y"), (-5, -5), (100, 100), "global")
    assert (crop.sizes["x"], crop.sizes["y"]) == (30, 20)
    crop = bounding_box_query(img, ("x",), (4,), (6,), "global")
    assert (crop.sizes["x"], crop.sizes["y"]) == (2, 20)


def test_multiscale_crop():
    data = np.random.default_rng(0).integers(0, 100, (2, 64, 96)).astype(np.uint16)
    img = Image2DModel.parse(
        data, scale_factors=[2, 2], transformations={"global": Scale([0.5, 0.5], ("x", "y"))}
    )
    crop = bounding_box_query(img, ("x", "y"), (5.0, 3.0), (20.0, 12.5), "global")
    levels = raster_levels(crop)
    assert len(levels) == 3
    assert (levels[0].sizes["x"], levels[0].sizes["y"]) == (30, 19)  # x in [10, 40), y in [6, 25)
    np.testing.assert_array_equal(levels[0].values, data[:, 6:25, 10:40])
    full = raster_levels(img)
    for k, (lvl, orig) in enumerate(zip(levels, full, strict=True)):
        f = 2**k
        np.testing.assert_array_equal(
            lvl.values, orig.values[:, 6 // f : math.ceil(25 / f), 10 // f : math.ceil(40 / f)]
        )
    shift = get_meta(crop).transformations["global"].transformations[0]
    assert shift.translation == (10.0, 6.0)


def test_polygon_query_raster_mask():
    labels = np.arange(1, 401, dtype=np.int32).reshape(20, 20)
    lab = Labels2DModel.parse(labels)
    tri = shapely.Polygon([(2, 2), (18, 2), (2, 18)])
    crop = polygon_query(lab, tri, "global")
    assert crop.shape == (16, 16)
    masked = polygon_query(lab, tri, "global", clip=True).values
    yy, xx = np.mgrid[2:18, 2:18]
    inside = shapely.intersects_xy(tri, xx + 0.5, yy + 0.5)
    np.testing.assert_array_equal(masked, np.where(inside, labels[2:18, 2:18], 0))


# --------------------------------------------------------------------------------------------------- containers
def test_labels_table_filtering_and_graph():
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[2:8, 2:8] = 3
    labels[20:30, 20:30] = 7
    labels[32:38, 5:10] = 11
    lab = Labels2DModel.parse(labels, transformations={"pixels": Identity()})
    obs = pd.DataFrame({"region": pd.Categorical(["cells"] * 3), "cid": [3, 7, 11]}, index=["a", "b", "c"])
    table = TableModel.parse(ad.AnnData(obs=obs), region="cells", region_key="region", instance_key="cid")
    # points placed in "global" by a rotation; labels only in "pixels": the graph links them via "anchor"
    pts = PointsModel.parse(_points_frame(n=500), transformations={"global": Identity()}, npartitions=2)
    orphan = ShapesModel.parse(_random_polygons(n=5), transformations={"elsewhere": Identity()})
    sdata = ts.SpatialData(
        labels={"cells": lab},
        points={"pts": pts},
        shapes={"orphan": orphan},
        tables={"t": table},
        attrs={"k": 1},
    )
    out = bounding_box_query(sdata, ("x", "y"), (0, 0), (12, 12), "pixels")
    assert set(out) == {"cells", "t"}  # points have no path to "pixels"; shapes neither
    assert list(out["t"].obs["cid"]) == [3]
    assert out.attrs == {"k": 1}
    out = bounding_box_query(sdata, ("x", "y"), (0, 0), (25, 25), "pixels")
    assert list(out["t"].obs["cid"]) == [3, 7]
    out = bounding_box_query(sdata, ("x", "y"), (0, 0), (25, 25), "pixels", filter_table=False)
    assert out["t"].n_obs == 3
    # nothing kept annotates the table: it is dropped
    out = bounding_box_query(sdata, ("x", "y"), (13, 13), (15, 15), "pixels")
    assert "t" not in out and "cells" in out
    # a polygon masking labels removes the instances it masks from the table
    out = polygon_query(sdata, shapely.box(0, 0, 40, 31), "pixels", clip=True)
    assert list(out["t"].obs["cid"]) == [3, 7]


def test_synthetic_container_queries():
    sdata = ts.datasets.synthetic(n_cells=100, n_transcripts=5000, image_size=128, seed=3)
    sdata.set_transformation("transcripts", ROT45, "rotated")
    sdata.set_transformation("cell_boundaries", ROT45, "rotated")
    out = bounding_box_query(sdata, ("x", "y"), (-20, 10), (40, 70), "rotated")
    assert {"transcripts", "cell_boundaries", "table"} <= set(out)  # the others reach "rotated" via the graph
    cells = out["cell_boundaries"]
    assert set(out["table"].obs["cell_id"]) == set(cells.index)
    pts = out["transcripts"].compute()
    pdf = sdata["transcripts"].compute()
    assert list(pts.index) == list(_brute_box(pdf, ROT45, ("x", "y"), (-20, 10), (40, 70)))
    e = 0.5 * float(sdata["transcripts"].x.max().compute())
    poly = shapely.Polygon([(0, 0), (e, 0.2 * e), (0.5 * e, e)])
    out = polygon_query(sdata, poly, "global")
    assert {"morphology", "cell_labels", "transcripts", "cell_boundaries", "table"} <= set(out)
    assert set(out["table"].obs["cell_id"]) == set(out["cell_boundaries"].index)
    many = bounding_box_query(sdata, ("x", "y"), [[0, 0], [1e5, 1e5]], [[30, 30], [2e5, 2e5]], "global")
    assert len(many) == 2 and "transcripts" in many[0] and "cell_boundaries" not in many[1]


@pytest.mark.parametrize(
    ("axes", "lo", "hi", "match"),
    [
        (("x", "q"), (0, 0), (1, 1), "unknown axis"),
        (("x", "x"), (0, 0), (1, 1), "at most once"),
        (("x", "y"), (0, 0, 0), (1, 1, 1), "shape"),
        (("x", "y"), (0, 0), (1, 1, 1), "shape"),
        (("x", "y"), (2, 0), (1, 1), "min_coordinate 2.0 > max_coordinate 1.0 on axis 'x'"),
        ("xy", (0, 0), (1, 1), "sequence"),
        (("x", "y"), (np.nan, 0), (1, 1), "NaN"),
    ],
)
def test_invalid_boxes(axes, lo, hi, match):
    df = PointsModel.parse(_points_frame(n=10), npartitions=1)
    with pytest.raises(ValueError, match=match):
        bounding_box_query(df, axes, lo, hi, "global")


def test_errors_for_tables_and_missing_cs():
    df = PointsModel.parse(_points_frame(n=10), npartitions=1)
    with pytest.raises(ts.NoPathError):
        bounding_box_query(df, ("x", "y"), (0, 0), (1, 1), "nowhere")
    table = TableModel.parse(ad.AnnData(obs=pd.DataFrame(index=["a"])))
    with pytest.raises(TypeError, match="table"):
        bounding_box_query(table, ("x", "y"), (0, 0), (1, 1), "global")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bounding_box_query(df, ("x", "y"), (0, 0), (1, 1), "global")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_points_identity_box_exact_at_float_edges(dtype):
    # under an identity map the column comparisons are the whole test: bounds not representable in float32
    # (float32 rounds 0.7 and -0.3 down, 1.1 and 0.1 up) must still select exactly the points whose value lies
    # in the closed box
    lo, hi = (0.7, -0.3), (1.1, 0.1)
    vals = []
    for v in (0.7, 1.1, -0.3, 0.1):
        f = np.asarray(v, dtype=dtype)
        vals += [f, np.nextafter(f, dtype(-np.inf)), np.nextafter(f, dtype(np.inf))]
    vals = np.array(vals, dtype=dtype)
    xs, ys = np.meshgrid(vals, vals)
    pdf = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel()})
    points = PointsModel.parse(pdf, npartitions=3)
    out = bounding_box_query(points, ("x", "y"), lo, hi, "global").compute()
    x64, y64 = pdf["x"].to_numpy(np.float64), pdf["y"].to_numpy(np.float64)
    inside = (x64 >= lo[0]) & (x64 <= hi[0]) & (y64 >= lo[1]) & (y64 <= hi[1])
    assert sorted(out.index) == list(np.flatnonzero(inside))
    assert 0 < inside.sum() < len(pdf)


# ------------------------------------------------------------------------------- in-memory points fast path
def _mixed_points(n=5000, seed=11, index="range"):
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame(
        {
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n).astype(np.float32),
            "gene": pd.Categorical(rng.choice(["a", "b", "c", "d"], n)),
            "count": pd.array(rng.integers(0, 5, n), dtype="Int64"),
            "flag": rng.random(n) < 0.5,
            "label": pd.array([f"s{i % 13}" for i in range(n)], dtype="string[pyarrow]"),
        }
    )
    if index == "range":
        pdf.index = pd.RangeIndex(3, 3 + 2 * n, 2, name="row")
    elif index == "int":
        pdf.index = pd.Index(rng.permutation(n) * 5 + 1)
    else:
        pdf.index = pd.Index([f"id{i}" for i in rng.permutation(n)])
    return pdf


@pytest.mark.parametrize("index", ["range", "int", "str"])
@pytest.mark.parametrize("name", ["identity", "rot45"])
def test_in_memory_points_query_equals_pandas(index, name):
    from tissuestack.elements._points import in_memory_partitions

    pdf = _mixed_points(index=index)
    t = TRANSFORMS[name]
    df = PointsModel.parse(pdf, transformations={"global": t}, npartitions=5)
    assert in_memory_partitions(df) is not None  # the fast path applies
    lo, hi = (15.0, 25.0), (65.0, 70.0)
    out = bounding_box_query(df, ("x", "y"), lo, hi, "global")
    assert out.npartitions == 1
    res = out.compute()
    expected = pdf.loc[_brute_box(pdf, t, ("x", "y"), lo, hi)]
    assert 0 < len(expected) < len(pdf)
    if index == "str":  # dask holds string indexes as Arrow strings; the fast path follows it
        assert res.index.dtype == df._meta.index.dtype == df.compute().index.dtype
        expected.index = expected.index.astype(res.index.dtype)
    pd.testing.assert_frame_equal(res, expected)
    # the same query through dask's per-partition path (a derived frame is not in memory) agrees
    derived = PointsModel.parse(df[df["x"] > -1], transformations={"global": t})
    assert in_memory_partitions(derived) is None
    pd.testing.assert_frame_equal(bounding_box_query(derived, ("x", "y"), lo, hi, "global").compute(), res)
    # polygon queries use the same path
    roi = shapely.Polygon([(20, 20), (70, 30), (60, 80), (25, 60)])
    poly = polygon_query(df, roi, "global").compute()
    tc = _target(pdf[["x", "y"]].to_numpy(dtype=np.float64), t, ("x", "y"))
    inside = shapely.covers(roi, shapely.points(tc))
    inside_rows = pdf[inside]
    inside_rows.index = inside_rows.index.astype(res.index.dtype)
    pd.testing.assert_frame_equal(poly, inside_rows)


def test_take_rows_matches_concat_of_iloc():
    from concurrent.futures import ThreadPoolExecutor

    from tissuestack.query._points_query import take_rows

    pdf = _mixed_points(n=400, index="range")
    frames = [pdf.iloc[0:150], pdf.iloc[150:151], pdf.iloc[151:400]]
    rng = np.random.default_rng(3)
    positions = [np.sort(rng.choice(len(f), size=len(f) // 2, replace=False)) for f in frames]
    positions[1] = np.zeros(0, dtype=np.int64)  # an empty selection
    expected = pd.concat([f.iloc[p] for f, p in zip(frames, positions, strict=True)])
    with ThreadPoolExecutor(2) as pool:
        for p in (None, pool):
            got = take_rows(frames, positions, p)
            pd.testing.assert_frame_equal(got, expected)
    # a MultiIndex and an object index go through pandas
    multi = pdf.set_index([pdf.index, pdf["gene"].astype(str)])
    frames = [multi.iloc[:200], multi.iloc[200:]]
    positions = [np.arange(0, 200, 3), np.arange(0, 200, 7)]
    pd.testing.assert_frame_equal(
        take_rows(frames, positions), pd.concat([f.iloc[p] for f, p in zip(frames, positions, strict=True)])
    )
    obj = pdf.set_index(pd.Index([f"r{i}" for i in range(400)], dtype=object))
    frames = [obj.iloc[:100], obj.iloc[100:]]
    positions = [np.array([5, 1, 99]), np.arange(300)]
    pd.testing.assert_frame_equal(
        take_rows(frames, positions), pd.concat([f.iloc[p] for f, p in zip(frames, positions, strict=True)])
    )


# ------------------------------------------------------------------------- store-backed points: row-group scans
def _mixed_store(tmp_path, index, dims=2):
    pdf = _mixed_points(n=30_000, seed=21, index=index)
    if dims == 3:
        pdf["z"] = np.random.default_rng(2).uniform(0, 10, len(pdf)).astype(np.float32)
    df = PointsModel.parse(pdf, transformations={"global": ROT45}, npartitions=3, feature_key="gene")
    path = tmp_path / f"mixed_{index}_{dims}.zarr"
    ts.SpatialData(points={"pts": df}).write(path)
    return pdf, path


@pytest.mark.parametrize("index", ["range", "int", "str"])
def test_row_group_scan_equals_dask_read(tmp_path, index):
    from tissuestack.elements import set_meta
    from tissuestack.store._points import points_scan

    pdf, path = _mixed_store(tmp_path, index)
    lazy = ts.read_zarr(path)["pts"]
    scan = points_scan(lazy)
    assert scan is not None
    # every row group read directly, conformed to the frame: the same rows, columns, dtypes and index as dask's
    whole = pd.concat([scan.read(t) for t in scan.tasks(np.ones(len(scan.row_group_stats()), dtype=bool))])
    pd.testing.assert_frame_equal(whole.sort_index(), lazy.compute().sort_index())
    # queries through the scan equal those through dask's pushdown and the brute force
    derived = lazy[lazy["x"] > -1e9]
    set_meta(derived, get_meta(lazy).copy())
    rng = np.random.default_rng(0)
    for _ in range(3):
        lo = rng.uniform(-40, 40, 2)
        hi = lo + rng.uniform(5, 60, 2)
        got = bounding_box_query(lazy, ("x", "y"), lo, hi, "global")
        expected = _brute_box(pdf, ROT45, ("x", "y"), lo, hi)
        if got is None:
            assert len(expected) == 0
            continue
        got = got.compute()
        pd.testing.assert_frame_equal(
            got.sort_index(), bounding_box_query(derived, ("x", "y"), lo, hi, "global").compute().sort_index()
        )
        assert sorted(got.index.astype(str)) == sorted(expected.astype(str))
    # several boxes at once, and a column selection read back from the store
    many = bounding_box_query(lazy, ("x", "y"), [[0, 0], [20, 10]], [[30, 30], [60, 50]], "global")
    for i, m in enumerate(many):
        single = bounding_box_query(
            lazy, ("x", "y"), [[0, 0], [20, 10]][i], [[30, 30], [60, 50]][i], "global"
        )
        pd.testing.assert_frame_equal(m.compute().sort_index(), single.compute().sort_index())


def test_row_group_scan_3d_and_polygon(tmp_path):
    pdf, path = _mixed_store(tmp_path, "int", dims=3)
    lazy = ts.read_zarr(path)["pts"]
    lo, hi = (0.0, 10.0, 2.0), (40.0, 50.0, 6.0)
    got = bounding_box_query(lazy, ("x", "y", "z"), lo, hi, "global").compute()
    assert sorted(got.index) == sorted(_brute_box(pdf, ROT45, ("x", "y", "z"), lo, hi))
    roi = shapely.Polygon([(0, 0), (40, 10), (30, 50), (5, 35)])
    poly = polygon_query(lazy, roi, "global").compute()
    tc = _target(pdf[["x", "y"]].to_numpy(dtype=np.float64), ROT45, ("x", "y"))
    assert sorted(poly.index) == sorted(pdf.index[shapely.covers(roi, shapely.points(tc))])


def test_row_group_scan_of_reference_stores():
    from pathlib import Path

    from tissuestack.store._points import points_scan

    root = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
    stores = sorted(root.glob("*.zarr")) if root.exists() else []
    if not stores:
        pytest.skip("shared/fixtures/reference is absent")
    for store in stores:
        sdata = ts.read_zarr(store)
        for name, lazy in sdata.points.items():
            scan = points_scan(lazy)
            assert scan is not None, (store.name, name)
            stats = scan.row_group_stats()
            whole = pd.concat([scan.read(t) for t in scan.tasks(np.ones(len(stats), dtype=bool))])
            pd.testing.assert_frame_equal(whole, lazy.compute(), obj=f"{store.name}/{name}")
