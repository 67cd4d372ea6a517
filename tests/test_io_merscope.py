"""The Vizgen MERSCOPE reader against synthetic region folders (current Parquet, older per-FOV HDF5, VPT)."""

from __future__ import annotations

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

from io_helpers import affine_xy, apply, needs_reference, run_reference
from tissuestack import read_zarr
from tissuestack.elements import get_transformation, raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, merscope
from tissuestack.io._merscope import iter_merscope, stain_order
from tissuestack.io.fake import write_merscope
from tissuestack.io.fake._merscope import (
    BACKGROUND,
    CELL_MARK,
    ENTITY_ID_BASE,
    MICRONS_PER_PIXEL,
    ORIGIN_UM,
    REGION,
    SLIDE,
    TRANSCRIPT_MARK,
)

ID = f"{SLIDE}_{REGION}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_merscope(tmp_path_factory.mktemp("merscope"), vpt=True, seed=1)


@pytest.fixture(scope="module")
def sdata(bundle):
    return merscope(bundle, z_layers=(2, 3))


# ------------------------------------------------------------------------------------------------ contents
def test_elements_names_and_links(bundle, sdata):
    assert set(sdata.images) == {f"{ID}_z2", f"{ID}_z3"}
    assert set(sdata.points) == {f"{ID}_transcripts"}
    assert set(sdata.shapes) == {f"{ID}_polygons"}
    assert set(sdata.tables) == {"table"}
    table, polygons = sdata["table"], sdata[f"{ID}_polygons"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        f"{ID}_polygons",
        "cells_region",
        "EntityID",
    )
    ids = [str(ENTITY_ID_BASE + k) for k in range(6)]
    assert table.obs_names.tolist() == ids
    assert table.obs["EntityID"].tolist() == ids
    assert polygons.index.tolist() == ids  # EntityID as string, same values as the table's instance column
    assert table.obs["cells_region"].astype(str).eq(f"{ID}_polygons").all()
    assert (table.obs["region"].astype(str) == REGION).all() and (
        table.obs["slide"].astype(str) == SLIDE
    ).all()
    assert (table.obs["dataset_id"].astype(str) == ID).all()


def test_table_values_equal_the_csvs(bundle, sdata):
    table = sdata["table"]
    cbg = pd.read_csv(bundle / "cell_by_gene.csv", dtype={"cell": str}).set_index("cell")
    meta = pd.read_csv(bundle / "cell_metadata.csv", dtype={"EntityID": str}).set_index("EntityID")
    genes = [c for c in cbg.columns if not c.startswith("Blank")]
    assert table.var_names.tolist() == genes
    np.testing.assert_array_equal(table.X.toarray(), cbg[genes].to_numpy())
    assert table.obsm["blank"].columns.tolist() == ["Blank-0", "Blank-1"]
    np.testing.assert_array_equal(table.obsm["blank"].to_numpy(), cbg[["Blank-0", "Blank-1"]].to_numpy())
    np.testing.assert_allclose(table.obsm["spatial"], meta[["center_x", "center_y"]].to_numpy())
    np.testing.assert_allclose(table.obs["DAPI_raw"].to_numpy(), meta["DAPI_raw"].to_numpy())
    # the counts are those of the transcripts assigned to each cell (the fixture is consistent)
    tx = pd.read_csv(bundle / "detected_transcripts.csv")
    assigned = tx[tx["cell_id"] >= 0]
    brute = pd.crosstab(assigned["cell_id"].astype(str), assigned["gene"]).reindex(
        index=table.obs_names, columns=cbg.columns, fill_value=0
    )
    np.testing.assert_array_equal(brute.to_numpy(), cbg.to_numpy())


