"""Vectorization: labels and circles to polygons, and labels, polygons and points to circles.

:func:`to_polygons` of a labels element traces the **pixel edges** of every nonzero label (no marching-squares
smoothing), so each label's polygon covers exactly its pixels: its area is its pixel count, holes are kept, and
pixel ``(row i, column j)`` is the square ``[j, j + 1] x [i, i + 1]`` in intrinsic coordinates (as in
:func:`~tissuestack.get_extent` and :func:`~tissuestack.get_centroids`; the reference's marching-squares
contours put pixel centres at integer coordinates and cut the corners of the pixel staircase).

Limits: a label is re-traced whole in its bounding box, so a label spanning most of a huge raster (a tissue
mask) makes a window that large; rasters up to 512 MB stay in memory between the two passes, larger ones are
read again (only the chunks under the windows).

How it runs
-----------
1. Every dask chunk of the full-resolution level is traced in parallel by a numba kernel
   (:mod:`tissuestack.kernels._trace`) into closed integer rings with their signed areas.
2. A label whose rings touch an internal chunk border is cut by it: its pieces are dropped and the label is
   traced again, whole, in a window around its bounding box. Windows are grouped along each chunk border, so
   the second pass reads thin strips around the borders only.
3. Rings become geometries in bulk (:func:`shapely.from_ragged_array`): exterior rings (positive area) are
   shells, the others holes, given to their label's only shell or, when a label has several pieces, to the
   smallest shell of that label containing the hole's adjacent pixel.

Diagonal contacts: pixels of a label that touch only at a corner are **not** connected (4-connectivity). Such
pieces become separate polygons of one MultiPolygon that touch at that vertex; a piece closed around a hole only
through a corner becomes a polygon whose hole touches its shell at that vertex. Both are valid for shapely.
"""

from __future__ import annotations

from functools import singledispatch
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from tissuestack._compute import paused_gc, scheduler
from tissuestack.elements import ShapesModel, get_kind, get_meta, kind_of, raster_levels, shapes_type
from tissuestack.errors import ValidationError
from tissuestack.ops._centroids import _block_sums

if TYPE_CHECKING:
    from tissuestack.kernels._trace import Rings

__all__ = ["to_circles", "to_polygons"]

_KEEP_BYTES = 512 * 2**20  # rasters up to this size stay in memory between the two passes (else: read again)
_WINDOW_GAP = 256  # labels cut by the same chunk border and closer than this share one re-trace window


# ============================================================================================ labels -> rings
class _RingTable:
    """Rings of many chunks in global pixel-vertex coordinates; ``use`` marks the rings that make the result
    (pieces of labels cut by chunk borders are replaced by their re-traced rings)."""

    def __init__(self, rings: list[Rings]) -> None:
        self.xy = np.concatenate([r.xy for r in rings]) if rings else np.zeros((0, 2))
        base = np.cumsum([0] + [len(r.xy) for r in rings[:-1]])
        self.offsets = np.concatenate([[0]] + [r.offsets[1:] + b for r, b in zip(rings, base, strict=True)])
        self.offsets = self.offsets.astype(np.int64)
        self.label = np.concatenate([r.label for r in rings] or [np.zeros(0, np.int64)])
        self.area2 = np.concatenate([r.area2 for r in rings] or [np.zeros(0, np.int64)])
        self.bbox = np.concatenate([r.bbox for r in rings] or [np.zeros((0, 4), np.int64)])
        self.use = np.ones(len(self.label), dtype=bool)


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for every segment (vectorized)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _chunk_rings(
    block: np.ndarray, x0: int, y0: int, width: int, height: int, keep: bool
) -> tuple[Rings, np.ndarray, np.ndarray | None]:
    """Rings of one chunk (chunk-local vertices), whether each touches an internal chunk border, and the
    block itself when ``keep`` (so the second pass needs not read it again)."""
    from tissuestack.kernels._trace import (
        trace_rings,  # numba: imported on first use, not with tissuestack.ops
    )

    values = np.asarray(block)
    rings = trace_rings(values, origin=(x0, y0))
    h, w = values.shape
    b = rings.bbox
    cut = (
        ((b[:, 0] == x0) & (x0 > 0))
        | ((b[:, 2] == x0 + w) & (x0 + w < width))
        | ((b[:, 1] == y0) & (y0 > 0))
        | ((b[:, 3] == y0 + h) & (y0 + h < height))
    )
    return rings, cut, (values if keep else None)


