"""Aggregating points read from a store through the element's source (row groups read as arrays with pyarrow),
for our stores and for foreign-written Parquet (plain string gene column, unsorted rows, other row groups,
``__null_dask_index__``): the same results as the in-memory (dask) path."""

from __future__ import annotations

import glob

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

import tissuestack as ts
from tissuestack.store._points import PointsScan

GENES = [f"g{i:02d}" for i in range(12)]


def _data(seed=0, n=40_000):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "z": rng.uniform(0, 5, n),
            "gene": pd.Categorical(rng.choice(GENES, n), categories=GENES),
            "qv": rng.uniform(0, 40, n),
        }
    )
    star = []
    for cx, cy in rng.uniform(5, 95, (40, 2)):
        angles = np.linspace(0, 2 * np.pi, 17)[:-1]
        radii = np.where(np.arange(16) % 2 == 0, 5.0, 2.0)  # concave stars
        star.append(shapely.Polygon(np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])))
    star[0] = shapely.MultiPolygon([star[0], shapely.box(0, 0, 3, 3)])
    ids = [f"cell-{i:03d}" for i in rng.permutation(40)]
    cells = ts.ShapesModel.parse(gpd.GeoDataFrame(geometry=star, index=pd.Index(ids)))
    return frame, cells


def _foreign(store, frame):
    """Replace the store's Parquet files by ones as another writer makes them: plain string gene column (the
    pandas metadata still says categorical), shuffled rows, 3 files, 7k-row groups, a ``__null_dask_index__``."""
    folder = glob.glob(f"{store}/points/tx/points.parquet")[0]
    for f in glob.glob(f"{folder}/*.parquet"):
        pd.io.common.os.remove(f)
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    for i, part in enumerate(np.array_split(np.arange(len(shuffled)), 3)):
        sub = shuffled.iloc[part].rename_axis("__null_dask_index__")
        table = pa.Table.from_pandas(sub, preserve_index=True)
        j = table.schema.get_field_index("gene")
        table = table.set_column(j, "gene", table.column("gene").cast(pa.string()))
        pq.write_table(table, f"{folder}/part.{i}.parquet", row_group_size=7_000)


@pytest.fixture(params=["ours", "foreign"])
def stored(request, tmp_path):
    frame, cells = _data()
    pts = ts.PointsModel.parse(frame, feature_key="gene")
    ts.SpatialData(points={"tx": pts}, shapes={"cells": cells}).write(tmp_path / "s.zarr")
    if request.param == "foreign":
        _foreign(tmp_path / "s.zarr", frame)
    return tmp_path / "s.zarr", pts, cells


def _reads(monkeypatch):
    calls = []
    original = PointsScan.read_arrays

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PointsScan, "read_arrays", counting)
    return calls


def test_counts_per_gene_through_the_source(stored, monkeypatch):
    path, pts, cells = stored
    calls = _reads(monkeypatch)
    back = ts.read_zarr(path)
    got = ts.aggregate("tx", "cells", sdata=back, value_key="gene", agg_func="count")
    assert calls, "the store-backed element was not read through its source"
    expected = ts.aggregate(pts, cells, value_key="gene", agg_func="count")
    assert list(got.var_names) == GENES
    assert got.X.sum() > 1000
    assert (got.X != expected.X).nnz == 0
    assert list(got.obs_names) == list(expected.obs_names)


@pytest.mark.parametrize("agg_func", ["mean", "std", "max", "count"])
def test_numeric_and_plain_counts_through_the_source(stored, monkeypatch, agg_func):
    path, pts, cells = stored
    calls = _reads(monkeypatch)
    back = ts.read_zarr(path)
    got = ts.aggregate("tx", "cells", sdata=back, value_key="qv", agg_func=agg_func)
    expected = ts.aggregate(pts, cells, value_key="qv", agg_func=agg_func)
    assert calls
    np.testing.assert_allclose(got.X, expected.X, rtol=1e-10, equal_nan=True)
    plain = ts.aggregate("tx", "cells", sdata=back, agg_func="count", value_key=None)
    assert plain.X.sum() == ts.aggregate(pts, cells, agg_func="count", value_key=None).X.sum()


def test_3d_map_reads_z_through_the_source(stored):
    path, pts, cells = stored
    back = ts.read_zarr(path)
    tilt = ts.Affine([[1, 0, 0.5, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], ("x", "y", "z"), ("x", "y", "z"))
    for points in (back["tx"], pts):
        ts.set_transformation(points, tilt, "global")
    got = ts.aggregate(back["tx"], cells, value_key="gene", agg_func="count")
    expected = ts.aggregate(pts, cells, value_key="gene", agg_func="count")
    assert (got.X != expected.X).nnz == 0 and got.X.sum() > 0


def test_derived_frames_take_the_dask_path_and_agree(stored, monkeypatch):
    path, pts, cells = stored
    back = ts.read_zarr(path)
    calls = _reads(monkeypatch)
    tx = back["tx"]
    got = ts.aggregate(tx[tx.qv > 20], cells, value_key="gene", agg_func="count")
    assert not calls  # other rows than the files': not the source's
    expected = ts.aggregate(pts[pts.qv > 20], cells, value_key="gene", agg_func="count")
    assert (got.X != expected.X).nnz == 0


def test_codes_of_maps_nulls_and_unknown_values_to_minus_one():
    from tissuestack.store._points import _codes_of

    cats = pd.Index(["a", "b", "c"])
    plain = pa.chunked_array([pa.array(["b", None, "zz", "a"]), pa.array(["c", "c"])])
    assert _codes_of(plain, cats).tolist() == [1, -1, -1, 0, 2, 2]
    dictionary = pa.chunked_array([pa.array(["c", None, "a"]).dictionary_encode()])
    assert _codes_of(dictionary, cats).tolist() == [2, -1, 0]
