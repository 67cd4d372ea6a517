"""get_extent and get_centroids, checked against slow, obviously correct loops on random data."""

from __future__ import annotations

import itertools

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import shapely

from tissuestack import (
    Affine,
    Identity,
    Image2DModel,
    Image3DModel,
    Labels2DModel,
    Labels3DModel,
    PointsModel,
    Scale,
    Sequence,
    ShapesModel,
    SpatialData,
    Translation,
)
from tissuestack.errors import NoPathError, ValidationError
from tissuestack.ops._centroids import get_centroids
from tissuestack.ops._extent import get_extent


# ------------------------------------------------------------------------------------------------------------
# transformations and slow references
# ------------------------------------------------------------------------------------------------------------
def rotation(theta: float, t=(0.0, 0.0)) -> Affine:
    c, s = np.cos(theta), np.sin(theta)
    return Affine([[c, -s, t[0]], [s, c, t[1]], [0, 0, 1]], ("x", "y"), ("x", "y"))


def shear2d() -> Affine:
    return Affine([[1.3, 0.7, 4.0], [-0.4, 0.9, -2.0], [0, 0, 1]], ("x", "y"), ("x", "y"))


def affine3d() -> Affine:
    m = np.array([[0.8, -0.5, 0.3, 1.0], [0.4, 0.9, -0.2, 2.0], [0.1, 0.3, 1.1, -3.0], [0, 0, 0, 1]])
    return Affine(m, ("x", "y", "z"), ("x", "y", "z"))


TRANSFORMS_2D = {
    "identity": Identity(),
    "scale_translate": Sequence([Scale([2.0, 0.5], ("x", "y")), Translation([3.0, -1.0], ("x", "y"))]),
    "rotation": rotation(0.7, (10.0, -5.0)),
    "affine": shear2d(),
}


def slow_apply(t, point, axes):
    """One point through the transformation (the library's apply, one point at a time)."""
    return t.apply(np.asarray(point, dtype=float), axes)


def slow_extent(points_list, t, axes):
    out = np.array([slow_apply(t, p, axes) for p in points_list])
    return {a: (out[:, i].min(), out[:, i].max()) for i, a in enumerate(axes)}


def assert_extent(got, expected, rtol=1e-9, atol=1e-9):
    assert list(got) == list(expected)
    for a in expected:
        np.testing.assert_allclose(got[a], expected[a], rtol=rtol, atol=atol)


def random_polygons(rng, n):
    geoms = []
    for _ in range(n):
        k = rng.integers(3, 9)
        centre = rng.uniform(0, 100, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(0.5, 6, k)
        geoms.append(shapely.Polygon(centre + np.c_[radii * np.cos(angles), radii * np.sin(angles)]))
    # one multipolygon and one polygon with a hole
    geoms.append(shapely.MultiPolygon([shapely.box(120, 120, 125, 130), shapely.box(-20, 40, -15, 41)]))
    geoms.append(shapely.box(0, 0, 30, 30).difference(shapely.box(10, 10, 20, 20)))
    return geoms


# ------------------------------------------------------------------------------------------------------------
# extent: points
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRANSFORMS_2D))
def test_points_extent_2d_multi_partition(name):
    rng = np.random.default_rng(1)
    xy = rng.normal(50, 20, (500, 2))
    t = TRANSFORMS_2D[name]
    pts = PointsModel.parse(
        pd.DataFrame(xy, columns=["x", "y"]), npartitions=4, transformations={"global": t}
    )
    assert pts.npartitions == 4
    assert_extent(get_extent(pts), slow_extent(xy, t, ("x", "y")))


def test_points_extent_rotated_is_not_transformed_bbox():
    """Exact extent of rotated points is strictly inside the transformed intrinsic bbox (exact=False)."""
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 1, (200, 2)) * [100, 1]  # thin horizontal band
    xy = np.vstack([xy, [[0, 0], [100, 0]]])
    t = rotation(np.pi / 4)
    pts = PointsModel.parse(xy, transformations={"global": t}, npartitions=3)
    exact = get_extent(pts)
    loose = get_extent(pts, exact=False)
    assert_extent(exact, slow_extent(xy, t, ("x", "y")))
    for a in ("x", "y"):
        assert loose[a][0] <= exact[a][0] and loose[a][1] >= exact[a][1]
    assert loose["x"][0] < exact["x"][0] - 0.1


def test_points_extent_3d_affine():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-10, 10, (300, 3))
    t = affine3d()
    pts = PointsModel.parse(xyz, transformations={"global": t}, npartitions=5)
    assert_extent(get_extent(pts), slow_extent(xyz, t, ("x", "y", "z")))