def test_transcripts_lazy_and_equal(bundle):
    sdata = merscope(bundle, mosaic_images=False, transcripts_blocksize=1500)
    points = sdata[f"{ID}_transcripts"]
    assert points.npartitions > 1  # read in blocks
    tx = pd.read_csv(bundle / "detected_transcripts.csv")
    got = points.compute()
    assert len(got) == len(tx)
    np.testing.assert_allclose(got["x"].to_numpy(), tx["global_x"].to_numpy())
    np.testing.assert_allclose(got["y"].to_numpy(), tx["global_y"].to_numpy())
    np.testing.assert_array_equal(got["global_z"].to_numpy(), tx["global_z"].to_numpy())
    assert isinstance(got["gene"].dtype, pd.CategoricalDtype)
    assert got["gene"].astype(str).tolist() == tx["gene"].tolist()
    # categories = the counts table's features, known without a pass over the transcripts
    assert set(points["gene"].cat.categories) == set(pd.read_csv(bundle / "cell_by_gene.csv").columns[1:])
    np.testing.assert_array_equal(got["cell_id"].to_numpy(), tx["cell_id"].to_numpy())
    assert {"barcode_id", "fov", "transcript_id"} <= set(got.columns)
    assert not {"global_x", "global_y", "Unnamed: 0"} & set(got.columns)  # renamed / dropped


def test_transforms_numerically(bundle, sdata):
    """A transcript's µm position lands on the mosaic pixel marked for it, a cell centre on its DAPI square, and
    polygons contain exactly their cell's transcripts."""
    tx = pd.read_csv(bundle / "detected_transcripts.csv")
    image = sdata[f"{ID}_z3"]
    assert image.coords["c"].values.tolist() == ["DAPI", "PolyT", "Cellbound1"]
    m = affine_xy(image)  # mosaic pixel -> µm
    expected = np.array([[1, 0, ORIGIN_UM[0]], [0, 1, ORIGIN_UM[1]]], dtype=float)
    expected[:, :2] *= MICRONS_PER_PIXEL
    np.testing.assert_allclose(m[:2], expected, atol=1e-9)
    px = apply(np.linalg.inv(m), tx[["global_x", "global_y"]].to_numpy())
    col, row = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
    polyt = image.sel(c="PolyT").values
    np.testing.assert_array_equal(polyt[row, col], TRANSCRIPT_MARK + np.arange(len(tx)))
    # cells: DAPI under the centre is the cell's mark
    table = sdata["table"]
    cpx = apply(np.linalg.inv(m), table.obsm["spatial"])
    dapi = image.sel(c="DAPI").values
    np.testing.assert_array_equal(
        dapi[np.floor(cpx[:, 1]).astype(int), np.floor(cpx[:, 0]).astype(int)],
        CELL_MARK + np.arange(table.n_obs),
    )
    # points and shapes are identity in µm; the transcripts inside a polygon are exactly those assigned to it
    points = sdata[f"{ID}_transcripts"]
    polygons = sdata[f"{ID}_polygons"]
    assert get_transformation(points).is_identity_on(("x", "y"))
    assert get_transformation(polygons).is_identity_on(("x", "y"))
    pts = shapely.points(tx["global_x"].to_numpy(), tx["global_y"].to_numpy())
    for entity, geom in zip(polygons.index, polygons.geometry, strict=True):
        inside = shapely.contains(geom, pts)
        assigned = tx["cell_id"].astype(str).to_numpy() == entity
        np.testing.assert_array_equal(inside, assigned & inside)  # every contained transcript is the cell's
        assert inside.sum() <= assigned.sum()


def test_mosaic_values_equal_the_tiffs(bundle, sdata):
    for z in (2, 3):
        image = sdata[f"{ID}_z{z}"]
        level = raster_levels(image)[0]
        for stain in ("DAPI", "PolyT", "Cellbound1"):
            raw = tifffile.imread(bundle / "images" / f"mosaic_{stain}_z{z}.tif")
            np.testing.assert_array_equal(level.sel(c=stain).values, raw)
            assert (raw == BACKGROUND[stain] + z).mean() > 0.5


def test_stain_order_is_deterministic():
    assert stain_order(["Cellbound10", "PolyT", "Cellbound2", "DAPI", "Anti-GFAP"]) == [
        "DAPI",
        "PolyT",
        "Anti-GFAP",
        "Cellbound2",
        "Cellbound10",
    ]


