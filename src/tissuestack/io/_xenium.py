"""10x Genomics Xenium (Xenium Onboard Analysis 1.0 to 4.x output bundle, the "outs" folder).

Layout (``shared/VENDOR_FORMATS.md`` §1)::

    outs/
      experiment.xenium                       pixel size (µm per morphology pixel), software versions
      cells.zarr.zip                          label rasters masks/0 (nuclei), masks/1 (cells), cell ids, mappings
      cells.parquet                           one row per cell: centroids, areas, counts
      cell_feature_matrix.h5                  counts (10x feature-barcode HDF5)
      transcripts.parquet                     one row per decoded molecule
      cell_boundaries.parquet, nucleus_boundaries.parquet     one row per polygon vertex
      morphology_mip.ome.tif, morphology_focus.ome.tif        XOA < 2.0
      morphology_focus/morphology_focus_000N.ome.tif          XOA 2.x-3.x (1 or 4 channels)
      morphology_focus/chNNNN_<name>.ome.tif                  XOA >= 4.0 (channel names in the OME-XML)
      *he_image.ome.tif, *if_image.ome.tif (+ *alignment.csv) post-Xenium aligned images

The layout is recognised from the files present (2-column ``cell_id`` = string ids, ``polygon_sets`` or
``seg_mask_value`` = label mapping, ``morphology_focus/`` and its file names, ``label_id`` in the boundaries),
not from the version string alone, which is only cross-checked (and reported in warnings).

Elements, named as the reference reader names them:

* labels ``nucleus_labels`` and ``cell_labels`` (lazy, read chunk by chunk from the zip);
* images ``morphology_focus`` (channel names), ``morphology_mip`` (< 2.0), ``he_image`` / ``if_image``;
* points ``transcripts`` (lazy: one partition per group of Parquet row groups; ``x``, ``y``, ``z`` in µm, the
  categorical ``feature_name``, the instance column ``cell_id``, ``qv`` and every other column);
* shapes ``cell_boundaries`` (indexed by cell id), ``nucleus_boundaries`` (indexed by the nucleus label from
  2.0 on, with a ``cell_id`` column, so that multinucleate cells keep one polygon per nucleus) and optionally
  ``cell_circles`` (centroid, radius ``sqrt(cell_area / pi)``);
* table ``table``: the counts, ``obs`` from ``cells.parquet`` (+ ``z_level``, ``nucleus_count`` from the zarr,
  ``cell_labels`` = raster label), ``obsm["spatial"]`` = centroids in µm; it annotates ``cell_labels`` through
  ``cell_labels`` (or ``cell_circles`` / ``cell_boundaries`` through ``cell_id``).

Coordinate systems: ``global`` in microns (points and shapes Identity, morphology rasters ``Scale(pixel_size)``)
and ``pixels``, the morphology pixel frame the reference reader calls ``global`` (rasters Identity, points and
shapes ``Scale(1 / pixel_size)`` on x and y; z stays in µm). Aligned images map into both through the affine of
their alignment CSV (image pixel -> morphology pixel).
"""

from __future__ import annotations

import json
import math
import os
import re
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
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect
from tissuestack.transforms import Affine, BaseTransformation, Identity, Scale

__all__ = ["TECHNOLOGY", "cell_id_strings", "iter_xenium", "parse_xenium_version", "xenium"]

SPECS_FILE = "experiment.xenium"
CELLS_ZARR = "cells.zarr.zip"
CELLS_FILE = "cells.parquet"
MATRIX_FILE = "cell_feature_matrix.h5"
TRANSCRIPTS_FILE = "transcripts.parquet"
CELL_BOUNDARIES_FILE = "cell_boundaries.parquet"
NUCLEUS_BOUNDARIES_FILE = "nucleus_boundaries.parquet"
MIP_FILE = "morphology_mip.ome.tif"
FOCUS_FILE = "morphology_focus.ome.tif"
FOCUS_DIR = "morphology_focus"
HE_SUFFIX = "he_image.ome.tif"
IF_SUFFIX = "if_image.ome.tif"
TABLE_NAME = "table"
REGION_KEY = "region"
CELL_ID = "cell_id"
LABELS_KEY = "cell_labels"
#: channel names of the 2.x-3.x ``morphology_focus_000N`` files (not stored in those files)
FOCUS_CHANNELS_1 = ("DAPI",)
FOCUS_CHANNELS_4 = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")
KNOWN_MAJOR = 4  # newest layout generation this reader knows
_TRANSCRIPT_COORDS = {"x_location": "x", "y_location": "y", "z_location": "z"}
#: string columns of transcripts.parquet with few distinct values, read as categoricals
_LOW_CARDINALITY = ("fov_name", "codeword_category")
_PARTITION_ROWS = 1_000_000  # target rows per transcripts partition (whole row groups)
_FOCUS_V2 = re.compile(r"^morphology_focus_(\d{4})\.ome\.tif$")
_FOCUS_V4 = re.compile(r"^ch(\d{4})_(.+)\.ome\.tif$")
_VERSION = re.compile(r"^[xX]enium-(\d+)\.(\d+)\.(\d+)")


# ------------------------------------------------------------------------------------------------ small helpers


def _tiff():
    from tissuestack.io import _tiff

    return _tiff


def _rel(folder: Path, path: Path) -> str:
    """``path`` for messages: relative to the bundle when inside it, with the bundle folder named."""
    try:
        return f"{path.relative_to(folder).as_posix()} (in {str(folder)!r})"
    except ValueError:
        return repr(str(path))


def _require(folder: Path, name: str, what: str, hint: str = "") -> Path:
    path = folder / name
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "is missing"
        raise ReaderError(
            f"Xenium bundle {str(folder)!r}: {name} ({what}) {state}" + (f"; {hint}" if hint else "")
        )
    return path


