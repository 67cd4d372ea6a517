"""ImageTilesDataset: tiles per second and peak RSS, iterating every tile of a store through a DataLoader.

Data: one uint8 image ``(3, N, N)`` (default N = 4096, smooth blobs + noise, chunks 1024 x 1024, pyramid
``scale_factors=[2, 4]``) and ``--cells`` circles (default 5,000, radius 5-15) with a table (``area`` and 10
genes), written to one Zarr store by tissuestack.

Each mode runs in a fresh process: imports and ``ImageTilesDataset(store_path, "cells", "img", tile_scale=2,
tile_pixels=(64, 64), obs_keys=["area"], genes=[10 genes])`` (construction timed separately), then one pass of
``DataLoader(ds, batch_size=64, num_workers=W)`` over all tiles (timed). Peak RSS is the larger of the main
process and its largest child process (VmHWM / RUSAGE_CHILDREN). A checksum of all tiles is compared across modes.

The reference (``spatialdata.dataloader.ImageTilesDataset``) needs torch, which the reference venv does not have
(checked at start); no reference runner is written yet, so the script reports tissuestack alone.

Usage:
  python3 benchmarks/bench_tiles.py                       # 4096 x 4096, 5,000 circles
  python3 benchmarks/bench_tiles.py --size 1024 --cells 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
_DEFAULT_REFERENCE = Path.home() / ".cache" / "tissuestack-reference" / "bin" / "python"

PREPARE = """
import sys
import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage
import tissuestack as ts
N, CELLS, STORE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
low = rng.random((3, N // 64 + 1, N // 64 + 1), dtype=np.float32)
img = ndimage.zoom(low, (1, 64, 64), order=1)[:, :N, :N]
img = np.clip(200 * img + 40 * rng.random(img.shape, dtype=np.float32), 0, 255).astype(np.uint8)
image = ts.Image2DModel.parse(img, chunks=(3, 1024, 1024), scale_factors=[2, 4])
circles = ts.ShapesModel.parse(rng.uniform(0, N, (CELLS, 2)), radius=rng.uniform(5, 15, CELLS))
genes = [f"g{i}" for i in range(10)]
table = ad.AnnData(
    X=rng.poisson(2, (CELLS, 10)).astype(np.float32),
    obs=pd.DataFrame({"cell_id": np.arange(CELLS), "area": rng.uniform(0, 1, CELLS)},
                     index=[str(i) for i in range(CELLS)]),
    var=pd.DataFrame(index=genes),
)
ts.TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
ts.SpatialData(images={"img": image}, shapes={"cells": circles}, tables={"table": table}).write(STORE)
"""

RUNNER = """
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
STORE, WORKERS, CACHE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import numpy as np
import torch
from torch.utils.data import DataLoader
from tissuestack import ImageTilesDataset
t0 = time.perf_counter()
ds = ImageTilesDataset(STORE, "cells", "img", tile_scale=2.0, tile_pixels=(64, 64), obs_keys=["area"],
                          genes=[f"g{i}" for i in range(10)], cache_bytes=CACHE)
t1 = time.perf_counter()
n, checksum = 0, 0.0
for tiles, ann in DataLoader(ds, batch_size=64, num_workers=WORKERS):
    n += tiles.shape[0]
    checksum += float(tiles.double().sum())
t2 = time.perf_counter()
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(json.dumps({"build": t1 - t0, "iterate": t2 - t1, "tiles": n, "checksum": checksum,
                  "peak_mb": max(peak_mb(), child), "main_mb": peak_mb(), "worker_mb": child,
                  "sizes": len(__import__("pickle").dumps(ds))}))
"""


def _run(python: str, code: str, *args: str, env: dict | None = None) -> str:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--cache-bytes", type=int, default=256 * 2**20, help="0: no chunk cache")
    parser.add_argument("--reference-python", default=str(_DEFAULT_REFERENCE))
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    ref_torch = (
        Path(args.reference_python).exists()
        and subprocess.run([args.reference_python, "-c", "import torch"], capture_output=True).returncode == 0
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "tiles.zarr")
        _run(sys.executable, PREPARE, str(args.size), str(args.cells), store, env=env)
        rows = []
        for w in args.workers:
            r = json.loads(_run(sys.executable, RUNNER, store, str(w), str(args.cache_bytes), env=env).strip().splitlines()[-1])
            r["workers"] = w
            rows.append(r)
    print(
        f"image 3 x {args.size}^2 uint8, {args.cells} circles, 64 x 64 tiles, batch 64, "
        f"chunk cache {args.cache_bytes} bytes"
    )
    print("| library | workers | build s | iterate s | tiles/s | peak RSS MB (main / largest child) | pickle bytes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| tissuestack | {r['workers']} | {r['build']:.2f} | {r['iterate']:.2f} | "
            f"{r['tiles'] / r['iterate']:.0f} | {r['peak_mb']} ({r['main_mb']} / {r['worker_mb']}) | {r['sizes']} |"
        )
    sums = {round(r["checksum"], 3) for r in rows}
    print(f"checksums agree across modes: {len(sums) == 1} ({sorted(sums)})")
    if not ref_torch:
        print("reference: the reference venv has no torch; spatialdata.dataloader.ImageTilesDataset not run")


if __name__ == "__main__":
    main()
