"""TIFF / OME-TIFF as lazy raster elements.

Pixels are read chunk by chunk when computed, never whole: uncompressed contiguous pages are memory-mapped
window by window, everything else (tiled, striped, compressed, SubIFD pyramids, multi-file OME-TIFF) goes
through tifffile's Zarr store of one pyramid level. The dask arrays only hold a small picklable source object
(path, series, level), so they also run on dask.distributed workers.
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tissuestack._compute import rechunk
from tissuestack.errors import ReaderError
from tissuestack.io._common import raster_kind

__all__ = ["TiffMetadata", "open_tiff", "tiff_metadata", "tiff_to_element"]

# target dask chunk side in pixels (a multiple of the file's own tile / strip size)
_TARGET_CHUNK = 1024

_UNIT_TO_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


@dataclass(frozen=True)
class TiffMetadata:
    """What a TIFF holds, read from its tags and OME-XML only (no pixels)."""

    shape: tuple[int, ...]
    """Shape of level 0 of the series, in the order of ``axes``."""
    dtype: np.dtype
    axes: str
    """tifffile axes of level 0, e.g. ``"YX"``, ``"CYX"``, ``"YXS"`` (RGB), ``"ZCYX"``."""
    n_levels: int
    """Pyramid levels stored in the file (1 if none)."""
    channel_names: list[str] | None
    """From the OME-XML ``<Channel Name=...>`` entries (None when absent or incomplete)."""
    pixel_size_um: tuple[float, float] | None
    """(y, x) physical pixel size in µm from OME-XML or the resolution tags."""
    is_ome: bool


# ------------------------------------------------------------------------------------------- opening


def _open(path: str | os.PathLike):
    import tifffile

    p = Path(path)
    if not p.is_file():
        state = "is a directory" if p.is_dir() else "does not exist"
        raise ReaderError(f"TIFF file {str(p)!r} {state}")
    try:
        return tifffile.TiffFile(p)
    except Exception as err:
        raise ReaderError(f"{str(p)!r} is not a readable TIFF file: {err}") from err


def _series(tif: Any, series: int, path: Any):
    n = len(tif.series)
    if not -n <= series < n:
        raise ReaderError(f"{str(path)!r} has {n} image series; series={series} is out of range")
    return tif.series[series]


def _level(s: Any, level: int, path: Any):
    n = len(s.levels)
    if not -n <= level < n:
        raise ReaderError(f"{str(path)!r} has {n} pyramid level(s); level={level} is out of range")
    return s.levels[level]


# ------------------------------------------------------------------------------------------- metadata


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_image(xml: str | None, series: int) -> ET.Element | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [el for el in root if _local(el.tag) == "Image"]
    if not images:
        return None
    return images[series] if -len(images) <= series < len(images) else None


def _ome_pixels(image: ET.Element | None) -> ET.Element | None:
    if image is None:
        return None
    for el in image:
        if _local(el.tag) == "Pixels":
            return el
    return None


def _ome_channel_names(pixels: ET.Element | None) -> list[str] | None:
    if pixels is None:
        return None
    names = [el.get("Name") for el in pixels if _local(el.tag) == "Channel"]
    if not names or any(n is None or n == "" for n in names):
        return None
    return [str(n) for n in names]


def _to_um(value: str | None, unit: str | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    factor = _UNIT_TO_UM.get((unit or "µm").strip())
    if factor is None or not np.isfinite(v) or v <= 0:
        return None
    return v * factor


def _ome_pixel_size(pixels: ET.Element | None) -> tuple[float, float] | None:
    if pixels is None:
        return None
    py = _to_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit"))
    px = _to_um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
    if py is None and px is None:
        return None
    return (py if py is not None else px, px if px is not None else py)  # type: ignore[return-value]


def _tag_pixel_size(tif: Any, page: Any) -> tuple[float, float] | None:
    """Pixel size from XResolution/YResolution + ResolutionUnit (or the ImageJ ``unit``)."""
    tags = page.tags
    xres, yres, unit_tag = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
    if xres is None or yres is None:
        return None

    def ratio(v: Any) -> float:
        return float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v)

    try:
        rx, ry = ratio(xres.value), ratio(yres.value)
    except (TypeError, ZeroDivisionError, ValueError):
        return None
    if rx <= 0 or ry <= 0:
        return None
    unit = int(unit_tag.value) if unit_tag is not None else 2
    if unit == 2:  # inch
        per = 25400.0
    elif unit == 3:  # centimetre
        per = 10000.0
    else:  # no absolute unit: only ImageJ says what the unit is
        ij = tif.imagej_metadata or {}
        per = _UNIT_TO_UM.get(str(ij.get("unit", "")).strip())
        if per is None:
            return None
    if unit in (2, 3) and rx == 1.0 and ry == 1.0:
        return None  # tifffile / most writers default to 1 pixel per unit: no information
    return (per / ry, per / rx)


def _metadata(tif: Any, s: Any, series: int) -> TiffMetadata:
    is_ome = bool(tif.is_ome)
    pixels = _ome_pixels(_ome_image(tif.ome_metadata, series)) if is_ome else None
    size = _ome_pixel_size(pixels)
    if size is None:
        size = _tag_pixel_size(tif, s.keyframe)
    return TiffMetadata(
        shape=tuple(int(n) for n in s.shape),
        dtype=np.dtype(s.dtype),
        axes=str(s.axes),
        n_levels=len(s.levels),
        channel_names=_ome_channel_names(pixels),
        pixel_size_um=size,
        is_ome=is_ome,
    )


def tiff_metadata(path: str | os.PathLike, *, series: int = 0) -> TiffMetadata:
    """Shape, dtype, axes, pyramid levels, channel names and pixel size of one series of a TIFF.

    Reads tags and OME-XML only. Raises :class:`~tissuestack.errors.ReaderError` naming the file when it is
    missing, not a TIFF, or has no such series.
    """
    with _open(path) as tif:
        return _metadata(tif, _series(tif, series, path), series)


# ------------------------------------------------------------------------------------------- lazy pixels


class _TiffSource:
    """Array-like view of one level of one series, read on indexing through tifffile's Zarr store.

    Pickles as (path, series, level); each process opens the file once, on first use.
    """

    def __init__(self, path: str, series: int, level: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.series, self.level = path, series, level
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)
        self._array: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        state.pop("_tif", None)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _zarr(self) -> Any:
        if self._array is None:
            with self._lock:
                if self._array is None:
                    import zarr

                    tif = _open(self.path)
                    store = tif.series[self.series].aszarr(level=self.level)
                    self._tif = tif  # keeps the file open for the store
                    self._array = zarr.open_array(store, mode="r")
        return self._array

    def native_chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self._zarr().chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._zarr()[key])


class _MemmapSource:
    """Array-like window reader of an uncompressed contiguous level (a memory map opened per read)."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset = path, offset
        self.shape, self.file_dtype, self.ndim = shape, dtype, len(shape)
        self.dtype = dtype.newbyteorder("=")

    def __getitem__(self, key: Any) -> np.ndarray:
        mm = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset, shape=self.shape)
        try:
            return np.array(mm[key], dtype=self.dtype)
        finally:
            del mm


