"""Whole-store reading and writing: round trips in both Zarr formats, laziness, safety and metadata updates."""

import json
import os
import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr

import tissuestack as ts
from tissuestack import FormatError, Scale, StoreError, Translation, datasets, read_zarr
from tissuestack._container.summary import summarize
from tissuestack.cli import main
from tissuestack.elements import get_meta, get_table_keys, raster_levels
from tissuestack.store import _io as store_io


@pytest.fixture(scope="module")
def sdata():
    return datasets.synthetic(n_cells=60, n_transcripts=3_000, n_genes=8, image_size=64, seed=1)


def _points_sorted(df):
    return df.compute().sort_index()


def assert_same(a, b):
    assert set(a) == set(b)
    assert sorted(a.coordinate_systems) == sorted(b.coordinate_systems)
    for kind in ("images", "labels"):
        for name, el in a.items([kind]):
            la, lb = raster_levels(el), raster_levels(b[name])
            assert [x.shape for x in la] == [x.shape for x in lb]
            for x, y in zip(la, lb, strict=True):
                np.testing.assert_array_equal(x.values, y.values)
            if kind == "images":
                assert list(la[0].coords["c"].values) == list(lb[0].coords["c"].values)
    for name, el in a.items(["points"]):
        pa, pb = _points_sorted(el), _points_sorted(b[name])
        pd.testing.assert_frame_equal(pa, pb, check_index_type=False)
        ma, mb = get_meta(el), get_meta(b[name])
        assert (ma.feature_key, ma.instance_key) == (mb.feature_key, mb.instance_key)
    for name, el in a.items(["shapes"]):
        other = b[name]
        assert list(el.index) == list(other.index)
        assert el.geometry.geom_equals_exact(other.geometry, 1e-12).all()
    for name, t in a.items(["tables"]):
        u = b[name]
        assert t.shape == u.shape
        np.testing.assert_array_equal(np.asarray(t.X.todense()), np.asarray(u.X.todense()))
        assert get_table_keys(t) == get_table_keys(u)
    for name in a:
        if a.kind_of(name) == "tables":
            continue
        ta = a.get_transformation(name, get_all=True)
        tb = b.get_transformation(name, get_all=True)
        assert set(ta) == set(tb)
        axes = ts.get_axes(a[name])
        for cs in ta:
            assert ta[cs].equivalent(tb[cs], tuple(a for a in axes if a != "c"))


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_round_trip(sdata, tmp_path, zarr_format):
    path = tmp_path / "s.zarr"
    sdata.write(path, zarr_format=zarr_format)
    back = read_zarr(path)
    assert back._store_info["zarr_format"] == zarr_format
    assert back._store_info["container_version"] == ("0.2" if zarr_format == 3 else "0.1")
    assert_same(sdata, back)
    assert back.attrs == sdata.attrs


