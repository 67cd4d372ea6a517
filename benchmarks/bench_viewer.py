"""The browser viewer on the 100k-cell / 20M-transcript workload: page load, zoom and pan re-render, server memory.

The stores come from ``bench_sources.prepare_stores`` (the reference writes ``ref.zarr``, ``tissuestack
convert-format`` writes ``ours.zarr``). For each store, ``tissuestack view STORE --no-browser`` runs as its own
process; Debian's chromium (Playwright) opens the page with the cells coloured by the table's ``cell_type`` and
the transcripts by gene, and the script times, as a user sees them:

  ready     from starting the server process until it prints its URL (imports, read_zarr, and reading what the
            first view needs: point coordinates and colours, polygon rings, extent)
  load      from navigation until every layer's first picture has arrived
  zoom      one wheel step (zoom in 2x about a point) until every layer shows the new view (5 in a row)
  pan       one drag until every layer shows the new view (5 in a row)
  colour    choosing another colour key for the cells until the new picture has arrived

plus the server's peak RSS (``VmHWM``) and each render's time inside the server.

napari-spatialdata's side (``_napari_side.py``, run under Xvfb with the reference's python) is run with
``--napari`` when that script and napari are available.

Usage:
  python3 benchmarks/bench_viewer.py                              # 100k cells / 20M transcripts
  python3 benchmarks/bench_viewer.py --cells 20000 --tx 2000000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ALL_DRAWN = """() => {
  const v = Bokeh.index.all_views().find(v => v.model.name === 'ts-figure');
  if (!v) return false;
  const x0 = Math.min(v.model.x_range.start, v.model.x_range.end);
  const rs = v.model.renderers.filter(r => r.visible && r.glyph && r.glyph.type === 'ImageRGBA');
  const ms = v.model.renderers.filter(r => r.visible && r.glyph && r.glyph.type === 'Scatter'
                                        && !('cls' in r.data_source.data));
  if (rs.length + ms.length < window.__ts_layers) return false;
  return rs.every(r => r.data_source.data.x.length === 1 && Math.abs(r.data_source.data.x[0] - x0) < 1e-6 * Math.max(1, Math.abs(x0)));
}"""
LAYERS = "() => Bokeh.index.all_views().find(v => v.model.name === 'ts-figure').model.renderers.filter(r => r.visible && r.glyph && (r.glyph.type === 'ImageRGBA')).length"
FRAME = """() => { const v = Bokeh.index.all_views().find(v => v.model.name === 'ts-figure');
  const r = v.el.getBoundingClientRect(); const f = v.frame.bbox;
  return [r.left + f.x + f.width / 2, r.top + f.y + f.height / 2]; }"""
IMAGE = """() => { const v = Bokeh.index.all_views().find(v => v.model.name === 'ts-figure');
  const r = v.model.renderers.find(r => r.name === 'ts-layers'); return r.data_source.data.image[0]; }"""
IMAGE_X = """() => { const v = Bokeh.index.all_views().find(v => v.model.name === 'ts-figure');
  return v.model.renderers.filter(r => r.glyph && r.glyph.type === 'ImageRGBA' && r.visible).map(r => r.data_source.data.x[0]); }"""


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _chromium() -> str:
    found = os.environ.get("TISSUESTACK_CHROMIUM") or shutil.which("chromium")
    if not found:
        sys.exit("no chromium (apt-get install -y chromium)")
    return found


def run_ours(store: Path, n_layers_expected: int | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    log = open(HERE / "data" / f"viewer_{store.stem}.log", "w+")
    t_start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tissuestack", "view", str(store), "--no-browser", "--port", "0"],
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "TISSUESTACK_VIEWER_LOG": "1"},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        while " at http" not in line:
            if proc.poll() is not None:
                raise RuntimeError(f"the viewer did not start; see {log.name}")
            line = proc.stdout.readline()
        url = line.rsplit(" at ", 1)[1].strip()
        # the whole process: python start, imports, read_zarr, reading what the first view needs
        out: dict = {"store": str(store), "server_ready_s": time.perf_counter() - t_start}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            t = time.perf_counter()
            page.goto(url)
            page.wait_for_selector(".ts-color-cells", timeout=600_000)
            out["page_ui_s"] = time.perf_counter() - t
            page.evaluate("() => { window.__ts_layers = 1 }")
            page.wait_for_function(ALL_DRAWN, timeout=600_000, polling=50)
            time.sleep(0.5)
            page.wait_for_function(ALL_DRAWN, timeout=600_000, polling=50)
            out["load_s"] = time.perf_counter() - t
            out["layers_shown"] = page.evaluate(LAYERS)
            page.evaluate(f"() => {{ window.__ts_layers = {out['layers_shown']} }}")
            page.evaluate(f"() => {{ window.__ts_img = ({IMAGE})() }}")
            t = time.perf_counter()
            page.locator(".ts-color-cells select").select_option("cell_type")
            page.wait_for_function(f"() => ({IMAGE})() !== window.__ts_img", timeout=600_000, polling=20)
            out["colour_s"] = time.perf_counter() - t
            cx, cy = page.evaluate(FRAME)
            page.mouse.move(cx, cy)
            marks: list[tuple[str, float]] = []

            def timed(what: str, act) -> float:
                """Seconds from ``act()`` until every layer shows the new view."""
                before = page.evaluate(IMAGE_X)
                t = time.perf_counter()
                marks.append((what, round(t, 3)))
                act()
                page.wait_for_function(f"() => JSON.stringify(({IMAGE_X})()) !== '{json.dumps(before)}'",
                                       timeout=600_000, polling=20)  # fmt: skip
                page.wait_for_function(ALL_DRAWN, timeout=600_000, polling=20)
                elapsed = time.perf_counter() - t
                time.sleep(0.3)
                return elapsed

            def drag(dx: float) -> None:
                page.mouse.move(cx, cy)
                page.mouse.down()
                page.mouse.move(cx + dx, cy + 40, steps=4)
                page.mouse.up()

            out["zoom_s"] = [timed("zoom", lambda: page.mouse.wheel(0, -240)) for _ in range(5)]
            out["pan_s"] = [timed("pan", lambda i=i: drag(60 if i % 2 else -60)) for i in range(5)]
            page.screenshot(path=str(HERE / "data" / f"viewer_{store.stem}.png"))
            browser.close()
        log.flush()
        log.seek(0)
        renders = [ln.split() for ln in log if " render requested " in ln]
        # perf_counter is CLOCK_MONOTONIC: comparable between this process and the server's
        out["server_renders"] = [
            {"requested": float(r[3]), "render_s": round(float(r[7]) - float(r[5]), 3)} for r in renders
        ]
        out["marks"] = marks
        out["server_peak_rss_mb"] = _vm(proc.pid, "VmHWM")
        out["server_rss_mb"] = _vm(proc.pid, "VmRSS")
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--tx", type=int, default=20_000_000)
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--stores", default="ref,ours", help="which stores: ref, ours or both")
    ap.add_argument("--napari", action="store_true", help="also run napari-spatialdata (_napari_side.py)")
    args = ap.parse_args()
    import bench_sources

    ref_py = bench_sources._reference_python()
    _, ref_store, our_store = bench_sources.prepare_stores(args.data, args.cells, args.tx, ref_py)
    (HERE / "data").mkdir(exist_ok=True)
    results = []
    for which in args.stores.split(","):
        store = ref_store if which == "ref" else our_store
        r = run_ours(store)
        r["side"] = f"tissuestack, {which} store"
        print(json.dumps(r), flush=True)
        results.append(r)
    side = HERE / "_napari_side.py"
    if args.napari and side.exists() and ref_py is not None:
        cmd = ["xvfb-run", "-a", ref_py, str(side), str(ref_store), "--shapes", "cells", "--points", "transcripts"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
