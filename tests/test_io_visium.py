"""The 10x Visium reader (Space Ranger 1.x and >= 2 layouts) against synthetic outs/ folders."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from io_helpers import affine_xy, apply, dense_counts, needs_reference, run_reference
from tissuestack import read_zarr
from tissuestack.elements import get_transformation, raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, visium
from tissuestack.io._visium import iter_visium
from tissuestack.io.fake import write_visium

ID = "V1_Synthetic"


# ------------------------------------------------------------------------------------------------ brute force
def h5_matrix(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(barcodes, gene symbols, dense counts barcodes x genes) straight from the HDF5 datasets."""
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        dense = dense_counts(m)
        return [b.decode() for b in m["barcodes"][()]], [s.decode() for s in m["features"]["name"][()]], dense


def positions(path: Path) -> dict[str, tuple[int, int, int, float, float]]:
    """barcode -> (in_tissue, array_row, array_col, pxl_row, pxl_col) from whichever positions CSV exists."""
    files = [path / "spatial" / n for n in ("tissue_positions_list.csv", "tissue_positions.csv")]
    file = next(f for f in files if f.exists())
    with open(file) as fh:
        rows = list(csv.reader(fh))
    if rows[0][1] == "in_tissue":
        rows = rows[1:]
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5])) for r in rows}


def scalefactors(path: Path) -> dict:
    return json.loads((path / "spatial" / "scalefactors_json.json").read_text())


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize(
    ("version", "header"),
    [("1.0", None), ("1.3", True), ("2.0", None), ("3.1", None)],
    ids=["sr1-no-header", "sr1-header-quirk", "sr2", "sr3-float-pixels"],
)
def test_layouts_round_trip(tmp_path, version, header):
    path = write_visium(tmp_path / "outs", version=version, positions_header=header, seed=3)
    positions_file = "tissue_positions_list.csv" if version < "2" else "tissue_positions.csv"
    assert (path / "spatial" / positions_file).exists()
    sdata = visium(path)
    assert set(sdata.shapes) == {ID}
    assert set(sdata.tables) == {"table"}
    assert set(sdata.images) == {f"{ID}_hires_image", f"{ID}_lowres_image"}

    barcodes, genes, dense = h5_matrix(path / f"{ID}_filtered_feature_bc_matrix.h5")
    pos = positions(path)
    sf = scalefactors(path)
    table = sdata["table"]
    circles = sdata[ID]
    # table: rows = matrix barcodes in file order, counts equal, positions joined by barcode
    assert table.obs_names.tolist() == barcodes
    np.testing.assert_array_equal(table.X.toarray(), dense)
    assert table.var_names.is_unique and len(set(genes)) < len(genes)  # duplicated symbol made unique
    expected = np.array([pos[b] for b in barcodes])
    np.testing.assert_array_equal(
        table.obs[["in_tissue", "array_row", "array_col"]].to_numpy(), expected[:, :3]
    )
    assert (table.obs["in_tissue"] == 1).all()  # the filtered matrix holds the in-tissue spots
    np.testing.assert_allclose(table.obsm["spatial"], expected[:, [4, 3]])
    # link: region / instance key / ids equal the circles' index
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (ID, "region", "spot_id")
    assert table.obs["region"].astype(str).eq(ID).all()
    np.testing.assert_array_equal(table.obs["spot_id"].to_numpy(), np.arange(len(barcodes)))
    np.testing.assert_array_equal(circles.index.to_numpy(), table.obs["spot_id"].to_numpy())
    # circles: centres (x = pxl_col, y = pxl_row), radius = spot diameter / 2
    np.testing.assert_allclose(np.column_stack([circles.geometry.x, circles.geometry.y]), expected[:, [4, 3]])
    np.testing.assert_allclose(circles["radius"].to_numpy(), sf["spot_diameter_fullres"] / 2)
    # metadata carried over from the HDF5 root attributes
    meta = table.uns["spatial"][ID]["metadata"]
    assert meta["software_version"] == f"spaceranger-{version}.0"
    assert table.uns["spatial"][ID]["scalefactors"]["tissue_hires_scalef"] == sf["tissue_hires_scalef"]


