"""Synthetic Akoya CODEX / PhenoCycler processor output (a few KB), ``docs/vendors.md`` §6.1 and §7.6::

    <path>/codex/
      reg001_compensated.fcs  reg001_uncompensated.fcs      per-cell events (float32), PnN + PnS channel table
      reg001_compensated.csv  reg001_uncompensated.csv      CSV twins, PnN header, integer ids
      reg001_stitched.tif                                   (image="single") (3, H, W) uint8
      stitched/reg001/reg001_cyc001_ch001_DAPI-1.tif ...    (image="stitched") one uint8 TIFF per channel

(with ``nested=True`` the per-cell files go to ``processed/segm/segm-1/fcs/{compensated,uncompensated}/``).

Values can be checked exactly: cell ``k`` (0-based, ``cell_id = k + 1``) of region ``r`` sits at
``(x, y) = (5 + 4 k, 3 + 2 k)`` with ``size = 10 + k`` and has intensity ``marker_value(r, k, j)`` in marker ``j``
(uncompensated: that value + 0.25); image channel ``j`` holds ``10 (j + 1) + r`` everywhere except the pixel of each
cell centre, which holds ``100 + k``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CODEX_IMAGE_SHAPE", "CODEX_MARKERS", "marker_value", "write_codex"]

CODEX_MARKERS = ("DAPI", "CD45", "CD3")
CODEX_CHANNELS = ("cyc001_ch001", "cyc001_ch002", "cyc002_ch003")
CODEX_IMAGE_SHAPE = (50, 60)
_OBS = ("cell_id", "region", "tile_num", "x", "y", "z", "x_tile", "y_tile", "size")


def marker_value(region: int, k: int, j: int) -> float:
    """The compensated intensity of cell ``k`` (0-based) of ``region`` in marker ``j``."""
    return float(100 * region + 10 * k + j) + 0.5


def _events(region: int, n_cells: int, offset: float) -> np.ndarray:
    k = np.arange(n_cells)
    obs = np.column_stack(
        [
            k + 1,
            np.full(n_cells, region),
            np.ones(n_cells),
            5.0 + 4 * k,
            3.0 + 2 * k,
            np.ones(n_cells),
            5.0 + 4 * k,
            3.0 + 2 * k,
            10.0 + k,
        ]
    )
    markers = np.array([[marker_value(region, i, j) + offset for j in range(len(CODEX_MARKERS))] for i in k])
    return np.column_stack([obs, markers.reshape(n_cells, len(CODEX_MARKERS))]).astype(np.float32)


def write_codex(
    path: str | Path,
    *,
    n_cells: int = 10,
    n_regions: int = 1,
    image: str | None = "single",
    fcs_version: str = "FCS3.1",
    byteorder: str = "<",
    nested: bool = False,
    csv_marker_headers: bool = False,
) -> Path:
    """Write a synthetic CODEX output folder under ``path`` and return it (``<path>/codex``).

    Parameters
    ----------
    n_cells
        Cells per region (at most 12, to fit the image).
    n_regions
        Regions ``reg001`` ... (each with its own files and image).
    image
        ``"single"`` (one ``reg<NNN>_stitched.tif`` (c, y, x) per region), ``"stitched"`` (one TIFF per channel
        under ``stitched/reg<NNN>/``) or ``None``.
    fcs_version, byteorder
        FCS version written (``FCS3.0``, ``FCS3.1``, ...) and byte order of the float32 data (``"<"``/``">"``).
    nested
        Put the per-cell files under ``processed/segm/segm-1/fcs/<kind>/`` as the processor does.
    csv_marker_headers
        Write CSV headers as ``cyc001_ch001:DAPI`` instead of plain PnN names.
    """
    import pandas as pd
    import tifffile

    from tissuestack.io._fcs import write_fcs

    if n_cells > 12:
        raise ValueError("n_cells must be at most 12")
    out = Path(path) / "codex"
    out.mkdir(parents=True, exist_ok=True)
    names = [*_OBS, *CODEX_CHANNELS]
    markers = [*_OBS, *CODEX_MARKERS]
    for region in range(1, n_regions + 1):
        prefix = f"reg{region:03d}"
        for kind, offset in (("compensated", 0.0), ("uncompensated", 0.25)):
            folder = out / "processed" / "segm" / "segm-1" / "fcs" / kind if nested else out
            folder.mkdir(parents=True, exist_ok=True)
            events = _events(region, n_cells, offset)
            write_fcs(
                folder / f"{prefix}_{kind}.fcs",
                events,
                names,
                markers,
                version=fcs_version,
                byteorder=byteorder,
            )
            frame = pd.DataFrame(events.astype(np.float64), columns=names)
            for column in ("cell_id", "region", "tile_num", "z", "x_tile", "y_tile", "size"):
                frame[column] = frame[column].astype(np.int64)
            if csv_marker_headers:
                frame.columns = [
                    *_OBS,
                    *(f"{c}:{m}" for c, m in zip(CODEX_CHANNELS, CODEX_MARKERS, strict=True)),
                ]
            frame.to_csv(folder / f"{prefix}_{kind}.csv", index=False)
        planes = np.empty((len(CODEX_MARKERS), *CODEX_IMAGE_SHAPE), dtype=np.uint8)
        for j in range(len(CODEX_MARKERS)):
            planes[j] = 10 * (j + 1) + region
            for k in range(n_cells):
                planes[j, 3 + 2 * k, 5 + 4 * k] = 100 + k
        if image == "single":
            tifffile.imwrite(out / f"{prefix}_stitched.tif", planes, photometric="minisblack")
        elif image == "stitched":
            folder = out / "stitched" / prefix
            folder.mkdir(parents=True, exist_ok=True)
            for j, (channel, marker) in enumerate(zip(CODEX_CHANNELS, CODEX_MARKERS, strict=True)):
                cyc, ch = channel.split("_")
                tifffile.imwrite(folder / f"{prefix}_{cyc}_{ch}_{marker}-1.tif", planes[j])
        elif image is not None:
            raise ValueError(f"image must be 'single', 'stitched' or None, got {image!r}")
    return out
