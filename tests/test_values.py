"""get_values: element columns, obs, var (X and layers), obsm, matched to the element's instances."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from test_joins import make_data, make_labels_data
from tissuestack import PointsModel, ShapesModel, SpatialData, TableModel
from tissuestack.datasets import synthetic
from tissuestack.ops._values import get_values


def _region_lookup(table, region):
    """Slow reference: instance id -> table row position, for one region."""
    out = {}
    for p, (r, i) in enumerate(
        zip(table.obs["region"].astype(str), table.obs["cell"].astype(object), strict=True)
    ):
        if r == region:
            out[i] = p
    return out


# ------------------------------------------------------------------------------------------------------------
# element columns
# ------------------------------------------------------------------------------------------------------------


def test_shapes_columns():
    sdata, _ = make_data(0, "str")
    shapes = sdata["shapes_a"]
    got = get_values("radius", sdata, "shapes_a")
    assert list(got.columns) == ["radius"]
    assert got.index.equals(shapes.index)
    np.testing.assert_array_equal(got["radius"], shapes["radius"])


def test_points_columns_multi_partition():
    sdata, pdf = make_data(1, "int")
    got = get_values(["value", "x"], sdata, "pts")
    pd.testing.assert_frame_equal(got, pdf[["value", "x"]], check_dtype=False)


def test_element_object_without_sdata():
    sdata, pdf = make_data(1, "int")
    got = get_values("value", element=sdata["pts"])
    np.testing.assert_array_equal(got["value"], pdf["value"])


# ------------------------------------------------------------------------------------------------------------
# table values matched to the element
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_obs_matched_to_shapes(id_kind):
    sdata, _ = make_data(2, id_kind)
    table, shapes = sdata["table"], sdata["shapes_a"]
    lookup = _region_lookup(table, "shapes_a")
    got = get_values("score", sdata, "shapes_a", table_name="table")
    want_ids = [i for i in shapes.index if i in lookup]
    assert list(got.index) == want_ids
    assert got.index.name == "cell"
    np.testing.assert_array_equal(got["score"], [table.obs["score"].iloc[lookup[i]] for i in want_ids])


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_obs_matched_to_points(id_kind):
    sdata, pdf = make_data(3, id_kind)
    table = sdata["table"]
    lookup = _region_lookup(table, "pts")
    got = get_values(["score", "region"], sdata, "pts", table_name="table")
    want_ids = [i for i in dict.fromkeys(pdf["cell"]) if i in lookup]  # first appearance order
    assert list(got.index) == want_ids
    np.testing.assert_array_equal(got["score"], [table.obs["score"].iloc[lookup[i]] for i in want_ids])
    assert set(got["region"]) == {"pts"}


def test_var_from_X_sparse_and_layer():
    sdata, _ = make_data(4, "int")
    table, shapes = sdata["table"], sdata["shapes_a"]
    lookup = _region_lookup(table, "shapes_a")
    want_ids = [i for i in shapes.index if i in lookup]
    dense = table.X.toarray()
    want = np.array([[dense[lookup[i], table.var_names.get_loc(g)] for g in ("g5", "g1")] for i in want_ids])

    got = get_values(["g5", "g1"], sdata, "shapes_a", table_name="table")
    assert list(got.columns) == ["g5", "g1"]
    assert list(got.index) == want_ids
    np.testing.assert_allclose(got.to_numpy(), want)

    from_layer = get_values(["g5", "g1"], sdata, "shapes_a", table_name="table", table_layer="dense")
    np.testing.assert_allclose(from_layer.to_numpy(), want)


def test_obsm_as_frame_and_as_is():
    sdata, _ = make_data(5, "str")
    table, shapes = sdata["table"], sdata["shapes_a"]
    lookup = _region_lookup(table, "shapes_a")
    want_ids = [i for i in shapes.index if i in lookup]
    want = table.obsm["spatial"][[lookup[i] for i in want_ids]]

    got = get_values("spatial", sdata, "shapes_a", table_name="table")
    assert list(got.columns) == ["spatial_0", "spatial_1"]
    assert list(got.index) == want_ids
    np.testing.assert_array_equal(got.to_numpy(), want)

    raw = get_values("spatial", sdata, "shapes_a", table_name="table", return_obsm_as_is=True)
    assert isinstance(raw, np.ndarray)
    np.testing.assert_array_equal(raw, want)


def test_labels_values_sorted_instances():
    sdata, _ = make_labels_data()
    table = sdata["t"]
    got = get_values(["cell"], sdata, "lab", table_name="t")
    assert list(got.index) == [3, 14, 200]
    assert list(got["cell"]) == [3, 14, 200]
    x = get_values(list(table.var_names), sdata, "lab", table_name="t")
    np.testing.assert_array_equal(x.to_numpy(), table.X[[1, 0, 3]])


def test_table_only_values_in_table_order():
    sdata, _ = make_data(6, "int")
    table = sdata["table"]
    got = get_values("score", sdata, table_name="table")
    assert got.index.equals(table.obs_names)
    np.testing.assert_array_equal(got["score"], table.obs["score"])


def test_synthetic_shuffled_table():
    sdata = synthetic(n_cells=30, n_transcripts=300, image_size=32, n_points_partitions=3)
    table = sdata["table"]
    perm = np.random.default_rng(1).permutation(table.n_obs)
    sdata["table"] = table[perm].copy()
    got = get_values(["cell_type"], sdata, "cell_boundaries", table_name="table")
    assert list(got.index) == list(sdata["cell_boundaries"].index)
    assert list(got["cell_type"].astype(str)) == list(table.obs["cell_type"].astype(str))


def test_string_index_noncontiguous_and_missing_rows():
    shapes = ShapesModel.parse(np.zeros((4, 2)), radius=1.0, index=["d", "b", "z", "a"])
    table = ad.AnnData(
        X=sp.csr_matrix(np.array([[1.0], [2.0], [3.0]])),
        obs=pd.DataFrame({"cell": ["a", "q", "d"]}, index=["r0", "r1", "r2"]),
        var=pd.DataFrame(index=["gene"]),
    )
    TableModel.parse(table, region="s", region_key="region", instance_key="cell")
    sdata = SpatialData(shapes={"s": shapes}, tables={"t": table})
    got = get_values("gene", sdata, "s", table_name="t")
    assert list(got.index) == ["d", "a"]
    assert list(got["gene"]) == [3.0, 1.0]


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------


def test_error_key_not_found_lists_places():
    sdata, _ = make_data(0, "int")
    with pytest.raises(
        KeyError, match=r"'nope' not found; looked in: columns of shapes element 'shapes_a'; obs"
    ):
        get_values("nope", sdata, "shapes_a", table_name="table")
    with pytest.raises(KeyError, match="pass table_name to also look in a table"):
        get_values("score", sdata, "shapes_a")


def test_error_ambiguous_key():
    sdata, _ = make_data(0, "int")
    sdata["table"].obs["g1"] = 1.0
    with pytest.raises(
        ValueError, match="'g1' is ambiguous: found in obs columns of table 'table' and var_names"
    ):
        get_values("g1", sdata, "shapes_a", table_name="table")


def test_error_ambiguous_element_and_obs():
    sdata, _ = make_data(0, "int")
    sdata["table"].obs["radius"] = 1.0
    with pytest.raises(ValueError, match="'radius' is ambiguous: found in columns of shapes element"):
        get_values("radius", sdata, "shapes_a", table_name="table")


def test_error_mixing_sources():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="value keys come from different places"):
        get_values(["score", "g1"], sdata, "shapes_a", table_name="table")


def test_error_obsm_as_is_misuse():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="return_obsm_as_is=True needs exactly one key, an obsm key"):
        get_values("score", sdata, "shapes_a", table_name="table", return_obsm_as_is=True)


def test_error_unknown_layer():
    sdata, _ = make_data(0, "int")
    with pytest.raises(KeyError, match="has no layer 'raw'"):
        get_values("g1", sdata, "shapes_a", table_name="table", table_layer="raw")


def test_error_element_object_needs_name_for_table():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="pass element_name with element"):
        get_values("score", sdata, element=sdata["shapes_a"], table_name="table")


def test_error_missing_inputs():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="pass an element"):
        get_values("score", sdata)
    with pytest.raises(ValueError, match="pass sdata"):
        get_values("score", element_name="shapes_a")
    with pytest.raises(ValueError, match="value_key is empty"):
        get_values([], sdata, "shapes_a")
    with pytest.raises(ValueError, match="more than once"):
        get_values(["radius", "radius"], sdata, "shapes_a")


def test_error_table_does_not_annotate_element():
    sdata, _ = make_data(0, "int")
    sdata["other"] = PointsModel.parse(
        pd.DataFrame({"x": [1.0], "y": [1.0], "cell": [1]}), instance_key="cell"
    )
    with pytest.raises(ValueError, match=r"does not annotate \['other'\]"):
        get_values("score", sdata, "other", table_name="table")
