"""The Curio Seeker (Slide-seq) reader against synthetic Curio folders."""

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
from tissuestack.errors import ReaderError
from tissuestack.io import curio, get_technology
from tissuestack.io._curio import iter_curio
from tissuestack.io.fake import write_curio
from tissuestack.io.fake._curio import CURIO_METRICS

SAMPLE = "sample1"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_curio(tmp_path_factory.mktemp("curio"), sample=SAMPLE, seed=3)


@pytest.fixture(scope="module")
def sdata(folder):
    return curio(folder)


def _file(folder: Path, suffix: str) -> Path:
    return folder / f"{SAMPLE}_{suffix}"


def test_elements_shapes_and_ids(folder, sdata):
    assert set(sdata.shapes) == {"cells"} and set(sdata.tables) == {"table"}
    raw = ad.read_h5ad(_file(folder, "anndata.h5ad"))
    cells = sdata["cells"]
    assert cells.index.tolist() == raw.obs_names.tolist()
    np.testing.assert_allclose(shapely.get_coordinates(cells.geometry), raw.obsm["spatial"])
    np.testing.assert_array_equal(cells["radius"].to_numpy(), np.full(raw.n_obs, 10.0))
    np.testing.assert_array_equal(affine_xy(cells, "global"), np.eye(3))
    assert sorted(sdata.coordinate_systems) == ["global"]


