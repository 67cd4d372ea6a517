"""Shapes aggregated by shapes: fractions, membership, statistics and transformations against shapely."""

import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely

import tissuestack as ts
from tissuestack.elements import ShapesModel, set_transformation
from tissuestack.ops._aggregate_pairs import PairInput
from tissuestack.ops._aggregate_shapes import shapes_by_shapes
from tissuestack.transforms import Affine, Identity, Scale, Sequence, Translation, affine_map

FINE = 512  # quad segments of the brute-force discs (area error ~6e-6 relative)


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def pair(values, by, transformation=None, keys=None, agg="sum", fractions=False):
    fwd = affine_map(transformation or Identity(), ("x", "y"), ("x", "y"))
    return PairInput(values, by, "values", "by", fwd, None, keys, agg, fractions, pd.Index(by.index))


def dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def cells(rng, n=300, extent=100.0):
    cx, cy = rng.uniform(0, extent, n), rng.uniform(0, extent, n)
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    r = rng.uniform(1.5, 4, (n, 1)) * (1 + 0.1 * rng.standard_normal((n, 12)))
    rings = np.stack([cx[:, None] + r * np.cos(ang), cy[:, None] + r * np.sin(ang)], axis=-1)
    geoms = shapely.make_valid(shapely.polygons(rings))
    kinds = pd.Categorical(rng.choice(["T", "B", "tumor"], n), categories=["T", "B", "tumor", "none"])
    frame = gpd.GeoDataFrame({"cell_type": kinds, "area_um": rng.uniform(10, 50, n)}, geometry=geoms)
    return ShapesModel.parse(frame)


def spots(extent=100.0, pitch=20.0, radius=6.0):
    rows = np.arange(0, extent, pitch * np.sqrt(3) / 2)
    xs, ys = [], []
    for i, y in enumerate(rows):
        x = np.arange((pitch / 2) * (i % 2), extent, pitch)
        xs.append(x)
        ys.append(np.full_like(x, y))
    return ShapesModel.parse(
        pd.DataFrame({"x": np.concatenate(xs), "y": np.concatenate(ys), "radius": radius})
    )


def fine(gdf):
    """Polygons of a shapes element; circles as fine polygons."""
    g = np.asarray(gdf.geometry.array)
    if "radius" in gdf.columns:
        return shapely.buffer(g, gdf["radius"].to_numpy(), quad_segs=FINE)
    return g


def bruteforce_weights(values, by, fractions):
    """(n_values x n_by) weights: area fraction, or 1 for a positive-area overlap."""
    v, b = fine(values), fine(by)
    inter = shapely.area(shapely.intersection(v[:, None], b[None, :]))
    if fractions:
        return inter / shapely.area(v)[:, None]
    return (inter > 1e-9).astype(float)


# ----------------------------------------------------------------------------------------------- fractions
def test_cells_by_spots_fractions_per_category(rng):
    c, s = cells(rng), spots()
    res = shapes_by_shapes(pair(c, s, keys=["cell_type"], fractions=True))
    assert res.columns == ["T", "B", "tumor", "none"] and sp.issparse(res.X)
    w = bruteforce_weights(c, s, True)
    onehot = pd.get_dummies(c["cell_type"]).to_numpy(float)
    np.testing.assert_allclose(dense(res.X), w.T @ onehot, atol=2e-4)
    assert dense(res.X)[:, 3].sum() == 0 and dense(res.X).sum() > 5
    counts = shapes_by_shapes(pair(c, s, keys=["cell_type"], agg="count", fractions=True))
    np.testing.assert_array_equal(dense(counts.X), (w > 0).T.astype(float) @ onehot)


def test_circles_by_polygons_and_circles_by_circles(rng):
    dots = ShapesModel.parse(
        pd.DataFrame(
            {"x": rng.uniform(0, 50, 80), "y": rng.uniform(0, 50, 80), "radius": rng.uniform(0.5, 5, 80)}
        )
    )
    rois = ShapesModel.parse(
        [shapely.Polygon(rng.uniform(0, 50, (6, 2))).convex_hull for _ in range(5)]
        + [shapely.MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 20, 35, 30)])]
    )
    res = shapes_by_shapes(pair(dots, rois, fractions=True))
    np.testing.assert_allclose(res.X[:, 0], bruteforce_weights(dots, rois, True).sum(axis=0), atol=1e-4)
    big = spots(50, 15, 7.0)
    res = shapes_by_shapes(pair(dots, big, fractions=True))
    np.testing.assert_allclose(res.X[:, 0], bruteforce_weights(dots, big, True).sum(axis=0), atol=1e-4)
    # a disc fully inside another counts 1, half outside a half-plane-like box counts 1/2
    one = ShapesModel.parse(pd.DataFrame({"x": [0.0, 100.0], "y": [0.0, 0.0], "radius": [1.0, 2.0]}))
    region = ShapesModel.parse(pd.DataFrame({"x": [0.5], "y": [0.0], "radius": [3.0]}))
    assert shapes_by_shapes(pair(one, region, fractions=True)).X[0, 0] == pytest.approx(1.0, abs=1e-15)
    half = ShapesModel.parse([shapely.box(100, -10, 110, 10)])
    assert shapes_by_shapes(pair(one, half, fractions=True)).X[0, 0] == pytest.approx(0.5, rel=1e-12)