def test_points_extent_has_empty_partitions():
    xy = np.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.5]])
    pts = PointsModel.parse(xy, transformations={"global": rotation(0.3)}, npartitions=3)
    empty_parts = pts[pts["x"] > 2.0]  # partitions 0 and 2 become empty
    filtered = PointsModel.parse(empty_parts, transformations={"global": rotation(0.3)})
    assert_extent(get_extent(filtered), slow_extent(xy[[1]], rotation(0.3), ("x", "y")))


def test_points_extent_stays_lazy_on_a_dask_frame():
    """The reduction runs partition by partition (the frame is a dask frame, never computed whole)."""
    pdf = pd.DataFrame({"x": np.arange(1000.0), "y": np.arange(1000.0) % 7})
    ddf = dd.from_pandas(pdf, npartitions=10)
    pts = PointsModel.parse(ddf, transformations={"global": shear2d()})
    assert_extent(get_extent(pts), slow_extent(pdf.to_numpy(), shear2d(), ("x", "y")))


# ------------------------------------------------------------------------------------------------------------
# extent: shapes
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRANSFORMS_2D))
def test_polygons_extent(name):
    rng = np.random.default_rng(4)
    geoms = random_polygons(rng, 300)
    t = TRANSFORMS_2D[name]
    gdf = ShapesModel.parse(geoms, transformations={"global": t})
    vertices = [v for g in geoms for v in shapely.get_coordinates(g)]
    assert_extent(get_extent(gdf), slow_extent(vertices, t, ("x", "y")))


@pytest.mark.parametrize("theta", np.linspace(0, 2 * np.pi, 13))
def test_polygons_extent_pruning_many_angles(theta):
    """The bounding-box pruning must never drop the extreme vertex (dense, overlapping polygons)."""
    rng = np.random.default_rng(int(theta * 100))
    geoms = random_polygons(rng, 2000)
    t = rotation(theta, (1.0, 2.0))
    gdf = ShapesModel.parse(geoms, transformations={"global": t})
    vertices = shapely.get_coordinates(np.array(geoms, dtype=object))
    assert_extent(get_extent(gdf), slow_extent(vertices, t, ("x", "y")))


def test_polygons_extent_exact_false_is_superset():
    rng = np.random.default_rng(5)
    geoms = random_polygons(rng, 100)
    gdf = ShapesModel.parse(geoms, transformations={"global": rotation(0.5)})
    exact, loose = get_extent(gdf), get_extent(gdf, exact=False)
    for a in ("x", "y"):
        assert loose[a][0] <= exact[a][0] + 1e-9 and loose[a][1] >= exact[a][1] - 1e-9


def sample_circle_boundary(centre, r, n=2000):
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.c_[centre[0] + r * np.cos(ang), centre[1] + r * np.sin(ang)]


@pytest.mark.parametrize(
    "t",
    [
        Scale([3.0, 0.5], ("x", "y")),  # anisotropic
        rotation(0.4, (2.0, 3.0)),
        shear2d(),
        Sequence([Scale([3.0, 0.5], ("x", "y")), rotation(0.9)]),
    ],
    ids=["anisotropic", "rotation", "shear", "scale_then_rotate"],
)
def test_circles_extent_exact(t):
    rng = np.random.default_rng(6)
    centres = rng.uniform(0, 50, (40, 2))
    radii = rng.uniform(0.5, 4, 40)
    gdf = ShapesModel.parse(centres, radius=radii, transformations={"global": t})
    boundary = np.vstack([sample_circle_boundary(c, r, 20_000) for c, r in zip(centres, radii, strict=True)])
    out = t.apply(boundary, ("x", "y"))
    got = get_extent(gdf)
    for i, a in enumerate(("x", "y")):
        # dense samples of the circles approach the exact extent from inside
        assert got[a][0] <= out[:, i].min() + 1e-12 and got[a][1] >= out[:, i].max() - 1e-12
        np.testing.assert_allclose(got[a], (out[:, i].min(), out[:, i].max()), atol=1e-3)
    loose = get_extent(gdf, exact=False)
    for a in ("x", "y"):
        assert loose[a][0] <= got[a][0] + 1e-9 and loose[a][1] >= got[a][1] - 1e-9


