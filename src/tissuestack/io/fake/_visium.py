"""Synthetic 10x Visium Space Ranger ``outs/`` folders (SR 1.x and SR >= 2 layouts), a few tens of KB each.

The layout follows ``docs/vendors.md`` §2 and §7.2: spots on an orange-crate grid, a positions CSV with
every spot of the capture area (some outside the tissue), the scale factors JSON, hires/lowres PNGs, a filtered
(and a raw) 10x HDF5 matrix and, optionally, a full-resolution microscope image and a CytAssist image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_10x_h5", "write_visium"]

_SR1 = ("1.0", "1.1", "1.2", "1.3")
_SR2 = ("2.0", "2.1", "3.0", "3.1", "4.0")
VISIUM_VERSIONS = _SR1 + _SR2
SCALEFACTORS = {
    "spot_diameter_fullres": 10.5,
    "tissue_hires_scalef": 0.5,
    "fiducial_diameter_fullres": 16.9,
    "tissue_lowres_scalef": 0.15,
}
SPOTS_PER_ROW = 8


def write_10x_h5(
    path: str | Path,
    barcodes: Sequence[str],
    ids: Sequence[str],
    names: Sequence[str],
    types: Sequence[str],
    counts: np.ndarray,
    *,
    genome: str = "GRCh38",
    root_attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a 10x feature-barcode HDF5 matrix (``/matrix`` CSC of features x barcodes, strings as bytes).

    ``counts`` is dense ``(n_barcodes, n_features)``; it is stored sparse (zeros dropped).
    """
    import h5py
    import scipy.sparse as sp

    path = Path(path)
    m = sp.csc_matrix(np.asarray(counts, dtype=np.int32).T)  # features x barcodes
    m.eliminate_zeros()
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(list(barcodes), dtype="S")
        g["data"] = m.data.astype(np.int32)
        g["indices"] = m.indices.astype(np.int64)
        g["indptr"] = m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        fe = g.create_group("features")
        fe["id"] = np.array(list(ids), dtype="S")
        fe["name"] = np.array(list(names), dtype="S")
        fe["feature_type"] = np.array(list(types), dtype="S")
        fe["genome"] = np.array([genome] * len(ids), dtype="S")
        fe["_all_tag_keys"] = np.array([b"genome"])
        attrs = {"filetype": "matrix", "version": 2, **(root_attrs or {})}
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


def _barcodes(rng: np.random.Generator, n: int, length: int = 16) -> list[str]:
    """``n`` unique random DNA barcodes with the ``-1`` gem-group suffix (vectorized draw, retried on clashes)."""
    alphabet = np.array(list("ACGT"))
    while True:
        letters = alphabet[rng.integers(0, 4, size=(n, length))]
        codes = letters.view(f"<U{length}").ravel()
        if len(np.unique(codes)) == n:
            return [f"{c}-1" for c in codes.tolist()]


def _features(n_genes: int) -> tuple[list[str], list[str], list[str]]:
    """Gene ids, symbols (the last symbol duplicates the first when there are >= 3 genes) and feature types."""
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    names = [f"Gene{i}" for i in range(n_genes)]
    if n_genes >= 3:
        names[-1] = names[0]  # duplicated symbol, as in real references
    types = ["Gene Expression"] * n_genes
    return ids, names, types


