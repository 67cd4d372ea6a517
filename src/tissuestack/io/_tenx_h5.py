"""10x Genomics feature-barcode matrix HDF5 (``*_feature_bc_matrix.h5``, Xenium ``cell_feature_matrix.h5``).

Two layouts (``docs/vendors.md`` §0.2):

* Cell Ranger / Space Ranger >= 3 and Xenium: group ``matrix`` with ``barcodes``, ``data``, ``indices``,
  ``indptr``, ``shape`` = [n_features, n_barcodes] and ``features/{id, name, feature_type, genome, ...}``;
* legacy (Cell Ranger 2): one group per genome with the same matrix datasets and ``genes`` / ``gene_names``.

The stored matrix is CSC features x barcodes, which is exactly CSR barcodes x features: it is used as is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tissuestack.errors import ReaderError

__all__ = ["read_10x_h5", "tenx_h5_attributes"]

_MATRIX_KEYS = ("barcodes", "data", "indices", "indptr", "shape")


def _strings(ds: Any) -> np.ndarray:
    """A string dataset (fixed-length bytes or variable-length) as a numpy ``str`` array."""
    if ds.dtype.kind == "O":
        return np.asarray(ds.asstr()[()], dtype=object).astype(str)
    raw = ds[()]
    if raw.dtype.kind == "S":
        try:
            return raw.astype(str)  # ASCII: fast path
        except UnicodeDecodeError:
            return np.char.decode(raw, "utf-8")
    return raw.astype(str)


def _open(path: str | os.PathLike):
    import h5py

    p = Path(path)
    if not p.is_file():
        state = "is a directory" if p.is_dir() else "does not exist"
        raise ReaderError(f"10x HDF5 matrix {str(p)!r} {state}")
    try:
        return h5py.File(p, "r")
    except OSError as err:
        raise ReaderError(f"{str(p)!r} is not a readable HDF5 file (truncated or corrupt?): {err}") from err


def tenx_h5_attributes(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a 10x HDF5 matrix (``software_version``, ``library_ids``, ...), strings decoded."""
    with _open(path) as f:
        out: dict[str, Any] = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, np.ndarray) and value.dtype.kind in "SO":
                value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value.tolist()]
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out


def _require(group: Any, key: str, path: Path) -> Any:
    if key not in group:
        where = group.name if group.name != "/" else "the file root"
        raise ReaderError(f"{str(path)!r}: missing {key!r} in {where} of the 10x HDF5 matrix")
    return group[key]


