"""Storage benchmark, side by side with the reference (scverse spatialdata 0.8) on the shared workload.

Measures, each in a fresh process (so peak RSS is per operation):
  write       build the SpatialData from the workload files, then write it to a new store (time of the write)
  open        open the store (metadata only), first call in a fresh process
  open_rows   open the store and get the number of points rows; peak RSS of the whole process

Usage:
  python3 benchmarks/bench_store.py --cells 20000 --tx 2000000 --image 4096
  python3 benchmarks/bench_store.py --cells 100000 --tx 20000000 --image 8192
Workloads are generated with ../shared/bench/gen.py into benchmarks/data/ (ignored by git) on first use.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"

OURS_WRITE = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, pandas as pd, geopandas as gpd, shapely, anndata as ad
    import tissuestack as ts
    W, store = sys.argv[1], sys.argv[2]
    meta = json.load(open(f"{W}/meta.json"))
    cells_df = pd.read_parquet(f"{W}/cells.parquet")
    tx = pd.read_parquet(f"{W}/transcripts.parquet")
    spots = pd.read_parquet(f"{W}/spots.parquet")
    img = np.load(f"{W}/image.npy")
    t0 = time.perf_counter()  # as in the reference's script: files are read before "build" starts
    cells = ts.ShapesModel.parse(gpd.GeoDataFrame({"cell_type": pd.Categorical(cells_df.cell_type)},
                                                   geometry=shapely.from_wkb(cells_df.wkb)))
    s = ts.ShapesModel.parse(spots[["x", "y"]].to_numpy(), radius=spots.radius.to_numpy())
    p = ts.PointsModel.parse(tx, feature_key="feature_name")
    i = ts.Image2DModel.parse(img, dims=("c", "y", "x"), scale_factors=[2, 2, 2],
                              transformations={"global": ts.Scale([meta["pixel_size_um"]] * 2, axes=("y", "x"))})
    obs = pd.DataFrame({"region": pd.Categorical(["cells"] * len(cells_df)), "cell_id": np.arange(len(cells_df)),
                        "cell_type": pd.Categorical(cells_df.cell_type)})
    t = ts.TableModel.parse(ad.AnnData(obs=obs), region="cells", region_key="region", instance_key="cell_id")
    sdata = ts.SpatialData(images={"dapi": i}, shapes={"cells": cells, "spots": s}, points={"transcripts": p},
                           tables={"table": t})
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    sdata.write(store, progress=False)
    write = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"build": round(build, 3), "write": round(write, 3), "write_peak_rss_mb": rss}))
    """
)

OPEN_TEMPLATE = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    {imports}
    store, what = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    sdata = {read}(store)
    opened = time.perf_counter() - t0
    out = {{"open": round(opened, 4)}}
    if what == "rows":
        t0 = time.perf_counter()
        out["rows"] = int(len(sdata["transcripts"]))
        out["open_rows"] = round(opened + time.perf_counter() - t0, 4)
        out["open_rows_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(out))
    """
)
# the library is imported before the timer starts, in both cases
OURS_OPEN = OPEN_TEMPLATE.format(
    imports="import tissuestack as ts\nfrom tissuestack import SpatialData", read="ts.read_zarr"
)
REF_OPEN = OPEN_TEMPLATE.format(imports="import spatialdata as sd", read="sd.read_zarr")


def run_json(cmd: list[str]) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{res.stderr[-3000:]}")
    out: dict = {}
    for line in res.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.update(json.loads(line))
    return out


def reference_python() -> str | None:
    env = SHARED / "tools" / "reference-env"
    if not env.exists():
        return None
    res = subprocess.run(["bash", str(env)], capture_output=True, text=True)
    return res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--tx", type=int, default=2_000_000)
    ap.add_argument("--image", type=int, default=4096)
    ap.add_argument("--open-runs", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()

    data = HERE / "data"
    work = data / f"w{args.cells}_{args.tx}_{args.image}"
    if not (work / "meta.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(SHARED / "bench" / "gen.py"),
                str(work),
                "--cells",
                str(args.cells),
                "--tx",
                str(args.tx),
                "--image",
                str(args.image),
            ],
            check=True,
            capture_output=True,
        )
    out_dir = data / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    ours_store = out_dir / "ours.zarr"
    shutil.rmtree(ours_store, ignore_errors=True)

    results: dict[str, dict] = {"tissuestack": {}, "reference": {}}
    results["tissuestack"].update(run_json([sys.executable, "-c", OURS_WRITE, str(work), str(ours_store)]))
    opens = [
        run_json([sys.executable, "-c", OURS_OPEN, str(ours_store), "open"])["open"]
        for _ in range(args.open_runs)
    ]
    results["tissuestack"]["open"] = sorted(opens)[len(opens) // 2]
    results["tissuestack"].update(
        {
            k: v
            for k, v in run_json([sys.executable, "-c", OURS_OPEN, str(ours_store), "rows"]).items()
            if k != "open"
        }
    )

    ref_py = None if args.no_reference else reference_python()
    if ref_py:
        ref = run_json(
            [ref_py, str(SHARED / "bench" / "reference_bench.py"), str(work), str(out_dir), "build,write"]
        )
        results["reference"].update({"build": ref.get("build"), "write": ref.get("write")})
        ref_store = out_dir / "anchor.zarr"
        ref_opens = [
            run_json([ref_py, "-c", REF_OPEN, str(ref_store), "open"])["open"] for _ in range(args.open_runs)
        ]
        results["reference"]["open"] = sorted(ref_opens)[len(ref_opens) // 2]
        results["reference"].update(
            {
                k: v
                for k, v in run_json([ref_py, "-c", REF_OPEN, str(ref_store), "rows"]).items()
                if k != "open"
            }
        )
        # each library opening the other's store
        results["tissuestack"]["open_reference_store"] = run_json(
            [sys.executable, "-c", OURS_OPEN, str(ref_store), "open"]
        )["open"]

    print(f"workload: {args.cells:,} cells, {args.tx:,} transcripts, {args.image}^2 image")
    print(f"{'metric':28s} {'tissuestack':>12s} {'reference':>12s} {'ratio ref/ours':>15s}")
    for key in ("write", "open", "open_rows", "open_rows_peak_rss_mb", "write_peak_rss_mb", "build"):
        ours = results["tissuestack"].get(key)
        theirs = results["reference"].get(key)
        ratio = f"{theirs / ours:.1f}x" if ours and theirs else "-"
        print(
            f"{key:28s} {ours if ours is not None else '-':>12} {theirs if theirs is not None else '-':>12} {ratio:>15s}"
        )
    if "open_reference_store" in results["tissuestack"]:
        print(
            f"tissuestack opening the reference's store: {results['tissuestack']['open_reference_store']} s"
        )
    (HERE / "results").mkdir(exist_ok=True)
    name = f"store_{args.cells}_{args.tx}.json"
    (HERE / "results" / name).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
