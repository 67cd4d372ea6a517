"""register_images on a large synthetic cross-stain pair: time and peak RSS in a fresh process.

Data (generated lazily, block by block, never as whole float64 arrays): one synthetic tissue (nuclei with varying
density inside an irregular outline, stroma) rendered twice at ``--size`` x ``--size`` px:

  dapi   the reference, a one-channel fluorescence-like uint8 image (bright nuclei on black)
  he     the moving image, an H&E-like RGB uint8 image (dark nuclei on pink: a saturating, inverted map) of the
         tissue rotated by ``--rotation`` degrees, scaled by ``--scale`` and shifted

Both are written with 2x pyramids (down to < 1024 px) to one store with ``SpatialData.write``. A fresh process
then runs ``read_zarr`` + ``register_images("he", "dapi", sdata=...)`` and reports seconds, peak RSS (VmHWM) and
the error of the result: the largest distance between the true and the found positions of the moving image's
corners, in full-resolution reference pixels. The reference library has no such function (no ratio).

Usage:
  python3 benchmarks/bench_register.py                  # 10k x 10k
  python3 benchmarks/bench_register.py --size 4096
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
from scipy import ndimage

_WORLD_PX = 4  # full-resolution pixels per world-field pixel


def _world(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and stroma fields (float32, n x n world px; nuclei about 2 world px wide)."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.normal(size=(n // 16, n // 16)), 4)
    mask = ndimage.zoom(coarse, 16, order=1) > 0.0
    density = ndimage.zoom(ndimage.gaussian_filter(rng.random((n // 64, n // 64)), 1.5), 64, order=1)
    p = (mask * (density - density.min() + 0.05)).ravel()
    cells = n * n // 60
    idx = rng.choice(n * n, cells, p=p / p.sum())
    nuc = np.bincount(idx, weights=rng.uniform(0.5, 1.0, cells), minlength=n * n).reshape(n, n)
    nuc = (ndimage.gaussian_filter(nuc, 1.0) * 8).astype(np.float32)
    stroma = ndimage.gaussian_filter(mask.astype(np.float32), 2)
    return nuc, stroma


def _render(nuc, stroma, m: np.ndarray, size: int, stain: str, chunk: int = 2048) -> da.Array:
    """A lazy uint8 (c, y, x) image whose pixel (x, y) shows world position ``m @ (x, y) / _WORLD_PX``."""
    n_c = 1 if stain == "dapi" else 3

    def block(block_info=None):
        (c0, c1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        iy, ix = np.mgrid[y0:y1, x0:x1]
        x, y = ix + 0.5, iy + 0.5
        qx = (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / _WORLD_PX - 0.5
        qy = (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / _WORLD_PX - 0.5
        a = ndimage.map_coordinates(nuc, [qy, qx], order=1, cval=0.0)
        rng = np.random.default_rng(y0 * 7919 + x0)
        if stain == "dapi":
            out = (np.clip(a, 0, 1.5) ** 0.7 * 160 + rng.normal(0, 6, a.shape))[None]
        else:
            s = ndimage.map_coordinates(stroma, [qy, qx], order=1, cval=0.0)
            t = np.tanh(1.5 * a)
            out = np.stack([1 - 0.7 * t - 0.2 * s, 1 - 0.9 * t - 0.5 * s, 1 - 0.4 * t - 0.1 * s]) * 240
            out = out + rng.normal(0, 6, out.shape)
        return np.clip(out, 0, 255).astype(np.uint8)[c0:c1]

    chunks = ((n_c,), *(tuple(min(chunk, size - i) for i in range(0, size, chunk)),) * 2)
    return da.map_blocks(block, chunks=chunks, dtype=np.uint8)


def _similarity(theta_deg: float, scale: float, shift: tuple[float, float], centre: float) -> np.ndarray:
    th = math.radians(theta_deg)
    a = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = np.array([centre, centre]) + np.asarray(shift) - a @ np.array([centre, centre])
    return m


def build(path: Path, size: int, rotation: float, scale: float) -> np.ndarray:
    import tissuestack as ts

    world = -(-(size // _WORLD_PX + 64) // 64) * 64  # a multiple of the coarse grids of _world
    nuc, stroma = _world(world)
    pad = 32.0 * _WORLD_PX  # the reference starts 32 world px into the world field
    ref_to_world = np.eye(3)
    ref_to_world[:2, 2] = pad
    truth = _similarity(rotation, scale, (0.03 * size, -0.02 * size), size / 2)  # he px -> dapi px
    levels = max(0, math.ceil(math.log2(size / 1024)))
    sdata = ts.SpatialData(
        images={
            "dapi": ts.Image2DModel.parse(
                _render(nuc, stroma, ref_to_world, size, "dapi"),
                scale_factors=[2] * levels,
                c_coords=["DAPI"],
            ),
            "he": ts.Image2DModel.parse(
                _render(nuc, stroma, ref_to_world @ truth, size, "he"),
                scale_factors=[2] * levels,
                c_coords=["r", "g", "b"],
            ),
        }
    )
    sdata.write(path)
    return truth


RUNNER = """
import json, sys, time, warnings
import numpy as np
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
import tissuestack as ts
import tissuestack.ops  # noqa: F401
store, max_size = sys.argv[1], int(sys.argv[2])
truth = np.array(json.loads(sys.argv[3]))
base = peak_mb()
t = time.perf_counter()
sdata = ts.read_zarr(store)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    r = ts.register_images("he", "dapi", sdata=sdata, max_size=max_size, add_to_coordinate_system="aligned")
elapsed = time.perf_counter() - t
n = sdata["he"]["scale0"]["image"].sizes["x"]
corners = np.array([[0.0, 0.0], [n, 0.0], [n, n], [0.0, n]])
err = np.linalg.norm(corners @ (r.matrix[:2, :2] - truth[:2, :2]).T + r.matrix[:2, 2] - truth[:2, 2], axis=1).max()
print(json.dumps({"seconds": round(elapsed, 2), "peak_rss_mb": peak_mb(), "rss_after_imports_mb": base,
                  "corner_error_px": round(float(err), 3), "score": round(r.score, 3), "levels": r.levels,
                  "pixel_size": r.pixel_size, "warnings": [str(x.message) for x in w], "result": repr(r)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--rotation", type=float, default=150.0)
    ap.add_argument("--scale", type=float, default=1.15)
    ap.add_argument("--max-size", type=int, default=1024)
    ap.add_argument("--keep", type=Path, default=None, help="write the store here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "pair.zarr"
        t = time.perf_counter()
        truth = build(path, args.size, args.rotation, args.scale)
        build_s = time.perf_counter() - t
        out = subprocess.run(
            [sys.executable, "-c", RUNNER, str(path), str(args.max_size), json.dumps(truth.tolist())],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            sys.exit(out.stderr)
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(
        {"size": args.size, "rotation": args.rotation, "scale": args.scale, "build_s": round(build_s, 1)}
    )
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