def test_images_and_coordinate_systems(tmp_path):
    path = write_visium(tmp_path / "outs")
    sdata = visium(path)
    sf = scalefactors(path)
    h, low = sf["tissue_hires_scalef"], sf["tissue_lowres_scalef"]
    circles = sdata[ID]
    hires, lowres = sdata[f"{ID}_hires_image"], sdata[f"{ID}_lowres_image"]
    # pixel values are those of the PNGs, as (c, y, x)
    np.testing.assert_array_equal(
        hires.transpose("y", "x", "c").values, png(path / "spatial/tissue_hires_image.png")
    )
    np.testing.assert_array_equal(
        lowres.transpose("y", "x", "c").values, png(path / "spatial/tissue_lowres_image.png")
    )
    assert set(sdata.coordinate_systems) == {ID, f"{ID}_downscaled_hires", f"{ID}_downscaled_lowres"}
    centres = np.column_stack([circles.geometry.x, circles.geometry.y])
    # spots: identity to full-res, scaled into the hires / lowres pixel frames
    np.testing.assert_allclose(apply(affine_xy(circles, ID), centres), centres)
    in_hires = apply(affine_xy(circles, f"{ID}_downscaled_hires"), centres)
    in_lowres = apply(affine_xy(circles, f"{ID}_downscaled_lowres"), centres)
    np.testing.assert_allclose(in_hires, centres * h)
    np.testing.assert_allclose(in_lowres, centres * low)
    # the same spot centre, read in hires pixels and in lowres pixels, maps to one full-res point
    np.testing.assert_allclose(apply(affine_xy(hires, ID), in_hires), centres)
    np.testing.assert_allclose(apply(affine_xy(lowres, ID), in_lowres), centres)
    np.testing.assert_allclose(affine_xy(hires, f"{ID}_downscaled_hires"), np.eye(3))
    # and through the container's graph as well
    t = sdata.get_transformation_between(f"{ID}_lowres_image", f"{ID}_downscaled_hires")
    np.testing.assert_allclose(apply(t.to_affine_matrix(("x", "y"), ("x", "y")), in_lowres), in_hires)


@pytest.mark.parametrize("suffix", ["tif", "btf", "jpg"])
def test_full_resolution_image(tmp_path, suffix):
    path = write_visium(tmp_path / "outs", fullres_image=suffix)
    file = path / f"{ID}_tissue_image.{suffix}"
    sdata = visium(path)  # found next to the counts file
    full = sdata[f"{ID}_full_image"]
    level0 = raster_levels(full)[0]
    expected = np.asarray(Image.open(file).convert("RGB")) if suffix == "jpg" else None
    if expected is None:
        import tifffile

        expected = tifffile.imread(file)
    assert level0.sizes["c"] == 3
    np.testing.assert_array_equal(level0.transpose("y", "x", "c").values, expected)
    np.testing.assert_allclose(affine_xy(full, ID), np.eye(3))
    # explicit path (absolute) works too; load_images=False drops every image
    assert f"{ID}_full_image" in visium(path, fullres_image_file=file)
    assert len(visium(path, load_images=False).images) == 0


def test_raw_counts_unprefixed_and_dataset_id(tmp_path):
    path = write_visium(tmp_path / "outs", prefixed=False, version="1.1")
    # unprefixed file: the id comes from the HDF5 library_ids attribute
    sdata = visium(path)
    assert ID in sdata.shapes
    sdata = visium(path, dataset_id="mine", counts_file="raw_feature_bc_matrix.h5")
    table = sdata["table"]
    barcodes, _, dense = h5_matrix(path / "raw_feature_bc_matrix.h5")
    assert table.obs_names.tolist() == barcodes
    np.testing.assert_array_equal(table.X.toarray(), dense)
    assert set(table.obs["in_tissue"]) == {0, 1}  # the raw matrix has every spot
    assert "mine" in sdata.shapes and "mine_hires_image" in sdata.images
    assert table.uns["spatialdata_attrs"]["region"] == "mine"


