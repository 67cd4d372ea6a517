"""TIFF / OME-TIFF helpers: metadata, lazy chunked reads, pyramids, RGB, multi-file OME-TIFF."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tifffile
import xarray as xr

from tissuestack.elements import get_transformation, raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io._tiff import open_tiff, tiff_metadata, tiff_to_element
from tissuestack.io.fake._xenium import _ome_multifile_xml
from tissuestack.transforms import Identity, Scale

RNG = np.random.default_rng(0)
STACK = RNG.integers(0, 60000, size=(3, 70, 90), dtype=np.uint16)


def _pyramid_tiff(path, data, *, levels=2, ome=True, bigtiff=False, channel_names=None, tile=(32, 32)):
    metadata = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25} if ome else None
    if ome and channel_names:
        metadata["Channel"] = {"Name": list(channel_names)}
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as w:
        w.write(data, subifds=levels, photometric="minisblack", tile=tile, metadata=metadata)
        for k in range(1, levels + 1):
            f = 2**k
            w.write(data[:, ::f, ::f], subfiletype=1, photometric="minisblack", tile=tile, metadata=None)
    return path


def test_ome_metadata_channel_names_and_pixel_size(tmp_path):
    path = _pyramid_tiff(tmp_path / "a.ome.tif", STACK, channel_names=["DAPI", "CD3", "CD8"])
    meta = tiff_metadata(path)
    assert meta.is_ome
    assert meta.shape == (3, 70, 90) and meta.axes == "CYX" and meta.dtype == np.uint16
    assert meta.n_levels == 3
    assert meta.channel_names == ["DAPI", "CD3", "CD8"]
    assert meta.pixel_size_um == (0.25, 0.5)


def test_ome_physical_size_units_converted(tmp_path):
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        path,
        STACK[0],
        ome=True,
        metadata={
            "axes": "YX",
            "PhysicalSizeX": 500,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.001,
            "PhysicalSizeYUnit": "mm",
        },
    )
    assert tiff_metadata(path).pixel_size_um == pytest.approx((1.0, 0.5))


def test_resolution_tags_pixel_size(tmp_path):
    path = tmp_path / "res.tif"
    # 20000 pixels per centimetre -> 0.5 µm; 40000 -> 0.25 µm
    tifffile.imwrite(path, STACK[0], resolution=(20000, 40000), resolutionunit="CENTIMETER")
    meta = tiff_metadata(path)
    assert not meta.is_ome
    assert meta.pixel_size_um == pytest.approx((0.25, 0.5))
    assert meta.channel_names is None
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, STACK[0])
    assert tiff_metadata(plain).pixel_size_um is None


def test_subifd_pyramid_becomes_file_levels(tmp_path):
    path = _pyramid_tiff(tmp_path / "p.ome.tif", STACK, channel_names=["a", "b", "c"])
    for level in range(3):
        arr, axes = open_tiff(path, level=level)
        assert axes == "CYX"
        f = 2**level
        np.testing.assert_array_equal(arr.compute(), STACK[:, ::f, ::f])
    element = tiff_to_element(path)
    assert isinstance(element, xr.DataTree)
    levels = raster_levels(element)
    assert [lvl.shape for lvl in levels] == [(3, 70, 90), (3, 35, 45), (3, 18, 23)]
    np.testing.assert_array_equal(levels[2].values, STACK[:, ::4, ::4])  # the file's level, not recomputed
    assert list(levels[1].coords["c"].values) == ["a", "b", "c"]
    assert get_transformation(element, "global") == Scale([0.25, 0.5], axes=("y", "x"))


def test_tiled_compressed_reads_by_chunk(tmp_path):
    big = RNG.integers(0, 255, size=(2, 1300, 1100), dtype=np.uint8)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, big, photometric="minisblack", tile=(256, 256), compression="zlib")
    arr, axes = open_tiff(path)
    assert axes in ("QYX", "CYX", "IYX")
    assert arr.chunks[1] == (1024, 276) and arr.chunks[2] == (1024, 76)  # multiples of the 256 tiles
    np.testing.assert_array_equal(arr[:, 1000:1100, 650:1100].compute(), big[:, 1000:1100, 650:1100])
    np.testing.assert_array_equal(arr.compute(), big)


def test_contiguous_memmap_window_and_big_endian(tmp_path):
    data = RNG.integers(0, 2**15, size=(300, 200), dtype=np.int16)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, byteorder=">")
    arr, axes = open_tiff(path)
    assert axes == "YX"
    window = arr[100:120, 50:60].compute()
    assert window.dtype == np.int16 and window.dtype.isnative
    np.testing.assert_array_equal(window, data[100:120, 50:60])


def test_rgb_page_is_c_y_x(tmp_path):
    rgb = RNG.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    assert tiff_metadata(path).axes == "YXS"
    element = tiff_to_element(path)
    assert element.dims == ("c", "y", "x") and element.shape == (3, 40, 50)
    np.testing.assert_array_equal(element.values, np.moveaxis(rgb, -1, 0))
    assert get_transformation(element, "global") == Identity()


def test_stripped_planar_rgb_and_declared_dims(tmp_path):
    rgb = RNG.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    path = tmp_path / "deflate.tif"
    planar = np.moveaxis(rgb, -1, 0)
    tifffile.imwrite(
        path, planar, photometric="rgb", compression="zlib", rowsperstrip=8, planarconfig="separate"
    )
    assert tiff_metadata(path).axes == "SYX"
    np.testing.assert_array_equal(tiff_to_element(path).values, planar)
    # caller-declared dims override tifffile's axes
    element = tiff_to_element(path, dims=("c", "x", "y"), channel_names=["r", "g", "b"])
    assert list(element.coords["c"].values) == ["r", "g", "b"]
    np.testing.assert_array_equal(element.values, np.swapaxes(planar, 1, 2))
    with pytest.raises(ReaderError, match="dims"):
        tiff_to_element(path, dims=("y", "x"))


def test_bigtiff(tmp_path):
    path = _pyramid_tiff(tmp_path / "big.ome.tif", STACK, bigtiff=True, levels=1)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    element = tiff_to_element(path)
    np.testing.assert_array_equal(raster_levels(element)[0].values, STACK)
    assert len(raster_levels(element)) == 2


def _multifile_ome(folder, planes, names):
    uuids = [str(uuid.uuid4()) for _ in planes]
    files = [f"focus_{i:04d}.ome.tif" for i in range(len(planes))]
    h, w = planes[0].shape
    for i, plane in enumerate(planes):
        xml = _ome_multifile_xml(uuids[i], uuids, files, names, h, w, 0.2125)
        with tifffile.TiffWriter(folder / files[i], bigtiff=True) as wr:
            wr.write(plane, subifds=1, description=xml, metadata=None, tile=(16, 16))
            wr.write(plane[::2, ::2], subfiletype=1, metadata=None, tile=(16, 16))
    return folder / files[0]


def test_multifile_ome_first_file_yields_all_channels(tmp_path):
    planes = [RNG.integers(0, 4000, size=(64, 96), dtype=np.uint16) for _ in range(4)]
    first = _multifile_ome(tmp_path, planes, ["DAPI", "ATP1A1", "18S", "SMA"])
    meta = tiff_metadata(first)
    assert meta.shape == (4, 64, 96)
    assert meta.channel_names == ["DAPI", "ATP1A1", "18S", "SMA"]
    assert meta.pixel_size_um == pytest.approx((0.2125, 0.2125))
    element = tiff_to_element(first)
    level0 = raster_levels(element)[0]
    np.testing.assert_array_equal(level0.values, np.stack(planes))
    assert list(level0.coords["c"].values) == ["DAPI", "ATP1A1", "18S", "SMA"]


def test_labels_kind_and_scale_factors(tmp_path):
    labels = RNG.integers(0, 7, size=(64, 80), dtype=np.uint32)
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, labels, tile=(32, 32))
    element = tiff_to_element(
        path, kind="labels", scale_factors=[2, 2], pixel_size_um=0.5, coordinate_system="um"
    )
    levels = raster_levels(element)
    assert [lvl.dims for lvl in levels] == [("y", "x")] * 3
    assert [lvl.shape for lvl in levels] == [(64, 80), (32, 40), (16, 20)]
    np.testing.assert_array_equal(levels[0].values, labels)
    assert get_transformation(element, "um") == Scale([0.5, 0.5], axes=("y", "x"))
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, labels.astype(np.float32))
    with pytest.raises(ReaderError, match="integers"):
        tiff_to_element(floats, kind="labels")


def test_chunks_option_and_transformations_argument(tmp_path):
    path = _pyramid_tiff(tmp_path / "c.ome.tif", STACK, levels=1)
    element = tiff_to_element(path, chunks={"y": 20, "x": 30}, transformations=Identity())
    assert raster_levels(element)[0].data.chunks[1][0] == 20
    assert get_transformation(element, "global") == Identity()


def test_element_pickles_for_distributed(tmp_path):
    import pickle

    path = _pyramid_tiff(tmp_path / "pk.ome.tif", STACK, levels=1)
    arr, _ = open_tiff(path)
    clone = pickle.loads(pickle.dumps(arr))
    np.testing.assert_array_equal(clone.compute(), STACK)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ReaderError, match=r"missing\.tif"):
        tiff_metadata(tmp_path / "missing.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(ReaderError, match=r"bad\.tif"):
        open_tiff(bad)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, STACK[0])
    with pytest.raises(ReaderError, match="series"):
        open_tiff(good, series=3)
    with pytest.raises(ReaderError, match="level"):
        open_tiff(good, level=2)
