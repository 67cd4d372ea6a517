"""The napari-spatialdata side of the viewer benchmark (issue 14): open, add layers, draw, zoom, pan, peak RSS.

Runs in the reference environment (scverse spatialdata 0.8 + napari-spatialdata + napari with PyQt5) under Xvfb:

  xvfb-run -a -s "-screen 0 1920x1080x24" /root/.cache/tissuestack-reference/bin/python \\
      benchmarks/_napari_side.py STORE [--shapes cells] [--points transcripts] [--json OUT]

Steps, each timed on its own (``time.perf_counter``) with the peak RSS (VmHWM) and load average after it:

  open        ``spatialdata.read_zarr(STORE)``
  viewer      ``napari_spatialdata.Interactive(sdata, headless=True)`` (napari window + SpatialData widgets)
  select_cs   the coordinate system's element list, as ``Interactive.add_element`` builds it on every call
              (``get_elements_meta_mapping``: ``filter_by_coordinate_system``, tables filtered too); built once
  add_shapes  what ``add_element`` then does (``SdataWidget._onClick``, as a double click on the element):
              napari-spatialdata builds the layer in its ``QThread`` (DataLoadThread) and hands it to
              ``viewer.add_layer`` through a queued signal; timed until the thread is done, the layer is in
              ``viewer.layers`` and the Qt event loop has been drained
  draw_shapes ``viewer.screenshot(canvas_only=True)`` (forces a vispy draw) right after
  add_points  / draw_points: the same for the points element
  first_draw  ``viewer.reset_view()`` + screenshot: the first framed draw with both layers
  zoom        ``camera.zoom *= 4`` + screenshot (three times; the first and all are reported)
  pan         ``camera.center`` moved by a quarter of the visible width + screenshot (three times)

What napari-spatialdata does with the data (napari-spatialdata 0.7.2 source, ``_viewer.py``): points are
``.compute()``d in full, then randomly subsampled to ``config.POINT_THRESHOLD`` (100 000) rows when larger, z
dropped (``PROJECT_3D_POINTS_TO_2D``); multipolygons are exploded and only the largest part per cell kept;
polygon exteriors are ``simplify(tolerance=2)``'d when there are more than ``POLYGON_THRESHOLD`` (100) of
them, in a Python loop over rows that takes ``int(index)`` of every row, so an element with string ids
cannot be added as it is: the script then adds a copy with a RangeIndex (``--no-int-index`` turns that off)
and says so in ``notes``.

A step that does not finish within ``--step-timeout`` seconds (default 600) ends the run, and the whole run ends
after ``--total-timeout`` (default 1200): the JSON printed then has what was measured and a note saying where
it stopped and after how long.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
RESULT: dict = {"notes": [], "steps": {}}
_LOCK = threading.Lock()
_DONE = threading.Event()
_OUT: Path | None = None


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _emit(exit_code: int | None = None) -> None:
    with _LOCK:
        if _DONE.is_set():
            return
        _DONE.set()
        RESULT["peak_rss_mb"] = round(_status("VmHWM"), 1)
        RESULT["wall_s"] = round(time.perf_counter() - T0, 2)
        text = json.dumps(RESULT)
        if _OUT is not None:
            _OUT.write_text(text + "\n")
        print(text, flush=True)
    if exit_code is not None:
        os._exit(exit_code)


class _Watchdog:
    """Ends the process with the partial JSON when a step or the whole run overruns."""

    def __init__(self, total: float) -> None:
        self.step = "start"
        self.step_start = time.perf_counter()
        self.step_limit = float("inf")
        self.end = T0 + total
        threading.Thread(target=self._run, daemon=True).start()

    def begin(self, step: str, limit: float) -> None:
        self.step, self.step_start, self.step_limit = step, time.perf_counter(), limit

    def _run(self) -> None:
        while not _DONE.is_set():
            time.sleep(1.0)
            now = time.perf_counter()
            waited = now - self.step_start
            if waited > self.step_limit or now > self.end:
                why = "step timeout" if waited > self.step_limit else "total timeout"
                RESULT["notes"].append(f"{self.step}: not finished after {waited:.0f} s ({why}); run stopped")
                RESULT["stopped_at"] = self.step
                _emit(exit_code=2)


def _record(name: str, seconds: float, **extra) -> None:
    RESULT["steps"][name] = {
        "s": round(seconds, 3),
        "peak_rss_mb": round(_status("VmHWM"), 1),
        "rss_mb": round(_status("VmRSS"), 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }
    print(
        f"[napari-side] {name}: {seconds:.3f} s, VmHWM {_status('VmHWM'):.0f} MB", file=sys.stderr, flush=True
    )


def _versions() -> dict:
    from importlib.metadata import version

    out = {"python": sys.version.split()[0]}
    for dist in (
        "spatialdata",
        "napari",
        "napari-spatialdata",
        "vispy",
        "PyQt5",
        "numpy",
        "dask",
        "geopandas",
    ):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = None
    try:
        from qtpy import QT_VERSION

        out["Qt"] = QT_VERSION
    except Exception:
        pass
    return out


def _gl_info() -> dict:
    try:
        from vispy.gloo import gl

        return {
            "GL_RENDERER": gl.glGetParameter(gl.GL_RENDERER),
            "GL_VERSION": gl.glGetParameter(gl.GL_VERSION),
        }
    except Exception as e:
        return {"error": repr(e)}


def main() -> None:
    global _OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", type=Path)
    ap.add_argument("--shapes", default="cells")
    ap.add_argument("--points", default="transcripts")
    ap.add_argument("--cs", default="global", help="coordinate system to add the elements in")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    ap.add_argument("--step-timeout", type=float, default=600.0)
    ap.add_argument("--total-timeout", type=float, default=1200.0)
    ap.add_argument("--point-threshold", type=int, default=None,
                    help="set napari_spatialdata config.POINT_THRESHOLD (default: leave it, 100 000)")  # fmt: skip
    ap.add_argument("--no-int-index", action="store_true",
                    help="do not retry shapes with a RangeIndex copy when the string index is refused")  # fmt: skip
    ap.add_argument("--cs-mapping", choices=("napari", "fast"), default="napari",
                    help="build the element list as napari-spatialdata does, or without filtering the tables")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    _OUT = args.json
    RESULT["store"] = str(args.store)
    RESULT["elements"] = {"shapes": args.shapes, "points": args.points, "cs": args.cs}
    RESULT["load_at_start"] = [round(x, 2) for x in os.getloadavg()]
    dog = _Watchdog(args.total_timeout)

    # errors raised in napari-spatialdata's QThread or in Qt slots reach sys.excepthook (PyQt5 would abort without)
    errors: list[str] = []

    def hook(tp, val, tb) -> None:
        errors.append("".join(traceback.format_exception_only(tp, val)).strip())
        print("".join(traceback.format_exception(tp, val, tb)), file=sys.stderr, flush=True)

    t = time.perf_counter()
    import spatialdata
    from napari_spatialdata import Interactive
    from napari_spatialdata.constants import config
    from qtpy.QtWidgets import QApplication

    sys.excepthook = hook
    threading.excepthook = lambda a: hook(a.exc_type, a.exc_value, a.exc_traceback)
    _record("import", time.perf_counter() - t)
    RESULT["versions"] = _versions()
    if args.point_threshold is not None:
        config.POINT_THRESHOLD = args.point_threshold
    RESULT["config"] = {"POINT_THRESHOLD": config.POINT_THRESHOLD, "POLYGON_THRESHOLD": config.POLYGON_THRESHOLD,
                        "PROJECT_3D_POINTS_TO_2D": config.PROJECT_3D_POINTS_TO_2D}  # fmt: skip

    dog.begin("open", args.step_timeout)
    t = time.perf_counter()
    sdata = spatialdata.read_zarr(args.store)
    RESULT["open_s"] = round(time.perf_counter() - t, 3)
    _record("open", RESULT["open_s"])
    n_shapes = len(sdata.shapes[args.shapes]) if args.shapes else 0
    n_points = len(sdata.points[args.points])
    RESULT["n_shapes"], RESULT["n_points"] = n_shapes, n_points

    dog.begin("viewer", args.step_timeout)
    t = time.perf_counter()
    inter = Interactive(sdata, headless=True)
    viewer = inter._viewer
    viewer.window._qt_window.resize(1600, 1000)
    viewer.window.show()
    QApplication.processEvents()
    viewer.screenshot(canvas_only=True)
    _record("viewer", time.perf_counter() - t)
    RESULT["versions"]["gl"] = _gl_info()
    RESULT["canvas_px"] = list(viewer.screenshot(canvas_only=True).shape[:2])
    worker = inter._sdata_widget.worker_thread

    # ---- the coordinate system's element list: what Interactive.add_element builds on every call (and the widget
    # once, when a coordinate system is selected): get_elements_meta_mapping -> sdata.filter_by_coordinate_system,
    # which also filters the tables (np.isin over the instance ids)
    from napari_spatialdata.utils._utils import get_duplicate_element_names, get_elements_meta_mapping

    dog.begin("select_cs", args.step_timeout)
    t = time.perf_counter()
    duplicates, _ = get_duplicate_element_names(inter._sdata)
    if args.cs_mapping == "napari":
        elements, _ = get_elements_meta_mapping(inter._sdata, args.cs, duplicates)
    else:
        elements = {name: {"element_type": kind, "sdata_index": 0, "original_name": name}
                    for kind, name, _ in sdata.filter_by_coordinate_system(args.cs, filter_tables=False)._gen_elements()}  # fmt: skip
        RESULT["notes"].append(
            "select_cs: element list built with filter_by_coordinate_system(filter_tables=False) (--cs-mapping fast), "
            "not napari-spatialdata's get_elements_meta_mapping, whose table filtering is quadratic in the ids"
        )
    RESULT["select_cs_s"] = round(time.perf_counter() - t, 3)
    _record("select_cs", RESULT["select_cs_s"], mode=args.cs_mapping)
    widget = inter._sdata_widget
    widget.elements_widget._elements = elements
    widget.coordinate_system_widget._system = args.cs

    def add(name: str, step: str) -> float | None:
        """What a double click on the element does (SdataWidget._onClick, as Interactive.add_element calls it after
        building the element list), then wait for the worker thread, the inserted layer and an empty event queue."""
        before = len(viewer.layers)
        n_err = len(errors)
        dog.begin(step, args.step_timeout)
        t = time.perf_counter()
        widget._onClick(name)
        while True:
            QApplication.processEvents()
            if len(viewer.layers) > before and not worker.isRunning():
                break
            if len(errors) > n_err and not worker.isRunning():
                QApplication.processEvents()
                if len(viewer.layers) > before:
                    break
                RESULT["notes"].append(f"{step}: adding {name!r} failed: {errors[-1]}")
                _record(step, time.perf_counter() - t, failed=errors[-1])
                return None
            time.sleep(0.005)
        QApplication.processEvents()
        dt = time.perf_counter() - t
        _record(step, dt, layer=viewer.layers[-1].name, layer_type=type(viewer.layers[-1]).__name__)
        return dt

    def draw(step: str) -> float:
        dog.begin(step, args.step_timeout)
        t = time.perf_counter()
        viewer.screenshot(canvas_only=True)
        dt = time.perf_counter() - t
        _record(step, dt)
        return dt

    # ---- shapes (--shapes "" skips them)
    dt = add(args.shapes, "add_shapes") if args.shapes else None
    if args.shapes and dt is None and not args.no_int_index:
        import pandas as pd

        alt = f"{args.shapes}_rangeindex"
        gdf = sdata.shapes[args.shapes]
        if not pd.api.types.is_integer_dtype(gdf.index):
            sdata.shapes[alt] = spatialdata.models.ShapesModel.parse(gdf.reset_index(drop=True))
            RESULT["notes"].append(
                f"add_shapes: {args.shapes!r} has a {gdf.index.dtype} index ({gdf.index[0]!r}, ...); "
                f"napari-spatialdata's _get_polygons_properties does int(index) per row, so a copy with a "
                f"RangeIndex, {alt!r} (not annotated by the table), is added instead"
            )
            elements[alt] = {"element_type": "shapes", "sdata_index": 0, "original_name": alt}
            dt = add(alt, "add_shapes")
    if dt is not None:
        RESULT["add_shapes_s"] = round(dt, 3)
        RESULT["draw_shapes_s"] = round(draw("draw_shapes"), 3)
        layer = viewer.layers[-1]
        RESULT["shapes_layer"] = {"n": len(layer.data), "vertices": int(sum(len(d) for d in layer.data))}

    # ---- points
    dt = add(args.points, "add_points")
    if dt is not None:
        RESULT["add_points_s"] = round(dt, 3)
        RESULT["draw_points_s"] = round(draw("draw_points"), 3)
        layer = viewer.layers[-1]
        RESULT["points_layer"] = {"n": len(layer.data), "of": n_points}
        if len(layer.data) < n_points:
            RESULT["notes"].append(
                f"add_points: napari-spatialdata computed all {n_points} points, then kept a random "
                f"{len(layer.data)} (config.POINT_THRESHOLD = {config.POINT_THRESHOLD}); z dropped"
            )

    # ---- first framed draw, zoom, pan
    dog.begin("first_draw", args.step_timeout)
    t = time.perf_counter()
    viewer.reset_view()
    viewer.screenshot(canvas_only=True)
    RESULT["first_draw_s"] = round(time.perf_counter() - t, 3)
    _record("first_draw", RESULT["first_draw_s"])

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: viewer.scene
    zooms, pans = [], []
    for i in range(args.repeats):
        dog.begin(f"zoom{i}", args.step_timeout)
        t = time.perf_counter()
        camera.zoom *= 4
        viewer.screenshot(canvas_only=True)
        zooms.append(round(time.perf_counter() - t, 3))
        _record(f"zoom{i}", zooms[-1], zoom=camera.zoom)
    for i in range(args.repeats):
        dog.begin(f"pan{i}", args.step_timeout)
        t = time.perf_counter()
        cy, cx = camera.center[-2:]
        width = viewer.window._qt_viewer.canvas.size[0] / camera.zoom  # data units across the canvas
        camera.center = (cy, cx + width / 4)
        viewer.screenshot(canvas_only=True)
        pans.append(round(time.perf_counter() - t, 3))
        _record(f"pan{i}", pans[-1], center=[round(c, 1) for c in camera.center])
    RESULT["zoom_s"], RESULT["zoom_all_s"] = (zooms[0] if zooms else None), zooms
    RESULT["pan_s"], RESULT["pan_all_s"] = (pans[0] if pans else None), pans
    if errors:
        RESULT["errors"] = errors
    RESULT["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _emit()
    viewer.close()
    os._exit(0)  # skip Qt/dask teardown


if __name__ == "__main__":
    main()
