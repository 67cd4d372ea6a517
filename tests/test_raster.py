import dask.array as da
import numpy as np
import pytest
import xarray as xr

from tissuestack import Image2DModel, Image3DModel, Labels2DModel, Labels3DModel, ValidationError
from tissuestack.elements import get_meta, get_transformation, raster_levels
from tissuestack.transforms import Identity, Scale


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_image_from_numpy_canonical(rng):
    data = rng.random((3, 20, 30))
    img = Image2DModel.parse(data)
    assert isinstance(img, xr.DataArray)
    assert img.dims == ("c", "y", "x")
    assert isinstance(img.data, da.Array)
    assert list(img.coords["c"].values) == [0, 1, 2]
    np.testing.assert_array_equal(img.values, data)
    assert get_transformation(img) == Identity()


def test_image_any_dim_order_is_transposed(rng):
    data = rng.random((20, 30, 4))  # y, x, c
    img = Image2DModel.parse(data, dims=("y", "x", "c"), c_coords=["a", "b", "c", "d"])
    assert img.dims == ("c", "y", "x")
    assert img.shape == (4, 20, 30)
    np.testing.assert_array_equal(img.sel(c="b").values, data[:, :, 1])


def test_image_from_xarray_uses_its_dims_and_channels(rng):
    arr = xr.DataArray(rng.random((10, 3, 8)), dims=("x", "c", "y"), coords={"c": ["r", "g", "b"]})
    img = Image2DModel.parse(arr)
    assert img.dims == ("c", "y", "x")
    assert list(img.coords["c"].values) == ["r", "g", "b"]
    np.testing.assert_array_equal(img.sel(c="g").values, arr.sel(c="g").values.T)


def test_image_without_channel_axis_gets_one(rng):
    img = Image2DModel.parse(rng.random((5, 6)))
    assert img.shape == (1, 5, 6)


def test_dask_chunks_are_kept_and_numpy_gets_default_chunks(rng):
    d = da.from_array(rng.random((2, 64, 64)), chunks=(1, 16, 32))
    assert Image2DModel.parse(d).data.chunks == d.chunks
    big = Image2DModel.parse(np.zeros((2, 3000, 10), dtype=np.uint8))
    assert big.data.chunks[1][0] == 1024 and big.data.chunks[0] == (2,)
    custom = Image2DModel.parse(np.zeros((2, 100, 100)), chunks={"y": 10})
    assert custom.data.chunks[1][0] == 10 and custom.data.chunks[2] == (100,)


def test_image_3d(rng):
    data = rng.random((8, 2, 10, 12))  # z, c, y, x
    img = Image3DModel.parse(data, dims=("z", "c", "y", "x"))
    assert img.dims == ("c", "z", "y", "x")
    assert img.shape == (2, 8, 10, 12)


def test_labels_2d_3d(rng):
    lab = Labels2DModel.parse(rng.integers(0, 5, (10, 12)))
    assert lab.dims == ("y", "x")
    lab3 = Labels3DModel.parse(rng.integers(0, 5, (12, 4, 10)), dims=("x", "z", "y"))
    assert lab3.dims == ("z", "y", "x") and lab3.shape == (4, 10, 12)
    assert Labels2DModel.parse(np.zeros((3, 3), dtype=bool)).dtype == bool


