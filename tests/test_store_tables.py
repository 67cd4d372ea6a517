"""Tables codec: AnnData in anndata's Zarr encoding plus spatialdata group attributes, Zarr v3 and v2."""

import json
import shutil
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from tissuestack.elements import TableModel
from tissuestack.errors import FormatError, StoreError
from tissuestack.store import ElementLocation, StoreRoot, get_codec
from tissuestack.store._tables import describe_table, read_table, write_table

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
VERSION = {3: "0.2", 2: "0.1"}


# ------------------------------------------------------------------------------------------------ data


def _x(n_obs, n_vars, sparse, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.7, (n_obs, n_vars)).astype(np.float32)
    return sp.csr_matrix(dense) if sparse else dense


def one_region(sparse=True, n=26):
    obs = pd.DataFrame(
        {"instance_id": np.arange(1, n + 1), "region": pd.Categorical(["blobs_labels"] * n)},
        index=[f"cell{i}" for i in range(n)],
    )
    adata = ad.AnnData(X=_x(n, 3, sparse), obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2"]))
    return TableModel.parse(adata, region="blobs_labels", region_key="region", instance_key="instance_id")


def several_regions(sparse=False):
    n = 10
    obs = pd.DataFrame(
        {
            "cell_id": np.r_[np.arange(5), np.arange(5)],
            "region": pd.Categorical(["circles"] * 5 + ["labels2d"] * 5),
            "kind": pd.Categorical(list("ababababab")),
            "score": np.linspace(0, 1, n),
            "flag": np.arange(n) % 2 == 0,
            "name": [f"n{i}" for i in range(n)],
        },
        index=[str(i) for i in range(n)],
    )
    adata = ad.AnnData(X=_x(n, 4, sparse, seed=1), obs=obs)
    adata.layers["counts"] = _x(n, 4, not sparse, seed=2)
    adata.obsm["spatial"] = np.random.default_rng(3).random((n, 2))
    adata.uns["nested"] = {"a": 1, "b": {"c": [1, 2, 3]}, "s": "text"}
    return TableModel.parse(
        adata, region=["circles", "labels2d"], region_key="region", instance_key="cell_id"
    )


def orphan(sparse=True):
    return ad.AnnData(X=_x(5, 2, sparse), obs=pd.DataFrame({"v": np.arange(5)}, index=list("abcde")))


# ------------------------------------------------------------------------------------------------ helpers


def _store(tmp_path, zarr_format):
    root = StoreRoot.open(tmp_path / "s.zarr", read_only=False)
    group = zarr.open_group(root.zarr_store(), mode="w", zarr_format=zarr_format)
    return root, group, group.create_group("tables")


def _write(tmp_path, adata, zarr_format, name="table"):
    root, _group, tables = _store(tmp_path, zarr_format)
    loc = ElementLocation(root, "tables", name)
    version = VERSION[zarr_format]
    get_codec("tables", version).write(adata, tables, loc, version)
    return root, loc


def _open(root, loc):
    group = zarr.open_group(root.zarr_store(read_only=True), mode="r")[loc.key]
    return group, group.attrs.asdict()


def _read(root, loc, **options):
    group, attrs = _open(root, loc)
    return get_codec("tables", attrs["version"]).read(group, loc, attrs, **options)


def _describe(root, loc):
    group, attrs = _open(root, loc)
    return get_codec("tables", attrs["version"]).describe(group, loc, attrs)


def _dense(x):
    if isinstance(x, da.Array):
        x = x.compute()
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _assert_tables_equal(back, original):
    assert back.shape == original.shape
    np.testing.assert_array_equal(_dense(back.X), _dense(original.X))
    pd.testing.assert_frame_equal(back.obs, original.obs, check_index_type=False)
    assert back.obs_names.tolist() == original.obs_names.tolist()
    assert back.var_names.tolist() == original.var_names.tolist()
    assert set(back.layers) == set(original.layers)
    for key in original.layers:
        np.testing.assert_array_equal(_dense(back.layers[key]), _dense(original.layers[key]))
    for key in original.obsm:
        np.testing.assert_array_equal(back.obsm[key], original.obsm[key])


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("make", [one_region, several_regions, orphan])
def test_round_trip(tmp_path, zarr_format, sparse, make):
    adata = make(sparse=sparse)
    root, loc = _write(tmp_path, adata, zarr_format)
    back = _read(root, loc)
    assert isinstance(back, ad.AnnData)
    _assert_tables_equal(back, adata)
    assert sp.issparse(back.X) == sparse
    if "nested" in adata.uns:
        assert back.uns["nested"]["b"]["c"].tolist() == [1, 2, 3] and back.uns["nested"]["s"] == "text"
    expected = adata.uns.get("spatialdata_attrs")
    assert back.uns.get("spatialdata_attrs") == expected
    if expected is not None:
        TableModel.validate(back)
        assert isinstance(back.obs[expected["region_key"]].dtype, pd.CategoricalDtype)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_zarr_format_of_written_arrays(tmp_path, zarr_format):
    root, loc = _write(tmp_path, several_regions(), zarr_format)
    group, _ = _open(root, loc)
    for path in ("X", "layers/counts/data", "obs/score", "obs/region/codes", "uns/spatialdata_attrs/region"):
        assert group[path].metadata.zarr_format == zarr_format
    marker = "zarr.json" if zarr_format == 3 else ".zgroup"
    assert Path(loc.file(marker)).exists()


# ------------------------------------------------------------------------------------------------ attributes


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_group_attributes_one_region_verbatim(tmp_path, zarr_format):
    adata = one_region()
    _root, loc = _write(tmp_path, adata, zarr_format)
    if zarr_format == 3:
        raw = json.loads(Path(loc.file("zarr.json")).read_text())
        assert raw["node_type"] == "group" and raw["zarr_format"] == 3
        attrs = raw["attributes"]
    else:
        attrs = json.loads(Path(loc.file(".zattrs")).read_text())
    # docs/format.md §7.1, key order included
    assert list(attrs.items()) == [
        ("encoding-type", "anndata"),
        ("encoding-version", "0.1.0"),
        ("spatialdata-encoding-type", "ngff:regions_table"),
        ("region", "blobs_labels"),
        ("region_key", "region"),
        ("instance_key", "instance_id"),
        ("version", VERSION[zarr_format]),
    ]


def test_group_attributes_several_regions_and_orphan(tmp_path):
    root, loc = _write(tmp_path / "a", several_regions(), 3)
    _, attrs = _open(root, loc)
    assert attrs["region"] == ["circles", "labels2d"]
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "cell_id"

    root, loc = _write(tmp_path / "b", orphan(), 3)
    group, attrs = _open(root, loc)
    assert attrs == {
        "encoding-type": "anndata",
        "encoding-version": "0.1.0",
        "spatialdata-encoding-type": "ngff:regions_table",
        "region": None,
        "region_key": None,
        "instance_key": None,
        "version": "0.2",
    }
    assert "spatialdata_attrs" not in group["uns"]


def test_uns_region_encoding_verbatim(tmp_path):
    _root, loc = _write(tmp_path, one_region(), 3)
    meta = json.loads(Path(loc.file("uns", "spatialdata_attrs", "region", "zarr.json")).read_text())
    # docs/format.md §7.2
    assert meta["shape"] == [] and meta["data_type"] == "string" and meta["node_type"] == "array"
    assert meta["attributes"] == {"encoding-type": "string", "encoding-version": "0.2.0"}
    assert meta["codecs"][0] == {"name": "vlen-utf8", "configuration": {}}
    uns = json.loads(Path(loc.file("uns", "spatialdata_attrs", "zarr.json")).read_text())
    assert uns["attributes"] == {"encoding-type": "dict", "encoding-version": "0.1.0"}
    x = json.loads(Path(loc.file("X", "zarr.json")).read_text())
    assert x["attributes"] == {"shape": [26, 3], "encoding-type": "csr_matrix", "encoding-version": "0.1.0"}


def test_all_null_annotation_is_written_as_absent(tmp_path):
    adata = orphan()
    adata.uns["spatialdata_attrs"] = {"region": None, "region_key": None, "instance_key": None}
    root, loc = _write(tmp_path, adata, 3)
    group, attrs = _open(root, loc)
    assert "spatialdata_attrs" not in group["uns"]
    assert attrs["region"] is None
    assert adata.uns["spatialdata_attrs"]["region"] is None  # input untouched
    assert "spatialdata_attrs" not in _read(root, loc).uns


def test_region_array_becomes_list_and_missing_keys_filled(tmp_path):
    adata = several_regions()
    root, loc = _write(tmp_path, adata, 3)
    # drop instance_key from uns, as an older writer that omitted None values would
    group = zarr.open_group(root.zarr_store(read_only=False), mode="r+")[loc.key]
    del group["uns/spatialdata_attrs/instance_key"]
    back = _read(root, loc)
    attrs = back.uns["spatialdata_attrs"]
    assert attrs["region"] == ["circles", "labels2d"] and isinstance(attrs["region"], list)
    assert attrs["instance_key"] is None and attrs["region_key"] == "region"


def test_write_does_not_change_the_input(tmp_path):
    adata = several_regions()
    before = adata.copy()
    _write(tmp_path, adata, 3)
    _assert_tables_equal(adata, before)
    assert adata.uns["spatialdata_attrs"] == before.uns["spatialdata_attrs"]


def test_nullable_strings(tmp_path):
    adata = orphan()
    adata.obs["label"] = pd.array(["x", None, "z", "w", "v"], dtype="string")
    adata.obs.index = pd.Index(list("abcde"), dtype="string")
    for zarr_format in (3, 2):
        root, loc = _write(tmp_path / str(zarr_format), adata, zarr_format)
        group, _ = _open(root, loc)
        assert group["obs/label"].attrs["encoding-type"] == "nullable-string-array"
        back = _read(root, loc)
        assert back.obs["label"].tolist()[0] == "x" and pd.isna(back.obs["label"].iloc[1])
        assert back.obs_names.tolist() == list("abcde")


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_unknown_version_and_type(tmp_path, zarr_format):
    root, _group, tables = _store(tmp_path, zarr_format)
    loc = ElementLocation(root, "tables", "t")
    with pytest.raises(FormatError, match=r"9\.9"):
        write_table(one_region(), tables, loc, "9.9")
    with pytest.raises(TypeError, match="AnnData"):
        write_table(pd.DataFrame({"a": [1]}), tables, loc, VERSION[zarr_format])


def test_registered_codecs():
    for version in ("0.1", "0.2"):
        codec = get_codec("tables", version)
        assert codec.read is read_table and codec.write is write_table and codec.describe is describe_table


# ------------------------------------------------------------------------------------------------ lazy X


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("sparse", [True, False])
def test_lazy_x(tmp_path, zarr_format, sparse):
    adata = several_regions(sparse=sparse)
    adata.raw = adata.copy()
    root, loc = _write(tmp_path, adata, zarr_format)
    back = _read(root, loc, lazy_x=True)
    assert isinstance(back.X, da.Array)
    assert isinstance(back.layers["counts"], da.Array)
    assert isinstance(back.raw.X, da.Array)
    assert back.X.shape == adata.shape and back.X.dtype == adata.X.dtype
    _assert_tables_equal(back, adata)
    np.testing.assert_array_equal(_dense(back.raw.X), _dense(adata.raw.X))
    # obs, var, uns and obsm are in memory
    assert isinstance(back.obs, pd.DataFrame) and isinstance(back.obsm["spatial"], np.ndarray)
    assert back.uns["spatialdata_attrs"] == adata.uns["spatialdata_attrs"]


@pytest.mark.parametrize("sparse", [True, False])
def test_lazy_x_reads_nothing_until_computed(tmp_path, sparse):
    adata = one_region(sparse=sparse)
    assert _dense(adata.X).any()
    root, loc = _write(tmp_path, adata, 3)
    back = _read(root, loc, lazy_x=True)
    assert isinstance(back.X, da.Array) and back.X.shape == (26, 3)
    # remove every chunk of X after opening: had the data been read already, it would still be there
    for chunks in Path(loc.file("X")).rglob("c"):
        shutil.rmtree(chunks)
    assert back.obs["instance_id"].tolist() == list(range(1, 27))
    assert not _dense(back.X).any()  # read now: fill values only


# ------------------------------------------------------------------------------------------------ describe


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_describe(tmp_path, zarr_format):
    root, loc = _write(tmp_path / "a", one_region(sparse=True), zarr_format)
    assert _describe(root, loc) == "table 26 x 3, annotating ['blobs_labels']"
    root, loc = _write(tmp_path / "b", several_regions(sparse=False), zarr_format)
    assert _describe(root, loc) == "table 10 x 4, annotating ['circles', 'labels2d']"
    root, loc = _write(tmp_path / "c", orphan(), zarr_format)
    assert _describe(root, loc) == "table 5 x 2, annotating nothing"


def test_describe_reads_metadata_only(tmp_path, monkeypatch):
    root, loc = _write(tmp_path, one_region(sparse=True), 3)
    for path in list(Path(loc.fs_path).rglob("c")):  # no chunk of any array is needed
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def fail(*args, **kwargs):
        raise AssertionError("describe must not read elements")

    monkeypatch.setattr(ad.io, "read_elem", fail)
    assert _describe(root, loc) == "table 26 x 3, annotating ['blobs_labels']"


def test_describe_without_x(tmp_path):
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(1200)]), var=pd.DataFrame(index=["a"]))
    root, loc = _write(tmp_path, adata, 3)
    assert _describe(root, loc) == "table 1,200 x 1, annotating nothing"
    back = _read(root, loc)
    assert back.X is None and back.shape == (1200, 1)
    assert _read(root, loc, lazy_x=True).X is None


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("lazy_x", [False, True])
def test_corrupt_table_group(tmp_path, lazy_x):
    root, loc = _write(tmp_path, one_region(), 3)
    Path(loc.file("obs", "zarr.json")).write_text("{ not json")
    with pytest.raises(StoreError, match=r"tables/table: cannot read the table: tables/table/obs"):
        _read(root, loc, lazy_x=lazy_x)