def test_missing_optional_files_and_cytassist(tmp_path):
    path = write_visium(tmp_path / "outs", hires=False, lowres=False, raw=False, cytassist=True)
    sdata = visium(path)
    assert len(sdata.images) == 0
    assert ID in sdata.shapes and "table" in sdata.tables
    assert "regist_target_img_scalef" in sdata["table"].uns["spatial"][ID]["scalefactors"]


def test_stream_order_and_registry(tmp_path):
    path = write_visium(tmp_path / "outs", fullres_image="tif")
    names = [name for name, _ in iter_visium(path)]
    assert names.index(ID) < names.index("table")
    assert names == [ID, "table", f"{ID}_hires_image", f"{ID}_lowres_image", f"{ID}_full_image"]
    technology = get_technology("visium")
    assert {o.name for o in technology.options} >= {"dataset_id", "counts_file", "fullres_image_file"}
    assert set(technology.read(path, load_images=False)) == {ID, "table"}


def test_write_and_read_zarr(tmp_path):
    path = write_visium(tmp_path / "outs", fullres_image="tif")
    sdata = visium(path)
    sdata.write(tmp_path / "visium.zarr")
    back = read_zarr(tmp_path / "visium.zarr")
    assert set(back) == set(sdata)
    np.testing.assert_array_equal(back["table"].X.toarray(), sdata["table"].X.toarray())
    assert back["table"].uns["spatialdata_attrs"] == sdata["table"].uns["spatialdata_attrs"]
    np.testing.assert_allclose(back[ID].geometry.x.to_numpy(), sdata[ID].geometry.x.to_numpy())
    np.testing.assert_allclose(back[ID]["radius"].to_numpy(), sdata[ID]["radius"].to_numpy())
    np.testing.assert_allclose(
        affine_xy(back[f"{ID}_hires_image"], ID), affine_xy(sdata[f"{ID}_hires_image"], ID)
    )
    np.testing.assert_array_equal(back[f"{ID}_lowres_image"].values, sdata[f"{ID}_lowres_image"].values)


