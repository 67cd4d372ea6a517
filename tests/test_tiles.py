"""ImageTilesDataset: tiles centred on regions, read lazily from an image (pyramid), with table annotations."""

from __future__ import annotations

import pickle
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely

from tissuestack import (
    Affine,
    Image2DModel,
    ImageTilesDataset,
    Labels2DModel,
    PointsModel,
    Scale,
    Sequence,
    ShapesModel,
    SpatialData,
    TableModel,
    Translation,
    ValidationError,
)
from tissuestack.elements import raster_levels

# image pixels are 2 x 2 units, the image's corner at (10, 5) in "global"
SCALE_TRANSLATE = Sequence([Scale([2.0, 2.0], ("x", "y")), Translation([10.0, 5.0], ("x", "y"))])


def _as_numpy(tile):
    return tile.numpy() if hasattr(tile, "numpy") else np.asarray(tile)


def _aligned_sdata(rng, offsets, scale_factors=None):
    """An image under SCALE_TRANSLATE and circles whose 8 x 8 tiles (16 units wide) start at pixel offsets."""
    data = rng.uniform(0, 100, (3, 60, 80)).astype(np.float32)
    image = Image2DModel.parse(
        data, transformations={"global": SCALE_TRANSLATE}, scale_factors=scale_factors, chunks=16
    )
    # an 8-pixel tile of 2-unit pixels starting at pixel (a, b) is centred on (18 + 2a, 13 + 2b)
    centres = np.array([[18.0 + 2 * a, 13.0 + 2 * b] for a, b in offsets])
    circles = ShapesModel.parse(centres, radius=1.0, transformations={"global": Translation([0, 0], ("x", "y"))})
    return SpatialData(images={"img": image}, shapes={"cells": circles}), data


def _crop(data, a, b, size=8):
    """Brute force: the zero-padded crop of ``size`` pixels starting at column a, row b."""
    out = np.zeros((data.shape[0], size, size), dtype=data.dtype)
    for i in range(size):
        for j in range(size):
            if 0 <= b + i < data.shape[1] and 0 <= a + j < data.shape[2]:
                out[:, i, j] = data[:, b + i, a + j]
    return out


@pytest.mark.parametrize("cache_bytes", [0, 1, 256 * 2**20], ids=["no_cache", "evicting", "cached"])
def test_scale_translation_tiles_equal_a_crop_with_zero_padding(cache_bytes):
    rng = np.random.default_rng(0)
    offsets = [(5, 7), (0, 0), (-3, 4), (75, 55), (70, -2), (200, 200)]  # inside, corner, edges, outside
    sdata, data = _aligned_sdata(rng, offsets)  # 16-pixel chunks: tiles span up to 4 chunks
    ds = ImageTilesDataset(
        sdata, "cells", "img", tile_size=16.0, tile_pixels=(8, 8), return_annotations=False, cache_bytes=cache_bytes
    )
    assert len(ds) == len(offsets)
    for i, (a, b) in enumerate(offsets):
        tile = _as_numpy(ds[i])
        assert tile.dtype == np.float32 and tile.shape == (3, 8, 8)
        np.testing.assert_array_equal(tile, _crop(data, a, b))
    assert not _as_numpy(ds[5]).any()  # a region off the image gives a zero tile
    edge = _as_numpy(ds[2])
    assert not edge[:, :, :3].any() and edge[:, :, 3:].all()  # 3 padded columns, the rest image
    if cache_bytes == 1:
        assert len(ds._cache._chunks) == 1  # evicted down to the last chunk read


def _bilinear_tile(data, cx, cy, size, shape):
    """Brute force: bilinear samples of ``data`` (pixel (i, j) centred on (j + 0.5, i + 0.5)) at the output pixel
    centres of a ``size``-wide tile centred on (cx, cy); taps clamped to the image, zero off the image."""
    (h, w), (c, ny, nx) = shape, data.shape
    out = np.zeros((c, h, w))
    for i in range(h):
        for j in range(w):
            x = cx - size[0] / 2 + (j + 0.5) * size[0] / w - 0.5  # pixel-index position
            y = cy - size[1] / 2 + (i + 0.5) * size[1] / h - 0.5
            if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
                continue
            qx, qy = min(max(x, 0), nx - 1), min(max(y, 0), ny - 1)
            x0, y0 = int(np.floor(qx)), int(np.floor(qy))
            x1, y1 = min(x0 + 1, nx - 1), min(y0 + 1, ny - 1)
            fx, fy = qx - x0, qy - y0
            top = (1 - fx) * data[:, y0, x0] + fx * data[:, y0, x1]
            bottom = (1 - fx) * data[:, y1, x0] + fx * data[:, y1, x1]
            out[:, i, j] = (1 - fy) * top + fy * bottom
    return out


