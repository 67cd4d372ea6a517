"""The MCMICRO reader against synthetic MCMICRO folders, whole slide and tissue microarray."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from io_helpers import affine_xy, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, mcmicro
from tissuestack.io._mcmicro import iter_mcmicro
from tissuestack.io.fake import write_mcmicro
from tissuestack.io.fake._mcmicro import MCMICRO_MARKERS, TMA_CORE_SHAPE, TMA_ORIGINS

SAMPLE = "exemplar-001"
RAW = f"{SAMPLE}-cycle-01"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_mcmicro(tmp_path_factory.mktemp("mcmicro"), sample=SAMPLE, seed=2)


@pytest.fixture(scope="module")
def tma_folder(tmp_path_factory) -> Path:
    return write_mcmicro(tmp_path_factory.mktemp("mcmicro_tma"), tma=True, seed=5)


@pytest.fixture(scope="module")
def sdata(folder):
    return mcmicro(folder)


@pytest.fixture(scope="module")
def tma(tma_folder):
    return mcmicro(tma_folder)


def _level0(element) -> np.ndarray:
    return np.asarray(raster_levels(element)[0].values)


def _check_tables(sdata, tables: dict[str, str], folder: Path) -> None:
    """Each table's X is the mean intensity of each cell of its labels in the image of the same system."""
    for table_name, (labels_name, image_name) in tables.items():
        table = sdata[table_name]
        attrs = table.uns["spatialdata_attrs"]
        assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
            labels_name,
            "region",
            "CellID",
        )
        assert set(table.obs["region"].astype(str)) == {labels_name}
        assert table.var_names.tolist() == list(MCMICRO_MARKERS)
        assert table.var["Filter"].tolist() == ["DAPI", "FITC", "Cy5"]
        assert table.obs["CellID"].dtype.kind == "i"
        assert "X_centroid" not in table.obs.columns and "Area" in table.obs.columns
        labels, pixels = _level0(sdata[labels_name]), _level0(sdata[image_name])
        assert sorted(table.obs["CellID"]) == sorted(set(np.unique(labels)) - {0})
        for k, cell in enumerate(table.obs["CellID"]):
            rr, cc = np.nonzero(labels == cell)
            np.testing.assert_allclose(table.X[k], pixels[:, rr, cc].mean(axis=1))
            np.testing.assert_allclose(table.obsm["spatial"][k], [cc.mean(), rr.mean()])
        raw = pd.read_csv(folder / "quantification" / f"{table_name}.csv")
        np.testing.assert_array_equal(table.obs["CellID"].to_numpy(), raw["CellID"].to_numpy())


# ------------------------------------------------------------------------------------------------ whole slide
def test_whole_slide_elements(folder, sdata):
    assert set(sdata.images) == {f"{SAMPLE}_image", RAW, f"{RAW}-dfp", f"{RAW}-ffp"}
    assert set(sdata.labels) == {f"{SAMPLE}_cell", f"{SAMPLE}_nuclei"}
    assert set(sdata.tables) == {f"{SAMPLE}--unmicst_cell", f"{SAMPLE}--unmicst_nuclei"}
    image = sdata[f"{SAMPLE}_image"]
    levels = raster_levels(image)
    assert [lvl.shape for lvl in levels] == [(3, 40, 50), (3, 20, 25)]  # the file's own SubIFD pyramid
    assert levels[0].coords["c"].values.tolist() == list(MCMICRO_MARKERS)
    np.testing.assert_array_equal(
        _level0(image), tifffile.imread(folder / "registration" / f"{SAMPLE}.ome.tif")
    )
    assert image[next(iter(image.children))].ds["image"].data.dask is not None  # lazy
    for name in (f"{SAMPLE}_image", f"{SAMPLE}_cell", f"{SAMPLE}_nuclei"):
        np.testing.assert_array_equal(affine_xy(sdata[name], "global"), np.eye(3))
    # raw and illumination images are not registered: their own coordinate system
    for name in (RAW, f"{RAW}-dfp", f"{RAW}-ffp"):
        np.testing.assert_array_equal(affine_xy(sdata[name], RAW), np.eye(3))
    assert sorted(sdata.coordinate_systems) == sorted(["global", RAW])
    mask = folder / "segmentation" / f"unmicst-{SAMPLE}" / "nuclei.ome.tif"
    np.testing.assert_array_equal(_level0(sdata[f"{SAMPLE}_nuclei"]), tifffile.imread(mask))


