"""transform (points, shapes, rasters; maintain_positioning) and concatenate, against slow references."""

from __future__ import annotations

import warnings

import anndata as ad
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely import affinity

from tissuestack import (
    Affine,
    Identity,
    Image2DModel,
    Image3DModel,
    Labels2DModel,
    PointsModel,
    Scale,
    Sequence,
    ShapesModel,
    SpatialData,
    TableModel,
    Translation,
)
from tissuestack.elements import get_meta
from tissuestack.errors import TransformationError, ValidationError
from tissuestack.ops._concatenate import concatenate
from tissuestack.ops._extent import get_extent
from tissuestack.ops._transform import transform


def rotation(theta: float, t=(0.0, 0.0)) -> Affine:
    c, s = np.cos(theta), np.sin(theta)
    return Affine([[c, -s, t[0]], [s, c, t[1]], [0, 0, 1]], ("x", "y"), ("x", "y"))


SHEAR = Affine([[1.3, 0.7, 4.0], [-0.4, 0.9, -2.0], [0, 0, 1]], ("x", "y"), ("x", "y"))
AFFINE3D = Affine(
    [[0.8, -0.5, 0.3, 1.0], [0.4, 0.9, -0.2, 2.0], [0.1, 0.3, 1.1, -3.0], [0, 0, 0, 1]],
    ("x", "y", "z"),
    ("x", "y", "z"),
)


