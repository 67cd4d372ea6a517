"""Synthetic Spatial Genomics seqFISH output folders, a few tens of KB.

The layout follows ``docs/vendors.md`` §6.6 and §7.8; one set of files per ROI prefix::

    <path>/<roi>_DAPI.tiff               OME-TIFF (1, H, W) uint16 with Pixels@PhysicalSizeX/Y (µm per pixel)
    <path>/<roi>_Segmentation.tiff       uint16 cell labels 1..n (0 = background)
    <path>/<roi>_CellCoordinates.csv     label, area, center_x, center_y   (µm)
    <path>/<roi>_CellxGene.csv           unnamed first column = label, one count column per gene
    <path>/<roi>_TranscriptList.csv      x, y (µm), z, name, cell (0 outside cells)
    <path>/<roi>_Boundaries.geojson      one Polygon per cell, in label order, in pixels

Geometry: pixel (column ``c``, row ``r``) covers ``[c, c + 1) x [r, r + 1)`` pixels, i.e.
``[c * PX, (c + 1) * PX) x [r * PY, (r + 1) * PY)`` µm. A cell's centre is the mean of its pixel centres in µm,
its area its pixel count times ``PX * PY``; a transcript's ``cell`` is the label under it and ``CellxGene`` counts
the transcripts per cell and gene. With ``pixel_size=(py, px)`` unequal, the reference reader's (x, y) / (y, x)
mix-up shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["GENES", "PIXEL_SIZE_UM", "ROIS", "write_seqfish"]

ROIS = ("Roi1", "Roi2")
GENES = ("Actb", "Gapdh", "Pax6", "Sox2")  # sorted
PIXEL_SIZE_UM = (0.3, 0.3)  # (y, x)


def _labels(size: int, n_cells: int) -> np.ndarray:
    labels = np.zeros((size, size), dtype=np.uint16)
    for k in range(n_cells):
        r0 = 4 + (k // 3) * 12
        c0 = 4 + (k % 3) * 12
        side = 6 + (k % 2) * 2
        labels[r0 : r0 + side, c0 : c0 + side + k % 3] = k + 1
    return labels


def write_seqfish(
    path: str | Path,
    *,
    rois: tuple[str, ...] = ROIS[:1],
    size: int = 40,
    cells: int = 3,
    transcripts: int = 120,
    pixel_size: tuple[float, float] = PIXEL_SIZE_UM,
    z: bool = True,
    cell_column: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic seqFISH folder into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    rois
        ROI prefixes; each gets the six files.
    size
        Image side in pixels.
    cells
        Cells per ROI (at most 9).
    transcripts
        Transcripts per ROI at random positions.
    pixel_size
        (y, x) µm per pixel written to the DAPI OME-XML.
    z, cell_column
        Write the optional ``z`` and ``cell`` columns of the transcript list.
    seed
        Random seed.
    """
    import pandas as pd
    import tifffile

    if not 1 <= cells <= 9:
        raise ValueError("cells must be between 1 and 9")
    rng = np.random.default_rng(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    py, px = (float(v) for v in pixel_size)
    for roi in rois:
        labels = _labels(size, cells)
        dapi = (rng.integers(100, 400, size=(1, size, size)) + 2000 * (labels > 0)).astype(np.uint16)
        tifffile.imwrite(
            out / f"{roi}_DAPI.tiff",
            dapi,
            ome=True,
            photometric="minisblack",
            metadata={"axes": "CYX", "PhysicalSizeX": px, "PhysicalSizeY": py, "Channel": {"Name": ["DAPI"]}},
        )
        tifffile.imwrite(out / f"{roi}_Segmentation.tiff", labels)
        ids = np.arange(1, cells + 1)
        rows_cols = [np.nonzero(labels == k) for k in ids]
        coords = pd.DataFrame(
            {
                "label": ids,
                "area": [len(r) * px * py for r, _ in rows_cols],
                "center_x": [(c + 0.5).mean() * px for _, c in rows_cols],
                "center_y": [(r + 0.5).mean() * py for r, _ in rows_cols],
            }
        )
        coords.to_csv(out / f"{roi}_CellCoordinates.csv", index=False)
        # transcripts in µm; the cell is the label under each one
        tx_x = rng.uniform(0, size * px, transcripts)
        tx_y = rng.uniform(0, size * py, transcripts)
        cell = labels[
            np.minimum((tx_y / py).astype(int), size - 1), np.minimum((tx_x / px).astype(int), size - 1)
        ]
        names = rng.choice(GENES, transcripts)
        tx = pd.DataFrame({"x": tx_x, "y": tx_y})
        if z:
            tx["z"] = rng.integers(0, 3, transcripts).astype(np.float64)
        tx["name"] = names
        if cell_column:
            tx["cell"] = cell.astype(np.int64)
        tx.to_csv(out / f"{roi}_TranscriptList.csv", index=False)
        table = np.zeros((cells, len(GENES)), dtype=np.int64)
        inside = cell > 0
        np.add.at(table, (cell[inside].astype(int) - 1, np.searchsorted(GENES, names[inside])), 1)
        counts = pd.DataFrame(table, index=pd.Index(ids), columns=list(GENES))
        counts.to_csv(out / f"{roi}_CellxGene.csv")  # the label index becomes the unnamed first column
        features = []
        for r, c in rows_cols:
            r0, r1, c0, c1 = float(r.min()), float(r.max() + 1), float(c.min()), float(c.max() + 1)
            ring = [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]
            features.append(
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
            )
        (out / f"{roi}_Boundaries.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": features})
        )
    return out