def test_whole_slide_tables(folder, sdata):
    _check_tables(
        sdata,
        {
            f"{SAMPLE}--unmicst_cell": (f"{SAMPLE}_cell", f"{SAMPLE}_image"),
            f"{SAMPLE}--unmicst_nuclei": (f"{SAMPLE}_nuclei", f"{SAMPLE}_image"),
        },
        folder,
    )


def test_options_and_order(folder):
    tech = get_technology("mcmicro")
    assert tech.iter_elements is iter_mcmicro
    names = [name for name, _ in tech.iter_elements(folder, raw=False, illumination=False)]
    assert names == [
        f"{SAMPLE}_image",
        f"{SAMPLE}_cell",
        f"{SAMPLE}_nuclei",
        f"{SAMPLE}--unmicst_cell",
        f"{SAMPLE}--unmicst_nuclei",
    ]
    s = mcmicro(folder, images=False, raw=False, illumination=False, tables=False)
    assert set(s.images) == set() and set(s.tables) == set() and len(s.labels) == 2
    s = mcmicro(folder, raw=False, labels=False, tables=False)
    assert set(s.images) == {f"{SAMPLE}_image", f"{RAW}-dfp", f"{RAW}-ffp"}
    s = mcmicro(folder, image_chunks=16, raw=False, illumination=False, tables=False, labels=False)
    assert raster_levels(s[f"{SAMPLE}_image"])[0].data.chunks[1] == (16, 16, 8)


def test_same_mask_name_from_two_methods(tmp_path, folder):
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    seg = copy / "segmentation"
    shutil.copytree(seg / f"unmicst-{SAMPLE}", seg / f"s3seg-{SAMPLE}")
    shutil.copy(
        copy / "quantification" / f"{SAMPLE}--unmicst_cell.csv",
        copy / "quantification" / f"{SAMPLE}--s3seg_cell.csv",
    )
    s = mcmicro(copy, raw=False, illumination=False)
    assert set(s.labels) == {f"{SAMPLE}_{m}_{k}" for m in ("s3seg", "unmicst") for k in ("cell", "nuclei")}
    assert s[f"{SAMPLE}--s3seg_cell"].uns["spatialdata_attrs"]["region"] == f"{SAMPLE}_s3seg_cell"
    assert s[f"{SAMPLE}--unmicst_cell"].uns["spatialdata_attrs"]["region"] == f"{SAMPLE}_unmicst_cell"


def test_raw_files_that_are_not_tiffs_are_skipped(tmp_path, folder):
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    (copy / "raw" / f"{SAMPLE}-cycle-02.rcpnl").write_bytes(b"RareCyte panel")
    with pytest.warns(UserWarning, match=r"cycle-02.rcpnl: not a TIFF, skipped"):
        s = mcmicro(copy, illumination=False, tables=False)
    assert set(s.images) == {f"{SAMPLE}_image", RAW}


@pytest.mark.filterwarnings("ignore:table .* annotates:UserWarning")
def test_table_without_its_mask_warns(tmp_path, folder):
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    (copy / "segmentation" / f"unmicst-{SAMPLE}" / "nuclei.ome.tif").unlink()
    with pytest.warns(
        UserWarning, match=rf"unmicst_nuclei.csv: no segmentation/unmicst-{SAMPLE}/nuclei.ome.tif"
    ):
        s = mcmicro(copy, raw=False, illumination=False)
    assert s[f"{SAMPLE}--unmicst_nuclei"].uns["spatialdata_attrs"]["region"] == f"{SAMPLE}_nuclei"
    assert set(s.labels) == {f"{SAMPLE}_cell"}


