"""Plotting benchmark: polygons coloured by a table category, side by side with spatialdata-plot.

One store (tissuestack's synthetic data: ``--cells`` cell polygons annotated by a table with ``cell_type``) is
written once (cached). Each tool then runs in a fresh process: imports (timed apart), ``read_zarr``, render the
shapes coloured by ``cell_type`` and save a PNG (Agg, dpi 100). Reported: seconds for read + render + save (after
the imports: tissuestack's modules are imported up front as ``import spatialdata`` imports the reference's), the
import time, the whole process's wall time and its peak RSS.

Usage:
  python3 benchmarks/bench_plot.py                   # 100k polygons, with the reference
  python3 benchmarks/bench_plot.py --cells 20000 --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REFERENCE = Path("/root/.cache/tissuestack-reference/bin/python")

OURS = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.perf_counter()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot
    import tissuestack as ts
    import tissuestack.pl  # tissuestack imports lazily: import what the run uses, as `import spatialdata` does
    import tissuestack.ops
    imported = time.perf_counter() - t0
    t1 = time.perf_counter()
    sdata = ts.read_zarr(sys.argv[1])
    sdata.pl.render_shapes("cell_boundaries", color="cell_type").pl.show(save=sys.argv[2], dpi=100)
    run = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"import_s": imported, "render_s": run, "peak_rss_mb": rss}))
    """
)

REF = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)
    imported = time.perf_counter() - t0
    t1 = time.perf_counter()
    sdata = sd.read_zarr(sys.argv[1])
    ax = sdata.pl.render_shapes("cell_boundaries", color="cell_type").pl.show(return_ax=True)
    ax.figure.savefig(sys.argv[2], dpi=100)
    run = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"import_s": imported, "render_s": run, "peak_rss_mb": rss}))
    """
)


def build_store(path: Path, cells: int) -> None:
    import tissuestack as ts

    full = ts.datasets.synthetic(n_cells=cells, n_transcripts=1_000, image_size=256)
    sdata = ts.SpatialData(
        shapes={"cell_boundaries": full["cell_boundaries"]}, tables={"table": full["table"]}
    )
    if path.exists():
        shutil.rmtree(path)
    sdata.write(path)


def run(python: str, code: str, store: Path, out: Path, env: dict | None = None) -> dict:
    start = time.perf_counter()
    res = subprocess.run([python, "-c", code, str(store), str(out)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    return {**json.loads(line), "wall_s": wall, "png_bytes": out.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tissuestack_bench_plot"))
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = args.workdir / f"cells_{args.cells}.zarr"
    if not store.exists():
        build_store(store, args.cells)
    results = {"tissuestack": run(sys.executable, OURS, store, args.workdir / "ours.png")}
    if not args.no_reference and REFERENCE.exists():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the reference's own packages only
        results["spatialdata-plot"] = run(str(REFERENCE), REF, store, args.workdir / "reference.png", env=env)
    for tool, r in results.items():
        print(
            f"{tool:17s} read+render+save {r['render_s']:7.2f} s   import {r['import_s']:5.2f} s   "
            f"process {r['wall_s']:7.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   png {r['png_bytes'] / 1e3:6.0f} kB"
        )
    if "spatialdata-plot" in results:
        ratio = results["spatialdata-plot"]["render_s"] / results["tissuestack"]["render_s"]
        print(f"speed-up (read+render+save): {ratio:.1f}x")
    print(json.dumps({"cells": args.cells, **results}))


if __name__ == "__main__":
    main()
