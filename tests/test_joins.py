"""Joins between elements and tables, table matching, and filter_table (checked against slow references)."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from dask.callbacks import Callback

from tissuestack import Labels2DModel, PointsModel, ShapesModel, SpatialData, TableModel
from tissuestack.datasets import synthetic
from tissuestack.ops._joins import (
    element_instances,
    filter_table,
    join_spatialelement_table,
    match_element_to_table,
    match_table_to_element,
)

HOWS = ["left", "left_exclusive", "inner", "right", "right_exclusive"]
MATCH = ["no_control", "left", "right"]


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------


def _ids(values, id_kind):
    values = np.asarray(values)
    return values if id_kind == "int" else np.array([f"id{v}" for v in values], dtype=object)


def make_data(seed: int, id_kind: str):
    """Shapes and 3-partition points with non-contiguous (or string) ids, and a shuffled table annotating both,
    with missing rows and extra rows (instances not in the element)."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(np.arange(1, 1000), 100, replace=False)
    shape_ids = _ids(pool[:30], id_kind)
    point_ids = _ids(pool[30:60], id_kind)
    extra = _ids(pool[60:80], id_kind)

    shapes = ShapesModel.parse(rng.uniform(0, 100, (30, 2)), radius=1.0, index=shape_ids)
    n_points = 300
    pdf = pd.DataFrame(
        {
            "x": rng.uniform(0, 100, n_points),
            "y": rng.uniform(0, 100, n_points),
            "cell": rng.choice(point_ids[:25], n_points),  # ids 25..29 never occur
            "value": rng.normal(size=n_points),
        },
        index=rng.choice(10_000, n_points, replace=False),
    )
    points = PointsModel.parse(pdf, instance_key="cell", npartitions=3)

    s_rows = list(rng.choice(shape_ids, 20, replace=False)) + list(extra[:6])
    p_rows = list(rng.choice(point_ids, 22, replace=False)) + list(extra[6:12])
    regions = ["shapes_a"] * len(s_rows) + ["pts"] * len(p_rows)
    obs = pd.DataFrame({"region": regions, "cell": np.array(s_rows + p_rows, dtype=object)})
    if id_kind == "int":
        obs["cell"] = obs["cell"].astype(np.int64)
    else:
        obs["cell"] = obs["cell"].astype("category")
    obs["score"] = rng.normal(size=len(obs))
    perm = rng.permutation(len(obs))
    obs = obs.iloc[perm].reset_index(drop=True)
    obs.index = [f"row{k}" for k in rng.choice(10_000, len(obs), replace=False)]
    n_vars = 7
    X = sp.random(len(obs), n_vars, density=0.4, format="csr", random_state=seed) * 10
    table = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]))
    table.obsm["spatial"] = rng.normal(size=(len(obs), 2))
    table.layers["dense"] = np.asarray(X.todense())
    TableModel.parse(table, region=["shapes_a", "pts"], region_key="region", instance_key="cell")
    sdata = SpatialData(shapes={"shapes_a": shapes}, points={"pts": points}, tables={"table": table})
    return sdata, pdf


# ------------------------------------------------------------------------------------------------------------
# slow, obviously correct reference
# ------------------------------------------------------------------------------------------------------------


def slow_join(instances, table, names, how, match_rows):
    """Per element: kept instance ids in result order (None: element is None); table row positions."""
    regions = list(table.obs["region"].astype(str))
    ids = list(table.obs["cell"].astype(object))
    out, all_rows = {}, []
    for name in names:
        e = list(instances[name])
        eset = set(e)
        trows = [(p, i) for p, (r, i) in enumerate(zip(regions, ids, strict=True)) if r == name]
        tpos = {i: p for p, i in trows}
        matched_in_e_order = [tpos[i] for i in e if i in tpos]
        matched_in_t_order = [p for p, i in trows if i in eset]
        if how == "left":
            kept = e
            rows = matched_in_e_order if match_rows == "left" else matched_in_t_order
        elif how == "left_exclusive":
            kept = [i for i in e if i not in tpos]
            rows = []
        elif how == "inner":
            kept = [i for i in e if i in tpos]
            if match_rows == "right":
                kept = sorted(kept, key=lambda i: tpos[i])
            rows = matched_in_e_order if match_rows == "left" else matched_in_t_order
        elif how == "right":
            kept = [i for i in e if i in tpos]
            if match_rows == "right":
                kept = sorted(kept, key=lambda i: tpos[i])
            if match_rows == "left":
                rows = matched_in_e_order + [p for p, i in trows if i not in eset]
            else:
                rows = [p for p, _ in trows]
        else:
            kept = None
            rows = [p for p, i in trows if i not in eset]
        out[name] = kept
        all_rows.append(rows)
    rows = [p for r in all_rows for p in r]
    if match_rows != "left":
        rows = sorted(rows)
    return out, rows


