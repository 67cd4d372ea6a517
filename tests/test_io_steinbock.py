"""The steinbock (IMC) reader against synthetic steinbock folders (deepcell and ilastik masks)."""

from __future__ import annotations

import re
import shutil
import textwrap
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import tifffile

from io_helpers import affine_xy, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, steinbock
from tissuestack.io._steinbock import iter_steinbock
from tissuestack.io.fake import write_steinbock
from tissuestack.io.fake._steinbock import CHANNELS, IMAGES

MARKERS = [marker for _, marker in CHANNELS]
# the steinbock panel column "Final Concentration / Dilution" (rewritten by some tests)
pytestmark = pytest.mark.filterwarnings("ignore:Forward slashes:FutureWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_steinbock(tmp_path_factory.mktemp("steinbock"), masks=("deepcell", "ilastik"), seed=4)


@pytest.fixture(scope="module")
def sdata(folder):
    return steinbock(folder)


def _level0(element) -> np.ndarray:
    return np.asarray(raster_levels(element)[0].values)


def test_elements_names_and_coordinate_systems(sdata):
    assert set(sdata.images) == {f"{i}_image" for i in IMAGES}
    assert set(sdata.labels) == {f"{i}_labels" for i in IMAGES}
    assert set(sdata.tables) == {"table"}
    for image in IMAGES:
        # one coordinate system per image, in pixels
        for name in (f"{image}_image", f"{image}_labels"):
            np.testing.assert_array_equal(affine_xy(sdata[name], image), np.eye(3))
        assert raster_levels(sdata[f"{image}_image"])[0].coords["c"].values.tolist() == MARKERS
    assert sorted(sdata.coordinate_systems) == sorted(IMAGES)


def test_table_links_ids_and_values(folder, sdata):
    table = sdata["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region_key"], attrs["instance_key"]) == ("region", "cell_id")
    assert sorted(attrs["region"]) == sorted(f"{i}_labels" for i in IMAGES)
    assert table.obs["cell_id"].dtype.kind == "i"
    assert "Image" not in table.obs.columns and "image" in table.obs.columns
    assert table.var.columns.tolist() == ["channel", "name", "Final_Concentration"]
    for image in IMAGES:
        rows = (table.obs["region"].astype(str) == f"{image}_labels").to_numpy()
        labels = _level0(sdata[f"{image}_labels"])
        pixels = _level0(sdata[f"{image}_image"])
        ids = table.obs["cell_id"].to_numpy()[rows]
        assert sorted(ids) == sorted(set(np.unique(labels)) - {0})
        for k, cell in zip(np.nonzero(rows)[0], ids, strict=True):
            rr, cc = np.nonzero(labels == cell)
            # X is each cell's mean intensity per channel; obsm["spatial"] is (x, y) = (column, row)
            np.testing.assert_allclose(table.X[k], pixels[:, rr, cc].mean(axis=1), rtol=1e-5)
            np.testing.assert_allclose(table.obsm["spatial"][k], [cc.mean(), rr.mean()])


def test_pixels_equal_the_files(folder, sdata):
    image = IMAGES[1]
    np.testing.assert_array_equal(
        _level0(sdata[f"{image}_image"]), tifffile.imread(folder / "ome" / f"{image}.ome.tiff")
    )
    np.testing.assert_array_equal(
        _level0(sdata[f"{image}_labels"]), tifffile.imread(folder / "masks_deepcell" / f"{image}.tiff")
    )
    assert sdata[f"{image}_image"].data.dask is not None  # lazy


def test_ilastik_masks(folder):
    s = steinbock(folder, labels_kind="ilastik", images=False, cells_table=False)
    got = _level0(s[f"{IMAGES[0]}_labels"])
    np.testing.assert_array_equal(got, tifffile.imread(folder / "masks_ilastik" / f"{IMAGES[0]}.tiff"))
    assert not np.array_equal(got, tifffile.imread(folder / "masks_deepcell" / f"{IMAGES[0]}.tiff"))
    with pytest.raises(ReaderError, match="labels_kind must be one of"):
        steinbock(folder, labels_kind="cellpose")


def test_image_column_absent_uses_obs_names(tmp_path, sdata):
    folder = write_steinbock(tmp_path / "s", info_column=False, seed=4)
    table = steinbock(folder)["table"]
    assert table.obs["region"].astype(str).tolist() == sdata["table"].obs["region"].astype(str).tolist()
    assert table.obs["cell_id"].tolist() == sdata["table"].obs["cell_id"].tolist()


def test_write_order_and_registry(folder):
    tech = get_technology("steinbock")
    assert tech.iter_elements is iter_steinbock
    names = [name for name, _ in tech.iter_elements(folder)]
    assert names == [
        f"{IMAGES[0]}_image",
        f"{IMAGES[0]}_labels",
        f"{IMAGES[1]}_image",
        f"{IMAGES[1]}_labels",
        "table",
    ]


def test_cli_convert_and_read_back(tmp_path, folder, sdata):
    out = tmp_path / "steinbock.zarr"
    assert main(["convert", "steinbock", str(folder), str(out), "--no-progress"]) == 0
    back = read_zarr(out)
    assert set(back.images) == set(sdata.images) and set(back.labels) == set(sdata.labels)
    np.testing.assert_array_equal(back["table"].X, sdata["table"].X)
    assert back["table"].obs["cell_id"].tolist() == sdata["table"].obs["cell_id"].tolist()
    assert (
        back["table"].uns["spatialdata_attrs"]["region"] == sdata["table"].uns["spatialdata_attrs"]["region"]
    )
    image = f"{IMAGES[0]}_labels"
    np.testing.assert_array_equal(_level0(back[image]), _level0(sdata[image]))
    np.testing.assert_array_equal(affine_xy(back[image], IMAGES[0]), np.eye(3))


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, folder) -> Path:
    path = tmp_path / "steinbock"
    shutil.copytree(folder, path)
    return path