def _chunks_for(shape: tuple[int, ...], axes: str, native: tuple[int, ...]) -> tuple[int, ...]:
    """Dask chunks: whole along non-spatial axes, a multiple of the native tile near 1024 along Y/X."""
    out = []
    for size, ax, nat in zip(shape, axes, native, strict=True):
        if ax in "YX":
            nat = max(1, min(nat, size))
            out.append(min(size, max(nat, (_TARGET_CHUNK // nat) * nat)))
        elif ax == "Z":
            out.append(max(1, min(size, nat)))
        else:
            out.append(max(1, size))
    return tuple(out)


def _check_codec(page: Any, path: Path) -> None:
    import tifffile

    compression = page.compression
    if compression == 1:
        return
    try:
        tifffile.TIFF.DECOMPRESSORS[compression]
    except KeyError as err:
        raise ReaderError(
            f"{str(path)!r} is compressed with {getattr(compression, 'name', compression)}, which tifffile "
            f"cannot decode without the optional 'imagecodecs' package ({err.args[0] if err.args else err})"
        ) from None


def open_tiff(path: str | os.PathLike, *, series: int = 0, level: int = 0):
    """One pyramid level of a TIFF series as a lazy dask array, and its tifffile axes string.

    Nothing is read until the array is computed, and then only the chunks needed: uncompressed contiguous
    data are memory-mapped, everything else (tiled, striped, compressed, BigTIFF, SubIFD pyramids,
    multi-file OME-TIFF, where opening the first file yields every channel) is read through tifffile's Zarr
    store. Dask chunks are whole along channel/sample axes and a multiple of the file's tiles along Y/X.

    Returns
    -------
    (dask.array.Array, str)
    """
    import dask.array as da
    from dask.base import tokenize

    p = Path(path)
    with _open(p) as tif:
        s = _series(tif, series, p)
        lvl = _level(s, level, p)
        shape = tuple(int(n) for n in lvl.shape)
        axes = str(lvl.axes)
        dtype = np.dtype(lvl.dtype)
        offset = lvl.dataoffset
        byteorder = tif.byteorder
        _check_codec(lvl.keyframe, p)
        files_ok = offset is not None and not getattr(tif, "is_multifile", False)
    stat = os.stat(p)
    name = f"tiff-{p.name}-" + tokenize(str(p.resolve()), series, level, stat.st_mtime_ns, stat.st_size)
    if files_ok and int(np.prod(shape)) > 0:
        source: Any = _MemmapSource(str(p.resolve()), int(offset), shape, dtype.newbyteorder(byteorder))
        native = tuple(1 if ax in "YX" else n for ax, n in zip(axes, shape, strict=True))
    else:
        source = _TiffSource(str(p.resolve()), series, level, shape, dtype)
        try:
            native = source.native_chunks()
        except Exception as err:
            raise ReaderError(f"{str(p)!r}: cannot read series {series} level {level}: {err}") from err
    chunks = _chunks_for(shape, axes, native)
    arr = da.from_array(
        source, chunks=chunks, name=name, asarray=False, meta=np.empty((0,) * len(shape), dtype)
    )
    return arr, axes


# ------------------------------------------------------------------------------------------- elements

_AXIS_TO_DIM = {"C": "c", "S": "c", "Y": "y", "X": "x", "Z": "z"}


def _canonical_dims(
    axes: str, shape: tuple[int, ...], kind: Any, path: Any
) -> tuple[list[str], list[int | slice]]:
    """Model dims for tifffile ``axes`` and the index squeezing the length-1 axes the model has no use for."""
    dims: list[str] = []
    index: list[int | slice] = []
    channel_like = [ax for ax in axes if ax in "CS"]
    other = [(ax, n) for ax, n in zip(axes, shape, strict=True) if ax not in "CSYXZ" and n > 1]
    # an unnamed stack axis (tifffile Q / I) holds the channels when the file names none
    stack_as_c = (
        kind.has_channels and len(other) == 1 and not [a for a in channel_like if shape[axes.index(a)] > 1]
    )
    for ax, n in zip(axes, shape, strict=True):
        dim = _AXIS_TO_DIM.get(ax)
        if dim is None and stack_as_c and n > 1:
            dim = "c"
        if dim is None or (dim == "c" and n == 1 and not kind.has_channels):  # labels: no channel axis
            if n != 1:
                raise ReaderError(
                    f"{str(path)!r}: axis {ax!r} (of {axes!r}, shape {shape}) has {n} entries; "
                    "pass dims= naming every axis of the file"
                )
            index.append(0)
            continue
        if dim in dims:
            if n == 1:
                index.append(0)
                continue
            prev = dims.index(dim)
            prev_ax = [a for a, i in zip(axes, index, strict=True) if isinstance(i, slice)][prev]
            if shape[axes.index(prev_ax)] == 1:  # e.g. "CYXS" with C == 1: drop the earlier one
                j = [k for k, i in enumerate(index) if isinstance(i, slice)][prev]
                index[j] = 0
                dims.pop(prev)
            else:
                raise ReaderError(
                    f"{str(path)!r}: axes {axes!r} (shape {shape}) hold two channel axes; pass dims="
                )
        dims.append(dim)
        index.append(slice(None))
    if not kind.has_channels and "c" in dims:  # labels
        raise ReaderError(
            f"{str(path)!r}: labels must have one channel, but axes {axes!r} have shape {shape}; "
            "pass dims= or read it as an image"
        )
    return dims, index


def _rechunk_level(arr: Any, dims: list[str], chunks: Mapping[str, int] | None) -> Any:
    if not chunks:
        return arr
    return rechunk(arr, tuple(chunks.get(d, arr.chunks[i]) for i, d in enumerate(dims)))


def _chunk_mapping(chunks: Any, model_dims: tuple[str, ...], path: Any) -> dict[str, int] | None:
    if chunks is None:
        return None
    if isinstance(chunks, int):
        return {d: chunks for d in model_dims if d != "c"}
    if isinstance(chunks, Mapping):
        unknown = set(chunks) - set(model_dims)
        if unknown:
            raise ReaderError(
                f"{str(path)!r}: chunks name unknown axes {sorted(unknown)}; axes are {model_dims}"
            )
        return {str(k): int(v) for k, v in chunks.items()}
    chunks = tuple(chunks)
    if len(chunks) != len(model_dims):
        raise ReaderError(f"{str(path)!r}: chunks {chunks} must have one entry per axis {model_dims}")
    return dict(zip(model_dims, chunks, strict=True))


def tiff_to_element(
    path: str | os.PathLike,
    *,
    kind: str = "image",
    dims: Sequence[str] | None = None,
    channel_names: Sequence[Any] | None = None,
    transformations: Any = None,
    pixel_size_um: float | tuple[float, float] | None = None,
    coordinate_system: str = "global",
    scale_factors: Sequence[Any] | None = None,
    chunks: int | Sequence[int] | Mapping[str, int] | None = None,
    series: int = 0,
    name: str | None = None,
):
    """A TIFF / OME-TIFF as a lazy image or labels element.

    Parameters
    ----------
    path
        The TIFF file (for a multi-file OME-TIFF, any file whose OME-XML lists all of them).
    kind
        ``"image"`` (:class:`~tissuestack.elements.Image2DModel`, or ``Image3DModel`` when the file has a Z
        axis) or ``"labels"`` (``Labels2DModel`` / ``Labels3DModel``, integer dtype).
    dims
        Names of the stored axes in file order (e.g. ``("y", "x", "c")``), overriding tifffile's axes.
        By default tifffile's axes are mapped: C and S (RGB samples) -> c, Y -> y, X -> x, Z -> z, and
        length-1 axes are dropped; an unnamed stack axis becomes c for images.
    channel_names
        Channel names (images only); default the OME-XML channel names, else 0..n-1.
    transformations
        One transformation or a mapping coordinate system -> transformation. Default: ``Scale`` by the pixel
        size (µm per pixel) to ``coordinate_system`` when known, else ``Identity``.
    pixel_size_um
        (y, x) pixel size in µm (or one number for square pixels); default from the file.
    coordinate_system
        Target of the default transformation.
    scale_factors
        Build a pyramid lazily when the file has none (the file's own levels are always used when present).
    chunks
        Dask chunks: an int (every spatial axis), a mapping axis -> size or a tuple in canonical order.
    series
        Which image series of the file.
    name
        Used in error messages.
    """
    import xarray as xr

    from tissuestack.elements._raster import SCALE_VAR, scale_level_name
    from tissuestack.transforms import Identity, Scale

    if kind not in ("image", "labels"):
        raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
    protocol = raster_kind(kind)
    p = Path(path)
    meta = tiff_metadata(p, series=series)
    if transformations is None:
        size = pixel_size_um if pixel_size_um is not None else meta.pixel_size_um
        if size is not None:
            sy, sx = (float(size), float(size)) if np.isscalar(size) else (float(size[0]), float(size[1]))
            transformations = {coordinate_system: Scale([sy, sx], axes=("y", "x"))}
        else:
            transformations = {coordinate_system: Identity()}

    levels = []
    level_dims: list[str] | None = None
    for lvl in range(meta.n_levels):
        arr, axes = open_tiff(p, series=series, level=lvl)
        if dims is not None:
            if len(dims) != arr.ndim:
                raise ReaderError(
                    f"{str(p)!r}: dims {tuple(dims)} name {len(dims)} axes but the file's axes are "
                    f"{axes!r} (shape {arr.shape})"
                )
            cur = [str(d) for d in dims]
        else:
            cur, index = _canonical_dims(axes, tuple(arr.shape), protocol, p)
            arr = arr[tuple(index)]
        if level_dims is not None and cur != level_dims:
            raise ReaderError(f"{str(p)!r}: pyramid level {lvl} has axes {cur}, level 0 has {level_dims}")
        level_dims = cur
        levels.append(arr)
    assert level_dims is not None
    spatial_3d = "z" in level_dims
    model = protocol.models()[1 if spatial_3d else 0]
    if protocol.nearest_only and not np.issubdtype(levels[0].dtype, np.integer):  # labels: integer ids
        raise ReaderError(f"{str(p)!r}: labels must hold integers, the file holds {levels[0].dtype}")
    chunk_map = _chunk_mapping(chunks, model.dims, p)
    levels = [_rechunk_level(arr, level_dims, chunk_map) for arr in levels]
    if channel_names is None and protocol.has_channels:  # images
        channel_names = meta.channel_names

    if len(levels) == 1:
        return model.parse(
            levels[0],
            dims=level_dims,
            c_coords=channel_names,
            transformations=transformations,
            scale_factors=scale_factors,
            chunks=None,
            name=name,
        )
    # the file's own pyramid: every level canonical, then one tree
    canonical = []
    for arr in levels:
        da_level = model.parse(arr, dims=level_dims, c_coords=channel_names, name=name)
        canonical.append(xr.DataArray(da_level.data, dims=da_level.dims, coords=da_level.coords))
    tree = xr.DataTree.from_dict(
        {scale_level_name(k): xr.Dataset({SCALE_VAR: lvl}) for k, lvl in enumerate(canonical)}
    )
    return model.parse(tree, transformations=transformations, name=name)