def cell_id_strings(prefix: np.ndarray, suffix: np.ndarray | int) -> np.ndarray:
    """Decode the ``(prefix, dataset suffix)`` uint32 pairs of ``cells.zarr.zip`` into Xenium cell id strings.

    The prefix is 8 hexadecimal nibbles, most significant first, each written as ``a`` (0) .. ``p`` (15), then
    ``-<suffix>``: ``(1, 1) -> "aaaaaaab-1"``, ``(1437536272, 1) -> "ffkpbaba-1"``. Vectorized.
    """
    prefix = np.asarray(prefix, dtype=np.uint32)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    letters = (((prefix[:, None] >> shifts) & 0xF) + ord("a")).astype(np.uint8)
    heads = letters.view("S8").ravel().astype("U8")
    tails = np.broadcast_to(np.asarray(suffix), prefix.shape).astype(np.int64).astype("U")
    return np.char.add(np.char.add(heads, "-"), tails)


def parse_xenium_version(specs: dict[str, Any]) -> tuple[int, int, int] | None:
    """The XOA version of a bundle from ``experiment.xenium``: ``xenium_ranger.version`` when the bundle was
    re-segmented with Xenium Ranger, else ``analysis_sw_version``; ``None`` when absent or unparseable."""
    ranger = specs.get("xenium_ranger")
    text = ranger.get("version") if isinstance(ranger, dict) and ranger.get("version") else None
    if text is None:
        text = specs.get("analysis_sw_version")
    if not isinstance(text, str):
        return None
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def _version_text(version: tuple[int, int, int] | None) -> str:
    return "an unparseable version" if version is None else "XOA " + ".".join(map(str, version))


# ------------------------------------------------------------------------------------------------ specs


@dataclass(frozen=True)
class _Specs:
    folder: Path
    pixel_size: float
    version: tuple[int, int, int] | None
    version_string: str | None

    def transformations(self, kind: str, pixel_cs: str | None) -> dict[str, BaseTransformation]:
        """``global`` (µm) and the pixel frame, for rasters in morphology pixels or vectors in µm."""
        ps = self.pixel_size
        if kind == "raster":
            out: dict[str, BaseTransformation] = {"global": Scale([ps, ps], axes=("y", "x"))}
            if pixel_cs:
                out[pixel_cs] = Identity()
        else:
            out = {"global": Identity()}
            if pixel_cs:
                out[pixel_cs] = Scale([1 / ps, 1 / ps], axes=("x", "y"))
        return out


def _read_specs(folder: Path) -> _Specs:
    path = _require(folder, SPECS_FILE, "the run metadata JSON")
    try:
        specs = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReaderError(f"{_rel(folder, path)}: not a readable JSON document (truncated?): {err}") from err
    if not isinstance(specs, dict):
        raise ReaderError(f"{_rel(folder, path)}: holds a JSON {type(specs).__name__}, expected an object")
    raw = specs.get("pixel_size")
    try:
        pixel_size = float(raw)
    except (TypeError, ValueError):
        pixel_size = math.nan
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise ReaderError(
            f"{_rel(folder, path)}: 'pixel_size' is {raw!r}; expected a positive number of µm per morphology "
            "pixel (0.2125 on Xenium instruments)"
        )
    version = parse_xenium_version(specs)
    ranger = specs.get("xenium_ranger")
    text = ranger.get("version") if isinstance(ranger, dict) and ranger.get("version") else None
    text = text or specs.get("analysis_sw_version")
    if version is None:
        warnings.warn(
            f"{_rel(folder, path)}: cannot parse the software version {text!r} (expected 'xenium-X.Y.Z'); "
            "the layout is inferred from the files present",
            UserWarning,
            stacklevel=4,
        )
    elif version[0] > KNOWN_MAJOR:
        warnings.warn(
            f"{_rel(folder, path)}: XOA {'.'.join(map(str, version))} is newer than the layouts this reader "
            f"knows (1.0 to {KNOWN_MAJOR}.x); the layout is inferred from the files present",
            UserWarning,
            stacklevel=4,
        )
    return _Specs(folder, pixel_size, version, text if isinstance(text, str) else None)


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


# ------------------------------------------------------------------------------------------------ parquet helpers


def _parquet_file(folder: Path, name: str, what: str, hint: str = ""):
    import pyarrow.parquet as pq

    path = _require(folder, name, what, hint)
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # ArrowInvalid: truncated / not Parquet
        raise ReaderError(
            f"{_rel(folder, path)}: not a readable Parquet file (truncated or corrupt?): {err}"
        ) from err


def _require_columns(
    folder: Path, path: Path, names: Sequence[str], required: Sequence[str], what: str
) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise ReaderError(
            f"{_rel(folder, path)}: missing column(s) {missing} ({what}); expected {list(required)}, found "
            f"{list(names)}"
        )


def _to_str(values: Any) -> np.ndarray:
    """An Arrow string / binary / large variant column as a numpy ``str`` array (bytes decoded as UTF-8)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        values = pc.cast(values, pa.string())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    return np.asarray(values.to_numpy(zero_copy_only=False)).astype(str)


def _ids_column(values: Any) -> np.ndarray:
    """A ``cell_id`` column: int64 for integer ids (XOA < 1.3), else decoded strings."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_integer(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.int64)
    return _to_str(values)


# ------------------------------------------------------------------------------------------------ cells.parquet


def _read_cells_parquet(folder: Path) -> pd.DataFrame:
    import pyarrow as pa

    pf = _parquet_file(folder, CELLS_FILE, "per-cell metadata", "pass cells_table=False to skip the table")
    path = folder / CELLS_FILE
    names = pf.schema_arrow.names
    _require_columns(folder, path, names, (CELL_ID, "x_centroid", "y_centroid"), "cell ids and centroids")
    try:
        table = pf.read()
    except Exception as err:
        raise ReaderError(f"{_rel(folder, path)}: cannot read (truncated?): {err}") from err
    ids = _ids_column(table.column(CELL_ID))
    table = table.drop_columns([CELL_ID])
    string_like = [
        f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]
    df = table.to_pandas()
    for column in string_like:
        df[column] = _to_str(table.column(column))
    df.insert(0, CELL_ID, ids)
    if len(pd.unique(ids)) != len(ids):
        raise ReaderError(f"{_rel(folder, path)}: cell_id values are not unique; expected one row per cell")
    return df


