"""Aggregation benchmark, side by side with the reference (scverse spatialdata 0.8) on the shared workload.

  agg_points_by_cells            transcripts counted per gene in each cell polygon (value_key="feature_name",
                                 agg_func="count")
  agg_points_by_spots            the same per Visium-like spot (circles)
  agg_cells_by_spots_fractions   cell types per spot weighted by overlap (value_key="cell_type", fractions=True)

Our process builds the in-memory SpatialData exactly as the reference's script does (``shared/bench/
reference_bench.py``: points, shapes, image and table from the workload files), imports the modules before timing
(as ``import spatialdata`` does for the reference), times each aggregation once (first call in the process, which
includes the numba runtime's start, reported separately; the numba disk cache is warm) and once more (repeat),
and reports the process's peak RSS.

``--tx 100000000`` (or any count with ``--stream``): the transcripts are generated chunk by chunk around the cells
of the ``--cells`` workload (the law of ``gen.py``), written once to a tissuestack store (cached), and a fresh
process aggregates them by cells from that store (streamed partition by partition) and reports time and peak RSS.

``--check-totals`` also runs the three aggregations in the reference's venv and compares ``X.sum()``.

Usage:
  python3 benchmarks/bench_aggregate.py                                   # 100k cells / 20M, with the reference
  python3 benchmarks/bench_aggregate.py --no-reference
  python3 benchmarks/bench_aggregate.py --cells 20000 --tx 2000000 --image 4096 --check-totals
  python3 benchmarks/bench_aggregate.py --tx 100000000                    # streamed from a store
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bench_store import reference_python, run_json

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
OPS = ("agg_points_by_cells", "agg_points_by_spots", "agg_cells_by_spots_fractions")
PUBLISHED = {  # shared/bench/README.md, 100k cells / 20M transcripts, seconds and MB
    "agg_points_by_cells": 57.9,
    "agg_points_by_spots": 25.2,
    "agg_cells_by_spots_fractions": 1.03,
    "peak_rss_mb": 11.2 * 1024,
}
TARGETS = {"agg_points_by_cells": 30, "agg_points_by_spots": 20, "agg_cells_by_spots_fractions": 5}

OURS = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, pandas as pd, geopandas as gpd, shapely, anndata as ad
    import tissuestack as ts
    W = sys.argv[1]
    meta = json.load(open(f"{W}/meta.json"))
    cells_df = pd.read_parquet(f"{W}/cells.parquet")
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
    # like `import spatialdata` for the reference: load the modules (not the compiled kernels) before timing
    import tissuestack.ops._aggregate_points, tissuestack.ops._aggregate_shapes  # noqa: E401
    import tissuestack.kernels._points_in_regions, tissuestack.kernels._zonal  # noqa: E401
    calls = {
        "agg_points_by_cells": dict(values="transcripts", by="cells", value_key="feature_name", agg_func="count"),
        "agg_points_by_spots": dict(values="transcripts", by="spots", value_key="feature_name", agg_func="count"),
        "agg_cells_by_spots_fractions": dict(values="cells", by="spots", value_key="cell_type", agg_func="sum",
                                             fractions=True),
    }
    out = {}
    for rep in ("", "_repeat"):
        for name, kw in calls.items():
            t0 = time.perf_counter()
            a = ts.aggregate(sdata=sdata, target_coordinate_system="global", **kw)
            out[name + rep] = round(time.perf_counter() - t0, 4)
            out[name + "_total"] = float(a.X.sum())
            out[name + "_shape"] = list(a.shape)
        out["peak_rss_mb" + rep] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(out))
    """
)

