"""Operations on the pixels of rasters: apply a function per block, relabel labels, crop padding.

* ``map_raster(element, func, ...)``: ``func`` runs on every dask block of the full-resolution level
  (``dask.array.map_blocks``), on every block grown by ``depth`` pixels of its neighbours
  (``dask.array.map_overlap``), or once on the whole (dask) array (``blockwise=False``). The result is parsed by
  the model its dims name and keeps the input's transformations (or those given).
* Labels made block by block (a threshold + ``skimage.measure.label`` per block numbers objects from 1 in every
  block) are made unique across blocks with ``relabel=True``: a non-zero label ``l`` of block ``b`` (blocks
  numbered in C order) becomes ``l + (b << k)``, where ``k`` is the number of bits left for labels once
  ``ceil(log2(n_blocks))`` bits are kept for block numbers. One pass, no recomputation of ``func``; an object cut
  by a block border keeps one label per block (merging them needs a look at the borders, which this does not do).
  Follow with ``relabel_sequential`` for labels ``1..n``.
* ``relabel_sequential(labels)``: the distinct non-zero labels, computed once (one dask reduction), mapped to
  ``1..n`` in increasing order by ``np.searchsorted`` per block; 0 stays 0.
* ``unpad_raster(element)``: the bounding box of the pixels that differ from ``fill_value`` (one reduction per
  axis, computed together), cropped, with a translation prepended to every transformation so that each kept pixel
  stays where it was in every coordinate system.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from tissuestack.elements import get_meta, get_raster_model, raster_levels
from tissuestack.errors import ValidationError
from tissuestack.ops._pyramids import fitting_factors, pyramid_factors
from tissuestack.transforms import BaseTransformation, Translation, compose

__all__ = ["map_raster", "relabel_sequential", "unpad_raster"]

_BOUNDARIES = ("reflect", "periodic", "nearest", "none")


def _level0(element: Any, what: str) -> xr.DataArray:
    if not isinstance(element, xr.DataArray | xr.DataTree):
        raise TypeError(
            f"{what}: expected an image or labels element (DataArray or DataTree), got {type(element).__name__}"
        )
    get_raster_model(element)  # raises for dims of no raster kind
    return raster_levels(element)[0]


def _as_dask(level: xr.DataArray) -> da.Array:
    data = level.data
    return data if isinstance(data, da.Array) else da.from_array(np.asarray(data))


# ================================================================================================ map_raster
def _depth_per_axis(depth: int | Sequence[int] | Mapping[str, int], dims: tuple[str, ...]) -> dict[int, int]:
    """``depth`` as dask's axis -> overlap mapping; an int applies to the spatial axes (not ``c``)."""
    if isinstance(depth, Mapping):
        unknown = set(depth) - set(dims)
        if unknown:
            raise ValidationError(f"depth names axes {sorted(unknown)}; the raster's axes are {dims}")
        out = {i: int(depth.get(d, 0)) for i, d in enumerate(dims)}
    elif isinstance(depth, int | np.integer):
        out = {i: (0 if d == "c" else int(depth)) for i, d in enumerate(dims)}
    else:
        values = list(depth)
        if len(values) != len(dims):
            raise ValidationError(f"depth {tuple(values)} must have one entry per axis {dims}")
        out = {i: int(v) for i, v in enumerate(values)}
    if any(v < 0 for v in out.values()):
        raise ValidationError(f"depth must be >= 0 on every axis, got {depth!r}")
    return out


def _label_bits(dtype: np.dtype) -> int:
    info = np.iinfo(dtype)
    return info.bits - (1 if info.min < 0 else 0)


def _relabel_dtype(dtype: np.dtype) -> np.dtype:
    """Integer dtype with room for block numbers: narrower than 32 bits (and bool) widen to 32 bits."""
    if dtype == np.bool_:
        return np.dtype(np.int32)
    if not np.issubdtype(dtype, np.integer):
        raise ValidationError(f"relabel=True needs integer labels from func, got dtype {dtype}")
    if dtype.itemsize < 4:
        return np.dtype(np.uint32 if np.issubdtype(dtype, np.unsignedinteger) else np.int32)
    return dtype


