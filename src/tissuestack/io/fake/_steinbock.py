"""Synthetic steinbock (imaging mass cytometry) output folders, a few tens of KB.

The layout follows ``docs/vendors.md`` §6.5 and §7.8::

    <path>/cells.h5ad                      cells x channels (mean intensities), from ``steinbock export anndata``
    <path>/ome/<image>.ome.tiff            float32 (c, y, x) OME-TIFF with the panel's channel names
    <path>/masks_deepcell/<image>.tiff     uint16 cell masks (and/or masks_ilastik/)

``cells.h5ad`` has obs names ``"<image> <cell id>"``, obs ``image`` (``<image>.tiff``), its duplicate ``Image``,
``centroid-0`` (row), ``centroid-1`` (column) and ``area``; var is the panel (``channel``, ``name``,
``Final Concentration / Dilution``, the column the reader renames). ``X`` holds each cell's mean intensity per
channel, computed from the image and the mask, so a reader's table can be checked against its rasters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHANNELS", "IMAGES", "STEINBOCK_MASKS", "write_steinbock"]

IMAGES = ("Patient1_001", "Patient1_002")
CHANNELS = (("Ir191", "DNA1"), ("Sm149", "CD20"), ("Er168", "CD3"))  # (metal, marker)
STEINBOCK_MASKS = ("deepcell", "ilastik")


def _mask(shape: tuple[int, int], n_cells: int, shift: int) -> np.ndarray:
    """Square cells of a few sizes on a grid (label k = cell id k), background 0."""
    mask = np.zeros(shape, dtype=np.uint16)
    per_row = 4
    for k in range(n_cells):
        r0 = 3 + (k // per_row) * 12 + shift
        c0 = 3 + (k % per_row) * 12
        size = 5 + (k % 3)
        mask[r0 : r0 + size, c0 : c0 + size] = k + 1
    return mask


def write_steinbock(
    path: str | Path,
    *,
    images: tuple[str, ...] = IMAGES,
    masks: tuple[str, ...] = ("deepcell",),
    height: int = 40,
    width: int = 50,
    cells_per_image: int = 6,
    info_column: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic steinbock output folder into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    images
        Image names (file stems of ``ome/<image>.ome.tiff``).
    masks
        Which mask folders to write: ``"deepcell"`` and/or ``"ilastik"`` (ilastik masks are the deepcell ones
        shifted down by one row, so the two can be told apart).
    height, width
        Image size in pixels.
    cells_per_image
        Cells per image (at most 12), labels 1..n.
    info_column
        Write the ``image`` / ``Image`` obs columns (``steinbock export anndata --info images.csv``); without them
        the image is known from the obs names only.
    seed
        Random seed.
    """
    import anndata as ad
    import pandas as pd
    import tifffile

    for kind in masks:
        if kind not in STEINBOCK_MASKS:
            raise ValueError(f"masks must be among {STEINBOCK_MASKS}, got {kind!r}")
    if not 1 <= cells_per_image <= 12:
        raise ValueError("cells_per_image must be between 1 and 12")
    rng = np.random.default_rng(seed)
    out = Path(path)
    (out / "ome").mkdir(parents=True, exist_ok=True)
    names, rows, values = [], [], []
    for image in images:
        pixels = rng.gamma(2.0, 3.0, size=(len(CHANNELS), height, width)).astype(np.float32)
        tifffile.imwrite(
            out / "ome" / f"{image}.ome.tiff",
            pixels,
            ome=True,
            photometric="minisblack",
            metadata={"axes": "CYX", "Channel": {"Name": [marker for _, marker in CHANNELS]}},
        )
        for kind in masks:
            folder = out / f"masks_{kind}"
            folder.mkdir(exist_ok=True)
            tifffile.imwrite(
                folder / f"{image}.tiff", _mask((height, width), cells_per_image, int(kind == "ilastik"))
            )
        mask = _mask((height, width), cells_per_image, 0)  # the table is measured on the deepcell masks
        for cell in range(1, cells_per_image + 1):
            rr, cc = np.nonzero(mask == cell)
            names.append(f"{image} {cell}")
            rows.append(
                {
                    "image": f"{image}.tiff",
                    "Image": f"{image}.tiff",
                    "centroid-0": float(rr.mean()),
                    "centroid-1": float(cc.mean()),
                    "area": float(len(rr)),
                }
            )
            values.append(pixels[:, rr, cc].mean(axis=1))
    obs = pd.DataFrame(rows, index=pd.Index(names))
    if not info_column:
        obs = obs.drop(columns=["image", "Image"])
    var = pd.DataFrame(
        {
            "channel": [metal for metal, _ in CHANNELS],
            "name": [marker for _, marker in CHANNELS],
            "Final Concentration / Dilution": ["1/100", "1/200", "1/50"][: len(CHANNELS)],
        },
        index=pd.Index([marker for _, marker in CHANNELS]),
    )
    adata = ad.AnnData(np.asarray(values, dtype=np.float32), obs=obs, var=var)
    _write_h5ad(adata, out / "cells.h5ad")
    return out


def _write_h5ad(adata: Any, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():  # the slash of the steinbock panel column, as in real exports
        warnings.filterwarnings("ignore", message="Forward slashes", category=FutureWarning)
        adata.write_h5ad(path)
