import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr

import tissuestack as ts
from tissuestack import (
    Affine,
    AmbiguousPathError,
    Identity,
    MapAxis,
    NoPathError,
    Scale,
    SpatialData,
    Translation,
    ValidationError,
)
from tissuestack.elements import get_table_keys


def _circles(n=4, index=None):
    xy = np.arange(2 * n, dtype=float).reshape(n, 2)
    return ts.ShapesModel.parse(xy, radius=1.0, index=index)


def _table(region, n, instance_ids=None, region_values=None):
    obs = pd.DataFrame(
        {
            "instance": instance_ids if instance_ids is not None else np.arange(n),
            "region": pd.Categorical(region_values if region_values is not None else [region] * n),
        },
        index=[f"r{i}" for i in range(n)],
    )
    adata = ad.AnnData(X=np.ones((n, 2)), obs=obs)
    return ts.TableModel.parse(adata, region=region, region_key="region", instance_key="instance")


@pytest.fixture
def sdata():
    img = ts.Image2DModel.parse(
        np.zeros((1, 10, 10)), transformations={"global": Scale([2.0, 2.0], ("x", "y"))}
    )
    lab = ts.Labels2DModel.parse(np.zeros((10, 10), dtype=np.int32))
    pts = ts.PointsModel.parse(
        pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0), "gene": list("ab") * 5}),
        feature_key="gene",
        npartitions=3,
    )
    return SpatialData(
        images={"img": img},
        labels={"lab": lab},
        points={"pts": pts},
        shapes={"circles": _circles(4), "other": _circles(3)},
        tables={"table": _table("circles", 4)},
    )


def test_dict_like_access(sdata):
    assert set(sdata) == {"img", "lab", "pts", "circles", "other", "table"}
    assert len(sdata) == 6
    assert "img" in sdata and "nope" not in sdata
    assert isinstance(sdata["img"], xr.DataArray)
    assert sdata.images["img"] is sdata["img"]
    assert list(sdata.shapes) == ["circles", "other"]
    assert sdata.kind_of("pts") == "points"
    assert [name for name, _ in sdata.items(["shapes"])] == ["circles", "other"]


def test_views_parse_raw_data_as_their_kind(sdata):
    sdata.images["raw"] = np.zeros((2, 5, 5))
    assert sdata.kind_of("raw") == "images" and sdata["raw"].dims == ("c", "y", "x")
    sdata.labels["seg"] = np.zeros((5, 5), dtype=np.uint8)
    assert sdata.kind_of("seg") == "labels"
    sdata.points["p2"] = pd.DataFrame({"x": [1.0], "y": [2.0]})
    assert sdata.kind_of("p2") == "points"
    sdata.shapes["s2"] = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)])
    assert ts.get_transformation(sdata["s2"]) == Identity()


def test_setitem_detects_kind_and_replaces_same_kind(sdata):
    new = _circles(2)
    sdata["circles"] = new
    assert sdata["circles"] is new
    sdata["more"] = _circles(1)
    assert sdata.kind_of("more") == "shapes"


def test_delete(sdata):
    del sdata["other"]
    assert "other" not in sdata and "other" not in sdata.shapes
    del sdata.images["img"]
    assert "img" not in sdata
    with pytest.raises(KeyError, match="no element named 'nope'"):
        del sdata["nope"]


def test_add_refuses_existing_and_replace_requires_existing(sdata):
    with pytest.raises(KeyError, match="exists already"):
        sdata.add("circles", _circles(1))
    with pytest.raises(KeyError, match="no element named 'zzz' to replace"):
        sdata.replace("zzz", _circles(1))
    sdata.replace("circles", _circles(1))
    assert len(sdata["circles"]) == 1


def test_error_name_clash_ignoring_case(sdata):
    with pytest.raises(ValidationError, match=r"'Circles' clashes with existing element 'circles'"):
        sdata["Circles"] = _circles(1)
    with pytest.raises(ValidationError, match=r"'TABLE' clashes"):
        sdata.images["TABLE"] = np.zeros((1, 2, 2))


def test_error_name_clash_other_kind(sdata):
    with pytest.raises(
        ValidationError, match=r"cannot store images element 'circles': an element of kind shapes"
    ):
        sdata.images["circles"] = np.zeros((1, 2, 2))


