"""Layout of a points element on disk: file and column names, sizes, and the Hilbert key of the spatial sort.

The write and read sides are described in :mod:`tissuestack.store._points`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

POINTS_VERSIONS: tuple[str, ...] = ("0.1", "0.2")
#: target rows per output file (one dask partition when read back)
DEFAULT_ROWS_PER_FILE = 2_000_000
# inputs up to this many rows are sorted in memory (one compute, no spill files); larger ones stream
IN_MEMORY_ROWS = 4_000_000
# below this many rows per file or key chunk, splitting work across threads costs more than it gains
MIN_ROWS_PER_TASK = 500_000
#: rows per Parquet row group (the unit a spatial query reads)
DEFAULT_ROW_GROUP_SIZE = 65_536

DATASET = "points.parquet"
NULL_INDEX = "__null_dask_index__"  # Dask's name for an unnamed index column
FOOTER_KEY = b"tissuestack"  # our own key-value entry in each Parquet footer
KEY_BITS = 16  # quantization bits per axis of the Hilbert key
KEY_COLUMN = "__tissuestack_hilbert_key__"  # only in spill files
SAMPLE_ROWS = 500_000  # total coordinate sample used for the file boundaries
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


# ------------------------------------------------------------------------------------------------ Hilbert key


@functools.cache
def _hilbert_tables() -> tuple[np.ndarray, np.ndarray]:
    """State tables of the 2D Hilbert curve, 8 bits per axis per step.

    The curve is the classic one (``xy2d``): at each level the quadrant digit is ``(3 * rx) ^ ry`` and the
    lower bits are then complemented (when ``ry == 0 and rx == 1``) and swapped (when ``ry == 0``). Both
    operations commute, so the transform accumulated over the higher bits is one of four states
    ``swap | complement << 1``. Entry ``state << 16 | xbyte << 8 | ybyte`` gives 16 key bits and the next state.
    """
    xs, ys = (a.ravel().astype(np.uint32) for a in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    digits = np.empty((4, 65536), dtype=np.uint16)
    states = np.empty((4, 65536), dtype=np.uint8)
    for state in range(4):
        swap, complement = state & 1, state >> 1
        x, y = (xs ^ 255, ys ^ 255) if complement else (xs, ys)
        if swap:
            x, y = y, x
        d = np.zeros(65536, dtype=np.uint32)
        swaps = np.zeros(65536, dtype=np.uint32)
        flips = np.zeros(65536, dtype=np.uint32)
        for bit in range(7, -1, -1):
            rx = (x >> bit) & 1
            ry = (y >> bit) & 1
            d = (d << 2) | ((3 * rx) ^ ry)
            flip = (ry == 0) & (rx == 1)
            mask = np.uint32((1 << bit) - 1)
            x = np.where(flip, x ^ mask, x)
            y = np.where(flip, y ^ mask, y)
            turn = ry == 0
            x, y = np.where(turn, y, x), np.where(turn, x, y)
            swaps ^= turn
            flips ^= flip
        digits[state] = d
        states[state] = (swaps ^ swap) | ((flips ^ complement) << 1)
    return digits.ravel(), states.ravel()


def hilbert_key(qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Hilbert index (uint32) of integer grid coordinates ``0 <= qx, qy < 2**16``, vectorized."""
    digits, states = _hilbert_tables()
    qx = np.asarray(qx, dtype=np.uint32)
    qy = np.asarray(qy, dtype=np.uint32)
    first = ((qx >> 8) << 8) | (qy >> 8)
    high = digits[first].astype(np.uint32)
    second = (states[first].astype(np.uint32) << 16) | ((qx & 255) << 8) | (qy & 255)
    return (high << 16) | digits[second]


@dataclass(frozen=True)
class Grid:
    """Quantization of (x, y) onto the ``2**KEY_BITS`` grid with square cells."""

    x0: float
    y0: float
    scale: float

    @classmethod
    def from_bounds(cls, xmin: float, xmax: float, ymin: float, ymax: float) -> Grid:
        if not all(np.isfinite([xmin, xmax, ymin, ymax])):
            return cls(0.0, 0.0, 0.0)
        extent = max(xmax - xmin, ymax - ymin)
        scale = (2**KEY_BITS - 1) / extent if extent > 0 else 0.0
        return cls(float(xmin), float(ymin), float(scale))

    def _quantize(self, v: np.ndarray, origin: float) -> np.ndarray:
        q = (np.asarray(v, dtype=np.float64) - origin) * self.scale
        np.nan_to_num(q, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        np.clip(q, 0, 2**KEY_BITS - 1, out=q)
        return q.astype(np.uint32)

    def keys(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return hilbert_key(self._quantize(x, self.x0), self._quantize(y, self.y0))


def coords_of(part: pd.DataFrame, axis: str) -> np.ndarray:
    return part[axis].to_numpy(dtype=np.float64, na_value=np.nan)
