"""Image by labels, image by shapes and labels by shapes against brute-force numpy/pandas versions."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely

import tissuestack as ts
from tissuestack.elements import Image2DModel, Image3DModel, Labels2DModel, Labels3DModel, ShapesModel
from tissuestack.ops._aggregate_pairs import PairInput
from tissuestack.ops._aggregate_raster import image_by_labels, image_by_shapes, labels_by_shapes
from tissuestack.transforms import Affine, Identity, Scale, Translation, affine_map

STATS = ["sum", "mean", "min", "max", "count", "std"]


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def raster_pair(
    values, by, transformation=None, keys=None, agg="mean", ids=None, options=None, axes=("x", "y")
):
    by_axes = ("x", "y") if isinstance(by, pd.DataFrame) else axes
    fwd = affine_map(transformation or Identity(), axes, by_axes)
    if ids is None:
        ids = pd.Index(by.index) if isinstance(by, pd.DataFrame) else pd.Index(np.unique(by.values))
    return PairInput(values, by, "img", "regions", fwd, None, keys, agg, False, ids, dict(options or {}))


def bruteforce(image, zone, ids, agg):
    """(zones x channels) statistic of ``image`` (c, ...) over pixels whose ``zone`` array equals each id."""
    out = np.empty((len(ids), image.shape[0]))
    for ch in range(image.shape[0]):
        df = pd.DataFrame({"z": zone.ravel(), "v": image[ch].ravel().astype(float)}).dropna()
        g = df.groupby("z").v.agg(["sum", "mean", "min", "max", "count", "std"]).reindex(ids)
        fill = 0.0 if agg in ("sum", "count") else np.nan
        out[:, ch] = g[agg].fillna(fill).to_numpy() if agg in ("sum", "count") else g[agg].to_numpy()
    return out


# ----------------------------------------------------------------------------------------------- image by labels
@pytest.mark.parametrize("agg", STATS)
def test_image_by_labels_statistics(rng, agg):
    lab = rng.integers(0, 9, (50, 40))
    img = rng.normal(1e5, 2.0, (2, 50, 40)).astype(np.float64)
    img[0, :3, :3] = np.nan
    image = Image2DModel.parse(img, c_coords=["dapi", "cd3"], chunks=16)
    labels = Labels2DModel.parse(lab, chunks=13)
    ids = pd.Index(np.arange(1, 9))
    res = image_by_labels(raster_pair(image, labels, agg=agg, ids=ids))
    assert res.columns == ["dapi", "cd3"]
    np.testing.assert_allclose(res.X, bruteforce(img, lab, ids, agg), rtol=1e-10)


def test_labels_without_background_keep_every_value(rng):
    lab = rng.integers(3, 7, (20, 20))  # no 0: the smallest value (3) is an instance like the others
    img = rng.integers(0, 1000, (1, 20, 20)).astype(np.uint16)
    ids = pd.Index([3, 4, 5, 6])
    res = image_by_labels(raster_pair(Image2DModel.parse(img), Labels2DModel.parse(lab), agg="sum", ids=ids))
    np.testing.assert_array_equal(res.X, bruteforce(img, lab, ids, "sum"))
    assert res.X.sum() == img.astype(np.int64).sum()
    table = ts.aggregate(Image2DModel.parse(img), Labels2DModel.parse(lab), agg_func="sum")
    assert list(table.obs_names) == ["3", "4", "5", "6"]
    np.testing.assert_array_equal(np.asarray(table.X), res.X)


def test_image_by_labels_large_ids_and_channel_selection(rng):
    big = np.array([0, 10**12 + 5, 10**12 + 9, 3 * 10**15], dtype=np.int64)
    lab = big[rng.integers(0, 4, (30, 30))]
    img = rng.random((3, 30, 30))
    image = Image2DModel.parse(img, c_coords=["a", "b", "c"], chunks=8)
    ids = pd.Index(big[1:])
    res = image_by_labels(raster_pair(image, Labels2DModel.parse(lab), keys=["c", "a"], agg="max", ids=ids))
    assert res.columns == ["c", "a"]
    np.testing.assert_allclose(res.X, bruteforce(img[[2, 0]], lab, ids, "max"))
    with pytest.raises(KeyError, match="no channel 'x'"):
        image_by_labels(raster_pair(image, Labels2DModel.parse(lab), keys=["x"], ids=ids))


def test_labels_at_a_pyramid_level_use_that_level(rng):
    img = rng.integers(0, 255, (1, 64, 48)).astype(np.uint8)
    image = Image2DModel.parse(img, scale_factors=[2, 2], chunks=16)
    lab = rng.integers(0, 5, (32, 24))
    labels = Labels2DModel.parse(lab, transformations={"global": Scale([2.0, 2.0], ("x", "y"))}, chunks=10)
    ids = pd.Index([1, 2, 3, 4])
    res = image_by_labels(raster_pair(image, labels, Scale([0.5, 0.5], ("x", "y")), agg="mean", ids=ids))
    assert res.uns["image_level"] == 1
    level1 = ts.elements.raster_levels(image)[1].values
    np.testing.assert_allclose(res.X, bruteforce(level1, lab, ids, "mean"))
    # the same through the front end (both elements in "global")
    table = ts.aggregate(image, labels, agg_func="mean")
    np.testing.assert_allclose(np.asarray(table.X), res.X)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_labels_on_another_grid_are_sampled_at_pixel_centres(rng, factor):
    img = rng.random((1, 40, 36))
    image = Image2DModel.parse(img, chunks=16)  # single scale: no level matches
    shape = (20, 18) if factor == 2.0 else (80, 72)
    lab = rng.integers(0, 6, shape)
    labels = Labels2DModel.parse(lab, chunks=7)
    ids = pd.Index([1, 2, 3, 4, 5])
    res = image_by_labels(raster_pair(image, labels, Scale([1 / factor] * 2, ("x", "y")), agg="sum", ids=ids))
    under = np.repeat(np.repeat(lab, 2, 0), 2, 1) if factor == 2.0 else lab[1::2, 1::2]
    np.testing.assert_allclose(res.X, bruteforce(img, under, ids, "sum"))


def test_labels_shifted_and_smaller_than_image(rng):
    img = rng.random((1, 30, 30))
    lab = rng.integers(0, 4, (12, 40))  # shifted by (5, 7): overlaps rows 5..16, columns 7..29 of the image
    to_labels = Translation([-7.0, -5.0], ("x", "y"))
    ids = pd.Index([1, 2, 3])
    image, labels = Image2DModel.parse(img, chunks=9), Labels2DModel.parse(lab, chunks=5)
    res = image_by_labels(raster_pair(image, labels, to_labels, agg="mean", ids=ids))
    zone = np.full((30, 30), -1)
    zone[5:17, 7:30] = lab[:, :23]
    np.testing.assert_allclose(res.X, bruteforce(img, zone, ids, "mean"))


def test_image_by_labels_3d(rng):
    lab = rng.integers(0, 5, (6, 20, 16))
    img = rng.random((2, 6, 20, 16))
    image = Image3DModel.parse(img, chunks={"z": 4, "y": 8, "x": 8})
    labels = Labels3DModel.parse(lab, chunks={"z": 3, "y": 7, "x": 16})
    ids = pd.Index([1, 2, 3, 4])
    res = image_by_labels(raster_pair(image, labels, agg="std", ids=ids, axes=("x", "y", "z")))
    np.testing.assert_allclose(res.X, bruteforce(img, lab, ids, "std"), rtol=1e-10)


def test_image_by_labels_rejects_rotation_and_fractions(rng):
    image = Image2DModel.parse(rng.random((1, 10, 10)))
    labels = Labels2DModel.parse(rng.integers(0, 3, (10, 10)))
    rot = Affine(np.array([[0.0, -1.0, 10.0], [1.0, 0.0, 0.0], [0, 0, 1]]), ("x", "y"), ("x", "y"))
    with pytest.raises(ValueError, match="axis-aligned"):
        image_by_labels(raster_pair(image, labels, rot))
    inp = raster_pair(image, labels)
    with pytest.raises(ValueError, match="fractions"):
        image_by_labels(PairInput(**{**inp.__dict__, "fractions": True}))


# ----------------------------------------------------------------------------------------------- image by shapes
def centre_masks(shapes, height, width, pixel):
    """Masks of pixel centres (in microns: (j + 0.5) * pixel) inside each shape (shapely; distance for circles)."""
    yy, xx = (np.mgrid[0:height, 0:width] + 0.5) * pixel
    g = np.asarray(shapes.geometry.array)
    if "radius" in shapes.columns:
        d2 = (xx[None] - shapely.get_x(g)[:, None, None]) ** 2 + (
            yy[None] - shapely.get_y(g)[:, None, None]
        ) ** 2
        return d2 <= (shapes["radius"].to_numpy() ** 2)[:, None, None]
    return np.array([shapely.contains_xy(p, xx, yy) for p in g])


def polygons(rng, n=15, extent=50.0):
    return ShapesModel.parse(
        [shapely.Polygon(rng.uniform(0, extent, (7, 2))).convex_hull for _ in range(n - 1)]
        + [shapely.Polygon([(0, 0), (30, 0), (30, 30), (0, 30)], [[(5, 5), (5, 20), (20, 20), (20, 5)]])]
    )


@pytest.mark.parametrize("kind", ["polygons", "circles"])
@pytest.mark.parametrize("agg", ["sum", "mean", "std", "min"])
def test_image_by_shapes(rng, kind, agg):
    h, w, pixel = 90, 110, 0.5
    img = rng.normal(100, 10, (2, h, w))
    image = Image2DModel.parse(img, chunks=32, transformations={"global": Scale([pixel, pixel], ("x", "y"))})
    if kind == "polygons":
        shapes = polygons(rng)
    else:
        shapes = ShapesModel.parse(
            pd.DataFrame(
                {"x": rng.uniform(0, 55, 20), "y": rng.uniform(0, 45, 20), "radius": rng.uniform(0.3, 9, 20)}
            )
        )
    res = image_by_shapes(raster_pair(image, shapes, Scale([pixel, pixel], ("x", "y")), agg=agg))
    masks = centre_masks(shapes, h, w, pixel)
    expected = np.full((len(shapes), 2), 0.0 if agg == "sum" else np.nan)
    fn = {"sum": np.sum, "mean": np.mean, "min": np.min, "std": lambda a: np.std(a, ddof=1)}[agg]
    for k, m in enumerate(masks):
        if m.sum() > (1 if agg == "std" else 0):
            expected[k] = [fn(img[c][m]) for c in range(2)]
    np.testing.assert_allclose(res.X, expected, rtol=1e-9)
    assert np.isfinite(res.X).sum() > 10


def test_image_by_shapes_3d_prisms_and_front_end(rng):
    img = rng.random((1, 4, 30, 30))
    image = Image3DModel.parse(img, chunks={"z": 2, "y": 16, "x": 16})
    shapes = polygons(rng, 6, 30.0)
    fwd = affine_map(Identity(), ("x", "y", "z"), ("x", "y"))
    inp = PairInput(image, shapes, "img", "shapes", fwd, None, None, "sum", False, pd.Index(shapes.index))
    res = image_by_shapes(inp)
    masks = centre_masks(shapes, 30, 30, 1.0)
    np.testing.assert_allclose(res.X[:, 0], [img[0][:, m].sum() for m in masks])
    # 2D through the front end, with the image placed by a scale
    img2 = rng.random((1, 60, 60))
    image2 = Image2DModel.parse(img2, chunks=25, transformations={"global": Scale([0.5, 0.5], ("x", "y"))})
    table = ts.aggregate(image2, shapes, agg_func="mean")
    masks2 = centre_masks(shapes, 60, 60, 0.5)
    np.testing.assert_allclose(
        np.asarray(table.X)[:, 0], [img2[0][m].mean() if m.any() else np.nan for m in masks2]
    )


def test_image_by_shapes_reads_only_blocks_with_shapes(rng):
    calls = []

    def block(x, block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return x

    data = da.from_array(rng.random((1, 100, 100)), chunks=(1, 25, 25)).map_blocks(block, dtype=float)
    image = Image2DModel.parse(data)
    shapes = ShapesModel.parse([shapely.box(2, 2, 20, 20), shapely.box(60, 60, 70, 80)])
    res = image_by_shapes(raster_pair(image, shapes, agg="count"))
    np.testing.assert_array_equal(res.X[:, 0], [18 * 18, 10 * 20])
    assert set(calls) == {(0, 0, 0), (0, 2, 2), (0, 3, 2)}  # the other 13 blocks are never read


# ----------------------------------------------------------------------------------------------- labels by shapes
def test_labels_by_shapes_areas(rng):
    lab = rng.integers(0, 6, (80, 70))
    pixel = 0.5
    labels = Labels2DModel.parse(
        lab, chunks=30, transformations={"global": Scale([pixel, pixel], ("x", "y"))}
    )
    shapes = polygons(rng, 8, 35.0)
    res = labels_by_shapes(raster_pair(labels, shapes, Scale([pixel, pixel], ("x", "y")), agg="sum"))
    assert sp.issparse(res.X) and res.columns == ["1", "2", "3", "4", "5"]
    masks = centre_masks(shapes, 80, 70, pixel)
    expected = np.array([[(lab[m] == v).sum() * pixel**2 for v in range(1, 6)] for m in masks])
    np.testing.assert_allclose(res.X.toarray(), expected)
    counts = labels_by_shapes(
        raster_pair(labels, shapes, Scale([pixel, pixel], ("x", "y")), keys=["5", "2"], agg="count")
    )
    assert counts.columns == ["5", "2"]
    np.testing.assert_array_equal(counts.X.toarray(), expected[:, [4, 1]] / pixel**2)
    table = ts.aggregate(labels, shapes, agg_func="sum")
    np.testing.assert_allclose(table.X.toarray(), expected)
    with pytest.raises(ValueError, match="agg_func"):
        labels_by_shapes(raster_pair(labels, shapes, agg="mean"))


def test_image_by_shapes_at_a_pyramid_level(rng):
    img = rng.random((1, 64, 64))
    image = Image2DModel.parse(img, scale_factors=[2], chunks=16)
    shapes = polygons(rng, 5, 64.0)
    res = image_by_shapes(raster_pair(image, shapes, agg="sum", options={"level": 1}))
    assert res.uns["image_level"] == 1
    level1 = ts.elements.raster_levels(image)[1].values
    masks = centre_masks(shapes, 32, 32, 2.0)  # level-1 pixels are 2 x 2 level-0 pixels
    np.testing.assert_allclose(res.X[:, 0], [level1[0][m].sum() for m in masks])
    with pytest.raises(ValueError, match="level"):
        image_by_shapes(raster_pair(image, shapes, options={"level": 2}))
