"""Plotting benchmark: read + render + save a PNG, each tool in a fresh process, side by side with
spatialdata-plot on the same store.

Workloads (tissuestack's synthetic data, ``ts.datasets.synthetic``; each store written once, cached):

  cells     ``--cells`` cell polygons (default 100k) coloured by the annotating table's ``cell_type``
  mixed     one figure: an 8192^2 3-channel image (3-level pyramid), 20M transcripts coloured by gene,
            100k cell polygons coloured by ``cell_type`` (half transparent)
  polygons  1M cell polygons coloured by ``cell_type``

Each tool runs in a fresh process, the store's files read once just before (page cache warm for both): imports (timed apart: tissuestack's modules are imported up front as
``import spatialdata`` imports the reference's), ``read_zarr``, render and save a PNG (Agg, dpi 100). Reported:
seconds for read + render + save (and the CPU seconds they took: less sensitive to a busy machine), the import
time, the whole process's wall time and its peak RSS (VmHWM from
/proc/self/status), and the load average before the run. A reference run longer than ``--timeout`` seconds is
stopped and reported as ">N s".

Usage:
  python3 benchmarks/bench_plot.py                                # cells, 100k polygons, with the reference
  python3 benchmarks/bench_plot.py --workload mixed --workload polygons --repeat 2
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sources import warm_files

REFERENCE = Path("/root/.cache/tissuestack-reference/bin/python")

_FOOTER = """
run = time.perf_counter() - t1
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime + ru.ru_stime - cpu0
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"import_s": imported, "render_s": run, "cpu_s": cpu, "peak_rss_mb": int(hwm) / 1024}))
"""

OURS_HEAD = """
import json, resource, sys, time
t0 = time.perf_counter()
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import tissuestack as ts
import tissuestack.pl  # tissuestack imports lazily: import what the run uses, as `import spatialdata` does
import tissuestack.ops
import tissuestack.query
imported = time.perf_counter() - t0
t1 = time.perf_counter()
cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
sdata = ts.read_zarr(sys.argv[1])
"""

REF_HEAD = """
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
cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
sdata = sd.read_zarr(sys.argv[1])
"""

# the same chain for both tools (spatialdata-plot's parameter names); ours saves through show(save=)
CHAINS = {
    "cells": 'sdata.pl.render_shapes("cell_boundaries", color="cell_type")',
    "polygons": 'sdata.pl.render_shapes("cell_boundaries", color="cell_type")',
    "mixed": (
        'sdata.pl.render_images("morphology")'
        '.pl.render_shapes("cell_boundaries", color="cell_type", fill_alpha=0.5)'
        '.pl.render_points("transcripts", color="gene", size=0.5)'
    ),
}


def scripts(workload: str) -> tuple[str, str]:
    chain = CHAINS[workload]
    ours = OURS_HEAD + f'{chain}.pl.show("global", save=sys.argv[2], dpi=100, legend_loc=None)\n' + _FOOTER
    ref = (
        REF_HEAD
        + f'ax = {chain}.pl.show("global", return_ax=True, legend_loc=None)\n'
        + "ax.figure.savefig(sys.argv[2], dpi=100)\n"
        + _FOOTER
    )
    return textwrap.dedent(ours), textwrap.dedent(ref)


def build_store(path: Path, workload: str, cells: int) -> None:
    import tissuestack as ts

    if workload == "mixed":
        full = ts.datasets.synthetic(
            n_cells=100_000, n_transcripts=20_000_000, image_size=8192, pyramid_levels=3
        )
        sdata = ts.SpatialData(
            images={"morphology": full["morphology"]},
            points={"transcripts": full["transcripts"]},
            shapes={"cell_boundaries": full["cell_boundaries"]},
            tables={"table": full["table"]},
        )
    else:
        n = 1_000_000 if workload == "polygons" else cells
        full = ts.datasets.synthetic(n_cells=n, n_transcripts=1_000, image_size=256)
        sdata = ts.SpatialData(
            shapes={"cell_boundaries": full["cell_boundaries"]}, tables={"table": full["table"]}
        )
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    sdata.write(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def run(
    python: str, code: str, store: Path, out: Path, env: dict | None = None, timeout: float | None = None
):
    warm_files(store)
    load = os.getloadavg()
    start = time.perf_counter()
    try:
        res = subprocess.run(
            [python, "-c", code, str(store), str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout, "load_avg": load}
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    return {**json.loads(line), "wall_s": wall, "png_bytes": out.stat().st_size, "load_avg": load}


def report(label: str, results: dict) -> None:
    for tool, r in results.items():
        load = "load avg " + " ".join(f"{v:.2f}" for v in r["load_avg"])
        if "timeout_s" in r:
            print(f"[{label}] {tool:17s} read+render+save > {r['timeout_s']:.0f} s (stopped)   {load}")
            continue
        print(
            f"[{label}] {tool:17s} read+render+save {r['render_s']:7.2f} s (CPU {r['cpu_s']:6.1f} s)   "
            f"import {r['import_s']:5.2f} s   "
            f"process {r['wall_s']:7.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   "
            f"png {r['png_bytes'] / 1e3:6.0f} kB   {load}",
            flush=True,
        )
    ref_r = results.get("spatialdata-plot")
    if ref_r is not None:
        ours_r = results["tissuestack"]
        if "timeout_s" in ref_r:
            print(f"[{label}] speed-up (read+render+save): > {ref_r['timeout_s'] / ours_r['render_s']:.1f}x")
        else:
            print(
                f"[{label}] speed-up (read+render+save): {ref_r['render_s'] / ours_r['render_s']:.1f}x   "
                f"whole process: {ref_r['wall_s'] / ours_r['wall_s']:.1f}x   "
                f"peak RSS ratio (reference / ours): {ref_r['peak_rss_mb'] / ours_r['peak_rss_mb']:.1f}x",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="append", choices=sorted(CHAINS), help="default: cells")
    ap.add_argument("--cells", type=int, default=100_000, help="polygons of the cells workload")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tissuestack_bench_plot"))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--build-only", action="store_true", help="write the stores and stop")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a reference run is stopped")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool per workload (alternating)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    everything = {}
    for workload in args.workload or ["cells"]:
        name = f"cells_{args.cells}" if workload == "cells" else workload
        store = args.workdir / f"{name}.zarr"
        if not store.exists():
            t = time.perf_counter()
            build_store(store, workload, args.cells)
            print(f"[{workload}] wrote {store} in {time.perf_counter() - t:.0f} s", flush=True)
        if args.build_only:
            continue
        ours, ref = scripts(workload)
        runs = []
        for rep in range(args.repeat):  # the tools alternate, so both see the machine's load of the moment
            results = {"tissuestack": run(sys.executable, ours, store, args.workdir / f"{name}_ours.png")}
            if not args.no_reference and REFERENCE.exists():
                env = {
                    k: v for k, v in os.environ.items() if k != "PYTHONPATH"
                }  # the reference's own packages
                results["spatialdata-plot"] = run(
                    str(REFERENCE),
                    ref,
                    store,
                    args.workdir / f"{name}_reference.png",
                    env=env,
                    timeout=args.timeout,
                )
            report(f"{workload} run {rep + 1}", results)
            runs.append(results)
        everything[workload] = runs
    print(json.dumps({"cells": args.cells, **everything}))


if __name__ == "__main__":
    main()
