"""Spatial Genomics seqFISH output folders: per-ROI DAPI image, segmentation, transcripts, cell boundaries and
the cell table.

Layout (``docs/vendors.md`` §6.6), one set of files per ROI prefix (ROIs are found by the
``_CellCoordinates.csv`` files)::

    <roi>_CellCoordinates.csv   label, area, center_x, center_y (µm)
    <roi>_CellxGene.csv         unnamed first column = cell label, one count column per gene
    <roi>_DAPI.tiff             OME-TIFF; Pixels@PhysicalSizeX/Y = µm per pixel
    <roi>_Segmentation.tiff     cell labels
    <roi>_TranscriptList.csv    x, y (µm), optional z, name, optional cell
    <roi>_Boundaries.geojson    one polygon per cell, in pixels, in the order of the cell table

Elements, in one coordinate system per ROI, named ``<roi>``, in µm:

* image ``<roi>_DAPI`` and labels ``<roi>_Segmentation`` (lazy), ``Scale`` by the physical pixel size (y and x
  kept apart; the reference reader swaps them, which only matters for non-square pixels);
* points ``<roi>_TranscriptList`` (lazy over the CSV; feature ``name``, instance ``cell``; ``z`` when present);
* shapes ``<roi>_Boundaries`` (indexed by the cell labels, ``Scale`` by the pixel size) and, with
  ``cells_as_circles=True``, circles ``<roi>_CellCoordinates`` (centres in µm, radius ``sqrt(area / pi)``);
* table ``table_<roi>``: counts (sparse), ``obs`` ``area``, ``region`` and ``instance_id`` (the cell label, an
  int64: the reference's uint16 wraps above 65535 cells), ``obsm["spatial"]`` = centres in µm; it annotates
  ``<roi>_Segmentation`` (or, when the labels are not read, ``<roi>_Boundaries`` or the circles). Cells are matched between CellxGene and CellCoordinates by label, not by row order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._common import frame_columns, lazy_frame
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._merscope import categorical_with, check_csv_tail, natural_key, read_csv_frame
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "iter_seqfish", "seqfish"]

CELLS_SUFFIX = "_CellCoordinates.csv"
COUNTS_SUFFIX = "_CellxGene.csv"
DAPI_SUFFIX = "_DAPI.tiff"
LABELS_SUFFIX = "_Segmentation.tiff"
TRANSCRIPTS_SUFFIX = "_TranscriptList.csv"
BOUNDARIES_SUFFIX = "_Boundaries.geojson"
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
FEATURE_KEY = "name"
CELL_KEY = "cell"
#: images and labels above this many pixels get a 3-level pyramid (as the reference reader)
LARGE_IMAGE_PIXELS = 100_000_000


def _rois(path: Path) -> list[str]:
    found = [
        f.name[: -len(CELLS_SUFFIX)] for f in path.iterdir() if f.name.endswith(CELLS_SUFFIX) and f.is_file()
    ]
    return sorted(found, key=natural_key)


def _require(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise ReaderError(f"{path}: {what} not found{hint}")
    return path


def _pixel_size(dapi: Path | None, override: float | None) -> tuple[float, float]:
    from tissuestack.io._tiff import tiff_metadata

    if override is not None:
        if not (np.isfinite(override) and override > 0):
            raise ReaderError(f"pixel_size must be a positive number of µm per pixel, got {override!r}")
        return float(override), float(override)
    assert dapi is not None
    size = tiff_metadata(dapi).pixel_size_um
    if size is None:
        raise ReaderError(
            f"{dapi}: no physical pixel size; expected OME-XML Pixels@PhysicalSizeX/PhysicalSizeY (µm per pixel), "
            "or pass pixel_size"
        )
    return size


def _cells(cells_file: Path, counts_file: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts indexed by label, cell coordinates in the same order)."""
    coords = read_csv_frame(cells_file, "cell coordinates")
    missing = [c for c in ("label", "area", "center_x", "center_y") if c not in coords.columns]
    if missing:
        raise ReaderError(
            f"{cells_file}: no column(s) {missing}; expected label, area, center_x, center_y (the file has "
            f"{list(coords.columns)[:10]})"
        )
    counts = read_csv_frame(counts_file, "cell by gene counts", index_col=0)
    for frame, file in ((coords.set_index("label"), cells_file), (counts, counts_file)):
        if not pd.api.types.is_integer_dtype(frame.index):
            raise ReaderError(
                f"{file}: the cell labels (first column) are not integers; expected label values"
            )
        if not frame.index.is_unique:
            dup = frame.index[frame.index.duplicated()][:5].tolist()
            raise ReaderError(f"{file}: cell labels are repeated ({dup}); expected one row per cell")
    non_numeric = [c for c in counts.columns if not pd.api.types.is_numeric_dtype(counts[c])]
    if non_numeric:
        raise ReaderError(
            f"{counts_file}: column(s) {non_numeric[:5]} are not numeric; expected the cell label in the first "
            "column and one count column per gene"
        )
    coords = coords.set_index("label")
    rows = coords.index.get_indexer(counts.index)
    if (rows < 0).any() or len(coords) != len(counts):
        extra = sorted(set(counts.index) ^ set(coords.index))[:5]
        raise ReaderError(
            f"{cells_file}: the cells differ from those of {counts_file.name} (labels {extra} in only one); "
            "expected the same cells in both files"
        )
    return counts, coords.iloc[rows]


