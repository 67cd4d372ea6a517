"""Spatial engine benchmark, side by side with the reference (scverse spatialdata 0.8).

  bbox_query      bounding-box query of the whole SpatialData (points computed), in-memory data as the reference's
                  own benchmark builds it, with the process's RSS before it and the query's own peak increase
                  (Linux VmHWM reset); also from a store: read_zarr, then a first query (which loads the shapes
                  and tables it touches) and a second box of the same size, with the process's peak RSS
  polygon_query   polygon query of the whole SpatialData (points computed)
  transform_1m    transforming 1M polygons (20 vertices) to a coordinate system reached by an affine
  extent_1m       get_extent of 1M polygons

Usage:
  python3 benchmarks/bench_query.py                      # 100k cells / 20M transcripts + 1M polygons
  python3 benchmarks/bench_query.py --cells 20000 --tx 2000000 --image 4096 --polygons 200000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

# the same build and helpers as the storage benchmark (benchmarks/ is on sys.path when run as a script)
from bench_store import OURS_WRITE, reference_python, run_json

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"

LOAD = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, pandas as pd, geopandas as gpd, shapely, anndata as ad
    W = sys.argv[1]
    meta = json.load(open(f"{W}/meta.json"))
    cells_df = pd.read_parquet(f"{W}/cells.parquet")
    e = meta["extent_um"]
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    def hwm_reset():  # Linux: restart the peak-RSS counter (VmHWM), to measure the peak of one operation
        try:
            open("/proc/self/clear_refs", "w").write("5")
        except OSError:
            pass
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) // 1024
    """
)

OURS_QUERIES = LOAD + textwrap.dedent(
    """
    import tissuestack as ts
    tx = pd.read_parquet(f"{W}/transcripts.parquet")
    spots = pd.read_parquet(f"{W}/spots.parquet")
    img = np.load(f"{W}/image.npy")
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
    del tx
    # like `import spatialdata` for the reference, load the modules before timing (tissuestack imports lazily)
    ts.bounding_box_query, ts.polygon_query
    out = {}
    import gc; gc.collect()
    out["rss_before_queries_mb"] = rss()
    hwm_reset()
    for key in ("bbox_query", "bbox_query_warm"):
        t0 = time.perf_counter()
        r = ts.bounding_box_query(sdata, axes=("x", "y"), min_coordinate=[e * 0.25, e * 0.25],
                                  max_coordinate=[e * 0.5, e * 0.5], target_coordinate_system="global",
                                  filter_table=True)
        n = len(r["transcripts"].compute())
        out[key] = round(time.perf_counter() - t0, 4); out["bbox_rows"] = n
        if key == "bbox_query":
            out["bbox_query_peak_increase_mb"] = hwm() - out["rss_before_queries_mb"]
    roi = shapely.Polygon([(e*0.2, e*0.2), (e*0.6, e*0.25), (e*0.55, e*0.7), (e*0.25, e*0.6)])
    t0 = time.perf_counter()
    r = ts.polygon_query(sdata, roi, target_coordinate_system="global", filter_table=True)
    n = len(r["transcripts"].compute())
    out["polygon_query"] = round(time.perf_counter() - t0, 4); out["polygon_rows"] = n
    out["queries_peak_rss_mb"] = rss()
    print(json.dumps(out))
    """
)

OURS_STORE_BBOX = LOAD + textwrap.dedent(
    """
    import tissuestack as ts
    store = sys.argv[2]
    ts.bounding_box_query  # load the module before timing, as for the reference
    sdata = ts.read_zarr(store)
    t0 = time.perf_counter()
    r = ts.bounding_box_query(sdata, axes=("x", "y"), min_coordinate=[e * 0.25, e * 0.25],
                              max_coordinate=[e * 0.5, e * 0.5], target_coordinate_system="global", filter_table=True)
    n = len(r["transcripts"].compute())
    out = {"bbox_query_store": round(time.perf_counter() - t0, 4), "bbox_store_rows": n}
    # another box of the same size, now that the elements are loaded (no result is reused between the two)
    t0 = time.perf_counter()
    r = ts.bounding_box_query(sdata, axes=("x", "y"), min_coordinate=[e * 0.5, e * 0.25],
                              max_coordinate=[e * 0.75, e * 0.5], target_coordinate_system="global", filter_table=True)
    len(r["transcripts"].compute())
    out["bbox_query_store_loaded"] = round(time.perf_counter() - t0, 4)
    out["bbox_query_store_peak_rss_mb"] = rss()
    print(json.dumps(out))
    """
)