def test_sub_pixel_tiles_are_bilinear_at_the_output_pixel_centres():
    rng = np.random.default_rng(7)
    data = rng.uniform(0, 100, (2, 30, 40)).astype(np.float32)
    image = Image2DModel.parse(data, chunks=8)
    # inside, across chunk borders, reaching past each edge, and one near a corner
    centres = np.array([[17.3, 11.8], [1.2, 15.55], [38.9, 3.1], [20.0, 29.4], [0.4, 0.7], [25.25, 14.75]])
    circles = ShapesModel.parse(centres, radius=1.0)
    sdata = SpatialData(images={"img": image}, shapes={"c": circles})
    # 7.3 x 5.1 units in 12 x 10 pixels: upsampled, output pixels off the image grid
    ds = ImageTilesDataset(sdata, "c", "img", tile_size=(7.3, 5.1), tile_pixels=(10, 12), return_annotations=False)
    for i, (cx, cy) in enumerate(centres):
        expected = _bilinear_tile(data.astype(np.float64), cx, cy, (7.3, 5.1), (10, 12))
        np.testing.assert_allclose(_as_numpy(ds[i]), expected, rtol=1e-5, atol=1e-3)
    assert not _as_numpy(ds[1])[:, :, 0].any() and _as_numpy(ds[1])[:, :, -1].all()  # left columns off the image


def test_nan_pixels_stay_where_they_are():
    rng = np.random.default_rng(8)
    offsets = [(5, 7), (20, 10)]
    sdata, data = _aligned_sdata(rng, offsets)
    data[1, 9, 8] = np.nan  # inside the first tile (rows 7-14, columns 5-12), channel 1 only
    sdata["img"] = Image2DModel.parse(data, transformations={"global": SCALE_TRANSLATE}, chunks=16)
    ds = ImageTilesDataset(sdata, "cells", "img", tile_size=16.0, tile_pixels=(8, 8), return_annotations=False)
    first = _as_numpy(ds[0])
    np.testing.assert_array_equal(first, _crop(data, 5, 7))  # NaN compares equal to NaN here
    assert np.isnan(first).sum() == 1 and np.isnan(first[1, 2, 3])
    np.testing.assert_array_equal(_as_numpy(ds[1]), _crop(data, 20, 10))


def test_pyramid_level_matching_the_output_pixels_is_read():
    rng = np.random.default_rng(1)
    offsets = [(4, 6), (10, 3)]
    sdata, _ = _aligned_sdata(rng, [(2 * a + 4, 2 * b + 4) for a, b in offsets], scale_factors=[2])
    level1 = np.asarray(raster_levels(sdata["img"])[1].data)
    # 32-unit tiles of 8 pixels: 4 units per output pixel = one level-1 pixel
    ds = ImageTilesDataset(sdata, "cells", "img", tile_size=32.0, tile_pixels=(8, 8), return_annotations=False)
    for i, (a, b) in enumerate(offsets):
        # centre (18 + 2 * (2a + 4), ...) = level-1 tile of 8 pixels starting at level-1 pixel (a, b)
        np.testing.assert_allclose(_as_numpy(ds[i]), _crop(level1, a, b), rtol=0, atol=1e-4)