def test_cli_convert_and_read_back(tmp_path, folder, sdata):
    out = tmp_path / "mcmicro.zarr"
    assert main(["convert", "mcmicro", str(folder), str(out), "--no-illumination", "--no-progress"]) == 0
    assert main(["validate", str(out)]) == 0
    back = read_zarr(out)
    assert set(back.images) == {f"{SAMPLE}_image", RAW} and set(back.labels) == set(sdata.labels)
    for name in (f"{SAMPLE}_image", f"{SAMPLE}_cell"):
        np.testing.assert_array_equal(_level0(back[name]), _level0(sdata[name]))
    assert raster_levels(back[f"{SAMPLE}_image"])[0].coords["c"].values.tolist() == list(MCMICRO_MARKERS)
    for name, table in sdata.tables.items():
        np.testing.assert_allclose(back[name].X, table.X)
        assert back[name].obs["CellID"].tolist() == table.obs["CellID"].tolist()
        assert back[name].uns["spatialdata_attrs"] == table.uns["spatialdata_attrs"]
        assert back[name].var["Filter"].tolist() == table.var["Filter"].tolist()


# ------------------------------------------------------------------------------------------------ TMA
def test_tma_elements_and_transforms(tma_folder, tma):
    assert set(tma.images) == {"tma_map", "core_1_image", "core_2_image"}
    assert set(tma.labels) == {"core_1_cell", "core_2_cell", "core_dearray_1_mask", "core_dearray_2_mask"}
    assert set(tma.tables) == {"1--unmicst_cell", "2--unmicst_cell"}
    full = _level0(tma["tma_map"])
    np.testing.assert_array_equal(affine_xy(tma["tma_map"]), np.eye(3))
    h, w = TMA_CORE_SHAPE
    for core, (y0, x0) in enumerate(TMA_ORIGINS, start=1):
        # centre of the core on its centroid = the crop origin for a crop of the map
        for name in (f"core_{core}_image", f"core_{core}_cell", f"core_dearray_{core}_mask"):
            np.testing.assert_allclose(affine_xy(tma[name]), [[1, 0, x0], [0, 1, y0], [0, 0, 1]])
        core_pixels = _level0(tma[f"core_{core}_image"])
        np.testing.assert_array_equal(core_pixels, full[:, y0 : y0 + h, x0 : x0 + w])
        assert raster_levels(tma[f"core_{core}_image"])[0].coords["c"].values.tolist() == list(
            MCMICRO_MARKERS
        )
    _check_tables(
        tma,
        {f"{c}--unmicst_cell": (f"core_{c}_cell", f"core_{c}_image") for c in (1, 2)},
        tma_folder,
    )


def test_tma_mode_override_and_round_trip(tmp_path, tma_folder, tma):
    copy = tmp_path / "t"
    shutil.copytree(tma_folder, copy)
    (copy / "qc" / "params.yml").unlink()
    with pytest.raises(ReaderError, match=r"params.yml: MCMICRO parameters not found .* pass tma="):
        mcmicro(copy)
    s = mcmicro(copy, tma=True)
    assert set(s.images) == set(tma.images)
    out = tmp_path / "tma.zarr"
    assert main(["convert", "mcmicro", str(copy), str(out), "--tma", "--no-progress"]) == 0
    assert main(["validate", str(out)]) == 0
    back = read_zarr(out)
    assert set(back.labels) == set(tma.labels) and set(back.tables) == set(tma.tables)
    np.testing.assert_allclose(affine_xy(back["core_2_cell"]), affine_xy(tma["core_2_cell"]))
    np.testing.assert_array_equal(_level0(back["core_2_image"]), _level0(tma["core_2_image"]))
    assert back["2--unmicst_cell"].uns["spatialdata_attrs"]["region"] == "core_2_cell"


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, folder) -> Path:
    path = tmp_path / "mcmicro"
    shutil.copytree(folder, path)
    return path


