"""Conversion benchmark: a Xenium bundle -> SpatialData Zarr store, side by side with the reference.

Generates once (cached in ``benchmarks/data/``, ignored by git) a synthetic XOA 4.0 bundle with
``tissuestack.io.fake.write_xenium`` (default: 100k cells, 20M transcripts, 300 genes, 4-channel morphology
focus image, cell/nucleus label masks, boundaries, an aligned H&E image), then times, each in its own fresh
process so that the peak RSS is that of the conversion alone:

  tissuestack   tissuestack.io.convert("xenium", bundle, out)   (streaming: one element at a time)
  reference     spatialdata_io.xenium(bundle) then .write(out)   (scverse spatialdata-io 0.7.1 + spatialdata 0.8)

Libraries are imported before the timer starts on both sides. Peak RSS is ``ru_maxrss`` of the child process.

Usage:
  python3 benchmarks/bench_convert.py                       # 100k cells / 20M transcripts
  python3 benchmarks/bench_convert.py --cells 20000 --tx 2000000
  python3 benchmarks/bench_convert.py --skip-reference
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
REFERENCE_PYTHON = Path("/root/.cache/tissuestack-reference/bin/python")

OURS = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import tissuestack.io as tio
    from tissuestack.io import _xenium, _tiff, _tenx_h5  # the reader's modules, imported before timing
    import tissuestack.store
    bundle, out = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    try:
        convert = tio.convert
    except AttributeError:  # no streaming converter: read then write
        convert = None
    if convert is not None:
        convert("xenium", bundle, out, overwrite=True, progress=False)
        mode = "convert (streaming)"
    else:
        tio.xenium(bundle).write(out, overwrite=True, progress=False)
        mode = "xenium().write()"
    total = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"total_s": round(total, 2), "peak_rss_mb": rss, "mode": mode}))
    """
)

REFERENCE = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import spatialdata
    from spatialdata_io import xenium
    bundle, out = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    sdata = xenium(bundle)
    read = time.perf_counter() - t0
    t1 = time.perf_counter()
    sdata.write(out, overwrite=True)
    write = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"read_s": round(read, 2), "write_s": round(write, 2), "total_s": round(read + write, 2),
                      "peak_rss_mb": rss, "mode": "xenium() + write()"}))
    """
)


def bundle_path(cells: int, tx: int, genes: int) -> Path:
    return DATA / f"xenium_{cells}_{tx}" if genes == 300 else DATA / f"xenium_{cells}_{tx}_{genes}"


def ensure_bundle(cells: int, tx: int, genes: int) -> Path:
    """Write the synthetic bundle once; a marker file tells a complete bundle from an interrupted one."""
    path = bundle_path(cells, tx, genes)
    marker = path / ".complete"
    if marker.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    sys.path.insert(0, str(HERE.parent / "src"))
    from tissuestack.io.fake import write_xenium

    t0 = time.perf_counter()
    write_xenium(path, version="4.0.0", n_cells=cells, n_transcripts=tx, n_genes=genes, seed=0)
    marker.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
    print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def run(python: str, script: str, *args: str) -> dict:
    res = subprocess.run([python, "-c", script, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--tx", type=int, default=20_000_000)
    parser.add_argument("--genes", type=int, default=300)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    args = parser.parse_args()

    bundle = ensure_bundle(args.cells, args.tx, args.genes)
    out_dir = DATA / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    if not args.skip_ours:
        out = out_dir / "xenium_ours.zarr"
        results["tissuestack"] = run(sys.executable, OURS, str(bundle), str(out))
        results["tissuestack"]["store_mb"] = du_mb(out)
        shutil.rmtree(out, ignore_errors=True)
        print("tissuestack", results["tissuestack"], flush=True)
    if not args.skip_reference:
        if REFERENCE_PYTHON.exists():
            out = out_dir / "xenium_reference.zarr"
            results["reference"] = run(str(REFERENCE_PYTHON), REFERENCE, str(bundle), str(out))
            results["reference"]["store_mb"] = du_mb(out)
            shutil.rmtree(out, ignore_errors=True)
            print("reference", results["reference"], flush=True)
        else:
            print(f"reference environment {REFERENCE_PYTHON} is absent: skipped")

    ours, ref = results.get("tissuestack"), results.get("reference")
    print()
    print(
        f"Xenium bundle: {args.cells:,} cells, {args.tx:,} transcripts, {args.genes} genes ({du_mb(bundle)} MB)"
    )
    print("| metric | tissuestack | reference | ratio |")
    print("|---|---|---|---|")
    for key, label, better in (
        ("total_s", "conversion time (s)", "faster"),
        ("peak_rss_mb", "peak RSS (MB)", "less"),
        ("store_mb", "store size (MB)", "smaller"),
    ):
        a = ours.get(key) if ours else None
        b = ref.get(key) if ref else None
        ratio = f"{b / a:.2f}x {better}" if a and b else "-"
        print(f"| {label} | {a if a is not None else '-'} | {b if b is not None else '-'} | {ratio} |")
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"convert_xenium_{args.cells}_{args.tx}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