def test_polygons_by_polygons_fractions_exact(rng):
    c = cells(rng, 150, 60.0)
    rois = ShapesModel.parse([shapely.box(0, 0, 30, 30), shapely.Polygon([(10, 10), (60, 20), (30, 60)])])
    res = shapes_by_shapes(pair(c, rois, keys=["cell_type"], fractions=True))
    w = bruteforce_weights(c, rois, True)
    np.testing.assert_allclose(dense(res.X), w.T @ pd.get_dummies(c["cell_type"]).to_numpy(float), rtol=1e-10)
    # many regions, few values: the tree is built on the other side, same answer
    res2 = shapes_by_shapes(pair(rois, c, fractions=True))
    np.testing.assert_allclose(
        res2.X[:, 0], bruteforce_weights(rois, c, True).sum(axis=0), rtol=1e-10, atol=1e-14
    )


# ----------------------------------------------------------------------------------------------- membership
def test_touching_is_not_membership():
    values = ShapesModel.parse(
        [shapely.box(0, 0, 1, 1), shapely.box(1.5, 0, 2.5, 1), shapely.box(5, 5, 6, 6)]
    )
    by = ShapesModel.parse([shapely.box(1, 0, 2, 1), shapely.box(6, 6, 7, 7)])  # shares an edge / a corner
    X = shapes_by_shapes(pair(values, by)).X
    np.testing.assert_array_equal(X[:, 0], [1, 0])  # only the overlapping box
    circles = ShapesModel.parse(
        pd.DataFrame({"x": [-1.0, 3.5, 1.0], "y": [0.5, 0.5, 9.0], "radius": [1.0, 1.0, 1.0]})
    )
    np.testing.assert_array_equal(shapes_by_shapes(pair(circles, values)).X[:, 0], [0, 0, 0])  # tangent
    np.testing.assert_array_equal(shapes_by_shapes(pair(values, circles)).X[:, 0], [0, 0, 0])
    tangent = ShapesModel.parse(pd.DataFrame({"x": [1.0, 3.0], "y": [9.0, 9.0], "radius": [3.0, 1.0]}))
    np.testing.assert_array_equal(
        shapes_by_shapes(pair(circles, tangent)).X[:, 0], [1, 0]
    )  # inside / tangent
    frac = shapes_by_shapes(pair(values, by, fractions=True)).X
    np.testing.assert_allclose(frac[:, 0], [0.5, 0])


def test_membership_counts_match_bruteforce(rng):
    c, s = cells(rng), spots()
    res = shapes_by_shapes(pair(c, s, keys=["cell_type"]))
    w = bruteforce_weights(c, s, False)
    np.testing.assert_array_equal(dense(res.X), w.T @ pd.get_dummies(c["cell_type"]).to_numpy(float))
    count = shapes_by_shapes(pair(c, s))
    assert count.columns == ["count"]
    np.testing.assert_array_equal(count.X[:, 0], w.sum(axis=0))


# ----------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("fractions", [False, True])
@pytest.mark.parametrize("agg", ["sum", "mean", "min", "max", "count", "std"])
def test_numeric_statistics(rng, agg, fractions):
    c, s = cells(rng), spots()
    c.loc[c.index[:10], "area_um"] = np.nan
    res = shapes_by_shapes(pair(c, s, keys=["area_um", "cell_type"][:1], agg=agg, fractions=fractions))
    w = bruteforce_weights(c, s, fractions)
    v = c["area_um"].to_numpy()
    ok = ~np.isnan(v)
    expected = []
    for j in range(len(s)):
        m = (w[:, j] > 1e-9) & ok
        wj, vj = w[m, j], v[m]
        if agg == "sum":
            e = (wj * vj).sum()
        elif agg == "count":
            e = wj.sum()
        elif not m.any():
            e = np.nan
        elif agg == "mean":
            e = (wj * vj).sum() / wj.sum()
        elif agg == "min":
            e = vj.min()
        elif agg == "max":
            e = vj.max()
        else:
            mean = (wj * vj).sum() / wj.sum()
            denom = wj.sum() - (wj**2).sum() / wj.sum()
            e = np.sqrt((wj * (vj - mean) ** 2).sum() / denom) if m.sum() > 1 else np.nan
            if not fractions and m.sum() > 1:
                assert e == pytest.approx(np.std(vj, ddof=1))
        expected.append(e)
    np.testing.assert_allclose(res.X[:, 0], expected, rtol=1e-3 if fractions else 1e-12, atol=1e-9)
    assert np.isfinite(res.X[:, 0]).sum() > 5