def test_pyramid_mean_for_images(rng):
    data = rng.random((2, 64, 48))
    img = Image2DModel.parse(data, scale_factors=[2, {"x": 3, "y": 2}], c_coords=["a", "b"])
    assert isinstance(img, xr.DataTree)
    levels = raster_levels(img)
    assert [lvl.shape for lvl in levels] == [(2, 64, 48), (2, 32, 24), (2, 16, 8)]
    expected1 = data.reshape(2, 32, 2, 24, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(levels[1].values, expected1)
    expected2 = expected1.reshape(2, 16, 2, 8, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(levels[2].values, expected2)
    assert all(list(lvl.coords["c"].values) == ["a", "b"] for lvl in levels)
    assert isinstance(levels[2].data, da.Array)  # lazy


def test_pyramid_integer_image_keeps_dtype(rng):
    data = rng.integers(0, 1000, (1, 8, 8)).astype(np.uint16)
    img = Image2DModel.parse(data, scale_factors=[2])
    assert raster_levels(img)[1].dtype == np.uint16


def test_pyramid_nearest_for_labels_and_odd_sizes(rng):
    data = rng.integers(0, 9, (33, 17)).astype(np.int32)
    lab = Labels2DModel.parse(data, scale_factors=[2])
    lvl = raster_levels(lab)[1]
    assert lvl.shape == (16, 8)
    assert lvl.dtype == np.int32
    np.testing.assert_array_equal(lvl.values, data[1:32:2, 1:16:2])
    assert set(np.unique(lvl.values)) <= set(np.unique(data))


def test_pyramid_3d_downsamples_z(rng):
    img = Image3DModel.parse(rng.random((1, 8, 16, 16)), scale_factors=[2])
    assert raster_levels(img)[1].shape == (1, 4, 8, 8)
    img2 = Image3DModel.parse(rng.random((1, 8, 16, 16)), scale_factors=[{"y": 2, "x": 2}])
    assert raster_levels(img2)[1].shape == (1, 8, 8, 8)


def test_transformations_attached():
    t = Scale([2.0, 2.0], axes=("x", "y"))
    img = Image2DModel.parse(np.zeros((1, 4, 4)), transformations={"global": t, "other": Identity()})
    assert get_transformation(img, get_all=True) == {"global": t, "other": Identity()}
    tree = Image2DModel.parse(np.zeros((1, 4, 4)), transformations=t, scale_factors=[2])
    assert get_transformation(tree) == t


def test_metadata_survives_slicing_via_attrs():
    t = Scale([2.0, 2.0], axes=("x", "y"))
    img = Image2DModel.parse(np.zeros((1, 4, 4)), transformations=t)
    sliced = img.isel(x=slice(0, 2))
    assert get_transformation(sliced) == t
    # the derived object has its own copy: changing it does not change the original
    get_meta(sliced).transformations["new"] = Identity()
    assert "new" not in get_meta(img).transformations


def test_reparse_keeps_existing_transformations():
    t = Scale([2.0, 2.0], axes=("x", "y"))
    img = Image2DModel.parse(np.zeros((1, 4, 4)), transformations=t)
    again = Image2DModel.parse(img)
    assert get_transformation(again) == t


# ---------------------------------------------------------------------------------- invalid inputs


def test_error_wrong_ndim():
    with pytest.raises(ValidationError, match=r"image element 'img': data has 4 dimensions, expected 3"):
        Image2DModel.parse(np.zeros((1, 2, 3, 4)), name="img")


def test_error_unknown_axis():
    with pytest.raises(ValidationError, match=r"unknown axis 't' in dims"):
        Image2DModel.parse(np.zeros((2, 3, 4)), dims=("t", "y", "x"))


def test_error_repeated_axis():
    with pytest.raises(ValidationError, match=r"repeated axis"):
        Image2DModel.parse(np.zeros((2, 3, 4)), dims=("y", "y", "x"))


def test_error_dims_length():
    with pytest.raises(ValidationError, match=r"name 2 axes but the data has 3 dimensions"):
        Image2DModel.parse(np.zeros((2, 3, 4)), dims=("y", "x"))


def test_error_labels_missing_axis():
    with pytest.raises(ValidationError, match=r"labels element 'seg': missing axis 'z'"):
        Labels3DModel.parse(np.zeros((3, 4), dtype=int), dims=("y", "x"), name="seg")
    with pytest.raises(ValidationError, match=r"labels element 'seg': unknown axis 'c'"):
        Labels2DModel.parse(np.zeros((2, 3, 4), dtype=int), dims=("c", "y", "x"), name="seg")


def test_error_labels_float_dtype():
    with pytest.raises(
        ValidationError, match=r"labels element 'seg': labels must have an integer or bool dtype, got float64"
    ):
        Labels2DModel.parse(np.zeros((3, 4)), name="seg")


def test_error_image_string_dtype():
    with pytest.raises(ValidationError, match=r"images must have a numeric dtype"):
        Image2DModel.parse(np.array([[["a"]]]))


def test_error_channel_names_count_and_duplicates():
    with pytest.raises(ValidationError, match=r"c_coords has 1 names but the image has 2 channels"):
        Image2DModel.parse(np.zeros((2, 3, 3)), c_coords=["a"])
    with pytest.raises(ValidationError, match=r"channel names must be unique; repeated: \['a'\]"):
        Image2DModel.parse(np.zeros((2, 3, 3)), c_coords=["a", "a"])


def test_error_labels_with_channel_names():
    with pytest.raises(ValidationError, match=r"labels have no channel axis"):
        Labels2DModel.parse(np.zeros((3, 3), dtype=int), c_coords=["a"])


def test_error_bad_scale_factors():
    with pytest.raises(ValidationError, match=r"scale_factors\[0\] names axes \['c'\]"):
        Image2DModel.parse(np.zeros((2, 8, 8)), scale_factors=[{"c": 2}])
    with pytest.raises(ValidationError, match=r"scale_factors\[1\] .* shrinks axis 'y' of size 1"):
        Image2DModel.parse(np.zeros((1, 4, 16)), scale_factors=[4, 2])
    with pytest.raises(ValidationError, match=r"must be >= 1"):
        Image2DModel.parse(np.zeros((1, 4, 4)), scale_factors=[0])


def test_error_labels_mean_method():
    with pytest.raises(ValidationError, match=r"labels cannot be averaged"):
        Labels2DModel.parse(np.zeros((4, 4), dtype=int), scale_factors=[2], method="mean")


def test_error_unknown_method():
    with pytest.raises(ValidationError, match=r"unknown downsampling method 'cubic'"):
        Image2DModel.parse(np.zeros((1, 4, 4)), scale_factors=[2], method="cubic")


def test_error_pyramid_level_grows():
    lvl0 = xr.DataArray(da.zeros((1, 4, 4)), dims=("c", "y", "x"))
    lvl1 = xr.DataArray(da.zeros((1, 8, 4)), dims=("c", "y", "x"))
    tree = xr.DataTree.from_dict(
        {"scale0": xr.Dataset({"image": lvl0}), "scale1": xr.Dataset({"image": lvl1})}
    )
    with pytest.raises(
        ValidationError, match=r"level 1: axis 'y' is larger \(8\) than in the level above \(4\)"
    ):
        Image2DModel.parse(tree, name="img")


def test_error_not_array():
    with pytest.raises(TypeError, match=r"cannot parse a dict"):
        Image2DModel.parse({"a": 1})


def test_error_bad_chunks():
    with pytest.raises(ValidationError, match=r"chunks name unknown axes \['q'\]"):
        Image2DModel.parse(np.zeros((1, 4, 4)), chunks={"q": 2})


def test_parsing_and_writing_an_image_does_not_import_distributed(tmp_path):
    """dask asks distributed for a Client to pick a rechunk method; importing it costs ~1 s per process."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, tissuestack as ts\n"
        "img = ts.Image2DModel.parse(np.zeros((1, 300, 300), np.uint8), dims=('c', 'y', 'x'), scale_factors=[2],"
        " chunks=(1, 64, 64))\n"
        f"ts.SpatialData(images={{'im': img}}).write({str(tmp_path / 's.zarr')!r})\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
