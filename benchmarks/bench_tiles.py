"""ImageTilesDataset side by side with the reference: build time, tiles per second and peak RSS over one pass.

Data: one uint8 image ``(3, N, N)`` (default N = 4096, smooth blobs + noise, chunks 1024 x 1024, pyramid
``scale_factors=[2, 4]``), ``--cells`` circles ``cells`` (default 5,000, radius 5-15) with a table (``area`` and
10 genes), and 25 circles ``grid`` on integer centres (for the content check), written to one Zarr store by
tissuestack; the reference reads that same store (``spatialdata.read_zarr``).

Each mode runs in a fresh process, one pass of ``DataLoader(ds, batch_size=64, num_workers=W)`` over all tiles:

- tissuestack: ``ImageTilesDataset(store_path, "cells", "img", tile_scale=2, tile_pixels=(64, 64),
  genes=[10 genes])``; build = opening the store + the dataset.
- reference (spatialdata 0.8): ``ImageTilesDataset(read_zarr(store), {"cells": "img"}, {"cells": "global"},
  tile_scale=2, rasterize=True, rasterize_kwargs={"target_width": 64}, return_annotations=[10 genes],
  table_name="table", transform=to_tensors)``: the same regions, tile extent (2 x the circle's diameter), 64 x 64
  pixels and annotations. ``rasterize=True`` is the reference's way to a fixed pixel size (without it a tile is the
  raw crop, whose size varies with the region and cannot be batched). The reference returns an xarray tile and a
  (1, 10) array; ``to_tensors`` turns them into float32 tensors, as tissuestack returns. Build = ``read_zarr`` +
  the dataset. With workers, the reference needs ``worker_init_fn`` setting dask's synchronous scheduler: forked
  workers otherwise wait forever on the dask thread pool they inherit without its threads.

Peak RSS is VmHWM (/proc/<pid>/status) of the main process and of the largest DataLoader worker (read after each
batch while the workers live); the 1-minute load average is read before and after each run (the machine is shared).

Content check (separate processes): tiles of the ``grid`` regions at 1 unit per pixel (``tile_size=64`` /
``tile_dim_in_units=64``), where both tools' output pixels fall on image pixels, must be equal; on the ``cells``
tiles (sub-pixel centres, upsampled) the reference takes the nearest pixel to each output pixel's *corner*
(``scipy.ndimage`` order 0, no half-pixel offset) and tissuestack interpolates bilinearly at each output pixel's
*centre*, so the values differ: the script reports by how much, and checks the reference against that rule.

Usage:
  python3 benchmarks/bench_tiles.py                          # 4096 x 4096, 5,000 circles, workers 0 and 2
  python3 benchmarks/bench_tiles.py --size 1024 --cells 500 --reference-tiles 200
  python3 benchmarks/bench_tiles.py --no-reference           # tissuestack alone
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
GENES = [f"g{i}" for i in range(10)]

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
g = np.round(np.linspace(0.1 * N, 0.9 * N, 5))
grid = ts.ShapesModel.parse(np.array([[x, y] for y in g for x in g]), radius=8.0)
genes = [f"g{i}" for i in range(10)]
table = ad.AnnData(
    X=rng.poisson(2, (CELLS, 10)).astype(np.float32),
    obs=pd.DataFrame({"cell_id": np.arange(CELLS), "area": rng.uniform(0, 1, CELLS)},
                     index=[str(i) for i in range(CELLS)]),
    var=pd.DataFrame(index=genes),
)
ts.TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
ts.SpatialData(images={"img": image}, shapes={"cells": circles, "grid": grid}, tables={"table": table}).write(STORE)
"""

_COMMON = """
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
LOAD0 = os.getloadavg()[0]
def peak_mb(pid="self"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:  # the process has ended
        pass
    return 0
WORKER_MB = 0
def poll_workers():
    # the DataLoader workers' peak RSS, read while they live (RUSAGE_CHILDREN would also count short-lived
    # helper processes that libraries fork at import, whose peak includes the parent's pages at fork)
    global WORKER_MB
    for task in os.listdir("/proc/self/task"):
        for pid in open(f"/proc/self/task/{task}/children").read().split():
            WORKER_MB = max(WORKER_MB, peak_mb(pid))
def report(build, t1, n, checksum):
    t2 = time.perf_counter()
    print(json.dumps({"build": build, "iterate": t2 - t1, "tiles": n, "checksum": checksum,
                      "peak_mb": max(peak_mb(), WORKER_MB), "main_mb": peak_mb(), "worker_mb": WORKER_MB,
                      "load": [LOAD0, os.getloadavg()[0]]}))
STORE, WORKERS, LIMIT, GENES = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
"""