def test_corrupt_x_chunk(tmp_path):
    root, loc = _write(tmp_path, one_region(), 2)
    for chunk in Path(loc.file("X", "data")).glob("0*"):
        chunk.write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"tables/table: cannot read the table: tables/table/X"):
        _read(root, loc)


def test_not_an_anndata_group(tmp_path):
    root, loc = _write(tmp_path, one_region(), 3)
    group = zarr.open_group(root.zarr_store(read_only=False), mode="r+")[loc.key]
    attrs = group.attrs.asdict()
    with pytest.raises(FormatError, match="encoding-type is 'dataframe'"):
        read_table(group, loc, {**attrs, "encoding-type": "dataframe"})
    empty = zarr.open_group(root.zarr_store(read_only=False), mode="r+")["tables"].create_group("empty")
    with pytest.raises(FormatError, match="not an AnnData group"):
        read_table(empty, ElementLocation(root, "tables", "empty"), {"version": "0.2"})


def test_group_without_anndata_encoding_is_read_by_slots(tmp_path):
    """A short-lived reference bug erased encoding-type/encoding-version from the table group."""
    adata = several_regions()
    root, loc = _write(tmp_path, adata, 3)
    group = zarr.open_group(root.zarr_store(read_only=False), mode="r+")[loc.key]
    attrs = {k: v for k, v in group.attrs.asdict().items() if not k.startswith("encoding-")}
    group.attrs.put(attrs)
    back = read_table(group, loc, attrs)
    _assert_tables_equal(back, adata)


