"""Tests of ShapesModel: every input form, circles/polygons, ragged arrays, and invalid input."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from tissuestack.elements._meta import get_meta
from tissuestack.elements._shapes import ShapesModel, shapes_axes, shapes_type
from tissuestack.errors import ValidationError
from tissuestack.transforms import Identity, Scale

N = 6


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def centres(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 100, (N, 2))


@pytest.fixture
def polygons(centres: np.ndarray) -> list[shapely.Polygon]:
    return list(shapely.buffer(shapely.points(centres), 3.0))


@pytest.fixture
def circles(centres: np.ndarray) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"radius": np.full(N, 2.0)}, geometry=shapely.points(centres))


# ------------------------------------------------------------------------------------------------------------
# valid input
# ------------------------------------------------------------------------------------------------------------


def test_circles_from_numpy_scalar_radius(centres: np.ndarray) -> None:
    shapes = ShapesModel.parse(centres, radius=2.5)
    assert isinstance(shapes, gpd.GeoDataFrame)
    assert shapes_type(shapes) == "circles"
    assert shapes_axes(shapes) == ("x", "y")
    assert shapes.active_geometry_name == "geometry"
    assert shapes.crs is None
    np.testing.assert_array_equal(shapely.get_coordinates(shapes.geometry.array), centres)
    assert (shapes["radius"] == 2.5).all()
    assert get_meta(shapes).transformations == {"global": Identity()}


def test_circles_from_numpy_radius_array(centres: np.ndarray, rng: np.random.Generator) -> None:
    radius = rng.uniform(1, 3, N)
    shapes = ShapesModel.parse(centres, radius=radius, index=[f"c{i}" for i in range(N)])
    np.testing.assert_array_equal(shapes["radius"].to_numpy(), radius)
    assert shapes.index.tolist() == [f"c{i}" for i in range(N)]


def test_circles_from_dataframe(centres: np.ndarray) -> None:
    df = pd.DataFrame(
        {"x": centres[:, 0], "y": centres[:, 1], "radius": 1.0, "kind": "spot"}, index=np.arange(N) * 3
    )
    shapes = ShapesModel.parse(df)
    assert shapes_type(shapes) == "circles"
    assert set(shapes.columns) == {"geometry", "radius", "kind"}
    assert shapes.index.tolist() == (np.arange(N) * 3).tolist()


def test_from_geodataframe_keeps_index_and_columns(circles: gpd.GeoDataFrame) -> None:
    circles.index = pd.Index([f"cell_{i}" for i in range(N)], name="cell_id")
    circles["area"] = 1.0
    shapes = ShapesModel.parse(circles, transformations={"global": Scale([2, 2], axes=("x", "y"))})
    assert shapes.index.equals(circles.index) and shapes.index.name == "cell_id"
    assert list(shapes.columns) == ["radius", "geometry", "area"]
    assert shapes is not circles


def test_geodataframe_geometry_column_renamed(polygons: list[shapely.Polygon]) -> None:
    gdf = gpd.GeoDataFrame({"geom": polygons}, geometry="geom", crs="EPSG:4326")
    shapes = ShapesModel.parse(gdf)
    assert shapes.active_geometry_name == "geometry"
    assert "geom" not in shapes.columns
    assert shapes.crs is None
    assert gdf.crs is not None  # input untouched


def test_from_geoseries(polygons: list[shapely.Polygon]) -> None:
    series = gpd.GeoSeries(polygons, index=list("abcdef"), name="outlines")
    shapes = ShapesModel.parse(series)
    assert shapes_type(shapes) == "polygons"
    assert shapes.index.tolist() == list("abcdef")
    assert list(shapes.columns) == ["geometry"]


def test_polygons_from_list(polygons: list[shapely.Polygon]) -> None:
    shapes = ShapesModel.parse(polygons, index=np.arange(10, 10 + N))
    assert shapes_type(shapes) == "polygons"
    assert shapes.index.tolist() == list(range(10, 10 + N))


def test_polygons_from_object_array(polygons: list[shapely.Polygon]) -> None:
    shapes = ShapesModel.parse(np.array(polygons, dtype=object))
    assert len(shapes) == N


def test_multipolygons_mixed_with_polygons(polygons: list[shapely.Polygon]) -> None:
    multi = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 6, 6)])
    shapes = ShapesModel.parse([*polygons, multi])
    assert shapes_type(shapes) == "polygons"
    assert shapely.get_type_id(shapes.geometry.array).tolist() == [3] * N + [6]


@pytest.mark.parametrize("kind", ["polygons", "multipolygons", "points"])
def test_ragged_round_trip(kind: str, polygons: list[shapely.Polygon], centres: np.ndarray) -> None:
    if kind == "polygons":
        geoms = np.array(polygons, dtype=object)
    elif kind == "multipolygons":
        geoms = np.array([shapely.MultiPolygon([p, shapely.box(0, 0, 1, 1)]) for p in polygons], dtype=object)
    else:
        geoms = shapely.points(centres)
    geometry_type, coords, offsets = shapely.to_ragged_array(geoms)
    radius = 1.0 if kind == "points" else None
    shapes = ShapesModel.parse(coords, geometry=int(geometry_type), offsets=offsets, radius=radius)
    assert shapely.equals(shapes.geometry.array, geoms).all()
    back_type, back_coords, back_offsets = shapely.to_ragged_array(shapes.geometry.array)
    assert back_type == geometry_type
    np.testing.assert_array_equal(back_coords, coords)
    for a, b in zip(back_offsets, offsets, strict=True):
        np.testing.assert_array_equal(a, b)


def test_ragged_geometry_by_name(polygons: list[shapely.Polygon]) -> None:
    _, coords, offsets = shapely.to_ragged_array(polygons)
    shapes = ShapesModel.parse(coords, geometry="Polygon", offsets=offsets)
    assert shapes_type(shapes) == "polygons"


def _feature_collection(polygons: list[shapely.Polygon], with_ids: bool = False) -> dict:
    features = []
    for i, poly in enumerate(polygons):
        feature = {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(poly),
            "properties": {"score": i * 0.5},
        }
        if with_ids:
            feature["id"] = f"roi_{i}"
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def test_geojson_file(tmp_path: Path, polygons: list[shapely.Polygon]) -> None:
    path = tmp_path / "rois.geojson"
    path.write_text(json.dumps(_feature_collection(polygons)))
    for source in (path, str(path)):
        shapes = ShapesModel.parse(source)
        assert shapes_type(shapes) == "polygons"
        assert shapes["score"].tolist() == [i * 0.5 for i in range(N)]
        assert shapely.equals(shapes.geometry.array, np.array(polygons, dtype=object)).all()


def test_geojson_dict_and_string_with_ids(polygons: list[shapely.Polygon]) -> None:
    collection = _feature_collection(polygons, with_ids=True)
    from_dict = ShapesModel.parse(collection)
    from_text = ShapesModel.parse(json.dumps(collection))
    assert from_dict.index.tolist() == [f"roi_{i}" for i in range(N)]
    pd.testing.assert_frame_equal(pd.DataFrame(from_dict), pd.DataFrame(from_text))


def test_3d_geometries_warn(rng: np.random.Generator) -> None:
    with pytest.warns(UserWarning, match="z coordinate"):
        shapes = ShapesModel.parse(rng.random((4, 3)), radius=1.0)
    assert shapes_axes(shapes) == ("x", "y", "z")


def test_invalid_polygon_is_accepted() -> None:
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    assert not bowtie.is_valid
    ShapesModel.parse([bowtie, shapely.box(0, 0, 1, 1)])


# ------------------------------------------------------------------------------------------------------------
# invalid input: one test each
# ------------------------------------------------------------------------------------------------------------


def test_empty_shapes() -> None:
    with pytest.raises(ValidationError, match=r"^shapes element 'cells': has no rows"):
        ShapesModel.parse(gpd.GeoDataFrame(geometry=[]), name="cells")


def test_none_geometry(polygons: list[shapely.Polygon]) -> None:
    geoms = [*polygons, None]
    with pytest.raises(
        ValidationError, match=r"^shapes: column 'geometry' has 1 missing \(None\) geometries, at index 6"
    ):
        ShapesModel.parse(geoms)


def test_linestring(polygons: list[shapely.Polygon]) -> None:
    geoms = [*polygons, shapely.LineString([(0, 0), (1, 1)]), shapely.LineString([(0, 0), (2, 1)])]
    with pytest.raises(
        ValidationError, match=r"unsupported geometry types: 2 LineString \(index 'l0', 'l1'\)"
    ):
        ShapesModel.parse(geoms, index=[*range(N), "l0", "l1"])


def test_mixed_points_and_polygons(polygons: list[shapely.Polygon]) -> None:
    geoms = [*polygons, shapely.Point(1, 1)]
    with pytest.raises(ValidationError, match=r"mixes 1 Point \(index 6\) with 6 Polygon/MultiPolygon"):
        ShapesModel.parse(geoms)


def test_empty_polygon(polygons: list[shapely.Polygon]) -> None:
    geoms = [shapely.Polygon(), *polygons]
    with pytest.raises(ValidationError, match=r"has 1 empty geometries, at index 0"):
        ShapesModel.parse(geoms)


def test_circles_without_radius(centres: np.ndarray) -> None:
    with pytest.raises(ValidationError, match=r"^shapes element 'spots': column 'radius' is missing"):
        ShapesModel.parse(centres, name="spots")


@pytest.mark.parametrize("bad", [0.0, -1.5, np.nan, np.inf])
def test_bad_radius(circles: gpd.GeoDataFrame, bad: float) -> None:
    circles.index = [f"spot_{i}" for i in range(N)]
    circles.loc["spot_3", "radius"] = bad
    with pytest.raises(
        ValidationError,
        match=r"column 'radius' has 1 values that are not finite numbers > 0, at index 'spot_3'",
    ):
        ShapesModel.parse(circles)


def test_duplicate_index(circles: gpd.GeoDataFrame) -> None:
    circles.index = ["a", "b", "a", "c", "d", "b"]
    with pytest.raises(ValidationError, match=r"the index \(instance ids\) has duplicates: 'a', 'b'"):
        ShapesModel.parse(circles)


def test_radius_for_polygons(polygons: list[shapely.Polygon]) -> None:
    with pytest.raises(ValidationError, match=r"radius applies to circles"):
        ShapesModel.parse(polygons, radius=1.0)


def test_non_geometry_items(polygons: list[shapely.Polygon]) -> None:
    with pytest.raises(ValidationError, match=r"1 items are not shapely geometries \(positions \[2\]\)"):
        ShapesModel.parse([polygons[0], polygons[1], "not a shape"])


def test_validate_wrong_geometry_name(polygons: list[shapely.Polygon]) -> None:
    gdf = gpd.GeoDataFrame({"geom": polygons}, geometry="geom")
    with pytest.raises(ValidationError, match=r"the geometry column is 'geom', expected 'geometry'"):
        ShapesModel.validate(gdf)


def test_reparse_keeps_transformations(polygons: list[shapely.Polygon]) -> None:
    scale = Scale([0.5, 0.5], axes=("x", "y"))
    shapes = ShapesModel.parse(polygons, transformations={"microns": scale})
    subset = shapes.iloc[:3]  # derived frame: metadata travels in attrs
    again = ShapesModel.parse(subset)
    assert get_meta(again).transformations == {"microns": scale}
