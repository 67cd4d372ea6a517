"""Queries of rasters: crops to the pixel range covering the region, masks outside a polygon.
Semantics in :mod:`tissuestack.query._bbox`."""

from __future__ import annotations

import functools
import math
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from tissuestack.elements import get_meta, raster_levels, set_meta
from tissuestack.query._region import Region
from tissuestack.transforms import BaseTransformation, Translation, affine_map, apply_affine
from tissuestack.transforms import Sequence as SequenceTransformation

_SPATIAL = ("x", "y", "z")
_BOX_COLUMN = "__tissuestack_box__"
_WIDEN = 1e-9  # relative widening of back-transformed bounds used for pruning only
_SNAP = 1e-9  # pixel bounds this close to an integer are snapped to it before floor/ceil


# ================================================================================================ rasters
def _pixel_range(a: float, b: float, size: int) -> tuple[int, int]:
    """Covering integer pixel range ``[start, stop)`` of ``[a, b]`` (pixel ``i`` covers ``[i, i + 1)``)."""
    if math.isfinite(a) and abs(a - round(a)) <= _SNAP * max(1.0, abs(a)):
        a = float(round(a))
    if math.isfinite(b) and abs(b - round(b)) <= _SNAP * max(1.0, abs(b)):
        b = float(round(b))
    start = 0 if a == -math.inf else (size if a == math.inf else math.floor(a))
    stop = size if b == math.inf else (0 if b == -math.inf else math.ceil(b))
    if stop == start:  # a zero-width box still selects the pixel it lies in
        stop = start + 1
    return max(0, min(size, start)), max(0, min(size, stop))


def crop_raster(
    element: xr.DataArray | xr.DataTree,
    transformation: BaseTransformation,
    region: Region,
    index: int = 0,
) -> tuple[xr.DataArray | xr.DataTree | None, dict[str, tuple[int, int]] | None]:
    """Crop a raster to the pixels covering box ``index`` of the region (or the polygon's bounds).

    Returns the crop (``None`` when empty) and the level-0 ``{axis: (start, stop)}`` ranges. A raster whose
    transformation is not invertible cannot be cropped and is returned whole. For a polygon region with
    ``clip``, pixels whose centre is not covered by the polygon are set to 0 (lazily, at every level).
    """
    mask_outside = region.polygon if region.clip else None
    levels = raster_levels(element)
    lvl0 = levels[0]
    spatial = tuple(a for a in _SPATIAL if a in lvl0.dims)
    natural = transformation.output_axes(spatial)
    reg = region.restricted(natural)
    amap = affine_map(transformation, spatial, reg.axes)
    bounds = amap.intrinsic_bounds(reg.lo[index], reg.hi[index], reg.axes)
    if bounds is None:
        return element, {a: (0, lvl0.sizes[a]) for a in spatial}
    ranges = {}
    for a, lo, hi in zip(spatial, bounds[0], bounds[1], strict=True):
        start, stop = _pixel_range(float(lo), float(hi), lvl0.sizes[a])
        if start >= stop:
            return None, None
        ranges[a] = (start, stop)
    meta = get_meta(element)
    shift = Translation([float(ranges[a][0]) for a in spatial], spatial)
    new_meta = meta.copy()
    new_meta.transformations = {
        cs: SequenceTransformation([shift, t]) for cs, t in meta.transformations.items()
    }
    if isinstance(element, xr.DataArray):
        out: Any = element.isel({a: slice(*ranges[a]) for a in spatial})
        if mask_outside is not None:
            out = _mask_level(
                out,
                spatial,
                {a: ranges[a][0] for a in spatial},
                dict.fromkeys(spatial, 1.0),
                transformation,
                mask_outside,
            )
    else:
        children = {}
        for (name, child), lvl in zip(element.children.items(), levels, strict=True):
            sel = {}
            for a in spatial:
                f = lvl0.sizes[a] / lvl.sizes[a] if lvl.sizes[a] else 1.0
                s = max(0, min(lvl.sizes[a], math.floor(ranges[a][0] / f)))
                e = max(0, min(lvl.sizes[a], math.ceil(ranges[a][1] / f)))
                if e <= s and lvl.sizes[a]:
                    s, e = min(s, lvl.sizes[a] - 1), min(s, lvl.sizes[a] - 1) + 1
                sel[a] = slice(s, e)
            var = next(iter(child.dataset.data_vars))
            crop = lvl.isel(sel)
            if mask_outside is not None:
                factors = {a: lvl0.sizes[a] / lvl.sizes[a] for a in spatial}
                crop = _mask_level(
                    crop, spatial, {a: sel[a].start for a in spatial}, factors, transformation, mask_outside
                )
            children[name] = xr.Dataset({var: crop})
        out = xr.DataTree.from_dict(children)
    set_meta(out, new_meta)
    return out, ranges


def _mask_block(
    block: np.ndarray,
    block_info: dict | None = None,
    *,
    dims: tuple[str, ...],
    in_axes: tuple[str, ...],
    starts: dict[str, int],
    factors: dict[str, float],
    linear: np.ndarray,
    offset: np.ndarray,
    polygon: Any,
) -> np.ndarray:
    """Zero the pixels of one block whose centre (in target x/y) is not covered by the polygon."""
    from tissuestack.kernels._pip import points_in_polygon  # numba: imported on first use only

    if block_info is None or block.size == 0:
        return block
    location = block_info[0]["array-location"]
    spatial = [(k, d) for k, d in enumerate(dims) if d != "c"]
    names = [d for _, d in spatial]
    grids = []
    for k, d in spatial:
        a, b = location[k]
        grids.append((starts[d] + np.arange(a, b) + 0.5) * factors[d])  # pixel centres, level-0 pixel space
    mesh = np.meshgrid(*grids, indexing="ij")
    coords = np.column_stack([mesh[names.index(a)].ravel() for a in in_axes])
    t = apply_affine([coords[:, j] for j in range(coords.shape[1])], linear, offset)
    inside = points_in_polygon(polygon, t[:, 0], t[:, 1])
    inside = inside.reshape([block.shape[k] if d != "c" else 1 for k, d in enumerate(dims)])
    return np.where(inside, block, np.zeros((), dtype=block.dtype))


def _mask_level(
    level: xr.DataArray,
    spatial: tuple[str, ...],
    starts: dict[str, int],
    factors: dict[str, float],
    transformation: BaseTransformation,
    polygon: Any,
) -> xr.DataArray:
    amap = affine_map(transformation, spatial, ("x", "y"))
    fn = functools.partial(
        _mask_block,
        dims=tuple(str(d) for d in level.dims),
        in_axes=spatial,
        starts=starts,
        factors=factors,
        linear=amap.linear,
        offset=amap.offset,
        polygon=polygon,
    )
    data = level.data if isinstance(level.data, da.Array) else da.from_array(np.asarray(level.data))
    return level.copy(data=da.map_blocks(fn, data, dtype=data.dtype))


def query_raster(
    element: xr.DataArray | xr.DataTree, transformation: BaseTransformation, region: Region
) -> list[Any]:
    return [crop_raster(element, transformation, region, i)[0] for i in range(region.n)]
