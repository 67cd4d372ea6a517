"""Categories of other writers' string columns from Parquet dictionary pages (store/_parquet_pages.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tissuestack.store._parquet_pages import chunk_dictionary


def _write(path, table, **kwargs):
    pq.write_table(table, path, row_group_size=5_000, data_page_size=2_000, **kwargs)
    return pq.ParquetFile(path).metadata


def _genes(n, rng, k=40):
    return [f"gene_{i:03d}" for i in rng.integers(0, k, n)]


def _arrow_dictionaries(path, column):
    col = pq.ParquetFile(path, read_dictionary=[column]).read(columns=[column]).column(column)
    return [c.dictionary.to_pylist() for c in col.chunks]


@pytest.mark.parametrize("compression", ["snappy", "zstd", "gzip", "none"])
@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_dictionary_pages_match_what_arrow_decodes(tmp_path, compression, version):
    rng = np.random.default_rng(1)
    genes = _genes(12_000, rng)
    genes[7] = None  # nulls are never in a dictionary
    table = pa.table({"x": rng.random(12_000), "gene": pa.array(genes, pa.string())})
    path = tmp_path / "t.parquet"
    md = _write(path, table, compression=compression, data_page_version=version)
    assert md.num_row_groups == 3
    with open(path, "rb") as fh:
        pages = [chunk_dictionary(fh, md, rg, 1) for rg in range(md.num_row_groups)]
    assert pages == _arrow_dictionaries(path, "gene")
    assert all(None not in p for p in pages)


def test_categorical_columns_keep_their_dictionary_order(tmp_path):
    cats = ["zeta", "alpha", "mu", "unused"]
    values = pd.Categorical(["mu", "zeta", "alpha", "mu"] * 3000, categories=cats)
    path = tmp_path / "c.parquet"
    md = _write(path, pa.table({"gene": pa.array(values)}))
    with open(path, "rb") as fh:
        pages = [chunk_dictionary(fh, md, rg, 0) for rg in range(md.num_row_groups)]
    assert pages == _arrow_dictionaries(path, "gene")


def test_plain_fallback_and_other_columns_are_not_vouched_for(tmp_path):
    rng = np.random.default_rng(2)
    # a dictionary page limit far below the values' size: the writer falls back to plain data pages
    table = pa.table({"gene": pa.array([f"v{i}" for i in range(20_000)]), "n": np.arange(20_000)})
    path = tmp_path / "f.parquet"
    md = _write(path, table, dictionary_pagesize_limit=256)
    with open(path, "rb") as fh:
        assert chunk_dictionary(fh, md, 0, 0) is None  # values after the overflow are not in the dictionary
        assert chunk_dictionary(fh, md, 0, 1) is None  # not a string column
    path2 = tmp_path / "n.parquet"
    md2 = _write(path2, pa.table({"gene": pa.array(_genes(6000, rng))}), use_dictionary=False)
    with open(path2, "rb") as fh:
        assert chunk_dictionary(fh, md2, 0, 0) is None  # no dictionary page at all


def test_corrupt_headers_give_none(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "t.parquet"
    md = _write(path, pa.table({"gene": pa.array(_genes(6000, rng))}))
    raw = bytearray(path.read_bytes())
    start = md.row_group(0).column(0).dictionary_page_offset
    raw[start : start + 8] = b"\xff" * 8
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(raw))
    with open(bad, "rb") as fh:
        assert chunk_dictionary(fh, md, 0, 0) is None


def test_points_of_another_writer_get_their_categories_from_the_pages(tmp_path, monkeypatch):
    """A points element whose gene column is plain strings (another writer): the categories are the sorted
    union over all files and row groups, also when one file's pages cannot be used (decoded instead)."""
    import tissuestack as ts
    from tissuestack.store import _parquet_pages, _points

    rng = np.random.default_rng(4)
    first = pd.DataFrame({"x": rng.random(100), "y": rng.random(100), "gene": _genes(100, rng)})
    sdata = ts.SpatialData(points={"p": ts.PointsModel.parse(first, feature_key="gene")})
    sdata.write(tmp_path / "s.zarr")
    folder = tmp_path / "s.zarr" / "points" / "p" / "points.parquet"
    for f in folder.iterdir():
        f.unlink()
    for k in range(3):
        genes = _genes(8000, rng, k=30 + 10 * k)  # later files bring new genes
        frame = pa.table({"x": rng.random(8000), "y": rng.random(8000), "gene": pa.array(genes)})
        pq.write_table(frame, folder / f"part.{k}.parquet", row_group_size=3000)
    expected = sorted(
        set(pd.concat([pq.read_table(folder / f"part.{k}.parquet").to_pandas() for k in range(3)]).gene)
    )
    calls = []
    real = _parquet_pages.chunk_dictionary

    def spy(fh, md, rg, j):
        out = real(fh, md, rg, j)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_points, "chunk_dictionary", spy)
    points = ts.read_zarr(tmp_path / "s.zarr")["p"]
    assert list(points.dtypes["gene"].categories) == expected
    assert calls and all(calls)
    # one file's pages unusable: that file is decoded, the answer is the same
    monkeypatch.setattr(_points, "chunk_dictionary", lambda fh, md, rg, j: None if rg == 1 else real(fh, md, rg, j))
    points = ts.read_zarr(tmp_path / "s.zarr")["p"]
    assert list(points.dtypes["gene"].categories) == expected


def test_remote_files_read_each_chunk_once(tmp_path):
    """On a remote filesystem the chunk's bytes are fetched in one read and parsed from memory."""
    import fsspec

    from tissuestack.store import _points

    rng = np.random.default_rng(6)
    path = tmp_path / "t.parquet"
    md = _write(path, pa.table({"gene": pa.array(_genes(12_000, rng))}))
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/t.parquet", path.read_bytes())
    reads = []
    real_open = fs.open

    def counting_open(p, mode="rb", **kw):
        fh = real_open(p, mode, **kw)
        real_read = fh.read
        fh.read = lambda n=-1: reads.append(n) or real_read(n)
        return fh

    fs.open = counting_open

    class _Root:
        is_local = False

    class _Loc:
        root = _Root()

    pages = _points._page_dictionaries(_Loc(), fs, "/bucket/t.parquet", md, "gene")
    assert pages == _arrow_dictionaries(path, "gene")
    assert len(reads) == md.num_row_groups  # one read per chunk, whatever its number of pages
