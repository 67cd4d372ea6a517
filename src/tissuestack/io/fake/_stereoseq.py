"""Synthetic Stereo-seq SAW output (tens of KB), ``docs/vendors.md`` §6.2 and §7.7, in the SAW v6/v7
numbered layout or the SAW v8 ``outs/`` layout (see :mod:`tissuestack.io._stereoseq` for the file names).

Everything is consistent and can be checked exactly:

* cell ``k`` (id ``CELL_ID_BASE + k``) has its centroid at ``(20 + 30 k, 40 + 10 k)`` DNB, area ``20 + k``, and a
  square border of half side ``3 + k % 2`` (4 vertices, the remaining 28 slots padded with 32767); it expresses gene
  ``j`` with count ``cell_count(k, j)`` (0 counts are not stored);
* square bins: at level ``N`` gene ``j`` is found in the bins ``(N i, N (i + j))`` for ``i = 0..3`` with count
  ``10 j + i + 1`` (one gene per bin);
* registered images are 64 x 64 uint8 with value ``(row + col) % 251``; the mask is 0/1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CELL_ID_BASE", "SERIAL", "STEREOSEQ_GENES", "cell_count", "write_stereoseq"]

SERIAL = "SS200000135TL_D1"
STEREOSEQ_GENES = ("Actb", "Gapdh", "Malat1", "Actb")  # a duplicated symbol, as real panels have
CELL_ID_BASE = 100
IMAGE_SHAPE = (64, 64)
BIN_SIZES = (1, 50)


def cell_count(k: int, j: int) -> int:
    """Count of gene ``j`` in cell ``k`` (0 when ``(k + j) % 3 == 0``)."""
    return 0 if (k + j) % 3 == 0 else k + j + 1


def _cell_bin(file: Path, n_cells: int, *, version: int, resolution: int) -> None:
    import h5py

    genes = STEREOSEQ_GENES
    rows = [(k, j, cell_count(k, j)) for k in range(n_cells) for j in range(len(genes)) if cell_count(k, j)]
    gene_count = np.bincount([r[0] for r in rows], minlength=n_cells)
    offset = np.concatenate([[0], np.cumsum(gene_count)[:-1]])
    cell_fields = [
        ("id", "<u4"),
        ("x", "<i4"),
        ("y", "<i4"),
        ("offset", "<u4"),
        ("geneCount", "<u2"),
        ("expCount", "<u2"),
        ("dnbCount", "<u2"),
        ("area", "<u2"),
        ("cellTypeID", "<u2"),
        ("clusterID", "<u2"),
    ]
    if version < 2:  # older geftools: no id/clusterID
        cell_fields = [f for f in cell_fields if f[0] not in ("id", "clusterID")]
    cell = np.zeros(n_cells, dtype=cell_fields)
    k = np.arange(n_cells)
    values = {
        "id": CELL_ID_BASE + k,
        "x": 20 + 30 * k,
        "y": 40 + 10 * k,
        "offset": offset,
        "geneCount": gene_count,
        "expCount": [sum(c for kk, _, c in rows if kk == i) for i in k],
        "dnbCount": 5 + k,
        "area": 20 + k,
        "cellTypeID": k % 2,
        "clusterID": k % 3,
    }
    for name in cell.dtype.names:
        cell[name] = values[name]
    gene_dtype = [
        ("geneName", "S32"),
        ("offset", "<u4"),
        ("cellCount", "<u4"),
        ("expCount", "<u4"),
        ("maxMIDcount", "<u2"),
    ]
    if version >= 4:
        gene_dtype = [("geneID", "S64"), ("geneName", "S64"), *gene_dtype[1:]]
    gene = np.zeros(len(genes), dtype=gene_dtype)
    gene["geneName"] = [g.encode() for g in genes]
    if version >= 4:
        gene["geneID"] = [f"ENSG{j:05d}".encode() for j in range(len(genes))]
    by_gene = sorted(rows, key=lambda r: (r[1], r[0]))
    gene["cellCount"] = np.bincount([r[1] for r in rows], minlength=len(genes))
    gene["offset"] = np.concatenate([[0], np.cumsum(gene["cellCount"])[:-1]])
    cell_exp = np.array([(j, c) for _, j, c in rows], dtype=[("geneID", "<u2"), ("count", "<u2")])
    gene_exp = np.array([(kk, c) for kk, _, c in by_gene], dtype=[("cellID", "<u4"), ("count", "<u2")])
    border = np.full((n_cells, 32, 2), 32767, dtype=np.int16)
    for i in range(n_cells):
        h = 3 + i % 2
        border[i, :4] = [(-h, -h), (h, -h), (h, h), (-h, h)]
    with h5py.File(file, "w") as f:
        f.attrs["version"] = np.uint32(version)
        f.attrs["resolution"] = np.uint32(resolution)
        f.attrs["offsetX"] = np.int32(0)
        f.attrs["offsetY"] = np.int32(0)
        g = f.create_group("cellBin")
        g["cell"] = cell
        g["cellExon"] = gene_count.astype(np.uint16)
        g["gene"] = gene
        g["geneExon"] = gene["cellCount"].astype(np.uint32)
        g["cellExp"] = cell_exp
        g["cellExpExon"] = np.zeros(len(cell_exp), np.uint16)
        g["geneExp"] = gene_exp
        g["geneExpExon"] = np.zeros(len(gene_exp), np.uint16)
        g["blockIndex"] = np.zeros(4, np.uint32)
        g["blockSize"] = np.array([256, 256, 1, 1], np.float32)
        g["cellTypeList"] = np.array([b"type0", b"type1"])
        g["cellBorder"] = border


def _square_bin(file: Path, *, resolution: int) -> None:
    import h5py

    with h5py.File(file, "w") as f:
        f.attrs["version"] = np.uint32(4)
        f.attrs["resolution"] = np.uint32(resolution)
        f.attrs["offsetX"] = np.int32(0)
        f.attrs["offsetY"] = np.int32(0)
        for size in BIN_SIZES:
            g = f.create_group(f"geneExp/bin{size}")
            names = list(dict.fromkeys(STEREOSEQ_GENES))  # square-bin genes are unique
            gene = np.zeros(len(names), dtype=[("gene", "S32"), ("offset", "<u4"), ("count", "<u4")])
            gene["gene"] = [n.encode() for n in names]
            gene["count"] = 4
            gene["offset"] = 4 * np.arange(len(names))
            exp = np.zeros(4 * len(names), dtype=[("x", "<i4"), ("y", "<i4"), ("count", "<u2")])
            for j in range(len(names)):
                for i in range(4):
                    exp[4 * j + i] = (size * i, size * (i + j), 10 * j + i + 1)
            g["gene"] = gene
            ds = g.create_dataset("expression", data=exp)
            for key, value in (
                ("minX", exp["x"].min()),
                ("minY", exp["y"].min()),
                ("maxX", exp["x"].max()),
                ("maxY", exp["y"].max()),
                ("resolution", size),
            ):
                ds.attrs[key] = np.int32(value)
            g["exon"] = np.zeros(len(exp), np.uint16)


def write_stereoseq(
    path: str | Path,
    *,
    layout: str = "v6",
    n_cells: int = 5,
    gef_version: int = 2,
    resolution: int = 500,
    cluster: bool = True,
    images: bool = True,
) -> Path:
    """Write a synthetic SAW output folder under ``path`` and return it (``<path>/stereoseq_<layout>``).

    Parameters
    ----------
    layout
        ``"v6"`` (numbered folders 02.count/, 03.register/, 04.tissuecut/, 041.cellcut/, 051.cellcluster/) or
        ``"v8"`` (``outs/feature_expression/``, ``outs/image/``).
    n_cells
        Number of cells (at most 6).
    gef_version
        Cell-bin GEF version: 1 (cell records without ``id``/``clusterID``), 2-3, or 4 (genes with ``geneID``).
    resolution
        DNB pitch in nm written to the GEFs.
    cluster
        Write ``051.cellcluster/<SN>.cell.cluster.h5ad`` (v6 only) with a ``leiden`` column and ``X_umap``.
    images
        Write the registered images (``_regist``, ``_tissue_cut``, ``_mask``).
    """
    import tifffile

    if n_cells > 6:
        raise ValueError("n_cells must be at most 6")
    if layout not in ("v6", "v8"):
        raise ValueError(f"layout must be 'v6' or 'v8', got {layout!r}")
    out = Path(path) / f"stereoseq_{layout}"
    if layout == "v6":
        dirs = {
            k: out / v
            for k, v in {
                "count": "02.count",
                "register": "03.register",
                "tissuecut": "04.tissuecut",
                "cellcut": "041.cellcut",
                "cellcluster": "051.cellcluster",
            }.items()
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        raw, square, cellbin, image_dir = (
            dirs["count"] / f"{SERIAL}.raw.gef",
            dirs["tissuecut"] / f"{SERIAL}.tissuecut.gef",
            dirs["cellcut"] / f"{SERIAL}.cellbin.gef",
            dirs["register"],
        )
        stain = ""
    else:
        e, image_dir = out / "outs" / "feature_expression", out / "outs" / "image"
        e.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        raw, square, cellbin = (
            e / f"{SERIAL}.raw.gef",
            e / f"{SERIAL}.tissue.gef",
            e / f"{SERIAL}.cellbin.gef",
        )
        stain = "_ssDNA"
    _square_bin(raw, resolution=resolution)
    _square_bin(square, resolution=resolution)
    _cell_bin(cellbin, n_cells, version=gef_version, resolution=resolution)
    if layout == "v6" and cluster:
        import anndata as ad
        import pandas as pd

        obs = pd.DataFrame(
            {"leiden": pd.Categorical([str(k % 2) for k in range(n_cells)])},
            index=[str(k) for k in range(n_cells)],
        )
        adata = ad.AnnData(
            np.zeros((n_cells, len(STEREOSEQ_GENES)), np.float32),
            obs=obs,
            var=pd.DataFrame(index=[f"g{j}" for j in range(len(STEREOSEQ_GENES))]),
        )
        adata.obsm["X_umap"] = np.arange(2 * n_cells, dtype=np.float64).reshape(n_cells, 2)
        adata.write_h5ad(dirs["cellcluster"] / f"{SERIAL}.cell.cluster.h5ad")
    if images:
        rows, cols = np.indices(IMAGE_SHAPE)
        regist = ((rows + cols) % 251).astype(np.uint8)
        tifffile.imwrite(image_dir / f"{SERIAL}{stain}_regist.tif", regist)
        tifffile.imwrite(image_dir / f"{SERIAL}{stain}_tissue_cut.tif", (regist > 60).astype(np.uint8))
        tifffile.imwrite(image_dir / f"{SERIAL}{stain}_mask.tif", (regist % 2).astype(np.uint8))
    return out