def test_rotated_image_is_sampled_approximately():
    # a smooth image f(col, row); rotated by 30 degrees and shifted into "global"
    rows, cols = np.mgrid[0:120, 0:140].astype(np.float64)

    def f(col, row):
        return np.sin(col / 9.0) + np.cos(row / 7.0) + 2.0

    data = np.stack([f(cols + 0.5, rows + 0.5), 2 * f(cols + 0.5, rows + 0.5)]).astype(np.float32)
    th = np.deg2rad(30)
    m = np.array([[np.cos(th), -np.sin(th), 50.0], [np.sin(th), np.cos(th), -20.0], [0, 0, 1]])
    image = Image2DModel.parse(data, transformations={"global": Affine(m, ("x", "y"), ("x", "y"))})
    # region centres at known intrinsic positions, mapped to "global"
    intrinsic = np.array([[40.0, 50.0], [70.0, 60.0], [100.0, 30.0]])
    centres = intrinsic @ m[:2, :2].T + m[:2, 2]
    circles = ShapesModel.parse(centres, radius=3.0)
    sdata = SpatialData(images={"img": image}, shapes={"c": circles})
    ds = ImageTilesDataset(sdata, "c", "img", tile_size=20.0, tile_pixels=(16, 16), return_annotations=False)
    inv = np.linalg.inv(m)
    for i, (cx, cy) in enumerate(centres):
        xs = cx - 10 + (np.arange(16) + 0.5) * 20 / 16
        ys = cy - 10 + (np.arange(16) + 0.5) * 20 / 16
        gx, gy = np.meshgrid(xs, ys)
        u = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
        v = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
        tile = _as_numpy(ds[i])
        np.testing.assert_allclose(tile[0], f(u, v), atol=0.01)
        np.testing.assert_allclose(tile[1], 2 * f(u, v), atol=0.02)


def test_tile_scale_follows_the_region_size_and_tile_size_overrides_it():
    rng = np.random.default_rng(2)
    data = rng.uniform(0, 1, (1, 100, 100)).astype(np.float32)
    image = Image2DModel.parse(data)
    circles = ShapesModel.parse(np.array([[50.0, 50.0], [30.0, 60.0]]), radius=np.array([4.0, 10.0]))
    square = shapely.box(20, 20, 32, 26)  # 12 x 6
    polygons = ShapesModel.parse(gpd_frame([square]))
    sdata = SpatialData(images={"img": image}, shapes={"c": circles, "p": polygons})
    by_scale = ImageTilesDataset(sdata, "c", "img", tile_scale=1.5, tile_pixels=(12, 12))
    np.testing.assert_allclose(by_scale._sizes, [[12.0, 12.0], [30.0, 30.0]])
    by_size = ImageTilesDataset(sdata, "c", "img", tile_size=12.0, tile_pixels=(12, 12))
    np.testing.assert_array_equal(_as_numpy(by_scale[0][0]), _as_numpy(by_size[0][0]))
    assert not np.array_equal(_as_numpy(by_scale[1][0]), _as_numpy(by_size[1][0]))
    rect = ImageTilesDataset(sdata, "p", "img", tile_scale=2.0, tile_pixels=(4, 8))
    np.testing.assert_allclose(rect._sizes, [[24.0, 12.0]])  # wider side x 2, height by the pixel aspect
    pair = ImageTilesDataset(sdata, "p", "img", tile_size=(10.0, 4.0), tile_pixels=(4, 10))
    np.testing.assert_array_equal(_as_numpy(pair[0][0]), data[:, 21:25, 21:31])
    with pytest.raises(ValueError, match="tile_size"):
        ImageTilesDataset(sdata, "c", "img", tile_size=-1.0)


def gpd_frame(geoms):
    import geopandas as gpd

    return gpd.GeoDataFrame(geometry=geoms)


def test_labels_regions_are_centred_and_sized_by_their_pixels():
    data = np.arange(40 * 40, dtype=np.float32).reshape(1, 40, 40)
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[10:14, 20:24] = 3  # 4 x 4 block centred on (22, 12)
    labels[30:32, 2:8] = 7  # 6 wide, 2 high, centred on (5, 31)
    sdata = SpatialData(images={"img": Image2DModel.parse(data)}, labels={"seg": Labels2DModel.parse(labels)})
    ds = ImageTilesDataset(sdata, "seg", "img", tile_scale=1.0, tile_pixels=(4, 4))
    assert list(ds.instance_ids) == [3, 7]
    np.testing.assert_allclose(ds._sizes, [[4.0, 4.0], [6.0, 6.0]])
    tile, ann = ds[0]
    np.testing.assert_array_equal(_as_numpy(tile), data[:, 10:14, 20:24])
    assert ann["instance_id"] == 3