REF_TOTALS = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, pandas as pd, geopandas as gpd, shapely
    import spatialdata as sd
    from spatialdata.models import PointsModel, ShapesModel
    W = sys.argv[1]
    cells_df = pd.read_parquet(f"{W}/cells.parquet")
    tx = pd.read_parquet(f"{W}/transcripts.parquet")
    spots = pd.read_parquet(f"{W}/spots.parquet")
    cells = ShapesModel.parse(gpd.GeoDataFrame({"cell_type": pd.Categorical(cells_df.cell_type)},
                                               geometry=shapely.from_wkb(cells_df.wkb)))
    s = ShapesModel.parse(spots[["x", "y"]].to_numpy(), geometry=0, radius=spots.radius.to_numpy())
    p = PointsModel.parse(tx, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="feature_name")
    out = {}
    for name, values, by, kw in (
        ("agg_points_by_cells", p, cells, dict(value_key="feature_name", agg_func="count")),
        ("agg_points_by_spots", p, s, dict(value_key="feature_name", agg_func="count")),
        ("agg_cells_by_spots_fractions", cells, s, dict(value_key="cell_type", agg_func="sum", fractions=True)),
    ):
        a = sd.aggregate(values=values, by=by, target_coordinate_system="global", **kw)["table"]
        out[name + "_total"] = float(a.X.sum())
    print(json.dumps(out))
    """
)

# the 100M-transcript store: transcripts generated in chunks around the workload's cells (gen.py's law), parsed
# as a lazy dask frame and written once with the streaming points writer
WRITE_BIG = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import dask, dask.dataframe as dd, numpy as np, pandas as pd, geopandas as gpd, shapely
    import tissuestack as ts
    W, store, n_tx, genes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    meta = json.load(open(f"{W}/meta.json"))
    cells_df = pd.read_parquet(f"{W}/cells.parquet")
    extent = meta["extent_um"]
    names = np.array([f"G{i:04d}" for i in range(genes)])
    prob = np.random.default_rng(0).zipf(1.3, genes).astype(float); prob /= prob.sum()
    cx, cy = cells_df.cx.to_numpy(), cells_df.cy.to_numpy()
    chunk = 5_000_000
    def make(k, n):
        rng = np.random.default_rng(1000 + k)
        n_in = int(n * 0.75)
        owner = rng.integers(0, len(cx), n_in)
        x = np.concatenate([cx[owner] + rng.normal(0, 2.0, n_in), rng.uniform(0, extent, n - n_in)])
        y = np.concatenate([cy[owner] + rng.normal(0, 2.0, n_in), rng.uniform(0, extent, n - n_in)])
        perm = rng.permutation(n)
        g = rng.choice(genes, n, p=prob)
        return pd.DataFrame({"x": x[perm].astype(np.float32), "y": y[perm].astype(np.float32),
                             "z": rng.uniform(0, 10, n).astype(np.float32),
                             "feature_name": pd.Categorical.from_codes(g, names)})
    sizes = [min(chunk, n_tx - a) for a in range(0, n_tx, chunk)]
    meta_frame = make(0, 1).iloc[:0]
    frame = dd.from_delayed([dask.delayed(make)(k, n) for k, n in enumerate(sizes)], meta=meta_frame,
                            verify_meta=False)
    points = ts.PointsModel.parse(frame, feature_key="feature_name")
    cells = ts.ShapesModel.parse(gpd.GeoDataFrame({"cell_type": pd.Categorical(cells_df.cell_type)},
                                                   geometry=shapely.from_wkb(cells_df.wkb)))
    t0 = time.perf_counter()
    ts.SpatialData(points={"transcripts": points}, shapes={"cells": cells}).write(store, progress=False)
    print(json.dumps({"write_big_s": round(time.perf_counter() - t0, 1),
                      "write_big_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
    """
)

# the numba runtime's start in a fresh process (its first kernel dispatch): part of the first aggregation's time
NUMBA_START = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import tissuestack.kernels._points_in_regions as K
    t0 = time.perf_counter()
    K.unique_labels(np.zeros(4, dtype=np.int32))
    print(json.dumps({"numba_first_dispatch_s": round(time.perf_counter() - t0, 3)}))
    """
)

AGG_BIG = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import tissuestack as ts
    import tissuestack.ops._aggregate_points, tissuestack.kernels._points_in_regions  # noqa: E401
    sdata = ts.read_zarr(sys.argv[1])
    t0 = time.perf_counter()
    a = ts.aggregate("transcripts", "cells", sdata=sdata, value_key="feature_name", agg_func="count")
    out = {"stream_agg_points_by_cells": round(time.perf_counter() - t0, 3), "stream_total": float(a.X.sum()),
           "stream_rows": int(len(sdata["transcripts"])), "stream_partitions": sdata["transcripts"].npartitions,
           "stream_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    print(json.dumps(out))
    """
)


