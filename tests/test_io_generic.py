"""Generic readers: images (TIFF, PNG, JPEG), shapes (GeoJSON, GeoParquet, WKT CSV), points (CSV, gz, Parquet)."""

from __future__ import annotations

import gzip
import json

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from PIL import Image

from tissuestack import io as tio
from tissuestack.elements import get_meta, get_transformation, raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import _common, _generic
from tissuestack.io._technology import get_technology
from tissuestack.transforms import Identity, Scale

RNG = np.random.default_rng(7)


# ------------------------------------------------------------------------------------------------ images


def test_read_image_tiff_variants(tmp_path):
    cyx = RNG.integers(0, 255, size=(3, 40, 50), dtype=np.uint8)
    plain = tmp_path / "a.tif"
    tifffile.imwrite(plain, cyx, photometric="minisblack")
    img = tio.read_image(plain)
    assert img.dims == ("c", "y", "x")
    np.testing.assert_array_equal(img.values, cyx)
    deflate = tmp_path / "b.tif"
    tifffile.imwrite(deflate, cyx, photometric="minisblack", compression="zlib", rowsperstrip=7)
    np.testing.assert_array_equal(tio.read_image(deflate).values, cyx)
    yxc = tmp_path / "c.tif"
    tifffile.imwrite(yxc, np.moveaxis(cyx, 0, -1), photometric="rgb")
    np.testing.assert_array_equal(tio.read_image(yxc).values, cyx)
    ome = tmp_path / "d.ome.tif"
    tifffile.imwrite(ome, cyx, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    img = tio.read_image(ome, coordinate_system="um")
    assert get_transformation(img, "um") == Scale([0.5, 0.5], axes=("y", "x"))


def test_read_image_png_jpeg(tmp_path):
    rgb = RNG.integers(0, 255, size=(30, 20, 3), dtype=np.uint8)
    png = tmp_path / "hires.png"
    Image.fromarray(rgb).save(png)
    img = tio.read_image(png, pixel_size_um=2.0)
    np.testing.assert_array_equal(img.values, np.moveaxis(rgb, -1, 0))
    assert get_transformation(img, "global") == Scale([2.0, 2.0], axes=("y", "x"))
    jpg = tmp_path / "photo.jpg"
    yy, xx = np.mgrid[0:30, 0:20]
    smooth = np.stack([yy * 8, xx * 12, (yy + xx) * 4], axis=-1).astype(np.uint8)  # JPEG keeps gradients
    Image.fromarray(smooth).save(jpg, quality=95)
    img = tio.read_image(jpg, channel_names=["r", "g", "b"])
    assert img.shape == (3, 30, 20) and list(img.coords["c"].values) == ["r", "g", "b"]
    assert np.abs(img.values.astype(int) - np.moveaxis(smooth, -1, 0)).mean() < 3  # lossy
    gray16 = tmp_path / "labels.png"
    labels = RNG.integers(0, 500, size=(16, 24)).astype(np.uint16)
    Image.fromarray(labels).save(gray16)
    lab = tio.read_image(gray16, kind="labels")
    assert lab.dims == ("y", "x")
    np.testing.assert_array_equal(lab.values, labels)
    palette = tmp_path / "pal.png"
    Image.fromarray(rgb).convert("P").save(palette)
    assert tio.read_image(palette).shape == (3, 30, 20)
    with pytest.raises(ReaderError, match="one channel"):
        tio.read_image(png, kind="labels")


def test_read_image_guards_huge_decodes(tmp_path, monkeypatch):
    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(png)
    monkeypatch.setattr(_generic, "MAX_DECODED_BYTES", 5000)
    with pytest.raises(ReaderError, match="tiled TIFF"):
        tio.read_image(png)


def test_read_image_errors(tmp_path):
    with pytest.raises(ReaderError, match="does not exist"):
        tio.read_image(tmp_path / "none.png")
    bad = tmp_path / "x.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ReaderError, match="not a readable image"):
        tio.read_image(bad)
    other = tmp_path / "x.xyz"
    other.write_bytes(b"")
    with pytest.raises(ReaderError, match="unknown image file type"):
        tio.read_image(other)


# ------------------------------------------------------------------------------------------------ shapes


def _feature(geometry, properties, fid=None):
    out = {"type": "Feature", "geometry": geometry, "properties": properties}
    if fid is not None:
        out["id"] = fid
    return out


def test_read_shapes_geojson_polygons_keep_properties(tmp_path):
    square = [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]
    multi = [square, [[[10, 10], [12, 10], [12, 12], [10, 10]]]]
    fc = {
        "type": "FeatureCollection",
        "features": [
            _feature(
                {"type": "Polygon", "coordinates": square},
                {"cell": "c1", "area": 16.0, "classification": {"name": "Tumor", "color": [255, 0, 0]}},
            ),
            _feature(
                {"type": "MultiPolygon", "coordinates": multi},
                {"cell": "c2", "area": 18.0, "classification": {"name": "Stroma", "color": [0, 255, 0]}},
            ),
        ],
    }
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps(fc))
    gdf = tio.read_shapes(path)
    assert list(gdf.index) == [0, 1]
    assert list(gdf["cell"]) == ["c1", "c2"] and list(gdf["area"]) == [16.0, 18.0]
    assert list(gdf["classification.name"]) == ["Tumor", "Stroma"]
    assert json.loads(gdf["classification.color"].iloc[0]) == [255, 0, 0]
    assert gdf.geometry.iloc[1].geom_type == "MultiPolygon"
    assert gdf.geometry.area.tolist() == [16.0, 18.0]
    by_id = tio.read_shapes(path, index_column="cell")
    assert list(by_id.index) == ["c1", "c2"] and "cell" not in by_id.columns
    assert get_transformation(by_id, "global") == Identity()
    with pytest.raises(ReaderError, match="index_column 'nope'"):
        tio.read_shapes(path, index_column="nope")