def test_error_invalid_element_name(sdata):
    with pytest.raises(ValidationError, match=r"invalid element name 'has space': it may only contain"):
        sdata["has space"] = _circles(1)
    with pytest.raises(ValidationError, match=r"must not start with '__'"):
        SpatialData(shapes={"__x": _circles(1)})


def test_error_unknown_object_type():
    sdata = SpatialData()
    with pytest.raises(TypeError, match=r"cannot tell the element kind of a ndarray"):
        sdata["x"] = np.zeros((3, 3))


def test_error_invalid_element_in_constructor():
    bad = gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])])
    with pytest.raises(ValidationError, match=r"shapes element 'lines'"):
        SpatialData(shapes={"lines": bad})


def test_missing_key_suggests_case(sdata):
    with pytest.raises(KeyError, match=r"did you mean 'circles'"):
        sdata["CIRCLES"]


def test_coordinate_systems_and_transformations(sdata):
    assert sdata.coordinate_systems == ["global"]
    sdata.set_transformation("lab", Translation([1, 2], ("x", "y")), "aligned")
    assert sdata.coordinate_systems == ["global", "aligned"]
    assert sdata.elements_in_coordinate_system("aligned") == ["lab"]
    assert sdata.get_transformation("lab", "aligned") == Translation([1, 2], ("x", "y"))
    assert set(sdata.get_transformation("lab", get_all=True)) == {"global", "aligned"}
    # the element-level functions see the same metadata
    assert ts.get_transformation(sdata["lab"], "aligned") == Translation([1, 2], ("x", "y"))
    ts.set_transformation(sdata["pts"], Scale([3.0, 3.0], ("x", "y")), "um")
    assert "um" in sdata.coordinate_systems
    sdata.remove_transformation("lab", "aligned")
    assert "aligned" not in sdata.coordinate_systems


def test_set_all_transformations(sdata):
    sdata.set_transformation("img", {"a": Identity(), "b": Scale([2.0], ("x",))}, set_all=True)
    assert list(sdata.get_transformation("img", get_all=True)) == ["a", "b"]


def test_error_transformation_problems(sdata):
    with pytest.raises(
        KeyError, match=r"element 'img': element has no transformation to coordinate system 'zz'"
    ):
        sdata.get_transformation("img", "zz")
    with pytest.raises(ValidationError, match=r"element 'img': .*only one"):
        sdata.remove_transformation("img", "global")
    with pytest.raises(ValidationError, match=r"'table' is a table"):
        sdata.get_transformation("table")
    with pytest.raises(ValidationError, match=r"at least one transformation"):
        sdata.set_transformation("img", {}, set_all=True)
    with pytest.raises(TypeError, match=r"expected a tissuestack transformation"):
        sdata.set_transformation("img", np.eye(3))


def test_transformation_between_elements_and_cs(sdata):
    # img -> global is Scale 2; lab -> global identity: img pixel (x) maps to lab pixel 2x
    t = sdata.get_transformation_between("img", "lab")
    np.testing.assert_allclose(t.apply(np.array([[1.0, 3.0]]), ("x", "y")), [[2.0, 6.0]])
    back = sdata.get_transformation_between("global", "img")
    np.testing.assert_allclose(back.apply(np.array([[4.0, 8.0]]), ("x", "y")), [[2.0, 4.0]])
    same = sdata.get_transformation_between("img", "img")
    assert same.to_affine_matrix(("x", "y"), ("x", "y")).tolist() == np.eye(3).tolist()
    # element objects are accepted too
    t2 = sdata.get_transformation_between(sdata["img"], "global")
    assert t2.equivalent(Scale([2.0, 2.0], ("x", "y")), ("x", "y"))


def test_transformation_between_through_chain(sdata):
    # lab in global and aligned; circles only in aligned: img -> global -> lab -> aligned -> circles
    rot = Affine([[0, -1, 5], [1, 0, 0], [0, 0, 1]], ("x", "y"), ("x", "y"))
    sdata.set_transformation("lab", rot, "aligned")
    sdata.set_transformation("circles", Scale([0.5, 0.5], ("x", "y")), "aligned", set_all=False)
    sdata.remove_transformation("circles", "global")
    t = sdata.get_transformation_between("img", "circles")
    p = np.array([[1.0, 2.0], [3.0, -1.0]])
    expected = (
        Scale([0.5, 0.5], ("x", "y"))
        .inverse()
        .apply(rot.apply(Scale([2.0, 2.0], ("x", "y")).apply(p, ("x", "y")), ("x", "y")), ("x", "y"))
    )
    np.testing.assert_allclose(t.apply(p, ("x", "y")), expected)


