"""Server-side rendering of the viewer: every layer becomes an RGBA image of exactly the pixels in view.

The browser only ever receives a picture of the current view (or, zoomed in far enough, a few thousand point
markers), so the page stays light whatever the size of the data. Per element and coordinate system the engine
keeps, for the life of the viewer, what a re-render needs and reading it again would cost:

* points: x/y in the coordinate system (float32), ordered by the cells of a 1024 x 1024 grid over their extent,
  with the colour id of every point and the count and colour sum per grid cell, read and built once. A view whose
  pixels are larger than a grid cell is drawn from the cells alone; a closer view bins only the points of the
  grid rows it covers (and sends them as markers when few enough). Each pixel shows the mean colour of its
  points, its opacity growing with the log of their count;
* shapes: the flattened polygon rings (or the circle centres and radii) in the element's own frame; a render maps
  them to view pixels and burns the row number of every shape into an id raster (the same scanline kernels as
  :func:`tissuestack.rasterize`), coloured through a lookup table, outlines where the id changes;
* images and labels: nothing — a render reads the window in view from the coarsest pyramid level whose pixels
  are no larger than a view pixel and samples it at the view's pixel centres (any affine, rotations included).

The id rasters of the last render are kept per layer, so a click is answered with the exact shape under the
pointer as drawn.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import pandas as pd

from tissuestack._compute import scheduler
from tissuestack._container import SpatialData
from tissuestack.elements import (
    ElementKind,
    get_axes,
    get_kind_protocol,
    get_meta,
    raster_levels,
    shapes_type,
)
from tissuestack.elements._shapes import RADIUS_COLUMN
from tissuestack.kernels._burn import BURN_OPS, burn_runs
from tissuestack.kernels._zonal import circle_runs, polygon_runs
from tissuestack.ops import get_extent
from tissuestack.ops._shapes_flat import flat_geometry
from tissuestack.store import read_points_columns

__all__ = ["LayerStyle", "Rendered", "View", "ViewerEngine"]

MARKER_LIMIT = 5_000  # points in view at or below this are sent as markers (hover shows their values)
_KIND_ORDER = {"images": 0, "labels": 1, "shapes": 2, "points": 3}
_CHANNEL_COLORS = ("#ff0000", "#00ff00", "#0000ff", "#ffff00", "#ff00ff", "#00ffff", "#ffffff")


@dataclass(frozen=True)
class View:
    """The region in view: its bounds in ``coordinate_system`` and the size of the canvas in pixels.

    Row 0 of a rendered image is at ``y0`` (the viewer shows y growing downwards, as images are stored)."""

    coordinate_system: str
    x0: float
    x1: float
    y0: float
    y1: float
    width: int
    height: int

    @property
    def unit_per_px(self) -> float:
        return max((self.x1 - self.x0) / max(self.width, 1), (self.y1 - self.y0) / max(self.height, 1))

    def grid_extent(self) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` covered by the pixels of :meth:`grid` (at least the view)."""
        h, w, upp = self.grid()
        return (self.x0, self.x0 + w * upp, self.y0, self.y0 + h * upp)

    def grid(self) -> tuple[int, int, float]:
        """``(height, width, unit_per_px)`` of the square-pixel grid that covers the view from ``(x0, y0)``."""
        upp = self.unit_per_px
        if not (upp > 0 and math.isfinite(upp)):
            raise ValueError(f"view {self}: empty or non-finite extent")
        w = max(1, min(4 * self.width, math.ceil((self.x1 - self.x0) / upp)))
        h = max(1, min(4 * self.height, math.ceil((self.y1 - self.y0) / upp)))
        return h, w, upp


@dataclass
class LayerStyle:
    """How one element is drawn (the state of its controls in the viewer)."""

    visible: bool = True
    opacity: float = 1.0
    color: str | None = None  # a column, obs column or gene to colour by; a literal colour; None = default
    fill: bool = True  # shapes / labels: fill the regions
    outline: bool = False  # shapes / labels: draw their outlines
    channels: list[int] | None = None  # images: channel indices shown (default: the first, or RGB)
    channel_colors: dict[int, str] = field(default_factory=dict)
    contrast: dict[int, tuple[float, float]] = field(default_factory=dict)  # image channel -> (lo, hi)
    point_size: int = 1  # points: side of the square each point covers, in view pixels


@dataclass
class Rendered:
    """One layer's picture of the view: ``rgba`` (``uint32`` rows of packed RGBA, little endian as Bokeh
    expects) covering ``extent = (x0, x1, y0, y1)``; ``markers`` instead when few points are in view;
    ``legend`` entries ``[(label, "#rrggbb")]`` or a colorbar ``("key", lo, hi, [colours])``."""

    rgba: np.ndarray | None
    extent: tuple[float, float, float, float]
    markers: dict[str, np.ndarray] | None = None
    legend: list[tuple[str, str]] | None = None
    colorbar: tuple[str, float, float, list[str]] | None = None


