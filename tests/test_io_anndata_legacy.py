"""Conversion to and from the legacy scanpy/squidpy AnnData layout (``obsm["spatial"]`` + ``uns["spatial"]``)."""

from __future__ import annotations

import sys
import warnings
from collections import UserDict

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from tissuestack import (
    Image2DModel,
    Labels2DModel,
    PointsModel,
    ShapesModel,
    SpatialData,
    TableModel,
    get_centroids,
    read_zarr,
)
from tissuestack.elements import get_transformation, raster_levels
from tissuestack.errors import UnknownCoordinateSystemError, ValidationError
from tissuestack.io import from_legacy_anndata, to_legacy_anndata, visium
from tissuestack.io.fake import write_visium
from tissuestack.transforms import Affine, Identity, Scale, Sequence, Translation

HIRES, LOWRES, DIAMETER, FIDUCIAL = 0.2, 0.06, 30.0, 45.0


def legacy(n: int = 12, seed: int = 0, library_id: str = "lib1") -> ad.AnnData:
    """A Visium-like AnnData as ``scanpy.read_visium`` builds it, with random counts, positions and images."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {"in_tissue": rng.integers(0, 2, n), "array_row": np.arange(n) // 4, "array_col": np.arange(n) % 4},
        index=[f"AAAC{seed}-{i}" for i in range(n)],
    )
    adata = ad.AnnData(rng.poisson(3, (n, 5)).astype(np.float32), obs=obs)
    adata.obsm["spatial"] = rng.uniform(100, 900, (n, 2))
    adata.uns["spatial"] = {
        library_id: {
            "images": {
                "hires": rng.integers(0, 256, (200, 180, 3), dtype=np.uint8),
                "lowres": rng.integers(0, 256, (60, 54, 3), dtype=np.uint8),
            },
            "scalefactors": {
                "tissue_hires_scalef": HIRES,
                "tissue_lowres_scalef": LOWRES,
                "spot_diameter_fullres": DIAMETER,
                "fiducial_diameter_fullres": FIDUCIAL,
            },
            "metadata": {"software_version": "spaceranger-2.0.0", "chemistry_description": "Visium V1"},
        }
    }
    return adata


def xy_matrix(element, cs: str = "global") -> np.ndarray:
    return get_transformation(element, cs).to_affine_matrix(("x", "y"), ("x", "y"))


# ================================================================================================ legacy -> sdata
def test_from_legacy_builds_overlaid_spots_images_and_table():
    adata = legacy()
    before = adata.obsm["spatial"].copy()
    sdata = from_legacy_anndata(adata)
    assert set(sdata.shapes) == {"spots"}
    assert set(sdata.images) == {"lib1_hires_image", "lib1_lowres_image"}
    spots, table = sdata["spots"], sdata["table"]
    # circles: centres = obsm["spatial"], radius = diameter / 2, indexed by the barcodes (the instance ids)
    np.testing.assert_array_equal(shapely.get_coordinates(spots.geometry.array), before)
    np.testing.assert_array_equal(spots["radius"].to_numpy(), DIAMETER / 2)
    assert spots.index.tolist() == adata.obs_names.tolist()
    assert table.uns["spatialdata_attrs"] == {
        "region": "spots",
        "region_key": "region",
        "instance_key": "spot_id",
    }
    assert table.obs["spot_id"].tolist() == adata.obs_names.tolist()
    assert (table.obs["region"] == "spots").all()
    np.testing.assert_array_equal(table.X, adata.X)
    # images overlay the spots: image pixel = scalef * full-res pixel
    for key, sf in (("hires", HIRES), ("lowres", LOWRES)):
        image = sdata[f"lib1_{key}_image"]
        np.testing.assert_array_equal(
            np.moveaxis(image.values, 0, -1), adata.uns["spatial"]["lib1"]["images"][key]
        )
        np.testing.assert_allclose(xy_matrix(image), np.diag([1 / sf, 1 / sf, 1]))
    np.testing.assert_array_equal(xy_matrix(spots), np.eye(3))
    # the table keeps metadata and scale factors, not the images; the input is untouched
    assert table.uns["spatial"]["lib1"]["metadata"]["software_version"] == "spaceranger-2.0.0"
    assert "images" not in table.uns["spatial"]["lib1"]
    assert "images" in adata.uns["spatial"]["lib1"] and "spot_id" not in adata.obs
    assert "spatialdata_attrs" not in adata.uns


def test_legacy_round_trip_through_sdata_and_store(tmp_path):
    adata = legacy(seed=4)
    sdata = from_legacy_anndata(adata)
    sdata.write(tmp_path / "legacy.zarr")
    back = to_legacy_anndata(read_zarr(tmp_path / "legacy.zarr"))
    np.testing.assert_allclose(back.obsm["spatial"], adata.obsm["spatial"], rtol=0, atol=1e-9)
    assert back.obs_names.tolist() == adata.obs_names.tolist()
    np.testing.assert_array_equal(np.asarray(back.X), adata.X)
    for column in ("in_tissue", "array_row", "array_col"):
        np.testing.assert_array_equal(back.obs[column].to_numpy(), adata.obs[column].to_numpy())
    entry, original = back.uns["spatial"]["lib1"], adata.uns["spatial"]["lib1"]
    assert set(back.uns["spatial"]) == {"lib1"}
    assert entry["scalefactors"] == pytest.approx(original["scalefactors"], rel=1e-12)
    assert entry["metadata"] == original["metadata"]
    for key in ("hires", "lowres"):
        assert entry["images"][key].dtype == np.uint8
        np.testing.assert_array_equal(entry["images"][key], original["images"][key])
    assert "spatialdata_attrs" not in back.uns
    back.write_h5ad(tmp_path / "legacy.h5ad")  # what scanpy users do next
    reread = ad.read_h5ad(tmp_path / "legacy.h5ad")
    np.testing.assert_array_equal(
        reread.uns["spatial"]["lib1"]["images"]["hires"], original["images"]["hires"]
    )
    # and once more: the legacy output converts again to the same elements
    again = from_legacy_anndata(back)
    np.testing.assert_array_equal(
        shapely.get_coordinates(again["spots"].geometry.array), adata.obsm["spatial"]
    )


def test_from_legacy_float_images_and_existing_instance_column():
    adata = legacy(seed=1)
    adata.uns["spatial"]["lib1"]["images"] = {"hires": np.random.default_rng(1).random((50, 40, 3))}
    del adata.uns["spatial"]["lib1"]["scalefactors"]["tissue_lowres_scalef"]
    adata.obs["cell"] = np.arange(adata.n_obs, dtype=np.int64) * 10
    sdata = from_legacy_anndata(adata, instance_key="cell", region="cells", coordinate_system="px")
    assert set(sdata.images) == {"lib1_hires_image"}
    assert sdata["cells"].index.tolist() == list(range(0, 10 * adata.n_obs, 10))
    assert sdata.coordinate_systems == ["px"]
    back = to_legacy_anndata(sdata)
    hires = back.uns["spatial"]["lib1"]["images"]["hires"]
    expected = (adata.uns["spatial"]["lib1"]["images"]["hires"] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(hires, expected)  # [0, 1] floats (what scanpy reads) become 0..255


def test_from_legacy_several_libraries():
    a, b = legacy(n=6, seed=1, library_id="A"), legacy(n=8, seed=2, library_id="B")
    both = ad.concat({"A": a, "B": b}, label="library_id", uns_merge="unique")
    assert set(both.uns["spatial"]) == {"A", "B"}
    sdata = from_legacy_anndata(both)
    assert set(sdata.shapes) == {"A_spots", "B_spots"}
    assert set(sdata.images) == {"A_hires_image", "A_lowres_image", "B_hires_image", "B_lowres_image"}
    assert set(sdata.coordinate_systems) == {"A", "B"}  # one per section
    table = sdata["table"]
    assert table.uns["spatialdata_attrs"]["region"] == ["A_spots", "B_spots"]
    assert table.obs["region"].astype(str).tolist() == ["A_spots"] * 6 + ["B_spots"] * 8
    np.testing.assert_array_equal(shapely.get_coordinates(sdata["B_spots"].geometry.array), b.obsm["spatial"])
    assert set(sdata.elements_in_coordinate_system("B")) == {"B_spots", "B_hires_image", "B_lowres_image"}
    # one library of several: only its rows
    only_b = from_legacy_anndata(both, library_id="B")
    assert set(only_b.shapes) == {"spots"} and only_b["table"].n_obs == 8
    assert only_b["table"].obs_names.tolist() == b.obs_names.tolist()
    back = to_legacy_anndata(only_b)
    assert set(back.uns["spatial"]) == {"B"}
    np.testing.assert_array_equal(
        back.uns["spatial"]["B"]["images"]["hires"], b.uns["spatial"]["B"]["images"]["hires"]
    )


def test_several_libraries_round_trip():
    a, b = legacy(n=6, seed=1, library_id="A"), legacy(n=8, seed=2, library_id="B")
    both = ad.concat({"A": a, "B": b}, label="library_id", uns_merge="unique", index_unique="-")
    sdata = from_legacy_anndata(both)
    with pytest.raises(UnknownCoordinateSystemError, match="pass coordinate_system"):
        to_legacy_anndata(sdata)  # two sections share no coordinate system
    back = to_legacy_anndata(sdata, coordinate_system=["A", "B"])
    np.testing.assert_array_equal(back.obsm["spatial"], both.obsm["spatial"])
    assert back.obs["library_id"].astype(str).tolist() == both.obs["library_id"].astype(str).tolist()
    assert set(back.uns["spatial"]) == {"A", "B"}
    for lib, source in (("A", a), ("B", b)):
        entry, original = back.uns["spatial"][lib], source.uns["spatial"][lib]
        assert entry["scalefactors"] == pytest.approx(original["scalefactors"])
        for key in ("hires", "lowres"):
            np.testing.assert_array_equal(entry["images"][key], original["images"][key])
    again = from_legacy_anndata(back)
    assert set(again.shapes) == {"A_spots", "B_spots"}
    np.testing.assert_array_equal(shapely.get_coordinates(again["A_spots"].geometry.array), a.obsm["spatial"])
    with pytest.raises(ValidationError, match="pass neither library_id"):
        to_legacy_anndata(sdata, coordinate_system=["A", "B"], library_id="A")


def test_from_legacy_errors():
    adata = legacy()
    del adata.obsm["spatial"]
    with pytest.raises(ValidationError, match=r"obsm has no 'spatial'"):
        from_legacy_anndata(adata)
    adata = legacy()
    adata.obsm["spatial"][3] = np.nan
    with pytest.raises(ValidationError, match="1 rows that are not finite"):
        from_legacy_anndata(adata)
    adata = legacy()
    del adata.uns["spatial"]["lib1"]["scalefactors"]["spot_diameter_fullres"]
    with pytest.raises(ValidationError, match=r"spot_diameter_fullres.*pass spot_diameter"):
        from_legacy_anndata(adata)
    assert from_legacy_anndata(adata, spot_diameter=8)["spots"]["radius"].eq(4).all()
    adata = legacy()
    adata.uns["spatial"]["lib1"]["scalefactors"]["tissue_hires_scalef"] = -1
    with pytest.raises(ValidationError, match=r"tissue_hires_scalef.*positive number"):
        from_legacy_anndata(adata)
    both = ad.concat(
        [legacy(n=3, seed=1, library_id="A"), legacy(n=3, seed=2, library_id="B")], uns_merge="unique"
    )
    with pytest.raises(ValidationError, match=r"2 libraries.*pass library_key"):
        from_legacy_anndata(both)
    adata = legacy()
    adata.obs["spot_id"] = 1
    with pytest.raises(ValidationError, match=r"obs\['spot_id'\].*repeats \[1\]"):
        from_legacy_anndata(adata)


def test_from_legacy_without_uns_spatial():
    adata = legacy()
    del adata.uns["spatial"]
    sdata = from_legacy_anndata(adata, spot_diameter=10)
    assert not sdata.images and set(sdata.shapes) == {"spots"}
    back = to_legacy_anndata(sdata)
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    assert back.uns["spatial"]["spots"]["scalefactors"] == {"spot_diameter_fullres": 10.0}


# ================================================================================================ sdata -> legacy
def grid_sdata(
    *, image_transformation=None, pyramid=None, image_size=(300, 400)
) -> tuple[SpatialData, np.ndarray]:
    """Circles on a 4 x 5 grid in micrometres (``Scale(2)`` to "global" = pixels of a full-res scan), an RGB
    image, and a table. Returns the object and the true circle centres in global."""
    ny, nx = 4, 5
    gx, gy = np.meshgrid(np.arange(nx) * 10.0 + 20, np.arange(ny) * 10.0 + 30)
    centres_um = np.column_stack([gx.ravel(), gy.ravel()])
    ids = np.arange(100, 100 + nx * ny)
    circles = ShapesModel.parse(
        centres_um,
        radius=3.0,
        index=pd.Index(ids),
        transformations={"global": Scale([2, 2], axes=("x", "y"))},
    )
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (3, *image_size), dtype=np.uint8)
    image = Image2DModel.parse(
        pixels,
        dims=("c", "y", "x"),
        transformations={"global": image_transformation or Scale([4, 4], axes=("x", "y"))},
        scale_factors=pyramid,
    )
    obs = pd.DataFrame(
        {"cell": ids, "region": "spots", "score": rng.random(len(ids))}, index=[f"c{i}" for i in ids]
    )
    table = TableModel.parse(
        ad.AnnData(rng.poisson(2, (len(ids), 3)).astype(np.float32), obs=obs),
        region="spots",
        region_key="region",
        instance_key="cell",
    )
    sdata = SpatialData(
        images={"scan_hires_image": image}, shapes={"spots": circles}, tables={"table": table}
    )
    return sdata, centres_um * 2


def test_to_legacy_coordinates_scalefactors_and_images():
    sdata, centres = grid_sdata()
    out = to_legacy_anndata(sdata, library_id="scan")
    np.testing.assert_allclose(out.obsm["spatial"], centres)
    entry = out.uns["spatial"]["scan"]
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.25)
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(2 * 3.0 * 2)
    hires = entry["images"]["hires"]
    assert hires.dtype == np.uint8 and hires.shape == (300, 400, 3)
    np.testing.assert_array_equal(
        hires, np.moveaxis(raster_levels(sdata["scan_hires_image"])[0].values, 0, -1)
    )
    assert "lowres" not in entry["images"]
    np.testing.assert_array_equal(out.obs["score"], sdata["table"].obs["score"])
    assert "spatialdata_attrs" not in out.uns and "spatialdata_attrs" in sdata["table"].uns
    # and back: circles and the image land where they were, in the legacy frame
    again = from_legacy_anndata(out, instance_key="cell")
    np.testing.assert_allclose(shapely.get_coordinates(again["spots"].geometry.array), centres)
    np.testing.assert_allclose(again["spots"]["radius"], 6.0)
    assert again["spots"].index.tolist() == sdata["spots"].index.tolist()
    np.testing.assert_allclose(xy_matrix(again["scan_hires_image"]), xy_matrix(sdata["scan_hires_image"]))
    np.testing.assert_array_equal(again["scan_hires_image"].values, sdata["scan_hires_image"].values)


def test_to_legacy_picks_a_pyramid_level_and_block_averages():
    sdata, _ = grid_sdata(pyramid=(2, 2), image_size=(3000, 2400))
    out = to_legacy_anndata(sdata, images={"hires": "scan_hires_image", "lowres": "scan_hires_image"})
    entry = out.uns["spatial"]["spots"]
    levels = raster_levels(sdata["scan_hires_image"])
    # hires: the first level fitting in 2000 px (level 1, 1500 x 1200); lowres: level 2 (750 x 600) fits 600? no:
    # 750 > 600, so level 2 is block-averaged by 2 -> 375 x 300
    assert entry["images"]["hires"].shape == (1500, 1200, 3)
    np.testing.assert_array_equal(entry["images"]["hires"], np.moveaxis(levels[1].values, 0, -1))
    assert entry["images"]["lowres"].shape == (375, 300, 3)
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(1 / 8)
    assert entry["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(1 / 32)
    block = levels[2].values[:, :2, :2].astype(float).mean(axis=(1, 2))
    np.testing.assert_allclose(entry["images"]["lowres"][0, 0], block, atol=1)
    full = to_legacy_anndata(sdata, images={"hires": "scan_hires_image"}, max_size={"hires": None})
    assert full.uns["spatial"]["spots"]["images"]["hires"].shape == (3000, 2400, 3)


def test_to_legacy_pads_and_crops_translations():
    t = Sequence([Scale([4, 4], axes=("x", "y")), Translation([8, -12], axes=("x", "y"))])
    sdata, _ = grid_sdata(image_transformation=t, image_size=(30, 40))
    entry = to_legacy_anndata(sdata, images=["hires"]).uns["spatial"]["spots"]
    pixels = np.moveaxis(sdata["scan_hires_image"].values, 0, -1)
    hires = entry["images"]["hires"]
    # image pixel (i, j) sits at global (4 j + 8, 4 i - 12): legacy pixel (i - 3, j + 2)
    assert hires.shape == (27, 42, 3)
    np.testing.assert_array_equal(hires[:, 2:], pixels[3:])
    assert (hires[:, :2] == 0).all()
    rotated = Affine(
        np.array([[0.0, -4, 0], [4, 0, 0], [0, 0, 1]]), input_axes=("x", "y"), output_axes=("x", "y")
    )
    sdata, _ = grid_sdata(image_transformation=rotated, image_size=(30, 40))
    with pytest.raises(ValidationError, match=r"'scan_hires_image'.*not a uniform scale"):
        to_legacy_anndata(sdata)


def test_to_legacy_polygons_and_labels():
    squares = [shapely.box(x, y, x + 4, y + 4) for x, y in ((0, 0), (10, 0), (0, 10))]
    polygons = ShapesModel.parse(gpd.GeoDataFrame(geometry=squares, index=pd.Index(["a", "b", "c"])))
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:4, 2:6] = 5  # centre (x, y) = (4, 3) in pixel-edge coordinates
    labels[10:20, 0:2] = 9  # centre (1, 15)
    sdata = SpatialData(
        shapes={"cells": polygons},
        labels={"nuclei": Labels2DModel.parse(labels, dims=("y", "x"))},
    )
    cells_obs = pd.DataFrame({"region": "cells", "id": ["c", "a", "b"]}, index=["v", "w", "z"])
    sdata.tables["cells_table"] = TableModel.parse(
        ad.AnnData(obs=cells_obs), region="cells", region_key="region", instance_key="id"
    )
    out = to_legacy_anndata(sdata, "cells_table")
    np.testing.assert_allclose(out.obsm["spatial"], [[2, 12], [2, 2], [12, 2]])
    equivalent = 2 * np.sqrt(16 / np.pi)  # a disk of the same area as a 4 x 4 square
    assert out.uns["spatial"]["cells"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(equivalent)
    nuclei_obs = pd.DataFrame({"region": "nuclei", "label": [9, 5]}, index=["x", "y"])
    sdata.tables["nuclei_table"] = TableModel.parse(
        ad.AnnData(obs=nuclei_obs), region="nuclei", region_key="region", instance_key="label"
    )
    out = to_legacy_anndata(sdata, "nuclei_table")
    np.testing.assert_allclose(out.obsm["spatial"], [[1, 15], [4, 3]])
    assert out.uns["spatial"]["nuclei"]["scalefactors"] == {}


def test_to_legacy_errors():
    sdata, _ = grid_sdata()
    sdata.tables["orphan"] = ad.AnnData(np.zeros((2, 2)))
    with pytest.raises(ValidationError, match="'orphan' annotates no element"):
        to_legacy_anndata(sdata, "orphan")
    with pytest.raises(KeyError, match="no table 'nope'"):
        to_legacy_anndata(sdata, "nope")
    with pytest.raises(ValidationError, match=r"'scan_hires_image_x' is the 'hires' or the 'lowres'"):
        to_legacy_anndata(sdata, images=["scan_hires_image_x"])
    with pytest.raises(ValidationError, match=r"'lowres'.*pass images=\{'lowres': name\}"):
        to_legacy_anndata(sdata, images=["hires", "lowres"])
    grey = Image2DModel.parse(np.zeros((5, 8, 8), dtype=np.uint8), dims=("c", "y", "x"))
    sdata.images["multiplex_lowres_image"] = grey
    with pytest.raises(ValidationError, match="'multiplex_lowres_image' has 5 channels"):
        to_legacy_anndata(sdata)
    del sdata.images["multiplex_lowres_image"]
    sdata["table"].obs["cell"] = sdata["table"].obs["cell"] + 1000  # in place: the container does not check
    with pytest.raises(ValidationError, match="20 rows of region 'spots' name instances that 'spots' lacks"):
        to_legacy_anndata(sdata)


def test_to_legacy_from_the_visium_reader(tmp_path):
    path = write_visium(tmp_path / "outs", seed=5)
    sdata = visium(path)
    (library,) = sdata.shapes
    table = sdata["table"]
    out = to_legacy_anndata(sdata, coordinate_system=library)
    assert set(out.uns["spatial"]) == {library}
    np.testing.assert_allclose(out.obsm["spatial"], table.obsm["spatial"])
    sf, original = out.uns["spatial"][library]["scalefactors"], table.uns["spatial"][library]["scalefactors"]
    for key in ("tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"):
        assert sf[key] == pytest.approx(original[key], rel=1e-9)
    hires = raster_levels(sdata[f"{library}_hires_image"])[0].values
    np.testing.assert_array_equal(out.uns["spatial"][library]["images"]["hires"], np.moveaxis(hires, 0, -1))
    assert out.uns["spatial"][library]["metadata"] == table.uns["spatial"][library]["metadata"]


# ================================================================================================ scanpy, squidpy
def grid_table(ny: int = 6, nx: int = 7, pitch: float = 100.0) -> tuple[SpatialData, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    cells = np.column_stack([gx.ravel(), gy.ravel()])
    circles = ShapesModel.parse(cells * pitch + 50.0, radius=30.0, transformations={"global": Identity()})
    rng = np.random.default_rng(3)
    obs = pd.DataFrame(
        {"region": "spots", "spot": np.arange(len(cells))}, index=[f"s{i}" for i in range(len(cells))]
    )
    table = TableModel.parse(
        ad.AnnData(rng.poisson(5, (len(cells), 20)).astype(np.float32), obs=obs),
        region="spots",
        region_key="region",
        instance_key="spot",
    )
    image = Image2DModel.parse(
        rng.integers(0, 256, (3, ny * 10, nx * 10), dtype=np.uint8),
        dims=("c", "y", "x"),
        transformations={"global": Scale([10, 10], axes=("x", "y"))},
    )
    return SpatialData(
        images={"grid_hires_image": image}, shapes={"spots": circles}, tables={"table": table}
    ), cells


def test_scanpy_preprocessing_and_spatial_plot_on_legacy_output():
    sc = pytest.importorskip("scanpy")
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    sdata, _ = grid_table()
    adata = to_legacy_anndata(sdata)
    counts = np.asarray(adata.X).copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(np.asarray(adata.X), expected, rtol=1e-5)
    # sc.pl.spatial reads uns["spatial"]: spots land at scalef * obsm["spatial"] on the hires image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scanpy >= 1.11 points to squidpy; it still works
        ax = sc.pl.spatial(adata, img_key="hires", color="spot", show=False)[0]
    (image,) = ax.images
    assert image.get_array().shape == (60, 70, 3)
    paths = ax.collections[0].get_paths()
    centres = np.array([(p.vertices.min(0) + p.vertices.max(0)) / 2 for p in paths])
    np.testing.assert_allclose(centres, adata.obsm["spatial"] * 0.1, atol=1e-6)
    widths = np.array([np.ptp(p.vertices[:, 0]) for p in paths])
    np.testing.assert_allclose(widths, 60.0 * 0.1)
    matplotlib.pyplot.close("all")


SQUIDPY_SKIP = (
    "squidpy is not installed: squidpy >= 1.8 requires spatialdata >= 0.7.2, which pins dask < 2026.1.2 and "
    "distributed < 2026.1.2, older than this environment's dask; it runs where squidpy is installed"
)


def test_squidpy_spatial_neighbors_on_a_table_from_a_tissuestack_store(tmp_path):
    sq = pytest.importorskip("squidpy", reason=SQUIDPY_SKIP)
    sdata, cells = grid_table()
    sdata.write(tmp_path / "grid.zarr")
    adata = to_legacy_anndata(read_zarr(tmp_path / "grid.zarr"))
    assert adata.n_obs == len(cells)
    # the 4-connected grid: spots 100 units apart on a 6 x 7 lattice
    distance = np.abs(cells[:, None, :] - cells[None, :, :]).sum(axis=2)
    np.testing.assert_allclose(adata.obsm["spatial"], cells * 100.0 + 50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # squidpy >= 1.8 points to spatial_neighbors_radius
        sq.gr.spatial_neighbors(adata, coord_type="generic", radius=110.0, delaunay=False)
    connected = adata.obsp["spatial_connectivities"].toarray() > 0
    np.testing.assert_array_equal(connected, distance == 1)
    assert connected.sum() == 2 * (6 * 6 + 5 * 7)  # each of the 71 grid edges, both ways
    np.testing.assert_allclose(adata.obsp["spatial_distances"].toarray()[connected], 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sq.gr.spatial_neighbors(adata, coord_type="grid", n_neighs=4)
    np.testing.assert_array_equal(adata.obsp["spatial_connectivities"].toarray() > 0, distance == 1)
    # a neighbourhood statistic on the result: spots are labelled by column parity, so along x neighbours differ
    adata.obs["parity"] = pd.Categorical(np.where(cells[:, 0] % 2 == 0, "even", "odd"))
    sq.gr.interaction_matrix(adata, cluster_key="parity", normalized=False)
    counts = np.asarray(adata.uns["parity_interactions"])
    # 6 rows x 6 horizontal edges join even and odd columns; 7 columns x 5 vertical edges stay within a parity
    assert counts[0, 1] == counts[1, 0] == 6 * 6
    assert counts[0, 0] + counts[1, 1] == 2 * 7 * 5


def test_points_metadata_survives_a_foreign_attrs_accessor(monkeypatch):
    """spatialdata (imported by squidpy) registers an ``attrs`` accessor on dask frames that is not a dict;
    tissuestack keeps its metadata on the meta frame all the same (get_centroids, hence to_legacy_anndata)."""
    if "spatialdata" not in sys.modules:  # else its real accessor is in place (and refuses a stand-in)
        monkeypatch.setattr(dd.DataFrame, "attrs", property(lambda self: UserDict()), raising=False)
    frame = pd.DataFrame({"x": [1.0, 3.0, 10.0], "y": [2.0, 4.0, 0.0], "cell": [1, 1, 2]})
    points = PointsModel.parse(
        frame, instance_key="cell", transformations={"global": Scale([2, 2], axes=("x", "y"))}
    )
    centroids = get_centroids(points, "global").compute()
    np.testing.assert_allclose(centroids.loc[[1, 2], ["x", "y"]].to_numpy(), [[4, 6], [20, 0]])
