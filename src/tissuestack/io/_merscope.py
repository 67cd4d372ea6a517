"""Vizgen MERSCOPE region folders: z-plane mosaics, detected transcripts, cell boundaries and the cell table.

Layout (``docs/vendors.md`` §4)::

    <yyyymmddhhmm>_<experiment>_<instrument>/region_<N>/
      detected_transcripts.csv                (or detected_transcripts.parquet)
      cell_by_gene.csv   cell_metadata.csv
      cell_boundaries.parquet                 (current software; GeoParquet, one row per cell and z plane)
      cell_boundaries/feature_data_<fov>.hdf5 (older software; one HDF5 file per FOV)
      images/mosaic_<stain>_z<k>.tif          (one single-plane TIFF per stain and z plane)
      images/micron_to_mosaic_pixel_transform.csv   images/manifest.json

Elements (``<id>`` is the dataset id, ``<slide>_<region>`` by default):

* images ``<id>_z<k>`` for each requested z plane: ``(c, y, x)`` with one channel per stain (``DAPI``, ``PolyT``
  first, then the others in natural order), lazy over the TIFFs, with a lazily built pyramid;
* points ``<id>_transcripts``: ``x``/``y`` = ``global_x``/``global_y`` (µm), ``gene`` categorical, ``cell_id``
  (the EntityID, -1 when unassigned; the instance key) and the other columns except the FOV-local pixel ``x``/``y``;
  ``global_z`` (a z-plane index, not µm) stays an ordinary column. Read lazily in blocks, never whole;
* shapes ``<id>_polygons``: the cell boundaries at one z plane (``ZIndex`` 0 by default) as MultiPolygons in µm,
  indexed by EntityID as a string; invalid geometries are dropped (with a warning);
* table ``table``: ``cell_by_gene.csv`` genes in ``X`` (sparse), ``Blank-*`` barcodes in ``obsm["blank"]``,
  ``cell_metadata.csv`` in ``obs``, ``obsm["spatial"]`` = (center_x, center_y) µm; it annotates
  ``<id>_polygons`` through ``region_key="cells_region"`` and ``instance_key="EntityID"`` (strings).

Coordinate system ``global`` is in µm: transcripts, polygons and the table are Identity; every mosaic gets the
inverse of the µm -> mosaic pixel affine of ``micron_to_mosaic_pixel_transform.csv`` (or, when that file is
missing, the one implied by ``manifest.json``: ``microns_per_pixel`` and the ``bbox_microns`` origin).
(The reference reader puts ``global`` in mosaic pixels instead; the maps between the elements are the same.)
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._common import frame_columns, lazy_frame, tabular_format
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "iter_merscope", "merscope"]

TRANSCRIPTS_FILES = ("detected_transcripts.csv", "detected_transcripts.parquet")
COUNTS_FILE = "cell_by_gene.csv"
CELL_METADATA_FILE = "cell_metadata.csv"
BOUNDARIES_FILE = "cell_boundaries.parquet"
BOUNDARIES_HDF5_DIR = "cell_boundaries"
VPT_BOUNDARIES_FILES = ("cellpose_micron_space.parquet", "watershed_micron_space.parquet")
IMAGES_DIR = "images"
TRANSFORM_FILE = "micron_to_mosaic_pixel_transform.csv"
MANIFEST_FILE = "manifest.json"
MOSAIC_PATTERN = re.compile(r"^mosaic_(?P<stain>[\w\-]+)_z(?P<z>\d+)\.tiff?$", re.IGNORECASE)
HDF5_PATTERN = re.compile(r"^feature_data_(?P<fov>\d+)\.hdf5$")
TABLE_NAME = "table"
REGION_KEY = "cells_region"
INSTANCE_KEY = "EntityID"
GENE_KEY = "gene"
CELL_ID_KEY = "cell_id"
_FIRST_STAINS = ("DAPI", "PolyT")
# dtypes of the known transcript columns (declared, so that dask never guesses from one block)
_TRANSCRIPT_DTYPES = {
    "barcode_id": "int64",
    "global_x": "float64",
    "global_y": "float64",
    "global_z": "float64",
    "fov": "int64",
    "gene": "object",
    "transcript_id": "object",
    "cell_id": "int64",
}
_VPT_KEYS = ("cell_by_gene", "cell_metadata", "cell_boundaries")


# ------------------------------------------------------------------------------------------------------------
# helpers shared with the CosMx reader
# ------------------------------------------------------------------------------------------------------------


def natural_key(text: str) -> tuple:
    """Sort key putting ``Cellbound2`` before ``Cellbound10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