def channel_color(style: LayerStyle, channel: int, position: int, n_shown: int) -> str:
    """The colour of image ``channel``, shown at ``position`` of ``n_shown`` channels: the user's choice, else
    white for a single channel, else red, green, blue, ... in order."""
    default = "#ffffff" if n_shown == 1 else _CHANNEL_COLORS[position % len(_CHANNEL_COLORS)]
    return style.channel_colors.get(channel, default)


def _hex(rgba: np.ndarray) -> str:
    r, g, b = (np.clip(np.asarray(rgba[:3], dtype=float), 0, 1) * 255).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def pack_rgba(image: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` floats in 0..1 -> ``(h, w)`` uint32 (RGBA bytes in memory order)."""
    u8 = np.ascontiguousarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8))
    return u8.view(np.uint32).reshape(image.shape[:2])


GRID = 1024  # points are ordered by the cells of a GRID x GRID grid over their extent


@dataclass(frozen=True)
class PointsGrid:
    """Points of one element in one coordinate system, ordered by grid cell (row-major): the points of cell
    ``k`` are ``x[starts[k]:starts[k + 1]]``; ``order`` maps back to the element's rows."""

    x: np.ndarray
    y: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    gx0: float
    gy0: float
    cell: float

    def cols(self, lo: float, hi: float, axis: str = "x") -> tuple[int, int]:
        """The half-open range of grid columns (rows for ``axis="y"``) that ``[lo, hi]`` touches."""
        origin = self.gx0 if axis == "x" else self.gy0
        a = int(np.clip(math.floor((lo - origin) / self.cell), 0, GRID))
        b = int(np.clip(math.floor((hi - origin) / self.cell) + 1, 0, GRID))
        return a, max(a, b)


@numba.njit(cache=True, nogil=True)
def grid_keys(x, y, gx0, gy0, inv, n):  # pragma: no cover - numba
    keys = np.empty(x.shape[0], dtype=np.int32)
    for i in range(x.shape[0]):
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            keys[i] = -1
            continue
        c = min(max(int((x[i] - gx0) * inv), 0), n - 1)
        r = min(max(int((y[i] - gy0) * inv), 0), n - 1)
        keys[i] = r * n + c
    return keys


@numba.njit(cache=True, nogil=True)
def counting_order(keys, starts):  # pragma: no cover - numba
    """The stable order of ``keys`` by counting sort (``starts``: cumulative counts); keys < 0 are dropped."""
    pos = starts[:-1].copy()
    order = np.empty(starts[-1], dtype=np.int32)
    for i in range(keys.shape[0]):
        k = keys[i]
        if k >= 0:
            order[pos[k]] = i
            pos[k] += 1
    return order


@numba.njit(cache=True, nogil=True)
def cell_density(ids, colors, starts):  # pragma: no cover - numba
    """Per grid cell: the number of drawn points and the sum of their colours."""
    n_cells = starts.shape[0] - 1
    count = np.zeros(n_cells, dtype=np.float32)
    rgb = np.zeros((n_cells, 3), dtype=np.float32)
    for k in range(n_cells):
        for i in range(starts[k], starts[k + 1]):
            c = ids[i]
            if c >= 0:
                count[k] += 1.0
                rgb[k, 0] += colors[c, 0]
                rgb[k, 1] += colors[c, 1]
                rgb[k, 2] += colors[c, 2]
    return count, rgb


@numba.njit(cache=True, nogil=True)
def count_cells(count, n, c0, c1, r0, r1):  # pragma: no cover - numba
    total = 0.0
    for r in range(r0, r1):
        for c in range(c0, c1):
            total += count[r * n + c]
    return total


@numba.njit(cache=True, nogil=True)
def bin_cells(count, rgb, n, c0, c1, r0, r1, gx0, gy0, cell, x0, y0, inv, height, width):  # pragma: no cover
    """View pixels from grid cells (each cell goes to the pixel of its centre)."""
    out = np.zeros((height, width), dtype=np.float32)
    out_rgb = np.zeros((height, width, 3), dtype=np.float32)
    for r in range(r0, r1):
        py = math.floor((gy0 + (r + 0.5) * cell - y0) * inv)
        if py < 0 or py >= height:
            continue
        for c in range(c0, c1):
            k = r * n + c
            if count[k] == 0:
                continue
            px = math.floor((gx0 + (c + 0.5) * cell - x0) * inv)
            if px < 0 or px >= width:
                continue
            out[py, px] += count[k]
            out_rgb[py, px, 0] += rgb[k, 0]
            out_rgb[py, px, 1] += rgb[k, 1]
            out_rgb[py, px, 2] += rgb[k, 2]
    return out, out_rgb


@numba.njit(cache=True, nogil=True)
def bin_sorted(x, y, ids, colors, starts, n, c0, c1, r0, r1, x0, y0, inv, height, width, size):  # pragma: no cover
    """View pixels from the points of the grid cells in view: count and colour sum per pixel (``size`` x
    ``size`` pixels per point)."""
    count = np.zeros((height, width), dtype=np.float32)
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    half = size // 2
    for r in range(r0, r1):
        if c1 <= c0:
            continue
        for i in range(starts[r * n + c0], starts[r * n + c1]):
            k = ids[i]
            if k < 0:
                continue
            c = math.floor((x[i] - x0) * inv)
            q = math.floor((y[i] - y0) * inv)
            if c < -half or q < -half or c >= width + half or q >= height + half:
                continue
            for rr in range(max(q - half, 0), min(q - half + size, height)):
                for cc in range(max(c - half, 0), min(c - half + size, width)):
                    count[rr, cc] += 1.0
                    rgb[rr, cc, 0] += colors[k, 0]
                    rgb[rr, cc, 1] += colors[k, 1]
                    rgb[rr, cc, 2] += colors[k, 2]
    return count, rgb


@numba.njit(cache=True, nogil=True)
def select_points(x, y, ids, starts, n, c0, c1, r0, r1, x0, x1, y0, y1):  # pragma: no cover - numba
    """Positions (in grid order) of the drawn points inside the box, from the grid cells in view."""
    m = 0
    for r in range(r0, r1):
        if c1 > c0:
            m += starts[r * n + c1] - starts[r * n + c0]
    out = np.empty(m, dtype=np.int64)
    k = 0
    for r in range(r0, r1):
        if c1 <= c0:
            continue
        for i in range(starts[r * n + c0], starts[r * n + c1]):
            if ids[i] >= 0 and x[i] >= x0 and x[i] <= x1 and y[i] >= y0 and y[i] <= y1:
                out[k] = i
                k += 1
    return out[:k]


def _edges(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    return edge & (ids > 0)


class ViewerEngine:
    """Renders the elements of one :class:`~tissuestack.SpatialData` for the viewer (see the module notes).

    Thread-safe for concurrent renders of different sessions; caches are shared between them."""

    def __init__(self, sdata: SpatialData):
        self.sdata = sdata
        self._lock = threading.RLock()
        self._cache: dict[tuple, Any] = {}
        self._last_ids: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._name_locks: dict[str, threading.RLock] = {}

    def _memo(self, key: tuple, build: Callable[[], Any]) -> Any:
        """The value cached under ``key`` (``key[1]`` names the element), built once: a thread asking for it
        while another builds it waits for that build instead of reading the same data again."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            lock = self._name_locks.setdefault(key[1], threading.RLock())
        with lock:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            value = build()
            with self._lock:
                self._cache[key] = value
            return value

    # ------------------------------------------------------------------------------------------ elements
    def coordinate_systems(self) -> list[str]:
        return list(self.sdata.coordinate_systems)

    def elements(self, coordinate_system: str) -> list[tuple[str, str]]:
        """``(name, kind)`` of the spatial elements placed in the system, in drawing order (rasters first)."""
        names = self.sdata.elements_in_coordinate_system(coordinate_system)
        pairs = [(n, self.sdata.kind_of(n)) for n in names]
        return sorted(pairs, key=lambda p: (_KIND_ORDER.get(p[1], 9), p[0]))

    def extent(self, coordinate_system: str) -> tuple[float, float, float, float]:
        """``(x0, x1, y0, y1)`` of everything in the system (one unit square when it is empty)."""

        def build() -> tuple[float, float, float, float]:
            try:
                ext = get_extent(self.sdata, coordinate_system, exact=False)
            except (ValueError, KeyError):
                return (0.0, 1.0, 0.0, 1.0)
            return (*ext["x"], *ext["y"])

        elements = tuple(self.sdata.elements_in_coordinate_system(coordinate_system))
        return self._memo(("extent", coordinate_system, elements), build)

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached data of element ``name`` (all when ``None``), e.g. after it was replaced."""
        with self._lock:
            if name is None:
                self._cache.clear()
            else:
                for k in [k for k in self._cache if k[1] == name or k[0] == "extent"]:
                    del self._cache[k]

    def _transform(self, name: str, cs: str) -> Any:
        from tissuestack.pl._render import _xy_map

        element = self.sdata[name]
        return _xy_map(element, self.sdata.get_transformation_between(name, cs), name)

    def _kind(self, name: str) -> ElementKind:
        """The kind protocol of element ``name``."""
        return get_kind_protocol(self.sdata.kind_of(name))

    def color_keys(self, name: str) -> tuple[list[str], list[str]]:
        """``(columns, genes)`` element ``name`` can be coloured by: element columns and obs columns of the
        annotating tables, and the var names of those tables."""
        kind = self._kind(name)
        element = self.sdata[name]
        columns: list[str] = []
        if kind.lazy_rows:  # points
            axes = set(get_axes(element))
            columns = [str(c) for c in element.columns if c not in axes]
        elif kind.in_memory:  # shapes
            columns = [str(c) for c in element.columns if c not in ("geometry", RADIUS_COLUMN)]
        genes: list[str] = []
        for tn in self.sdata.get_annotating_tables(name):
            table = self.sdata.tables[tn]
            columns += [str(c) for c in table.obs.columns if c not in columns]
            genes += [str(g) for g in table.var_names if g not in genes]
        return columns, genes

    def default_color(self, name: str) -> str | None:
        if self._kind(name).lazy_rows:  # points: coloured by their feature key
            key = get_meta(self.sdata[name]).feature_key
            return str(key) if key is not None else None
        return None

    # --------------------------------------------------------------------------------------------- colours
    def _coloring(self, name: str, color: str | None) -> Any:
        return self._memo(("coloring", name, color), lambda: self._build_coloring(name, color))

    def _build_coloring(self, name: str, color: str | None) -> Any:
        """The :class:`~tissuestack.pl._colors.Coloring` of the element's rows (points: of the cached points;
        labels: of the label ids in the ``ids`` attribute of the returned pair) for ``color``."""
        from tissuestack.pl._colors import resolve_coloring
        from tissuestack.pl._render import _align, _element_coloring, _key_in_tables
        from tissuestack.pl._values import find_color_source, label_values

        kind = self._kind(name)
        element = self.sdata[name]
        p = {"color": color, "na_color": "lightgray"}
        if kind.in_memory:  # shapes
            fetch = lambda k: element[k].reset_index(drop=True)  # noqa: E731
            result = _element_coloring(
                self.sdata, name, element, pd.Index(element.columns), element.index, p, len(element), fetch
            )
        elif kind.lazy_rows:  # points
            pts = self._points(name, color)
            values = pts["values"]
            if values is None:
                result = resolve_coloring(len(pts["x"]), color=color)
            else:
                uns = None
                if pts["table"] is not None:
                    uns = self.sdata.tables[pts["table"]].uns
                result = resolve_coloring(
                    len(values), values=values, key=color, uns=uns, what=f"points {name!r}"
                )
        else:  # labels: a lookup table indexed by label id
            if color is None or not _key_in_tables(self.sdata, name, color, None):
                result = None
            else:
                source = find_color_source(self.sdata, name, [], color, None)
                values, uns = label_values(self.sdata, name, source, None)
                ids = pd.Index(values.index)
                coloring = resolve_coloring(
                    len(ids), values=_align(values, ids, name), key=color, uns=uns, what=f"labels {name!r}"
                )
                result = (np.asarray(ids), coloring)
        return result

    @staticmethod
    def _legend(coloring: Any) -> tuple[list | None, tuple | None]:
        if coloring is None:
            return None, None
        if coloring.legend is not None:
            return [(label, _hex(c)) for label, c in coloring.legend], None
        if coloring.mappable is not None:
            cmap, norm = coloring.mappable
            colors = [_hex(cmap(v)) for v in np.linspace(0, 1, 9)]
            return None, (str(coloring.key), float(norm.vmin), float(norm.vmax), colors)
        return None, None

    # ---------------------------------------------------------------------------------------------- points
    def _points(self, name: str, color: str | None) -> dict[str, Any]:
        return self._memo(("points", name, color), lambda: self._build_points(name, color))

    def _build_points(self, name: str, color: str | None) -> dict[str, Any]:
        """x/y in the element frame plus the values coloured by (read once per element and key)."""
        from tissuestack.pl._render import _align, _key_in_tables
        from tissuestack.pl._values import find_color_source, table_values_by_id

        element = self.sdata[name]
        columns = pd.Index(element.columns)
        meta = get_meta(element)
        x, y = self._points_xy(name)
        table = None
        if isinstance(color, str) and color in columns:
            values = self._points_column(name, color)
        elif isinstance(color, str) and _key_in_tables(self.sdata, name, color, None):
            if meta.instance_key is None:
                raise ValueError(f"points {name!r} have no instance_key column to match table rows")
            ids = self._points_column(name, meta.instance_key)
            source = find_color_source(self.sdata, name, columns, color, None)
            by_id, _ = table_values_by_id(self.sdata, name, element, source, None)
            values = _align(by_id, pd.Index(np.asarray(ids)), name)
            table = source.table_name
        else:
            values = None
        out = {"x": x, "y": y, "values": values, "table": table}
        return out

    def _points_xy(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The element's x and y (float32), read once."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            element = self.sdata[name]
            ax = list(get_axes(element)[:2])
            pdf = self._read(element, ax)
            return pdf[ax[0]].to_numpy(dtype=np.float32), pdf[ax[1]].to_numpy(dtype=np.float32)

        return self._memo(("xy", name, None), build)

    @staticmethod
    def _read(element: Any, columns: list[str]) -> pd.DataFrame:
        """Whole columns of a points element (straight from a store's row groups where it can), row order
        the same for every call."""
        out = read_points_columns(element, columns)
        return out if out is not None else element[columns].compute(scheduler=scheduler())

    def _points_column(self, name: str, column: str) -> pd.Series:
        """One column of the element, in the row order of :meth:`_points_xy` (categoricals stay categorical)."""
        return self._read(self.sdata[name], [column])[column].reset_index(drop=True)

    def _points_in_cs(self, name: str, cs: str) -> PointsGrid:
        return self._memo(("points_cs", name, cs), lambda: self._build_points_in_cs(name, cs))

    def _build_points_in_cs(self, name: str, cs: str) -> PointsGrid:
        """The points in ``cs`` ordered by the cells of a ``GRID`` x ``GRID`` grid over their extent (built once
        per element and system): a view then reads only the grid rows it covers."""
        x, y = self._points_xy(name)
        amap = self._transform(name, cs)
        if not (np.array_equal(amap.linear, np.eye(2)) and not np.any(amap.offset)):
            lin, off = amap.linear.astype(np.float32), amap.offset.astype(np.float32)
            x, y = lin[0, 0] * x + lin[0, 1] * y + off[0], lin[1, 0] * x + lin[1, 1] * y + off[1]
        finite = np.isfinite(x) & np.isfinite(y)
        if len(x) and finite.any():
            gx0, gy0 = float(x[finite].min()), float(y[finite].min())
            size = max(float(x[finite].max()) - gx0, float(y[finite].max()) - gy0, 1e-9)
        else:
            gx0, gy0, size = 0.0, 0.0, 1.0
        cell = size * (1 + 1e-6) / GRID
        keys = grid_keys(x, y, gx0, gy0, 1.0 / cell, GRID)
        counts = np.bincount(keys[keys >= 0], minlength=GRID * GRID)
        starts = np.zeros(GRID * GRID + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        order = counting_order(keys, starts)
        out = PointsGrid(x[order], y[order], order, starts, gx0, gy0, cell)
        return out

    def _point_ids(self, name: str, color: str | None) -> tuple[np.ndarray, Any]:
        """Per row (element order) the colour id as a small integer, and the palette (a Coloring without its
        per-row ids, which would take 8 bytes a point)."""

        def build() -> tuple[np.ndarray, Any]:
            coloring = self._build_coloring(name, color)
            small = np.int16 if len(coloring.rgba) < np.iinfo(np.int16).max else np.int32
            return np.asarray(coloring.ids).astype(small), dataclasses.replace(coloring, ids=np.zeros(0, np.intp))

        return self._memo(("point_ids", name, color), build)

    def _points_colors(self, name: str, cs: str, color: str | None) -> tuple[np.ndarray, Any, Any]:
        """Colour ids of the grid-ordered points, the palette and the per-cell density (count, rgb sums)."""

        def build() -> tuple[np.ndarray, Any, Any]:
            grid = self._points_in_cs(name, cs)
            row_ids, coloring = self._point_ids(name, color)
            ids = row_ids[grid.order]
            density = cell_density(ids, coloring.rgba[:, :3].astype(np.float32), grid.starts)
            return ids, coloring, density

        return self._memo(("points_colors", name, cs, color), build)

    def _render_points(self, name: str, style: LayerStyle, view: View) -> Rendered:
        color = style.color if style.color is not None else self.default_color(name)
        grid = self._points_in_cs(name, view.coordinate_system)
        ids, coloring, (cell_count, cell_rgb) = self._points_colors(name, view.coordinate_system, color)
        pts = self._points(name, color)
        legend, colorbar = self._legend(coloring)
        h, w, upp = view.grid()
        extent = view.grid_extent()
        lo_x, hi_x = grid.cols(view.x0, view.x1)
        lo_y, hi_y = grid.cols(view.y0, view.y1, axis="y")
        colors = coloring.rgba[:, :3].astype(np.float32)
        n_view = count_cells(cell_count, GRID, lo_x, hi_x, lo_y, hi_y)
        if n_view <= MARKER_LIMIT:
            picked = select_points(grid.x, grid.y, ids, grid.starts, GRID, lo_x, hi_x, lo_y, hi_y,
                                   view.x0, view.x1, view.y0, view.y1)  # fmt: skip
            rows = grid.order[picked]
            values = pts["values"]
            labels = values.iloc[rows].astype(str).to_numpy() if values is not None else np.full(len(rows), "")
            hexes = np.array([_hex(c) for c in coloring.rgba])
            markers = {
                "x": grid.x[picked].astype(np.float64),
                "y": grid.y[picked].astype(np.float64),
                "color": hexes[ids[picked]] if len(picked) else np.array([], dtype=object),
                "value": labels,
                "row": rows,
            }
            return Rendered(None, extent, markers=markers, legend=legend, colorbar=colorbar)
        if upp >= grid.cell and style.point_size <= 1:
            # pixels larger than grid cells: sum the cells (no point is touched)
            count, rgb = bin_cells(cell_count, cell_rgb, GRID, lo_x, hi_x, lo_y, hi_y, grid.gx0, grid.gy0,
                                   grid.cell, view.x0, view.y0, 1.0 / upp, h, w)  # fmt: skip
        else:
            count, rgb = bin_sorted(grid.x, grid.y, ids, colors, grid.starts, GRID, lo_x, hi_x, lo_y, hi_y,
                                    view.x0, view.y0, 1.0 / upp, h, w, max(1, int(style.point_size)))  # fmt: skip
        image = np.zeros((h, w, 4), dtype=np.float32)
        hit = count > 0
        image[hit, :3] = rgb[hit] / count[hit, None]
        if hit.any():
            top = float(np.log1p(count.max()))
            image[hit, 3] = 0.35 + 0.65 * (np.log1p(count[hit]) / top if top > 0 else 1.0)
        return Rendered(pack_rgba(image), extent, legend=legend, colorbar=colorbar)

    # ---------------------------------------------------------------------------------------------- shapes
    def _shapes_geometry(self, name: str) -> dict[str, Any]:
        return self._memo(("shapes", name, None), lambda: self._build_shapes_geometry(name))

    def _build_shapes_geometry(self, name: str) -> dict[str, Any]:
        gdf = self.sdata[name]
        flat = flat_geometry(gdf)  # from the store's WKB when there is one: no shapely objects
        if shapes_type(gdf) == "circles":
            out = {
                "circles": True,
                "cx": np.asarray(flat.x, dtype=np.float64),
                "cy": np.asarray(flat.y, dtype=np.float64),
                "r": gdf[RADIUS_COLUMN].to_numpy(dtype=np.float64),
            }
        else:
            out = {"circles": False, "flat": flat}
        return out

    def shape_ids(self, name: str, view: View) -> np.ndarray:
        """``(h, w)`` int64 raster of view pixels: 1 + the row of the shape drawn there, 0 where none."""
        geo = self._shapes_geometry(name)
        amap = self._transform(name, view.coordinate_system)
        h, w, upp = view.grid()
        lin = amap.linear / upp  # element frame -> view pixels
        off = (amap.offset - np.array([view.x0, view.y0])) / upp
        if abs(float(np.linalg.det(lin))) == 0.0:
            return np.zeros((h, w), dtype=np.int64)
        if geo["circles"]:
            if len(geo["cx"]) == 0:
                return np.zeros((h, w), dtype=np.int64)
            inv = np.linalg.inv(lin)
            mm = np.hstack([inv, (-inv @ off)[:, None]])
            runs = circle_runs(geo["cx"], geo["cy"], geo["r"], mm, h, w)
        else:
            flat = geo["flat"]
            if len(flat.geom_ring_offsets) <= 1:
                return np.zeros((h, w), dtype=np.int64)
            px = lin[0, 0] * flat.x + lin[0, 1] * flat.y + off[0]
            py = lin[1, 0] * flat.x + lin[1, 1] * flat.y + off[1]
            runs = polygon_runs(px, py, flat.ring_offsets, flat.geom_ring_offsets, h, w)
        out = np.zeros((h, w), dtype=np.float64)
        seen = np.zeros((h, w), dtype=np.bool_)
        n = int(runs[0].max()) + 1 if len(runs[0]) else 0
        burn_runs(*runs, np.arange(1, n + 1, dtype=np.float64), out, seen, BURN_OPS["last"])
        return out.astype(np.int64)

    def _render_shapes(self, name: str, style: LayerStyle, view: View) -> Rendered:
        ids = self.shape_ids(name, view)
        h, w, _ = view.grid()
        extent = view.grid_extent()
        coloring = self._coloring(name, style.color)
        lut = np.vstack([np.zeros((1, 4)), coloring.row_colors()])
        image = np.zeros((h, w, 4), dtype=np.float64)
        if style.fill:
            image = lut[ids]
            image[..., 3] *= 0.6 if style.outline else 1.0
        if style.outline or not style.fill:
            edge = _edges(ids)
            image[edge] = lut[ids[edge]]
            image[edge, 3] = np.where(lut[ids[edge], 3] > 0, 1.0, 0.0)
        with self._lock:
            self._last_ids[(name, view.coordinate_system)] = (ids, np.array(extent))
        legend, colorbar = self._legend(coloring if style.color is not None else None)
        return Rendered(pack_rgba(image), extent, legend=legend, colorbar=colorbar)

    # --------------------------------------------------------------------------------------------- rasters
    def _sample(self, name: str, view: View, channels: list[int] | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Values of the element at the view's pixel centres (``(c, h, w)`` for images, ``(h, w)`` labels) and
        the mask of pixels inside the raster."""
        from tissuestack.pl._render import Canvas, read_raster

        element = self.sdata[name]
        amap = self._transform(name, view.coordinate_system)
        h, w, upp = view.grid()
        canvas = Canvas(
            view.coordinate_system, view.x0, view.x0 + w * upp, view.y0, view.y0 + h * upp, w, h, True, 100.0
        )
        read = read_raster(element, amap, canvas, None, name, channels=channels)
        if read is None:
            return None
        arr, (bx0, bx1, by0, by1) = read
        cx = view.x0 + (np.arange(w) + 0.5) * upp
        cy = view.y0 + (np.arange(h) + 0.5) * upp
        gx, gy = np.meshgrid(cx, cy)
        inv = np.linalg.inv(amap.linear)
        u = inv[0, 0] * (gx - amap.offset[0]) + inv[0, 1] * (gy - amap.offset[1])
        v = inv[1, 0] * (gx - amap.offset[0]) + inv[1, 1] * (gy - amap.offset[1])
        nh, nw = arr.shape[-2], arr.shape[-1]
        col = np.floor((u - bx0) / (bx1 - bx0) * nw).astype(np.int64)
        row = np.floor((v - by0) / (by1 - by0) * nh).astype(np.int64)
        levels = raster_levels(element)
        full_w, full_h = levels[0].sizes["x"], levels[0].sizes["y"]
        inside = (u >= 0) & (v >= 0) & (u < full_w) & (v < full_h) & (col >= 0) & (row >= 0)
        inside &= (col < nw) & (row < nh)
        col = np.clip(col, 0, nw - 1)
        row = np.clip(row, 0, nh - 1)
        return arr[..., row, col], inside

    def image_channels(self, name: str) -> list[str]:
        return [str(c) for c in raster_levels(self.sdata[name])[0].coords["c"].values]

    def is_rgb(self, name: str) -> bool:
        lvl = raster_levels(self.sdata[name])[0]
        names = [str(c).lower() for c in lvl.coords["c"].values]
        return lvl.sizes.get("c", 0) in (3, 4) and (names[:3] == ["r", "g", "b"] or lvl.dtype == np.uint8)

    def contrast_limits(self, name: str) -> list[tuple[float, float]]:
        return self._memo(("contrast", name, None), lambda: self._build_contrast_limits(name))

    def _build_contrast_limits(self, name: str) -> list[tuple[float, float]]:
        """Per channel: the 1st and 99.5th percentile of the coarsest pyramid level (once per image)."""
        lvl = raster_levels(self.sdata[name])[-1]
        data = lvl.data
        if hasattr(data, "compute"):
            data = data.compute(scheduler=scheduler())
        data = np.asarray(data, dtype=np.float64).reshape(lvl.sizes["c"], -1)
        limits = []
        for ch in data:
            finite = ch[np.isfinite(ch)]
            lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
            limits.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
        return limits

    def _render_image(self, name: str, style: LayerStyle, view: View) -> Rendered | None:
        from tissuestack.pl._colors import to_rgba

        h, w, _ = view.grid()
        extent = view.grid_extent()
        n_c = len(self.image_channels(name))
        rgb = self.is_rgb(name) and style.channels is None
        channels = list(range(min(n_c, 3))) if rgb else (style.channels or [0])
        bad = [c for c in channels if not 0 <= c < n_c]
        if bad:
            raise ValueError(f"image {name!r}: channels {bad} out of range 0..{n_c - 1}")
        got = self._sample(name, view, channels)
        if got is None:
            return None
        values, inside = got
        limits = self.contrast_limits(name)
        image = np.zeros((h, w, 4), dtype=np.float64)
        for i, c in enumerate(channels):
            lo, hi = style.contrast.get(c, (0.0, 255.0) if rgb and values.dtype == np.uint8 else limits[c])
            scaled = np.clip((values[i].astype(np.float64) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
            if rgb:
                image[..., i] = scaled
            else:
                colour = channel_color(style, c, i, len(channels))
                image[..., :3] += scaled[..., None] * to_rgba(colour)[None, None, :3]
        image[..., 3] = inside
        names = self.image_channels(name)
        legend = None if rgb else [(names[c], channel_color(style, c, i, len(channels))) for i, c in enumerate(channels)]
        return Rendered(pack_rgba(image), extent, legend=legend)

    def _render_labels(self, name: str, style: LayerStyle, view: View) -> Rendered | None:
        from tissuestack.pl._render import _hashed_colors

        extent = view.grid_extent()
        got = self._sample(name, view, None)
        if got is None:
            return None
        labels, inside = got
        labels = np.where(inside, labels, 0).astype(np.int64)
        present, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        colored = self._coloring(name, style.color)
        legend = colorbar = None
        if colored is None:
            lut = _hashed_colors(present)
            if style.color is not None:
                from tissuestack.pl._colors import to_rgba

                lut = np.tile(to_rgba(style.color), (len(present), 1))
        else:
            ids, coloring = colored
            pos = pd.Index(ids).get_indexer(present)
            colors = coloring.row_colors()
            na = coloring.rgba[-1] if coloring.legend is not None or coloring.mappable is not None else None
            lut = np.where((pos >= 0)[:, None], colors[np.maximum(pos, 0)], na if na is not None else 0.0)
            legend, colorbar = self._legend(coloring)
        lut = np.asarray(lut, dtype=np.float64).copy()
        lut[present == 0] = 0.0
        image = lut[inverse]
        if style.fill:
            image[..., 3] *= 0.6 if style.outline else 1.0
        else:
            image[..., 3] = 0.0
        if style.outline or not style.fill:
            edge = _edges(labels)
            image[edge] = lut[inverse[edge]]
            image[edge, 3] = 1.0
        with self._lock:
            self._last_ids[(name, view.coordinate_system)] = (labels, np.array(extent))
        return Rendered(pack_rgba(image), extent, legend=legend, colorbar=colorbar)

    # ------------------------------------------------------------------------------------------------- api
    def warm(self, coordinate_system: str | None = None, width: int = 900, height: int = 700) -> None:
        """Read what the first picture of a coordinate system needs (extent, point coordinates and colours,
        polygon rings, contrast limits), so that the first page opens quickly; errors are left for the render
        to report."""
        systems = [coordinate_system] if coordinate_system else self.coordinate_systems()[:1]
        for cs in systems:
            try:
                x0, x1, y0, y1 = self.extent(cs)
                view = View(cs, x0, x1, y0, y1, width, height)
                for name, _kind in self.elements(cs):
                    self.render(name, LayerStyle(color=self.default_color(name)), view)
            except Exception:
                continue

    def render(self, name: str, style: LayerStyle, view: View) -> Rendered | None:
        """The picture of element ``name`` in ``view`` (``None`` when nothing of it is in view)."""
        kind = self._kind(name)
        if kind.lazy_rows:  # points
            return self._render_points(name, style, view)
        if kind.in_memory:  # shapes
            return self._render_shapes(name, style, view)
        if kind.has_channels:  # images
            return self._render_image(name, style, view)
        if kind.is_raster:  # labels
            return self._render_labels(name, style, view)
        raise ValueError(f"element {name!r} of kind {kind.name!r} cannot be shown")

    def pick(self, name: str, coordinate_system: str, x: float, y: float) -> dict[str, Any] | None:
        """The instance of shapes / labels element ``name`` drawn at ``(x, y)`` in the last render, with its
        table row (``{"element", "instance", "values"}``), or ``None``."""
        with self._lock:
            last = self._last_ids.get((name, coordinate_system))
        if last is None:
            return None
        ids, extent = last
        h, w = ids.shape
        upp = (extent[1] - extent[0]) / w
        c = math.floor((x - extent[0]) / upp)
        r = math.floor((y - extent[2]) / upp)
        if not (0 <= r < h and 0 <= c < w) or ids[r, c] == 0:
            return None
        if self._kind(name).in_memory:  # shapes: ids are row numbers + 1
            element = self.sdata[name]
            instance = element.index[int(ids[r, c]) - 1]
        else:
            instance = int(ids[r, c])
        return {"element": name, "instance": instance, "values": self.table_row(name, instance)}

    def table_row(self, name: str, instance: Any) -> dict[str, Any]:
        """The element's columns and the obs columns of its annotating tables for one instance."""
        from tissuestack.elements import get_table_keys

        out: dict[str, Any] = {}
        if self._kind(name).in_memory:  # shapes: their own columns
            element = self.sdata[name]
            for col in element.columns:
                if col not in ("geometry", RADIUS_COLUMN):
                    out[str(col)] = element.at[instance, col]
        for tn in self.sdata.get_annotating_tables(name):
            table = self.sdata.tables[tn]
            _, region_key, instance_key = get_table_keys(table)
            obs = table.obs
            rows = np.flatnonzero(
                (obs[region_key].astype(str).to_numpy() == name)
                & (obs[instance_key].astype(str).to_numpy() == str(instance))
            )
            if len(rows):
                for col in obs.columns:
                    if col not in (region_key, instance_key):
                        out[str(col)] = obs[col].iloc[rows[0]]
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in out.items()}