def _window_rings(
    window: tuple[int, int, int, int], parts: list[tuple[int, int, np.ndarray]], wanted: np.ndarray
):
    """Rings of the labels ``wanted`` (all inside ``window = (x0, y0, x1, y1)``) traced in that window, which
    is assembled from the chunks ``parts = [(chunk x0, chunk y0, chunk), ...]`` it overlaps."""
    from tissuestack.kernels._trace import Rings, trace_rings

    x0, y0, x1, y1 = window
    crop = None
    for cx, cy, block in parts:
        values = np.asarray(block)
        if crop is None:
            crop = np.zeros((y1 - y0, x1 - x0), dtype=values.dtype)
        h, w = values.shape
        ax, bx = max(x0, cx), min(x1, cx + w)
        ay, by = max(y0, cy), min(y1, cy + h)
        crop[ay - y0 : by - y0, ax - x0 : bx - x0] = values[ay - cy : by - cy, ax - cx : bx - cx]
    rings = trace_rings(crop, origin=(x0, y0))
    keep = np.isin(rings.label, wanted)
    lengths = np.diff(rings.offsets)[keep]
    index = _segments(rings.offsets[:-1][keep], lengths)
    return Rings(
        rings.xy[index],
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        rings.label[keep],
        rings.area2[keep],
        rings.bbox[keep],
    )


