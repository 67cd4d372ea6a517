"""The DBiT-seq reader against synthetic folders (with and without image, borders, explicit file paths)."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely

from io_helpers import affine_xy, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import dbit, get_technology
from tissuestack.io._dbit import iter_dbit
from tissuestack.io.fake import write_dbit
from tissuestack.io.fake._dbit import DATASET


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_dbit(tmp_path_factory.mktemp("dbit"), seed=6)


@pytest.fixture(scope="module")
def sdata(folder):
    return dbit(folder)


def _positions(folder: Path) -> dict[str, str]:
    lines = (folder / "barcode_list.txt").read_text().split()
    return dict(zip(lines[1::2], lines[0::2], strict=True))  # barcode -> position


def test_elements_and_links(sdata):
    assert set(sdata.shapes) == {DATASET} and set(sdata.images) == {f"{DATASET}_image"}
    table = sdata["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (DATASET, "region", "pixel_id")
    assert table.obs["pixel_id"].tolist() == list(range(table.n_obs))
    assert sdata[DATASET].index.tolist() == table.obs["pixel_id"].tolist()
    np.testing.assert_array_equal(affine_xy(sdata[DATASET]), np.eye(3))
    np.testing.assert_array_equal(affine_xy(sdata[f"{DATASET}_image"]), np.eye(3))


def test_grid_positions_and_order(folder, sdata):
    table = sdata["table"]
    positions = _positions(folder)
    for name, a, b in zip(table.obs_names, table.obs["array_A"], table.obs["array_B"], strict=True):
        assert positions[name[8:]] == f"A{a}" and positions[name[:8]] == f"B{b}"
    keys = list(zip(table.obs["array_A"], table.obs["array_B"], strict=True))
    assert keys == sorted(keys)  # sorted by A, then B
    np.testing.assert_array_equal(table.obsm["spatial"], np.array(keys))
    raw = ad.read_h5ad(next(folder.glob("*.h5ad")))
    np.testing.assert_array_equal(table.X, raw[table.obs_names].X)  # rows moved with their counts


def test_squares_span_the_image(sdata):
    """5 barcodes over a 50-pixel image: each grid cell is 10 px; the border leaves 1.25 px on each side."""
    table, squares = sdata["table"], sdata[DATASET]
    assert raster_levels(sdata[f"{DATASET}_image"])[0].shape == (3, 50, 50)
    for k, (a, b) in enumerate(zip(table.obs["array_A"], table.obs["array_B"], strict=True)):
        expected = shapely.box((a - 1) * 10 + 1.25, (b - 1) * 10 + 1.25, a * 10 - 1.25, b * 10 - 1.25)
        assert shapely.equals(squares.geometry.iloc[k], expected)


def test_no_image_no_border_and_options(tmp_path, folder):
    s = dbit(folder, image=False, border=False)
    assert not list(s.images)
    np.testing.assert_allclose(s[DATASET].geometry.area, 1.0)  # grid units
    s = dbit(folder, border_scale=2.0, dataset_id="run 1")
    assert set(s.shapes) == {"run_1"} and (s["table"].obs["region"] == "run_1").all()
    np.testing.assert_allclose(s["run_1"].geometry.area, 5.0**2)  # 10 - 2 * 2.5
    other = tmp_path / "elsewhere"
    other.mkdir()
    for f in folder.iterdir():
        shutil.copy(f, other / ("counts.data" if f.suffix == ".h5ad" else f.name))
    s = dbit(other, anndata_path="counts.data", image_path=other / "tissue_lowres_image.png")
    assert set(s.shapes) == {"counts"} and set(s.images) == {"counts_image"}
    no_image = write_dbit(tmp_path / "plain", image=False, seed=6)
    assert not list(dbit(no_image).images)


def test_write_order_registry_and_cli(tmp_path, folder, sdata):
    tech = get_technology("dbit")
    assert tech.iter_elements is iter_dbit
    assert [n for n, _ in tech.iter_elements(folder)] == [f"{DATASET}_image", DATASET, "table"]
    out = tmp_path / "dbit.zarr"
    assert main(["convert", "dbit", str(folder), str(out), "--border-scale", "0.5", "--no-progress"]) == 0
    back = read_zarr(out)
    np.testing.assert_array_equal(back["table"].X, sdata["table"].X)
    assert back["table"].obs["pixel_id"].tolist() == sdata["table"].obs["pixel_id"].tolist()
    np.testing.assert_allclose(back[DATASET].geometry.area, (10 - 2 * 0.625) ** 2)
    assert back[DATASET].index.tolist() == sdata[DATASET].index.tolist()


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, folder) -> Path:
    path = tmp_path / "dbit"
    shutil.copytree(folder, path)
    return path


def test_missing_and_ambiguous_files(copy):
    with pytest.raises(ReaderError, match="not a directory; expected a DBiT-seq folder"):
        dbit(copy / "nothing")
    shutil.copy(copy / f"{DATASET}.h5ad", copy / "other.h5ad")
    with pytest.raises(
        ReaderError, match=re.escape("2 files could be the counts h5ad") + ".*pass anndata_path="
    ):
        dbit(copy)
    (copy / "other.h5ad").unlink()
    with pytest.raises(ReaderError, match=re.escape("nope.png: image (image_path) not found")):
        dbit(copy, image_path="nope.png")
    (copy / "barcode_list.txt").unlink()
    with pytest.raises(ReaderError, match=re.escape("no barcode list (expected a file matching")):
        dbit(copy)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A1\tACGTACGT\tx\n", "the barcode list has 3 column(s); expected 2"),
        ("C1\tACGTACGT\n", "line 1: position 'C1' is not A<n> or B<n>"),
        ("A1\tACGTACGX\n", "line 1: barcode 'ACGTACGX' is not 8 nucleotides"),
        ("A1\tACGTACGT\nA2\tACGTACGT\n", "line 2: barcode ACGTACGT is listed twice for A"),
        ("A1\tACGTACGT\n", "no B<n> barcodes"),
        ("", "cannot read the barcode list"),
    ],
)
def test_malformed_barcode_list(copy, text, message):
    (copy / "barcode_list.txt").write_text(text)
    with pytest.raises(ReaderError, match=re.escape(f"barcode_list.txt: {message}")):
        dbit(copy)


def test_unknown_barcodes_and_truncated_h5ad(copy):
    raw = ad.read_h5ad(copy / f"{DATASET}.h5ad")
    bad = raw.copy()
    bad.obs_names = ["ACGTACGTACGTACGT", *bad.obs_names[1:].tolist()]
    bad.write_h5ad(copy / f"{DATASET}.h5ad")
    with pytest.raises(ReaderError, match=re.escape(f"{DATASET}.h5ad: obs name(s) ['ACGTACGTACGTACGT']")):
        dbit(copy)
    data = (copy / f"{DATASET}.h5ad").read_bytes()
    (copy / f"{DATASET}.h5ad").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match=re.escape(f"{DATASET}.h5ad: cannot read the DBiT counts")):
        dbit(copy)


# ------------------------------------------------------------------------------------------------ reference
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    from spatialdata_io import dbit
    s = dbit(sys.argv[1])
    t = s.tables["table"]
    out = {
        "images": {k: list(v.shape) for k, v in s.images.items()},
        "shapes": {k: [v.index.tolist(), v.geometry.to_wkt().tolist()] for k, v in s.shapes.items()},
        "table": [t.obs_names.tolist(), np.asarray(t.X).tolist(), t.obs["array_A"].tolist(),
                  t.obs["array_B"].tolist(), t.obs["pixel_id"].tolist(), dict(t.uns["spatialdata_attrs"]),
                  np.asarray(t.obsm["spatial"]).tolist()],
    }
    print(json.dumps(out))
    """
)


