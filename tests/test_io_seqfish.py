"""The seqFISH reader against synthetic Spatial Genomics folders (one and two ROIs, optional columns, anisotropic
pixels)."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile

from io_helpers import affine_xy, apply, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, seqfish
from tissuestack.io._seqfish import iter_seqfish
from tissuestack.io.fake import write_seqfish
from tissuestack.io.fake._seqfish import GENES


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_seqfish(tmp_path_factory.mktemp("seqfish"), rois=("Roi1", "Roi2"), seed=5)


@pytest.fixture(scope="module")
def sdata(folder):
    return seqfish(folder, cells_as_circles=True)


def _level0(element) -> np.ndarray:
    return np.asarray(raster_levels(element)[0].values)


def test_elements_names_and_links(sdata):
    for roi in ("Roi1", "Roi2"):
        for name in (f"{roi}_DAPI", f"{roi}_Segmentation", f"{roi}_TranscriptList", f"{roi}_Boundaries"):
            assert name in sdata, name
        table = sdata[f"table_{roi}"]
        attrs = table.uns["spatialdata_attrs"]
        assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
            f"{roi}_Segmentation",
            "region",
            "instance_id",
        )
        assert table.var_names.tolist() == list(GENES)
        assert table.obs["instance_id"].dtype == np.int64
        assert sdata[f"{roi}_Boundaries"].index.tolist() == table.obs["instance_id"].tolist()
        assert sdata[f"{roi}_CellCoordinates"].index.tolist() == table.obs["instance_id"].tolist()
    assert sorted(sdata.coordinate_systems) == ["Roi1", "Roi2"]


def test_everything_lines_up_in_microns(folder, sdata):
    """Each cell's label pixels, polygon, circle and table centre coincide in the ROI's µm coordinate system, and
    the counts equal the transcripts under the labels."""
    roi = "Roi1"
    labels = _level0(sdata[f"{roi}_Segmentation"])
    to_um = affine_xy(sdata[f"{roi}_Segmentation"], roi)
    np.testing.assert_allclose(to_um, np.diag([0.3, 0.3, 1.0]))
    np.testing.assert_allclose(affine_xy(sdata[f"{roi}_DAPI"], roi), to_um)
    table = sdata[f"table_{roi}"]
    polygons = sdata[f"{roi}_Boundaries"]
    circles = sdata[f"{roi}_CellCoordinates"]
    poly_um = affine_xy(polygons, roi)
    for k, cell in enumerate(table.obs["instance_id"]):
        rr, cc = np.nonzero(labels == cell)
        centre = apply(to_um, np.column_stack([cc + 0.5, rr + 0.5])).mean(axis=0)
        np.testing.assert_allclose(table.obsm["spatial"][k], centre)
        np.testing.assert_allclose(circles.geometry.iloc[k].coords[0], centre)
        np.testing.assert_allclose(circles["radius"].iloc[k], np.sqrt(len(rr) * 0.09 / np.pi))
        ring = apply(poly_um, np.asarray(polygons.geometry.loc[cell].exterior.coords))
        assert shapely.Polygon(ring).contains(shapely.Point(centre))
        np.testing.assert_allclose(shapely.Polygon(ring).area, len(rr) * 0.09)
    points = sdata[f"{roi}_TranscriptList"]
    np.testing.assert_array_equal(affine_xy(points, roi), np.eye(3))
    tx = points.compute()
    px = np.floor(tx[["x", "y"]].to_numpy() / 0.3).astype(int)
    np.testing.assert_array_equal(labels[px[:, 1], px[:, 0]], tx["cell"].to_numpy())
    inside = tx[tx["cell"] > 0]
    expected = pd.crosstab(inside["cell"], inside["name"].astype(str)).reindex(
        index=table.obs["instance_id"], columns=list(GENES), fill_value=0
    )
    np.testing.assert_array_equal(table.X.toarray(), expected.to_numpy())
    assert "z" in tx.columns and tx["name"].dtype == "category"


def test_anisotropic_pixels_keep_y_and_x_apart(tmp_path):
    folder = write_seqfish(tmp_path / "a", pixel_size=(0.25, 0.4), seed=1)
    s = seqfish(folder)
    np.testing.assert_allclose(affine_xy(s["Roi1_Segmentation"], "Roi1"), np.diag([0.4, 0.25, 1.0]))
    labels = _level0(s["Roi1_Segmentation"])
    tx = s["Roi1_TranscriptList"].compute()
    col, row = (tx["x"] / 0.4).astype(int), (tx["y"] / 0.25).astype(int)
    np.testing.assert_array_equal(labels[row, col], tx["cell"].to_numpy())


def test_optional_columns_rois_and_pixel_size(tmp_path, folder):
    bare = write_seqfish(tmp_path / "b", z=False, cell_column=False, seed=2)
    s = seqfish(bare, load_images=False, load_shapes=False)
    points = s["Roi1_TranscriptList"]
    assert "z" not in points.columns and "cell" not in points.columns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the table annotates an element that is read
        s = seqfish(folder, load_labels=False)
    assert s["table_Roi1"].uns["spatialdata_attrs"]["region"] == "Roi1_Boundaries"
    s = seqfish(folder, load_labels=False, load_shapes=False, cells_as_circles=True)
    assert s["table_Roi1"].uns["spatialdata_attrs"]["region"] == "Roi1_CellCoordinates"
    s = seqfish(folder, rois=["Roi2"], pixel_size=0.5)
    assert set(s.tables) == {"table_Roi2"}
    np.testing.assert_allclose(affine_xy(s["Roi2_DAPI"], "Roi2"), np.diag([0.5, 0.5, 1.0]))
    with pytest.raises(
        ReaderError, match=re.escape("ROI(s) ['Roi3'] not found; the folder has the ROIs ['Roi1', 'Roi2']")
    ):
        seqfish(folder, rois=["Roi3"])
    with pytest.raises(ReaderError, match="pixel_size must be a positive number"):
        seqfish(folder, pixel_size=-1.0)


def test_write_order_and_registry(folder):
    tech = get_technology("seqfish")
    assert tech.iter_elements is iter_seqfish
    names = [name for name, _ in tech.iter_elements(folder, rois=("Roi1",))]
    assert names == ["Roi1_DAPI", "Roi1_Segmentation", "Roi1_TranscriptList", "Roi1_Boundaries", "table_Roi1"]


def test_cli_convert_and_read_back(tmp_path, folder, sdata):
    out = tmp_path / "seqfish.zarr"
    assert main(["convert", "seqfish", str(folder), str(out), "--cells-as-circles", "--no-progress"]) == 0
    back = read_zarr(out)
    assert set(back.shapes) == set(sdata.shapes) and set(back.points) == set(sdata.points)
    for roi in ("Roi1", "Roi2"):
        t0, t1 = sdata[f"table_{roi}"], back[f"table_{roi}"]
        np.testing.assert_array_equal(t1.X.toarray(), t0.X.toarray())
        assert t1.obs["instance_id"].tolist() == t0.obs["instance_id"].tolist()
        np.testing.assert_allclose(
            affine_xy(back[f"{roi}_Boundaries"], roi), affine_xy(sdata[f"{roi}_Boundaries"], roi)
        )
        p0 = sdata[f"{roi}_TranscriptList"].compute().sort_values(["x", "y"])
        p1 = back[f"{roi}_TranscriptList"].compute().sort_values(["x", "y"])
        np.testing.assert_allclose(p1[["x", "y", "z"]].to_numpy(), p0[["x", "y", "z"]].to_numpy())
        assert p1["name"].astype(str).tolist() == p0["name"].astype(str).tolist()


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, folder) -> Path:
    path = tmp_path / "seqfish"
    shutil.copytree(folder, path)
    return path


def test_missing_files(copy):
    with pytest.raises(ReaderError, match="not a directory; expected a seqFISH output folder"):
        seqfish(copy / "nothing")
    (copy / "Roi2_Boundaries.geojson").unlink()
    with pytest.raises(ReaderError, match=re.escape("Roi2_Boundaries.geojson: cell boundaries not found")):
        seqfish(copy)
    assert "table_Roi2" in seqfish(copy, load_shapes=False)
    (copy / "Roi1_DAPI.tiff").unlink()
    with pytest.raises(
        ReaderError, match=re.escape("Roi1_DAPI.tiff: DAPI image not found (it gives the pixel size)")
    ):
        seqfish(copy, load_shapes=False)
    assert "Roi1_Segmentation" in seqfish(copy, load_shapes=False, load_images=False, pixel_size=0.3)
    for f in copy.glob("*_CellCoordinates.csv"):
        f.unlink()
    with pytest.raises(ReaderError, match=re.escape("no <roi>_CellCoordinates.csv file")):
        seqfish(copy)


def test_wrong_columns_and_cells(copy):
    cells = pd.read_csv(copy / "Roi1_CellCoordinates.csv")
    cells.drop(columns=["center_x"]).to_csv(copy / "Roi1_CellCoordinates.csv", index=False)
    with pytest.raises(ReaderError, match=re.escape("Roi1_CellCoordinates.csv: no column(s) ['center_x']")):
        seqfish(copy)
    cells.iloc[:-1].to_csv(copy / "Roi1_CellCoordinates.csv", index=False)
    with pytest.raises(
        ReaderError, match=r"Roi1_CellCoordinates.csv: the cells differ from those of Roi1_CellxGene"
    ):
        seqfish(copy)
    cells.iloc[::-1].to_csv(copy / "Roi1_CellCoordinates.csv", index=False)  # another order is fine: by label
    table = seqfish(copy, rois=["Roi1"])["table_Roi1"]
    np.testing.assert_allclose(table.obsm["spatial"], cells[["center_x", "center_y"]].to_numpy())
    tx = pd.read_csv(copy / "Roi1_TranscriptList.csv")
    tx.rename(columns={"name": "gene"}).to_csv(copy / "Roi1_TranscriptList.csv", index=False)
    with pytest.raises(
        ReaderError, match=re.escape("Roi1_TranscriptList.csv: the transcripts lack the column(s) ['name']")
    ):
        seqfish(copy)
    doc = json.loads((copy / "Roi2_Boundaries.geojson").read_text())
    doc["features"] = doc["features"][:-1]
    (copy / "Roi2_Boundaries.geojson").write_text(json.dumps(doc))
    with pytest.raises(
        ReaderError, match=re.escape("Roi2_Boundaries.geojson: 2 polygons but the cell table has 3")
    ):
        seqfish(copy, rois=["Roi2"])


def test_truncated_and_unscaled_files(copy):
    data = (copy / "Roi1_TranscriptList.csv").read_bytes()
    (copy / "Roi1_TranscriptList.csv").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ReaderError, match=re.escape("Roi1_TranscriptList.csv: the transcript list ends in the middle")
    ):
        seqfish(copy)
    data = (copy / "Roi2_Boundaries.geojson").read_bytes()
    (copy / "Roi2_Boundaries.geojson").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ReaderError, match=re.escape("Roi2_Boundaries.geojson: not a readable GeoJSON document")
    ):
        seqfish(copy, rois=["Roi2"])
    data = (copy / "Roi2_CellxGene.csv").read_bytes()
    (copy / "Roi2_CellxGene.csv").write_bytes(data[:-3])
    with pytest.raises(
        ReaderError, match=re.escape("Roi2_CellxGene.csv: the cell by gene counts ends in the middle")
    ):
        seqfish(copy, rois=["Roi2"])
    tifffile.imwrite(copy / "Roi1_DAPI.tiff", np.zeros((1, 40, 40), np.uint16))  # no OME pixel size
    with pytest.raises(ReaderError, match=re.escape("Roi1_DAPI.tiff: no physical pixel size")):
        seqfish(copy, rois=["Roi1"], load_points=False)


# ------------------------------------------------------------------------------------------------ reference
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    from spatialdata_io import seqfish
    from spatialdata.transformations import get_transformation
    s = seqfish(sys.argv[1], cells_as_circles=True)
    out = {"shapes": {}, "points": {}, "tables": {}, "rasters": {}}
    for k, v in list(s.images.items()) + list(s.labels.items()):
        out["rasters"][k] = [list(v.shape), get_transformation(v, k.split("_")[0]).to_affine_matrix(("x", "y"), ("x", "y")).tolist()]
    for k, v in s.shapes.items():
        out["shapes"][k] = [v.index.tolist(), v.geometry.to_wkt().tolist()]
    for k, v in s.points.items():
        df = v.compute()
        out["points"][k] = [len(df), df["name"].astype(str).tolist(), df["x"].tolist()]
    for k, t in s.tables.items():
        out["tables"][k] = [t.X.toarray().tolist() if hasattr(t.X, "toarray") else np.asarray(t.X).tolist(),
                            t.var_names.tolist(), t.obs["instance_id"].tolist(), dict(t.uns["spatialdata_attrs"]),
                            np.asarray(t.obsm["spatial"]).tolist()]
    print(json.dumps(out))
    """
)