def _offset_block(
    block: np.ndarray,
    block_id: tuple[int, ...] | None = None,
    *,
    grid: tuple[int, ...],
    shift: int,
    out_dtype: np.dtype,
) -> np.ndarray:
    """Non-zero labels of block number ``b`` (C order) offset by ``b << shift``."""
    out = np.asarray(block).astype(out_dtype, copy=False)
    if block_id is None or out.size == 0:
        return out
    top = int(out.max())
    if top >= (1 << shift):
        raise ValidationError(
            f"relabel: block {block_id} holds label {top}, but with {math.prod(grid)} blocks only labels below "
            f"{1 << shift} fit in {out_dtype}; return a wider dtype from func or use larger chunks"
        )
    number = int(np.ravel_multi_index(block_id, grid))
    if number == 0:
        return out
    return np.where(out > 0, out + out_dtype.type(number << shift), out).astype(out_dtype, copy=False)


def _relabel_blocks(arr: da.Array) -> da.Array:
    dtype = _relabel_dtype(arr.dtype)
    grid = tuple(arr.numblocks)
    n_blocks = math.prod(grid)
    block_bits = max(0, math.ceil(math.log2(n_blocks))) if n_blocks > 1 else 0
    shift = _label_bits(dtype) - block_bits
    if shift < 1:
        raise ValidationError(f"relabel: {n_blocks} blocks leave no bits for labels in {dtype}")
    return arr.map_blocks(
        _offset_block,
        grid=grid,
        shift=shift,
        out_dtype=dtype,
        dtype=dtype,
        meta=np.empty((0,) * arr.ndim, dtype),
    )


def map_raster(
    element: xr.DataArray | xr.DataTree,
    func: Callable[..., Any],
    *,
    func_kwargs: Mapping[str, Any] | None = None,
    blockwise: bool = True,
    depth: int | Sequence[int] | Mapping[str, int] | None = None,
    boundary: str | float = "reflect",
    chunks: Any = None,
    c_coords: Sequence[Any] | None = None,
    dims: Sequence[str] | None = None,
    transformations: BaseTransformation | Mapping[str, BaseTransformation] | None = None,
    relabel: bool = True,
    dtype: Any = None,
    **kwargs: Any,
) -> xr.DataArray:
    """Apply ``func`` to the pixels of a raster, block by block (lazily) or to the whole array.

    Parameters
    ----------
    element
        An image or labels element; of a multiscale raster the full-resolution level is used.
    func
        Called as ``func(block, **func_kwargs)`` with a numpy block in the raster's axis order (``(c, y, x)``,
        ``(y, x)``, ...), returning a numpy array; with ``blockwise=False`` it gets the whole dask array and may
        return a numpy or dask array.
    func_kwargs
        Keyword arguments of ``func``.
    blockwise
        ``True``: ``dask.array.map_blocks`` (``depth=None``) or ``dask.array.map_overlap``; ``False``: one call on
        the whole array (``depth``, ``chunks``, ``boundary`` and ``kwargs`` are then not used).
    depth
        Overlap, in pixels, that each block borrows from its neighbours (and that is trimmed away afterwards):
        an int for every spatial axis (``c`` gets none), a tuple with one entry per axis, or a mapping of axis
        name -> pixels.
    boundary
        What lies beyond the raster's edge for the overlap: ``"reflect"`` (default), ``"periodic"``,
        ``"nearest"``, ``"none"`` or a constant.
    chunks
        The output chunks when ``func`` changes the block shape (dask's ``chunks=`` of ``map_blocks``), e.g.
        ``((1,), (1024,) * 8, (1024,) * 8)`` for an image block reduced to one channel.
    c_coords
        Channel names of the output (images). Default: the input's when the channel count is kept, else
        ``0..n-1``.
    dims
        Axes of the output when ``func`` changes them, e.g. ``("y", "x")`` for labels made from a ``(c, y, x)``
        image. Default: the input's.
    transformations
        Transformations of the result. Default: the input's (``func`` keeps the pixel grid).
    relabel
        For labels outputs of a blockwise ``func``: make labels unique across blocks (see the module notes).
        Pass ``False`` when ``func`` keeps ids that are already unique in the whole raster (expanding, eroding
        or filtering existing labels): relabelling would give one object a different id in every block.
    dtype
        The output dtype; default: inferred by dask from a call of ``func`` on a tiny array.
    **kwargs
        Passed on to ``dask.array.map_blocks`` / ``map_overlap`` (e.g. ``drop_axis``, ``new_axis``, ``meta``).

    Returns
    -------
    A single-scale raster parsed by the model of ``dims`` (image or labels, 2D or 3D), lazy when ``func`` runs
    blockwise.

    Raises
    ------
    ValidationError
        ``dims`` that do not match the output, ``c_coords`` for labels, a ``depth`` of the wrong length or with
        unknown axes, a labels output with a non-integer dtype when ``relabel=True``; when computed, a block whose
        labels do not fit below its block offset.
    """
    level = _level0(element, "map_raster")
    in_dims = tuple(str(d) for d in level.dims)
    arr = _as_dask(level)
    fkw = dict(func_kwargs or {})
    if not blockwise:
        out = func(arr, **fkw)
    else:
        options = dict(kwargs)
        if chunks is not None:
            options["chunks"] = chunks
        if dtype is not None:
            options["dtype"] = dtype
        if depth is None:
            out = da.map_blocks(func, arr, **options, **fkw)
        else:
            if isinstance(boundary, str) and boundary not in _BOUNDARIES:
                raise ValidationError(f"boundary must be one of {_BOUNDARIES} or a number, got {boundary!r}")
            out = da.map_overlap(
                func, arr, depth=_depth_per_axis(depth, in_dims), boundary=boundary, **options, **fkw
            )
    if dtype is not None and not blockwise:
        out = out.astype(dtype)
    out_dims = tuple(dims) if dims is not None else in_dims
    if np.ndim(out) != len(out_dims):
        raise ValidationError(
            f"map_raster: func returned {np.ndim(out)} dimensions but the output dims are {out_dims}; pass dims= "
            "naming the output axes"
        )
    is_image = "c" in out_dims
    if not is_image and c_coords is not None:
        raise ValidationError("map_raster: c_coords is for images; the output dims have no 'c' axis")
    if is_image and c_coords is None:
        n_out = out.shape[out_dims.index("c")]
        if "c" in level.dims and n_out == level.sizes["c"] and "c" in level.coords:
            c_coords = list(level.coords["c"].values)
    if not is_image and relabel and blockwise:
        out = _relabel_blocks(out if isinstance(out, da.Array) else da.from_array(np.asarray(out)))
    if transformations is None:
        transformations = dict(get_meta(element).transformations)
    result = xr.DataArray(out, dims=out_dims)
    model = get_raster_model(result)
    return model.parse(result, c_coords=c_coords, transformations=transformations)