# ------------------------------------------------------------------------------------------------ malformed input
def _break(path: Path, how: str) -> None:
    spatial = path / "spatial"
    if how == "no-positions":
        (spatial / "tissue_positions.csv").unlink()
    elif how == "wrong-columns":
        text = (spatial / "tissue_positions.csv").read_text().replace("pxl_row_in_fullres", "pxl_y")
        (spatial / "tissue_positions.csv").write_text(text)
    elif how == "five-columns":
        lines = (spatial / "tissue_positions.csv").read_text().splitlines()[1:]
        (spatial / "tissue_positions.csv").unlink()
        (spatial / "tissue_positions_list.csv").write_text(
            "\n".join(",".join(r.split(",")[:5]) for r in lines)
        )
    elif how == "text-pixels":
        lines = (spatial / "tissue_positions.csv").read_text().splitlines()
        lines[3] = ",".join([*lines[3].split(",")[:5], "left"])
        (spatial / "tissue_positions.csv").write_text("\n".join(lines))
    elif how == "missing-barcode":
        lines = (spatial / "tissue_positions.csv").read_text().splitlines()
        (spatial / "tissue_positions.csv").write_text("\n".join([lines[0], *lines[2:]]))
    elif how == "truncated-h5":
        file = path / f"{ID}_filtered_feature_bc_matrix.h5"
        file.write_bytes(file.read_bytes()[:2000])
    elif how == "no-h5":
        (path / f"{ID}_filtered_feature_bc_matrix.h5").unlink()
        (path / f"{ID}_raw_feature_bc_matrix.h5").unlink()
    elif how == "no-scalefactors":
        (spatial / "scalefactors_json.json").unlink()
    elif how == "no-diameter":
        sf = scalefactors(path)
        del sf["spot_diameter_fullres"]
        (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    elif how == "bad-json":
        (spatial / "scalefactors_json.json").write_text("{not json")
    elif how == "truncated-png":
        file = spatial / "tissue_hires_image.png"
        file.write_bytes(file.read_bytes()[:100])


@pytest.mark.parametrize(
    ("how", "file", "expected"),
    [
        ("no-positions", "spatial", "tissue_positions.csv"),
        ("wrong-columns", "tissue_positions.csv", "pxl_row_in_fullres"),
        ("five-columns", "tissue_positions_list.csv", "5 columns; expected 6"),
        ("text-pixels", "tissue_positions.csv", "not numeric"),
        ("missing-barcode", "tissue_positions.csv", "have no position"),
        ("truncated-h5", "filtered_feature_bc_matrix.h5", "HDF5"),
        ("no-h5", "outs", "filtered_feature_bc_matrix.h5"),
        ("no-scalefactors", "scalefactors_json.json", "not found"),
        ("no-diameter", "scalefactors_json.json", "spot_diameter_fullres"),
        ("bad-json", "scalefactors_json.json", "JSON"),
        ("truncated-png", "tissue_hires_image.png", "PNG"),
    ],
)
def test_malformed_input_names_file_and_expectation(tmp_path, how, file, expected):
    path = write_visium(tmp_path / "outs")
    _break(path, how)
    with pytest.raises(ReaderError) as info:
        visium(path)
    message = str(info.value)
    assert file in message and expected in message, message


def test_malformed_arguments(tmp_path):
    path = write_visium(tmp_path / "outs", prefixed=False)
    with pytest.raises(ReaderError, match="not a directory"):
        visium(path / "nothing")
    with pytest.raises(ReaderError, match=r"missing\.tif.*not found"):
        visium(path, fullres_image_file="missing.tif")
    with pytest.raises(ReaderError, match="tissue positions file not found"):
        visium(path, tissue_positions_file="elsewhere.csv")
    # no prefix and no library_ids attribute: the id must be passed
    with h5py.File(path / "filtered_feature_bc_matrix.h5", "a") as f:
        del f.attrs["library_ids"]
    with pytest.raises(ReaderError, match="pass dataset_id"):
        visium(path)
    assert "given" in visium(path, dataset_id="given").shapes
    with pytest.raises(ReaderError, match="invalid dataset_id 'a/b'"):
        visium(path, dataset_id="a/b")
    # two prefixed matrices: ambiguous without dataset_id
    other = write_visium(tmp_path / "two", dataset_id="A")
    shutil.copy(other / "A_filtered_feature_bc_matrix.h5", other / "B_filtered_feature_bc_matrix.h5")
    with pytest.raises(ReaderError, match="several counts files"):
        visium(other)
    assert "B" in visium(other, dataset_id="B").shapes


# ------------------------------------------------------------------------------------------------ reference
# One subprocess (importing the reference takes seconds) reads a Visium and a Visium HD folder with spatialdata-io
# and dumps what both readers must agree on.
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    import shapely
    from spatialdata.transformations import get_transformation
    from spatialdata_io import visium, visium_hd

    def matrices(element):
        return {cs: t.to_affine_matrix(("x", "y"), ("x", "y")).tolist()
                for cs, t in get_transformation(element, get_all=True).items()}

    def dump(sdatas):
        out = {"shapes": {}, "images": {}, "tables": {}}
        for s in sdatas:
            for name, gdf in s.shapes.items():
                out["shapes"][name] = {"wkt": [shapely.normalize(g).wkt for g in gdf.geometry],
                                       "radius": gdf["radius"].tolist() if "radius" in gdf else None,
                                       "index": [str(i) for i in gdf.index], "cs": matrices(gdf)}
            for name, img in s.images.items():
                shape = img.shape if hasattr(img, "shape") else img["scale0"].image.shape
                out["images"][name] = {"shape": list(shape), "cs": matrices(img)}
            for name, t in s.tables.items():
                key = t.uns["spatialdata_attrs"]["instance_key"]
                out["tables"][name] = {"obs_names": t.obs_names.tolist(), "var_names": t.var_names.tolist(),
                                       "X": t.X.toarray().tolist(), "attrs": dict(t.uns["spatialdata_attrs"]),
                                       "instance": [str(v) for v in t.obs[key]],
                                       "spatial": np.asarray(t.obsm["spatial"]).tolist() if "spatial" in t.obsm else None}
        return out

    v = visium(sys.argv[1], fullres_image_file=sys.argv[2])
    bins = visium_hd(sys.argv[3], load_segmentations_only=False, load_all_images=True)
    cells = visium_hd(sys.argv[3], load_segmentations_only=True, load_nucleus_segmentations=True)
    print(json.dumps({"visium": dump([v]), "visium_hd": dump([bins, cells])}))
    """
)


def _compare_with_reference(ours, ref: dict) -> None:
    import shapely

    assert set(ref["shapes"]) == set(ours.shapes)
    assert set(ref["images"]) == set(ours.images)
    assert set(ref["tables"]) == set(ours.tables)
    for name, r in ref["shapes"].items():
        gdf = ours[name]
        assert [str(i) for i in gdf.index] == r["index"], name
        assert all(shapely.equals(shapely.normalize(gdf.geometry.to_numpy()), shapely.from_wkt(r["wkt"]))), (
            name
        )
        if r["radius"] is not None:
            np.testing.assert_allclose(gdf["radius"].to_numpy(), r["radius"])
        assert set(r["cs"]) == set(get_transformation(gdf, get_all=True)), name
        for cs, matrix in r["cs"].items():
            np.testing.assert_allclose(affine_xy(gdf, cs), matrix)
    for name, r in ref["images"].items():
        image = ours[name]
        assert set(r["cs"]) == set(get_transformation(image, get_all=True)), name
        for cs, matrix in r["cs"].items():
            np.testing.assert_allclose(affine_xy(image, cs), matrix, atol=1e-9)
        assert list(raster_levels(image)[0].shape) == r["shape"], name
    for name, r in ref["tables"].items():
        table = ours[name]
        key = table.uns["spatialdata_attrs"]["instance_key"]
        assert dict(table.uns["spatialdata_attrs"]) == r["attrs"], name
        if name == "nucleus_segmentations":
            # the reference orders nuclei by their first 2 µm bin (we: by cell id) and leaves duplicated gene
            # symbols as they are in this table only (we make them unique in every table)
            assert table.var["gene_ids"].tolist() == ours["square_002um"].var["gene_ids"].tolist()
            order = table.obs_names.get_indexer(r["obs_names"])
            assert (order >= 0).all() and len(order) == table.n_obs
        else:
            order = np.arange(table.n_obs)
            assert table.var_names.tolist() == r["var_names"], name
            assert table.obs_names.tolist() == r["obs_names"], name
            assert [str(v) for v in table.obs[key]] == r["instance"], name
        np.testing.assert_array_equal(table.X.toarray()[order], r["X"])
        if r["spatial"] is not None:
            np.testing.assert_allclose(table.obsm["spatial"], r["spatial"])


@needs_reference
def test_matches_reference_readers(tmp_path):
    """Visium and Visium HD read here and by spatialdata-io give the same elements, ids, geometries, counts and
    transformations (the reference's own environment, in a subprocess; skipped when absent)."""
    from tissuestack.io import visium_hd
    from tissuestack.io.fake import write_visium_hd

    path = write_visium(tmp_path / "outs", fullres_image="tif", version="2.0")
    hd = write_visium_hd(tmp_path / "hd", version="4.0", seed=2)
    ref = run_reference(_REFERENCE_SCRIPT, path, f"{ID}_tissue_image.tif", hd)
    _compare_with_reference(visium(path), ref["visium"])
    _compare_with_reference(visium_hd(hd, load_nucleus_segmentations=True), ref["visium_hd"])
