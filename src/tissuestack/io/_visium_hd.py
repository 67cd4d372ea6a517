"""10x Genomics Visium HD (Space Ranger 3.x / 4.x ``outs/`` folder): every bin size as squares (or circles) with
its counts table, the cell (and nucleus) segmentation polygons with their tables, and the images.

Layout (``docs/vendors.md`` §3)::

    outs/
      (<prefix>_)feature_slice.h5              metadata_json: sample id, hd_layout_json, transform matrices
      binned_outputs/square_002um/ square_008um/ square_016um/ ...
        filtered_feature_bc_matrix.h5  raw_feature_bc_matrix.h5
        spatial/tissue_positions.parquet  scalefactors_json.json  (images in SR 3.x)
      segmented_outputs/                       (SR >= 4.0)
        filtered_feature_cell_matrix.h5  cell_segmentations.geojson  nucleus_segmentations.geojson
        spatial/scalefactors_json.json
      barcode_mappings.parquet                 (SR >= 4.0; 2 µm bin -> cell, in_nucleus)
      spatial/                                 tissue_hires_image.png  tissue_lowres_image.png  cytassist_image.tiff
      microscope_image/<file>                  (or <prefix>_tissue_image.<ext>)

Elements, named as the reference reader names them (``<id>`` is the dataset id):

* per bin size ``square_XXXum``: shapes ``<id>_square_XXXum`` (axis-aligned squares of side
  ``spot_diameter_fullres`` centred on the bins, or circles of half that radius) indexed by ``location_id`` =
  0..n-1 in table order, then table ``square_XXXum`` (obs ``in_tissue``, ``array_row``, ``array_col``,
  ``location_id``, ``region``; ``obsm["spatial"]`` = (x, y) full-resolution pixels);
* SR 4: shapes ``<id>_cell_segmentations`` (polygons indexed by the matrix barcode ``cellid_<id:09d>-1``) and
  table ``cell_segmentations`` (instance key ``cell_id``); optionally ``<id>_nucleus_segmentations`` with the 2 µm
  counts of the bins under each nucleus summed into table ``nucleus_segmentations``;
* images ``<id>_hires_image``, ``<id>_lowres_image``, ``<id>_cytassist_image`` and ``<id>_full_image``.

Coordinate systems: ``<id>`` (full-resolution pixels), ``<id>_downscaled_hires`` and ``<id>_downscaled_lowres``,
as for Visium. The CytAssist image is placed in ``<id>`` by ``spot_colrow_to_microscope_colrow @
cytassist_colrow_to_spot_colrow``; when that product is projective (not affine) the image is resampled by its
projective part and placed by the affine rest.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.elements import Image2DModel, ShapesModel, TableModel, check_name, sanitize_name
from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect
from tissuestack.io._visium import (
    FULLRES_SUFFIXES,
    HIRES_KEY,
    IMAGE_HIRES_FILE,
    IMAGE_LOWRES_FILE,
    LOWRES_KEY,
    POSITION_COLUMNS,
    SCALEFACTORS_FILE,
    SPOT_DIAMETER_KEY,
    downscaled_transformations,
    fullres_element,
    h5_root_metadata,
    png_element,
    read_counts,
    read_json,
    resolve_file,
    scale_factor,
)
from tissuestack.transforms import Affine, BaseTransformation, Identity, Scale

__all__ = ["TECHNOLOGY", "iter_visium_hd", "visium_hd"]

FEATURE_SLICE_FILE = "feature_slice.h5"
BINNED_OUTPUTS = "binned_outputs"
SEGMENTED_OUTPUTS = "segmented_outputs"
MICROSCOPE_IMAGE = "microscope_image"
FILTERED_COUNTS_FILE = "filtered_feature_bc_matrix.h5"
RAW_COUNTS_FILE = "raw_feature_bc_matrix.h5"
TISSUE_POSITIONS_FILE = "tissue_positions.parquet"
BARCODE_MAPPINGS_FILE = "barcode_mappings.parquet"
CELL_COUNTS_FILE = "filtered_feature_cell_matrix.h5"
CELL_GEOJSON = "cell_segmentations.geojson"
NUCLEUS_GEOJSON = "nucleus_segmentations.geojson"
IMAGE_CYTASSIST_FILE = "cytassist_image.tiff"
CELL_KEY = "cell_segmentations"
NUCLEUS_KEY = "nucleus_segmentations"
REGION_KEY = "region"
BIN_INSTANCE_KEY = "location_id"
CELL_INSTANCE_KEY = "cell_id"
BIN_SIZE_KEY = "bin_size_um"
MICRONS_PER_PIXEL_KEY = "microns_per_pixel"
KNOWN_LAYOUT_MAJOR = "1"
_BIN_FOLDER = re.compile(r"^square_(\d+)um$")


# ------------------------------------------------------------------------------------------------------------
# locating files and metadata
# ------------------------------------------------------------------------------------------------------------


def _find_feature_slice(path: Path, dataset_id: str | None) -> tuple[Path | None, str | None]:
    """The feature-slice file and the dataset id its name carries (``None`` for an unprefixed name)."""
    if dataset_id is not None and (path / f"{dataset_id}_{FEATURE_SLICE_FILE}").is_file():
        return path / f"{dataset_id}_{FEATURE_SLICE_FILE}", dataset_id
    if (path / FEATURE_SLICE_FILE).is_file():
        return path / FEATURE_SLICE_FILE, None
    if (path / f"hd_{FEATURE_SLICE_FILE}").is_file():  # the name the SR 3.0 docs use
        return path / f"hd_{FEATURE_SLICE_FILE}", None
    candidates = sorted(p for p in path.glob(f"*_{FEATURE_SLICE_FILE}") if p.is_file())
    if len(candidates) > 1:
        raise ReaderError(
            f"{path}: several feature-slice files: {', '.join(p.name for p in candidates)}; pass dataset_id to "
            "choose one"
        )
    if candidates:
        return candidates[0], candidates[0].name[: -len(f"_{FEATURE_SLICE_FILE}")]
    return None, None


def _as_matrix(value: Any, key: str, file: Path) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError) as err:
        raise ReaderError(
            f"{file}: transform matrix {key!r} is not 3x3 numbers (nested lists or 9 values)"
        ) from err
    if not np.isfinite(matrix).all():
        raise ReaderError(f"{file}: transform matrix {key!r} has non-finite values")
    return matrix


def _read_feature_slice_metadata(file: Path) -> dict[str, Any]:
    """The ``metadata_json`` root attribute of the feature-slice HDF5, with ``hd_layout_json`` parsed and its
    ``file_format`` checked."""
    import json

    import h5py

    try:
        with h5py.File(file, "r") as f:
            raw = f.attrs.get("metadata_json")
    except OSError as err:
        raise ReaderError(
            f"{file}: cannot open the feature-slice HDF5 (truncated or not HDF5): {err}"
        ) from err
    if raw is None:
        raise ReaderError(
            f"{file}: no 'metadata_json' root attribute; expected the Visium HD feature-slice file"
        )
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        metadata = json.loads(str(raw))
        layout = metadata.get("hd_layout_json", {})
        layout = json.loads(layout) if isinstance(layout, str) else layout
    except (ValueError, AttributeError) as err:
        raise ReaderError(
            f"{file}: 'metadata_json' (or its 'hd_layout_json') is not valid JSON: {err}"
        ) from err
    if not isinstance(layout, dict) or "file_format" not in layout:
        raise ReaderError(f"{file}: 'metadata_json' has no 'hd_layout_json' with a 'file_format'")
    fmt = str(layout["file_format"])
    if fmt.split(".")[0] != KNOWN_LAYOUT_MAJOR:
        raise ReaderError(
            f"{file}: unknown Visium HD layout file_format {fmt!r}; this reader knows file_format 1.x "
            "(Space Ranger 3.x and 4.x)"
        )
    metadata["hd_layout_json"] = layout
    return metadata


def _bin_folders(path: Path) -> dict[int, Path]:
    """``{bin size in µm: folder}`` of ``binned_outputs/square_XXXum`` (or ``square_XXXum`` directly in ``path``)."""
    root = path / BINNED_OUTPUTS if (path / BINNED_OUTPUTS).is_dir() else path
    out: dict[int, Path] = {}
    for child in root.iterdir():
        match = _BIN_FOLDER.match(child.name)
        if match and child.is_dir():
            out[int(match.group(1))] = child
    return dict(sorted(out.items()))


def _select_bins(
    available: dict[int, Path], bin_size: int | Sequence[int] | None, path: Path
) -> dict[int, Path]:
    if bin_size is None:
        return available
    wanted = [int(bin_size)] if isinstance(bin_size, int | np.integer | str) else [int(b) for b in bin_size]
    missing = [b for b in wanted if b not in available]
    if missing:
        raise ReaderError(
            f"{path}: no bin folder for bin size(s) {', '.join(f'{b} µm' for b in missing)}; available: "
            f"{', '.join(f'square_{b:03d}um' for b in available) or 'none'}"
        )
    return {b: available[b] for b in sorted(set(wanted))}


def _first_file(candidates: Sequence[Path]) -> Path | None:
    for file in candidates:
        if file.is_file():
            return file
    return None


def _spatial_folders(path: Path, bins: Mapping[int, Path]) -> list[Path]:
    """Where Space Ranger puts images and scale factors, most general first (top level, segmentation, bins)."""
    return [
        path / "spatial",
        path / SEGMENTED_OUTPUTS / "spatial",
        *(folder / "spatial" for folder in bins.values()),
    ]


def _find_fullres(path: Path, prefix: str, fullres_image_file: str | Path | None) -> Path | None:
    if fullres_image_file is not None:
        file = resolve_file(path, fullres_image_file)
        if not file.is_file():
            raise ReaderError(f"{file}: full-resolution image not found (fullres_image_file)")
        return file
    folder = path / MICROSCOPE_IMAGE
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FULLRES_SUFFIXES)
        if len(files) > 1:
            warnings.warn(
                f"{folder}: several images ({', '.join(p.name for p in files)}); using {files[0].name} (pass "
                "fullres_image_file to choose)",
                UserWarning,
                stacklevel=3,
            )
        if files:
            return files[0]
    for suffix in FULLRES_SUFFIXES:
        if (path / f"{prefix}tissue_image{suffix}").is_file():
            return path / f"{prefix}tissue_image{suffix}"
    return None


# ------------------------------------------------------------------------------------------------------------
# bins
# ------------------------------------------------------------------------------------------------------------


def _read_parquet(file: Path, columns: Sequence[str], what: str) -> Any:
    """A pyarrow table with ``columns``; ``ReaderError`` naming the file on a missing file, column or truncation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not file.is_file():
        raise ReaderError(f"{file}: {what} not found")
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as err:
        raise ReaderError(f"{file}: cannot read the {what} (truncated or not Parquet): {err}") from err
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ReaderError(
            f"{file}: the {what} lack the column(s) {', '.join(missing)}; expected {', '.join(columns)} "
            f"(found {', '.join(schema.names)})"
        )
    try:
        return pq.read_table(file, columns=list(columns))
    except (pa.ArrowException, OSError) as err:
        raise ReaderError(f"{file}: cannot read the {what} (truncated or corrupt): {err}") from err


