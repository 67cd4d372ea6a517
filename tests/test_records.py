"""Element metadata as plain JSON in attrs (survives pickle, deepcopy, derivations, xarray serialisation) and
element records (row count, source, caches) that belong to exactly one object."""

from __future__ import annotations

import copy
import json
import pickle

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr

import tissuestack as ts
from tissuestack.elements import get_meta, record_of
from tissuestack.elements._meta import ATTRS_KEY
from tissuestack.elements._points import InMemoryPoints, in_memory_partitions
from tissuestack.store._points import PointsScan, points_scan

SCALE = ts.Scale([0.5, 2.0], axes=("x", "y"))
AFFINE = ts.Affine([[0.0, -1.0, 3.0], [1.0, 0.0, 4.0], [0.0, 0.0, 1.0]], ("x", "y"), ("x", "y"))
TRANSFORMS = {"global": SCALE, "aligned": ts.Sequence([SCALE, AFFINE, ts.Translation([1, 2], ("x", "y"))])}


def _points():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "x": rng.uniform(0, 10, 200),
            "y": rng.uniform(0, 10, 200),
            "gene": pd.Categorical(rng.choice(["a", "b", "c"], 200)),
            "cell": rng.integers(0, 5, 200),
            "qv": rng.uniform(0, 40, 200),
        }
    )
    return ts.PointsModel.parse(df, feature_key="gene", instance_key="cell", transformations=TRANSFORMS)


def _shapes():
    polys = [shapely.box(i, 0, i + 1, 1) for i in range(5)]
    return ts.ShapesModel.parse(gpd.GeoDataFrame(geometry=polys), transformations=TRANSFORMS)


def _image():
    return ts.Image2DModel.parse(
        np.zeros((2, 16, 16), dtype=np.uint8), dims=("c", "y", "x"), transformations=TRANSFORMS
    )


def _assert_meta(element, *, feature_key=None, instance_key=None):
    meta = get_meta(element)
    assert meta.transformations == TRANSFORMS
    assert meta.feature_key == feature_key
    assert meta.instance_key == instance_key


def _attrs(element):
    return element._meta.attrs if isinstance(element, dd.DataFrame) else element.attrs


@pytest.mark.parametrize("make", [_points, _shapes, _image])
def test_metadata_in_attrs_is_plain_json(make):
    element = make()
    stored = _attrs(element)[ATTRS_KEY]
    assert json.loads(json.dumps(stored)) == stored  # only dicts, lists, strings, numbers
    for t in stored["transformations"].values():
        assert isinstance(t, dict) and "type" in t


POINT_DERIVATIONS = {
    "pickle": lambda p: pickle.loads(pickle.dumps(p)),
    "deepcopy": copy.deepcopy,
    "mask": lambda p: p[p.qv > 20],
    "columns": lambda p: p[["x", "y", "gene", "cell"]],
    "copy": lambda p: p.copy(),
    "assign": lambda p: p.assign(qv2=p.qv * 2),
    "repartition": lambda p: p.repartition(npartitions=1),
    "persist": lambda p: p.persist(),
}


@pytest.mark.parametrize("how", sorted(POINT_DERIVATIONS))
def test_points_metadata_survives(how):
    pts = _points()
    derived = POINT_DERIVATIONS[how](pts)
    _assert_meta(derived, feature_key="gene", instance_key="cell")
    ts.PointsModel.validate(derived)
    assert ts.get_extent(derived, "global") is not None


def test_derived_points_are_usable_in_operations_and_own_their_metadata():
    pts = _points()
    sub = pts[pts.qv > 20]
    expected = pts.compute()
    expected = expected[expected.qv > 20]
    box = ts.bounding_box_query(sub, ("x", "y"), [0, 0], [2.5, 10], "global")  # x, y in [0, 5] intrinsic
    got = box.compute()
    assert len(got) == int(((expected.x <= 5) & (expected.y <= 5)).sum()) > 0
    ts.set_transformation(sub, ts.Identity(), "other")
    assert "other" not in get_meta(pts).transformations  # no leak back into the element it came from


def test_points_metadata_on_distributed_workers():
    distributed = pytest.importorskip("distributed")
    pts = _points()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        remote = c.submit(lambda p: sorted(get_meta(p).transformations), pts).result()
    assert remote == ["aligned", "global"]


SHAPE_DERIVATIONS = {
    "pickle": lambda s: pickle.loads(pickle.dumps(s)),
    "deepcopy": copy.deepcopy,
    "mask": lambda s: s[s.area > 0],
    "copy": lambda s: s.copy(),
    "slice": lambda s: s.iloc[1:3],
}


@pytest.mark.parametrize("how", sorted(SHAPE_DERIVATIONS))
def test_shapes_metadata_survives(how):
    _assert_meta(SHAPE_DERIVATIONS[how](_shapes()))


def test_image_metadata_survives_and_xarray_serialises_it(tmp_path):
    img = _image()
    for derived in (pickle.loads(pickle.dumps(img)), copy.deepcopy(img), img.isel(x=slice(2, 8))):
        _assert_meta(derived)
    # xarray stores attrs as JSON (netCDF, Zarr): a parsed image's attrs must survive that
    xr.Dataset({"image": img}).to_zarr(tmp_path / "img.zarr", mode="w")
    back = xr.open_zarr(tmp_path / "img.zarr")["image"]
    _assert_meta(back)


def test_records_belong_to_one_object():
    pts = _points()
    assert isinstance(record_of(pts).source, InMemoryPoints)
    assert in_memory_partitions(pts) is not None
    assert record_of(pts).n_rows == 200
    derived = pts[pts.qv > 20]
    assert in_memory_partitions(derived) is None  # other rows: its own, empty record
    assert record_of(derived).n_rows is None
    assert get_meta(derived).n_rows is None
    assert in_memory_partitions(pickle.loads(pickle.dumps(pts))) is None


def test_store_backed_points_record_their_scan(tmp_path):
    sdata = ts.SpatialData(points={"tx": _points()})
    sdata.write(tmp_path / "s.zarr")
    tx = ts.read_zarr(tmp_path / "s.zarr")["tx"]
    scan = points_scan(tx)
    assert isinstance(scan, PointsScan)
    assert record_of(tx).n_rows == 200
    assert points_scan(tx[tx.qv > 1]) is None
    assert points_scan(tx[["x", "y"]]) is None
    _assert_meta(tx[tx.qv > 1], feature_key="gene", instance_key="cell")
    assert get_meta(tx[tx.qv > 1]).source == get_meta(tx).source  # derived frames still read those files


def test_shapes_index_cached_in_record_and_rebuilt_on_new_geometry():
    from tissuestack.query._index import shapes_index

    cells = _shapes()
    first = shapes_index(cells, circles=False)
    assert shapes_index(cells, circles=False) is first
    assert shapes_index(cells.copy(), circles=False) is not first  # another object, another record
    cells.geometry = cells.geometry.translate(1.0, 0.0)
    assert shapes_index(cells, circles=False) is not first


def test_metadata_error_says_how_to_reattach():
    pts = _points()
    fresh = dd.from_pandas(pts.compute(), npartitions=1)
    with pytest.raises(ts.ValidationError, match="parse"):
        get_meta(fresh)
    xr.DataArray(np.zeros((2, 2)))  # no metadata needed to build plain objects
