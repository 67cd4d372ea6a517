"""NanoString / Bruker CosMx SMI flat-file exports: per-FOV images and cell labels, transcripts, cell polygons and
the cell table, placed in one ``global`` coordinate system in µm.

Two layouts are read (``docs/vendors.md`` §5):

* **legacy flat files** (e.g. the public ``Lung5_Rep1`` release): uncompressed ``<id>_exprMat_file.csv``,
  ``<id>_metadata_file.csv``, ``<id>_fov_positions_file.csv`` (``fov, x_global_px, y_global_px``),
  ``<id>_tx_file.csv``, RGB composites ``CellComposite/CellComposite_F<fff>.jpg`` and labels
  ``CellLabels/CellLabels_F<fff>.tif``;
* **AtoMx exports**: the same tables gzipped (``.csv.gz``), FOV positions with ``FOV`` and/or millimetre columns
  (``x_global_mm``, ``y_global_mm``; mm -> px is ``x 1000 / pixel size``), extra ``cell`` / ``cell_id`` columns,
  multi-channel ``Morphology2D/<id>_F<fff>.TIF`` images (channel names from the JSON ImageDescription:
  ``ChannelOrder`` letters mapped through ``ChannelId`` -> ``BiologicalTarget``), labels possibly nested
  (``CellStatsDir/.../CellLabels_F<fff>.tif``) and cell polygons ``<id>-polygons.csv(.gz)``.

Anything else (no ``<id>_*_file.csv[.gz]`` at the top of the folder) raises a :class:`ReaderError` that lists what
was found and what is supported.

Elements (FOV numbers without leading zeros, as the reference reader names them):

* images ``<fov>_image`` (c, y, x) and labels ``<fov>_labels`` per FOV, lazy, pixels as stored (no copy is flipped);
* points ``<id>_transcripts`` (all FOVs; or ``<fov>_points`` per FOV with ``transcripts_per_fov=True``):
  ``x``/``y`` = ``x_global_px``/``y_global_px``, ``target`` categorical, ``z`` renamed ``z_raw`` (a slice index;
  points stay 2D), ``cell_ID`` the instance key of the per-FOV elements;
* shapes ``<id>_polygons`` (AtoMx polygons file), indexed like the table's rows, ``"<cell_ID>_<fov>"``;
* table ``table``: ``exprMat`` counts (without the ``cell_ID`` 0 background rows) joined with the metadata on
  (fov, cell_ID); obs index ``"<cell_ID>_<fov>"``, ``fov`` categorical, ``region_key="fov_labels"`` (``<fov>_labels``)
  and ``instance_key="cell_ID"`` (the label value), so every row annotates its cell in its FOV's labels;
  ``obsm["spatial"]`` = the global centre in µm (the ``global`` coordinate system), ``obsm["spatial_local_px"]`` =
  the FOV-local centre in pixels.

Coordinates: pixels are ``pixel_size_um`` (0.120280945) µm. Transcripts and polygons are in global pixels
(``Scale(pixel_size_um)`` to ``global``). The y of global (and FOV-local) pixel coordinates runs bottom-up while
image rows run top-down, so with ``flip_y=True`` (what the reference reader and Sopa do) image pixel
``(column c, row r)`` of a FOV of height ``H`` at origin ``(X0, Y0)`` lands at global pixel ``(X0 + c, Y0 + H - r)``:
an affine with a negative y scale instead of a flipped copy of the pixels. Some AtoMx exports list FOV origins
one FOV height too high (the "one-FOV shift"); then images go to ``Y0 - H``. Left to ``None``, ``flip_y`` and
``fov_shift`` are decided from the data: one FOV's label image is read and the placement that puts its cells'
pixel centroids on the metadata's global centres is taken (a warning when none fits within 3 px); without labels
or metadata, ``flip_y`` defaults to ``True`` and the shift is detected from the metadata alone (cells lying below
their FOV's listed origin).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._common import frame_columns, lazy_frame, spill_csv_to_parquet
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._merscope import (
    categorical_with,
    check_csv_tail,
    natural_key,
    pyramid_factors,
)
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["PIXEL_SIZE_UM", "TECHNOLOGY", "cosmx", "iter_cosmx"]

PIXEL_SIZE_UM = 0.120280945
COUNTS_SUFFIX = "exprMat_file"
METADATA_SUFFIX = "metadata_file"
FOV_SUFFIX = "fov_positions_file"
TRANSCRIPTS_SUFFIX = "tx_file"
POLYGONS_SUFFIX = "-polygons"
FLAT_SUFFIXES = (COUNTS_SUFFIX, METADATA_SUFFIX, FOV_SUFFIX, TRANSCRIPTS_SUFFIX)
COMPOSITE_DIR = "CellComposite"
MORPHOLOGY_DIR = "Morphology2D"
LABELS_DIR = "CellLabels"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FOV_PATTERN = re.compile(r"_F(\d+)", re.IGNORECASE)
TABLE_NAME = "table"
REGION_KEY = "fov_labels"
INSTANCE_KEY = "cell_ID"
FOV_KEY = "fov"
TARGET_KEY = "target"
_ID_COLUMNS = ("fov", "cell_ID", "cell", "cell_id")
_TX_DTYPES = {
    "fov": "int64",
    "cell_ID": "int64",
    "x_global_px": "float64",
    "y_global_px": "float64",
    "x_local_px": "float64",
    "y_local_px": "float64",
    "target": "object",
    "CellComp": "object",
}


# ------------------------------------------------------------------------------------------------------------
# finding the files
# ------------------------------------------------------------------------------------------------------------


def _flat_file(path: Path, dataset_id: str, suffix: str) -> Path | None:
    for ext in (".csv", ".csv.gz"):
        file = path / f"{dataset_id}_{suffix}{ext}"
        if file.is_file():
            return file
    return None


def _infer_dataset_id(path: Path) -> str:
    prefixes: dict[str, set[str]] = {}
    for file in path.iterdir():
        for suffix in FLAT_SUFFIXES:
            match = re.match(rf"^(.+)_{suffix}\.csv(\.gz)?$", file.name)
            if match and file.is_file():
                prefixes.setdefault(match.group(1), set()).add(suffix)
    if len(prefixes) == 1:
        return next(iter(prefixes))
    if len(prefixes) > 1:
        raise ReaderError(
            f"{path}: flat files of several datasets ({', '.join(sorted(prefixes))}); pass dataset_id to choose one"
        )
    listing = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    hint = ""
    if any(n.endswith(("_tx_file.parquet", ".parquet")) for n in listing):
        hint = " Parquet exports are not supported."
    elif any(n.lower().endswith((".rds", ".h5ad", ".h5seurat")) for n in listing):
        hint = (
            " Seurat / AnnData objects exported by AtoMx are not flat files; read them with their own tools."
        )
    raise ReaderError(
        f"{path}: no CosMx flat files found (expected <dataset_id>_exprMat_file, _metadata_file, "
        f"_fov_positions_file and _tx_file as .csv or .csv.gz); the folder holds {listing[:15]}"
        f"{' ...' if len(listing) > 15 else ''}. Supported layouts: legacy flat files (uncompressed CSVs, "
        f"CellComposite/, CellLabels/) and AtoMx flat-file exports (.csv.gz, Morphology2D/, CellStatsDir/).{hint}"
    )


def _fov_of(file: Path) -> int | None:
    match = FOV_PATTERN.findall(file.stem)
    return int(match[-1]) if match else None


def _fov_files(files: Sequence[Path], what: str) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for file in sorted(files, key=lambda f: natural_key(str(f))):
        fov = _fov_of(file)
        if fov is None:
            continue
        if fov in out:
            raise ReaderError(
                f"{file}: a second {what} for FOV {fov} (the first is {out[fov]}); expected one per FOV"
            )
        out[fov] = file
    return out


def _image_files(path: Path, source: str) -> tuple[str, dict[int, Path]]:
    """('morphology' | 'composite' | 'none', fov -> file)."""
    wanted = ("morphology", "composite") if source == "auto" else (source,)
    for kind in wanted:
        name = MORPHOLOGY_DIR if kind == "morphology" else COMPOSITE_DIR
        folder = path / name
        if not folder.is_dir():  # AtoMx raw-file exports nest it (e.g. <run>/CellStatsDir/Morphology2D)
            nested = sorted(p for p in path.rglob(name) if p.is_dir())
            if len(nested) > 1:
                raise ReaderError(
                    f"{path}: several {name} folders ({', '.join(str(p) for p in nested[:5])}); expected one"
                )
            folder = nested[0] if nested else folder
        if folder.is_dir():
            files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
            return kind, _fov_files(files, f"{folder.name} image")
        if source != "auto":
            raise ReaderError(f"{folder}: image folder not found (image_source={source!r})")
    return "none", {}


def _label_files(path: Path) -> dict[int, Path]:
    folder = path / LABELS_DIR
    if folder.is_dir():
        files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in (".tif", ".tiff", ".png")]
    else:  # AtoMx: nested, e.g. CellStatsDir/FOV001/CellLabels_F001.tif
        files = [
            f for f in path.rglob("CellLabels_F*") if f.is_file() and f.suffix.lower() in (".tif", ".tiff")
        ]
    return _fov_files(files, "labels file")


# ------------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------------


def _read_csv(file: Path, what: str, **kwargs: Any) -> pd.DataFrame:
    check_csv_tail(file, what)
    try:
        return pd.read_csv(file, compression="infer", **kwargs)
    except (
        ValueError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        EOFError,
    ) as err:
        raise ReaderError(
            f"{file}: cannot read the {what} (expected a CSV file with a header): {err}"
        ) from err


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], file: Path, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReaderError(
            f"{file}: the {what} lacks the column(s) {missing}; expected {list(columns)} (the file has "
            f"{list(frame.columns)[:15]})"
        )


def read_fov_positions(file: Path, pixel_size_um: float) -> pd.DataFrame:
    """FOV origins in global pixels: a frame indexed by FOV number with columns ``x``, ``y`` (px)."""
    frame = _read_csv(file, "FOV positions")
    frame.columns = [str(c).strip() for c in frame.columns]
    lower = {c.lower(): c for c in frame.columns}
    if "fov" not in lower:
        raise ReaderError(f"{file}: no 'fov' (or 'FOV') column; expected the FOV number and its origin")
    for xk, yk, factor in (
        ("x_global_px", "y_global_px", 1.0),
        ("x_global_mm", "y_global_mm", 1000.0 / pixel_size_um),
        ("x_mm", "y_mm", 1000.0 / pixel_size_um),
    ):
        if xk in lower and yk in lower:
            x = pd.to_numeric(frame[lower[xk]], errors="coerce").to_numpy(dtype=np.float64) * factor
            y = pd.to_numeric(frame[lower[yk]], errors="coerce").to_numpy(dtype=np.float64) * factor
            fov = pd.to_numeric(frame[lower["fov"]], errors="coerce")
            if fov.isna().any() or not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise ReaderError(
                    f"{file}: non-numeric FOV numbers or positions; expected numbers in every row"
                )
            out = pd.DataFrame({"x": x, "y": y}, index=pd.Index(fov.astype(np.int64).to_numpy(), name="fov"))
            if not out.index.is_unique:
                raise ReaderError(f"{file}: FOV numbers are repeated; expected one row per FOV")
            return out
    raise ReaderError(
        f"{file}: no FOV origin columns; expected x_global_px/y_global_px, x_global_mm/y_global_mm or x_mm/y_mm "
        f"(the file has {list(frame.columns)})"
    )


def _composite_index(fov: pd.Series, cell: pd.Series) -> pd.Index:
    return pd.Index(cell.astype(np.int64).astype(str) + "_" + fov.astype(np.int64).astype(str))


def _read_metadata(file: Path) -> pd.DataFrame:
    meta = _read_csv(file, "cell metadata")
    _require_columns(meta, (FOV_KEY, INSTANCE_KEY), file, "cell metadata")
    for column in (FOV_KEY, INSTANCE_KEY):
        if not pd.api.types.is_integer_dtype(meta[column]):
            raise ReaderError(f"{file}: column {column!r} has dtype {meta[column].dtype}; expected integers")
    if "cell_id" in meta.columns:
        # AtoMx adds a string ``cell_id`` next to ``cell_ID``; names equal but for case clash in stores
        meta = meta.rename(columns={"cell_id": "atomx_cell_id"})
    meta = meta[meta[INSTANCE_KEY] != 0]
    meta.index = _composite_index(meta[FOV_KEY], meta[INSTANCE_KEY])
    if not meta.index.is_unique:
        dup = meta.index[meta.index.duplicated()][:5].tolist()
        raise ReaderError(f"{file}: (cell_ID, fov) pairs are repeated ({dup}); expected one row per cell")
    return meta


def detect_fov_shift(meta: pd.DataFrame | None, positions: pd.DataFrame) -> bool:
    """Whether FOV origins are listed one FOV too high: for most FOVs, most cells lie below the listed ``y``."""
    if meta is None or "CenterY_global_px" not in meta.columns:
        return False
    med = meta.groupby(FOV_KEY)["CenterY_global_px"].median()
    med = med[med.index.isin(positions.index)]
    if med.empty:
        return False
    below = med.to_numpy() < positions.loc[med.index, "y"].to_numpy()
    return bool(below.mean() > 0.5)


def placement_from_labels(
    file: Path,
    fov: int,
    meta: pd.DataFrame,
    origin: tuple[float, float],
    *,
    flip_y: bool | None,
    shift: bool | None,
) -> tuple[bool, bool, float] | None:
    """Which placement (``flip_y``, ``fov_shift``) puts the cells of one FOV's labels on their metadata centres.

    Reads that one label image, takes each cell's pixel centroid, maps it under every candidate placement (the
    unset options are tried both ways) and returns the best one with its median error in pixels; ``None`` when
    the FOV has fewer than 3 cells in both the labels and the metadata.
    """
    from tissuestack.io._tiff import open_tiff

    rows_meta = meta[meta[FOV_KEY] == fov]
    arr, axes = open_tiff(file)
    arr = arr[tuple(slice(None) if ax in "YX" else 0 for ax in axes)]
    labels = np.asarray(arr.compute())
    height = labels.shape[0]
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols].astype(np.int64)
    if len(ids) == 0:
        return None
    n = np.bincount(ids)
    cx = np.bincount(ids, cols + 0.5) / np.maximum(n, 1)
    cy = np.bincount(ids, rows + 0.5) / np.maximum(n, 1)
    cell = rows_meta[INSTANCE_KEY].to_numpy(np.int64)
    ok = (cell > 0) & (cell < len(n))
    ok[ok] = n[cell[ok]] > 0
    if ok.sum() < 3:
        return None
    cell = cell[ok]
    gx = rows_meta["CenterX_global_px"].to_numpy(np.float64)[ok]
    gy = rows_meta["CenterY_global_px"].to_numpy(np.float64)[ok]
    best: tuple[bool, bool, float] | None = None
    for flip in (True, False) if flip_y is None else (bool(flip_y),):
        for sh in (False, True) if shift is None else (bool(shift),):
            base = origin[1] - (height if sh else 0)
            py = base + (height - cy[cell] if flip else cy[cell])
            error = float(np.median(np.hypot(origin[0] + cx[cell] - gx, py - gy)))
            if best is None or error < best[2] - 1e-9:
                best = (flip, sh, error)
    return best


def _table(
    counts_file: Path, meta: pd.DataFrame, metadata_file: Path, fovs: set[int], pixel_size_um: float
) -> tuple[Any, list[int]]:
    import anndata as ad
    import scipy.sparse as sp

    from tissuestack.elements import TableModel

    counts = _read_csv(counts_file, "expression matrix")
    _require_columns(counts, (FOV_KEY, INSTANCE_KEY), counts_file, "expression matrix")
    counts = counts[(counts[INSTANCE_KEY] != 0) & counts[FOV_KEY].isin(fovs)]
    counts.index = _composite_index(counts[FOV_KEY], counts[INSTANCE_KEY])
    targets = [c for c in counts.columns if c not in _ID_COLUMNS]
    non_numeric = [c for c in targets if not pd.api.types.is_numeric_dtype(counts[c])]
    if non_numeric:
        raise ReaderError(
            f"{counts_file}: column(s) {non_numeric[:5]} are not numeric; expected fov, cell_ID and one count "
            "column per target"
        )
    meta = meta[meta[FOV_KEY].isin(fovs)]
    common = counts.index.intersection(meta.index, sort=False)
    if len(common) < len(counts):
        warnings.warn(
            f"{metadata_file}: {len(counts) - len(common)} cells of {counts_file.name} have no metadata row and "
            "are left out of the table",
            UserWarning,
            stacklevel=3,
        )
    counts = counts.loc[common]
    obs = meta.loc[common].copy()
    values = counts[targets].to_numpy()
    if np.issubdtype(values.dtype, np.integer) and (
        values.size == 0 or values.max() <= np.iinfo(np.int32).max
    ):
        values = values.astype(np.int32)
    fov_values = obs[FOV_KEY].astype(np.int64)
    obs[FOV_KEY] = pd.Categorical(
        fov_values.astype(str), categories=[str(f) for f in sorted(set(fov_values))]
    )
    obs[REGION_KEY] = pd.Categorical(fov_values.astype(str) + "_labels")
    obs[INSTANCE_KEY] = obs[INSTANCE_KEY].astype(np.int64)
    adata = ad.AnnData(sp.csr_matrix(values), obs=obs, var=pd.DataFrame(index=pd.Index(targets, dtype=str)))
    if {"CenterX_global_px", "CenterY_global_px"} <= set(obs.columns):
        adata.obsm["spatial"] = (
            obs[["CenterX_global_px", "CenterY_global_px"]].to_numpy(np.float64) * pixel_size_um
        )
    if {"CenterX_local_px", "CenterY_local_px"} <= set(obs.columns):
        adata.obsm["spatial_local_px"] = obs[["CenterX_local_px", "CenterY_local_px"]].to_numpy(np.float64)
    present = sorted(set(fov_values.tolist()))
    try:
        table = TableModel.parse(
            adata,
            region=[f"{f}_labels" for f in present],
            region_key=REGION_KEY,
            instance_key=INSTANCE_KEY,
            name=TABLE_NAME,
        )
    except ValidationError as err:
        raise ReaderError(f"{counts_file}: {err}") from err
    return table, targets


# ------------------------------------------------------------------------------------------------------------
# rasters
# ------------------------------------------------------------------------------------------------------------


def morphology_channel_names(description: str | None) -> list[str] | None:
    """Channel names of an AtoMx Morphology2D TIFF from its ImageDescription: each letter of ``ChannelOrder``
    mapped through the ``ChannelId`` -> ``BiologicalTarget`` pairs (the letter itself when unmapped)."""
    if not description:
        return None
    order: str | None = None
    pairs: dict[str, str] = {}
    try:
        data = json.loads(description)
    except ValueError:
        data = None
    if data is not None:
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if isinstance(item.get("ChannelOrder"), str) and order is None:
                    order = item["ChannelOrder"]
                cid, target = item.get("ChannelId"), item.get("BiologicalTarget")
                if isinstance(cid, str) and isinstance(target, str):
                    pairs.setdefault(cid, target)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    else:  # not strict JSON: pick the fields out of the text
        found = re.findall(r'"ChannelOrder"\s*:\s*"([^"]*)"', description)
        order = found[0] if found else None
        ids = re.findall(r'"ChannelId"\s*:\s*"([^"]*)"', description)
        targets = re.findall(r'"BiologicalTarget"\s*:\s*"([^"]*)"', description)
        pairs = dict(zip(ids, targets, strict=False))
    if not order:
        return None
    names = [pairs.get(letter, letter) for letter in order]
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # channel names must be unique
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name] - 1}")
    return unique


def _raster_size(file: Path) -> tuple[int, int]:
    """(height, width) of a TIFF / JPEG / PNG, from its header."""
    if file.suffix.lower() in (".tif", ".tiff"):
        from tissuestack.io._tiff import tiff_metadata

        meta = tiff_metadata(file)
        dims = dict(zip(meta.axes, meta.shape, strict=True))
        return int(dims["Y"]), int(dims["X"])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError) as err:
        raise ReaderError(
            f"{file}: cannot read the image (expected a JPEG, PNG or TIFF file): {err}"
        ) from err
    return int(height), int(width)


def fov_affine(x0: float, y0: float, height: int, *, pixel_size_um: float, flip_y: bool, shift: bool) -> Any:
    """Image pixel (x = column, y = row) of one FOV -> global µm."""
    from tissuestack.transforms import Affine

    s = pixel_size_um
    base = y0 - (height if shift else 0)
    if flip_y:
        matrix = [[s, 0.0, s * x0], [0.0, -s, s * (base + height)], [0.0, 0.0, 1.0]]
    else:
        matrix = [[s, 0.0, s * x0], [0.0, s, s * base], [0.0, 0.0, 1.0]]
    return Affine(matrix, ("x", "y"), ("x", "y"))


def _image_element(file: Path, kind: str, transform: Any, name: str, pyramid: bool) -> Any:
    from tissuestack.elements import Image2DModel

    height, width = _raster_size(file)
    factors = pyramid_factors(height, width) if pyramid else None
    if file.suffix.lower() in (".tif", ".tiff"):
        from tissuestack.io._tiff import tiff_metadata, tiff_to_element

        names = None
        if kind == "morphology":
            import tifffile

            try:
                with tifffile.TiffFile(file) as tif:
                    names = morphology_channel_names(tif.pages[0].description)
            except Exception as err:  # tifffile raises several types for broken files
                raise ReaderError(f"{file}: not a readable TIFF file: {err}") from err
            meta = tiff_metadata(file)
            n_channels = int(
                np.prod([n for ax, n in zip(meta.axes, meta.shape, strict=True) if ax not in "YX"])
            )
            if names is not None and len(names) != n_channels:
                warnings.warn(
                    f"{file}: the ImageDescription names {len(names)} channels ({names}) but the image has "
                    f"{n_channels}; keeping numbered channels",
                    UserWarning,
                    stacklevel=3,
                )
                names = None
        return tiff_to_element(
            file,
            kind="image",
            channel_names=names,
            transformations={"global": transform},
            scale_factors=factors,
            name=name,
        )
    from tissuestack.io._visium import pil_image_array

    data, dims = pil_image_array(file)
    try:
        return Image2DModel.parse(
            data, dims=dims, transformations={"global": transform}, scale_factors=factors, name=name
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _labels_element(file: Path, transform: Any, name: str, pyramid: bool) -> Any:
    from tissuestack.io._tiff import tiff_to_element

    if file.suffix.lower() not in (".tif", ".tiff"):
        raise ReaderError(f"{file}: cell labels must be a TIFF file")
    height, width = _raster_size(file)
    return tiff_to_element(
        file,
        kind="labels",
        transformations={"global": transform},
        scale_factors=pyramid_factors(height, width) if pyramid else None,
        name=name,
    )


# ------------------------------------------------------------------------------------------------------------
# transcripts and polygons
# ------------------------------------------------------------------------------------------------------------


def _transcripts_frame(file: Path) -> tuple[Any, list[str]]:
    columns = frame_columns(file)
    required = (FOV_KEY, "x_global_px", "y_global_px", TARGET_KEY)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ReaderError(
            f"{file}: the transcripts lack the column(s) {missing}; expected {list(required)} (the file has {columns})"
        )
    dtype = {c: t for c, t in _TX_DTYPES.items() if c in columns}
    if file.name.lower().endswith(".gz"):
        # a compressed CSV cannot be split: decode it once, in chunks, into a temporary Parquet file
        ddf = spill_csv_to_parquet(file, columns=None, dtype=dtype, sep=",")
    else:
        check_csv_tail(file, "transcripts file")
        ddf = lazy_frame(file, dtype=dtype)
    if "CellComp" in columns:  # pandas reads the compartment "None" as missing: put it back
        ddf = ddf.assign(CellComp=ddf["CellComp"].fillna("None"))
    rename = {"z": "z_raw"} if "z" in columns else {}
    if "cell_id" in columns:
        rename["cell_id"] = "atomx_cell_id"
    if rename:
        ddf = ddf.rename(columns=rename)
    return ddf, [rename.get(c, c) for c in columns]


def _points_element(ddf: Any, file: Path, instance_key: str | None, pixel_size_um: float, name: str) -> Any:
    from tissuestack.elements import PointsModel
    from tissuestack.transforms import Scale

    try:
        return PointsModel.parse(
            ddf,
            coordinates={"x": "x_global_px", "y": "y_global_px"},
            feature_key=TARGET_KEY,
            instance_key=instance_key,
            transformations={"global": Scale([pixel_size_um, pixel_size_um], axes=("x", "y"))},
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _polygons_element(file: Path, fovs: set[int], pixel_size_um: float, name: str) -> Any:
    import geopandas as gpd
    import shapely

    from tissuestack.elements import ShapesModel
    from tissuestack.transforms import Scale

    frame = _read_csv(file, "cell polygons")
    if "cellID" in frame.columns and INSTANCE_KEY not in frame.columns:
        frame = frame.rename(columns={"cellID": INSTANCE_KEY})
    _require_columns(frame, (FOV_KEY, INSTANCE_KEY, "x_global_px", "y_global_px"), file, "cell polygons")
    frame = frame[frame[FOV_KEY].isin(fovs)]
    fov = frame[FOV_KEY].to_numpy(np.int64)
    cell = frame[INSTANCE_KEY].to_numpy(np.int64)
    key = fov * (int(cell.max(initial=0)) + 1) + cell
    order = np.argsort(key, kind="stable")  # vertices of a cell stay in file order
    key, fov, cell = key[order], fov[order], cell[order]
    coords = frame[["x_global_px", "y_global_px"]].to_numpy(np.float64)[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    ok = sizes >= 3
    if not ok.all():
        warnings.warn(
            f"{file}: {int((~ok).sum())} cell polygons have fewer than 3 vertices and are left out",
            UserWarning,
            stacklevel=3,
        )
    ring = np.repeat(np.arange(len(starts)), sizes)
    keep = ok[ring]
    ring_ids = np.cumsum(ok) - 1
    polygons = shapely.polygons(shapely.linearrings(coords[keep], indices=ring_ids[ring[keep]]))
    first = starts[ok]
    index = _composite_index(pd.Series(fov[first]), pd.Series(cell[first]))
    shapes = gpd.GeoDataFrame(
        {FOV_KEY: fov[first], INSTANCE_KEY: cell[first]}, geometry=gpd.GeoSeries(polygons), crs=None
    )
    shapes.index = index
    try:
        return ShapesModel.parse(
            shapes,
            transformations={"global": Scale([pixel_size_um, pixel_size_um], axes=("x", "y"))},
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


# ------------------------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------------------------


def _choose_placement(
    path: Path,
    meta: pd.DataFrame | None,
    positions: pd.DataFrame,
    fovs: set[int],
    label_files: dict[int, Path],
    flip_y: bool | None,
    fov_shift: bool | None,
) -> tuple[bool, bool]:
    """Resolve ``flip_y`` / ``fov_shift`` left to ``None``: from one FOV's labels against the metadata centres when
    both exist (a warning when no candidate fits), else the defaults (flip; shift from the metadata alone)."""
    default = (
        True if flip_y is None else bool(flip_y),
        detect_fov_shift(meta, positions) if fov_shift is None else bool(fov_shift),
    )
    if meta is None or not {"CenterX_global_px", "CenterY_global_px"} <= set(meta.columns):
        return default
    if not label_files:
        label_files = _label_files(path)
    counts = meta[FOV_KEY].value_counts()
    for fov in sorted(f for f in fovs if f in label_files and f in positions.index and counts.get(f, 0) >= 3):
        origin = (float(positions.loc[fov, "x"]), float(positions.loc[fov, "y"]))
        found = placement_from_labels(label_files[fov], fov, meta, origin, flip_y=flip_y, shift=fov_shift)
        if found is None:
            continue
        flip, shift, error = found
        if error > 3.0:
            warnings.warn(
                f"{label_files[fov]}: no placement of FOV {fov} puts its cells on the metadata centres (best: "
                f"flip_y={flip}, fov_shift={shift}, median error {error:.1f} px); check the export, or pass flip_y "
                "and fov_shift",
                UserWarning,
                stacklevel=3,
            )
        return flip, shift
    return default


@with_folder_hints('cosmx')
def iter_cosmx(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    transcripts: bool = True,
    transcripts_per_fov: bool = False,
    images: bool = True,
    labels: bool = True,
    polygons: bool = True,
    table: bool = True,
    fovs: int | Sequence[int] | None = None,
    image_source: str = "auto",
    pixel_size_um: float = PIXEL_SIZE_UM,
    flip_y: bool | None = None,
    fov_shift: bool | None = None,
    scan_features: bool = False,
    pyramid: bool = True,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a CosMx flat-file export: per-FOV images and labels, transcripts, polygons, then the
    table. Parameters are those of :func:`cosmx`; every file is located and the small tables are read before the
    first element is yielded."""
    from tissuestack.elements import sanitize_name

    path = Path(path)
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a CosMx flat-file export folder")
    if image_source not in ("auto", "morphology", "composite"):
        raise ReaderError(f"image_source must be 'auto', 'morphology' or 'composite', got {image_source!r}")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ReaderError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    if dataset_id is None:
        dataset_id = _infer_dataset_id(path)
    files = {suffix: _flat_file(path, dataset_id, suffix) for suffix in FLAT_SUFFIXES}

    def need(suffix: str, why: str) -> Path:
        file = files[suffix]
        if file is None:
            raise ReaderError(
                f"{path}: {dataset_id}_{suffix}.csv (or .csv.gz) not found; it is needed for {why}"
            )
        return file

    positions_file = need(FOV_SUFFIX, "the FOV positions (placing every FOV)")
    positions = read_fov_positions(positions_file, pixel_size_um)
    wanted = set(positions.index.tolist())
    if fovs is not None:
        requested = {int(fovs)} if isinstance(fovs, int | np.integer) else {int(f) for f in fovs}
        unknown = sorted(requested - wanted)
        if unknown:
            raise ReaderError(
                f"{positions_file}: FOV(s) {unknown} are not listed; the export has {sorted(wanted)}"
            )
        wanted = requested

    meta = None
    if table or fov_shift is None or flip_y is None:
        metadata_file = files[METADATA_SUFFIX]
        if metadata_file is None and table:
            need(METADATA_SUFFIX, "the cell table (pass table=False to skip it)")
        if metadata_file is not None:
            meta = _read_metadata(metadata_file)

    counts_file = (
        need(COUNTS_SUFFIX, "the cell table (pass table=False to skip it)") if table else files[COUNTS_SUFFIX]
    )
    tx_file = need(TRANSCRIPTS_SUFFIX, "the transcripts (pass transcripts=False)") if transcripts else None
    polygons_file = None
    if polygons:
        for ext in (".csv", ".csv.gz"):
            if (path / f"{dataset_id}{POLYGONS_SUFFIX}{ext}").is_file():
                polygons_file = path / f"{dataset_id}{POLYGONS_SUFFIX}{ext}"
    image_kind, image_files = _image_files(path, image_source) if images else ("none", {})
    label_files = _label_files(path) if labels else {}
    if images and not image_files:
        warnings.warn(
            f"{path}: no FOV images found (looked for {MORPHOLOGY_DIR}/ and {COMPOSITE_DIR}/); reading none",
            UserWarning,
            stacklevel=2,
        )
    if labels and not label_files:
        warnings.warn(
            f"{path}: no cell labels found (looked for {LABELS_DIR}/ and CellLabels_F*.tif below the folder); "
            "reading none",
            UserWarning,
            stacklevel=2,
        )
    flip, shift = (True if flip_y is None else bool(flip_y)), bool(fov_shift)
    if (flip_y is None or fov_shift is None) and (images or labels):
        flip, shift = _choose_placement(path, meta, positions, wanted, label_files, flip_y, fov_shift)
    unplaced = sorted((set(image_files) | set(label_files)) - set(positions.index))
    if unplaced:
        warnings.warn(
            f"{positions_file}: FOV(s) {unplaced[:10]} have images or labels but no position; they are skipped",
            UserWarning,
            stacklevel=2,
        )

    # --- the table first (its targets give the transcripts' categories), yielded last
    table_element, targets = None, None
    if table:
        assert counts_file is not None and meta is not None and files[METADATA_SUFFIX] is not None
        table_element, targets = _table(counts_file, meta, files[METADATA_SUFFIX], wanted, pixel_size_um)
    elif transcripts and not scan_features and counts_file is not None:
        targets = [c for c in frame_columns(counts_file) if c not in _ID_COLUMNS]

    for fov in sorted(wanted):
        x0, y0 = positions.loc[fov, "x"], positions.loc[fov, "y"]
        if fov in image_files:
            file = image_files[fov]
            height, _ = _raster_size(file)
            transform = fov_affine(x0, y0, height, pixel_size_um=pixel_size_um, flip_y=flip, shift=shift)
            yield f"{fov}_image", _image_element(file, image_kind, transform, f"{fov}_image", pyramid)
    for fov in sorted(wanted):
        x0, y0 = positions.loc[fov, "x"], positions.loc[fov, "y"]
        if fov in label_files:
            file = label_files[fov]
            height, _ = _raster_size(file)
            transform = fov_affine(x0, y0, height, pixel_size_um=pixel_size_um, flip_y=flip, shift=shift)
            yield f"{fov}_labels", _labels_element(file, transform, f"{fov}_labels", pyramid)

    if tx_file is not None:
        ddf, columns = _transcripts_frame(tx_file)
        if fovs is not None:
            ddf = ddf[ddf[FOV_KEY].isin(sorted(wanted))]
        if targets is not None and not scan_features:
            ddf = categorical_with(ddf, TARGET_KEY, targets, tx_file)
        if transcripts_per_fov:
            for fov in sorted(wanted):
                name = f"{fov}_points"
                part = ddf[ddf[FOV_KEY] == fov]
                instance = INSTANCE_KEY if INSTANCE_KEY in columns else None
                yield name, _points_element(part, tx_file, instance, pixel_size_um, name)
        else:
            name = sanitize_name(f"{dataset_id}_transcripts")
            instance = "cell" if "cell" in columns else None
            yield name, _points_element(ddf, tx_file, instance, pixel_size_um, name)

    if polygons_file is not None:
        name = sanitize_name(f"{dataset_id}_polygons")
        yield name, _polygons_element(polygons_file, wanted, pixel_size_um, name)
    if table_element is not None:
        yield TABLE_NAME, table_element


