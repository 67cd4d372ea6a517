"""Open + operate on stores, side by side with the reference (scverse spatialdata 0.8): the workload users meet.

The data (own generator, plain numpy/pandas/shapely): ``--cells`` concave star-shaped cells (10 spikes), 5 % of
them multipolygons (a second, smaller star beside the first), shuffled string ids, a ``cell_type`` column;
``--tx`` transcripts clustered around the cells (90 %) and scattered (10 %), float32 x/y/z, a gene column of plain
strings, in 4 Parquet files; Visium-like spots (radius 27.5 um on a 100 um hexagonal grid); a table annotating
the cells.

The reference builds the SpatialData from those files (points from the 4 Parquet files through dask, as users
load them) and writes ``ref.zarr``; ``tissuestack convert-format`` rewrites it as ``ours.zarr``. Then each
operation runs in a fresh process per library and store (the store's files read once just before: page cache warm
for every run), with the package imports done before the clock starts
(as ``import spatialdata`` is for the reference): ``read_zarr`` + the operation, timed together (first call),
then again on a freshly opened store (repeat); peak RSS of the process; a checksum compared across sides.

  agg_cells   transcripts -> cells, counts per gene
  agg_spots   transcripts -> spots, counts per gene
  fractions   cells -> spots, cell-type fractions (area share)
  bbox        bounding-box query of the whole SpatialData, transcripts computed
  polygon     polygon query of the whole SpatialData, transcripts computed

``--cpu`` reports CPU seconds of the process (all its threads) instead of wall-clock seconds. ``--whole-process``
also times, from the shell, a whole ``python -c`` script that imports, opens the store and
aggregates transcripts by cells (both libraries).

Usage:
  python3 benchmarks/bench_sources.py                              # 100k cells / 20M transcripts
  python3 benchmarks/bench_sources.py --cells 20000 --tx 2000000   # quick
  python3 benchmarks/bench_sources.py --ops agg_cells,bbox --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the shared folder next to the checkout (../shared), or next to its parent for a git worktree (../../shared)
SHARED = next((p / "shared" for p in HERE.parents if (p / "shared" / "tools").is_dir()), HERE.parent.parent / "shared")
OPS = ("agg_cells", "agg_spots", "fractions", "bbox", "polygon")


# ------------------------------------------------------------------------------------------------ generator
def generate(out: Path, n_cells: int, n_tx: int, seed: int = 0) -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(n_cells)))
    pitch = 10.0
    extent = side * pitch
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    centres = np.column_stack([gx.ravel(), gy.ravel()])[:n_cells] * pitch + pitch / 2
    centres += rng.uniform(-1.5, 1.5, centres.shape)
    spikes = 10
    angles = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False)
    outer = rng.uniform(3.6, 4.6, (n_cells, 1))
    inner = outer * rng.uniform(0.45, 0.6, (n_cells, 1))
    radii = np.where(np.arange(2 * spikes) % 2 == 0, outer, inner)
    phase = rng.uniform(0, np.pi, (n_cells, 1))
    xs = centres[:, :1] + radii * np.cos(angles + phase)
    ys = centres[:, 1:] + radii * np.sin(angles + phase)
    rings = np.stack([xs, ys], axis=2)
    polys = shapely.polygons(np.concatenate([rings, rings[:, :1]], axis=1))
    multi = rng.random(n_cells) < 0.05
    # satellites: the same star at 35 % size, 7.8 um off the centre diagonally (disjoint from the first part)
    sat_rings = (rings - centres[:, None, :]) * 0.35 + centres[:, None, :] + 5.5
    sat = shapely.polygons(np.concatenate([sat_rings, sat_rings[:, :1]], axis=1))
    geoms = polys.copy()
    geoms[multi] = shapely.multipolygons(np.stack([polys[multi], sat[multi]], axis=1))
    ids = np.array([f"cell_{i:07x}" for i in rng.permutation(n_cells)])
    types = rng.choice(["T", "B", "tumour", "stroma", "endothelial"], n_cells)
    pd.DataFrame({"cell_id": ids, "cell_type": types, "wkb": shapely.to_wkb(geoms)}).to_parquet(out / "cells.parquet")

    genes = np.array([f"gene_{i:03d}" for i in range(300)])
    weights = 1.0 / np.arange(1, 301) ** 0.8
    weights /= weights.sum()
    per_file = -(-n_tx // 4)
    for f in range(4):
        n = min(per_file, n_tx - f * per_file)
        clustered = rng.random(n) < 0.9
        which = rng.integers(0, n_cells, n)
        x = np.where(clustered, centres[which, 0] + rng.normal(0, 2.5, n), rng.uniform(0, extent, n))
        y = np.where(clustered, centres[which, 1] + rng.normal(0, 2.5, n), rng.uniform(0, extent, n))
        table = pa.table(
            {
                "x": x.astype(np.float32),
                "y": y.astype(np.float32),
                "z": rng.uniform(0, 10, n).astype(np.float32),
                "gene": pa.array(genes[rng.choice(300, n, p=weights)], type=pa.string()),
            }
        )
        pq.write_table(table, out / f"transcripts.{f}.parquet", use_dictionary=False, row_group_size=1 << 20)
    spacing = 100.0
    sx, sy = np.meshgrid(np.arange(0, extent, spacing), np.arange(0, extent, spacing * np.sqrt(3) / 2))
    sx = sx + (np.arange(sx.shape[0])[:, None] % 2) * spacing / 2
    pd.DataFrame({"x": sx.ravel(), "y": sy.ravel(), "radius": 27.5}).to_parquet(out / "spots.parquet")
    meta = {"cells": n_cells, "tx": n_tx, "extent_um": extent}
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


REFERENCE_BUILD = """
import glob, json, sys, time
import numpy as np, pandas as pd, geopandas as gpd, shapely, anndata as ad, dask.dataframe as dd
import spatialdata as sd
from spatialdata.models import PointsModel, ShapesModel, TableModel
W, OUT = sys.argv[1], sys.argv[2]
cells_df = pd.read_parquet(f"{W}/cells.parquet")
cells = gpd.GeoDataFrame({"cell_type": pd.Categorical(cells_df.cell_type)}, geometry=shapely.from_wkb(cells_df.wkb),
                         index=pd.Index(cells_df.cell_id.to_numpy(), name="cell_id"))