def _as_strings(column: Any) -> Any:
    """An Arrow string column (older bundles store barcodes as binary)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_dictionary(column.type):
        return pc.cast(column, pa.string())
    return column


def _match(keys: Sequence[str] | np.ndarray, values: Any) -> np.ndarray:
    """Row in the Arrow string array ``values`` of every key (-1 when absent), hashed in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = pc.index_in(pa.array(np.asarray(keys, dtype=object), pa.string()), value_set=_as_strings(values))
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _numeric(table: Any, column: str, file: Path) -> np.ndarray:
    import pyarrow as pa

    col = table.column(column)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise ReaderError(f"{file}: column {column!r} has type {col.type}; expected numbers")
    return col.to_numpy()


def _bin_scalefactors(folder: Path, bin_um: int) -> dict[str, Any]:
    file = folder / "spatial" / SCALEFACTORS_FILE
    sf = read_json(file, "Visium HD scale factors")
    diameter = scale_factor(sf, SPOT_DIAMETER_KEY, file)
    if diameter is None:
        raise ReaderError(
            f"{file}: no {SPOT_DIAMETER_KEY!r}; expected the bin size in full-resolution pixels"
        )
    size = scale_factor(sf, BIN_SIZE_KEY, file)
    if size is not None and not math.isclose(size, bin_um):
        raise ReaderError(
            f"{file}: {BIN_SIZE_KEY} is {size:g} but the folder is {folder.name}; expected {bin_um:g}"
        )
    mpp = scale_factor(sf, MICRONS_PER_PIXEL_KEY, file)
    if mpp is not None and not math.isclose(bin_um / diameter, mpp, rel_tol=1e-3):
        raise ReaderError(
            f"{file}: {BIN_SIZE_KEY} / {SPOT_DIAMETER_KEY} = {bin_um / diameter:g} µm/px disagrees with "
            f"{MICRONS_PER_PIXEL_KEY} = {mpp:g}; expected them equal"
        )
    return sf