# ------------------------------------------------------------------------------------------------ variants
def test_legacy_hdf5_boundaries_equal_parquet(tmp_path):
    current = write_merscope(tmp_path / "c", seed=4)
    legacy = write_merscope(tmp_path / "l", version="legacy", seed=4)
    assert (legacy / "cell_boundaries" / "feature_data_0.hdf5").exists()
    a = merscope(current, mosaic_images=False)
    b = merscope(legacy, mosaic_images=False)
    pa, pb = a[f"{ID}_polygons"], b[f"{ID}_polygons"]
    pb = pb.loc[pa.index]
    assert shapely.equals(pa.geometry.to_numpy(), pb.geometry.to_numpy()).all()
    assert (shapely.get_num_geometries(pa.geometry.to_numpy())[-1], pa.geom_type.unique().tolist()) == (
        2,
        ["MultiPolygon"],
    )
    # the older metadata has an empty first header; the ids are still the EntityIDs, as strings
    assert b["table"].obs_names.tolist() == a["table"].obs_names.tolist()
    np.testing.assert_array_equal(b["table"].X.toarray(), a["table"].X.toarray())
    # no cell_id column in older transcripts: no instance key
    from tissuestack.elements import get_meta

    assert get_meta(b[f"{ID}_transcripts"]).instance_key is None
    assert get_meta(a[f"{ID}_transcripts"]).instance_key == "cell_id"


def test_vpt_outputs_folder_and_mapping(bundle):
    folder = merscope(bundle, vpt_outputs="vpt_outputs", mosaic_images=False, transcripts=False)
    mapping = merscope(
        bundle,
        vpt_outputs={
            "cell_by_gene": bundle / "vpt_outputs" / "cell_by_gene.csv",
            "cell_metadata": "vpt_outputs/cell_metadata.csv",
            "cell_boundaries": "vpt_outputs/cellpose_micron_space.parquet",
        },
        mosaic_images=False,
        transcripts=False,
    )
    for s in (folder, mapping):
        assert s[f"{ID}_polygons"].index.tolist() == s["table"].obs_names.tolist()
    with pytest.raises(ReaderError, match="cell_boundaries"):
        merscope(bundle, vpt_outputs={"cell_by_gene": "a", "cell_metadata": "b"})


def test_boundaries_z_index(bundle):
    s = merscope(bundle, mosaic_images=False, transcripts=False, cells_table=False, boundaries_z_index=5)
    assert (s[f"{ID}_polygons"]["ZIndex"] == 5).all()
    with pytest.raises(ReaderError, match=r"no boundaries at ZIndex 9; the file has the z planes \[0, 1"):
        merscope(bundle, mosaic_images=False, transcripts=False, cells_table=False, boundaries_z_index=9)


def test_missing_plane_and_missing_z(tmp_path):
    path = write_merscope(tmp_path, missing_plane=("PolyT", 3), z_layers=(2, 3))
    with pytest.warns(UserWarning, match=r"z plane 3 has no mosaic for the stain\(s\) \['PolyT'\]"):
        s = merscope(path, z_layers=(2, 3), transcripts=False)
    assert s[f"{ID}_z3"].coords["c"].values.tolist() == ["DAPI", "Cellbound1"]
    assert s[f"{ID}_z2"].coords["c"].values.tolist() == ["DAPI", "PolyT", "Cellbound1"]
    with pytest.raises(ReaderError, match=r"no mosaic for z plane 5; the folder has the z planes \[2, 3\]"):
        merscope(path, z_layers=5)


def test_invalid_geometry_dropped(tmp_path):
    path = write_merscope(tmp_path, invalid_geometry=True, z_layers=(3,))
    with pytest.warns(UserWarning, match=f"dropped 1 invalid.*{ENTITY_ID_BASE}"):
        s = merscope(path, transcripts=False)
    polygons = s[f"{ID}_polygons"]
    assert str(ENTITY_ID_BASE) not in polygons.index and len(polygons) == 5
    assert shapely.is_valid(polygons.geometry.to_numpy()).all()
    assert s["table"].n_obs == 6  # the table keeps the cell


