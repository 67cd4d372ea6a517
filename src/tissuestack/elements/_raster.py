"""Raster elements: images ``(c, y, x)`` / ``(c, z, y, x)`` and labels ``(y, x)`` / ``(z, y, x)``.

A single-scale raster is an ``xarray.DataArray`` backed by a dask array. A multiscale raster is an
``xarray.DataTree`` whose children ``scale0``, ``scale1``, ... each hold a Dataset with one variable ``image``;
``scale0`` is the full resolution and each level is derived lazily from the previous one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import xarray as xr

from tissuestack._compute import rechunk
from tissuestack.elements._meta import ElementMeta, get_meta, has_meta, normalize_transformations, set_meta
from tissuestack.errors import ValidationError
from tissuestack.transforms import BaseTransformation

__all__ = [
    "Image2DModel",
    "Image3DModel",
    "Labels2DModel",
    "Labels3DModel",
    "RasterModel",
    "get_raster_model",
    "raster_levels",
    "scale_level_name",
    "set_channel_names",
]

SCALE_VAR = "image"
_SPATIAL_CHUNK = 1024
_Z_CHUNK = 16


def scale_level_name(level: int) -> str:
    return f"scale{level}"


def raster_levels(element: xr.DataArray | xr.DataTree) -> list[xr.DataArray]:
    """The resolution levels of a raster, full resolution first (one level for a single-scale raster)."""
    if isinstance(element, xr.DataArray):
        return [element]
    if isinstance(element, xr.DataTree):
        levels = []
        for child in element.children.values():
            ds = child.dataset
            names = list(ds.data_vars)
            if len(names) != 1:
                raise ValidationError(
                    f"multiscale level {child.name!r} must hold exactly one data variable, found {names}"
                )
            levels.append(ds[names[0]])
        return levels
    raise TypeError(f"expected an xarray DataArray or DataTree, got {type(element).__name__}")


def set_channel_names(element: xr.DataArray | xr.DataTree, channel_names: Sequence[Any]) -> None:
    """Rename the channels of an image in place (every pyramid level)."""
    levels = raster_levels(element)
    if "c" not in levels[0].dims:
        raise ValidationError("labels have no channel axis; only images have channel names")
    names = list(channel_names)
    n = levels[0].sizes["c"]
    if len(names) != n:
        raise ValidationError(f"got {len(names)} channel names for an image with {n} channels")
    if len(set(names)) != n:
        raise ValidationError(f"channel names must be unique, got {names}")
    if isinstance(element, xr.DataArray):
        element.coords["c"] = names
        return
    for child in element.children.values():
        child.dataset = child.dataset.assign_coords(c=names)


def _label(kind: str, name: str | None) -> str:
    return f"{kind} element {name!r}" if name else kind


ScaleFactors = Sequence[int | Mapping[str, int]]


class RasterModel:
    """Shared parse/validate logic of the four raster models (see the subclasses)."""

    dims: ClassVar[tuple[str, ...]]
    kind: ClassVar[str]  # "images" or "labels"
    noun: ClassVar[str]  # "image" or "labels", used in messages
    default_method: ClassVar[str]
    has_channels: ClassVar[bool]  # a channel axis "c" (images)
    nearest_only: ClassVar[bool]  # values are ids: integer dtype, never averaged or interpolated (labels)

    # ------------------------------------------------------------------------------------------ parse
    @classmethod
    def parse(
        cls,
        data: Any,
        *,
        dims: Sequence[str] | None = None,
        c_coords: Sequence[Any] | None = None,
        transformations: BaseTransformation | Mapping[str, BaseTransformation] | None = None,
        scale_factors: ScaleFactors | None = None,
        method: str | None = None,
        chunks: int | Sequence[int] | Mapping[str, int] | None = None,
        name: str | None = None,
    ) -> xr.DataArray | xr.DataTree:
        """Normalise ``data`` into a canonical raster element.

        Parameters
        ----------
        data
            numpy array, dask array, ``xarray.DataArray`` (its dims are used), or an ``xarray.DataTree`` that is
            already multiscale (validated and returned with metadata attached).
        dims
            Names of the axes of ``data`` in its current order, in any order (e.g. ``("y", "x", "c")``); the
            result is transposed to the canonical order. Default: the DataArray's dims or the canonical order.
            For images a missing ``c`` axis is added with length 1.
        c_coords
            Channel names (images only), one per channel, unique. Default ``0 .. n-1``.
        transformations
            One transformation (to ``"global"``) or a mapping of coordinate system -> transformation.
            Default: the metadata already attached to ``data``, else identity to ``"global"``.
        scale_factors
            Build a multiscale pyramid lazily: one entry per extra level, each an int (all spatial axes) or a
            mapping of axis -> factor, relative to the previous level.
        method
            Downsampling: ``"mean"`` (images default), ``"nearest"`` (labels default), ``"max"`` or ``"min"``.
        chunks
            Dask chunks: an int (every spatial axis), a tuple in canonical order or a mapping of axis -> size.
            Default: keep a dask array's chunks; otherwise ``c`` whole, ``z`` 16, ``y``/``x`` 1024.
        name
            Used in error messages.
        """
        label = _label(cls.noun, name)
        existing = get_meta(data) if has_meta(data) else None
        if isinstance(data, xr.DataTree):
            tree = data
            set_meta(tree, ElementMeta(normalize_transformations(transformations, existing)))
            cls.validate(tree, name=name)
            return tree

        arr = cls._to_canonical_array(data, dims, label)
        arr = cls._rechunk(arr, chunks, keep_existing=isinstance(_unwrap(data), da.Array) and chunks is None)
        arr = cls._with_coords(arr, c_coords, data, label)
        meta = ElementMeta(normalize_transformations(transformations, existing))
        if scale_factors:
            element: xr.DataArray | xr.DataTree = cls._pyramid(arr, scale_factors, method, label)
        else:
            element = arr
        set_meta(element, meta)
        cls.validate(element, name=name)
        return element

    @classmethod
    def _to_canonical_array(cls, data: Any, dims: Sequence[str] | None, label: str) -> xr.DataArray:
        if isinstance(data, xr.DataArray):
            src_dims = tuple(dims) if dims is not None else tuple(str(d) for d in data.dims)
            values = data.data
        elif isinstance(data, np.ndarray | da.Array):
            values = data
            src_dims = tuple(dims) if dims is not None else None
        elif hasattr(data, "__array__") and not isinstance(data, str | bytes):
            values = np.asarray(data)
            src_dims = tuple(dims) if dims is not None else None
        else:
            raise TypeError(
                f"{label}: cannot parse a {type(data).__name__}; expected a numpy array, dask array, "
                "xarray DataArray or DataTree"
            )
        ndim = values.ndim
        canonical = cls.dims
        if src_dims is None:
            if ndim == len(canonical):
                src_dims = canonical
            elif cls.has_channels and ndim == len(canonical) - 1:
                src_dims = canonical[1:]
            else:
                raise ValidationError(
                    f"{label}: data has {ndim} dimensions, expected {len(canonical)} ({', '.join(canonical)}); "
                    "pass dims= to name them"
                )
        if len(src_dims) != ndim:
            raise ValidationError(
                f"{label}: dims {tuple(src_dims)} name {len(src_dims)} axes but the data has {ndim} dimensions"
            )
        if len(set(src_dims)) != len(src_dims):
            raise ValidationError(f"{label}: dims {tuple(src_dims)} contain a repeated axis")
        unknown = [d for d in src_dims if d not in canonical]
        if unknown:
            raise ValidationError(
                f"{label}: unknown axis {unknown[0]!r} in dims {tuple(src_dims)}; expected axes {canonical}"
            )
        missing = [d for d in canonical if d not in src_dims]
        if cls.has_channels and missing == ["c"]:
            values = values[None, ...]
            src_dims = ("c", *src_dims)
        elif missing:
            raise ValidationError(
                f"{label}: missing axis {missing[0]!r}: dims {tuple(src_dims)}, expected {canonical}"
            )
        if not isinstance(values, da.Array):
            values = da.from_array(np.asarray(values), chunks=-1)
        order = [src_dims.index(d) for d in canonical]
        if order != list(range(ndim)):
            values = values.transpose(order)
        return xr.DataArray(values, dims=canonical)

    @classmethod
    def _default_chunks(cls, arr: xr.DataArray) -> tuple[int, ...]:
        out = []
        for dim, size in zip(arr.dims, arr.shape, strict=True):
            if dim == "c":
                out.append(max(size, 1))
            elif dim == "z":
                out.append(max(min(size, _Z_CHUNK), 1))
            else:
                out.append(max(min(size, _SPATIAL_CHUNK), 1))
        return tuple(out)

    @classmethod
    def _rechunk(cls, arr: xr.DataArray, chunks: Any, keep_existing: bool) -> xr.DataArray:
        if keep_existing:
            return arr
        if chunks is None:
            target = cls._default_chunks(arr)
        elif isinstance(chunks, int):
            target = tuple(arr.sizes[d] if d == "c" else chunks for d in arr.dims)
        elif isinstance(chunks, Mapping):
            unknown = set(chunks) - set(arr.dims)
            if unknown:
                raise ValidationError(f"chunks name unknown axes {sorted(unknown)}; axes are {arr.dims}")
            default = dict(zip(arr.dims, cls._default_chunks(arr), strict=True))
            target = tuple(chunks.get(d, default[d]) for d in arr.dims)
        else:
            target = tuple(chunks)
            if len(target) != arr.ndim:
                raise ValidationError(f"chunks {target} must have one entry per axis {arr.dims}")
        return arr.copy(data=rechunk(arr.data, target))

    @classmethod
    def _with_coords(cls, arr: xr.DataArray, c_coords: Sequence[Any] | None, source: Any, label: str):
        if not cls.has_channels:
            if c_coords is not None:
                raise ValidationError(f"{label}: labels have no channel axis; c_coords must not be given")
            return arr
        n = arr.sizes["c"]
        if c_coords is None and isinstance(source, xr.DataArray) and "c" in source.coords:
            c_coords = list(source.coords["c"].values)
        if c_coords is None:
            c_coords = list(range(n))
        c_coords = list(c_coords)
        if len(c_coords) != n:
            raise ValidationError(
                f"{label}: c_coords has {len(c_coords)} names but the image has {n} channels"
            )
        if len(set(c_coords)) != n:
            dup = sorted({str(c) for c in c_coords if c_coords.count(c) > 1})
            raise ValidationError(f"{label}: channel names must be unique; repeated: {dup}")
        return arr.assign_coords(c=c_coords)

    @classmethod
    def _pyramid(cls, arr: xr.DataArray, scale_factors: ScaleFactors, method: str | None, label: str):
        method = method or cls.default_method
        if method not in ("mean", "nearest", "max", "min"):
            raise ValidationError(
                f"{label}: unknown downsampling method {method!r}; use mean, nearest, max or min"
            )
        if cls.nearest_only and method == "mean":
            raise ValidationError(
                f"{label}: labels cannot be averaged; use method='nearest' (default), max or min"
            )
        spatial = [d for d in arr.dims if d != "c"]
        levels = [arr]
        for i, factor in enumerate(scale_factors):
            if isinstance(factor, Mapping):
                unknown = set(factor) - set(spatial)
                if unknown:
                    raise ValidationError(
                        f"{label}: scale_factors[{i}] names axes {sorted(unknown)}; spatial axes are {spatial}"
                    )
                per_axis = {d: int(factor.get(d, 1)) for d in spatial}
            else:
                per_axis = {d: int(factor) for d in spatial}
            if any(f < 1 for f in per_axis.values()):
                raise ValidationError(f"{label}: scale_factors[{i}] must be >= 1, got {per_axis}")
            prev = levels[-1]
            too_small = [d for d, f in per_axis.items() if prev.sizes[d] // f < 1]
            if too_small:
                raise ValidationError(
                    f"{label}: scale_factors[{i}] = {per_axis} shrinks axis {too_small[0]!r} of size "
                    f"{prev.sizes[too_small[0]]} to nothing"
                )
            levels.append(_downsample(prev, per_axis, method))
        tree = xr.DataTree.from_dict(
            {scale_level_name(k): xr.Dataset({SCALE_VAR: lvl}) for k, lvl in enumerate(levels)}
        )
        return tree

    # --------------------------------------------------------------------------------------- validate
    @classmethod
    def validate(cls, element: xr.DataArray | xr.DataTree, name: str | None = None) -> None:
        """Check dims, dtype, channel names, pyramid consistency and attached metadata."""
        label = _label(cls.noun, name)
        if not isinstance(element, xr.DataArray | xr.DataTree):
            raise ValidationError(
                f"{label}: expected an xarray DataArray or DataTree, got {type(element).__name__}"
            )
        if isinstance(element, xr.DataTree) and not element.children:
            raise ValidationError(f"{label}: multiscale raster has no levels")
        levels = raster_levels(element)
        first = levels[0]
        for k, lvl in enumerate(levels):
            where = f"{label}, level {k}" if len(levels) > 1 else label
            if tuple(lvl.dims) != cls.dims:
                raise ValidationError(
                    f"{where}: dims are {tuple(lvl.dims)}, expected {cls.dims} in that order"
                )
            cls._check_dtype(lvl.dtype, where)
            if k > 0:
                prev = levels[k - 1]
                grown = [d for d in cls.dims if d != "c" and lvl.sizes[d] > prev.sizes[d]]
                if grown:
                    raise ValidationError(
                        f"{where}: axis {grown[0]!r} is larger ({lvl.sizes[grown[0]]}) than in the level above "
                        f"({prev.sizes[grown[0]]}); levels must go from full to low resolution"
                    )
                if "c" in cls.dims and lvl.sizes["c"] != first.sizes["c"]:
                    raise ValidationError(
                        f"{where}: has {lvl.sizes['c']} channels, level 0 has {first.sizes['c']}"
                    )
        if "c" in cls.dims:
            c = first.coords["c"].values if "c" in first.coords else None
            if c is not None and len(set(c.tolist())) != len(c):
                raise ValidationError(f"{label}: channel names (coordinate 'c') must be unique")
            for k, lvl in enumerate(levels[1:], start=1):
                ck = lvl.coords["c"].values if "c" in lvl.coords else None
                if c is not None and ck is not None and not np.array_equal(c, ck):
                    raise ValidationError(f"{label}, level {k}: channel names differ from level 0")
        if not has_meta(element) or not get_meta(element).transformations:
            raise ValidationError(f"{label}: no transformations attached; parse it with {cls.__name__}.parse")

    @classmethod
    def _check_dtype(cls, dtype: np.dtype, where: str) -> None:
        if cls.nearest_only:
            if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
                raise ValidationError(f"{where}: labels must have an integer or bool dtype, got {dtype}")
        elif not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise ValidationError(f"{where}: images must have a numeric dtype, got {dtype}")


def _unwrap(data: Any) -> Any:
    return data.data if isinstance(data, xr.DataArray) else data


def _block_reduce(
    block: np.ndarray, axis: tuple[int, ...] | None = None, *, method: str, dtype: np.dtype
) -> np.ndarray:
    """Reduce the blocks of one coarsening step (``block`` is reshaped so ``axis`` are the block axes)."""
    if axis is None:  # dask probes the output type with a tiny array
        return block.astype(dtype)
    if method == "max":
        return block.max(axis=axis)
    if method == "min":
        return block.min(axis=axis)
    n = int(np.prod([block.shape[a] for a in axis]))
    if np.issubdtype(dtype, np.integer):
        total = block.sum(axis=axis, dtype=np.int64 if np.issubdtype(dtype, np.signedinteger) else np.uint64)
        return ((total + n // 2) // n).astype(dtype)  # exact rounded mean, no float pass
    if dtype == np.bool_:
        return block.sum(axis=axis) * 2 >= n
    return block.mean(axis=axis, dtype=np.float64).astype(dtype)


def _downsample(arr: xr.DataArray, factors: Mapping[str, int], method: str) -> xr.DataArray:
    """One lazy pyramid step; the result has floor(size / factor) along each axis."""
    active = {d: f for d, f in factors.items() if f > 1}
    if not active:
        return arr
    data = arr.data
    if method == "nearest":
        # take the pixel nearest to the centre of each block
        index = tuple(
            slice(active[d] // 2, (arr.sizes[d] // active[d]) * active[d], active[d])
            if d in active
            else slice(None)
            for d in arr.dims
        )
        out = data[index]
    else:
        axes = {arr.dims.index(d): f for d, f in active.items()}
        trimmed = data[
            tuple(
                slice(0, (s // axes[i]) * axes[i]) if i in axes else slice(None)
                for i, s in enumerate(data.shape)
            )
        ]
        # dask aligns chunks to the factors, so no block straddles two chunks
        out = da.coarsen(
            functools.partial(_block_reduce, method=method, dtype=arr.dtype), trimmed, dict(axes)
        )
    result = xr.DataArray(out, dims=arr.dims)
    if "c" in arr.coords:
        result = result.assign_coords(c=arr.coords["c"].values)
    return result


class Image2DModel(RasterModel):
    """2D image: dims ``(c, y, x)``, any numeric dtype, optional channel names and pyramid."""

    dims = ("c", "y", "x")
    kind = "images"
    has_channels = True
    nearest_only = False
    noun = "image"
    default_method = "mean"


class Image3DModel(RasterModel):
    """3D image: dims ``(c, z, y, x)``."""

    dims = ("c", "z", "y", "x")
    kind = "images"
    has_channels = True
    nearest_only = False
    noun = "image"
    default_method = "mean"


class Labels2DModel(RasterModel):
    """2D segmentation labels: dims ``(y, x)``, integer or bool dtype."""

    dims = ("y", "x")
    kind = "labels"
    has_channels = False
    nearest_only = True
    noun = "labels"
    default_method = "nearest"


class Labels3DModel(RasterModel):
    """3D segmentation labels: dims ``(z, y, x)``."""

    dims = ("z", "y", "x")
    kind = "labels"
    has_channels = False
    nearest_only = True
    noun = "labels"
    default_method = "nearest"


_MODELS: dict[tuple[str, ...], type[RasterModel]] = {
    m.dims: m for m in (Image2DModel, Image3DModel, Labels2DModel, Labels3DModel)
}


def get_raster_model(element: xr.DataArray | xr.DataTree) -> type[RasterModel]:
    """The raster model matching the dims of ``element``."""
    dims = tuple(str(d) for d in raster_levels(element)[0].dims)
    try:
        return _MODELS[dims]
    except KeyError:
        raise ValidationError(
            f"raster dims {dims} match no element kind; expected one of {sorted(_MODELS)}"
        ) from None
