"""The CODEX / PhenoCycler reader and the FCS parser against synthetic processor output."""

from __future__ import annotations

import shutil
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from io_helpers import affine_xy, needs_reference, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import codex, get_technology
from tissuestack.io._codex import iter_codex
from tissuestack.io._fcs import read_fcs, write_fcs
from tissuestack.io.fake import write_codex
from tissuestack.io.fake._codex import CODEX_MARKERS, marker_value


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_codex(tmp_path_factory.mktemp("codex"))


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


# ------------------------------------------------------------------------------------------------ FCS
@pytest.mark.parametrize("version", ["FCS2.0", "FCS3.0", "FCS3.1"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("datatype", ["F", "D", "I"])
def test_fcs_round_trip(tmp_path, version, byteorder, datatype):
    data = np.arange(24, dtype=np.float64).reshape(6, 4) * (1 if datatype == "I" else 1.5)
    names = ["cell_id", "x", "cyc001_ch001", "cyc001_ch002"]
    markers = ["cell_id", None, "CD4/CD8", "Ki67"]  # a '/' inside a value is escaped by doubling
    write_fcs(
        tmp_path / "a.fcs", data, names, markers, version=version, datatype=datatype, byteorder=byteorder
    )
    fcs = read_fcs(tmp_path / "a.fcs")
    assert fcs.version == version and fcs.names == names and fcs.markers == markers
    np.testing.assert_array_equal(fcs.data, data)
    assert fcs.data.dtype == {"F": np.float32, "D": np.float64, "I": np.uint32}[datatype]


def test_fcs_offsets_from_text_and_mixed_integer_widths(tmp_path):
    """Offsets over 99,999,999 are 0 in the header and taken from $BEGINDATA/$ENDDATA; integer parameters may have
    different bit widths."""
    file = write_fcs(tmp_path / "a.fcs", np.ones((3, 2)), ["a", "b"])
    raw = bytearray(file.read_bytes())
    raw[26:42] = b"       0       0"
    file.write_bytes(bytes(raw))
    np.testing.assert_array_equal(read_fcs(file).data, np.ones((3, 2)))

    # hand-built: $DATATYPE I with a 16-bit and a 32-bit parameter, big endian
    events = np.zeros(2, dtype=[("a", ">u2"), ("b", ">u4")])
    events["a"], events["b"] = [1, 2], [70000, 80000]
    text = "/$BYTEORD/4,3,2,1/$DATATYPE/I/$MODE/L/$PAR/2/$TOT/2/$P1N/a/$P1B/16/$P2N/b/$P2B/32/"
    payload = events.tobytes()
    t0, t1 = 58, 58 + len(text) - 1
    header = b"FCS3.0    " + b"".join(f"{v:>8d}".encode() for v in (t0, t1, t1 + 1, t1 + len(payload), 0, 0))
    (tmp_path / "b.fcs").write_bytes(header + text.encode() + payload)
    fcs = read_fcs(tmp_path / "b.fcs")
    np.testing.assert_array_equal(fcs.data, [[1, 70000], [2, 80000]])
    assert fcs.markers == [None, None]


def test_fcs_errors(tmp_path):
    file = write_fcs(tmp_path / "a.fcs", np.ones((5, 3)), ["a", "b", "c"])
    raw = file.read_bytes()
    cases = {
        "truncated.fcs": (raw[:-7], "truncated file"),
        "version.fcs": (b"FCS9.9" + raw[6:], "unknown FCS version 'FCS9.9'"),
        "notfcs.fcs": (b"hello world", "not an FCS file"),
        "text.fcs": (raw[:80], "lies outside the file"),
        "type.fcs": (raw.replace(b"$DATATYPE/F", b"$DATATYPE/X"), "expected F (float32)"),
        "order.fcs": (raw.replace(b"1,2,3,4", b"3,1,2,4"), "$BYTEORD"),
        "mode.fcs": (raw.replace(b"$MODE/L", b"$MODE/H"), "list mode"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ReaderError, match=f"{name}.*") as info:
            read_fcs(tmp_path / name)
        assert message in str(info.value), (name, str(info.value))
    no_tot = raw.replace(b"/$TOT/5", b"/$XTOT/5")
    (tmp_path / "tot.fcs").write_bytes(no_tot)
    with pytest.raises(ReaderError, match=r"tot.fcs.*no \$TOT keyword"):
        read_fcs(tmp_path / "tot.fcs")
    with pytest.raises(ReaderError, match="FCS file not found"):
        read_fcs(tmp_path / "missing.fcs")


# ------------------------------------------------------------------------------------------------ contents
def test_registered_technology_and_order(bundle):
    tech = get_technology("codex")
    assert tech.iter_elements is iter_codex
    assert [name for name, _ in tech.iter_elements(bundle)] == ["reg001_image", "reg001_cells", "table"]
    assert {o.name for o in tech.options} >= {"fcs", "compensated", "regions", "image_file", "pixel_size_um"}


def test_table_channels_through_pns_and_integer_ids(bundle):
    sdata = codex(bundle)
    table = sdata["table"]
    # var = the marker names ($PnS), not the cyc channel names ($PnN) nor positions
    assert table.var_names.tolist() == list(CODEX_MARKERS)
    assert table.var["channel"].tolist() == ["cyc001_ch001", "cyc001_ch002", "cyc002_ch003"]
    expected = np.array([[marker_value(1, k, j) for j in range(3)] for k in range(10)], dtype=np.float32)
    np.testing.assert_array_equal(table.X, expected)
    assert table.obs["cell_id"].dtype == np.int64 and table.obs["cell_id"].tolist() == list(range(1, 11))
    assert table.obs["size"].dtype == np.int64 and table.obs["region"].tolist() == [1] * 10
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        "reg001_cells",
        "cells_region",
        "cell_id",
    )
    np.testing.assert_array_equal(
        table.obsm["spatial"], np.column_stack([5.0 + 4 * np.arange(10), 3.0 + 2 * np.arange(10)])
    )
    cells = sdata["reg001_cells"]
    assert cells.index.dtype == np.int64 and cells.index.tolist() == table.obs["cell_id"].tolist()
    np.testing.assert_allclose(cells["radius"], np.sqrt((10 + np.arange(10)) / np.pi))
    np.testing.assert_array_equal(cells.geometry.x, table.obsm["spatial"][:, 0])


def test_csv_twins_and_uncompensated(bundle, tmp_path):
    fcs_table = codex(bundle)["table"]
    csv_table = codex(bundle, fcs=False)["table"]
    np.testing.assert_array_equal(csv_table.X, fcs_table.X)
    pd.testing.assert_frame_equal(csv_table.obs, fcs_table.obs)
    assert csv_table.var_names.tolist() == ["cyc001_ch001", "cyc001_ch002", "cyc002_ch003"]  # CSV: PnN only
    un = codex(bundle, compensated=False)["table"]
    np.testing.assert_allclose(un.X, fcs_table.X + 0.25)
    # 'cyc001_ch001:DAPI' headers give the marker names too
    marked = write_codex(tmp_path, csv_marker_headers=True)
    assert codex(marked, fcs=False)["table"].var_names.tolist() == list(CODEX_MARKERS)


def test_image_values_and_placement(tmp_path, bundle):
    sdata = codex(bundle)
    image = sdata["reg001_image"]
    level = raster_levels(image)[0]
    assert level.coords["c"].values.tolist() == list(CODEX_MARKERS)
    values = level.values
    np.testing.assert_array_equal(values, tifffile.imread(bundle / "reg001_stitched.tif"))
    # the pixel under each cell centre is marked 100 + k; image and circles share the pixel frame
    xy = sdata["table"].obsm["spatial"].astype(int)
    np.testing.assert_array_equal(values[0][xy[:, 1], xy[:, 0]], 100 + np.arange(10))
    np.testing.assert_array_equal(affine_xy(image), affine_xy(sdata["reg001_cells"]))
    stitched = codex(write_codex(tmp_path / "s", image="stitched"))
    level_s = raster_levels(stitched["reg001_image"])[0]
    assert level_s.coords["c"].values.tolist() == list(CODEX_MARKERS)  # mapped through the channel table
    np.testing.assert_array_equal(level_s.values, values)
    scaled = codex(bundle, pixel_size_um=0.5)
    np.testing.assert_allclose(affine_xy(scaled["reg001_image"]), np.diag([0.5, 0.5, 1.0]))
    np.testing.assert_allclose(affine_xy(scaled["reg001_cells"]), np.diag([0.5, 0.5, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "reg001_image" not in codex(bundle, images=False)
    with pytest.warns(UserWarning, match="no image for region reg001"):
        assert "reg001_image" not in codex(write_codex(tmp_path / "n", image=None))


def test_several_regions(tmp_path):
    folder = write_codex(tmp_path, n_regions=2, n_cells=4)
    sdata = codex(folder)
    assert set(sdata.coordinate_systems) == {"reg001", "reg002"}
    table = sdata["table"]
    assert table.uns["spatialdata_attrs"]["region"] == ["reg001_cells", "reg002_cells"]
    assert table.obs_names.tolist()[3:5] == ["reg001_4", "reg002_1"]
    assert table.obs["cells_region"].tolist() == ["reg001_cells"] * 4 + ["reg002_cells"] * 4
    np.testing.assert_array_equal(table.X[4], [marker_value(2, 0, j) for j in range(3)])
    assert sdata["reg002_cells"].index.tolist() == [1, 2, 3, 4]
    assert raster_levels(sdata["reg002_image"])[0].values[1, 0, 0] == 22
    one = codex(folder, regions=(2,))
    assert set(one.coordinate_systems) == {"global"} and one["table"].n_obs == 4
    assert one["table"].uns["spatialdata_attrs"]["region"] == "reg002_cells"
    with pytest.raises(
        ReaderError, match=r"no cells in region\(s\) \[3\]; the data have the regions \[1, 2\]"
    ):
        codex(folder, regions=[3])
    with pytest.raises(ReaderError, match="names one image but the data have the regions"):
        codex(folder, image_file="reg001_stitched.tif")


def test_nested_processor_layout_and_working_directory(tmp_path, monkeypatch):
    """Files are found under processed/segm/.../fcs/<kind>/ and always relative to the data folder (the reference
    opens them relative to the working directory)."""
    folder = write_codex(tmp_path / "data", nested=True)
    monkeypatch.chdir(tmp_path)
    sdata = codex(Path("data") / "codex")
    assert sdata["table"].n_obs == 10 and "reg001_image" in sdata
    np.testing.assert_allclose(codex(folder, compensated=False)["table"].X, sdata["table"].X + 0.25)


def test_image_file_option(copy):
    (copy / "reg001_stitched.tif").rename(copy / "other.tif")
    tifffile.imwrite(copy / "another.tif", np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(ReaderError, match=r"several TIFF images .*pass image_file="):
        codex(copy)
    sdata = codex(copy, image_file="other.tif")
    assert raster_levels(sdata["reg001_image"])[0].shape == (3, 50, 60)
    with pytest.raises(ReaderError, match=r"nope.tif: image_file not found \(relative paths are taken from"):
        codex(copy, image_file="nope.tif")


# ------------------------------------------------------------------------------------------------ errors
def test_missing_files(tmp_path, copy):
    with pytest.raises(ReaderError, match="not a directory; expected a CODEX processor output folder"):
        codex(tmp_path / "nope")
    for f in copy.glob("*.fcs"):
        f.unlink()
    with pytest.raises(ReaderError, match=r"no per-cell .fcs file.*there are .csv files: pass fcs=False"):
        codex(copy)
    for f in copy.glob("*_compensated.csv"):
        f.unlink()
    with pytest.raises(ReaderError, match=r"only reg001_uncompensated.csv found; .*pass compensated=False"):
        codex(copy, fcs=False)


def test_wrong_columns_and_values(copy):
    frame = pd.read_csv(copy / "reg001_compensated.csv")
    frame.drop(columns=["x"]).to_csv(copy / "reg001_compensated.csv", index=False)
    with pytest.raises(
        ReaderError, match=r"reg001_compensated.csv: the column\(s\) \['x'\]; expected the CODEX"
    ):
        codex(copy, fcs=False)
    frame.drop(columns=[c for c in frame.columns if c.startswith("cyc")]).to_csv(
        copy / "reg001_compensated.csv", index=False
    )
    with pytest.raises(ReaderError, match=r"no marker channel \(cyc<ccc>_ch<nnn>\)"):
        codex(copy, fcs=False)
    frame.assign(cell_id=frame["cell_id"] + 0.5).to_csv(copy / "reg001_compensated.csv", index=False)
    with pytest.raises(ReaderError, match=r"column 'cell_id' holds 10 non-integer value\(s\)"):
        codex(copy, fcs=False)
    frame.assign(cell_id=1).to_csv(copy / "reg001_compensated.csv", index=False)
    with pytest.raises(ReaderError, match=r"\(region, cell_id\) pairs are repeated"):
        codex(copy, fcs=False)
    events = read_fcs(copy / "reg001_compensated.fcs")
    names = list(events.names)
    names[1] = "cell_id"
    write_fcs(copy / "reg001_compensated.fcs", events.data, names)
    with pytest.raises(
        ReaderError, match=r"reg001_compensated.fcs: FCS parameter names \(\$PnN\) are repeated"
    ):
        codex(copy)


def test_truncated_files(copy):
    raw = (copy / "reg001_compensated.fcs").read_bytes()
    (copy / "reg001_compensated.fcs").write_bytes(raw[:-10])
    with pytest.raises(ReaderError, match=r"reg001_compensated.fcs: the FCS DATA segment .*truncated file"):
        codex(copy)
    text = (copy / "reg001_compensated.csv").read_bytes()
    (copy / "reg001_compensated.csv").write_bytes(text[:-9])
    with pytest.raises(ReaderError, match=r"reg001_compensated.csv: .*truncated file"):
        codex(copy, fcs=False)
    (copy / "reg001_uncompensated.fcs").write_bytes(b"FCS4.0    " + raw[10:])
    with pytest.raises(ReaderError, match=r"unknown FCS version 'FCS4.0'"):
        codex(copy, compensated=False)


# ------------------------------------------------------------------------------------------------ store
def test_cli_convert_and_read_back(tmp_path, bundle):
    out = tmp_path / "codex.zarr"
    assert main(["convert", "codex", str(bundle), str(out), "--no-progress", "--pixel-size-um", "0.5"]) == 0
    back = read_zarr(out)
    ours = codex(bundle, pixel_size_um=0.5)
    assert set(back.images) == {"reg001_image"} and set(back.shapes) == {"reg001_cells"}
    table = back["table"]
    np.testing.assert_array_equal(table.X, ours["table"].X)
    assert table.var_names.tolist() == list(CODEX_MARKERS)
    assert back["reg001_cells"].index.tolist() == list(range(1, 11))
    assert table.obs["cell_id"].tolist() == list(range(1, 11))
    np.testing.assert_allclose(affine_xy(back["reg001_cells"]), np.diag([0.5, 0.5, 1.0]))
    np.testing.assert_array_equal(
        raster_levels(back["reg001_image"])[0].values, raster_levels(ours["reg001_image"])[0].values
    )
    assert main(["convert", "codex", str(tmp_path / "nope"), str(tmp_path / "x.zarr"), "--no-progress"]) == 2


# ------------------------------------------------------------------------------------------------ reference
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    from spatialdata_io import codex
    os.chdir(sys.argv[1])  # the reference opens the CSV and the TIFF relative to the working directory
    s = codex(".", fcs=False)
    t = s.tables["table"]
    (shapes_name, shapes), = s.shapes.items()
    img = s.images["images"]["scale0"]["image"]
    print(json.dumps({
        "obs": t.obs["cell_id"].tolist(), "var": t.var_names.tolist(), "X": np.asarray(t.X).tolist(),
        "spatial": np.asarray(t.obsm["spatial"]).tolist(), "shapes": [shapes_name, shapes.index.tolist(),
        shapes.geometry.x.tolist(), shapes.geometry.y.tolist()], "image": img.values.tolist(),
    }))
    """
)


@needs_reference
def test_matches_reference_reader(bundle, tmp_path):
    """Same cells, ids, values and centres as spatialdata-io's CODEX reader (its CSV path: its FCS path is broken),
    given a folder holding only one CSV and one TIFF and run from inside it."""
    ref_folder = tmp_path / "ref"
    ref_folder.mkdir()
    for name in ("reg001_compensated.csv", "reg001_stitched.tif"):
        shutil.copy(bundle / name, ref_folder / name)
    ref = run_reference(_REFERENCE_SCRIPT, ref_folder)
    ours = codex(bundle, fcs=False)
    table = ours["table"]
    assert table.obs["cell_id"].tolist() == ref["obs"] and table.var_names.tolist() == ref["var"]
    np.testing.assert_allclose(table.X, np.asarray(ref["X"]))
    np.testing.assert_allclose(table.obsm["spatial"], np.asarray(ref["spatial"]))
    # the reference names the shapes after the region value ('1'); ours is 'reg001_cells'
    name, index, x, y = ref["shapes"]
    assert name == "1" and ours["reg001_cells"].index.tolist() == index
    np.testing.assert_allclose(ours["reg001_cells"].geometry.x, x)
    np.testing.assert_allclose(ours["reg001_cells"].geometry.y, y)
    np.testing.assert_array_equal(raster_levels(ours["reg001_image"])[0].values, np.asarray(ref["image"]))