def _label_boxes(ring_label: np.ndarray, ring_box: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of each label of ``labels`` (sorted unique) over its rings."""
    sel = np.isin(ring_label, labels)
    group = np.searchsorted(labels, ring_label[sel])
    boxes = np.empty((len(labels), 4), dtype=np.int64)
    boxes[:, :2] = np.iinfo(np.int64).max
    boxes[:, 2:] = np.iinfo(np.int64).min
    b = ring_box[sel]
    np.minimum.at(boxes[:, 0], group, b[:, 0])
    np.minimum.at(boxes[:, 1], group, b[:, 1])
    np.maximum.at(boxes[:, 2], group, b[:, 2])
    np.maximum.at(boxes[:, 3], group, b[:, 3])
    return boxes


def _windows(
    boxes: np.ndarray, x_borders: np.ndarray, y_borders: np.ndarray
) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Group labels cut by chunk borders into re-trace windows ``(x0, y0, x1, y1, members)``.

    Each label goes to the first horizontal border crossing its box (else the first vertical one); along a
    border, labels whose extents overlap or lie within ``_WINDOW_GAP`` share a window (their joint box)."""
    n = len(boxes)
    home = np.full(n, -1, dtype=np.int64)
    along = np.zeros(n, dtype=bool)  # True: grouped along a vertical border (by y)
    for k, yb in enumerate(y_borders):
        hit = (home < 0) & (boxes[:, 1] < yb) & (boxes[:, 3] > yb)
        home[hit] = k
    for k, xb in enumerate(x_borders):
        hit = (home < 0) & (boxes[:, 0] < xb) & (boxes[:, 2] > xb)
        home[hit] = len(y_borders) + k
        along[hit] = True
    if (home < 0).any():
        raise RuntimeError("to_polygons: a label to re-trace crosses no chunk border")
    out = []
    for h in np.unique(home):
        members = np.flatnonzero(home == h)
        lo_col, hi_col = (1, 3) if along[members[0]] else (0, 2)
        order = members[np.argsort(boxes[members, lo_col], kind="stable")]
        start = 0
        reach = boxes[order[0], hi_col]
        for t in range(1, len(order) + 1):
            if t == len(order) or boxes[order[t], lo_col] > reach + _WINDOW_GAP:
                group = order[start:t]
                out.append(
                    (
                        int(boxes[group, 0].min()),
                        int(boxes[group, 1].min()),
                        int(boxes[group, 2].max()),
                        int(boxes[group, 3].max()),
                        group,
                    )
                )
                if t < len(order):
                    start, reach = t, boxes[order[t], hi_col]
            else:
                reach = max(reach, boxes[order[t], hi_col])
    return out


def _labels_level(element: Any) -> xr.DataArray:
    kind = kind_of(element)
    if not kind.nearest_only:  # an image: its values are no label ids
        raise ValidationError(f"to_polygons/to_circles of a raster needs a labels element, got {kind.name}")
    level = raster_levels(element)[0]
    dims = tuple(str(d) for d in level.dims)
    if dims != ("y", "x"):
        raise ValidationError(
            f"labels with dims {dims} cannot be vectorized: only 2D labels (dims ('y', 'x')) are supported; "
            "select one z plane first, e.g. labels.isel(z=0)"
        )
    if not (np.issubdtype(level.dtype, np.integer) or level.dtype == np.bool_):
        raise ValidationError(f"labels have dtype {level.dtype}, expected an integer dtype")
    return level


def _trace_labels(level: xr.DataArray) -> _RingTable:
    data = level.data if isinstance(level.data, da.Array) else da.from_array(np.asarray(level.data))
    height, width = (int(s) for s in data.shape)
    y_starts = np.concatenate([[0], np.cumsum(data.chunks[0])]).astype(np.int64)
    x_starts = np.concatenate([[0], np.cumsum(data.chunks[1])]).astype(np.int64)
    blocks = data.to_delayed()
    keep = data.nbytes <= _KEEP_BYTES
    tasks = []
    for bi, bj in np.ndindex(*blocks.shape):
        x0, y0 = int(x_starts[bj]), int(y_starts[bi])
        tasks.append(dask.delayed(_chunk_rings)(blocks[bi, bj], x0, y0, width, height, keep))
    results = dask.compute(*tasks, scheduler=scheduler())
    first = [r for r, _, _ in results]
    cut = np.concatenate([c for _, c, _ in results] or [np.zeros(0, bool)])
    if not cut.any():
        return _RingTable(first)
    kept_blocks = np.empty(blocks.shape, dtype=object)
    for (bi, bj), r in zip(np.ndindex(*blocks.shape), results, strict=True):
        kept_blocks[bi, bj] = r[2] if keep else blocks[bi, bj]
    del results
    ring_label = np.concatenate([r.label for r in first])
    ring_box = np.concatenate([r.bbox for r in first])
    # a ring touching a chunk border is cut only if its label has pixels on both sides of that border
    touching = np.unique(ring_label[cut])
    boxes = _label_boxes(ring_label, ring_box, touching)
    inner_x, inner_y = x_starts[1:-1], y_starts[1:-1]
    crosses = np.zeros(len(touching), dtype=bool)
    for xb in inner_x:
        crosses |= (boxes[:, 0] < xb) & (boxes[:, 2] > xb)
    for yb in inner_y:
        crosses |= (boxes[:, 1] < yb) & (boxes[:, 3] > yb)
    cut_labels, boxes = touching[crosses], boxes[crosses]
    if len(cut_labels) == 0:
        return _RingTable(first)
    windows = _windows(boxes, inner_x, inner_y)
    retrace = []
    for x0, y0, x1, y1, members in windows:
        rows = range(np.searchsorted(y_starts, y0, "right") - 1, np.searchsorted(y_starts, y1, "left"))
        cols = range(np.searchsorted(x_starts, x0, "right") - 1, np.searchsorted(x_starts, x1, "left"))
        parts = [(int(x_starts[bj]), int(y_starts[bi]), kept_blocks[bi, bj]) for bi in rows for bj in cols]
        retrace.append(dask.delayed(_window_rings)((x0, y0, x1, y1), parts, cut_labels[members]))
    again = dask.compute(*retrace, scheduler=scheduler())
    del kept_blocks
    out = _RingTable(first + list(again))
    n_first = sum(len(r.label) for r in first)
    out.use[:n_first] = ~np.isin(out.label[:n_first], cut_labels)
    return out


# ============================================================================================ rings -> shapes
def _assign_holes(table: _RingTable, order: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Polygon id of every ring (in ``order``): shells number the polygons, holes take their shell's id."""
    area2 = table.area2[order]
    shell = area2 > 0
    poly = np.full(len(order), -1, dtype=np.int64)
    poly[shell] = np.arange(int(shell.sum()))
    n_shells = np.bincount(group[shell], minlength=n_groups)
    first_shell = np.full(n_groups, -1, dtype=np.int64)
    shell_pos = np.flatnonzero(shell)
    first_shell[group[shell_pos[::-1]]] = poly[shell_pos[::-1]]  # reversed: the first one wins
    holes = np.flatnonzero(~shell)
    single = n_shells[group[holes]] == 1
    poly[holes[single]] = first_shell[group[holes[single]]]
    multi = holes[~single]
    if len(multi):
        poly[multi] = _contain_holes(table, order, group, shell_pos, poly, multi)
    if (poly < 0).any():
        raise RuntimeError("to_polygons: a hole was found without an enclosing ring of its label")
    return poly


def _contain_holes(
    table: _RingTable,
    order: np.ndarray,
    group: np.ndarray,
    shell_pos: np.ndarray,
    poly: np.ndarray,
    holes: Any,
) -> np.ndarray:
    """Shells for holes of labels with several pieces: the smallest shell of the label holding the pixel on
    the inner side of the hole's first edge."""
    ring = order[holes]
    start = table.offsets[ring]
    ax, ay = table.xy[start, 0], table.xy[start, 1]
    dx, dy = np.sign(table.xy[start + 1, 0] - ax), np.sign(table.xy[start + 1, 1] - ay)
    px, py = ax + 0.5 * dx - 0.5 * dy, ay + 0.5 * dy + 0.5 * dx  # the label's pixel left of the first edge
    # candidate shells: those of the same label (groups are contiguous in `order`)
    shells_of = {g: [] for g in np.unique(group[holes])}
    for p in shell_pos:
        lst = shells_of.get(group[p])
        if lst is not None:
            lst.append(p)
    pair_h, pair_s = [], []
    for h, g in enumerate(group[holes]):
        cand = shells_of[g]
        pair_h.extend([h] * len(cand))
        pair_s.extend(cand)
    pair_h, pair_s = np.asarray(pair_h), np.asarray(pair_s)
    rings = order[pair_s]
    shells = _ring_polygons(table, rings)
    inside = shapely.contains_xy(shells, px[pair_h], py[pair_h])
    area = table.area2[rings]
    out = np.full(len(holes), -1, dtype=np.int64)
    best = np.full(len(holes), np.iinfo(np.int64).max)
    for k in np.flatnonzero(inside):
        h = pair_h[k]
        if area[k] < best[h]:
            best[h] = area[k]
            out[h] = poly[pair_s[k]]
    return out


def _ring_polygons(table: _RingTable, rings: np.ndarray) -> np.ndarray:
    lengths = np.diff(table.offsets)[rings]
    index = _segments(table.offsets[rings], lengths)
    coords = table.xy[index]
    ring_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    poly_offsets = np.arange(len(rings) + 1, dtype=np.int64)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, (ring_offsets, poly_offsets))


def _geometries(table: _RingTable) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, geometries)``: one Polygon or MultiPolygon per label, labels sorted.

    Most labels are one ring (a shell without holes): their polygons are made straight from the ring table.
    The others (holes, several pieces) are gathered and assembled by :func:`_assembled`."""
    rings = np.flatnonzero(table.use)
    order = rings[np.argsort(table.label[rings], kind="stable")]
    labels, first, counts = np.unique(table.label[order], return_index=True, return_counts=True)
    geoms = np.empty(len(labels), dtype=object)
    simple = counts == 1  # one ring: a shell (the areas of a label's rings add up to its pixel count > 0)
    with paused_gc():
        every_ring = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, table.xy, (table.offsets, np.arange(len(table.label) + 1))
        )
        geoms[simple] = every_ring[order[first[simple]]]
        del every_ring
        if not simple.all():
            sub = order[np.repeat(~simple, counts)]
            geoms[~simple] = _assembled(table, sub)
    return labels, geoms


def _assembled(table: _RingTable, order: np.ndarray) -> np.ndarray:
    """One geometry per label of the rings ``order`` (grouped by label, labels sorted)."""
    labels, group = np.unique(table.label[order], return_inverse=True)
    group = group.ravel()
    poly = _assign_holes(table, order, group, len(labels))
    hole = table.area2[order] < 0
    final = order[np.lexsort((hole, poly))]  # each polygon: its shell, then its holes
    lengths = np.diff(table.offsets)[final]
    coords = table.xy[_segments(table.offsets[final], lengths)]
    ring_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_poly = int(poly.max()) + 1
    poly_offsets = np.concatenate([[0], np.cumsum(np.bincount(poly, minlength=n_poly))]).astype(np.int64)
    polygons = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, (ring_offsets, poly_offsets))
    # polygon -> label group (shells are numbered in label order)
    poly_group = group[table.area2[order] > 0]
    n_per_label = np.bincount(poly_group, minlength=len(labels))
    geoms = np.empty(len(labels), dtype=object)
    one = n_per_label == 1
    first = np.concatenate([[0], np.cumsum(n_per_label)[:-1]])
    geoms[one] = polygons[first[one]]
    if (~one).any():
        sel = ~one[poly_group]
        many = np.flatnonzero(~one)
        geoms[many] = shapely.multipolygons(polygons[sel], indices=np.searchsorted(many, poly_group[sel]))
    return geoms


# ============================================================================================ to_polygons
@singledispatch
def to_polygons(element: Any, buffer_resolution: int = 16) -> gpd.GeoDataFrame:
    """Polygons of a labels element (one per label) or of circles.

    Parameters
    ----------
    element
        * 2D labels (``DataArray`` or multiscale ``DataTree``; the full-resolution level is used): one Polygon or
          MultiPolygon per nonzero label value, traced along pixel edges, so its area in intrinsic units is
          exactly the label's pixel count and holes are kept (see the module notes for diagonal contacts).
          Computed chunk by chunk in parallel; labels spanning chunks give one geometry.
        * shapes of circles: each circle becomes a polygon (:func:`shapely.buffer`); other columns are kept,
          the ``radius`` column is dropped.
        * shapes of polygons: returned as a copy.
    buffer_resolution
        Circles: segments per quarter circle.

    Returns
    -------
    geopandas.GeoDataFrame
        A parsed shapes element with the element's transformations. Labels: indexed by label value (sorted),
        coordinates in the labels' intrinsic pixel space (pixel ``(i, j)`` is ``[j, j + 1] x [i, i + 1]``).

    Raises
    ------
    ValidationError
        For images, 3D labels, labels without any nonzero pixel, or points.
    """
    kind = kind_of(element)
    raise ValidationError(
        f"to_polygons converts labels and circles; a {kind.name} element cannot be turned into polygons"
        + ("; make circles first with to_circles(points, radius=...)" if kind.lazy_rows else "")
    )


@to_polygons.register(xr.DataArray)
@to_polygons.register(xr.DataTree)
def _(element: xr.DataArray | xr.DataTree, buffer_resolution: int = 16) -> gpd.GeoDataFrame:
    level = _labels_level(element)
    table = _trace_labels(level)
    if len(table.label) == 0:
        raise ValidationError(
            f"labels of shape {tuple(level.shape)} hold no nonzero pixel: there is no polygon to make "
            "(a shapes element needs at least one geometry)"
        )
    labels, geoms = _geometries(table)
    index = pd.Index(labels.astype(level.dtype if level.dtype != np.bool_ else np.uint8))
    return ShapesModel.parse(
        gpd.GeoDataFrame(geometry=geoms, index=index), transformations=dict(get_meta(element).transformations)
    )


@to_polygons.register(gpd.GeoDataFrame)
def _(element: gpd.GeoDataFrame, buffer_resolution: int = 16) -> gpd.GeoDataFrame:
    transformations = dict(get_meta(element).transformations)
    if shapes_type(element) == "polygons":
        return ShapesModel.parse(element.copy(), transformations=transformations)
    if int(buffer_resolution) < 1:
        raise ValidationError(f"buffer_resolution must be an integer >= 1, got {buffer_resolution!r}")
    geoms = shapely.buffer(
        np.asarray(element.geometry.array),
        element["radius"].to_numpy(np.float64),
        quad_segs=int(buffer_resolution),
    )
    frame = gpd.GeoDataFrame(
        element.drop(columns=["radius", "geometry"]), geometry=geoms, index=element.index
    )
    return ShapesModel.parse(frame, transformations=transformations)


# ============================================================================================ to_circles
@singledispatch
def to_circles(element: Any, radius: float | np.ndarray | None = None) -> gpd.GeoDataFrame:
    """Circles of labels, polygons or points.

    Parameters
    ----------
    element
        * 2D labels: one circle per nonzero label at the mean pixel centre, with the label's area
          (``radius = sqrt(pixel count / pi)``, intrinsic units); indexed by label value (sorted).
        * shapes of polygons: one circle per polygon at its centroid with its area; other columns kept.
        * shapes of circles: returned as a copy.
        * points: one circle per point with ``radius`` (a number or one per point), or the points' ``radius``
          column; other columns kept.
    radius
        Points only.

    Returns
    -------
    geopandas.GeoDataFrame
        A parsed shapes element of circles with the element's transformations.
    """
    raise ValidationError(f"to_circles converts labels, shapes and points, not {get_kind(element)}")


@to_circles.register(xr.DataArray)
@to_circles.register(xr.DataTree)
def _(element: xr.DataArray | xr.DataTree, radius: float | np.ndarray | None = None) -> gpd.GeoDataFrame:
    if radius is not None:
        raise ValidationError(
            "to_circles of labels derives each radius from the label's area; do not pass radius"
        )
    level = _labels_level(element)
    data = level.data if isinstance(level.data, da.Array) else da.from_array(np.asarray(level.data))
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in data.chunks]
    blocks = data.to_delayed()
    parts = [
        dask.delayed(_block_sums)(blocks[idx], tuple(int(starts[a][i]) for a, i in enumerate(idx)))
        for idx in np.ndindex(*blocks.shape)
    ]
    results = dask.compute(*parts, scheduler=scheduler())
    labels, inverse = np.unique(np.concatenate([r[0] for r in results]), return_inverse=True)
    inverse = inverse.ravel()
    if len(labels) == 0:
        raise ValidationError(
            f"labels of shape {tuple(level.shape)} hold no nonzero pixel: there is no circle"
        )
    counts = np.bincount(inverse, weights=np.concatenate([r[1] for r in results]), minlength=len(labels))
    sums = np.concatenate([r[2] for r in results], axis=1)
    cy = np.bincount(inverse, weights=sums[0], minlength=len(labels)) / counts + 0.5
    cx = np.bincount(inverse, weights=sums[1], minlength=len(labels)) / counts + 0.5
    index = pd.Index(labels.astype(level.dtype if level.dtype != np.bool_ else np.uint8))
    return ShapesModel.parse(
        np.column_stack([cx, cy]),
        radius=np.sqrt(counts / np.pi),
        index=index,
        transformations=dict(get_meta(element).transformations),
    )


@to_circles.register(gpd.GeoDataFrame)
def _(element: gpd.GeoDataFrame, radius: float | np.ndarray | None = None) -> gpd.GeoDataFrame:
    if radius is not None:
        raise ValidationError("to_circles of shapes derives each radius from the area; do not pass radius")
    transformations = dict(get_meta(element).transformations)
    if shapes_type(element) == "circles":
        return ShapesModel.parse(element.copy(), transformations=transformations)
    geoms = np.asarray(element.geometry.array)
    centres = shapely.centroid(geoms)
    frame = gpd.GeoDataFrame(element.drop(columns=["geometry"]), geometry=centres, index=element.index)
    frame["radius"] = np.sqrt(shapely.area(geoms) / np.pi)
    return ShapesModel.parse(frame, transformations=transformations)


@to_circles.register(dd.DataFrame)
def _(element: dd.DataFrame, radius: float | np.ndarray | None = None) -> gpd.GeoDataFrame:
    transformations = dict(get_meta(element).transformations)
    frame = element.compute()
    if radius is None:
        if "radius" not in frame.columns:
            raise ValidationError(
                "to_circles of points needs radius= (a number or one per point) or a 'radius' column"
            )
        radius = frame["radius"].to_numpy(np.float64)
    x, y = frame["x"].to_numpy(np.float64), frame["y"].to_numpy(np.float64)
    geoms = shapely.points(x, y)
    rest = frame.drop(columns=[c for c in ("x", "y", "z") if c in frame.columns])
    gdf = gpd.GeoDataFrame(rest, geometry=geoms, index=frame.index)
    return ShapesModel.parse(gdf, radius=radius, transformations=transformations)
