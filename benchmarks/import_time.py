"""Import time of tissuestack against the reference (scverse spatialdata).

Each measurement is a fresh interpreter timing only the import statement (interpreter start-up excluded).
The reference is timed with the python printed by ../shared/tools/reference-env when it is available.

Usage: python3 benchmarks/import_time.py [--runs N] [--reference-python PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE_ENV = HERE.parent.parent / "shared" / "tools" / "reference-env"

SNIPPET = "import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"


def time_import(python: str, stmt: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        res = subprocess.run(
            [python, "-c", SNIPPET.format(stmt=stmt)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        out.append(float(res.stdout.strip().splitlines()[-1]))
    return out


def reference_python(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if not REFERENCE_ENV.exists():
        return None
    res = subprocess.run(["bash", str(REFERENCE_ENV)], capture_output=True, text=True)
    return res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--reference-python")
    args = ap.parse_args()

    rows = []
    for stmt in ("import tissuestack", "from tissuestack import SpatialData"):
        times = time_import(sys.executable, stmt, args.runs)
        rows.append((stmt, statistics.median(times), min(times)))
    ref_py = reference_python(args.reference_python)
    ref = None
    if ref_py:
        times = time_import(ref_py, "import spatialdata", args.runs)
        ref = statistics.median(times)
        rows.append(("import spatialdata (reference)", ref, min(times)))

    print(f"{'statement':45s} {'median s':>9s} {'min s':>9s}")
    for stmt, med, mn in rows:
        print(f"{stmt:45s} {med:9.3f} {mn:9.3f}")
    if ref:
        print(f"ratio reference / tissuestack (import): {ref / rows[0][1]:.1f}x")
        print(f"ratio reference / tissuestack (SpatialData): {ref / rows[1][1]:.1f}x")
    else:
        print("reference not available: run ../shared/tools/reference-env first")
    target = 0.3
    status = "OK" if rows[0][1] < target else "TOO SLOW"
    print(f"target: import tissuestack < {target} s -> {status}")


if __name__ == "__main__":
    main()