POLYGONS = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, geopandas as gpd, shapely
    n = int(sys.argv[1]); lib = sys.argv[2]
    rng = np.random.default_rng(0)
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    c = rng.uniform(0, 10_000, (n, 2)); r = rng.uniform(3, 5, (n, 1))
    rings = np.stack([c[:, :1] + r * np.cos(ang), c[:, 1:] + r * np.sin(ang)], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)
    gdf = gpd.GeoDataFrame(geometry=shapely.polygons(rings))
    matrix = [[0.8, -0.6, 100.0], [0.6, 0.8, -50.0], [0.0, 0.0, 1.0]]
    out = {}
    if lib == "ours":
        import tissuestack as ts
        ts.get_extent, ts.transform  # load the modules before timing, as for the reference
        el = ts.ShapesModel.parse(gdf, transformations={"global": ts.Identity(),
                                                      "aligned": ts.Affine(matrix, ("x", "y"), ("x", "y"))})
        t0 = time.perf_counter(); ts.get_extent(el, "global"); out["extent_1m"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter(); ts.transform(el, "aligned"); out["transform_1m"] = round(time.perf_counter() - t0, 4)
    else:
        import spatialdata as sd
        from spatialdata.models import ShapesModel
        from spatialdata.transformations import Affine, Identity
        el = ShapesModel.parse(gdf, transformations={"global": Identity(),
                                                   "aligned": Affine(matrix, ("x", "y"), ("x", "y"))})
        t0 = time.perf_counter(); sd.get_extent(el, "global"); out["extent_1m"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter(); sd.transform(el, to_coordinate_system="aligned")
        out["transform_1m"] = round(time.perf_counter() - t0, 4)
    print(json.dumps(out))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--tx", type=int, default=20_000_000)
    ap.add_argument("--image", type=int, default=8192)
    ap.add_argument("--polygons", type=int, default=1_000_000)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()

    work = HERE / "data" / f"w{args.cells}_{args.tx}_{args.image}"
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
    store = HERE / "data" / "out" / f"query_{args.cells}_{args.tx}.zarr"
    if not store.exists():  # a store written by tissuestack, for the store-backed query
        store.parent.mkdir(parents=True, exist_ok=True)
        run_json([sys.executable, "-c", OURS_WRITE, str(work), str(store)])

    ours: dict = {}
    ours.update(run_json([sys.executable, "-c", OURS_QUERIES, str(work)]))
    ours.update(run_json([sys.executable, "-c", OURS_STORE_BBOX, str(work), str(store)]))
    ours.update(run_json([sys.executable, "-c", POLYGONS, str(args.polygons), "ours"]))
    print(json.dumps({"tissuestack": ours}), flush=True)
    ref: dict = {}
    ref_py = None if args.no_reference else reference_python()
    if ref_py:
        out_dir = HERE / "data" / "out"
        ref.update(
            run_json(
                [
                    ref_py,
                    str(SHARED / "bench" / "reference_bench.py"),
                    str(work),
                    str(out_dir),
                    "build,bbox_query,polygon_query",
                ]
            )
        )
        ref.update(run_json([ref_py, "-c", POLYGONS, str(args.polygons), "ref"]))

    print(
        f"workload: {args.cells:,} cells, {args.tx:,} transcripts; {args.polygons:,} polygons for transform/extent"
    )
    print(f"{'metric':30s} {'tissuestack':>12s} {'reference':>12s} {'ratio ref/ours':>15s}")
    for key in ("bbox_query", "polygon_query", "transform_1m", "extent_1m"):
        a, b = ours.get(key), ref.get(key)
        ratio = f"{b / a:.1f}x" if a and b else "-"
        print(f"{key:30s} {a if a is not None else '-':>12} {b if b is not None else '-':>12} {ratio:>15s}")
    for key in (
        "bbox_query_warm",
        "bbox_rows",
        "polygon_rows",
        "rss_before_queries_mb",
        "bbox_query_peak_increase_mb",
        "queries_peak_rss_mb",
        "bbox_query_store",
        "bbox_query_store_loaded",
        "bbox_store_rows",
        "bbox_query_store_peak_rss_mb",
    ):
        print(f"{key:30s} {ours.get(key, '-')!s:>12}")
    if ref:
        print(f"{'reference peak RSS (MB)':30s} {'':>12} {ref.get('peak_rss_mb', '-')!s:>12}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"query_{args.cells}_{args.tx}.json").write_text(
        json.dumps({"ours": ours, "ref": ref}, indent=1)
    )


if __name__ == "__main__":
    main()
