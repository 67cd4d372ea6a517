"""Synthetic MCMICRO output folders (whole slide or tissue microarray), a few tens of KB.

The layout follows ``docs/vendors.md`` §6.4 and §7.8. Whole slide (``tma=False``)::

    <path>/qc/params.yml                                     workflow: tma: false
    <path>/markers.csv                                       channel_number, cycle_number, marker_name, Filter
    <path>/registration/<sample>.ome.tif                     uint16 (c, y, x) OME-TIFF (with a SubIFD pyramid)
    <path>/segmentation/unmicst-<sample>/{cell,nuclei}.ome.tif   int32 masks
    <path>/quantification/<sample>--unmicst_{cell,nuclei}.csv    measured on the image and the masks
    <path>/raw/<sample>-cycle-01.ome.tiff, illumination/<sample>-cycle-01-{dfp,ffp}.tif   (``raw=True``)

TMA (``tma=True``): ``registration/TMA.ome.tif`` is the whole map; ``dearray/<core>.ome.tif`` are crops of it
(origins :data:`TMA_ORIGINS`), ``dearray/masks/<core>_mask.tif`` the core masks, ``segmentation/unmicst-<core>/``
and ``quantification/<core>--unmicst_cell.csv`` per core, and ``qc/coreograph/centroidsY-X.txt`` the crop centres.
The quantification ``X`` holds each cell's mean intensity per marker, so a reader's tables can be checked against
its rasters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["MCMICRO_MARKERS", "TMA_CORE_SHAPE", "TMA_ORIGINS", "write_mcmicro"]

MCMICRO_MARKERS = ("DNA_1", "CD45", "Keratin")
#: (y0, x0) of each TMA core crop in the map, core 1 first
TMA_ORIGINS = ((6, 8), (10, 52))
TMA_CORE_SHAPE = (30, 36)


def _cells(shape: tuple[int, int], n: int, shrink: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int32)
    per_row = max(1, (shape[1] - 2) // 10)
    for k in range(n):
        r0, c0 = 2 + (k // per_row) * 10, 2 + (k % per_row) * 10
        size = 6 + k % 3 - shrink
        mask[r0 : r0 + size, c0 : c0 + size] = k + 1
    return mask


def _quantify(image: np.ndarray, mask: np.ndarray, markers: tuple[str, ...]):
    import pandas as pd

    rows = []
    for cell in np.unique(mask)[1:]:
        rr, cc = np.nonzero(mask == cell)
        row = {"CellID": int(cell)}
        row.update({m: float(image[i, rr, cc].mean()) for i, m in enumerate(markers)})
        row.update(
            {
                "X_centroid": float(cc.mean()),
                "Y_centroid": float(rr.mean()),
                "Area": len(rr),
                "MajorAxisLength": float(np.ptp(rr) + 1),
                "MinorAxisLength": float(np.ptp(cc) + 1),
                "Eccentricity": 0.0,
                "Solidity": 1.0,
                "Extent": 1.0,
                "Orientation": 0.0,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _write_image(file: Path, pixels: np.ndarray, markers: tuple[str, ...] | None, pyramid: bool) -> None:
    import tifffile

    file.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict = {"axes": "CYX"}
    if markers is not None:
        metadata["Channel"] = {"Name": list(markers)}
    with tifffile.TiffWriter(file, ome=True) as tif:
        tif.write(pixels, photometric="minisblack", metadata=metadata, subifds=1 if pyramid else 0)
        if pyramid:
            tif.write(pixels[:, ::2, ::2], photometric="minisblack", subfiletype=1)


def _write_mask(file: Path, mask: np.ndarray) -> None:
    import tifffile

    file.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(file, mask, ome=file.name.endswith(".ome.tif"), metadata={"axes": "YX"})


def write_mcmicro(
    path: str | Path,
    *,
    tma: bool = False,
    sample: str = "exemplar-001",
    height: int = 40,
    width: int = 50,
    raw: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic MCMICRO output folder into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    tma
        Write a tissue microarray (two cores of :data:`TMA_CORE_SHAPE` cut from an 80 x 100 map) instead of a
        whole slide.
    sample
        Whole-slide sample name (file stem of the registered image).
    height, width
        Whole-slide image size in pixels.
    raw
        Write ``raw/`` and ``illumination/`` images.
    seed
        Random seed.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = Path(path)
    (out / "qc").mkdir(parents=True, exist_ok=True)
    (out / "qc" / "params.yml").write_text(
        f"workflow:\n  tma: {'true' if tma else 'false'}\n  segmentation: unmicst\nmodules:\n  registration:\n"
        "    name: ashlar\n"
    )
    markers = pd.DataFrame(
        {
            "channel_number": np.arange(1, len(MCMICRO_MARKERS) + 1),
            "cycle_number": [1, 1, 2],
            "marker_name": list(MCMICRO_MARKERS),
            "Filter": ["DAPI", "FITC", "Cy5"],
        }
    )
    markers.to_csv(out / "markers.csv", index=False)
    n = len(MCMICRO_MARKERS)
    if not tma:
        image = rng.integers(0, 4000, size=(n, height, width), dtype=np.uint16)
        _write_image(out / "registration" / f"{sample}.ome.tif", image, MCMICRO_MARKERS, pyramid=True)
        for mask_name, shrink in (("cell", 0), ("nuclei", 2)):
            mask = _cells((height, width), 8, shrink)
            _write_mask(out / "segmentation" / f"unmicst-{sample}" / f"{mask_name}.ome.tif", mask)
            table = _quantify(image, mask, MCMICRO_MARKERS)
            (out / "quantification").mkdir(exist_ok=True)
            table.to_csv(out / "quantification" / f"{sample}--unmicst_{mask_name}.csv", index=False)
        if raw:
            cycle = f"{sample}-cycle-01"
            raw_image = rng.integers(0, 4000, size=(2, height + 4, width + 4), dtype=np.uint16)
            _write_image(out / "raw" / f"{cycle}.ome.tiff", raw_image, None, pyramid=False)
            for kind in ("dfp", "ffp"):
                profile = rng.random((2, height + 4, width + 4)).astype(np.float32)
                _write_image(out / "illumination" / f"{cycle}-{kind}.tif", profile, None, pyramid=False)
        return out

    tma_map = rng.integers(0, 4000, size=(n, 80, 100), dtype=np.uint16)
    _write_image(out / "registration" / "TMA.ome.tif", tma_map, MCMICRO_MARKERS, pyramid=False)
    h, w = TMA_CORE_SHAPE
    centres = []
    for core, (y0, x0) in enumerate(TMA_ORIGINS, start=1):
        crop = tma_map[:, y0 : y0 + h, x0 : x0 + w]
        _write_image(out / "dearray" / f"{core}.ome.tif", crop, MCMICRO_MARKERS, pyramid=False)
        core_mask = np.zeros((h, w), dtype=np.uint8)
        core_mask[3:-3, 3:-3] = 1
        _write_mask(out / "dearray" / "masks" / f"{core}_mask.tif", core_mask)
        mask = _cells((h, w), 3 + core, 0)
        _write_mask(out / "segmentation" / f"unmicst-{core}" / "cell.ome.tif", mask)
        (out / "quantification").mkdir(exist_ok=True)
        _quantify(crop, mask, MCMICRO_MARKERS).to_csv(
            out / "quantification" / f"{core}--unmicst_cell.csv", index=False
        )
        centres.append(f"{y0 + h / 2:g} {x0 + w / 2:g}")
    (out / "qc" / "coreograph").mkdir(parents=True, exist_ok=True)
    (out / "qc" / "coreograph" / "centroidsY-X.txt").write_text("\n".join(centres) + "\n")
    return out
