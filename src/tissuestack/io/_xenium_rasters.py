"""Xenium rasters: the label masks of cells.zarr.zip (read chunk by chunk from the zip) and the morphology and
post-Xenium aligned images."""

from __future__ import annotations

import os
import threading
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError
from tissuestack.io._xenium_common import (
    _FOCUS_V2,
    _FOCUS_V4,
    CELLS_ZARR,
    FOCUS_CHANNELS_1,
    FOCUS_CHANNELS_4,
    FOCUS_DIR,
    FOCUS_FILE,
    HE_SUFFIX,
    IF_SUFFIX,
    KNOWN_MAJOR,
    _rel,
    _require,
    _Specs,
    _tiff,
    _version_text,
    cell_id_strings,
)
from tissuestack.transforms import Affine, BaseTransformation, Identity

# ------------------------------------------------------------------------------------------------ cells.zarr.zip


class _ZipArraySource:
    """One array of a zipped Zarr store, opened on first read (per process): picklable, thread-safe."""

    def __init__(self, path: str, key: str, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.key, self.shape, self.dtype = path, key, shape, dtype
        self.ndim = len(shape)
        self._array: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._array is None:
            with self._lock:
                if self._array is None:
                    import zarr

                    store = zarr.storage.ZipStore(self.path, mode="r")
                    self._array = zarr.open_array(store, path=self.key, mode="r")
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._open()[key])
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
            raise ReaderError(
                f"{self.path!r}: cannot read {self.key} (truncated or corrupt zip?): {err}"
            ) from err


@dataclass
class _Cells:
    """What ``cells.zarr.zip`` says about the cells: ids, label mappings, summary, mask arrays."""

    path: Path
    ids: np.ndarray  # str (>= 1.3) or int64 (< 1.3), one per cell row
    string_ids: bool
    mapping: str  # "polygon_sets" (>= 2.0), "seg_mask_value" (1.3-1.x) or "ids" (< 1.3)
    cell_labels: np.ndarray  # int64 raster label of each cell row
    nucleus_owner: np.ndarray | None  # >= 2.0: cell row owning nucleus polygon p (label p + 1)
    summary: pd.DataFrame | None
    masks: dict[str, tuple[tuple[int, ...], np.dtype, tuple[int, ...]]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ids)