# ------------------------------------------------------------------------------------------------ boundaries


def _polygons(folder: Path, name: str, cells: _Cells | None, specs: _Specs, options: dict[str, Any]):
    """Boundary polygons from one row per vertex (rows of a polygon contiguous, rings closed)."""
    import geopandas as gpd
    import pyarrow.compute as pc
    import shapely

    from tissuestack.elements import ShapesModel

    nucleus = name == NUCLEUS_BOUNDARIES_FILE
    element = "nucleus_boundaries" if nucleus else "cell_boundaries"
    pf = _parquet_file(folder, name, f"{element} vertices", f"pass {element}=False to skip them")
    path = folder / name
    names = pf.schema_arrow.names
    _require_columns(folder, path, names, ("vertex_x", "vertex_y"), "vertex coordinates in µm")
    has_label = "label_id" in names
    if not has_label and CELL_ID not in names:
        raise ReaderError(
            f"{_rel(folder, path)}: no polygon id column; expected 'label_id' (XOA >= 2.0) or 'cell_id', found "
            f"{list(names)}"
        )
    # label_id (>= 2.0) identifies each polygon; the cell ids then come from the zarr when it maps labels to
    # cells, else from the parquet's own cell_id column
    zarr_ids = has_label and cells is not None and cells.mapping == "polygon_sets"
    columns = ["vertex_x", "vertex_y", "label_id" if has_label else CELL_ID]
    if has_label and not zarr_ids:
        if CELL_ID not in names:
            raise ReaderError(
                f"{_rel(folder, path)}: no 'cell_id' column and no {CELLS_ZARR} mapping label_id to cells; "
                f"expected a cell_id column, found {list(names)}"
            )
        columns.append(CELL_ID)
    try:
        table = pf.read(columns=columns)
    except Exception as err:
        raise ReaderError(f"{_rel(folder, path)}: cannot read {columns} (truncated?): {err}") from err
    n = table.num_rows
    coords = np.column_stack(
        [
            table.column("vertex_x").to_numpy().astype(np.float64),
            table.column("vertex_y").to_numpy().astype(np.float64),
        ]
    )
    key = table.column(columns[2])
    if n == 0:
        starts = np.zeros(0, dtype=np.int64)
    elif has_label:
        labels = key.to_numpy().astype(np.int64)
        starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]]))
        n_unique = len(np.unique(labels))
    else:
        change = pc.not_equal(key.slice(0, n - 1), key.slice(1)).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.concatenate([[True], change]))
        n_unique = pc.count_distinct(key).as_py()
    if n and len(starts) != n_unique:
        raise ReaderError(
            f"{_rel(folder, path)}: the rows of a polygon are not contiguous ({len(starts)} runs of "
            f"{columns[2]} for {n_unique} distinct values); expected each polygon's vertices in consecutive rows"
        )
    ends = np.append(starts[1:], n)
    if n and (ends - starts).min() < 4:
        raise ReaderError(
            f"{_rel(folder, path)}: a polygon has fewer than 4 vertex rows; expected closed rings (first vertex "
            "repeated at the end)"
        )
    pixel_cs = options["pixel_coordinate_system"]
    transformations = specs.transformations("vector", pixel_cs)

    if has_label:
        group_labels = labels[starts] if n else np.zeros(0, dtype=np.int64)
        if zarr_ids:
            assert cells is not None
            owner_of = cells.nucleus_owner if nucleus else None
            n_polygons = len(owner_of) if owner_of is not None else cells.n
            if len(group_labels) and (group_labels.min() < 1 or group_labels.max() > n_polygons):
                raise ReaderError(
                    f"{_rel(folder, path)}: label_id values outside 1..{n_polygons} (the polygons of {CELLS_ZARR})"
                )
            if nucleus:
                rows = owner_of[group_labels - 1]  # type: ignore[index]
            else:
                rows = np.empty(cells.n, dtype=np.int64)
                rows[cells.cell_labels - 1] = np.arange(cells.n)
                rows = rows[group_labels - 1]
            ids = cells.ids[rows]
        else:
            ids = _ids_column(table.column(CELL_ID).take(starts)) if n else np.zeros(0, dtype=str)
        geoms = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, coords, offsets=(np.append(starts, n), np.arange(len(starts) + 1))
        )
        if nucleus:
            gdf = gpd.GeoDataFrame({"geometry": geoms, CELL_ID: ids}, index=pd.Index(group_labels, name=None))
        else:
            gdf = gpd.GeoDataFrame({"geometry": geoms}, index=pd.Index(ids, name=CELL_ID))
        return ShapesModel.parse(gdf, transformations=transformations, name=element)

    ids = _ids_column(key.take(starts)) if n else np.zeros(0, dtype=str)
    ring_starts, ring_group = _split_rings(coords, starts, ends)
    if len(ring_starts) == len(starts):
        geoms = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, coords, offsets=(np.append(starts, n), np.arange(len(starts) + 1))
        )
        gdf = gpd.GeoDataFrame({"geometry": geoms}, index=pd.Index(ids, name=CELL_ID))
        return ShapesModel.parse(gdf, transformations=transformations, name=element)

    # several closed rings under one cell id: the nuclei of a multinucleate cell in early 2.0.0 builds
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        coords,
        offsets=(np.append(ring_starts, n), np.arange(len(ring_starts) + 1)),
    )
    owner_ids = ids[ring_group]
    if nucleus and cells is not None and cells.nucleus_owner is not None:
        expected = cells.ids[cells.nucleus_owner]
        if len(expected) == len(owner_ids) and np.array_equal(expected, owner_ids):
            # the rings are exactly the nucleus polygons of the zarr, in polygon order: label p + 1
            gdf = gpd.GeoDataFrame(
                {"geometry": polygons, CELL_ID: owner_ids}, index=pd.Index(np.arange(1, len(polygons) + 1))
            )
            return ShapesModel.parse(gdf, transformations=transformations, name=element)
    warnings.warn(
        f"{_rel(folder, path)}: some cell ids own several closed rings and no label_id column maps them to "
        f"the label masks; reading one MultiPolygon per cell id ({len(ring_starts)} rings, {len(starts)} ids)",
        UserWarning,
        stacklevel=3,
    )
    parts = shapely.get_parts(polygons)
    multi = shapely.multipolygons(parts, indices=ring_group)
    single = np.bincount(ring_group, minlength=len(starts)) == 1
    first_ring = np.searchsorted(ring_group, np.arange(len(starts)))
    geoms = np.where(single, polygons[first_ring], multi)
    gdf = gpd.GeoDataFrame({"geometry": geoms}, index=pd.Index(ids, name=CELL_ID))
    return ShapesModel.parse(gdf, transformations=transformations, name=element)