def cosmx(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    transcripts: bool = True,
    transcripts_per_fov: bool = False,
    images: bool = True,
    labels: bool = True,
    polygons: bool = True,
    table: bool = True,
    fovs: int | Sequence[int] | None = None,
    image_source: str = "auto",
    pixel_size_um: float = PIXEL_SIZE_UM,
    flip_y: bool | None = None,
    fov_shift: bool | None = None,
    scan_features: bool = False,
    pyramid: bool = True,
):
    """Read a NanoString / Bruker CosMx SMI flat-file export (legacy flat files or an AtoMx export).

    Parameters
    ----------
    path
        The export folder holding ``<dataset_id>_exprMat_file.csv[.gz]`` and the other flat files.
    dataset_id
        The file name prefix; default: inferred from the flat files (must be unique).
    transcripts
        Read ``<id>_tx_file.csv[.gz]`` (lazily; a gzipped file is decoded once, in chunks, into a temporary
        Parquet file).
    transcripts_per_fov
        One points element ``<fov>_points`` per FOV instead of one ``<id>_transcripts`` (each is a filter over the
        same file, so writing them re-reads it once per FOV: meant for few FOVs).
    images, labels, polygons, table
        Which elements to read (missing image / label folders only warn; polygons exist in AtoMx exports only).
    fovs
        Read only these FOVs (images, labels, transcripts, polygons and table rows).
    image_source
        ``"auto"`` (``Morphology2D/`` when present, else ``CellComposite/``), ``"morphology"`` or ``"composite"``.
    pixel_size_um
        µm per pixel (CosMx: 0.120280945).
    flip_y
        Whether image rows run against CosMx y (row ``r`` at local ``y = H - r``; true of the legacy and AtoMx
        exports seen so far). ``None``: decided from one FOV's labels against the cell metadata.
    fov_shift
        FOV origins listed one FOV height too high in y (some AtoMx exports). ``None``: decided like ``flip_y``
        (or from the metadata alone when there are no labels).
    scan_features
        Collect the transcript target categories with a pass over the file instead of taking them from the
        expression matrix header.
    pyramid
        Build lazy pyramids for the FOV images and labels (halvings down to ~512 px).

    Returns
    -------
    SpatialData
        Images ``<fov>_image``, labels ``<fov>_labels``, points ``<id>_transcripts`` (or ``<fov>_points``), shapes
        ``<id>_polygons`` and table ``table`` (annotating each FOV's labels by ``cell_ID``), all in the
        coordinate system ``global`` (µm).

    Raises
    ------
    ReaderError
        No CosMx flat files (the message lists what the folder holds and the supported layouts), or a file is
        missing, malformed or truncated, or a column is missing; the message names the file.
    """
    return collect(
        iter_cosmx(
            path,
            dataset_id=dataset_id,
            transcripts=transcripts,
            transcripts_per_fov=transcripts_per_fov,
            images=images,
            labels=labels,
            polygons=polygons,
            table=table,
            fovs=fovs,
            image_source=image_source,
            pixel_size_um=pixel_size_um,
            flip_y=flip_y,
            fov_shift=fov_shift,
            scan_features=scan_features,
            pyramid=pyramid,
        )
    )


