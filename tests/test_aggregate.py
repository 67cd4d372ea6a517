"""The ``tissuestack.aggregate`` front end: inputs by name or object, the result's layout and table links, the
transformation handed to the implementations, validation errors, and storing results."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import tissuestack as ts
from tissuestack.errors import NoPathError, ValidationError
from tissuestack.ops import _aggregate
from tissuestack.ops._aggregate_pairs import PairResult


def _data(*, n_points: int = 3000, seed: int = 0) -> ts.SpatialData:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 30, n_points),
            "y": rng.uniform(0, 30, n_points),
            "gene": pd.Categorical(rng.choice(["g1", "g2", "g3"], n_points)),
            "quality": rng.uniform(0, 40, n_points),
            "label": rng.choice(["p", "q"], n_points).astype(object),
        }
    )
    points = ts.PointsModel.parse(frame, feature_key="gene", npartitions=2)
    boxes = [shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 10), shapely.box(5, 15, 25, 25)]
    cells = ts.ShapesModel.parse(
        gpd.GeoDataFrame({"cell_type": pd.Categorical(["T", "B", "T"])}, geometry=boxes, index=[10, 3, 7])
    )
    lab = np.zeros((30, 30), dtype=np.int32)
    lab[2:8, 2:8] = 5
    lab[20:28, 10:20] = 2
    labels = ts.Labels2DModel.parse(lab, dims=("y", "x"))
    obs = pd.DataFrame(
        {"region": pd.Categorical(["cells"] * 3), "cell_id": [10, 3, 7], "score": [1.0, 2.0, 3.0]},
        index=["a", "b", "c"],
    )
    table = ts.TableModel.parse(
        ad.AnnData(obs=obs), region="cells", region_key="region", instance_key="cell_id"
    )
    return ts.SpatialData(
        points={"transcripts": points},
        shapes={"cells": cells},
        labels={"nuclei": labels},
        tables={"table": table},
    )


def test_result_layout_and_table_link():
    sdata = _data()
    adata = ts.aggregate("transcripts", "cells", sdata=sdata, value_key="gene", agg_func="count")
    assert adata.obs_names.tolist() == ["10", "3", "7"]  # the order of by, ids as strings
    assert adata.obs["instance_id"].tolist() == [10, 3, 7]
    assert adata.obs["instance_id"].dtype == np.int64  # the original dtype
    assert adata.var_names.tolist() == ["g1", "g2", "g3"]
    assert adata.X.format == "csr"
    frame = sdata["transcripts"].compute()
    inside = (frame.x < 10) & (frame.y < 10)
    assert adata.X[0].sum() == inside.sum()
    assert ts.get_table_keys(adata) == (["cells"], "region", "instance_id")
    assert adata.uns["aggregation"] == {
        "values": "transcripts",
        "by": "cells",
        "agg_func": "count",
        "fractions": False,
        "target_coordinate_system": "global",
        "value_key": ["gene"],
    }
    sdata.tables["counts"] = adata  # a valid table annotating the cells
    assert "counts" in sdata.get_annotating_tables("cells")
    # element objects of sdata resolve to their names; a numeric key gives a dense float matrix
    dense = ts.aggregate(
        sdata["transcripts"], sdata["cells"], sdata=sdata, value_key="quality", agg_func="mean"
    )
    assert ts.get_table_keys(dense)[0] == ["cells"]
    assert isinstance(dense.X, np.ndarray) and dense.X.dtype == np.float64
    np.testing.assert_allclose(dense.X[0, 0], frame.quality[inside].mean())
    # labels: sorted label values without the background 0
    by_labels = ts.aggregate("transcripts", "nuclei", sdata=sdata)
    assert by_labels.obs_names.tolist() == ["2", "5"]
    assert by_labels.obs["instance_id"].dtype == np.int32
    assert int(by_labels.X[1].sum()) == int(
        ((frame.x >= 2) & (frame.x < 8) & (frame.y >= 2) & (frame.y < 8)).sum()
    )


def test_store_aggregation(tmp_path):
    sdata = _data()
    adata = ts.aggregate(sdata["transcripts"], sdata["cells"], agg_func="count")  # objects, no sdata: no link
    assert ts.get_table_keys(adata) == (None, None, None)
    out = ts.ops.store_aggregation(sdata, adata, "cells", "counts")
    assert out is adata and ts.get_table_keys(adata) == (["cells"], "region", "instance_id")
    assert sdata["counts"] is adata
    with pytest.raises(KeyError, match="exists already"):
        ts.ops.store_aggregation(sdata, adata, "cells", "counts")
    ts.ops.store_aggregation(sdata, adata, "cells", "counts", overwrite=True)
    with pytest.raises(KeyError, match="is a points element"):
        ts.ops.store_aggregation(sdata, adata, "cells", "transcripts", overwrite=True)
    with pytest.raises(ValidationError, match="annotates shapes or labels"):
        ts.ops.store_aggregation(sdata, adata, "transcripts", "other")
    by_labels = ts.aggregate("transcripts", "nuclei", sdata=sdata)
    with pytest.raises(ValidationError, match="not in shapes 'cells'"):
        ts.ops.store_aggregation(sdata, by_labels, "cells", "wrong")
    no_ids = ad.AnnData(np.zeros((3, 1)))
    with pytest.raises(ValidationError, match="instance_id"):
        ts.ops.store_aggregation(sdata, no_ids, "cells", "none")
    # written into the backing store
    sdata.write(tmp_path / "s.zarr")
    fresh = ts.aggregate("transcripts", "nuclei", sdata=sdata)
    ts.ops.store_aggregation(sdata, fresh, "nuclei", "nuclei_counts", write=True)
    back = ts.read_zarr(tmp_path / "s.zarr")
    assert np.array_equal(back["nuclei_counts"].X.toarray(), fresh.X.toarray())
    assert ts.get_table_keys(back["nuclei_counts"]) == (["nuclei"], "region", "instance_id")


def test_validation_errors():
    sdata = _data()
    with pytest.raises(
        KeyError, match=r"'genes' is not a column of points element 'transcripts'.*'gene', 'quality'"
    ):
        ts.aggregate("transcripts", "cells", sdata=sdata, value_key="genes")
    with pytest.raises(ValueError, match=r"column 'label' .* dtype (object|string)"):
        ts.aggregate("transcripts", "cells", sdata=sdata, value_key="label", agg_func="sum")
    with pytest.raises(ValueError, match=r"fractions=True .* got points -> shapes"):
        ts.aggregate("transcripts", "cells", sdata=sdata, fractions=True)
    with pytest.raises(ValueError, match="unknown agg_func 'median'"):
        ts.aggregate("transcripts", "cells", sdata=sdata, agg_func="median")
    with pytest.raises(ValueError, match="agg_func='mean' is not defined for the categorical column 'gene'"):
        ts.aggregate("transcripts", "cells", sdata=sdata, value_key="gene", agg_func="mean")
    with pytest.raises(ValueError, match="must be the only value key"):
        ts.aggregate("transcripts", "cells", sdata=sdata, value_key=["gene", "quality"])
    with pytest.raises(ValueError, match="needs agg_func='sum'"):
        ts.aggregate("cells", "cells_copy", sdata=_with_copy(sdata), value_key="cell_type", fractions=True,
                     agg_func="count")  # fmt: skip
    with pytest.raises(ValueError, match="same element"):
        ts.aggregate("cells", "cells", sdata=sdata)
    with pytest.raises(ValueError, match="by must be a shapes or labels element"):
        ts.aggregate("cells", "transcripts", sdata=sdata)
    with pytest.raises(ValueError, match="cannot aggregate points by"):
        _aggregate.get_pair("points", "points")
    with pytest.raises(KeyError, match=r"by='cell': no such element .*'cells'"):
        ts.aggregate("transcripts", "cell", sdata=sdata)
    with pytest.raises(TypeError, match="pass sdata"):
        ts.aggregate("transcripts", "cells")
    stranger = ts.ShapesModel.parse(gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]))
    with pytest.raises(KeyError, match="not an element of the given sdata"):
        ts.aggregate("transcripts", stranger, sdata=sdata)
    with pytest.raises(KeyError, match="'nowhere' is neither an element nor a coordinate system"):
        ts.aggregate("transcripts", "cells", sdata=sdata, target_coordinate_system="nowhere")
    with pytest.raises(TypeError, match="unknown options"):
        ts.aggregate("transcripts", "cells", sdata=sdata, options={"cellsize": 1.0})


def _with_copy(sdata: ts.SpatialData) -> ts.SpatialData:
    copy = sdata["cells"].copy()
    sdata.shapes["cells_copy"] = ts.ShapesModel.parse(copy)
    return sdata


def test_transformations_handed_to_the_pair(monkeypatch):
    seen = []

    def capture(req):
        seen.append(req)
        return PairResult(X=np.zeros((len(req.by_instances), 1)), columns=["c"])

    monkeypatch.setattr(_aggregate, "get_pair", lambda v, b: capture)
    sdata = _data()
    ts.set_transformation(sdata["cells"], ts.Scale([2.0, 2.0], ("x", "y")), "global")
    ts.aggregate("transcripts", "cells", sdata=sdata)
    req = seen[-1]
    np.testing.assert_allclose(req.values_to_by.linear, np.eye(2) / 2)
    np.testing.assert_allclose(req.by_to_values.linear, np.eye(2) * 2)
    assert req.values_to_by.in_axes == ("x", "y") and req.values_to_by.out_axes == ("x", "y")
    assert req.values_name == "transcripts" and req.by_name == "cells"
    assert req.by_instances.tolist() == [10, 3, 7]
    # the same scale on both sides composes to exactly the identity
    pixel = 0.2125
    ts.set_transformation(sdata["cells"], ts.Scale([pixel, pixel], ("x", "y")), "global")
    ts.set_transformation(sdata["transcripts"], ts.Scale([pixel, pixel], ("x", "y")), "global")
    ts.aggregate("transcripts", "cells", sdata=sdata)
    assert np.array_equal(seen[-1].values_to_by.linear, np.eye(2)) and not seen[-1].values_to_by.offset.any()
    # 3-D points by 2-D shapes: a 2 x 3 map, not invertible
    rng = np.random.default_rng(0)
    pts3 = ts.PointsModel.parse(pd.DataFrame(rng.uniform(0, 9, (50, 3)), columns=["x", "y", "z"]))
    ts.aggregate(pts3, sdata["cells"])
    assert seen[-1].values_to_by.linear.shape == (2, 3) and seen[-1].by_to_values is None
    assert seen[-1].values_name == "values" and seen[-1].by_name == "by"
    # a coordinate system reached through the graph of sdata: cells only know "aligned", an image links both
    ts.set_transformation(sdata["transcripts"], ts.Identity(), "global")
    cells = sdata["cells"]
    ts.set_transformation(cells, ts.Translation([5.0, 0.0], ("x", "y")), "aligned")
    ts.remove_transformation(cells, "global")
    image = ts.Image2DModel.parse(np.zeros((1, 4, 4), dtype=np.uint8), dims=("c", "y", "x"),
                                  transformations={"global": ts.Identity(), "aligned": ts.Identity()})  # fmt: skip
    sdata.images["bridge"] = image
    ts.aggregate("transcripts", "cells", sdata=sdata, target_coordinate_system="aligned")
    np.testing.assert_allclose(seen[-1].values_to_by.offset, [-5.0, 0.0])
    with pytest.raises(NoPathError):
        ts.aggregate(sdata["transcripts"], cells, target_coordinate_system="aligned")


def test_coordinate_systems_end_to_end():
    # the cells given in pixels of 0.5 um, translated; points in microns: the same counts as in one frame
    sdata = _data(n_points=5000, seed=1)
    frame = sdata["transcripts"].compute()
    direct = ts.aggregate("transcripts", "cells", sdata=sdata, agg_func="count").X.toarray()
    cells = sdata["cells"]
    pixels = cells.copy()
    pixels.geometry = shapely.transform(np.asarray(cells.geometry.values), lambda c: (c - [1.0, 2.0]) * 2.0)
    pixels = ts.ShapesModel.parse(pixels, transformations={"global": ts.Sequence(
        [ts.Scale([0.5, 0.5], ("x", "y")), ts.Translation([1.0, 2.0], ("x", "y"))])})  # fmt: skip
    sdata.shapes["cells_px"] = pixels
    moved = ts.aggregate("transcripts", "cells_px", sdata=sdata, agg_func="count").X.toarray()
    assert np.array_equal(moved, direct) and direct.sum() > 0
    assert (
        direct.sum()
        == ((frame.x < 20) & (frame.y < 10)).sum()
        + ((frame.x >= 5) & (frame.x < 25) & (frame.y >= 15) & (frame.y < 25)).sum()
    )


def test_values_from_a_table():
    sdata = _data()
    spots = ts.ShapesModel.parse(np.array([[5.0, 5.0], [15.0, 20.0]]), radius=np.array([3.0, 4.0]))
    sdata.shapes["spots"] = spots
    cells = sdata["cells"].drop(columns=["cell_type"])
    sdata.shapes["cells"] = ts.ShapesModel.parse(cells)
    via_table = ts.aggregate("cells", "spots", sdata=sdata, value_key="score", values_table="table")
    direct = ts.aggregate(sdata["cells"].assign(score=[1.0, 2.0, 3.0]), spots, value_key="score")
    np.testing.assert_allclose(via_table.X, direct.X)
    with pytest.raises(ValueError, match="shapes values only"):
        ts.aggregate("transcripts", "cells", sdata=sdata, value_key="score", values_table="table")
