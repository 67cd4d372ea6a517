"""Shapes codec: GeoParquet 0.2/0.3 (WKB and GeoArrow) and legacy ragged arrays 0.1, in Zarr v3 and v2 stores."""

import hashlib
import json
import shutil
import uuid
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import zarr

from tissuestack.elements import ShapesModel, get_meta
from tissuestack.errors import FormatError, StoreError
from tissuestack.store import ElementLocation, StoreRoot, get_codec
from tissuestack.store._shapes import (
    describe_shapes,
    read_shapes,
    read_shapes_ragged,
    write_shapes,
    write_shapes_ragged,
)
from tissuestack.transforms import Affine, Identity, Scale, Sequence, Translation

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
VERSION = {3: "0.3", 2: "0.2"}
XY_AXES = [{"name": "x", "type": "space", "unit": "unit"}, {"name": "y", "type": "space", "unit": "unit"}]


# ------------------------------------------------------------------------------------------------ data


def _polygon_with_hole(x0=0.0, y0=0.0):
    return shapely.Polygon(
        [(x0, y0), (x0 + 10, y0), (x0 + 10, y0 + 10), (x0, y0 + 10)],
        [[(x0 + 2, y0 + 2), (x0 + 4, y0 + 2), (x0 + 4, y0 + 4)]],
    )


def _multipolygon(x0=0.0):
    return shapely.MultiPolygon([shapely.box(x0, 0, x0 + 1, 1), _polygon_with_hole(x0 + 5, 5)])


def circles(index=None):
    return gpd.GeoDataFrame(
        {"radius": [1.0, 2.5, 3.0, 0.5]},
        geometry=shapely.points([[0, 0], [10, 5], [20.5, 3], [7, 7]]),
        index=index,
    )


def polygons(index=None):
    return gpd.GeoDataFrame(
        geometry=[
            _polygon_with_hole(),
            shapely.box(20, 20, 30, 25),
            _polygon_with_hole(40, 40),
            shapely.Polygon([(0, 0), (3, 0), (0, 3)]),
        ],
        index=index,
    )


def multipolygons(index=None):
    return gpd.GeoDataFrame(
        geometry=[_multipolygon(0), _multipolygon(50), _multipolygon(100), _multipolygon(150)], index=index
    )


def mixed(index=None):
    return gpd.GeoDataFrame(
        geometry=[_polygon_with_hole(), _multipolygon(50), shapely.box(0, 0, 1, 1), _multipolygon(150)],
        index=index,
    )


FRAMES = {"circles": circles, "polygons": polygons, "multipolygons": multipolygons, "mixed": mixed}
INDEXES = {
    "range": None,
    "int_noncontiguous": pd.Index([7, 3, 100, 42]),
    "str_named": pd.Index(["c1", "c2", "c3", "c4"], name="cell_id"),
    "str_unnamed": pd.Index(["a", "b", "c", "d"]),
    "int_named": pd.Index([10, 20, 30, 40], name="instance"),
}


def _parse(frame, index=None, transformations=None, extra=False):
    gdf = FRAMES[frame](index) if isinstance(frame, str) else frame
    if extra:
        gdf["label"] = ["x", "y", "z", "w"]
        gdf["score"] = [0.1, 0.2, np.nan, 0.4]
        gdf["count"] = pd.array([1, None, 3, 4], dtype="Int64")
    return ShapesModel.parse(gdf, transformations=transformations)


# ------------------------------------------------------------------------------------------------ store helpers


def _store(tmp_path, zarr_format):
    root = StoreRoot.open(tmp_path / "s.zarr", read_only=False)
    group = zarr.open_group(root.zarr_store(), mode="w", zarr_format=zarr_format)
    return root, group, group.create_group("shapes")


def _write(tmp_path, gdf, zarr_format, version=None, name="cells", **options):
    root, _group, shapes = _store(tmp_path, zarr_format)
    loc = ElementLocation(root, "shapes", name)
    version = version or VERSION[zarr_format]
    get_codec("shapes", version).write(gdf, shapes, loc, version, **options)
    return root, loc