def test_missing_and_bad_parameters(copy):
    with pytest.raises(ReaderError, match="not a directory; expected an MCMICRO output folder"):
        mcmicro(copy / "nothing")
    params = copy / "qc" / "params.yml"
    params.write_text("modules: {}\n")
    with pytest.raises(ReaderError, match=r"params.yml: no 'workflow' section"):
        mcmicro(copy)
    params.write_text("workflow:\n  tma: maybe\n")
    with pytest.raises(ReaderError, match=r"params.yml: workflow.tma is 'maybe'; expected true or false"):
        mcmicro(copy)
    params.write_text("workflow: [unclosed\n")
    with pytest.raises(ReaderError, match=r"params.yml: not a readable YAML file"):
        mcmicro(copy)


def test_marker_list_errors(copy):
    file = copy / "markers.csv"
    markers = pd.read_csv(file)
    markers.drop(columns=["marker_name"]).to_csv(file, index=False)
    with pytest.raises(ReaderError, match=re.escape("markers.csv: no column(s) ['marker_name']")):
        mcmicro(copy)
    markers.iloc[::-1].to_csv(file, index=False)
    with pytest.raises(ReaderError, match=r"markers.csv: channel_number is not increasing"):
        mcmicro(copy)
    markers.assign(marker_name=["DNA_1", "CD45", "CD45"]).to_csv(file, index=False)
    with pytest.raises(ReaderError, match=re.escape("markers.csv: marker name(s) ['CD45'] appear twice")):
        mcmicro(copy)
    markers.iloc[:2].to_csv(file, index=False)
    with pytest.raises(
        ReaderError, match=rf"{SAMPLE}.ome.tif: the image has 3 channel\(s\) but markers.csv lists 2"
    ):
        mcmicro(copy)
    file.unlink()
    with pytest.raises(ReaderError, match=r"markers.csv: MCMICRO marker list not found"):
        mcmicro(copy)


def test_registration_and_quantification_errors(copy):
    reg = copy / "registration"
    shutil.copy(reg / f"{SAMPLE}.ome.tif", reg / "other.ome.tif")
    with pytest.raises(
        ReaderError, match=r"registration: 2 .ome.tif files .* expected exactly one registration"
    ):
        mcmicro(copy)
    (reg / "other.ome.tif").unlink()
    csv = copy / "quantification" / f"{SAMPLE}--unmicst_cell.csv"
    good = pd.read_csv(csv)
    good.drop(columns=["CD45"]).to_csv(csv, index=False)
    with pytest.raises(
        ReaderError, match=re.escape("unmicst_cell.csv: no column(s) ['CD45']; expected CellID")
    ):
        mcmicro(copy)
    good.assign(CellID=good["CellID"] + 0.5).to_csv(csv, index=False)
    with pytest.raises(ReaderError, match=r"unmicst_cell.csv: CellID holds float64 values"):
        mcmicro(copy)
    good.to_csv(csv, index=False)
    shutil.copy(csv, copy / "quantification" / "badname.csv")
    with pytest.raises(
        ReaderError, match=r"badname.csv: the quantification file name is not <sample>--<method>_<mask>"
    ):
        mcmicro(copy)


def test_truncated_files(copy):
    csv = copy / "quantification" / f"{SAMPLE}--unmicst_nuclei.csv"
    text = csv.read_text()
    csv.write_text(text[: text.index("\n") + 10])
    with pytest.raises(
        ReaderError,
        match=r"unmicst_nuclei.csv: 1 row\(s\) \(e.g. row 1\) have empty CellID, centroid or marker values",
    ):
        mcmicro(copy, raw=False)
    image = copy / "registration" / f"{SAMPLE}.ome.tif"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(ReaderError, match=re.escape(f"{SAMPLE}.ome.tif")):
        mcmicro(copy)