# ================================================================================================ relabel
def _sequential_block(block: np.ndarray, uniques: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    out = np.searchsorted(uniques, block) + 1
    return np.where(block == 0, 0, out).astype(out_dtype, copy=False)


def _check_nonnegative(uniques: np.ndarray, what: str) -> None:
    if len(uniques) and uniques[0] < 0:
        raise ValidationError(f"{what}: labels must be >= 0 (0 is the background), found {uniques[0]}")


def relabel_sequential(
    labels: xr.DataArray | xr.DataTree | da.Array | np.ndarray, *, return_mapping: bool = False
) -> Any:
    """Labels renumbered ``1..n`` in increasing order of the old labels; 0 (background) stays 0.

    Parameters
    ----------
    labels
        A labels element (every pyramid level is renumbered with the same map), or a numpy / dask array.
    return_mapping
        Also return the map as a ``pandas.Series``: index the old labels, values the new ones (0 left out).

    Returns
    -------
    The renumbered element (same kind, dtype, chunks and transformations; lazy) or array, and the mapping when
    asked for. The distinct labels are computed once (one pass over the data).

    Raises
    ------
    ValidationError
        Negative or non-integer labels.
    """
    if isinstance(labels, xr.DataArray | xr.DataTree):
        model = get_raster_model(labels)
        if not model.nearest_only:
            raise ValidationError("relabel_sequential takes labels; this element is an image")
        levels = [_as_dask(lvl) for lvl in raster_levels(labels)]
    elif isinstance(labels, da.Array | np.ndarray):
        model = None
        levels = [labels if isinstance(labels, da.Array) else da.from_array(labels)]
    else:
        raise TypeError(f"relabel_sequential: expected labels or an array, got {type(labels).__name__}")
    dtype = levels[0].dtype
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise ValidationError(f"relabel_sequential: labels must have an integer dtype, got {dtype}")
    (uniques,) = dask.compute(da.unique(levels[0]))
    uniques = np.asarray(uniques)
    _check_nonnegative(uniques, "relabel_sequential")
    uniques = uniques[uniques != 0]
    mapped = [
        lvl.map_blocks(
            _sequential_block,
            uniques=uniques,
            out_dtype=dtype,
            dtype=dtype,
            meta=np.empty((0,) * lvl.ndim, dtype),
        )
        for lvl in levels
    ]
    if model is None:
        out: Any = mapped[0] if isinstance(labels, da.Array) else mapped[0].compute()
    else:
        meta = get_meta(labels)
        src = raster_levels(labels)
        new_levels = [xr.DataArray(m, dims=s.dims) for m, s in zip(mapped, src, strict=True)]
        if isinstance(labels, xr.DataTree):
            tree = xr.DataTree.from_dict(
                {
                    child: xr.Dataset({var: lvl})
                    for (child, var), lvl in zip(_level_names(labels), new_levels, strict=True)
                }
            )
            out = model.parse(tree, transformations=dict(meta.transformations))
        else:
            out = model.parse(new_levels[0], transformations=dict(meta.transformations))
    if not return_mapping:
        return out
    mapping = pd.Series(
        np.arange(1, len(uniques) + 1, dtype=np.int64),
        index=pd.Index(uniques, name="old_label"),
        name="new_label",
    )
    return out, mapping


def _level_names(tree: xr.DataTree) -> list[tuple[str, str]]:
    return [(str(name), str(next(iter(child.dataset.data_vars)))) for name, child in tree.children.items()]


# ================================================================================================ unpad
def unpad_raster(element: xr.DataArray | xr.DataTree, *, fill_value: float = 0) -> xr.DataArray | xr.DataTree:
    """Crop away the borders where every pixel (of every channel) equals ``fill_value``.

    The kept box is the bounding box of the other pixels of the full-resolution level. Every transformation gets
    a translation by the cropped offset first, so that each kept pixel stays where it was in every coordinate
    system; a multiscale raster has its pyramid rebuilt from the cropped level with the same factors.

    Parameters
    ----------
    element
        An image or labels element.
    fill_value
        The padding value (default 0). NaN pads are recognised too.

    Returns
    -------
    The cropped element (lazy; the input itself when there is nothing to crop).

    Raises
    ------
    ValidationError
        Every pixel equals ``fill_value`` (nothing would be left).
    """
    level = _level0(element, "unpad_raster")
    model = get_raster_model(element)
    dims = tuple(str(d) for d in level.dims)
    spatial = [d for d in dims if d != "c"]
    data = _as_dask(level)
    keep = da.isnan(data) if isinstance(fill_value, float) and math.isnan(fill_value) else data == fill_value
    keep = ~keep
    profiles = [keep.any(axis=tuple(i for i, d in enumerate(dims) if d != axis)) for axis in spatial]
    computed = dask.compute(*profiles)
    starts, stops = {}, {}
    for axis, profile in zip(spatial, computed, strict=True):
        hits = np.flatnonzero(np.asarray(profile))
        if len(hits) == 0:
            raise ValidationError(
                f"unpad_raster: every pixel equals the fill value {fill_value!r}; nothing would be left"
            )
        starts[axis], stops[axis] = int(hits[0]), int(hits[-1]) + 1
    if all(starts[a] == 0 and stops[a] == level.sizes[a] for a in spatial):
        return element
    cropped = level.isel({a: slice(starts[a], stops[a]) for a in spatial})
    cropped = xr.DataArray(
        cropped.data, dims=dims, coords={"c": level.coords["c"].values} if "c" in level.coords else None
    )
    shift_axes = tuple(a for a in ("x", "y", "z") if a in spatial)
    shift = Translation([float(starts[a]) for a in shift_axes], shift_axes)
    meta = get_meta(element)
    transformations = {cs: compose(shift, t) for cs, t in meta.transformations.items()}
    factors = pyramid_factors(element)
    if factors:
        factors = fitting_factors(factors, {a: stops[a] - starts[a] for a in spatial})
    return model.parse(cropped, transformations=transformations, scale_factors=factors or None)
