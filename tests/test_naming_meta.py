import gc
import weakref

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import tissuestack as ts
from tissuestack import ValidationError
from tissuestack.elements import ElementMeta, get_meta, has_meta, set_meta
from tissuestack.elements._naming import check_name, check_unique_names, is_valid_name, sanitize_name
from tissuestack.transforms import Identity, Scale


@pytest.mark.parametrize("name", ["cells", "Cells_1", "a-b.c", "é_unicode", "x" * 200, "0"])
def test_valid_names(name):
    assert is_valid_name(name)
    check_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        (".", r"must not be '\.' or '\.\.'"),
        ("..", r"must not be '\.' or '\.\.'"),
        ("__private", "must not start with '__'"),
        ("has space", r"found ' '"),
        ("a/b", r"found '/'"),
        ("tab\there", r"found '\\t'"),
        (3, "must be a string, got int"),
    ],
)
def test_invalid_names(name, message):
    assert not is_valid_name(name)
    with pytest.raises(ValidationError, match=message):
        check_name(name, "element name")


def test_unique_names_ignoring_case():
    check_unique_names(["a", "b", "C"])
    with pytest.raises(ValidationError, match=r"'Cells' and 'cells' clash"):
        check_unique_names(["Cells", "cells"])
    with pytest.raises(ValidationError, match=r"duplicate element name 'a'"):
        check_unique_names(["a", "a"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("my cells (v2)", "my_cells_v2_"),
        ("__init__", "_init_"),
        ("", "element"),
        ("..", "element"),
        ("a//b", "a_b"),
        ("ok-name.1", "ok-name.1"),
        (42, "42"),
    ],
)
def test_sanitize(raw, expected):
    out = sanitize_name(raw)
    assert out == expected
    assert is_valid_name(out)


def test_sanitize_avoids_taken_names():
    assert sanitize_name("Cells", taken=["cells"]) == "Cells_1"
    assert sanitize_name("cells", taken=["cells", "CELLS_1"]) == "cells_2"


def test_metadata_of_dask_frames_which_have_no_attrs_lives_on_their_meta_frame():
    df = dd.from_pandas(pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]}), npartitions=1)
    assert not hasattr(df, "attrs")
    assert not has_meta(df)
    set_meta(df, ElementMeta({"global": Scale([2.0, 2.0], ("x", "y"))}, feature_key=None))
    assert get_meta(df).transformations["global"] == Scale([2.0, 2.0], ("x", "y"))
    # derived frames inherit the metadata (issue 11: it used to be lost here) ...
    derived = df[df.x > 1]
    assert get_meta(derived).transformations["global"] == Scale([2.0, 2.0], ("x", "y"))
    # ... as their own copy
    ts.set_transformation(derived, Identity(), "other")
    assert set(get_meta(df).transformations) == {"global"}
    # a frame built anew from computed data has none, and the error says how to re-attach it
    fresh = dd.from_pandas(derived.compute(), npartitions=1)
    with pytest.raises(ValidationError, match=r"no spatial metadata is attached to this DataFrame.*parse"):
        get_meta(fresh)


def test_records_die_with_their_object():
    from tissuestack.elements import record_of

    pts = ts.PointsModel.parse(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    record = weakref.ref(record_of(pts))
    assert record() is record_of(pts)  # one record per object, kept on it
    assert record_of(pts[pts.x > 0]) is not record()  # a derived frame has its own
    del pts
    gc.collect()
    assert record() is None


def test_geodataframe_copy_carries_metadata_via_attrs():
    shapes = ts.ShapesModel.parse(
        np.array([[0.0, 0.0], [1.0, 1.0]]), radius=1.0, transformations={"um": Identity()}
    )
    sub = shapes[shapes.radius > 0]
    assert sub is not shapes
    assert ts.get_transformation(sub, "um") == Identity()


def test_set_transformation_on_bare_element_and_errors():
    shapes = ts.ShapesModel.parse(np.array([[0.0, 0.0]]), radius=1.0)
    ts.set_transformation(shapes, Scale([2.0, 2.0], ("x", "y")), "big")
    assert set(ts.get_transformation(shapes, get_all=True)) == {"global", "big"}
    with pytest.raises(ValueError, match="either to_coordinate_system or get_all"):
        ts.get_transformation(shapes, "big", get_all=True)
    with pytest.raises(ValidationError, match="non-empty string"):
        ts.set_transformation(shapes, Identity(), "")
    with pytest.raises(TypeError, match="set_all=True expects a mapping"):
        ts.set_transformation(shapes, Identity(), set_all=True)
    with pytest.raises(KeyError, match="no transformation to coordinate system 'zz'"):
        ts.remove_transformation(shapes, "zz")
