"""Synthetic DBiT-seq folders, a few KB.

The layout follows ``docs/vendors.md`` §6.7 and §7.8::

    <path>/<dataset>.h5ad               pixels x genes; obs names = B barcode (8 nt) + A barcode (8 nt)
    <path>/barcode_list.txt             tab-separated, no header: position (A1..An, B1..Bn) and its 8-nt barcode
    <path>/tissue_lowres_image.png      optional RGB image already cropped to the barcoded area

The h5ad rows are shuffled (a reader sorts them by grid position) and one grid position has no reads (its row
is missing), as in real runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["DATASET", "write_dbit"]

DATASET = "GSM0000001_dbit"
_NT = np.array(list("ACGT"))


def write_dbit(
    path: str | Path,
    *,
    n_barcodes: int = 5,
    n_genes: int = 4,
    image: bool = True,
    image_size: int = 50,
    dataset: str = DATASET,
    seed: int = 0,
) -> Path:
    """Write a synthetic DBiT-seq folder into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    n_barcodes
        Barcodes per direction (the grid is ``n_barcodes x n_barcodes``, at most 99).
    n_genes
        Genes in the counts.
    image, image_size
        Write ``tissue_lowres_image.png`` of ``image_size`` x ``image_size`` pixels.
    dataset
        File stem of the h5ad (the reader's default dataset id).
    seed
        Random seed.
    """
    import anndata as ad
    import pandas as pd
    from PIL import Image

    if not 1 <= n_barcodes <= 99:
        raise ValueError("n_barcodes must be between 1 and 99")
    rng = np.random.default_rng(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    codes: set[str] = set()
    while len(codes) < 2 * n_barcodes:
        codes.add("".join(rng.choice(_NT, 8)))
    codes_list = sorted(codes)
    rng.shuffle(codes_list)
    a_codes, b_codes = codes_list[:n_barcodes], codes_list[n_barcodes:]
    lines = [f"A{i + 1}\t{c}" for i, c in enumerate(a_codes)] + [
        f"B{i + 1}\t{c}" for i, c in enumerate(b_codes)
    ]
    (out / "barcode_list.txt").write_text("\n".join(lines) + "\n")
    names = [b + a for a in a_codes for b in b_codes][:-1]  # the last grid position has no reads
    order = rng.permutation(len(names))
    counts = rng.poisson(2.0, size=(len(names), n_genes)).astype(np.float32)
    adata = ad.AnnData(
        counts[order],
        obs=pd.DataFrame(index=pd.Index([names[i] for i in order])),
        var=pd.DataFrame(index=pd.Index([f"Gene{g}" for g in range(n_genes)])),
    )
    adata.write_h5ad(out / f"{dataset}.h5ad")
    if image:
        pixels = rng.integers(0, 255, size=(image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / "tissue_lowres_image.png")
    return out
