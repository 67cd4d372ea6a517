import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr

import tissuestack as ts
from tissuestack import datasets
from tissuestack.cli import main
from tissuestack.elements import get_meta, get_table_keys, raster_levels


@pytest.fixture(scope="module")
def small():
    return datasets.synthetic(n_cells=150, n_transcripts=5_000, n_genes=12, image_size=128, seed=3)


def test_every_kind_present(small):
    assert set(small.images) == {"morphology"}
    assert set(small.labels) == {"cell_labels"}
    assert set(small.points) == {"transcripts"}
    assert set(small.shapes) == {"cell_boundaries", "nuclei", "spots", "regions_of_interest"}
    assert set(small.tables) == {"table"}
    small.validate()


def test_sizes_scale_with_arguments(small):
    assert len(small["cell_boundaries"]) == 150
    assert small["table"].shape == (150, 12)
    pts = small["transcripts"]
    assert pts.npartitions == 4
    assert len(pts) == 5_000
    assert get_meta(pts).n_rows == 5_000
    assert raster_levels(small["morphology"])[0].shape == (3, 128, 128)
    assert [lvl.shape[1] for lvl in raster_levels(small["morphology"])] == [128, 64, 32]
    bigger = datasets.synthetic(n_cells=400, n_transcripts=100, n_genes=5, image_size=64)
    assert len(bigger["nuclei"]) == 400 and bigger["table"].n_vars == 5


def test_elements_are_consistent(small):
    # labels and table agree: every label id is a table instance
    labels = small["cell_labels"].values
    ids = set(np.unique(labels)) - {0}
    assert ids <= set(small["table"].obs["cell_id"])
    assert len(ids) > 100
    # counts in the table are the transcripts that fall inside cells
    pts = small["transcripts"].compute()
    assert int(small["table"].X.sum()) == int((pts["cell_id"] > 0).sum())
    # a label pixel centre in microns lies inside the polygon of that cell
    t = small.get_transformation_between("cell_labels", "cell_boundaries")
    yy, xx = np.nonzero(labels)
    pick = np.random.default_rng(0).choice(len(yy), 200)
    xy = t.apply(np.column_stack([xx[pick] + 0.5, yy[pick] + 0.5]), ("x", "y"))
    polys = small["cell_boundaries"].geometry.loc[labels[yy[pick], xx[pick]]].to_numpy()
    inside = shapely.contains_xy(shapely.buffer(polys, 0.6), xy[:, 0], xy[:, 1])
    assert inside.mean() > 0.95


def test_table_annotates_cells_and_string_ids_on_spots(small):
    region, region_key, instance_key = get_table_keys(small["table"])
    assert region == ["cell_boundaries"] and region_key == "region" and instance_key == "cell_id"
    assert small["spots"].index.dtype == object and small["spots"].index[0] == "spot00000"
    assert ts.get_transformation(small["morphology"], "pixels") == ts.Identity()


def test_tiny_tissue_still_has_every_element():
    tiny = datasets.synthetic(n_cells=1, n_transcripts=10, n_genes=2, image_size=8)
    assert len(tiny["spots"]) == 1 and len(tiny["cell_boundaries"]) == 1
    tiny.validate()


def test_same_seed_same_data():
    a = datasets.synthetic(n_cells=20, n_transcripts=300, n_genes=4, image_size=32, seed=7)
    b = datasets.synthetic(n_cells=20, n_transcripts=300, n_genes=4, image_size=32, seed=7)
    pd.testing.assert_frame_equal(a["transcripts"].compute(), b["transcripts"].compute())
    xr.testing.assert_equal(raster_levels(a["morphology"])[0], raster_levels(b["morphology"])[0])


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tissuestack {ts.__version__}"


def test_cli_demo(capsys):
    assert main(["demo", "--cells", "50", "--transcripts", "1000", "--genes", "5", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "SpatialData object: 7 spatial element(s), 1 table(s)" in out
    assert "'transcripts': dask DataFrame[xyz] 1,000 rows, 4 partitions" in out
    assert "labels pixel -> transcript micron coordinates" in out


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--cells", "0"])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_import_is_lazy():
    code = (
        "import sys, tissuestack; "
        "heavy = [m for m in ('dask', 'xarray', 'geopandas', 'anndata', 'zarr', 'pandas') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
