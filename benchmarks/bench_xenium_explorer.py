"""Xenium Explorer selections: read / write time of a large selection export, side by side with the reference.

Writes ``--selections`` random polygons of ``--vertices`` vertices each (simple polygons, so that the reference
reader, which makes one polygon per selection name, reads them too) as a CSV with our writer, then times:

  write_csv / write_geojson     write_xenium_explorer_selection
  read_csv / read_geojson       xenium_explorer_selection (shapes element, µm + pixels transformations)
  reference_read_csv            spatialdata_io.xenium_explorer_selection(return_list=True) in the reference's
                                venv (polygons in pixels; timed inside its process, import excluded)

Usage:
  python3 benchmarks/bench_xenium_explorer.py                      # 2000 selections x 500 vertices
  python3 benchmarks/bench_xenium_explorer.py --selections 200 --vertices 50 --no-reference
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE_PYTHON = Path("/root/.cache/tissuestack-reference/bin/python")
_REFERENCE = """
import json, sys, time
from spatialdata_io import xenium_explorer_selection
start = time.perf_counter()
polygons = xenium_explorer_selection(sys.argv[1], return_list=True)
print(json.dumps({"seconds": time.perf_counter() - start, "n": len(polygons)}))
"""


def _shapes(n: int, vertices: int, seed: int = 0):
    import shapely

    from tissuestack.elements import ShapesModel

    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, (n, vertices)), axis=1)
    radii = rng.uniform(20, 40, (n, vertices))
    centres = rng.uniform(0, 10_000, (n, 2))
    xy = np.stack([centres[:, :1] + radii * np.cos(angles), centres[:, 1:] + radii * np.sin(angles)], axis=-1)
    polygons = shapely.polygons(xy)
    return ShapesModel.parse(polygons, index=[f"Selection {i + 1}" for i in range(n)])


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selections", type=int, default=2000)
    parser.add_argument("--vertices", type=int, default=500)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)

    from tissuestack import io

    shapes = _shapes(args.selections, args.vertices)
    results: dict[str, object] = {"selections": args.selections, "vertices_per_selection": args.vertices}
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, geojson_path = Path(tmp) / "sel_coordinates.csv", Path(tmp) / "sel.geojson"
        results["write_csv"], _ = _timed(io.write_xenium_explorer_selection, shapes, csv_path)
        results["write_geojson"], _ = _timed(io.write_xenium_explorer_selection, shapes, geojson_path)
        results["read_csv"], back = _timed(io.xenium_explorer_selection, csv_path)
        results["read_geojson"], back_json = _timed(io.xenium_explorer_selection, geojson_path)
        assert back.geometry.geom_equals_exact(shapes.geometry, tolerance=0).all()
        assert back_json.geometry.geom_equals_exact(shapes.geometry, tolerance=0).all()
        results["csv_mb"] = round(csv_path.stat().st_size / 1e6, 1)
        if not args.no_reference and REFERENCE_PYTHON.exists():
            res = subprocess.run(
                [str(REFERENCE_PYTHON), "-c", _REFERENCE, str(csv_path)], capture_output=True, text=True
            )
            if res.returncode == 0:
                ref = json.loads(res.stdout.strip().splitlines()[-1])
                results["reference_read_csv"] = ref["seconds"]
                results["read_csv_ratio_reference_over_ours"] = round(ref["seconds"] / results["read_csv"], 2)
            else:
                results["reference_error"] = res.stderr[-300:]
    for key, value in results.items():
        print(f"{key:40s} {value:.3f}" if isinstance(value, float) else f"{key:40s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
