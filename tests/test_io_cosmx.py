"""The NanoString / Bruker CosMx reader against synthetic flat-file exports (legacy and AtoMx layouts)."""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from PIL import Image

from io_helpers import affine_xy, apply
from tissuestack import read_zarr
from tissuestack.elements import get_meta, raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import cosmx, get_technology
from tissuestack.io._cosmx import iter_cosmx, morphology_channel_names
from tissuestack.io.fake import write_cosmx
from tissuestack.io.fake._cosmx import (
    COMPOSITE_INSIDE,
    MORPHOLOGY_CHANNELS,
    PIXEL_SIZE_UM,
    TARGETS,
    fov_origin,
)

ID = "Lung5_Rep1"
S = PIXEL_SIZE_UM


def flat(path: Path, suffix: str) -> pd.DataFrame:
    """A flat file read plainly (``None`` strings kept), gzipped or not."""
    for ext in (".csv", ".csv.gz"):
        file = path / f"{ID}_{suffix}{ext}"
        if file.exists():
            return pd.read_csv(file, keep_default_na=False)
    raise FileNotFoundError(suffix)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    return write_cosmx(tmp_path_factory.mktemp("legacy"), seed=2)


@pytest.fixture(scope="module")
def atomx(tmp_path_factory) -> Path:
    return write_cosmx(tmp_path_factory.mktemp("atomx"), version="atomx", seed=3)


@pytest.fixture(scope="module")
def legacy_sdata(legacy):
    return cosmx(legacy)


@pytest.fixture(scope="module")
def atomx_sdata(atomx):
    return cosmx(atomx)


# ------------------------------------------------------------------------------------------------ contents
def test_legacy_elements_and_links(legacy_sdata):
    s = legacy_sdata
    assert set(s.images) == {"1_image", "2_image"}
    assert set(s.labels) == {"1_labels", "2_labels"}
    assert set(s.points) == {f"{ID}_transcripts"}
    assert set(s.shapes) == set()  # legacy exports have no polygons file
    table = s["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (sorted(attrs["region"]), attrs["region_key"], attrs["instance_key"]) == (
        ["1_labels", "2_labels"],
        "fov_labels",
        "cell_ID",
    )
    assert table.obs_names.tolist() == [f"{c}_{f}" for f in (1, 2) for c in range(1, 5)]
    assert table.obs["fov_labels"].astype(str).tolist() == [f"{f}_labels" for f in (1, 2) for _ in range(4)]
    assert table.obs["cell_ID"].dtype == np.int64
    # every row's instance id is a label value of the FOV it names
    for fov in (1, 2):
        values = set(np.unique(raster_levels(s[f"{fov}_labels"])[0].values).tolist()) - {0}
        rows = table.obs["fov_labels"].astype(str) == f"{fov}_labels"
        assert set(table.obs.loc[rows, "cell_ID"].tolist()) == values


def test_table_values_equal_the_csvs(legacy, legacy_sdata):
    table = legacy_sdata["table"]
    expr = flat(legacy, "exprMat_file")
    meta = flat(legacy, "metadata_file")
    expr = expr[expr["cell_ID"] != 0]  # background rows dropped
    assert table.var_names.tolist() == list(TARGETS)
    np.testing.assert_array_equal(table.X.toarray(), expr[list(TARGETS)].to_numpy())
    np.testing.assert_allclose(table.obs["Area"].to_numpy(), meta["Area"].to_numpy())
    np.testing.assert_allclose(
        table.obsm["spatial"], meta[["CenterX_global_px", "CenterY_global_px"]].to_numpy() * S
    )
    np.testing.assert_allclose(
        table.obsm["spatial_local_px"], meta[["CenterX_local_px", "CenterY_local_px"]].to_numpy()
    )
    assert table.obs["fov"].cat.categories.tolist() == ["1", "2"]
    # counts = the transcripts' targets per cell (the fixture is consistent)
    tx = flat(legacy, "tx_file")
    tx = tx[tx["cell_ID"] > 0]
    brute = pd.crosstab(tx["cell_ID"].astype(str) + "_" + tx["fov"].astype(str), tx["target"])
    brute = brute.reindex(index=table.obs_names, columns=list(TARGETS), fill_value=0)
    np.testing.assert_array_equal(brute.to_numpy(), table.X.toarray())


