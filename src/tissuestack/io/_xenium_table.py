"""Xenium counts table: cell_feature_matrix.h5 with obs from cells.parquet and the label mapping."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError
from tissuestack.io._xenium_common import (
    CELL_ID,
    CELLS_FILE,
    CELLS_ZARR,
    LABELS_KEY,
    MATRIX_FILE,
    REGION_KEY,
    TABLE_NAME,
    _rel,
    _require,
    _Specs,
)
from tissuestack.io._xenium_rasters import _Cells
from tissuestack.io._xenium_shapes import _read_cells_parquet

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
