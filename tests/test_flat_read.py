"""Large polygon files read straight into flat coordinate arrays (store/_shapes.py ``_read_in_batches``), and the
geometry array over those arrays (elements/_wkb_array.py ``WKBGeometryArray.from_flat``)."""

from __future__ import annotations

import pickle

import geopandas as gpd
import geopandas.testing as gt
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely import MultiPolygon, Point, Polygon

import tissuestack as ts
from tissuestack.elements import ShapesModel
from tissuestack.elements._wkb_array import WKBGeometryArray
from tissuestack.kernels._ragged import FlatBuilder, from_shapely, ranges
from tissuestack.ops._shapes_flat import flat_geometry
from tissuestack.store import _shapes as store_shapes

SQUARE_WITH_HOLE = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], holes=[[(1, 1), (2, 1), (2, 2), (1, 2)]])
TRIANGLE = Polygon([(5, 5), (7, 5), (6, 7)])
CONCAVE = Polygon([(0, 0), (3, 0), (3, 3), (2, 1), (1, 3), (0, 3)])
GEOMS = [
    SQUARE_WITH_HOLE,
    MultiPolygon([TRIANGLE, CONCAVE]),
    Polygon(),
    CONCAVE,
    MultiPolygon(),
    shapely.affinity.translate(TRIANGLE, 10, 3),
    MultiPolygon([SQUARE_WITH_HOLE]),
]
STORED = [g for g in GEOMS if not g.is_empty]  # shapes elements hold no empty geometries


@pytest.fixture
def flat_reads(monkeypatch):
    """Every WKB column counts as large, in batches of 2 rows (pieces and batch borders everywhere)."""
    monkeypatch.setattr(store_shapes, "_FLAT_READ_BYTES", -1)
    monkeypatch.setattr(store_shapes, "_BATCH_ROWS", 2)


def _store(tmp_path, geoms, **columns):
    gdf = gpd.GeoDataFrame(
        {"kind": [f"k{i % 3}" for i in range(len(geoms))], **columns},
        geometry=list(geoms),
        index=pd.Index([f"cell-{i}" for i in range(len(geoms))]),
    )
    cells = ShapesModel.parse(gdf)
    ts.SpatialData(shapes={"cells": cells}).write(tmp_path / "s.zarr")
    return ts.read_zarr(tmp_path / "s.zarr"), cells


def test_ranges_and_take_match_shapely():
    np.testing.assert_array_equal(ranges(np.array([5, 0, 2]), np.array([2, 0, 3])), [5, 6, 2, 3, 4])
    flat = from_shapely(np.array(GEOMS, dtype=object))
    for idx in ([6, 0, 3, 3, 1], [], [2, 4], [-1, 1, -1]):
        taken = flat.take(np.array(idx, dtype=np.int64))
        expected = [None if i < 0 else GEOMS[i] for i in idx]
        got = taken.to_shapely()
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert (g is None and e is None) or (shapely.equals_exact(g, e) and g.geom_type == e.geom_type)


def test_builder_appends_pieces_in_order():
    builder = FlatBuilder(coord_capacity=3)  # too small: it grows
    for part in (GEOMS[:3], GEOMS[3:4], GEOMS[4:]):
        builder.add(from_shapely(np.array(part, dtype=object)))
    whole = builder.finish()
    expected = from_shapely(np.array(GEOMS, dtype=object))
    for name in ("coords", "ring_offsets", "part_offsets", "geom_offsets", "type_ids"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(expected, name))
    with pytest.raises(ValueError, match="polygons"):
        builder.add(from_shapely(np.array([Point(0, 0)], dtype=object)))


def test_large_polygon_files_are_read_as_flat_arrays(tmp_path, flat_reads):
    sdata, cells = _store(tmp_path, STORED, score=np.arange(len(STORED), dtype=float))
    element = sdata["cells"]
    array = element.geometry.array
    assert isinstance(array, WKBGeometryArray)
    assert array.flat is not None and array.wkb is None and not array.is_decoded
    assert flat_geometry(element) is array.flat  # no second copy
    np.testing.assert_array_equal(array.isna(), [False] * len(STORED))
    np.testing.assert_array_equal(array.header_types()[0], shapely.get_type_id(np.array(STORED, dtype=object)))
    assert list(element.columns) == list(cells.columns)  # the geometry column where the file has it
    sub = element.iloc[[4, 0]]
    assert isinstance(sub.geometry.array, WKBGeometryArray) and sub.geometry.array.flat is not None
    assert shapely.equals_exact(sub.geometry.iloc[0], STORED[4])
    assert isinstance(element.geometry.array[1:3], WKBGeometryArray)
    assert shapely.equals_exact(element.geometry.array[-1], STORED[-1])
    assert element.geometry.array[-1].geom_type == "MultiPolygon"
    filled = array.take(np.array([1, -1]), allow_fill=True)
    assert filled[1] is None and shapely.equals_exact(filled[0], STORED[1])
    with pytest.raises(IndexError):
        array.take(np.array([len(STORED)]))
    gt.assert_geodataframe_equal(element, cells)  # the geometries, once asked for: types and coordinates exact
    back = pickle.loads(pickle.dumps(element))
    gt.assert_geodataframe_equal(back, cells)


