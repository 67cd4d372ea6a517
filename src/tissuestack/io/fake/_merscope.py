"""Synthetic Vizgen MERSCOPE region folders (current Parquet boundaries, the older per-FOV HDF5 boundaries, and a
VPT re-segmentation output folder), a few tens of KB to ~150 KB each.

The layout follows ``docs/vendors.md`` §4 and §7.4::

    <root>/202401011200_SyntheticSlide_VMSC00001/region_0/
      detected_transcripts.csv             unnamed non-consecutive index, global_x/y in µm, global_z plane index
      cell_by_gene.csv                     cell, <genes...>, Blank-0, Blank-1
      cell_metadata.csv                    EntityID (header empty in "legacy"), fov, volume, center_x, ... (µm)
      cell_boundaries.parquet              GeoParquet, one row per cell and z plane, column "Geometry" ("current")
      cell_boundaries/feature_data_<fov>.hdf5                                                         ("legacy")
      images/mosaic_<stain>_z<k>.tif       uint16 single-page TIFFs, stains DAPI, PolyT, Cellbound1
      images/micron_to_mosaic_pixel_transform.csv
      images/manifest.json
      vpt_outputs/ (vpt=True)              cell_by_gene.csv, cell_metadata.csv, cellpose_micron_space.parquet

Everything is consistent, so a reader can be checked numerically:

* cells are axis-aligned squares in µm; a transcript belongs to the cell whose square contains it (``cell_id``)
  and ``cell_by_gene.csv`` holds exactly the per-cell gene counts of the assigned transcripts;
* the mosaic pixel holding a transcript has the value ``TRANSCRIPT_MARK + i`` in every PolyT plane (``i`` the row
  of the transcript in the CSV), and the pixels inside cell ``k`` have the value ``CELL_MARK + k`` in every DAPI
  plane; every other pixel holds ``BACKGROUND[stain] + z``;
* the µm -> mosaic pixel transform is ``px = (µm - ORIGIN_UM) / MICRONS_PER_PIXEL`` (pixel ``(r, c)`` covers
  ``[c, c + 1) x [r, r + 1)`` in mosaic pixel coordinates).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BACKGROUND",
    "CELL_MARK",
    "ENTITY_ID_BASE",
    "MERSCOPE_VERSIONS",
    "MICRONS_PER_PIXEL",
    "MOSAIC_SHAPE",
    "ORIGIN_UM",
    "REGION",
    "SLIDE",
    "STAINS",
    "TRANSCRIPT_MARK",
    "write_merscope",
]

MERSCOPE_VERSIONS = ("current", "legacy")
SLIDE = "202401011200_SyntheticSlide_VMSC00001"
REGION = "region_0"
MICRONS_PER_PIXEL = 0.108
ORIGIN_UM = (100.0, 200.0)  # (x, y) of the mosaic's top-left corner in µm
MOSAIC_SHAPE = (48, 64)  # (rows, columns)
STAINS = ("DAPI", "PolyT", "Cellbound1")
BACKGROUND = {"DAPI": 10, "PolyT": 20, "Cellbound1": 30}
CELL_MARK = 1000
TRANSCRIPT_MARK = 2000
ENTITY_ID_BASE = 1234567890123450000
N_PLANES = 7
GENES = ("Gad1", "Slc17a7", "Pvalb", "Sst", "Vip", "Blank-0", "Blank-1")
CELL_SIDE_PX = 8  # cells are squares of 8 x 8 mosaic pixels
FOV_SPLIT_COLUMN = MOSAIC_SHAPE[1] // 2  # FOV 0 left of it, FOV 1 right


def _cell_squares(n_cells: int) -> np.ndarray:
    """(n_cells, 4) integer pixel boxes (row0, col0, row1, col1), on a grid with gaps, inside the mosaic."""
    rows, cols = MOSAIC_SHAPE
    per_row = (cols - 4) // (CELL_SIDE_PX + 4)
    per_col = (rows - 4) // (CELL_SIDE_PX + 4)
    if n_cells > per_row * per_col:
        raise ValueError(
            f"n_cells={n_cells} does not fit the {rows}x{cols} mosaic (at most {per_row * per_col})"
        )
    k = np.arange(n_cells)
    r0 = 3 + (k // per_row) * (CELL_SIDE_PX + 4)
    c0 = 3 + (k % per_row) * (CELL_SIDE_PX + 4)
    return np.column_stack([r0, c0, r0 + CELL_SIDE_PX, c0 + CELL_SIDE_PX])


def _px_to_um(col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ORIGIN_UM[0] + col * MICRONS_PER_PIXEL, ORIGIN_UM[1] + row * MICRONS_PER_PIXEL


def _square_um(box: np.ndarray, shrink: float = 0.0) -> list[tuple[float, float]]:
    r0, c0, r1, c1 = (float(v) for v in box)
    x0, y0 = _px_to_um(np.float64(c0 + shrink), np.float64(r0 + shrink))
    x1, y1 = _px_to_um(np.float64(c1 - shrink), np.float64(r1 - shrink))
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def write_merscope(
    path: str | Path,
    *,
    n_cells: int = 6,
    n_transcripts: int = 100,
    z_layers: Sequence[int] = tuple(range(N_PLANES)),
    version: str = "current",
    vpt: bool = False,
    missing_plane: tuple[str, int] | None = None,
    invalid_geometry: bool = False,
    seed: int = 0,
) -> Path:
    """Write a synthetic MERSCOPE region folder under ``path`` and return the region folder.

    Parameters
    ----------
    path
        Root folder; the bundle is written to ``<path>/202401011200_SyntheticSlide_VMSC00001/region_0``.
    n_cells
        Number of square cells (at most 12). Cell ``k`` has EntityID ``ENTITY_ID_BASE + k``; the last cell has two
        polygon parts (a MultiPolygon) at every z plane.
    n_transcripts
        Transcripts at distinct mosaic pixels (at most the number of pixels), some outside every cell.
    z_layers
        Which of the 7 z planes get mosaic TIFFs (every stain).
    version
        ``"current"``: ``cell_boundaries.parquet``, ``cell_id`` in the transcripts, ``EntityID`` header and
        per-stain intensity columns in the cell metadata. ``"legacy"``: per-FOV HDF5 boundaries
        ``cell_boundaries/feature_data_<fov>.hdf5`` (``featuredata/<EntityID>/zIndex_<z>/p_<k>/coordinates``),
        no ``cell_id`` column and an empty first header in ``cell_metadata.csv``.
    vpt
        Also write a VPT re-segmentation folder ``vpt_outputs/`` (counts, metadata and
        ``cellpose_micron_space.parquet``), holding the same cells.
    missing_plane
        ``(stain, z)`` whose mosaic file is left out.
    invalid_geometry
        Make cell 0's boundary at every z plane a self-intersecting "bow tie" (readers drop it).
    seed
        Random seed (transcript positions and genes).
    """
    if version not in MERSCOPE_VERSIONS:
        raise ValueError(f"version must be one of {MERSCOPE_VERSIONS}, got {version!r}")
    rng = np.random.default_rng(seed)
    region = Path(path) / SLIDE / REGION
    (region / "images").mkdir(parents=True, exist_ok=True)
    rows, cols = MOSAIC_SHAPE
    boxes = _cell_squares(n_cells)
    entity = ENTITY_ID_BASE + np.arange(n_cells, dtype=np.int64)

    # transcripts: distinct pixels, position = pixel centre + jitter inside the pixel
    if n_transcripts > rows * cols:
        raise ValueError(f"n_transcripts={n_transcripts} exceeds the {rows * cols} mosaic pixels")
    flat = rng.choice(rows * cols, size=n_transcripts, replace=False)
    flat = flat[np.argsort(flat % cols >= FOV_SPLIT_COLUMN, kind="stable")]  # the file is sorted by FOV
    t_row, t_col = flat // cols, flat % cols
    jitter = rng.uniform(0.2, 0.8, size=(n_transcripts, 2))
    gx, gy = _px_to_um(t_col + jitter[:, 0], t_row + jitter[:, 1])
    inside = (
        (t_row[:, None] >= boxes[None, :, 0])
        & (t_row[:, None] < boxes[None, :, 2])
        & (t_col[:, None] >= boxes[None, :, 1])
        & (t_col[:, None] < boxes[None, :, 3])
    )
    cell_of = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
    gene_idx = rng.integers(0, len(GENES), size=n_transcripts)
    t_fov = (t_col >= FOV_SPLIT_COLUMN).astype(np.int64)
    fov_origin_col = np.where(t_fov == 1, FOV_SPLIT_COLUMN, 0)
    _write_transcripts(
        region, rng, gx, gy, t_col, t_row, jitter, fov_origin_col, t_fov, gene_idx, cell_of, entity, version
    )

    # cell x gene counts of the assigned transcripts
    counts = np.zeros((n_cells, len(GENES)), dtype=np.int64)
    assigned = cell_of >= 0
    np.add.at(counts, (cell_of[assigned], gene_idx[assigned]), 1)
    _write_cell_tables(region, boxes, entity, counts, version)

    # boundaries
    parts = _cell_parts(boxes, invalid_geometry)
    if version == "current":
        _write_boundaries_parquet(region / "cell_boundaries.parquet", parts, entity)
    else:
        _write_boundaries_hdf5(region / "cell_boundaries", parts, entity, boxes)

    # mosaics, transform, manifest
    _write_mosaics(region / "images", boxes, t_row, t_col, z_layers, missing_plane)
    if vpt:
        out = region / "vpt_outputs"
        out.mkdir(exist_ok=True)
        _write_cell_tables(out, boxes, entity, counts, "current")
        _write_boundaries_parquet(out / "cellpose_micron_space.parquet", parts, entity)
    return region


def _write_transcripts(
    region: Path,
    rng: np.random.Generator,
    gx: np.ndarray,
    gy: np.ndarray,
    t_col: np.ndarray,
    t_row: np.ndarray,
    jitter: np.ndarray,
    fov_origin_col: np.ndarray,
    t_fov: np.ndarray,
    gene_idx: np.ndarray,
    cell_of: np.ndarray,
    entity: np.ndarray,
    version: str,
) -> None:
    import pandas as pd

    n = len(gx)
    # FOV-local pixel coordinates (the instrument's FOV camera pixels; here the mosaic scale, offset per FOV)
    local_x = (t_col - fov_origin_col + jitter[:, 0]).astype(np.float64)
    local_y = (t_row + jitter[:, 1]).astype(np.float64)
    frame = pd.DataFrame(
        {
            "barcode_id": gene_idx.astype(np.int64),
            "global_x": gx,
            "global_y": gy,
            "global_z": rng.integers(0, N_PLANES, size=n).astype(np.float64),
            "x": local_x,
            "y": local_y,
            "fov": t_fov,
            "gene": np.asarray(GENES, dtype=object)[gene_idx],
            "transcript_id": [f"ENSMUST{1000 + g:011d}" for g in gene_idx.tolist()],
        },
        # unique within a FOV, non-consecutive
        index=_per_fov_index(t_fov),
    )
    if version == "current":
        frame["cell_id"] = np.where(cell_of >= 0, entity[np.maximum(cell_of, 0)], -1).astype(np.int64)
    frame.to_csv(region / "detected_transcripts.csv", float_format="%.6f")


def _per_fov_index(fov: np.ndarray) -> np.ndarray:
    """A non-consecutive index that restarts in every FOV (0, 3, 6, ... per FOV, in row order)."""
    out = np.empty(len(fov), dtype=np.int64)
    for f in np.unique(fov):
        rows = np.flatnonzero(fov == f)
        out[rows] = np.arange(len(rows)) * 3
    return out


def _write_cell_tables(
    folder: Path, boxes: np.ndarray, entity: np.ndarray, counts: np.ndarray, version: str
) -> None:
    import pandas as pd

    ids = entity.astype(str)
    cbg = pd.DataFrame(counts, columns=list(GENES), index=pd.Index(ids, name="cell"))
    cbg.to_csv(folder / "cell_by_gene.csv")
    r0, c0, r1, c1 = (boxes[:, i].astype(np.float64) for i in range(4))
    min_x, min_y = _px_to_um(c0, r0)
    max_x, max_y = _px_to_um(c1, r1)
    side = CELL_SIDE_PX * MICRONS_PER_PIXEL
    meta = pd.DataFrame(
        {
            "fov": (c0 >= FOV_SPLIT_COLUMN).astype(np.int64),
            "volume": np.full(len(ids), side * side * 1.5 * N_PLANES),
            "center_x": (min_x + max_x) / 2,
            "center_y": (min_y + max_y) / 2,
            "min_x": min_x,
            "max_x": max_x,
            "min_y": min_y,
            "max_y": max_y,
            "anisotropy": np.ones(len(ids)),
            "transcript_count": counts.sum(axis=1),
            "perimeter_area_ratio": np.full(len(ids), 4.0 / side),
            "solidity": np.ones(len(ids)),
        },
        index=pd.Index(ids, name="EntityID" if version == "current" else None),
    )
    if version == "current":
        meta["DAPI_raw"] = CELL_MARK + np.arange(len(ids), dtype=np.float64)
        meta["DAPI_high_pass"] = meta["DAPI_raw"] / 2
    meta.to_csv(folder / "cell_metadata.csv")


def _cell_parts(boxes: np.ndarray, invalid: bool) -> list[list[list[tuple[float, float]]]]:
    """Polygon rings (µm) of every cell: one square; the last cell has a second small square part."""
    parts = [[_square_um(box, shrink=0.5)] for box in boxes]
    if len(boxes) > 1:
        r0, c0, _, _ = boxes[-1]
        extra = np.array([r0 - 2, c0 - 2, r0 - 1, c0 - 1])
        parts[-1].append(_square_um(extra))
    if invalid and len(boxes):
        (x0, y0), (x1, _), (_, y1) = parts[0][0][0], parts[0][0][1], parts[0][0][2]
        parts[0] = [[(x0, y0), (x1, y1), (x1, y0), (x0, y1), (x0, y0)]]  # bow tie
    return parts


def _write_boundaries_parquet(file: Path, parts: list, entity: np.ndarray) -> None:
    import geopandas as gpd
    import shapely

    n_cells = len(parts)
    geoms = [shapely.MultiPolygon([shapely.Polygon(ring) for ring in rings]) for rings in parts]
    z = np.repeat(np.arange(N_PLANES), n_cells)
    cell = np.tile(np.arange(n_cells), N_PLANES)
    gdf = gpd.GeoDataFrame(
        {
            "ID": np.arange(len(z), dtype=np.int64),
            "EntityID": entity[cell],
            "ZIndex": z.astype(np.int64),
            "ZLevel": 1.5 * (z + 1),
            "Type": "cell",
            "ParentID": None,
            "ParentType": None,
            "Name": None,
            "Geometry": [geoms[k] for k in cell.tolist()],
        },
        geometry="Geometry",
    )
    gdf.to_parquet(file)


def _write_boundaries_hdf5(folder: Path, parts: list, entity: np.ndarray, boxes: np.ndarray) -> None:
    import h5py

    folder.mkdir(exist_ok=True)
    fov = (boxes[:, 1] >= FOV_SPLIT_COLUMN).astype(int)
    for f in np.unique(fov).tolist():
        with h5py.File(folder / f"feature_data_{f}.hdf5", "w", libver="latest") as h5:
            root = h5.create_group("featuredata")
            for k in np.flatnonzero(fov == f).tolist():
                cell = root.create_group(str(int(entity[k])))
                cell.attrs["id"] = str(int(entity[k]))
                for z in range(N_PLANES):
                    plane = cell.create_group(f"zIndex_{z}")
                    for i, ring in enumerate(parts[k]):
                        plane.create_group(f"p_{i}")["coordinates"] = np.asarray(ring, dtype=np.float64)[None]
                cell["z_coordinates"] = 1.5 * (np.arange(N_PLANES) + 1)


def _write_mosaics(
    images: Path,
    boxes: np.ndarray,
    t_row: np.ndarray,
    t_col: np.ndarray,
    z_layers: Sequence[int],
    missing_plane: tuple[str, int] | None,
) -> None:
    import tifffile

    rows, cols = MOSAIC_SHAPE
    for stain in STAINS:
        for z in z_layers:
            if missing_plane is not None and (stain, int(z)) == (missing_plane[0], int(missing_plane[1])):
                continue
            plane = np.full(MOSAIC_SHAPE, BACKGROUND[stain] + int(z), dtype=np.uint16)
            if stain == "DAPI":
                for k, (r0, c0, r1, c1) in enumerate(boxes.tolist()):
                    plane[r0:r1, c0:c1] = CELL_MARK + k
            elif stain == "PolyT":
                plane[t_row, t_col] = TRANSCRIPT_MARK + np.arange(len(t_row))
            tifffile.imwrite(images / f"mosaic_{stain}_z{int(z)}.tif", plane)
    s = 1.0 / MICRONS_PER_PIXEL
    matrix = np.array([[s, 0.0, -ORIGIN_UM[0] * s], [0.0, s, -ORIGIN_UM[1] * s], [0.0, 0.0, 1.0]])
    np.savetxt(images / "micron_to_mosaic_pixel_transform.csv", matrix, delimiter=" ")
    manifest = {
        "microns_per_pixel": MICRONS_PER_PIXEL,
        "bbox_microns": [
            ORIGIN_UM[0],
            ORIGIN_UM[1],
            ORIGIN_UM[0] + cols * MICRONS_PER_PIXEL,
            ORIGIN_UM[1] + rows * MICRONS_PER_PIXEL,
        ],
        "mosaic_width_pixels": cols,
        "mosaic_height_pixels": rows,
        "hor_num_tiles_box": 1,
        "vert_num_tiles_box": 1,
        "mosaic_files": sorted(p.name for p in images.glob("mosaic_*.tif")),
    }
    (images / "manifest.json").write_text(json.dumps(manifest, indent=2))