def test_table_links_clusters_and_annotations(folder, sdata):
    table = sdata["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == ("cells", "region", "instance_id")
    assert table.obs["instance_id"].tolist() == sdata["cells"].index.tolist()
    assert set(table.obs["region"].astype(str)) == {"cells"}
    raw = ad.read_h5ad(_file(folder, "anndata.h5ad"))
    np.testing.assert_array_equal(np.asarray(table.X), np.asarray(raw.X))
    assert "X_spatial" not in table.obsm
    # clusters come from the (shuffled) assignment file, matched by barcode
    lines = _file(folder, "cluster_assignment.txt").read_text().split()
    expected = dict(zip(lines[0::2], map(int, lines[1::2]), strict=True))
    assert list(expected) != table.obs_names.tolist()  # the file is not in obs order
    assert table.obs["cluster"].dtype.name == "category"
    assert table.obs["cluster"].astype(int).tolist() == [expected[b] for b in table.obs_names]
    # metrics by category, numbers as numbers
    for metric, value, category in CURIO_METRICS:
        got = table.uns[category][metric]
        assert str(got) == value and (isinstance(got, str) or not isinstance(got, bool))
    assert table.uns["Beads"]["Number_of_beads"] == 12 and table.uns["Sequencing"]["Fraction_mapped"] == 0.87
    markers = table.uns["Top_cluster_defining_features"]
    pd.testing.assert_frame_equal(
        markers.reset_index(drop=True),
        pd.read_csv(_file(folder, "variable_features_clusters.txt"), sep="\t"),
        check_dtype=False,
    )
    # Moran's I joined into var (genes without it are NaN)
    moransi = table.var["MoransI_observed"]
    assert np.isnan(moransi["Actb"]) and moransi["Malat1"] == pytest.approx(0.5)
    assert moransi["Plp1"] == pytest.approx(0.1667)
    assert table.var["gene_ids"].tolist() == raw.var["gene_ids"].tolist()


def test_options(folder):
    s = curio(folder, dataset_id=SAMPLE, bead_radius=2.5, units_per_um=1.5456)
    np.testing.assert_array_equal(s["cells"]["radius"].to_numpy(), 2.5)
    np.testing.assert_allclose(affine_xy(s["cells"], "microns"), np.diag([1 / 1.5456, 1 / 1.5456, 1]))
    assert sorted(s.coordinate_systems) == ["global", "microns"]
    with pytest.raises(ReaderError, match="bead_radius must be a positive number"):
        curio(folder, bead_radius=0)
    with pytest.raises(ReaderError, match="units_per_um must be a positive number"):
        curio(folder, units_per_um=-1.0)
    with pytest.raises(ReaderError, match=re.escape("Curio file(s) ['other_anndata.h5ad'")):
        curio(folder, dataset_id="other")


def test_write_order_and_registry(folder):
    tech = get_technology("curio")
    assert tech.iter_elements is iter_curio
    assert [name for name, _ in tech.iter_elements(folder)] == ["cells", "table"]


def test_cli_convert_and_read_back(tmp_path, folder, sdata):
    out = tmp_path / "curio.zarr"
    assert main(["convert", "curio", str(folder), str(out), "--units-per-um", "2", "--no-progress"]) == 0
    assert main(["validate", str(out)]) == 0
    back = read_zarr(out)
    assert back["cells"].index.tolist() == sdata["cells"].index.tolist()
    np.testing.assert_allclose(
        shapely.get_coordinates(back["cells"].geometry), shapely.get_coordinates(sdata["cells"].geometry)
    )
    np.testing.assert_allclose(affine_xy(back["cells"], "microns"), np.diag([0.5, 0.5, 1]))
    table = back["table"]
    np.testing.assert_array_equal(np.asarray(table.X), np.asarray(sdata["table"].X))
    assert table.obs["cluster"].astype(int).tolist() == sdata["table"].obs["cluster"].astype(int).tolist()
    assert table.obs["instance_id"].tolist() == sdata["table"].obs["instance_id"].tolist()
    assert table.uns["spatialdata_attrs"]["region"] == "cells"
    assert table.uns["Beads"]["Number_of_beads"] == 12
    assert table.uns["Top_cluster_defining_features"].shape == (4, 7)


# ------------------------------------------------------------------------------------------------ malformed input
@pytest.fixture
def copy(tmp_path, folder) -> Path:
    path = tmp_path / "curio"
    shutil.copytree(folder, path)
    return path


def test_missing_files_and_samples(copy):
    with pytest.raises(ReaderError, match="not a directory; expected a Curio Seeker output folder"):
        curio(copy / "nothing")
    shutil.copy(_file(copy, "anndata.h5ad"), copy / "second_anndata.h5ad")
    with pytest.raises(ReaderError, match=re.escape("several Curio samples ['sample1', 'second']")):
        curio(copy)
    (copy / "second_anndata.h5ad").unlink()
    _file(copy, "Metrics.csv").unlink()
    with pytest.raises(ReaderError, match=re.escape("Curio file(s) ['sample1_Metrics.csv'] not found")):
        curio(copy)
    for f in copy.iterdir():
        f.unlink()
    with pytest.raises(ReaderError, match=re.escape("no <sample>_anndata.h5ad")):
        curio(copy)


def test_cluster_assignment_errors(copy):
    file = _file(copy, "cluster_assignment.txt")
    good = file.read_text()
    lines = good.splitlines()
    file.write_text("\n".join([*lines[:-1], lines[-1] + "\textra"]) + "\n")
    with pytest.raises(ReaderError, match=r"cluster_assignment.txt: cannot read the cluster assignment"):
        curio(copy)
    file.write_text("\n".join(line.split("\t")[0] for line in good.splitlines()) + "\n")
    with pytest.raises(
        ReaderError, match=r"cluster_assignment.txt: the cluster assignment has 1 column\(s\)"
    ):
        curio(copy)
    file.write_text("\n".join([*lines[1:], "NOTABEAD\t1"]) + "\n")
    with pytest.raises(
        ReaderError, match=r"1 bead\(s\) without cluster .* 1 unknown barcode\(s\) \(e.g. \['NOTABEAD'\]"
    ):
        curio(copy)
    file.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ReaderError, match="are assigned twice"):
        curio(copy)


