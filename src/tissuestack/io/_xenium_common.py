"""Xenium bundle layout: file names, the run metadata (experiment.xenium), version checks and small helpers
shared by the element readers of :mod:`tissuestack.io._xenium`."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tissuestack.errors import ReaderError
from tissuestack.transforms import BaseTransformation, Identity, Scale

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