def _open(root, loc):
    group = zarr.open_group(root.zarr_store(read_only=True), mode="r")[loc.key]
    return group, group.attrs.asdict()


def _read(root, loc, **options):
    group, attrs = _open(root, loc)
    version = attrs["spatialdata_attrs"]["version"]
    return get_codec("shapes", version).read(group, loc, attrs, **options)


def _describe(root, loc):
    group, attrs = _open(root, loc)
    return get_codec("shapes", attrs["spatialdata_attrs"]["version"]).describe(group, loc, attrs)


def _wkb(gdf):
    return [g.wkb for g in gdf.geometry]


def _assert_same_transformations(a, b, axes=("x", "y")):
    ta, tb = get_meta(a).transformations, get_meta(b).transformations
    assert list(ta) == list(tb)
    for cs in ta:
        np.testing.assert_allclose(ta[cs].to_affine_matrix(axes, axes), tb[cs].to_affine_matrix(axes, axes))


# ------------------------------------------------------------------------------------------------ GeoParquet


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("encoding", ["WKB", "geoarrow"])
@pytest.mark.parametrize("frame", list(FRAMES))
@pytest.mark.parametrize("index", list(INDEXES))
def test_geoparquet_round_trip(tmp_path, zarr_format, encoding, frame, index):
    gdf = _parse(frame, INDEXES[index], extra=index in ("str_named", "int_noncontiguous"))
    root, loc = _write(tmp_path, gdf, zarr_format, geometry_encoding=encoding)
    back = _read(root, loc)

    assert isinstance(back, gpd.GeoDataFrame)
    assert back.active_geometry_name == "geometry" and back.crs is None
    pd.testing.assert_index_equal(back.index, gdf.index, exact=True)
    assert list(back.columns) == list(gdf.columns)
    pd.testing.assert_frame_equal(
        pd.DataFrame(back.drop(columns="geometry")), pd.DataFrame(gdf.drop(columns="geometry"))
    )
    if encoding == "geoarrow" and frame == "mixed":
        # native GeoArrow has one type per column: Polygons come back as one-part MultiPolygons (as in geopandas)
        assert set(back.geom_type) == {"MultiPolygon"}
        assert shapely.equals(back.geometry.values, gdf.geometry.values).all()
    else:
        assert _wkb(back) == _wkb(gdf)
    _assert_same_transformations(back, gdf)
    ShapesModel.validate(back)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_group_attributes_verbatim(tmp_path, zarr_format):
    root, loc = _write(tmp_path, _parse("circles"), zarr_format)
    _, attrs = _open(root, loc)
    identity = {
        "type": "identity",
        "input": {"name": "xy", "axes": XY_AXES},
        "output": {"name": "global", "axes": XY_AXES},
    }
    assert attrs == {
        "encoding-type": "ngff:shapes",
        "axes": ["x", "y"],
        "coordinateTransformations": [identity],
        "spatialdata_attrs": {"version": VERSION[zarr_format]},
    }
    name = "zarr.json" if zarr_format == 3 else ".zattrs"
    raw = json.loads(Path(loc.file(name)).read_text())
    assert (raw["attributes"] if zarr_format == 3 else raw) == attrs


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_transformations_restored(tmp_path, zarr_format):
    transformations = {
        "global": Scale([2.0, 0.5], axes=("x", "y")),
        "aligned": Sequence(
            [
                Translation([10, 20], axes=("x", "y")),
                Affine([[1, 0.1, 0], [0.2, 1, 0], [0, 0, 1]], ("x", "y"), ("x", "y")),
            ]
        ),
        "raw": Identity(),
    }
    gdf = _parse("polygons", transformations=transformations)
    root, loc = _write(tmp_path, gdf, zarr_format)
    back = _read(root, loc)
    _assert_same_transformations(back, gdf)
    assert list(get_meta(back).transformations) == ["global", "aligned", "raw"]
    assert get_meta(back).source == (root.url, "shapes/cells")


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ("range", [{"kind": "range", "name": None, "start": 0, "stop": 4, "step": 1}]),
        ("str_named", ["cell_id"]),
        ("int_noncontiguous", ["__index_level_0__"]),
    ],
)
@pytest.mark.parametrize("encoding", ["WKB", "geoarrow"])
def test_geoparquet_file(tmp_path, index, expected, encoding):
    gdf = _parse("circles", INDEXES[index])
    _root, loc = _write(tmp_path, gdf, 3, geometry_encoding=encoding)
    path = Path(loc.file("shapes.parquet"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["shapes.parquet", "zarr.json"]
    md = pq.read_metadata(path)
    geo = json.loads(md.metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["crs"] is None
    assert column["geometry_types"] == ["Point"]
    assert column["encoding"] == ("WKB" if encoding == "WKB" else "point")
    pandas_md = json.loads(md.metadata[b"pandas"])
    assert pandas_md["index_columns"] == expected
    assert pandas_md.get("attributes", {}) == {}  # GeoDataFrame.attrs (our metadata mirror) is not persisted
    schema = md.schema.to_arrow_schema()
    assert schema.field("geometry").metadata[b"ARROW:extension:name"] == (
        b"geoarrow.wkb" if encoding == "WKB" else b"geoarrow.point"
    )


def test_crs_dropped_and_geometry_renamed(tmp_path):
    gdf = _parse("polygons")
    other = gdf.rename_geometry("outline").set_crs("EPSG:3857")
    other.attrs = dict(gdf.attrs)  # keep the metadata mirror
    root, loc = _write(tmp_path, other, 3)
    back = _read(root, loc)
    assert back.active_geometry_name == "geometry" and back.crs is None
    assert (
        json.loads(pq.read_metadata(loc.file("shapes.parquet")).metadata[b"geo"])["columns"]["geometry"][
            "crs"
        ]
        is None
    )
    assert other.active_geometry_name == "outline" and other.crs is not None  # input untouched


def test_read_selected_columns(tmp_path):
    gdf = _parse("circles", INDEXES["str_named"], extra=True)
    root, loc = _write(tmp_path, gdf, 3)
    back = _read(root, loc, columns=["score"])
    assert set(back.columns) == {"geometry", "radius", "score"}
    pd.testing.assert_index_equal(back.index, gdf.index)
    with pytest.raises(KeyError, match="nope"):
        _read(root, loc, columns=["nope"])


def test_unknown_encoding_and_version(tmp_path):
    with pytest.raises(ValueError, match="geometry_encoding"):
        _write(tmp_path, _parse("circles"), 3, geometry_encoding="wkt")
    root, _group, shapes = _store(tmp_path / "b", 3)
    with pytest.raises(FormatError, match=r"9\.9"):
        write_shapes(_parse("circles"), shapes, ElementLocation(root, "shapes", "c"), "9.9")


def test_encoding_is_case_insensitive_and_defaults_to_wkb(tmp_path):
    for i, encoding in enumerate([None, "wkb", "GEOARROW"]):
        _root, loc = _write(tmp_path / str(i), _parse("polygons"), 3, geometry_encoding=encoding)
        geo = json.loads(pq.read_metadata(loc.file("shapes.parquet")).metadata[b"geo"])
        assert geo["columns"]["geometry"]["encoding"] == ("polygon" if encoding == "GEOARROW" else "WKB")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("circles", "shapes[xy] 4 circles"),
        ("polygons", "shapes[xy] 4 polygons"),
        ("multipolygons", "shapes[xy] 4 polygons (MultiPolygon)"),
        ("mixed", "shapes[xy] 4 polygons (Polygon, MultiPolygon)"),
    ],
)
def test_describe_from_metadata(tmp_path, frame, expected):
    root, loc = _write(tmp_path, _parse(frame), 3)
    assert _describe(root, loc) == expected


def test_describe_reads_no_geometry(tmp_path, monkeypatch):
    root, loc = _write(tmp_path, _parse("polygons"), 3)

    def fail(*args, **kwargs):
        raise AssertionError("describe must not decode geometries")

    monkeypatch.setattr(gpd, "read_parquet", fail)
    monkeypatch.setattr(pq, "read_table", fail)
    assert _describe(root, loc) == "shapes[xy] 4 polygons"


def test_large_count_formatting(tmp_path):
    gdf = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.ones(1234)}, geometry=shapely.points(np.random.default_rng(0).random((1234, 2)))
        )
    )
    root, loc = _write(tmp_path, gdf, 3)
    assert _describe(root, loc) == "shapes[xy] 1,234 circles"