def test_errors(rng):
    c, s = cells(rng, 20), spots()
    c["name"] = "x"
    with pytest.raises(TypeError, match=r"'name'.*numeric or categorical"):
        shapes_by_shapes(pair(c, s, keys=["name"]))
    with pytest.raises(ValueError, match="categorical key 'cell_type'"):
        shapes_by_shapes(pair(c, s, keys=["cell_type"], agg="mean"))
    with pytest.raises(ValueError, match="one categorical key at a time"):
        shapes_by_shapes(pair(c, s, keys=["cell_type", "area_um"]))
    with pytest.raises(KeyError, match="no column 'nope'"):
        shapes_by_shapes(pair(c, s, keys=["nope"]))
    with pytest.raises(ValueError, match="agg_func must be 'sum' or 'count'"):
        shapes_by_shapes(pair(c, s, agg="mean"))
    bowtie = gpd.GeoDataFrame(geometry=[shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])])  # invalid
    with pytest.raises(ValueError, match="invalid"):
        shapes_by_shapes(pair(bowtie, ShapesModel.parse([shapely.box(2, 2, 8, 3)]), fractions=True))


# ----------------------------------------------------------------------------------------------- transformations
def test_transformations_similarity_and_shear(rng):
    c = cells(rng, 200)
    s_local = spots()  # spots in their own frame, placed by a transformation
    to_values = Sequence([Scale([0.5, 0.5], ("x", "y")), Translation([10.0, -4.0], ("x", "y"))])
    res = shapes_by_shapes(pair(c, s_local, to_values.inverse(), keys=["cell_type"], fractions=True))
    placed = ShapesModel.parse(
        pd.DataFrame({"x": s_local.geometry.x * 0.5 + 10, "y": s_local.geometry.y * 0.5 - 4, "radius": 3.0})
    )
    np.testing.assert_allclose(
        dense(res.X),
        dense(shapes_by_shapes(pair(c, placed, keys=["cell_type"], fractions=True)).X),
        atol=1e-9,
    )
    # a shear: the spots are ellipses in the cells' frame; the cells are mapped into the spots' frame instead
    shear = Affine(np.array([[1.0, 0.3, 2.0], [0.0, 0.8, 1.0], [0, 0, 1]]), ("x", "y"), ("x", "y"))
    res = shapes_by_shapes(pair(c, s_local, shear.inverse(), keys=["cell_type"], fractions=True))
    ellipses = shapely.transform(
        fine(s_local), lambda xy: xy @ np.array([[1.0, 0.3], [0.0, 0.8]]).T + [2.0, 1.0]
    )
    ref = ShapesModel.parse(list(ellipses))
    expected = dense(shapes_by_shapes(pair(c, ref, keys=["cell_type"], fractions=True)).X)
    np.testing.assert_allclose(dense(res.X), expected, atol=2e-4)
    assert dense(res.X).sum() > 5


def test_through_the_front_end(rng):
    c, s = cells(rng), spots()
    set_transformation(c, Scale([2.0, 2.0], ("x", "y")), "global")
    s2 = ShapesModel.parse(pd.DataFrame({"x": s.geometry.x * 2, "y": s.geometry.y * 2, "radius": 12.0}))
    sdata = ts.SpatialData()
    sdata["cells"] = c
    sdata["spots"] = s2
    table = ts.aggregate("cells", "spots", sdata=sdata, value_key="cell_type", fractions=True)
    assert list(table.var_names) == ["T", "B", "tumor", "none"]
    assert table.n_obs == len(s2)
    expected = shapes_by_shapes(pair(c, s, keys=["cell_type"], fractions=True))
    np.testing.assert_allclose(dense(table.X), dense(expected.X), atol=1e-9)
    assert math.isclose(float(table.X.sum()), float(expected.X.sum()), rel_tol=1e-12)


def test_circles_by_circles_through_a_shear(rng):
    dots = ShapesModel.parse(
        pd.DataFrame(
            {"x": rng.uniform(0, 60, 40), "y": rng.uniform(0, 60, 40), "radius": rng.uniform(1, 6, 40)}
        )
    )
    big = spots(80, 20, 8.0)
    shear = np.array([[1.0, 0.4], [0.1, 0.7]])
    t = Affine(np.array([[1.0, 0.4, 3.0], [0.1, 0.7, -2.0], [0, 0, 1]]), ("x", "y"), ("x", "y"))
    res = shapes_by_shapes(pair(dots, big, t, fractions=True))  # the dots become 512-gons of the same area
    ellipses = shapely.transform(fine(dots), lambda xy: xy @ shear.T + [3.0, -2.0])
    inter = shapely.area(shapely.intersection(ellipses[:, None], fine(big)[None, :]))
    expected = (inter / shapely.area(ellipses)[:, None]).sum(axis=0)
    np.testing.assert_allclose(res.X[:, 0], expected, atol=3e-4)
    assert res.X.sum() > 3