# ------------------------------------------------------------------------------------------------ reference


REFERENCE_STORES = sorted(p.name for p in REFERENCE.glob("*.zarr")) if REFERENCE.is_dir() else []


@pytest.mark.skipif(not REFERENCE_STORES, reason="shared/fixtures/reference is absent")
@pytest.mark.parametrize("store", REFERENCE_STORES)
@pytest.mark.parametrize("lazy_x", [False, True])
def test_reference_table_matches_summary(store, lazy_x):
    summary = json.loads((REFERENCE / store.replace(".zarr", ".summary.json")).read_text())["tables"]
    root = StoreRoot.open(REFERENCE / store)
    group = root.open_group()
    for name, expected in summary.items():
        loc = ElementLocation(root, "tables", name)
        element = group[loc.key]
        attrs = element.attrs.asdict()
        table = read_table(element, loc, attrs, lazy_x=lazy_x)
        assert list(table.shape) == expected["shape"]
        assert {c: str(table.obs[c].dtype) for c in table.obs.columns} == expected["obs"]
        assert [str(v) for v in table.obs_names[:5]] == expected["obs_names"]
        assert [str(v) for v in table.var_names[:10]] == expected["var_names"]
        keys = table.uns["spatialdata_attrs"]
        assert keys["region"] == expected["region"]
        assert keys["region_key"] == expected["region_key"]
        assert keys["instance_key"] == expected["instance_key"]
        assert _dense(table.X).sum() == pytest.approx(expected["X_sum"])
        assert isinstance(table.X, da.Array) == lazy_x
        regions = [expected["region"]] if isinstance(expected["region"], str) else expected["region"]
        n_obs, n_vars = expected["shape"]
        assert describe_table(element, loc, attrs) == f"table {n_obs} x {n_vars}, annotating {regions}"


@pytest.mark.skipif(not REFERENCE_STORES, reason="shared/fixtures/reference is absent")
def test_reference_index_encodings():
    """sd 0.8.0 (anndata 0.13) writes nullable-string-array indexes, sd 0.4.0 string-array: both are read."""
    seen = set()
    for store in REFERENCE_STORES:
        group = StoreRoot.open(REFERENCE / store).open_group()
        seen.add(group["tables/table/obs/_index"].attrs["encoding-type"])
    assert seen == {"string-array", "nullable-string-array"}
