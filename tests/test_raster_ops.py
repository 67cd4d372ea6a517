"""Raster operations against brute force on the whole array: transform (general affines, interpolation orders,
chunk borders, 3D, pyramids), map_raster, relabel_sequential, unpad_raster and build_pyramids in a store."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage
from skimage import measure
from skimage.segmentation import relabel_sequential as sk_relabel_sequential

from tissuestack import (
    Affine,
    Identity,
    Image2DModel,
    Image3DModel,
    Labels2DModel,
    Labels3DModel,
    Scale,
    Sequence,
    SpatialData,
    Translation,
    build_pyramids,
    map_raster,
    read_zarr,
    relabel_sequential,
    transform,
    unpad_raster,
)
from tissuestack._container.inspect import validate_store
from tissuestack.elements import get_meta, get_transformation, raster_levels
from tissuestack.errors import ValidationError


def affine_2d(matrix, offset=(0.0, 0.0)) -> Affine:
    (a, b), (c, d) = matrix
    return Affine([[a, b, offset[0]], [c, d, offset[1]], [0, 0, 1]], ("x", "y"), ("x", "y"))


def rotation(deg: float, offset=(0.0, 0.0)) -> Affine:
    t = np.deg2rad(deg)
    return affine_2d([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], offset)


def same_transformations(a, b) -> bool:
    """Both elements place their pixels identically in the same coordinate systems."""
    ta, tb = get_meta(a).transformations, get_meta(b).transformations
    axes = ("x", "y", "z") if "z" in raster_levels(a)[0].dims else ("x", "y")
    return set(ta) == set(tb) and all(ta[cs].equivalent(tb[cs], axes) for cs in ta)


def brute_resample(element, out, cs: str, order: int) -> np.ndarray:
    """Expected output: every output pixel centre mapped to the input's pixel coordinates (through the target
    system) and sampled from the whole input array with scipy.ndimage.map_coordinates."""
    level = raster_levels(element)[0]
    full = np.asarray(level.values)
    spatial = [str(d) for d in level.dims if d != "c"]  # array order, e.g. (y, x) or (z, y, x)
    axes = tuple(reversed(spatial))  # (x, y[, z]) for the transformations
    out_shape = [raster_levels(out)[0].sizes[d] for d in spatial]
    grid = np.meshgrid(*[np.arange(n) + 0.5 for n in out_shape], indexing="ij")  # centres, array order
    centres = np.stack([g.ravel() for g in reversed(grid)], axis=1)  # (x, y[, z])
    in_target = get_transformation(out, cs).apply(centres, axes)
    intrinsic = get_transformation(element, cs).inverse().apply(in_target, axes)
    idx = [intrinsic[:, axes.index(d)] - 0.5 for d in spatial]  # pixel k is centred on k + 0.5
    channels = full if "c" in level.dims else full[None]
    res = []
    for ch in channels:
        src = ch.astype(np.float64) if order else ch
        v = ndimage.map_coordinates(src, idx, order=order, mode="constant", cval=0, prefilter=order > 1)
        res.append(v.reshape(out_shape))
    res = np.stack(res)
    if order and np.issubdtype(full.dtype, np.integer):
        info = np.iinfo(full.dtype)
        res = np.clip(np.rint(res), info.min, info.max)
    res = res.astype(full.dtype)
    return res if "c" in level.dims else res[0]


# ------------------------------------------------------------------------------------------------ transform
@pytest.mark.parametrize(
    ("t", "order"),
    [
        (rotation(30, (3.0, -2.0)), 1),
        (rotation(90), 1),
        (rotation(-65), 0),
        (affine_2d([[1.0, 0.37], [0.0, 1.0]], (1.3, 0.2)), 1),  # shear (no pixel centre exactly on an edge)
        (Sequence([Scale([2.0, 0.5], ("x", "y")), rotation(20)]), 1),  # anisotropic scale, then rotation
        (rotation(30, (3.0, -2.0)), 3),
        (affine_2d([[0.7, -0.3], [0.5, 1.6]]), 2),  # general affine
    ],
)
def test_transform_image_matches_brute_force_across_chunks(t, order):
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 10, (2, 37, 29))
    img = Image2DModel.parse(
        data, chunks=7, transformations={"global": t}, c_coords=["a", "b"]
    )  # many borders
    out = transform(img, "global", order=order)
    assert out.data.npartitions > 4  # lazy and chunked
    assert list(out.coords["c"].values) == ["a", "b"]
    np.testing.assert_allclose(out.values, brute_resample(img, out, "global", order), atol=1e-6)


def test_transform_one_output_chunk_reads_only_the_input_it_needs():
    read: list[tuple[int, ...]] = []

    def record(block, block_id=None):
        if isinstance(block_id, tuple):  # not dask's probing calls
            read.append(block_id)
        return block

    base = da.ones((1, 64, 64), chunks=(1, 8, 8))
    img = Image2DModel.parse(
        base.map_blocks(record, dtype=base.dtype), transformations={"global": rotation(30)}
    )
    out = transform(img, "global")
    assert read == []  # nothing computed yet
    _, ny, nx = out.data.numblocks
    assert ny * nx > 50
    centre = out.data.blocks[0, ny // 2, nx // 2].compute()
    np.testing.assert_allclose(centre, 1.0)  # inside the rotated raster
    assert 0 < len(set(read)) <= 9  # a small window of the 64 input blocks


def test_transform_spline_order_3_window_prefilter_matches_whole_array():
    # cubic prefiltering is global: a smooth image with fine structure shows any error at window borders
    y, x = np.mgrid[0:60, 0:50]
    data = (np.sin(x / 2.0) * np.cos(y / 3.0) + 0.1 * x)[None]
    img = Image2DModel.parse(data, chunks=9, transformations={"global": rotation(17)})
    out = transform(img, "global", order=3)
    np.testing.assert_allclose(out.values, brute_resample(img, out, "global", 3), atol=1e-6)


def test_transform_integer_image_linear_is_rounded_and_clipped():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (1, 25, 31)).astype(np.uint8)
    img = Image2DModel.parse(data, chunks=8, transformations={"global": rotation(45)})
    out = transform(img, "global")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.values, brute_resample(img, out, "global", 1))


def test_transform_labels_nearest_by_default_and_keep_ids():
    rng = np.random.default_rng(3)
    arr = measure.label(ndimage.gaussian_filter(rng.uniform(size=(40, 44)), 2) > 0.5).astype(np.int32)
    labels = Labels2DModel.parse(arr, chunks=11, transformations={"global": rotation(30, (5.0, 5.0))})
    out = transform(labels, "global")
    assert out.dtype == np.int32
    values = out.values
    np.testing.assert_array_equal(values, brute_resample(labels, out, "global", 0))
    assert set(np.unique(values)) <= set(np.unique(arr))
    with pytest.raises(ValidationError, match="order=0"):
        transform(labels, "global", order=1)
    # in a SpatialData, order= is for the images and labels stay nearest
    img = Image2DModel.parse(
        arr[None].astype(float), chunks=11, transformations=get_meta(labels).transformations
    )
    both = transform(SpatialData(images={"img": img}, labels={"lab": labels}), "global", order=3)
    np.testing.assert_array_equal(both["lab"].values, values)
    np.testing.assert_allclose(both["img"].values, transform(img, "global", order=3).values)
    with pytest.raises(ValidationError, match="order"):
        transform(
            Image2DModel.parse(arr[None].astype(float), transformations={"global": rotation(3)}),
            "global",
            order=7,
        )


def test_transform_position_of_a_pixel_is_kept_in_the_target():
    # a bright 3x3 square: the centre of the bright pixels of the result, in the target system, is where the
    # square's centre goes (a rotated pixel need not contain any output pixel centre, a 3x3 square does)
    data = np.zeros((1, 31, 31))
    data[0, 11:14, 19:22] = 1.0
    t = Sequence([rotation(30), Translation([100.0, -50.0], ("x", "y"))])
    img = Image2DModel.parse(data, transformations={"global": t, "other": Identity()})
    out = transform(img, "global", order=0, maintain_positioning=True)
    rows, cols = np.nonzero(out.values[0])
    assert 5 <= len(rows) <= 13  # about the square's area
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
    in_target = get_transformation(out, "global").apply(centres, ("x", "y")).mean(axis=0)
    expected = t.apply([[20.5, 12.5]], ("x", "y"))[0]
    assert np.linalg.norm(in_target - expected) < 0.5
    # maintain_positioning: the same pixels are still around (20.5, 12.5) in "other"
    back = get_transformation(out, "other").apply(centres, ("x", "y")).mean(axis=0)
    assert np.linalg.norm(back - [20.5, 12.5]) < 0.5


def test_transform_3d_rotation_about_z_and_tilt_matches_brute_force():
    rng = np.random.default_rng(4)
    data = rng.uniform(0, 1, (1, 9, 14, 12))
    c, s = np.cos(0.4), np.sin(0.4)
    m = [[c, -s, 0.2, 1.0], [s, c, 0.0, 0.0], [0.0, 0.3, 1.0, -2.0], [0, 0, 0, 1]]
    img = Image3DModel.parse(
        data, chunks=(1, 4, 5, 5), transformations={"global": Affine(m, ("x", "y", "z"), ("x", "y", "z"))}
    )
    out = transform(img, "global")
    np.testing.assert_allclose(out.values, brute_resample(img, out, "global", 1), atol=1e-9)
    lab = Labels3DModel.parse(
        (data[0] > 0.7).astype(np.uint16) * 3, chunks=5, transformations=get_meta(img).transformations
    )
    out_l = transform(lab, "global")
    np.testing.assert_array_equal(out_l.values, brute_resample(lab, out_l, "global", 0))


def test_transform_all_zero_input_stays_zero():
    img = Image2DModel.parse(
        np.zeros((1, 16, 16), np.float32), chunks=5, transformations={"global": rotation(30)}
    )
    out = transform(img, "global")
    assert out.dtype == np.float32 and not out.values.any()


def test_transform_multiscale_rebuilds_pyramid_with_same_factors():
    rng = np.random.default_rng(5)
    img = Image2DModel.parse(
        rng.uniform(size=(1, 64, 48)),
        scale_factors=[2, 2],
        chunks=16,
        transformations={"global": rotation(30)},
    )
    out = transform(img, "global")
    assert isinstance(out, xr.DataTree)
    levels = raster_levels(out)
    assert len(levels) == 3
    for a, b in itertools.pairwise(levels):
        assert b.sizes["y"] == a.sizes["y"] // 2 and b.sizes["x"] == a.sizes["x"] // 2
    np.testing.assert_allclose(levels[0].values, brute_resample(img, out, "global", 1), atol=1e-9)


# ------------------------------------------------------------------------------------------------ map_raster
def test_map_raster_overlap_equals_whole_array_filter():
    rng = np.random.default_rng(6)
    data = rng.uniform(size=(2, 50, 45)).astype(np.float32)
    t = {"global": Scale([0.5, 0.5], ("x", "y")), "aligned": rotation(10)}
    img = Image2DModel.parse(data, chunks=(2, 16, 16), transformations=t, c_coords=["dapi", "cd3"])
    out = map_raster(
        img, ndimage.gaussian_filter, func_kwargs={"sigma": (0, 1.5, 1.5), "mode": "reflect"}, depth=8
    )
    assert isinstance(out.data, da.Array) and out.data.npartitions > 4
    expected = ndimage.gaussian_filter(data, sigma=(0, 1.5, 1.5), mode="reflect")
    np.testing.assert_allclose(out.values, expected, atol=1e-5)
    assert list(out.coords["c"].values) == ["dapi", "cd3"]
    assert same_transformations(out, img)
    # without overlap the blocks differ from the whole-array filter at the chunk borders
    no_overlap = map_raster(img, ndimage.gaussian_filter, func_kwargs={"sigma": (0, 1.5, 1.5)})
    assert not np.allclose(no_overlap.values, expected, atol=1e-3)


def test_map_raster_depth_mapping_and_errors():
    img = Image2DModel.parse(np.ones((1, 20, 20)), chunks=8)
    out = map_raster(img, lambda b: b * 2, depth={"y": 2, "x": 3})
    np.testing.assert_array_equal(out.values, 2.0)
    with pytest.raises(ValidationError, match="names axes"):
        map_raster(img, lambda b: b, depth={"q": 1})
    with pytest.raises(ValidationError, match="one entry per axis"):
        map_raster(img, lambda b: b, depth=(1, 1))
    with pytest.raises(ValidationError, match="dims"):
        map_raster(img, lambda b: b[0], drop_axis=0)  # 2 dims out, dims not given
    with pytest.raises(ValidationError, match="c_coords"):
        map_raster(img, lambda b: b[0].astype(np.int32), drop_axis=0, dims=("y", "x"), c_coords=["a"])


def _threshold_label(block: np.ndarray) -> np.ndarray:
    return measure.label(block[0] > 0.5).astype(np.int32)


def test_map_raster_labels_per_block_are_unique_across_blocks():
    rng = np.random.default_rng(7)
    data = ndimage.gaussian_filter(rng.uniform(size=(1, 60, 70)), 2) * 2 - 0.5
    img = Image2DModel.parse(
        data, chunks=(1, 20, 25), transformations={"global": Scale([2.0, 2.0], ("x", "y"))}
    )
    out = map_raster(img, _threshold_label, drop_axis=0, dims=("y", "x"), dtype=np.int32)
    assert out.dims == ("y", "x") and out.dtype == np.int32
    assert same_transformations(out, img)
    values = out.values
    # brute force: label each block separately; objects must map one-to-one to the output's labels
    n_expected = 0
    seen: set[int] = set()
    for ys in range(0, 60, 20):
        for xs in range(0, 70, 25):
            block = data[0, ys : ys + 20, xs : xs + 25]
            lab = measure.label(block > 0.5)
            got = values[ys : ys + 20, xs : xs + 25]
            np.testing.assert_array_equal(got > 0, lab > 0)
            pairs = {(int(a), int(b)) for a, b in zip(lab[lab > 0], got[lab > 0], strict=True)}
            assert len(pairs) == lab.max() == len({b for _, b in pairs})  # a bijection within the block
            ids = {b for _, b in pairs}
            assert not ids & seen  # no label shared with another block
            seen |= ids
            n_expected += int(lab.max())
    assert len(seen) == n_expected > 10
    # without relabelling labels repeat across blocks
    raw = map_raster(img, _threshold_label, drop_axis=0, dims=("y", "x"), dtype=np.int32, relabel=False)
    assert len(np.unique(raw.values)) - 1 < n_expected
    # then relabel_sequential gives 1..n
    seq = relabel_sequential(out)
    assert set(np.unique(seq.values)) == set(range(n_expected + 1))


def test_map_raster_relabel_narrow_dtype_widens_and_overflow_raises():
    img = Image2DModel.parse(np.ones((1, 8, 8)), chunks=(1, 4, 4))
    out = map_raster(
        img, lambda b: np.ones(b.shape[1:], np.uint8), drop_axis=0, dims=("y", "x"), dtype=np.uint8
    )
    assert out.dtype == np.uint32
    assert sorted(np.unique(out.values)) == sorted({1 + (k << 30) for k in range(4)})
    big = map_raster(
        img, lambda b: np.full(b.shape[1:], 2**31 - 2, np.int32), drop_axis=0, dims=("y", "x"), dtype=np.int32
    )
    with pytest.raises(ValidationError, match="block"):
        big.compute()


def test_map_raster_not_blockwise_gets_whole_array():
    rng = np.random.default_rng(8)
    data = rng.uniform(size=(1, 30, 30))
    img = Image2DModel.parse(data, chunks=10)
    seen_shapes = []

    def whole(arr):
        seen_shapes.append(arr.shape)
        return measure.label(np.asarray(arr)[0] > 0.5)

    out = map_raster(img, whole, blockwise=False, dims=("y", "x"))
    assert seen_shapes == [(1, 30, 30)]
    np.testing.assert_array_equal(out.values, measure.label(data[0] > 0.5))


def test_map_raster_multiscale_uses_full_resolution_and_3d():
    rng = np.random.default_rng(9)
    data = rng.uniform(size=(1, 12, 16, 16))
    img = Image3DModel.parse(data, chunks=(1, 6, 8, 8), scale_factors=[2])
    out = map_raster(
        img, ndimage.uniform_filter, func_kwargs={"size": (1, 3, 3, 3)}, depth=1, boundary="nearest"
    )
    np.testing.assert_allclose(out.values, ndimage.uniform_filter(data, size=(1, 3, 3, 3), mode="nearest"))


# ------------------------------------------------------------------------------------------------ relabel
def test_relabel_sequential_matches_skimage_across_chunks_and_levels():
    rng = np.random.default_rng(10)
    arr = rng.choice([0, 3, 17, 1000, 2**20, 99], size=(40, 36)).astype(np.int64)
    labels = Labels2DModel.parse(
        arr, chunks=9, scale_factors=[2], transformations={"global": Scale([3, 3], ("x", "y"))}
    )
    out, mapping = relabel_sequential(labels, return_mapping=True)
    expected, fw, _ = sk_relabel_sequential(arr)
    levels = raster_levels(out)
    assert isinstance(out, xr.DataTree) and len(levels) == 2
    np.testing.assert_array_equal(levels[0].values, expected)
    np.testing.assert_array_equal(levels[1].values, fw[raster_levels(labels)[1].values])
    assert levels[0].dtype == np.int64 and levels[0].data.chunks == raster_levels(labels)[0].data.chunks
    assert mapping.to_dict() == {3: 1, 17: 2, 99: 3, 1000: 4, 2**20: 5}
    assert same_transformations(out, labels)
    # plain arrays: dask stays lazy, numpy comes back as numpy
    assert isinstance(relabel_sequential(da.from_array(arr, chunks=7)), da.Array)
    np.testing.assert_array_equal(relabel_sequential(arr), expected)


def test_relabel_sequential_empty_and_negative():
    zeros = Labels2DModel.parse(np.zeros((5, 5), np.int32))
    out, mapping = relabel_sequential(zeros, return_mapping=True)
    assert not out.values.any() and len(mapping) == 0
    with pytest.raises(ValidationError, match=">= 0"):
        relabel_sequential(np.array([[0, -2], [1, 1]]))
    with pytest.raises(ValidationError, match="image"):
        relabel_sequential(Image2DModel.parse(np.ones((1, 3, 3))))


# ------------------------------------------------------------------------------------------------ unpad
def test_unpad_raster_crops_and_keeps_positions():
    data = np.zeros((2, 30, 40))
    data[1, 7:19, 11:30] = np.arange(12 * 19).reshape(12, 19) + 1
    data[0, 20, 5] = 4  # the box spans both channels
    t = {"global": Sequence([Scale([2.0, 3.0], ("x", "y")), rotation(25)]), "px": Identity()}
    img = Image2DModel.parse(data, chunks=(2, 8, 8), transformations=t)
    out = unpad_raster(img)
    np.testing.assert_array_equal(out.values, data[:, 7:21, 5:30])
    for cs in ("global", "px"):  # pixel (row 7, col 5) of the input is pixel (0, 0) of the result
        np.testing.assert_allclose(
            get_transformation(out, cs).apply([[0.5, 0.5]], ("x", "y")),
            get_transformation(img, cs).apply([[5.5, 7.5]], ("x", "y")),
        )
    assert unpad_raster(out) is out  # nothing left to crop


def test_unpad_raster_3d_labels_fill_value_multiscale_and_all_zero():
    arr = np.full((10, 20, 24), 9, np.int32)
    arr[2:5, 4:17, 3:11] = 1
    labels = Labels3DModel.parse(arr, chunks=6, scale_factors=[2])
    out = unpad_raster(labels, fill_value=9)
    assert isinstance(out, xr.DataTree)
    np.testing.assert_array_equal(raster_levels(out)[0].values, arr[2:5, 4:17, 3:11])
    assert raster_levels(out)[1].shape == (1, 6, 4)
    shift = get_transformation(out, "global").apply([[0.0, 0.0, 0.0]], ("x", "y", "z"))
    np.testing.assert_allclose(shift, [[3.0, 4.0, 2.0]])
    with pytest.raises(ValidationError, match="every pixel"):
        unpad_raster(Labels2DModel.parse(np.zeros((4, 4), np.uint8)))
    nan_img = np.full((1, 6, 6), np.nan)
    nan_img[0, 2, 3] = 1.0
    np.testing.assert_array_equal(
        unpad_raster(Image2DModel.parse(nan_img), fill_value=np.nan).values, [[[1.0]]]
    )


# ------------------------------------------------------------------------------------------------ pyramids
@pytest.mark.parametrize("zarr_format", [3, 2])
def test_build_pyramids_in_store_in_place(tmp_path, zarr_format):
    rng = np.random.default_rng(11)
    data = rng.integers(0, 1000, (2, 64, 80)).astype(np.uint16)
    lab = measure.label(rng.uniform(size=(64, 80)) > 0.7).astype(np.int32)
    t = {"global": Scale([0.5, 0.5], ("x", "y")), "other": Translation([3.0, 4.0], ("x", "y"))}
    sdata = SpatialData(
        images={"img": Image2DModel.parse(data, chunks=32, transformations=t, c_coords=["a", "b"])},
        labels={"cells": Labels2DModel.parse(lab, chunks=32, transformations=t)},
    )
    path = tmp_path / "s.zarr"
    sdata.write(path, zarr_format=zarr_format)
    opened = read_zarr(path)
    result = build_pyramids(opened, "img", scale_factors=(2, 2))
    assert isinstance(result, xr.DataTree) and get_meta(result).source is not None  # re-opened from the store
    build_pyramids(opened, "cells", scale_factors=[{"x": 2, "y": 2}, 4])
    for sd in (opened, read_zarr(path)):  # the object and a fresh read see the new files
        img_levels = raster_levels(sd["img"])
        assert [lv.shape for lv in img_levels] == [(2, 64, 80), (2, 32, 40), (2, 16, 20)]
        np.testing.assert_array_equal(img_levels[0].values, data)
        expected1 = np.rint(data.reshape(2, 32, 2, 40, 2).mean(axis=(2, 4)) + 1e-9)  # rounded means
        assert np.abs(img_levels[1].values.astype(float) - expected1).max() <= 1
        assert list(img_levels[0].coords["c"].values) == ["a", "b"]
        lab_levels = raster_levels(sd["cells"])
        assert [lv.shape for lv in lab_levels] == [(64, 80), (32, 40), (8, 10)]
        np.testing.assert_array_equal(lab_levels[1].values, lab[1::2, 1::2])
        for name in ("img", "cells"):
            assert same_transformations(sd[name], sdata[name])
    assert validate_store(path) == []  # no temporaries left, every chunk file present
    # in memory (no store): the element is replaced in the object only
    mem = SpatialData(labels={"cells": Labels2DModel.parse(lab)})
    assert len(raster_levels(build_pyramids(mem, "cells", scale_factors=[2]))) == 2
    with pytest.raises(ValidationError, match="empty"):
        build_pyramids(mem, "cells", scale_factors=[])


def test_raster_ops_run_unchanged_on_distributed():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(12)
    data = ndimage.gaussian_filter(rng.uniform(size=(1, 40, 40)), 2) * 2 - 0.5
    img = Image2DModel.parse(data, chunks=(1, 16, 16), transformations={"global": rotation(30)})

    def run():
        labels = map_raster(img, _threshold_label, drop_axis=0, dims=("y", "x"), dtype=np.int32)
        return (
            np.asarray(transform(img, "global", order=3).data),
            np.asarray(map_raster(img, ndimage.gaussian_filter, func_kwargs={"sigma": 1}, depth=4).data),
            np.asarray(relabel_sequential(labels).data),
        )

    local = run()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        remote = run()
    for a, b in zip(local, remote, strict=True):
        assert a.any()
        np.testing.assert_array_equal(a, b)
