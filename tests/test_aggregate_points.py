"""Points aggregated by shapes and by labels (counts per category, numeric statistics), compared with brute-force
versions, in several coordinate frames, partitionings, lazy labels and under a dask.distributed cluster."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import tissuestack as ts

GENES = ["a", "b", "c", "d", "e"]


def _points(
    rng: np.random.Generator, n: int, *, extent: float = 100.0, z: bool = False, npartitions: int = 3
):
    frame = pd.DataFrame(
        {
            "x": rng.uniform(-5, extent + 5, n),
            "y": rng.uniform(-5, extent + 5, n),
            "gene": pd.Categorical(rng.choice(GENES, n), categories=GENES),
            "intensity": rng.normal(10, 3, n),
            "count_i": rng.integers(0, 5, n),
        }
    )
    frame.loc[frame.index[:7], "intensity"] = np.nan
    if z:
        frame["z"] = rng.uniform(0, 4, n)
    return frame, ts.PointsModel.parse(frame, feature_key="gene", npartitions=npartitions)


def _polygons(rng: np.random.Generator, n: int, extent: float = 100.0) -> gpd.GeoDataFrame:
    ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    c = rng.uniform(5, extent - 5, (n, 2))
    r = rng.uniform(2, 7, (n, 1))
    rings = np.stack([c[:, :1] + r * np.cos(ang), c[:, 1:] + r * np.sin(ang)], -1)
    geoms = shapely.polygons(rings)
    geoms[0] = shapely.MultiPolygon([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)])
    geoms[1] = shapely.Polygon(
        [(40, 40), (80, 40), (80, 80), (40, 80)], [[(50, 50), (70, 50), (70, 70), (50, 70)]]
    )
    index = pd.Index([f"cell_{i}" for i in range(n)])
    return ts.ShapesModel.parse(gpd.GeoDataFrame({"kind": np.arange(n)}, geometry=geoms, index=index))


def _brute_members(geoms, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point, region) pairs with shapely (random points: boundary hits have probability zero)."""
    tree = shapely.STRtree(np.asarray(geoms))
    return tree.query(shapely.points(x, y), predicate="intersects")


def _counts(pi: np.ndarray, gi: np.ndarray, codes: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    out = np.zeros((n_rows, n_cols), dtype=np.int64)
    np.add.at(out, (gi, codes[pi]), 1)
    return out


# ------------------------------------------------------------------------------------------------------------
# points -> shapes
# ------------------------------------------------------------------------------------------------------------


def test_counts_per_gene_by_polygons_match_brute_force():
    rng = np.random.default_rng(0)
    frame, points = _points(rng, 20_000)
    cells = _polygons(rng, 40)
    cells.iloc[5:7, cells.columns.get_loc("kind")] = 0
    adata = ts.aggregate(points, cells, value_key="gene", agg_func="count")
    pi, gi = _brute_members(cells.geometry.values, frame.x.to_numpy(), frame.y.to_numpy())
    expected = _counts(pi, gi, frame.gene.cat.codes.to_numpy(), len(cells), len(GENES))
    assert adata.obs_names.tolist() == cells.index.tolist()
    assert adata.var_names.tolist() == GENES
    assert adata.X.format == "csr" and adata.X.dtype == np.int32
    assert np.array_equal(adata.X.toarray(), expected)
    assert expected.sum() > 1000 and (expected.sum(axis=1) > 0).all()
    # "sum" of a categorical key counts the same; without value_key the feature key is used
    same = ts.aggregate(points, cells, agg_func="sum")
    assert np.array_equal(same.X.toarray(), expected)


@pytest.mark.parametrize("agg_func", ["sum", "mean", "min", "max", "count", "std"])
def test_numeric_statistics_match_pandas(agg_func):
    rng = np.random.default_rng(1)
    frame, points = _points(rng, 8_000)
    cells = _polygons(rng, 30)
    adata = ts.aggregate(points, cells, value_key=["intensity", "count_i"], agg_func=agg_func)
    pi, gi = _brute_members(cells.geometry.values, frame.x.to_numpy(), frame.y.to_numpy())
    joined = frame.iloc[pi][["intensity", "count_i"]].assign(region=gi)
    expected = joined.groupby("region")[["intensity", "count_i"]].agg(agg_func).reindex(range(len(cells)))
    if agg_func in ("sum", "count"):
        expected = expected.fillna(0)
    assert adata.var_names.tolist() == ["intensity", "count_i"]
    assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.float64
    np.testing.assert_allclose(adata.X, expected.to_numpy(dtype=float), rtol=1e-9, atol=1e-12)


def test_circles_overlaps_and_no_value_key():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"x": rng.uniform(0, 50, 5000), "y": rng.uniform(0, 50, 5000)})
    points = ts.PointsModel.parse(frame, npartitions=2)
    centres = np.array([[10.0, 10.0], [14.0, 10.0], [40.0, 40.0], [25.0, 25.0]])
    radius = np.array([5.0, 5.0, 3.0, 0.5])
    spots = ts.ShapesModel.parse(centres, radius=radius)
    adata = ts.aggregate(points, spots)  # the number of points per circle (overlapping circles both count)
    d2 = (frame.x.to_numpy()[:, None] - centres[:, 0]) ** 2 + (
        frame.y.to_numpy()[:, None] - centres[:, 1]
    ) ** 2
    expected = (d2 <= radius**2).sum(axis=0)
    assert adata.var_names.tolist() == ["count"]
    assert adata.X[:, 0].tolist() == expected.tolist()
    assert ((d2[:, 0] <= 25) & (d2[:, 1] <= 25)).sum() > 0  # some points are in both overlapping circles
    # a point exactly on a circle is inside (closed disks): (15, 10) and (10, 15) are on circle 0, (9, 10) on
    # circle 1 and inside circle 0
    on = ts.PointsModel.parse(pd.DataFrame({"x": [15.0, 10.0, 9.0], "y": [10.0, 15.0, 10.0]}))
    assert ts.aggregate(on, spots).X[:2, 0].tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match="agg_func must be 'count' or 'sum'"):
        ts.aggregate(points, spots, agg_func="mean")


