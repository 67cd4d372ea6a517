"""Shapes rasterised onto a panel's output pixel grid (``render_shapes(method="datashader")``).

Many small shapes cost matplotlib one path vertex per shape vertex and Agg a fill per path; rasterised, they
cost a scanline pass over their edges: tissuestack's own kernels (:func:`~tissuestack.kernels._zonal.polygon_runs`
for (multi)polygons with holes, :func:`~tissuestack.kernels._zonal.circle_runs` for discs, exact under any affine)
turn every shape into pixel runs of the canvas grid, and :func:`~tissuestack.kernels._burn.burn_runs` keeps, per
pixel, the last shape drawn in the matplotlib path's order (rows ordered by colour). A pixel belongs to a shape
when its centre does. A shape that covers no pixel centre (smaller than a pixel: cells seen from afar) still
shows in the pixel holding the mean of its vertices (its centre, for circles), when no covering shape claims
that pixel; where several such shapes share a pixel, a fixed pseudo-random one of them colours it, so the
colours of a crowd of tiny shapes keep their proportions instead of favouring the last category drawn.

The picture is then built the way matplotlib would paint it: fills in their colours at ``fill_alpha``, and an
outline ``outline_width`` points wide, centred on every shape boundary (between two shapes, or a shape and the
background), composited over the fill at ``outline_alpha``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from tissuestack.kernels._burn import BURN_OPS, burn_runs
from tissuestack.kernels._zonal import circle_runs, flatten_polygons, polygon_owner, polygon_runs
from tissuestack.pl._colors import to_rgba
from tissuestack.pl._mpl import require
from tissuestack.transforms import AffineMap

__all__ = ["rasterise_by_default", "rasterize_shapes", "shape_owner", "to_pixels"]


def _pixel_scale(canvas) -> tuple[float, float]:
    return (
        (canvas.xmax - canvas.xmin) / max(int(canvas.width_px), 1),
        (canvas.ymax - canvas.ymin) / max(int(canvas.height_px), 1),
    )


_CHUNK = 65_536  # shapes rasterised per pass: bounds the temporary coordinate arrays


def to_pixels(x: np.ndarray, y: np.ndarray, amap: AffineMap, canvas) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsic x/y -> canvas pixel coordinates (one fused affine, float64, contiguous)."""
    sx, sy = _pixel_scale(canvas)
    lin = np.asarray(amap.linear, dtype=float)
    off = np.asarray(amap.offset, dtype=float)
    if lin[0, 1] == 0.0 and lin[1, 0] == 0.0:
        px = x * (lin[0, 0] / sx) + (off[0] - canvas.xmin) / sx
        py = y * (lin[1, 1] / sy) + (off[1] - canvas.ymin) / sy
    else:
        px = x * (lin[0, 0] / sx) + y * (lin[0, 1] / sx) + (off[0] - canvas.xmin) / sx
        py = x * (lin[1, 0] / sy) + y * (lin[1, 1] / sy) + (off[1] - canvas.ymin) / sy
    return px, py


def pixel_affine(amap: AffineMap, canvas) -> np.ndarray:
    """The 2 x 3 matrix of :func:`to_pixels` (intrinsic x/y -> canvas pixel coordinates)."""
    sx, sy = _pixel_scale(canvas)
    lin = np.asarray(amap.linear, dtype=float)
    off = np.asarray(amap.offset, dtype=float)
    return np.array(
        [
            [lin[0, 0] / sx, lin[0, 1] / sx, (off[0] - canvas.xmin) / sx],
            [lin[1, 0] / sy, lin[1, 1] / sy, (off[1] - canvas.ymin) / sy],
        ]
    )


def _has_runs(run_shape: np.ndarray, n: int) -> np.ndarray:
    has = np.zeros(n, dtype=bool)
    has[run_shape] = True
    return has