def _matrix(group: Any, path: Path):
    """(CSR barcodes x features, barcodes) from one matrix group, checking it is complete."""
    import scipy.sparse as sp

    for key in _MATRIX_KEYS:
        _require(group, key, path)
    try:
        shape = np.asarray(group["shape"][()]).astype(np.int64)
        n_features, n_barcodes = int(shape[0]), int(shape[1])
        indptr = np.asarray(group["indptr"][()], dtype=np.int64)
        data = group["data"][()]
        indices = group["indices"][()]
        barcodes = _strings(group["barcodes"])
    except (OSError, KeyError, IndexError, ValueError) as err:
        raise ReaderError(
            f"{str(path)!r}: cannot read the matrix in {group.name} (truncated?): {err}"
        ) from err
    where = f"{str(path)!r} ({group.name})"
    if len(barcodes) != n_barcodes or len(indptr) != n_barcodes + 1:
        raise ReaderError(
            f"{where}: shape says {n_barcodes} barcodes but there are {len(barcodes)} barcodes and "
            f"{len(indptr)} indptr entries (expected {n_barcodes + 1}); the file is truncated or corrupt"
        )
    nnz = int(indptr[-1]) if len(indptr) else 0
    if len(data) != nnz or len(indices) != nnz or (len(indptr) and indptr[0] != 0):
        raise ReaderError(
            f"{where}: indptr announces {nnz} values but data has {len(data)} and indices {len(indices)}; "
            "the file is truncated or corrupt"
        )
    if nnz and (indices.min() < 0 or indices.max() >= n_features):
        raise ReaderError(f"{where}: feature indices outside 0..{n_features - 1}")
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.int32, copy=False)
    index_dtype = np.int32 if max(nnz, n_features) < np.iinfo(np.int32).max else np.int64
    X = sp.csr_matrix(
        (data, indices.astype(index_dtype, copy=False), indptr.astype(index_dtype, copy=False)),
        shape=(n_barcodes, n_features),
    )
    return X, barcodes, n_features


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def read_10x_h5(
    path: str | os.PathLike,
    *,
    genome: str | None = None,
    feature_types: str | Sequence[str] | None = None,
):
    """Read a 10x Genomics feature-barcode matrix HDF5 into an AnnData.

    Parameters
    ----------
    path
        The ``.h5`` file.
    genome
        Keep the features of this genome only. For the legacy layout it picks the genome group (required when
        the file holds several).
    feature_types
        Keep these feature types only (e.g. ``"Gene Expression"``).

    Returns
    -------
    anndata.AnnData
        ``X``: CSR (barcodes x features) int32 counts; ``obs_names``: barcodes; ``var_names``: feature names
        made unique; ``var`` columns ``gene_ids``, ``feature_types``, ``genome`` and any other per-feature
        dataset of the file.

    Raises
    ------
    ReaderError
        Missing / unreadable file, missing groups or datasets (named), inconsistent (truncated) arrays, a genome
        or feature type that selects nothing.
    """
    import anndata as ad
    import pandas as pd

    p = Path(path)
    with _open(p) as f:
        if "matrix" in f:
            group = f["matrix"]
            X, barcodes, n_features = _matrix(group, p)
            feats = _require(group, "features", p)
            names = _strings(_require(feats, "name", p))
            ids = _strings(_require(feats, "id", p))
            types = (
                _strings(feats["feature_type"])
                if "feature_type" in feats
                else np.full(n_features, "Gene Expression", dtype=object)
            )
            genomes = (
                _strings(feats["genome"]) if "genome" in feats else np.full(n_features, "", dtype=object)
            )
            extra: dict[str, np.ndarray] = {}
            for key, ds in feats.items():
                if key in ("name", "id", "feature_type", "genome") or key.startswith("_"):
                    continue
                if not hasattr(ds, "shape") or ds.ndim != 1 or ds.shape[0] != n_features:
                    continue
                extra[key] = _strings(ds) if ds.dtype.kind in "SOU" else ds[()]
        else:
            candidates = [k for k, g in f.items() if hasattr(g, "keys") and "barcodes" in g]
            if not candidates:
                raise ReaderError(
                    f"{str(p)!r}: not a 10x feature-barcode matrix: no 'matrix' group (Cell Ranger >= 3) and no "
                    f"per-genome group with 'barcodes' (legacy layout); top-level keys: {sorted(f.keys())}"
                )
            if genome is None:
                if len(candidates) > 1:
                    raise ReaderError(
                        f"{str(p)!r}: legacy 10x matrix with several genomes {candidates}; pass genome="
                    )
                chosen = candidates[0]
            elif genome in candidates:
                chosen = genome
            else:
                raise ReaderError(f"{str(p)!r}: no genome {genome!r}; the file holds {candidates}")
            group = f[chosen]
            X, barcodes, n_features = _matrix(group, p)
            ids = _strings(_require(group, "genes", p))
            names = _strings(_require(group, "gene_names", p))
            types = np.full(n_features, "Gene Expression", dtype=object)
            genomes = np.full(n_features, chosen, dtype=object)
            extra = {}
            genome = None  # the group is the filter
    for label, values in (("feature names", names), ("feature ids", ids)):
        if len(values) != n_features:
            raise ReaderError(
                f"{str(p)!r}: {len(values)} {label} for {n_features} features; the file is truncated or corrupt"
            )
    var = pd.DataFrame(
        {"gene_ids": ids, "feature_types": types.astype(str), "genome": genomes.astype(str), **extra},
        index=pd.Index(names.astype(str)),
    )
    keep = np.ones(n_features, dtype=bool)
    if genome is not None:
        keep &= var["genome"].to_numpy() == genome
        if not keep.any():
            raise ReaderError(
                f"{str(p)!r}: no feature of genome {genome!r}; genomes: {sorted(set(var['genome']))}"
            )
    wanted = _as_list(feature_types)
    if wanted is not None:
        keep &= var["feature_types"].isin(wanted).to_numpy()
        if not keep.any():
            raise ReaderError(
                f"{str(p)!r}: no feature of type {wanted}; types: {sorted(set(var['feature_types']))}"
            )
    if not keep.all():
        X = X[:, np.flatnonzero(keep)]
        var = var.iloc[keep]
    if not var.index.is_unique:
        from anndata.utils import make_index_unique

        var.index = make_index_unique(var.index)
    return ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes.astype(str))), var=var)
