"""Vectorization benchmark: labels -> polygons, side by side with the reference (scverse spatialdata 0.8).

Workload: a ``--size`` x ``--size`` int32 mask of ``--cells`` cells (nearest-seed Voronoi cells with a 1-2 pixel
background gap between neighbours and background far from every seed), stored as a labels element (chunks
1024 x 1024) once in a Zarr store written by tissuestack and once in a store written by the reference.

Each side runs in a fresh process: ``import`` + ``read_zarr`` + ``to_polygons`` ("first"; "first_op" is that
first ``to_polygons`` call alone, which includes numba's start for us, ~0.6 s), then ``to_polygons`` again
(repeat). Our process also checks every
polygon's area against the pixel counts and shapely validity (outside the timings).

Usage:
  python3 benchmarks/bench_vectorize.py                      # 4096^2, 50k cells, with the reference
  python3 benchmarks/bench_vectorize.py --no-reference
  python3 benchmarks/bench_vectorize.py --size 2048 --cells 12000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from bench_store import run_json

HERE = Path(__file__).resolve().parent
# this checkout's tissuestack, in this process and in the fresh processes it starts
SRC = str(HERE.parent / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
REFERENCE_PY = Path.home() / ".cache" / "tissuestack-reference" / "bin" / "python"

OURS = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import tissuestack as ts
    sdata = ts.read_zarr(sys.argv[1])
    labels = sdata["cells"]
    t1 = time.perf_counter()
    g = ts.to_polygons(labels)
    first = time.perf_counter() - t0
    first_op = time.perf_counter() - t1
    t0 = time.perf_counter()
    g = ts.to_polygons(labels)
    repeat = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # before the checks below
    import numpy as np, shapely
    mask = np.asarray(labels.data)
    ids, counts = np.unique(mask[mask != 0], return_counts=True)
    exact = bool(np.array_equal(g.index.to_numpy(), ids) and np.array_equal(g.area.to_numpy(), counts.astype(float)))
    valid = bool(shapely.is_valid(g.geometry.array).all())
    print(json.dumps({"first": round(first, 3), "first_op": round(first_op, 3), "repeat": round(repeat, 3), "n": len(g), "exact_areas": exact,
                      "valid": valid, "peak_rss_mb": rss}))
    """
)

REFERENCE = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import spatialdata as sd
    sdata = sd.read_zarr(sys.argv[1])
    labels = sdata["cells"]
    t1 = time.perf_counter()
    g = sd.to_polygons(labels)
    first = time.perf_counter() - t0
    first_op = time.perf_counter() - t1
    t0 = time.perf_counter()
    g = sd.to_polygons(labels)
    repeat = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    import shapely
    print(json.dumps({"first": round(first, 3), "first_op": round(first_op, 3), "repeat": round(repeat, 3), "n": len(g),
                      "valid": bool(shapely.is_valid(g.geometry.array).all()), "peak_rss_mb": rss}))
    """
)

WRITE_REFERENCE = textwrap.dedent(
    """
    import sys, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, spatialdata as sd
    from spatialdata.models import Labels2DModel
    mask = np.load(sys.argv[1])
    labels = Labels2DModel.parse(mask, dims=("y", "x"), chunks=(1024, 1024))
    sd.SpatialData(labels={"cells": labels}).write(sys.argv[2], overwrite=True)
    """
)


def make_mask(size: int, cells: int, seed: int = 0) -> np.ndarray:
    """Voronoi cells of ``cells`` random seeds, separated by background where the two nearest seeds are about
    equally far (a gap of ~1.5 px) and beyond 1.5x the mean cell radius from any seed."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, (cells, 2))
    tree = cKDTree(seeds)
    mask = np.empty((size, size), dtype=np.int32)
    mean_r = size / np.sqrt(np.pi * cells)
    xs = np.arange(size) + 0.5
    step = 256
    for y0 in range(0, size, step):
        yy, xx = np.meshgrid(np.arange(y0, min(y0 + step, size)) + 0.5, xs, indexing="ij")
        d, k = tree.query(np.column_stack([xx.ravel(), yy.ravel()]), k=2, workers=2)
        lab = (k[:, 0] + 1).astype(np.int32)
        lab[(d[:, 1] - d[:, 0] < 1.5) | (d[:, 0] > 1.5 * mean_r)] = 0
        mask[y0 : y0 + step] = lab.reshape(yy.shape)
    return mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--cells", type=int, default=50_000)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()

    work = HERE / "data" / f"vectorize_{args.size}_{args.cells}"
    work.mkdir(parents=True, exist_ok=True)
    mask_file = work / "mask.npy"
    if not mask_file.exists():
        np.save(mask_file, make_mask(args.size, args.cells))
    ours_store = work / "ours.zarr"
    if not ours_store.exists():
        import tissuestack as ts

        mask = np.load(mask_file)
        labels = ts.Labels2DModel.parse(mask, dims=("y", "x"), chunks=(1024, 1024))
        ts.SpatialData(labels={"cells": labels}).write(ours_store)
    ref_py = None if args.no_reference or not REFERENCE_PY.exists() else str(REFERENCE_PY)
    ref_store = work / "reference.zarr"
    if ref_py is not None and not ref_store.exists():
        subprocess.run([ref_py, "-c", WRITE_REFERENCE, str(mask_file), str(ref_store)], check=True)

    rows = {"tissuestack (our store)": run_json([sys.executable, "-c", OURS, str(ours_store)])}
    if ref_py is not None:
        rows["tissuestack (reference's store)"] = run_json([sys.executable, "-c", OURS, str(ref_store)])
        rows["reference (its store)"] = run_json([ref_py, "-c", REFERENCE, str(ref_store)])
    print(
        f"{args.size}^2 int32 mask, {args.cells} seeds, chunks 1024^2; read_zarr + to_polygons, fresh processes"
    )
    for name, r in rows.items():
        print(f"  {name:34s} {r}")
    if ref_py is not None:
        ref = rows["reference (its store)"]
        ours = rows["tissuestack (our store)"]
        print(
            f"  ratio first call (import + read + to_polygons): {ref['first'] / ours['first']:.1f}x, "
            f"first to_polygons alone: {ref['first_op'] / ours['first_op']:.1f}x, "
            f"repeat: {ref['repeat'] / ours['repeat']:.1f}x"
        )


if __name__ == "__main__":
    main()
