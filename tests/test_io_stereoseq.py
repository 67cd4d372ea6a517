"""The Stereo-seq (SAW v6/v7 numbered and SAW v8 outs/) reader against synthetic GEF/TIFF folders."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
import tifffile

from io_helpers import affine_xy, needs_reference, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, stereoseq
from tissuestack.io._stereoseq import iter_stereoseq
from tissuestack.io.fake import write_stereoseq
from tissuestack.io.fake._stereoseq import CELL_ID_BASE, SERIAL, STEREOSEQ_GENES, cell_count

N_CELLS = 5
CELLBIN_V6 = Path("041.cellcut") / f"{SERIAL}.cellbin.gef"
SQUARE_V6 = Path("04.tissuecut") / f"{SERIAL}.tissuecut.gef"


@pytest.fixture(scope="module")
def v6(tmp_path_factory) -> Path:
    return write_stereoseq(tmp_path_factory.mktemp("stereo"), layout="v6")


@pytest.fixture(scope="module")
def sdata(v6):
    return stereoseq(v6)


@pytest.fixture
def copy(v6, tmp_path) -> Path:
    return Path(shutil.copytree(v6, tmp_path / "copy"))


def test_registered_technology_and_order(v6):
    tech = get_technology("stereoseq")
    assert tech.iter_elements is iter_stereoseq
    names = [n for n, _ in tech.iter_elements(v6, bin_sizes=("50",))]
    assert names == [
        f"{SERIAL}_mask",
        f"{SERIAL}_regist",
        f"{SERIAL}_tissue_cut",
        "cells_circles",
        "cells_polygons",
        "cells_table",
        "bin50_genes",
        "bin50_table",
    ]  # options against the signatures: tests/test_io_registry_b.py


def test_cells_table_counts_and_links(sdata):
    table = sdata["cells_table"]
    expected = np.array([[cell_count(k, j) for j in range(len(STEREOSEQ_GENES))] for k in range(N_CELLS)])
    np.testing.assert_array_equal(table.X.toarray(), expected)
    assert table.var["gene_name"].tolist() == list(STEREOSEQ_GENES)
    assert table.var_names.is_unique and table.var_names[3] != "Actb"  # duplicated symbol made unique
    assert table.obs["cell_id"].tolist() == list(range(CELL_ID_BASE, CELL_ID_BASE + N_CELLS))
    assert table.obs["leiden"].tolist() == ["0", "1", "0", "1", "0"]  # from the cluster h5ad
    assert table.obsm["X_umap"].shape == (N_CELLS, 2)
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        "cells_circles",
        "region",
        "cell_id",
    )
    k = np.arange(N_CELLS)
    np.testing.assert_array_equal(table.obsm["spatial"], np.column_stack([20 + 30 * k, 40 + 10 * k]))
    circles = sdata["cells_circles"]
    assert circles.index.tolist() == table.obs["cell_id"].tolist()
    np.testing.assert_allclose(circles["radius"], np.sqrt((20 + k) / np.pi))


def test_polygons_from_border_offsets(sdata):
    polygons = sdata["cells_polygons"]
    assert polygons.index.tolist() == list(range(CELL_ID_BASE, CELL_ID_BASE + N_CELLS))
    for k, geom in enumerate(polygons.geometry):
        h = 3 + k % 2
        cx, cy = 20 + 30 * k, 40 + 10 * k
        assert shapely.equals(geom, shapely.box(cx - h, cy - h, cx + h, cy + h))


def test_square_bins_points_and_tables(sdata):
    names = list(dict.fromkeys(STEREOSEQ_GENES))
    for size in (1, 50):
        pts = sdata[f"bin{size}_genes"].compute()
        table = sdata[f"bin{size}_table"]
        assert table.var_names.tolist() == names and len(pts) == table.n_obs == 4 * len(names)
        assert table.uns["spatialdata_attrs"]["region"] == f"bin{size}_genes"
        position = {(x, y): i for x, y, i in zip(pts["x"], pts["y"], pts["instance_id"], strict=True)}
        dense = table.X.toarray()
        for j in range(len(names)):
            for i in range(4):
                row = position[(size * i, size * (i + j))]
                assert dense[row, j] == 10 * j + i + 1 and dense[row].sum() == dense[row, j]
        np.testing.assert_array_equal(table.obs["instance_id"].to_numpy(), pts["instance_id"].to_numpy())


def test_units_and_images(sdata, v6):
    # DNB pitch 500 nm: global is in µm, 0.5 µm per DNB on every element
    for name in ("cells_circles", "cells_polygons", "bin50_genes", f"{SERIAL}_regist"):
        np.testing.assert_allclose(affine_xy(sdata[name]), np.diag([0.5, 0.5, 1.0]))
    np.testing.assert_array_equal(
        raster_levels(sdata[f"{SERIAL}_regist"])[0].values[0],
        tifffile.imread(v6 / "03.register" / f"{SERIAL}_regist.tif"),
    )


def test_saw_v8_layout_and_resolution(tmp_path):
    out = write_stereoseq(tmp_path, layout="v8", resolution=715, gef_version=4)
    for path in (out, out / "outs"):
        s = stereoseq(path, bin_sizes=50)
        assert set(s.images) == {
            f"{SERIAL}_ssDNA_mask",
            f"{SERIAL}_ssDNA_regist",
            f"{SERIAL}_ssDNA_tissue_cut",
        }
        assert set(s.points) == {"bin50_genes"}
        np.testing.assert_allclose(affine_xy(s["cells_circles"]), np.diag([0.715, 0.715, 1.0]))
    table = s["cells_table"]
    assert table.var["geneID"].tolist()[:2] == ["ENSG00000", "ENSG00001"]  # newer genes have geneID
    # an adjusted cell-bin GEF is preferred unless adjusted=False
    fe = out / "outs" / "feature_expression"
    shutil.copy(fe / f"{SERIAL}.cellbin.gef", fe / f"{SERIAL}.adjusted.cellbin.gef")
    with h5py.File(fe / f"{SERIAL}.adjusted.cellbin.gef", "r+") as f:
        cell = f["cellBin/cell"][()]
        cell["area"] = 1000
        del f["cellBin/cell"]
        f["cellBin/cell"] = cell
    assert np.allclose(stereoseq(out, bin_sizes=())["cells_circles"]["radius"], np.sqrt(1000 / np.pi))
    assert not np.allclose(
        stereoseq(out, bin_sizes=(), adjusted=False)["cells_circles"]["radius"], np.sqrt(1000 / np.pi)
    )


def test_old_gef_without_ids_and_options(tmp_path, v6):
    with pytest.warns(UserWarning, match="no registered image"):
        old = stereoseq(write_stereoseq(tmp_path, gef_version=1, cluster=False, images=False), bin_sizes=())
    assert old["cells_circles"].index.tolist() == list(range(N_CELLS))  # no id field: 0..n-1
    assert "clusterID" not in old["cells_table"].obs and not old.images and not old.points
    raw = stereoseq(v6, raw_gef=True, cells=False, images=False)
    assert set(raw.points) == {"bin1_genes", "bin50_genes"} and "cells_table" not in raw
    no_poly = stereoseq(v6, cell_polygons=False, bin_sizes=(), images=False)
    assert "cells_polygons" not in no_poly and "cells_circles" in no_poly


def test_errors(tmp_path, copy):
    with pytest.raises(
        ReaderError, match="not a Stereo-seq SAW output folder; expected the SAW v6/v7 folders"
    ):
        stereoseq(tmp_path.parent)
    with pytest.raises(
        ReaderError, match=r"no square-bin level\(s\) \[7\]; the file has the levels \[1, 50\]"
    ):
        stereoseq(copy, bin_sizes=7)
    with pytest.raises(ReaderError, match="GEF files of several chips"):
        shutil.copy(copy / CELLBIN_V6, copy / "041.cellcut" / "OTHER.cellbin.gef")
        stereoseq(copy)
    (copy / "041.cellcut" / "OTHER.cellbin.gef").unlink()
    # truncated cell-bin GEF
    raw = (copy / CELLBIN_V6).read_bytes()
    (copy / CELLBIN_V6).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReaderError, match=r"cellbin.gef: cannot open the cell-bin GEF as HDF5 \(truncated"):
        stereoseq(copy, bin_sizes=())
    (copy / CELLBIN_V6).unlink()
    with pytest.raises(ReaderError, match=r"cellbin.gef: cell-bin GEF not found .*pass cells=False"):
        stereoseq(copy, dataset_id=SERIAL)


def test_malformed_gef_content(copy):
    with h5py.File(copy / CELLBIN_V6, "r+") as f:
        cell = f["cellBin/cell"][()]
        del f["cellBin/cell"]
        f["cellBin/cell"] = cell[["id", "x", "y", "area"]]
    with pytest.raises(ReaderError, match=r"cellBin/cell lacks the field\(s\) \['offset', 'geneCount'\]"):
        stereoseq(copy, bin_sizes=())
    with h5py.File(copy / CELLBIN_V6, "r+") as f:
        del f["cellBin/cell"]
        cell["offset"][-1] = 1000
        f["cellBin/cell"] = cell
        exp = f["cellBin/cellExp"][()]
    with pytest.raises(ReaderError, match=r"offsets reach row .* which has .* rows \(truncated file\?\)"):
        stereoseq(copy, bin_sizes=())
    with h5py.File(copy / SQUARE_V6, "r+") as f:
        gene = f["geneExp/bin50/gene"][()]
        gene["count"][0] += 1
        del f["geneExp/bin50/gene"]
        f["geneExp/bin50/gene"] = gene
    with pytest.raises(ReaderError, match=r"bin50/gene offsets and counts do not partition"):
        stereoseq(copy, cells=False, bin_sizes=(50,))
    with h5py.File(copy / SQUARE_V6, "r+") as f:
        del f["geneExp/bin1/expression"]
    with pytest.raises(ReaderError, match=r"no 'geneExp/bin1/expression' dataset"):
        stereoseq(copy, cells=False, bin_sizes=(1,))
    assert len(exp) > 0


def test_cli_convert_and_read_back(tmp_path, v6, sdata):
    out = tmp_path / "stereo.zarr"
    assert main(["convert", "stereoseq", str(v6), str(out), "--no-progress", "--bin-sizes", "50"]) == 0
    back = read_zarr(out)
    assert set(back.tables) == {"cells_table", "bin50_table"} and set(back.points) == {"bin50_genes"}
    np.testing.assert_array_equal(back["cells_table"].X.toarray(), sdata["cells_table"].X.toarray())
    assert back["cells_polygons"].index.tolist() == sdata["cells_polygons"].index.tolist()
    assert shapely.equals(
        back["cells_polygons"].geometry.to_numpy(), sdata["cells_polygons"].geometry.to_numpy()
    ).all()
    np.testing.assert_array_equal(back["bin50_table"].X.toarray(), sdata["bin50_table"].X.toarray())
    np.testing.assert_allclose(affine_xy(back["bin50_genes"]), np.diag([0.5, 0.5, 1.0]))


_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    from spatialdata_io import stereoseq
    s = stereoseq(sys.argv[1], read_square_bin=True)
    t = s.tables["cells_table"]
    out = {"images": {k: list(v["scale0"]["image"].shape if hasattr(v, "children") else v.shape)
                      for k, v in s.images.items()},
           "cells": [t.n_obs, t.n_vars, int(np.asarray(t.X.sum()))],
           "circles": s.shapes["cells_circles"].geometry.x.tolist(),
           "polygons": s.shapes["cells_polygons"].geometry.to_wkt().tolist(),
           "bins": {k: [v.n_obs, v.n_vars, int(v.X.sum())] for k, v in s.tables.items() if k != "cells_table"}}
    print(json.dumps(out))
    """
)


@needs_reference
def test_matches_reference_reader(v6, sdata):
    """Element sizes, table shapes and counts, and geometries as spatialdata-io's Stereo-seq reader (which works on
    the v6 layout only; it puts global in DNB units, ours is µm)."""
    ref = run_reference(_REFERENCE_SCRIPT, v6)
    for name, shape in ref["images"].items():
        assert list(raster_levels(sdata[name])[0].shape) == shape
    table = sdata["cells_table"]
    # the reference takes X from the cluster h5ad (zeros in the fixture), ours the counts of the cell-bin GEF
    assert [table.n_obs, table.n_vars] == ref["cells"][:2] and ref["cells"][2] == 0 and table.X.sum() > 0
    np.testing.assert_allclose(sdata["cells_circles"].geometry.x, ref["circles"])
    assert shapely.equals(
        sdata["cells_polygons"].geometry.to_numpy(), shapely.from_wkt(ref["polygons"])
    ).all()
    for name, (n_obs, n_vars, total) in ref["bins"].items():
        t = sdata[name]
        assert [t.n_obs, t.n_vars, int(t.X.sum())] == [n_obs, n_vars, total]
