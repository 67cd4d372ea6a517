"""read_zarr + map_raster + write in a fresh process, side by side with the reference (scverse spatialdata 0.8).

Data: one float32 image ``(1, N, N)`` (default N = 8192, 256 MB), smooth blobs (uniform noise on a 1/32 grid,
upsampled linearly) plus 5 % noise, chunks 1024 x 1024. tissuestack writes ``ours.zarr``; the reference writes
``ref.zarr`` from the same pixels.

Operations (the same function and arguments on both sides):

  gaussian  ``scipy.ndimage.gaussian_filter(block, sigma=(0, 2, 2))`` with an overlap of 8 pixels (reflected at
            the edges) -> image
  label     threshold at 0.5 + ``skimage.measure.label`` per block -> labels, made unique across blocks
            (``relabel=True``)

Each runs in a fresh process per library: imports first (untimed), then ``read_zarr`` + ``map_raster`` + writing
the result as the only element of a new store (timed), then (untimed) the result is read back for checks: the
sum of the filtered image and a strided sample compared across libraries; the number of distinct labels and of
foreground pixels. Peak RSS from /proc/self/status, taken before the checks.

Usage:
  python3 benchmarks/bench_map_raster.py                  # 8192 x 8192
  python3 benchmarks/bench_map_raster.py --size 2048 --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
_DEFAULT_REFERENCE = Path.home() / ".cache" / "tissuestack-reference" / "bin" / "python"

OPS = ("gaussian", "label")

PREPARE = """
import sys
import numpy as np
from scipy import ndimage
N, NPY, STORE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = np.random.default_rng(0)
low = rng.random((N // 32 + 1, N // 32 + 1), dtype=np.float32)
img = ndimage.zoom(low, 32, order=1)[:N, :N].astype(np.float32)
img += 0.05 * rng.random((N, N), dtype=np.float32)
np.save(NPY, img[None])
import tissuestack as ts
ts.SpatialData(images={"img": ts.Image2DModel.parse(img[None], chunks=(1, 1024, 1024))}).write(STORE)
"""

PREPARE_REFERENCE = """
import sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
import spatialdata as sd
NPY, STORE = sys.argv[1], sys.argv[2]
img = np.load(NPY)
sd.SpatialData(images={"img": sd.models.Image2DModel.parse(img, dims=("c", "y", "x"), chunks=(1, 1024, 1024))}).write(STORE)
"""

RUNNER = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
LIB, OP, STORE, OUT, SAMPLE = sys.argv[1:6]
t0 = time.perf_counter()
import numpy as np
from scipy import ndimage
from skimage import measure
def gaussian(block):
    return ndimage.gaussian_filter(block, sigma=(0, 2, 2))
def label(block):
    return measure.label(block[0] > 0.5).astype(np.int32)
if LIB == "ours":
    import tissuestack as ts
    import tissuestack.ops  # noqa: F401
    read, SD = ts.read_zarr, ts.SpatialData
    def apply(img):
        if OP == "gaussian":
            return ts.map_raster(img, gaussian, depth=8)
        return ts.map_raster(img, label, dims=("y", "x"), drop_axis=0, dtype=np.int32)
else:
    import spatialdata as sd
    read, SD = sd.read_zarr, sd.SpatialData
    def apply(img):
        if OP == "gaussian":
            return sd.map_raster(img, gaussian, depth=(0, 8, 8))
        return sd.map_raster(img, label, dims=("y", "x"), drop_axis=0, dtype=np.int32)
imports = time.perf_counter() - t0
t = time.perf_counter()
s = read(STORE)
out = apply(s["img"])
kind = "images" if OP == "gaussian" else "labels"
SD(**{kind: {"out": out}}).write(OUT)
seconds = time.perf_counter() - t
peak = peak_mb()  # before the checks below load the whole result
back = np.asarray(read(OUT)["out"].data.compute())
if OP == "gaussian":
    check = {"sum": float(back.astype(np.float64).sum())}
    np.save(SAMPLE, back[..., ::16, ::16])
else:
    check = {"labels": int(len(np.unique(back)) - 1), "foreground": int((back > 0).sum())}
print(json.dumps({"imports_s": round(imports, 3), "seconds": round(seconds, 3), "peak_mb": peak, **check}))
"""


def _run(python: str, script: str, *args: str, env: dict | None = None) -> dict:
    res = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
        return {"error": tail}
    lines = res.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference-python", default=str(_DEFAULT_REFERENCE))
    args = parser.parse_args()
    reference = (
        None if args.no_reference or not Path(args.reference_python).exists() else args.reference_python
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryDirectory(prefix="bench_map_raster_") as tmp:
        tmp_path = Path(tmp)
        npy, ours_store, ref_store = tmp_path / "img.npy", tmp_path / "ours.zarr", tmp_path / "ref.zarr"
        subprocess.run(
            [sys.executable, "-c", PREPARE, str(args.size), str(npy), str(ours_store)], check=True, env=env
        )
        if reference:
            subprocess.run([reference, "-c", PREPARE_REFERENCE, str(npy), str(ref_store)], check=True)
        rows = []
        for op in args.ops.split(","):
            row: dict = {"op": op}
            runs = [("ours", sys.executable, ours_store, env)]
            if reference:
                runs.append(("reference", reference, ref_store, None))
                runs.append(("ours_on_ref_store", sys.executable, ref_store, env))
            for lib, python, store, run_env in runs:
                out = tmp_path / f"out_{lib}_{op}.zarr"
                sample = tmp_path / f"sample_{lib}_{op}.npy"
                lib_arg = "reference" if lib == "reference" else "ours"
                row[lib] = _run(python, RUNNER, lib_arg, op, str(store), str(out), str(sample), env=run_env)
                print(lib, row[lib], file=sys.stderr)
            if reference and op == "gaussian":
                a = np.load(tmp_path / f"sample_ours_{op}.npy")
                b = np.load(tmp_path / f"sample_reference_{op}.npy")
                row["max_abs_diff_sample"] = float(np.abs(a.astype(np.float64) - b).max())
            if reference and "seconds" in row["ours"] and "seconds" in row["reference"]:
                row["ratio"] = round(row["reference"]["seconds"] / row["ours"]["seconds"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