def test_manifest_fallback_for_the_transform(tmp_path, bundle):
    path = tmp_path / SLIDE / REGION
    shutil.copytree(bundle, path)
    expected = affine_xy(
        merscope(path, transcripts=False, cells_table=False, cell_boundaries=False)[f"{ID}_z3"]
    )
    (path / "images" / "micron_to_mosaic_pixel_transform.csv").unlink()
    got = affine_xy(merscope(path, transcripts=False, cells_table=False, cell_boundaries=False)[f"{ID}_z3"])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    (path / "images" / "manifest.json").unlink()
    with pytest.raises(
        ReaderError, match=re.escape("micron_to_mosaic_pixel_transform.csv nor manifest.json")
    ):
        merscope(path, transcripts=False, cells_table=False, cell_boundaries=False)


def test_names_options(bundle):
    s = merscope(
        bundle, dataset_id="run1", region_name="r9", slide_name="s9", mosaic_images=False, transcripts=False
    )
    assert set(s.shapes) == {"run1_polygons"}
    assert (s["table"].obs["region"].astype(str) == "r9").all() and (s["table"].obs["slide"] == "s9").all()
    s = merscope(bundle, z_layers=None, transcripts=False, cell_boundaries=False, cells_table=False)
    assert len(list(s.images)) == 0


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, bundle) -> Path:
    path = tmp_path / SLIDE / REGION
    shutil.copytree(bundle, path)
    return path


def test_missing_files(copy):
    (copy / "detected_transcripts.csv").unlink()
    with pytest.raises(
        ReaderError, match=re.escape("no transcripts file; expected detected_transcripts.csv")
    ):
        merscope(copy)
    (copy / "cell_boundaries.parquet").unlink()
    with pytest.raises(ReaderError, match=r"cell_boundaries.parquet: cell boundaries not found"):
        merscope(copy, transcripts=False)
    (copy / "cell_metadata.csv").unlink()
    with pytest.raises(ReaderError, match=re.escape("cell_metadata.csv: cell metadata not found")):
        merscope(copy, transcripts=False, cell_boundaries=False)
    with pytest.raises(ReaderError, match="not a directory; expected a MERSCOPE region folder"):
        merscope(copy / "nothing")


def test_wrong_columns(copy):
    tx = pd.read_csv(copy / "detected_transcripts.csv", index_col=0)
    tx.rename(columns={"gene": "target"}).to_csv(copy / "detected_transcripts.csv")
    with pytest.raises(
        ReaderError, match=r"detected_transcripts.csv: the transcripts lack the column\(s\) \['gene'\]"
    ):
        merscope(copy)
    meta = pd.read_csv(copy / "cell_metadata.csv", index_col=0)
    meta.drop(columns=["center_x"]).to_csv(copy / "cell_metadata.csv")
    with pytest.raises(ReaderError, match=re.escape("cell_metadata.csv: no 'center_x' column")):
        merscope(copy, transcripts=False)
    cbg = pd.read_csv(copy / "cell_by_gene.csv", index_col=0)
    cbg.assign(Gad1="x").to_csv(copy / "cell_by_gene.csv")
    with pytest.raises(ReaderError, match=r"cell_by_gene.csv: column\(s\) \['Gad1'\] are not numeric"):
        merscope(copy, transcripts=False, cell_boundaries=False)


