"""A PyTorch dataset of image tiles centred on regions (shapes or labels), read lazily from an image pyramid.

One tile per region, centred on the region's centroid in a target coordinate system. Each tile is read from
the pyramid level whose pixels best match the output pixel size (the coarsest level whose pixels are no larger
than an output pixel), cropping only the window it needs. Axis-aligned scale + translation maps are resampled
separably (an output grid that falls on the image grid gives the image pixels exactly); rotations and general
affines are sampled bilinearly with ``scipy.ndimage.map_coordinates`` on the window. Outside the image the tile
is zero.

The dataset pickles only the store path, element names and small per-region arrays (centres, sizes,
annotations), so that ``DataLoader(num_workers>0)`` workers reopen the store lazily instead of receiving it.
torch is optional: without it tiles are numpy arrays and the class is a plain object with ``__len__`` and
``__getitem__``.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import shapely

from tissuestack._container import SpatialData, read_zarr
from tissuestack.elements import ElementKind, get_axes, get_kind_protocol, get_table_keys, raster_levels
from tissuestack.elements._shapes import shapes_type
from tissuestack.errors import ValidationError
from tissuestack.ops._centroids import get_centroids
from tissuestack.ops._extent import spatial_map
from tissuestack.ops._values import _dense

try:  # the dataset is a torch Dataset when torch is installed (imported only with tissuestack.ml)
    import torch
    from torch.utils.data import Dataset as _DatasetBase
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    _DatasetBase = object  # type: ignore[assignment,misc]

__all__ = ["ImageTilesDataset"]

_SNAP = 1e-6  # sample positions this close to a pixel centre take that pixel exactly


def _clip(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    # np.clip's Python-level dispatch costs several times the work on these 64-element arrays
    return np.minimum(np.maximum(a, lo), hi)


def _snap(p: np.ndarray) -> np.ndarray:
    r = np.round(p)
    return np.where(np.abs(p - r) < _SNAP, r, p)


def _axis_samples(p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps along one axis of ``n`` pixels at pixel-index positions ``p`` (pixel ``i`` has
    its centre at ``i``): lower/upper index, upper weight, and whether the sample lies on the image."""
    p = _snap(p)
    inside = (p >= -0.5) & (p < n - 0.5)
    q = _clip(p, 0, n - 1)
    i0 = np.floor(q).astype(np.int64)
    frac = q - i0
    # a sample on a pixel centre takes that pixel alone (its neighbour, weighted 0, would pass on a NaN)
    i1 = np.where(frac > 0, np.minimum(i0 + 1, n - 1), i0)
    return i0, i1, frac.astype(np.float32), inside


def _interp_matrix(taps: tuple[np.ndarray, np.ndarray], w1: np.ndarray, inside: np.ndarray, n: int) -> np.ndarray:
    """(samples, n) float32 matrix of linear weights: row s has ``1 - w1[s]`` at ``taps[0][s]`` and ``w1[s]`` at
    ``taps[1][s]`` (summed where they coincide), zero where the sample is not ``inside``."""
    m = np.zeros((len(w1), n), dtype=np.float32)
    rows = np.arange(len(w1))
    w1 = np.where(inside, w1, 0.0).astype(np.float32)
    m[rows, taps[0]] = np.where(inside, 1.0 - w1, 0.0)
    m[rows, taps[1]] += w1
    return m


def _compute(data: Any) -> np.ndarray:
    if hasattr(data, "compute"):
        data = data.compute(scheduler="synchronous")
    return np.asarray(data)