def _annotated_sdata(n=30, seed=3):
    rng = np.random.default_rng(seed)
    image = Image2DModel.parse(rng.uniform(0, 1, (2, 64, 64)).astype(np.float32))
    ids = [f"cell{i}" for i in range(n)]
    circles = ShapesModel.parse(rng.uniform(5, 60, (n, 2)), radius=2.0, index=ids)
    order = rng.permutation(n)[: n - 2]  # table rows shuffled; two regions without a row
    X = rng.poisson(3, (len(order), 4)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_id": [ids[i] for i in order],
            "area": rng.uniform(1, 9, len(order)),
            "type": pd.Categorical(rng.choice(["T", "B"], len(order))),
        },
        index=[f"r{i}" for i in range(len(order))],
    )
    table = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2", "g3"]))
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    sdata = SpatialData(images={"img": image}, shapes={"cells": circles}, tables={"table": table})
    return sdata, order, ids


def test_annotations_match_table_rows():
    sdata, order, ids = _annotated_sdata()
    table = sdata["table"]
    ds = ImageTilesDataset(sdata, "cells", "img", obs_keys=["area", "type"], genes=["g2", "g0"])
    missing = sorted(set(range(len(ids))) - set(order))
    for i in range(len(ds)):
        _, ann = ds[i]
        assert ann["instance_id"] == ids[i]
        genes = _as_numpy(ann["genes"])
        if i in missing:
            assert np.isnan(ann["area"]) and ann["type"] is None and np.isnan(genes).all()
            continue
        row = int(np.flatnonzero(order == i)[0])
        assert ann["area"] == table.obs["area"].iloc[row]
        assert ann["type"] == table.obs["type"].iloc[row]
        np.testing.assert_array_equal(genes, table.X[row, [2, 0]])
    as_dict = ImageTilesDataset(sdata, "cells", "img", obs_keys=["area"], return_dict=True)[0]
    assert set(as_dict) == {"image", "instance_id", "area"}
    with pytest.raises(ValidationError, match="no obs column 'nope'"):
        ImageTilesDataset(sdata, "cells", "img", obs_keys=["nope"])
    with pytest.raises(ValidationError, match="no var_names"):
        ImageTilesDataset(sdata, "cells", "img", genes=["g9"])


def test_transform_is_applied_to_the_tile():
    sdata, _, _ = _annotated_sdata()
    ds = ImageTilesDataset(sdata, "cells", "img", tile_pixels=(8, 8), transform=lambda t: t * 0 + 1)
    assert (_as_numpy(ds[0][0]) == 1).all()