def _zarr_read(group: Any, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(group[key][...])
    except KeyError:
        raise ReaderError(f"{where}: missing array {key!r}") from None
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ReaderError(f"{where}: cannot read array {key!r} (truncated or corrupt?): {err}") from err


def _open_cells(folder: Path, specs: _Specs) -> _Cells:
    import zarr

    path = _require(
        folder, CELLS_ZARR, "cell ids and label masks", "pass cell_labels=False, nucleus_labels=False to skip"
    )
    where = _rel(folder, path)
    try:
        store = zarr.storage.ZipStore(path, mode="r")
        group = zarr.open_group(store, mode="r")
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise ReaderError(
            f"{where}: not a readable zipped Zarr store (expected a zip of a Zarr v2 group with cell_id, "
            f"masks/0, masks/1; truncated?): {err}"
        ) from err
    try:
        raw = _zarr_read(group, "cell_id", where)
        if raw.ndim == 2 and raw.shape[1] == 2:
            ids: np.ndarray = cell_id_strings(raw[:, 0], raw[:, 1])
            string_ids = True
        elif raw.ndim == 1:
            ids = raw.astype(np.int64)
            string_ids = False
        else:
            raise ReaderError(
                f"{where}: cell_id has shape {raw.shape}; expected (N, 2) uint32 prefix/suffix pairs "
                f"(XOA >= 1.3) or (N,) integers (XOA < 1.3); experiment.xenium says {_version_text(specs.version)}"
            )
        n = len(ids)
        names = set(group.keys())
        has_sets, has_seg = "polygon_sets" in names, "seg_mask_value" in names
        if has_sets and has_seg:
            raise ReaderError(
                f"{where}: holds both polygon_sets (XOA >= 2.0) and seg_mask_value (XOA 1.3-1.x); expected one"
            )
        nucleus_owner = None
        if has_sets:
            mapping = "polygon_sets"
            owners = []
            for k in ("0", "1"):
                owner = _zarr_read(group, f"polygon_sets/{k}/cell_index", where).astype(np.int64).ravel()
                if owner.size and (owner.min() < 0 or owner.max() >= n):
                    raise ReaderError(
                        f"{where}: polygon_sets/{k}/cell_index refers to cell rows outside 0..{n - 1}"
                    )
                owners.append(owner)
            nucleus_owner, cell_owner = owners
            if len(cell_owner) != n or len(np.unique(cell_owner)) != n:
                raise ReaderError(
                    f"{where}: polygon_sets/1/cell_index has {len(cell_owner)} entries; expected one polygon "
                    f"per cell ({n}), each cell once"
                )
            cell_labels = np.empty(n, dtype=np.int64)
            cell_labels[cell_owner] = np.arange(1, n + 1)
        elif has_seg:
            mapping = "seg_mask_value"
            cell_labels = _zarr_read(group, "seg_mask_value", where).astype(np.int64).ravel()
            if len(cell_labels) != n:
                raise ReaderError(
                    f"{where}: seg_mask_value has {len(cell_labels)} entries for {n} cells; expected one per cell"
                )
        elif string_ids:
            raise ReaderError(
                f"{where}: string cell ids (XOA >= 1.3) but neither polygon_sets (>= 2.0) nor seg_mask_value "
                f"(1.3-1.x) to map them to the label masks; experiment.xenium says "
                f"{_version_text(specs.version)}"
            )
        else:
            mapping = "ids"
            cell_labels = ids.astype(np.int64)
        summary = None
        if "cell_summary" in names:
            values = _zarr_read(group, "cell_summary", where)
            columns = group["cell_summary"].attrs.get("column_names")
            if values.ndim == 2 and len(values) == n and columns and len(columns) == values.shape[1]:
                summary = pd.DataFrame(values, columns=[str(c) for c in columns])
        masks: dict[str, tuple[tuple[int, ...], np.dtype, tuple[int, ...]]] = {}
        if "masks" in names:
            for key in ("0", "1"):
                try:
                    arr = group[f"masks/{key}"]
                except KeyError:
                    continue
                masks[key] = (tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks))
    finally:
        store.close()
    _check_layout_version(folder, specs, mapping)
    return _Cells(path, ids, string_ids, mapping, cell_labels, nucleus_owner, summary, masks)


def _check_layout_version(folder: Path, specs: _Specs, mapping: str) -> None:
    """Warn when experiment.xenium's version does not match the layout found (the files win)."""
    v = specs.version
    if v is None or v[0] > KNOWN_MAJOR:
        return
    expected = "polygon_sets" if v >= (2, 0, 0) else "seg_mask_value" if v >= (1, 3, 0) else "ids"
    if expected != mapping:
        found = {
            "polygon_sets": "the XOA >= 2.0 layout (polygon_sets)",
            "seg_mask_value": "the XOA 1.3-1.x layout (seg_mask_value)",
            "ids": "the XOA < 1.3 layout (integer cell ids)",
        }[mapping]
        warnings.warn(
            f"Xenium bundle {str(folder)!r}: experiment.xenium says {_version_text(v)} but {CELLS_ZARR} has "
            f"{found}; reading it as the files say",
            UserWarning,
            stacklevel=5,
        )