class _ChunkCache:
    """Decoded chunks of the pyramid levels, least recently used evicted beyond ``max_bytes``.

    A Zarr chunk is decoded whole however small the window read from it, so neighbouring tiles would decode the
    same chunks again and again; this keeps them. One cache per process (never pickled).
    """

    def __init__(self, levels: list[Any], max_bytes: int) -> None:
        self.levels = levels
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._chunks: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bounds = []
        for lvl in levels:
            chunks = getattr(lvl.data, "chunks", None)
            ny, nx = lvl.sizes["y"], lvl.sizes["x"]
            ych, xch = (chunks[-2], chunks[-1]) if chunks is not None else ((ny,), (nx,))
            self._bounds.append((np.cumsum((0, *ych)), np.cumsum((0, *xch))))

    def _chunk(self, k: int, bi: int, bj: int) -> np.ndarray:
        key = (k, bi, bj)
        block = self._chunks.get(key)
        if block is not None:
            self._chunks.move_to_end(key)
            return block
        yb, xb = self._bounds[k]
        block = _compute(self.levels[k].data[:, yb[bi] : yb[bi + 1], xb[bj] : xb[bj + 1]])
        self._chunks[key] = block
        self.nbytes += block.nbytes
        while self.nbytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self.nbytes -= old.nbytes
        return block

    def read(self, k: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The float32 window ``[:, y0:y1, x0:x1]`` of level ``k``."""
        if self.max_bytes <= 0:
            return _compute(self.levels[k].data[:, y0:y1, x0:x1]).astype(np.float32)
        yb, xb = self._bounds[k]
        out = np.empty((self.levels[k].sizes["c"], y1 - y0, x1 - x0), dtype=np.float32)
        for bi in range(int(np.searchsorted(yb, y0, "right")) - 1, int(np.searchsorted(yb, y1 - 1, "right"))):
            ya, yz = max(y0, int(yb[bi])), min(y1, int(yb[bi + 1]))
            for bj in range(int(np.searchsorted(xb, x0, "right")) - 1, int(np.searchsorted(xb, x1 - 1, "right"))):
                xa, xz = max(x0, int(xb[bj])), min(x1, int(xb[bj + 1]))
                block = self._chunk(k, bi, bj)
                out[:, ya - y0 : yz - y0, xa - x0 : xz - x0] = block[
                    :, ya - int(yb[bi]) : yz - int(yb[bi]), xa - int(xb[bj]) : xz - int(xb[bj])
                ]
        return out


class ImageTilesDataset(_DatasetBase):
    """Image tiles centred on the regions of a shapes or labels element, one tile per region.

    Parameters
    ----------
    sdata_or_store_path
        A SpatialData object or the path (or URL) of a Zarr store. With a path, pickling the dataset (as
        ``DataLoader`` workers do) carries only the path; each worker reopens the store.
    regions_element
        Name of a shapes (circles or polygons) or 2D labels element; a tile is centred on each region's
        centroid (``tissuestack.get_centroids``).
    image_element
        Name of a 2D image element (``c, y, x``), single- or multiscale.
    table_name
        The table holding ``obs_keys`` and ``genes``; default the only table annotating ``regions_element``.
    tile_size
        Tile width in units of the target coordinate system, or ``(width, height)``. A single width gives a
        height of ``width * h / w`` for ``tile_pixels = (h, w)`` (square pixels). Overrides ``tile_scale``.
    tile_scale
        Without ``tile_size``: the tile width is ``tile_scale`` times the larger side of the region's bounding
        box in the target coordinate system (circles: exact; polygons and labels: the box of their intrinsic
        bounding box once transformed, larger than the tight box under rotations).
    tile_pixels
        Output size ``(h, w)`` in pixels.
    target_coordinate_system
        The coordinate system in which tiles are laid out (both elements must reach it).
    obs_keys
        Columns of the table's ``obs`` returned with each tile.
    genes
        ``var_names`` of the table whose expression is returned with each tile (key ``"genes"``, float32, in
        this order).
    transform
        A callable applied to each tile (a float32 ``(c, h, w)`` tensor, or numpy array without torch).
    return_annotations
        Return ``(tile, annotations)``; otherwise the tile alone.
    return_dict
        Return one dict ``{"image": tile, **annotations}`` instead (overrides ``return_annotations``).
    cache_bytes
        Budget of decoded image chunks kept per process (least recently used dropped first); tiles sharing a
        chunk then decode it once. ``0`` reads every window from the store.

    Notes
    -----
    Annotations always hold ``"instance_id"`` (the region's id). Regions without a table row get NaN
    (numeric columns, genes) or None. ``len(dataset)`` is the number of regions.
    """

    def __init__(
        self,
        sdata_or_store_path: SpatialData | str | os.PathLike,
        regions_element: str,
        image_element: str,
        *,
        table_name: str | None = None,
        tile_size: float | tuple[float, float] | None = None,
        tile_scale: float = 2.0,
        tile_pixels: tuple[int, int] = (64, 64),
        target_coordinate_system: str = "global",
        obs_keys: Sequence[str] = (),
        genes: Sequence[str] = (),
        transform: Callable[[Any], Any] | None = None,
        return_annotations: bool = True,
        return_dict: bool = False,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        if isinstance(sdata_or_store_path, SpatialData):
            sdata = sdata_or_store_path
            self._path: str | None = None
        elif isinstance(sdata_or_store_path, str | os.PathLike):
            self._path = os.fspath(sdata_or_store_path)
            sdata = read_zarr(self._path)
        else:
            raise TypeError(
                f"expected a SpatialData object or a store path, got {type(sdata_or_store_path).__name__}"
            )
        h, w = (int(v) for v in tile_pixels)
        if h < 1 or w < 1:
            raise ValueError(f"tile_pixels must be two positive integers (h, w), got {tile_pixels!r}")
        self.tile_pixels = (h, w)
        self.regions_element = regions_element
        self.image_element = image_element
        self.target_coordinate_system = target_coordinate_system
        self.transform = transform
        self.return_annotations = return_annotations
        self.return_dict = return_dict
        self.cache_bytes = int(cache_bytes)
        self._cache: _ChunkCache | None = None
        cs = target_coordinate_system

        # ---- image: per-level maps from the target coordinate system to level pixel indices
        image = self._element(sdata, image_element, ("images",), "image_element")
        levels = raster_levels(image)
        if tuple(get_axes(image)) != ("c", "y", "x"):
            raise ValidationError(
                f"image element {image_element!r} has axes {tuple(get_axes(image))}; expected a 2D image "
                "('c', 'y', 'x')"
            )
        amap = spatial_map(image, sdata.get_transformation_between(image_element, cs), in_axes=("x", "y"))
        if amap.out_axes != ("x", "y"):
            raise ValidationError(
                f"image element {image_element!r} maps to axes {amap.out_axes} of {cs!r}; expected ('x', 'y')"
            )
        lin0 = np.asarray(amap.linear, dtype=np.float64)
        if abs(np.linalg.det(lin0)) < 1e-300:
            raise ValidationError(f"image element {image_element!r}: its map to {cs!r} is not invertible")
        self._offset = np.asarray(amap.offset, dtype=np.float64)
        self._aligned = bool(abs(lin0[0, 1]) + abs(lin0[1, 0]) <= 1e-12 * np.abs(lin0).max())
        nx0, ny0 = levels[0].sizes["x"], levels[0].sizes["y"]
        inv, px, shapes = [], [], []
        for lvl in levels:
            nx, ny = lvl.sizes["x"], lvl.sizes["y"]
            lin = lin0 @ np.diag([nx0 / nx, ny0 / ny])
            inv.append(np.linalg.inv(lin))
            px.append(math.sqrt(abs(np.linalg.det(lin))))
            shapes.append((ny, nx))
        self._inv = np.stack(inv)
        self._level_px = np.asarray(px)
        self._level_shapes = shapes
        self.n_channels = int(levels[0].sizes["c"])
        self._levels: list[Any] | None = levels

        # ---- regions: centres and bounding sizes in the target coordinate system
        kind = self._element_kind(sdata, regions_element, "regions_element")
        regions = sdata[regions_element]
        cent = get_centroids(regions_element, cs, sdata=sdata).compute()
        self.instance_ids = cent.index.to_numpy()
        self._centres = cent[["x", "y"]].to_numpy(dtype=np.float64)
        bbox = self._bounding_sizes(sdata, regions, kind, cent.index)
        self._sizes = self._tile_sizes(bbox, tile_size, tile_scale)

        # ---- annotations from the table rows of the regions
        self.obs_keys = list(obs_keys)
        self.genes = list(genes)
        self._obs: dict[str, np.ndarray] = {}
        self._expr: np.ndarray | None = None
        if self.obs_keys or self.genes:
            self._annotate(sdata, table_name, cent.index)

    # ------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _element(sdata: SpatialData, name: str, kinds: tuple[str, ...], role: str) -> Any:
        if name not in sdata:
            raise KeyError(f"{role} {name!r}: no element of that name; elements: {sorted(sdata.keys())}")
        kind = sdata.kind_of(name)
        if kind not in kinds:
            raise ValidationError(f"{role} {name!r} is a {kind} element; expected one of {list(kinds)}")
        return sdata[name]

    def _element_kind(self, sdata: SpatialData, name: str, role: str) -> ElementKind:
        element = self._element(sdata, name, ("shapes", "labels"), role)
        kind = get_kind_protocol(sdata.kind_of(name))
        if kind.is_raster and tuple(get_axes(element)) != ("y", "x"):  # labels
            raise ValidationError(f"{role} {name!r}: only 2D labels (y, x) are supported")
        if kind.in_memory and shapes_type(element) not in ("circles", "polygons"):  # shapes
            raise ValidationError(
                f"{role} {name!r} holds {shapes_type(element)}; expected circles or polygons"
            )
        return kind

    def _bounding_sizes(
        self, sdata: SpatialData, regions: Any, kind: ElementKind, ids: pd.Index
    ) -> np.ndarray:
        """(n, 2) width/height of each region's bounding box in the target coordinate system."""
        t = sdata.get_transformation_between(self.regions_element, self.target_coordinate_system)
        m = spatial_map(regions, t, in_axes=("x", "y"))
        lin = np.asarray(m.linear, dtype=np.float64)[:2, :2]
        if kind.in_memory and shapes_type(regions) == "circles":  # shapes: circles
            r = regions["radius"].to_numpy(dtype=np.float64)
            return 2.0 * r[:, None] * np.linalg.norm(lin, axis=1)[None, :]
        if kind.in_memory:  # shapes: polygons
            b = shapely.bounds(np.asarray(regions.geometry.array))  # minx, miny, maxx, maxy
            lo, hi = b[:, :2], b[:, 2:]
        else:
            level = raster_levels(regions)[0]
            data = level.data
            labels = np.asarray(data.compute(scheduler="synchronous") if hasattr(data, "compute") else data)
            ids_int = np.asarray(ids, dtype=np.int64)
            objects = ndi.find_objects(labels, max_label=int(ids_int.max()) if len(ids_int) else 0)
            lo = np.array([[objects[i - 1][1].start, objects[i - 1][0].start] for i in ids_int], dtype=float)
            hi = np.array([[objects[i - 1][1].stop, objects[i - 1][0].stop] for i in ids_int], dtype=float)
            lo, hi = lo.reshape(-1, 2), hi.reshape(-1, 2)
        # the transformed box spans |lin| @ (hi - lo) on each axis
        return (np.abs(lin) @ (hi - lo).T).T

    def _tile_sizes(
        self, bbox: np.ndarray, tile_size: float | tuple[float, float] | None, tile_scale: float
    ) -> np.ndarray:
        h, w = self.tile_pixels
        n = len(bbox)
        if tile_size is not None:
            size = np.atleast_1d(np.asarray(tile_size, dtype=np.float64))
            if size.shape not in ((1,), (2,)) or not np.all(np.isfinite(size)) or np.any(size <= 0):
                raise ValueError(f"tile_size must be a positive number or (width, height), got {tile_size!r}")
            width = np.full(n, size[0])
            height = np.full(n, size[1]) if size.shape == (2,) else width * h / w
        else:
            if not (np.isfinite(tile_scale) and tile_scale > 0):
                raise ValueError(f"tile_scale must be a positive number, got {tile_scale!r}")
            width = tile_scale * bbox.max(axis=1) if n else np.zeros(0)
            height = width * h / w
        return np.column_stack([width, height])

    def _annotate(self, sdata: SpatialData, table_name: str | None, ids: pd.Index) -> None:
        if table_name is None:
            tables = sdata.get_annotating_tables(self.regions_element)
            if len(tables) != 1:
                raise ValidationError(
                    f"regions_element {self.regions_element!r} is annotated by {len(tables)} tables "
                    f"{tables}; pass table_name to choose the one holding obs_keys/genes"
                )
            table_name = tables[0]
        table = self._element(sdata, table_name, ("tables",), "table_name")
        region, region_key, instance_key = get_table_keys(table)
        if region is None or self.regions_element not in region:
            raise ValidationError(f"table {table_name!r} does not annotate {self.regions_element!r}")
        rows = np.flatnonzero((table.obs[region_key] == self.regions_element).to_numpy())
        keys = pd.Index(table.obs[instance_key].to_numpy()[rows])
        if keys.has_duplicates:
            raise ValidationError(
                f"table {table_name!r}: instance ids in column {instance_key!r} repeat for region "
                f"{self.regions_element!r}"
            )
        if keys.dtype != ids.dtype:  # ids stored as strings in the table (as other tools write them)
            keys, ids = keys.astype(str), ids.astype(str)
        pos = keys.get_indexer(ids)
        found = pos >= 0
        table_rows = rows[np.where(found, pos, 0)] if len(rows) else np.zeros(len(ids), dtype=np.int64)
        for key in self.obs_keys:
            if key not in table.obs.columns:
                raise ValidationError(
                    f"table {table_name!r} has no obs column {key!r}; columns: {list(table.obs.columns)}"
                )
            values = table.obs[key].to_numpy()[table_rows] if len(rows) else np.full(len(ids), None)
            values = np.asarray(values)
            if np.issubdtype(values.dtype, np.number):
                values = np.asarray(values, dtype=np.float64 if not found.all() else None)
                if not found.all():
                    values[~found] = np.nan
            else:
                values = np.asarray(values, dtype=object)
                values[~found] = None
            self._obs[key] = values
        if self.genes:
            missing = [g for g in self.genes if g not in table.var_names]
            if missing:
                raise ValidationError(f"table {table_name!r} has no var_names {missing}")
            cols = table.var_names.get_indexer(self.genes)
            expr = np.full((len(ids), len(cols)), np.nan, dtype=np.float32)
            if found.any():
                expr[found] = _dense(table.X[table_rows[found]][:, cols]).astype(np.float32)
            self._expr = expr

    # --------------------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # decoded chunks stay in the process that read them
        if self._path is not None:
            state["_levels"] = None  # the worker reopens the store lazily
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _get_cache(self) -> _ChunkCache:
        if self._cache is None:
            if self._levels is None:
                assert self._path is not None
                sdata = read_zarr(self._path, selection=[self.image_element])
                self._levels = raster_levels(sdata[self.image_element])
            self._cache = _ChunkCache(self._levels, self.cache_bytes)
        return self._cache

    # ------------------------------------------------------------------------------------------ tiles
    def __len__(self) -> int:
        return len(self._centres)

    def tile(self, index: int) -> np.ndarray:
        """The float32 ``(c, h, w)`` numpy tile of region ``index`` (before ``transform``)."""
        h, w = self.tile_pixels
        cx, cy = self._centres[index]
        sw, sh = self._sizes[index]
        out_px = math.sqrt((sw / w) * (sh / h))
        k = int(np.flatnonzero(self._level_px <= out_px * 1.0001).max(initial=0))
        cache = self._get_cache()
        ny, nx = self._level_shapes[k]
        inv = self._inv[k]
        xs = cx - sw / 2 + (np.arange(w) + 0.5) * (sw / w) - self._offset[0]
        ys = cy - sh / 2 + (np.arange(h) + 0.5) * (sh / h) - self._offset[1]
        out = np.zeros((self.n_channels, h, w), dtype=np.float32)
        if self._aligned:
            px = inv[0, 0] * xs - 0.5  # pixel-index positions (pixel i is centred on i + 0.5)
            py = inv[1, 1] * ys - 0.5
            ix0, ix1, wx, inx = _axis_samples(px, nx)
            iy0, iy1, wy, iny = _axis_samples(py, ny)
            if not (inx.any() and iny.any()):
                return out
            x0, x1 = int(ix0[inx].min()), int(ix1[inx].max()) + 1
            y0, y1 = int(iy0[iny].min()), int(iy1[iny].max()) + 1
            win = cache.read(k, y0, y1, x0, x1)
            cols = _clip(ix0 - x0, 0, x1 - x0 - 1), _clip(ix1 - x0, 0, x1 - x0 - 1)
            rows = _clip(iy0 - y0, 0, y1 - y0 - 1), _clip(iy1 - y0, 0, y1 - y0 - 1)
            if np.isfinite(win).all():
                # separable resampling as two small matrix products: tile = Wy @ win @ Wx.T, each row of Wy / Wx
                # holding a sample's two linear weights (zero for samples off the image)
                return _interp_matrix(rows, wy, iny, y1 - y0) @ win @ _interp_matrix(cols, wx, inx, x1 - x0).T
            # NaN or inf in the window: take the two taps directly, so that they do not spread along a row
            a = win[:, rows[0], :] * (1 - wy)[None, :, None] + win[:, rows[1], :] * wy[None, :, None]
            b = a[:, :, cols[0]] * (1 - wx)[None, None, :] + a[:, :, cols[1]] * wx[None, None, :]
            out[:] = b * (iny[:, None] & inx[None, :])[None]
            return out
        gx, gy = np.meshgrid(xs, ys)
        px = _snap(inv[0, 0] * gx + inv[0, 1] * gy - 0.5)
        py = _snap(inv[1, 0] * gx + inv[1, 1] * gy - 0.5)
        inside = (px >= -0.5) & (px < nx - 0.5) & (py >= -0.5) & (py < ny - 0.5)
        if not inside.any():
            return out
        qx, qy = np.clip(px, 0, nx - 1), np.clip(py, 0, ny - 1)
        x0, x1 = int(np.floor(qx[inside].min())), min(nx, int(np.floor(qx[inside].max())) + 2)
        y0, y1 = int(np.floor(qy[inside].min())), min(ny, int(np.floor(qy[inside].max())) + 2)
        win = cache.read(k, y0, y1, x0, x1)
        coords = np.stack([qy - y0, qx - x0])
        for c in range(self.n_channels):
            out[c] = ndi.map_coordinates(win[c], coords, order=1, mode="nearest")
        out *= inside[None]
        return out

    def annotations(self, index: int) -> dict[str, Any]:
        """The annotations of region ``index``: ``instance_id``, each obs key and ``genes``."""
        ann: dict[str, Any] = {"instance_id": self.instance_ids[index]}
        for key, values in self._obs.items():
            ann[key] = values[index]
        if self._expr is not None:
            expr = self._expr[index]
            ann["genes"] = torch.from_numpy(expr.copy()) if torch is not None else expr.copy()
        return ann

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} tiles")
        index = int(index) % n
        tile: Any = self.tile(index)
        if torch is not None:
            tile = torch.from_numpy(tile)
        if self.transform is not None:
            tile = self.transform(tile)
        if self.return_dict:
            return {"image": tile, **self.annotations(index)}
        if self.return_annotations:
            return tile, self.annotations(index)
        return tile

    def __repr__(self) -> str:
        h, w = self.tile_pixels
        return (
            f"ImageTilesDataset({len(self)} tiles of {self.n_channels}x{h}x{w} from image "
            f"{self.image_element!r} centred on {self.regions_element!r} in {self.target_coordinate_system!r})"
        )