OURS = (
    _COMMON
    + """
CACHE = int(sys.argv[5])
import torch
from torch.utils.data import DataLoader, Subset
from tissuestack import ImageTilesDataset
t0 = time.perf_counter()
ds = ImageTilesDataset(STORE, "cells", "img", tile_scale=2.0, tile_pixels=(64, 64), genes=GENES, cache_bytes=CACHE)
t1 = time.perf_counter()
if LIMIT:
    ds = Subset(ds, range(min(LIMIT, len(ds))))
n, checksum = 0, 0.0
for tiles, ann in DataLoader(ds, batch_size=64, num_workers=WORKERS):
    assert tiles.shape[1:] == (3, 64, 64) and ann["genes"].shape[1:] == (len(GENES),)
    n += tiles.shape[0]
    checksum += float(tiles.double().sum())
    poll_workers()
report(t1 - t0, t1, n, checksum)
"""
)

REFERENCE = (
    _COMMON
    + """
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
import spatialdata as sd
from spatialdata.dataloader import ImageTilesDataset
def to_tensors(item):
    tile, genes = item
    return (torch.from_numpy(np.asarray(tile.data, dtype=np.float32)),
            torch.from_numpy(np.asarray(genes, dtype=np.float32)))
def synchronous_dask(_worker):
    # forked workers inherit dask's thread pool without its threads: its default scheduler then waits forever
    import dask
    dask.config.set(scheduler="synchronous")
t0 = time.perf_counter()
sdata = sd.read_zarr(STORE)
ds = ImageTilesDataset(sdata, {"cells": "img"}, {"cells": "global"}, tile_scale=2.0, rasterize=True,
                       rasterize_kwargs={"target_width": 64}, return_annotations=GENES, table_name="table",
                       transform=to_tensors)
t1 = time.perf_counter()
if LIMIT:
    ds = Subset(ds, range(min(LIMIT, len(ds))))
n, checksum = 0, 0.0
loader = DataLoader(ds, batch_size=64, num_workers=WORKERS, worker_init_fn=synchronous_dask if WORKERS else None)
for tiles, ann in loader:
    assert tiles.shape[1:] == (3, 64, 64) and ann.shape[1:] == (1, len(GENES))
    n += tiles.shape[0]
    checksum += float(tiles.double().sum())
    poll_workers()
report(t1 - t0, t1, n, checksum)
"""
)

# the reference's tiles for the content check: ``cells`` tiles (index list) and every ``grid`` tile, 1 unit/pixel
REFERENCE_TILES = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
import spatialdata as sd
from spatialdata.dataloader import ImageTilesDataset
STORE, OUT, IDX = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def tiles(ds, idx):
    return np.stack([np.asarray(ds[i].images["img"].data, dtype=np.float32) for i in idx])
sdata = sd.read_zarr(STORE)
radius = sdata["cells"]["radius"].to_numpy().copy()
cells = ImageTilesDataset(sdata, {"cells": "img"}, {"cells": "global"}, tile_scale=2.0, rasterize=True,
                          rasterize_kwargs={"target_width": 64})
mutated = bool(not np.allclose(sdata["cells"]["radius"].to_numpy(), radius))
grid = ImageTilesDataset(sdata, {"grid": "img"}, {"grid": "global"}, tile_dim_in_units=64.0, rasterize=True,
                         rasterize_kwargs={"target_width": 64})
np.savez(OUT, cells=tiles(cells, IDX), grid=tiles(grid, range(len(grid))), mutated=mutated)
"""

# tissuestack's tiles for the same regions, compared with the reference's and with the reference's sampling rule
COMPARE = """
import json, sys
import numpy as np
import tissuestack as ts
from tissuestack.elements import raster_levels
STORE, REF, IDX = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ref = np.load(REF)
sdata = ts.read_zarr(STORE)
cells = ts.ImageTilesDataset(STORE, "cells", "img", tile_scale=2.0, tile_pixels=(64, 64))
grid = ts.ImageTilesDataset(STORE, "grid", "img", tile_size=64.0, tile_pixels=(64, 64))
ours_cells = np.stack([cells.tile(i) for i in IDX])
ours_grid = np.stack([grid.tile(i) for i in range(len(grid))])
img = np.asarray(raster_levels(sdata["img"])[0].data, dtype=np.float32)
n = img.shape[1]
# the reference's rule: output pixel (i, j) of a tile [min, min + e) takes image pixel round(min + (i, j) * e / 64)
shapes = sdata["cells"]
emulated, bounds = [], []
for i in IDX:
    e = 4.0 * float(shapes["radius"].iloc[i])
    x0, y0 = shapes.geometry.x.iloc[i] - e / 2, shapes.geometry.y.iloc[i] - e / 2
    ix = np.floor(x0 + np.arange(64) * e / 64 + 0.5).astype(int)
    iy = np.floor(y0 + np.arange(64) * e / 64 + 0.5).astype(int)
    bounds.append((ix[0], ix[-1], iy[0], iy[-1]))
    inside = ((iy >= 0) & (iy < n))[:, None] & ((ix >= 0) & (ix < n))[None, :]
    emulated.append(img[:, np.clip(iy, 0, n - 1)][:, :, np.clip(ix, 0, n - 1)] * inside)