def test_ambiguous_path_is_an_error_listing_candidates(sdata):
    # two elements both in 'global' and 'aligned' with different transformations -> two disagreeing paths
    sdata.set_transformation("lab", Translation([1, 0], ("x", "y")), "aligned")
    sdata.set_transformation("other", Translation([5, 0], ("x", "y")), "aligned")
    with pytest.raises(AmbiguousPathError, match=r"(?s)2 shortest chains.*'lab'.*'other'.*via="):
        sdata.get_transformation_between("global", "aligned")
    t = sdata.get_transformation_between("global", "aligned", via="other")
    np.testing.assert_allclose(t.apply(np.zeros((1, 2)), ("x", "y")), [[5.0, 0.0]])


def test_agreeing_paths_are_not_ambiguous(sdata):
    sdata.set_transformation("lab", Translation([1, 0], ("x", "y")), "aligned")
    sdata.set_transformation("other", Translation([1, 0], ("x", "y")), "aligned")
    t = sdata.get_transformation_between("global", "aligned")
    np.testing.assert_allclose(t.apply(np.zeros((1, 2)), ("x", "y")), [[1.0, 0.0]])


def test_no_path_errors(sdata):
    sdata.set_transformation("other", Identity(), "island", set_all=False)
    sdata.remove_transformation("other", "global")
    with pytest.raises(NoPathError, match=r"no chain of transformations connects 'img' and \[island\]"):
        sdata.get_transformation_between("img", "island")
    with pytest.raises(KeyError, match=r"'nowhere' is neither an element nor a coordinate system"):
        sdata.get_transformation_between("img", "nowhere")


def test_non_invertible_edge_is_walked_forward_only(sdata):
    # a projection 3D->2D cannot be inverted: global -> img through it is impossible, img -> global fine
    proj = Affine([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], ("x", "y", "z"), ("x", "y"))
    sdata.set_transformation("img", proj, "flat", set_all=False)
    sdata.get_transformation_between("img", "flat")
    with pytest.raises(NoPathError):
        sdata.get_transformation_between("flat", "lab")


def test_rename_coordinate_systems(sdata):
    sdata.set_transformation("lab", MapAxis({"x": "y", "y": "x"}), "swapped")
    sdata.rename_coordinate_systems({"global": "microns"})
    assert sdata.coordinate_systems == ["microns", "swapped"]
    assert sdata.get_transformation("img", "microns") == Scale([2.0, 2.0], ("x", "y"))
    with pytest.raises(ValidationError, match=r"would merge coordinate systems into \['swapped'\]"):
        sdata.rename_coordinate_systems({"microns": "swapped"})
    with pytest.raises(KeyError, match=r"unknown coordinate system"):
        sdata.rename_coordinate_systems({"nope": "x"})


def test_annotating_tables_and_retarget(sdata):
    assert sdata.get_annotating_tables("circles") == ["table"]
    assert sdata.get_annotating_tables("other") == []
    assert sdata.get_annotated_elements("table") == ["circles"]
    sdata.set_table_annotates("table", "other")
    assert sdata.get_annotated_elements("table") == ["other"]
    assert set(sdata["table"].obs["region"].unique()) == {"other"}
    with pytest.raises(ValidationError, match=r"cannot annotate 'img': it is a images element"):
        sdata.set_table_annotates("table", "img")
    with pytest.raises(KeyError, match=r"cannot annotate 'zzz': no such element"):
        sdata.set_table_annotates("table", "zzz")


def test_table_annotating_missing_element_warns(sdata):
    with pytest.warns(UserWarning, match=r"table 't2' annotates \['ghost'\]"):
        sdata["t2"] = _table("ghost", 2)


