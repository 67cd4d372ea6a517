"""Synthetic NanoString / Bruker CosMx SMI flat-file exports (legacy flat files and newer AtoMx exports), a few
tens of KB each.

The layout follows ``docs/vendors.md`` §5 and §7.5. ``version="legacy"`` (the public ``Lung5_Rep1``
release shape)::

    <path>/<id>_exprMat_file.csv  <id>_metadata_file.csv  <id>_fov_positions_file.csv  <id>_tx_file.csv
    <path>/CellComposite/CellComposite_F001.jpg ...   (RGB composites)
    <path>/CellLabels/CellLabels_F001.tif ...          (int32 cell labels, values = cell_ID within the FOV)

``version="atomx"``: the same tables gzipped (``.csv.gz``), FOV positions with ``FOV`` and only ``x_global_mm`` /
``y_global_mm``, extra ``cell`` (``c_1_<fov>_<cell_ID>``) and ``cell_id`` columns, multi-page uint16
``Morphology2D/<id>_F001.TIF`` images whose ImageDescription is JSON naming the channels, labels nested under
``CellStatsDir/FOV001/CellLabels_F001.tif`` and cell polygons ``<id>-polygons.csv.gz``.

Geometry (what a reader must reproduce; ``H`` is the FOV height in pixels): image pixel (column ``c``, row
``r``), as continuous coordinates, is FOV-local ``(x, y) = (c, H - r)`` (local y runs bottom-up) and global
``(X0 + c, Y0 + H - r)`` pixels, ``(X0, Y0)`` being the FOV origin of the positions file, pixels of
``PIXEL_SIZE_UM`` µm (with ``flip_y=False``: ``y = r`` and ``Y0 + r``). With ``fov_shift=True`` the positions file lists ``Y0 + H`` instead (the one-FOV shift of
some AtoMx exports). A cell's metadata centre is the mean of its label pixels' centres in those coordinates; a
transcript's ``cell_ID`` is the label under it; ``exprMat`` holds the per-cell target counts of the transcripts
(plus one ``cell_ID`` 0 background row per FOV).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COMPOSITE_INSIDE",
    "COSMX_VERSIONS",
    "DATASET_ID",
    "MORPHOLOGY_CHANNELS",
    "PIXEL_SIZE_UM",
    "TARGETS",
    "fov_origin",
    "write_cosmx",
]

COSMX_VERSIONS = ("legacy", "atomx")
DATASET_ID = "Lung5_Rep1"
PIXEL_SIZE_UM = 0.120280945
TARGETS = ("AATK", "ABL1", "ACTA2", "CD3E", "EPCAM", "NegPrb1", "NegPrb2", "SystemControl1")
# ChannelOrder letter -> BiologicalTarget (illustrative; real kits differ)
MORPHOLOGY_CHANNELS = (("B", "Membrane"), ("G", "PanCK"), ("Y", "CD45"), ("R", "CD3"), ("U", "DAPI"))
COMPOSITE_INSIDE = 200  # red value of composite pixels inside cells (30 outside)
STAINS = ("MembraneStain", "PanCK", "CD45", "CD3", "DAPI")


def fov_origin(fov: int, fov_size: int) -> tuple[float, float]:
    """(x, y) global pixel origin of FOV ``fov`` (1-based): a row of FOVs with a 4-pixel overlap."""
    return 1000.0 + (fov - 1) * (fov_size - 4), 2000.0


def _cell_boxes(fov_size: int, cells_per_fov: int) -> np.ndarray:
    """(n, 4) label boxes (row0, col0, row1, col1) of different sizes, centres not collinear."""
    per_row = 3
    pitch = fov_size // (per_row + 1)
    if cells_per_fov > per_row * per_row:
        raise ValueError(f"cells_per_fov must be at most {per_row * per_row}")
    k = np.arange(cells_per_fov)
    size = 5 + (k % 3) * 2
    r0 = 3 + (k // per_row) * pitch + (k % 2)
    c0 = 3 + (k % per_row) * pitch
    return np.column_stack([r0, c0, r0 + size, c0 + size])


def write_cosmx(
    path: str | Path,
    *,
    n_fovs: int = 2,
    fov_size: int = 64,
    cells_per_fov: int = 4,
    transcripts_per_fov: int = 30,
    version: str = "legacy",
    dataset_id: str = DATASET_ID,
    fov_shift: bool = False,
    flip_y: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic CosMx flat-file export into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    n_fovs
        FOVs 1..n_fovs, side by side.
    fov_size
        FOV side in pixels.
    cells_per_fov
        Square cells per FOV (``cell_ID`` 1..n, at most 9), of a few different sizes.
    transcripts_per_fov
        Transcripts per FOV at random positions (those outside cells have ``cell_ID`` 0).
    version
        ``"legacy"`` or ``"atomx"`` (see the module docstring).
    dataset_id
        File name prefix.
    fov_shift
        List every FOV origin one FOV height too high in y (the AtoMx one-FOV shift quirk).
    flip_y
        Local / global y runs bottom-up against the image rows (``y = H - r``, as in real exports); ``False``
        makes it run with the rows (``y = r``), to test a reader's detection.
    seed
        Random seed.
    """
    import pandas as pd
    import tifffile
    from PIL import Image

    if version not in COSMX_VERSIONS:
        raise ValueError(f"version must be one of {COSMX_VERSIONS}, got {version!r}")
    rng = np.random.default_rng(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    atomx = version == "atomx"
    H = W = int(fov_size)
    boxes = _cell_boxes(fov_size, cells_per_fov)

    def local_y(row: Any) -> Any:
        return H - row if flip_y else row

    meta_rows, count_rows, tx_rows, poly_rows, pos_rows = [], [], [], [], []

    for fov in range(1, n_fovs + 1):
        x0, y0 = fov_origin(fov, fov_size)
        labels = np.zeros((H, W), dtype=np.int32)
        for k, (r0, c0, r1, c1) in enumerate(boxes.tolist(), start=1):
            labels[r0:r1, c0:c1] = k
        rows, cols = np.nonzero(labels)
        ids = labels[rows, cols]
        n_px = np.bincount(ids, minlength=cells_per_fov + 1)[1:]
        cx = np.bincount(ids, weights=cols + 0.5, minlength=cells_per_fov + 1)[1:] / n_px
        cy_img = np.bincount(ids, weights=rows + 0.5, minlength=cells_per_fov + 1)[1:] / n_px
        side = boxes[:, 2] - boxes[:, 0]
        cell_ids = np.arange(1, cells_per_fov + 1)
        meta = {
            "fov": np.full(cells_per_fov, fov),
            "cell_ID": cell_ids,
            "Area": n_px,
            "AspectRatio": np.ones(cells_per_fov),
            "CenterX_local_px": cx,
            "CenterY_local_px": local_y(cy_img),
            "CenterX_global_px": x0 + cx,
            "CenterY_global_px": y0 + local_y(cy_img),
            "Width": side,
            "Height": side,
        }
        for j, stain in enumerate(STAINS):
            meta[f"Mean.{stain}"] = 100.0 * (j + 1) + cell_ids
            meta[f"Max.{stain}"] = 200.0 * (j + 1) + cell_ids
        if atomx:
            meta["Area.um2"] = n_px * PIXEL_SIZE_UM**2
            meta["cell"] = [f"c_1_{fov}_{c}" for c in cell_ids.tolist()]
            meta["cell_id"] = meta["cell"]
        meta_rows.append(pd.DataFrame(meta))

        # transcripts: continuous positions in the FOV, the label under each one is its cell
        col = rng.uniform(0, W, transcripts_per_fov)
        row = rng.uniform(0, H, transcripts_per_fov)
        cell = labels[row.astype(int), col.astype(int)]
        target = rng.integers(0, len(TARGETS), transcripts_per_fov)
        comp = np.where(
            cell == 0, "None", rng.choice(["Nuclear", "Membrane", "Cytoplasm"], transcripts_per_fov)
        )
        tx = {
            "fov": np.full(transcripts_per_fov, fov),
            "cell_ID": cell,
            "x_global_px": x0 + col,
            "y_global_px": y0 + local_y(row),
            "x_local_px": col,
            "y_local_px": local_y(row),
            "z": rng.integers(0, 9, transcripts_per_fov),
            "target": np.asarray(TARGETS, dtype=object)[target],
            "CellComp": comp,
        }
        if atomx:
            tx["cell"] = [f"c_1_{fov}_{c}" for c in cell.tolist()]
        tx_rows.append(pd.DataFrame(tx))

        counts = np.zeros((cells_per_fov + 1, len(TARGETS)), dtype=np.int64)
        np.add.at(counts, (cell, target), 1)
        frame = pd.DataFrame(counts, columns=list(TARGETS))
        frame.insert(0, "cell_ID", np.arange(cells_per_fov + 1))
        frame.insert(0, "fov", fov)
        count_rows.append(frame)

        pos_y = y0 + (H if fov_shift else 0)
        if atomx:
            pos_rows.append(
                {
                    "Slide": 1,
                    "FOV": fov,
                    "x_global_mm": x0 * PIXEL_SIZE_UM / 1000,
                    "y_global_mm": pos_y * PIXEL_SIZE_UM / 1000,
                    "Z_mm": 0.5,
                }
            )
        else:
            pos_rows.append({"fov": fov, "x_global_px": x0, "y_global_px": pos_y})

        # polygons: the squares' corners, in global pixels (image row r -> y = y0 + local_y(r))
        for k, (r0, c0, r1, c1) in enumerate(boxes.tolist(), start=1):
            for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1)):
                poly_rows.append((fov, k, c, local_y(r), x0 + c, y0 + local_y(r)))

        # images and labels
        if atomx:
            morph = np.empty((len(MORPHOLOGY_CHANNELS), H, W), dtype=np.uint16)
            for j in range(len(MORPHOLOGY_CHANNELS)):
                morph[j] = 100 * (j + 1)
            morph[-1][labels > 0] = 1000 + labels[labels > 0]  # DAPI marks the cells
            description = json.dumps(
                {
                    "ChannelOrder": "".join(letter for letter, _ in MORPHOLOGY_CHANNELS),
                    "FovId": fov,
                    "MorphologyKit": "Synthetic",
                    "Channels": [
                        {"ChannelId": letter, "BiologicalTarget": target_name, "ExposureTime_ms": 100}
                        for letter, target_name in MORPHOLOGY_CHANNELS
                    ],
                }
            )
            (out / "Morphology2D").mkdir(exist_ok=True)
            tifffile.imwrite(
                out / "Morphology2D" / f"{dataset_id}_F{fov:03d}.TIF",
                morph,
                photometric="minisblack",
                description=description,
                metadata=None,
            )
            labels_dir = out / "CellStatsDir" / f"FOV{fov:03d}"
        else:
            composite = np.full((H, W, 3), 30, dtype=np.uint8)
            composite[..., 0][labels > 0] = COMPOSITE_INSIDE
            composite[..., 2] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]
            (out / "CellComposite").mkdir(exist_ok=True)
            Image.fromarray(composite).save(
                out / "CellComposite" / f"CellComposite_F{fov:03d}.jpg", quality=95, subsampling=0
            )
            labels_dir = out / "CellLabels"
        labels_dir.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(labels_dir / f"CellLabels_F{fov:03d}.tif", labels)

    suffix = ".csv.gz" if atomx else ".csv"

    def write(frame: pd.DataFrame, name: str) -> None:
        target = out / f"{dataset_id}_{name}{suffix}"
        if atomx:
            with gzip.open(target, "wt", newline="") as fh:
                frame.to_csv(fh, index=False)
        else:
            frame.to_csv(target, index=False)

    write(pd.concat(count_rows, ignore_index=True), "exprMat_file")
    write(pd.concat(meta_rows, ignore_index=True), "metadata_file")
    write(pd.DataFrame(pos_rows), "fov_positions_file")
    write(pd.concat(tx_rows, ignore_index=True), "tx_file")
    if atomx:
        polygons = pd.DataFrame(
            poly_rows, columns=["fov", "cellID", "x_local_px", "y_local_px", "x_global_px", "y_global_px"]
        )
        with gzip.open(out / f"{dataset_id}-polygons.csv.gz", "wt", newline="") as fh:
            polygons.to_csv(fh, index=False)
    return out
