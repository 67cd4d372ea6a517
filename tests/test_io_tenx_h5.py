"""10x feature-barcode HDF5 matrices: v3 and legacy layouts, filters, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from tissuestack.errors import ReaderError
from tissuestack.io._tenx_h5 import read_10x_h5, tenx_h5_attributes

RNG = np.random.default_rng(1)
BARCODES = [f"AAACCTG{i:04d}-1" for i in range(12)]
IDS = ["ENSG1", "ENSG2", "ENSG3", "ENSMUSG1", "NEG1", "AB1"]
NAMES = ["GeneA", "GeneB", "GeneA", "Mgene", "NegControlProbe_00001", "CD3"]
TYPES = ["Gene Expression"] * 4 + ["Negative Control Probe", "Antibody Capture"]
GENOMES = ["GRCh38", "GRCh38", "GRCh38", "mm10", "GRCh38", ""]
COUNTS = RNG.integers(0, 4, size=(12, 6)) * (RNG.random((12, 6)) < 0.6)


def write_v3(path, counts=COUNTS, barcodes=BARCODES, root_attrs=None, drop=None):
    m = sp.csc_matrix(np.asarray(counts, np.int32).T)  # features x barcodes
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, "S")
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices.astype(np.int64), m.indptr
        g["shape"] = np.array(m.shape, np.int32)
        fe = g.create_group("features")
        fe["id"], fe["name"], fe["feature_type"] = (np.array(x, "S") for x in (IDS, NAMES, TYPES))
        fe["genome"] = np.array(GENOMES, "S")
        fe["_all_tag_keys"] = np.array([b"genome"])
        fe["target_sets"] = np.array([1, 1, 0, 0, 0, 0], np.int8)
        for k, v in {"filetype": "matrix", "version": 2, **(root_attrs or {})}.items():
            f.attrs[k] = v
        if drop:
            del f[drop]
    return path


def write_v2(path, genomes=("GRCh38",)):
    m = sp.csc_matrix(np.asarray(COUNTS[:, :4], np.int32).T)
    with h5py.File(path, "w") as f:
        for genome in genomes:
            g = f.create_group(genome)
            g["barcodes"] = np.array(BARCODES, "S")
            g["data"], g["indices"], g["indptr"] = (
                m.data,
                m.indices.astype(np.int64),
                m.indptr.astype(np.int64),
            )
            g["shape"] = np.array(m.shape, np.int32)
            g["genes"] = np.array(IDS[:4], "S")
            g["gene_names"] = np.array(NAMES[:4], "S")
    return path


def test_v3_layout(tmp_path):
    path = write_v3(
        tmp_path / "m.h5", root_attrs={"software_version": "spaceranger-3.0.0", "library_ids": [b"s1"]}
    )
    adata = read_10x_h5(path)
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.int32
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS)
    assert list(adata.obs_names) == BARCODES and isinstance(adata.obs_names[0], str)
    assert list(adata.var_names) == ["GeneA", "GeneB", "GeneA-1", "Mgene", "NegControlProbe_00001", "CD3"]
    assert list(adata.var["gene_ids"]) == IDS
    assert list(adata.var["feature_types"]) == TYPES
    assert list(adata.var["genome"]) == GENOMES
    assert list(adata.var["target_sets"]) == [1, 1, 0, 0, 0, 0]
    attrs = tenx_h5_attributes(path)
    assert attrs["software_version"] == "spaceranger-3.0.0" and attrs["library_ids"] == ["s1"]


def test_v3_filters(tmp_path):
    path = write_v3(tmp_path / "m.h5")
    gex = read_10x_h5(path, feature_types="Gene Expression")
    assert list(gex.var["gene_ids"]) == IDS[:4]
    np.testing.assert_array_equal(gex.X.toarray(), COUNTS[:, :4])
    both = read_10x_h5(path, feature_types=["Gene Expression", "Antibody Capture"], genome="GRCh38")
    assert list(both.var["gene_ids"]) == ["ENSG1", "ENSG2", "ENSG3"]
    np.testing.assert_array_equal(both.X.toarray(), COUNTS[:, :3])
    mouse = read_10x_h5(path, genome="mm10")
    np.testing.assert_array_equal(mouse.X.toarray(), COUNTS[:, [3]])
    with pytest.raises(ReaderError, match="no feature of genome 'hg19'"):
        read_10x_h5(path, genome="hg19")
    with pytest.raises(ReaderError, match="Protein"):
        read_10x_h5(path, feature_types="Protein Expression")


def test_legacy_v2_layout(tmp_path):
    adata = read_10x_h5(write_v2(tmp_path / "v2.h5"))
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS[:, :4])
    assert list(adata.var["gene_ids"]) == IDS[:4]
    assert set(adata.var["genome"]) == {"GRCh38"}
    assert set(adata.var["feature_types"]) == {"Gene Expression"}
    two = write_v2(tmp_path / "two.h5", genomes=("GRCh38", "mm10"))
    with pytest.raises(ReaderError, match="several genomes"):
        read_10x_h5(two)
    assert set(read_10x_h5(two, genome="mm10").var["genome"]) == {"mm10"}
    with pytest.raises(ReaderError, match="no genome 'x'"):
        read_10x_h5(two, genome="x")


def test_empty_rows_and_unsorted_barcodes(tmp_path):
    counts = COUNTS.copy()
    counts[[0, 5, 11]] = 0  # barcodes without any count
    adata = read_10x_h5(write_v3(tmp_path / "m.h5", counts=counts))
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert adata.X.sum(axis=1).A1[[0, 5, 11]].tolist() == [0, 0, 0]


def test_missing_groups_and_truncation(tmp_path):
    with pytest.raises(ReaderError, match=r"nope\.h5"):
        read_10x_h5(tmp_path / "nope.h5")
    with pytest.raises(ReaderError, match=r"missing 'features' in /matrix"):
        read_10x_h5(write_v3(tmp_path / "a.h5", drop="matrix/features"))
    with pytest.raises(ReaderError, match=r"missing 'indptr'"):
        read_10x_h5(write_v3(tmp_path / "b.h5", drop="matrix/indptr"))
    with pytest.raises(ReaderError, match="not a 10x feature-barcode matrix"):
        read_10x_h5(write_v3(tmp_path / "c.h5", drop="matrix"))
    # a shorter data array than indptr announces (an interrupted copy)
    path = write_v3(tmp_path / "d.h5")
    with h5py.File(path, "a") as f:
        data = f["matrix/data"][()]
        del f["matrix/data"]
        f["matrix/data"] = data[:-3]
    with pytest.raises(ReaderError, match="truncated"):
        read_10x_h5(path)
    # a file cut in the middle is not readable HDF5 at all
    whole = write_v3(tmp_path / "e.h5").read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ReaderError, match=r"cut\.h5"):
        read_10x_h5(cut)
