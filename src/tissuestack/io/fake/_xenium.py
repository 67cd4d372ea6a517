"""Synthetic 10x Genomics Xenium output bundles (the XOA "outs" folder), one layout per software generation.

The files follow ``docs/vendors.md`` §1 and the recipe of §7.1, generalised to any number of cells:

* square cells of ``cell_size`` pixels on a grid (label ``i + 1`` for cell row ``i``), in a morphology image whose
  pixel ``(0, 0)`` is micron ``(0, 0)`` and whose pixel size is ``pixel_size`` µm;
* nuclei inside the cells: one centred square per cell (1.x layouts: exactly one, same label as its cell); from
  2.0 on, when ``multinucleate`` is set, every 50th cell (row 2, 52, ...) has two nuclei and every 50th (row 4,
  54, ...) none, nucleus polygons labelled ``p + 1`` in polygon order with ``polygon_sets/0/cell_index``;
* transcripts uniform over the image, assigned to the cell (and nucleus) under them, written in chunks of
  ``chunk_size`` rows (bounded memory), counts of the transcripts with ``qv >= 20`` going to the cell matrix;
* every file a reader consumes: ``experiment.xenium``, ``cells.zarr.zip``, ``cells.parquet``,
  ``cell_feature_matrix.h5``, ``transcripts.parquet``, ``cell_boundaries.parquet``, ``nucleus_boundaries.parquet``,
  the morphology images of the layout and, optionally, an aligned H&E and IF image with their alignment CSVs.

Layouts (``version``): ``1.0``–``1.2`` integer cell ids, mip + focus files; ``1.3``–``1.x`` string ids and
``seg_mask_value``; ``2.0`` ``morphology_focus/`` multi-file (1 or 4 channels), ``polygon_sets``, ``label_id``,
multinucleate cells; ``3.x`` adds the Xenium Prime columns; ``4.x`` names the focus files ``chNNNN_<name>`` and can
add protein features. Defaults are small (tens of KB); ``n_cells=100_000, n_transcripts=20_000_000`` writes a
benchmark-sized bundle in bounded memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["XENIUM_VERSIONS", "cell_id_strings", "write_xenium"]

#: one example version per layout generation (any X.Y.Z is accepted)
XENIUM_VERSIONS: tuple[str, ...] = ("1.0.2", "1.7.1", "2.0.0", "3.1.0", "4.0.0")

CELL_SUMMARY_COLUMNS = (
    "cell_centroid_x",
    "cell_centroid_y",
    "cell_area",
    "nucleus_centroid_x",
    "nucleus_centroid_y",
    "nucleus_area",
    "z_level",
    "nucleus_count",
)
MULTIMODAL_CHANNELS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")
PROTEIN_NAMES = ("CD45", "VISTA", "PanCK")
SEGMENTATION_METHODS = (
    "Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)",
    "Segmented by interior stain (18S)",
    "Segmented by nucleus expansion of 5.0µm",
)
_TRANSCRIPT_ID_BASE = 281_474_976_710_656  # real ids are large uint64 values
_BAND_ROWS = 256  # rows of the rasters generated at a time (bounded temporaries)


# ------------------------------------------------------------------------------------------------ ids


def cell_id_strings(prefix: np.ndarray, suffix: np.ndarray | int = 1) -> np.ndarray:
    """Xenium cell id strings from the ``(prefix, dataset suffix)`` uint32 pairs of ``cells.zarr.zip``.

    The prefix is written as 8 hexadecimal nibbles, most significant first, each mapped to ``a`` .. ``p``;
    ``-<suffix>`` is appended: ``(1, 1) -> "aaaaaaab-1"``.
    """
    prefix = np.asarray(prefix, dtype=np.uint32)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    letters = (((prefix[:, None] >> shifts) & 0xF) + ord("a")).astype(np.uint8)
    heads = letters.view("S8").ravel().astype("U8")
    tails = np.char.add("-", np.broadcast_to(np.asarray(suffix), prefix.shape).astype("U"))
    return np.char.add(heads, tails)


def _prefixes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique, increasing uint32 id prefixes; the first ones are the worked examples of the format notes."""
    step = max(1, min(40_000, (2**32 - 1_437_536_274) // max(n, 1)))
    rest = 1_437_536_274 + np.cumsum(rng.integers(1, step + 1, size=max(n - 3, 0)), dtype=np.int64)
    head = np.array([1, 1_437_536_272, 1_437_536_273], dtype=np.int64)[: min(n, 3)]
    return np.concatenate([head, rest]).astype(np.uint32)


# ------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class _Layout:
    version: tuple[int, int, int]

    @property
    def string_ids(self) -> bool:  # >= 1.3
        return self.version[:2] >= (1, 3)

    @property
    def v2(self) -> bool:
        return self.version[0] >= 2

    @property
    def v3(self) -> bool:
        return self.version[0] >= 3

    @property
    def v4(self) -> bool:
        return self.version[0] >= 4


def _parse_version(version: str) -> tuple[int, int, int]:
    text = version.removeprefix("xenium-").removeprefix("Xenium-")
    parts = text.split(".")
    try:
        numbers = tuple(int(p) for p in parts[:3])
    except ValueError:
        raise ValueError(f"version must look like 'X.Y.Z' (e.g. '2.0.0'), got {version!r}") from None
    if len(numbers) < 2 or numbers[0] < 1:
        raise ValueError(f"version must look like 'X.Y.Z' with X >= 1, got {version!r}")
    return (*numbers, 0, 0)[:3]  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class _Geometry:
    """Square cells of ``side`` px on a grid of ``pitch`` px with a margin, and their nuclei."""

    n_cells: int
    n_cols: int
    n_rows: int
    pitch: int
    side: int
    margin: int
    n_nuclei: np.ndarray  # per cell: 0, 1 or 2
    first_nucleus: np.ndarray  # per cell: index of its first nucleus polygon

    @classmethod
    def build(cls, n_cells: int, side: int, multinucleate: bool) -> _Geometry:
        n_cols = max(1, math.ceil(math.sqrt(n_cells * 1.5)))
        n_rows = max(1, math.ceil(n_cells / n_cols))
        gap = max(4, side // 6)
        n_nuclei = np.ones(n_cells, dtype=np.int64)
        if multinucleate:
            rows = np.arange(n_cells)
            n_nuclei[rows % 50 == 2] = 2
            n_nuclei[rows % 50 == 4] = 0
        first = np.concatenate([[0], np.cumsum(n_nuclei)[:-1]]).astype(np.int64)
        return cls(n_cells, n_cols, n_rows, side + gap, side, gap, n_nuclei, first)

    @property
    def height(self) -> int:
        return self.n_rows * self.pitch + 2 * self.margin

    @property
    def width(self) -> int:
        return self.n_cols * self.pitch + 2 * self.margin

    @property
    def n_nucleus_polygons(self) -> int:
        return int(self.n_nuclei.sum())

    def cell_origins(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = np.divmod(np.arange(self.n_cells), self.n_cols)
        return self.margin + cols * self.pitch, self.margin + rows * self.pitch

    def nucleus_boxes(self) -> np.ndarray:
        """``(n_polygons, 5)`` int array of ``owner cell, x0, y0, width, height`` in pixels, in polygon order."""
        x0, y0 = self.cell_origins()
        s = self.side
        owner = np.repeat(np.arange(self.n_cells), self.n_nuclei)
        second = np.zeros(len(owner), dtype=bool)
        second[1:] = owner[1:] == owner[:-1]
        double = self.n_nuclei[owner] == 2
        ox = np.where(double, np.where(second, 5 * s // 8, s // 8), s // 4)
        oy = np.where(double, 3 * s // 8, s // 4)
        size = np.where(double, s // 4, s // 2)
        return np.column_stack([owner, x0[owner] + ox, y0[owner] + oy, size, size])

    def _axis(self, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid index along one axis (-1 outside a cell) and local offset inside the cell."""
        rel = v.astype(np.int64) - self.margin
        idx, local = np.divmod(rel, self.pitch)
        inside = (rel >= 0) & (idx < n) & (local < self.side)
        return np.where(inside, idx, -1), local

    def locate(self, py: np.ndarray, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell row (-1: background) and nucleus polygon index (-1: none) of pixels (broadcasting)."""
        ry, ly = self._axis(py, self.n_rows)
        rx, lx = self._axis(px, self.n_cols)
        cell = np.where((ry >= 0) & (rx >= 0), ry * self.n_cols + rx, -1)
        cell = np.where(cell < self.n_cells, cell, -1)
        safe = np.maximum(cell, 0)
        count = np.where(cell >= 0, self.n_nuclei[safe], 0)
        s = self.side
        single = (count == 1) & (ly >= s // 4) & (ly < 3 * s // 4) & (lx >= s // 4) & (lx < 3 * s // 4)
        band = (count == 2) & (ly >= 3 * s // 8) & (ly < 5 * s // 8)
        left = band & (lx >= s // 8) & (lx < 3 * s // 8)
        right = band & (lx >= 5 * s // 8) & (lx < 7 * s // 8)
        first = self.first_nucleus[safe]
        nucleus = np.where(single | left, first, np.where(right, first + 1, -1))
        return cell, nucleus


# ------------------------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class _Features:
    ids: list[str]
    names: list[str]
    types: list[str]
    categories: list[str]  # codeword_category of each feature (>= 3.0)

    @classmethod
    def build(cls, n_genes: int, layout: _Layout) -> _Features:
        names = [f"GENE{i:04d}" for i in range(n_genes)]
        ids = [f"ENSG{i:011d}" for i in range(n_genes)]
        types = ["Gene Expression"] * n_genes
        cats = ["predesigned_gene"] * n_genes
        controls = [
            ("NegControlProbe_00001", "Negative Control Probe", "negative_control_probe"),
            ("NegControlCodeword_0500", "Negative Control Codeword", "negative_control_codeword"),
            ("UnassignedCodeword_0001", "Unassigned Codeword", "unassigned_codeword"),
        ]
        if layout.v3:
            controls.append(("GenomicControl_00001", "Genomic Control", "genomic_control_probe"))
        for name, ftype, cat in controls:
            names.append(name)
            ids.append(name)
            types.append(ftype)
            cats.append(cat)
        return cls(ids, names, types, cats)

    @property
    def n(self) -> int:
        return len(self.names)

    def weights(self) -> np.ndarray:
        w = np.array([1.0 if t == "Gene Expression" else 0.15 for t in self.types])
        return w / w.sum()


# ------------------------------------------------------------------------------------------------ writers


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def _write_experiment(
    folder: Path,
    layout: _Layout,
    pixel_size: float,
    n_cells: int,
    software_version: str | None,
    ranger_version: str | None,
) -> None:
    major, minor, patch = layout.version
    specs: dict = {
        "major_version": 5 if layout.v2 else 4,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "Synthetic run",
        "run_start_time": "2024-01-01T00:00:00Z",
        "region_name": "Region_1",
        "preservation_method": "ffpe",
        "num_cells": n_cells,
        "transcripts_per_cell": 0,
        "transcripts_per_100um": 0.0,
        "cassette_name": "synthetic",
        "slide_id": "0000001",
        "panel_design_id": "synthetic",
        "panel_name": "Synthetic panel",
        "panel_organism": "Human",
        "panel_num_targets_predesigned": 0,
        "panel_num_targets_custom": 0,
        "pixel_size": pixel_size,
        "instrument_sn": "0000",
        "instrument_sw_version": f"{major}.{minor}.{patch}",
        "analysis_sw_version": software_version or f"xenium-{major}.{minor}.{patch}.10",
        "z_step_size": 3.0,
    }
    if ranger_version is not None:
        specs["xenium_ranger"] = {"version": ranger_version}
    _write_json(folder / "experiment.xenium", specs)


def _write_cells_zarr(
    folder: Path,
    layout: _Layout,
    geom: _Geometry,
    prefixes: np.ndarray,
    summary: np.ndarray,
    pixel_size: float,
) -> None:
    """``cells.zarr.zip``: a Zarr v2 group built in a temporary folder, zipped without compression."""
    import zarr

    h, w = geom.height, geom.width
    chunk = 32 if max(h, w) <= 512 else 1024
    tmp = Path(tempfile.mkdtemp(prefix=".cells_zarr_", dir=folder))
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        n = geom.n_cells
        n_polygons = geom.n_nucleus_polygons
        root.attrs.update(
            {
                "major_version": 5 if layout.v2 else 4,
                "minor_version": 0,
                "name": "CellSegmentationDataset",
                "number_cells": n,
                "polygon_set_names": ["nucleus", "cell"],
                "polygon_set_display_names": ["Nucleus boundaries", "Cell boundaries"],
                "polygon_set_descriptions": ["DAPI-based nucleus segmentation", "Cell segmentation"],
                "spatial_units": "microns",
            }
        )
        if layout.string_ids:
            cell_id = np.column_stack([prefixes, np.ones(n, dtype=np.uint32)]).astype(np.uint32)
        else:
            cell_id = np.arange(1, n + 1, dtype=np.uint32)
        root.create_array("cell_id", data=cell_id, chunks=cell_id.shape if n else None)
        n_cols = 8 if layout.v2 else 7
        cs = root.create_array("cell_summary", data=np.ascontiguousarray(summary[:, :n_cols]))
        cs.attrs["column_names"] = list(CELL_SUMMARY_COLUMNS[:n_cols])
        cs.attrs["column_descriptions"] = [c.replace("_", " ") for c in CELL_SUMMARY_COLUMNS[:n_cols]]
        masks = root.create_group("masks")
        nucleus = masks.create_array("0", shape=(h, w), dtype=np.uint32, chunks=(chunk, chunk))
        cells = masks.create_array("1", shape=(h, w), dtype=np.uint32, chunks=(chunk, chunk))
        xs = np.arange(w)
        for start in range(0, h, _BAND_ROWS):
            stop = min(h, start + _BAND_ROWS)
            cell, nuc = geom.locate(np.arange(start, stop)[:, None], xs[None, :])
            cells[start:stop] = (cell + 1).astype(np.uint32)
            if layout.v2:
                nucleus[start:stop] = (nuc + 1).astype(np.uint32)
            else:  # 1.x: one nucleus per cell, labelled like its cell
                nucleus[start:stop] = np.where(nuc >= 0, cell + 1, 0).astype(np.uint32)
        transform = np.diag([1 / pixel_size, 1 / pixel_size, 1.0, 1.0]).astype(np.float32)
        masks.create_array("homogeneous_transform", data=transform)
        if layout.v2:
            boxes = geom.nucleus_boxes()
            sets = root.create_group("polygon_sets")
            for key, owner, count in (
                ("0", boxes[:, 0], n_polygons),
                ("1", np.arange(n), n),
            ):
                g = sets.create_group(key)
                g.create_array("cell_index", data=owner.astype(np.uint32))
                g.create_array("method", data=np.zeros(count, dtype=np.uint32))
                g.create_array("num_vertices", data=np.full(count, 5, dtype=np.int32))
                g.create_array("vertices", data=np.zeros((count, 10), dtype=np.float32))
        elif layout.string_ids:
            root.create_array("seg_mask_value", data=np.arange(1, n + 1, dtype=np.uint32))
        target = folder / "cells.zarr.zip"
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for dirpath, _, filenames in os.walk(tmp):
                for filename in sorted(filenames):
                    full = Path(dirpath) / filename
                    zf.write(full, full.relative_to(tmp).as_posix())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _string_array(values: Sequence[str] | np.ndarray, binary: bool):
    import pyarrow as pa

    values = [str(v) for v in values]
    if binary:
        return pa.array([v.encode() for v in values], type=pa.binary())
    return pa.array(values, type=pa.string())


def _write_transcripts(
    folder: Path,
    layout: _Layout,
    geom: _Geometry,
    features: _Features,
    cell_ids: np.ndarray,
    n_transcripts: int,
    pixel_size: float,
    rng: np.random.Generator,
    binary: bool,
    chunk_size: int,
    row_group_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write ``transcripts.parquet`` chunk by chunk; return the (cell, feature, count) triplets of qv >= 20."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    width_um, height_um = geom.width * pixel_size, geom.height * pixel_size
    if layout.string_ids:
        id_values = _string_array([*cell_ids.tolist(), "UNASSIGNED"], binary)
    feature_values = _string_array(features.names, binary)
    category_values = pa.array(features.categories, type=pa.string())
    is_gene_values = np.array([t == "Gene Expression" for t in features.types])
    fov_px = 4096
    n_fov_cols = max(1, -(-geom.width // fov_px))
    n_fov_rows = max(1, -(-geom.height // fov_px))
    fov_names = pa.array(
        [f"{chr(ord('A') + r % 26)}{c + 1}" for r in range(n_fov_rows) for c in range(n_fov_cols)]
    )
    weights = features.weights()
    cdf = np.cumsum(weights)
    cdf[-1] = 1.0

    triplets: list[tuple[np.ndarray, np.ndarray]] = []
    writer = None
    path = folder / "transcripts.parquet"
    try:
        for start in range(0, max(n_transcripts, 1), chunk_size):
            c = min(chunk_size, n_transcripts - start)
            if c <= 0:
                break
            x = rng.uniform(0, width_um, c).astype(np.float32)
            y = rng.uniform(0, height_um, c).astype(np.float32)
            px = np.minimum((x / pixel_size).astype(np.int64), geom.width - 1)
            py = np.minimum((y / pixel_size).astype(np.int64), geom.height - 1)
            cell, nucleus = geom.locate(py, px)
            feature = np.searchsorted(cdf, rng.random(c), side="right").astype(np.int32)
            qv = rng.uniform(10.0, 40.0, c).astype(np.float32)
            overlaps = (nucleus >= 0).astype(np.uint8)
            columns: dict = {
                "transcript_id": pa.array(
                    np.arange(start, start + c, dtype=np.uint64) + np.uint64(_TRANSCRIPT_ID_BASE)
                ),
            }
            if layout.string_ids:
                columns["cell_id"] = id_values.take(pa.array(np.where(cell >= 0, cell, len(cell_ids))))
            else:
                columns["cell_id"] = pa.array(np.where(cell >= 0, cell + 1, -1).astype(np.int64))
            columns["overlaps_nucleus"] = pa.array(overlaps)
            columns["feature_name"] = feature_values.take(pa.array(feature))
            columns["x_location"] = pa.array(x)
            columns["y_location"] = pa.array(y)
            columns["z_location"] = pa.array(rng.uniform(10.0, 30.0, c).astype(np.float32))
            columns["qv"] = pa.array(qv)
            fov = np.minimum(py // fov_px, n_fov_rows - 1) * n_fov_cols + np.minimum(
                px // fov_px, n_fov_cols - 1
            )
            columns["fov_name"] = fov_names.take(pa.array(fov))
            distance = np.where(overlaps == 1, 0.0, rng.uniform(0.5, 15.0, c)).astype(np.float32)
            columns["nucleus_distance"] = pa.array(distance)
            if layout.v2:
                columns["codeword_index"] = pa.array(feature)
            if layout.v3:
                columns["codeword_category"] = category_values.take(pa.array(feature))
                columns["is_gene"] = pa.array(is_gene_values[feature])
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=row_group_size)
            keep = (cell >= 0) & (qv >= 20)
            codes = cell[keep].astype(np.int64) * features.n + feature[keep]
            triplets.append(np.unique(codes, return_counts=True))
            del x, y, px, py, cell, nucleus, feature, qv, columns, table
    finally:
        if writer is not None:
            writer.close()
    if not triplets:  # an empty file with the schema of the layout
        raise ValueError("n_transcripts must be at least 1")
    codes = np.concatenate([t[0] for t in triplets])
    counts = np.concatenate([t[1] for t in triplets])
    unique, inverse = np.unique(codes, return_inverse=True)
    totals = np.bincount(inverse, weights=counts).astype(np.int64)
    cells, feats = np.divmod(unique, features.n)
    return cells, feats, totals


def _write_h5(
    path: Path,
    barcodes: np.ndarray,
    features: _Features,
    cells: np.ndarray,
    feats: np.ndarray,
    counts: np.ndarray,
    layout: _Layout,
    protein: np.ndarray | None,
    protein_scale: float,
) -> None:
    """``cell_feature_matrix.h5`` (§0.2): CSC features x barcodes, written from sparse triplets."""
    import h5py
    import scipy.sparse as sp

    n = len(barcodes)
    ids, names, types = list(features.ids), list(features.names), list(features.types)
    n_features = len(ids)
    rows, cols, vals = [cells], [feats], [counts]
    if protein is not None:
        for k, pname in enumerate(PROTEIN_NAMES):
            ids.append(pname)
            names.append(pname)
            types.append("Protein Expression")
            rows.append(np.arange(n))
            cols.append(np.full(n, n_features + k))
            vals.append(np.round(protein[:, k] * protein_scale).astype(np.int64))
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, len(ids))
    )
    matrix.eliminate_zeros()
    matrix.sort_indices()
    major = layout.version[0]
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.asarray(barcodes, dtype="S")
        g["data"] = matrix.data.astype(np.int32)
        g["indices"] = matrix.indices.astype(np.int64)
        g["indptr"] = matrix.indptr.astype(np.int64)
        g["shape"] = np.array([len(ids), n], dtype=np.int32)
        fe = g.create_group("features")
        fe["id"] = np.array(ids, dtype="S")
        fe["name"] = np.array(names, dtype="S")
        fe["feature_type"] = np.array(types, dtype="S")
        fe["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
        fe["_all_tag_keys"] = np.array([b"genome"])
        attrs = {
            "filetype": "matrix",
            "version": 2,
            "library_ids": np.array([b"synthetic"]),
            "chemistry_description": "Xenium",
            "software_version": f"xenium-{major}.{layout.version[1]}.{layout.version[2]}.10",
            "original_gem_groups": np.array([1]),
        }
        if protein is not None:
            attrs["protein_scaling_factor"] = protein_scale
        for key, value in attrs.items():
            f.attrs[key] = value


def _write_cells_parquet(
    path: Path,
    layout: _Layout,
    cell_ids: np.ndarray,
    summary: np.ndarray,
    per_type: dict[str, np.ndarray],
    binary: bool,
    n_channels: int,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(cell_ids)
    columns: dict = {}
    if layout.string_ids:
        columns["cell_id"] = _string_array(cell_ids, binary)
    else:
        columns["cell_id"] = pa.array(np.arange(1, n + 1, dtype=np.int64))
    columns["x_centroid"] = pa.array(summary[:, 0])
    columns["y_centroid"] = pa.array(summary[:, 1])
    genes = per_type["Gene Expression"]
    probes = per_type["Negative Control Probe"]
    codewords = per_type["Negative Control Codeword"]
    unassigned = per_type["Unassigned Codeword"]
    genomic = per_type.get("Genomic Control", np.zeros(n, dtype=np.int64))
    columns["transcript_counts"] = pa.array(genes)
    columns["control_probe_counts"] = pa.array(probes)
    if layout.v3:
        columns["genomic_control_counts"] = pa.array(genomic)
    columns["control_codeword_counts"] = pa.array(codewords)
    columns["unassigned_codeword_counts"] = pa.array(unassigned)
    columns["deprecated_codeword_counts"] = pa.array(np.zeros(n, dtype=np.int64))
    columns["total_counts"] = pa.array(genes + probes + codewords + unassigned + genomic)
    columns["cell_area"] = pa.array(summary[:, 2])
    columns["nucleus_area"] = pa.array(summary[:, 5])
    if layout.v2:
        columns["nucleus_count"] = pa.array(summary[:, 7].astype(np.int64))
        if n_channels >= 4:
            method = np.arange(n) % len(SEGMENTATION_METHODS)
        else:
            method = np.full(n, len(SEGMENTATION_METHODS) - 1)
        columns["segmentation_method"] = pa.array(SEGMENTATION_METHODS).take(pa.array(method))
    pq.write_table(pa.table(columns), path)


def _ring_rows(x0: np.ndarray, y0: np.ndarray, w: np.ndarray, h: np.ndarray, scale: float) -> np.ndarray:
    """``(5 n, 2)`` float32 vertices of closed axis-aligned rectangles (first vertex repeated)."""
    xs = np.stack([x0, x0 + w, x0 + w, x0, x0], axis=1)
    ys = np.stack([y0, y0, y0 + h, y0 + h, y0], axis=1)
    return (np.stack([xs, ys], axis=2).reshape(-1, 2) * scale).astype(np.float32)


def _write_boundaries(
    folder: Path,
    layout: _Layout,
    geom: _Geometry,
    cell_ids: np.ndarray,
    pixel_size: float,
    binary: bool,
    label_id: bool,
    missing_cells: Sequence[int],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = geom.n_cells
    id_values = (
        _string_array(cell_ids, binary)
        if layout.string_ids
        else pa.array(np.arange(1, n + 1, dtype=np.int64))
    )
    x0, y0 = geom.cell_origins()
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(list(missing_cells), dtype=np.int64)] = False
    cells = np.flatnonzero(keep)
    side = np.full(len(cells), geom.side)
    verts = _ring_rows(x0[cells], y0[cells], side, side, pixel_size)
    columns = {
        "cell_id": id_values.take(pa.array(np.repeat(cells, 5))),
        "vertex_x": pa.array(verts[:, 0]),
        "vertex_y": pa.array(verts[:, 1]),
    }
    if layout.v2 and label_id:
        columns["label_id"] = pa.array(np.repeat(cells + 1, 5).astype(np.int32))
    pq.write_table(pa.table(columns), folder / "cell_boundaries.parquet")

    boxes = geom.nucleus_boxes()
    verts = _ring_rows(boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4], pixel_size)
    columns = {
        "cell_id": id_values.take(pa.array(np.repeat(boxes[:, 0], 5))),
        "vertex_x": pa.array(verts[:, 0]),
        "vertex_y": pa.array(verts[:, 1]),
    }
    if layout.v2 and label_id:
        columns["label_id"] = pa.array(np.repeat(np.arange(1, len(boxes) + 1), 5).astype(np.int32))
    pq.write_table(pa.table(columns), folder / "nucleus_boundaries.parquet")


# ------------------------------------------------------------------------------------------------ images


def _channel_plane(geom: _Geometry, k: int, rng: np.random.Generator) -> np.ndarray:
    """A uint16 (H, W) morphology plane: nuclei bright in channel 0, cell interiors / edges in the others."""
    h, w = geom.height, geom.width
    plane = np.empty((h, w), dtype=np.uint16)
    xs = np.arange(w)
    offset = int(rng.integers(0, 50))
    for start in range(0, h, _BAND_ROWS):
        stop = min(h, start + _BAND_ROWS)
        cell, nucleus = geom.locate(np.arange(start, stop)[:, None], xs[None, :])
        if k == 0:
            value = np.where(nucleus >= 0, 3000 + (nucleus % 7) * 100, 100)
        elif k == 1:
            value = np.where(cell >= 0, 800 + (cell % 5) * 50, 60)
        else:
            value = np.where(cell >= 0, 400 + ((cell * (k + 3)) % 11) * 30, 40)
        plane[start:stop] = (value + (xs[None, :] + offset) % 17).astype(np.uint16)
    return plane


def _tile(h: int, w: int) -> tuple[int, int]:
    t = 16 if max(h, w) <= 512 else 512
    return (t, t)


def _ome_multifile_xml(
    own_uuid: str, uuids: Sequence[str], files: Sequence[str], names: Sequence[str], h: int, w: int, ps: float
) -> str:
    channels = "".join(
        f'<Channel ID="Channel:{i}" Name="{name}" SamplesPerPixel="1"/>' for i, name in enumerate(names)
    )
    tiffdata = "".join(
        f'<TiffData FirstC="{i}" FirstZ="0" FirstT="0" IFD="0" PlaneCount="1">'
        f'<UUID FileName="{f}">urn:uuid:{u}</UUID></TiffData>'
        for i, (f, u) in enumerate(zip(files, uuids, strict=True))
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{own_uuid}">'
        '<Image ID="Image:0" Name="morphology_focus">'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="{w}" SizeY="{h}" SizeZ="1" '
        f'SizeC="{len(names)}" SizeT="1" PhysicalSizeX="{ps}" PhysicalSizeXUnit="&#181;m" '
        f'PhysicalSizeY="{ps}" PhysicalSizeYUnit="&#181;m">'
        f"{channels}{tiffdata}</Pixels></Image></OME>"
    )


def _focus_file_names(layout: _Layout, names: Sequence[str]) -> list[str]:
    if layout.v4:
        return [
            f"ch{i:04d}_{name.lower().replace('/', '_').replace(' ', '_')}.ome.tif"
            for i, name in enumerate(names)
        ]
    return [f"morphology_focus_{i:04d}.ome.tif" for i in range(len(names))]


def _write_focus_dir(
    folder: Path, layout: _Layout, geom: _Geometry, names: Sequence[str], ps: float, rng: np.random.Generator
) -> None:
    """XOA >= 2.0: ``morphology_focus/`` with one single-plane multi-file OME-TIFF per channel."""
    import tifffile

    target = folder / "morphology_focus"
    target.mkdir(exist_ok=True)
    files = _focus_file_names(layout, names)
    uuids = [str(uuid.UUID(int=int(rng.integers(0, 2**62)) + i)) for i in range(len(files))]
    h, w = geom.height, geom.width
    tile = _tile(h, w)
    for i, (name, own) in enumerate(zip(files, uuids, strict=True)):
        plane = _channel_plane(geom, i, rng)
        xml = _ome_multifile_xml(own, uuids, files, names, h, w, ps)
        with tifffile.TiffWriter(target / name, bigtiff=True) as tw:
            tw.write(
                plane,
                subifds=1,
                description=xml,
                metadata=None,
                tile=tile,
                photometric="minisblack",
                compression="zlib",
            )
            tw.write(
                plane[::2, ::2],
                subfiletype=1,
                metadata=None,
                tile=tile,
                photometric="minisblack",
                compression="zlib",
            )
        del plane


def _write_single_ome(path: Path, planes: np.ndarray, names: Sequence[str], ps: float) -> None:
    """A pyramidal (one SubIFD level) single-file OME-TIFF of a (C, Y, X) stack."""
    import tifffile

    tile = _tile(planes.shape[1], planes.shape[2])
    metadata = {
        "axes": "CYX",
        "PhysicalSizeX": ps,
        "PhysicalSizeY": ps,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": list(names)},
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(
            planes, subifds=1, metadata=metadata, tile=tile, photometric="minisblack", compression="zlib"
        )
        tw.write(
            planes[:, ::2, ::2],
            subfiletype=1,
            metadata=None,
            tile=tile,
            photometric="minisblack",
            compression="zlib",
        )


def _aligned_affine(geom: _Geometry) -> np.ndarray:
    """Image pixel -> morphology pixel: scale 2, a 4° rotation and a shift (an H&E scanned at half resolution)."""
    angle = math.radians(4.0)
    c, s = 2 * math.cos(angle), 2 * math.sin(angle)
    return np.array([[c, -s, 0.05 * geom.width], [s, c, -0.02 * geom.height], [0.0, 0.0, 1.0]])


def _write_aligned(folder: Path, geom: _Geometry, he: bool, if_: bool, rng: np.random.Generator) -> None:
    import tifffile

    affine = _aligned_affine(geom)
    h, w = max(16, geom.height // 2), max(16, geom.width // 2)
    yy, xx = np.mgrid[0:h, 0:w]
    if he:
        rgb = np.stack(
            [(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + 2 * yy) % 256], axis=-1
        ).astype(np.uint8)
        tifffile.imwrite(
            folder / "Synthetic_he_image.ome.tif",
            rgb[None],
            ome=True,
            photometric="rgb",
            metadata={"axes": "TYXS"},
            tile=_tile(h, w),
            compression="zlib",
        )
        np.savetxt(folder / "Synthetic_he_imagealignment.csv", affine, delimiter=",")
    if if_:
        stack = np.stack([(xx * 7 + yy) % 4096, (yy * 5 + xx) % 4096], axis=0).astype(np.uint16)
        tifffile.imwrite(
            folder / "Synthetic_if_image.ome.tif",
            stack,
            ome=True,
            photometric="minisblack",
            metadata={"axes": "CYX", "Channel": {"Name": ["CD20", "CD3"]}},
            tile=_tile(h, w),
            compression="zlib",
        )
        np.savetxt(folder / "Synthetic_if_imagealignment.csv", affine, delimiter=",")


# ------------------------------------------------------------------------------------------------ entry point


def write_xenium(
    path: str | os.PathLike,
    *,
    version: str = "4.0.0",
    n_cells: int = 6,
    n_transcripts: int = 200,
    n_genes: int = 6,
    seed: int = 0,
    pixel_size: float = 0.2125,
    cell_size: int = 24,
    n_focus_channels: int | None = None,
    multinucleate: bool = True,
    aligned_image: bool = True,
    if_image: bool = False,
    protein: bool = False,
    binary_strings: bool = False,
    label_id: bool = True,
    missing_cell_boundaries: Sequence[int] = (),
    software_version: str | None = None,
    ranger_version: str | None = None,
    chunk_size: int = 2_000_000,
    row_group_size: int = 1_000_000,
) -> Path:
    """Write a synthetic Xenium output bundle shaped like the one of XOA ``version``.

    Parameters
    ----------
    path
        Output folder (created; existing files of the bundle are overwritten).
    version
        XOA version whose layout is written, ``"X.Y.Z"`` (see the module notes; e.g. ``1.0.2``, ``1.7.1``,
        ``2.0.0``, ``3.1.0``, ``4.0.0``).
    n_cells, n_transcripts, n_genes
        Bundle size. Cells are ``cell_size`` px squares on a grid, so the image grows with ``n_cells``.
    seed
        Random seed (transcripts, channel content, ids): the same arguments write the same bytes.
    pixel_size
        Microns per morphology pixel (``experiment.xenium``).
    cell_size
        Side of a cell in pixels, a multiple of 8.
    n_focus_channels
        >= 2.0 only: 1 (DAPI only) or 4 (multimodal segmentation kit, the default).
    multinucleate
        >= 2.0 only: cells with two nuclei and cells without a nucleus (every 50th cell, rows 2 and 4 first).
    aligned_image, if_image
        Also write ``Synthetic_he_image.ome.tif`` (RGB, (1, y, x, 3)) / ``Synthetic_if_image.ome.tif``
        (2 channels) at half resolution with their alignment CSVs.
    protein
        4.x: add protein features to the matrix (fixed point, ``protein_scaling_factor``) and protein channels to
        the focus image.
    binary_strings
        Store the parquet strings (cell ids, feature names) as binary, as some 1.x bundles do.
    label_id
        >= 2.0: write the ``label_id`` column of the boundary files (``False`` emulates early 2.0.0 builds, whose
        nucleus rows of a multinucleate cell form one degenerate polygon per cell).
    missing_cell_boundaries
        Cell rows whose polygon is left out of ``cell_boundaries.parquet`` (real bundles may omit some).
    software_version, ranger_version
        Override ``analysis_sw_version`` (e.g. an unparseable string) / add ``xenium_ranger.version``.
    chunk_size, row_group_size
        Transcripts are generated ``chunk_size`` rows at a time and written in row groups of
        ``row_group_size`` rows.

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    layout = _Layout(_parse_version(version))
    if n_cells < 1 or n_genes < 1 or n_transcripts < 1:
        raise ValueError("n_cells, n_genes and n_transcripts must be at least 1")
    if cell_size < 8 or cell_size % 8:
        raise ValueError(f"cell_size must be a multiple of 8 (>= 8), got {cell_size}")
    n_channels = 1
    if layout.v2:
        n_channels = 4 if n_focus_channels is None else int(n_focus_channels)
        if n_channels not in (1, 4):
            raise ValueError(f"n_focus_channels must be 1 or 4, got {n_focus_channels}")
    protein = protein and layout.v4
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    geom = _Geometry.build(n_cells, cell_size, multinucleate and layout.v2)
    features = _Features.build(n_genes, layout)
    prefixes = _prefixes(n_cells, rng)
    cell_ids = cell_id_strings(prefixes, 1) if layout.string_ids else np.arange(1, n_cells + 1).astype(str)
    binary = binary_strings and layout.string_ids

    # cell summary in microns (cell_summary of the zarr, centroids and areas of cells.parquet)
    x0, y0 = geom.cell_origins()
    s = geom.side
    boxes = geom.nucleus_boxes()
    owner = boxes[:, 0]
    areas = (boxes[:, 3] * boxes[:, 4]).astype(np.float64)
    nucleus_area = np.bincount(owner, weights=areas, minlength=n_cells) * pixel_size**2
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(owner, weights=(boxes[:, 1] + boxes[:, 3] / 2) * areas, minlength=n_cells)
        cy = np.bincount(owner, weights=(boxes[:, 2] + boxes[:, 4] / 2) * areas, minlength=n_cells)
        total = np.bincount(owner, weights=areas, minlength=n_cells)
        ncx, ncy = cx / total * pixel_size, cy / total * pixel_size
    nucleus_area[geom.n_nuclei == 0] = np.nan
    summary = np.column_stack(
        [
            (x0 + s / 2) * pixel_size,
            (y0 + s / 2) * pixel_size,
            np.full(n_cells, (s * pixel_size) ** 2),
            ncx,
            ncy,
            nucleus_area,
            (np.arange(n_cells) % 3).astype(np.float64),
            geom.n_nuclei.astype(np.float64),
        ]
    )

    _write_experiment(folder, layout, pixel_size, n_cells, software_version, ranger_version)
    _write_cells_zarr(folder, layout, geom, prefixes, summary, pixel_size)
    cells, feats, counts = _write_transcripts(
        folder,
        layout,
        geom,
        features,
        cell_ids,
        n_transcripts,
        pixel_size,
        rng,
        binary,
        max(1, chunk_size),
        max(1, row_group_size),
    )
    types = np.array(features.types)
    per_type = {
        t: np.bincount(cells[types[feats] == t], weights=counts[types[feats] == t], minlength=n_cells).astype(
            np.int64
        )
        for t in dict.fromkeys(features.types)
    }
    protein_values = rng.gamma(2.0, 3.0, size=(n_cells, len(PROTEIN_NAMES))) if protein else None
    _write_h5(
        folder / "cell_feature_matrix.h5",
        cell_ids,
        features,
        cells,
        feats,
        counts,
        layout,
        protein_values,
        100.0,
    )
    _write_cells_parquet(folder / "cells.parquet", layout, cell_ids, summary, per_type, binary, n_channels)
    _write_boundaries(folder, layout, geom, cell_ids, pixel_size, binary, label_id, missing_cell_boundaries)

    if layout.v2:
        names = list(MULTIMODAL_CHANNELS[:n_channels])
        if protein:
            names += list(PROTEIN_NAMES)
        _write_focus_dir(folder, layout, geom, names, pixel_size, rng)
    else:
        for name in ("morphology_focus.ome.tif", "morphology_mip.ome.tif"):
            plane = _channel_plane(geom, 0, rng)
            _write_single_ome(folder / name, plane[None], ["DAPI"], pixel_size)
            del plane
    if aligned_image or if_image:
        _write_aligned(folder, geom, aligned_image, if_image, rng)
    return folder
