"""The 10x Visium HD reader (Space Ranger 3.x and 4.x layouts) against synthetic outs/ folders."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from PIL import Image

from io_helpers import affine_xy, apply, dense_counts
from tissuestack import read_zarr
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, visium_hd
from tissuestack.io._visium_hd import iter_visium_hd
from tissuestack.io.fake import write_visium_hd
from tissuestack.io.fake._visium_hd import SPOT_TO_CYTASSIST, SPOT_TO_MICROSCOPE

ID = "Visium_HD_Synthetic"
BINS = ("square_002um", "square_008um", "square_016um")


# ------------------------------------------------------------------------------------------------ brute force
def h5_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    """(barcodes, dense counts barcodes x features) straight from the HDF5 datasets."""
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        return [b.decode() for b in m["barcodes"][()]], dense_counts(m)


@pytest.fixture(scope="module")
def sr4(tmp_path_factory) -> Path:
    return write_visium_hd(tmp_path_factory.mktemp("hd") / "outs", version="4.0", seed=1)


@pytest.fixture(scope="module")
def sdata4(sr4):
    return visium_hd(sr4, load_nucleus_segmentations=True)


# ------------------------------------------------------------------------------------------------ round trips
def test_sr4_elements(sdata4):
    assert set(sdata4.tables) == {*BINS, "cell_segmentations", "nucleus_segmentations"}
    assert set(sdata4.shapes) == {f"{ID}_{b}" for b in BINS} | {
        f"{ID}_cell_segmentations",
        f"{ID}_nucleus_segmentations",
    }
    assert set(sdata4.images) == {f"{ID}_{k}_image" for k in ("hires", "lowres", "cytassist", "full")}
    assert set(sdata4.coordinate_systems) == {ID, f"{ID}_downscaled_hires", f"{ID}_downscaled_lowres"}


@pytest.mark.parametrize("key", BINS)
def test_bins_squares_tables_and_links(sr4, sdata4, key):
    bin_um = int(key[7:10])
    folder = sr4 / "binned_outputs" / key
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    positions = (
        pq.read_table(folder / "spatial" / "tissue_positions.parquet").to_pandas().set_index("barcode")
    )
    barcodes, dense = h5_matrix(folder / "filtered_feature_bc_matrix.h5")
    table, squares = sdata4[key], sdata4[f"{ID}_{key}"]
    assert table.obs_names.tolist() == barcodes
    np.testing.assert_array_equal(table.X.toarray(), dense)
    expected = positions.loc[barcodes]
    for column in ("in_tissue", "array_row", "array_col"):
        np.testing.assert_array_equal(table.obs[column].to_numpy(), expected[column].to_numpy())
    xy = expected[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    np.testing.assert_allclose(table.obsm["spatial"], xy)
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        f"{ID}_{key}",
        "region",
        "location_id",
    )
    np.testing.assert_array_equal(table.obs["location_id"].to_numpy(), np.arange(len(barcodes)))
    np.testing.assert_array_equal(squares.index.to_numpy(), table.obs["location_id"].to_numpy())
    # squares of side spot_diameter_fullres (= bin size / µm per px) centred on the bins, as a per-row box
    side = sf["spot_diameter_fullres"]
    assert side == bin_um / sf["microns_per_pixel"]
    expected_boxes = [shapely.box(x - side / 2, y - side / 2, x + side / 2, y + side / 2) for x, y in xy]
    assert all(shapely.equals(squares.geometry.to_numpy(), expected_boxes))
    np.testing.assert_allclose(squares.geometry.area.to_numpy(), side**2)


def test_bins_as_circles_and_selection(sr4):
    sdata = visium_hd(
        sr4, bin_size=(16, 2), bins_as_squares=False, load_segmentations=False, load_images=False
    )
    assert set(sdata.tables) == {"square_002um", "square_016um"}
    circles = sdata[f"{ID}_square_016um"]
    np.testing.assert_allclose(circles["radius"].to_numpy(), 16 / 0.5 / 2)
    np.testing.assert_allclose(
        np.column_stack([circles.geometry.x, circles.geometry.y]), sdata["square_016um"].obsm["spatial"]
    )
    only8 = visium_hd(sr4, bin_size=8, load_segmentations=False, load_images=False)
    assert set(only8) == {f"{ID}_square_008um", "square_008um"}
    raw = visium_hd(sr4, bin_size=2, filtered_counts_file=False, load_segmentations=False, load_images=False)
    assert raw["square_002um"].n_obs == 16 * 16 and set(raw["square_002um"].obs["in_tissue"]) == {0, 1}
    with pytest.raises(ReaderError, match=r"bin size\(s\) 4 µm.*square_002um, square_008um, square_016um"):
        visium_hd(sr4, bin_size=[4, 8])


def test_cell_segmentation(sr4, sdata4):
    seg = sr4 / "segmented_outputs"
    barcodes, dense = h5_matrix(seg / "filtered_feature_cell_matrix.h5")
    features = json.loads((seg / "cell_segmentations.geojson").read_text())["features"]
    by_barcode = {
        f"cellid_{f['properties']['cell_id']:09d}-1": f["geometry"]["coordinates"][0] for f in features
    }
    table, cells = sdata4["cell_segmentations"], sdata4[f"{ID}_cell_segmentations"]
    # the 5th polygon has no counts: only the 4 matrix cells are kept, in matrix order
    assert table.obs_names.tolist() == barcodes == cells.index.tolist()
    assert table.obs["cell_id"].tolist() == barcodes
    np.testing.assert_array_equal(table.X.toarray(), dense)
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["instance_key"]) == (f"{ID}_cell_segmentations", "cell_id")
    for barcode, geometry in zip(cells.index, cells.geometry, strict=True):
        np.testing.assert_allclose(np.asarray(geometry.exterior.coords), by_barcode[barcode])
    # the cell counts are the sums of the 2 µm bins inside each cell (how the fixture was built)
    mappings = pq.read_table(sr4 / "barcode_mappings.parquet").to_pandas()
    _, raw2 = h5_matrix(sr4 / "binned_outputs/square_002um/raw_feature_bc_matrix.h5")
    for i, barcode in enumerate(barcodes):
        np.testing.assert_array_equal(dense[i], raw2[(mappings["cell_id"] == barcode).to_numpy()].sum(axis=0))


def test_nucleus_segmentation_sums_2um_bins_under_nuclei(sr4, sdata4):
    mappings = pq.read_table(sr4 / "barcode_mappings.parquet").to_pylist()
    barcodes2, dense2 = h5_matrix(sr4 / "binned_outputs/square_002um/filtered_feature_bc_matrix.h5")
    row_of = {b: i for i, b in enumerate(barcodes2)}
    expected: dict[str, np.ndarray] = {}
    for m in mappings:  # one Python pass: the obvious implementation
        if m["cell_id"] is not None and m["in_nucleus"] and m["square_002um"] in row_of:
            expected.setdefault(m["cell_id"], np.zeros(dense2.shape[1]))
            expected[m["cell_id"]] += dense2[row_of[m["square_002um"]]]
    nuclei = json.loads((sr4 / "segmented_outputs/nucleus_segmentations.geojson").read_text())["features"]
    with_polygon = {f"cellid_{f['properties']['cell_id']:09d}-1" for f in nuclei}
    table, shapes = sdata4["nucleus_segmentations"], sdata4[f"{ID}_nucleus_segmentations"]
    assert set(table.obs_names) == set(expected) & with_polygon
    assert "cellid_000000004-1" not in table.obs_names  # the cell without nucleus
    for barcode in table.obs_names:
        np.testing.assert_array_equal(table[barcode].X.toarray()[0], expected[barcode])
    assert shapes.index.tolist() == table.obs_names.tolist()
    assert table.uns["spatialdata_attrs"]["region"] == f"{ID}_nucleus_segmentations"


def test_images_and_transforms(sr4, sdata4):
    sf = json.loads((sr4 / "spatial" / "scalefactors_json.json").read_text())
    h, low = sf["tissue_hires_scalef"], sf["tissue_lowres_scalef"]
    hires, lowres = sdata4[f"{ID}_hires_image"], sdata4[f"{ID}_lowres_image"]
    np.testing.assert_array_equal(
        hires.transpose("y", "x", "c").values, np.asarray(Image.open(sr4 / "spatial/tissue_hires_image.png"))
    )
    bins = sdata4[f"{ID}_square_008um"]
    centres = sdata4["square_008um"].obsm["spatial"]
    in_hires = apply(affine_xy(bins, f"{ID}_downscaled_hires"), centres)
    in_lowres = apply(affine_xy(bins, f"{ID}_downscaled_lowres"), centres)
    np.testing.assert_allclose(in_hires, centres * h)
    np.testing.assert_allclose(in_lowres, centres * low)
    np.testing.assert_allclose(apply(affine_xy(hires, ID), in_hires), centres)
    np.testing.assert_allclose(apply(affine_xy(lowres, ID), in_lowres), centres)
    full = sdata4[f"{ID}_full_image"]
    import tifffile

    expected = tifffile.imread(next((sr4 / "microscope_image").iterdir()))
    np.testing.assert_array_equal(raster_levels(full)[0].transpose("y", "x", "c").values, expected)
    np.testing.assert_allclose(affine_xy(full, ID), np.eye(3))


def test_cytassist_affine_registration(sr4, sdata4):
    cyt = sdata4[f"{ID}_cytassist_image"]
    np.testing.assert_array_equal(
        cyt.transpose("y", "x", "c").values, np.asarray(Image.open(sr4 / "spatial/cytassist_image.tiff"))
    )
    # a 2 µm spot seen in the CytAssist image lands where the microscope transform puts it
    spots = np.array([[0.0, 0.0], [3.0, 7.0], [15.0, 2.0]])
    homogeneous = np.column_stack([spots, np.ones(len(spots))])
    in_cytassist = (homogeneous @ SPOT_TO_CYTASSIST["affine"].T)[:, :2]
    in_microscope = (homogeneous @ SPOT_TO_MICROSCOPE.T)[:, :2]
    np.testing.assert_allclose(apply(affine_xy(cyt, ID), in_cytassist), in_microscope, atol=1e-9)


def test_sr3_layout_projective_cytassist(tmp_path):
    path = write_visium_hd(
        tmp_path / "outs",
        version="3.0",
        cytassist="projective",
        fullres_image="tif",
        fullres_in_folder=False,
        prefixed=False,
    )
    assert not (path / "segmented_outputs").exists() and not (path / "spatial").exists()
    sdata = visium_hd(path)  # images and scale factors found in the bin folders; id from the sample_id
    assert set(sdata.tables) == set(BINS)
    assert set(sdata.images) == {f"{ID}_{k}_image" for k in ("hires", "lowres", "cytassist", "full")}
    cyt = sdata[f"{ID}_cytassist_image"]
    original = np.asarray(
        Image.open(path / "binned_outputs/square_002um/spatial/cytassist_image.tiff")
    ).astype(int)
    # resampled by the projective part, placed by the affine part: every warped pixel shows the original
    # pixel that the full transform sends to the same microscope point
    projective = SPOT_TO_MICROSCOPE @ np.linalg.inv(SPOT_TO_CYTASSIST["projective"])
    projective /= projective[2, 2]
    warped = cyt.transpose("y", "x", "c").values
    assert warped.shape[:2] == (63, 67)  # as the reference reader's warp
    to_microscope = affine_xy(cyt, ID)
    checked = 0
    for y in range(5, warped.shape[0] - 5, 7):
        for x in range(5, warped.shape[1] - 5, 7):
            mx, my = apply(to_microscope, np.array([x, y], float))[0]
            sx, sy, sw = np.linalg.solve(projective, [mx, my, 1.0])
            ox, oy = sx / sw, sy / sw
            if 0 <= ox <= original.shape[1] - 1 and 0 <= oy <= original.shape[0] - 1:
                ix, iy = int(np.floor(ox)), int(np.floor(oy))  # bilinear: between the 4 neighbours
                patch = original[iy : iy + 2, ix : ix + 2].reshape(-1, 3)
                assert np.all(warped[y, x] >= patch.min(axis=0) - 1) and np.all(
                    warped[y, x] <= patch.max(axis=0) + 1
                )
                checked += 1
    assert checked > 20
    # the row blocks of the resampling do not change the result
    from tissuestack.io._visium_hd import _warp_projective

    affine = projective.copy()
    affine[2] = [0, 0, 1]
    shift = np.linalg.solve(affine, projective)
    one_block = _warp_projective(original.astype(np.uint8), shift, block_rows=10_000)
    np.testing.assert_array_equal(one_block, warped)
    np.testing.assert_array_equal(_warp_projective(original.astype(np.uint8), shift, block_rows=7), one_block)
    assert not np.allclose(to_microscope[2, :2], 1)  # an affine placement remains


def test_stream_order_registry_and_flags(sr4):
    names = [name for name, _ in iter_visium_hd(sr4, load_images=False)]
    for key in BINS:
        assert names.index(f"{ID}_{key}") < names.index(key)
    assert names.index(f"{ID}_cell_segmentations") < names.index("cell_segmentations")
    technology = get_technology("visium_hd")
    assert {o.name for o in technology.options} >= {"bin_size", "bins_as_squares", "load_segmentations"}
    only_cells = technology.read(sr4, load_bins=False, load_images=False)
    assert set(only_cells) == {f"{ID}_cell_segmentations", "cell_segmentations"}
    no_cyt = visium_hd(sr4, load_cytassist_image=False, load_segmentations=False, bin_size=16)
    assert f"{ID}_cytassist_image" not in no_cyt and f"{ID}_hires_image" in no_cyt
    assert "x" in visium_hd(sr4, dataset_id="x", bin_size=16, load_images=False).coordinate_systems


def test_write_and_read_zarr(sdata4, tmp_path):
    sdata4.write(tmp_path / "hd.zarr")
    back = read_zarr(tmp_path / "hd.zarr")
    assert set(back) == set(sdata4)
    for key in (*BINS, "cell_segmentations", "nucleus_segmentations"):
        np.testing.assert_array_equal(back[key].X.toarray(), sdata4[key].X.toarray())
        assert back[key].uns["spatialdata_attrs"] == sdata4[key].uns["spatialdata_attrs"]
    squares = f"{ID}_square_008um"
    assert all(shapely.equals(back[squares].geometry.to_numpy(), sdata4[squares].geometry.to_numpy()))
    assert (
        back[f"{ID}_cell_segmentations"].index.tolist() == sdata4[f"{ID}_cell_segmentations"].index.tolist()
    )
    np.testing.assert_allclose(
        affine_xy(back[f"{ID}_cytassist_image"], ID), affine_xy(sdata4[f"{ID}_cytassist_image"], ID)
    )


def test_geojson_fast_path_and_exact_path_agree(sr4, tmp_path):
    from tissuestack.io._visium_hd import _read_geojson_polygons, _read_geojson_polygons_json

    file = sr4 / "segmented_outputs" / "cell_segmentations.geojson"
    ids, polygons = _read_geojson_polygons(file)
    ids_json, polygons_json = _read_geojson_polygons_json(file, file.read_bytes())
    np.testing.assert_array_equal(ids, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ids, ids_json)
    assert all(shapely.equals(polygons, polygons_json))
    # ids that the byte scan cannot pair with the geometries (a nested cell_id) and a MultiPolygon: exact path
    data = json.loads(file.read_text())
    data["features"][0]["properties"]["parent"] = {"cell_id": 99}
    data["features"][1]["geometry"] = {
        "type": "MultiPolygon",
        "coordinates": [data["features"][1]["geometry"]["coordinates"], [[[0, 0], [1, 0], [1, 1], [0, 0]]]],
    }
    odd = tmp_path / "odd.geojson"
    odd.write_text(json.dumps(data))
    ids_odd, polygons_odd = _read_geojson_polygons(odd)
    np.testing.assert_array_equal(ids_odd, [1, 2, 3, 4, 5])
    assert polygons_odd[1].geom_type == "MultiPolygon" and shapely.equals(polygons_odd[0], polygons[0])


def test_cells_without_polygon_are_dropped_with_a_warning(tmp_path):
    path = write_visium_hd(tmp_path / "outs", cytassist=None, fullres_image=None, raw=False)
    file = path / "segmented_outputs" / "cell_segmentations.geojson"
    data = json.loads(file.read_text())
    data["features"] = [f for f in data["features"] if f["properties"]["cell_id"] != 2]
    file.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="1 of the 4 cells of the cell_segmentations table have no polygon"):
        sdata = visium_hd(path, load_bins=False, load_images=False)
    assert sdata["cell_segmentations"].obs_names.tolist() == [f"cellid_{i:09d}-1" for i in (1, 3, 4)]
    assert sdata[f"{ID}_cell_segmentations"].index.tolist() == sdata["cell_segmentations"].obs_names.tolist()


def test_feature_slice_names_and_absence(tmp_path):
    path = write_visium_hd(tmp_path / "outs", fullres_image=None, raw=False, bin_sizes=(16,))
    (path / f"{ID}_feature_slice.h5").rename(path / "hd_feature_slice.h5")  # the SR 3.0 docs' name
    assert f"{ID}_square_016um" in visium_hd(path, load_segmentations=False)  # id from metadata sample_id
    (path / "hd_feature_slice.h5").unlink()
    with pytest.raises(ReaderError, match="pass dataset_id"):
        visium_hd(path)
    with pytest.warns(UserWarning, match="skipping cytassist_image.tiff"):
        sdata = visium_hd(path, dataset_id="s1", load_segmentations=False)
    assert set(sdata.images) == {"s1_hires_image", "s1_lowres_image"}


def test_several_microscope_images(tmp_path):
    path = write_visium_hd(tmp_path / "outs", cytassist=None, raw=False, bin_sizes=(16,), segmentation=False)
    folder = path / "microscope_image"
    (folder / "b_extra.tif").write_bytes((folder / f"{ID}_tissue_image.btf").read_bytes())
    with pytest.warns(UserWarning, match="several images"):
        sdata = visium_hd(path)
    assert f"{ID}_full_image" in sdata
    chosen = visium_hd(path, fullres_image_file=folder / "b_extra.tif")
    np.testing.assert_array_equal(
        raster_levels(chosen[f"{ID}_full_image"])[0].values,
        raster_levels(sdata[f"{ID}_full_image"])[0].values,
    )


# ------------------------------------------------------------------------------------------------ malformed input
def _rewrite_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _break(path: Path, how: str) -> None:
    b8 = path / "binned_outputs" / "square_008um"
    positions = b8 / "spatial" / "tissue_positions.parquet"
    if how == "layout-version":
        file = path / f"{ID}_feature_slice.h5"
        with h5py.File(file, "a") as f:
            meta = json.loads(f.attrs["metadata_json"])
            meta["hd_layout_json"] = json.dumps(
                {"file_format": "2.0", "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
            )
            f.attrs["metadata_json"] = json.dumps(meta)
    elif how == "truncated-slice":
        file = path / f"{ID}_feature_slice.h5"
        file.write_bytes(file.read_bytes()[:1000])
    elif how == "truncated-parquet":
        positions.write_bytes(positions.read_bytes()[:-300])
    elif how == "wrong-columns":
        table = pq.read_table(positions).rename_columns(
            ["barcode", "in_tissue", "array_row", "array_col", "y", "pxl_col_in_fullres"]
        )
        pq.write_table(table, positions)
    elif how == "text-columns":
        table = pq.read_table(positions)
        table = table.set_column(
            5, "pxl_col_in_fullres", pa.array([str(v) for v in table.column(5).to_pylist()])
        )
        pq.write_table(table, positions)
    elif how == "bin-size-mismatch":
        _rewrite_json(b8 / "spatial" / "scalefactors_json.json", bin_size_um=16.0)
    elif how == "mpp-mismatch":
        _rewrite_json(b8 / "spatial" / "scalefactors_json.json", microns_per_pixel=0.3)
    elif how == "truncated-h5":
        file = b8 / "filtered_feature_bc_matrix.h5"
        file.write_bytes(file.read_bytes()[:3000])
    elif how == "missing-bin-barcodes":
        table = pq.read_table(positions)
        pq.write_table(table.slice(1), positions)
    elif how == "partial-segmentation":
        (path / "segmented_outputs" / "cell_segmentations.geojson").unlink()
    elif how == "bad-geojson":
        (path / "segmented_outputs" / "cell_segmentations.geojson").write_text(
            '{"type": "FeatureCollection"}'
        )
    elif how == "no-bins":
        import shutil

        shutil.rmtree(path / "binned_outputs")


@pytest.mark.parametrize(
    ("how", "file", "expected"),
    [
        ("layout-version", "feature_slice.h5", "unknown Visium HD layout file_format '2.0'"),
        ("truncated-slice", "feature_slice.h5", "truncated"),
        ("truncated-parquet", "tissue_positions.parquet", "truncated"),
        ("wrong-columns", "tissue_positions.parquet", "pxl_row_in_fullres"),
        ("text-columns", "tissue_positions.parquet", "expected numbers"),
        ("bin-size-mismatch", "square_008um", "expected 8"),
        ("mpp-mismatch", "scalefactors_json.json", "microns_per_pixel"),
        ("truncated-h5", "filtered_feature_bc_matrix.h5", "HDF5"),
        ("missing-bin-barcodes", "tissue_positions.parquet", "have no position"),
        ("partial-segmentation", "segmented_outputs", "cell_segmentations.geojson"),
        ("bad-geojson", "cell_segmentations.geojson", "FeatureCollection"),
        ("no-bins", "outs", "binned_outputs"),
    ],
)
def test_malformed_input_names_file_and_expectation(tmp_path, how, file, expected):
    path = write_visium_hd(tmp_path / "outs", cytassist=None, fullres_image=None, raw=False)
    _break(path, how)
    with pytest.raises(ReaderError) as info:
        visium_hd(path)
    message = str(info.value)
    assert file in message and expected in message, message


def test_nucleus_request_without_files(tmp_path):
    path = write_visium_hd(tmp_path / "outs", version="3.0", cytassist=None, fullres_image=None, raw=False)
    assert "cell_segmentations" not in visium_hd(path)  # SR 3: nothing to segment, no error
    with pytest.raises(ReaderError, match=r"nucleus segmentations need .*nucleus_segmentations\.geojson"):
        visium_hd(path, load_nucleus_segmentations=True)