def test_shared_edges_count_once_and_points_exactly_on_vertices():
    # a 3 x 3 grid of unit squares: points on shared edges and vertices count in exactly one square
    squares = ts.ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[shapely.box(i, j, i + 1, j + 1) for j in range(3) for i in range(3)])
    )
    g = np.arange(0, 3.01, 0.5)
    gx, gy = np.meshgrid(g, g)
    points = ts.PointsModel.parse(pd.DataFrame({"x": gx.ravel(), "y": gy.ravel()}))
    counts = ts.aggregate(points, squares).X[:, 0]
    inside = (gx.ravel() < 3) & (gy.ravel() < 3)
    assert counts.sum() == inside.sum()  # each point at most once; the top and right outer edges are out
    assert counts.tolist() == [4.0] * 9


def test_3d_points_transformations_and_partitions():
    rng = np.random.default_rng(3)
    frame, points = _points(rng, 10_000, z=True, npartitions=4)
    cells = _polygons(rng, 25)
    # the points live in a rotated, scaled frame; the cells in pixels scaled to microns
    rot = np.array([[0.6, -0.8, 0.0, 20.0], [0.8, 0.6, 0.0, -10.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    ts.set_transformation(points, ts.Affine(rot, ("x", "y", "z"), ("x", "y", "z")), "global")
    ts.set_transformation(cells, ts.Scale([0.5, 0.5], ("x", "y")), "global")
    adata = ts.aggregate(points, cells, value_key="gene", agg_func="count")
    xyz = frame[["x", "y", "z"]].to_numpy()
    glob = xyz @ rot[:3, :3].T + rot[:3, 3]
    cells_global = shapely.transform(np.asarray(cells.geometry.values), lambda c: c * 0.5)
    pi, gi = _brute_members(cells_global, glob[:, 0], glob[:, 1])
    expected = _counts(pi, gi, frame.gene.cat.codes.to_numpy(), len(cells), len(GENES))
    assert expected.sum() > 100
    assert np.array_equal(adata.X.toarray(), expected)
    # the same call on one partition, and with a tiny grid budget (most cells mixed), gives the same counts
    one = ts.PointsModel.parse(frame, feature_key="gene", npartitions=1)
    ts.set_transformation(one, ts.Affine(rot, ("x", "y", "z"), ("x", "y", "z")), "global")
    coarse = ts.aggregate(one, cells, value_key="gene", agg_func="count", options={"max_grid_cells": 16})
    assert np.array_equal(coarse.X.toarray(), expected)


def test_points_from_a_store_stream(tmp_path):
    rng = np.random.default_rng(4)
    _, points = _points(rng, 30_000)
    cells = _polygons(rng, 20)
    sdata = ts.SpatialData(points={"tx": points}, shapes={"cells": cells})
    sdata.write(tmp_path / "s.zarr")
    back = ts.read_zarr(tmp_path / "s.zarr")
    adata = ts.aggregate("tx", "cells", sdata=back, agg_func="count")
    assert np.array_equal(adata.X.toarray(), ts.aggregate(points, cells, agg_func="count").X.toarray())
    assert adata.uns["aggregation"]["values"] == "tx"


# ------------------------------------------------------------------------------------------------------------
# points -> labels
# ------------------------------------------------------------------------------------------------------------


def _labels2d(rng: np.random.Generator) -> np.ndarray:
    lab = np.zeros((60, 80), dtype=np.int32)
    for k, (r, c) in enumerate(rng.integers(0, 55, (12, 2)), start=1):
        lab[r : r + 8, c : c + 10] = k * 7  # sparse, non-contiguous ids
    return lab


def test_points_by_labels_2d_matches_floor_lookup():
    rng = np.random.default_rng(5)
    lab = _labels2d(rng)
    labels = ts.Labels2DModel.parse(
        lab, dims=("y", "x"), transformations={"global": ts.Scale([0.5, 0.5], ("x", "y"))}
    )
    frame = pd.DataFrame(
        {
            "x": rng.uniform(-2, 42, 20_000),
            "y": rng.uniform(-2, 32, 20_000),
            "gene": pd.Categorical(rng.choice(GENES, 20_000), categories=GENES),
        }
    )
    points = ts.PointsModel.parse(frame, feature_key="gene", npartitions=3)
    adata = ts.aggregate(points, labels, value_key="gene", agg_func="count")
    col, row = np.floor(frame.x.to_numpy() / 0.5), np.floor(frame.y.to_numpy() / 0.5)
    ok = (col >= 0) & (col < 80) & (row >= 0) & (row < 60)
    values = np.zeros(len(frame), dtype=np.int64)
    values[ok] = lab[row[ok].astype(int), col[ok].astype(int)]
    ids = np.unique(lab[lab != 0])
    assert adata.obs_names.tolist() == [str(i) for i in ids]
    assert adata.obs["instance_id"].dtype == lab.dtype
    keep = values != 0
    rows = np.searchsorted(ids, values[keep])
    expected = np.zeros((len(ids), len(GENES)), dtype=np.int64)
    np.add.at(expected, (rows, frame.gene.cat.codes.to_numpy()[keep]), 1)
    assert np.array_equal(adata.X.toarray(), expected)
    # lazy labels read chunk by chunk for each partition give the same result; so does a multiscale raster
    lazy = ts.Labels2DModel.parse(da.from_array(lab, chunks=(16, 24)), dims=("y", "x"),
                                  transformations={"global": ts.Scale([0.5, 0.5], ("x", "y"))})  # fmt: skip
    chunked = ts.aggregate(points, lazy, agg_func="count", options={"labels_in_memory_bytes": 0})
    assert np.array_equal(chunked.X.toarray(), expected)
    multi = ts.Labels2DModel.parse(lab, dims=("y", "x"), scale_factors=[2],
                                   transformations={"global": ts.Scale([0.5, 0.5], ("x", "y"))})  # fmt: skip
    assert np.array_equal(ts.aggregate(points, multi, agg_func="count").X.toarray(), expected)
    # numeric: mean x per label
    mean_x = ts.aggregate(points, labels, value_key="x", agg_func="mean")
    exp = pd.Series(frame.x.to_numpy()[keep]).groupby(rows).mean().reindex(range(len(ids)))
    np.testing.assert_allclose(mean_x.X[:, 0], exp.to_numpy())


def test_points_by_labels_3d():
    rng = np.random.default_rng(6)
    lab = rng.integers(0, 6, (4, 10, 12)).astype(np.uint16)
    labels = ts.Labels3DModel.parse(lab, dims=("z", "y", "x"))
    p = rng.uniform(-1, 13, (5_000, 3))
    points = ts.PointsModel.parse(pd.DataFrame(p, columns=["x", "y", "z"]), npartitions=2)
    adata = ts.aggregate(points, labels)
    ok = (p[:, 0] < 12) & (p[:, 1] < 10) & (p[:, 2] < 4) & (p >= 0).all(axis=1)
    values = np.zeros(len(p), dtype=np.int64)
    values[ok] = lab[p[ok, 2].astype(int), p[ok, 1].astype(int), p[ok, 0].astype(int)]
    ids = np.unique(lab[lab != 0])
    expected = np.array([(values == i).sum() for i in ids], dtype=float)
    assert adata.obs_names.tolist() == [str(i) for i in ids]
    assert adata.X[:, 0].tolist() == expected.tolist()
    flat = ts.PointsModel.parse(pd.DataFrame(p[:, :2], columns=["x", "y"]))
    with pytest.raises(ValueError, match="2D element cannot be aggregated by 3D regions"):
        ts.aggregate(flat, labels)


# ------------------------------------------------------------------------------------------------------------
# dask.distributed
# ------------------------------------------------------------------------------------------------------------


def test_identical_results_under_a_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(7)
    _, points = _points(rng, 12_000, npartitions=4)
    cells = _polygons(rng, 30)
    lab = _labels2d(rng)
    labels = ts.Labels2DModel.parse(da.from_array(lab, chunks=(32, 32)), dims=("y", "x"))
    local = {
        "counts": ts.aggregate(points, cells, value_key="gene", agg_func="count").X.toarray(),
        "mean": ts.aggregate(points, cells, value_key="intensity", agg_func="std").X,
        "labels": ts.aggregate(points, labels, options={"labels_in_memory_bytes": 0}).X.toarray(),
    }
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c,
        distributed.Client(c),
    ):
        remote = {
            "counts": ts.aggregate(points, cells, value_key="gene", agg_func="count").X.toarray(),
            "mean": ts.aggregate(points, cells, value_key="intensity", agg_func="std").X,
            "labels": ts.aggregate(points, labels, options={"labels_in_memory_bytes": 0}).X.toarray(),
        }
    assert np.array_equal(local["counts"], remote["counts"]) and local["counts"].sum() > 0
    np.testing.assert_allclose(local["mean"], remote["mean"], rtol=1e-12)
    assert np.array_equal(local["labels"], remote["labels"]) and local["labels"].sum() > 0


def test_region_grid_reused_for_the_same_regions_and_rebuilt_when_they_change():
    import gc
    import weakref

    from tissuestack.elements import record_of

    def grid_of(shapes):
        return record_of(shapes).peek("region-grid")

    rng = np.random.default_rng(5)
    polys = gpd.GeoDataFrame(
        geometry=[shapely.box(x, y, x + 8, y + 8) for x, y in rng.uniform(0, 90, (30, 2))]
    )
    regions = ts.ShapesModel.parse(polys)
    pts = ts.PointsModel.parse(
        pd.DataFrame({"x": rng.uniform(0, 100, 2000), "y": rng.uniform(0, 100, 2000),
                      "g": pd.Categorical(rng.choice(["a", "b"], 2000))}),
        feature_key="g",
    )  # fmt: skip
    first = ts.aggregate(pts, regions, agg_func="count")
    grid = grid_of(regions)
    assert grid is not None
    again = ts.aggregate(pts, regions, value_key="g", agg_func="sum")
    assert grid_of(regions) is grid  # same element, same geometry: burned once
    assert (first.X != again.X).nnz == 0
    moved = regions.copy()
    moved.geometry = moved.geometry.translate(5.0, 0.0)
    moved = ts.ShapesModel.parse(moved)
    shifted = ts.aggregate(pts, moved, agg_func="count")
    assert grid_of(moved) is not grid
    regions.geometry = regions.geometry.translate(1.0, 0.0)  # replaced in place on the same element
    ts.aggregate(pts, regions, agg_func="count")
    assert grid_of(regions) is not grid
    xy = np.column_stack([pts["x"].compute(), pts["y"].compute()])
    expected = [int(shapely.contains_xy(g, xy[:, 0], xy[:, 1]).sum()) for g in moved.geometry]
    assert np.asarray(shifted.X.sum(axis=1)).ravel().tolist() == expected
    dead = weakref.ref(grid_of(moved))
    del moved, shifted
    gc.collect()
    assert dead() is None  # the cache does not keep a dead element's grid
