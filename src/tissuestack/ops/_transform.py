"""Transform elements into a coordinate system: new data whose intrinsic coordinates are that system's.

Semantics
---------
Let ``T`` be the transformation of the element to the target coordinate system ``cs`` and ``R`` the map from
the new element's intrinsic coordinates to ``cs``:

* points and shapes: ``R = Identity()``; coordinates are transformed.
* rasters under an axis-aligned scale/translation (diagonal linear part): the data is shared unchanged and only
  the metadata changes: ``R`` is that scale/translation (pixels cannot be resampled losslessly anyway).
* other rasters (rotation, shear, anisotropic scale combined with either, any invertible affine): resampled onto
  a new grid covering the exact extent of the transformed raster, with isotropic pixels of size ``|det A|^(1/d)``
  (the transformed pixel's area/volume) and ``R = Scale(s) then Translation(origin)``.
  ``scipy.ndimage.affine_transform`` runs per output chunk on the input region it needs (lazy, dask), with the
  spline ``order`` asked for: default 1 (linear) for images, 0 (nearest) for labels (the only order for labels:
  interpolated ids would be ids of no object); outside is 0. Orders 2-5 prefilter the input window with a margin
  wide enough (``6 * order`` pixels) for the spline coefficients to match those of the whole array. A multiscale
  raster is resampled from its full-resolution level and its pyramid rebuilt with the same factors.

Transformations of the result:

* ``maintain_positioning=False``: ``{cs: R}`` only.
* ``maintain_positioning=True``: the element stays where it was everywhere: ``{cs: R}`` plus, for every other
  coordinate system ``c`` of the original element, ``R`` then ``T⁻¹`` then ``T_c`` (for points and shapes
  ``Sequence([T.inverse(), T_c])``). ``T`` must be invertible. A raster whose data is unchanged (the
  scale/translation case) simply keeps its other transformations.

Circles: centres are transformed and radii multiplied by ``sqrt(|det A|)`` of the 2x2 linear part on x, y (the
disk keeps its area); a ``UserWarning`` is raised when the map is not a similarity (the exact image of a disk
is then an ellipse, which a circle cannot represent).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from scipy import ndimage

from tissuestack._compute import paused_gc
from tissuestack._container import SpatialData
from tissuestack.elements import (
    SPATIAL_KINDS,
    ElementMeta,
    PointsModel,
    get_kind_protocol,
    get_meta,
    get_raster_model,
    kind_of,
    raster_levels,
    set_meta,
)
from tissuestack.elements._shapes import RADIUS_COLUMN, shapes_type
from tissuestack.errors import TransformationError
from tissuestack.ops._extent import spatial_map
from tissuestack.ops._pyramids import fitting_factors as _fitting_factors
from tissuestack.ops._pyramids import pyramid_factors
from tissuestack.ops._resolve import elements_in, resolve_element
from tissuestack.transforms import AffineMap, BaseTransformation, Scale, Translation, compose

__all__ = ["transform"]

_DEFAULT_CHUNK = 1024
# geometries per vectorized call: the coordinate arrays (~5 MB for 20-vertex polygons) stay below malloc's mmap
# threshold and are reused from chunk to chunk instead of being mapped (and page-faulted) afresh
_GEOMETRY_CHUNK = 16_384
# shapely.set_coordinates re-counts the coordinates to check the array shape (~10% of the time on 1M polygons);
# ours come from get_coordinates of the same geometries, so call the checked-free core when it exists
_set_coordinates = getattr(shapely.lib, "set_coordinates", shapely.set_coordinates)


# ================================================================================================ metadata
def _new_transformations(
    element: Any,
    t: BaseTransformation,
    cs: str,
    to_target: BaseTransformation,
    maintain_positioning: bool,
) -> dict[str, BaseTransformation]:
    """Transformations of the result whose intrinsic -> ``cs`` map is ``to_target`` (``R``)."""
    out: dict[str, BaseTransformation] = {cs: to_target}
    if not maintain_positioning:
        return out
    try:
        back = t.inverse()
    except TransformationError as err:
        raise TransformationError(
            f"maintain_positioning=True needs an invertible transformation to {cs!r}: {err}"
        ) from None
    for other, t_other in get_meta(element).transformations.items():
        if other != cs:
            out[other] = compose(to_target, back, t_other)
    return out


# ================================================================================================ points
def _transform_points(ddf: dd.DataFrame, m: AffineMap, transformations: dict) -> dd.DataFrame:
    in_cols = list(m.in_axes)
    out_cols = list(m.out_axes)

    def apply(df: pd.DataFrame) -> pd.DataFrame:
        coords = m.apply(df[in_cols].to_numpy(dtype=np.float64))
        new = df.drop(columns=[c for c in in_cols if c not in out_cols])
        for j, axis in enumerate(out_cols):
            new[axis] = coords[:, j]
        return new

    meta = apply(ddf._meta)
    new = ddf.map_partitions(apply, meta=meta)
    old = get_meta(ddf)
    result = PointsModel.parse(
        new, transformations=transformations, feature_key=old.feature_key, instance_key=old.instance_key
    )
    new_meta = get_meta(result)
    new_meta.n_rows = old.n_rows  # same rows
    new_meta.source = old.source  # still reads those files
    return result


# ================================================================================================ shapes
def _simple_polygons(geoms: np.ndarray) -> bool:
    """Whether every geometry is a non-empty polygon without holes."""
    return bool(
        (shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON).all()
        and not shapely.get_num_interior_rings(geoms).any()
        and not shapely.is_empty(geoms).any()
    )


def _transform_shapes(gdf: gpd.GeoDataFrame, m: AffineMap, transformations: dict) -> gpd.GeoDataFrame:
    if m.out_axes != m.in_axes:
        raise TransformationError(
            f"cannot transform shapes with axes {m.in_axes} into a coordinate system with axes {m.out_axes}; "
            "shapes keep their axes"
        )
    geoms = np.asarray(gdf.geometry.array)
    new_geoms = geoms.copy()
    include_z = "z" in m.in_axes
    with paused_gc():
        for start in range(0, len(geoms), _GEOMETRY_CHUNK):  # one vectorized call per chunk
            part = new_geoms[start : start + _GEOMETRY_CHUNK]  # a view, filled in place
            coords = m.apply(shapely.get_coordinates(part, include_z=include_z))
            if not include_z and _simple_polygons(part):
                # built from the ring offsets (~15% faster than set_coordinates' per-geometry rebuild)
                offsets = np.zeros(len(part) + 1, dtype=np.int64)
                np.cumsum(shapely.get_num_coordinates(part), out=offsets[1:])
                part[:] = shapely.from_ragged_array(
                    shapely.GeometryType.POLYGON, coords, (offsets, np.arange(len(part) + 1))
                )
            else:
                _set_coordinates(part, coords)
    out = gdf.copy(deep=False)
    out = out.set_geometry(gpd.GeoSeries(new_geoms, index=gdf.index, crs=None), crs=None)
    if RADIUS_COLUMN in out.columns and shapes_type(gdf) == "circles":
        lin = m.linear[:2, :2]
        det = abs(float(np.linalg.det(lin)))
        if det == 0.0:
            raise TransformationError("cannot transform circles with a singular map: radii would be 0")
        singular_values = np.linalg.svd(lin, compute_uv=False)
        if not np.isclose(singular_values[0], singular_values[-1], rtol=1e-6, atol=0.0):
            warnings.warn(
                "the transformation scales x and y differently (or shears): circles stay circles with radius "
                "scaled by sqrt(|det|) (the area is kept), they do not become ellipses",
                UserWarning,
                stacklevel=3,
            )
        out[RADIUS_COLUMN] = gdf[RADIUS_COLUMN].to_numpy(dtype=np.float64) * math.sqrt(det)
    # valid by construction (same rows, index and geometry types): attach the metadata without re-validating
    set_meta(out, ElementMeta(transformations, source=None))
    return out


# ================================================================================================ rasters
def _axis_aligned_scale_translation(a: np.ndarray) -> bool:
    off = a - np.diag(np.diag(a))
    return bool(np.all(off == 0.0) and np.all(np.diag(a) != 0.0))


def _resample_block(
    block: np.ndarray, matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], order: int, has_c: bool
) -> np.ndarray:
    """Resample one input window (its channels one by one) onto one output chunk."""
    data = np.asarray(block)
    dtype = data.dtype
    work = data.astype(np.uint8) if dtype == np.bool_ else data
    channels = work if has_c else work[None]
    # nearest and float32/64 write straight into the result (scipy interpolates in float64 whatever the
    # output); other dtypes are interpolated into float64, then rounded and clipped
    direct = order == 0 or work.dtype in (np.float32, np.float64)
    out = np.empty((len(channels), *shape), dtype=work.dtype if direct else np.float64)
    for i, channel in enumerate(channels):
        ndimage.affine_transform(
            channel,
            matrix,
            offset=offset,
            output_shape=shape,
            output=out[i],
            order=order,
            mode="constant",
            cval=0,
            prefilter=order > 1,
        )
    if not direct and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    result = out.astype(dtype, copy=False)
    return result if has_c else result[0]


def _resample(
    level: xr.DataArray, m: AffineMap, dims: tuple[str, ...], order: int
) -> tuple[da.Array, BaseTransformation]:
    """Resample ``level`` onto a grid of the target system; returns the data and ``R`` (new grid -> target)."""
    has_c = "c" in level.dims
    d = len(dims)
    perm = [m.in_axes.index(a) for a in dims]
    lin = m.linear[np.ix_(perm, perm)]  # array-axis order
    off = m.offset[perm]
    det = abs(float(np.linalg.det(lin)))
    if det == 0.0:
        raise TransformationError("cannot resample a raster with a singular transformation")
    spacing = det ** (1.0 / d)
    sizes = np.array([level.sizes[a] for a in dims], dtype=np.float64)
    corners = np.array(np.meshgrid(*[[0.0, s] for s in sizes], indexing="ij")).reshape(d, -1).T
    mapped = corners @ lin.T + off
    lo, hi = mapped.min(axis=0), mapped.max(axis=0)
    out_shape = tuple(max(1, math.ceil((h - lo_) / spacing - 1e-9)) for lo_, h in zip(lo, hi, strict=True))
    inv = np.linalg.inv(lin)
    matrix = inv * spacing
    offset = inv @ (lo + 0.5 * spacing - off) - 0.5
    # input pixels read around the pre-image of an output chunk: the interpolation support, plus for orders > 1
    # the span over which the spline prefilter's recursion (|pole| <= 0.43) still reaches 1e-7
    margin = 1 if order <= 1 else 6 * order

    data = level.data if isinstance(level.data, da.Array) else da.from_array(np.asarray(level.data))
    spatial_chunks = data.chunks[1:] if has_c else data.chunks
    target = tuple(max(c[0], 1) if len(c) else _DEFAULT_CHUNK for c in spatial_chunks)
    out_chunks = da.core.normalize_chunks(target, out_shape)
    in_sizes = np.array(sizes, dtype=int)
    grid = [len(c) for c in out_chunks]
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in out_chunks]
    n_c = level.sizes["c"] if has_c else 0
    blocks = np.empty(grid, dtype=object)
    for idx in np.ndindex(*grid):
        o0 = np.array([starts[a][i] for a, i in enumerate(idx)], dtype=np.float64)
        shape = tuple(int(out_chunks[a][i]) for a, i in enumerate(idx))
        full_shape = (n_c, *shape) if has_c else shape
        box = np.array(np.meshgrid(*[[o, o + s - 1] for o, s in zip(o0, shape, strict=True)], indexing="ij"))
        pre = box.reshape(d, -1).T @ matrix.T + offset
        far_lo, far_hi = np.floor(pre.min(axis=0)).astype(int), np.ceil(pre.max(axis=0)).astype(int)
        if np.any(far_hi + 1 < 0) or np.any(far_lo - 1 >= in_sizes):  # the chunk sees none of the input
            blocks[idx] = da.zeros(full_shape, dtype=data.dtype, chunks=full_shape)
            continue
        i_lo = np.clip(far_lo - margin, 0, in_sizes)
        i_hi = np.clip(far_hi + margin + 1, 0, in_sizes)
        if np.any(i_hi <= i_lo):
            blocks[idx] = da.zeros(full_shape, dtype=data.dtype, chunks=full_shape)
            continue
        region = tuple(slice(int(a), int(b)) for a, b in zip(i_lo, i_hi, strict=True))
        sub = data[(slice(None), *region)] if has_c else data[region]
        local_offset = offset + matrix @ o0 - i_lo
        blocks[idx] = da.from_delayed(
            dask.delayed(_resample_block)(sub, matrix, local_offset, shape, order, has_c),
            shape=full_shape,
            dtype=data.dtype,
        )
    # da.block concatenates the innermost lists along the last axis, and so on outwards: a nesting of depth
    # len(dims) leaves a leading channel axis whole
    out = da.block(_nest([blocks[idx] for idx in np.ndindex(*grid)], grid))
    to_target = _scale_then_translate(np.full(d, spacing), lo, dims)
    return out, to_target


def _scale_then_translate(scale: np.ndarray, offset: np.ndarray, dims: tuple[str, ...]) -> BaseTransformation:
    """``Scale`` then ``Translation`` over ``dims``, leaving out trivial parts (``Identity`` if both are)."""
    parts: list[BaseTransformation] = []
    if np.any(scale != 1.0):
        parts.append(Scale(scale, dims))
    if np.any(offset != 0.0):
        parts.append(Translation(offset, dims))
    return compose(*parts)


def _nest(flat: list[Any], grid: list[int]) -> Any:
    """Nest a C-ordered flat list into lists of lists of the grid shape (for ``da.block``)."""
    if len(grid) == 1:
        return list(flat)
    step = int(np.prod(grid[1:]))
    return [_nest(flat[i * step : (i + 1) * step], grid[1:]) for i in range(grid[0])]


def _transform_raster(
    element: xr.DataArray | xr.DataTree,
    t: BaseTransformation,
    cs: str,
    maintain_positioning: bool,
    order: int | None = None,
) -> xr.DataArray | xr.DataTree:
    model = get_raster_model(element)
    order = get_kind_protocol(model.kind).resample_order(order)
    m = spatial_map(element, t)
    level = raster_levels(element)[0]
    dims = tuple(str(d) for d in level.dims if d != "c")
    if set(m.out_axes) != set(m.in_axes):
        raise TransformationError(
            f"cannot transform a raster with spatial axes {m.in_axes} into a coordinate system with axes "
            f"{m.out_axes}; rasters keep their axes"
        )
    perm = [m.in_axes.index(a) for a in dims]  # in and out axes are the same tuple (x, y[, z])
    lin = m.linear[np.ix_(perm, perm)]
    if _axis_aligned_scale_translation(lin):
        to_target = _scale_then_translate(np.diag(lin), m.offset[perm], dims)
        if isinstance(element, xr.DataTree):
            new: xr.DataArray | xr.DataTree = element.copy(deep=False)
        else:
            new = element.copy(deep=False)
        # the data (hence the intrinsic coordinates) is unchanged: every old transformation stays valid
        transformations = {cs: to_target}
        if maintain_positioning:
            transformations.update({c: tc for c, tc in get_meta(element).transformations.items() if c != cs})
        return model.parse(new, transformations=transformations)
    data, to_target = _resample(level, m, dims, order=order)
    arr = xr.DataArray(data, dims=level.dims)
    if "c" in level.coords:
        arr = arr.assign_coords(c=level.coords["c"].values)
    transformations = _new_transformations(element, t, cs, to_target, maintain_positioning)
    factors = pyramid_factors(element)
    if factors:  # rebuild the pyramid, stopping before a level would shrink an axis to nothing
        factors = _fitting_factors(factors, dict(zip(dims, data.shape[-len(dims) :], strict=True)))
    return model.parse(arr, transformations=transformations, scale_factors=factors or None)


# ================================================================================================ public
def _transform_element(
    element: Any, t: BaseTransformation, cs: str, maintain_positioning: bool, order: int | None = None
) -> Any:
    return kind_of(element).transform(element, t, cs, maintain_positioning, order)


def transform(
    element: Any,
    to_coordinate_system: str,
    *,
    maintain_positioning: bool = False,
    sdata: SpatialData | None = None,
    order: int | None = None,
) -> Any:
    """A new element (or SpatialData) whose data is expressed in ``to_coordinate_system``.

    Parameters
    ----------
    element
        An image, labels, points or shapes element; an element name with ``sdata``; or a SpatialData object
        (every spatial element that reaches the coordinate system is transformed, the others are left out;
        tables are shared unchanged).
    to_coordinate_system
        The target coordinate system.
    maintain_positioning
        Keep the element where it was in every coordinate system of the original (see the module notes);
        default: the result belongs to the target coordinate system only.
    sdata
        The SpatialData the element belongs to, so that its path to the coordinate system may go through
        other elements and coordinate systems.

    Returns
    -------
    The transformed element (same kind; a new object, the input is not modified). Points stay lazy (one matrix
    product per partition); shapes are transformed with one vectorized call for all geometries; other columns
    and the index are kept.

    Raises
    ------
    TransformationError
        ``maintain_positioning=True`` with a non-invertible transformation; a raster or shapes element whose
        spatial axes would change; circles under a singular map.
    ValidationError
        ``order`` outside 0..5, or not 0 for labels.
    """
    if isinstance(element, SpatialData):
        if sdata is not None:
            raise TypeError("sdata= applies to an element; the first argument is already a SpatialData")
        parts: dict[str, dict[str, Any]] = {k: {} for k in SPATIAL_KINDS}
        for name, kind, item, t in elements_in(element, to_coordinate_system):
            # order= is for the images: labels of a SpatialData are resampled with nearest, as always
            item_order = None if get_kind_protocol(kind).nearest_only else order
            parts[kind][name] = _transform_element(
                item, t, to_coordinate_system, maintain_positioning, item_order
            )
        tables = {name: table for name, table in element.items(["tables"])}
        return SpatialData(**parts, tables=tables, attrs=element.attrs)
    obj, t = resolve_element(element, to_coordinate_system, sdata)
    return _transform_element(obj, t, to_coordinate_system, maintain_positioning, order)