def _bin_elements(
    folder: Path,
    bin_um: int,
    dataset_id: str,
    transformations: Mapping[str, BaseTransformation],
    *,
    filtered: bool,
    bins_as_squares: bool,
    gex_only: bool,
) -> tuple[Any, Any]:
    """Shapes and table of one bin size."""
    import shapely

    key = folder.name
    shapes_name = f"{dataset_id}_{key}"
    sf = _bin_scalefactors(folder, bin_um)
    side = float(sf[SPOT_DIAMETER_KEY])
    counts_path = folder / (FILTERED_COUNTS_FILE if filtered else RAW_COUNTS_FILE)
    positions_file = folder / "spatial" / TISSUE_POSITIONS_FILE
    positions = _read_parquet(positions_file, POSITION_COLUMNS, "bin positions")
    adata = read_counts(counts_path, gex_only=gex_only)
    rows = _match(adata.obs_names, positions.column("barcode"))
    missing = rows < 0
    if missing.any():
        shown = ", ".join(adata.obs_names[missing][:5].tolist())
        raise ReaderError(
            f"{positions_file}: {int(missing.sum())} of the {adata.n_obs} barcodes of {counts_path.name} have no "
            f"position (first: {shown}); expected every matrix barcode in the positions"
        )
    x = _numeric(positions, "pxl_col_in_fullres", positions_file).astype(np.float64)[rows]
    y = _numeric(positions, "pxl_row_in_fullres", positions_file).astype(np.float64)[rows]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ReaderError(f"{positions_file}: some bins have no pixel coordinates; expected numbers")
    obs = adata.obs
    for column in ("in_tissue", "array_row", "array_col"):
        obs[column] = _numeric(positions, column, positions_file)[rows]
    instance = np.arange(adata.n_obs, dtype=np.int64)
    obs[BIN_INSTANCE_KEY] = instance
    adata.obsm["spatial"] = np.column_stack([x, y])

    half = side / 2.0
    if bins_as_squares:
        squares = shapely.box(x - half, y - half, x + half, y + half)  # vectorized, one GEOS call
        shapes = ShapesModel.parse(
            squares, index=instance, transformations=dict(transformations), name=shapes_name
        )
    else:
        shapes = ShapesModel.parse(
            np.column_stack([x, y]),
            radius=half,
            index=instance,
            transformations=dict(transformations),
            name=shapes_name,
        )
    table = TableModel.parse(
        adata, region=shapes_name, region_key=REGION_KEY, instance_key=BIN_INSTANCE_KEY, name=key
    )
    return shapes, table


