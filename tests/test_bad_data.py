"""Bad data is refused with a named error or reported clearly (issue 17 item 3)."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

import tissuestack as ts
from tissuestack import read_zarr
from tissuestack._container.inspect import validate_store
from tissuestack.errors import ValidationError


def _points(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n), "gene": ["a", "b"] * (n // 2)}
    )


# ------------------------------------------------------------------------------------------ points coordinates
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_parse_refuses_non_finite_coordinates(bad):
    df = _points()
    df.loc[7, "y"] = bad
    with pytest.raises(
        ValidationError, match=r"'tx': column 'y' holds 1 NaN or infinite value\(s\) \(first at row 7\)"
    ):
        ts.PointsModel.parse(df, name="tx")
    with pytest.raises(ValidationError, match="column 'x'"):
        ts.PointsModel.parse(np.array([[0.0, 1.0], [bad, 2.0]]), name="tx")


def test_write_refuses_lazy_non_finite_points_and_keeps_the_store(tmp_path):
    good = ts.PointsModel.parse(_points(), feature_key="gene")
    path = tmp_path / "s.zarr"
    ts.SpatialData(points={"tx": good}).write(path)
    df = _points()
    df.loc[3, "x"] = np.inf
    lazy = ts.PointsModel.parse(dd.from_pandas(df, npartitions=2), name="tx")  # dask input: not computed here
    sdata = read_zarr(path)
    sdata["tx"] = lazy
    with pytest.raises(
        ValidationError, match=r"points element 'tx': column 'x' holds NaN or infinite values"
    ):
        sdata.write_element("tx", overwrite=True)
    with pytest.raises(ValidationError, match="points element 'tx'"):
        sdata.write(tmp_path / "other.zarr")
    assert not (tmp_path / "other.zarr").exists()
    assert len(read_zarr(path)["tx"]) == len(good)  # the stored element is intact


def test_extent_skips_non_finite_points_with_a_warning():
    df = _points()
    df.loc[5, "x"] = np.inf
    df.loc[6, "y"] = np.nan
    lazy = ts.PointsModel.parse(dd.from_pandas(df, npartitions=3))
    finite = df.drop(index=[5, 6])
    sdata = ts.SpatialData(points={"tx": lazy})
    with pytest.warns(UserWarning, match=r"points element 'tx': 2 row\(s\) have NaN or infinite coordinates"):
        extent = ts.get_extent(sdata)
    assert extent["x"] == pytest.approx((finite.x.min(), finite.x.max()))
    assert extent["y"] == pytest.approx((finite.y.min(), finite.y.max()))


def test_validate_reports_non_finite_points_in_a_store(tmp_path):
    path = tmp_path / "s.zarr"
    ts.SpatialData(points={"tx": ts.PointsModel.parse(_points(), feature_key="gene")}).write(path)
    files = sorted((path / "points" / "tx" / "points.parquet").rglob("*.parquet"))
    table = pq.read_table(files[0])
    x = table.column("x").to_numpy().copy()
    x[0] = np.inf
    y = table.column("y").to_numpy().copy()
    y[1] = np.nan
    table = table.set_column(table.schema.get_field_index("x"), "x", [x])
    table = table.set_column(table.schema.get_field_index("y"), "y", [y])
    pq.write_table(table, files[0])
    quick = [p for p in validate_store(path) if "coordinates" in p.what]
    assert len(quick) == 1 and quick[0].element == "points/tx" and "infinite" in quick[0].what
    deep = [p for p in validate_store(path, deep=True) if "coordinates" in p.what]
    assert len(deep) == 1 and "1 in 'x'" in deep[0].what and "1 in 'y'" in deep[0].what


# ------------------------------------------------------------------------------------------ table ids
def _cells():
    geoms = [shapely.box(i, 0, i + 1, 1) for i in range(5)]
    return ts.ShapesModel.parse(gpd.GeoDataFrame(geometry=geoms, index=[f"c{i}" for i in range(5)]))


def _table(ids):
    obs = pd.DataFrame({"region": pd.Categorical(["cells"] * len(ids)), "cell_id": ids})
    obs.index = obs.index.astype(str)
    return ts.TableModel.parse(
        ad.AnnData(np.ones((len(ids), 2)), obs=obs),
        region="cells",
        region_key="region",
        instance_key="cell_id",
    )


def test_table_matching_no_instance_is_refused():
    with pytest.raises(ValidationError, match=r"none of its 2 rows for 'cells' match an instance of 'cells'"):
        ts.SpatialData(shapes={"cells": _cells()}, tables={"t": _table(["x1", "x2"])})
    sdata = ts.SpatialData(shapes={"cells": _cells()})
    with pytest.raises(ValidationError, match=r"table ids are int64, element ids object"):
        sdata["t"] = _table([1, 2])
    assert "t" not in sdata


def test_table_matching_some_instances_warns_and_joins_say_so(tmp_path):
    with pytest.warns(UserWarning, match=r"1 of its 3 rows for 'cells' match no instance of 'cells'"):
        sdata = ts.SpatialData(shapes={"cells": _cells()}, tables={"t": _table(["c1", "c2", "zz"])})
    with pytest.warns(UserWarning, match="the inner join leaves them out"):
        elements, table = ts.join_spatialelement_table(sdata, "cells", table_name="t", how="inner")
    assert table.n_obs == 2 and len(elements["cells"]) == 2
    with pytest.warns(UserWarning, match="match no instance"):
        sdata.write(tmp_path / "s.zarr")
    # a table that no longer matches anything after the element changed: the join says so, write refuses
    sdata.shapes["cells"] = ts.ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], index=["other"])
    )
    with pytest.warns(
        UserWarning, match=r"none of the 3 table rows for 'cells' matches one of its 1 instances"
    ):
        elements, table = ts.join_spatialelement_table(sdata, "cells", table_name="t", how="inner")
    assert table is None
    with pytest.raises(ValidationError, match="none of its 3 rows"):
        sdata.validate()
    with pytest.raises(ValidationError, match="none of its 3 rows"):
        sdata.write(tmp_path / "s2.zarr")
    assert not (tmp_path / "s2.zarr").exists()


# ------------------------------------------------------------------------------------------ invalid polygons
def test_invalid_polygons_are_repaired_with_a_warning_or_refused():
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    square = shapely.box(5, 5, 6, 6)
    with pytest.warns(
        UserWarning, match=r"'cells': repaired 1 invalid polygon\(s\).*index 'a'.*Self-intersection"
    ):
        gdf = ts.ShapesModel.parse(
            gpd.GeoDataFrame(geometry=[bowtie, square], index=["a", "b"]), name="cells"
        )
    assert shapely.is_valid(gdf.geometry.values).all()
    assert gdf.geometry["a"].area == pytest.approx(2.0)  # both lobes of the bow-tie kept
    assert gdf.geometry["b"].equals(square)
    broken = gdf.copy()
    broken.loc["a", "geometry"] = bowtie
    with pytest.raises(ValidationError, match=r"1 invalid polygon\(s\), at index 'a'"):
        ts.ShapesModel.validate(broken, name="cells")
    with pytest.raises(ValidationError, match="invalid polygon"):
        ts.SpatialData(shapes={"cells": broken})
    with pytest.raises(ValidationError, match="without area"):
        ts.ShapesModel.parse([shapely.Polygon([(0, 0), (1, 1), (2, 2)]), square])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ts.ShapesModel.parse([square])  # valid input: no warning
