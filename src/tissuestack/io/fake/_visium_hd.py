"""Synthetic 10x Visium HD Space Ranger ``outs/`` folders (SR 3.x and SR 4.x layouts), about 150 KB each.

The layout follows ``docs/vendors.md`` §3 and §7.3: a square grid of 2 µm bins (0.5 µm per full-resolution
pixel) aggregated into the coarser bin sizes, one ``binned_outputs/square_XXXum`` folder per bin size (Parquet
positions, scale factors, filtered and raw matrices), the feature-slice HDF5 whose metadata holds the CytAssist and
microscope transforms, hires/lowres/CytAssist images, a full-resolution microscope image and (SR 4) the cell
segmentation outputs with the barcode mappings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tissuestack.io.fake._visium import _features, _rgb, _write_png, write_10x_h5, write_image_file

__all__ = ["write_visium_hd"]

HD_VERSIONS = ("3.0", "3.1", "4.0", "4.0.1")
MICRONS_PER_PIXEL = 0.5
HIRES_SCALEF = 0.5
LOWRES_SCALEF = 0.25
CYTASSIST_SHAPE = (60, 64)  # (y, x)
# 2 µm spot (col, row) -> microscope (col, row): the bin centre of spot (i, j) is at ((i + .5) * 4, (j + .5) * 4)
SPOT_TO_MICROSCOPE = np.array([[4.0, 0.0, 2.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]])
# 2 µm spot (col, row) -> CytAssist image (col, row): a rotation + scale + shift, and a projective variant
SPOT_TO_CYTASSIST = {
    "affine": np.array([[3.2, 0.3, 4.0], [-0.3, 3.2, 6.0], [0.0, 0.0, 1.0]]),
    "projective": np.array([[3.2, 0.3, 4.0], [-0.3, 3.2, 6.0], [2e-3, 1e-3, 1.0]]),
}


def _bin_barcodes(bin_um: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``s_<bbb>um_<row:05d>_<col:05d>-1`` for every bin (vectorized through Arrow string kernels)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def padded(values: np.ndarray) -> pa.Array:
        return pc.utf8_lpad(pc.cast(pa.array(values, pa.int64()), pa.string()), 5, "0")

    joined = pc.binary_join_element_wise(
        f"s_{bin_um:03d}um", padded(rows), pc.binary_join_element_wise(padded(cols), "1", "-"), "_"
    )
    return joined.to_numpy(zero_copy_only=False).astype(str)


def _square_ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _write_geojson(path: Path, cell_ids: Sequence[int], rings: Sequence[list[list[float]]]) -> None:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"cell_id": int(cid)},
        }
        for cid, ring in zip(cell_ids, rings, strict=True)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def write_visium_hd(
    path: str | Path,
    *,
    version: str = "4.0",
    bin_sizes: Sequence[int] = (2, 8, 16),
    grid: int = 16,
    n_genes: int = 4,
    seed: int = 0,
    dataset_id: str = "Visium_HD_Synthetic",
    prefixed: bool = True,
    segmentation: bool = True,
    cytassist: str | None = "affine",
    fullres_image: str | None = "btf",
    fullres_in_folder: bool = True,
    raw: bool = True,
    layout_format: str = "1.0",
) -> Path:
    """Write a synthetic Space Ranger ``outs/`` folder for Visium HD.

    Parameters
    ----------
    path
        Folder to create (its parents are created too).
    version
        Space Ranger version: ``"3.0"``/``"3.1"`` (bins only; images and scale factors only in the bin folders)
        or ``"4.0"``/``"4.0.1"`` (top-level ``spatial/``, segmented outputs and barcode mappings).
    bin_sizes
        Bin sizes in µm, each even and dividing ``2 * grid``; each gets a ``binned_outputs/square_XXXum``
        folder. The 2 µm counts are always the base the coarser ones (and the cells) are summed from.
    grid
        Number of 2 µm bins per side (the full-resolution image is ``4 * grid`` pixels square, 0.5 µm/px).
    n_genes
        Features of every matrix (with >= 3 genes the last symbol duplicates the first).
    seed
        Random seed.
    dataset_id
        Prefix of ``<dataset_id>_feature_slice.h5`` and of the microscope image file.
    prefixed
        Prefix the feature-slice file (public downloads) or not (``feature_slice.h5``, as Space Ranger writes it).
    segmentation
        SR >= 4 only: write ``segmented_outputs/`` (4 cells in the matrix, a 5th segmented cell without counts,
        nuclei for cells 1-3 only) and ``barcode_mappings.parquet``.
    cytassist
        ``"affine"`` or ``"projective"``: write ``cytassist_image.tiff`` with a spot -> CytAssist transform of
        that kind in the feature-slice metadata; ``None``: no CytAssist image.
    fullres_image
        Suffix of the full-resolution microscope image (``"btf"``, ``"tif"``, ``"jpg"``, ``"png"``) or ``None``.
    fullres_in_folder
        Put it in ``microscope_image/`` (default) or next to the feature-slice file as
        ``<prefix>tissue_image.<ext>``.
    raw
        Also write ``raw_feature_bc_matrix.h5`` (all bins) per bin size.
    layout_format
        ``file_format`` of ``hd_layout_json`` (``"1.0"`` is the only one known).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    if version not in HD_VERSIONS:
        raise ValueError(
            f"unknown Space Ranger version {version!r} for Visium HD; known: {', '.join(HD_VERSIONS)}"
        )
    sr4 = version.startswith("4")
    bin_sizes = tuple(sorted({int(b) for b in bin_sizes}))
    extent_um = 2 * grid
    for b in bin_sizes:
        if b % 2 or extent_um % b:
            raise ValueError(f"bin size {b} µm must be even and divide the {extent_um} µm wide grid")
    if cytassist not in (None, "affine", "projective"):
        raise ValueError(f"cytassist must be None, 'affine' or 'projective', got {cytassist!r}")
    rng = np.random.default_rng(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{dataset_id}_" if prefixed else ""
    canvas = round(extent_um / MICRONS_PER_PIXEL)
    ids, names, types = _features(n_genes)
    root_attrs = {
        "library_ids": np.array([dataset_id], dtype="S"),
        "chemistry_description": "Visium HD v1",
        "software_version": f"spaceranger-{version}",
    }

    # --- the 2 µm base: tissue = a disk, counts Poisson
    rows2, cols2 = np.divmod(np.arange(grid * grid), grid)
    cx = cy = canvas / 2
    xc2, yc2 = (cols2 + 0.5) * 4.0, (rows2 + 0.5) * 4.0
    tissue2 = (xc2 - cx) ** 2 + (yc2 - cy) ** 2 <= (0.45 * canvas) ** 2
    counts2 = rng.poisson(0.6, size=(grid * grid, n_genes)).astype(np.int32)

    # --- scale factors and images
    def scalefactors(bin_um: float) -> dict:
        return {
            "spot_diameter_fullres": bin_um / MICRONS_PER_PIXEL,
            "bin_size_um": float(bin_um),
            "microns_per_pixel": MICRONS_PER_PIXEL,
            "regist_target_img_scalef": 0.9,
            "tissue_lowres_scalef": LOWRES_SCALEF,
            "fiducial_diameter_fullres": 20.0,
            "tissue_hires_scalef": HIRES_SCALEF,
        }

    hires = _rgb(rng, round(canvas * HIRES_SCALEF), round(canvas * HIRES_SCALEF))
    lowres = _rgb(rng, round(canvas * LOWRES_SCALEF), round(canvas * LOWRES_SCALEF))
    cyt = _rgb(rng, *CYTASSIST_SHAPE) if cytassist else None

    def write_spatial(folder: Path, bin_um: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scalefactors_json.json").write_text(json.dumps(scalefactors(bin_um)))
        _write_png(folder / "tissue_hires_image.png", hires)
        _write_png(folder / "tissue_lowres_image.png", lowres)
        if cyt is not None:
            write_image_file(folder / "cytassist_image.tiff", cyt)

    if sr4:
        write_spatial(out / "spatial", 8.0)

    # --- bins
    parents: dict[int, np.ndarray] = {}
    for b in bin_sizes:
        k = b // 2  # 2 µm bins per side of one bin
        n = grid // k
        rows, cols = np.divmod(np.arange(n * n), n)
        parent = (rows2 // k) * n + cols2 // k  # bin of every 2 µm bin
        barcodes = _bin_barcodes(b, rows, cols)
        parents[b] = barcodes[parent]
        counts = np.zeros((n * n, n_genes), np.int32)
        np.add.at(counts, parent, counts2)
        in_tissue = np.zeros(n * n, bool)
        in_tissue[parent[tissue2]] = True
        px = b / MICRONS_PER_PIXEL
        folder = out / "binned_outputs" / f"square_{b:03d}um"
        spatial = folder / "spatial"
        if sr4:
            spatial.mkdir(parents=True, exist_ok=True)
            (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors(b)))
        else:
            write_spatial(spatial, b)
        table = pa.table(
            {
                "barcode": pa.array(barcodes, pa.string()),
                "in_tissue": pa.array(in_tissue.astype(np.int32)),
                "array_row": pa.array(rows.astype(np.int32)),
                "array_col": pa.array(cols.astype(np.int32)),
                "pxl_row_in_fullres": pa.array((rows + 0.5) * px),
                "pxl_col_in_fullres": pa.array((cols + 0.5) * px),
            }
        )
        pq.write_table(table, spatial / "tissue_positions.parquet")
        kept = np.flatnonzero(in_tissue)
        write_10x_h5(
            folder / "filtered_feature_bc_matrix.h5",
            barcodes[kept],
            ids,
            names,
            types,
            counts[kept],
            root_attrs=root_attrs,
        )
        if raw:
            write_10x_h5(
                folder / "raw_feature_bc_matrix.h5",
                barcodes,
                ids,
                names,
                types,
                counts,
                root_attrs=root_attrs,
            )

    # --- feature slice metadata
    c_matrix = SPOT_TO_CYTASSIST[cytassist or "affine"]
    metadata = {
        "sample_id": dataset_id,
        "sample_desc": "synthetic",
        "slide_name": "H1-SYNTH01",
        "nrows": grid,
        "ncols": grid,
        "spot_pitch": 2.0,
        "hd_layout_json": json.dumps(
            {"file_format": layout_format, "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
        ),
        "transform_matrices": {
            "spot_colrow_to_microscope_colrow": SPOT_TO_MICROSCOPE.tolist(),
            "microscope_colrow_to_spot_colrow": np.linalg.inv(SPOT_TO_MICROSCOPE).tolist(),
            "spot_colrow_to_cytassist_colrow": c_matrix.tolist(),
            "cytassist_colrow_to_spot_colrow": np.linalg.inv(c_matrix).tolist(),
        },
    }
    import h5py

    with h5py.File(out / f"{prefix}feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)
        g = f.create_group("features")
        g["id"] = np.array(ids, dtype="S")
        g["name"] = np.array(names, dtype="S")

    # --- full-resolution microscope image
    if fullres_image is not None:
        picture = _rgb(rng, canvas, canvas)
        if fullres_in_folder:
            (out / "microscope_image").mkdir(exist_ok=True)
            write_image_file(out / "microscope_image" / f"{prefix}tissue_image.{fullres_image}", picture)
        else:
            write_image_file(out / f"{prefix}tissue_image.{fullres_image}", picture)

    # --- SR 4 segmentation: 4 cells (one per quadrant) in the matrix, a 5th without counts; nuclei for 1-3
    if sr4 and segmentation:
        seg = out / "segmented_outputs"
        (seg / "spatial").mkdir(parents=True, exist_ok=True)
        (seg / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors(2.0)))
        q = canvas / 2
        cell_rings, nucleus_rings = [], []
        for qy in (0.0, q):
            for qx in (0.0, q):
                x0, y0, x1, y1 = qx + q / 8, qy + q / 8, qx + 7 * q / 8, qy + 7 * q / 8
                ring = _square_ring(x0, y0, x1, y1)
                ring.insert(2, [x1 + q / 16, (y0 + y1) / 2])  # a fifth vertex: not an axis-aligned box
                cell_rings.append(ring)
                nucleus_rings.append(
                    _square_ring(qx + 5 * q / 16, qy + 5 * q / 16, qx + 11 * q / 16, qy + 11 * q / 16)
                )
        extra = _square_ring(
            canvas - 3.0, canvas - 3.0, canvas - 1.0, canvas - 1.0
        )  # too small to hold a bin
        _write_geojson(seg / "cell_segmentations.geojson", [1, 2, 3, 4, 5], [*cell_rings, extra])
        _write_geojson(seg / "nucleus_segmentations.geojson", [1, 2, 3], nucleus_rings[:3])

        cells = shapely.polygons([np.asarray(r) for r in cell_rings])
        nuclei = shapely.polygons([np.asarray(r) for r in nucleus_rings[:3]])
        cell_of = np.full(grid * grid, -1)
        for i, poly in enumerate(cells):  # 4 polygons
            cell_of[shapely.contains_xy(poly, xc2, yc2)] = i + 1
        in_nucleus = np.zeros(grid * grid, bool)
        for poly in nuclei:
            in_nucleus |= shapely.contains_xy(poly, xc2, yc2)
        cell_ids = pd.array(
            np.where(cell_of > 0, np.char.mod("cellid_%09d-1", np.maximum(cell_of, 0)), None), dtype="string"
        )
        mapping = {"square_002um": _bin_barcodes(2, rows2, cols2)}
        for b in bin_sizes:
            if b != 2:
                mapping[f"square_{b:03d}um"] = parents[b]
        mapping_table = pa.table(
            {
                **{k: pa.array(v, pa.string()) for k, v in mapping.items()},
                "cell_id": pa.array(cell_ids, pa.string()),
                "in_nucleus": pa.array(in_nucleus & (cell_of > 0)),
                "in_cell": pa.array(cell_of > 0),
            }
        )
        pq.write_table(mapping_table, out / "barcode_mappings.parquet")
        cell_counts = np.zeros((4, n_genes), np.int32)
        inside = cell_of > 0
        np.add.at(cell_counts, cell_of[inside] - 1, counts2[inside])
        write_10x_h5(
            seg / "filtered_feature_cell_matrix.h5",
            [f"cellid_{i:09d}-1" for i in range(1, 5)],
            ids,
            names,
            types,
            cell_counts,
            root_attrs=root_attrs,
        )
    return out
