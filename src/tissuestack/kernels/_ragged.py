"""Shapes as flat coordinate arrays (the GeoArrow / ``shapely.to_ragged_array`` layout), decoded straight from WKB.

:class:`FlatGeometry` holds the x/y coordinates of every geometry of a shapes element and the offsets that group
them, without any shapely object:

* points: ``coords[i]`` is geometry ``i`` (``NaN, NaN`` for an empty or missing point);
* polygons and multipolygons (one layout for both, as GeoArrow's multipolygon): ring ``q`` is
  ``coords[ring_offsets[q]:ring_offsets[q + 1]]`` (closed: its last vertex repeats the first), part ``p`` (a
  polygon: exterior ring first, then its holes) is rings ``part_offsets[p]:part_offsets[p + 1]`` and geometry ``g``
  is parts ``geom_offsets[g]:geom_offsets[g + 1]``. An empty polygon is one part without rings, a missing
  geometry or an empty multipolygon has no parts (as in ``shapely.to_ragged_array``).

:func:`from_wkb` decodes a binary Arrow array of WKB: 2D little-endian values (what geopandas and the reference
write) with numpy alone (the headers masked out of the data buffer leave the coordinates, already in GeoArrow
order), anything else (ISO or extended WKB, big endian, Z / M / ZM; z and m are dropped) with a numba kernel.
:func:`from_shapely` builds the same arrays from shapely geometries (``shapely.to_ragged_array``).
:meth:`FlatGeometry.to_ragged` returns exactly what ``shapely.to_ragged_array`` returns for the 2D geometries
(Polygon layout when there is no MultiPolygon), which is what the tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
import pyarrow as pa
import shapely

from tissuestack._compute import numba_warming

__all__ = ["FlatBuilder", "FlatGeometry", "decode_polygons", "from_shapely", "from_wkb", "ranges"]

POINT, POLYGON, MULTIPOLYGON = 0, 3, 6
_MISSING = -1
# kernel status codes
_OK, _UNSUPPORTED, _CORRUPT = 0, 1, 2


# ------------------------------------------------------------------------------------------------- WKB kernel
@numba.njit(cache=True, nogil=True, inline="always")
def _u32(data, p, little):  # pragma: no cover - compiled
    b0 = np.int64(data[p])
    b1 = np.int64(data[p + 1])
    b2 = np.int64(data[p + 2])
    b3 = np.int64(data[p + 3])
    if little:
        return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    return b3 | (b2 << 8) | (b1 << 16) | (b0 << 24)


@numba.njit(cache=True, nogil=True, inline="always")
def _header(data, p, end):  # pragma: no cover - compiled
    """``(position after the header, little endian, WKB base type, dimensions, ok)``."""
    if p + 5 > end:
        return p, True, 0, 2, False
    little = data[p] == 1
    code = _u32(data, p + 1, little)
    p += 5
    iso = code & 0xFFFF
    base = iso % 1000
    dims = 2
    if (code & 0x80000000) != 0 or iso // 1000 == 1 or iso // 1000 == 3:
        dims += 1
    if (code & 0x40000000) != 0 or iso // 1000 == 2 or iso // 1000 == 3:
        dims += 1
    if (code & 0x20000000) != 0:  # EWKB SRID
        p += 4
    return p, little, base, dims, p <= end


@numba.njit(cache=True, nogil=True)
def _wkb_count(data, offsets, valid):  # pragma: no cover - compiled
    """Pass 1 over one piece of WKB values: per geometry its type id, and the totals that size the arrays.

    Returns ``(status, type_ids, n_coords, n_rings, n_parts, has_z, points, polygons)``; ``status`` is
    ``_UNSUPPORTED`` for a geometry type other than Point/Polygon/MultiPolygon, ``_CORRUPT`` for a value shorter
    than its contents. ``offsets`` index ``data`` (a slice of a longer offsets array works: a piece).
    """
    n = offsets.shape[0] - 1
    type_ids = np.full(n, -1, dtype=np.int8)
    n_coords = 0
    n_rings = 0
    n_parts = 0
    has_z = False
    points = False
    polygons = False
    for g in range(n):
        if not valid[g]:
            continue
        p = offsets[g]
        end = offsets[g + 1]
        p, little, base, dims, ok = _header(data, p, end)
        if not ok:
            return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
        has_z = has_z or dims >= 3
        if base == 1:
            type_ids[g] = POINT
            points = True
            n_coords += 1
            if p + 8 * dims > end:
                return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
            continue
        if base == 3:
            type_ids[g] = POLYGON
            n_polys = 1
        elif base == 6:
            type_ids[g] = MULTIPOLYGON
            if p + 4 > end:
                return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
            n_polys = _u32(data, p, little)
            p += 4
        else:
            return _UNSUPPORTED, type_ids, 0, 0, 0, has_z, points, polygons
        polygons = True
        for _k in range(n_polys):
            if base == 6:
                p, little, pbase, dims, ok = _header(data, p, end)
                if not ok or pbase != 3:
                    return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
                has_z = has_z or dims >= 3
            if p + 4 > end:
                return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
            rings = _u32(data, p, little)
            p += 4
            n_parts += 1  # an empty polygon is one part without rings (as in shapely.to_ragged_array)
            for _r in range(rings):
                if p + 4 > end:
                    return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
                m = _u32(data, p, little)
                p += 4 + 8 * dims * m
                if p > end:
                    return _CORRUPT, type_ids, 0, 0, 0, has_z, points, polygons
                n_rings += 1
                n_coords += m
    return _OK, type_ids, n_coords, n_rings, n_parts, has_z, points, polygons


@numba.njit(cache=True, nogil=True)
def _wkb_fill_points(data, offsets, valid, coords, g0):  # pragma: no cover - compiled
    """Pass 2 for points: the coordinate of geometry ``g`` of the piece into ``coords[g0 + g]`` (rows of missing
    values are left as they are: NaN)."""
    for g in range(offsets.shape[0] - 1):
        if not valid[g]:
            continue
        p, little, _base, _dims, _ok = _header(data, offsets[g], offsets[g + 1])
        for a in range(2):
            coords[g0 + g, a] = _f64(data, p + 8 * a, little)


@numba.njit(cache=True, nogil=True)
def _wkb_fill_polygons(
    data, offsets, valid, coords, ring_offsets, part_offsets, geom_offsets, c, q, pt, g0
):  # pragma: no cover - compiled
    """Pass 2 for (multi)polygons of one piece (counted by :func:`_wkb_count`), into the whole element's arrays:
    coordinates from row ``c``, rings from ``q``, parts from ``pt``, geometries from ``g0`` (the totals of the
    pieces before it). ``ring_offsets[q]``, ``part_offsets[pt]`` and ``geom_offsets[g0]`` must already hold
    ``c``, ``q`` and ``pt``. Returns the counters after the piece."""
    flat = coords.reshape(-1).view(np.uint8)
    for g in range(offsets.shape[0] - 1):
        if valid[g]:
            p, little, base, dims, _ok = _header(data, offsets[g], offsets[g + 1])
            n_polys = 1
            if base == 6:
                n_polys = _u32(data, p, little)
                p += 4
            for _k in range(n_polys):
                if base == 6:
                    p, little, _pbase, dims, _ok = _header(data, p, offsets[g + 1])
                rings = _u32(data, p, little)
                p += 4
                for _r in range(rings):
                    m = _u32(data, p, little)
                    p += 4
                    if little and dims == 2:  # the common case: the coordinate bytes as they are
                        flat[16 * c : 16 * (c + m)] = data[p : p + 16 * m]
                        c += m
                        p += 16 * m
                    else:
                        for _i in range(m):
                            coords[c, 0] = _f64(data, p, little)
                            coords[c, 1] = _f64(data, p + 8, little)
                            c += 1
                            p += 8 * dims
                    q += 1
                    ring_offsets[q] = c
                pt += 1
                part_offsets[pt] = q
        geom_offsets[g0 + g + 1] = pt
    return c, q, pt


@numba.njit(cache=True, nogil=True, inline="always")
def _f64(data, p, little):  # pragma: no cover - compiled
    b = np.empty(8, dtype=np.uint8)
    if little:
        for k in range(8):
            b[k] = data[p + k]
    else:
        for k in range(8):
            b[k] = data[p + 7 - k]
    return b.view(np.float64)[0]


# ------------------------------------------------------------------------------------------------- areas
@numba.njit(cache=True, nogil=True)
def _polygon_areas(coords, ring_offsets, part_offsets, geom_offsets):  # pragma: no cover - compiled
    """Shoelace area per geometry: a part's exterior ring minus its holes (absolute ring areas)."""
    n = geom_offsets.shape[0] - 1
    out = np.zeros(n)
    for g in range(n):
        total = 0.0
        for pt in range(geom_offsets[g], geom_offsets[g + 1]):
            for q in range(part_offsets[pt], part_offsets[pt + 1]):
                a = 0.0
                c0 = ring_offsets[q]
                x0 = coords[c0, 0]
                y0 = coords[c0, 1]
                for i in range(c0 + 1, ring_offsets[q + 1] - 1):  # fan from the first vertex (closed ring)
                    a += (coords[i, 0] - x0) * (coords[i + 1, 1] - y0) - (coords[i + 1, 0] - x0) * (
                        coords[i, 1] - y0
                    )
                a = abs(0.5 * a)
                total += a if q == part_offsets[pt] else -a
        out[g] = total
    return out