def assert_extent_close(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------------------
# points
# ------------------------------------------------------------------------------------------------------------
def make_points(rng, n=400, z=False, npartitions=4, t=SHEAR):
    data = {"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n)}
    if z:
        data["z"] = rng.uniform(0, 10, n)
    data["gene"] = rng.choice(["a", "b", "c"], n)
    data["cell"] = rng.integers(0, 20, n)
    pdf = pd.DataFrame(data, index=rng.choice(10 * n, n, replace=False))
    pts = PointsModel.parse(
        pdf, feature_key="gene", instance_key="cell", npartitions=npartitions, transformations={"global": t}
    )
    return pdf, pts


@pytest.mark.parametrize("z", [False, True])
def test_points_transform_matches_loop_and_stays_lazy(z):
    rng = np.random.default_rng(0)
    t = AFFINE3D if z else SHEAR
    pdf, pts = make_points(rng, z=z, t=t)
    axes = ("x", "y", "z") if z else ("x", "y")
    out = transform(pts, "global")
    assert isinstance(out, dd.DataFrame) and out.npartitions == 4
    meta = get_meta(out)
    assert meta.transformations == {"global": Identity()}
    assert (meta.feature_key, meta.instance_key) == ("gene", "cell")
    df = out.compute()
    assert df.index.tolist() == pdf.index.tolist()
    assert list(df.columns) == list(pdf.columns)
    expected = np.array([t.apply(row, axes) for row in pdf[list(axes)].to_numpy()])  # one point at a time
    np.testing.assert_allclose(df[list(axes)].to_numpy(), expected, atol=1e-9)
    assert (df["cell"].to_numpy() == pdf["cell"].to_numpy()).all()


def test_points_transform_round_trip():
    rng = np.random.default_rng(1)
    pdf, pts = make_points(rng)
    there = transform(pts, "global")
    get_meta(there).transformations = {"back": SHEAR.inverse()}
    back = transform(there, "back").compute()
    np.testing.assert_allclose(back[["x", "y"]].to_numpy(), pdf[["x", "y"]].to_numpy(), atol=1e-9)


def test_points_maintain_positioning_keeps_extent_in_every_system():
    rng = np.random.default_rng(2)
    pdf = pd.DataFrame({"x": rng.uniform(0, 10, 50), "y": rng.uniform(0, 10, 50)})
    other = rotation(0.4, (3.0, 1.0))
    pts = PointsModel.parse(pdf, npartitions=2, transformations={"global": SHEAR, "other": other})
    out = transform(pts, "global", maintain_positioning=True)
    transformations = get_meta(out).transformations
    assert transformations["global"] == Identity()
    assert set(transformations) == {"global", "other"}
    for cs in ("global", "other"):
        assert_extent_close(get_extent(out, cs), get_extent(pts, cs))
    # without maintain_positioning only the target remains
    assert set(get_meta(transform(pts, "global")).transformations) == {"global"}


def test_points_transform_through_the_graph_and_spatialdata():
    a = PointsModel.parse(np.array([[1.0, 2.0]]), transformations={"aligned": Scale([2, 2], ("x", "y"))})
    b = PointsModel.parse(
        np.array([[0.0, 0.0]]),
        transformations={"aligned": Identity(), "global": Translation([10, 0], ("x", "y"))},
    )
    sdata = SpatialData(points={"a": a, "b": b})
    out = transform("a", "global", sdata=sdata).compute()
    np.testing.assert_allclose(out[["x", "y"]].to_numpy(), [[12.0, 4.0]])
    moved = transform(sdata, "global")
    assert set(moved.points) == {"a", "b"}
    np.testing.assert_allclose(moved.points["b"].compute()[["x", "y"]].to_numpy(), [[10.0, 0.0]])


def test_transform_error_maintain_positioning_not_invertible():
    t = Affine([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0, 0, 1]], ("x", "y"), ("x", "y"))
    pts = PointsModel.parse(np.array([[1.0, 2.0]]), transformations={"global": t})
    with pytest.raises(TransformationError, match="maintain_positioning=True needs an invertible"):
        transform(pts, "global", maintain_positioning=True)


def test_transform_error_table():
    with pytest.raises(ValidationError, match="a table has no coordinate systems"):
        transform(ad.AnnData(np.zeros((1, 1))), "global")


# ------------------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------------------
def random_polygons(rng, n):
    out = []
    for _ in range(n):
        k = rng.integers(3, 8)
        centre = rng.uniform(0, 100, 2)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.5, 5, k)
        out.append(shapely.Polygon(centre + np.c_[rad * np.cos(ang), rad * np.sin(ang)]))
    out.append(shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 7, 8)]))
    out.append(shapely.box(0, 0, 30, 30).difference(shapely.box(10, 10, 20, 20)))
    return out


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("t", [rotation(0.8, (5.0, -2.0)), SHEAR, Scale([2.0, 3.0], ("x", "y"))])
def test_polygons_transform_matches_per_geometry_reference(t, chunk, monkeypatch):
    import gc

    import tissuestack.ops._transform as transform_module

    if chunk is not None:  # many vectorized chunks, boundaries inside the multipolygon/hole rows too
        monkeypatch.setattr(transform_module, "_GEOMETRY_CHUNK", chunk)
    rng = np.random.default_rng(3)
    geoms = random_polygons(rng, 200)
    index = [f"cell{i}" for i in range(len(geoms))]
    gdf = ShapesModel.parse(geoms, transformations={"global": t}, index=index)
    gdf["area"] = shapely.area(np.asarray(gdf.geometry.array))
    before = shapely.get_coordinates(np.asarray(gdf.geometry.array))
    out = transform(gdf, "global")
    assert out.index.tolist() == index and "area" in out.columns
    assert get_meta(out).transformations == {"global": Identity()}
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    params = [m[0, 0], m[0, 1], m[1, 0], m[1, 1], m[0, 2], m[1, 2]]
    for g, new in zip(gdf.geometry, out.geometry, strict=True):  # as parsed (an invalid one is repaired)
        ref = affinity.affine_transform(g, params)  # the slow per-geometry reference
        assert ref.geom_type == new.geom_type
        np.testing.assert_allclose(shapely.get_coordinates(new), shapely.get_coordinates(ref), atol=1e-9)
    # the input is not modified
    np.testing.assert_array_equal(shapely.get_coordinates(np.asarray(gdf.geometry.array)), before)
    ShapesModel.validate(out)
    assert gc.isenabled()  # the collector paused during the construction is running again


def test_paused_gc_restores_the_collector_state():
    import gc

    from tissuestack._compute import paused_gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        with paused_gc():  # nested
            assert not gc.isenabled()
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a collector disabled by the caller stays disabled
    finally:
        gc.enable()


def test_polygons_round_trip_and_maintain_positioning():
    rng = np.random.default_rng(4)
    geoms = random_polygons(rng, 50)
    other = Translation([100.0, 0.0], ("x", "y"))
    gdf = ShapesModel.parse(geoms, transformations={"global": SHEAR, "other": other})
    kept = transform(gdf, "global", maintain_positioning=True)
    for cs in ("global", "other"):
        assert_extent_close(get_extent(kept, cs), get_extent(gdf, cs))
    back = transform(kept, "other")  # intrinsic -> global -> (SHEAR^-1) -> other
    expected = other.apply(shapely.get_coordinates(np.array(geoms)), ("x", "y"))
    np.testing.assert_allclose(shapely.get_coordinates(np.asarray(back.geometry.array)), expected, atol=1e-9)