# ------------------------------------------------------------------------------------------------------------
# extent: rasters
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TRANSFORMS_2D))
def test_raster_extent_2d(name):
    t = TRANSFORMS_2D[name]
    image = Image2DModel.parse(np.zeros((2, 30, 50)), transformations={"global": t})
    labels = Labels2DModel.parse(np.zeros((30, 50), dtype=int), transformations={"global": t})
    # dense samples of the pixel-edge box [0, 50] x [0, 30], in (x, y)
    xs, ys = np.meshgrid(np.linspace(0, 50, 101), np.linspace(0, 30, 61))
    samples = np.c_[xs.ravel(), ys.ravel()]
    expected = slow_extent(samples, t, ("x", "y"))
    assert_extent(get_extent(image), expected)
    assert_extent(get_extent(labels), expected)


def test_raster_extent_3d_and_multiscale():
    t = affine3d()
    image = Image3DModel.parse(np.zeros((1, 6, 20, 30)), transformations={"global": t}, scale_factors=[2])
    labels = Labels3DModel.parse(np.zeros((6, 20, 30), dtype=np.int32), transformations={"global": t})
    corners = list(itertools.product([0, 30], [0, 20], [0, 6]))  # x, y, z
    expected = slow_extent(corners, t, ("x", "y", "z"))
    assert_extent(get_extent(image), expected)
    assert_extent(get_extent(labels), expected)


# ------------------------------------------------------------------------------------------------------------
# extent: SpatialData
# ------------------------------------------------------------------------------------------------------------
def test_spatialdata_extent_union_and_skips_other_systems():
    img = Image2DModel.parse(
        np.zeros((1, 10, 10)), transformations={"global": Translation([100, 0], ("x", "y"))}
    )
    pts = PointsModel.parse(np.array([[-5.0, 3.0], [2.0, 4.0]]), transformations={"global": Identity()})
    far = PointsModel.parse(np.array([[1e6, 1e6]]), transformations={"other": Identity()})
    vol = PointsModel.parse(np.array([[0.0, 0.0, -7.0], [1.0, 1.0, 9.0]]))
    sdata = SpatialData(images={"img": img}, points={"pts": pts, "far": far, "vol": vol})
    got = get_extent(sdata)
    assert got == {"x": (-5.0, 110.0), "y": (0.0, 10.0), "z": (-7.0, 9.0)}
    assert get_extent(sdata, elements=["pts"]) == {"x": (-5.0, 2.0), "y": (3.0, 4.0)}
    assert get_extent(sdata, "other") == {"x": (1e6, 1e6), "y": (1e6, 1e6)}


def test_extent_through_the_graph():
    """An element without a direct transformation reaches the system through another element's system."""
    a = PointsModel.parse(
        np.array([[1.0, 1.0], [2.0, 3.0]]), transformations={"aligned": Scale([2, 2], ("x", "y"))}
    )
    b = PointsModel.parse(
        np.array([[0.0, 0.0]]),
        transformations={"aligned": Identity(), "global": Translation([10, 0], ("x", "y"))},
    )
    sdata = SpatialData(points={"a": a, "b": b})
    assert get_extent("a", "global", sdata=sdata) == {"x": (12.0, 14.0), "y": (2.0, 6.0)}
    assert get_extent(a, "global", sdata=sdata) == {"x": (12.0, 14.0), "y": (2.0, 6.0)}
    assert get_extent(sdata, "global") == {"x": (10.0, 14.0), "y": (0.0, 6.0)}


def test_extent_error_no_path():
    pts = PointsModel.parse(np.array([[1.0, 1.0]]))
    with pytest.raises(NoPathError, match="no transformation to coordinate system 'nowhere'"):
        get_extent(pts, "nowhere")


def test_extent_error_empty_element():
    pts = PointsModel.parse(pd.DataFrame({"x": np.array([], float), "y": np.array([], float)}))
    with pytest.raises(ValueError, match="cannot compute the extent of an empty points element"):
        get_extent(pts)


def test_extent_error_all_selected_empty():
    empty = PointsModel.parse(pd.DataFrame({"x": np.array([], float), "y": np.array([], float)}))
    sdata = SpatialData(points={"empty": empty})
    with pytest.raises(ValueError, match="of the spatial elements, all have no data"):
        get_extent(sdata)


def test_extent_error_none_reaches():
    sdata = SpatialData(
        points={"p": PointsModel.parse(np.array([[1.0, 1.0]]), transformations={"a": Identity()})}
    )
    sdata.points["q"] = PointsModel.parse(np.array([[1.0, 1.0]]), transformations={"b": Identity()})
    with pytest.raises(ValueError, match="none reaches coordinate system 'a'"):
        get_extent(sdata, "a", elements=["q"])