def test_table_file_errors(copy):
    metrics = _file(copy, "Metrics.csv")
    metrics.write_text("Metric,Value\nA,1\n")
    with pytest.raises(
        ReaderError, match=re.escape("Metrics.csv: the metrics have the columns ['Metric', 'Value']")
    ):
        curio(copy)
    metrics.write_text("Metric,Value,Category\nA,1,Beads\n")
    moransi = _file(copy, "variable_features_spatial_moransi.txt")
    good = moransi.read_text()
    moransi.write_text(good.replace("Malat1", "Unknown1"))
    with pytest.raises(
        ReaderError, match=re.escape("names gene(s) ['Unknown1'] that are not in the h5ad var")
    ):
        curio(copy)
    moransi.write_text("gene\t" + good)
    with pytest.raises(ReaderError, match="has no gene row names"):
        curio(copy)


def test_h5ad_errors(copy):
    file = _file(copy, "anndata.h5ad")
    adata = ad.read_h5ad(file)
    bad = adata.copy()
    bad.obsm["X_spatial"] = bad.obsm["X_spatial"] + 1
    bad.write_h5ad(file)
    with pytest.raises(
        ReaderError, match=r"anndata.h5ad: obsm\['X_spatial'\] differs from obsm\['spatial'\]"
    ):
        curio(copy)
    bad = adata.copy()
    del bad.obsm["spatial"]
    bad.write_h5ad(file)
    with pytest.raises(ReaderError, match=r"anndata.h5ad: no obsm\['spatial'\]"):
        curio(copy)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match=re.escape("anndata.h5ad: cannot read the Curio bead table")):
        curio(copy)


# ------------------------------------------------------------------------------------------------ reference
# spatialdata-io's curio() calls SpatialData(table=...), which spatialdata >= 0.7 rejects; the script patches that
# one call (tables={"table": ...}) and otherwise runs the reference reader unchanged. It also asserts that the
# cluster file is in obs order, so the fixture for it is written unshuffled.
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    import spatialdata
    import spatialdata_io.readers.curio as module

    def patched(table=None, **kwargs):
        return spatialdata.SpatialData(tables={"table": table}, **kwargs)

    module.SpatialData = patched
    s = module.curio(sys.argv[1])
    t = s.tables["table"]
    c = s.shapes["cells"]
    out = {
        "shapes": [c.index.tolist(), np.asarray(c.geometry.x).tolist(), np.asarray(c.geometry.y).tolist(),
                   c["radius"].tolist()],
        "table": [t.obs_names.tolist(), t.var_names.tolist(), list(t.shape), dict(t.uns["spatialdata_attrs"]),
                  t.obs["instance_id"].tolist(), t.obs["cluster"].astype(str).tolist(),
                  sorted(k for k in t.uns if k != "spatialdata_attrs")],
    }
    print(json.dumps(out))
    """
)


def test_matches_reference_reader(tmp_path):
    """Same beads, ids, radii, table shape, links and clusters as spatialdata-io's curio reader (patched as
    above; run in its own environment, skipped when absent)."""
    folder = write_curio(tmp_path / "c", sample=SAMPLE, shuffle_clusters=False, seed=3)
    ref = run_reference(_REFERENCE_SCRIPT, folder)
    s = curio(folder)
    index, x, y, radius = ref["shapes"]
    assert s["cells"].index.tolist() == index
    np.testing.assert_allclose(shapely.get_coordinates(s["cells"].geometry), np.column_stack([x, y]))
    assert s["cells"]["radius"].tolist() == radius
    obs_names, var_names, shape, attrs, instance_ids, clusters, uns_keys = ref["table"]
    t = s["table"]
    assert t.obs_names.tolist() == obs_names and t.var_names.tolist() == var_names and list(t.shape) == shape
    assert {k: t.uns["spatialdata_attrs"][k] for k in attrs} == attrs
    assert t.obs["instance_id"].tolist() == instance_ids
    assert t.obs["cluster"].astype(str).tolist() == clusters
    assert sorted(k for k in t.uns if k != "spatialdata_attrs") == uns_keys