def test_matches_reference_reader(folder, sdata):
    """Same image size, squares, ids, order and table as spatialdata-io's DBiT reader (skipped when the
    reference environment is absent)."""
    ref = run_reference(_REFERENCE_SCRIPT, folder)
    assert {k: list(v.shape) for k, v in sdata.images.items()} == ref["images"]
    for name, (index, wkt) in ref["shapes"].items():
        assert sdata[name].index.tolist() == index
        assert shapely.equals(sdata[name].geometry.to_numpy(), shapely.from_wkt(wkt)).all()
    obs_names, x, array_a, array_b, pixel_id, attrs, spatial = ref["table"]
    table = sdata["table"]
    assert table.obs_names.tolist() == obs_names
    np.testing.assert_array_equal(table.X, np.asarray(x))
    assert table.obs["array_A"].tolist() == array_a and table.obs["array_B"].tolist() == array_b
    assert table.obs["pixel_id"].tolist() == pixel_id
    mine = table.uns["spatialdata_attrs"]
    assert (mine["region"], mine["region_key"], mine["instance_key"]) == (
        attrs["region"],
        attrs["region_key"],
        attrs["instance_key"],
    )
    np.testing.assert_array_equal(table.obsm["spatial"], np.asarray(spatial))
    assert isinstance(table.obs, pd.DataFrame)