def first_appearance(values):
    return list(dict.fromkeys(values))


def expected_points(pdf, kept, tpos, match_rows, how):
    """Rows of the pandas points for the kept instances, in the join's order."""
    ids = list(pdf["cell"])
    keep = set(kept)
    if how == "left_exclusive":
        positions = [k for k, i in enumerate(ids) if i in keep]
    else:
        positions = [k for k, i in enumerate(ids) if i in keep]
        if match_rows == "right":
            positions = sorted(positions, key=lambda k: (tpos[ids[k]], k))
    return pdf.iloc[positions]


# ------------------------------------------------------------------------------------------------------------
# joins against the reference
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [["shapes_a"], ["pts", "shapes_a"]])
@pytest.mark.parametrize("match_rows", MATCH)
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("id_kind", ["int", "str"])
@pytest.mark.parametrize("seed", [0, 1])
def test_join_matches_reference(seed, id_kind, how, match_rows, names):
    sdata, pdf = make_data(seed, id_kind)
    table = sdata["table"]
    instances = {"shapes_a": list(sdata["shapes_a"].index), "pts": first_appearance(pdf["cell"])}
    want_elements, want_rows = slow_join(instances, table, names, how, match_rows)

    elements, joined = join_spatialelement_table(
        sdata, spatial_element_names=names, table_name="table", how=how, match_rows=match_rows
    )
    assert list(elements) == names

    if how == "left_exclusive" or not want_rows:
        assert joined is None
    else:
        assert list(joined.obs_names) == [table.obs_names[p] for p in want_rows]
        np.testing.assert_array_equal(joined.X.toarray(), table.X[want_rows].toarray())
        assert set(joined.obs["region"].cat.categories) == set(names)
        TableModel.validate(joined)

    tpos = {
        i: p
        for p, (r, i) in enumerate(
            zip(table.obs["region"].astype(str), table.obs["cell"].astype(object), strict=True)
        )
        if r == "pts"
    }
    for name in names:
        got, kept = elements[name], want_elements[name]
        if kept is None:
            assert got is None
            continue
        if how == "left":
            assert got is sdata[name]
            continue
        if name == "shapes_a":
            if not kept:
                assert got is None
            else:
                assert list(got.index) == kept
                ShapesModel.validate(got)
        else:
            assert isinstance(got, dd.DataFrame)
            expected = expected_points(pdf, kept, tpos, match_rows, how)
            pd.testing.assert_frame_equal(got.compute(), expected, check_dtype=False)
            PointsModel.validate(got)


def test_points_join_stays_lazy_and_keeps_partitions():
    sdata, _ = make_data(3, "int")
    elements, joined = join_spatialelement_table(
        sdata, spatial_element_names="pts", table_name="table", how="right", match_rows="no_control"
    )
    got = elements["pts"]
    assert isinstance(got, dd.DataFrame)
    assert got.npartitions == 3
    assert set(got["cell"].compute()) <= set(joined.obs["cell"])


@pytest.mark.parametrize("match_rows", ["no_control", "right"])
def test_points_right_join_computes_nothing(match_rows):
    sdata, _ = make_data(3, "str")
    runs = []

    class Count(Callback):
        def _start(self, dsk):
            runs.append(1)

    with Count():
        elements, _ = join_spatialelement_table(
            sdata, "pts", table_name="table", how="right", match_rows=match_rows
        )
    assert not runs
    assert len(elements["pts"].compute()) > 0