def _table(roi: str, counts: pd.DataFrame, coords: pd.DataFrame, region: str, counts_file: Path) -> Any:
    import anndata as ad
    import scipy.sparse as sp

    from tissuestack.elements import TableModel

    values = counts.to_numpy()
    if np.issubdtype(values.dtype, np.integer) and (
        values.size == 0 or values.max() <= np.iinfo(np.int32).max
    ):
        values = values.astype(np.int32)
    labels = counts.index.to_numpy().astype(np.int64)
    obs = pd.DataFrame(
        {"area": coords["area"].to_numpy(dtype=np.float64)}, index=pd.Index(labels.astype(str), name=None)
    )
    adata = ad.AnnData(sp.csr_matrix(values), obs=obs, var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.obsm["spatial"] = coords[["center_x", "center_y"]].to_numpy(dtype=np.float64)
    adata.obs[REGION_KEY] = pd.Categorical([region] * adata.n_obs)
    adata.obs[INSTANCE_KEY] = labels
    name = f"table_{roi}"
    try:
        return TableModel.parse(
            adata, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=name
        )
    except ValidationError as err:
        raise ReaderError(f"{counts_file}: {err}") from err


def _transcripts(file: Path, roi: str, name: str, categories: Sequence[str] | None, blocksize: Any) -> Any:
    from tissuestack.elements import PointsModel
    from tissuestack.transforms import Identity

    columns = frame_columns(file)
    missing = [c for c in ("x", "y", FEATURE_KEY) if c not in columns]
    if missing:
        raise ReaderError(
            f"{file}: the transcripts lack the column(s) {missing}; expected x, y (µm), optional z, name, optional "
            f"cell (the file has {columns})"
        )
    check_csv_tail(file, "transcript list")
    dtype = {"x": "float64", "y": "float64", "z": "float64", FEATURE_KEY: "object", CELL_KEY: "int64"}
    ddf = lazy_frame(file, dtype={c: t for c, t in dtype.items() if c in columns}, blocksize=blocksize)
    if categories is not None:
        ddf = categorical_with(ddf, FEATURE_KEY, categories, file)
    coordinates = {"x": "x", "y": "y", **({"z": "z"} if "z" in columns else {})}
    try:
        return PointsModel.parse(
            ddf,
            coordinates=coordinates,
            feature_key=FEATURE_KEY,
            instance_key=CELL_KEY if CELL_KEY in columns else None,
            transformations={roi: Identity()},
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _boundaries(file: Path, labels: np.ndarray, scale: Any, name: str) -> Any:
    from tissuestack.elements import ShapesModel

    try:
        doc = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReaderError(f"{file}: not a readable GeoJSON document (truncated?): {err}") from err
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise ReaderError(f"{file}: expected a GeoJSON FeatureCollection of cell polygons")
    if len(features) != len(labels):
        raise ReaderError(
            f"{file}: {len(features)} polygons but the cell table has {len(labels)} cells; expected one polygon per "
            "cell, in table order"
        )
    try:
        shapes = ShapesModel.parse(doc, index=pd.Index(labels), transformations=scale, name=name)
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err
    return shapes


@with_folder_hints('seqfish')
def iter_seqfish(
    path: str | Path,
    *,
    rois: Sequence[str] | None = None,
    load_images: bool = True,
    load_labels: bool = True,
    load_points: bool = True,
    load_shapes: bool = True,
    cells_as_circles: bool = False,
    pixel_size: float | None = None,
    scan_features: bool = False,
    transcripts_blocksize: int | str | None = "64MiB",
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a seqFISH folder ROI by ROI: image, labels, transcripts, shapes, then the table.

    Parameters are those of :func:`seqfish`. Every file of every ROI is located before the first element is
    yielded.
    """
    from tissuestack.elements import ShapesModel
    from tissuestack.io._tiff import tiff_metadata, tiff_to_element
    from tissuestack.transforms import Identity, Scale

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(
            f"{path}: not a directory; expected a seqFISH output folder (<roi>{CELLS_SUFFIX}, ...)"
        )
    found = _rois(path)
    if not found:
        raise ReaderError(f"{path}: no <roi>{CELLS_SUFFIX} file; cannot find the ROIs of a seqFISH folder")
    if rois is None:
        selected = found
    else:
        selected = [str(r) for r in ([rois] if isinstance(rois, str) else rois)]
        unknown = [r for r in selected if r not in found]
        if unknown:
            raise ReaderError(f"{path}: ROI(s) {unknown} not found; the folder has the ROIs {found}")

    plans = []
    for roi in selected:
        files = {
            "cells": path / f"{roi}{CELLS_SUFFIX}",
            "counts": _require(path / f"{roi}{COUNTS_SUFFIX}", "cell by gene counts"),
            "dapi": _require(path / f"{roi}{DAPI_SUFFIX}", "DAPI image", " (it gives the pixel size)")
            if pixel_size is None or load_images
            else None,
            "labels": _require(
                path / f"{roi}{LABELS_SUFFIX}", "segmentation labels", " (pass load_labels=False)"
            )
            if load_labels
            else None,
            "transcripts": _require(
                path / f"{roi}{TRANSCRIPTS_SUFFIX}", "transcript list", " (pass load_points=False)"
            )
            if load_points
            else None,
            "boundaries": _require(
                path / f"{roi}{BOUNDARIES_SUFFIX}", "cell boundaries", " (pass load_shapes=False)"
            )
            if load_shapes
            else None,
        }
        check_csv_tail(files["cells"], "cell coordinates")
        check_csv_tail(files["counts"], "cell by gene counts")
        py, px = _pixel_size(files["dapi"], pixel_size)
        plans.append((roi, files, Scale([py, px], axes=("y", "x"))))

    for roi, files, scale in plans:
        counts, coords = _cells(files["cells"], files["counts"])
        transformation = {roi: scale}

        def factors(file: Path) -> tuple[int, ...] | None:
            shape = tiff_metadata(file).shape
            return (2, 2, 2) if int(np.prod(shape)) > LARGE_IMAGE_PIXELS else None

        if load_images:
            name = f"{roi}_DAPI"
            yield (
                name,
                tiff_to_element(
                    files["dapi"],
                    transformations=transformation,
                    scale_factors=factors(files["dapi"]),
                    name=name,
                ),
            )
        # the table annotates the labels, else the polygons, else the circles (the same instance ids)
        region = f"{roi}_Segmentation"
        if not load_labels and (load_shapes or cells_as_circles):
            region = f"{roi}_Boundaries" if load_shapes else f"{roi}_CellCoordinates"
        if load_labels:
            yield (
                region,
                tiff_to_element(
                    files["labels"],
                    kind="labels",
                    transformations=transformation,
                    scale_factors=factors(files["labels"]),
                    name=region,
                ),
            )
        if load_points:
            name = f"{roi}_TranscriptList"
            categories = None if scan_features else [str(c) for c in counts.columns]
            yield name, _transcripts(files["transcripts"], roi, name, categories, transcripts_blocksize)
        labels = counts.index.to_numpy().astype(np.int64)
        if load_shapes:
            name = f"{roi}_Boundaries"
            yield name, _boundaries(files["boundaries"], labels, transformation, name)
        if cells_as_circles:
            name = f"{roi}_CellCoordinates"
            area = coords["area"].to_numpy(dtype=np.float64)
            if (area < 0).any() or not np.isfinite(area).all():
                raise ReaderError(f"{files['cells']}: column 'area' holds negative or missing values")
            yield (
                name,
                ShapesModel.parse(
                    coords[["center_x", "center_y"]].to_numpy(dtype=np.float64),
                    radius=np.sqrt(area / np.pi),
                    index=pd.Index(labels),
                    transformations={roi: Identity()},
                    name=name,
                ),
            )
        yield f"table_{roi}", _table(roi, counts, coords, region, files["counts"])


def seqfish(
    path: str | Path,
    *,
    rois: Sequence[str] | None = None,
    load_images: bool = True,
    load_labels: bool = True,
    load_points: bool = True,
    load_shapes: bool = True,
    cells_as_circles: bool = False,
    pixel_size: float | None = None,
    scan_features: bool = False,
    transcripts_blocksize: int | str | None = "64MiB",
):
    """Read a Spatial Genomics seqFISH output folder.

    Parameters
    ----------
    path
        The folder holding the ``<roi>_*`` files.
    rois
        ROI prefixes to read (e.g. ``("Roi1",)``); default all, found by the ``<roi>_CellCoordinates.csv`` files.
    load_images, load_labels, load_points, load_shapes
        Read the DAPI images, the segmentation labels, the transcripts, the cell boundaries.
    cells_as_circles
        Also read the cells as circles (``<roi>_CellCoordinates``: centres, radius ``sqrt(area / pi)``).
    pixel_size
        µm per pixel of the images, labels and boundaries; default ``PhysicalSizeY``/``PhysicalSizeX`` of the DAPI
        OME-XML (an error if absent).
    scan_features
        Collect the transcript genes with one pass over each file instead of taking them from the CellxGene header
        (needed only if the transcripts hold genes the counts do not).
    transcripts_blocksize
        Bytes of CSV per partition of the lazy transcripts.

    Returns
    -------
    SpatialData
        Per ROI: ``<roi>_DAPI``, ``<roi>_Segmentation``, ``<roi>_TranscriptList``, ``<roi>_Boundaries`` (and
        ``<roi>_CellCoordinates``) in the coordinate system ``<roi>`` (µm), and ``table_<roi>`` annotating
        ``<roi>_Segmentation`` by ``instance_id`` (without labels: the boundaries, else the circles).

    Raises
    ------
    ReaderError
        A file is missing, truncated or has the wrong columns, the cells of the two tables differ, the pixel size
        is unknown, or the boundaries do not match the cells; the message names the file.
    """
    return collect(
        iter_seqfish(
            path,
            rois=rois,
            load_images=load_images,
            load_labels=load_labels,
            load_points=load_points,
            load_shapes=load_shapes,
            cells_as_circles=cells_as_circles,
            pixel_size=pixel_size,
            scan_features=scan_features,
            transcripts_blocksize=transcripts_blocksize,
        )
    )


TECHNOLOGY = Technology(
    name="seqfish",
    summary="Spatial Genomics seqFISH folder: per-ROI DAPI image, segmentation, transcripts, cell boundaries (and "
    "circles) and a table per ROI, in µm per ROI coordinate system",
    iter_elements=iter_seqfish,
    options=(
        Option("rois", tuple, None, "ROI prefixes to read (default: all)"),
        Option("load_images", bool, True, "read the DAPI images"),
        Option("load_labels", bool, True, "read the segmentation labels"),
        Option("load_points", bool, True, "read the transcripts"),
        Option("load_shapes", bool, True, "read the cell boundaries"),
        Option("cells_as_circles", bool, False, "also read the cells as circles"),
        Option("pixel_size", float, None, "µm per pixel (default: from the DAPI OME-XML)"),
        Option("scan_features", bool, False, "collect the transcript genes with a pass over each file"),
    ),
)