def _labels_element(folder: Path, cells: _Cells, key: str, specs: _Specs, options: dict[str, Any]):
    import dask.array as da

    from tissuestack.elements import Labels2DModel

    name = "nucleus_labels" if key == "0" else "cell_labels"
    if key not in cells.masks:
        raise ReaderError(f"{_rel(folder, cells.path)}: missing array masks/{key} (the {name} raster)")
    shape, dtype, zchunks = cells.masks[key]
    if len(shape) != 2 or not np.issubdtype(dtype, np.integer):
        raise ReaderError(
            f"{_rel(folder, cells.path)}: masks/{key} has shape {shape} and dtype {dtype}; expected a 2-D "
            "integer raster"
        )
    source = _ZipArraySource(str(cells.path), f"masks/{key}", shape, dtype)
    # dask chunks: whole Zarr chunks, at least ~2048 px per side
    chunks = tuple(max(c, (2048 // max(c, 1)) * c) if c else n for c, n in zip(zchunks, shape, strict=True))
    token = f"{cells.path.stat().st_mtime_ns}-{cells.path.stat().st_size}"
    arr = da.from_array(
        source, chunks=chunks, name=f"xenium-{name}-{token}", asarray=False, meta=np.empty((0, 0), dtype)
    )
    return Labels2DModel.parse(
        arr,
        dims=("y", "x"),
        transformations=specs.transformations("raster", options["pixel_coordinate_system"]),
        scale_factors=_scale_factors(options["scale_factors"], shape),
        name=name,
    )


def _scale_factors(factors: Sequence[int] | None, shape: Sequence[int]) -> list[int] | None:
    """The requested pyramid factors, stopping before a level would get smaller than 1 pixel."""
    if not factors:
        return None
    out: list[int] = []
    size = min(shape[-2:])
    for f in factors:
        f = int(f)
        if size // f < 1:
            break
        out.append(f)
        size //= f
    return out or None


# ------------------------------------------------------------------------------------------------ images


def _focus_files(folder: Path) -> tuple[list[Path], list[str] | None, str]:
    """Files of ``morphology_focus/`` in channel order, fixed channel names (2.x-3.x) and the layout label."""
    target = folder / FOCUS_DIR
    files = sorted(
        f
        for f in os.listdir(target)
        if f.endswith((".ome.tif", ".ome.tiff")) and not f.startswith((".", "_"))
    )
    v2 = [f for f in files if _FOCUS_V2.match(f)]
    v4 = [f for f in files if _FOCUS_V4.match(f)]
    if v2 and not v4:
        indices = sorted(int(_FOCUS_V2.match(f).group(1)) for f in v2)  # type: ignore[union-attr]
        if indices != list(range(len(v2))):
            raise ReaderError(
                f"Xenium bundle {str(folder)!r}: {FOCUS_DIR}/ holds {v2}; expected morphology_focus_0000.ome.tif "
                f"to morphology_focus_{len(v2) - 1:04d}.ome.tif without gaps"
            )
        names = {1: list(FOCUS_CHANNELS_1), 4: list(FOCUS_CHANNELS_4)}.get(len(v2))
        return [target / f for f in sorted(v2)], names, "XOA 2.x-3.x"
    if v4 and not v2:
        by_index = sorted(v4, key=lambda f: int(_FOCUS_V4.match(f).group(1)))  # type: ignore[union-attr]
        indices = [int(_FOCUS_V4.match(f).group(1)) for f in by_index]  # type: ignore[union-attr]
        if indices != list(range(len(v4))):
            raise ReaderError(
                f"Xenium bundle {str(folder)!r}: {FOCUS_DIR}/ holds {by_index}; expected chNNNN_<name>.ome.tif "
                f"files numbered ch0000 to ch{len(v4) - 1:04d} (ch0000 the DAPI channel)"
            )
        return [target / f for f in by_index], None, "XOA >= 4.0"
    raise ReaderError(
        f"Xenium bundle {str(folder)!r}: {FOCUS_DIR}/ holds {files or 'no OME-TIFF'}; expected "
        "morphology_focus_000N.ome.tif (XOA 2.x-3.x) or chNNNN_<name>.ome.tif (XOA >= 4.0) files"
    )


def _slug_names(files: Sequence[Path]) -> list[str]:
    return [_FOCUS_V4.match(f.name).group(2) for f in files]  # type: ignore[union-attr]


def _focus_element(folder: Path, specs: _Specs, options: dict[str, Any]):
    transformations = specs.transformations("raster", options["pixel_coordinate_system"])
    if (folder / FOCUS_DIR).is_dir():
        files, names, label = _focus_files(folder)
        first = files[0]
        meta = _ome_metadata(folder, first)
        n_channels = _channel_count(meta)
        if n_channels != len(files):
            raise ReaderError(
                f"{_rel(folder, first)}: its OME-XML describes {n_channels} channel(s) but {FOCUS_DIR}/ holds "
                f"{len(files)} file(s) ({label} multi-file OME-TIFF: one file per channel)"
            )
        if names is None:
            ome = meta.channel_names
            names = list(ome) if ome and len(ome) == len(files) else _focus_default_names(files, label)
        return _image_element(first, meta, names, transformations, options, "morphology_focus")
    path = folder / FOCUS_FILE
    if not path.is_file():
        raise ReaderError(
            f"Xenium bundle {str(folder)!r}: no morphology focus image: expected {FOCUS_DIR}/ (XOA >= 2.0) or "
            f"{FOCUS_FILE} (XOA < 2.0); pass morphology_focus=False to skip it"
        )
    return _single_image(folder, path, "morphology_focus", transformations, options)


def _focus_default_names(files: Sequence[Path], label: str) -> list[str]:
    if label == "XOA >= 4.0":
        return _slug_names(files)
    return [f"channel_{i}" for i in range(len(files))]


def _channel_count(meta: Any) -> int:
    axes = str(meta.axes)
    return int(meta.shape[axes.index("C")]) if "C" in axes else 1


def _ome_metadata(folder: Path, path: Path) -> Any:
    """The TIFF metadata of ``path``; a :class:`ReaderError` naming the file when it cannot be read."""
    try:
        return _tiff().tiff_metadata(path)
    except ReaderError:
        raise
    except Exception as err:
        raise ReaderError(f"{_rel(folder, path)}: not a readable OME-TIFF (truncated?): {err}") from err


def _image_element(
    path: Path,
    meta: Any,
    names: Sequence[str] | None,
    transformations: dict,
    options: dict[str, Any],
    name: str,
):
    """The lazy image element of the OME-TIFF ``path`` (pyramid per the ``scale_factors`` option)."""
    return _tiff().tiff_to_element(
        path,
        kind="image",
        channel_names=names,
        transformations=transformations,
        scale_factors=_scale_factors(options["scale_factors"], meta.shape),
        name=name,
    )


def _single_image(folder: Path, path: Path, name: str, transformations: dict, options: dict[str, Any]):
    meta = _ome_metadata(folder, path)
    n = _channel_count(meta)
    names = meta.channel_names if meta.channel_names and len(meta.channel_names) == n else None
    if names is None and n == 1:
        names = ["DAPI"]
    return _image_element(path, meta, names, transformations, options, name)


def _read_alignment(folder: Path, path: Path) -> np.ndarray:
    try:
        matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise ReaderError(
            f"{_rel(folder, path)}: not a 3x3 comma-separated affine matrix (no header expected): {err}"
        ) from err
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise ReaderError(
            f"{_rel(folder, path)}: holds a {matrix.shape[0]}x{matrix.shape[1] if matrix.ndim == 2 else 0} "
            "table; expected a 3x3 homogeneous affine (image pixel -> morphology pixel)"
        )
    if not np.allclose(matrix[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise ReaderError(f"{_rel(folder, path)}: last row is {matrix[2].tolist()}; expected [0, 0, 1]")
    return matrix


def _aligned_images(folder: Path, specs: _Specs, options: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Post-Xenium H&E / IF images next to the bundle files, placed through their alignment CSVs."""
    found: list[tuple[str, Path]] = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith((".", "_")):
            continue
        for suffix in (HE_SUFFIX, IF_SUFFIX):
            if entry.endswith(suffix):
                found.append((suffix, folder / entry))
    counts: dict[str, int] = {}
    for suffix, _ in found:
        counts[suffix] = counts.get(suffix, 0) + 1
    pixel_cs = options["pixel_coordinate_system"]
    for suffix, path in found:
        base = suffix.removesuffix(".ome.tif")
        name = base if counts[suffix] == 1 else _sanitize(path.name.removesuffix(".ome.tif"))
        csv = path.with_name(path.name.removesuffix(".ome.tif") + "alignment.csv")
        if not csv.is_file():
            csv = path.with_name(path.name.removesuffix(".ome.tif") + "_alignment.csv")
        if csv.is_file():
            to_pixels = _read_alignment(folder, csv)
        else:
            to_pixels = np.eye(3)
        ps = specs.pixel_size
        to_um = np.diag([ps, ps, 1.0]) @ to_pixels
        transformations: dict[str, BaseTransformation] = {
            "global": Affine(to_um, input_axes=("x", "y"), output_axes=("x", "y"))
        }
        if pixel_cs:
            transformations[pixel_cs] = (
                Identity()
                if np.array_equal(to_pixels, np.eye(3))
                else Affine(to_pixels, input_axes=("x", "y"), output_axes=("x", "y"))
            )
        meta = _ome_metadata(folder, path)
        n = _channel_count(meta) if "S" not in str(meta.axes) else int(meta.shape[str(meta.axes).index("S")])
        names: list[str] | None
        if suffix == HE_SUFFIX and n in (3, 4):
            names = ["r", "g", "b", "a"][:n]
        else:
            names = meta.channel_names if meta.channel_names and len(meta.channel_names) == n else None
        yield name, _image_element(path, meta, names, transformations, options, name)


def _sanitize(name: str) -> str:
    from tissuestack.elements import sanitize_name

    return sanitize_name(name)
