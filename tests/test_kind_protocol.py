"""One protocol object per element kind: the type registry, lookup by name, and each method against the
public functions it backs (extent, axes, bbox query, transform, store round trip)."""

from __future__ import annotations

import pickle

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
import zarr

import tissuestack as ts
from tissuestack.elements import (
    KINDS,
    SPATIAL_KINDS,
    ElementKind,
    Image2DModel,
    Image3DModel,
    ImagesKind,
    Labels2DModel,
    Labels3DModel,
    LabelsKind,
    PointsKind,
    PointsModel,
    ShapesKind,
    ShapesModel,
    TableModel,
    TablesKind,
    _protocol,
    get_axes,
    get_kind,
    get_kind_protocol,
    kind_of,
    kind_protocols,
    parse_as,
    register_kind,
    validate_as,
)
from tissuestack.errors import ValidationError
from tissuestack.store import ElementLocation, StoreRoot
from tissuestack.store._registry import DEFAULT_ELEMENT_VERSIONS
from tissuestack.transforms import Affine, Identity, Scale, Translation


# ------------------------------------------------------------------------------------------------ elements
def _global(t=None):
    return {"global": t if t is not None else Scale([2.0, 0.5], ("x", "y"))}


def _image2d(scale_factors=None):
    data = np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6)
    return Image2DModel.parse(data, transformations=_global(), scale_factors=scale_factors)


def _image3d():
    data = np.arange(1 * 3 * 8 * 6, dtype=np.uint8).reshape(1, 3, 8, 6)
    return Image3DModel.parse(data, transformations={"global": Translation([1.0, 2.0, 3.0], ("x", "y", "z"))})


def _labels2d(scale_factors=None):
    data = np.zeros((8, 6), dtype=np.int32)
    data[1:4, 1:3] = 1
    data[5:7, 2:6] = 2
    return Labels2DModel.parse(data, transformations=_global(), scale_factors=scale_factors)


def _labels3d():
    data = np.zeros((3, 8, 6), dtype=np.uint16)
    data[1, 2:5, 2:4] = 7
    return Labels3DModel.parse(data, transformations={"global": Identity()})


def _points():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 10, 200),
            "y": rng.uniform(0, 20, 200),
            "gene": pd.Categorical(rng.choice(["a", "b"], 200)),
            "cell": rng.integers(0, 5, 200),
        }
    )
    return PointsModel.parse(
        frame, npartitions=3, feature_key="gene", instance_key="cell", transformations=_global()
    )


def _shapes():
    polys = [shapely.box(i, i, i + 2, i + 1) for i in range(5)]
    return ShapesModel.parse(gpd.GeoDataFrame(geometry=polys), transformations=_global())


def _circles():
    return ShapesModel.parse(
        np.array([[1.0, 1.0], [4.0, 6.0], [8.0, 2.0]]),
        geometry=0,
        radius=np.array([0.5, 1.0, 2.0]),
        transformations=_global(),
    )


def _table(region="cells"):
    obs = pd.DataFrame(
        {"region": pd.Categorical([region] * 5), "instance_id": np.arange(5)},
        index=[f"r{i}" for i in range(5)],
    )
    return TableModel.parse(
        ad.AnnData(np.ones((5, 3), dtype=np.float32), obs=obs),
        region=region,
        region_key="region",
        instance_key="instance_id",
    )


SPATIAL = {
    "image2d": (_image2d, ImagesKind),
    "image3d": (_image3d, ImagesKind),
    "image_pyramid": (lambda: _image2d(scale_factors=[2]), ImagesKind),
    "labels2d": (_labels2d, LabelsKind),
    "labels3d": (_labels3d, LabelsKind),
    "labels_pyramid": (lambda: _labels2d(scale_factors=[2]), LabelsKind),
    "points": (_points, PointsKind),
    "shapes": (_shapes, ShapesKind),
    "circles": (_circles, ShapesKind),
}


# ------------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("case", [*SPATIAL, "table"])
def test_registry_maps_each_element_type_to_its_protocol(case):
    make, cls = SPATIAL[case] if case != "table" else (_table, TablesKind)
    element = make()
    kind = kind_of(element)
    assert type(kind) is cls
    assert kind is get_kind_protocol(kind.name)  # one singleton per kind
    assert get_kind(element) == kind.name
    assert kind.matches(element)


def test_pyramids_are_datatrees_and_map_like_single_scale():
    image, labels = _image2d(scale_factors=[2]), _labels2d(scale_factors=[2])
    assert isinstance(image, xr.DataTree) and isinstance(labels, xr.DataTree)
    assert kind_of(image) is kind_of(_image2d()) is get_kind_protocol("images")
    assert kind_of(labels) is kind_of(_labels2d()) is get_kind_protocol("labels")