def _rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A deterministic RGB uint8 picture of shape ``(height, width, 3)``: two gradients and a seeded stripe
    pattern, so that a transposed or flipped read is caught (and the files compress well)."""
    y, x = np.mgrid[0:height, 0:width]
    shift = int(rng.integers(0, 256))
    red = x * 255 // max(width - 1, 1)
    green = y * 255 // max(height - 1, 1)
    blue = (x + 3 * y + shift) % 256
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb, mode="RGB").save(path, format="PNG")


def write_image_file(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB ``(y, x, 3)`` uint8 image as TIFF (``.tif``/``.tiff``), BigTIFF (``.btf``), PNG or JPEG."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".btf"):
        import tifffile

        tifffile.imwrite(
            path, rgb, photometric="rgb", bigtiff=suffix == ".btf", compression="zlib", predictor=True
        )
    elif suffix == ".png":
        _write_png(path, rgb)
    elif suffix in (".jpg", ".jpeg"):
        from PIL import Image

        Image.fromarray(rgb, mode="RGB").save(path, format="JPEG", quality=95)
    else:
        raise ValueError(f"unsupported image suffix {suffix!r}; expected .tif, .tiff, .btf, .png, .jpg")
    return path


def write_visium(
    path: str | Path,
    *,
    version: str = "2.0",
    n_spots: int = 48,
    n_genes: int = 4,
    seed: int = 0,
    dataset_id: str = "V1_Synthetic",
    prefixed: bool = True,
    positions_header: bool | None = None,
    hires: bool = True,
    lowres: bool = True,
    raw: bool = True,
    fullres_image: str | None = None,
    cytassist: bool = False,
) -> Path:
    """Write a synthetic Space Ranger ``outs/`` folder for standard Visium.

    Parameters
    ----------
    path
        Folder to create (its parents are created too); it must not hold a previous bundle.
    version
        Space Ranger version: ``"1.0"`` … ``"1.3"`` write ``spatial/tissue_positions_list.csv`` (no header by
        default); ``"2.0"``, ``"2.1"``, ``"3.0"``, ``"3.1"``, ``"4.0"`` write ``spatial/tissue_positions.csv``
        with a header (pixel coordinates are integers before 3.0 and floats from 3.0 on).
    n_spots
        Spots of the capture area, laid out in rows of 8 on an orange-crate grid; about 80 % are in the tissue.
    n_genes
        Features of the matrix (with >= 3 genes the last symbol duplicates the first).
    seed
        Random seed (barcodes, tissue flags, counts, pictures).
    dataset_id
        Library id used as the file-name prefix of the counts files and the full-resolution image.
    prefixed
        Name the counts files ``<dataset_id>_filtered_feature_bc_matrix.h5`` (public downloads) instead of
        ``filtered_feature_bc_matrix.h5`` (what Space Ranger itself writes).
    positions_header
        Write the header row of the positions CSV; default: only for SR >= 2. ``True`` with an SR 1.x version
        reproduces the SR 1.x files that do have a header.
    hires, lowres
        Write ``spatial/tissue_hires_image.png`` / ``spatial/tissue_lowres_image.png``.
    raw
        Also write ``raw_feature_bc_matrix.h5`` (every spot of the capture area).
    fullres_image
        Also write the full-resolution microscope image ``<dataset_id>_tissue_image.<fullres_image>`` next to the
        counts file: ``"tif"``, ``"btf"`` (BigTIFF), ``"png"`` or ``"jpg"``.
    cytassist
        A CytAssist run: add ``spatial/cytassist_image.tiff`` and ``regist_target_img_scalef`` to the scale
        factors (a reader must ignore both).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if version not in VISIUM_VERSIONS:
        raise ValueError(f"unknown Space Ranger version {version!r}; known: {', '.join(VISIUM_VERSIONS)}")
    if n_spots < 2 or n_genes < 1:
        raise ValueError("write_visium needs n_spots >= 2 and n_genes >= 1")
    sr1 = version in _SR1
    header = (not sr1) if positions_header is None else positions_header
    rng = np.random.default_rng(seed)
    out = Path(path)
    spatial = out / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)

    # --- spots: orange-crate grid (array_col has the parity of array_row)
    k = np.arange(n_spots)
    array_row = k // SPOTS_PER_ROW
    array_col = 2 * (k % SPOTS_PER_ROW) + array_row % 2
    pxl_col = 20 + 12 * array_col
    pxl_row = 20 + 20.8 * array_row
    if version < "3.0":
        pxl_row = np.round(pxl_row).astype(np.int64)
        pxl_col = pxl_col.astype(np.int64)
    else:
        pxl_row = pxl_row + 0.25
        pxl_col = pxl_col + 0.5
    in_tissue = (rng.random(n_spots) < 0.8).astype(np.int64)
    in_tissue[0], in_tissue[-1] = 1, 0  # at least one spot in and one out
    barcodes = _barcodes(rng, n_spots)
    full_h = int(np.ceil(pxl_row.max())) + 40
    full_w = int(np.ceil(pxl_col.max())) + 40

    import pandas as pd

    positions = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": in_tissue,
            "array_row": array_row,
            "array_col": array_col,
            "pxl_row_in_fullres": pxl_row,
            "pxl_col_in_fullres": pxl_col,
        }
    )
    name = "tissue_positions_list.csv" if sr1 else "tissue_positions.csv"
    positions.to_csv(spatial / name, index=False, header=header)

    # --- scale factors
    scalefactors = dict(SCALEFACTORS)
    if cytassist:
        scalefactors["regist_target_img_scalef"] = 0.75
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))

    # --- images (sizes = full-res x scale factor)
    if hires:
        s = SCALEFACTORS["tissue_hires_scalef"]
        _write_png(spatial / "tissue_hires_image.png", _rgb(rng, round(full_h * s), round(full_w * s)))
    if lowres:
        s = SCALEFACTORS["tissue_lowres_scalef"]
        _write_png(spatial / "tissue_lowres_image.png", _rgb(rng, round(full_h * s), round(full_w * s)))
    if cytassist:
        write_image_file(spatial / "cytassist_image.tiff", _rgb(rng, 48, 48))
    if fullres_image is not None:
        write_image_file(out / f"{dataset_id}_tissue_image.{fullres_image}", _rgb(rng, full_h, full_w))

    # --- counts: the filtered matrix holds the in-tissue spots, in barcode order (as Space Ranger writes them)
    ids, names, types = _features(n_genes)
    counts = rng.poisson(2.0, size=(n_spots, n_genes)).astype(np.int32)
    counts[rng.random((n_spots, n_genes)) < 0.3] = 0
    root = {
        "library_ids": np.array([dataset_id], dtype="S"),
        "chemistry_description": "Spatial 3' v1" if sr1 else "Visium V2 Slide",
        "software_version": f"spaceranger-{version}.0",
        "original_gem_groups": np.array([1]),
    }
    prefix = f"{dataset_id}_" if prefixed else ""
    order = np.argsort(np.asarray(barcodes))
    kept = order[in_tissue[order] == 1]
    write_10x_h5(
        out / f"{prefix}filtered_feature_bc_matrix.h5",
        [barcodes[i] for i in kept],
        ids,
        names,
        types,
        counts[kept],
        root_attrs=root,
    )
    if raw:
        write_10x_h5(
            out / f"{prefix}raw_feature_bc_matrix.h5",
            [barcodes[i] for i in order],
            ids,
            names,
            types,
            counts[order],
            root_attrs=root,
        )
    return out
