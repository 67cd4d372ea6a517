"""Xenium shapes: cells.parquet (centroids, areas) and the cell / nucleus boundary polygons."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError
from tissuestack.io._xenium_common import (
    CELL_ID,
    CELLS_FILE,
    CELLS_ZARR,
    NUCLEUS_BOUNDARIES_FILE,
    _ids_column,
    _parquet_file,
    _rel,
    _require_columns,
    _Specs,
    _to_str,
)
from tissuestack.io._xenium_rasters import _Cells

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