# ------------------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------------------


_CELL_ID = re.compile(rb'"cell_id"\s*:\s*(-?\d+)\s*[,}]')


def _read_geojson_polygons(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(cell ids, polygons)`` of a 10x segmentation GeoJSON (``properties.cell_id`` integer, Polygon or
    MultiPolygon geometry in full-resolution pixels).

    Fast path: GEOS parses the whole FeatureCollection in C (no Python object per vertex; real files hold
    hundreds of MB) and the integer ids are scanned from the bytes; it is used only when there is exactly one
    id per geometry. Anything else goes through :mod:`json` and is checked feature by feature.
    """
    import shapely

    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ReaderError(f"{file}: segmentation GeoJSON not found") from None
    except OSError as err:
        raise ReaderError(f"{file}: cannot read the segmentation GeoJSON: {err}") from err
    ids = np.array(_CELL_ID.findall(raw), dtype=np.int64)
    try:
        collection = shapely.from_geojson(raw.decode("utf-8"))
        parts = shapely.get_parts(collection) if collection.geom_type == "GeometryCollection" else None
    except (shapely.errors.GEOSException, UnicodeDecodeError, ValueError):
        parts = None
    if parts is not None and len(parts) == len(ids) > 0 and raw.count(b'"Feature"') == len(ids):
        kinds = np.unique(shapely.get_type_id(parts))
        if np.isin(kinds, [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON]).all():
            if len(np.unique(ids)) != len(ids):
                raise ReaderError(
                    f"{file}: repeated properties.cell_id values; expected one feature per cell"
                )
            return ids, np.asarray(parts)
    return _read_geojson_polygons_json(file, raw)


def _read_geojson_polygons_json(file: Path, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The exact (slower) path of :func:`_read_geojson_polygons`: :mod:`json`, then ragged coordinates."""
    import itertools
    import json

    import shapely

    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ReaderError(f"{file}: cannot parse the segmentation GeoJSON: {err}") from err
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        raise ReaderError(f"{file}: expected a GeoJSON FeatureCollection with a 'features' list")
    try:
        ids = np.array([f["properties"]["cell_id"] for f in features], dtype=np.int64)
        geoms = [f["geometry"] for f in features]
        kinds = {g.get("type") for g in geoms}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReaderError(
            f"{file}: every feature needs an integer properties.cell_id and a geometry ({type(err).__name__}: {err})"
        ) from err
    try:
        if kinds <= {"Polygon"}:
            rings = [ring for g in geoms for ring in g["coordinates"]]
            ring_lengths = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
            n_rings = np.fromiter((len(g["coordinates"]) for g in geoms), dtype=np.int64, count=len(geoms))
            coords = np.fromiter(
                itertools.chain.from_iterable(p[:2] for r in rings for p in r), dtype=np.float64
            ).reshape(-1, 2)
            polygons = shapely.from_ragged_array(
                shapely.GeometryType.POLYGON,
                coords,
                (np.concatenate([[0], np.cumsum(ring_lengths)]), np.concatenate([[0], np.cumsum(n_rings)])),
            )
        elif kinds <= {"Polygon", "MultiPolygon"}:
            polygons = shapely.from_geojson([json.dumps(g) for g in geoms])
        else:
            raise ReaderError(
                f"{file}: geometry types {sorted(str(k) for k in kinds)}; expected Polygon or MultiPolygon features"
            )
    except (ValueError, IndexError, TypeError, shapely.errors.GEOSException) as err:
        raise ReaderError(f"{file}: malformed polygon coordinates: {err}") from err
    if len(np.unique(ids)) != len(ids):
        raise ReaderError(f"{file}: repeated properties.cell_id values; expected one feature per cell")
    return ids, np.asarray(polygons)


def _cell_barcodes(ids: np.ndarray) -> np.ndarray:
    """``cellid_<id:09d>-1``, the matrix barcode of a segmented cell."""
    return np.char.add(np.char.add("cellid_", np.char.zfill(ids.astype(str), 9)), "-1")


def _segmentation_elements(
    adata: Any,
    geojson: Path,
    dataset_id: str,
    key: str,
    transformations: Mapping[str, BaseTransformation],
) -> tuple[Any, Any]:
    """Polygons and table of the cells of ``adata`` that have a geometry (table order)."""
    import geopandas as gpd

    ids, polygons = _read_geojson_polygons(geojson)
    rows = pd.Index(_cell_barcodes(ids)).get_indexer(adata.obs_names)
    keep = rows >= 0
    if not keep.any():
        raise ReaderError(
            f"{geojson}: none of the {adata.n_obs} matrix barcodes (e.g. {adata.obs_names[0]}) matches a cell_id "
            "of the GeoJSON; expected barcodes cellid_<cell_id:09d>-1"
        )
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(
            f"{geojson.name}: {dropped} of the {adata.n_obs} cells of the {key} table have no polygon; dropped",
            UserWarning,
            stacklevel=4,
        )
        adata = adata[keep].copy()
    barcodes = adata.obs_names.to_numpy().astype(str)
    shapes_name = f"{dataset_id}_{key}"
    frame = gpd.GeoDataFrame(
        {CELL_INSTANCE_KEY: barcodes}, geometry=polygons[rows[keep]], index=pd.Index(barcodes)
    )
    shapes = ShapesModel.parse(frame, transformations=dict(transformations), name=shapes_name)
    adata.obs[CELL_INSTANCE_KEY] = barcodes
    table = TableModel.parse(
        adata, region=shapes_name, region_key=REGION_KEY, instance_key=CELL_INSTANCE_KEY, name=key
    )
    return shapes, table


def _nucleus_counts(bins_2um: Any, mappings_file: Path) -> Any:
    """Counts of the 2 µm bins under each nucleus summed per cell (a sparse product, cells in id order)."""
    import anndata as ad
    import pyarrow.compute as pc
    import scipy.sparse as sp

    mappings = _read_parquet(mappings_file, ("square_002um", "cell_id", "in_nucleus"), "barcode mappings")
    valid = pc.and_(
        pc.is_valid(mappings.column("cell_id")), pc.fill_null(mappings.column("in_nucleus"), False)
    )
    mappings = mappings.filter(valid)
    # position of every mapped bin in the 2 µm table (bins outside the filtered matrix: -1, dropped)
    table_rows = _match(
        _as_strings(mappings.column("square_002um")).to_numpy(zero_copy_only=False),
        _as_array_of(bins_2um.obs_names),
    )
    present = table_rows >= 0
    cells = _as_strings(mappings.column("cell_id")).to_numpy(zero_copy_only=False)[present]
    table_rows = table_rows[present]
    unique, cell_index = np.unique(cells.astype(str), return_inverse=True)
    aggregation = sp.csr_matrix(
        (np.ones(len(table_rows), dtype=bins_2um.X.dtype), (cell_index, table_rows)),
        shape=(len(unique), bins_2um.n_obs),
    )
    X = bins_2um.X
    counts = aggregation @ (X if sp.issparse(X) else sp.csr_matrix(X))
    return ad.AnnData(
        X=sp.csr_matrix(counts, dtype=X.dtype),
        obs=pd.DataFrame(index=pd.Index(unique)),
        var=bins_2um.var.copy(),
    )


def _as_array_of(index: pd.Index) -> Any:
    import pyarrow as pa

    return pa.array(index.to_numpy(dtype=object), pa.string())


# ------------------------------------------------------------------------------------------------------------
# CytAssist
# ------------------------------------------------------------------------------------------------------------


def _warp_projective(image: np.ndarray, shift: np.ndarray, block_rows: int = 256) -> np.ndarray:
    """Resample ``image`` (y, x, c) by the projective map ``shift`` (x, y homogeneous), bilinear, into the
    bounding box of its positive image (negative coordinates are padding and dropped). Output rows are done in
    blocks, so the coordinate arrays stay small."""
    from scipy import ndimage

    h, w = image.shape[:2]
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], dtype=np.float64).T
    mapped = shift @ corners
    mapped = mapped[:2] / mapped[2]
    out_w = max(1, math.ceil(mapped[0].max()))
    out_h = max(1, math.ceil(mapped[1].max()))
    inverse = np.linalg.inv(shift)
    planes = [image[:, :, c].astype(np.float64) for c in range(image.shape[2])]
    out = np.empty((out_h, out_w, image.shape[2]), dtype=image.dtype)
    xs = np.arange(out_w, dtype=np.float64)
    for start in range(0, out_h, block_rows):
        stop = min(start + block_rows, out_h)
        yy, xx = np.meshgrid(np.arange(start, stop, dtype=np.float64), xs, indexing="ij")
        sw = inverse[2, 0] * xx + inverse[2, 1] * yy + inverse[2, 2]
        sx = (inverse[0, 0] * xx + inverse[0, 1] * yy + inverse[0, 2]) / sw
        sy = (inverse[1, 0] * xx + inverse[1, 1] * yy + inverse[1, 2]) / sw
        for c, plane in enumerate(planes):  # a few channels
            values = ndimage.map_coordinates(plane, [sy, sx], order=1, cval=0.0)
            if np.issubdtype(image.dtype, np.integer):
                info = np.iinfo(image.dtype)
                values = np.clip(np.round(values), info.min, info.max)
            out[start:stop, :, c] = values.astype(image.dtype)
    return out