def test_read_shapes_geojson_points_with_radius_and_ids(tmp_path):
    fc = {
        "type": "FeatureCollection",
        "features": [
            _feature({"type": "Point", "coordinates": [1.0, 2.0]}, {"r": 3.0}, fid="a"),
            _feature({"type": "Point", "coordinates": [5.0, 6.0]}, {"r": 4.0}, fid="b"),
        ],
    }
    path = tmp_path / "spots.json"
    path.write_text(json.dumps(fc))
    gdf = tio.read_shapes(path, radius="r")
    assert list(gdf.index) == ["a", "b"] and list(gdf["radius"]) == [3.0, 4.0]
    same = tio.read_shapes(path, radius=7)
    assert list(same["radius"]) == [7.0, 7.0]
    with pytest.raises(ReaderError, match="radius"):
        tio.read_shapes(path)  # circles without radius


def test_read_shapes_geoparquet_parquet_wkb_and_csv_wkt(tmp_path):
    polys = [shapely.box(0, 0, 1, 1), shapely.box(2, 2, 5, 4)]
    gdf = gpd.GeoDataFrame({"cell_id": ["x", "y"], "score": [0.1, 0.2]}, geometry=polys)
    gdf.to_parquet(tmp_path / "a.parquet")
    back = tio.read_shapes(tmp_path / "a.parquet", index_column="cell_id")
    assert list(back.index) == ["x", "y"] and back.geometry.area.tolist() == [1.0, 6.0]
    plain = pd.DataFrame({"cell_id": ["x", "y"], "geom": shapely.to_wkb(polys)})
    plain.to_parquet(tmp_path / "b.parquet")
    wkb = tio.read_shapes(tmp_path / "b.parquet", geometry_column="geom")
    assert wkb.geometry.area.tolist() == [1.0, 6.0]
    pd.DataFrame({"cell_id": ["x", "y"], "geometry": shapely.to_wkt(polys)}).to_csv(
        tmp_path / "c.csv", index=False
    )
    wkt = tio.read_shapes(tmp_path / "c.csv")
    assert wkt.geometry.area.tolist() == [1.0, 6.0] and list(wkt["cell_id"]) == ["x", "y"]
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "radius": [1.0, 2.0]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    circles = tio.read_shapes(tmp_path / "d.csv")
    assert circles.geometry.x.tolist() == [1.0, 2.0] and list(circles["radius"]) == [1.0, 2.0]
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(ReaderError, match="no geometry column"):
        tio.read_shapes(tmp_path / "e.csv")


def test_read_shapes_bad_geojson(tmp_path):
    path = tmp_path / "bad.geojson"
    path.write_text("{not json")
    with pytest.raises(ReaderError, match="not valid GeoJSON"):
        tio.read_shapes(path)
    path.write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    with pytest.raises(ReaderError, match="FeatureCollection"):
        tio.read_shapes(path)


# ------------------------------------------------------------------------------------------------ points


def _transcripts(n=5000):
    return pd.DataFrame(
        {
            "global_x": RNG.uniform(0, 100, n),
            "global_y": RNG.uniform(0, 50, n),
            "global_z": RNG.integers(0, 5, n).astype(float),
            "gene": RNG.choice(["A", "B", "C", "D"], n),
            "cell_id": RNG.integers(0, 100, n),
            "qv": RNG.uniform(20, 40, n),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".tsv"])
