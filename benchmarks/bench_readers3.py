"""MACSima and MCMICRO conversion, side by side with the reference reader.

Writes (cached in ``benchmarks/data/``, ignored by git) a MACSima folder of single-channel OME-TIFFs
(``tissuestack.io.fake.write_macsima``, default 3000 x 3000 px, 8 channels of which 4 DAPI, so the nuclei image is
split off) and an MCMICRO whole-slide folder (``write_mcmicro``, default 4000 x 4000 px, 3 markers), then times,
each in its own fresh process (peak RSS = ``ru_maxrss`` of that process, libraries imported before the timer):

  tissuestack   tissuestack.io.convert(<technology>, folder, out)            (streaming, lazy TIFFs)
  reference     spatialdata_io.<technology>(folder) then .write(out)         (spatialdata-io + spatialdata 0.8)

Usage:
  python3 benchmarks/bench_readers3.py
  python3 benchmarks/bench_readers3.py --size 2000 --skip-reference
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
DATA = HERE / "data"
REFERENCE_PYTHON = Path("/root/.cache/tissuestack-reference/bin/python")

OURS = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import tissuestack.io as tio
    from tissuestack.io import _macsima, _mcmicro, _tiff  # imported before timing
    import tissuestack.store
    technology, folder, out = sys.argv[1:4]
    t0 = time.perf_counter()
    tio.convert(technology, folder, out, overwrite=True, progress=False)
    total = time.perf_counter() - t0
    print(json.dumps({"total_s": round(total, 2), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
    """
)

REFERENCE = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import spatialdata_io
    technology, folder, out = sys.argv[1:4]
    t0 = time.perf_counter()
    getattr(spatialdata_io, technology)(folder).write(out, overwrite=True)
    total = time.perf_counter() - t0
    print(json.dumps({"total_s": round(total, 2), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
    """
)


def _run(python: str, script: str, *args: str) -> dict:
    res = subprocess.run([python, "-c", script, *args], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:200] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3000, help="MACSima image side (px)")
    parser.add_argument("--mcmicro-size", type=int, default=4000, help="MCMICRO image side (px)")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    from tissuestack.io.fake import write_macsima, write_mcmicro

    DATA.mkdir(exist_ok=True)
    folders = {
        "macsima": DATA / f"macsima_{args.size}",
        "mcmicro": DATA / f"mcmicro_{args.mcmicro_size}",
    }
    if not folders["macsima"].exists():
        write_macsima(folders["macsima"], height=args.size, width=args.size, dapi_cycles=(1, 2, 15, 16))
        shutil.rmtree(folders["macsima"] / "notes")
    if not folders["mcmicro"].exists():
        write_mcmicro(folders["mcmicro"], height=args.mcmicro_size, width=args.mcmicro_size, raw=False)
    print("| technology | tissuestack s | tissuestack peak MB | reference s | reference peak MB | time ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for technology, folder in folders.items():
        out = DATA / f"{technology}_out"
        ours = _run(sys.executable, OURS, technology, str(folder), str(out) + "_ours.zarr")
        ref = {"total_s": float("nan"), "peak_rss_mb": float("nan")}
        if not args.skip_reference and REFERENCE_PYTHON.exists():
            ref = _run(str(REFERENCE_PYTHON), REFERENCE, technology, str(folder), str(out) + "_ref.zarr")
        if "error" in ours or "error" in ref:
            print(f"| {technology} | {ours} | | {ref} | | |")
            continue
        ratio = ref["total_s"] / ours["total_s"] if ours["total_s"] else float("nan")
        print(
            f"| {technology} | {ours['total_s']} | {ours['peak_rss_mb']} | {ref['total_s']} | "
            f"{ref['peak_rss_mb']} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
