"""read_zarr + rasterize in a fresh process, side by side with the reference (scverse spatialdata 0.8).

Data: the generator of ``bench_sources.py`` (``--cells`` concave 10-spike star cells, 5 % multipolygons, shuffled
string ids, a categorical ``cell_type`` column; ``--tx`` transcripts around them). The reference builds and writes
``ref.zarr``; ``tissuestack convert-format`` rewrites it as ``ours.zarr``.

Operations (whole extent of the cells, ``target_unit_to_pixels`` = ``--upp``, coordinate system ``global``; the
same arguments on both sides):

  cells       rasterize the cells (no value_key): instance ids per pixel (image, one channel)
  cell_type   rasterize the cells with value_key="cell_type" (first category code per pixel)
  transcripts rasterize the transcripts (counts per pixel)

Each runs in a fresh process per library and store, imports first (untimed), then read_zarr + rasterize +
compute of the raster (first call), then again on a freshly opened store (repeat). Checks: pixels covered on each
side, and the share of pixels whose foreground / background status agrees between the two libraries (the pixel
rules differ slightly: ours counts a pixel when its centre is inside a polygon; datashader's polygon fill has its
own edge rules).

Usage:
  python3 benchmarks/bench_rasterize.py                         # 100k cells, 2M transcripts
  python3 benchmarks/bench_rasterize.py --cells 20000 --tx 200000 --no-reference
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_sources import NO_DISTRIBUTED, _json, _reference_python, prepare_stores, warm_files  # noqa: E402

_DEFAULT_REFERENCE = Path.home() / ".cache" / "tissuestack-reference" / "bin" / "python"


def _reference() -> str | None:
    """The reference's python: shared/tools/reference-env next to the checkout, else its default venv."""
    return _reference_python() or (str(_DEFAULT_REFERENCE) if _DEFAULT_REFERENCE.exists() else None)


OPS = ("cells", "cell_type", "transcripts")

RUNNER = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
LIB, OP, STORE, E, UPP, MASK = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
t0 = time.perf_counter()
import numpy as np
element = "transcripts" if OP == "transcripts" else "cells"
kwargs = {"value_key": "cell_type"} if OP == "cell_type" else {}
if LIB == "ours":
    import tissuestack as ts
    import tissuestack.ops  # noqa: F401
    def run():
        s = ts.read_zarr(STORE)
        r = ts.rasterize(s[element], ("x", "y"), [0, 0], [E, E], "global", target_unit_to_pixels=UPP, **kwargs)
        return np.asarray(r.data.compute())
else:
    import spatialdata as sd
    def run():
        s = sd.read_zarr(STORE)
        r = sd.rasterize(s[element], ("x", "y"), [0, 0], [E, E], "global", target_unit_to_pixels=UPP, **kwargs)
        return np.asarray(r.data.compute() if hasattr(r.data, "compute") else r.data)
imports = time.perf_counter() - t0
t = time.perf_counter(); arr = run(); first = time.perf_counter() - t
t = time.perf_counter(); run(); repeat = time.perf_counter() - t
fg = np.nan_to_num(arr.astype(np.float64)).sum(axis=0) > 0
np.save(MASK, fg)
print(json.dumps({"imports_s": round(imports, 3), "first_s": round(first, 3), "repeat_s": round(repeat, 3),
                  "shape": list(arr.shape), "covered": int(fg.sum()),
                  "total": float(np.nan_to_num(arr.astype(np.float64)).sum()) if OP == "transcripts" else None,
                  "peak_rss_mb": peak_mb(),
                  "distributed_imported": "distributed" in sys.modules}))
"""


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--tx", type=int, default=2_000_000)
    ap.add_argument("--upp", type=float, default=1.0, help="target_unit_to_pixels (pixels per micron)")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument(
        "--without-distributed", action="store_true", help="run ours with dask.distributed not importable (as "
        "installed without the test extras); the reference keeps it (its dependency)"
    )
    args = ap.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    ref_py = None if args.no_reference else _reference()
    meta, ref_store, our_store = prepare_stores(args.data, args.cells, args.tx, ref_py)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for op in ops:
            row: dict = {"op": op}
            masks = {}
            for lib, store, py in (("ours", ref_store, sys.executable), ("ours", our_store, sys.executable),
                                   ("reference", ref_store, ref_py)):  # fmt: skip
                if py is None:
                    continue
                key = f"{lib}@{'ref' if store == ref_store else 'ours'}"
                mask = str(Path(tmp) / f"{op}_{key}.npy")
                code = NO_DISTRIBUTED + RUNNER if args.without_distributed and lib == "ours" else RUNNER
                cmd = [py, "-c", code, lib, op, str(store), str(meta["extent_um"]), str(args.upp), mask]
                warm_files(store)
                row[key] = _json(cmd)
                if "error" not in row[key]:
                    masks[key] = np.load(mask)
                print(json.dumps({op: {key: row[key]}}), file=sys.stderr, flush=True)
            if "reference@ref" in masks and "ours@ours" in masks:
                a, b = masks["reference@ref"], masks["ours@ours"]
                if a.shape == b.shape:
                    row["agreement"] = float((a == b).mean())
            rows.append(row)
    _report(rows, meta, args.upp, args.without_distributed)


def _report(rows: list[dict], meta: dict, upp: float, without_distributed: bool = False) -> None:
    note = "; ours without dask.distributed importable" if without_distributed else ""
    print(
        f"\n{meta['cells']:,} cells / {meta['tx']:,} transcripts, {upp} px/um; read_zarr + rasterize (computed){note}"
    )
    print("seconds first / repeat, peak RSS MB\n")
    print(
        "| op | reference (its store) | ours, reference's store | ratio | ours, our store | ratio | agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ref = row.get("reference@ref", {})
        cells = [row["op"], _cell(ref)]
        for key in ("ours@ref", "ours@ours"):
            r = row.get(key, {})
            cells.append(_cell(r))
            ok = "first_s" in ref and "first_s" in r
            cells.append(
                f"{ref['first_s'] / r['first_s']:.1f}x / {ref['repeat_s'] / r['repeat_s']:.1f}x" if ok else ""
            )
        cells.append(f"{100 * row['agreement']:.3f} %" if "agreement" in row else "")
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        checks = {
            k: (v.get("shape"), v.get("covered"), v.get("total"))
            for k, v in row.items()
            if isinstance(v, dict)
        }
        print(f"check {row['op']} (shape, covered pixels, total): {checks}")


def _cell(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error'][:60]}"
    if "first_s" not in r:
        return ""
    return f"{r['first_s']} / {r['repeat_s']} s, {r['peak_rss_mb']} MB"


if __name__ == "__main__":
    main()