# ------------------------------------------------------------------------------------------------- the arrays
@dataclass(frozen=True, eq=False)
class FlatGeometry:
    """Points or (multi)polygons as flat x/y arrays (see the module notes).

    Attributes
    ----------
    geom_type
        ``0`` (points) or ``6`` (polygons and multipolygons, one layout).
    coords
        ``float64 (m, 2)``.
    ring_offsets, part_offsets, geom_offsets
        ``int64`` offsets (polygons; for points ``geom_offsets`` is ``0..n`` and the others are ``[0]``).
    type_ids
        Per geometry its shapely type id (``0``, ``3``, ``6``; ``-1`` missing).
    has_z
        Whether the source had z coordinates (dropped here).
    """

    geom_type: int
    coords: np.ndarray
    ring_offsets: np.ndarray
    part_offsets: np.ndarray
    geom_offsets: np.ndarray
    type_ids: np.ndarray
    has_z: bool = False

    def __len__(self) -> int:
        return len(self.geom_offsets) - 1

    @property
    def is_points(self) -> bool:
        return self.geom_type == POINT

    @cached_property
    def bounds(self) -> np.ndarray:
        """``(n, 4)`` xmin, ymin, xmax, ymax per geometry (NaN for empty or missing ones), as ``shapely.bounds``."""
        if self.is_points:
            return np.column_stack([self.coords, self.coords])
        # numpy reductions over each geometry's coordinates (no numba: queries need no kernel set-up)
        out = np.full((len(self), 4), np.nan)
        first = self.ring_offsets[self.geom_ring_offsets]
        filled = np.flatnonzero(first[1:] > first[:-1])
        if len(filled):
            starts = first[:-1][filled]  # empty geometries in between own no coordinates
            for j, (col, func) in enumerate(
                ((0, np.minimum), (1, np.minimum), (0, np.maximum), (1, np.maximum))
            ):
                out[filled, j] = func.reduceat(self.coords[:, col], starts)
        return out

    @cached_property
    def geom_ring_offsets(self) -> np.ndarray:
        """Geometry ``g``'s rings are ``geom_ring_offsets[g]:geom_ring_offsets[g + 1]``."""
        return self.part_offsets[self.geom_offsets]

    @cached_property
    def ring_sign(self) -> np.ndarray:
        """``+1.0`` for a polygon's exterior ring (the first of its part), ``-1.0`` for a hole."""
        sign = np.full(len(self.ring_offsets) - 1, -1.0)
        sign[self.part_offsets[:-1][np.diff(self.part_offsets) > 0]] = 1.0
        return sign

    @cached_property
    def x(self) -> np.ndarray:
        return np.ascontiguousarray(self.coords[:, 0])

    @cached_property
    def y(self) -> np.ndarray:
        return np.ascontiguousarray(self.coords[:, 1])

    @cached_property
    def areas(self) -> np.ndarray:
        """Area of each geometry (shoelace per ring: exteriors add, holes subtract; 0 for points)."""
        n = len(self)
        if self.is_points or len(self.coords) == 0:
            return np.zeros(n)
        return _polygon_areas(self.coords, self.ring_offsets, self.part_offsets, self.geom_offsets)

    def transformed(self, linear: np.ndarray, offset: np.ndarray) -> FlatGeometry:
        """The geometries under the affine map ``p -> linear @ p + offset`` (2 x 2, 2)."""
        coords = self.coords @ np.asarray(linear, dtype=np.float64).T + np.asarray(offset, dtype=np.float64)
        return FlatGeometry(
            self.geom_type,
            coords,
            self.ring_offsets,
            self.part_offsets,
            self.geom_offsets,
            self.type_ids,
            False,
        )

    @property
    def nbytes(self) -> int:
        arrays = (self.coords, self.ring_offsets, self.part_offsets, self.geom_offsets, self.type_ids)
        return int(sum(a.nbytes for a in arrays))

    def take(self, indices: np.ndarray) -> FlatGeometry:
        """Geometries ``indices`` (non-negative positions; ``-1``: a missing geometry), in that order, as new arrays."""
        idx = np.asarray(indices, dtype=np.int64)
        missing = idx < 0
        src = np.where(missing, 0, idx) if len(self) else np.zeros(len(idx), dtype=np.int64)
        type_ids = np.where(missing, _MISSING, self.type_ids[src] if len(self) else _MISSING).astype(np.int8)
        n = len(idx)
        if self.is_points:
            coords = self.coords[src] if len(self) else np.full((n, 2), np.nan)
            coords[missing] = np.nan
            none = np.zeros(1, dtype=np.int64)
            return FlatGeometry(POINT, coords, none, none, np.arange(n + 1, dtype=np.int64), type_ids, self.has_z)
        n_parts = np.where(missing, 0, np.diff(self.geom_offsets)[src] if len(self) else 0)
        parts = ranges(self.geom_offsets[src], n_parts)
        n_rings = np.diff(self.part_offsets)[parts]
        rings = ranges(self.part_offsets[parts], n_rings)
        n_coords = np.diff(self.ring_offsets)[rings]
        coords = self.coords[ranges(self.ring_offsets[rings], n_coords)]
        return FlatGeometry(
            self.geom_type, coords, _offsets(n_coords), _offsets(n_rings), _offsets(n_parts), type_ids, self.has_z
        )

    def to_ragged(self) -> tuple[shapely.GeometryType, np.ndarray, tuple[np.ndarray, ...]]:
        """``(geometry type, coords, offsets)`` as ``shapely.to_ragged_array`` gives them for 2D geometries."""
        if self.is_points:
            return shapely.GeometryType.POINT, self.coords, ()
        if (self.type_ids == MULTIPOLYGON).any():
            offsets = (self.ring_offsets, self.part_offsets, self.geom_offsets)
            return shapely.GeometryType.MULTIPOLYGON, self.coords, offsets
        return shapely.GeometryType.POLYGON, self.coords, (self.ring_offsets, self.geom_ring_offsets)

    def to_shapely(self) -> np.ndarray:
        """Shapely geometries of the recorded types (``shapely.from_ragged_array``); missing ones are ``None``."""
        kind, coords, offsets = self.to_ragged()
        if len(coords) == 0 and kind != shapely.GeometryType.POINT:  # shapely's builder fails on no coordinates
            empty = {POLYGON: shapely.Polygon(), MULTIPOLYGON: shapely.MultiPolygon()}
            return np.array([empty.get(int(t)) for t in self.type_ids], dtype=object)
        geoms = shapely.from_ragged_array(kind, coords, offsets or None)
        if kind == shapely.GeometryType.MULTIPOLYGON:
            single = np.flatnonzero(self.type_ids == POLYGON)
            first = shapely.get_geometry(geoms[single], 0)
            first[shapely.is_missing(first)] = shapely.Polygon()
            geoms[single] = first
        geoms[self.type_ids == _MISSING] = None
        return geoms