emulated = np.stack(emulated)
d = np.abs(ours_cells - ref["cells"])
print(json.dumps({
    "grid_tiles": len(ours_grid), "grid_max_abs_diff": float(np.abs(ours_grid - ref["grid"]).max()),
    "cells_tiles": len(IDX), "cells_max_abs_diff": float(d.max()), "cells_mean_abs_diff": float(d.mean()),
    "cells_equal_fraction": float((d == 0).mean()),
    "cells_tile_mean_diff": float(np.abs(ours_cells.mean(axis=(1, 2, 3)) - ref["cells"].mean(axis=(1, 2, 3))).max()),
    "image_std": float(img.std()),
    "reference_vs_nearest_corner_rule_mismatched_pixels": (emulated != ref["cells"]).sum(axis=(1, 2, 3)).tolist(),
    "tiles_reaching_past_the_image": [bool(not ((ix0 >= 0) and (ix1 < n) and (iy0 >= 0) and (iy1 < n)))
                                      for ix0, ix1, iy0, iy1 in bounds],
    "reference_mutates_the_shapes_radius": bool(ref["mutated"]),
}))
"""


def _run(python: str, code: str, *args: str, env: dict | None = None) -> str:
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _reference_ready(python: str) -> str | None:
    """None when the reference python imports spatialdata.dataloader (hence torch); else why not."""
    if not Path(python).exists():
        return f"no reference python at {python} (run ../shared/tools/reference-env)"
    probe = subprocess.run(
        [python, "-c", "import torch, spatialdata.dataloader"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"the reference python cannot import torch + spatialdata.dataloader: {probe.stderr.strip()[-200:]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--cache-bytes", type=int, default=256 * 2**20, help="tissuestack: 0 = no chunk cache"
    )
    parser.add_argument("--reference-python", default=str(_DEFAULT_REFERENCE))
    parser.add_argument(
        "--reference-tiles", type=int, default=0, help="pass over the first N tiles only (0: all)"
    )
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    ref_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    why_not = "--no-reference" if args.no_reference else _reference_ready(args.reference_python)
    genes = json.dumps(GENES)
    rows, check = [], None
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "tiles.zarr")
        _run(sys.executable, PREPARE, str(args.size), str(args.cells), store, env=env)
        for w in args.workers:
            r = _last_json(
                _run(sys.executable, OURS, store, str(w), "0", genes, str(args.cache_bytes), env=env)
            )
            rows.append({"library": "tissuestack", "workers": w, **r})
            if why_not is None:
                limit = str(args.reference_tiles)
                r = _last_json(
                    _run(args.reference_python, REFERENCE, store, str(w), limit, genes, env=ref_env)
                )
                rows.append({"library": "spatialdata 0.8", "workers": w, **r})
        if why_not is None:
            idx = json.dumps(list(range(0, args.cells, max(1, args.cells // 8)))[:8])
            ref_tiles = str(Path(tmp) / "reference_tiles.npz")
            _run(args.reference_python, REFERENCE_TILES, store, ref_tiles, idx, env=ref_env)
            check = _last_json(_run(sys.executable, COMPARE, store, ref_tiles, idx, env=env))

    print(
        f"image 3 x {args.size}^2 uint8 (chunks 1024^2, pyramid 2, 4), {args.cells} circles, 64 x 64 tiles, "
        f"10 genes, batch 64; tissuestack chunk cache {args.cache_bytes} bytes"
    )
    print(
        "| library | workers | build s | tiles | iterate s | tiles/s | peak RSS MB (main / largest child) | load 1 min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['library']} | {r['workers']} | {r['build']:.2f} | {r['tiles']} | {r['iterate']:.2f} | "
            f"{r['tiles'] / r['iterate']:.0f} | {r['peak_mb']} ({r['main_mb']} / {r['worker_mb']}) | "
            f"{r['load'][0]:.2f} -> {r['load'][1]:.2f} |"
        )
    for lib in ("tissuestack", "spatialdata 0.8"):
        sums = {round(r["checksum"], 1) for r in rows if r["library"] == lib}
        if sums:
            print(f"{lib}: checksum of all tiles agrees across worker counts: {len(sums) == 1}")
    if why_not is not None:
        print(f"reference not run: {why_not}")
    else:
        for w in args.workers:
            ours = next(r for r in rows if r["library"] == "tissuestack" and r["workers"] == w)
            ref = next(r for r in rows if r["library"] != "tissuestack" and r["workers"] == w)
            print(
                f"workers {w}: tissuestack / reference tiles/s = "
                f"{(ours['tiles'] / ours['iterate']) / (ref['tiles'] / ref['iterate']):.1f}x, "
                f"build time reference / tissuestack = {ref['build'] / ours['build']:.1f}x, "
                f"peak RSS tissuestack / reference = {ours['peak_mb'] / ref['peak_mb']:.2f}"
            )
        print("content check:", json.dumps(check))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "check": check}, indent=1))


if __name__ == "__main__":
    main()
