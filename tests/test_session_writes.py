"""A session keeps working after its own writes: write_element, write and delete_element (issue 17 items 2, 3)."""

from __future__ import annotations

import numpy as np
import pytest

import tissuestack as ts
from tissuestack import datasets, read_zarr
from tissuestack.errors import StoreError


@pytest.fixture(scope="module")
def source():
    return datasets.synthetic(n_cells=60, n_transcripts=3_000, n_genes=8, image_size=64, seed=3)


@pytest.fixture
def store(source, tmp_path):
    path = tmp_path / "s.zarr"
    source.write(path)
    return path


def _counts(sdata):
    table = ts.aggregate("transcripts", "cell_boundaries", sdata=sdata, value_key="gene")
    return np.asarray(table.X.sum(axis=1)).ravel()


def test_filtered_points_replace_their_own_files(store):
    sdata = read_zarr(store)
    tx = sdata["transcripts"]
    before = tx.compute()
    keep = before[before.x > before.x.median()]
    sdata["transcripts"] = tx[tx.x > float(before.x.median())]
    sdata.write_element("transcripts", overwrite=True)
    # the object now reads the new files: length, values and aggregation all work
    assert len(sdata["transcripts"]) == len(keep)
    np.testing.assert_allclose(np.sort(sdata["transcripts"].x.compute()), np.sort(keep.x))
    counts = _counts(sdata)
    assert counts.sum() <= len(keep)
    again = read_zarr(store)
    assert len(again["transcripts"]) == len(keep)
    np.testing.assert_array_equal(_counts(again), counts)


def test_shapes_image_and_lazy_table_replace_their_own_files(store):
    sdata = read_zarr(store, lazy_tables=True)
    shapes = sdata["cell_boundaries"]
    sdata["cell_boundaries"] = shapes.iloc[:20]
    sdata.write_element("cell_boundaries", overwrite=True)
    assert len(sdata["cell_boundaries"]) == 20
    image = sdata.images["morphology"]
    sdata["morphology"] = image
    sdata.write_element("morphology", overwrite=True)
    assert float(sdata.images["morphology"]["scale0"]["image"].sum().compute()) == float(
        image["scale0"]["image"].sum().compute()
    )
    table = sdata.tables["table"]
    n = table.n_obs
    sdata["table"] = table[: n // 2].copy()
    sdata.write_element("table", overwrite=True)
    assert sdata.tables["table"].n_obs == n // 2
    x = sdata.tables["table"].X
    assert hasattr(x, "compute")  # still lazy, and it reads the new files
    assert x.compute().shape == (n // 2, table.n_vars)
    assert read_zarr(store).tables["table"].n_obs == n // 2


def test_replacing_files_another_element_reads_is_refused(store):
    sdata = read_zarr(store)
    tx = sdata["transcripts"]
    sdata["tx_copy"] = tx  # not written: still reads points/transcripts
    sdata["transcripts"] = tx[tx.x > 1]
    with pytest.raises(StoreError, match=r"\['tx_copy'\] of this object still read its files"):
        sdata.write_element("transcripts", overwrite=True)
    # nothing was lost
    assert len(read_zarr(store)["transcripts"]) == len(tx)
    sdata.write_element("tx_copy")
    del sdata["tx_copy"]
    sdata.write_element("transcripts", overwrite=True)
    assert len(sdata["transcripts"]) == len(read_zarr(store)["transcripts"])


def test_write_to_a_new_store_keeps_the_object_working(store, tmp_path):
    sdata = read_zarr(store)
    sdata.write(tmp_path / "copy.zarr")
    tx = sdata["transcripts"]
    sdata["transcripts"] = tx[tx.x > 1]
    sdata.write_element("transcripts", overwrite=True)  # into the new store; the old one is untouched
    assert len(sdata["transcripts"]) == len(read_zarr(tmp_path / "copy.zarr")["transcripts"])
    assert len(read_zarr(store)["transcripts"]) == len(tx)
    assert len(_counts(sdata)) > 0


def test_delete_element_of_an_annotated_element(store):
    sdata = read_zarr(store)
    region = sdata.tables["table"].uns["spatialdata_attrs"]["region"]
    assert "cell_boundaries" in np.atleast_1d(region)
    with pytest.raises(StoreError, match=r"table\(s\) \['table'\] annotate 'cell_boundaries'"):
        sdata.delete_element("cell_boundaries")
    assert "cell_boundaries" in read_zarr(store)  # refused: nothing deleted
    sdata.delete_element("cell_boundaries", tables="update")
    back = read_zarr(store)
    assert "cell_boundaries" not in back
    assert "cell_boundaries" not in sdata  # it was read lazily from the deleted files
    for obj in (sdata, back):
        if "table" in obj:
            assert "cell_boundaries" not in np.atleast_1d(
                obj.tables["table"].uns["spatialdata_attrs"]["region"]
            )
    back.validate()


def test_delete_element_keeps_in_memory_and_removes_lazy(store):
    sdata = read_zarr(store)
    shapes = sdata["cell_boundaries"].copy()  # a GeoDataFrame in memory, not read lazily
    sdata["cell_boundaries"] = shapes
    sdata.delete_element("cell_boundaries", tables="update")
    assert len(sdata["cell_boundaries"]) == len(shapes)
    sdata.delete_element("transcripts")
    assert "transcripts" not in sdata
    assert "transcripts" not in read_zarr(store)
    with pytest.raises(ValueError, match="tables must be"):
        sdata.delete_element("morphology", tables="drop")