def ranges(start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``start[k], start[k] + 1, ..., start[k] + count[k] - 1`` for every ``k``, concatenated (int64)."""
    start = np.asarray(start, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    total = int(count.sum())
    before = np.cumsum(count) - count
    return np.repeat(start - before, count) + np.arange(total, dtype=np.int64)


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


class FlatBuilder:
    """Builds one :class:`FlatGeometry` of (multi)polygons from pieces appended in order (a file read batch by
    batch: each batch's WKB can be dropped once decoded). ``coord_capacity`` is an upper bound on the coordinate
    count when one is known (a WKB coordinate takes at least 16 bytes): the array is allocated once at that size
    and only the rows written are ever touched (pages never written take no memory); beyond it, arrays grow."""

    def __init__(self, coord_capacity: int = 0):
        self._coords = np.empty((max(int(coord_capacity), 0), 2))
        self._rings = [np.zeros(1, dtype=np.int64)]
        self._parts = [np.zeros(1, dtype=np.int64)]
        self._geoms = [np.zeros(1, dtype=np.int64)]
        self._types: list[np.ndarray] = []
        self._c = self._q = self._p = 0
        self.has_z = False

    def add(self, piece: FlatGeometry) -> None:
        """Append the geometries of ``piece`` (polygons; its arrays are copied, it can be dropped)."""
        if piece.is_points:
            raise ValueError("FlatBuilder takes (multi)polygons")
        m = len(piece.coords)
        if self._c + m > len(self._coords):
            grown = np.empty((max(self._c + m, int(1.5 * len(self._coords))), 2))
            grown[: self._c] = self._coords[: self._c]
            self._coords = grown
        self._coords[self._c : self._c + m] = piece.coords
        self._rings.append(piece.ring_offsets[1:] + self._c)
        self._parts.append(piece.part_offsets[1:] + self._q)
        self._geoms.append(piece.geom_offsets[1:] + self._p)
        self._types.append(piece.type_ids)
        self._c += m
        self._q += len(piece.ring_offsets) - 1
        self._p += len(piece.part_offsets) - 1
        self.has_z = self.has_z or piece.has_z

    def finish(self) -> FlatGeometry:
        types = np.concatenate(self._types) if self._types else np.zeros(0, dtype=np.int8)
        return FlatGeometry(
            MULTIPOLYGON,
            self._coords[: self._c],
            np.concatenate(self._rings),
            np.concatenate(self._parts),
            np.concatenate(self._geoms),
            types.astype(np.int8, copy=False),
            self.has_z,
        )


def _chunks(wkb: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    chunks = list(wkb.chunks) if isinstance(wkb, pa.ChunkedArray) else [wkb]
    return [c.storage if isinstance(c, pa.ExtensionArray) else c for c in chunks]


def _binary_parts(wkb: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data, offsets, valid)`` numpy views of one binary Arrow array (a chunked array is combined)."""
    if isinstance(wkb, pa.ChunkedArray):
        wkb = wkb.combine_chunks() if wkb.num_chunks != 1 else wkb.chunk(0)
    if isinstance(wkb, pa.ExtensionArray):
        wkb = wkb.storage
    n = len(wkb)
    offset_type = np.int64 if pa.types.is_large_binary(wkb.type) else np.int32
    buffers = wkb.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[wkb.offset : wkb.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    valid = ~wkb.is_null().to_numpy(zero_copy_only=False)
    return data, offsets, valid


#: WKB of more bytes than this is decoded by the numba kernels, in pieces on threads; less by numpy (no numba
#: set-up for a process that needs no other kernel; equally fast at ~100k polygons, 5x slower at 1M), unless
#: numba is being set up anyway (an operation that runs kernels started it): the kernels are then 3-5x faster
_NUMPY_MAX_BYTES = 48 << 20
_PIECE_ROWS = 1 << 17  # geometries per piece of the threaded decoding


def _value_bytes(chunks: list[pa.Array]) -> int:
    total = 0
    for c in chunks:
        offset_type = np.int64 if pa.types.is_large_binary(c.type) else np.int32
        if len(c):
            o = np.frombuffer(c.buffers()[1], dtype=offset_type)
            total += int(o[c.offset + len(c)]) - int(o[c.offset])
    return total


def from_wkb(wkb: pa.Array | pa.ChunkedArray) -> FlatGeometry:
    """Decode a binary Arrow array (or chunked array) of WKB points or (multi)polygons into a
    :class:`FlatGeometry`.

    Raises
    ------
    ValueError
        For other geometry types, a mix of points and polygons, or a truncated value.
    """
    chunks = _chunks(wkb)
    if _value_bytes(chunks) <= _NUMPY_MAX_BYTES and not numba_warming():
        data, offsets, valid = _binary_parts(pa.chunked_array(chunks) if len(chunks) != 1 else chunks[0])
        flat = _decode_numpy(data, offsets, valid)  # the common 2D little-endian case, without numba
        if flat is not None:
            return flat
    return _decode_pieces(chunks)


def decode_polygons(wkb: pa.Array) -> FlatGeometry | None:
    """2D (multi)polygons of one binary Arrow array of WKB by the numba kernels, or ``None`` when the values hold
    anything else (points, z coordinates, other types, a corrupt value): a reader then keeps the WKB."""
    try:
        flat = _decode_pieces([wkb])
    except ValueError:
        return None
    if flat.is_points or flat.has_z:
        return None
    return flat


def _decode_pieces(chunks: list[pa.Array]) -> FlatGeometry:
    """The numba kernels over pieces of at most ``_PIECE_ROWS`` geometries: counted, then filled into one set of
    arrays, on up to two threads (the kernels release the GIL); no chunk is combined or copied."""
    pieces = []
    for chunk in chunks:
        data, offsets, valid = _binary_parts(chunk)
        n = len(valid)
        for a in range(0, n, _PIECE_ROWS):
            b = min(a + _PIECE_ROWS, n)
            pieces.append((data, offsets[a : b + 1], valid[a:b]))
    if not pieces:
        pieces.append((np.zeros(0, np.uint8), np.zeros(1, np.int64), np.zeros(0, np.bool_)))

    def run(fn, items):
        if len(items) < 2:
            return [fn(item) for item in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(fn, items))

    counted = run(lambda piece: _wkb_count(*piece), pieces)
    for status, *_ in counted:
        if status == _CORRUPT:
            raise ValueError("WKB value truncated or corrupt: its counts run past its end")
        if status == _UNSUPPORTED:
            raise ValueError("flat coordinates need all Points or all Polygon/MultiPolygon geometries")
    points = any(c[6] for c in counted)
    if points and any(c[7] for c in counted):
        raise ValueError("flat coordinates need all Points or all Polygon/MultiPolygon geometries")
    type_ids = np.concatenate([c[1] for c in counted])
    has_z = any(c[5] for c in counted)
    n = len(type_ids)
    sizes = [len(piece[2]) for piece in pieces]
    g0 = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    if points:
        coords = np.full((n, 2), np.nan)
        run(lambda k: _wkb_fill_points(*pieces[k], coords, g0[k]), range(len(pieces)))
        none = np.zeros(1, dtype=np.int64)
        return FlatGeometry(POINT, coords, none, none, np.arange(n + 1, dtype=np.int64), type_ids, has_z)
    c0 = np.r_[0, np.cumsum([c[2] for c in counted])].astype(np.int64)
    q0 = np.r_[0, np.cumsum([c[3] for c in counted])].astype(np.int64)
    p0 = np.r_[0, np.cumsum([c[4] for c in counted])].astype(np.int64)
    coords = np.empty((int(c0[-1]), 2))
    ring_offsets = np.empty(int(q0[-1]) + 1, dtype=np.int64)
    part_offsets = np.empty(int(p0[-1]) + 1, dtype=np.int64)
    geom_offsets = np.empty(n + 1, dtype=np.int64)
    ring_offsets[q0[:-1]] = c0[:-1]
    part_offsets[p0[:-1]] = q0[:-1]
    geom_offsets[g0[:-1]] = p0[:-1]
    ring_offsets[-1], part_offsets[-1], geom_offsets[-1] = c0[-1], q0[-1], p0[-1]

    def fill(k: int) -> None:
        _wkb_fill_polygons(
            *pieces[k], coords, ring_offsets, part_offsets, geom_offsets, c0[k], q0[k], p0[k], g0[k]
        )

    run(fill, range(len(pieces)))
    return FlatGeometry(MULTIPOLYGON, coords, ring_offsets, part_offsets, geom_offsets, type_ids, has_z)


def from_shapely(geoms: np.ndarray) -> FlatGeometry:
    """The :class:`FlatGeometry` of shapely Points or (Multi)Polygons (via ``shapely.to_ragged_array``)."""
    geoms = np.asarray(geoms, dtype=object)
    type_ids = shapely.get_type_id(geoms).astype(np.int8)
    has_z = bool(shapely.has_z(geoms).any())
    present = type_ids[type_ids >= 0]
    n = len(geoms)
    if len(present) and (present == POINT).all():
        coords = np.asarray(
            shapely.to_ragged_array(geoms, include_z=False)[1], dtype=np.float64
        )  # NaN: empty
        none = np.zeros(1, dtype=np.int64)
        return FlatGeometry(POINT, coords, none, none, np.arange(n + 1, dtype=np.int64), type_ids, has_z)
    if not np.isin(present, (POLYGON, MULTIPOLYGON)).all():
        raise ValueError("flat coordinates need all Points or all Polygon/MultiPolygon geometries")
    kind, coords, offsets = shapely.to_ragged_array(geoms, include_z=False)
    offsets = tuple(np.asarray(o, dtype=np.int64) for o in offsets)
    if kind == shapely.GeometryType.MULTIPOLYGON:
        ring_o, part_o, geom_o = offsets
    else:  # polygons: one part per polygon (empty ones too), none for missing geometries
        ring_o, rings_of_geom = offsets
        present_mask = type_ids >= 0
        part_o = np.append(rings_of_geom[:-1][present_mask], rings_of_geom[-1]).astype(np.int64)
        geom_o = np.concatenate([[0], np.cumsum(present_mask)]).astype(np.int64)
    return FlatGeometry(
        MULTIPOLYGON, np.ascontiguousarray(coords, dtype=np.float64), ring_o, part_o, geom_o, type_ids, has_z
    )


# ------------------------------------------------------------------------------------------------- box joins
@numba.njit(cache=True, nogil=True)
def _box_pairs(qb, tb, x0, y0, inv_h, nx, ny):  # pragma: no cover - compiled
    """Pairs ``(i, j)`` of query box ``qb[i]`` and tree box ``tb[j]`` that meet (closed boxes), through a grid
    of ``nx x ny`` cells of side ``1 / inv_h`` holding the tree boxes (CSR); NaN boxes meet nothing."""
    n_t = tb.shape[0]
    n_q = qb.shape[0]
    count = np.zeros(nx * ny + 1, dtype=np.int64)
    for pass_ in range(2):
        if pass_ == 1:
            for k in range(nx * ny):
                count[k + 1] += count[k]
            cells = np.empty(count[nx * ny], dtype=np.int64)
            pos = count[:-1].copy()
        for j in range(n_t):
            if not (tb[j, 0] <= tb[j, 2] and tb[j, 1] <= tb[j, 3]):
                continue
            c0 = min(max(int((tb[j, 0] - x0) * inv_h), 0), nx - 1)
            c1 = min(max(int((tb[j, 2] - x0) * inv_h), 0), nx - 1)
            r0 = min(max(int((tb[j, 1] - y0) * inv_h), 0), ny - 1)
            r1 = min(max(int((tb[j, 3] - y0) * inv_h), 0), ny - 1)
            for r in range(r0, r1 + 1):
                for c in range(c0, c1 + 1):
                    if pass_ == 0:
                        count[r * nx + c + 1] += 1
                    else:
                        cells[pos[r * nx + c]] = j
                        pos[r * nx + c] += 1
    seen = np.full(n_t, -1, dtype=np.int64)
    out_q = np.empty(max(16, n_q), dtype=np.int64)
    out_t = np.empty(max(16, n_q), dtype=np.int64)
    m = 0
    for i in range(n_q):
        ax0 = qb[i, 0]
        ay0 = qb[i, 1]
        ax1 = qb[i, 2]
        ay1 = qb[i, 3]
        if not (ax0 <= ax1 and ay0 <= ay1):
            continue
        c0 = min(max(int((ax0 - x0) * inv_h), 0), nx - 1)
        c1 = min(max(int((ax1 - x0) * inv_h), 0), nx - 1)
        r0 = min(max(int((ay0 - y0) * inv_h), 0), ny - 1)
        r1 = min(max(int((ay1 - y0) * inv_h), 0), ny - 1)
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                k = r * nx + c
                for e in range(count[k], count[k + 1]):
                    j = cells[e]
                    if seen[j] == i:
                        continue
                    seen[j] = i
                    if tb[j, 0] <= ax1 and tb[j, 2] >= ax0 and tb[j, 1] <= ay1 and tb[j, 3] >= ay0:
                        if m == out_q.shape[0]:
                            grown_q = np.empty(2 * m, dtype=np.int64)
                            grown_t = np.empty(2 * m, dtype=np.int64)
                            grown_q[:m] = out_q
                            grown_t[:m] = out_t
                            out_q = grown_q
                            out_t = grown_t
                        out_q[m] = i
                        out_t[m] = j
                        m += 1
    return out_q[:m].copy(), out_t[:m].copy()


def box_pairs(query: np.ndarray, tree: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` whose boxes ``query[i]`` and ``tree[j]`` (``xmin, ymin, xmax, ymax``) meet, boundaries
    included (as ``shapely.STRtree.query`` of the boxes); boxes with NaN meet nothing. Ordered by ``i``.

    The tree boxes are bucketed into a uniform grid whose cells are about the median tree box size (at most about
    4 cells per tree box), so the cost is about linear in the number of boxes and pairs.
    """
    qb = np.ascontiguousarray(query, dtype=np.float64).reshape(-1, 4)
    tb = np.ascontiguousarray(tree, dtype=np.float64).reshape(-1, 4)
    ok = (tb[:, 0] <= tb[:, 2]) & (tb[:, 1] <= tb[:, 3])
    if not ok.any() or len(qb) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    good = tb[ok]
    x0, y0 = float(good[:, 0].min()), float(good[:, 1].min())
    w = max(float(good[:, 2].max()) - x0, 0.0)
    h = max(float(good[:, 3].max()) - y0, 0.0)
    size = float(np.median(np.maximum(good[:, 2] - good[:, 0], good[:, 3] - good[:, 1])))
    size = max(size, np.sqrt(max(w, 1e-300) * max(h, 1e-300) / (4.0 * len(good))), 1e-300)
    nx = min(int(w / size) + 1, 1 << 14)
    ny = min(int(h / size) + 1, 1 << 14)
    inv_h = 1.0 / max(w / nx if w > 0 else size, h / ny if h > 0 else size, size)
    return _box_pairs(qb, tb, x0, y0, inv_h, nx, ny)


# ------------------------------------------------------------------------------------------------- numpy path
_MAX_NUMPY_PARTS = 64  # multipolygons with more parts than this go to the numba kernel


def _u32_le(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    out = data[pos].astype(np.int64)
    for k in (1, 2, 3):
        out |= data[pos + k].astype(np.int64) << (8 * k)
    return out


def _f64_le(data: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data[pos[:, None] + np.arange(8)]).view("<f8").ravel()


def _decode_numpy(data: np.ndarray, offsets: np.ndarray, valid: np.ndarray) -> FlatGeometry | None:
    try:
        return _decode_numpy_le(data, offsets, valid)
    except IndexError:  # a count runs past the buffer: the kernel reports it
        return None


def _decode_numpy_le(data: np.ndarray, offsets: np.ndarray, valid: np.ndarray) -> FlatGeometry | None:
    """Vectorised numpy decoding of 2D little-endian WKB points or (multi)polygons (what geopandas and the
    reference write), or ``None`` for anything else (the numba kernel decodes it).

    The coordinates of WKB are stored in geometry, part, ring order, which is the GeoArrow order: every byte of a
    value is either a header (byte order, type, counts) or a coordinate, so masking the headers out of the data
    buffer leaves exactly the coordinate array. No numba: a process whose first kernel this would be does not pay
    numba's set-up (0.4-0.6 s) for reading coordinates or bounds.
    """
    n = len(offsets) - 1
    start = offsets[:-1]
    length = offsets[1:] - start
    ok = valid & (length > 0)
    type_ids = np.full(n, _MISSING, dtype=np.int8)
    if not ok.any():
        return None
    if (length[ok] < 5).any():
        return None  # truncated: the kernel reports it
    s = start[ok]
    if (data[s] != 1).any():
        return None  # big endian
    code = _u32_le(data, s + 1)
    if (code > 7).any():
        return None  # Z/M/SRID flags or ISO dimensions, or other types
    if (code == 1).all():
        if (length[ok] != 21).any():
            return None
        type_ids[ok] = POINT
        coords = np.full((n, 2), np.nan)
        coords[ok, 0] = _f64_le(data, s + 5)
        coords[ok, 1] = _f64_le(data, s + 13)
        none = np.zeros(1, dtype=np.int64)
        return FlatGeometry(POINT, coords, none, none, np.arange(n + 1, dtype=np.int64), type_ids, False)
    if not np.isin(code, (3, 6)).all():
        return None
    geoms = np.flatnonzero(ok)
    type_ids[geoms] = np.where(code == 3, POLYGON, MULTIPOLYGON)
    header = [s, s + 1, s + 2, s + 3, s + 4]  # byte order and type of every geometry
    # parts: (geometry, rank, position of the ring count); multipolygons walked part by part
    part_geom = [geoms[code == 3]]
    part_rank = [np.zeros(len(part_geom[0]), dtype=np.int64)]
    part_pos = [s[code == 3] + 5]
    multi = code == 6
    ring_geom, ring_part_rank, ring_rank, ring_m, ring_end = [], [], [], [], []

    def walk_rings(pos: np.ndarray, g: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Record the rings of the parts whose ring count is at ``pos``; the positions after the parts."""
        nr = _u32_le(data, pos)
        header.extend([pos, pos + 1, pos + 2, pos + 3])
        p = pos + 4
        for r in range(int(nr.max()) if len(nr) else 0):
            act = np.flatnonzero(nr > r)
            m = _u32_le(data, p[act])
            header.extend([p[act], p[act] + 1, p[act] + 2, p[act] + 3])
            ring_geom.append(g[act])
            ring_part_rank.append(rank[act])
            ring_rank.append(np.full(len(act), r, dtype=np.int64))
            ring_m.append(m)
            p[act] += 4 + 16 * m
            ring_end.append(p[act])
        return p

    walk_rings(part_pos[0], part_geom[0], part_rank[0])
    if multi.any():
        mg, ms = geoms[multi], s[multi]
        n_parts = _u32_le(data, ms + 5)
        header.extend([ms + 5, ms + 6, ms + 7, ms + 8])
        if len(n_parts) and int(n_parts.max()) > _MAX_NUMPY_PARTS:
            return None
        p = ms + 9
        for k in range(int(n_parts.max()) if len(n_parts) else 0):
            act = np.flatnonzero(n_parts > k)
            q = p[act]
            if (data[q] != 1).any() or (_u32_le(data, q + 1) != 3).any():
                return None
            header.extend([q, q + 1, q + 2, q + 3, q + 4])
            rank = np.full(len(act), k, dtype=np.int64)
            part_geom.append(mg[act])
            part_rank.append(rank)
            p[act] = walk_rings(q + 5, mg[act], rank)
    # rings and parts in geometry, part, ring order
    rg = np.concatenate(ring_geom) if ring_geom else np.zeros(0, dtype=np.int64)
    re = np.concatenate(ring_end) if ring_end else np.zeros(0, dtype=np.int64)
    if (re > offsets[rg + 1]).any():
        return None  # a count runs past its value: the kernel reports it
    rp = np.concatenate(ring_part_rank) if ring_geom else np.zeros(0, dtype=np.int64)
    rr = np.concatenate(ring_rank) if ring_geom else np.zeros(0, dtype=np.int64)
    rm = np.concatenate(ring_m) if ring_geom else np.zeros(0, dtype=np.int64)
    order = np.lexsort((rr, rp, rg))
    rg, rp, rm, re = rg[order], rp[order], rm[order], re[order]
    pg = np.concatenate(part_geom)
    pr = np.concatenate(part_rank)
    porder = np.lexsort((pr, pg))
    pg, pr = pg[porder], pr[porder]
    ring_offsets = np.zeros(len(rm) + 1, dtype=np.int64)
    np.cumsum(rm, out=ring_offsets[1:])
    # rings per part: parts are unique (geometry, rank) pairs, rings sorted the same way
    part_key = pg * (_MAX_NUMPY_PARTS + 1) + pr
    ring_key = rg * (_MAX_NUMPY_PARTS + 1) + rp
    part_offsets = np.searchsorted(ring_key, part_key, side="left")
    part_offsets = np.append(part_offsets, len(rm)).astype(np.int64)
    geom_offsets = np.searchsorted(pg, np.arange(n + 1), side="left").astype(np.int64)
    # the coordinates: every byte of the values that is not a header (the rings' byte ranges, in buffer order)
    n_coords = int(ring_offsets[-1])
    if int(length[ok].sum()) != sum(len(h) for h in header) + 16 * n_coords:
        return None  # bytes that are neither headers nor coordinates: the kernel decides
    coords = _gather_ranges(data, re - 16 * rm, re, 16 * n_coords).view("<f8").reshape(-1, 2)
    return FlatGeometry(MULTIPOLYGON, coords, ring_offsets, part_offsets, geom_offsets, type_ids, False)


def _gather_ranges(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, nbytes: int) -> np.ndarray:
    """The bytes of ``data`` in the ranges ``[starts[i], ends[i])`` (sorted, disjoint), concatenated.

    Arrow copies them: the ranges and the gaps between them are the values of a binary array over ``data``
    (no copy), whose even values (the ranges) are taken, one ``memcpy`` each. A byte mask over the buffer would
    cost more: ~1.5 ms per MB to apply, and its own fresh memory (about 2 ms per MB on the project's machine)."""
    n = len(starts)
    if nbytes == 0 or n == 0:
        return np.zeros(nbytes, dtype=np.uint8)
    bounds = np.empty(2 * n, dtype=np.int64)
    bounds[0::2] = starts
    bounds[1::2] = ends
    values = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), 2 * n - 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)]
    )
    taken = values.take(pa.array(np.arange(0, 2 * n, 2, dtype=np.int64)))
    out = np.frombuffer(taken.buffers()[2], dtype=np.uint8)[:nbytes]
    if len(out) != nbytes:
        raise ValueError(f"ranges hold {len(out)} bytes, expected {nbytes}")
    return out