def _split_rings(coords: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start row of every closed ring and the group it belongs to.

    A group normally is one ring (its first vertex repeated as its last row). Groups whose first vertex comes
    back before their last row concatenate several closed rings; only those (rare) groups are walked ring by
    ring.
    """
    n = len(coords)
    if n == 0:
        return starts, np.arange(len(starts))
    group = np.repeat(np.arange(len(starts)), ends - starts)
    first = coords[starts][group]
    closing = np.all(coords == first, axis=1)
    closing[starts] = False
    n_closing = np.bincount(group, weights=closing, minlength=len(starts))
    suspicious = np.flatnonzero((n_closing > 1) | ((n_closing == 1) & ~closing[ends - 1]))
    if not len(suspicious):
        return starts, np.arange(len(starts))
    extra_starts: list[int] = []
    extra_groups: list[int] = []
    for g in suspicious.tolist():
        s, e = int(starts[g]), int(ends[g])
        while s < e:
            match = np.flatnonzero(np.all(coords[s + 1 : e] == coords[s], axis=1))
            stop = s + 1 + int(match[0]) + 1 if len(match) else e
            if s != starts[g]:
                extra_starts.append(s)
                extra_groups.append(g)
            s = stop
    all_starts = np.concatenate([starts, np.asarray(extra_starts, dtype=np.int64)])
    all_groups = np.concatenate([np.arange(len(starts)), np.asarray(extra_groups, dtype=np.int64)])
    order = np.argsort(all_starts, kind="stable")
    return all_starts[order], all_groups[order]


# ------------------------------------------------------------------------------------------------ transcripts


@dataclass(frozen=True)
class _TranscriptsSource:
    """What every transcripts partition needs: the file, the column renames and the shared categories."""

    path: str
    columns: tuple[str, ...]  # output column names, in order
    source_of: tuple[tuple[str, str], ...]  # output name -> file column
    categoricals: tuple[tuple[str, tuple[str, ...]], ...]  # output column -> its categories (all values)
    strings: tuple[str, ...]  # output columns read as strings (binary decoded)
    min_qv: float | None

    def __dask_tokenize__(self) -> tuple:
        return (self.path, self.columns, self.source_of, hash(self.categoricals), self.strings, self.min_qv)


def _column_categories(folder: Path, columns: Sequence[str]) -> dict[str, list[str]]:
    """Every value of low-cardinality string columns: one pass over those columns only, row group by row group,
    read as Parquet dictionaries (the data pages hold dictionary indices, so this is cheap and bounded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / TRANSCRIPTS_FILE
    values: dict[str, set[str]] = {name: set() for name in columns}
    try:
        pf = pq.ParquetFile(path, read_dictionary=list(columns))
        for i in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(i, columns=list(columns))
            for name in columns:
                for chunk in table.column(name).chunks:
                    dictionary = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk.unique()
                    values[name].update(_to_str(dictionary.drop_null()).tolist())
            del table
    except ReaderError:
        raise
    except Exception as err:
        raise ReaderError(
            f"{_rel(folder, path)}: cannot read column(s) {list(columns)} (truncated?): {err}"
        ) from err
    finally:
        pa.default_memory_pool().release_unused()  # the allocator would keep the pages otherwise
    return {name: sorted(v) for name, v in values.items()}


def _string_dtype():
    return pd.StringDtype("pyarrow")


def _arrow_types_mapper():
    import pyarrow as pa

    dtype = _string_dtype()
    return {pa.string(): dtype, pa.large_string(): dtype}.get


def _dictionary_codes(col: Any, lookup: pd.Index, path: str, name: str) -> np.ndarray:
    """int32 codes of a (dictionary or plain) string column into ``lookup`` (-1 for nulls)."""
    import pyarrow as pa

    codes = []
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            position = lookup.get_indexer(_to_str(chunk.dictionary)).astype(np.int32)
            idx = chunk.indices.to_numpy(zero_copy_only=False)
            if chunk.null_count:
                valid = chunk.is_valid().to_numpy(zero_copy_only=False)
                codes.append(np.where(valid, position[np.where(valid, idx, 0)], -1).astype(np.int32))
            else:
                codes.append(position[idx])
        else:
            code = lookup.get_indexer(_to_str(chunk.fill_null(""))).astype(np.int32)
            if chunk.null_count:
                code[~chunk.is_valid().to_numpy(zero_copy_only=False)] = -1
            codes.append(code)
    code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
    if col.null_count == 0 and code.size and (code < 0).any():
        raise ReaderError(f"{path!r}: column {name} has values the first pass over the file did not see")
    return code


def _transcripts_partition(
    spec: tuple[int, tuple[int, ...]], columns: list[str] | None = None, *, source: _TranscriptsSource
) -> pd.DataFrame:
    """Read the row groups of one partition and convert them to the points frame (projection pushed down).

    Low-cardinality strings (``feature_name``, ...) become categoricals with the shared categories straight from
    the Parquet dictionary indices; other strings stay Arrow-backed (no Python objects); numbers are zero-copy.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    start, row_groups = spec
    wanted = list(source.columns) if columns is None else [c for c in source.columns if c in columns]
    mapping = dict(source.source_of)
    categoricals = dict(source.categoricals)
    file_columns = [mapping[c] for c in wanted]
    if source.min_qv is not None and "qv" not in file_columns:
        file_columns.append("qv")
    dictionary_columns = [mapping[c] for c in wanted if c in categoricals]
    try:
        pf = pq.ParquetFile(source.path, read_dictionary=dictionary_columns or None)
        table = pf.read_row_groups(list(row_groups), columns=file_columns, use_threads=False)
    except Exception as err:
        first, last = (row_groups[0], row_groups[-1]) if row_groups else (0, 0)
        raise ReaderError(
            f"{source.path!r}: cannot read row groups {first}-{last} (truncated?): {err}"
        ) from err
    n = table.num_rows
    if source.min_qv is not None:
        qv = table.column("qv")
        mask = pc.fill_null(pc.greater_equal(qv, pa.scalar(source.min_qv, qv.type)), False)
        keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        table = table.take(pa.array(keep))
        index: pd.Index = pd.Index(keep + start, dtype=np.int64)
    else:
        index = pd.RangeIndex(start, start + n)
    arrays = []
    for name in wanted:
        col = table.column(mapping[name])
        if name in categoricals:
            values = categoricals[name]
            code = _dictionary_codes(col, pd.Index(values), source.path, name)
            arrays.append(
                pa.DictionaryArray.from_arrays(
                    pa.array(code, type=pa.int32(), mask=code < 0 if col.null_count else None),
                    pa.array(values, type=pa.string()),
                )
            )
        elif name in source.strings:
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if not pa.types.is_string(col.type):
                col = pc.cast(col, pa.string())
            arrays.append(col)
        else:
            arrays.append(col)
    frame = pa.table(arrays, names=wanted).to_pandas(
        types_mapper=_arrow_types_mapper(), split_blocks=True, self_destruct=True
    )
    frame.index = index
    return frame


def _row_group_partitions(md: Any, target: int) -> list[tuple[int, tuple[int, ...]]]:
    """Consecutive row groups gathered into partitions of about ``target`` rows: ``(first row, groups)``."""
    parts: list[tuple[int, tuple[int, ...]]] = []
    current: list[int] = []
    start = rows_in = row = 0
    for i in range(md.num_row_groups):
        rows = md.row_group(i).num_rows
        if current and rows_in + rows > target:
            parts.append((start, tuple(current)))
            current, rows_in = [], 0
        if not current:
            start = row
        current.append(i)
        rows_in += rows
        row += rows
    if current or not parts:
        parts.append((start, tuple(current)))
    return parts


def _transcripts_plan(
    folder: Path, min_qv: float | None
) -> tuple[_TranscriptsSource, list[tuple[int, tuple[int, ...]]], int, Any]:
    """Check ``transcripts.parquet`` (footer and schema only, plus one pass over ``feature_name``) and plan
    its partitions: the shared source, the partitions, the row count and the Arrow schema."""
    import pyarrow as pa

    pf = _parquet_file(folder, TRANSCRIPTS_FILE, "decoded transcripts", "pass transcripts=False to skip them")
    path = folder / TRANSCRIPTS_FILE
    schema = pf.schema_arrow
    names = schema.names
    _require_columns(
        folder, path, names, ("x_location", "y_location", "feature_name"), "transcript positions and genes"
    )
    for axis in ("x_location", "y_location", "z_location"):
        if axis in names and not (
            pa.types.is_floating(schema.field(axis).type) or pa.types.is_integer(schema.field(axis).type)
        ):
            raise ReaderError(
                f"{_rel(folder, path)}: column {axis} has type {schema.field(axis).type}; expected numbers"
            )
    if min_qv and "qv" not in names:
        raise ReaderError(f"{_rel(folder, path)}: min_qv={min_qv} needs a 'qv' column, found {list(names)}")
    out_columns: list[str] = []
    source_of: list[tuple[str, str]] = []
    strings: list[str] = []
    for column in names:
        if column.startswith("__"):  # pandas index columns of re-saved files
            continue
        out = _TRANSCRIPT_COORDS.get(column, column)
        if out in ("x", "y", "z") and out in names and column != out:
            raise ReaderError(f"{_rel(folder, path)}: has both {column!r} and {out!r}; expected one of them")
        out_columns.append(out)
        source_of.append((out, column))
        t = schema.field(column).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if column != "feature_name" and (
            pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
        ):
            strings.append(out)
    low = ["feature_name"] + [c for c in _LOW_CARDINALITY if c in strings]
    strings = [c for c in strings if c not in low]
    categories = _column_categories(folder, [dict(source_of)[c] for c in low])
    source = _TranscriptsSource(
        str(path),
        tuple(out_columns),
        tuple(source_of),
        tuple((c, tuple(categories[dict(source_of)[c]])) for c in low),
        tuple(strings),
        float(min_qv) if min_qv else None,
    )
    md = pf.metadata
    return source, _row_group_partitions(md, _PARTITION_ROWS), int(md.num_rows), schema


def _transcripts(folder: Path, specs: _Specs, options: dict[str, Any]):
    import dask.dataframe as dd

    from tissuestack.elements import PointsModel, get_meta

    min_qv = options["min_qv"]
    source, parts, total, schema = _transcripts_plan(folder, min_qv)
    starts = [start for start, _ in parts]
    ddf = dd.from_map(
        _transcripts_partition,
        parts,
        source=source,
        meta=_convert_empty(schema.empty_table(), source),
        divisions=(*starts, max(total - 1, starts[-1])) if total else None,
        label="xenium-transcripts",
        enforce_metadata=False,
    )
    points = PointsModel.parse(
        ddf,
        feature_key="feature_name",
        instance_key=CELL_ID if CELL_ID in source.columns else None,
        transformations=specs.transformations("vector", options["pixel_coordinate_system"]),
        name="transcripts",
    )
    if not min_qv:
        get_meta(points).n_rows = total
    return points


def _convert_empty(empty: Any, source: _TranscriptsSource) -> pd.DataFrame:
    """The (empty) frame a partition produces, used as dask ``meta``."""
    categoricals = dict(source.categoricals)
    mapping = dict(source.source_of)
    columns: dict[str, Any] = {}
    for name in source.columns:
        if name in categoricals:
            columns[name] = pd.Categorical([], categories=list(categoricals[name]))
        elif name in source.strings:
            columns[name] = pd.array([], dtype=_string_dtype())
        else:
            columns[name] = empty.column(mapping[name]).to_pandas()
    return pd.DataFrame(columns, index=pd.RangeIndex(0, 0), columns=list(source.columns))


# ------------------------------------------------------------------------------------------------ table


def _table_and_circles(
    folder: Path,
    cells: _Cells | None,
    specs: _Specs,
    options: dict[str, Any],
    region: str,
    instance_key: str,
    want_table: bool,
    want_circles: bool,
):
    """The AnnData table and the cell circles, both from ``cells.parquet`` (read once)."""
    from tissuestack.elements import ShapesModel

    metadata = _read_cells_parquet(folder)
    circles = None
    if want_circles:
        if "cell_area" not in metadata.columns:
            raise ReaderError(
                f"{_rel(folder, folder / CELLS_FILE)}: missing column 'cell_area' (µm²), needed for the circle radii"
            )
        radius = np.sqrt(metadata["cell_area"].to_numpy(dtype=np.float64) / np.pi)
        circles = ShapesModel.parse(
            metadata[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64),
            radius=radius,
            index=pd.Index(metadata[CELL_ID].to_numpy(), name=CELL_ID),
            transformations=specs.transformations("vector", options["pixel_coordinate_system"]),
            name="cell_circles",
        )
    if not want_table:
        return None, circles
    table = _table(folder, cells, metadata, options, region, instance_key)
    return table, circles


CONTROL_PLACEMENTS = ("obsm", "X", "drop")


def control_key(feature_type: str) -> str:
    """The ``obsm`` key of a feature type's counts: ``"Negative Control Probe"`` -> ``"negative_control_probe"``."""
    return re.sub(r"[^0-9a-z]+", "_", feature_type.lower()).strip("_") or "other_features"


def _narrow_counts(values: np.ndarray) -> np.ndarray:
    """Counts in the narrowest unsigned integer type that holds them (controls are mostly 0 or 1)."""
    if values.size == 0 or values.min() < 0 or not np.array_equal(values, np.round(values)):
        return values
    top = values.max()
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.int64)


def _controls_to_obsm(adata: Any, feature_types: Sequence[str]) -> Any:
    """Features whose type is not in ``feature_types`` (control probes and codewords) move out of ``X`` into
    ``obsm[<feature type in snake case>]``: one DataFrame per feature type, a column per feature."""
    types = adata.var["feature_types"].to_numpy().astype(str)
    kept = np.isin(types, list(feature_types))
    if kept.all():
        return adata
    X = adata.X.tocsc() if hasattr(adata.X, "tocsc") else np.asarray(adata.X)
    frames = {}
    for feature_type in dict.fromkeys(types[~kept]):
        columns = np.flatnonzero(types == feature_type)
        block = X[:, columns]
        values = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        frames[control_key(feature_type)] = pd.DataFrame(
            _narrow_counts(values), index=adata.obs_names, columns=adata.var_names[columns].astype(str)
        )
    out = adata[:, kept].copy()
    for key, frame in frames.items():
        out.obsm[key] = frame
    return out


def _table(
    folder: Path,
    cells: _Cells | None,
    metadata: pd.DataFrame,
    options: dict[str, Any],
    region: str,
    instance_key: str,
):
    from tissuestack.elements import TableModel
    from tissuestack.io._tenx_h5 import read_10x_h5, tenx_h5_attributes

    path = _require(
        folder, MATRIX_FILE, "the cell x feature counts", "pass cells_table=False to skip the table"
    )
    feature_types = tuple(options["feature_types"] or ())
    placement = options["control_features"]
    if placement not in CONTROL_PLACEMENTS:
        raise ValueError(f"xenium: control_features must be one of {CONTROL_PLACEMENTS}, got {placement!r}")
    everything = placement != "drop" or not feature_types
    adata = read_10x_h5(path, feature_types=None if everything else list(feature_types))
    barcodes = adata.obs_names.to_numpy().astype(str)
    ids = metadata[CELL_ID].to_numpy()
    ids_str = ids.astype(str)
    if not np.array_equal(ids_str, barcodes):
        position = pd.Index(ids_str).get_indexer(barcodes)
        if (position < 0).any() or len(ids_str) != len(barcodes):
            missing = int((position < 0).sum())
            raise ReaderError(
                f"Xenium bundle {str(folder)!r}: {MATRIX_FILE} has {len(barcodes)} barcodes and {CELLS_FILE} "
                f"{len(ids_str)} cells; {missing} barcode(s) have no row in {CELLS_FILE} (expected the same cell ids)"
            )
        metadata = metadata.iloc[position].reset_index(drop=True)
        ids = metadata[CELL_ID].to_numpy()
    attrs = tenx_h5_attributes(path)
    scale = attrs.get("protein_scaling_factor")
    protein = np.flatnonzero(adata.var["feature_types"].to_numpy() == "Protein Expression")
    if scale is not None and len(protein):
        import scipy.sparse as sp

        X = sp.csr_matrix(adata.X, dtype=np.float32)
        factors = np.ones(adata.n_vars, dtype=np.float32)
        factors[protein] = 1.0 / float(scale)
        adata.X = X @ sp.diags(factors).tocsr()
    if feature_types and placement == "obsm":
        adata = _controls_to_obsm(adata, feature_types)
    obs = metadata.drop(columns=["x_centroid", "y_centroid"])
    obs.index = pd.Index(barcodes)
    adata.obsm["spatial"] = metadata[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    adata.obs = obs
    for frame in adata.obsm.values():
        if isinstance(frame, pd.DataFrame):
            frame.index = adata.obs_names
    if cells is not None:
        row = pd.Index(cells.ids).get_indexer(ids) if len(cells.ids) else np.full(len(ids), -1)
        if (row >= 0).all():
            if cells.summary is not None and cells.mapping != "ids":
                for column in ("z_level", "nucleus_count"):
                    if column in cells.summary.columns and column not in adata.obs.columns:
                        adata.obs[column] = cells.summary[column].to_numpy()[row]
            if cells.mapping != "ids":
                adata.obs[LABELS_KEY] = cells.cell_labels[row]
        else:
            warnings.warn(
                f"Xenium bundle {str(folder)!r}: {int((row < 0).sum())} cell id(s) of {CELLS_FILE} are not in "
                f"{CELLS_ZARR}; the table is not linked to the label masks",
                UserWarning,
                stacklevel=4,
            )
            if instance_key == LABELS_KEY:
                instance_key = CELL_ID
    elif instance_key == LABELS_KEY:
        instance_key = CELL_ID
    adata.obs[REGION_KEY] = pd.Categorical([region] * adata.n_obs)
    return TableModel.parse(
        adata, region=region, region_key=REGION_KEY, instance_key=instance_key, name=TABLE_NAME
    )


# ------------------------------------------------------------------------------------------------ entry points


_DEFAULTS: dict[str, Any] = {
    "cell_labels": True,
    "nucleus_labels": True,
    "cell_boundaries": True,
    "nucleus_boundaries": True,
    "cells_as_circles": False,
    "transcripts": True,
    "morphology_focus": True,
    "morphology_mip": True,
    "aligned_images": True,
    "cells_table": True,
    "feature_types": ("Gene Expression", "Protein Expression"),
    "control_features": "obsm",
    "min_qv": 0.0,
    "scale_factors": (2, 2, 2, 2),
    "pixel_coordinate_system": "pixels",
}


@with_folder_hints('xenium')
def iter_xenium(path: str | os.PathLike, **options: Any) -> Iterator[tuple[str, Any]]:
    """Stream the elements of a Xenium bundle as ``(name, element)`` pairs (the options of :func:`xenium`).

    Order: labels, images, transcripts, boundaries, circles, then the table (after the elements it annotates).
    Large data stay lazy; each element is built only when the generator reaches it.
    """
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"xenium: unknown option(s) {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    opts = {**_DEFAULTS, **options}
    if isinstance(opts["feature_types"], str):
        opts["feature_types"] = (opts["feature_types"],)
    if opts["control_features"] not in CONTROL_PLACEMENTS:
        raise ValueError(
            f"xenium: control_features must be one of {CONTROL_PLACEMENTS}, got {opts['control_features']!r}"
        )
    folder = Path(path)
    if not folder.is_dir():
        state = "is a file" if folder.is_file() else "does not exist"
        raise ReaderError(f"Xenium bundle {str(folder)!r} {state}; expected the XOA output folder")
    specs = _read_specs(folder)

    want_table = bool(opts["cells_table"])
    want_circles = bool(opts["cells_as_circles"])
    need_cells = any(
        opts[k] for k in ("cell_labels", "nucleus_labels", "cell_boundaries", "nucleus_boundaries")
    )
    need_cells = need_cells or want_table
    cells = None
    if need_cells and ((folder / CELLS_ZARR).exists() or opts["cell_labels"] or opts["nucleus_labels"]):
        cells = _open_cells(folder, specs)

    if opts["nucleus_labels"]:
        assert cells is not None
        yield "nucleus_labels", _labels_element(folder, cells, "0", specs, opts)
    if opts["cell_labels"]:
        assert cells is not None
        yield "cell_labels", _labels_element(folder, cells, "1", specs, opts)

    if opts["morphology_focus"]:
        yield "morphology_focus", _focus_element(folder, specs, opts)
    if opts["morphology_mip"] and not (folder / FOCUS_DIR).is_dir():
        path = folder / MIP_FILE
        if path.is_file():
            transformations = specs.transformations("raster", opts["pixel_coordinate_system"])
            yield "morphology_mip", _single_image(folder, path, "morphology_mip", transformations, opts)
        elif (folder / FOCUS_FILE).is_file():
            raise ReaderError(
                f"Xenium bundle {str(folder)!r}: {MIP_FILE} is missing (XOA < 2.0 layouts have it next to "
                f"{FOCUS_FILE}); pass morphology_mip=False to skip it"
            )
    if opts["aligned_images"]:
        yield from _aligned_images(folder, specs, opts)

    if opts["transcripts"]:
        yield "transcripts", _transcripts(folder, specs, opts)

    if opts["cell_boundaries"]:
        yield "cell_boundaries", _polygons(folder, CELL_BOUNDARIES_FILE, cells, specs, opts)
    if opts["nucleus_boundaries"]:
        yield "nucleus_boundaries", _polygons(folder, NUCLEUS_BOUNDARIES_FILE, cells, specs, opts)

    # which element the table annotates (the reference's choice, falling back to what was read)
    if want_circles:
        region, instance_key = "cell_circles", CELL_ID
    elif opts["cell_labels"] and cells is not None and cells.mapping != "ids":
        region, instance_key = "cell_labels", LABELS_KEY
    elif opts["cell_labels"] or not opts["cell_boundaries"]:
        region, instance_key = "cell_labels", CELL_ID
    else:
        region, instance_key = "cell_boundaries", CELL_ID
    if want_table or want_circles:
        table, circles = _table_and_circles(
            folder, cells, specs, opts, region, instance_key, want_table, want_circles
        )
        if circles is not None:
            yield "cell_circles", circles
        if table is not None:
            yield TABLE_NAME, table


def xenium(
    path: str | os.PathLike,
    *,
    cell_labels: bool = True,
    nucleus_labels: bool = True,
    cell_boundaries: bool = True,
    nucleus_boundaries: bool = True,
    cells_as_circles: bool = False,
    transcripts: bool = True,
    morphology_focus: bool = True,
    morphology_mip: bool = True,
    aligned_images: bool = True,
    cells_table: bool = True,
    feature_types: Sequence[str] | None = ("Gene Expression", "Protein Expression"),
    control_features: str = "obsm",
    min_qv: float = 0.0,
    scale_factors: Sequence[int] | None = (2, 2, 2, 2),
    pixel_coordinate_system: str | None = "pixels",
):
    """Read a 10x Genomics Xenium output bundle (XOA 1.0 to 4.x) into a SpatialData, lazily.

    Parameters
    ----------
    path
        The XOA output folder (``experiment.xenium`` and the files next to it).
    cell_labels, nucleus_labels
        Read the cell / nucleus label rasters of ``cells.zarr.zip`` (lazy).
    cell_boundaries, nucleus_boundaries
        Read the boundary polygons. From XOA 2.0 nucleus polygons are indexed by their raster label (several per
        multinucleate cell) with a ``cell_id`` column; cell polygons are indexed by cell id.
    cells_as_circles
        Also read the cells as circles (centroid, radius ``sqrt(cell_area / pi)``); the table then annotates them.
    transcripts
        Read ``transcripts.parquet`` as lazy points (one partition per group of row groups).
    morphology_focus, morphology_mip
        Read the morphology images (``morphology_mip`` exists before XOA 2.0 only).
    aligned_images
        Read ``*he_image.ome.tif`` / ``*if_image.ome.tif`` placed by their ``*alignment.csv``.
    cells_table
        Read the counts table.
    feature_types
        Feature types whose counts form the table's ``X`` (``None`` or empty: all, including the control probes
        and codewords). Protein values (XOA 4.x) are divided by the file's ``protein_scaling_factor``. The
        reference reader keeps ``Gene Expression`` only.
    control_features
        Where the other features go (negative control probes and codewords, unassigned, deprecated and
        intergenic codewords, genomic controls): ``"obsm"`` (default) puts each feature type's per-cell
        counts in ``table.obsm[<type in snake case>]``, a DataFrame with one column per feature (e.g.
        ``obsm["negative_control_probe"]["NegControlProbe_00001"]``) in the narrowest unsigned integer type;
        ``"X"`` keeps them in ``X`` as genes (with their ``var["feature_types"]``); ``"drop"`` discards them.
    min_qv
        Keep only transcripts with ``qv >= min_qv`` (filtered while reading; 0 keeps everything).
    scale_factors
        Pyramid of the label rasters and of the images that have none in their file (the reference's default).
    pixel_coordinate_system
        Name of the morphology pixel coordinate system (the reference's ``global``); ``None`` or ``""`` to omit.

    Returns
    -------
    SpatialData
        Labels ``cell_labels``, ``nucleus_labels``; images ``morphology_focus`` (``morphology_mip``, ``he_image``,
        ``if_image``); points ``transcripts``; shapes ``cell_boundaries``, ``nucleus_boundaries``
        (``cell_circles``); table ``table``. Coordinate systems ``global`` (µm) and ``pixels``.

    Raises
    ------
    ReaderError
        A file the requested elements need is missing, truncated or malformed (wrong columns, unknown layout);
        the message names the file and what was expected.
    """
    return collect(
        iter_xenium(
            path,
            cell_labels=cell_labels,
            nucleus_labels=nucleus_labels,
            cell_boundaries=cell_boundaries,
            nucleus_boundaries=nucleus_boundaries,
            cells_as_circles=cells_as_circles,
            transcripts=transcripts,
            morphology_focus=morphology_focus,
            morphology_mip=morphology_mip,
            aligned_images=aligned_images,
            cells_table=cells_table,
            feature_types=feature_types,
            control_features=control_features,
            min_qv=min_qv,
            scale_factors=scale_factors,
            pixel_coordinate_system=pixel_coordinate_system,
        )
    )


TECHNOLOGY = Technology(
    name="xenium",
    summary="10x Genomics Xenium (XOA 1.0-4.x output bundle): labels, morphology and aligned images, "
    "transcripts, cell/nucleus boundaries, counts table",
    iter_elements=iter_xenium,
    options=(
        Option("cell_labels", bool, True, "read the cell label raster (cells.zarr.zip masks/1)"),
        Option("nucleus_labels", bool, True, "read the nucleus label raster (cells.zarr.zip masks/0)"),
        Option("cell_boundaries", bool, True, "read the cell boundary polygons"),
        Option("nucleus_boundaries", bool, True, "read the nucleus boundary polygons"),
        Option("cells_as_circles", bool, False, "also read cells as circles; the table then annotates them"),
        Option("transcripts", bool, True, "read the transcripts (lazy points)"),
        Option("morphology_focus", bool, True, "read the morphology focus image"),
        Option("morphology_mip", bool, True, "read the morphology MIP image (XOA < 2.0)"),
        Option("aligned_images", bool, True, "read H&E / IF images aligned by their alignment CSV"),
        Option("cells_table", bool, True, "read the counts table"),
        Option(
            "feature_types",
            tuple,
            ("Gene Expression", "Protein Expression"),
            "feature types counted in the table's X (empty: all)",
        ),
        Option(
            "control_features",
            str,
            "obsm",
            "where features of other types (control probes and codewords) go: obsm (a DataFrame per type), "
            "X (kept as genes) or drop",
            choices=CONTROL_PLACEMENTS,
        ),
        Option("min_qv", float, 0.0, "keep transcripts with qv >= this value"),
        Option("scale_factors", tuple, (2, 2, 2, 2), "pyramid factors for rasters without a stored pyramid"),
        Option("pixel_coordinate_system", str, "pixels", "name of the morphology pixel coordinate system"),
    ),
)