spots = pd.read_parquet(f"{W}/spots.parquet")
tx = dd.read_parquet(sorted(glob.glob(f"{W}/transcripts.*.parquet")))
obs = pd.DataFrame({"region": pd.Categorical(["cells"] * len(cells)), "cell_id": cells_df.cell_id.to_numpy(),
                    "cell_type": pd.Categorical(cells_df.cell_type)})
obs.index = obs.index.astype(str)
sdata = sd.SpatialData(
    shapes={"cells": ShapesModel.parse(cells),
            "spots": ShapesModel.parse(spots[["x", "y"]].to_numpy(), geometry=0, radius=spots.radius.to_numpy())},
    points={"transcripts": PointsModel.parse(tx, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="gene")},
    tables={"table": TableModel.parse(ad.AnnData(obs=obs), region="cells", region_key="region", instance_key="cell_id")},
)
t = time.perf_counter(); sdata.write(OUT, overwrite=True)
print(json.dumps({"reference_write_s": round(time.perf_counter() - t, 2)}))
"""

# one operation in a fresh process: imports first (untimed), then read_zarr + op (first), then again (repeat)
RUNNER = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
def peak_mb():  # this process's own high-water mark (getrusage's ru_maxrss is kept across exec from the parent)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
LIB, OP, STORE, E = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
t0 = time.perf_counter()
import numpy as np, shapely
if LIB == "ours":
    import tissuestack as ts
    import tissuestack.ops, tissuestack.query, tissuestack.store  # noqa: F401
    def run():
        s = ts.read_zarr(STORE)
        if OP == "agg_cells":
            return ts.aggregate("transcripts", "cells", sdata=s, value_key="gene", agg_func="count").X.sum()
        if OP == "agg_spots":
            return ts.aggregate("transcripts", "spots", sdata=s, value_key="gene", agg_func="count").X.sum()
        if OP == "fractions":
            return ts.aggregate("cells", "spots", sdata=s, value_key="cell_type", agg_func="sum", fractions=True).X.sum()
        if OP == "bbox":
            q = ts.bounding_box_query(s, axes=("x", "y"), min_coordinate=[E * .25, E * .25], max_coordinate=[E * .5, E * .5],
                                      target_coordinate_system="global")
            return len(q["transcripts"].compute())
        roi = shapely.Polygon([(E * .2, E * .2), (E * .6, E * .25), (E * .55, E * .7), (E * .25, E * .6)])
        return len(ts.polygon_query(s, roi, target_coordinate_system="global")["transcripts"].compute())
else:
    import spatialdata as sd
    def run():
        s = sd.read_zarr(STORE)
        if OP in ("agg_cells", "agg_spots"):
            by = "cells" if OP == "agg_cells" else "spots"
            return sd.aggregate(values=s["transcripts"], by=s[by], value_key="gene", agg_func="count",
                                target_coordinate_system="global")["table"].X.sum()
        if OP == "fractions":
            return sd.aggregate(values=s["cells"], by=s["spots"], value_key="cell_type", agg_func="sum", fractions=True,
                                target_coordinate_system="global")["table"].X.sum()
        if OP == "bbox":
            q = sd.bounding_box_query(s, axes=("x", "y"), min_coordinate=[E * .25, E * .25], max_coordinate=[E * .5, E * .5],
                                      target_coordinate_system="global", filter_table=True)
            return len(q["transcripts"].compute())
        roi = shapely.Polygon([(E * .2, E * .2), (E * .6, E * .25), (E * .55, E * .7), (E * .25, E * .6)])
        return len(sd.polygon_query(s, roi, target_coordinate_system="global", filter_table=True)["transcripts"].compute())
imports = time.perf_counter() - t0
t = time.perf_counter(); value = run(); first = time.perf_counter() - t
t = time.perf_counter(); run(); repeat = time.perf_counter() - t
print(json.dumps({"imports_s": round(imports, 3), "first_s": round(first, 3), "repeat_s": round(repeat, 3),
                  "value": float(value), "peak_rss_mb": peak_mb(),
                  "distributed_imported": "distributed" in sys.modules}))
"""