def test_circles_transform_similarity_and_anisotropic_warning():
    centres = np.array([[1.0, 2.0], [3.0, 4.0]])
    gdf = ShapesModel.parse(centres, radius=np.array([1.0, 2.0]), transformations={"global": rotation(0.5)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = transform(gdf, "global")
    np.testing.assert_allclose(out["radius"].to_numpy(), [1.0, 2.0])
    np.testing.assert_allclose(
        shapely.get_coordinates(out.geometry.values), rotation(0.5).apply(centres, ("x", "y"))
    )
    np.testing.assert_allclose(gdf["radius"].to_numpy(), [1.0, 2.0])  # input unchanged
    scaled = ShapesModel.parse(centres, radius=1.0, transformations={"global": Scale([4.0, 1.0], ("x", "y"))})
    with pytest.warns(UserWarning, match="scales x and y differently"):
        out = transform(scaled, "global")
    np.testing.assert_allclose(out["radius"].to_numpy(), [2.0, 2.0])  # sqrt(|det|) = 2


def test_transform_error_circles_singular():
    t = Affine([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0, 0, 1]], ("x", "y"), ("x", "y"))
    gdf = ShapesModel.parse(np.array([[1.0, 2.0]]), radius=1.0, transformations={"global": t})
    with pytest.raises(TransformationError, match="cannot transform circles with a singular map"):
        transform(gdf, "global")


def test_transform_error_shapes_change_axes():
    t = Affine([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], ("x", "y"), ("x", "y", "z"))
    gdf = ShapesModel.parse(np.array([[1.0, 2.0]]), radius=1.0, transformations={"global": t})
    with pytest.raises(TransformationError, match="shapes keep their axes"):
        transform(gdf, "global")


# ------------------------------------------------------------------------------------------------------------
# rasters
# ------------------------------------------------------------------------------------------------------------
def test_raster_scale_translation_is_metadata_only():
    img = Image2DModel.parse(
        np.arange(2 * 6 * 8, dtype=float).reshape(2, 6, 8),
        transformations={
            "global": Sequence([Scale([2.0, 3.0], ("x", "y")), Translation([5.0, 1.0], ("x", "y"))]),
            "other": Identity(),
        },
    )
    out = transform(img, "global")
    assert out.data is img.data  # shared, not resampled
    assert set(get_meta(out).transformations) == {"global"}
    assert_extent_close(get_extent(out, "global"), get_extent(img, "global"))
    kept = transform(img, "global", maintain_positioning=True)
    assert get_meta(kept).transformations["other"] == Identity()
    assert_extent_close(get_extent(kept, "other"), get_extent(img, "other"))


def test_raster_rotation_90_resampled_exactly():
    rng = np.random.default_rng(5)
    data = rng.uniform(0, 1, (2, 5, 7))
    rot = Affine([[0, -1, 0], [1, 0, 0], [0, 0, 1]], ("x", "y"), ("x", "y"))  # x' = -y, y' = x
    img = Image2DModel.parse(data, chunks=3, transformations={"global": rot})
    out = transform(img, "global")
    assert out.shape == (2, 7, 5)
    assert list(out.coords["c"].values) == [0, 1]
    values = out.values
    # slow reference: output pixel (row r, col j) has centre x' = -5 + j + 0.5, y' = r + 0.5 in the target;
    # its source is x = y', y = -x' -> input pixel (row = floor(y), col = floor(x))
    for r in range(7):
        for j in range(5):
            xs, ys = -5 + j + 0.5, r + 0.5
            x, y = ys, -xs
            np.testing.assert_allclose(
                values[:, r, j], data[:, int(np.floor(y)), int(np.floor(x))], atol=1e-9
            )
    assert_extent_close(get_extent(out), get_extent(img))
    (to_target,) = get_meta(out).transformations.values()
    assert to_target.equivalent(Translation([-5.0, 0.0], ("x", "y")), ("y", "x"))


def test_labels_rotation_45_nearest_and_known_pixel():
    arr = np.zeros((21, 21), dtype=np.int32)
    arr[8:13, 8:13] = 7  # a square around the centre pixel (10, 10)
    t = rotation(np.pi / 4)
    labels = Labels2DModel.parse(arr, chunks=8, transformations={"global": t})
    out = transform(labels, "global")
    assert out.dtype == np.int32
    values = out.values
    assert set(np.unique(values)) <= {0, 7}
    # the centre of the input (10.5, 10.5) lands at t(10.5, 10.5); find the output pixel containing it
    centre = t.apply([10.5, 10.5], ("x", "y"))
    (to_target,) = get_meta(out).transformations.values()
    pixel = to_target.inverse().apply(centre, ("x", "y"))  # (x, y) in output pixels
    assert values[int(pixel[1]), int(pixel[0])] == 7
    assert values[0, 0] == 0  # a corner of the bounding grid lies outside the rotated raster
    ext_out, ext_in = get_extent(out), get_extent(labels)
    for a in ("x", "y"):  # the new grid covers the exact extent (up to one pixel of rounding)
        assert ext_out[a][0] <= ext_in[a][0] + 1e-9 and ext_out[a][1] >= ext_in[a][1] - 1e-9
        assert ext_out[a][1] - ext_in[a][1] < 1.0


def test_raster_rotation_maintain_positioning_keeps_extent():
    img = Image2DModel.parse(
        np.ones((1, 10, 12)), transformations={"global": rotation(0.3), "other": Identity()}
    )
    kept = transform(img, "global", maintain_positioning=True)
    ext_new, ext_old = get_extent(kept, "other"), get_extent(img, "other")
    for a in ("x", "y"):  # the resampled grid is the rotated raster's bounding box, mapped back
        assert ext_new[a][0] <= ext_old[a][0] + 1e-9 and ext_new[a][1] >= ext_old[a][1] - 1e-9


def test_raster_3d_rotation_resampled_shape_and_value():
    data = np.ones((1, 4, 6, 6), dtype=np.float32)
    rot = Affine([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], ("x", "y", "z"), ("x", "y", "z"))
    img = Image3DModel.parse(data, transformations={"global": rot})
    out = transform(img, "global")
    assert out.shape == (1, 4, 6, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out.values[0, 1:3, 1:5, 1:5], 1.0)


def test_multiscale_raster_metadata_only_keeps_pyramid():
    img = Image2DModel.parse(
        np.ones((1, 16, 16)), scale_factors=[2], transformations={"global": Scale([2, 2], ("x", "y"))}
    )
    out = transform(img, "global")
    assert type(out) is type(img)
    assert_extent_close(get_extent(out), get_extent(img))


# ------------------------------------------------------------------------------------------------------------
# concatenate
# ------------------------------------------------------------------------------------------------------------
def make_sdata(seed: int, n_cells: int = 5, with_table: bool = True, attrs=None) -> SpatialData:
    rng = np.random.default_rng(seed)
    cells = ShapesModel.parse(rng.uniform(0, 10, (n_cells, 2)), radius=1.0, index=np.arange(n_cells))
    pts = PointsModel.parse(rng.uniform(0, 10, (20, 2)))
    tables = {}
    if with_table:
        table = ad.AnnData(
            rng.normal(size=(n_cells, 2)),
            obs=pd.DataFrame({"cell_id": np.arange(n_cells)}, index=[f"o{i}" for i in range(n_cells)]),
            var=pd.DataFrame(index=["g1", f"g{seed + 2}"]),
        )
        tables["table"] = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    return SpatialData(shapes={"cells": cells}, points={"pts": pts}, tables=tables, attrs=attrs)


def test_concatenate_dict_renames_and_merges_tables():
    a, b = make_sdata(0, attrs={"k": 1, "a": 1}), make_sdata(1, n_cells=3, attrs={"k": 2})
    out = concatenate({"s1": a, "s2": b})
    assert sorted(out.shapes) == ["cells-s1", "cells-s2"]
    assert sorted(out.points) == ["pts-s1", "pts-s2"]
    assert out.shapes["cells-s1"] is a.shapes["cells"]  # shared
    assert out.attrs == {"k": 2, "a": 1}
    table = out.tables["table"]
    assert table.n_obs == 8
    assert sorted(table.var_names) == ["g1", "g2", "g3"]  # outer join
    regions = sorted(out.get_annotated_elements("table"))
    assert regions == ["cells-s1", "cells-s2"]
    pairs = list(zip(table.obs["region"].astype(str), table.obs["cell_id"], strict=True))
    assert len(set(pairs)) == len(pairs)
    assert table.obs_names.is_unique
    # inputs untouched
    assert a.tables["table"].obs["region"].unique().tolist() == ["cells"]
    assert a.get_annotated_elements("table") == ["cells"]


def test_concatenate_list_renames_only_clashes():
    a = make_sdata(0)
    b = make_sdata(1)
    b.points["spots"] = b.points["pts"]
    del b.points["pts"]
    out = concatenate([a, b])
    assert sorted(out.shapes) == ["cells-0", "cells-1"]
    assert sorted(out.points) == ["pts", "spots"]
    assert sorted(out.get_annotated_elements("table")) == ["cells-0", "cells-1"]


def test_concatenate_error_clash_without_rename():
    with pytest.raises(ValidationError, match=r"element names \['cells', 'pts'\] occur in more than one"):
        concatenate([make_sdata(0), make_sdata(1)], rename=False)


def test_concatenate_no_clash_without_rename_keeps_names():
    a = make_sdata(0, with_table=False)
    b = SpatialData(points={"other": PointsModel.parse(np.zeros((1, 2)))})
    out = concatenate([a, b], rename=False)
    assert sorted(out) == ["cells", "other", "pts"]


def test_concatenate_tables_not_merged_are_renamed():
    out = concatenate({"a": make_sdata(0), "b": make_sdata(1)}, concatenate_tables=False)
    assert sorted(out.tables) == ["table-a", "table-b"]
    assert out.get_annotated_elements("table-a") == ["cells-a"]


def test_concatenate_error_duplicate_instances():
    """Two tables annotating the same (absent) region with the same ids cannot be merged."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tables annotate an element that is not there
        a = SpatialData(tables={"t": _orphan_region_table()})
        b = SpatialData(tables={"t": _orphan_region_table()})
        with pytest.raises(ValidationError, match=r"concatenated table 't' is invalid"):
            concatenate([a, b])


def _orphan_region_table():
    t = ad.AnnData(np.zeros((2, 1)), obs=pd.DataFrame({"cid": [1, 2]}, index=["a", "b"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TableModel.parse(t, region="gone", region_key="region", instance_key="cid")


def test_concatenate_error_different_keys():
    a = make_sdata(0)
    b = make_sdata(1)
    t = b.tables["table"]
    t.obs = t.obs.rename(columns={"cell_id": "cid"})
    TableModel.parse(t, region="cells", region_key="region", instance_key="cid")
    with pytest.raises(ValidationError, match="use different region_key/instance_key"):
        concatenate({"a": a, "b": b})
    out = concatenate({"a": a, "b": b}, region_key="region", instance_key="cell")
    assert out.tables["table"].n_obs == 10
    assert out.tables["table"].uns["spatialdata_attrs"]["instance_key"] == "cell"


def test_concatenate_error_orphan_with_annotating():
    a = make_sdata(0)
    b = SpatialData(tables={"table": ad.AnnData(np.zeros((1, 2)))})
    with pytest.raises(ValidationError, match="some annotate elements and some annotate nothing"):
        concatenate([a, b])


def test_concatenate_error_still_clashing_after_rename():
    a = make_sdata(0, with_table=False)
    b = make_sdata(1, with_table=False)
    a.points["cells-1"] = PointsModel.parse(np.zeros((1, 2)))
    with pytest.raises(ValidationError, match=r"would occur more than once in the result"):
        concatenate([a, b])


def test_concatenate_error_bad_input():
    with pytest.raises(TypeError, match="got a single SpatialData"):
        concatenate(make_sdata(0))
    with pytest.raises(TypeError, match="not a SpatialData"):
        concatenate([make_sdata(0), 3])
    with pytest.raises(ValueError, match="at least one SpatialData"):
        concatenate([])


def test_concatenate_orphan_tables_and_coordinate_systems():
    a = SpatialData(
        points={"p": PointsModel.parse(np.zeros((1, 2)), transformations={"cs1": Identity()})},
        tables={"t": ad.AnnData(np.zeros((2, 1)), obs=pd.DataFrame(index=["a", "b"]))},
    )
    b = SpatialData(
        points={
            "q": PointsModel.parse(np.zeros((1, 2)), transformations={"cs1": Identity(), "cs2": Identity()})
        },
        tables={"t": ad.AnnData(np.zeros((2, 1)), obs=pd.DataFrame(index=["a", "b"]))},
    )
    out = concatenate([a, b])
    assert sorted(out.coordinate_systems) == ["cs1", "cs2"]
    assert out.tables["t"].n_obs == 4 and out.tables["t"].obs_names.is_unique