def test_missing_files(copy):
    with pytest.raises(ReaderError, match="not a directory; expected a steinbock output folder"):
        steinbock(copy / "nothing")
    (copy / "masks_deepcell" / f"{IMAGES[1]}.tiff").unlink()
    with pytest.warns(UserWarning, match=re.escape(f"no mask for the image(s) ['{IMAGES[1]}']")):
        with pytest.raises(
            ReaderError, match=rf"cells.h5ad: cells of the image\(s\) \['{IMAGES[1]}'\] have no mask"
        ):
            steinbock(copy)
    with pytest.warns(UserWarning, match="no mask"):
        s = steinbock(copy, cells_table=False)
    assert set(s.labels) == {f"{IMAGES[0]}_labels"}
    shutil.rmtree(copy / "masks_deepcell")
    with pytest.raises(
        ReaderError, match=r"masks_deepcell: masks folder not found; the folder has masks_ilastik/"
    ):
        steinbock(copy)
    (copy / "cells.h5ad").unlink()
    with pytest.raises(ReaderError, match=re.escape("cells.h5ad: steinbock cell table not found")):
        steinbock(copy, labels_kind="ilastik")
    shutil.rmtree(copy / "ome")
    with pytest.raises(ReaderError, match=r"ome: images folder not found"):
        steinbock(copy, labels_kind="ilastik")


def test_wrong_names_and_columns(copy):
    adata = ad.read_h5ad(copy / "cells.h5ad")
    bad = adata.copy()
    bad.obs_names = [f"cell{k}" for k in range(bad.n_obs)]
    bad.write_h5ad(copy / "cells.h5ad")
    with pytest.raises(ReaderError, match=re.escape("cells.h5ad: obs name(s) ['cell0'")):
        steinbock(copy)
    bad = adata.copy()
    bad.obs = bad.obs.drop(columns=["centroid-1"])
    bad.write_h5ad(copy / "cells.h5ad")
    with pytest.raises(ReaderError, match=re.escape("cells.h5ad: no 'centroid-1' obs column")):
        steinbock(copy)
    bad = adata.copy()
    bad.obs["image"] = "Elsewhere_003.tiff"
    bad.write_h5ad(copy / "cells.h5ad")
    with pytest.raises(
        ReaderError, match=re.escape("cells.h5ad: cells of the image(s) ['Elsewhere_003'] have no ome/")
    ):
        steinbock(copy)


def test_truncated_files(copy):
    data = (copy / "cells.h5ad").read_bytes()
    (copy / "cells.h5ad").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match=re.escape("cells.h5ad: cannot read the steinbock cell table")):
        steinbock(copy)
    tiff = copy / "ome" / f"{IMAGES[0]}.ome.tiff"
    tiff.write_bytes(tiff.read_bytes()[:64])
    with pytest.raises(ReaderError, match=re.escape(f"{IMAGES[0]}.ome.tiff")):
        steinbock(copy, cells_table=False)


# ------------------------------------------------------------------------------------------------ reference
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    from spatialdata_io import steinbock
    s = steinbock(sys.argv[1])
    t = s.tables["table"]
    out = {
        "images": {k: list(v.shape) for k, v in s.images.items()},
        "labels": {k: [list(v.shape), np.unique(v.values).tolist()] for k, v in s.labels.items()},
        "table": [t.obs_names.tolist(), t.var_names.tolist(), np.asarray(t.X).tolist(),
                  dict(t.uns["spatialdata_attrs"]), t.obs["cell_id"].tolist(), t.obs["region"].astype(str).tolist(),
                  np.asarray(t.obsm["spatial"]).tolist(), t.var.columns.tolist()],
        "cs": sorted(s.coordinate_systems),
    }
    print(json.dumps(out))
    """
)


def test_matches_reference_reader(folder, sdata):
    """Same elements, sizes, ids, table values and links as spatialdata-io's steinbock reader (run in its own
    environment; skipped when absent). Differences by design: obsm["spatial"] is (x, y) here, (y, x) there; the
    channels are named from the OME-XML here."""
    ref = run_reference(_REFERENCE_SCRIPT, folder)
    assert {k: list(v.shape) for k, v in sdata.images.items()} == ref["images"]
    for name, (shape, values) in ref["labels"].items():
        labels = _level0(sdata[name])
        assert list(labels.shape) == shape and np.unique(labels).tolist() == values
    obs_names, var_names, x, attrs, cell_ids, regions, spatial, var_columns = ref["table"]
    table = sdata["table"]
    assert table.obs_names.tolist() == obs_names and table.var_names.tolist() == var_names
    np.testing.assert_allclose(table.X, np.asarray(x))
    assert sorted(table.uns["spatialdata_attrs"]["region"]) == sorted(attrs["region"])
    assert table.uns["spatialdata_attrs"]["instance_key"] == attrs["instance_key"]
    assert table.obs["cell_id"].tolist() == cell_ids
    assert table.obs["region"].astype(str).tolist() == regions
    np.testing.assert_allclose(table.obsm["spatial"], np.asarray(spatial)[:, ::-1])
    assert table.var.columns.tolist() == var_columns
    assert sorted(sdata.coordinate_systems) == ref["cs"]


def test_no_warnings_on_a_complete_folder(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steinbock(folder)