def test_read_points_formats(tmp_path, suffix, monkeypatch):
    df = _transcripts()
    path = tmp_path / f"tx{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path, row_group_size=1000)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    else:
        df.to_csv(path, index=False)  # pandas compresses .gz from the name
    monkeypatch.setattr(_common, "CSV_SPILL_ROWS", 1500)  # several chunks for the gz stream
    pts = tio.read_points(
        path,
        coordinates={"x": "global_x", "y": "global_y", "z": "global_z"},
        feature_key="gene",
        instance_key="cell_id",
    )
    assert isinstance(pts, dd.DataFrame)
    meta = get_meta(pts)
    assert meta.feature_key == "gene" and meta.instance_key == "cell_id"
    assert list(pts["gene"].cat.categories) == ["A", "B", "C", "D"]
    out = pts.compute()
    assert list(out.columns[:3]) == ["x", "y", "z"] or {"x", "y", "z"} <= set(out.columns)
    np.testing.assert_allclose(out["x"].to_numpy(), df["global_x"].to_numpy())
    np.testing.assert_allclose(out["z"].to_numpy(), df["global_z"].to_numpy())
    assert out["gene"].astype(str).tolist() == df["gene"].tolist()
    assert out["cell_id"].astype("int64").tolist() == df["cell_id"].tolist()
    if suffix == ".csv.gz":
        assert pts.npartitions == 4  # one per streamed chunk of 1500 rows
    if suffix == ".parquet":
        assert pts.npartitions >= 1


def test_read_points_default_columns_and_subset(tmp_path):
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "z": [0.0, 1.0], "a": [1, 2], "b": ["u", "v"]})
    df.to_csv(tmp_path / "p.csv", index=False)
    pts = tio.read_points(tmp_path / "p.csv")
    assert {"x", "y", "z", "a", "b"} == set(pts.columns)
    only = tio.read_points(tmp_path / "p.csv", columns=["a"])
    assert set(only.columns) == {"x", "y", "z", "a"}
    # integer-looking coordinates are read as floats
    assert pts.dtypes["x"] == np.float64


def test_read_points_column_errors_name_file_and_columns(tmp_path):
    df = _transcripts(10)
    df.to_parquet(tmp_path / "tx.parquet")
    with pytest.raises(ReaderError, match=r"tx\.parquet.*missing column\(s\) \['gx', 'name'\]"):
        tio.read_points(tmp_path / "tx.parquet", coordinates={"x": "gx", "y": "global_y"}, feature_key="name")
    with pytest.raises(ReaderError, match="does not exist"):
        tio.read_points(tmp_path / "nope.csv")
    with pytest.raises(ReaderError, match="coordinates must map"):
        tio.read_points(tmp_path / "tx.parquet", coordinates={"x": "global_x"})
    clash = pd.DataFrame({"x": [1.0], "y": [1.0], "gx": [2.0]})
    clash.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ReaderError, match=r"\['x'\] exist"):
        tio.read_points(tmp_path / "c.csv", coordinates={"x": "gx", "y": "y"})


def test_read_points_gz_type_change_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "CSV_SPILL_ROWS", 2)
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("x,y,cell\n1,2,1\n3,4,2\n5,6,abc\n")
    with pytest.raises(ReaderError, match="dtype="):
        tio.read_points(path, instance_key="cell")
    pts = tio.read_points(path, instance_key="cell", dtype={"cell": str})
    assert pts.compute()["cell"].tolist() == ["1", "2", "abc"]


def test_points_technology_stream(tmp_path):
    df = _transcripts(50)
    df.to_csv(tmp_path / "tx.csv.gz", index=False)
    tech = get_technology("points")
    assert {o.name for o in tech.options} >= {"x", "y", "feature_key", "instance_key", "name"}
    items = list(tech.iter_elements(tmp_path / "tx.csv.gz", x="global_x", y="global_y", feature_key="gene"))
    assert [n for n, _ in items] == ["tx"]
    assert set(items[0][1].columns) >= {"x", "y", "gene", "qv"} and "z" not in items[0][1].columns
    sdata = tech.read(tmp_path / "tx.csv.gz", x="global_x", y="global_y", z="global_z", name="transcripts")
    assert "z" in sdata["transcripts"].columns


def test_image_and_shapes_technologies(tmp_path):
    tifffile.imwrite(tmp_path / "dapi.ome.tif", RNG.integers(0, 9, (1, 8, 9), dtype=np.uint8))
    tech = get_technology("image")
    [(name, img)] = list(tech.iter_elements(tmp_path / "dapi.ome.tif"))
    assert name == "dapi" and raster_levels(img)[0].shape == (1, 8, 9)
    [(name, lab)] = list(tech.iter_elements(tmp_path / "dapi.ome.tif", kind="labels", name="seg"))
    assert name == "seg" and lab.dims == ("y", "x")
    fc = {"type": "FeatureCollection", "features": [_feature({"type": "Point", "coordinates": [1, 2]}, {})]}
    (tmp_path / "my spots.geojson").write_text(json.dumps(fc))
    [(name, gdf)] = list(get_technology("shapes").iter_elements(tmp_path / "my spots.geojson", radius="2.5"))
    assert name == "my_spots" and list(gdf["radius"]) == [2.5]