def test_clear_errors():
    sdata, _, _ = _annotated_sdata()
    sdata["pts"] = PointsModel.parse(np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(KeyError, match="regions_element 'missing'"):
        ImageTilesDataset(sdata, "missing", "img")
    with pytest.raises(KeyError, match="image_element 'nope'"):
        ImageTilesDataset(sdata, "cells", "nope")
    with pytest.raises(ValidationError, match="regions_element 'pts' is a points element"):
        ImageTilesDataset(sdata, "pts", "img")
    with pytest.raises(ValidationError, match="regions_element 'img' is a images element"):
        ImageTilesDataset(sdata, "img", "img")
    with pytest.raises(ValidationError, match="image_element 'cells' is a shapes element"):
        ImageTilesDataset(sdata, "cells", "cells")
    with pytest.raises(TypeError, match="SpatialData object or a store path"):
        ImageTilesDataset(42, "cells", "img")  # type: ignore[arg-type]


def _store(tmp_path, n=1000, seed=4):
    rng = np.random.default_rng(seed)
    image = Image2DModel.parse(
        rng.integers(0, 255, (3, 256, 256)).astype(np.uint8), scale_factors=[2], chunks=64
    )
    circles = ShapesModel.parse(rng.uniform(0, 256, (n, 2)), radius=rng.uniform(2, 6, n))
    table = ad.AnnData(
        X=rng.poisson(2, (n, 3)).astype(np.float32),
        obs=pd.DataFrame({"cell_id": np.arange(n), "area": rng.uniform(0, 1, n)}, index=[str(i) for i in range(n)]),
    )
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    path = tmp_path / "store.zarr"
    SpatialData(images={"img": image}, shapes={"cells": circles}, tables={"table": table}).write(path)
    return path


def test_pickles_small_and_reopens_the_store(tmp_path):
    path = _store(tmp_path)
    ds = ImageTilesDataset(path, "cells", "img", obs_keys=["area"], genes=["0", "1"], tile_pixels=(16, 16))
    blob = pickle.dumps(ds)
    assert len(blob) < 1_000_000
    copy = pickle.loads(blob)
    assert copy._levels is None  # nothing opened until a tile is read
    for i in (0, 500, 999):
        np.testing.assert_array_equal(_as_numpy(copy[i][0]), _as_numpy(ds[i][0]))
        assert copy[i][1]["area"] == ds[i][1]["area"]


def test_dataloader_workers_yield_the_same_tiles(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    path = _store(tmp_path, n=60)
    ds = ImageTilesDataset(path, "cells", "img", obs_keys=["area"], genes=["0"], tile_pixels=(16, 16))
    assert isinstance(ds, torch.utils.data.Dataset)
    serial = list(DataLoader(ds, batch_size=8, num_workers=0))
    # spawned workers receive the pickled dataset (path, names, small arrays) and reopen the store
    parallel = list(DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="spawn"))
    assert len(serial) == len(parallel) == 8
    for (ta, aa), (tb, ab) in zip(serial, parallel, strict=True):
        assert ta.shape[1:] == (3, 16, 16) and ta.dtype == torch.float32
        assert torch.equal(ta, tb)
        assert torch.equal(aa["genes"], ab["genes"])
        assert torch.equal(aa["area"], ab["area"])
    assert any(t.abs().sum() > 0 for t, _ in serial)


def test_import_tissuestack_does_not_import_torch():
    code = "import sys, tissuestack; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_table_ids_stored_as_strings_match_integer_regions():
    image = Image2DModel.parse(np.ones((1, 20, 20), dtype=np.float32))
    circles = ShapesModel.parse(np.array([[5.0, 5.0], [10.0, 10.0], [15.0, 15.0]]), radius=1.0, index=[7, 3, 11])
    table = ad.AnnData(obs=pd.DataFrame({"cell": ["11", "7"], "v": [1.5, 2.5]}, index=["a", "b"]))
    TableModel.parse(table, region="s", region_key="region", instance_key="cell")
    sdata = SpatialData(images={"img": image}, shapes={"s": circles}, tables={"t": table})
    ds = ImageTilesDataset(sdata, "s", "img", obs_keys=["v"])
    assert [ds[i][1]["instance_id"] for i in range(3)] == [7, 3, 11]
    values = [ds[i][1]["v"] for i in range(3)]
    assert values[0] == 2.5 and np.isnan(values[1]) and values[2] == 1.5
    other = ad.AnnData(obs=pd.DataFrame({"cell": [1], "v": [0.0]}, index=["x"]))
    TableModel.parse(other, region="other", region_key="region", instance_key="cell")
    with pytest.warns(UserWarning, match="not elements"):
        sdata["o"] = other
    with pytest.raises(ValidationError, match="does not annotate 's'"):
        ImageTilesDataset(sdata, "s", "img", table_name="o", obs_keys=["v"])


def test_without_torch_tiles_are_numpy_arrays(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, tissuestack as ts\n"
        "img = ts.Image2DModel.parse(np.ones((2, 10, 10), dtype=np.uint8))\n"
        "c = ts.ShapesModel.parse(np.array([[5.0, 5.0]]), radius=2.0)\n"
        "ds = ts.ImageTilesDataset(ts.SpatialData(images={'img': img}, shapes={'c': c}), 'c', 'img',"
        " tile_pixels=(4, 4))\n"
        "tile, ann = ds[0]\n"
        "print(type(tile).__name__, tile.dtype, tile.shape, float(tile.sum()), type(ds).__mro__[1].__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ndarray", "float32", "(2,", "4,", "4)", "32.0", "object"]