def _cytassist_element(
    file: Path, metadata: Mapping[str, Any], feature_slice: Path, dataset_id: str, name: str
) -> Any:
    matrices = metadata.get("transform_matrices")
    keys = ("cytassist_colrow_to_spot_colrow", "spot_colrow_to_microscope_colrow")
    if not isinstance(matrices, Mapping) or any(k not in matrices for k in keys):
        raise ReaderError(
            f"{feature_slice}: 'metadata_json' lacks transform_matrices {keys[0]!r} and {keys[1]!r}, needed to "
            f"place {file.name}"
        )
    projective = _as_matrix(matrices[keys[1]], keys[1], feature_slice) @ _as_matrix(
        matrices[keys[0]], keys[0], feature_slice
    )
    if projective[2, 2] == 0:
        raise ReaderError(
            f"{feature_slice}: the CytAssist -> microscope transform is degenerate ([2, 2] = 0)"
        )
    projective = projective / projective[2, 2]
    if np.allclose(projective[2, :2], 0.0):
        affine = projective.copy()
        affine[2] = [0.0, 0.0, 1.0]
        return fullres_element(
            file, {dataset_id: Affine(affine, ("x", "y"), ("x", "y"))}, name, pyramid=False
        )
    # projective: resample by the projective part S = A^-1 P, then place by the affine part A
    affine = projective.copy()
    affine[2] = [0.0, 0.0, 1.0]
    shift = np.linalg.solve(affine, projective)
    shift /= shift[2, 2]
    element = fullres_element(file, {dataset_id: Identity()}, name, pyramid=False)
    data = np.asarray(element.transpose("y", "x", "c").data)
    warped = _warp_projective(data, shift)
    return Image2DModel.parse(
        warped,
        dims=("y", "x", "c"),
        c_coords=list(element.coords["c"].values),
        transformations={dataset_id: Affine(affine, ("x", "y"), ("x", "y"))},
        name=name,
    )