def test_spatial_elements_passed_as_objects():
    sdata, _ = make_data(4, "str")
    shapes, table = sdata["shapes_a"], sdata["table"]
    e1, t1 = join_spatialelement_table(
        spatial_element_names="shapes_a", spatial_elements=shapes, table=table, how="inner", match_rows="left"
    )
    e2, t2 = join_spatialelement_table(sdata, "shapes_a", table_name="table", how="inner", match_rows="left")
    assert list(e1["shapes_a"].index) == list(e2["shapes_a"].index)
    assert list(t1.obs_names) == list(t2.obs_names)


def test_match_rows_left_orders_table_like_element():
    sdata, _ = make_data(5, "int")
    _, joined = join_spatialelement_table(
        sdata, "shapes_a", table_name="table", how="left", match_rows="left"
    )
    index = list(sdata["shapes_a"].index)
    got = list(joined.obs["cell"])
    assert got == [i for i in index if i in set(got)]


def test_match_rows_right_orders_element_like_table():
    sdata, _ = make_data(6, "str")
    elements, joined = join_spatialelement_table(
        sdata, "shapes_a", table_name="table", how="inner", match_rows="right"
    )
    assert list(elements["shapes_a"].index) == list(joined.obs["cell"].astype(object))


def test_integer_ids_match_string_ids():
    shapes = ShapesModel.parse(np.array([[0.0, 0], [1, 1], [2, 2]]), radius=1.0, index=[7, 3, 11])
    table = ad.AnnData(obs=pd.DataFrame({"cell": ["11", "7", "99"]}, index=["a", "b", "c"]))
    TableModel.parse(table, region="s", region_key="region", instance_key="cell")
    sdata = SpatialData(shapes={"s": shapes}, tables={"t": table})
    elements, joined = join_spatialelement_table(sdata, "s", table_name="t", how="inner", match_rows="left")
    assert list(elements["s"].index) == [7, 11]
    assert list(joined.obs_names) == ["b", "a"]


def test_categorical_points_instance_column():
    pdf = pd.DataFrame(
        {"x": np.arange(12.0), "y": np.arange(12.0), "cell": pd.Categorical(list("abcabcddbbxa"))}
    )
    points = PointsModel.parse(pdf, instance_key="cell", npartitions=3)
    table = ad.AnnData(obs=pd.DataFrame({"cell": ["d", "a", "zz"]}, index=["r0", "r1", "r2"]))
    TableModel.parse(table, region="p", region_key="region", instance_key="cell")
    sdata = SpatialData(points={"p": points}, tables={"t": table})
    elements, joined = join_spatialelement_table(sdata, "p", table_name="t", how="inner", match_rows="right")
    got = elements["p"].compute()
    assert list(got["cell"].astype(str)) == ["d", "d", "a", "a", "a"]
    assert list(got.index) == [6, 7, 0, 3, 11]
    assert list(joined.obs_names) == ["r0", "r1"]
    assert list(element_instances(points)) == list("abcdx")


# ------------------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------------------


def make_labels_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    values = np.array([0, 3, 5, 9, 14, 200, 31])
    raster = rng.choice(values[:-1], (40, 30))  # 31 never occurs
    labels = Labels2DModel.parse(da.from_array(raster.astype(np.int32), chunks=(13, 11)))
    ids = np.array([14, 3, 31, 200, 77])  # 0, 5 and 9 have no row; 31 and 77 are not in the raster
    table = ad.AnnData(
        X=rng.normal(size=(5, 2)),
        obs=pd.DataFrame({"cell": ids}, index=[f"c{i}" for i in range(5)]),
    )
    TableModel.parse(table, region="lab", region_key="region", instance_key="cell")
    return SpatialData(labels={"lab": labels}, tables={"t": table}), raster