@pytest.mark.parametrize("variant", ["legacy", "legacy-rows-down", "atomx", "atomx-shifted"])
def test_label_pixels_map_to_the_metadata_centroid(tmp_path, variant):
    """Through the labels' transformation, a cell's label pixels average to its global centre in the metadata
    (the y flip and the one-FOV shift are detected from the data)."""
    path = write_cosmx(
        tmp_path,
        version=variant.split("-")[0],
        fov_shift=variant.endswith("shifted"),
        flip_y=not variant.endswith("rows-down"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a placement fits: no warning
        s = cosmx(path, transcripts=False, images=False)
    meta = flat(path, "metadata_file")
    for fov in (1, 2):
        labels = raster_levels(s[f"{fov}_labels"])[0].values
        m = affine_xy(s[f"{fov}_labels"])
        rows, cols = np.nonzero(labels)
        um = apply(m, np.column_stack([cols + 0.5, rows + 0.5]))  # pixel centres -> µm
        ids = labels[rows, cols]
        n = np.bincount(ids)
        centre = np.column_stack([np.bincount(ids, um[:, 0]), np.bincount(ids, um[:, 1])])[1:] / n[1:, None]
        expected = meta[meta["fov"] == fov].set_index("cell_ID").loc[np.arange(1, len(n))]
        np.testing.assert_allclose(
            centre, expected[["CenterX_global_px", "CenterY_global_px"]].to_numpy() * S, rtol=0, atol=1e-9
        )
        # row 0 is the top of the FOV, at the largest global y (unless the export runs y with the rows)
        assert m[1, 1] == pytest.approx(S if variant.endswith("rows-down") else -S)


def test_placement_mismatch_warns(tmp_path):
    path = write_cosmx(tmp_path)
    meta = pd.read_csv(path / f"{ID}_metadata_file.csv")
    meta["CenterX_global_px"] += 40  # the centres no longer sit on the labels
    meta.to_csv(path / f"{ID}_metadata_file.csv", index=False)
    with pytest.warns(UserWarning, match="no placement of FOV 1 puts its cells on the metadata centres"):
        cosmx(path, transcripts=False, images=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # explicit choices skip the check
        cosmx(path, transcripts=False, images=False, flip_y=True, fov_shift=False)


def test_transcripts_values_and_cells(legacy, legacy_sdata):
    s = legacy_sdata
    points = s[f"{ID}_transcripts"]
    tx = flat(legacy, "tx_file")
    got = points.compute()
    np.testing.assert_allclose(got[["x", "y"]].to_numpy(), tx[["x_global_px", "y_global_px"]].to_numpy())
    np.testing.assert_allclose(affine_xy(points)[:2, :2], np.eye(2) * S)
    assert isinstance(got["target"].dtype, pd.CategoricalDtype)
    assert got["target"].astype(str).tolist() == tx["target"].tolist()
    assert (
        got["CellComp"].tolist() == tx["CellComp"].tolist()
    )  # the compartment "None" is not a missing value
    np.testing.assert_array_equal(got["z_raw"].to_numpy(), tx["z"].to_numpy())
    assert "z" not in got.columns  # points stay 2D
    # cross-modal: the label under each transcript (through both transformations) is its cell_ID
    um = apply(affine_xy(points), got[["x", "y"]].to_numpy())
    for fov in (1, 2):
        rows = got["fov"].to_numpy() == fov
        labels = raster_levels(s[f"{fov}_labels"])[0].values
        px = apply(np.linalg.inv(affine_xy(s[f"{fov}_labels"])), um[rows])
        under = labels[np.floor(px[:, 1]).astype(int), np.floor(px[:, 0]).astype(int)]
        np.testing.assert_array_equal(under, got.loc[rows, "cell_ID"].to_numpy())


def test_transcripts_per_fov(legacy):
    s = cosmx(legacy, images=False, labels=False, table=False, transcripts_per_fov=True)
    assert set(s.points) == {"1_points", "2_points"}
    for fov in (1, 2):
        part = s[f"{fov}_points"]
        assert get_meta(part).instance_key == "cell_ID"
        assert (part.compute()["fov"] == fov).all() and len(part.compute()) == 30


def test_composite_images(legacy, legacy_sdata):
    for fov in (1, 2):
        image = legacy_sdata[f"{fov}_image"]
        level = raster_levels(image)[0]
        assert level.dims == ("c", "y", "x") and level.shape == (3, 64, 64)
        raw = np.asarray(
            Image.open(legacy / "CellComposite" / f"CellComposite_F{fov:03d}.jpg").convert("RGB")
        )
        np.testing.assert_array_equal(level.values, raw.transpose(2, 0, 1))
        labels = raster_levels(legacy_sdata[f"{fov}_labels"])[0].values
        red = level.values[0].astype(int)
        assert np.abs(np.median(red[labels > 0]) - COMPOSITE_INSIDE) < 10  # (JPEG)
        assert np.median(red[labels == 0]) < 60
        np.testing.assert_allclose(affine_xy(image), affine_xy(legacy_sdata[f"{fov}_labels"]))


def test_atomx_export(atomx, atomx_sdata):
    s = atomx_sdata
    assert set(s.images) == {"1_image", "2_image"} and set(s.labels) == {"1_labels", "2_labels"}
    assert set(s.shapes) == {f"{ID}_polygons"}
    names = [target for _, target in MORPHOLOGY_CHANNELS]
    for fov in (1, 2):
        image = s[f"{fov}_image"]
        assert image.coords["c"].values.tolist() == names
        raw = tifffile.imread(atomx / "Morphology2D" / f"{ID}_F{fov:03d}.TIF")
        np.testing.assert_array_equal(raster_levels(image)[0].values, raw)
        labels = raster_levels(s[f"{fov}_labels"])[0].values
        dapi = image.sel(c="DAPI").values
        np.testing.assert_array_equal(dapi[labels > 0], 1000 + labels[labels > 0])
    # mm positions converted to pixels: the same placement as the legacy export of the same geometry
    x0, y0 = fov_origin(2, 64)
    np.testing.assert_allclose(affine_xy(s["2_labels"])[:2, 2], [x0 * S, (y0 + 64) * S], atol=1e-9)
    table = s["table"]
    assert {"cell", "atomx_cell_id", "Area.um2"} <= set(
        table.obs.columns
    ) and "cell_id" not in table.obs.columns
    # polygons: indexed like the table, centred on the cells' global centres
    polygons = s[f"{ID}_polygons"]
    assert sorted(polygons.index) == sorted(table.obs_names)
    centroids = shapely.centroid(polygons.geometry.to_numpy())
    um = apply(affine_xy(polygons), np.column_stack([shapely.get_x(centroids), shapely.get_y(centroids)]))
    expected = pd.DataFrame(table.obsm["spatial"], index=table.obs_names).loc[polygons.index].to_numpy()
    np.testing.assert_allclose(um, expected, atol=1e-9)
    # transcripts from the gzipped file, with the AtoMx cell key as the instance column
    points = s[f"{ID}_transcripts"]
    assert get_meta(points).instance_key == "cell"
    tx = flat(atomx, "tx_file")
    got = points.compute()
    np.testing.assert_allclose(got["x"].to_numpy(), tx["x_global_px"].to_numpy())
    assert got["cell"].tolist() == tx["cell"].tolist()


def test_fov_shift_detection(tmp_path):
    path = write_cosmx(tmp_path, version="atomx", fov_shift=True)
    auto = cosmx(path, transcripts=False, images=False)
    forced = cosmx(path, transcripts=False, images=False, flip_y=True, fov_shift=False)
    shift = affine_xy(forced["1_labels"])[1, 2] - affine_xy(auto["1_labels"])[1, 2]
    assert shift == pytest.approx(64 * S)
    shifted = cosmx(path, transcripts=False, images=False, fov_shift=True)
    np.testing.assert_allclose(affine_xy(shifted["1_labels"]), affine_xy(auto["1_labels"]))


def test_options(legacy):
    s = cosmx(legacy, fovs=[2])
    assert set(s.images) == {"2_image"} and set(s.labels) == {"2_labels"}
    assert (s["table"].obs["fov"].astype(str) == "2").all() and s["table"].uns["spatialdata_attrs"][
        "region"
    ] == ["2_labels"]
    assert (s[f"{ID}_transcripts"].compute()["fov"] == 2).all()
    with pytest.raises(ReaderError, match=r"FOV\(s\) \[7\] are not listed; the export has \[1, 2\]"):
        cosmx(legacy, fovs=[7])
    up = cosmx(legacy, flip_y=False, fov_shift=False, transcripts=False, table=False, images=False)
    m = affine_xy(up["1_labels"])
    assert m[1, 1] == pytest.approx(S) and m[1, 2] == pytest.approx(fov_origin(1, 64)[1] * S)
    other = cosmx(legacy, pixel_size_um=0.2, transcripts=False, table=False, images=False)
    assert affine_xy(other["1_labels"])[0, 0] == pytest.approx(0.2)


def test_morphology_channel_names():
    text = '{"ChannelOrder": "BGU", "Channels": [{"ChannelId": "B", "BiologicalTarget": "CD298/B2M"}, {"ChannelId": "U", "BiologicalTarget": "DAPI"}]}'
    assert morphology_channel_names(text) == ["CD298/B2M", "G", "DAPI"]
    # not strict JSON: the fields are picked out of the text
    assert morphology_channel_names(
        'ChannelOrder: x, "ChannelOrder": "UU", "ChannelId": "U", "BiologicalTarget": "DAPI",'
    ) == [
        "DAPI",
        "DAPI-1",
    ]
    assert morphology_channel_names("ImageJ=1.5") is None


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, legacy) -> Path:
    shutil.copytree(legacy, tmp_path / "x")
    return tmp_path / "x"


def test_unknown_layout(tmp_path):
    (tmp_path / "RunSummary").mkdir()
    (tmp_path / "seuratObject_Lung5.RDS").write_bytes(b"x")
    with pytest.raises(ReaderError) as err:
        cosmx(tmp_path)
    message = str(err.value)
    assert "no CosMx flat files found" in message and "seuratObject_Lung5.RDS" in message
    assert "Supported layouts: legacy flat files" in message and "AtoMx" in message
    with pytest.raises(ReaderError, match="not a directory"):
        cosmx(tmp_path / "nothing")


def test_missing_and_ambiguous_files(copy):
    shutil.copy(copy / f"{ID}_exprMat_file.csv", copy / "Other_exprMat_file.csv")
    with pytest.raises(ReaderError, match=r"several datasets .*Lung5_Rep1, Other.*pass dataset_id"):
        cosmx(copy)
    (copy / f"{ID}_fov_positions_file.csv").unlink()
    with pytest.raises(ReaderError, match=re.escape(f"{ID}_fov_positions_file.csv (or .csv.gz) not found")):
        cosmx(copy, dataset_id=ID)
    with pytest.raises(ReaderError, match="several datasets"):
        cosmx(copy)


def test_wrong_columns(copy):
    pos = pd.read_csv(copy / f"{ID}_fov_positions_file.csv")
    pos.rename(columns={"x_global_px": "x"}).to_csv(copy / f"{ID}_fov_positions_file.csv", index=False)
    with pytest.raises(
        ReaderError, match=re.escape("fov_positions_file.csv: no FOV origin columns; expected x_global_px")
    ):
        cosmx(copy)
    pos.to_csv(copy / f"{ID}_fov_positions_file.csv", index=False)
    meta = pd.read_csv(copy / f"{ID}_metadata_file.csv")
    meta.drop(columns=["cell_ID"]).to_csv(copy / f"{ID}_metadata_file.csv", index=False)
    with pytest.raises(
        ReaderError, match=r"metadata_file.csv: the cell metadata lacks the column\(s\) \['cell_ID'\]"
    ):
        cosmx(copy)
    meta.to_csv(copy / f"{ID}_metadata_file.csv", index=False)
    tx = pd.read_csv(copy / f"{ID}_tx_file.csv", keep_default_na=False)
    tx.drop(columns=["target"]).to_csv(copy / f"{ID}_tx_file.csv", index=False)
    with pytest.raises(ReaderError, match=r"tx_file.csv: the transcripts lack the column\(s\) \['target'\]"):
        cosmx(copy)


def test_truncated_files(copy):
    file = copy / f"{ID}_tx_file.csv"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 7])
    with pytest.raises(
        ReaderError, match=re.escape("tx_file.csv: the transcripts file ends in the middle of a line")
    ):
        cosmx(copy)
    labels = copy / "CellLabels" / "CellLabels_F002.tif"
    labels.write_bytes(labels.read_bytes()[:100])
    with pytest.raises(ReaderError, match=re.escape("CellLabels_F002.tif")):
        cosmx(copy, transcripts=False)
    gz = copy / f"{ID}_exprMat_file.csv"
    with gzip.open(copy / f"{ID}_exprMat_file.csv.gz", "wb") as fh:
        fh.write(gz.read_bytes())
    gz.unlink()
    blob = (copy / f"{ID}_exprMat_file.csv.gz").read_bytes()
    (copy / f"{ID}_exprMat_file.csv.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        ReaderError, match=re.escape("exprMat_file.csv.gz: cannot read the expression matrix")
    ):
        cosmx(copy, transcripts=False, labels=False)