# ------------------------------------------------------------------------------------------------------------
# the reader
# ------------------------------------------------------------------------------------------------------------


@with_folder_hints('visium_hd')
def iter_visium_hd(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    bin_size: int | Sequence[int] | None = None,
    bins_as_squares: bool = True,
    filtered_counts_file: bool = True,
    load_bins: bool = True,
    load_segmentations: bool = True,
    load_nucleus_segmentations: bool = False,
    fullres_image_file: str | Path | None = None,
    load_images: bool = True,
    load_cytassist_image: bool = True,
    gex_only: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a Visium HD Space Ranger ``outs/`` folder: per bin size its shapes then its table,
    the segmentation shapes and tables, then the images.

    Parameters are those of :func:`visium_hd`. The folder layout, scale factors and metadata are checked
    before the first element is yielded.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a Visium HD Space Ranger outs/ folder")
    feature_slice, prefix_id = _find_feature_slice(path, dataset_id)
    metadata = _read_feature_slice_metadata(feature_slice) if feature_slice is not None else {}
    if dataset_id is None:
        dataset_id = prefix_id or (str(metadata["sample_id"]) if metadata.get("sample_id") else None)
        if not dataset_id:
            raise ReaderError(
                f"{path}: cannot infer the dataset id (no '<id>_{FEATURE_SLICE_FILE}' and no sample_id in its "
                "metadata); pass dataset_id"
            )
        dataset_id = sanitize_name(dataset_id)
    try:
        check_name(dataset_id, "dataset_id")
    except ValidationError as err:
        raise ReaderError(str(err)) from None
    file_prefix = f"{prefix_id}_" if prefix_id else ""

    bins = _bin_folders(path)
    selected = _select_bins(bins, bin_size, path) if load_bins else {}
    if load_bins and not selected:
        raise ReaderError(
            f"{path}: no bin folders ({BINNED_OUTPUTS}/square_XXXum); expected a Visium HD Space Ranger outs/ folder"
        )
    spatial_folders = _spatial_folders(path, bins)
    sf_path = _first_file(
        [
            folder / SCALEFACTORS_FILE
            for folder in spatial_folders[1:2] + spatial_folders[:1] + spatial_folders[2:]
        ]
    )
    if sf_path is None:
        raise ReaderError(
            f"{path}: no spatial/{SCALEFACTORS_FILE} in the top level, segmented or binned outputs"
        )
    scalefactors = read_json(sf_path, "Visium HD scale factors")
    hires = scale_factor(scalefactors, HIRES_KEY, sf_path)
    lowres = scale_factor(scalefactors, LOWRES_KEY, sf_path)
    transformations = downscaled_transformations(dataset_id, hires, lowres)

    seg = path / SEGMENTED_OUTPUTS
    cell_files = (seg / CELL_COUNTS_FILE, seg / CELL_GEOJSON)
    do_cells = load_segmentations and seg.is_dir()
    if do_cells:
        absent = [f.name for f in cell_files if not f.is_file()]
        if absent:
            raise ReaderError(
                f"{seg}: missing {', '.join(absent)}; expected the Space Ranger 4 segmented outputs"
            )
    mappings_file = _first_file([path / BARCODE_MAPPINGS_FILE, *sorted(path.rglob(BARCODE_MAPPINGS_FILE))])
    do_nuclei = load_nucleus_segmentations
    if do_nuclei:
        needed = {
            seg / NUCLEUS_GEOJSON: "nucleus polygons",
            mappings_file or path / BARCODE_MAPPINGS_FILE: "2 µm bin -> cell mappings",
            (bins.get(2) or path / BINNED_OUTPUTS / "square_002um") / FILTERED_COUNTS_FILE: "2 µm counts",
        }
        absent = [f"{f} ({what})" for f, what in needed.items() if not f.is_file()]
        if absent:
            raise ReaderError(f"{path}: nucleus segmentations need {'; '.join(absent)}")

    images: list[tuple[str, Path, dict[str, BaseTransformation] | None]] = []
    if load_images:
        full = _find_fullres(path, file_prefix, fullres_image_file)
        for file_name, suffix, sf, cs in (
            (IMAGE_HIRES_FILE, "_hires_image", hires, "_downscaled_hires"),
            (IMAGE_LOWRES_FILE, "_lowres_image", lowres, "_downscaled_lowres"),
        ):
            file = _first_file([folder / file_name for folder in spatial_folders])
            if file is None:
                continue
            if sf is None:
                raise ReaderError(
                    f"{sf_path}: no {HIRES_KEY if 'hires' in cs else LOWRES_KEY!r}, needed to place {file}"
                )
            images.append(
                (
                    f"{dataset_id}{suffix}",
                    file,
                    {f"{dataset_id}{cs}": Identity(), dataset_id: Scale([1 / sf, 1 / sf], axes=("x", "y"))},
                )
            )
        cytassist = _first_file([folder / IMAGE_CYTASSIST_FILE for folder in spatial_folders])
        if load_cytassist_image and cytassist is not None:
            if feature_slice is None:
                warnings.warn(
                    f"{path}: no {FEATURE_SLICE_FILE} (it holds the CytAssist transform); skipping {cytassist.name}",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                images.append((f"{dataset_id}_cytassist_image", cytassist, None))
        if full is not None:
            images.append((f"{dataset_id}_full_image", full, {dataset_id: Identity()}))

    # --- bins
    bins_2um = None
    for bin_um, folder in selected.items():
        shapes, table = _bin_elements(
            folder,
            bin_um,
            dataset_id,
            transformations,
            filtered=filtered_counts_file,
            bins_as_squares=bins_as_squares,
            gex_only=gex_only,
        )
        yield f"{dataset_id}_{folder.name}", shapes
        if bin_um == 2 and do_nuclei and filtered_counts_file:
            bins_2um = table
        yield folder.name, table
        del shapes, table

    # --- segmentation
    if do_cells:
        cells = read_counts(cell_files[0], gex_only=gex_only)
        cells.uns["spatial"] = {dataset_id: {"metadata": h5_root_metadata(cell_files[0])}}
        shapes, table = _segmentation_elements(cells, cell_files[1], dataset_id, CELL_KEY, transformations)
        yield f"{dataset_id}_{CELL_KEY}", shapes
        yield CELL_KEY, table
    if do_nuclei:
        if bins_2um is None:
            folder = bins.get(2) or path / BINNED_OUTPUTS / "square_002um"
            bins_2um = read_counts(folder / FILTERED_COUNTS_FILE, gex_only=gex_only)
        nuclei = _nucleus_counts(bins_2um, mappings_file)
        bins_2um = None
        shapes, table = _segmentation_elements(
            nuclei, seg / NUCLEUS_GEOJSON, dataset_id, NUCLEUS_KEY, transformations
        )
        yield f"{dataset_id}_{NUCLEUS_KEY}", shapes
        yield NUCLEUS_KEY, table

    # --- images
    for name, file, image_transformations in images:
        if image_transformations is None:
            yield name, _cytassist_element(file, metadata, feature_slice, dataset_id, name)
        elif name.endswith("_full_image"):
            yield name, fullres_element(file, image_transformations, name)
        else:
            yield name, png_element(file, image_transformations, name)


def visium_hd(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    bin_size: int | Sequence[int] | None = None,
    bins_as_squares: bool = True,
    filtered_counts_file: bool = True,
    load_bins: bool = True,
    load_segmentations: bool = True,
    load_nucleus_segmentations: bool = False,
    fullres_image_file: str | Path | None = None,
    load_images: bool = True,
    load_cytassist_image: bool = True,
    gex_only: bool = False,
):
    """Read a 10x Genomics Visium HD Space Ranger ``outs/`` folder (Space Ranger 3.x and 4.x).

    Parameters
    ----------
    path
        The ``outs/`` folder (``binned_outputs/``, ``(<prefix>_)feature_slice.h5``, ...).
    dataset_id
        Names the elements (``<id>_square_008um``, ``<id>_hires_image``, ...) and coordinate systems. Default:
        the prefix of ``<prefix>_feature_slice.h5`` (public downloads), else the ``sample_id`` in its metadata
        (sanitized).
    bin_size
        A bin size in µm or several (``8``, ``(2, 16)``); default: every ``square_XXXum`` folder present.
    bins_as_squares
        Bins as axis-aligned squares of side ``spot_diameter_fullres`` (polygons, built vectorized), or as circles
        of radius ``spot_diameter_fullres / 2``.
    filtered_counts_file
        Read ``filtered_feature_bc_matrix.h5`` (the bins under tissue) or ``raw_feature_bc_matrix.h5`` (every bin).
    load_bins
        Read the binned outputs (``False``: only segmentations and images).
    load_segmentations
        Read the cell segmentation (SR >= 4 ``segmented_outputs/``): polygons ``<id>_cell_segmentations`` and
        table ``cell_segmentations``. Ignored when the folder is absent (SR 3).
    load_nucleus_segmentations
        Also read the nucleus polygons and build table ``nucleus_segmentations`` by summing the filtered 2 µm
        counts of the bins under each nucleus (``barcode_mappings.parquet``: ``cell_id`` set and ``in_nucleus``).
    fullres_image_file
        The full-resolution microscope image (relative to ``path`` or absolute). Default: the file in
        ``microscope_image/`` or ``<prefix>_tissue_image.*`` next to the feature-slice file, when present.
    load_images
        Read the hires, lowres, CytAssist and full-resolution images (lazily, except a projectively registered
        CytAssist image, which is resampled).
    load_cytassist_image
        Read ``cytassist_image.tiff``, placed in ``<id>`` by the feature-slice transform matrices.
    gex_only
        Keep only ``Gene Expression`` features.

    Returns
    -------
    SpatialData
        Per bin size shapes ``<id>_square_XXXum`` and table ``square_XXXum`` (instance key ``location_id``);
        ``<id>_cell_segmentations`` / ``cell_segmentations`` (instance key ``cell_id``) and optionally the
        nucleus pair; images ``<id>_hires_image``, ``<id>_lowres_image``, ``<id>_cytassist_image``,
        ``<id>_full_image``; coordinate systems ``<id>`` (full-resolution pixels), ``<id>_downscaled_hires``,
        ``<id>_downscaled_lowres``.

    Raises
    ------
    ReaderError
        A file is missing, malformed or truncated, a column is missing, a scale factor is inconsistent, the
        layout ``file_format`` is unknown or a requested bin size is absent; the message names the file and
        what was expected.
    """
    return collect(
        iter_visium_hd(
            path,
            dataset_id=dataset_id,
            bin_size=bin_size,
            bins_as_squares=bins_as_squares,
            filtered_counts_file=filtered_counts_file,
            load_bins=load_bins,
            load_segmentations=load_segmentations,
            load_nucleus_segmentations=load_nucleus_segmentations,
            fullres_image_file=fullres_image_file,
            load_images=load_images,
            load_cytassist_image=load_cytassist_image,
            gex_only=gex_only,
        )
    )


TECHNOLOGY = Technology(
    name="visium_hd",
    summary="10x Genomics Visium HD (Space Ranger 3.x/4.x outs/): bins as squares or circles with their tables, "
    "cell/nucleus segmentations, hires/lowres/CytAssist/full-resolution images",
    iter_elements=iter_visium_hd,
    options=(
        Option("dataset_id", str, None, "names the elements; default: the feature-slice prefix or sample id"),
        Option("bin_size", tuple, None, "bin sizes in µm to read (default: all)"),
        Option("bins_as_squares", bool, True, "bins as squares (polygons) rather than circles"),
        Option("filtered_counts_file", bool, True, "filtered (tissue) rather than raw (all bins) matrices"),
        Option("load_bins", bool, True, "read the binned outputs"),
        Option("load_segmentations", bool, True, "read the SR 4 cell segmentation polygons and table"),
        Option(
            "load_nucleus_segmentations", bool, False, "nucleus polygons with 2 µm counts summed per nucleus"
        ),
        Option(
            "fullres_image_file",
            str,
            None,
            "full-resolution image (default: microscope_image/ or <prefix>_tissue_image.*)",
        ),
        Option("load_images", bool, True, "read the images"),
        Option("load_cytassist_image", bool, True, "read the CytAssist image"),
        Option("gex_only", bool, False, "keep only Gene Expression features"),
    ),
)