def test_truncated_files(copy):
    data = (copy / "detected_transcripts.csv").read_bytes()
    (copy / "detected_transcripts.csv").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ReaderError, match=re.escape("detected_transcripts.csv: the transcripts file ends in the middle")
    ):
        merscope(copy)
    data = (copy / "cell_boundaries.parquet").read_bytes()
    (copy / "cell_boundaries.parquet").write_bytes(data[: len(data) - 100])
    with pytest.raises(ReaderError, match=re.escape("cell_boundaries.parquet: not a readable Parquet file")):
        merscope(copy, transcripts=False)
    transform = copy / "images" / "micron_to_mosaic_pixel_transform.csv"
    good = transform.read_text()
    transform.write_text("9.2 0 -3\n0 9.2\n")
    with pytest.raises(ReaderError, match=re.escape("micron_to_mosaic_pixel_transform.csv: cannot read")):
        merscope(copy, transcripts=False, cell_boundaries=False)
    transform.write_text(good)
    tiff = copy / "images" / "mosaic_DAPI_z3.tif"
    tiff.write_bytes(tiff.read_bytes()[:64])
    with pytest.raises(ReaderError, match=re.escape("mosaic_DAPI_z3.tif")):
        merscope(copy, transcripts=False, cell_boundaries=False, cells_table=False).images  # noqa: B018


def test_unknown_gene_fails_clearly_and_scan_recovers(copy):
    tx = pd.read_csv(copy / "detected_transcripts.csv", index_col=0)
    tx.iloc[3, tx.columns.get_loc("gene")] = "NotAGene"  # (the index repeats per FOV)
    tx.to_csv(copy / "detected_transcripts.csv")
    points = merscope(copy, mosaic_images=False)[f"{ID}_transcripts"]
    with pytest.raises(
        ReaderError, match=r"detected_transcripts.csv: column 'gene' holds value\(s\) \['NotAGene'\]"
    ):
        points.compute()
    points = merscope(copy, mosaic_images=False, scan_features=True)[f"{ID}_transcripts"]
    assert "NotAGene" in points["gene"].cat.categories
    assert (points.compute()["gene"] == "NotAGene").sum() == 1


# ------------------------------------------------------------------------------------------------ store / registry
def test_write_read_zarr_round_trip(tmp_path, sdata):
    sdata.write(tmp_path / "m.zarr")
    back = read_zarr(tmp_path / "m.zarr")
    assert set(back.images) == set(sdata.images) and set(back.points) == set(sdata.points)
    t0, t1 = sdata["table"], back["table"]
    np.testing.assert_array_equal(t1.X.toarray(), t0.X.toarray())
    assert t1.obs["EntityID"].tolist() == t0.obs["EntityID"].tolist()
    assert back[f"{ID}_polygons"].index.tolist() == sdata[f"{ID}_polygons"].index.tolist()
    np.testing.assert_allclose(affine_xy(back[f"{ID}_z3"]), affine_xy(sdata[f"{ID}_z3"]))
    p0 = sdata[f"{ID}_transcripts"].compute().sort_values(["x", "y"])
    p1 = back[f"{ID}_transcripts"].compute().sort_values(["x", "y"])
    np.testing.assert_allclose(p1[["x", "y"]].to_numpy(), p0[["x", "y"]].to_numpy())
    assert p1["gene"].astype(str).tolist() == p0["gene"].astype(str).tolist()
    np.testing.assert_array_equal(
        raster_levels(back[f"{ID}_z2"])[0].values, raster_levels(sdata[f"{ID}_z2"])[0].values
    )


def test_registered_technology(bundle):
    tech = get_technology("merscope")
    assert tech.iter_elements is iter_merscope
    names = [name for name, _ in tech.iter_elements(bundle, z_layers=("3",))]
    # write order: images, transcripts, polygons, then the table that annotates them
    assert names == [f"{ID}_z3", f"{ID}_transcripts", f"{ID}_polygons", "table"]
    assert {o.name for o in tech.options} >= {"z_layers", "vpt_outputs", "transcripts", "cell_boundaries"}


