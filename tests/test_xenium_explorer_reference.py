"""Xenium Explorer selections against the reference reader (spatialdata-io); skipped when it is absent. Kept apart
from ``test_xenium_explorer.py`` because starting the reference environment takes several seconds."""

from __future__ import annotations

import numpy as np
import shapely

from tissuestack import io
from tissuestack.elements import ShapesModel, get_transformation
from tissuestack.io._xenium_explorer import XENIUM_PIXEL_SIZE


def _random_polygon(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 12):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.6, 1.0, n) * r
    return np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


_REFERENCE_SCRIPT = """
import json, sys
from spatialdata_io import xenium_explorer_selection
pixel_size = float(sys.argv[1])
out = [[p.wkt for p in xenium_explorer_selection(f, pixel_size=pixel_size, return_list=True)] for f in sys.argv[2:]]
print(json.dumps(out))
"""


def _in_pixels(shapes, name):
    m = get_transformation(shapes, "pixels").to_affine_matrix(("x", "y"), ("x", "y"))
    return shapely.get_coordinates(shapes.geometry.loc[name]) @ m[:2, :2].T + m[:2, 2]


def test_reference_and_we_read_the_same_pixel_polygons(tmp_path):
    """The reference reads our CSV export, and we read a Xenium Explorer style file, into the same polygons in
    morphology pixels (one reference process for both: it takes seconds to start)."""
    from io_helpers import run_reference

    rng = np.random.default_rng(5)
    names = ["b", "a", "c"]  # the reference groups by name (sorted)
    shapes = ShapesModel.parse(
        [shapely.Polygon(_random_polygon(rng, *rng.uniform(100, 900, 2), 30.0)) for _ in names], index=names
    )
    ours_path = io.write_xenium_explorer_selection(shapes, tmp_path / "sel_coordinates.csv")
    ring = _random_polygon(rng, 500.0, 400.0, 50.0, 40)
    lines = ["#Selection name: Selection 1", "#Area (µm^2): 7000.12", "X,Y"]
    lines += [f"{x!r},{y!r}" for x, y in ring.tolist()]  # not closed, as Xenium Explorer writes it
    explorer_path = tmp_path / "Selection_1_coordinates.csv"
    explorer_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    theirs_ours, (theirs_explorer,) = run_reference(
        _REFERENCE_SCRIPT, XENIUM_PIXEL_SIZE, ours_path, explorer_path
    )
    ours = io.xenium_explorer_selection(ours_path)
    for name, wkt in zip(sorted(names), theirs_ours, strict=True):
        np.testing.assert_allclose(
            shapely.get_coordinates(shapely.from_wkt(wkt)), _in_pixels(ours, name), rtol=1e-12, atol=1e-9
        )
    explorer = io.xenium_explorer_selection(explorer_path)
    assert list(explorer.index) == ["Selection 1"]
    np.testing.assert_allclose(
        shapely.get_coordinates(shapely.from_wkt(theirs_explorer)),
        _in_pixels(explorer, "Selection 1"),
        rtol=1e-12,
    )