TECHNOLOGY = Technology(
    name="cosmx",
    summary="NanoString/Bruker CosMx SMI flat files (legacy and AtoMx): per-FOV images and labels, transcripts, "
    "polygons, cell table, in µm",
    iter_elements=iter_cosmx,
    options=(
        Option("dataset_id", str, None, "file name prefix (default: inferred from the flat files)"),
        Option("transcripts", bool, True, "read the transcripts"),
        Option("transcripts_per_fov", bool, False, "one points element per FOV"),
        Option("images", bool, True, "read the FOV images"),
        Option("labels", bool, True, "read the FOV cell labels"),
        Option("polygons", bool, True, "read the cell polygons (AtoMx)"),
        Option("table", bool, True, "read the cell table"),
        Option("fovs", tuple, None, "read only these FOVs"),
        Option("image_source", str, "auto", "FOV images", choices=("auto", "morphology", "composite")),
        Option("pixel_size_um", float, PIXEL_SIZE_UM, "µm per pixel"),
        Option(
            "flip_y", bool, None, "image rows run against CosMx y (row r at y = H - r); default: detected"
        ),
        Option("fov_shift", bool, None, "FOV origins listed one FOV too high (default: detected)"),
        Option("scan_features", bool, False, "collect the transcript targets with a pass over the file"),
        Option("pyramid", bool, True, "build pyramids for the FOV images and labels"),
    ),
)