def _workload(cells: int, tx: int, image: int) -> Path:
    work = HERE / "data" / f"w{cells}_{tx}_{image}"
    if not (work / "meta.json").exists():
        subprocess.run(
            [sys.executable, str(SHARED / "bench" / "gen.py"), str(work), "--cells", str(cells), "--tx", str(tx),
             "--image", str(image)],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return work


def _stream(args: argparse.Namespace) -> None:
    work = _workload(args.cells, 20_000_000 if args.cells == 100_000 else 2_000_000, args.image)
    store = HERE / "data" / "out" / f"agg_{args.cells}_{args.tx}.zarr"
    results: dict = {}
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        results.update(
            run_json([sys.executable, "-c", WRITE_BIG, str(work), str(store), str(args.tx), "300"])
        )
    results.update(run_json([sys.executable, "-c", AGG_BIG, str(store)]))
    print(json.dumps(results, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"aggregate_stream_{args.cells}_{args.tx}.json").write_text(
        json.dumps(results, indent=1)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--tx", type=int, default=20_000_000)
    ap.add_argument("--image", type=int, default=8192)
    ap.add_argument("--stream", action="store_true", help="aggregate --tx transcripts streamed from a store")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--check-totals", action="store_true", help="compare X.sum() with the reference's")
    args = ap.parse_args()
    if args.stream or args.tx > 20_000_000:
        _stream(args)
        return

    work = _workload(args.cells, args.tx, args.image)
    ours = run_json([sys.executable, "-c", OURS, str(work)])
    ours.update(run_json([sys.executable, "-c", NUMBA_START]))
    print(json.dumps({"tissuestack": ours}), flush=True)
    ref: dict = {}
    ref_py = None if args.no_reference and not args.check_totals else reference_python()
    if ref_py and not args.no_reference:
        out_dir = HERE / "data" / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        ref.update(run_json([ref_py, str(SHARED / "bench" / "reference_bench.py"), str(work), str(out_dir),
                             ",".join(("build", *OPS))]))  # fmt: skip
    if ref_py and args.check_totals:
        ref.update(run_json([ref_py, "-c", REF_TOTALS, str(work)]))

    print(f"workload: {args.cells:,} cells, {args.tx:,} transcripts")
    print(
        f"{'metric':32s} {'tissuestack':>12s} {'repeat':>9s} {'reference':>10s} {'ratio':>7s} {'vs published':>13s}"
    )
    published = args.cells == 100_000 and args.tx == 20_000_000
    for key in (*OPS, "peak_rss_mb"):
        a, r, b = ours.get(key), ours.get(key + "_repeat"), ref.get(key)
        ratio = f"{b / a:.1f}x" if a and b else "-"
        pub = f"{PUBLISHED[key] / a:.1f}x" if a and published else "-"
        print(f"{key:32s} {a!s:>12} {r!s:>9} {b if b is not None else '-'!s:>10} {ratio:>7s} {pub:>13s}")
    print(
        f"(first calls include the numba runtime's start: {ours.get('numba_first_dispatch_s')} s in a fresh process)"
    )
    if args.check_totals:
        for key in OPS:
            a, b = ours.get(key + "_total"), ref.get(key + "_total")
            rel = f"{(a - b) / b:+.4%}" if a is not None and b else "-"
            print(f"{key + ' X.sum()':44s} ours {a}  reference {b}  difference {rel}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"aggregate_{args.cells}_{args.tx}.json").write_text(
        json.dumps({"ours": ours, "ref": ref}, indent=1)
    )


if __name__ == "__main__":
    main()