def pyramid_factors(height: int, width: int, smallest: int = 512) -> tuple[int, ...] | None:
    """Halvings until the longest side is at most ``smallest`` pixels (``None``: no pyramid needed)."""
    longest, n = max(height, width), 0
    while longest > smallest and n < 16:
        longest //= 2
        n += 1
    return (2,) * n if n else None


def _as_categorical(frame: pd.DataFrame, column: str, dtype: pd.CategoricalDtype, file: str) -> pd.DataFrame:
    values = frame[column]
    out = pd.Categorical(values, dtype=dtype)
    lost = (out.codes < 0) & values.notna().to_numpy()
    if lost.any():
        unknown = sorted(pd.unique(values[lost].astype(str)))[:10]
        raise ReaderError(
            f"{file}: column {column!r} holds value(s) {unknown} that are not among the {len(dtype.categories)} "
            "feature names taken from the counts table; pass scan_features=True to collect the categories from "
            "the file itself"
        )
    return frame.assign(**{column: out})


def categorical_with(ddf: Any, column: str, categories: Sequence[str], file: Path | str) -> Any:
    """Column ``column`` of the lazy frame as a categorical with the given (known) categories, without a pass over
    the data; a value outside ``categories`` raises a :class:`ReaderError` naming ``file`` when computed."""
    dtype = pd.CategoricalDtype(pd.Index(sorted(dict.fromkeys(str(c) for c in categories))))
    meta = ddf._meta.assign(**{column: pd.Categorical([], dtype=dtype)})
    return ddf.map_partitions(_as_categorical, column, dtype, str(file), meta=meta)


def check_csv_tail(path: Path, what: str) -> None:
    """Catch a truncated plain CSV cheaply: its last line must be complete (end with a newline) and have as many
    fields as the header. Compressed files are not checked (they cannot be read from the end)."""
    if path.name.lower().endswith((".gz", ".bz2", ".zst", ".xz")) or tabular_format(path) != "csv":
        return
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header = fh.readline()
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except OSError as err:
        raise ReaderError(f"{path}: cannot read the {what}: {err}") from err
    if not header.strip():
        raise ReaderError(f"{path}: the {what} is empty; expected a header line and rows")
    if not tail.endswith(b"\n"):
        raise ReaderError(f"{path}: the {what} ends in the middle of a line (truncated file?)")
    last = tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    n_header, n_last = header.count(b",") + 1, last.count(b",") + 1
    if last != header.rstrip(b"\r\n") and b'"' not in last and n_last != n_header:
        raise ReaderError(
            f"{path}: the last line of the {what} has {n_last} fields but the header has {n_header} "
            "(truncated file?)"
        )


def read_csv_frame(
    path: Path, what: str, *, str_columns: Sequence[str | int] = (), **kwargs: Any
) -> pd.DataFrame:
    """A whole (small) CSV as pandas; the columns in ``str_columns`` (names, or 0 for the first) read as strings.
    ``ReaderError`` naming the file on any problem."""
    if not path.is_file():
        raise ReaderError(f"{path}: {what} not found")
    try:
        header = pd.read_csv(path, nrows=0).columns
        dtype = {
            header[c] if isinstance(c, int) else c: str
            for c in str_columns
            if isinstance(c, int) or c in header
        }
        return pd.read_csv(path, dtype=dtype, **kwargs)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ReaderError(
            f"{path}: cannot read the {what} (expected a CSV file with a header): {err}"
        ) from err


# ------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------


def _resolve(path: Path, file: str | Path) -> Path:
    file = Path(file)
    return file if file.is_absolute() else path / file


def _table_files(path: Path, vpt_outputs: Any) -> tuple[Path, Path, Path | None]:
    """(cell_by_gene, cell_metadata, boundaries) of the instrument output or of a VPT re-segmentation."""
    if vpt_outputs is None:
        boundaries = path / BOUNDARIES_FILE
        if not boundaries.is_file() and (path / BOUNDARIES_HDF5_DIR).is_dir():
            boundaries = path / BOUNDARIES_HDF5_DIR
        return path / COUNTS_FILE, path / CELL_METADATA_FILE, boundaries
    if isinstance(vpt_outputs, Mapping):
        missing = [k for k in _VPT_KEYS if k not in vpt_outputs]
        if missing:
            raise ReaderError(f"vpt_outputs lacks the key(s) {missing}; expected the keys {list(_VPT_KEYS)}")
        return tuple(_resolve(path, vpt_outputs[k]) for k in _VPT_KEYS)  # type: ignore[return-value]
    if isinstance(vpt_outputs, str | Path):
        folder = _resolve(path, vpt_outputs)
        if not folder.is_dir():
            raise ReaderError(f"{folder}: VPT output folder (vpt_outputs) not found")
        found = [folder / n for n in (*VPT_BOUNDARIES_FILES, BOUNDARIES_FILE) if (folder / n).is_file()]
        if not found:
            raise ReaderError(
                f"{folder}: no VPT boundaries file; expected one of {', '.join((*VPT_BOUNDARIES_FILES, BOUNDARIES_FILE))}"
            )
        return folder / COUNTS_FILE, folder / CELL_METADATA_FILE, found[0]
    raise ReaderError(
        f"vpt_outputs must be a folder or a mapping with keys {list(_VPT_KEYS)}, got {type(vpt_outputs).__name__}"
    )