def test_flat_arrays_are_forgotten_when_written_to(tmp_path, flat_reads):
    sdata, _cells = _store(tmp_path, STORED)
    element = sdata["cells"]
    first = flat_geometry(element)
    element.geometry.array[0] = TRIANGLE
    assert element.geometry.array.flat is None
    again = flat_geometry(element)
    assert again is not first
    np.testing.assert_array_equal(again.bounds[0], TRIANGLE.bounds)


def test_copy_shares_the_arrays_and_stays_lazy(tmp_path, flat_reads):
    sdata, cells = _store(tmp_path, STORED)
    copied = sdata["cells"].copy()
    assert copied.geometry.array.flat is sdata["cells"].geometry.array.flat
    gt.assert_geodataframe_equal(copied, cells)


@pytest.mark.parametrize(
    "geoms",
    [
        [shapely.force_3d(TRIANGLE, 2.0), CONCAVE, SQUARE_WITH_HOLE],  # z in the second batch's neighbour
        [TRIANGLE, CONCAVE, shapely.force_3d(SQUARE_WITH_HOLE, 1.0)],  # z only in a later batch
    ],
    ids=["z first", "z later"],
)
def test_z_polygons_keep_their_wkb(tmp_path, flat_reads, geoms):
    sdata, cells = _store(tmp_path, geoms)
    array = sdata["cells"].geometry.array
    assert array.flat is None and array.wkb is not None
    assert shapely.has_z(np.asarray(array)).any()
    gt.assert_geodataframe_equal(sdata["cells"], cells)


def test_circles_keep_their_wkb(tmp_path, flat_reads):
    spots = ShapesModel.parse(np.array([[1.0, 1.0], [6.0, 6.0], [2.0, 9.0]]), geometry=0, radius=np.ones(3))
    ts.SpatialData(shapes={"spots": spots}).write(tmp_path / "c.zarr")
    element = ts.read_zarr(tmp_path / "c.zarr")["spots"]
    assert element.geometry.array.flat is None and element.geometry.array.wkb is not None
    gt.assert_geodataframe_equal(element, spots)


def test_small_files_keep_their_wkb(tmp_path):
    sdata, cells = _store(tmp_path, STORED)
    array = sdata["cells"].geometry.array
    assert array.wkb is not None and array.flat is None
    gt.assert_geodataframe_equal(sdata["cells"], cells)


def test_flat_read_gives_the_same_aggregation_and_query(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 200, size=(60, 2))
    geoms = [shapely.Point(x, y).buffer(4 + (i % 3), quad_segs=3) for i, (x, y) in enumerate(centres)]
    geoms[7] = MultiPolygon([geoms[7], shapely.affinity.translate(geoms[7], 20, 0)])
    xy = rng.uniform(0, 200, size=(5000, 2))
    points = ts.elements.PointsModel.parse(
        pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "gene": pd.Categorical(rng.choice(["a", "b"], 5000))}),
        feature_key="gene",
    )
    gdf = gpd.GeoDataFrame(geometry=geoms, index=pd.Index([f"c{i}" for i in range(len(geoms))]))
    sdata = ts.SpatialData(shapes={"cells": ShapesModel.parse(gdf)}, points={"tx": points})
    sdata.write(tmp_path / "a.zarr")

    def run():
        s = ts.read_zarr(tmp_path / "a.zarr")
        counts = ts.aggregate("tx", "cells", sdata=s, value_key="gene", agg_func="count")
        box = ts.bounding_box_query(
            s["cells"], axes=("x", "y"), min_coordinate=[50, 50], max_coordinate=[120, 150],
            target_coordinate_system="global",
        )
        return s, np.asarray(counts.X.todense() if hasattr(counts.X, "todense") else counts.X), box

    _s, wkb_counts, wkb_box = run()
    monkeypatch.setattr(store_shapes, "_FLAT_READ_BYTES", -1)
    monkeypatch.setattr(store_shapes, "_BATCH_ROWS", 7)
    s, flat_counts, flat_box = run()
    assert s["cells"].geometry.array.flat is not None
    np.testing.assert_array_equal(flat_counts, wkb_counts)
    assert wkb_counts.sum() > 0
    gt.assert_geodataframe_equal(flat_box, wkb_box)
