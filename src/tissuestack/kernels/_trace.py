"""Pixel-edge boundary tracing of label rasters: every nonzero label's boundary as closed integer rings.

Conventions
-----------
Pixel ``(row i, column j)`` covers ``[j, j + 1] x [i, i + 1]`` (``x = column``, ``y = row``), as in the raster
kernels of :mod:`tissuestack.kernels._zonal`. A label's boundary is made of the unit pixel edges between a pixel
of the label and a pixel of another value (or the outside of the array). Edges are directed with the label on
their **left** (in ``x, y`` axes), so exterior rings run counter-clockwise (positive signed area) and holes
clockwise (negative): the sum of a label's signed ring areas is exactly its pixel count.

Diagonal contacts (pinch vertices)
----------------------------------
Where two pixels of a label touch only at a corner (the other two pixels around that vertex are not the label),
the tracer turns **left**: it stays on the pixel it is walking around, so diagonal neighbours are *not*
connected (pixels of a label are 4-connected). A ring that comes back to a pinch vertex it already passed
(a "C" closed diagonally around a hole, a hole touching itself) is split there into two simple rings. So every
ring is simple, rings touch each other only at single pinch vertices, each 4-connected piece of a label is one
valid polygon (its holes may touch its shell or each other at one point), and a label whose pieces touch only
diagonally becomes a valid MultiPolygon.

Rings are returned closed (last vertex = first), with only the vertices where the boundary turns (plus possibly
the start vertex).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

__all__ = ["Rings", "trace_rings"]

# side s of pixel (i, j): 0 bottom (y = i, running +x), 1 right (x = j + 1, +y), 2 top (y = i + 1, -x),
# 3 left (x = j, -y). Pixel offset (di, dj) across side s; start vertex (dx, dy) relative to (j, i).
_ACROSS_I = np.array([-1, 0, 1, 0], dtype=np.int64)
_ACROSS_J = np.array([0, 1, 0, -1], dtype=np.int64)
_START_X = np.array([0, 1, 1, 0], dtype=np.int64)
_START_Y = np.array([0, 0, 1, 1], dtype=np.int64)


class Rings(NamedTuple):
    """Closed rings: ring ``r`` is ``xy[offsets[r]:offsets[r + 1]]`` (float64 ``(N, 2)`` vertices, closed), of
    label ``label[r]`` (the dtype of the traced array), with doubled signed area ``area2[r]`` (> 0 exterior, < 0 hole) and bounding box
    ``bbox[r] = (x0, y0, x1, y1)`` (int64 vertex coordinates, so ``x1`` is one past the last pixel column)."""

    xy: np.ndarray
    offsets: np.ndarray
    label: np.ndarray
    area2: np.ndarray
    bbox: np.ndarray


@numba.njit(cache=True)
def _same(labels: np.ndarray, i: int, j: int, value: int) -> bool:
    # labels are padded with one ring of background pixels: every neighbour of a traced pixel exists
    return labels[i, j] == value


@numba.njit(cache=True)
def _grow2(a: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((a.shape[0], max(2 * a.shape[1], n)), dtype=np.int64)
    for r in range(a.shape[0]):  # explicit loops: a slice assignment costs seconds of compile time
        for c in range(a.shape[1]):
            out[r, c] = a[r, c]
    return out


@numba.njit(cache=True, nogil=True)
def _emit(buf, k, n, oxy, n_out, rings, n_rings, value):
    """Append the closed ring ``buf[:, k:n] + buf[:, k]``; return the (possibly grown) outputs and counts."""
    if n_out + n - k + 1 > oxy.shape[1]:
        oxy = _grow2(oxy, n_out + n - k + 1)
    if n_rings >= rings.shape[1]:
        rings = _grow2(rings, n_rings + 1)
    a2 = 0
    x0 = x1 = buf[0, k]
    y0 = y1 = buf[1, k]
    for t in range(k, n):
        u = t + 1 if t + 1 < n else k
        xt, yt = buf[0, t], buf[1, t]
        a2 += xt * buf[1, u] - buf[0, u] * yt
        oxy[0, n_out] = xt
        oxy[1, n_out] = yt
        n_out += 1
        x0 = min(x0, xt)
        x1 = max(x1, xt)
        y0 = min(y0, yt)
        y1 = max(y1, yt)
    oxy[0, n_out] = buf[0, k]
    oxy[1, n_out] = buf[1, k]
    n_out += 1
    rings[0, n_rings] = n_out
    rings[1, n_rings] = value
    rings[2, n_rings] = a2
    rings[3, n_rings] = x0
    rings[4, n_rings] = y0
    rings[5, n_rings] = x1
    rings[6, n_rings] = y1
    return oxy, n_out, rings, n_rings + 1


@numba.njit(cache=True, nogil=True)
def _trace_one(labels, visited, value, i0, j0, s0, oxy, n_out, rings, n_rings, buf, pinch):
    """Walk the boundary from edge ``(i0, j0, s0)`` until it closes, emitting one ring per simple loop."""
    ai, aj, sx, sy = _ACROSS_I, _ACROSS_J, _START_X, _START_Y
    buf[0, 0] = j0 + sx[s0]
    buf[1, 0] = i0 + sy[s0]
    n = 1
    n_pinch = 0
    sp = (s0 + 3) & 3  # the previous side of this pixel: is the start vertex a pinch?
    if not _same(labels, i0 + ai[sp], j0 + aj[sp], value) and _same(
        labels, i0 + ai[sp] + ai[s0], j0 + aj[sp] + aj[s0], value
    ):
        pinch[0, 0] = buf[0, 0]
        pinch[1, 0] = buf[1, 0]
        pinch[2, 0] = 0
        n_pinch = 1
    i, j, s = i0, j0, s0
    while True:  # branch-free step (the turns of a staircase boundary are unpredictable)
        visited[i, j] |= np.uint8(1 << s)
        s1 = (s + 1) & 3
        qi, qj = i + ai[s1], j + aj[s1]  # the pixel ahead-left: same label -> not a left turn
        ri, rj = qi + ai[s], qj + aj[s]  # the pixel ahead-right: same label too -> right turn
        q = np.int64(labels[qi, qj] == value)
        r = np.int64(labels[ri, rj] == value)
        qr = q & r
        ni = i + q * ai[s1] + qr * ai[s]
        nj = j + q * aj[s1] + qr * aj[s]
        ns = (s + 1 - q - qr) & 3
        if ni == i0 and nj == j0 and ns == s0:
            break
        turn = 1 - q + qr  # 0 when going straight on
        vx = nj + sx[ns]
        vy = ni + sy[ns]
        if n >= buf.shape[1]:
            buf = _grow2(buf, n + 1)
        buf[0, n] = vx
        buf[1, n] = vy
        if r > q:  # a left turn with the diagonal pixel of the label: a pinch vertex (rare)
            k = -1
            for t in range(n_pinch):
                if pinch[0, t] == vx and pinch[1, t] == vy:
                    k = pinch[2, t]
                    n_pinch = t  # the entries after it lie in the loop being cut off
                    break
            if k >= 0:  # back at a pinch vertex of this walk: cut the loop buf[k:n] off, keep v as the end
                oxy, n_out, rings, n_rings = _emit(buf, k, n, oxy, n_out, rings, n_rings, value)
                n = k
            else:
                if n_pinch >= pinch.shape[1]:
                    pinch = _grow2(pinch, n_pinch + 1)
                pinch[0, n_pinch] = vx
                pinch[1, n_pinch] = vy
                pinch[2, n_pinch] = n
                n_pinch += 1
        n += turn
        i, j, s = ni, nj, ns
    oxy, n_out, rings, n_rings = _emit(buf, 0, n, oxy, n_out, rings, n_rings, value)
    return oxy, n_out, rings, n_rings, buf, pinch


@numba.njit(cache=True, nogil=True)
def _trace(labels, background):
    h, w = labels.shape
    visited = np.zeros((h, w), dtype=np.uint8)
    oxy = np.empty((2, 4096), dtype=np.int64)
    rings = np.empty((7, 256), dtype=np.int64)
    buf = np.empty((2, 1024), dtype=np.int64)
    pinch = np.empty((3, 16), dtype=np.int64)
    n_out = 0
    n_rings = 0
    for i0 in range(1, h - 1):  # inside the padding
        for j0 in range(1, w - 1):
            value = labels[i0, j0]
            if value == background:
                continue
            # which sides are boundary edges (bit s)
            sides = 0
            if labels[i0 - 1, j0] != value:
                sides |= 1
            if labels[i0, j0 + 1] != value:
                sides |= 2
            if labels[i0 + 1, j0] != value:
                sides |= 4
            if labels[i0, j0 - 1] != value:
                sides |= 8
            sides &= ~visited[i0, j0]
            if sides == 0:
                continue
            for s0 in range(4):
                if sides & (1 << s0) and not visited[i0, j0] & (1 << s0):
                    oxy, n_out, rings, n_rings, buf, pinch = _trace_one(
                        labels, visited, value, i0, j0, s0, oxy, n_out, rings, n_rings, buf, pinch
                    )
    return oxy[:, :n_out], rings[:, :n_rings]


def trace_rings(labels: np.ndarray, background: int = 0, origin: tuple[int, int] = (0, 0)) -> Rings:
    """Trace the boundaries of every label of a 2D integer array except ``background``.

    Parameters
    ----------
    labels
        2D integer (or boolean) array; pixels outside it count as "another label".
    background
        The value that is not traced.
    origin
        ``(x, y)`` added to every vertex and bounding box (the array's place in a larger raster).

    Returns
    -------
    Rings
        Closed simple rings in pixel-vertex coordinates of ``labels`` (see the module notes).
    """
    values = np.asarray(labels)
    if values.ndim != 2:
        raise ValueError(f"trace_rings expects a 2D array, got {values.ndim} dimensions")
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"trace_rings expects integer labels, got dtype {values.dtype}")
    # one compiled kernel, for int32: smaller dtypes widen exactly, 32-bit unsigned ones are reinterpreted
    # (distinct values stay distinct), 64-bit values outside the int32 range are renumbered
    codes = None
    if values.dtype.itemsize < 4 or values.dtype == np.int32:
        work, bg = values.astype(np.int32, copy=False), np.int32(background)
    elif values.dtype.itemsize == 4:
        work, bg = values.view(np.int32), np.array(background, dtype=values.dtype).view(np.int32)[()]
    elif values.size == 0 or (values.min() >= -(2**31) and values.max() < 2**31):
        work, bg = values.astype(np.int32), np.int32(background)
    else:
        codes, inverse = np.unique(values, return_inverse=True)
        work = inverse.reshape(values.shape).astype(np.int32)
        hit = np.flatnonzero(codes == background)
        bg = np.int32(hit[0] if len(hit) else -1)
    padded = np.empty((values.shape[0] + 2, values.shape[1] + 2), dtype=np.int32)
    padded[[0, -1], :] = bg
    padded[:, [0, -1]] = bg
    padded[1:-1, 1:-1] = work
    vertices, rings = _trace(padded, np.int32(bg))
    ox, oy = int(origin[0]) - 1, int(origin[1]) - 1  # the padding shifted everything by one pixel
    xy = np.empty((vertices.shape[1], 2), dtype=np.float64)
    np.add(vertices[0], ox, out=xy[:, 0], casting="unsafe")
    np.add(vertices[1], oy, out=xy[:, 1], casting="unsafe")
    offsets = np.zeros(rings.shape[1] + 1, dtype=np.int64)
    offsets[1:] = rings[0]
    bbox = rings[3:7].T + np.array([ox, oy, ox, oy], dtype=np.int64)
    label = rings[1].astype(np.int32)
    if codes is not None:
        label = codes[label]
    elif values.dtype.itemsize == 4:
        label = label.view(values.dtype)
    else:
        label = label.astype(values.dtype)
    return Rings(xy, offsets, label, rings[2], bbox)