def _mosaic_files(images_dir: Path) -> dict[int, dict[str, Path]]:
    """z plane -> stain -> file, from ``mosaic_<stain>_z<k>.tif`` names."""
    out: dict[int, dict[str, Path]] = {}
    for file in images_dir.iterdir():
        match = MOSAIC_PATTERN.match(file.name)
        if match and file.is_file():
            out.setdefault(int(match.group("z")), {})[match.group("stain")] = file
    return out


def stain_order(stains: Sequence[str]) -> list[str]:
    """DAPI and PolyT first, then the other stains in natural order (deterministic, unlike a set's order)."""
    first = [s for s in _FIRST_STAINS if s in stains]
    return first + sorted((s for s in stains if s not in first), key=natural_key)


def micron_to_pixel(images_dir: Path) -> np.ndarray:
    """The 3 x 3 µm -> mosaic pixel affine (from the transform CSV, else from the manifest)."""
    file = images_dir / TRANSFORM_FILE
    if file.is_file():
        try:
            matrix = np.loadtxt(file, dtype=np.float64, ndmin=2)
        except (ValueError, OSError) as err:
            raise ReaderError(
                f"{file}: cannot read the µm -> mosaic pixel transform (expected 3 lines of 3 space-separated "
                f"numbers): {err}"
            ) from err
        if matrix.shape == (2, 3):
            matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
        if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
            raise ReaderError(
                f"{file}: the µm -> mosaic pixel transform has shape {matrix.shape}; expected 3 lines of 3 "
                "space-separated finite numbers"
            )
        if not np.allclose(matrix[2], [0.0, 0.0, 1.0]) or abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
            raise ReaderError(
                f"{file}: not an invertible affine transform (expected the last line '0 0 1' and a non-singular "
                f"2 x 2 part), got {matrix.tolist()}"
            )
        return matrix
    manifest = images_dir / MANIFEST_FILE
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            mpp = float(data["microns_per_pixel"])
            x0, y0 = (float(v) for v in data["bbox_microns"][:2])
        except (ValueError, KeyError, TypeError, IndexError, OSError) as err:
            raise ReaderError(
                f"{manifest}: cannot derive the µm -> mosaic pixel transform (expected 'microns_per_pixel' and "
                f"'bbox_microns' [x0, y0, x1, y1]): {err}"
            ) from err
        if not (np.isfinite(mpp) and mpp > 0):
            raise ReaderError(f"{manifest}: 'microns_per_pixel' is {mpp}; expected a positive number")
        s = 1.0 / mpp
        return np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s], [0.0, 0.0, 1.0]])
    raise ReaderError(
        f"{images_dir}: neither {TRANSFORM_FILE} nor {MANIFEST_FILE} found; one is needed to place the mosaics"
    )


# ------------------------------------------------------------------------------------------------------------
# elements
# ------------------------------------------------------------------------------------------------------------