def test_unknown_target_fails_clearly(copy):
    tx = pd.read_csv(copy / f"{ID}_tx_file.csv", keep_default_na=False)
    tx.loc[5, "target"] = "NotATarget"
    tx.to_csv(copy / f"{ID}_tx_file.csv", index=False)
    points = cosmx(copy, images=False, labels=False, table=False)[f"{ID}_transcripts"]
    with pytest.raises(ReaderError, match=r"tx_file.csv: column 'target' holds value\(s\) \['NotATarget'\]"):
        points.compute()
    points = cosmx(copy, images=False, labels=False, table=False, scan_features=True)[f"{ID}_transcripts"]
    assert (points.compute()["target"] == "NotATarget").sum() == 1


# ------------------------------------------------------------------------------------------------ store / registry
@pytest.mark.parametrize("which", ["legacy", "atomx"])
def test_write_read_zarr_round_trip(tmp_path, which, legacy_sdata, atomx_sdata):
    sdata = legacy_sdata if which == "legacy" else atomx_sdata
    sdata.write(tmp_path / "c.zarr")
    back = read_zarr(tmp_path / "c.zarr")
    assert set(back.images) == set(sdata.images) and set(back.labels) == set(sdata.labels)
    assert set(back.points) == set(sdata.points) and set(back.shapes) == set(sdata.shapes)
    for name in ("1_labels", "2_image"):
        np.testing.assert_allclose(affine_xy(back[name]), affine_xy(sdata[name]))
        np.testing.assert_array_equal(
            raster_levels(back[name])[0].values, raster_levels(sdata[name])[0].values
        )
    t0, t1 = sdata["table"], back["table"]
    assert t1.obs_names.tolist() == t0.obs_names.tolist()
    np.testing.assert_array_equal(t1.X.toarray(), t0.X.toarray())
    assert sorted(t1.uns["spatialdata_attrs"]["region"]) == ["1_labels", "2_labels"]
    p0 = sdata[f"{ID}_transcripts"].compute().sort_values(["x", "y"])
    p1 = back[f"{ID}_transcripts"].compute().sort_values(["x", "y"])
    np.testing.assert_allclose(p1[["x", "y"]].to_numpy(), p0[["x", "y"]].to_numpy())


def test_registered_technology(legacy):
    tech = get_technology("cosmx")
    assert tech.iter_elements is iter_cosmx
    names = [name for name, _ in tech.iter_elements(legacy)]
    assert names == ["1_image", "2_image", "1_labels", "2_labels", f"{ID}_transcripts", "table"]


def test_nested_morphology_folder(tmp_path, atomx):
    path = tmp_path / "export"
    shutil.copytree(atomx, path)
    (path / "RawFiles" / "Run1" / "CellStatsDir").mkdir(parents=True)
    shutil.move(path / "Morphology2D", path / "RawFiles" / "Run1" / "CellStatsDir" / "Morphology2D")
    s = cosmx(path, transcripts=False, table=False, labels=False)
    assert s["1_image"].coords["c"].values.tolist() == [t for _, t in MORPHOLOGY_CHANNELS]
    (path / "Other" / "Morphology2D").mkdir(parents=True)
    with pytest.raises(ReaderError, match="several Morphology2D folders"):
        cosmx(path, transcripts=False, table=False, labels=False)