def test_extent_error_unknown_element_names():
    sdata = SpatialData(points={"p": PointsModel.parse(np.array([[1.0, 1.0]]))})
    with pytest.raises(KeyError, match="unknown element"):
        get_extent(sdata, elements=["nope"])


def test_extent_error_unknown_coordinate_system():
    sdata = SpatialData(points={"p": PointsModel.parse(np.array([[1.0, 1.0]]))})
    with pytest.raises(KeyError, match="unknown coordinate system"):
        get_extent(sdata, "nope")


def test_extent_error_elements_on_an_element():
    with pytest.raises(TypeError, match="elements= selects elements of a SpatialData"):
        get_extent(PointsModel.parse(np.array([[1.0, 1.0]])), elements=["x"])


def test_extent_error_name_without_sdata():
    with pytest.raises(TypeError, match="is a name: pass sdata="):
        get_extent("cells")


def test_extent_error_table_selected():
    import anndata as ad

    sdata = SpatialData(
        points={"p": PointsModel.parse(np.array([[1.0, 1.0]]))}, tables={"t": ad.AnnData(np.zeros((1, 1)))}
    )
    with pytest.raises(ValidationError, match="are tables; tables have no extent"):
        get_extent(sdata, elements=["t"])


# ------------------------------------------------------------------------------------------------------------
# centroids: labels
# ------------------------------------------------------------------------------------------------------------
def slow_label_centroids(arr):
    """Mean pixel-centre position (x, y[, z]) of each non-zero label, one label at a time."""
    out = {}
    for value in np.unique(arr):
        if value == 0:
            continue
        idx = np.argwhere(arr == value) + 0.5  # array axes ((z,) y, x)
        out[value] = idx.mean(axis=0)[::-1]  # -> (x, y[, z])
    return out


def check_centroids(result, expected, t, axes):
    assert isinstance(result, dd.DataFrame)
    df = result.compute()
    assert sorted(df.index.tolist()) == sorted(expected)
    for value, centre in expected.items():
        np.testing.assert_allclose(
            df.loc[value, list(axes)].to_numpy(float), t.apply(centre, axes), atol=1e-9
        )


@pytest.mark.parametrize("name", ["identity", "rotation", "affine"])
def test_labels_centroids_2d_multichunk_non_contiguous(name):
    rng = np.random.default_rng(7)
    values = np.array([0, 3, 17, 1000, 123456, -4])  # non-contiguous, one negative, large
    arr = rng.choice(values, size=(37, 53)).astype(np.int64)
    t = TRANSFORMS_2D[name]
    labels = Labels2DModel.parse(arr, chunks=(10, 16), transformations={"global": t})
    assert labels.data.numblocks == (4, 4)
    result = get_centroids(labels)
    check_centroids(result, slow_label_centroids(arr), t, ("x", "y"))
    from tissuestack.elements import get_meta

    assert get_meta(result).transformations == {"global": Identity()}


def test_labels_centroids_3d_one_pass():
    rng = np.random.default_rng(8)
    arr = rng.integers(0, 6, size=(7, 12, 9)).astype(np.uint16)
    t = affine3d()
    labels = Labels3DModel.parse(arr, chunks=(3, 5, 4), transformations={"global": t})
    computed = []

    from dask.callbacks import Callback

    class Count(Callback):
        def _start(self, dsk):
            computed.append(1)

    with Count():
        result = get_centroids(labels)
    assert len(computed) == 1  # one pass over the raster
    check_centroids(result, slow_label_centroids(arr), t, ("x", "y", "z"))


def test_labels_centroids_all_background_is_empty():
    labels = Labels2DModel.parse(np.zeros((5, 5), dtype=np.uint8))
    result = get_centroids(labels)
    assert len(result.compute()) == 0
    assert list(result.columns) == ["x", "y"]


def test_labels_centroids_uint8_dense_path():
    arr = np.zeros((6, 8), dtype=np.uint8)
    arr[1:3, 2:5] = 255
    arr[4, 0] = 1
    result = get_centroids(Labels2DModel.parse(arr, chunks=3)).compute()
    np.testing.assert_allclose(result.loc[255].to_numpy(float), [3.5, 2.0])
    np.testing.assert_allclose(result.loc[1].to_numpy(float), [0.5, 4.5])


