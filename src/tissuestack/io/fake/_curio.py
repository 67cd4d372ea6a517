"""Synthetic Curio Seeker (Slide-seq) output folders, a few tens of KB.

The layout follows ``docs/vendors.md`` §6.3 and §7.8::

    <path>/<sample>_anndata.h5ad                           beads x genes, obsm "spatial" = "X_spatial" = (x, y)
    <path>/<sample>_cluster_assignment.txt                 barcode<TAB>cluster, no header (obs order, or shuffled)
    <path>/<sample>_Metrics.csv                            Metric,Value,Category
    <path>/<sample>_variable_features_clusters.txt         FindAllMarkers-style markers, tab-separated with header
    <path>/<sample>_variable_features_spatial_moransi.txt  R write.table: header one field shorter than the rows
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CURIO_GENES", "CURIO_METRICS", "write_curio"]

CURIO_GENES = ("Actb", "Gapdh", "Malat1", "Mbp", "Plp1")
#: (metric, value, category) rows of the metrics file
CURIO_METRICS = (
    ("Number_of_beads", "12", "Beads"),
    ("Mean_reads_per_bead", "431.5", "Beads"),
    ("Total_reads", "1000000", "Sequencing"),
    ("Fraction_mapped", "0.87", "Sequencing"),
    ("Genome", "GRCm39", "Reference"),
)
MORANSI_GENES = ("Malat1", "Mbp", "Plp1")


def _barcodes(n: int, rng: np.random.Generator) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        code = "".join(rng.choice(list("ACGT"), 14))
        if code not in out:
            out.append(code)
    return out


def write_curio(
    path: str | Path,
    *,
    sample: str = "sample1",
    n_beads: int = 12,
    n_clusters: int = 3,
    shuffle_clusters: bool = True,
    seed: int = 0,
) -> Path:
    """Write a synthetic Curio Seeker output folder into ``path`` and return it.

    Parameters
    ----------
    path
        Output folder (created).
    sample
        The sample prefix of every file.
    n_beads
        Beads (rows of the h5ad).
    n_clusters
        Clusters 1..n assigned round-robin.
    shuffle_clusters
        Write the cluster assignment in a shuffled order (a reader must match by barcode).
    seed
        Random seed.
    """
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    barcodes = _barcodes(n_beads, rng)
    counts = rng.poisson(3.0, size=(n_beads, len(CURIO_GENES))).astype(np.float32)
    xy = np.round(rng.uniform(0, 3000, size=(n_beads, 2)), 2)
    obs = pd.DataFrame(
        {"n_counts": counts.sum(axis=1), "n_genes": (counts > 0).sum(axis=1)}, index=pd.Index(barcodes)
    )
    var = pd.DataFrame(
        {"gene_ids": [f"ENSMUSG{k:011d}" for k in range(len(CURIO_GENES))]}, index=list(CURIO_GENES)
    )
    adata = ad.AnnData(counts, obs=obs, var=var, obsm={"spatial": xy.copy(), "X_spatial": xy.copy()})
    adata.write_h5ad(out / f"{sample}_anndata.h5ad")

    clusters = pd.DataFrame({"barcode": barcodes, "cluster": [k % n_clusters + 1 for k in range(n_beads)]})
    if shuffle_clusters:
        clusters = clusters.iloc[rng.permutation(n_beads)]
    clusters.to_csv(out / f"{sample}_cluster_assignment.txt", sep="\t", header=False, index=False)

    metrics = pd.DataFrame(list(CURIO_METRICS), columns=["Metric", "Value", "Category"])
    metrics.to_csv(out / f"{sample}_Metrics.csv", index=False)

    markers = pd.DataFrame(
        {
            "p_val": [1e-8, 2e-6, 3e-5, 1e-4],
            "avg_log2FC": [2.1, 1.4, 0.9, 1.1],
            "pct.1": [0.9, 0.8, 0.7, 0.6],
            "pct.2": [0.2, 0.3, 0.4, 0.1],
            "p_val_adj": [1e-6, 2e-4, 3e-3, 1e-2],
            "cluster": [1, 1, 2, 3],
            "gene": ["Mbp", "Plp1", "Malat1", "Actb"],
        }
    )
    markers.to_csv(out / f"{sample}_variable_features_clusters.txt", sep="\t", index=False)

    lines = ["MoransI_observed\tMoransI_p.value\tmoransi.spatially.variable.rank"]
    for rank, gene in enumerate(MORANSI_GENES, start=1):
        lines.append(f"{gene}\t{0.5 / rank:.4f}\t{1e-3 * rank:.4g}\t{rank}")
    (out / f"{sample}_variable_features_spatial_moransi.txt").write_text("\n".join(lines) + "\n")
    return out