#: prepended to our runners with ``--without-distributed``: ``distributed`` cannot be imported, as after
#: ``pip install tissuestack`` (not one of its dependencies; the reference depends on it). Where it is installed,
#: dask imports it on the first compute of a process to look for a Client (0.3-0.5 s on this machine), in our
#: processes as in the reference's.
NO_DISTRIBUTED = """
import sys
class _NoDistributed:
    def find_spec(self, name, path=None, target=None):
        if name == "distributed" or name.startswith("distributed."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoDistributed())
"""

WHOLE = {
    "ours": "import tissuestack as ts, sys; print(ts.aggregate('transcripts', 'cells', sdata=ts.read_zarr(sys.argv[1]), "
    "value_key='gene', agg_func='count').X.sum())",
    "reference": "import spatialdata as sd, sys; s = sd.read_zarr(sys.argv[1]); print(sd.aggregate(values=s['transcripts'], "
    "by=s['cells'], value_key='gene', agg_func='count', target_coordinate_system='global')['table'].X.sum())",
}


def _reference_python() -> str | None:
    try:
        out = subprocess.run([str(SHARED / "tools" / "reference-env")], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip().splitlines()[-1]


def warm_files(store: Path) -> None:
    """Read every file of the store once, so each tool starts with the store in the page cache (the machine may
    drop cold pages between runs: whichever tool ran first would read from disk)."""
    for path in sorted(Path(store).rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def _json(cmd: list[str]) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def prepare_stores(data: Path, cells: int, tx: int, ref_py: str | None) -> tuple[dict, Path, Path]:
    """The generated workload (cached in ``data``), the store the reference wrote and ours converted from it."""
    folder = data / f"sources_{cells}_{tx}"
    if not (folder / "meta.json").exists():
        t = time.perf_counter()
        generate(folder, cells, tx)
        print(f"generated {folder} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    meta = json.loads((folder / "meta.json").read_text())
    ref_store, our_store = folder / "ref.zarr", folder / "ours.zarr"
    if not ref_store.exists():
        if ref_py is None:
            sys.exit("the reference environment is needed once, to write ref.zarr (shared/tools/reference-env)")
        print(_json([ref_py, "-c", REFERENCE_BUILD, str(folder), str(ref_store)]), file=sys.stderr)
    if not our_store.exists():
        cmd = [sys.executable, "-m", "tissuestack", "convert-format", str(ref_store), str(our_store)]
        subprocess.run([*cmd, "--zarr-format", "3"], check=True, capture_output=True)
    return meta, ref_store, our_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--tx", type=int, default=20_000_000)
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--whole-process", action="store_true")
    ap.add_argument(
        "--without-distributed", action="store_true", help="run ours with dask.distributed not importable (as "
        "installed without the test extras); the reference keeps it (its dependency)"
    )
    ap.add_argument(
        "--cpu", action="store_true", help="report the process's CPU seconds (all threads) instead of wall-clock "
        "seconds: steadier on a machine shared with other jobs"
    )
    args = ap.parse_args()
    runner = RUNNER.replace("time.perf_counter()", "time.process_time()") if args.cpu else RUNNER
    ops = [o for o in args.ops.split(",") if o]
    ref_py = None if args.no_reference else _reference_python()
    meta, ref_store, our_store = prepare_stores(args.data, args.cells, args.tx, ref_py)
    rows = []
    for op in ops:
        row = {"op": op}
        for lib, store, py in (("ours", ref_store, sys.executable), ("ours", our_store, sys.executable),
                               ("reference", ref_store, ref_py)):  # fmt: skip
            if py is None:
                continue
            key = f"{lib}@{'ref' if store == ref_store else 'ours'}"
            warm_files(store)
            code = NO_DISTRIBUTED + runner if args.without_distributed and lib == "ours" else runner
            row[key] = _json([py, "-c", code, lib, op, str(store), str(meta["extent_um"])])
            print(json.dumps({op: {key: row[key]}}), file=sys.stderr, flush=True)
        rows.append(row)
    whole = {}
    if args.whole_process:
        for lib, py in (("ours", sys.executable), ("reference", ref_py)):
            if py is None:
                continue
            warm_files(ref_store)
            t = time.perf_counter()
            code = NO_DISTRIBUTED + WHOLE[lib] if args.without_distributed and lib == "ours" else WHOLE[lib]
            subprocess.run([py, "-c", code, str(ref_store)], check=True, capture_output=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
            whole[lib] = round(time.perf_counter() - t, 2)
    _report(rows, whole, meta, args.without_distributed)


def _report(rows: list[dict], whole: dict, meta: dict, without_distributed: bool = False) -> None:
    note = "; ours without dask.distributed importable" if without_distributed else ""
    print(f"\n{meta['cells']:,} cells / {meta['tx']:,} transcripts; read_zarr + op, seconds (first / repeat), peak RSS MB{note}\n")
    print("| op | reference (its store) | ours, reference's store | ratio | ours, our store | ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ref = row.get("reference@ref", {})
        cells = [row["op"], _cell(ref)]
        for key in ("ours@ref", "ours@ours"):
            r = row.get(key, {})
            cells.append(_cell(r))
            ok = "first_s" in ref and "first_s" in r
            cells.append(f"{ref['first_s'] / r['first_s']:.1f}x" if ok else "")
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        values = {k: v.get("value") for k, v in row.items() if isinstance(v, dict)}
        print(f"check {row['op']}: {values}")
    if whole:
        line = ", ".join(f"{k} {v} s" for k, v in whole.items())
        ratio = f" ({whole['reference'] / whole['ours']:.1f}x)" if len(whole) == 2 else ""
        print(f"whole process (import + open + aggregate transcripts by cells): {line}{ratio}")


def _cell(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error'][:60]}"
    if "first_s" not in r:
        return ""
    return f"{r['first_s']} / {r['repeat_s']} s, {r['peak_rss_mb']} MB (imports {r['imports_s']} s)"


if __name__ == "__main__":
    main()
