"""Xenium Explorer selections: CSV / GeoJSON exports read as shapes in µm, written back, overlaid on a reading."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from tissuestack import io
from tissuestack.elements import ShapesModel, get_transformation
from tissuestack.errors import NoPathError, ReaderError, ValidationError
from tissuestack.io._xenium_explorer import XENIUM_PIXEL_SIZE
from tissuestack.transforms import Identity, Scale

SQUARE = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
HOLE = [(2.0, 2.0), (4.0, 2.0), (4.0, 4.0), (2.0, 4.0)]
ISLAND = [(2.5, 2.5), (3.5, 2.5), (3.5, 3.5)]
FAR = [(20.0, 20.0), (30.0, 20.0), (30.0, 30.0)]


def _rows(name: str | None, ring, *, closed: bool = True) -> list[str]:
    ring = list(ring) + ([ring[0]] if closed else [])
    return [(f"{name}," if name is not None else "") + f"{x},{y}" for x, y in ring]


def _csv(
    path: Path, header: str, rows: list[str], comments=("#Selection name: Selection 1", "#Area (µm^2): 1")
):
    path.write_text("\n".join([*comments, header, *rows]) + "\n", encoding="utf-8")
    return path


def _matrix(element, cs: str) -> np.ndarray:
    return get_transformation(element, cs).to_affine_matrix(("x", "y"), ("x", "y"))


def _random_polygon(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 12):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.6, 1.0, n) * r
    return np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


# ------------------------------------------------------------------------------------------------ CSV


def test_single_selection_csv_named_by_comment_in_microns(tmp_path):
    path = _csv(tmp_path / "Selection_1_coordinates.csv", "X,Y", _rows(None, SQUARE, closed=False))
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["Selection 1"]
    assert shapes.geometry.iloc[0].equals(shapely.Polygon(SQUARE))
    # µm in global (Identity), morphology pixels through 1 / pixel size, as the Xenium reader's shapes
    assert get_transformation(shapes, "global") == Identity()
    np.testing.assert_allclose(_matrix(shapes, "pixels"), np.diag([1 / 0.2125, 1 / 0.2125, 1]))
    ShapesModel.validate(shapes)


def test_csv_without_name_comment_is_named_after_the_file(tmp_path):
    path = _csv(tmp_path / "Tumour_coordinates.csv", "X,Y", _rows(None, SQUARE), comments=("#x", "#y"))
    assert list(io.xenium_explorer_selection(path).index) == ["Tumour"]
    shapes = io.xenium_explorer_selection(path, pixel_size=0.5, pixel_coordinate_system="px")
    np.testing.assert_allclose(_matrix(shapes, "px"), np.diag([2.0, 2.0, 1]))
    assert set(get_transformation(shapes, get_all=True)) == {"global", "px"}
    only = io.xenium_explorer_selection(path, coordinate_system="microns", pixel_coordinate_system=None)
    assert set(get_transformation(only, get_all=True)) == {"microns"}


def test_csv_selections_holes_islands_multipolygons(tmp_path):
    rows = (
        _rows("S1", SQUARE)
        + _rows("S1", HOLE)
        + _rows("S1", ISLAND)
        + _rows("S1", FAR)
        + _rows("S2", HOLE, closed=False)  # an unclosed last ring is closed
    )
    path = _csv(tmp_path / "all.csv", "Selection,X,Y", rows)
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["S1", "S2"]
    expected = shapely.MultiPolygon(
        [shapely.Polygon(SQUARE, [HOLE]), shapely.Polygon(ISLAND), shapely.Polygon(FAR)]
    )
    s1 = shapes.geometry.loc["S1"]
    assert s1.geom_type == "MultiPolygon" and s1.equals(expected)
    assert np.isclose(s1.area, 100 - 4 + 0.5 + 50)
    assert shapes.geometry.loc["S2"].geom_type == "Polygon"
    assert shapes.geometry.loc["S2"].equals(shapely.Polygon(HOLE))
    # brute force: point membership matches the even-odd rule
    for point, inside in [
        ((1, 1), True),
        ((3, 2.2), False),
        ((3.2, 2.8), True),
        ((25, 22), True),
        ((15, 15), False),
    ]:
        assert s1.contains(shapely.Point(point)) is inside, point


def test_csv_many_nested_rings_match_brute_force(tmp_path):
    def square(x, y, side):
        return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]

    expected, rows = [], []
    for k in range(40):  # parts on a grid, each with two holes; every third hole holds an island
        x, y = 100.0 * (k % 8), 100.0 * (k // 8)
        holes = [square(x + 10, y + 10, 30), square(x + 50, y + 50, 30)]
        rows += _rows("many", square(x, y, 90)) + _rows("many", holes[0]) + _rows("many", holes[1])
        expected.append(shapely.Polygon(square(x, y, 90), holes))
        if k % 3 == 0:
            rows += _rows("many", square(x + 15, y + 15, 10))
            expected.append(shapely.Polygon(square(x + 15, y + 15, 10)))
    path = _csv(tmp_path / "many.csv", "Selection,X,Y", rows)
    geom = io.xenium_explorer_selection(path).geometry.iloc[0]
    assert geom.equals(shapely.MultiPolygon(expected))
    assert len(geom.geoms) == len(expected)
    assert np.isclose(geom.area, sum(p.area for p in expected))


def test_csv_name_column_variants_and_noncontiguous_rows(tmp_path):
    rows = _rows("a", SQUARE) + _rows("b", HOLE) + _rows("a", FAR)
    path = _csv(tmp_path / "named.csv", "Name,X,Y", rows)
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["a", "b"]
    assert shapes.geometry.loc["a"].equals(
        shapely.MultiPolygon([shapely.Polygon(SQUARE), shapely.Polygon(FAR)])
    )
    tsv = tmp_path / "regions.tsv"
    tsv.write_text("Region\tX\tY\n" + "\n".join(r.replace(",", "\t") for r in _rows("r1", SQUARE)) + "\n")
    custom = io.xenium_explorer_selection(tsv, name_column="Region")
    assert list(custom.index) == ["r1"] and custom.geometry.iloc[0].equals(shapely.Polygon(SQUARE))
    # names that look like numbers stay strings and line up with their geometries
    nums = _csv(tmp_path / "nums.csv", "Selection,X,Y", _rows("2", SQUARE) + _rows("1", FAR))
    shapes = io.xenium_explorer_selection(nums)
    assert list(shapes.index) == ["2", "1"] and shapes.index.dtype == object
    assert shapes.geometry.notna().all()
    assert shapes.geometry.loc["1"].equals(shapely.Polygon(FAR))


def test_csv_spaces_around_values(tmp_path):
    path = _csv(tmp_path / "spaced.csv", "Selection, X, Y", ["  s , 0.1 ,0", "s,1, 0", " s,1,1 "])
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["s"]
    assert shapes.geometry.iloc[0].equals(shapely.Polygon([(0.1, 0), (1, 0), (1, 1)]))


def test_csv_in_a_windows_code_page(tmp_path):
    path = tmp_path / "cp.csv"
    path.write_bytes("#Selection name: Zone µ\n#Area (µm^2): 1\nX,Y\n0,0\n1,0\n1,1\n".encode("cp1252"))
    assert list(io.xenium_explorer_selection(path).index) == ["Zone µ"]


def test_csv_gzip_and_bom(tmp_path):
    text = "\ufeff#Selection name: Z\n#c\nX,Y\n" + "\n".join(_rows(None, SQUARE)) + "\n"
    path = tmp_path / "z_coordinates.csv.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["Z"] and shapes.geometry.iloc[0].equals(shapely.Polygon(SQUARE))


@pytest.mark.parametrize(
    ("header", "rows", "expected"),
    [
        ("Selection,X", ["a,1", "a,2", "a,3"], r"no 'Y' column; expected vertex coordinates"),
        ("Selection,U,V", ["a,1,1"], r"no 'X' / 'Y' column"),
        ("Selection,X,Y", ["a,0,0", "a,1,0", "a,abc,1"], r"line 6: 'X' is 'abc'; expected finite numeric"),
        ("Selection,X,Y", ["a,0,0", "a,1,0", "a,1,nan"], r"line 6: 'Y' is 'nan'"),
        (
            "Selection,X,Y",
            ["a,0,0", "a,1,0", "a,0,0"],
            r"selection 'a' .*line 4.* 2 distinct vertices; expected",
        ),
        ("Selection,X,Y", [*_rows("a", SQUARE), "b,1,1", "b,2,2"], r"selection 'b' .*line 9.*2 distinct"),
        ("Selection,X,Y", ["a,0,0", ",1,0", "a,1,1"], r"line 5: empty 'Selection'"),
        ("Selection,X,Y", [], r"no vertex rows"),
    ],
)
def test_malformed_csv_names_file_and_expectation(tmp_path, header, rows, expected):
    path = _csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ReaderError, match=expected) as err:
        io.xenium_explorer_selection(path)
    assert "bad.csv" in str(err.value)


def test_blank_lines_and_crlf_keep_line_numbers(tmp_path):
    rows = ["a,0,0", "", "a,1,0", "  ", "a,1,1", "a,0,0", "", "b,0,0", "b,1,0", "b,x,1"]
    path = tmp_path / "blank.csv"
    path.write_bytes(("\r\n".join(["#one", "", "#two", "Selection,X,Y", *rows]) + "\r\n").encode())
    with pytest.raises(ReaderError, match=r"line 14: 'X' is 'b,x,1'|line 14: 'X' is 'x'"):
        io.xenium_explorer_selection(path)
    path.write_bytes(path.read_bytes().replace(b"b,x,1", b"b,2,2"))
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["a", "b"]
    assert shapes.geometry.loc["a"].equals(shapely.Polygon([(0, 0), (1, 0), (1, 1)]))
    path.write_bytes(path.read_bytes().replace(b"b,2,2", b"b,0,0"))
    with pytest.raises(ReaderError, match=r"selection 'b' \(the ring from line 12\) has 2 distinct vertices"):
        io.xenium_explorer_selection(path)


def test_missing_and_headerless_files(tmp_path):
    with pytest.raises(ReaderError, match="does not exist"):
        io.xenium_explorer_selection(tmp_path / "none.csv")
    only_comments = tmp_path / "c.csv"
    only_comments.write_text("#a\n#b\n")
    with pytest.raises(ReaderError, match="no header line"):
        io.xenium_explorer_selection(only_comments)
    path = _csv(tmp_path / "n.csv", "Selection,X,Y", _rows("a", SQUARE))
    with pytest.raises(ReaderError, match="no column 'Label' \\(name_column\\)"):
        io.xenium_explorer_selection(path, name_column="Label")


# ------------------------------------------------------------------------------------------------ GeoJSON


def _feature(geometry, **properties):
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _polygon(*rings):
    return {"type": "Polygon", "coordinates": [[list(p) for p in [*r, r[0]]] for r in rings]}


def test_geojson_polygons_multipolygons_names_properties(tmp_path):
    features = [
        _feature(_polygon(SQUARE, HOLE), name="tumour", classification={"name": "Tumor", "color": [1, 2, 3]}),
        _feature(
            {
                "type": "MultiPolygon",
                "coordinates": [_polygon(FAR)["coordinates"], _polygon(ISLAND)["coordinates"]],
            },
            classification={"name": "Stroma"},
        ),
        {"type": "Feature", "id": "feature-7", "geometry": _polygon(HOLE), "properties": None},
        _feature(_polygon(FAR), name="tumour", classification={"name": "Other"}),  # same name: one more part
    ]
    path = tmp_path / "sel.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    shapes = io.xenium_explorer_selection(path)
    assert list(shapes.index) == ["tumour", "Stroma", "feature-7"]
    assert shapes.geometry.loc["tumour"].equals(
        shapely.MultiPolygon([shapely.Polygon(SQUARE, [HOLE]), shapely.Polygon(FAR)])
    )
    assert shapes.geometry.loc["Stroma"].equals(
        shapely.MultiPolygon([shapely.Polygon(FAR), shapely.Polygon(ISLAND)])
    )
    assert shapes.geometry.loc["feature-7"].equals(shapely.Polygon(HOLE))
    assert shapes["classification"].tolist()[:2] == ["Tumor", "Stroma"]
    assert get_transformation(shapes, "global") == Identity()
    # one Feature alone, and a named property
    one = tmp_path / "one.json"
    one.write_text(json.dumps(_feature(_polygon(SQUARE), region="R", name="ignored")))
    assert list(io.xenium_explorer_selection(one, name_column="region").index) == ["R"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", r"not valid JSON"),
        (
            json.dumps({"type": "Polygon", "coordinates": []}),
            r"GeoJSON of type 'Polygon' is not supported; expected a FeatureCollection",
        ),
        (json.dumps({"type": "FeatureCollection", "features": []}), r"no features"),
        (
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [_feature({"type": "Point", "coordinates": [1, 2]})],
                }
            ),
            r"feature 0 \('Selection 1'\) has geometry 'Point'; expected a Polygon or MultiPolygon",
        ),
        (
            json.dumps(
                [_feature({"type": "Polygon", "coordinates": [[[0, 0], ["a", 1], [1, 1], [0, 0]]]}, name="q")]
            ),
            r"feature 0 \('q'\), ring 0 has non-numeric coordinates",
        ),
        (
            json.dumps([_feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, name="q")]),
            r"ring 0 has 2 distinct vertices; expected a polygon ring of at least 3",
        ),
        (json.dumps([_feature(None, name="q")]), r"has geometry 'no geometry'"),
    ],
)
def test_malformed_geojson(tmp_path, content, expected):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(ReaderError, match=expected) as err:
        io.xenium_explorer_selection(path)
    assert "bad.geojson" in str(err.value)


# ------------------------------------------------------------------------------------------------ round trips


def _random_selections(seed: int = 0):
    rng = np.random.default_rng(seed)
    geoms, names = [], []
    for i in range(12):
        cx, cy = rng.uniform(0, 1000, 2)
        outer = _random_polygon(rng, cx, cy, 40.0)
        kind = i % 3
        if kind == 0:
            geom = shapely.Polygon(outer)
        elif kind == 1:  # a hole (a small polygon around the centre)
            geom = shapely.Polygon(outer, [_random_polygon(rng, cx, cy, 10.0, 6)])
        else:
            geom = shapely.MultiPolygon(
                [
                    shapely.Polygon(outer, [_random_polygon(rng, cx, cy, 8.0, 5)]),
                    shapely.Polygon(outer + 200.0),
                ]
            )
        geoms.append(geom)
        names.append(['Région, "quoted" #1', "2", "plain"][kind] + f" {i}")
    return ShapesModel.parse(np.array(geoms, dtype=object), index=names)


@pytest.mark.parametrize("fmt", ["csv", "geojson"])
def test_round_trip_is_identical(tmp_path, fmt):
    shapes = _random_selections()
    shapes["score"] = np.arange(len(shapes), dtype=np.int64)
    path = io.write_xenium_explorer_selection(shapes, tmp_path / f"out.{fmt}")
    back = io.xenium_explorer_selection(path)
    assert list(back.index) == list(shapes.index)
    assert back.geometry.geom_equals_exact(shapes.geometry, tolerance=0).all()
    assert (shapely.get_type_id(back.geometry.array) == shapely.get_type_id(shapes.geometry.array)).all()
    if fmt == "geojson":
        assert back["score"].tolist() == shapes["score"].tolist()
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("#") and lines[1].startswith("#") and lines[2] == "Selection,X,Y"
    # and again: the file written from the re-read element is byte-identical
    again = io.write_xenium_explorer_selection(back, tmp_path / f"again.{fmt}")
    assert again.read_bytes() == path.read_bytes()
    gz = io.write_xenium_explorer_selection(back, tmp_path / f"out.{fmt}.gz")
    assert gzip.decompress(gz.read_bytes()) == path.read_bytes()
    assert io.xenium_explorer_selection(gz).geometry.geom_equals_exact(shapes.geometry, tolerance=0).all()
    with pytest.raises(FileExistsError):
        io.write_xenium_explorer_selection(shapes, path)
    io.write_xenium_explorer_selection(shapes, path, overwrite=True, format=fmt)


def test_geojson_round_trip_without_fast_paths(tmp_path, monkeypatch):
    import sys

    from tissuestack.io import _xenium_explorer

    shapes = _random_selections(seed=3)
    fast = io.write_xenium_explorer_selection(shapes, tmp_path / "fast.geojson")
    monkeypatch.setattr(
        _xenium_explorer, "_geos_geojson_is_exact", lambda: False
    )  # old GEOS: shapely mapping
    monkeypatch.setitem(sys.modules, "orjson", None)  # orjson absent: the standard library's json
    slow = io.write_xenium_explorer_selection(shapes, tmp_path / "slow.geojson")
    for path in (fast, slow):
        back = io.xenium_explorer_selection(path)
        assert list(back.index) == list(shapes.index)
        assert back.geometry.geom_equals_exact(shapes.geometry, tolerance=0).all()
    assert json.loads(fast.read_text()) == json.loads(slow.read_text())


def test_export_transforms_into_microns(tmp_path):
    pixels = np.array([[0, 0], [100, 0], [100, 50], [0, 50]], dtype=float)
    shapes = ShapesModel.parse(
        [shapely.Polygon(pixels)],
        index=["roi"],
        transformations={"global": Scale([XENIUM_PIXEL_SIZE] * 2, axes=("x", "y")), "pixels": Identity()},
    )
    path = io.write_xenium_explorer_selection(shapes, tmp_path / "roi.csv")
    back = io.xenium_explorer_selection(path)
    np.testing.assert_allclose(
        shapely.get_coordinates(back.geometry.iloc[0])[:-1], pixels * XENIUM_PIXEL_SIZE
    )
    with pytest.raises(NoPathError, match="'elsewhere'"):
        io.write_xenium_explorer_selection(shapes, tmp_path / "x.csv", coordinate_system="elsewhere")


def test_export_circles_and_name_column_and_bad_names(tmp_path):
    circles = ShapesModel.parse(np.array([[10.0, 10.0], [50.0, 50.0]]), radius=[2.0, 3.0], index=[0, 1])
    circles["label"] = ["c0", "c1"]
    back = io.xenium_explorer_selection(
        io.write_xenium_explorer_selection(circles, tmp_path / "c.geojson", name_column="label")
    )
    assert list(back.index) == ["c0", "c1"]
    np.testing.assert_allclose(back.geometry.area, np.pi * np.array([4.0, 9.0]), rtol=0.01)
    np.testing.assert_allclose(
        shapely.get_coordinates(back.geometry.centroid), [[10, 10], [50, 50]], atol=1e-9
    )
    clash = ShapesModel.parse([shapely.Polygon(SQUARE), shapely.Polygon(FAR)], index=["a", "b"])
    clash["group"] = [1, 1]
    with pytest.raises(ValidationError, match="not unique"):
        io.write_xenium_explorer_selection(clash, tmp_path / "clash.csv", name_column="group")
    with pytest.raises(ValidationError, match="no column 'nope'"):
        io.write_xenium_explorer_selection(clash, tmp_path / "clash.csv", name_column="nope")
    spaced = ShapesModel.parse([shapely.Polygon(SQUARE)], index=[" a"])
    with pytest.raises(ValidationError, match="surrounding spaces"):
        io.write_xenium_explorer_selection(spaced, tmp_path / "spaced.csv")


# ------------------------------------------------------------------------------------------------ overlay


@pytest.fixture(scope="module")
def xenium_reading(tmp_path_factory):
    from tissuestack.io.fake import write_xenium

    folder = write_xenium(tmp_path_factory.mktemp("xenium") / "outs", n_cells=6)
    return io.xenium(
        folder, transcripts=False, morphology_focus=False, morphology_mip=False, aligned_images=False
    )


def test_overlay_on_a_xenium_reading(tmp_path, xenium_reading):
    sdata = xenium_reading
    cells = sdata["cell_boundaries"]
    # a selection around the first two cells, drawn in µm as Xenium Explorer does
    x0, y0, x1, y1 = shapely.union_all(cells.geometry.iloc[:2].to_numpy()).buffer(0.3).bounds
    box = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    path = _csv(tmp_path / "cells_coordinates.csv", "Selection,X,Y", _rows("two cells", box))
    added = io.add_xenium_explorer_selection(sdata, path)
    assert "selections" in sdata and sdata.kind_of("selections") == "shapes"
    for cs in ("global", "pixels"):
        np.testing.assert_allclose(_matrix(added, cs), _matrix(cells, cs))
        between = sdata.get_transformation_between("selections", "cell_boundaries")
        np.testing.assert_allclose(between.to_affine_matrix(("x", "y"), ("x", "y")), np.eye(3), atol=1e-12)
    # the cells the selection covers (brute force on the centroids of the table, in µm)
    centroids = sdata["table"].obsm["spatial"]
    inside = shapely.contains_xy(added.geometry.iloc[0], centroids[:, 0], centroids[:, 1])
    assert inside.sum() == 2 and inside[:2].all()
    # in morphology pixels the selection covers the label pixels of those two cells and of no other
    labels = np.asarray(sdata["cell_labels"]["scale0"]["image"].values)
    pixel_box = shapely.transform(added.geometry.iloc[0], lambda xy: xy / XENIUM_PIXEL_SIZE)
    yy, xx = np.nonzero(labels)
    covered = shapely.contains_xy(pixel_box, xx + 0.5, yy + 0.5)
    assert set(np.unique(labels[yy[covered], xx[covered]]).tolist()) == set(
        sdata["table"].obs["cell_labels"].iloc[:2].tolist()
    )
    with pytest.raises(KeyError, match="exists already"):
        io.add_xenium_explorer_selection(sdata, path)
    io.add_xenium_explorer_selection(sdata, path, overwrite=True, like="nucleus_boundaries")
    with pytest.raises(ValueError, match="'cell_labels' is a labels element; expected shapes or points"):
        io.add_xenium_explorer_selection(sdata, path, overwrite=True, like="cell_labels")
    # exported from the reading, it is the file's polygon again
    out = io.write_xenium_explorer_selection("selections", tmp_path / "out.csv", sdata=sdata)
    assert io.xenium_explorer_selection(out).geometry.iloc[0].equals(shapely.Polygon(box))
    # the cell boundaries exported in µm from the pixel system are the reader's µm polygons
    pixel_cells = io.write_xenium_explorer_selection(
        "cell_boundaries", tmp_path / "cells.geojson", sdata=sdata, coordinate_system="pixels"
    )
    back = io.xenium_explorer_selection(pixel_cells, pixel_size=None)
    np.testing.assert_allclose(
        shapely.get_coordinates(back.geometry.array),
        shapely.get_coordinates(cells.geometry.array) / XENIUM_PIXEL_SIZE,
    )
    assert list(back.index) == list(cells.index)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_import_and_export(tmp_path, xenium_reading, capsys):
    from tissuestack import read_zarr
    from tissuestack.cli import main

    store = tmp_path / "x.zarr"
    sdata = xenium_reading.subset(["cell_boundaries", "nucleus_boundaries"])
    sdata.write(store)
    rows = _rows("left", [(0.5, 0.5), (6.0, 0.5), (6.0, 6.0)]) + _rows(
        "right", [(7.0, 0.5), (12.0, 0.5), (12.0, 6.0)]
    )
    path = _csv(tmp_path / "two.csv", "Selection,X,Y", rows)
    assert main(["selections", "import", str(store), str(path), "--name", "rois"]) == 0
    assert "added 2 selection(s)" in capsys.readouterr().out
    reread = read_zarr(store)
    rois = reread["rois"]
    assert list(rois.index) == ["left", "right"]
    expected = io.xenium_explorer_selection(path)
    assert rois.geometry.geom_equals_exact(expected.geometry, tolerance=0).all()
    np.testing.assert_allclose(_matrix(rois, "pixels"), _matrix(reread["cell_boundaries"], "pixels"))
    # a second import under the same name is refused (exit status 2, message names the element)
    assert main(["selections", "import", str(store), str(path), "--name", "rois"]) == 2
    assert "'rois' exists already" in capsys.readouterr().err
    out = tmp_path / "rois.geojson"
    assert main(["selections", "export", str(store), "rois", str(out)]) == 0
    back = io.xenium_explorer_selection(out)
    assert back.geometry.geom_equals_exact(expected.geometry, tolerance=0).all()
    assert main(["selections", "export", str(store), "rois", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    bad = _csv(tmp_path / "bad.csv", "Selection,X", ["a,1"])
    assert main(["selections", "import", str(store), str(bad), "--name", "bad"]) == 2
    assert "bad.csv" in capsys.readouterr().err and "bad" not in read_zarr(store)