def test_tma_errors(tmp_path, tma_folder):
    copy = tmp_path / "t"
    shutil.copytree(tma_folder, copy)
    centroids = copy / "qc" / "coreograph" / "centroidsY-X.txt"
    centroids.write_text(centroids.read_text().splitlines()[0] + "\n")
    with pytest.raises(
        ReaderError, match=r"2.ome.tif: core 2 has no centre in qc/coreograph/centroidsY-X.txt"
    ):
        mcmicro(copy)
    centroids.write_text("a b c\n")
    with pytest.raises(ReaderError, match=r"centroidsY-X.txt: expected two numbers \('y x'\) per line"):
        mcmicro(copy)
    centroids.unlink()
    with pytest.raises(ReaderError, match=r"centroidsY-X.txt: TMA core centres not found"):
        mcmicro(copy)
    shutil.copy(tma_folder / "qc" / "coreograph" / "centroidsY-X.txt", centroids)
    shutil.rmtree(copy / "dearray")
    with pytest.raises(ReaderError, match="dearray: TMA core folder not found"):
        mcmicro(copy)


# ------------------------------------------------------------------------------------------------ reference
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    from spatialdata_io import mcmicro
    from spatialdata.transformations import get_transformation
    def matrix(e):
        return {cs: t.to_affine_matrix(("x", "y"), ("x", "y")).tolist() for cs, t in get_transformation(e, get_all=True).items()}
    def summary(s):
        return {
        "rasters": {k: [list(v.shape), matrix(v)] for k, v in [*s.images.items(), *s.labels.items()]},
        "channels": {k: v.coords["c"].values.tolist() for k, v in s.images.items()},
        "tables": {k: [list(t.shape), t.obs["CellID"].tolist(), t.obs["region"].astype(str).tolist(),
                       np.asarray(t.X).tolist(), np.asarray(t.obsm["spatial"]).tolist(), t.var_names.tolist()]
                   for k, t in s.tables.items()},
        }
    print(json.dumps([summary(mcmicro(p)) for p in sys.argv[1:]]))
    """
)


@pytest.fixture(scope="module")
def reference(folder, tma_folder):
    whole_slide, tma = run_reference(_REFERENCE_SCRIPT, folder, tma_folder)
    return {"whole_slide": whole_slide, "tma": tma}


@pytest.mark.parametrize("mode", ["whole_slide", "tma"])
def test_matches_reference_reader(mode, reference, sdata, tma):
    """Same element names, sizes, transformations, channel names and table rows as spatialdata-io's mcmicro
    reader (run in its own environment; skipped when absent). By design the TMA tables stay one per CSV here
    (the reference concatenates them into ``segmentation_table``)."""
    ours = sdata if mode == "whole_slide" else tma
    ref = reference[mode]
    assert set(ref["rasters"]) == set(ours.images) | set(ours.labels)
    for name, (shape, matrices) in ref["rasters"].items():
        assert list(_level0(ours[name]).shape) == shape, name
        for cs, m in matrices.items():
            np.testing.assert_allclose(affine_xy(ours[name], cs), np.asarray(m), err_msg=name)
    for name, channels in ref["channels"].items():
        if name.endswith("_image"):  # the reference leaves the map / raw channels unnamed (0..n-1)
            assert raster_levels(ours[name])[0].coords["c"].values.tolist() == channels
    if mode == "whole_slide":
        assert set(ref["tables"]) == set(ours.tables)
        for name, (shape, ids, regions, x, spatial, var) in ref["tables"].items():
            t = ours[name]
            assert list(t.shape) == shape and t.obs["CellID"].tolist() == ids
            assert t.obs["region"].astype(str).tolist() == regions and t.var_names.tolist() == var
            np.testing.assert_allclose(t.X, np.asarray(x))
            np.testing.assert_allclose(t.obsm["spatial"], np.asarray(spatial))
    else:
        ((shape, ids, regions, x, _, var),) = ref["tables"].values()
        rows = {(r, i): k for k, (r, i) in enumerate(zip(regions, ids, strict=True))}
        assert sum(t.n_obs for t in ours.tables.values()) == shape[0]
        for t in ours.tables.values():
            assert t.var_names.tolist() == var
            for k, (r, i) in enumerate(zip(t.obs["region"].astype(str), t.obs["CellID"], strict=True)):
                np.testing.assert_allclose(t.X[k], x[rows[(r, i)]])