# ------------------------------------------------------------------------------------------------------------
# centroids: shapes and points
# ------------------------------------------------------------------------------------------------------------
def test_polygon_centroids_affine():
    rng = np.random.default_rng(9)
    geoms = random_polygons(rng, 50)
    t = shear2d()
    gdf = ShapesModel.parse(geoms, transformations={"global": t}, index=[f"c{i}" for i in range(len(geoms))])
    df = get_centroids(gdf).compute()
    assert df.index.tolist() == gdf.index.tolist()
    for label, g in zip(gdf.index, gdf.geometry, strict=True):  # as parsed (an invalid one is repaired)
        # slow: the centroid of the transformed polygon (centroids are affine-equivariant)
        m = t.to_affine_matrix(("x", "y"), ("x", "y"))
        moved = shapely.affinity.affine_transform(g, [m[0, 0], m[0, 1], m[1, 0], m[1, 1], m[0, 2], m[1, 2]])
        np.testing.assert_allclose(
            df.loc[label].to_numpy(float), [moved.centroid.x, moved.centroid.y], atol=1e-8
        )


def test_circle_centroids_are_centres():
    centres = np.array([[1.0, 2.0], [5.0, -3.0]])
    t = rotation(0.3, (1.0, 1.0))
    gdf = ShapesModel.parse(centres, radius=2.0, transformations={"global": t}, index=[10, 20])
    df = get_centroids(gdf).compute()
    np.testing.assert_allclose(df.loc[[10, 20]].to_numpy(float), t.apply(centres, ("x", "y")))


@pytest.mark.parametrize("categorical", [False, True])
def test_points_centroids_lazy_multi_partition(categorical):
    rng = np.random.default_rng(10)
    n = 600
    cells = rng.choice([5, 9, 40, 77], n)
    pdf = pd.DataFrame(
        {"x": rng.uniform(0, 10, n), "y": rng.uniform(0, 10, n), "z": rng.uniform(0, 3, n), "cell": cells}
    )
    if categorical:
        pdf["cell"] = pdf["cell"].astype("category")
    t = affine3d()
    pts = PointsModel.parse(pdf, instance_key="cell", npartitions=4, transformations={"global": t})
    result = get_centroids(pts)
    assert isinstance(result, dd.DataFrame)
    df = result.compute()
    for cell in (5, 9, 40, 77):
        rows = pdf[np.asarray(pdf["cell"]) == cell][["x", "y", "z"]].to_numpy()
        expected = np.mean([t.apply(r, ("x", "y", "z")) for r in rows], axis=0)
        np.testing.assert_allclose(df.loc[cell, ["x", "y", "z"]].to_numpy(float), expected, atol=1e-9)
    assert len(df) == 4


def test_centroids_through_the_graph():
    a = ShapesModel.parse(
        np.array([[1.0, 1.0]]), radius=1.0, transformations={"aligned": Scale([2, 2], ("x", "y"))}
    )
    b = ShapesModel.parse(
        np.array([[0.0, 0.0]]),
        radius=1.0,
        transformations={"aligned": Identity(), "global": Translation([10, 0], ("x", "y"))},
    )
    sdata = SpatialData(shapes={"a": a, "b": b})
    df = get_centroids("a", "global", sdata=sdata).compute()
    np.testing.assert_allclose(df.to_numpy(float), [[12.0, 2.0]])


def test_centroids_error_points_without_instance_key():
    with pytest.raises(ValidationError, match="points element has no instance_key"):
        get_centroids(PointsModel.parse(np.array([[1.0, 2.0]])))


def test_centroids_error_images():
    with pytest.raises(ValidationError, match="not for images"):
        get_centroids(Image2DModel.parse(np.zeros((1, 4, 4))))


def test_centroids_dask_backed_labels_not_loaded_eagerly():
    arr = da.from_array(np.arange(16).reshape(4, 4) % 3, chunks=2)
    df = get_centroids(Labels2DModel.parse(arr)).compute()
    assert df.index.tolist() == [1, 2]


def test_points_extent_of_a_store_comes_from_row_group_statistics(tmp_path, monkeypatch):
    from tissuestack import read_zarr
    from tissuestack.ops import _extent

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.uniform(-3, 7, 1000), "y": rng.uniform(2, 5, 1000)})
    SpatialData(points={"p": PointsModel.parse(frame)}).write(tmp_path / "s.zarr")
    sdata = read_zarr(tmp_path / "s.zarr")

    def no_compute(*args, **kwargs):
        raise AssertionError("the extent read the rows")

    monkeypatch.setattr(_extent.dask, "compute", no_compute)
    box = get_extent(sdata["p"])
    assert box["x"] == pytest.approx((frame.x.min(), frame.x.max()))
    assert box["y"] == pytest.approx((frame.y.min(), frame.y.max()))
    with pytest.raises(AssertionError, match="read the rows"):  # a derived frame has no statistics
        get_extent(sdata["p"][sdata["p"].x > 0])