def test_subset_filters_tables():
    t = _table(["a", "b"], 6, instance_ids=[0, 1, 2, 0, 1, 2], region_values=list("aaabbb"))
    orphan = ad.AnnData(X=np.zeros((2, 1)))
    s = SpatialData(shapes={"a": _circles(3), "b": _circles(3)}, tables={"t": t, "orphan": orphan})
    sub = s.subset(["a"])
    assert set(sub) == {"a", "t"}
    assert sub["t"].n_obs == 3
    assert get_table_keys(sub["t"])[0] == ["a"]
    assert sub["a"] is s["a"]  # elements are shared, not copied
    assert s["t"].n_obs == 6  # original untouched
    assert set(s.subset(["a"], filter_tables=False)) == {"a"}
    assert "orphan" in s.subset(["a"], include_orphan_tables=True)
    assert set(s.subset(["t"])) == {"t"}
    with pytest.raises(KeyError, match=r"unknown element\(s\) \['zz'\]"):
        s.subset(["zz"])


def test_filter_by_coordinate_system(sdata):
    sdata.set_transformation("circles", Identity(), "aligned")
    sub = sdata.filter_by_coordinate_system("aligned")
    assert set(sub) == {"circles", "table"}
    with pytest.raises(KeyError, match=r"unknown coordinate system"):
        sdata.filter_by_coordinate_system("nope")


def test_repr_computes_nothing(sdata):
    text = repr(sdata)
    assert "SpatialData object: 5 spatial element(s), 1 table(s)" in text
    assert "'img': DataArray[cyx] (1, 10, 10) float64" in text
    assert "'pts': dask DataFrame[xy] 10 rows, 3 partitions" in text
    assert "feature_key='gene'" in text
    assert "'circles': GeoDataFrame[xy] 4 circles" in text
    assert "'table': AnnData 4 x 2, annotating ['circles']" in text
    assert "▸ 'global': img (images), lab (labels), pts (points), circles (shapes), other (shapes)" in text


def test_validate_whole_object(sdata):
    sdata.validate()


def test_string_and_noncontiguous_indexes():
    shapes = _circles(3, index=["c1", "c7", "c3"])
    t = _table("cells", 3, instance_ids=["c7", "c1", "c3"])
    s = SpatialData(shapes={"cells": shapes}, tables={"t": t})
    assert list(s["cells"].index) == ["c1", "c7", "c3"]
    shapes2 = _circles(3, index=[10, 3, 99])
    s2 = SpatialData(shapes={"cells": shapes2}, tables={"t": _table("cells", 3, instance_ids=[99, 10, 3])})
    assert list(s2["cells"].index) == [10, 3, 99]


def test_3d_elements_in_container():
    img = ts.Image3DModel.parse(np.zeros((1, 4, 5, 6)))
    lab = ts.Labels3DModel.parse(np.zeros((4, 5, 6), dtype=np.int32))
    pts = ts.PointsModel.parse(np.random.default_rng(0).random((20, 3)), npartitions=2)
    s = SpatialData(images={"img3": img}, labels={"lab3": lab}, points={"p3": pts})
    assert ts.get_axes(s["p3"]) == ("x", "y", "z")
    s.set_transformation("p3", Scale([1.0, 1.0, 2.0], ("x", "y", "z")), "stretched")
    t = s.get_transformation_between("img3", "stretched", via="global")
    np.testing.assert_allclose(t.apply(np.array([[1.0, 1.0, 1.0]]), ("x", "y", "z")), [[1.0, 1.0, 2.0]])
    assert "DataArray[czyx] (1, 4, 5, 6)" in repr(s)


def test_name_of_both_an_element_and_a_coordinate_system():
    """As the Visium reader names them: shapes '<id>' in coordinate system '<id>' (and another one)."""
    import geopandas as gpd
    import shapely

    import tissuestack as ts

    spots = ts.ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[shapely.Point(1.0, 2.0)], index=["s0"]).assign(radius=1.0),
        transformations={"V1": ts.Identity(), "hires": ts.Scale([0.5, 0.5], axes=("x", "y"))},
    )
    sdata = ts.SpatialData(shapes={"V1": spots})
    # source: the element; target: the coordinate system
    assert sdata.get_transformation_between("V1", "hires").equivalent(
        ts.Scale([0.5, 0.5], axes=("x", "y")), ("x", "y")
    )
    assert sdata.get_transformation_between("hires", "V1").equivalent(
        ts.Scale([2.0, 2.0], axes=("x", "y")), ("x", "y")
    )
    centroids = ts.get_centroids(spots, "hires").compute()
    assert centroids.loc["s0"].tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="names both an element and a coordinate system"):
        sdata.get_transformation_between("hires", "V1", via="V1")
