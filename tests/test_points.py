"""Tests of PointsModel: parsing every input form, partitions, index, categories, and invalid input."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tissuestack.elements._meta import ElementMeta, get_meta, has_meta, set_meta
from tissuestack.elements._points import PointsModel, points_axes
from tissuestack.errors import ValidationError
from tissuestack.transforms import Identity, Scale

N = 30


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


@pytest.fixture
def frame(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": rng.uniform(0, 100, N),
            "y": rng.uniform(0, 100, N),
            "gene": rng.choice(["Actb", "Gapdh", "Cd3e"], N),
            "cell_id": rng.integers(0, 5, N),
        }
    )


# ------------------------------------------------------------------------------------------------------------
# valid input
# ------------------------------------------------------------------------------------------------------------


def test_from_pandas(frame: pd.DataFrame) -> None:
    points = PointsModel.parse(frame, feature_key="gene", instance_key="cell_id")
    assert isinstance(points, dd.DataFrame)
    assert points_axes(points) == ("x", "y")
    meta = get_meta(points)
    assert meta.feature_key == "gene" and meta.instance_key == "cell_id"
    assert meta.transformations == {"global": Identity()}
    assert meta.n_rows == N
    assert isinstance(points.dtypes["gene"], pd.CategoricalDtype)
    assert points["gene"].cat.known
    assert sorted(points.dtypes["gene"].categories) == ["Actb", "Cd3e", "Gapdh"]
    result = points.compute()
    pd.testing.assert_series_equal(result["x"], frame["x"])
    assert result["gene"].astype(str).tolist() == frame["gene"].tolist()
    assert "gene" in frame and frame["gene"].dtype == object  # input untouched


def test_from_numpy_2d_and_annotation(rng: np.random.Generator) -> None:
    coords = rng.uniform(0, 10, (N, 2))
    annotation = pd.DataFrame({"gene": rng.choice(["a", "b"], N)}, index=[f"t{i}" for i in range(N)])
    points = PointsModel.parse(coords, annotation=annotation, feature_key="gene")
    result = points.compute()
    assert list(result.columns) == ["x", "y", "gene"]
    np.testing.assert_array_equal(result[["x", "y"]].to_numpy(), coords)
    assert result.index.tolist() == annotation.index.tolist()


def test_from_numpy_3d(rng: np.random.Generator) -> None:
    coords = rng.uniform(0, 10, (N, 3)).astype(np.float32)
    points = PointsModel.parse(coords)
    assert points_axes(points) == ("x", "y", "z")
    assert points.dtypes["z"] == np.float32
    np.testing.assert_array_equal(points.compute()[["x", "y", "z"]].to_numpy(), coords)


def test_3d_from_pandas_keeps_z(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    frame["z"] = rng.integers(0, 5, N).astype(np.int32)
    points = PointsModel.parse(frame)
    assert points_axes(points) == ("x", "y", "z")
    assert points.dtypes["z"] == np.int32


def test_from_dask_keeps_partitions(frame: pd.DataFrame) -> None:
    ddf = dd.from_pandas(frame, npartitions=4, sort=False)
    points = PointsModel.parse(ddf, feature_key="gene", instance_key="cell_id")
    assert points.npartitions == 4
    assert points["gene"].cat.known
    pd.testing.assert_frame_equal(
        points.compute().assign(gene=lambda d: d["gene"].astype(str)),
        frame.assign(gene=frame["gene"].astype(str)),
        check_dtype=False,
    )


def test_from_dask_repartition(frame: pd.DataFrame) -> None:
    ddf = dd.from_pandas(frame, npartitions=2, sort=False)
    points = PointsModel.parse(ddf, npartitions=5)
    assert points.npartitions == 5
    assert points.compute().index.tolist() == frame.index.tolist()


def test_from_arrow(frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    points = PointsModel.parse(table, feature_key="gene", instance_key="cell_id")
    assert points["gene"].cat.known
    np.testing.assert_array_equal(points["x"].compute().to_numpy(), frame["x"].to_numpy())


def test_arrow_dictionary_column_becomes_known_categorical(frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(2, "gene", table.column("gene").dictionary_encode())
    points = PointsModel.parse(table, feature_key="gene")
    assert isinstance(points.dtypes["gene"], pd.CategoricalDtype) and points["gene"].cat.known


def test_coordinate_mapping(frame: pd.DataFrame) -> None:
    source = frame.rename(columns={"x": "global_x", "y": "global_y"})
    points = PointsModel.parse(source, coordinates={"x": "global_x", "y": "global_y"})
    assert {"x", "y"} <= set(points.columns)
    assert "global_x" not in points.columns
    np.testing.assert_array_equal(points["y"].compute().to_numpy(), frame["y"].to_numpy())


def test_coordinate_mapping_swap(frame: pd.DataFrame) -> None:
    points = PointsModel.parse(frame, coordinates={"x": "y", "y": "x"})
    np.testing.assert_array_equal(points["x"].compute().to_numpy(), frame["y"].to_numpy())


def test_coordinate_mapping_clash(frame: pd.DataFrame) -> None:
    source = frame.assign(global_x=frame["x"])
    with pytest.raises(ValidationError, match=r"column 'x' already exists"):
        PointsModel.parse(source, coordinates={"x": "global_x"})


def test_npartitions_multi(frame: pd.DataFrame) -> None:
    points = PointsModel.parse(frame, feature_key="gene", npartitions=3)
    assert points.npartitions == 3
    # every partition carries the same, complete categories
    categories = [
        tuple(p.dtypes["gene"].categories) for p in (points.get_partition(i).compute() for i in range(3))
    ]
    assert len(set(categories)) == 1 and len(categories[0]) == 3


def test_chunksize(frame: pd.DataFrame) -> None:
    points = PointsModel.parse(frame, chunksize=10)
    assert points.npartitions == 3


def test_string_index_preserved(frame: pd.DataFrame) -> None:
    index = [f"tx_{i}" for i in range(N)][::-1]  # not sorted
    points = PointsModel.parse(frame.set_axis(index), npartitions=3)
    assert points.compute().index.astype(str).tolist() == index


def test_non_contiguous_int_index_preserved(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    index = rng.permutation(np.arange(0, 10 * N, 10))
    points = PointsModel.parse(frame.set_axis(index), npartitions=3)
    assert points.compute().index.tolist() == index.tolist()


def test_unknown_category_dask_becomes_known(frame: pd.DataFrame) -> None:
    ddf = dd.from_pandas(frame, npartitions=3, sort=False)
    ddf = ddf.assign(gene=ddf["gene"].astype("category"))
    assert not ddf["gene"].cat.known
    points = PointsModel.parse(ddf, feature_key="gene")
    assert points["gene"].cat.known
    assert list(points.dtypes["gene"].categories) == ["Actb", "Cd3e", "Gapdh"]
    assert points.compute()["gene"].astype(str).tolist() == frame["gene"].tolist()


def test_string_feature_in_dask_becomes_known(frame: pd.DataFrame) -> None:
    ddf = dd.from_pandas(frame, npartitions=3, sort=False)
    points = PointsModel.parse(ddf, feature_key="gene")
    assert points["gene"].cat.known
    assert list(points.dtypes["gene"].categories) == ["Actb", "Cd3e", "Gapdh"]


def test_string_instance_ids(frame: pd.DataFrame) -> None:
    frame["cell_id"] = "cell_" + frame["cell_id"].astype(str)
    points = PointsModel.parse(frame, instance_key="cell_id")
    assert get_meta(points).instance_key == "cell_id"


def test_coordinate_casts(frame: pd.DataFrame) -> None:
    frame["x"] = frame["x"].astype(np.float16)
    frame["y"] = (frame["y"] * 10).astype(np.uint16)
    points = PointsModel.parse(frame)
    assert points.dtypes["x"] == np.float64
    assert points.dtypes["y"] == np.int64


def test_transformations_and_existing_metadata(frame: pd.DataFrame) -> None:
    scale = Scale([2.0, 2.0], axes=("x", "y"))
    points = PointsModel.parse(frame, feature_key="gene", transformations={"microns": scale})
    again = PointsModel.parse(points, npartitions=2)
    meta = get_meta(again)
    assert meta.transformations == {"microns": scale}
    assert meta.feature_key == "gene"
    assert meta.n_rows == N


def test_validate_accepts_parsed(frame: pd.DataFrame) -> None:
    points = PointsModel.parse(frame, feature_key="gene", instance_key="cell_id")
    PointsModel.validate(points, name="transcripts")
    assert has_meta(points)


# ------------------------------------------------------------------------------------------------------------
# invalid input: one test each
# ------------------------------------------------------------------------------------------------------------


def test_missing_x(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match=r"^points element 'transcripts': column 'x' is missing"):
        PointsModel.parse(frame.drop(columns="x"), name="transcripts")


def test_string_x(frame: pd.DataFrame) -> None:
    frame["x"] = frame["x"].astype(str)
    with pytest.raises(ValidationError, match=r"^points: column 'x' has dtype .*expected a numeric dtype"):
        PointsModel.parse(frame)


def test_missing_feature_column(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match=r"^points element 'tx': feature_key column 'genes' is missing"):
        PointsModel.parse(frame, feature_key="genes", name="tx")


def test_missing_instance_column(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match=r"^points element 'tx': instance_key column 'cell' is missing"):
        PointsModel.parse(frame, instance_key="cell", name="tx")


def test_float_instance_column(frame: pd.DataFrame) -> None:
    frame["cell_id"] = frame["cell_id"].astype(float)
    with pytest.raises(
        ValidationError,
        match=r"instance_key column 'cell_id' has dtype float64, expected an integer or string dtype",
    ):
        PointsModel.parse(frame, instance_key="cell_id")


def test_float_instance_column_dask(frame: pd.DataFrame) -> None:
    frame["cell_id"] = frame["cell_id"].astype(float)
    ddf = dd.from_pandas(frame, npartitions=2, sort=False)
    with pytest.raises(ValidationError, match=r"instance_key column 'cell_id' has dtype float64"):
        PointsModel.parse(ddf, instance_key="cell_id")


def test_duplicate_axis_column(frame: pd.DataFrame) -> None:
    doubled = pd.concat([frame, frame[["x"]]], axis=1)
    with pytest.raises(ValidationError, match=r"column name\(s\) \['x'\] occur more than once"):
        PointsModel.parse(doubled)


def test_bad_numpy_shape(rng: np.random.Generator) -> None:
    with pytest.raises(ValidationError, match=r"shape \(N, 2\) or \(N, 3\)"):
        PointsModel.parse(rng.random((5, 4)))


def test_validate_without_metadata(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match=r"^points element 'tx': no spatial metadata"):
        PointsModel.validate(dd.from_pandas(frame, npartitions=1), name="tx")


def test_validate_unknown_categories(frame: pd.DataFrame) -> None:
    points = PointsModel.parse(frame, feature_key="gene")
    meta = get_meta(points)
    broken = points.assign(gene=points["gene"].cat.as_unknown())

    set_meta(broken, meta.copy())
    with pytest.raises(
        ValidationError, match=r"feature_key column 'gene' is categorical with unknown categories"
    ):
        PointsModel.validate(broken)


def test_validate_rejects_pandas(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match=r"^points: expected a dask.dataframe.DataFrame"):
        PointsModel.validate(frame)


def test_npartitions_and_chunksize(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match=r"either npartitions or chunksize"):
        PointsModel.parse(frame, npartitions=2, chunksize=10)


def test_source_of_lazy_frame_is_kept(frame: pd.DataFrame) -> None:
    ddf = dd.from_pandas(frame, npartitions=2, sort=False)
    set_meta(ddf, ElementMeta({"global": Identity()}, source=("store.zarr", "points/tx")))
    assert get_meta(PointsModel.parse(ddf)).source == ("store.zarr", "points/tx")
    assert get_meta(PointsModel.parse(frame)).source is None