def _mosaic_element(
    files: Mapping[str, Path], stains: list[str], pixel_to_um: Any, name: str, *, pyramid: bool, chunks: Any
) -> Any:
    import dask.array as da

    from tissuestack.elements import Image2DModel
    from tissuestack.io._tiff import open_tiff

    planes = []
    shape: tuple[int, int] | None = None
    for stain in stains:
        file = files[stain]
        arr, axes = open_tiff(file)
        keep = tuple(slice(None) if ax in "YX" else 0 for ax in axes)
        extra = [(ax, n) for ax, n in zip(axes, arr.shape, strict=True) if ax not in "YX" and n != 1]
        if extra or axes.count("Y") != 1 or axes.count("X") != 1:
            raise ReaderError(
                f"{file}: expected a single-plane grayscale mosaic (axes YX), found axes {axes!r} with shape "
                f"{arr.shape}"
            )
        arr = arr[keep]
        if axes.index("Y") > axes.index("X"):
            arr = arr.T
        if shape is None:
            shape = tuple(arr.shape)  # type: ignore[assignment]
        elif tuple(arr.shape) != shape:
            raise ReaderError(
                f"{file}: mosaic of shape {tuple(arr.shape)}, but {files[stains[0]].name} has shape {shape}; "
                "expected every stain of a z plane to have the same size"
            )
        planes.append(arr)
    stack = da.stack(planes, axis=0)
    assert shape is not None
    try:
        return Image2DModel.parse(
            stack,
            dims=("c", "y", "x"),
            c_coords=stains,
            transformations={"global": pixel_to_um},
            scale_factors=pyramid_factors(*shape) if pyramid else None,
            chunks=chunks,
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{files[stains[0]].parent}: {err}") from err


def _transcripts_element(file: Path, categories: Sequence[str] | None, blocksize: Any, name: str) -> Any:
    from tissuestack.elements import PointsModel
    from tissuestack.transforms import Identity

    columns = frame_columns(file)
    missing = [c for c in ("global_x", "global_y", GENE_KEY) if c not in columns]
    if missing:
        raise ReaderError(
            f"{file}: the transcripts lack the column(s) {missing}; expected global_x, global_y (µm) and gene "
            f"(the file has {columns})"
        )
    # the unnamed row index and the FOV-local pixel x/y (they would collide with the µm coordinates) are dropped
    keep = [
        c for c in columns if c and not c.startswith(("Unnamed:", "__index_level_")) and c not in ("x", "y")
    ]
    if tabular_format(file) == "csv":
        check_csv_tail(file, "transcripts file")
        dtype = {c: t for c, t in _TRANSCRIPT_DTYPES.items() if c in keep}
        ddf = lazy_frame(file, columns=keep, dtype=dtype, blocksize=blocksize)
    else:
        ddf = lazy_frame(file, columns=keep)
    ddf = ddf[keep]
    if categories is not None:
        ddf = categorical_with(ddf, GENE_KEY, categories, file)
    try:
        return PointsModel.parse(
            ddf,
            coordinates={"x": "global_x", "y": "global_y"},
            feature_key=GENE_KEY,
            instance_key=CELL_ID_KEY if CELL_ID_KEY in keep else None,
            transformations={"global": Identity()},
            name=name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _geometry_column(schema: Any, file: Path) -> str:
    geo = (schema.metadata or {}).get(b"geo")
    if geo:
        try:
            primary = json.loads(geo).get("primary_column")
        except ValueError:
            primary = None
        if primary in schema.names:
            return str(primary)
    for candidate in ("Geometry", "geometry"):
        if candidate in schema.names:
            return candidate
    raise ReaderError(
        f"{file}: no geometry column; expected a GeoParquet file with a 'Geometry' column of WKB polygons "
        f"(columns: {schema.names})"
    )


def _boundaries_parquet(file: Path, z_index: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(EntityID strings, shapely geometries, other columns) of the rows at ``ZIndex == z_index``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import shapely

    try:
        pf = pq.ParquetFile(file)
        schema = pf.schema_arrow
    except Exception as err:
        raise ReaderError(
            f"{file}: not a readable Parquet file (expected GeoParquet cell boundaries): {err}"
        ) from err
    geometry = _geometry_column(schema, file)
    if INSTANCE_KEY not in schema.names:
        raise ReaderError(
            f"{file}: no {INSTANCE_KEY!r} column; expected the VPT boundary columns (columns: {schema.names})"
        )
    try:
        table = pf.read()
    except Exception as err:
        raise ReaderError(f"{file}: cannot read the cell boundaries (truncated file?): {err}") from err
    if "ZIndex" in schema.names:
        planes = table.column("ZIndex")
        table = table.filter(pc.equal(planes, z_index))
        if table.num_rows == 0:
            available = sorted(pc.unique(planes).to_pylist())
            raise ReaderError(
                f"{file}: no boundaries at ZIndex {z_index}; the file has the z planes {available}"
            )
    try:
        geoms = shapely.from_wkb(table.column(geometry).to_numpy(zero_copy_only=False))
    except Exception as err:
        raise ReaderError(f"{file}: column {geometry!r} does not hold WKB geometries: {err}") from err
    ids = table.column(INSTANCE_KEY).to_pandas().astype(str).to_numpy()
    others = table.drop_columns([geometry, INSTANCE_KEY]).to_pandas()
    others = others[[c for c in others.columns if others[c].notna().any()]]
    return ids, geoms, others


def _boundaries_hdf5(folder: Path, z_index: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Older MERSCOPE output: ``feature_data_<fov>.hdf5`` files with ``featuredata/<EntityID>/zIndex_<z>/p_<k>/
    coordinates`` of shape (1, n, 2) in µm. The HDF5 layout forces one group access per cell; the polygons are
    then built in one vectorized call."""
    import h5py
    import shapely

    files = sorted(
        (f for f in folder.iterdir() if HDF5_PATTERN.match(f.name)), key=lambda f: natural_key(f.name)
    )
    if not files:
        raise ReaderError(
            f"{folder}: no feature_data_<fov>.hdf5 files; expected the older MERSCOPE per-FOV boundaries (or "
            f"{BOUNDARIES_FILE} next to the folder)"
        )
    ids: list[str] = []
    fovs: list[int] = []
    rings: list[np.ndarray] = []
    ring_cell: list[int] = []
    plane = f"zIndex_{z_index}"
    for file in files:
        fov = int(HDF5_PATTERN.match(file.name).group("fov"))  # type: ignore[union-attr]
        try:
            with h5py.File(file, "r") as h5:
                if "featuredata" not in h5:
                    raise ReaderError(
                        f"{file}: no 'featuredata' group; expected featuredata/<EntityID>/zIndex_<z>/"
                    )
                for cell_id, cell in h5["featuredata"].items():
                    if plane not in cell:
                        continue
                    parts = [
                        cell[plane][p]["coordinates"][()]
                        for p in sorted(cell[plane], key=natural_key)
                        if "coordinates" in cell[plane][p]
                    ]
                    if not parts:
                        continue
                    k = len(ids)
                    ids.append(str(cell_id))
                    fovs.append(fov)
                    for coords in parts:
                        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
                        if len(coords) >= 3:
                            rings.append(coords)
                            ring_cell.append(k)
        except ReaderError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise ReaderError(
                f"{file}: cannot read the cell boundaries (expected HDF5 groups featuredata/<EntityID>/"
                f"zIndex_<z>/p_<k>/coordinates): {err}"
            ) from err
    if not ids:
        raise ReaderError(
            f"{folder}: no cell boundary at {plane} in {len(files)} feature_data_<fov>.hdf5 file(s)"
        )
    counts = np.array([len(r) for r in rings])
    closed = np.concatenate(rings)
    ring_index = np.repeat(np.arange(len(rings)), counts)
    linear = shapely.linearrings(closed, indices=ring_index)
    polygons = shapely.polygons(linear)
    geoms = shapely.multipolygons(polygons, indices=np.asarray(ring_cell))
    # cells whose every ring was degenerate get no geometry; keep the arrays aligned
    have = np.zeros(len(ids), dtype=bool)
    have[np.unique(ring_cell)] = True
    full = np.full(len(ids), None, dtype=object)
    full[have] = geoms
    others = pd.DataFrame({"fov": np.asarray(fovs, dtype=np.int64), "ZIndex": np.int64(z_index)})
    return np.asarray(ids, dtype=object), full, others


def _polygons_element(source: Path, z_index: int, name: str) -> Any:
    import geopandas as gpd
    import shapely

    from tissuestack.elements import ShapesModel
    from tissuestack.transforms import Identity

    if source.is_dir():
        ids, geoms, others = _boundaries_hdf5(source, z_index)
    else:
        ids, geoms, others = _boundaries_parquet(source, z_index)
    valid = shapely.is_valid(geoms) & ~shapely.is_empty(geoms) & ~shapely.is_missing(geoms)
    if not valid.all():
        dropped = ids[~valid][:5].tolist()
        warnings.warn(
            f"{source}: dropped {int((~valid).sum())} invalid or empty cell boundaries (first EntityIDs: {dropped})",
            UserWarning,
            stacklevel=3,
        )
    ids, geoms, others = ids[valid], geoms[valid], others.loc[valid].reset_index(drop=True)
    types = shapely.get_type_id(geoms)
    bad = ~np.isin(types, (3, 6))
    if bad.any():
        raise ReaderError(
            f"{source}: {int(bad.sum())} boundaries are not polygons (geometry types "
            f"{sorted(set(shapely.get_type_id(geoms[bad]).tolist()))}); expected Polygon / MultiPolygon"
        )
    single = types == 3
    if single.any():
        geoms = geoms.copy()
        geoms[single] = shapely.multipolygons(geoms[single], indices=np.arange(int(single.sum())))
    frame = gpd.GeoDataFrame(others, geometry=gpd.GeoSeries(geoms), crs=None)
    frame.index = pd.Index(ids, name=None)
    try:
        return ShapesModel.parse(frame, transformations={"global": Identity()}, name=name)
    except ValidationError as err:
        raise ReaderError(f"{source}: {err}") from err


def _table(
    counts_file: Path, metadata_file: Path, *, region: str, region_name: str, slide_name: str, dataset_id: str
) -> Any:
    import anndata as ad
    import scipy.sparse as sp

    from tissuestack.elements import TableModel

    counts = read_csv_frame(counts_file, "cell by gene counts", str_columns=(0,), index_col=0)
    obs = read_csv_frame(metadata_file, "cell metadata", str_columns=(0,), index_col=0)
    counts.index = counts.index.astype(str)
    obs.index = obs.index.astype(str)
    non_numeric = [c for c in counts.columns if not pd.api.types.is_numeric_dtype(counts[c])]
    if non_numeric:
        raise ReaderError(
            f"{counts_file}: column(s) {non_numeric[:5]} are not numeric; expected the cell id in the first column "
            "and one count column per gene"
        )
    if not counts.index.is_unique:
        dup = counts.index[counts.index.duplicated()][:5].tolist()
        raise ReaderError(f"{counts_file}: cell ids are repeated ({dup}); expected one row per cell")
    for column in ("center_x", "center_y"):
        if column not in obs.columns:
            raise ReaderError(
                f"{metadata_file}: no {column!r} column; expected the cell metadata columns fov, volume, center_x, "
                f"center_y, min_x, ... (the file has {list(obs.columns)[:12]})"
            )
    if not obs.index.is_unique:
        dup = obs.index[obs.index.duplicated()][:5].tolist()
        raise ReaderError(f"{metadata_file}: cell ids are repeated ({dup}); expected one row per cell")
    rows = obs.index.get_indexer(counts.index)
    if (rows < 0).any():
        missing = counts.index[rows < 0][:5].tolist()
        raise ReaderError(
            f"{metadata_file}: {int((rows < 0).sum())} cells of {counts_file.name} have no metadata row (first: "
            f"{missing}); expected the same cells in both files"
        )
    obs = obs.iloc[rows].copy()
    obs.index.name = None
    blank = counts.columns.str.lower().str.contains("blank")
    genes = counts.loc[:, ~blank]
    values = genes.to_numpy()
    if np.issubdtype(values.dtype, np.integer) and (
        values.size == 0 or values.max() <= np.iinfo(np.int32).max
    ):
        values = values.astype(np.int32)
    adata = ad.AnnData(sp.csr_matrix(values), obs=obs, var=pd.DataFrame(index=genes.columns.astype(str)))
    adata.obsm["blank"] = counts.loc[:, blank].set_axis(adata.obs_names, axis=0)
    adata.obsm["spatial"] = obs[["center_x", "center_y"]].to_numpy(dtype=np.float64)
    n = adata.n_obs
    adata.obs["region"] = pd.Categorical([region_name] * n)
    adata.obs["slide"] = pd.Categorical([slide_name] * n)
    adata.obs["dataset_id"] = pd.Categorical([dataset_id] * n)
    adata.obs[REGION_KEY] = pd.Categorical([region] * n)
    adata.obs[INSTANCE_KEY] = adata.obs_names.to_numpy().astype(str)
    try:
        return TableModel.parse(
            adata, region=region, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=TABLE_NAME
        )
    except ValidationError as err:
        raise ReaderError(f"{counts_file}: {err}") from err


# ------------------------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------------------------


_REGION_MARKERS = ("detected_transcripts.csv", "cell_by_gene.csv", "cell_metadata.csv", "images")


def _check_region_folder(path: Path) -> None:
    """A folder without any of a region's files: say what a region folder holds and what is there instead
    (region folders further down, when the path is the experiment or output folder above them)."""
    if any((path / m).exists() for m in _REGION_MARKERS):
        return
    regions = sorted(p for p in [*path.glob("region_*"), *path.glob("*/region_*")] if p.is_dir())
    if regions:
        listed = ", ".join(str(r.relative_to(path)) for r in regions[:5])
        raise ReaderError(
            f"{path}: not a MERSCOPE region folder, but it holds region folders: {listed}; pass one of them "
            f"(e.g. {regions[0]})"
        )
    found = sorted(p.name for p in path.iterdir())[:8]
    raise ReaderError(
        f"{path}: not a MERSCOPE region folder: expected {', '.join(_REGION_MARKERS)}; found "
        f"{', '.join(found) if found else 'nothing'}"
    )


@with_folder_hints('merscope')
def iter_merscope(
    path: str | Path,
    *,
    vpt_outputs: str | Path | Mapping[str, str | Path] | None = None,
    z_layers: int | Sequence[int] | None = (3,),
    region_name: str | None = None,
    slide_name: str | None = None,
    dataset_id: str | None = None,
    mosaic_images: bool = True,
    transcripts: bool = True,
    cell_boundaries: bool = True,
    cells_table: bool = True,
    boundaries_z_index: int = 0,
    scan_features: bool = False,
    transcripts_blocksize: int | str | None = "64MiB",
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
    pyramid: bool = True,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a MERSCOPE region folder: mosaics, transcripts, cell polygons, then the table.

    Parameters are those of :func:`merscope`. Every file is located and its header checked before the first
    element is yielded.
    """
    from tissuestack.elements import sanitize_name
    from tissuestack.transforms import Affine

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a MERSCOPE region folder (region_<N>/)")
    _check_region_folder(path)
    region_name = path.name if region_name is None else str(region_name)
    slide_name = path.parent.name if slide_name is None else str(slide_name)
    dataset_id = sanitize_name(f"{slide_name}_{region_name}" if dataset_id is None else dataset_id)
    polygons_name = f"{dataset_id}_polygons"

    # --- locate and check everything first
    mosaics: list[tuple[str, dict[str, Path], list[str]]] = []
    pixel_to_um = None
    if z_layers is None:
        layers: list[int] = []
    else:
        layers = [int(z_layers)] if isinstance(z_layers, int | np.integer) else [int(z) for z in z_layers]
    if mosaic_images and layers:
        images_dir = path / IMAGES_DIR
        if not images_dir.is_dir():
            raise ReaderError(
                f"{images_dir}: images folder not found (pass mosaic_images=False to skip the mosaics)"
            )
        files = _mosaic_files(images_dir)
        if not files:
            raise ReaderError(f"{images_dir}: no mosaic_<stain>_z<k>.tif files")
        matrix = micron_to_pixel(images_dir)
        pixel_to_um = Affine(np.linalg.inv(matrix), ("x", "y"), ("x", "y"))
        all_stains = stain_order(sorted({s for per_z in files.values() for s in per_z}))
        for z in layers:
            if z not in files:
                raise ReaderError(
                    f"{images_dir}: no mosaic for z plane {z}; the folder has the z planes {sorted(files)}"
                )
            present = [s for s in all_stains if s in files[z]]
            absent = [s for s in all_stains if s not in files[z]]
            if absent:
                warnings.warn(
                    f"{images_dir}: z plane {z} has no mosaic for the stain(s) {absent} "
                    f"(expected mosaic_<stain>_z{z}.tif); image {dataset_id}_z{z} has the channels {present}",
                    UserWarning,
                    stacklevel=2,
                )
            mosaics.append((f"{dataset_id}_z{z}", files[z], present))

    counts_file, metadata_file, boundaries = _table_files(path, vpt_outputs)
    transcripts_file = None
    if transcripts:
        found = [path / n for n in TRANSCRIPTS_FILES if (path / n).is_file()]
        if not found:
            raise ReaderError(
                f"{path}: no transcripts file; expected {' or '.join(TRANSCRIPTS_FILES)} (pass transcripts=False to "
                "skip them)"
            )
        transcripts_file = found[0]
    if cell_boundaries and (boundaries is None or not boundaries.exists()):
        raise ReaderError(
            f"{boundaries}: cell boundaries not found; expected {BOUNDARIES_FILE} (current software) or a "
            f"{BOUNDARIES_HDF5_DIR}/ folder of feature_data_<fov>.hdf5 files (older software); pass "
            "cell_boundaries=False to skip them"
        )
    gene_names = None
    if cells_table or (transcripts and not scan_features):
        if counts_file.is_file():
            columns = frame_columns(counts_file)
            gene_names = [c for c in columns[1:]]
        elif cells_table:
            raise ReaderError(
                f"{counts_file}: cell by gene counts not found (pass cells_table=False to skip the table)"
            )
    if cells_table:
        if not metadata_file.is_file():
            raise ReaderError(
                f"{metadata_file}: cell metadata not found (pass cells_table=False to skip the table)"
            )
        check_csv_tail(counts_file, "cell by gene counts")
        check_csv_tail(metadata_file, "cell metadata")

    # --- elements
    for name, files_z, stains in mosaics:
        yield name, _mosaic_element(files_z, stains, pixel_to_um, name, pyramid=pyramid, chunks=image_chunks)
    if transcripts_file is not None:
        categories = None if scan_features else gene_names
        name = f"{dataset_id}_transcripts"
        yield name, _transcripts_element(transcripts_file, categories, transcripts_blocksize, name)
    if cell_boundaries:
        assert boundaries is not None
        yield polygons_name, _polygons_element(boundaries, boundaries_z_index, polygons_name)
    if cells_table:
        yield (
            TABLE_NAME,
            _table(
                counts_file,
                metadata_file,
                region=polygons_name,
                region_name=region_name,
                slide_name=slide_name,
                dataset_id=dataset_id,
            ),
        )


def merscope(
    path: str | Path,
    *,
    vpt_outputs: str | Path | Mapping[str, str | Path] | None = None,
    z_layers: int | Sequence[int] | None = (3,),
    region_name: str | None = None,
    slide_name: str | None = None,
    dataset_id: str | None = None,
    mosaic_images: bool = True,
    transcripts: bool = True,
    cell_boundaries: bool = True,
    cells_table: bool = True,
    boundaries_z_index: int = 0,
    scan_features: bool = False,
    transcripts_blocksize: int | str | None = "64MiB",
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
    pyramid: bool = True,
):
    """Read a Vizgen MERSCOPE region folder.

    Parameters
    ----------
    path
        The region folder (``region_<N>/``, holding ``detected_transcripts.csv`` and ``images/``).
    vpt_outputs
        Use a VPT re-segmentation instead of the instrument's cells: a folder holding ``cell_by_gene.csv``,
        ``cell_metadata.csv`` and ``cellpose_micron_space.parquet`` or ``watershed_micron_space.parquet``, or a
        mapping with the keys ``cell_by_gene``, ``cell_metadata``, ``cell_boundaries`` (relative to ``path`` or
        absolute).
    z_layers
        z plane(s) (0-6) whose mosaics are read, one image each; ``None`` or ``()`` reads none.
    region_name, slide_name
        Default: the names of ``path`` and of its parent folder; stored in ``obs`` and naming the dataset.
    dataset_id
        Prefix of the element names; default ``<slide_name>_<region_name>``.
    mosaic_images, transcripts, cell_boundaries, cells_table
        Which elements to read.
    boundaries_z_index
        The z plane (``ZIndex``) whose cell boundaries become the polygons.
    scan_features
        Collect the gene categories of the transcripts with one pass over the file instead of taking them from
        the ``cell_by_gene.csv`` header (needed only if the transcripts hold genes the counts table does not).
    transcripts_blocksize
        Bytes of CSV per partition of the lazy transcripts.
    image_chunks
        Dask chunks of the mosaics (default: the TIFF helper's, ~1024 px tiles).
    pyramid
        Build a lazy pyramid (halvings down to ~512 px) for the mosaics.

    Returns
    -------
    SpatialData
        Images ``<id>_z<k>``, points ``<id>_transcripts``, shapes ``<id>_polygons`` and table ``table``
        (annotating the polygons by EntityID), all in the coordinate system ``global`` (µm).

    Raises
    ------
    ReaderError
        A required file is missing, malformed or truncated, a column is missing, or a z plane has no mosaic;
        the message names the file and what was expected.
    """
    return collect(
        iter_merscope(
            path,
            vpt_outputs=vpt_outputs,
            z_layers=z_layers,
            region_name=region_name,
            slide_name=slide_name,
            dataset_id=dataset_id,
            mosaic_images=mosaic_images,
            transcripts=transcripts,
            cell_boundaries=cell_boundaries,
            cells_table=cells_table,
            boundaries_z_index=boundaries_z_index,
            scan_features=scan_features,
            transcripts_blocksize=transcripts_blocksize,
            image_chunks=image_chunks,
            pyramid=pyramid,
        )
    )


TECHNOLOGY = Technology(
    name="merscope",
    summary="Vizgen MERSCOPE region folder: z-plane mosaics, transcripts, cell boundaries (Parquet or older per-FOV "
    "HDF5) and the cell table, in µm",
    iter_elements=iter_merscope,
    options=(
        Option(
            "vpt_outputs",
            str,
            None,
            "folder of a VPT re-segmentation to use instead of the instrument's cells",
        ),
        Option("z_layers", tuple, (3,), "z planes (0-6) whose mosaics are read"),
        Option("region_name", str, None, "region name (default: the folder name)"),
        Option("slide_name", str, None, "slide/run name (default: the parent folder name)"),
        Option("dataset_id", str, None, "element name prefix (default: <slide>_<region>)"),
        Option("mosaic_images", bool, True, "read the mosaics"),
        Option("transcripts", bool, True, "read the detected transcripts"),
        Option("cell_boundaries", bool, True, "read the cell boundaries"),
        Option("cells_table", bool, True, "read the cell table"),
        Option("boundaries_z_index", int, 0, "z plane of the cell boundaries"),
        Option("scan_features", bool, False, "collect the transcript genes with a pass over the file"),
        Option("pyramid", bool, True, "build a pyramid for the mosaics"),
    ),
)
