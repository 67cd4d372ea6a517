"""Shapes rasterised onto a panel's output pixel grid (``render_shapes(method="datashader")``).

Many small shapes cost matplotlib one path vertex per shape vertex and Agg a fill per path; rasterised, they
cost a scanline pass over their edges: tissuestack's own kernels
(:func:`~tissuestack.kernels._zonal.polygon_owner` burns (multi)polygons with holes straight into the canvas;
:func:`~tissuestack.kernels._zonal.circle_runs` and :func:`~tissuestack.kernels._burn.burn_runs` discs, exact under
any affine) keep, per pixel, the last shape drawn in the matplotlib path's order (rows ordered by colour). A pixel belongs to a shape
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

from tissuestack.kernels._burn import BURN_OPS, burn_runs
from tissuestack.kernels._zonal import circle_runs, place_anchors, polygon_owner
from tissuestack.pl._colors import to_rgba
from tissuestack.pl._mpl import require
from tissuestack.transforms import AffineMap

__all__ = ["rasterise_by_default", "rasterize_shapes", "shape_owner", "to_pixels"]


def _pixel_scale(canvas) -> tuple[float, float]:
    return (
        (canvas.xmax - canvas.xmin) / max(int(canvas.width_px), 1),
        (canvas.ymax - canvas.ymin) / max(int(canvas.height_px), 1),
    )


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
    flat: Any, rows: np.ndarray, radii: np.ndarray | None, amap: AffineMap, canvas
) -> np.ndarray:
    """``(height, width)`` int64: per canvas pixel the position in ``rows`` of the last shape covering its centre
    (``-1``: none); shapes covering no pixel centre are placed in one pixel (see the module notes).

    The shapes are rows ``rows`` of ``flat`` (the element's flat coordinate arrays), in draw order; with ``radii``
    they are circles (points of ``flat``) of those radii in intrinsic units, else (multi)polygons."""
    height, width = int(canvas.height_px), int(canvas.width_px)
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    owner = np.full((height, width), -1, dtype=np.int64)
    if radii is None:  # one pass of the owner kernel over the element's own arrays (no copies)
        rank = np.full(len(flat), -1, dtype=np.int64)
        rank[rows] = np.arange(n, dtype=np.int64)
        polygon_owner(flat.coords, flat.ring_offsets, flat.geom_ring_offsets, rank, pixel_affine(amap, canvas), owner)
        return owner
    sx, sy = _pixel_scale(canvas)
    linear = np.asarray(amap.linear, dtype=float)
    if abs(np.linalg.det(linear)) < 1e-300:
        raise ValueError("circles under a singular transformation cannot be rasterised")
    inv = np.linalg.inv(linear)
    # pixel (u, v) -> coordinate system (xmin + u sx, ymin + v sy) -> intrinsic: inv @ (p - offset)
    m = np.empty((2, 3))
    m[:, :2] = inv @ np.diag([sx, sy])
    m[:, 2] = inv @ (np.array([canvas.xmin, canvas.ymin]) - np.asarray(amap.offset, dtype=float))
    cx = np.ascontiguousarray(flat.coords[rows, 0], dtype=np.float64)
    cy = np.ascontiguousarray(flat.coords[rows, 1], dtype=np.float64)
    runs = circle_runs(cx, cy, np.ascontiguousarray(radii, dtype=np.float64), m, height, width)
    positions = np.arange(n, dtype=np.int64)
    burn_runs(*runs, positions, owner, np.zeros((height, width), dtype=np.bool_), BURN_OPS["max"])
    # circles covering no pixel centre: placed at their centre's pixel, by the polygons' rule
    anchor = np.full(n, -1, dtype=np.int64)
    lost = np.flatnonzero(~_has_runs(runs[0], n))
    px, py = to_pixels(cx[lost], cy[lost], amap, canvas)
    with np.errstate(invalid="ignore"):
        inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    anchor[lost[inside]] = np.floor(py[inside]).astype(np.int64) * width + np.floor(px[inside]).astype(np.int64)
    place_anchors(owner, anchor, positions)
    return owner


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
    flat: Any,
    rows: np.ndarray,
    radii: np.ndarray | None,
    colors: np.ndarray,
    amap: AffineMap,
    canvas,
    *,
    fill_alpha: float,
    outline_color,
    outline_alpha: float,
    outline_width: float,
) -> np.ndarray:
    """``(height, width, 4)`` straight-alpha RGBA picture of shapes on the canvas grid (row 0 at ``ymin``): rows
    ``rows`` of the flat coordinate arrays ``flat`` (see :func:`shape_owner`).

    ``colors`` (n, 4): the fill colour of every shape, in draw order (later shapes on top).
    """
    owner = shape_owner(flat, rows, radii, amap, canvas)
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