@pytest.mark.parametrize(
    ("how", "match_rows"),
    [
        (h, m)
        for h in HOWS
        if h != "left_exclusive"
        for m in MATCH
        if not (m == "right" and h in ("inner", "right"))
    ],
)
def test_labels_join_matches_reference(how, match_rows):
    sdata, raster = make_labels_data()
    instances = {"lab": sorted(set(raster.ravel().tolist()))}
    table = sdata["t"]
    _, want_rows = slow_join(instances, table, ["lab"], how, match_rows)
    elements, joined = join_spatialelement_table(sdata, "lab", table_name="t", how=how, match_rows=match_rows)
    if how == "right_exclusive":
        assert elements["lab"] is None
    else:
        assert elements["lab"] is sdata["lab"]
    if want_rows:
        assert list(joined.obs_names) == [table.obs_names[p] for p in want_rows]
    else:
        assert joined is None


def test_labels_instances_are_unique_values():
    sdata, raster = make_labels_data()
    assert list(element_instances(sdata["lab"])) == [0, 3, 5, 9, 14, 200]
    multiscale = Labels2DModel.parse(raster.astype(np.int32), scale_factors=[2], chunks=(7, 9))
    assert list(element_instances(multiscale)) == [0, 3, 5, 9, 14, 200]


def test_labels_match_table_to_element():
    sdata, _ = make_labels_data()
    matched = match_table_to_element(sdata, "lab")
    assert list(matched.obs["cell"]) == [3, 14, 200]


def test_labels_left_exclusive_raises():
    sdata, _ = make_labels_data()
    with pytest.raises(ValueError, match="labels raster cannot be filtered"):
        join_spatialelement_table(sdata, "lab", table_name="t", how="left_exclusive")


def test_labels_match_rows_right_raises():
    sdata, _ = make_labels_data()
    with pytest.raises(ValueError, match="cannot be reordered"):
        join_spatialelement_table(sdata, "lab", table_name="t", how="inner", match_rows="right")


def test_labels_match_element_to_table_raises():
    sdata, _ = make_labels_data()
    with pytest.raises(ValueError, match="cannot be filtered or reordered"):
        match_element_to_table(sdata, "lab", "t")


# ------------------------------------------------------------------------------------------------------------
# match helpers
# ------------------------------------------------------------------------------------------------------------


def test_match_table_to_element_and_back():
    sdata, _ = make_data(7, "int")
    shapes = sdata["shapes_a"]
    matched = match_table_to_element(sdata, "shapes_a", "table")
    in_table = set(sdata["table"].obs["cell"][sdata["table"].obs["region"] == "shapes_a"])
    assert list(matched.obs["cell"]) == [i for i in shapes.index if i in in_table]

    element, table = match_element_to_table(sdata, "shapes_a", "table")
    assert list(element.index) == list(table.obs["cell"])
    assert table.n_obs == len(element)  # one to one

    points, ptable = match_element_to_table(sdata, "pts", "table")
    got = points.compute()
    order = {i: k for k, i in enumerate(ptable.obs["cell"])}
    ranks = [order[i] for i in got["cell"]]
    assert ranks == sorted(ranks)
    assert set(got["cell"]) == set(ptable.obs["cell"])


def test_match_table_to_element_on_synthetic():
    sdata = synthetic(n_cells=30, n_transcripts=500, image_size=32, n_points_partitions=3)
    table = sdata["table"]
    sdata["table"] = table[np.random.default_rng(0).permutation(table.n_obs)].copy()
    matched = match_table_to_element(sdata, "cell_boundaries")
    assert list(matched.obs["cell_id"]) == list(sdata["cell_boundaries"].index)


def test_match_table_to_element_needs_table_name_when_ambiguous():
    sdata, _ = make_data(0, "int")
    sdata["table2"] = sdata["table"].copy()
    with pytest.raises(ValueError, match=r"pass table_name; tables \['table', 'table2'\] annotate it"):
        match_table_to_element(sdata, "shapes_a")


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------


def test_error_unknown_how():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="how must be one of"):
        join_spatialelement_table(sdata, "shapes_a", table_name="table", how="outer")


def test_error_unknown_match_rows():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="match_rows must be one of"):
        join_spatialelement_table(sdata, "shapes_a", table_name="table", match_rows="both")


def test_error_table_does_not_annotate_element():
    sdata, _ = make_data(0, "int")
    sdata["other"] = ShapesModel.parse(np.zeros((1, 2)), radius=1.0)
    with pytest.raises(ValueError, match=r"does not annotate \['other'\]"):
        join_spatialelement_table(sdata, "other", table_name="table")