def shape_owner(
    geoms: np.ndarray | None,
    radii: np.ndarray | None,
    amap: AffineMap,
    canvas,
    flat: Any = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``(height, width)`` int64: per canvas pixel the position in ``geoms`` of the last shape covering its centre
    (``-1``: none); shapes covering no pixel centre are placed in one pixel (see the module notes). ``radii``
    given: ``geoms`` are circle centres (points) of those radii (intrinsic units). With ``flat`` (the element's flat
    coordinate arrays) and ``rows``, the shapes are those rows of ``flat`` and ``geoms`` is not used.

    Shapes are rasterised ``_CHUNK`` at a time into the same raster (the temporary coordinates stay small)."""
    height, width = int(canvas.height_px), int(canvas.width_px)
    sx, sy = _pixel_scale(canvas)
    out = np.full((height, width), -1.0)
    seen = np.zeros((height, width), dtype=np.bool_)
    n = len(rows) if flat is not None else len(geoms)
    positions = np.arange(n, dtype=np.float64)
    anchors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (px, py, position) of shapes without runs
    if radii is not None:
        linear = np.asarray(amap.linear, dtype=float)
        if abs(np.linalg.det(linear)) < 1e-300:
            raise ValueError("circles under a singular transformation cannot be rasterised")
        inv = np.linalg.inv(linear)
        # pixel (u, v) -> coordinate system (xmin + u sx, ymin + v sy) -> intrinsic: inv @ (p - offset)
        m = np.empty((2, 3))
        m[:, :2] = inv @ np.diag([sx, sy])
        m[:, 2] = inv @ (np.array([canvas.xmin, canvas.ymin]) - np.asarray(amap.offset, dtype=float))
        centres = flat.coords[rows] if flat is not None else shapely.get_coordinates(geoms)
        cx = np.ascontiguousarray(centres[:, 0], dtype=np.float64)
        cy = np.ascontiguousarray(centres[:, 1], dtype=np.float64)
        runs = circle_runs(cx, cy, np.ascontiguousarray(radii, dtype=np.float64), m, height, width)
        burn_runs(*runs, positions, out, seen, BURN_OPS["max"])
        lost = ~_has_runs(runs[0], n)
        anchors.append((*to_pixels(cx[lost], cy[lost], amap, canvas), positions[lost]))
    elif flat is not None:  # one pass of the owner kernel over the element's own arrays (no copies)
        owner = np.full((height, width), -1, dtype=np.int64)
        rank = np.full(len(flat), -1, dtype=np.int64)
        rank[np.asarray(rows, dtype=np.int64)] = np.arange(n, dtype=np.int64)
        polygon_owner(
            flat.coords, flat.ring_offsets, flat.geom_ring_offsets, rank, pixel_affine(amap, canvas), owner
        )
        return owner
    else:
        for start in range(0, n, _CHUNK):
            part = flatten_polygons(geoms[start : start + _CHUNK])
            px, py = to_pixels(part.x, part.y, amap, canvas)
            runs = polygon_runs(px, py, part.ring_offsets, part.geom_ring_offsets, height, width)
            burn_runs(*runs, positions[start : start + _CHUNK], out, seen, BURN_OPS["max"])
            lost = np.flatnonzero(~_has_runs(runs[0], len(part.geom_ring_offsets) - 1))
            if len(lost):
                first_ring = part.geom_ring_offsets[lost]
                a, b = part.ring_offsets[first_ring], part.ring_offsets[first_ring + 1]
                count = np.maximum(b - a, 1)
                cum_x, cum_y = np.r_[0.0, np.cumsum(px)], np.r_[0.0, np.cumsum(py)]
                mean_x = (cum_x[b] - cum_x[a]) / count
                mean_y = (cum_y[b] - cum_y[a]) / count
                anchors.append((mean_x, mean_y, positions[start + lost]))
    if anchors:
        ax, ay, pos = (np.concatenate(parts) for parts in zip(*anchors, strict=True))
        with np.errstate(invalid="ignore"):
            col, row = np.floor(ax), np.floor(ay)
            ok = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        col, row, pos = col[ok].astype(np.intp), row[ok].astype(np.intp), pos[ok]
        free = ~seen[row, col]
        col, row, pos = col[free], row[free], pos[free]
        if len(pos):
            order = np.random.default_rng(0).permutation(len(pos))
            flat_px = row[order] * width + col[order]
            # the last of each pixel's shapes in that order (np.unique on the reversed order: first = last)
            _, last = np.unique(flat_px[::-1], return_index=True)
            chosen = order[::-1][last]
            out[row[chosen], col[chosen]] = pos[chosen]
    return out.astype(np.int64)


def _over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Porter-Duff "over" of straight-alpha RGBA arrays (``top`` drawn on ``bottom``)."""
    a_t, a_b = top[..., 3:4], bottom[..., 3:4]
    alpha = a_t + a_b * (1.0 - a_t)
    rgb = top[..., :3] * a_t + bottom[..., :3] * a_b * (1.0 - a_t)
    out = np.zeros_like(top)
    np.divide(rgb, alpha, out=out[..., :3], where=alpha > 0)
    out[..., 3:4] = alpha
    return out


def _boundary(owner: np.ndarray, width_px: float) -> np.ndarray:
    """Pixels within ``width_px / 2`` of a change of owner (a shape boundary), as a bool mask."""
    edge = np.zeros(owner.shape, dtype=bool)
    if width_px < 1.5:  # one pixel wide: the side of the later shape (inside the shape on a background edge)
        edge[1:, :] |= owner[1:, :] > owner[:-1, :]
        edge[:-1, :] |= owner[:-1, :] > owner[1:, :]
        edge[:, 1:] |= owner[:, 1:] > owner[:, :-1]
        edge[:, :-1] |= owner[:, :-1] > owner[:, 1:]
        return edge
    # both sides of the boundary: two pixels wide, grown for wider lines
    vertical = owner[1:, :] != owner[:-1, :]
    horizontal = owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    grow = 0.5 * width_px - 1.0
    r = round(grow)
    if r >= 1:
        ndimage = require("scipy.ndimage")
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        edge = ndimage.binary_dilation(edge, structure=(xx**2 + yy**2) <= (grow + 0.5) ** 2)
    return edge


def rasterize_shapes(
    geoms: np.ndarray | None,
    radii: np.ndarray | None,
    colors: np.ndarray,
    amap: AffineMap,
    canvas,
    *,
    fill_alpha: float,
    outline_color,
    outline_alpha: float,
    outline_width: float,
    flat: Any = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``(height, width, 4)`` straight-alpha RGBA picture of shapes on the canvas grid (row 0 at ``ymin``).

    ``colors`` (n, 4): the fill colour of every shape, in draw order (later shapes on top).
    """
    owner = shape_owner(geoms, radii, amap, canvas, flat=flat, rows=rows)
    image = np.zeros((*owner.shape, 4))
    drawn = owner >= 0
    face = np.asarray(colors, dtype=float).copy()
    face[:, 3] *= fill_alpha
    image[drawn] = face[owner[drawn]]
    edge_rgba = to_rgba(outline_color)
    edge_rgba[3] *= outline_alpha
    if edge_rgba[3] > 0 and outline_width > 0:
        mask = _boundary(owner, outline_width * canvas.dpi / 72.0)
        image[mask] = _over(np.broadcast_to(edge_rgba, (int(mask.sum()), 4)), image[mask])
    return image


def rasterise_by_default(n_shapes: int, canvas, minimum: int) -> bool:
    """Whether ``method=None`` rasterises: at least ``minimum`` shapes, and more than one per 100 output pixels."""
    return n_shapes >= minimum and n_shapes * 100 > int(canvas.width_px) * int(canvas.height_px)
