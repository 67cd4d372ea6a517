"""The README's code runs top to bottom as written (issue 17 item 5).

Every ``python`` block of README.md is executed in order in one namespace. Names that stand for the user's own
data (``df``, ``adata``, ``polygon``, ...) are provided here, as small objects of the right kind; nothing else
is changed. The vendor block is exercised by the reader tests (it needs each vendor's folder) and the remote
read needs a network, so those are the only parts left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

README = Path(__file__).resolve().parents[1] / "README.md"
SKIPPED_BLOCKS = {"Reading vendor output"}  # needs vendor folders: tests/test_io_*.py read each technology
SKIPPED_LINES = ("s3://",)  # needs a network


def _blocks() -> list[tuple[str, str]]:
    heading, out = "", []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((heading, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


def _user_data() -> dict:
    rng = np.random.default_rng(0)
    n = 60
    cells = gpd.GeoDataFrame(
        geometry=[shapely.box(10 * i, 0, 10 * i + 8, 8) for i in range(n)], index=[f"c{i}" for i in range(n)]
    )
    obs = pd.DataFrame(
        {"region": pd.Categorical(["cells"] * n), "cell_id": cells.index.to_numpy()},
        index=[str(i) for i in range(n)],
    )
    return {
        "coords": rng.uniform(0, 100, (50, 2)),
        "array_yxc": rng.integers(0, 255, (64, 64, 2), dtype=np.uint8),
        "df": pd.DataFrame(
            {"global_x": rng.uniform(0, 600, 500), "global_y": rng.uniform(0, 8, 500), "gene": ["a", "b"] * 250}
        ),
        "geodataframe_or_geojson_path": cells,
        "adata": ad.AnnData(rng.poisson(1.0, (n, 3)).astype(np.float32), obs=obs),
        "polygon": shapely.Polygon([(100, 100), (400, 120), (300, 400), (150, 300)]),
        "mins_nx2": np.array([[0, 0], [200, 200]], dtype=float),
        "maxs_nx2": np.array([[100, 100], [300, 300]], dtype=float),
    }


def _before_alignment(ns: dict) -> None:
    """Landmarks and two sections' images, as a user of the alignment block would have them."""
    import tissuestack as ts

    sdata = ns["sdata"]
    ref = np.array([[10.0, 10.0], [200.0, 30.0], [120.0, 180.0], [40.0, 150.0]])
    angle = np.deg2rad(20.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mov = ref @ rot.T + [15.0, -5.0]
    ns["ref_xy"], ns["mov_xy"] = ref, mov
    image = np.zeros((1, 32, 32), dtype=np.uint8)
    for name, xy, cs in (("1", ref, "rep1"), ("2", mov, "rep2")):
        sdata[f"he_rep{name}"] = ts.Image2DModel.parse(image, dims=("c", "y", "x"), transformations={cs: ts.Identity()})
        sdata[f"landmarks_rep{name}"] = ts.PointsModel.parse(xy, transformations={cs: ts.Identity()})


def test_readme_code_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = _user_data()
    ran = []
    for heading, code in _blocks():
        if heading in SKIPPED_BLOCKS:
            continue
        if heading == "Alignment":
            _before_alignment(ns)
        code = "\n".join(line for line in code.splitlines() if not any(s in line for s in SKIPPED_LINES))
        try:
            exec(compile(code, f"README.md ({heading})", "exec"), ns)
        except Exception as err:  # name the block in the failure
            pytest.fail(f"README block under '## {heading}' fails: {type(err).__name__}: {err}")
        ran.append(heading)
    assert {"A tour", "Queries and operations", "Aggregation", "Alignment", "Storage"} <= set(ran)
    # what the tour promises
    sdata = ns["sdata"]
    assert set(sdata.filter_by_coordinate_system("aligned")) >= {"cell_labels", "cell_boundaries"}
    import tissuestack as ts

    on_disk = ts.read_zarr("experiment.zarr")
    assert "cells_v2" not in on_disk and "cells_v2" in sdata  # deleted from the store; the in-memory copy stays
    assert len(sdata["transcripts"]) == len(on_disk["transcripts"]) > 0
    assert re.search(r"'aligned'", repr(sdata))
