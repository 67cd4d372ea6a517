"""Streaming conversion into a store: element by element, temp sibling, safe swap, CLI."""

from __future__ import annotations

import gc
import json
import weakref

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile

from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import Image2DModel, ShapesModel, get_meta, get_transformation, raster_levels
from tissuestack.errors import ReaderError, StoreError, ValidationError
from tissuestack.io import Option, Technology, convert
from tissuestack.store import _points_write as store_points

RNG = np.random.default_rng(3)


def _leftovers(folder, output_name):
    """Hidden temporary siblings of an output left in its folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{output_name}."))


def _shapes(n=3, offset=0.0):
    return ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[shapely.box(i + offset, 0, i + 1, 1) for i in range(n)])
    )


def _technology(stream, name="test"):
    return Technology(name=name, summary="test stream", iter_elements=stream, options=())


# ---------------------------------------------------------------------------------------- generic technologies


def test_convert_generic_image_shapes_points(tmp_path):
    cyx = RNG.integers(0, 255, size=(2, 40, 60), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "dapi.ome.tif",
        cyx,
        ome=True,
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 0.5,
            "PhysicalSizeY": 0.5,
            "Channel": {"Name": ["DAPI", "PolyT"]},
        },
    )
    out = convert(
        "image", tmp_path / "dapi.ome.tif", tmp_path / "img.zarr", progress=False, scale_factors=(2,)
    )
    sdata = read_zarr(out)
    levels = raster_levels(sdata["dapi"])
    np.testing.assert_array_equal(levels[0].values, cyx)
    assert levels[1].shape == (2, 20, 30)
    assert list(levels[0].coords["c"].values) == ["DAPI", "PolyT"]
    matrix = get_transformation(sdata["dapi"], "global").to_affine_matrix(("y", "x"), ("y", "x"))
    np.testing.assert_allclose(matrix, np.diag([0.5, 0.5, 1.0]))

    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": f"r{i}",
                "properties": {"label": f"region {i}"},
                "geometry": {"type": "Polygon", "coordinates": [[[i, 0], [i + 1, 0], [i + 1, 1], [i, 0]]]},
            }
            for i in range(3)
        ],
    }
    (tmp_path / "rois.geojson").write_text(json.dumps(fc))
    out = convert("shapes", tmp_path / "rois.geojson", tmp_path / "shp.zarr", progress=False, zarr_format=2)
    rois = read_zarr(out)["rois"]
    assert list(rois.index) == ["r0", "r1", "r2"] and list(rois["label"]) == [
        "region 0",
        "region 1",
        "region 2",
    ]

    df = pd.DataFrame(
        {"gx": RNG.uniform(0, 10, 500), "gy": RNG.uniform(0, 10, 500), "gene": RNG.choice(list("ABC"), 500)}
    )
    df.to_csv(tmp_path / "tx.csv.gz", index=False)
    out = convert(
        "points",
        tmp_path / "tx.csv.gz",
        tmp_path / "pts.zarr",
        progress=False,
        x="gx",
        y="gy",
        feature_key="gene",
    )
    pts = read_zarr(out)["tx"]
    back = pts.compute().sort_values(["x", "y"])
    ref = df.sort_values(["gx", "gy"])
    np.testing.assert_allclose(back["x"].to_numpy(), ref["gx"].to_numpy())
    assert back["gene"].astype(str).tolist() == ref["gene"].tolist()
    assert get_meta(pts).feature_key == "gene"
    assert _leftovers(tmp_path, "pts.zarr") == []


def test_points_stream_never_computes_the_whole_frame(tmp_path, monkeypatch):
    n = 6000
    df = pd.DataFrame(
        {"x": RNG.uniform(0, 100, n), "y": RNG.uniform(0, 100, n), "g": RNG.choice(list("ab"), n)}
    )
    dd.from_pandas(df, npartitions=6).to_parquet(tmp_path / "big.parquet")  # a dataset folder of 6 files
    monkeypatch.setattr(store_points, "IN_MEMORY_ROWS", 1000)  # this frame counts as "large"
    computed = []
    original = dd.DataFrame.compute

    def spy(self, *args, **kwargs):
        computed.append(self.npartitions)
        if self.npartitions > 1:
            raise AssertionError("a whole multi-partition points frame was computed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(dd.DataFrame, "compute", spy)
    out = convert("points", tmp_path / "big.parquet", tmp_path / "big.zarr", progress=False, feature_key="g")
    monkeypatch.setattr(dd.DataFrame, "compute", original)
    assert max(computed, default=1) == 1  # at most single partitions were computed
    back = read_zarr(out)["big"].compute()
    assert len(back) == n
    np.testing.assert_allclose(np.sort(back["x"].to_numpy()), np.sort(df["x"].to_numpy()))


# ---------------------------------------------------------------------------------------- streaming semantics


def test_each_element_is_written_when_yielded_and_then_dropped(tmp_path):
    seen = {}

    def stream(path):
        first = _shapes()
        ref = weakref.ref(first)
        yield "first", first
        del first
        # the converter has written it into the hidden temporary store and let it go
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr.tmp-")]
        seen["written"] = len(tmp) == 1 and (tmp[0] / "shapes" / "first").is_dir()
        gc.collect()
        seen["dropped"] = ref() is None
        yield "second", Image2DModel.parse(np.ones((1, 4, 4), np.uint8))

    out = convert(_technology(stream), "unused", tmp_path / "out.zarr", progress=False)
    assert seen == {"written": True, "dropped": True}
    sdata = read_zarr(out)
    assert set(sdata.shapes) == {"first"} and set(sdata.images) == {"second"}
    assert _leftovers(tmp_path, "out.zarr") == []
    # consolidated metadata lists both elements
    meta = json.loads((tmp_path / "out.zarr" / "zarr.json").read_text())
    assert {"shapes/first", "images/second"} <= set(meta["consolidated_metadata"]["metadata"])


def test_failing_stream_leaves_nothing(tmp_path):
    def stream(path):
        yield "ok", _shapes()
        raise ReaderError("input truncated in the middle")

    with pytest.raises(ReaderError, match="truncated"):
        convert(_technology(stream), "unused", tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    assert _leftovers(tmp_path, "out.zarr") == []


def test_existing_store_survives_failed_overwrite(tmp_path):
    def good(path):
        yield "old", _shapes(2)

    convert(_technology(good), "unused", tmp_path / "out.zarr", progress=False)

    def bad(path):
        yield "new", _shapes(5)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        convert(_technology(bad), "unused", tmp_path / "out.zarr", progress=False, overwrite=True)
    sdata = read_zarr(tmp_path / "out.zarr")
    assert set(sdata.shapes) == {"old"} and len(sdata["old"]) == 2
    assert _leftovers(tmp_path, "out.zarr") == []
    # a successful overwrite replaces it
    convert(
        _technology(lambda path: iter([("new", _shapes(4))])),
        "x",
        tmp_path / "out.zarr",
        overwrite=True,
        progress=False,
    )
    assert set(read_zarr(tmp_path / "out.zarr").shapes) == {"new"}


def test_existing_output_refused_before_reading(tmp_path):
    started = []

    def stream(path):
        started.append(True)
        yield "a", _shapes()

    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(StoreError, match="exists"):
        convert(_technology(stream), "unused", tmp_path / "out.zarr", progress=False)
    assert started == []
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "precious.txt").write_text("keep")
    with pytest.raises(StoreError, match="not a Zarr store"):
        convert(_technology(stream), "unused", tmp_path / "folder", progress=False, overwrite=True)
    assert (tmp_path / "folder" / "precious.txt").read_text() == "keep"


def test_duplicate_names_are_refused(tmp_path):
    def stream(path):
        yield "cells", _shapes()
        yield "Cells", _shapes()

    with pytest.raises(ValidationError, match="unique ignoring case"):
        convert(_technology(stream), "unused", tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists() and _leftovers(tmp_path, "out.zarr") == []


def test_progress_bar_reports_elements(tmp_path, capsys):
    def stream(path):
        yield "a", _shapes()
        yield "b", _shapes()

    convert(_technology(stream, name="demo"), "unused", tmp_path / "out.zarr", progress=True)
    err = capsys.readouterr().err
    assert "convert demo" in err and "2element" in err.replace(" ", "")


# ---------------------------------------------------------------------------------------- CLI


def test_cli_convert_points_and_errors(tmp_path, capsys):
    df = pd.DataFrame({"gx": [1.0, 2.0, 3.0], "gy": [1.0, 5.0, 2.0], "cell": [1, 1, 2]})
    df.to_csv(tmp_path / "tx.csv", index=False)
    out = tmp_path / "out.zarr"
    code = main(
        [
            "convert",
            "points",
            str(tmp_path / "tx.csv"),
            str(out),
            "--x",
            "gx",
            "--y",
            "gy",
            "--instance-key",
            "cell",
            "--name",
            "transcripts",
            "--zarr-format",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    pts = read_zarr(out)["transcripts"]
    assert get_meta(pts).instance_key == "cell" and len(pts.compute()) == 3
    assert (out / ".zgroup").exists()  # Zarr v2
    # an existing output without --overwrite, then a missing column: one-line errors, exit 2
    assert main(["convert", "points", str(tmp_path / "tx.csv"), str(out), "--x", "gx", "--y", "gy"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    code = main(
        ["convert", "points", str(tmp_path / "tx.csv"), str(out), "--overwrite", "--x", "nope", "--y", "gy"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing column(s) ['nope']" in err and err.count("\n") == 1
    assert read_zarr(out)["transcripts"] is not None  # the old store is intact
    assert main(["convert", "nope", "a", "b"]) == 2
    assert "unknown technology" in capsys.readouterr().err


def test_cli_list_and_option_types(tmp_path, capsys, monkeypatch):
    assert main(["convert", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("image", "shapes", "points"):
        assert f"\n{name}\n" in f"\n{listed}"
    assert "--feature-key STR" in listed and "--kind {image,labels}" in listed

    received = {}

    def stream(path, *, flag=True, count=1, ratio=0.5, names=None, mode="a"):
        received.update(flag=flag, count=count, ratio=ratio, names=names, mode=mode)
        yield "s", _shapes()

    tech = Technology(
        "custom",
        "a test technology",
        stream,
        (
            Option("flag", bool, True, "a switch"),
            Option("count", int, 1, "a count"),
            Option("ratio", float, 0.5, "a ratio"),
            Option("names", tuple, None, "names"),
            Option("mode", str, "a", "a mode", choices=("a", "b")),
        ),
    )
    from tissuestack import cli

    monkeypatch.setattr("tissuestack.io._technology.get_technology", lambda name: tech)
    code = cli.main(
        [
            "convert",
            "custom",
            "in",
            str(tmp_path / "o.zarr"),
            "--no-flag",
            "--count",
            "3",
            "--ratio",
            "0.25",
            "--names",
            "a,b",
            "--mode",
            "b",
            "--no-progress",
        ]
    )
    assert code == 0
    assert received == {"flag": False, "count": 3, "ratio": 0.25, "names": ("a", "b"), "mode": "b"}
    received.clear()
    assert cli.main(["convert", "custom", "in", str(tmp_path / "p.zarr"), "--no-progress"]) == 0
    assert received == {"flag": True, "count": 1, "ratio": 0.5, "names": None, "mode": "a"}  # reader defaults
    with pytest.raises(SystemExit):
        cli.main(["convert", "custom", "in", str(tmp_path / "q.zarr"), "--mode", "c"])


def test_convert_fake_xenium_smoke(tmp_path):
    from tissuestack.io import fake

    bundle = fake.write_xenium(tmp_path / "xenium", version="4.0.0")
    out = convert("xenium", bundle, tmp_path / "xenium.zarr", progress=False)
    sdata = read_zarr(out)
    assert len(sdata.tables) == 1 and len(sdata.points) == 1 and len(sdata.labels) >= 1
    assert _leftovers(tmp_path, "xenium.zarr") == []