def test_remote_filesystem_round_trip():
    root = StoreRoot.open(f"memory://tissuestack-test-{uuid.uuid4().hex}/s.zarr", read_only=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr: sync fsspec filesystem wrapped for async use
            group = zarr.open_group(root.zarr_store(), mode="w", zarr_format=3)
            shapes = group.create_group("shapes")
            gdf = _parse("circles", INDEXES["str_named"], extra=True)
            loc = ElementLocation(root, "shapes", "spots")
            for encoding in ("WKB", "geoarrow"):
                write_shapes(gdf, shapes, loc, "0.3", geometry_encoding=encoding)
                element = group["shapes/spots"]
                back = read_shapes(element, loc, element.attrs.asdict())
                assert _wkb(back) == _wkb(gdf)
                pd.testing.assert_index_equal(back.index, gdf.index)
                assert describe_shapes(element, loc, element.attrs.asdict()) == "shapes[xy] 4 circles"
                del shapes["spots"]
                root.rm("shapes", "spots")
    finally:
        root.rm()


# ------------------------------------------------------------------------------------------------ errors


def test_missing_parquet(tmp_path):
    root, loc = _write(tmp_path, _parse("polygons"), 3)
    Path(loc.file("shapes.parquet")).unlink()
    with pytest.raises(StoreError, match=r"shapes/cells.*missing file shapes/cells/shapes\.parquet"):
        _read(root, loc)
    with pytest.raises(StoreError, match=r"shapes/cells/shapes\.parquet"):
        _describe(root, loc)


@pytest.mark.parametrize("keep", [0.5, 0.95, 0.0])
def test_truncated_parquet(tmp_path, keep):
    root, loc = _write(tmp_path, _parse("polygons"), 3)
    path = Path(loc.file("shapes.parquet"))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(StoreError, match=r"shapes/cells.*shapes/cells/shapes\.parquet.*truncated or corrupt"):
        _read(root, loc)
    with pytest.raises(StoreError, match=r"shapes/cells/shapes\.parquet"):
        _describe(root, loc)


def test_plain_parquet_is_a_format_error(tmp_path):
    root, loc = _write(tmp_path, _parse("polygons"), 3)
    pd.DataFrame({"a": [1, 2]}).to_parquet(loc.file("shapes.parquet"))
    with pytest.raises(FormatError, match="not a GeoParquet file"):
        _read(root, loc)
    with pytest.raises(FormatError, match="not a GeoParquet file"):
        _describe(root, loc)


# ------------------------------------------------------------------------------------------------ legacy 0.1


def _format_example():
    """docs/format.md §6.2: [Polygon(3 pts), MultiPolygon(triangle, square-with-triangular-hole)], Index [10, 20]."""
    polygon = shapely.Polygon([(0, 0), (1, 0), (0, 1)])
    multi = shapely.MultiPolygon(
        [
            shapely.Polygon([(5, 5), (6, 5), (5, 6)]),
            shapely.Polygon([(10, 10), (20, 10), (20, 20), (10, 20)], [[(12, 12), (14, 12), (12, 14)]]),
        ]
    )
    return gpd.GeoDataFrame(geometry=[polygon, multi], index=[10, 20])


def test_ragged_format_example(tmp_path):
    gdf = ShapesModel.parse(_format_example(), transformations={"global": Scale([2.0, 3.0], axes=("x", "y"))})
    root, loc = _write(tmp_path, gdf, 2, version="0.1")
    group, attrs = _open(root, loc)

    assert sorted(group.array_keys()) == ["Index", "coords", "offset0", "offset1", "offset2"]
    coords = group["coords"][...]
    assert coords.shape == (17, 2) and coords.dtype == np.float64
    assert group["offset0"][...].tolist() == [0, 4, 8, 13, 17]
    assert group["offset1"][...].tolist() == [0, 1, 2, 4]
    assert group["offset2"][...].tolist() == [0, 1, 3]
    assert all(group[f"offset{i}"].dtype == np.int32 for i in range(3))
    assert group["Index"][...].tolist() == [10, 20]
    assert attrs["spatialdata_attrs"] == {"geos": {"name": "MULTIPOLYGON", "type": 6}, "version": "0.1"}
    assert attrs["encoding-type"] == "ngff:shapes" and attrs["axes"] == ["x", "y"]
    for name in ("coords", "offset0", "Index"):
        meta = json.loads(Path(loc.file(name, ".zarray")).read_text())
        assert meta["zarr_format"] == 2 and meta["dimension_separator"] == "."

    back = _read(root, loc)
    assert list(back.geom_type) == ["MultiPolygon", "MultiPolygon"]  # mixed input is promoted
    assert shapely.equals(back.geometry.values, gdf.geometry.values).all()
    assert back.index.tolist() == [10, 20] and back.index.dtype == np.int64
    assert list(back.columns) == ["geometry"]
    _assert_same_transformations(back, gdf)
    assert _describe(root, loc) == "shapes[xy] 2 polygons (MultiPolygon)"


@pytest.mark.parametrize("frame", ["circles", "polygons", "multipolygons"])
def test_ragged_round_trip(tmp_path, frame):
    gdf = _parse(frame, INDEXES["int_noncontiguous"])
    root, loc = _write(tmp_path, gdf, 2, version="0.1", geometry_encoding="geoarrow")  # option ignored
    back = _read(root, loc)
    assert _wkb(back) == _wkb(gdf)
    pd.testing.assert_index_equal(back.index, gdf.index)
    if frame == "circles":
        np.testing.assert_array_equal(back["radius"].to_numpy(), gdf["radius"].to_numpy())
        assert _open(root, loc)[1]["spatialdata_attrs"]["geos"] == {"name": "POINT", "type": 0}
        assert _describe(root, loc) == "shapes[xy] 4 circles"
    ShapesModel.validate(back)


def test_ragged_drops_extra_columns_with_warning(tmp_path):
    gdf = _parse("circles", extra=True)
    with pytest.warns(UserWarning, match=r"dropping column\(s\) \['label', 'score', 'count'\]"):
        root, loc = _write(tmp_path, gdf, 2, version="0.1")
    assert list(_read(root, loc).columns) == ["geometry", "radius"]


@pytest.mark.parametrize("index", ["str_named", "str_unnamed"])
def test_ragged_refuses_string_index(tmp_path, index):
    gdf = _parse("polygons", INDEXES[index])
    with pytest.raises(FormatError, match=r"0\.1 cannot store string.*0\.2"):
        _write(tmp_path, gdf, 2, version="0.1")


def test_ragged_refuses_zarr_v3(tmp_path):
    with pytest.raises(FormatError, match="Zarr v2"):
        _write(tmp_path, _parse("polygons"), 3, version="0.1")


def test_ragged_reads_string_index_and_natural_offset_order(tmp_path):
    """Stores written by the reference may hold string ids; offset arrays are ordered naturally."""
    root, _group, shapes = _store(tmp_path, 2)
    gdf = _parse("multipolygons")
    _, coords, offsets = shapely.to_ragged_array(gdf.geometry.values)
    element = shapes.create_group("legacy")
    element.create_array("coords", data=coords)
    for i, offset in enumerate(offsets):
        element.create_array(f"offset{i}", data=offset.astype(np.int64))
    index = element.create_array("Index", shape=(4,), dtype=str)
    index[:] = np.array(["a", "b", "c", "d"], dtype=object)
    element.attrs.update(
        {
            "encoding-type": "ngff:shapes",
            "axes": ["x", "y"],
            "coordinateTransformations": [
                {
                    "type": "identity",
                    "input": {"name": "xy", "axes": XY_AXES},
                    "output": {"name": "global", "axes": XY_AXES},
                }
            ],
            "spatialdata_attrs": {"geos": {"name": "MULTIPOLYGON", "type": 6}, "version": "0.1"},
        }
    )
    loc = ElementLocation(root, "shapes", "legacy")
    back = read_shapes_ragged(element, loc, element.attrs.asdict())
    assert back.index.tolist() == ["a", "b", "c", "d"] and back.index.dtype == object
    assert _wkb(back) == _wkb(gdf)
    # read_shapes dispatches on the version too
    assert _wkb(read_shapes(element, loc, element.attrs.asdict())) == _wkb(gdf)


def test_ragged_bad_geos(tmp_path):
    root, loc = _write(tmp_path, _parse("polygons"), 2, version="0.1")
    group, attrs = _open(root, loc)
    attrs["spatialdata_attrs"]["geos"] = {"name": "POINT", "type": 3}
    with pytest.raises(FormatError, match="does not match"):
        read_shapes_ragged(group, loc, attrs)
    del attrs["spatialdata_attrs"]["geos"]
    with pytest.raises(FormatError, match="geos"):
        read_shapes_ragged(group, loc, attrs)


def test_ragged_missing_array(tmp_path):
    root, loc = _write(tmp_path, _parse("polygons"), 2, version="0.1")
    shutil.rmtree(loc.file("coords"))
    with pytest.raises(StoreError, match="shapes/cells/coords"):
        _read(root, loc)


def test_ragged_writer_rejects_other_versions(tmp_path):
    root, _group, shapes = _store(tmp_path, 2)
    with pytest.raises(FormatError):
        write_shapes_ragged(_parse("polygons"), shapes, ElementLocation(root, "shapes", "c"), "0.2")


def test_registered_codecs():
    for version in ("0.2", "0.3"):
        codec = get_codec("shapes", version)
        assert codec.read is read_shapes and codec.write is write_shapes and codec.describe is describe_shapes
    assert get_codec("shapes", "0.1").read is read_shapes_ragged


# ------------------------------------------------------------------------------------------------ reference


def _digest(a):
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype == object:
        return hashlib.sha1("|".join(map(str, a.ravel())).encode()).hexdigest()[:16]
    return hashlib.sha1(a.tobytes()).hexdigest()[:16]


REFERENCE_STORES = sorted(p.name for p in REFERENCE.glob("*.zarr")) if REFERENCE.is_dir() else []


@pytest.mark.skipif(not REFERENCE_STORES, reason="shared/fixtures/reference is absent")
@pytest.mark.parametrize("store", REFERENCE_STORES)
def test_reference_shapes_match_summary(store):
    summary = json.loads((REFERENCE / store.replace(".zarr", ".summary.json")).read_text())["shapes"]
    root = StoreRoot.open(REFERENCE / store)
    group = root.open_group()
    assert sorted(group["shapes"].group_keys()) == sorted(summary)
    for name, expected in summary.items():
        loc = ElementLocation(root, "shapes", name)
        element = group[loc.key]
        attrs = element.attrs.asdict()
        gdf = read_shapes(element, loc, attrs)
        assert len(gdf) == expected["rows"]
        assert sorted(set(gdf.geom_type)) == expected["geom_types"]
        assert [str(i) for i in gdf.index[:5]] == expected["index"]
        assert {c: str(gdf[c].dtype) for c in gdf.columns if c != "geometry"} == expected["columns"]
        assert _digest(np.array([g.wkb_hex for g in gdf.geometry])) == expected["sha_wkb"]
        if "sha_radius" in expected:
            assert _digest(gdf["radius"].to_numpy(dtype=float)) == expected["sha_radius"]
        transformations = get_meta(gdf).transformations
        assert sorted(transformations) == sorted(expected["transforms"])
        for cs, matrix in expected["transforms"].items():
            np.testing.assert_allclose(transformations[cs].to_affine_matrix(("x", "y"), ("x", "y")), matrix)
        n = f"{expected['rows']:,}"
        described = describe_shapes(element, loc, attrs)
        assert described.startswith(f"shapes[xy] {n} ")
        assert ("circles" in described) == (expected["geom_types"] == ["Point"])