def test_matches_reference_reader(folder, sdata):
    """Same elements, sizes, ids, counts, transforms and geometry as spatialdata-io's seqFISH reader (square
    pixels; skipped when the reference environment is absent)."""
    ref = run_reference(_REFERENCE_SCRIPT, folder)
    for name, (shape, tf) in ref["rasters"].items():
        assert list(sdata[name].shape) == shape
        np.testing.assert_allclose(affine_xy(sdata[name], name.split("_")[0]), np.asarray(tf))
    for name, (index, wkt) in ref["shapes"].items():
        assert sdata[name].index.tolist() == index
        assert shapely.equals(sdata[name].geometry.to_numpy(), shapely.from_wkt(wkt)).all()
    for name, (n, names, x) in ref["points"].items():
        got = sdata[name].compute()
        assert len(got) == n and got["name"].astype(str).tolist() == names
        np.testing.assert_allclose(got["x"].to_numpy(), x)
    for name, (x, var, ids, attrs, spatial) in ref["tables"].items():
        table = sdata[name]
        np.testing.assert_array_equal(table.X.toarray(), np.asarray(x))
        assert table.var_names.tolist() == var and table.obs["instance_id"].tolist() == ids
        mine = table.uns["spatialdata_attrs"]
        assert (mine["region"], mine["region_key"], mine["instance_key"]) == (
            attrs["region"],
            attrs["region_key"],
            attrs["instance_key"],
        )
        np.testing.assert_allclose(table.obsm["spatial"], np.asarray(spatial))