def test_error_table_annotates_nothing():
    sdata, _ = make_data(0, "int")
    sdata["orphan"] = ad.AnnData(obs=pd.DataFrame(index=["a"]))
    with pytest.raises(ValueError, match="annotates no element"):
        join_spatialelement_table(sdata, "shapes_a", table_name="orphan")


def test_error_images_cannot_be_joined():
    sdata = synthetic(n_cells=30, n_transcripts=100, image_size=32)
    with pytest.raises(ValueError, match="only labels, shapes and points can be joined"):
        join_spatialelement_table(sdata, "morphology", table_name="table")


def test_error_points_without_instance_key():
    points = PointsModel.parse(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    table = ad.AnnData(obs=pd.DataFrame({"cell": [1]}, index=["a"]))
    TableModel.parse(table, region="p", region_key="region", instance_key="cell")
    sdata = SpatialData(points={"p": points}, tables={"t": table})
    with pytest.raises(ValueError, match="has no instance_key column"):
        join_spatialelement_table(sdata, "p", table_name="t")


def test_error_missing_names_and_inputs():
    sdata, _ = make_data(0, "int")
    with pytest.raises(ValueError, match="pass spatial_element_names"):
        join_spatialelement_table(sdata, table_name="table")
    with pytest.raises(ValueError, match="pass either sdata and table_name, or table"):
        join_spatialelement_table(sdata, "shapes_a")
    with pytest.raises(ValueError, match="pass either sdata"):
        join_spatialelement_table(spatial_element_names="shapes_a", table=sdata["table"])
    with pytest.raises(ValueError, match="expected one element per name"):
        join_spatialelement_table(
            spatial_element_names=["shapes_a", "pts"],
            spatial_elements=[sdata["shapes_a"]],
            table=sdata["table"],
        )
    with pytest.raises(ValueError, match="more than once"):
        join_spatialelement_table(sdata, ["shapes_a", "shapes_a"], table_name="table")
    with pytest.raises(ValueError, match="not a table"):
        join_spatialelement_table(sdata, "shapes_a", table_name="pts")


def test_error_no_annotating_table():
    sdata, _ = make_data(0, "int")
    sdata["lonely"] = ShapesModel.parse(np.zeros((1, 2)), radius=1.0)
    with pytest.raises(ValueError, match="pass table_name; no table annotates it"):
        match_table_to_element(sdata, "lonely")


# ------------------------------------------------------------------------------------------------------------
# filter_table
# ------------------------------------------------------------------------------------------------------------


def _surviving(table, region):
    obs = table.obs
    return set(obs["cell"][obs["region"] == region].astype(object))


@pytest.mark.parametrize("kind", ["mask", "callable", "query"])
@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_filter_table_obs_and_propagation(kind, id_kind):
    sdata, pdf = make_data(8, id_kind)
    table = sdata["table"]
    expected_mask = (table.obs["score"] > 0).to_numpy()
    predicate = {
        "mask": expected_mask,
        "callable": lambda obs: obs["score"] > 0,
        "query": "score > 0",
    }[kind]
    out = filter_table(sdata, "table", obs=predicate)
    new = out["table"]
    assert list(new.obs_names) == list(table.obs_names[expected_mask])
    assert sdata["table"] is table and table.n_obs == len(expected_mask)  # input untouched

    keep_s = _surviving(new, "shapes_a")
    shapes = sdata["shapes_a"]
    assert list(out["shapes_a"].index) == [i for i in shapes.index if i in keep_s]
    keep_p = _surviving(new, "pts")
    got = out["pts"].compute()
    pd.testing.assert_frame_equal(got, pdf[pdf["cell"].isin(keep_p)], check_dtype=False)
    assert out["pts"].npartitions == 3


def test_filter_table_var_and_X():
    sdata, _ = make_data(9, "int")
    table = sdata["table"]
    out = filter_table(
        sdata,
        "table",
        var=lambda var: var.index.isin(["g1", "g3", "g4"]),
        X=lambda X: np.asarray(X.sum(1)).ravel() > 10,
    )
    new = out["table"]
    rows = np.asarray(table.X.sum(1)).ravel() > 10
    assert list(new.var_names) == ["g1", "g3", "g4"]
    assert list(new.obs_names) == list(table.obs_names[rows])
    np.testing.assert_array_equal(new.X.toarray(), table[rows, ["g1", "g3", "g4"]].X.toarray())


def test_filter_table_combines_obs_and_X():
    sdata, _ = make_data(9, "str")
    table = sdata["table"]
    with pytest.warns(UserWarning, match="left out of the result"):
        out = filter_table(
            sdata, "table", obs="region == 'pts'", X=lambda X: np.asarray(X.sum(1)).ravel() > 5
        )
    rows = (table.obs["region"] == "pts").to_numpy() & (np.asarray(table.X.sum(1)).ravel() > 5)
    assert list(out["table"].obs_names) == list(table.obs_names[rows])
    assert set(out["table"].obs["region"]) == {"pts"}


def test_filter_table_without_propagation_shares_elements():
    sdata, _ = make_data(10, "int")
    out = filter_table(sdata, "table", obs="score > 0", propagate=False)
    assert out["shapes_a"] is sdata["shapes_a"]
    assert out["pts"] is sdata["pts"]


def test_filter_table_on_synthetic_labels_unchanged_others_shared():
    sdata = synthetic(n_cells=40, n_transcripts=800, image_size=32, n_points_partitions=3)
    sdata.set_table_annotates("table", "cell_boundaries")
    out = filter_table(sdata, "table", obs=lambda obs: obs["cell_id"] % 2 == 0)
    assert list(out["cell_boundaries"].index) == [i for i in sdata["cell_boundaries"].index if i % 2 == 0]
    for name in ("cell_labels", "morphology", "transcripts", "nuclei", "spots"):
        assert out[name] is sdata[name]


def test_filter_table_propagates_to_labels_table_keeps_labels():
    sdata, _ = make_labels_data()
    out = filter_table(sdata, "t", obs=np.array([True, False, True, False, True]))
    assert out["lab"] is sdata["lab"]
    assert out["t"].n_obs == 3


def test_filter_table_drops_emptied_shapes_with_warning():
    sdata, _ = make_data(11, "int")
    with pytest.warns(UserWarning, match=r"shapes element\(s\) \['shapes_a'\]"):
        out = filter_table(sdata, "table", obs="region == 'pts'")
    assert "shapes_a" not in out
    assert "pts" in out


def test_filter_table_errors():
    sdata, _ = make_data(12, "int")
    n = sdata["table"].n_obs
    with pytest.raises(ValueError, match=rf"mask of shape \({n - 1},\); expected \({n},\)"):
        filter_table(sdata, "table", obs=np.ones(n - 1, dtype=bool))
    with pytest.raises(ValueError, match="expected a boolean mask"):
        filter_table(sdata, "table", obs=np.ones(n))
    with pytest.raises(ValueError, match="cannot evaluate obs query"):
        filter_table(sdata, "table", obs="no_such_column > 3")
    with pytest.raises(ValueError, match="gave dtype float64; expected booleans"):
        filter_table(sdata, "table", obs=lambda obs: obs["score"])
    with pytest.raises(ValueError, match="X must be a callable"):
        filter_table(sdata, "table", X=np.ones(n, dtype=bool))
    with pytest.raises(ValueError, match="not a table"):
        filter_table(sdata, "shapes_a", obs="score > 0")


def test_filter_table_result_is_valid_and_writable(tmp_path):
    sdata, _ = make_data(13, "str")
    out = filter_table(sdata, "table", obs="score > 0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out.validate()
    # the test data has table rows without a shape (on purpose): validate says so, and nothing else
    assert seen and all("match no instance of" in str(w.message) for w in seen)
    out.write(tmp_path / "f.zarr")


def test_empty_shapes_result_is_none():
    sdata, _ = make_data(14, "int")
    gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy([0.0], [0.0]), index=[123456])
    gdf["radius"] = 1.0
    sdata["shapes_a"] = ShapesModel.parse(gdf)
    elements, table = join_spatialelement_table(sdata, "shapes_a", table_name="table", how="inner")
    assert elements["shapes_a"] is None
    assert table is None