def test_lookup_by_name_and_kind_properties():
    assert tuple(kind_protocols())[: len(KINDS)] == KINDS
    for name in KINDS:
        protocol = get_kind_protocol(name)
        assert protocol.name == name
        assert get_kind_protocol(protocol) is protocol
        assert protocol.is_spatial == (name in SPATIAL_KINDS)
        assert pickle.loads(pickle.dumps(protocol)) is protocol
    images, labels, points, shapes, tables = (get_kind_protocol(k) for k in KINDS)
    assert images.is_raster and labels.is_raster and not points.is_raster and not shapes.is_raster
    assert images.has_channels and not labels.has_channels
    assert labels.nearest_only and not images.nearest_only
    assert [k.has_instances for k in (images, labels, points, shapes, tables)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    areas = [k.has_areas for k in (images, labels, points, shapes, tables)]
    assert areas == [False, True, False, True, False]
    assert labels.listed_in_store and not images.listed_in_store
    assert tables.annotates_regions and not tables.is_spatial
    assert (images.resample_order(None), labels.resample_order(None), images.resample_order(3)) == (1, 0, 3)
    with pytest.raises(ValidationError, match="order=0"):
        labels.resample_order(1)
    with pytest.raises(ValueError, match="unknown element kind 'nope'"):
        get_kind_protocol("nope")
    with pytest.raises(ValueError, match="unknown element kind"):
        parse_as("nope", np.zeros((2, 2)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "obj", [np.zeros((3, 4)), pd.DataFrame({"x": [1.0]}), [1, 2], "images", shapely.Point(0, 0)]
)
def test_unknown_types_give_the_clear_type_error(obj):
    with pytest.raises(TypeError, match=r"cannot tell the element kind of a .*Parse raw data with a model"):
        kind_of(obj)
    with pytest.raises(TypeError, match="cannot tell the element kind"):
        get_kind(obj)
    with pytest.raises(TypeError, match="has no spatial axes"):
        get_axes(obj)


def test_rasters_of_unknown_dims_and_tables_without_axes():
    with pytest.raises(ValidationError, match="match no element kind"):
        kind_of(xr.DataArray(np.zeros((2, 3)), dims=("t", "x")))
    with pytest.raises(TypeError, match="AnnData has no spatial axes"):
        get_axes(_table())
    with pytest.raises(ValidationError, match="no extent"):
        get_kind_protocol("tables").extent(_table(), Identity())


class _Spots:
    """A toy element type for a user-registered kind."""

    def __init__(self, xy):
        self.xy = np.asarray(xy, dtype=float)


class _SpotsKind(ElementKind):
    name = "spots"
    has_instances = True

    def parse(self, obj, name=None):
        return obj if isinstance(obj, _Spots) else _Spots(obj)

    def validate(self, obj, name=None):
        if obj.xy.ndim != 2:
            raise ValidationError(f"spots {name!r}: expected an (n, 2) array")

    def axes(self, obj):
        return ("x", "y")

    def extent(self, obj, t, exact=True, name=None):
        lo, hi = obj.xy.min(axis=0), obj.xy.max(axis=0)
        return {"x": (float(lo[0]), float(hi[0])), "y": (float(lo[1]), float(hi[1]))}


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(_protocol, "_BY_NAME", dict(_protocol._BY_NAME))
    monkeypatch.setattr(_protocol, "_BY_TYPE", {t: list(p) for t, p in _protocol._BY_TYPE.items()})


def test_user_registered_kind_by_name_and_type(clean_registry):
    spots_kind = register_kind(_SpotsKind(), [_Spots])
    spots = _Spots([[0, 1], [3, 5]])
    assert get_kind_protocol("spots") is spots_kind
    assert kind_of(spots) is spots_kind
    assert get_kind(spots) == "spots"
    assert get_axes(spots) == ("x", "y")
    assert parse_as("spots", [[1, 2]]).xy.shape == (1, 2)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="spots 'bad'"):
        validate_as("spots", _Spots([1.0, 2.0]), name="bad")  # type: ignore[arg-type]
    assert spots_kind.extent(spots, Identity()) == {"x": (0.0, 3.0), "y": (1.0, 5.0)}
    assert "spots" in kind_protocols()
    # the built-in kinds are untouched, and defaults of the base class stay clear
    assert kind_of(_points()) is get_kind_protocol("points")
    with pytest.raises(ValidationError, match="centroids are defined"):
        spots_kind.centroids(spots, Identity())


def test_registering_a_name_again_replaces_the_protocol(clean_registry):
    class MyShapes(ShapesKind):
        pass

    mine = register_kind(MyShapes())
    assert get_kind_protocol("shapes") is mine
    assert kind_of(_shapes()) is mine  # also as the candidate of the GeoDataFrame type
    with pytest.raises(ValueError, match="non-empty string name"):
        register_kind(ElementKind())


def test_parse_and_validate_through_the_protocol():
    images, labels = get_kind_protocol("images"), get_kind_protocol("labels")
    assert images.parse(np.zeros((5, 4))).dims == ("c", "y", "x")
    assert images.parse(np.zeros((1, 2, 5, 4))).dims == ("c", "z", "y", "x")
    assert labels.parse(np.zeros((5, 4), dtype=int)).dims == ("y", "x")
    assert labels.parse(np.zeros((2, 5, 4), dtype=int)).dims == ("z", "y", "x")
    with pytest.raises(ValidationError, match="expected 2 \\(y, x\\) or 3"):
        labels.parse(np.zeros((1, 2, 5, 4), dtype=int), name="seg")
    element = _points()
    assert get_kind_protocol("points").parse(element) is element  # parsed already: only validated
    with pytest.raises(ValidationError, match="expected an AnnData"):
        get_kind_protocol("tables").parse(pd.DataFrame(), name="t")
    for make, _ in SPATIAL.values():
        element = make()
        kind_of(element).validate(element, name="x")


# ------------------------------------------------------------------------------------------------ methods vs functions
@pytest.mark.parametrize("case", list(SPATIAL))
def test_axes_and_extent_match_the_functions(case):
    element = SPATIAL[case][0]()
    kind = kind_of(element)
    assert kind.axes(element) == get_axes(element)
    t = ts.get_transformation(element, "global")
    assert kind.extent(element, t) == ts.get_extent(element, "global")
    assert kind.extent(element, t, exact=False) == ts.get_extent(element, "global", exact=False)


def _same(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    if isinstance(a, dd.DataFrame):
        pd.testing.assert_frame_equal(
            a.compute().sort_index(), b.compute().sort_index()
        )  # stores sort points
    elif isinstance(a, gpd.GeoDataFrame):
        assert a.index.equals(b.index)
        assert shapely.equals_exact(np.asarray(a.geometry.array), np.asarray(b.geometry.array), 1e-9).all()
    else:
        la, lb = ts.elements.raster_levels(a), ts.elements.raster_levels(b)
        assert len(la) == len(lb)
        for x, y in zip(la, lb, strict=True):
            xr.testing.assert_equal(x, y)
    ta = ts.get_transformation(a, get_all=True)
    tb = ts.get_transformation(b, get_all=True)
    assert ta.keys() == tb.keys()
    for cs in ta:
        np.testing.assert_allclose(
            ta[cs].to_affine_matrix(("x", "y"), ("x", "y")), tb[cs].to_affine_matrix(("x", "y"), ("x", "y"))
        )


@pytest.mark.parametrize("case", list(SPATIAL))
def test_bbox_query_matches_bounding_box_query(case):
    element = SPATIAL[case][0]()
    kind = kind_of(element)
    box = (["x", "y"], [2.0, 1.0], [9.0, 3.5], "global")
    _same(kind.query_bbox(element, *box), ts.bounding_box_query(element, *box))
    many = kind.query_bbox(element, ["x", "y"], [[0, 0], [100, 100]], [[5, 5], [101, 101]], "global")
    expected = ts.bounding_box_query(
        element, ["x", "y"], [[0, 0], [100, 100]], [[5, 5], [101, 101]], "global"
    )
    assert len(many) == len(expected) == 2
    for a, b in zip(many, expected, strict=True):
        _same(a, b)


def test_query_of_a_table_is_refused():
    with pytest.raises(TypeError, match="a table has no coordinates"):
        ts.bounding_box_query(_table(), ["x", "y"], [0, 0], [1, 1], "global")
    with pytest.raises(TypeError, match="no coordinates to query"):
        get_kind_protocol("tables").query_bbox(_table(), ["x", "y"], [0, 0], [1, 1], "global")


@pytest.mark.parametrize("case", list(SPATIAL))
@pytest.mark.parametrize("maintain_positioning", [False, True])
def test_transform_matches_the_function(case, maintain_positioning):
    element = SPATIAL[case][0]()
    kind = kind_of(element)
    ndim = 3 if "z" in kind.axes(element) else 2
    axes = ("x", "y", "z")[:ndim]
    rotation = np.eye(ndim + 1)
    rotation[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]
    ts.set_transformation(element, Affine(rotation, axes, axes), "rotated")
    t = ts.get_transformation(element, "rotated")
    expected = ts.transform(element, "rotated", maintain_positioning=maintain_positioning)
    _same(kind.transform(element, t, "rotated", maintain_positioning), expected)


def test_transform_of_a_table_and_centroids_of_images_are_refused():
    with pytest.raises(ValidationError, match="no coordinates to transform"):
        get_kind_protocol("tables").transform(_table(), Identity(), "global")
    with pytest.raises(ValidationError, match="not for images"):
        ts.get_centroids(_image2d())


@pytest.mark.parametrize("case", ["labels2d", "labels3d", "points", "shapes", "circles"])
def test_centroids_and_instances_match_the_functions(case):
    from tissuestack.elements._instances import element_instances

    element = SPATIAL[case][0]()
    kind = kind_of(element)
    assert kind.instances(element, case).equals(element_instances(element, name=case))
    t = ts.get_transformation(element, "global")
    frame = kind.centroids(element, t)
    frame = frame.compute() if isinstance(frame, dd.DataFrame) else frame
    expected = ts.get_centroids(element, "global").compute()
    np.testing.assert_allclose(frame.to_numpy(dtype=float), expected.to_numpy(dtype=float))


def test_describe_matches_the_repr():
    sdata = ts.SpatialData(
        images={"img": _image2d()},
        points={"pts": _points()},
        shapes={"cells": _shapes()},
        tables={"t": _table()},
    )
    text = repr(sdata)
    for name in ("img", "pts", "cells", "t"):
        element = sdata[name]
        assert kind_of(element).describe(element) in text


# ------------------------------------------------------------------------------------------------ store codecs
STORE_CASES = [
    "image2d",
    "image3d",
    "image_pyramid",
    "labels2d",
    "labels_pyramid",
    "points",
    "shapes",
    "circles",
]


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_store_round_trip_through_protocol_write_and_read(tmp_path, zarr_format):
    elements = {case: SPATIAL[case][0]() for case in STORE_CASES}
    elements["table"] = _table(region="shapes")
    groups: dict[str, dict[str, object]] = {k: {} for k in KINDS}
    for name, element in elements.items():
        groups[get_kind(element)][name] = element
    reference = tmp_path / "reference.zarr"
    ts.SpatialData(**groups).write(reference, zarr_format=zarr_format)
    back = ts.read_zarr(reference)

    # write every element with its protocol into an empty store, then read it back with the protocol
    target = tmp_path / "protocol.zarr"
    ts.SpatialData().write(target, zarr_format=zarr_format)
    root = StoreRoot.open(target, read_only=False)
    group = zarr.open_group(root.zarr_store(read_only=False), mode="r+", use_consolidated=False)
    versions = DEFAULT_ELEMENT_VERSIONS[zarr_format]
    for name, element in elements.items():
        kind = kind_of(element)
        type_group = group.require_group(kind.name)
        kind.write(element, type_group, ElementLocation(root, kind.name, name), versions[kind.name])
    for name, element in elements.items():
        kind = kind_of(element)
        g = zarr.open_group(root.zarr_store(read_only=True), mode="r", use_consolidated=False)[
            f"{kind.name}/{name}"
        ]
        loc = ElementLocation(root, kind.name, name)
        attrs = g.attrs.asdict()
        version = kind.read_version(attrs, g, loc)
        assert version == versions[kind.name]
        meta = kind.read_meta(attrs, g, loc)
        assert (meta is None) == (not kind.is_spatial)
        read = kind.read(g, loc, attrs, version, **kind.read_options())
        assert kind_of(read) is kind
        if kind.is_spatial:
            _same(read, back[name])
            _same(read, element)
        else:
            assert read.obs.equals(back[name].obs)
            np.testing.assert_array_equal(np.asarray(read.X), np.asarray(back[name].X))


def test_write_metadata_through_the_protocol(tmp_path):
    path = tmp_path / "s.zarr"
    sdata = ts.SpatialData(images={"img": _image2d()}, shapes={"cells": _shapes()}, tables={"t": _table()})
    sdata.write(path)
    for name in ("img", "cells"):
        ts.set_transformation(sdata[name], Translation([5.0, 6.0], ("x", "y")), "moved")
    ts.set_channel_names(sdata["img"], ["dapi", "cd3"])
    sdata.write_metadata()
    back = ts.read_zarr(path)
    for name in ("img", "cells"):
        assert "moved" in ts.get_transformation(back[name], get_all=True)
    assert list(back["img"].coords["c"].values) == ["dapi", "cd3"]