def test_open_is_lazy_and_metadata_only(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.write(path)
    back = read_zarr(path)
    assert not any(back.is_loaded(n) for n in back)
    assert set(back.coordinate_systems) == {"global", "pixels"}
    text = repr(back)
    assert "(not loaded)" in text and "3,000 rows" in text
    assert not any(back.is_loaded(n) for n in back)
    img = back["morphology"]
    assert back.is_loaded("morphology")
    assert all(isinstance(lvl.data, da.Array) for lvl in raster_levels(img))
    # a transformation set before loading survives loading
    back.set_transformation("cell_labels", Scale([3.0, 3.0], ("x", "y")), "big")
    assert ts.get_transformation(back["cell_labels"], "big") == Scale([3.0, 3.0], ("x", "y"))


def test_selection_by_kind_and_name(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.write(path)
    assert set(read_zarr(path, selection=["shapes"])) == {
        "cell_boundaries",
        "nuclei",
        "spots",
        "regions_of_interest",
    }
    assert set(read_zarr(path, selection=["transcripts", "table"])) == {"transcripts", "table"}
    with pytest.raises(KeyError, match=r"no element\(s\) named \['nope'\]"):
        read_zarr(path, selection=["nope"])


def test_refuses_to_overwrite_without_flag(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.write(path)
    with pytest.raises(StoreError, match=r"exists; pass overwrite=True"):
        sdata.write(path)
    small = sdata.subset(["spots"])
    small.write(path, overwrite=True)
    assert set(read_zarr(path)) == {"spots"}


def test_refuses_to_replace_a_non_zarr_folder(sdata, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match=r"is a folder that is not a Zarr store; it is never replaced"):
        sdata.write(folder, overwrite=True)
    # without overwrite the error does not suggest overwrite=True (which would be refused too)
    with pytest.raises(StoreError, match=r"never replaced, even with overwrite=True") as info:
        sdata.write(folder)
    assert "pass overwrite=True" not in str(info.value)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match=r"is a file, not a Zarr store"):
        sdata.write(tmp_path / "notes.txt")
    assert (folder / "holiday.jpg").exists()


def test_refuses_to_overwrite_the_store_backing_lazy_data(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.write(path)
    back = read_zarr(path)
    with pytest.raises(StoreError, match=r"lazily back the data being written"):
        back.write(path, overwrite=True)
    # also when only one element of another object is backed by that store
    other = ts.SpatialData(points={"tx": back["transcripts"]})
    with pytest.raises(StoreError, match=r"points/transcripts"):
        other.write(path, overwrite=True)
    assert_same(sdata, read_zarr(path))


def test_failed_write_leaves_old_store_intact(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    small = sdata.subset(["spots", "nuclei"])
    small.write(path)
    before = sorted(os.listdir(path))
    with pytest.raises(RuntimeError, match="injected failure"):
        store_io.write_store(
            {k: dict(sdata._store[k]) for k in ("images", "labels", "points", "shapes", "tables")},
            {},
            path,
            overwrite=True,
            fail_after="points/transcripts",
        )
    assert sorted(os.listdir(path)) == before
    assert_same(small, read_zarr(path))
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # temporary sibling removed


def test_failed_write_of_new_store_leaves_nothing(sdata, tmp_path):
    path = tmp_path / "new.zarr"
    with pytest.raises(RuntimeError, match="injected failure"):
        store_io.write_store({"shapes": {"spots": sdata["spots"]}}, {}, path, fail_after="shapes/spots")
    assert list(tmp_path.iterdir()) == []


def test_write_element_and_delete_keep_consolidated_metadata_in_sync(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sub = sdata.subset(["spots"])
    sub.write(path)
    sub["nuclei"] = sdata["nuclei"]
    sub.write_element("nuclei")
    assert set(read_zarr(path)) == {"spots", "nuclei"}  # found through the consolidated metadata
    with pytest.raises(StoreError, match=r"shapes/nuclei exists; pass overwrite=True"):
        sub.write_element("nuclei")
    sub.labels["cell_labels"] = sdata["cell_labels"]
    sub.write_element("cell_labels")
    labels_attrs = json.loads((path / "labels" / "zarr.json").read_text())["attributes"]
    assert labels_attrs["ome"]["labels"] == ["cell_labels"]
    sub.delete_element("nuclei")
    assert set(read_zarr(path)) == {"spots", "cell_labels"}
    sub.delete_element("cell_labels")
    labels_attrs = json.loads((path / "labels" / "zarr.json").read_text())["attributes"]
    assert labels_attrs["ome"]["labels"] == []


def test_failed_element_write_keeps_old_element(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["spots"]).write(path)
    replacement = ts.ShapesModel.parse(np.array([[1.0, 2.0]]), radius=3.0)
    with pytest.raises(RuntimeError, match="injected failure"):
        store_io.write_element(path, "shapes", "spots", replacement, overwrite=True, fail_after_data=True)
    back = read_zarr(path)
    assert len(back["spots"]) == len(sdata["spots"])
    assert not [p for p in (path / "shapes").iterdir() if p.name.startswith(".")]


def test_write_element_guards_files_other_elements_read(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["transcripts"]).write(path)
    back = read_zarr(path)
    pts = back["transcripts"]
    with pytest.raises(StoreError, match=r"read lazily from the very files it would replace"):
        store_io.write_element(path, "points", "transcripts", pts, overwrite=True)
    back["copy"] = pts
    back["other"] = pts
    back.write_element("copy")  # same data under another name is fine; 'copy' then reads points/copy
    assert back._source_of("points", "copy")[1] == "points/copy"
    with pytest.raises(StoreError, match=r"\['other'\] of this object are read lazily from points/transcripts"):
        back.delete_element("transcripts")
    del back["other"]
    back.delete_element("transcripts")
    assert "transcripts" not in back
    assert set(read_zarr(path)) == {"copy"}
    assert len(back["copy"]) == len(pts)


def test_write_metadata_updates_transformations_channels_and_attrs(sdata, tmp_path):
    for zarr_format in (3, 2):
        path = tmp_path / f"s{zarr_format}.zarr"
        sdata.subset(["morphology", "spots", "transcripts"]).write(path, zarr_format=zarr_format)
        back = read_zarr(path)
        back.set_transformation("spots", Translation([5.0, 6.0], ("x", "y")), "shifted")
        back.set_transformation("morphology", Scale([2.0, 2.0], ("x", "y")), "shifted")
        back.set_transformation("transcripts", Translation([1.0, 1.0, 0.0], ("x", "y", "z")), "shifted")
        ts.set_channel_names(back["morphology"], ["a", "b", "c"])
        back.attrs["note"] = "hello"
        back.write_metadata()
        again = read_zarr(path)
        assert again._store_info["container_version"] == ("0.2" if zarr_format == 3 else "0.1")
        assert again.attrs["note"] == "hello"
        assert again.get_transformation("spots", "shifted").equivalent(
            Translation([5.0, 6.0], ("x", "y")), ("x", "y")
        )
        assert "shifted" in again.get_transformation("transcripts", get_all=True)
        assert list(raster_levels(again["morphology"])[0].coords["c"].values) == ["a", "b", "c"]
        # consolidated copy agrees with the element's own metadata
        g = zarr.open_group(str(path), mode="r", use_consolidated=True)
        assert "shifted" in json.dumps(g["shapes/spots"].attrs.asdict())


def test_user_attrs_key_reserved(sdata, tmp_path):
    bad = sdata.subset(["spots"])
    bad.attrs["spatialdata_attrs"] = {"x": 1}
    with pytest.raises(StoreError, match=r"reserved"):
        bad.write(tmp_path / "s.zarr")


def test_corrupt_element_error_and_warn_mode(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["spots", "nuclei", "transcripts"]).write(path, consolidate_metadata=False)
    meta = path / "shapes" / "nuclei" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["spatialdata_attrs"]["version"] = "9.9"
    meta.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"unknown shapes format version '9.9'"):
        read_zarr(path)
    with pytest.warns(UserWarning, match=r"skipping shapes/nuclei"):
        back = read_zarr(path, on_bad_elements="warn")
    assert set(back) == {"spots", "transcripts"}


def test_truncated_points_file_names_element_and_file(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["transcripts", "spots"]).write(path)
    part = sorted((path / "points" / "transcripts" / "points.parquet").iterdir())[0]
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(StoreError, match=r"transcripts.*part\.0\.parquet"):
        read_zarr(path)
    with pytest.warns(UserWarning, match=r"skipping points/transcripts"):
        back = read_zarr(path, on_bad_elements="warn")
    assert set(back) == {"spots"}


def test_invalid_element_name_in_store_is_refused(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["spots"]).write(path, consolidate_metadata=False)
    shutil.copytree(path / "shapes" / "spots", path / "shapes" / "has space")
    with pytest.raises(ts.ValidationError, match=r"invalid shapes element name 'has space'"):
        read_zarr(path)


def test_unknown_extra_groups_and_hidden_leftovers_are_ignored(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["spots"]).write(path, consolidate_metadata=False)
    root = zarr.open_group(str(path), mode="r+")
    root.create_group("table").create_group("table")  # legacy spatialdata < 0.1 layout
    root.create_group("my_extra_stuff").attrs["x"] = 1  # foreign data
    shutil.copytree(path / "shapes" / "spots", path / "shapes" / ".spots.tmp-deadbeef")  # interrupted write
    back = read_zarr(path)
    assert set(back) == {"spots"}


def test_invalid_write_formats(sdata, tmp_path):
    with pytest.raises(FormatError, match=r"zarr_format must be 2 or 3"):
        sdata.write(tmp_path / "a.zarr", zarr_format=4)
    with pytest.raises(FormatError, match=r"shapes format '0.1' cannot be written in a Zarr v3 store"):
        sdata.write(tmp_path / "b.zarr", formats={"shapes": "0.1"})


def test_legacy_v2_element_formats(sdata, tmp_path):
    path = tmp_path / "legacy.zarr"
    sub = sdata.subset(["morphology", "nuclei", "cell_boundaries"])
    sub.write(path, zarr_format=2, formats={"images": "0.1", "shapes": "0.1"})
    attrs = json.loads((path / "images" / "morphology" / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    back = read_zarr(path)
    assert back._store_info["element_versions"]["shapes/nuclei"] == "0.1"
    assert_same(sub, back)


def test_raster_metadata_layout_v3(sdata, tmp_path):
    path = tmp_path / "s.zarr"
    sdata.subset(["morphology", "cell_labels"]).write(path)
    img = json.loads((path / "images" / "morphology" / "zarr.json").read_text())["attributes"]
    assert img["ome"]["version"] == "0.5-dev-spatialdata"
    assert img["spatialdata_attrs"] == {"version": "0.3"}
    ms = img["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["s0", "s1", "s2"]
    assert ms["datasets"][1]["coordinateTransformations"][0] == {"type": "scale", "scale": [1.0, 2.0, 2.0]}
    channels = img["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == ["DAPI", "membrane", "stain"]
    assert channels[0]["window"] == {"start": 0.0, "end": 65535.0, "min": 0.0, "max": 65535.0}
    cts = {t["output"]["name"]: t for t in ms["coordinateTransformations"]}
    assert cts["pixels"]["type"] == "identity" and cts["global"]["type"] == "scale"
    assert cts["global"]["input"]["name"] == "cyx"
    arr = json.loads((path / "images" / "morphology" / "s0" / "zarr.json").read_text())
    assert arr["dimension_names"] == ["c", "y", "x"]
    lab = json.loads((path / "labels" / "cell_labels" / "zarr.json").read_text())["attributes"]
    assert lab["ome"]["image-label"] == {"version": "0.5"} and "omero" not in lab["ome"]
    root = json.loads((path / "zarr.json").read_text())
    assert root["attributes"]["spatialdata_attrs"]["version"] == "0.2"
    assert "consolidated_metadata" in root


def test_info_validate_convert_cli(sdata, tmp_path, capsys):
    path = tmp_path / "s.zarr"
    sdata.write(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format: Zarr v3, container 0.2" in out and "points/transcripts: format 0.2" in out
    assert main(["validate", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["convert-format", str(path), str(tmp_path / "v2.zarr"), "--zarr-format", "2"]) == 0
    assert (tmp_path / "v2.zarr" / ".zmetadata").exists()
    capsys.readouterr()
    assert main(["info", "--json", str(tmp_path / "v2.zarr")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["points"]["transcripts"]["rows"] == 3_000
    assert summary["coordinate_systems"] == ["global", "pixels"]
    # break one element: validate lists it and exits 1
    (path / "labels" / "cell_labels" / "s0" / "zarr.json").unlink()
    assert main(["validate", str(path)]) == 1
    assert "labels/cell_labels" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert "no Zarr store found" in capsys.readouterr().err


def test_write_to_memory_filesystem(sdata):
    sub = sdata.subset(["spots", "transcripts", "morphology", "table", "cell_boundaries"])
    sub.write("memory://bucket/s.zarr")
    assert_same(sub, read_zarr("memory://bucket/s.zarr"))


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
FIXTURES = sorted(REFERENCE.glob("*.zarr")) if REFERENCE.exists() else []


@pytest.mark.skipif(not FIXTURES, reason="shared/fixtures/reference is absent")
@pytest.mark.parametrize("store", FIXTURES, ids=lambda p: p.name)
def test_reference_fixture_matches_its_summary(store):
    expected = json.loads(store.with_name(store.name.replace(".zarr", ".summary.json")).read_text())
    got = json.loads(json.dumps(summarize(read_zarr(store)), sort_keys=True, default=str))
    assert got == expected


def test_progress_bar_counts_elements(sdata, tmp_path, capsys):
    sdata.subset(["spots", "nuclei", "table"]).write(tmp_path / "s.zarr", progress=True)
    err = capsys.readouterr().err
    assert "writing" in err and "3/3" in err


def test_write_and_read_under_a_distributed_client(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from tissuestack.store import _points_write as _points

    monkeypatch.setattr(_points, "IN_MEMORY_ROWS", 1_000)  # force the streaming (spill) path for points
    data = datasets.synthetic(
        n_cells=30, n_transcripts=6_000, n_genes=5, image_size=32, n_points_partitions=3
    )
    path = tmp_path / "s.zarr"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        store_io.write_store(
            {k: dict(data._store[k]) for k in ("images", "labels", "points", "shapes", "tables")},
            data.attrs,
            path,
            element_options={"points": {"rows_per_file": 2_000}},
        )
        back = read_zarr(path)
        assert len(back["transcripts"]) == 6_000
        assert_same(data, back)
    assert len(list((path / "points" / "transcripts" / "points.parquet").iterdir())) == 3


def test_scheduler_follows_the_default_distributed_client():
    distributed = pytest.importorskip("distributed")
    import dask.threaded

    from tissuestack._compute import scheduler

    assert scheduler() is dask.threaded.get  # imported (or not), but no Client: the local threaded scheduler
    with distributed.Client(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as client:
        assert scheduler() is None  # dask then routes computes to the client
        assert client is distributed.default_client()
    assert scheduler() is dask.threaded.get
