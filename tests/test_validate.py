"""``tissuestack validate`` / ``validate_store``: every problem of a store in one run, each with its element and
file; ``tissuestack info`` on damaged stores and on folders inside a store; named read errors of corrupt chunks;
stale temporaries removed by the next write."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

import tissuestack as ts
from tissuestack import StoreError, datasets, read_zarr
from tissuestack._container.inspect import validate_store
from tissuestack.cli import main
from tissuestack.store import StoreRoot
from tissuestack.store import _io as store_io


@pytest.fixture
def source():  # built per test: writing a SpatialData rebinds it to the written store
    sdata = datasets.synthetic(n_cells=40, n_transcripts=2_000, n_genes=6, image_size=64, seed=3)
    sdata["big"] = ts.Labels2DModel.parse(
        np.arange(128 * 128, dtype=np.int32).reshape(128, 128), dims=("y", "x"), chunks=32
    )
    # a second table annotating the cells, whose ids get broken on disk
    table = sdata["table"].copy()
    table.uns = {}
    sdata["t_ids"] = ts.TableModel.parse(
        table, region="cell_boundaries", region_key="region", instance_key="cell_id"
    )
    # a table annotating the spots, which get deleted from the store (dangling link)
    spots = sdata["spots"]
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({"region": ["spots"] * len(spots), "spot_id": list(spots.index)})
    obs.index = obs.index.astype(str)
    sdata["t_spots"] = ts.TableModel.parse(
        ad.AnnData(obs=obs), region="spots", region_key="region", instance_key="spot_id"
    )
    return sdata


def _chunk(path, zarr_format, i, j):
    return path / "labels" / "big" / "s0" / ("c" if zarr_format == 3 else "") / str(i) / str(j)


def _plant_faults(path, zarr_format):
    """Six faults of different kinds in one store."""
    # 6. a dangling table link: the annotated element is gone
    store_io.delete_element(path, "shapes", "spots")
    # 1. a missing raster chunk
    _chunk(path, zarr_format, 1, 1).unlink()
    # 2. a corrupt raster chunk (found by --deep) and 3. a corrupt table chunk
    _chunk(path, zarr_format, 2, 2).write_bytes(b"garbage" * 4)
    array = path / "tables" / "table" / "obs" / "cell_type" / "categories"
    bad_table_chunk = next(
        p for p in array.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr"))
    )
    bad_table_chunk.write_bytes(b"xx")
    # 4. truncated metadata of an element (consolidated metadata still lists the element)
    meta = path / "shapes" / "nuclei" / ("zarr.json" if zarr_format == 3 else ".zattrs")
    meta.write_text(meta.read_text()[:25])
    # 5. ids of a table that its element does not have
    ids = zarr.open_array(str(path / "tables" / "t_ids" / "obs" / "cell_id"), mode="r+")
    ids[:5] = np.arange(10_000, 10_005)
    # 7. stale temporaries of interrupted writes, inside and beside the store
    shutil.copytree(
        path / "shapes" / "regions_of_interest", path / "shapes" / ".regions_of_interest.tmp-0badcafe"
    )
    (path.parent / f".{path.name}.tmp-12345678").mkdir()
    (path.parent / f".{path.name}.tmp-12345678" / "zarr.json").write_text("{}")
    return array.relative_to(path).as_posix()


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_validate_lists_every_planted_fault_with_element_and_file(source, tmp_path, capsys, zarr_format):
    path = tmp_path / "s.zarr"
    source.write(path, zarr_format=zarr_format)
    assert validate_store(path, deep=True) == []
    table_chunk = _plant_faults(path, zarr_format)

    found = validate_store(path, deep=True)
    text = "\n".join(map(str, found))
    by = {(p.element, p.what.split(" ")[0]) for p in found}
    sep = "c/" if zarr_format == 3 else ""
    missing = [p for p in found if "missing" in p.what and p.element == "labels/big"]
    assert len(missing) == 1 and f"labels/big/s0/{sep}1/1" in missing[0].what and not missing[0].note
    corrupt = [p for p in found if "cannot be decoded" in p.what]
    assert [p.file for p in corrupt] == [f"labels/big/s0/{sep}2/2"] and corrupt[0].element == "labels/big"
    assert any(p.element == "tables/table" and table_chunk in p.what for p in found), text
    meta = "zarr.json" if zarr_format == 3 else ".zattrs"
    assert any(p.element == "shapes/nuclei" and p.file == f"shapes/nuclei/{meta}" for p in found), text
    ids = [p for p in found if p.element == "tables/t_ids"]
    assert len(ids) == 1 and "5 of 40" in ids[0].what and "10000" in ids[0].what and ids[0].fix
    dangling = [p for p in found if p.element == "tables/t_spots"]
    assert len(dangling) == 1 and "'spots'" in dangling[0].what and "set_table_annotates" in dangling[0].fix
    inside = [p for p in found if p.file == "shapes/.regions_of_interest.tmp-0badcafe"]
    assert len(inside) == 1 and inside[0].element == "shapes/regions_of_interest" and "rm -r" in inside[0].fix
    beside = [p for p in found if p.file and p.file.endswith(f".{path.name}.tmp-12345678")]
    assert len(beside) == 1 and beside[0].element is None
    assert ("tables/t_ids", "5") in by

    # the command line lists them all (the corrupt raster chunk only with --deep) and exits 1
    capsys.readouterr()
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"labels/big/s0/{sep}1/1" in out and f"shapes/nuclei/{meta}" in out and "t_spots" in out
    assert "t_ids" in out and ".regions_of_interest.tmp-0badcafe" in out and "tmp-12345678" in out
    assert "cannot be decoded" not in out
    assert main(["validate", "--deep", str(path)]) == 1
    assert f"chunk file labels/big/s0/{sep}2/2 cannot be decoded" in capsys.readouterr().out


def test_multi_file_points_validate_as_valid(source, tmp_path):
    """Issue 11 item 6: points in several Parquet files (as the reference writes them) were reported broken."""
    path = tmp_path / "s.zarr"
    source.subset(["transcripts"]).write(path)
    folder = path / "points" / "transcripts" / "points.parquet"
    table = pq.read_table(next(folder.iterdir()))
    for f in folder.iterdir():
        f.unlink()
    n = table.num_rows
    for i in range(5):
        pq.write_table(
            table.slice(i * n // 5, (i + 1) * n // 5 - i * n // 5),
            folder / f"part.{i}.parquet",
            row_group_size=100,
        )
    assert read_zarr(path)["transcripts"].npartitions >= 1
    assert validate_store(path) == [] and validate_store(path, deep=True) == []
    # a truncated file among several is named, the others are not
    part = folder / "part.3.parquet"
    part.write_bytes(part.read_bytes()[:50])
    found = validate_store(path)
    assert len(found) == 1 and found[0].file == "points/transcripts/points.parquet/part.3.parquet"


def test_every_chunk_is_written_and_foreign_gaps_are_notes(tmp_path):
    labels = np.zeros((96, 96), dtype=np.int32)
    labels[:10, :10] = 1  # most chunks hold only zeros
    sdata = ts.SpatialData(labels={"lab": ts.Labels2DModel.parse(labels, dims=("y", "x"), chunks=32)})
    path = tmp_path / "s.zarr"
    sdata.write(path)
    assert len([p for p in (path / "labels" / "lab" / "s0" / "c").rglob("*") if p.is_file()]) == 9
    assert validate_store(path) == []
    # a store written by another tool may skip chunks holding only the fill value: a note, not a problem
    (path / "labels" / "lab" / "s0" / "c" / "2" / "2").unlink()
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["spatialdata_attrs"]["spatialdata_software_version"] = "0.8.0"
    (path / "zarr.json").write_text(json.dumps(root))
    found = validate_store(path)
    assert len(found) == 1 and found[0].note and "labels/lab/s0/c/2/2" in found[0].what
    assert main(["validate", str(path)]) == 0


def test_corrupt_chunk_read_later_names_element_and_file(source, tmp_path):
    path = tmp_path / "s.zarr"
    source.subset(["big", "morphology"]).write(path)
    _chunk(path, 3, 0, 1).write_bytes(b"garbage" * 4)
    sdata = read_zarr(path)
    big = sdata["big"]
    np.testing.assert_array_equal(big[:32, :32].values, np.arange(128 * 128).reshape(128, 128)[:32, :32])
    with pytest.raises(StoreError, match=r"labels/big: cannot read chunk file labels/big/s0/c/0/1 \(corrupt"):
        big.compute()
    with pytest.raises(StoreError, match=r"labels/big/s0/c/0/1"):
        big[:40, 20:40].compute()
    assert sdata["morphology"]["scale0"]["image"].values.shape == (3, 64, 64)


def test_info_shows_the_rest_of_a_store_with_a_broken_element(source, tmp_path, capsys):
    path = tmp_path / "s.zarr"
    source.subset(["spots", "nuclei", "transcripts"]).write(path, consolidate_metadata=False)
    meta = path / "shapes" / "nuclei" / "zarr.json"
    meta.write_text(meta.read_text()[:30])
    assert main(["info", str(path)]) == 1
    out = capsys.readouterr().out
    assert "'spots'" in out and "'transcripts'" in out
    assert "shapes/nuclei: BROKEN" in out


def test_info_on_a_folder_inside_a_store_names_the_store(source, tmp_path, capsys):
    path = tmp_path / "s.zarr"
    source.subset(["spots", "morphology"]).write(path)
    for inside in ("shapes", "shapes/spots", "shapes/spots/shapes.parquet", "images/morphology/s0"):
        assert main(["info", str(path / inside)]) == 2
        err = capsys.readouterr().err
        assert f"is not the root of a SpatialData store; it is the folder '{inside}' inside the store" in err
        assert f"open {path} instead" in err
    with pytest.raises(StoreError, match=r"inside the store"):
        read_zarr(path / "shapes")


def test_next_write_removes_its_own_stale_temporaries(source, tmp_path):
    path = tmp_path / "s.zarr"
    sub = source.subset(["spots", "nuclei"])
    sub.write(path)
    beside = tmp_path / ".s.zarr.tmp-0123abcd"
    old = tmp_path / ".s.zarr.old-0123abcd"
    other = tmp_path / ".other.zarr.tmp-0123abcd"  # another store's: kept
    for folder in (beside, old, other):
        folder.mkdir()
    inside = path / "shapes" / ".spots.tmp-89abcdef"
    inside_other = path / "shapes" / ".nuclei.tmp-89abcdef"
    shutil.copytree(path / "shapes" / "spots", inside)
    shutil.copytree(path / "shapes" / "spots", inside_other)
    assert len(validate_store(path)) == 4
    sdata = read_zarr(path)
    sdata["spots2"] = sub["spots"].copy()
    sdata.write_element("spots2")
    assert inside.exists() and inside_other.exists()  # another element's temporaries stay
    sdata["spots"] = sub["spots"].copy()
    sdata.write_element("spots", overwrite=True)
    assert not inside.exists() and inside_other.exists()
    sub.write(path, overwrite=True)
    assert not beside.exists() and not old.exists() and other.exists()
    assert validate_store(path) == []


def test_validate_a_store_that_cannot_be_opened(tmp_path):
    found = validate_store(tmp_path / "nothing.zarr")
    assert len(found) == 1 and "no Zarr store found" in found[0].what
    assert StoreRoot.open(tmp_path).url == str(tmp_path)
