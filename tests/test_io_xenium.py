"""The 10x Genomics Xenium reader (XOA 1.0 to 4.x layouts) against synthetic bundles.

Expected values come straight from the files the fake writer produced (pyarrow, h5py, zarr, tifffile), never
from the reader itself.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import tifffile
import zarr

from io_helpers import affine_xy, dense_counts, needs_reference, run_reference
from tissuestack import read_zarr
from tissuestack.elements import get_meta, get_transformation, raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import convert, get_technology, xenium
from tissuestack.io._xenium import cell_id_strings, iter_xenium, parse_xenium_version
from tissuestack.io._xenium_shapes import _split_rings
from tissuestack.io.fake import write_xenium

PS = 0.2125
LAYOUTS = ("1.0.2", "1.7.1", "2.0.0", "3.1.0", "4.0.0")
FOCUS_4 = ["DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xenium")
    out = {v: write_xenium(root / v, version=v) for v in LAYOUTS}
    out["binary"] = write_xenium(root / "binary", version="1.7.1", binary_strings=True, seed=3)
    out["early"] = write_xenium(root / "early", version="2.0.0", label_id=False)
    out["protein"] = write_xenium(
        root / "protein", version="4.0.0", protein=True, if_image=True, missing_cell_boundaries=(1,)
    )
    out["dapi_only"] = write_xenium(
        root / "dapi_only", version="3.1.0", n_focus_channels=1, aligned_image=False
    )
    return out


@pytest.fixture(scope="module")
def read(bundles) -> dict[str, object]:
    cache: dict[str, object] = {}

    def get(key: str):
        if key not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the standard layouts read without any warning
                cache[key] = xenium(bundles[key])
        return cache[key]

    return get


# ------------------------------------------------------------------------------------------------ brute force


def h5_dense(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray, dict]:
    """(barcodes, names, feature types, dense barcodes x features counts, root attrs) from the raw datasets."""
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        dense = dense_counts(m)
        dec = lambda a: [x.decode() for x in a]  # noqa: E731
        return (
            dec(m["barcodes"][()]),
            dec(m["features"]["name"][()]),
            dec(m["features"]["feature_type"][()]),
            dense,
            dict(f.attrs),
        )


def zarr_arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(zarr.storage.ZipStore(path / "cells.zarr.zip", mode="r"), mode="r")
    out = {
        "masks/0": group["masks/0"][...],
        "masks/1": group["masks/1"][...],
        "cell_id": group["cell_id"][...],
    }
    if "polygon_sets" in group:
        out["nucleus_owner"] = group["polygon_sets/0/cell_index"][...]
    return out


def slow_cell_id(prefix: int, suffix: int) -> str:
    return "".join("abcdefghijklmnop"[int(c, 16)] for c in f"{prefix:08x}") + f"-{suffix}"


def decode(values) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


# ------------------------------------------------------------------------------------------------ units


def test_cell_id_strings_match_the_documented_examples_and_a_slow_decoder():
    prefix = np.array([1, 1437536272, 1437536273, 0, 4294967295], dtype=np.uint32)
    suffix = np.array([1, 1, 2, 1, 1])
    got = cell_id_strings(prefix, suffix).tolist()
    assert got == ["aaaaaaab-1", "ffkpbaba-1", "ffkpbabb-2", "aaaaaaaa-1", "pppppppp-1"]
    rng = np.random.default_rng(1)
    many = rng.integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32)
    assert cell_id_strings(many, 3).tolist() == [slow_cell_id(int(p), 3) for p in many]


def test_version_parsing_prefers_xenium_ranger_and_rejects_garbage():
    assert parse_xenium_version({"analysis_sw_version": "xenium-1.4.0.6"}) == (1, 4, 0)
    assert parse_xenium_version({"analysis_sw_version": "Xenium-2.0.0.6-35-ga7e17149a"}) == (2, 0, 0)
    specs = {"analysis_sw_version": "xenium-1.6.0.7", "xenium_ranger": {"version": "xenium-3.0.1.1"}}
    assert parse_xenium_version(specs) == (3, 0, 1)
    assert parse_xenium_version({"analysis_sw_version": "xenium-experimental"}) is None
    assert parse_xenium_version({}) is None


def test_split_rings_finds_concatenated_closed_rings():
    square = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]
    other = [(5, 5), (6, 5), (6, 6), (5, 5)]
    # group 0: one ring; group 1: a shifted square followed by another closed ring
    coords = np.array([*square, (2, 2), (3, 2), (3, 3), (2, 3), (2, 2), *other], dtype=float)
    starts, ends = np.array([0, 5]), np.array([5, 14])
    ring_starts, groups = _split_rings(coords, starts, ends)
    assert ring_starts.tolist() == [0, 5, 10]
    assert groups.tolist() == [0, 1, 1]


def test_registered_technology_exposes_every_option():
    tech = get_technology("xenium")
    names = {o.name for o in tech.options}
    assert {
        "cell_labels",
        "nucleus_labels",
        "cell_boundaries",
        "nucleus_boundaries",
        "cells_as_circles",
        "transcripts",
        "morphology_focus",
        "morphology_mip",
        "aligned_images",
        "cells_table",
        "feature_types",
        "min_qv",
    } <= names
    assert tech.iter_elements is iter_xenium


# ------------------------------------------------------------------------------------------------ every layout


@pytest.mark.parametrize("version", LAYOUTS)
def test_layout_reads_every_element_with_values_from_the_files(bundles, read, version):
    path = bundles[version]
    sd = read(version)
    v = tuple(int(x) for x in version.split("."))
    images = {"morphology_focus", "he_image"} | ({"morphology_mip"} if v < (2, 0, 0) else set())
    assert set(sd.images) == images
    assert set(sd.labels) == {"cell_labels", "nucleus_labels"}
    assert set(sd.points) == {"transcripts"}
    assert set(sd.shapes) == {"cell_boundaries", "nucleus_boundaries"}
    assert set(sd.tables) == {"table"}
    assert set(sd.coordinate_systems) == {"global", "pixels"}

    # labels: identical to the zarr masks, lazily read, placed in µm
    raw = zarr_arrays(path)
    for name, key in (("nucleus_labels", "masks/0"), ("cell_labels", "masks/1")):
        level0 = raster_levels(sd[name])[0]
        np.testing.assert_array_equal(level0.values, raw[key])
        assert get_transformation(sd[name], "global").to_affine_matrix(("y", "x"), ("y", "x"))[0, 0] == PS
        assert np.allclose(
            get_transformation(sd[name], "pixels").to_affine_matrix(("y", "x"), ("y", "x")), np.eye(3)
        )

    # cell ids: decoded from the zarr pairs (>= 1.3) or integers (< 1.3), equal to cells.parquet
    cells = pq.read_table(path / "cells.parquet").to_pandas()
    if v >= (1, 3, 0):
        expected_ids = [slow_cell_id(int(p), int(s)) for p, s in raw["cell_id"]]
        assert cells["cell_id"].tolist() == expected_ids
    else:
        expected_ids = raw["cell_id"].astype(np.int64).tolist()

    # table: counts, obs, links
    table = sd["table"]
    barcodes, names, types, dense, _ = h5_dense(path / "cell_feature_matrix.h5")
    genes = [i for i, t in enumerate(types) if t == "Gene Expression"]
    assert table.shape == (6, len(genes))
    assert table.obs_names.tolist() == barcodes == [str(i) for i in expected_ids]
    assert table.var_names.tolist() == [names[i] for i in genes]
    np.testing.assert_array_equal(np.asarray(table.X.todense()), dense[:, genes])
    np.testing.assert_allclose(table.obsm["spatial"], cells[["x_centroid", "y_centroid"]].to_numpy())
    assert "x_centroid" not in table.obs.columns
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "cell_labels" and attrs["region_key"] == "region"
    if v >= (1, 3, 0):
        assert attrs["instance_key"] == "cell_labels"
        assert table.obs["cell_labels"].tolist() == [1, 2, 3, 4, 5, 6]
        assert "z_level" in table.obs.columns
        # each cell's label covers its centroid in the mask
        px = (table.obsm["spatial"] / PS).astype(int)
        assert raw["masks/1"][px[:, 1], px[:, 0]].tolist() == table.obs["cell_labels"].tolist()
    else:
        assert attrs["instance_key"] == "cell_id"
        assert table.obs["cell_id"].tolist() == [1, 2, 3, 4, 5, 6]
    if v >= (2, 0, 0):
        assert table.obs["nucleus_count"].tolist() == [1, 1, 2, 1, 0, 1]

    # transcripts: every row, values equal to the file, µm with a pixel frame
    points = sd["transcripts"]
    tx = pq.read_table(path / "transcripts.parquet").to_pandas()
    got = points.compute()
    assert len(got) == len(tx) == get_meta(points).n_rows
    np.testing.assert_array_equal(got["x"].to_numpy(), tx["x_location"].to_numpy())
    np.testing.assert_array_equal(got["y"].to_numpy(), tx["y_location"].to_numpy())
    np.testing.assert_array_equal(got["z"].to_numpy(), tx["z_location"].to_numpy())
    np.testing.assert_array_equal(got["qv"].to_numpy(), tx["qv"].to_numpy())
    assert got["feature_name"].astype(str).tolist() == decode(tx["feature_name"])
    assert [str(x) for x in got["cell_id"].tolist()] == [str(x) for x in decode(tx["cell_id"])]
    assert isinstance(got["feature_name"].dtype, pd.CategoricalDtype)
    meta = get_meta(points)
    assert meta.feature_key == "feature_name" and meta.instance_key == "cell_id"
    assert np.allclose(affine_xy(points, "global"), np.eye(3))
    assert np.allclose(affine_xy(points, "pixels"), np.diag([1 / PS, 1 / PS, 1]))
    if v >= (3, 0, 0):
        assert {"codeword_category", "is_gene", "codeword_index"} <= set(got.columns)

    # boundaries: cell polygons by cell id, bounds equal to the vertices of the file
    cb = sd["cell_boundaries"]
    assert [str(i) for i in cb.index] == [str(i) for i in expected_ids]
    assert cb.index.name == "cell_id"
    verts = pq.read_table(path / "cell_boundaries.parquet").to_pandas()
    verts["cell_id"] = [str(x) for x in decode(verts["cell_id"])]
    lo = verts.groupby("cell_id", sort=False)[["vertex_x", "vertex_y"]].min()
    np.testing.assert_allclose(
        shapely.bounds(cb.geometry.values)[:, :2], lo.loc[[str(i) for i in cb.index]].to_numpy()
    )
    nb = sd["nucleus_boundaries"]
    if v >= (2, 0, 0):
        # one polygon per nucleus, indexed by its raster label; cell 2 has two nuclei, cell 4 none
        assert nb.index.tolist() == [1, 2, 3, 4, 5, 6]
        assert nb["cell_id"].tolist() == [expected_ids[i] for i in raw["nucleus_owner"]]
        assert (
            nb["cell_id"].tolist().count(expected_ids[2]) == 2
            and expected_ids[4] not in nb["cell_id"].tolist()
        )
        centroids = shapely.centroid(nb.geometry.values)
        px = (shapely.get_coordinates(centroids) / PS).astype(int)
        assert raw["masks/0"][px[:, 1], px[:, 0]].tolist() == nb.index.tolist()
    else:
        assert [str(i) for i in nb.index] == [str(i) for i in expected_ids]
    assert np.allclose(affine_xy(nb, "pixels"), np.diag([1 / PS, 1 / PS, 1]))

    # images: channel names per layout, µm placement, pixel values of the files
    focus = sd["morphology_focus"]
    channels = list(raster_levels(focus)[0].coords["c"].values)
    assert channels == (FOCUS_4 if v >= (2, 0, 0) else ["DAPI"])
    if v >= (2, 0, 0):
        files = sorted((path / "morphology_focus").glob("*.ome.tif"))
        with tifffile.TiffFile(files[1]) as tf:
            plane = tf.pages[0].asarray()
        np.testing.assert_array_equal(raster_levels(focus)[0].values[1], plane)
        if v >= (4, 0, 0):
            assert files[0].name == "ch0000_dapi.ome.tif"
    else:
        with tifffile.TiffFile(path / "morphology_mip.ome.tif") as tf:
            np.testing.assert_array_equal(
                raster_levels(sd["morphology_mip"])[0].values[0], tf.pages[0].asarray()
            )
    scale = get_transformation(focus, "global").to_affine_matrix(("y", "x"), ("y", "x"))
    assert np.allclose(scale, np.diag([PS, PS, 1]))

    he = sd["he_image"]
    assert list(raster_levels(he)[0].coords["c"].values) == ["r", "g", "b"]
    alignment = np.loadtxt(path / "Synthetic_he_imagealignment.csv", delimiter=",")
    assert np.allclose(affine_xy(he, "pixels"), alignment)
    assert np.allclose(affine_xy(he, "global"), np.diag([PS, PS, 1]) @ alignment)


def test_stream_order_puts_the_table_after_what_it_annotates(bundles):
    names = [name for name, _ in iter_xenium(bundles["4.0.0"])]
    assert names.index("table") == len(names) - 1
    assert names.index("cell_labels") < names.index("table")
    assert len(names) == len(set(names))


# ------------------------------------------------------------------------------------------------ variants


def test_binary_strings_are_decoded(bundles, read):
    sd = read("binary")
    cells = pq.read_table(bundles["binary"] / "cells.parquet")
    assert pa.types.is_binary(cells.schema.field("cell_id").type)
    ids = decode(cells.column("cell_id").to_pylist())
    assert sd["table"].obs_names.tolist() == ids
    assert sd["cell_boundaries"].index.tolist() == ids
    tx = sd["transcripts"].compute()
    assert set(tx["cell_id"].astype(str)) <= set(ids) | {"UNASSIGNED"}
    assert all(isinstance(c, str) for c in tx["feature_name"].cat.categories)


def test_early_2_0_nuclei_without_label_id_are_split_into_labelled_rings(bundles, read):
    path = bundles["early"]
    assert "label_id" not in pq.read_schema(path / "nucleus_boundaries.parquet").names
    nb = read("early")["nucleus_boundaries"]
    raw = zarr_arrays(path)
    assert nb.index.tolist() == [1, 2, 3, 4, 5, 6]
    assert (shapely.get_type_id(nb.geometry.values) == 3).all()  # polygons, not degenerate concatenations
    assert shapely.is_valid(nb.geometry.values).all()
    px = (shapely.get_coordinates(shapely.centroid(nb.geometry.values)) / PS).astype(int)
    assert raw["masks/0"][px[:, 1], px[:, 0]].tolist() == [1, 2, 3, 4, 5, 6]


def test_rings_that_do_not_match_the_zarr_become_multipolygons(bundles, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(bundles["early"], path)
    table = pq.read_table(path / "nucleus_boundaries.parquet")
    pq.write_table(table.slice(5), path / "nucleus_boundaries.parquet")  # the first nucleus is gone
    with pytest.warns(UserWarning, match="MultiPolygon"):
        sd = xenium(path, transcripts=False, morphology_focus=False, aligned_images=False, cells_table=False)
    nb = sd["nucleus_boundaries"]
    assert nb.index.name == "cell_id" and len(nb) == 4
    types = shapely.get_type_id(nb.geometry.values)
    assert sorted(types.tolist()) == [3, 3, 3, 6]  # the two-nucleus cell is one MultiPolygon
    assert shapely.get_num_geometries(nb.geometry.values[types == 6])[0] == 2


def test_protein_if_image_and_missing_boundary(bundles, read):
    path = bundles["protein"]
    sd = read("protein")
    _, _, types, dense, attrs = h5_dense(path / "cell_feature_matrix.h5")
    scale = float(attrs["protein_scaling_factor"])
    table = sd["table"]
    protein = [i for i, t in enumerate(types) if t == "Protein Expression"]
    genes = [i for i, t in enumerate(types) if t == "Gene Expression"]
    assert len(protein) == 3 and table.n_vars == len(genes) + 3
    x = np.asarray(table.X.todense())
    np.testing.assert_allclose(x[:, -3:], dense[:, protein] / scale, rtol=1e-6)
    np.testing.assert_array_equal(x[:, : len(genes)], dense[:, genes])
    # protein channels in the focus image, named from the OME-XML of the first file
    channels = list(raster_levels(sd["morphology_focus"])[0].coords["c"].values)
    assert channels == [*FOCUS_4, "CD45", "VISTA", "PanCK"]
    # the IF image: channel names from its OME-XML, placed by its own alignment CSV
    assert list(raster_levels(sd["if_image"])[0].coords["c"].values) == ["CD20", "CD3"]
    alignment = np.loadtxt(path / "Synthetic_if_imagealignment.csv", delimiter=",")
    assert np.allclose(affine_xy(sd["if_image"], "pixels"), alignment)
    # cell row 1 has no polygon in the parquet: the others keep their own ids (mapped through label_id)
    cb = sd["cell_boundaries"]
    ids = table.obs_names.tolist()
    assert cb.index.tolist() == [ids[i] for i in (0, 2, 3, 4, 5)]


@pytest.mark.parametrize("feature_types", [(), None])
def test_feature_types_option_and_all_features(bundles, feature_types):
    path = bundles["3.1.0"]
    _, names, _, dense, _ = h5_dense(path / "cell_feature_matrix.h5")
    sd = xenium(
        path, feature_types=feature_types, transcripts=False, morphology_focus=False, aligned_images=False
    )
    assert sd["table"].var_names.tolist() == names
    assert "Genomic Control" in set(sd["table"].var["feature_types"])
    np.testing.assert_array_equal(np.asarray(sd["table"].X.todense()), dense)


@pytest.mark.parametrize("version", ["1.7.1", "3.1.0", "4.0.0"])
def test_control_codewords_leave_x_for_obsm_by_default(bundles, tmp_path, version):
    """Issue 17 item 6: control probes and codewords are not genes; their counts move to obsm, one DataFrame per
    feature type, with an option to keep them in X."""
    path = bundles[version]
    _, names, types, dense, _ = h5_dense(path / "cell_feature_matrix.h5")
    kw = dict(transcripts=False, morphology_focus=False, aligned_images=False)
    table = xenium(path, **kw)["table"]
    genes = [n for n, t in zip(names, types, strict=True) if t == "Gene Expression"]
    assert table.var_names.tolist() == genes
    assert not any(
        n.startswith(("NegControl", "Unassigned", "Deprecated", "Genomic")) for n in table.var_names
    )
    controls = {t for t in types if t != "Gene Expression"}
    expected_keys = {t.lower().replace(" ", "_") for t in controls}
    assert expected_keys <= set(table.obsm) and "negative_control_probe" in table.obsm
    for feature_type in controls:
        frame = table.obsm[feature_type.lower().replace(" ", "_")]
        cols = [i for i, t in enumerate(types) if t == feature_type]
        assert frame.columns.tolist() == [names[i] for i in cols]
        assert frame.index.equals(table.obs_names)
        np.testing.assert_array_equal(frame.to_numpy(), dense[:, cols])
        assert frame.dtypes.iloc[0].kind == "u"
    # the per-type DataFrames survive a store round trip in both formats
    sdata = xenium(path, **kw)
    for zarr_format in (3, 2):
        out = tmp_path / f"x{zarr_format}.zarr"
        sdata.write(out, zarr_format=zarr_format)
        back = read_zarr(out)["table"].obsm["negative_control_probe"]
        pd.testing.assert_frame_equal(back, table.obsm["negative_control_probe"])
    # kept as genes on request, or dropped
    as_genes = xenium(path, control_features="X", **kw)["table"]
    assert as_genes.var_names.tolist() == names and "negative_control_probe" not in as_genes.obsm
    np.testing.assert_array_equal(np.asarray(as_genes.X.todense()), dense)
    dropped = xenium(path, control_features="drop", **kw)["table"]
    assert dropped.var_names.tolist() == genes and set(dropped.obsm) == {"spatial"}
    with pytest.raises(ValueError, match=r"control_features must be one of \('obsm', 'X', 'drop'\)"):
        xenium(path, control_features="elsewhere", **kw)


def test_single_channel_focus_and_no_aligned_image(read):
    sd = read("dapi_only")
    assert list(raster_levels(sd["morphology_focus"])[0].coords["c"].values) == ["DAPI"]
    assert "he_image" not in sd


def test_cells_as_circles_annotated_by_the_table(bundles):
    path = bundles["2.0.0"]
    sd = xenium(path, cells_as_circles=True, transcripts=False, morphology_focus=False, aligned_images=False)
    circles = sd["cell_circles"]
    cells = pq.read_table(path / "cells.parquet").to_pandas()
    assert circles.index.tolist() == cells["cell_id"].tolist()
    np.testing.assert_allclose(circles["radius"].to_numpy(), np.sqrt(cells["cell_area"].to_numpy() / np.pi))
    np.testing.assert_allclose(
        shapely.get_coordinates(circles.geometry.values), cells[["x_centroid", "y_centroid"]]
    )
    attrs = sd["table"].uns["spatialdata_attrs"]
    assert attrs["region"] == "cell_circles" and attrs["instance_key"] == "cell_id"
    assert (sd["table"].obs["region"] == "cell_circles").all()


def test_table_falls_back_to_the_boundaries_without_labels(bundles):
    sd = xenium(bundles["2.0.0"], cell_labels=False, transcripts=False, morphology_focus=False)
    attrs = sd["table"].uns["spatialdata_attrs"]
    assert attrs["region"] == "cell_boundaries" and attrs["instance_key"] == "cell_id"
    assert set(sd["table"].obs["cell_id"]) == set(sd["cell_boundaries"].index)


def test_without_cells_zarr_the_table_annotates_the_boundaries(bundles, tmp_path):
    path = tmp_path / "nozarr"
    shutil.copytree(bundles["1.7.1"], path)
    (path / "cells.zarr.zip").unlink()
    sd = xenium(path, cell_labels=False, nucleus_labels=False, transcripts=False, aligned_images=False)
    attrs = sd["table"].uns["spatialdata_attrs"]
    assert attrs["region"] == "cell_boundaries" and attrs["instance_key"] == "cell_id"
    assert "cell_labels" not in sd["table"].obs.columns
    assert sd["cell_boundaries"].index.tolist() == sd["table"].obs["cell_id"].tolist()


def test_label_id_without_cells_zarr_keeps_one_polygon_per_nucleus(bundles, tmp_path):
    path = tmp_path / "nozarr2"
    shutil.copytree(bundles["2.0.0"], path)
    (path / "cells.zarr.zip").unlink()
    sd = xenium(path, cell_labels=False, nucleus_labels=False, transcripts=False, morphology_focus=False)
    nb = sd["nucleus_boundaries"]
    ids = sd["table"].obs_names.tolist()
    assert nb.index.tolist() == [1, 2, 3, 4, 5, 6]
    assert nb["cell_id"].tolist() == [ids[i] for i in (0, 1, 2, 2, 3, 5)]
    assert sd["cell_boundaries"].index.tolist() == ids


def test_macos_metadata_files_are_ignored(bundles, tmp_path):
    path = tmp_path / "mac"
    shutil.copytree(bundles["4.0.0"], path)
    (path / "morphology_focus" / "._ch0000_dapi.ome.tif").write_bytes(b"AppleDouble")
    (path / "._Synthetic_he_image.ome.tif").write_bytes(b"AppleDouble")
    sd = xenium(path, transcripts=False, cells_table=False)
    assert list(raster_levels(sd["morphology_focus"])[0].coords["c"].values) == FOCUS_4
    assert set(sd.images) == {"morphology_focus", "he_image"}


def test_min_qv_filters_rows_while_reading(bundles):
    path = bundles["4.0.0"]
    tx = pq.read_table(path / "transcripts.parquet").to_pandas()
    sd = xenium(path, min_qv=25.0, morphology_focus=False, aligned_images=False)
    got = sd["transcripts"].compute()
    keep = np.flatnonzero(tx["qv"].to_numpy() >= 25.0)
    assert 0 < len(got) == len(keep) < len(tx)
    assert got.index.tolist() == keep.tolist()  # rows keep their position in the file
    np.testing.assert_array_equal(got["x"].to_numpy(), tx["x_location"].to_numpy()[keep])


def test_skipping_elements(bundles):
    sd = xenium(
        bundles["1.7.1"],
        cell_labels=False,
        nucleus_labels=False,
        transcripts=False,
        morphology_focus=False,
        morphology_mip=False,
        aligned_images=False,
        cell_boundaries=False,
        nucleus_boundaries=False,
        cells_table=False,
    )
    assert len(sd) == 0
    sd = xenium(bundles["1.7.1"], pixel_coordinate_system=None, transcripts=False, cells_table=False)
    assert sd.coordinate_systems == ["global"]


def test_transcripts_partitions_follow_row_groups(tmp_path):
    path = write_xenium(tmp_path / "b", version="4.0.0", n_cells=30, n_transcripts=2500, row_group_size=300)
    import tissuestack.io._xenium_transcripts as module

    original = module._PARTITION_ROWS
    module._PARTITION_ROWS = 700  # two row groups per partition
    try:
        points = xenium(path, morphology_focus=False, aligned_images=False, cells_table=False)["transcripts"]
    finally:
        module._PARTITION_ROWS = original
    # 9 row groups (8 x 300 + 100), whole row groups of at most 700 rows per partition
    assert points.divisions == (0, 600, 1200, 1800, 2499)
    assert [len(points.partitions[i]) for i in range(4)] == [600, 600, 600, 700]
    got = points[["x", "feature_name"]].compute()  # projected read
    tx = pq.read_table(path / "transcripts.parquet", columns=["x_location"]).column(0).to_numpy()
    np.testing.assert_array_equal(got["x"].to_numpy(), tx)
    assert got.index.tolist() == list(range(2500))


# ------------------------------------------------------------------------------------------------ versions


def test_xenium_ranger_version_is_used(tmp_path):
    path = write_xenium(
        tmp_path / "r", version="2.0.0", software_version="xenium-1.6.0.7", ranger_version="xenium-3.0.1.1"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 3.0.1 matches the 2.x files: no mismatch warning
        sd = xenium(path, transcripts=False, aligned_images=False)
    assert sd["nucleus_boundaries"].index.tolist() == [1, 2, 3, 4, 5, 6]


def test_unparseable_or_contradicting_version_reads_by_the_files(tmp_path):
    path = write_xenium(tmp_path / "x", version="2.0.0", software_version="xenium-experimental")
    with pytest.warns(UserWarning, match="cannot parse the software version 'xenium-experimental'"):
        sd = xenium(path, transcripts=False)
    assert list(raster_levels(sd["morphology_focus"])[0].coords["c"].values) == FOCUS_4
    assert sd["table"].obs["cell_labels"].tolist() == [1, 2, 3, 4, 5, 6]
    path = write_xenium(tmp_path / "y", version="2.0.0", software_version="xenium-1.5.0.3")
    with pytest.warns(UserWarning, match="says XOA 1.5.0 but cells.zarr.zip has the XOA >= 2.0 layout"):
        sd = xenium(path, transcripts=False)
    assert len(sd["nucleus_boundaries"]) == 6


def test_future_version_warns_and_reads(tmp_path):
    path = write_xenium(tmp_path / "f", version="4.0.0", software_version="xenium-9.1.0.2")
    with pytest.warns(UserWarning, match="newer than the layouts"):
        sd = xenium(path, transcripts=False)
    assert "morphology_focus" in sd


# ------------------------------------------------------------------------------------------------ errors


def _copy(bundles, key: str, tmp_path: Path) -> Path:
    path = tmp_path / key
    shutil.copytree(bundles[key], path)
    return path


def test_missing_folder_and_specs(bundles, tmp_path):
    with pytest.raises(ReaderError, match="does not exist"):
        xenium(tmp_path / "nowhere")
    path = _copy(bundles, "4.0.0", tmp_path)
    (path / "experiment.xenium").unlink()
    with pytest.raises(ReaderError, match=r"experiment\.xenium .* is missing"):
        xenium(path)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"pixel_size": -1}), json.dumps([1, 2])])
def test_bad_specs(bundles, tmp_path, content):
    path = _copy(bundles, "4.0.0", tmp_path)
    (path / "experiment.xenium").write_text(content)
    with pytest.raises(ReaderError, match=r"experiment\.xenium"):
        xenium(path)


def test_missing_cells_zarr_names_the_file_and_the_option(bundles, tmp_path):
    path = _copy(bundles, "4.0.0", tmp_path)
    (path / "cells.zarr.zip").unlink()
    with pytest.raises(ReaderError, match=r"cells\.zarr\.zip .* is missing; pass cell_labels=False"):
        xenium(path)


def test_truncated_files(bundles, tmp_path):
    path = _copy(bundles, "4.0.0", tmp_path)
    data = (path / "transcripts.parquet").read_bytes()
    (path / "transcripts.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match=r"transcripts\.parquet.*not a readable Parquet"):
        xenium(path, morphology_focus=False, aligned_images=False)
    data = (path / "cells.zarr.zip").read_bytes()
    (path / "cells.zarr.zip").write_bytes(data[: len(data) // 3])
    with pytest.raises(ReaderError, match=r"cells\.zarr\.zip"):
        xenium(path, transcripts=False)


def test_wrong_columns(bundles, tmp_path):
    path = _copy(bundles, "4.0.0", tmp_path)
    table = pq.read_table(path / "transcripts.parquet").drop_columns(["x_location"])
    pq.write_table(table, path / "transcripts.parquet")
    with pytest.raises(ReaderError, match=r"transcripts\.parquet.*missing column\(s\) \['x_location'\]"):
        xenium(path, morphology_focus=False, aligned_images=False)
    table = pq.read_table(path / "cell_boundaries.parquet").drop_columns(["label_id", "cell_id"])
    pq.write_table(table, path / "cell_boundaries.parquet")
    with pytest.raises(ReaderError, match=r"cell_boundaries\.parquet.*expected 'label_id'"):
        xenium(path, transcripts=False, morphology_focus=False, aligned_images=False)


def test_non_contiguous_polygons(bundles, tmp_path):
    path = _copy(bundles, "1.7.1", tmp_path)
    table = pq.read_table(path / "cell_boundaries.parquet")
    order = np.r_[0:3, 5:10, 3:5, 10 : table.num_rows]
    pq.write_table(table.take(order), path / "cell_boundaries.parquet")
    with pytest.raises(ReaderError, match="not contiguous"):
        xenium(path, transcripts=False, morphology_focus=False, aligned_images=False)


def test_unknown_cell_id_layout(bundles, tmp_path):
    path = _copy(bundles, "4.0.0", tmp_path)
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(path / "cells.zarr.zip") as zf:
        zf.extractall(folder)
    group = zarr.open_group(str(folder), mode="a", zarr_format=2)
    del group["cell_id"]
    group.create_array("cell_id", data=np.ones((6, 3), dtype=np.uint32))
    with zipfile.ZipFile(path / "cells.zarr.zip", "w") as zf:
        for f in folder.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    with pytest.raises(ReaderError, match=r"cell_id has shape \(6, 3\).*experiment.xenium says XOA 4.0.0"):
        xenium(path)


def test_bad_alignment_and_focus_files(bundles, tmp_path):
    path = _copy(bundles, "4.0.0", tmp_path)
    (path / "Synthetic_he_imagealignment.csv").write_text("1,0\n0,1\n")
    with pytest.raises(ReaderError, match=r"Synthetic_he_imagealignment\.csv.*3x3"):
        xenium(path, transcripts=False)
    path = _copy(bundles, "2.0.0", tmp_path)
    (path / "morphology_focus" / "morphology_focus_0003.ome.tif").unlink()
    with pytest.raises(ReaderError, match="describes 4 channel"):
        xenium(path, transcripts=False, aligned_images=False)
    (path / "morphology_focus" / "morphology_focus_0002.ome.tif").rename(
        path / "morphology_focus" / "morphology_focus_0005.ome.tif"
    )
    with pytest.raises(ReaderError, match="without gaps"):
        xenium(path, transcripts=False, aligned_images=False)


def test_matrix_and_cells_disagree(bundles, tmp_path):
    path = _copy(bundles, "2.0.0", tmp_path)
    cells = pq.read_table(path / "cells.parquet")
    pq.write_table(cells.slice(1), path / "cells.parquet")
    with pytest.raises(
        ReaderError, match=r"cell_feature_matrix\.h5 has 6 barcodes and cells\.parquet 5 cells"
    ):
        xenium(path, transcripts=False, morphology_focus=False, aligned_images=False)


# ------------------------------------------------------------------------------------------------ round trips


def test_write_then_read_zarr(bundles, read, tmp_path):
    sd = read("2.0.0")
    sd.write(tmp_path / "x.zarr")
    back = read_zarr(tmp_path / "x.zarr")
    assert set(back) == set(sd)
    assert back["table"].shape == sd["table"].shape
    assert len(back["transcripts"]) == len(sd["transcripts"])
    np.testing.assert_array_equal(
        raster_levels(back["cell_labels"])[0].values, raster_levels(sd["cell_labels"])[0].values
    )
    assert back["nucleus_boundaries"].index.tolist() == [1, 2, 3, 4, 5, 6]


def test_streaming_convert(bundles, tmp_path):
    out = convert("xenium", bundles["1.0.2"], tmp_path / "c.zarr")
    back = read_zarr(out)
    assert {"cell_labels", "morphology_mip", "transcripts", "table"} <= set(back)
    assert back["table"].uns["spatialdata_attrs"]["instance_key"] == "cell_id"


def test_computes_from_worker_threads_use_one_thread_per_core():
    """Elements are written from worker threads; dask's own default there would be cores + 4 threads (each
    holding a transcripts partition), which oversubscribed the cores and raised the conversion's peak memory."""
    import threading
    import time

    import dask
    import dask.system

    from tissuestack._compute import scheduler

    lock = threading.Lock()
    running, peak = [0], [0]

    def task(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i

    def compute():
        tasks = [dask.delayed(task)(i) for i in range(4 * dask.system.CPU_COUNT + 8)]
        dask.compute(*tasks, scheduler=scheduler())

    worker = threading.Thread(target=compute)
    worker.start()
    worker.join()
    assert 1 <= peak[0] <= dask.system.CPU_COUNT


# ------------------------------------------------------------------------------------------------ reference


REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import numpy as np
    from spatialdata_io import xenium
    out = {}
    for path in sys.argv[1:]:
        sd = xenium(path)
        labels = np.asarray(sd["cell_labels"]["scale0"]["image"].values)
        out[path] = {
            "elements": sorted(sd.images) + sorted(sd.labels) + sorted(sd.points) + sorted(sd.shapes) + sorted(sd.tables),
            "table_shape": list(sd["table"].shape),
            "instance_key": sd["table"].uns["spatialdata_attrs"]["instance_key"],
            "n_transcripts": int(len(sd["transcripts"])),
            "cell_index": [str(i) for i in sd["cell_boundaries"].index],
            "nucleus_index": [str(i) for i in sd["nucleus_boundaries"].index],
            "labels_sum": int(labels.astype(np.int64).sum()),
            "focus_channels": [str(c) for c in sd["morphology_focus"]["scale0"]["image"].coords["c"].values],
        }
    print(json.dumps(out))
    """
)


@needs_reference
def test_same_result_as_the_reference_reader(bundles, read):
    paths = [str(bundles[v]) for v in LAYOUTS]
    theirs = run_reference(REFERENCE_SCRIPT, *paths)
    for version, path in zip(LAYOUTS, paths, strict=True):
        sd = read(version)
        ref = theirs[path]
        ours = (
            sorted(sd.images) + sorted(sd.labels) + sorted(sd.points) + sorted(sd.shapes) + sorted(sd.tables)
        )
        assert ours == ref["elements"], version
        assert list(sd["table"].shape) == ref["table_shape"], version
        assert sd["table"].uns["spatialdata_attrs"]["instance_key"] == ref["instance_key"], version
        assert len(sd["transcripts"]) == ref["n_transcripts"], version
        assert [str(i) for i in sd["cell_boundaries"].index] == ref["cell_index"], version
        assert [str(i) for i in sd["nucleus_boundaries"].index] == ref["nucleus_index"], version
        labels = raster_levels(sd["cell_labels"])[0].values
        assert int(labels.astype(np.int64).sum()) == ref["labels_sum"], version
        if tuple(int(x) for x in version.split(".")) >= (2, 0, 0):
            assert list(raster_levels(sd["morphology_focus"])[0].coords["c"].values) == ref["focus_channels"]
