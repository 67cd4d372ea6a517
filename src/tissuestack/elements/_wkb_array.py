"""A geopandas geometry array that keeps the WKB (or the flat coordinates) it was read from and creates shapely
objects on first use.

Reading a GeoParquet shapes file used to decode every WKB value into a shapely object (0.3-0.5 s per 100k cells)
although aggregation, queries and rasterisation only need the coordinates, which come straight from the WKB
(:mod:`tissuestack.kernels._ragged`). :class:`WKBGeometryArray` is a ``geopandas.array.GeometryArray`` whose
shapely objects are created the first time anything asks for them (``gdf.geometry.x``, ``np.asarray``, a
predicate, ...): users see an ordinary GeoDataFrame. Until then the array answers from the WKB:

* its length, missing values, the geometry type ids and whether there is a z coordinate (from the WKB headers);
* ``take``, slicing and ``copy`` give new lazy arrays over the selected WKB values (Arrow slices and takes, no
  decoding), so ``gdf.iloc[rows]`` of a query result stays lazy;
* :meth:`WKBGeometryArray.wkb` exposes the Arrow binary array for the flat-coordinate decoder.

Large polygon files are read into flat coordinate arrays batch by batch instead
(:meth:`WKBGeometryArray.from_flat`, :class:`~tissuestack.kernels._ragged.FlatGeometry`): the WKB is never held
whole, and the arrays are the geometries' only copy until shapely objects are asked for
(``shapely.from_ragged_array``). :meth:`WKBGeometryArray.flat` gives them; ``take`` and slices select rows of them.

Writing into the array (``__setitem__``) decodes it first and forgets the WKB (``wkb`` is then ``None``), so
the WKB never disagrees with the geometries. Pickling gives a plain ``GeometryArray``.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from geopandas.array import GeometryArray

from tissuestack._compute import paused_gc

if TYPE_CHECKING:
    from tissuestack.kernels._ragged import FlatGeometry

__all__ = ["WKBGeometryArray", "geometry_type_ids", "wkb_header_types"]

# WKB geometry type flags (EWKB) and the ISO offsets (1000: Z, 2000: M, 3000: ZM)
_EWKB_Z = 0x80000000
_EWKB_M = 0x40000000
# WKB type code -> shapely type id (WKB has no LinearRing; 1 Point, 2 LineString, 3 Polygon, ... 7 collection;
# other codes (curves, surfaces) -> 99, which no shapes element accepts)
_SHAPELY_TYPE = np.array([99, 0, 1, 3, 4, 5, 6, 7, 99], dtype=np.int64)


def wkb_header_types(wkb: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Per value of a binary Arrow array (or chunked array) of WKB: the shapely geometry type id (``-1`` for nulls, ``0`` Point,
    ``3`` Polygon, ...) and whether it has a z coordinate, from the 5-byte headers only (vectorised)."""
    if isinstance(wkb, pa.ChunkedArray):
        if wkb.num_chunks == 1:
            return wkb_header_types(wkb.chunk(0))
        parts = [wkb_header_types(c) for c in wkb.chunks]
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if isinstance(wkb, pa.ExtensionArray):
        wkb = wkb.storage
    n = len(wkb)
    type_ids = np.full(n, -1, dtype=np.int64)
    has_z = np.zeros(n, dtype=bool)
    if n == 0:
        return type_ids, has_z
    offset_type = np.int64 if pa.types.is_large_binary(wkb.type) else np.int32
    buffers = wkb.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[wkb.offset : wkb.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    valid = ~wkb.is_null().to_numpy(zero_copy_only=False)
    valid &= offsets[1:] - offsets[:-1] >= 5
    start = offsets[:-1][valid]
    little = data[start] == 1
    raw = np.ascontiguousarray(data[start[:, None] + np.arange(1, 5)])  # the 4 type bytes of every value
    code = np.where(little, raw.view("<u4").ravel(), raw.view(">u4").ravel()).astype(np.uint32)
    iso = code & 0xFFFF
    type_ids[valid] = _SHAPELY_TYPE[np.minimum(iso % 1000, len(_SHAPELY_TYPE) - 1)]
    has_z[valid] = ((code & _EWKB_Z) != 0) | np.isin(iso // 1000, (1, 3))
    return type_ids, has_z


def _to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        return values.to_numpy()
    return values.to_numpy(zero_copy_only=False)


class WKBGeometryArray(GeometryArray):
    """A ``GeometryArray`` over WKB values, decoded into shapely objects on first use (see the module notes).

    Parameters
    ----------
    wkb
        A binary (or large binary) Arrow array or chunked array of WKB values; nulls are missing geometries.
    crs
        As for ``GeometryArray``.
    """

    def __init__(self, wkb: pa.Array | pa.ChunkedArray, crs: Any = None):
        if isinstance(wkb, pa.ChunkedArray) and wkb.num_chunks == 1:
            wkb = wkb.chunk(0)  # chunks are kept as they are: combining would copy every value once more
        if not (pa.types.is_binary(wkb.type) or pa.types.is_large_binary(wkb.type)):
            raise TypeError(f"expected a binary Arrow array of WKB values, got type {wkb.type}")
        self._wkb: pa.Array | pa.ChunkedArray | None = wkb
        self._flat: FlatGeometry | None = None
        self._decoded: np.ndarray | None = None
        self._n = len(wkb)
        self._header: tuple[np.ndarray, np.ndarray] | None = None
        self._crs = None
        self.crs = crs
        self._sindex = None

    @classmethod
    def from_flat(cls, flat: FlatGeometry, crs: Any = None) -> WKBGeometryArray:
        """An array over flat coordinate arrays (2D points or (multi)polygons; see the module notes)."""
        if flat.has_z:
            raise ValueError("flat coordinate arrays drop z: geometries with z keep their WKB")
        array = cls(pa.array([], type=pa.binary()), crs=crs)
        array._wkb = None
        array._flat = flat
        array._n = len(flat)
        return array

    # ------------------------------------------------------------------------------------------- decoding
    @property
    def _data(self) -> np.ndarray:  # type: ignore[override]
        if self._decoded is None:
            with paused_gc():  # one GC-tracked object per row
                if self._flat is not None:
                    self._decoded = self._flat.to_shapely()
                else:
                    self._decoded = shapely.from_wkb(_to_numpy(self._wkb))
        return self._decoded

    @_data.setter
    def _data(self, value: np.ndarray) -> None:  # geopandas' __setstate__ assigns it
        self._decoded = value
        self._wkb = None
        self._flat = None
        self._header = None
        self._n = len(value)

    @property
    def is_decoded(self) -> bool:
        """Whether the shapely objects exist (the array was used as geometries)."""
        return self._decoded is not None

    @property
    def wkb(self) -> pa.Array | pa.ChunkedArray | None:
        """The Arrow array (or chunked array, as read) of WKB values the geometries come from, or ``None`` once
        the array was written to."""
        return self._wkb

    @property
    def flat(self) -> FlatGeometry | None:
        """The flat coordinate arrays the geometries come from (arrays read as flat coordinates), else ``None``."""
        return self._flat

    def header_types(self) -> tuple[np.ndarray, np.ndarray]:
        """Geometry type ids and has-z flags (see :func:`geometry_type_ids`), from the WKB when not decoded."""
        if self._header is None:
            if self._flat is not None:
                self._header = (self._flat.type_ids.astype(np.int64), np.zeros(self._n, dtype=bool))
            elif self._wkb is not None:
                self._header = wkb_header_types(self._wkb)
            else:
                data = self._decoded
                self._header = (shapely.get_type_id(data), shapely.has_z(data))
        return self._header

    # ------------------------------------------------------------------------- answered without decoding
    def __len__(self) -> int:
        return self._n

    @property
    def size(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple:
        return (self._n,)

    @property
    def nbytes(self) -> int:
        if self._decoded is not None:
            return self._decoded.nbytes
        return self._flat.nbytes if self._flat is not None else self._wkb.nbytes

    def isna(self) -> np.ndarray:
        if self._decoded is None:
            if self._flat is not None:
                return self._flat.type_ids < 0
            return _to_numpy(self._wkb.is_null())
        return super().isna()

    def _lazy(self, wkb: pa.Array | pa.ChunkedArray) -> WKBGeometryArray:
        return WKBGeometryArray(wkb, crs=self._crs)

    def copy(self, *args: Any, **kwargs: Any) -> GeometryArray:
        if self._decoded is None:
            if self._flat is not None:  # never written to in place: sharing the arrays is a copy
                return WKBGeometryArray.from_flat(self._flat, crs=self._crs)
            return self._lazy(self._wkb)  # Arrow arrays are immutable: sharing them is a copy
        return super().copy(*args, **kwargs)

    def take(self, indices: Any, allow_fill: bool = False, fill_value: Any = None) -> GeometryArray:
        if self._decoded is not None or (allow_fill and not (fill_value is None or pd.isna(fill_value))):
            return super().take(indices, allow_fill=allow_fill, fill_value=fill_value)
        idx = np.asarray(indices, dtype=np.int64)
        if allow_fill:
            if (idx < -1).any():
                raise ValueError("take: indices below -1 with allow_fill=True")
            if idx.size and idx.max() >= self._n:
                raise IndexError(f"take: index out of bounds for a geometry array of length {self._n}")
            missing = idx == -1
            if self._flat is not None:
                return WKBGeometryArray.from_flat(self._flat.take(idx), crs=self._crs)
            positions = pa.array(np.where(missing, 0, idx), mask=missing)
        else:
            if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
                raise IndexError(f"take: index out of bounds for a geometry array of length {self._n}")
            idx = np.where(idx < 0, idx + self._n, idx)
            if self._flat is not None:
                return WKBGeometryArray.from_flat(self._flat.take(idx), crs=self._crs)
            positions = pa.array(idx)
        return self._lazy(self._wkb.take(positions))

    def __getitem__(self, idx: Any) -> Any:
        if self._decoded is not None:
            return super().__getitem__(idx)
        if isinstance(idx, numbers.Integral):
            i = int(idx)
            if not -self._n <= i < self._n:
                raise IndexError(f"index {i} is out of bounds for a geometry array of length {self._n}")
            if self._flat is not None:
                return self._flat.take(np.array([i % self._n])).to_shapely()[0]
            value = self._wkb[i].as_py()
            return None if value is None else shapely.from_wkb(value)
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self._n)
            if step == 1 and self._flat is None:
                return self._lazy(self._wkb.slice(start, max(stop - start, 0)))
            return self.take(np.arange(start, stop, step))
        idx = pd.api.indexers.check_array_indexer(self, idx)
        if isinstance(idx, np.ndarray) and idx.dtype == bool:
            return self.take(np.flatnonzero(idx))
        if isinstance(idx, np.ndarray) and idx.dtype.kind in "iu":
            return self.take(idx)
        return super().__getitem__(idx)

    # ------------------------------------------------------------------------------------------- writing
    def __setitem__(self, key: Any, value: Any) -> None:
        self._data  # noqa: B018 - decode first
        self._wkb = None  # the WKB (or flat arrays) no longer describe the geometries
        self._flat = None
        self._header = None
        super().__setitem__(key, value)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (GeometryArray, (self._data, self._crs))


def geometry_type_ids(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """Shapely geometry type ids (``-1`` missing) and has-z flags of a geometry array; a lazy
    :class:`WKBGeometryArray` answers from its WKB headers without creating shapely objects."""
    if isinstance(array, WKBGeometryArray):
        return array.header_types()
    data = np.asarray(array)
    return shapely.get_type_id(data), shapely.has_z(data)
