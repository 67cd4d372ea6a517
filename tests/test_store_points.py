"""Points codec: spatially sorted Parquet, round trips (Zarr v3/v2, local/remote), metadata, errors."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import zarr

from tissuestack.elements import PointsModel, get_meta, set_meta
from tissuestack.errors import StoreError
from tissuestack.store import get_codec
from tissuestack.store._points import (
    describe_points,
    points_files,
    points_row_group_stats,
    read_points,
    write_points,
)
from tissuestack.store._points_layout import FOOTER_KEY, NULL_INDEX, Grid, hilbert_key
from tissuestack.store._root import ElementLocation, StoreRoot
from tissuestack.transforms import Identity, Scale

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
VERSION_OF = {3: "0.2", 2: "0.1"}


# ------------------------------------------------------------------------------------------------ helpers


def _xy2d(n: int, x: int, y: int) -> int:
    """The textbook (slow, obviously correct) Hilbert index."""
    d, s = 0, n // 2
    while s > 0:
        rx, ry = int(x & s > 0), int(y & s > 0)
        d += s * s * ((3 * rx) ^ ry)
        if ry == 0:
            if rx == 1:
                x, y = n - 1 - x, n - 1 - y
            x, y = y, x
        s //= 2
    return d


def _new_store(location: str | Path, zarr_format: int = 3) -> tuple[StoreRoot, zarr.Group]:
    root = StoreRoot.open(location, read_only=False)
    group = zarr.open_group(root.zarr_store(), mode="w", zarr_format=zarr_format)
    return root, group.create_group("points")


def _roundtrip(df, tmp_path: Path, zarr_format: int = 3, name: str = "pts", **options):
    root, parent = _new_store(tmp_path / "s.zarr", zarr_format)
    loc = ElementLocation(root, "points", name)
    write_points(df, parent, loc, VERSION_OF[zarr_format], **options)
    group = parent[name]
    return read_points(group, loc, group.attrs.asdict()), loc, group


def _frame(n: int, rng: np.random.Generator, *, z: bool = False) -> pd.DataFrame:
    genes = pd.CategoricalDtype(["Actb", "Cd3e", "Gapdh", "Unused", "Xist"])
    data = {
        "x": rng.uniform(-50, 950, n),
        "y": rng.uniform(10, 510, n),
        "genes": pd.Categorical(rng.choice(["Actb", "Cd3e", "Gapdh", "Xist"], n), dtype=genes),
        "instance_id": rng.integers(0, 40, n),
        "qv": rng.uniform(0, 40, n).astype(np.float32),
        "count": rng.integers(0, 9, n).astype(np.int32),
        "flag": rng.random(n) > 0.5,
        "note": rng.choice(["nucleus", "cytoplasm", "background"], n),
        "nullable": pd.array(np.where(rng.random(n) > 0.8, None, rng.integers(0, 5, n)), dtype="Int64"),
    }
    if z:
        data["z"] = rng.uniform(0, 12, n)
    return pd.DataFrame(data)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_index(kind="stable")


def _assert_same_rows(back: dd.DataFrame, original: dd.DataFrame) -> None:
    a, b = _sorted(original.compute()), _sorted(back.compute())
    pd.testing.assert_frame_equal(b, a, check_index_type=False)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# ------------------------------------------------------------------------------------------------ Hilbert key


def test_hilbert_key_matches_textbook_definition(rng: np.random.Generator) -> None:
    qx = np.concatenate([rng.integers(0, 2**16, 3000), [0, 0, 65535, 65535, 255, 256, 32767, 32768]])
    qy = np.concatenate([rng.integers(0, 2**16, 3000), [0, 65535, 0, 65535, 256, 255, 32768, 32767]])
    expected = np.array([_xy2d(2**16, int(a), int(b)) for a, b in zip(qx, qy, strict=True)], dtype=np.uint64)
    got = hilbert_key(qx, qy)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got.astype(np.uint64), expected)


def test_hilbert_curve_is_continuous_on_a_block() -> None:
    # the first 2**16 keys fill the 256 x 256 block at the origin, each a grid neighbour of the previous
    g = np.arange(256)
    qx, qy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    keys = hilbert_key(qx, qy)
    order = np.argsort(keys)
    np.testing.assert_array_equal(keys[order], np.arange(2**16))
    steps = np.abs(np.diff(qx[order].astype(int))) + np.abs(np.diff(qy[order].astype(int)))
    assert (steps == 1).all()


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_roundtrip_multi_partition(tmp_path: Path, rng: np.random.Generator, zarr_format: int) -> None:
    frame = _frame(3000, rng)
    frame.index = rng.permutation(np.arange(3000) * 3 + 11)  # non-contiguous, unordered integer index
    points = PointsModel.parse(
        frame,
        feature_key="genes",
        instance_key="instance_id",
        transformations={"global": Identity(), "um": Scale([0.5, 2.0], axes=("x", "y"))},
        npartitions=5,
    )
    back, loc, _ = _roundtrip(points, tmp_path, zarr_format, rows_per_file=800, row_group_size=128)

    files = points_files(loc)
    assert [Path(f).name for f in files] == [f"part.{i}.parquet" for i in range(len(files))]
    assert len(files) >= 3 and back.npartitions == len(files)
    _assert_same_rows(back, points)
    assert back.index.name is None
    assert back["genes"].cat.known
    assert list(back.dtypes["genes"].categories) == ["Actb", "Cd3e", "Gapdh", "Unused", "Xist"]
    for column in ("x", "y", "instance_id", "qv", "count", "flag", "note", "nullable"):
        assert back.dtypes[column] == points.dtypes[column], column
    meta = get_meta(back)
    assert (meta.feature_key, meta.instance_key, meta.n_rows) == ("genes", "instance_id", 3000)
    assert list(meta.transformations) == ["global", "um"]
    np.testing.assert_allclose(
        meta.transformations["um"].to_affine_matrix(("x", "y"), ("x", "y")), np.diag([0.5, 2.0, 1.0])
    )
    assert meta.source == (loc.root.url, "points/pts")


@pytest.mark.parametrize("npartitions", [1, 3])
def test_string_index_named_and_unnamed(tmp_path: Path, rng: np.random.Generator, npartitions: int) -> None:
    frame = _frame(500, rng)
    frame.index = pd.Index([f"tx{i}" for i in rng.permutation(500)], name="transcript")
    points = PointsModel.parse(frame, feature_key="genes", npartitions=npartitions)
    back, _, _ = _roundtrip(points, tmp_path, rows_per_file=200, row_group_size=64)
    assert back.index.name == "transcript"
    _assert_same_rows(back, points)

    unnamed = PointsModel.parse(frame.rename_axis(None), feature_key="genes", npartitions=npartitions)
    back, _, _ = _roundtrip(unnamed, tmp_path / "b", rows_per_file=200)
    assert back.index.name is None
    _assert_same_rows(back, unnamed)


def test_single_partition_is_split_into_sorted_files(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(2000, rng), feature_key="genes", npartitions=1)
    back, loc, _ = _roundtrip(points, tmp_path, rows_per_file=500, row_group_size=100)
    assert len(points_files(loc)) == 4
    assert points_row_group_stats(loc).groupby("file")["n_rows"].sum().tolist() == [500, 500, 500, 500]
    _assert_same_rows(back, points)


def test_pandas_input_and_feature_column_made_categorical(tmp_path: Path, rng: np.random.Generator) -> None:
    frame = _frame(300, rng).astype({"genes": str})
    points = PointsModel.parse(frame, feature_key="genes")
    in_memory = points.compute()
    set_meta(in_memory, get_meta(points))
    back, _, _ = _roundtrip(in_memory, tmp_path)
    assert back["genes"].cat.known
    _assert_same_rows(back, points)


def test_3d_points(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(1200, rng, z=True), feature_key="genes", npartitions=3)
    back, loc, group = _roundtrip(points, tmp_path, rows_per_file=500, row_group_size=100)
    assert group.attrs["axes"] == ["x", "y", "z"]
    assert group.attrs["coordinateTransformations"][0]["input"]["name"] == "xyz"
    _assert_same_rows(back, points)
    stats = points_row_group_stats(loc)
    assert {"z_min", "z_max"} <= set(stats.columns)
    assert describe_points(group, loc, group.attrs.asdict()) == "points[xyz] 1,200 rows in 3 files"


def test_empty_points(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.empty(0), "y": np.empty(0), "g": pd.Categorical([], categories=["a", "b"])})
    points = PointsModel.parse(frame, feature_key="g")
    back, loc, group = _roundtrip(points, tmp_path)
    assert len(back.compute()) == 0
    assert list(back.dtypes["g"].categories) == ["a", "b"]
    assert get_meta(back).n_rows == 0
    assert describe_points(group, loc, group.attrs.asdict()) == "points[xy] 0 rows in 1 file"


@pytest.mark.filterwarnings("ignore:fs .* was not created with:UserWarning")
def test_remote_filesystem_roundtrip(rng: np.random.Generator) -> None:
    url = f"memory://tissuestack-tests/{uuid.uuid4().hex}/s.zarr"
    root, parent = _new_store(url)
    loc = ElementLocation(root, "points", "pts")
    points = PointsModel.parse(_frame(1500, rng), feature_key="genes", npartitions=3)
    write_points(points, parent, loc, "0.2", rows_per_file=600, row_group_size=100)
    group = parent["pts"]
    back = read_points(group, loc, group.attrs.asdict())
    assert back.npartitions == 3
    _assert_same_rows(back, points)
    assert describe_points(group, loc, group.attrs.asdict()) == "points[xy] 1,500 rows in 3 files"
    root.rm()


# ------------------------------------------------------------------------------------------------ layout


def test_files_are_spatially_sorted(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(20_000, rng), feature_key="genes", npartitions=6)
    _, loc, _ = _roundtrip(points, tmp_path, rows_per_file=5000, row_group_size=500)
    stats = points_row_group_stats(loc)
    assert len(stats) == 40
    frame = points.compute()
    total = (frame.x.max() - frame.x.min()) * (frame.y.max() - frame.y.min())
    areas = (stats.x_max - stats.x_min) * (stats.y_max - stats.y_min)
    assert areas.mean() < 0.1 * total  # an unsorted row group would cover ~ the whole extent
    assert areas.max() < 0.25 * total
    # the rows are in Hilbert order across all files, on the grid recorded in the footers
    files = points_files(loc)
    info = json.loads(pq.read_metadata(files[0]).metadata[FOOTER_KEY])
    assert info["sort"]["curve"] == "hilbert" and info["sort"]["bits"] == 16
    grid = Grid.from_bounds(*info["sort"]["bounds"])
    coords = pd.concat([pd.read_parquet(f, columns=["x", "y"]) for f in files])
    keys = grid.keys(coords.x.to_numpy(), coords.y.to_numpy())
    assert (np.diff(keys.astype(np.int64)) >= 0).all()


def test_every_file_and_row_group_carries_the_full_dictionary(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    frame = _frame(4000, rng)
    frame.loc[frame.x < 400, "genes"] = "Actb"  # some files will not use every category
    points = PointsModel.parse(frame, feature_key="genes", npartitions=4)
    _, loc, _ = _roundtrip(points, tmp_path, rows_per_file=1000, row_group_size=250)
    expected = ["Actb", "Cd3e", "Gapdh", "Unused", "Xist"]
    for path in points_files(loc):
        f = pq.ParquetFile(path)
        assert str(f.schema_arrow.field("genes").type) == "dictionary<values=string, indices=int8, ordered=0>"
        assert f.schema_arrow.pandas_metadata["index_columns"] == [NULL_INDEX]
        for i in range(f.num_row_groups):
            column = f.read_row_group(i, columns=["genes"]).column("genes")
            assert column.chunk(0).dictionary.to_pylist() == expected


def test_plain_dask_reads_the_files_like_the_reference(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(1000, rng), feature_key="genes", npartitions=2)
    _, loc, _ = _roundtrip(points, tmp_path, rows_per_file=400)
    plain = dd.read_parquet(loc.file("points.parquet")).compute()  # what the reference calls
    assert plain.index.name is None
    expected = _sorted(points.compute())
    got = _sorted(plain)
    np.testing.assert_array_equal(got.index, expected.index)
    np.testing.assert_array_equal(got["x"], expected["x"])
    assert got["genes"].astype(str).tolist() == expected["genes"].astype(str).tolist()


def test_group_attributes_match_the_format(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(50, rng), feature_key="genes", instance_key="instance_id")
    root, parent = _new_store(tmp_path / "s.zarr", 3)
    write_points(points, parent, ElementLocation(root, "points", "blobs_points"), "0.2")
    doc = json.loads((tmp_path / "s.zarr" / "points" / "blobs_points" / "zarr.json").read_text())
    axis = {
        "x": {"name": "x", "type": "space", "unit": "unit"},
        "y": {"name": "y", "type": "space", "unit": "unit"},
    }
    assert doc["attributes"] == {
        "encoding-type": "ngff:points",
        "axes": ["x", "y"],
        "coordinateTransformations": [
            {
                "type": "identity",
                "input": {"name": "xy", "axes": [axis["x"], axis["y"]]},
                "output": {"name": "global", "axes": [axis["x"], axis["y"]]},
            }
        ],
        "spatialdata_attrs": {"instance_key": "instance_id", "feature_key": "genes", "version": "0.2"},
    }
    assert list(doc["attributes"]["spatialdata_attrs"]) == ["instance_key", "feature_key", "version"]

    bare = PointsModel.parse(_frame(50, rng)[["x", "y"]])
    root2, parent2 = _new_store(tmp_path / "v2.zarr", 2)
    write_points(bare, parent2, ElementLocation(root2, "points", "p"), "0.1")
    attrs = json.loads((tmp_path / "v2.zarr" / "points" / "p" / ".zattrs").read_text())
    assert attrs["spatialdata_attrs"] == {"version": "0.1"}


def test_codecs_are_registered() -> None:
    for version in ("0.1", "0.2"):
        codec = get_codec("points", version)
        assert codec.read is read_points and codec.write is write_points and codec.describe is describe_points


# ------------------------------------------------------------------------------------------------ lazy reads


def _spy_parquet_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], int, int]]:
    """Record (columns, row groups read, row groups in the file) of every fragment dask-expr reads."""
    parquet = pytest.importorskip("dask.dataframe.dask_expr.io.parquet")
    reader = getattr(parquet, "ReadParquetPyarrowFS", None)
    if reader is None or not hasattr(reader, "_fragment_to_table"):
        pytest.skip("this dask version reads Parquet differently")
    original = reader._fragment_to_table
    calls: list[tuple[list[str], int, int]] = []

    def spy(fragment_wrapper, filters, columns, schema):
        fragment = getattr(fragment_wrapper, "fragment", fragment_wrapper)
        total = fragment.num_row_groups
        read = total
        if filters:
            expression = pq.filters_to_expression(filters) if isinstance(filters, list) else filters
            read = fragment.subset(filter=expression, schema=schema).num_row_groups
        calls.append((list(columns), read, total))
        return original(fragment_wrapper, filters, columns, schema)

    monkeypatch.setattr(reader, "_fragment_to_table", staticmethod(spy))
    return calls


def test_column_projection_and_row_group_pruning(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = PointsModel.parse(_frame(8000, rng), feature_key="genes", npartitions=4)
    back, _, _ = _roundtrip(points, tmp_path, rows_per_file=2000, row_group_size=250)
    calls = _spy_parquet_reads(monkeypatch)

    xy = back[["x", "y"]].compute()
    assert len(xy) == 8000 and list(xy.columns) == ["x", "y"]
    assert calls and all(set(columns) <= {"x", "y", NULL_INDEX} for columns, _, _ in calls)

    calls.clear()
    threshold = float(np.quantile(points["x"].compute(), 0.9))
    right = back[back.x > threshold].compute()
    expected = points.compute()
    assert len(right) == int((expected.x > threshold).sum())
    read = sum(r for _, r, _ in calls)
    total = sum(t for _, _, t in calls)
    assert 0 < read <= 0.4 * total  # only the row groups whose statistics allow x > threshold


def test_columns_option(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(300, rng), feature_key="genes", instance_key="instance_id")
    root, parent = _new_store(tmp_path / "s.zarr")
    loc = ElementLocation(root, "points", "pts")
    write_points(points, parent, loc, "0.2")
    group = parent["pts"]
    back = read_points(group, loc, group.attrs.asdict(), columns=["genes"])
    assert list(back.columns) == ["x", "y", "genes"]
    assert back["genes"].cat.known
    with pytest.raises(KeyError, match=r"points/pts.*'nope'"):
        read_points(group, loc, group.attrs.asdict(), columns=["nope"])


def test_row_group_stats_match_the_data(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(3000, rng), feature_key="genes", npartitions=3)
    _, loc, _ = _roundtrip(points, tmp_path, rows_per_file=1000, row_group_size=300)
    stats = points_row_group_stats(loc)
    assert list(stats.columns) == ["file", "row_group", "n_rows", "x_min", "x_max", "y_min", "y_max"]
    assert stats["n_rows"].sum() == 3000
    for row in stats.itertuples():
        data = pq.ParquetFile(row.file).read_row_group(row.row_group, columns=["x", "y"]).to_pandas()
        assert len(data) == row.n_rows
        assert (data.x.min(), data.x.max(), data.y.min(), data.y.max()) == (
            row.x_min,
            row.x_max,
            row.y_min,
            row.y_max,
        )


def test_single_parquet_file(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(400, rng), feature_key="genes")
    back, loc, group = _roundtrip(points, tmp_path)
    folder = Path(loc.file("points.parquet"))
    data = (folder / "part.0.parquet").read_bytes()
    (folder / "part.0.parquet").unlink()
    folder.rmdir()
    folder.write_bytes(data)  # points.parquet is now a single file, which readers must accept
    back = read_points(group, loc, group.attrs.asdict())
    _assert_same_rows(back, points)
    assert describe_points(group, loc, group.attrs.asdict()) == "points[xy] 400 rows in 1 file"


# ------------------------------------------------------------------------------------------------ reference stores


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("store", ["blobs_small_sd080", "blobs_small_sd040"])
def test_reads_reference_points(store: str) -> None:
    path = REFERENCE / f"{store}.zarr"
    if not path.exists():
        pytest.skip("reference fixtures are not available")
    expected = json.loads((REFERENCE / f"{store}.summary.json").read_text())["points"]["blobs_points"]
    root = StoreRoot.open(path)
    loc = ElementLocation(root, "points", "blobs_points")
    group = root.open_group()["points/blobs_points"]
    df = read_points(group, loc, group.attrs.asdict())
    meta = get_meta(df)
    assert meta.n_rows == expected["rows"]
    assert (meta.feature_key, meta.instance_key) == (
        expected["attrs"].get("feature_key"),
        expected["attrs"].get("instance_key"),
    )
    frame = df.compute()
    assert len(frame) == expected["rows"]
    assert {c: str(frame[c].dtype) for c in frame.columns} == expected["columns"]
    assert df["genes"].cat.known
    xy = frame[["x", "y"]].to_numpy(dtype=float)
    assert _digest(xy[np.lexsort(xy.T[::-1])]) == expected["sha_xy"]
    assert (
        describe_points(group, loc, group.attrs.asdict()) == f"points[xy] {expected['rows']:,} rows in 1 file"
    )


# ------------------------------------------------------------------------------------------------ errors


def test_truncated_part_file_names_element_and_file(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(2000, rng), feature_key="genes", npartitions=2)
    _, loc, group = _roundtrip(points, tmp_path, rows_per_file=700)
    part = Path(loc.file("points.parquet", "part.1.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    pattern = r"points/pts.*points\.parquet/part\.1\.parquet"
    with pytest.raises(StoreError, match=pattern):
        read_points(group, loc, group.attrs.asdict())
    with pytest.raises(StoreError, match=pattern):
        describe_points(group, loc, group.attrs.asdict())
    with pytest.raises(StoreError, match=pattern):
        points_row_group_stats(loc)


def test_missing_dataset_names_element_and_file(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(100, rng))
    _, loc, group = _roundtrip(points, tmp_path)
    root = loc.root
    root.rm("points", "pts", "points.parquet")
    with pytest.raises(StoreError, match=r"points/pts.*points\.parquet"):
        read_points(group, loc, group.attrs.asdict())
    with pytest.raises(StoreError, match=r"points/pts.*points\.parquet"):
        describe_points(group, loc, group.attrs.asdict())


def test_spill_folder_is_removed(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(3000, rng), npartitions=3)
    _, loc, _ = _roundtrip(points, tmp_path, rows_per_file=1000)
    element = Path(loc.fs_path)
    assert sorted(p.name for p in element.iterdir()) == ["points.parquet", "zarr.json"]
    assert sorted(p.name for p in (element / "points.parquet").iterdir()) == [
        "part.0.parquet",
        "part.1.parquet",
        "part.2.parquet",
    ]


def test_pyarrow_dataset_sees_statistics(tmp_path: Path, rng: np.random.Generator) -> None:
    points = PointsModel.parse(_frame(2000, rng), npartitions=2)
    _, loc, _ = _roundtrip(points, tmp_path, rows_per_file=1000, row_group_size=200)
    dataset = pds.dataset(points_files(loc), format="parquet")
    fragment = next(iter(dataset.get_fragments()))
    subset = fragment.subset(filter=pds.field("x") > 10_000)  # outside the data: every row group pruned
    assert subset.num_row_groups == 0