# ------------------------------------------------------------------------------------------------ reference
# One subprocess (importing the reference takes seconds) reads a MERSCOPE and a CosMx folder with spatialdata-io.
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    from spatialdata_io import cosmx, merscope
    from spatialdata.transformations import get_transformation

    def tf(element):
        return get_transformation(element, "global").to_affine_matrix(("x", "y"), ("x", "y")).tolist()

    def level0(element):
        return element["scale0"]["image"] if hasattr(element, "children") else element

    s = merscope(sys.argv[1], z_layers=[3])
    out = {}
    for name, img in s.images.items():
        lvl = level0(img)
        out["image"] = [name, [str(c) for c in lvl.coords["c"].values], lvl.values.tolist(), tf(img)]
    for name, pts in s.points.items():
        df = pts.compute()
        out["points"] = [name, df["x"].tolist(), df["y"].tolist(), df["gene"].astype(str).tolist(), tf(pts)]
    for name, shp in s.shapes.items():
        out["shapes"] = [name, shp.index.tolist(), shp.geometry.to_wkt().tolist()]
    t = s.tables["table"]
    out["table"] = [t.obs_names.tolist(), t.var_names.tolist(), np.asarray(t.X).tolist(),
                    dict(t.uns["spatialdata_attrs"])]

    c = cosmx(sys.argv[2])
    res = {"labels": {}, "images": {}, "points": {}}
    for name, lab in c.labels.items():
        res["labels"][name] = [level0(lab).values.tolist(), tf(lab)]
    for name, img in c.images.items():
        res["images"][name] = [level0(img).values.tolist(), tf(img)]
    for name, pts in c.points.items():
        df = pts.compute()
        res["points"][name] = [df["x"].tolist(), df["y"].tolist(), df["target"].astype(str).tolist(), tf(pts)]
    t = c.tables["table"]
    attrs = dict(t.uns["spatialdata_attrs"])
    res["table"] = [t.obs_names.tolist(), t.var_names.tolist(), t.X.toarray().tolist(), attrs,
                    t.obs["cell_ID"].tolist(), t.obs["fov_labels"].astype(str).tolist()]
    out["cosmx"] = res
    print(json.dumps(out))
    """
)


def _compare_merscope(ours, ref: dict) -> None:
    name, channels, values, image_tf = ref["image"]
    image = ours[name]
    # the reference stacks the stains in set order; compare by name
    for c, plane in zip(channels, np.asarray(values), strict=True):
        np.testing.assert_array_equal(raster_levels(image)[0].sel(c=c).values, plane)
    # reference: global = mosaic pixels (points Affine(µm -> px), image identity); ours: global = µm. The map
    # from transcripts to image pixels must be the same.
    points_name, x, y, genes, points_tf = ref["points"]
    ref_points_to_px = np.linalg.inv(np.asarray(image_tf)) @ np.asarray(points_tf)
    ours_points_to_px = np.linalg.inv(affine_xy(image)) @ affine_xy(ours[points_name])
    np.testing.assert_allclose(ours_points_to_px, ref_points_to_px, atol=1e-9)
    pts = ours[points_name].compute()
    np.testing.assert_allclose(pts["x"].to_numpy(), x)
    np.testing.assert_allclose(pts["y"].to_numpy(), y)
    assert pts["gene"].astype(str).tolist() == genes
    shapes = ours[ref["shapes"][0]]
    assert shapes.index.tolist() == ref["shapes"][1]
    assert shapely.equals(shapes.geometry.to_numpy(), shapely.from_wkt(ref["shapes"][2])).all()
    obs_names, var_names, x, attrs = ref["table"]
    table = ours["table"]
    assert table.obs_names.tolist() == obs_names and table.var_names.tolist() == var_names
    np.testing.assert_array_equal(table.X.toarray(), np.asarray(x))
    mine = table.uns["spatialdata_attrs"]
    assert (mine["region"], mine["region_key"], mine["instance_key"]) == (
        attrs["region"],
        attrs["region_key"],
        attrs["instance_key"],
    )


def _compare_cosmx(ours, ref: dict, pixel_size: float) -> None:
    # the reference flips every FOV raster (a copy) and places it with an affine fitted to the metadata centres, in
    # global pixels; we keep the pixels as stored and put the flip (and the µm scale) in the transformation
    assert set(ours.labels) == set(ref["labels"]) and set(ours.images) == set(ref["images"])
    for kind in ("labels", "images"):
        for name, (values, tf) in ref[kind].items():
            mine = raster_levels(ours[name])[0].values
            theirs = np.asarray(values)
            height = mine.shape[-2]
            np.testing.assert_array_equal(np.flip(mine, axis=-2), theirs)
            flip = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height], [0.0, 0.0, 1.0]])
            expected = np.diag([pixel_size, pixel_size, 1.0]) @ np.asarray(tf) @ flip
            np.testing.assert_allclose(affine_xy(ours[name]), expected, atol=1e-6)
    # transcripts: the reference's per-FOV points (FOV-local pixels + fitted affine) land where ours do
    got = ours["Lung5_Rep1_transcripts"].compute()
    ours_um = apply(affine_xy(ours["Lung5_Rep1_transcripts"]), got[["x", "y"]].to_numpy())
    for name, (x, y, targets, tf) in ref["points"].items():
        rows = got["fov"].to_numpy() == int(name.split("_")[0])
        theirs = apply(np.asarray(tf), np.column_stack([x, y])) * pixel_size
        np.testing.assert_allclose(ours_um[rows], theirs, atol=1e-6)
        assert got.loc[rows, "target"].astype(str).tolist() == targets
    obs_names, var_names, x, attrs, cell_ids, regions = ref["table"]
    table = ours["table"]
    assert sorted(table.obs_names) == sorted(obs_names) and table.var_names.tolist() == var_names
    order = table.obs_names.get_indexer(obs_names)
    np.testing.assert_array_equal(table.X.toarray()[order], np.asarray(x))
    assert table.obs["cell_ID"].to_numpy()[order].tolist() == cell_ids
    assert table.obs["fov_labels"].astype(str).to_numpy()[order].tolist() == regions
    mine = table.uns["spatialdata_attrs"]
    assert sorted(mine["region"]) == sorted(attrs["region"])
    assert (mine["region_key"], mine["instance_key"]) == (attrs["region_key"], attrs["instance_key"])


@needs_reference
def test_matches_reference_readers(bundle, tmp_path):
    """Same elements, ids, values and (up to the choice of global units and of flipping pixels vs. transforms)
    placement as spatialdata-io's MERSCOPE and CosMx readers, run in their own environment (skipped when absent)."""
    from tissuestack.io import cosmx
    from tissuestack.io.fake import write_cosmx
    from tissuestack.io.fake._cosmx import PIXEL_SIZE_UM

    cosmx_path = write_cosmx(tmp_path / "cosmx", seed=2)
    ref = run_reference(_REFERENCE_SCRIPT, bundle, cosmx_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare_merscope(merscope(bundle), ref)
        _compare_cosmx(cosmx(cosmx_path), ref["cosmx"], PIXEL_SIZE_UM)


def test_parquet_transcripts(copy):
    """Newer instruments also write detected_transcripts.parquet; it is read (lazily) when the CSV is absent."""
    tx = pd.read_csv(copy / "detected_transcripts.csv", index_col=0)
    tx.to_parquet(copy / "detected_transcripts.parquet", row_group_size=30)
    (copy / "detected_transcripts.csv").unlink()
    points = merscope(copy, mosaic_images=False)[f"{ID}_transcripts"]
    got = points.compute()
    np.testing.assert_allclose(got["x"].to_numpy(), tx["global_x"].to_numpy())
    assert got["gene"].astype(str).tolist() == tx["gene"].tolist()


def test_folder_above_the_region_or_of_another_technology_says_what_was_expected(tmp_path):
    from tissuestack.errors import ReaderError
    from tissuestack.io import fake, merscope

    region = fake.write_merscope(tmp_path / "experiment")
    with pytest.raises(
        ReaderError, match=r"not a MERSCOPE region folder, but it holds region folders: .*region_0"
    ):
        merscope(tmp_path / "experiment")
    assert merscope(region)  # the region folder itself reads
    other = fake.write_xenium(tmp_path / "xenium")
    with pytest.raises(ReaderError, match=r"expected detected_transcripts.csv.*found .*experiment.xenium"):
        merscope(other)
