"""rasterize and rasterize_bins against brute force (numpy loops, shapely on pixel centres)."""

from __future__ import annotations

import anndata as ad
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely

import tissuestack as ts
from tissuestack import (
    Affine,
    Image2DModel,
    Labels2DModel,
    PointsModel,
    Scale,
    ShapesModel,
    SpatialData,
    TableModel,
    Translation,
    compose,
    get_transformation,
)

MAP = "label_index_to_category"


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _rotation(deg: float, scale: float = 1.0, shift=(0.0, 0.0)) -> Affine:
    a = np.deg2rad(deg)
    m = np.array(
        [
            [scale * np.cos(a), -scale * np.sin(a), shift[0]],
            [scale * np.sin(a), scale * np.cos(a), shift[1]],
            [0, 0, 1],
        ]
    )
    return Affine(m, ("x", "y"), ("x", "y"))


def _centres(lo, hi, shape):
    """Target coordinates of the pixel centres of the grid ``shape`` = (h, w) over [lo, hi]."""
    h, w = shape
    sx, sy = (hi[0] - lo[0]) / w, (hi[1] - lo[1]) / h
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return lo[0] + (xx + 0.5) * sx, lo[1] + (yy + 0.5) * sy


def _to_intrinsic(t, x, y):
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    inv = np.linalg.inv(m)
    return inv[0, 0] * x + inv[0, 1] * y + inv[0, 2], inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]


def _stars(rng, n, extent=40.0):
    """Random concave polygons (some multipolygons) with generic coordinates."""
    geoms = []
    for i in range(n):
        cx, cy = rng.uniform(3, extent - 3, 2)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
        r = np.where(np.arange(9) % 2 == 0, rng.uniform(2, 4), rng.uniform(0.7, 1.5))
        poly = shapely.Polygon(np.column_stack([cx + r * np.cos(ang), cy + r * np.sin(ang)]))
        if i % 5 == 0:
            geoms.append(shapely.MultiPolygon([poly, shapely.box(cx + 4.1, cy + 0.3, cx + 6.3, cy + 2.2)]))
        else:
            geoms.append(poly)
    return np.array(geoms, dtype=object)


def _first_wins(geoms, values, inside):
    """Brute force: value of the first geometry (row order) whose ``inside(geom)`` mask holds, 0 elsewhere."""
    out = None
    for g, v in zip(geoms, values, strict=True):
        mask = inside(g)
        if out is None:
            out = np.zeros(mask.shape, dtype=np.float64)
            seen = np.zeros(mask.shape, dtype=bool)
        out[mask & ~seen] = v
        seen |= mask
    return out


# ============================================================================================ shapes
@pytest.mark.parametrize("transformation", [None, "rotated"])
def test_polygons_string_ids_match_shapely(rng, transformation):
    geoms = _stars(rng, 40)
    ids = [f"cell_{i:03d}" for i in rng.permutation(40)]
    t = _rotation(23.0, 1.3, (5.0, -2.0)) if transformation else ts.Identity()
    shapes = ShapesModel.parse(geoms, index=ids, transformations={"global": t})
    lo, hi = np.array([-3.0, -1.5]), np.array([52.0, 47.0])
    out = ts.rasterize(shapes, ("x", "y"), lo, hi, "global", target_unit_to_pixels=1.7)
    assert out.dims == ("c", "y", "x")
    arr = np.asarray(out.data.compute())[0]
    mapping = out.attrs[MAP]
    assert sorted(mapping.values()) == sorted(ids)
    x, y = _centres(lo, hi, arr.shape)
    u, v = _to_intrinsic(t, x, y)
    inv = {name: k for k, name in mapping.items()}
    expected = _first_wins(geoms, [inv[i] for i in ids], lambda g: shapely.contains_xy(g, u, v))
    assert arr.any()
    np.testing.assert_array_equal(arr, expected)
    # the transformation places pixel centres at the grid centres
    m = get_transformation(out, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(m @ [0.5, 0.5, 1], [x[0, 0], y[0, 0], 1])
    np.testing.assert_allclose(m @ [arr.shape[1] - 0.5, arr.shape[0] - 0.5, 1], [x[-1, -1], y[-1, -1], 1])


def test_polygons_integer_ids_kept_as_labels(rng):
    geoms = _stars(rng, 15)
    ids = rng.choice(np.arange(100, 100_000), 15, replace=False)
    shapes = ShapesModel.parse(geoms, index=ids)
    out = ts.rasterize(
        shapes, ("y", "x"), [0, 0], [40, 40], "global", target_height=64, return_regions_as_labels=True
    )
    assert out.dims == ("y", "x") and np.issubdtype(out.dtype, np.integer)
    assert MAP not in out.attrs
    arr = np.asarray(out.data.compute())
    x, y = _centres([0, 0], [40, 40], arr.shape)
    expected = _first_wins(geoms, ids, lambda g: shapely.contains_xy(g, x, y))
    np.testing.assert_array_equal(arr, expected)
    assert set(np.unique(arr)) - {0} <= set(ids.tolist())


def test_zero_id_is_remapped(rng):
    geoms = [shapely.box(1, 1, 4, 4), shapely.box(5, 5, 8, 9)]
    out = ts.rasterize(
        ShapesModel.parse(geoms, index=[0, 1]), ("x", "y"), [0, 0], [10, 10], "global", target_width=10
    )
    arr = np.asarray(out.data.compute())[0]
    assert out.attrs[MAP] == {1: 0, 2: 1}
    assert (arr[1:4, 1:4] == 1).all() and (arr[5:9, 5:8] == 2).all() and arr.sum() == 9 + 2 * 12


def test_circles_rotated_and_anisotropic(rng):
    n = 25
    c = rng.uniform(2, 28, (n, 2))
    r = rng.uniform(0.8, 3.0, n)
    t = compose(Scale([1.0, 1.6], ("x", "y")), _rotation(31.0, 1.0, (3.0, 1.0)))
    shapes = ShapesModel.parse(c, geometry=0, radius=r, transformations={"global": t})
    lo, hi = np.array([-30.0, -5.0]), np.array([40.0, 60.0])
    out = ts.rasterize(shapes, ("x", "y"), lo, hi, "global", target_unit_to_pixels=2.0)
    arr = np.asarray(out.data.compute())[0]
    x, y = _centres(lo, hi, arr.shape)
    u, v = _to_intrinsic(t, x, y)
    values = np.arange(n) + 1  # integer RangeIndex 0..n-1 holds 0: numbered 1..n in row order
    expected = np.zeros(arr.shape)
    for k in range(n)[::-1]:
        expected[(u - c[k, 0]) ** 2 + (v - c[k, 1]) ** 2 <= r[k] ** 2] = values[k]
    np.testing.assert_array_equal(arr, expected)
    assert arr.any()


def test_shapes_numeric_column_sum_and_max(rng):
    geoms = _stars(rng, 30, extent=20)
    val = rng.uniform(1, 10, 30).round(2)
    shapes = ShapesModel.parse(geoms)
    shapes["v"] = val
    x, y = _centres([0, 0], [20, 20], (50, 50))
    masks = [shapely.contains_xy(g, x, y) for g in geoms]
    for func, expected in [
        ("sum", sum(m * v for m, v in zip(masks, val, strict=True))),
        ("count", sum(m.astype(int) for m in masks)),
        ("max", np.max([np.where(m, v, 0) for m, v in zip(masks, val, strict=True)], axis=0)),
    ]:
        kwargs = {} if func == "sum" else {"agg_func": func}
        out = ts.rasterize(
            shapes, ("x", "y"), [0, 0], [20, 20], "global", target_width=50, value_key="v", **kwargs
        )
        np.testing.assert_allclose(np.asarray(out.data.compute())[0], expected)
        assert list(out.coords["c"].values) == ["v"]


def test_shapes_categorical_codes_and_counts(rng):
    geoms = _stars(rng, 30, extent=20)
    kinds = rng.choice(["B", "T", "myeloid"], 30)
    shapes = ShapesModel.parse(geoms)
    shapes["kind"] = pd.Categorical(kinds)
    x, y = _centres([0, 0], [20, 20], (40, 40))
    out = ts.rasterize(shapes, ("x", "y"), [0, 0], [20, 20], "global", target_width=40, value_key="kind")
    mapping = out.attrs[MAP]
    assert mapping == {1: "B", 2: "T", 3: "myeloid"}
    inv = {v: k for k, v in mapping.items()}
    expected = _first_wins(geoms, [inv[k] for k in kinds], lambda g: shapely.contains_xy(g, x, y))
    np.testing.assert_array_equal(np.asarray(out.data.compute())[0], expected)
    counts = ts.rasterize(
        shapes, ("x", "y"), [0, 0], [20, 20], "global", target_width=40, value_key="kind", agg_func="count"
    )
    assert list(counts.coords["c"].values) == ["B", "T", "myeloid"]
    arr = np.asarray(counts.data.compute())
    for ci, cat in enumerate(["B", "T", "myeloid"]):
        exp = sum(
            shapely.contains_xy(g, x, y).astype(int) for g, k in zip(geoms, kinds, strict=True) if k == cat
        )
        np.testing.assert_array_equal(arr[ci], exp)


def test_shapes_values_from_table(rng):
    geoms = _stars(rng, 12, extent=20)
    ids = [f"c{i}" for i in range(12)]
    shapes = ShapesModel.parse(geoms, index=ids)
    # the table covers 10 of the shapes, in another order
    rows = rng.permutation(12)[:10]
    obs = pd.DataFrame({"region": "cells", "cell_id": [ids[i] for i in rows], "score": rows * 1.5 + 1})
    X = sp.csr_matrix(rng.integers(0, 5, (10, 3)).astype(np.float32))
    table = TableModel.parse(
        ad.AnnData(
            X=X, obs=obs.set_axis([str(i) for i in range(10)]), var=pd.DataFrame(index=["g0", "g1", "g2"])
        ),
        region="cells",
        region_key="region",
        instance_key="cell_id",
    )
    sdata = SpatialData(shapes={"cells": shapes}, tables={"table": table})
    x, y = _centres([0, 0], [20, 20], (30, 30))
    for key, per_row in [("score", rows * 1.5 + 1), ("g1", np.asarray(X[:, 1].todense()).ravel())]:
        out = ts.rasterize(
            "cells", ("x", "y"), [0, 0], [20, 20], "global", target_width=30, value_key=key,
            table_name="table", agg_func="first", sdata=sdata,
        )  # fmt: skip
        value = np.full(12, np.nan)
        value[rows] = per_row
        expected = _first_wins(
            [g for g, v in zip(geoms, value, strict=True) if not np.isnan(v)],
            value[~np.isnan(value)],
            lambda g: shapely.contains_xy(g, x, y),
        )
        np.testing.assert_allclose(np.asarray(out.data.compute())[0], expected)


def test_empty_region_gives_zeros(rng):
    shapes = ShapesModel.parse(_stars(rng, 5, extent=20))
    out = ts.rasterize(shapes, ("x", "y"), [100, 100], [120, 110], "global", target_unit_to_pixels=1)
    assert out.shape == (1, 10, 20)
    assert not np.asarray(out.data.compute()).any()
    pts = PointsModel.parse(pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0]}))
    out = ts.rasterize(pts, ("x", "y"), [100, 100], [120, 110], "global", target_unit_to_pixels=1)
    assert not np.asarray(out.data.compute()).any()


# ============================================================================================ points
def _points(rng, n=3000, parts=3):
    df = pd.DataFrame(
        {
            "x": rng.uniform(-2, 22, n),
            "y": rng.uniform(-2, 17, n),
            "gene": pd.Categorical(rng.choice(["a", "b", "c", "d"], n)),
            "q": rng.uniform(0, 5, n),
        }
    )
    return df, PointsModel.parse(dd.from_pandas(df, npartitions=parts), feature_key="gene")


def _bin(df, lo, size, shape, t=None):
    x, y = df.x.to_numpy(), df.y.to_numpy()
    if t is not None:
        m = t.to_affine_matrix(("x", "y"), ("x", "y"))
        x, y = m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
    j = np.floor((x - lo[0]) / size[0]).astype(int)
    i = np.floor((y - lo[1]) / size[1]).astype(int)
    ok = (j >= 0) & (j < shape[1]) & (i >= 0) & (i < shape[0])
    return i, j, ok


def test_points_counts_rotated(rng):
    df, pts = _points(rng)
    t = _rotation(-17.0, 0.8, (4.0, 3.0))
    ts.set_transformation(pts, t, "global")
    lo, hi = [0.0, 0.0], [20.0, 15.0]
    out = ts.rasterize(pts, ("x", "y"), lo, hi, "global", target_width=40)
    arr = np.asarray(out.data.compute())
    assert arr.shape == (1, 30, 40)
    i, j, ok = _bin(df, lo, (0.5, 0.5), (30, 40), t)
    expected = np.zeros((30, 40), dtype=int)
    for a, b in zip(i[ok], j[ok], strict=True):
        expected[a, b] += 1
    np.testing.assert_array_equal(arr[0], expected)


def test_points_categorical_channels_and_numeric(rng):
    df, pts = _points(rng)
    lo, hi = [0.0, 0.0], [20.0, 15.0]
    out = ts.rasterize(pts, ("x", "y"), lo, hi, "global", target_unit_to_pixels=1, value_key="gene")
    assert list(out.coords["c"].values) == ["a", "b", "c", "d"]
    arr = np.asarray(out.data.compute())
    i, j, ok = _bin(df, lo, (1, 1), (15, 20))
    for ci, g in enumerate("abcd"):
        exp = np.zeros((15, 20), dtype=int)
        sel = ok & (df.gene.to_numpy() == g)
        np.add.at(exp, (i[sel], j[sel]), 1)
        np.testing.assert_array_equal(arr[ci], exp)
    frame = pd.DataFrame({"i": i[ok], "j": j[ok], "q": df.q.to_numpy()[ok]})
    for func in ("sum", "mean", "max", "min"):
        got = np.asarray(
            ts.rasterize(pts, ("x", "y"), lo, hi, "global", target_unit_to_pixels=1, value_key="q", agg_func=func)
            .data.compute()
        )[0]  # fmt: skip
        exp = np.zeros((15, 20))
        g = frame.groupby(["i", "j"]).q.agg(func)
        exp[g.index.get_level_values(0), g.index.get_level_values(1)] = g.to_numpy()
        np.testing.assert_allclose(got, exp)


def test_points_string_column_and_3d(rng):
    df = pd.DataFrame(
        {"x": rng.uniform(0, 4, 500), "y": rng.uniform(0, 4, 500), "z": rng.uniform(0, 2, 500),
         "name": rng.choice(["u", "v"], 500)}
    )  # fmt: skip
    pts = PointsModel.parse(dd.from_pandas(df, npartitions=2))
    out = ts.rasterize(pts, ("x", "y", "z"), [0, 0, 0], [4, 4, 2], "global", target_depth=4, value_key="name")
    assert out.dims == ("c", "z", "y", "x") and out.shape == (2, 4, 8, 8)
    arr = np.asarray(out.data.compute())
    exp = np.zeros((2, 4, 8, 8), dtype=int)
    k = (df.name == "v").to_numpy().astype(int)
    np.add.at(exp, (k, (df.z * 2).astype(int), (df.y * 2).astype(int), (df.x * 2).astype(int)), 1)
    np.testing.assert_array_equal(arr, exp)


# ============================================================================================ rasters
def _nearest_bruteforce(level, t_level, lo, hi, shape):
    """Brute force: value under each pixel centre of the grid, ``t_level`` maps level pixels to the target."""
    x, y = _centres(lo, hi, shape)
    u, v = _to_intrinsic(t_level, x, y)
    j, i = np.floor(u).astype(int), np.floor(v).astype(int)
    out = np.zeros(shape, dtype=level.dtype)
    ok = (i >= 0) & (i < level.shape[0]) & (j >= 0) & (j < level.shape[1])
    out[ok] = level[i[ok], j[ok]]
    return out


def _bilinear_bruteforce(level, t_level, lo, hi, shape):
    x, y = _centres(lo, hi, shape)
    u, v = _to_intrinsic(t_level, x, y)
    h, w = level.shape
    out = np.zeros(shape)
    for idx in np.ndindex(*shape):
        uu, vv = u[idx], v[idx]
        if not (0 <= uu < w and 0 <= vv < h):
            continue
        a, b = min(max(uu - 0.5, 0), w - 1), min(max(vv - 0.5, 0), h - 1)
        j0, i0 = int(np.floor(a)), int(np.floor(b))
        j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
        fa, fb = a - j0, b - i0
        out[idx] = (
            level[i0, j0] * (1 - fa) * (1 - fb) + level[i0, j1] * fa * (1 - fb)
            + level[i1, j0] * (1 - fa) * fb + level[i1, j1] * fa * fb
        )  # fmt: skip
    return out


@pytest.mark.parametrize("deg", [0.0, 37.0])
def test_labels_nearest_rotated(rng, deg):
    lab = rng.integers(0, 50, (37, 53)).astype(np.int32)
    t = _rotation(deg, 0.7, (10.0, -4.0))
    labels = Labels2DModel.parse(lab, transformations={"global": t}, chunks=16)
    lo, hi = [-20.0, -10.0], [50.0, 40.0]
    out = ts.rasterize(labels, ("x", "y"), lo, hi, "global", target_unit_to_pixels=1.3)
    assert out.dims == ("y", "x") and out.dtype == np.int32
    arr = np.asarray(out.data.compute())
    np.testing.assert_array_equal(arr, _nearest_bruteforce(lab, t, lo, hi, arr.shape))
    assert arr.any()


def test_image_linear_rotated(rng):
    img = rng.uniform(0, 10, (2, 21, 30))
    t = _rotation(-25.0, 1.1, (3.0, 8.0))
    image = Image2DModel.parse(img, transformations={"global": t}, c_coords=["dapi", "cd3"], chunks=8)
    lo, hi = [-5.0, -5.0], [40.0, 45.0]
    out = ts.rasterize(image, ("x", "y"), lo, hi, "global", target_width=45)
    assert list(out.coords["c"].values) == ["dapi", "cd3"]
    arr = np.asarray(out.data.compute())
    for ch in range(2):
        np.testing.assert_allclose(
            arr[ch], _bilinear_bruteforce(img[ch], t, lo, hi, arr.shape[1:]), atol=1e-9
        )


@pytest.mark.parametrize(
    ("unit_to_pixels", "level"), [(2.0, 0), (1.0, 0), (0.5, 1), (0.3, 1), (0.24, 2), (0.1, 2)]
)
def test_pyramid_level_choice(rng, unit_to_pixels, level):
    lab = np.repeat(np.repeat(rng.integers(1, 9, (16, 16)), 4, 0), 4, 1).astype(np.int32)  # 64 x 64
    t = _rotation(41.0)  # a rotation does not change how large the pixels are
    labels = Labels2DModel.parse(lab, scale_factors=[2, 2], transformations={"global": t})
    lo, hi = [-50.13, 0.07], [50.0, 95.0]
    out = ts.rasterize(labels, ("x", "y"), lo, hi, "global", target_unit_to_pixels=unit_to_pixels)
    assert out.attrs["rasterize_level"] == level
    lvl = np.asarray(ts.elements.raster_levels(labels)[level].data)
    f = 64 / lvl.shape[0]
    t_level = compose(Scale([f, f], ("x", "y")), t)
    arr = np.asarray(out.data.compute())
    np.testing.assert_array_equal(arr, _nearest_bruteforce(lvl, t_level, lo, hi, arr.shape))


# ============================================================================================ SpatialData
def test_spatialdata_rasterizes_each_element(rng):
    _, pts = _points(rng, n=400, parts=2)
    shapes = ShapesModel.parse(_stars(rng, 6, extent=20))
    img = Image2DModel.parse(rng.uniform(0, 1, (1, 20, 20)))
    other = ShapesModel.parse(_stars(rng, 3), transformations={"elsewhere": ts.Identity()})
    sdata = SpatialData(images={"img": img}, points={"tx": pts}, shapes={"cells": shapes, "other": other})
    out = ts.rasterize(
        sdata, ("x", "y"), [0, 0], [20, 20], "global", target_unit_to_pixels=1, return_regions_as_labels=True
    )
    assert set(out.images) == {"img", "tx"} and set(out.labels) == {"cells"}
    single = ts.rasterize("cells", ("x", "y"), [0, 0], [20, 20], "global", target_unit_to_pixels=1,
                          return_regions_as_labels=True, sdata=sdata)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out["cells"].data), np.asarray(single.data))


def test_argument_errors(rng):
    shapes = ShapesModel.parse(_stars(rng, 3))
    with pytest.raises(ValueError, match="exactly one"):
        ts.rasterize(shapes, ("x", "y"), [0, 0], [1, 1], "global", target_width=3, target_height=3)
    with pytest.raises(ValueError, match="larger than"):
        ts.rasterize(shapes, ("x", "y"), [0, 0], [0, 1], "global", target_width=3)
    with pytest.raises(KeyError, match="nope"):
        ts.rasterize(shapes, ("x", "y"), [0, 0], [1, 1], "global", target_width=3, value_key="nope")


# ============================================================================================ bins
def _bins_sdata(rng, n_rows=9, n_cols=12, string_ids=False, missing=5):
    pitch, angle = 2.0, np.deg2rad(3.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rr, cc = np.meshgrid(np.arange(n_rows) + 7, np.arange(n_cols) + 3, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    keep = np.sort(rng.permutation(len(rr))[missing:])
    rr, cc = rr[keep], cc[keep]
    centres = (np.column_stack([cc, rr]) * pitch) @ rot.T + [100.0, 50.0]
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * pitch / 2 @ rot.T
    geoms = shapely.polygons(centres[:, None, :] + square[None])
    n = len(rr)
    ids = [f"s_{i:04d}" for i in range(n)] if string_ids else np.arange(1, n + 1) * 3
    order = rng.permutation(n)  # the table lists the bins in another order
    shapes = ShapesModel.parse(geoms, index=ids, transformations={"global": Scale([0.5, 0.5], ("x", "y"))})
    X = sp.random(n, 4, density=0.5, format="csr", random_state=1, dtype=np.float32)
    X.data[:] = np.round(X.data * 10) + 1
    obs = pd.DataFrame(
        {"region": "bins", "bin_id": np.asarray(ids)[order], "array_row": rr[order], "array_col": cc[order],
         "total": np.asarray(X.sum(axis=1)).ravel()}, index=[str(i) for i in range(n)]
    )  # fmt: skip
    table = TableModel.parse(
        ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2", "g3"])),
        region="bins", region_key="region", instance_key="bin_id",
    )  # fmt: skip
    return (
        SpatialData(shapes={"bins": shapes}, tables={"table": table}),
        centres[order],
        X,
        rr[order],
        cc[order],
    )


def test_bins_lazy_gene_image(rng):
    sdata, centres, X, rr, cc = _bins_sdata(rng)
    out = ts.rasterize_bins(sdata, "bins", "table", col_key="array_col", row_key="array_row")
    assert list(out.coords["c"].values) == ["g0", "g1", "g2", "g3"]
    assert hasattr(out.data, "dask") and out.data.numblocks[0] == 4
    arr = np.asarray(out.data.compute())
    dense = X.toarray()
    assert arr.shape == (4, 9, 12)
    expected = np.zeros_like(arr)
    for k in range(len(rr)):
        expected[:, rr[k] - 7, cc[k] - 3] = dense[k]
    np.testing.assert_array_equal(arr, expected)
    # pixel centres land on the bins' centres (bins frame), then the bins' own scale to global
    m = get_transformation(out, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    px = np.column_stack([cc - 3 + 0.5, rr - 7 + 0.5, np.ones(len(rr))])
    np.testing.assert_allclose((px @ m.T)[:, :2], centres * 0.5, atol=1e-9)
    sub = ts.rasterize_bins(sdata, "bins", "table", "array_col", "array_row", value_key="total")
    np.testing.assert_allclose(np.asarray(sub.data)[0], expected.sum(axis=0))


@pytest.mark.parametrize("string_ids", [False, True])
def test_bins_labels(rng, string_ids):
    sdata, _, _, rr, cc = _bins_sdata(rng, string_ids=string_ids)
    out = ts.rasterize_bins(sdata, "bins", "table", "array_col", "array_row", return_region_as_labels=True)
    assert out.dims == ("y", "x")
    arr = np.asarray(out.data)
    ids = sdata["table"].obs["bin_id"].to_numpy()
    mapping = out.attrs.get(MAP)
    assert (mapping is not None) == string_ids
    for k in range(len(rr)):
        value = arr[rr[k] - 7, cc[k] - 3]
        assert (mapping[value] if string_ids else value) == ids[k]
    assert (arr == 0).sum() == arr.size - len(rr)


def test_bins_not_a_grid(rng):
    sdata, *_ = _bins_sdata(rng)
    obs = sdata["table"].obs
    perm = rng.permutation(len(obs))  # every bin keeps a distinct (row, col), but at the wrong place
    obs["array_col"], obs["array_row"] = obs["array_col"].to_numpy()[perm], obs["array_row"].to_numpy()[perm]
    with pytest.raises(ts.ValidationError, match="regular grid"):
        ts.rasterize_bins(sdata, "bins", "table", "array_col", "array_row")


def test_shapes_scanned_in_chunks_match(rng, monkeypatch):
    from tissuestack.ops import _rasterize

    shapes = ShapesModel.parse(_stars(rng, 60), index=[f"s{i}" for i in range(60)])
    args = (shapes, ("x", "y"), [0, 0], [40, 40], "global")
    whole = np.asarray(ts.rasterize(*args, target_width=80).data)
    monkeypatch.setattr(_rasterize, "_SHAPES_CHUNK", 7)
    np.testing.assert_array_equal(np.asarray(ts.rasterize(*args, target_width=80).data), whole)


def test_same_results_under_a_distributed_client(rng):
    distributed = pytest.importorskip("distributed")
    _, pts = _points(rng, n=800, parts=3)
    lab = Labels2DModel.parse(rng.integers(0, 9, (30, 40)).astype(np.int32), chunks=16)
    sdata, *_ = _bins_sdata(rng)

    def run():
        return (
            np.asarray(ts.rasterize(pts, ("x", "y"), [0, 0], [20, 15], "global", target_width=20).data),
            np.asarray(
                ts.rasterize(lab, ("x", "y"), [-3, 2], [41, 33], "global", target_unit_to_pixels=0.8).data
            ),
            np.asarray(ts.rasterize_bins(sdata, "bins", "table", "array_col", "array_row").data),
        )

    local = run()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        remote = run()
    for a, b in zip(local, remote, strict=True):
        assert a.any()
        np.testing.assert_array_equal(a, b)


def test_labels_3d_nearest(rng):
    lab = rng.integers(0, 20, (6, 10, 12)).astype(np.int32)  # z, y, x
    t = compose(Scale([0.9, 1.1, 2.0], ("x", "y", "z")), Translation([1.3, -0.4, 0.7], ("x", "y", "z")))
    labels = ts.Labels3DModel.parse(lab, transformations={"global": t})
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([12.0, 11.0, 13.0])  # x, y, z
    out = ts.rasterize(labels, ("x", "y", "z"), lo, hi, "global", target_unit_to_pixels=1.5)
    assert out.dims == ("z", "y", "x")
    arr = np.asarray(out.data)
    m = t.to_affine_matrix(("x", "y", "z"), ("x", "y", "z"))
    inv = np.linalg.inv(m)
    size = (hi - lo) / np.array([arr.shape[2], arr.shape[1], arr.shape[0]])
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
    pts = np.stack([lo[0] + (xx + 0.5) * size[0], lo[1] + (yy + 0.5) * size[1], lo[2] + (zz + 0.5) * size[2]])
    u = np.einsum("ij,j...->i...", inv[:3, :3], pts) + inv[:3, 3].reshape(3, 1, 1, 1)
    j, i, k = np.floor(u).astype(int)
    ok = (k >= 0) & (k < 6) & (i >= 0) & (i < 10) & (j >= 0) & (j < 12)
    expected = np.zeros(arr.shape, dtype=np.int32)
    expected[ok] = lab[k[ok], i[ok], j[ok]]
    np.testing.assert_array_equal(arr, expected)
    assert arr.any()


def test_points_of_a_store_rasterised_from_their_row_groups(rng, tmp_path, monkeypatch):
    """A whole points element of a store is rasterised from its row groups as arrays (no dask-expr planning):
    the same counts per category and the same numeric aggregates as the in-memory frame."""
    from tissuestack.ops import _rasterize as R

    _, pts = _points(rng)
    ts.SpatialData(points={"tx": pts}).write(tmp_path / "p.zarr")
    stored = ts.read_zarr(tmp_path / "p.zarr")["tx"]
    calls = []
    original = R._scan_partition
    monkeypatch.setattr(R, "_scan_partition", lambda *a: calls.append(1) or original(*a))
    lo, hi = [0.0, 0.0], [20.0, 15.0]
    for kwargs in ({}, {"value_key": "gene"}, {"value_key": "q", "agg_func": "mean"}):
        got = ts.rasterize(stored, ("x", "y"), lo, hi, "global", target_unit_to_pixels=1, **kwargs)
        exp = ts.rasterize(pts, ("x", "y"), lo, hi, "global", target_unit_to_pixels=1, **kwargs)
        assert list(got.coords["c"].values) == list(exp.coords["c"].values)
        np.testing.assert_allclose(np.asarray(got.data.compute()), np.asarray(exp.data.compute()))
    assert calls  # the row-group path was taken


@pytest.mark.parametrize("op", ["first", "last", "sum", "count", "max", "min"])
@pytest.mark.parametrize("bands", [False, True], ids=["one band", "bands on threads"])
def test_fused_polygon_burn_equals_runs_then_burn(op, bands, monkeypatch):
    """burn_polygons gives the raster of polygon_runs + burn_runs: holes, multipolygons, overlaps, shapes off the
    grid, NaN values, sub-pixel shapes, an affine pixel map; also with the rows split into bands on threads."""
    import shapely

    from tissuestack.kernels import _zonal
    from tissuestack.kernels._burn import BURN_OPS, burn_runs, new_canvas
    from tissuestack.kernels._ragged import from_shapely

    rng = np.random.default_rng(11)
    geoms = []
    for k in range(400):
        cx, cy = rng.uniform(-10, 110, 2)
        r = rng.uniform(0.2, 9)
        star = shapely.Polygon(
            [(cx + r * (0.5 + (i % 2)) * np.cos(a), cy + r * (0.5 + (i % 2)) * np.sin(a))
             for i, a in enumerate(np.linspace(0, 2 * np.pi, 14, endpoint=False))]
        )  # fmt: skip
        if k % 7 == 0:
            star = star.difference(shapely.Point(cx, cy).buffer(r * 0.3))  # a hole
        if k % 11 == 0:
            star = shapely.MultiPolygon([star, shapely.box(cx + r + 1, cy, cx + r + 3, cy + 2)])
        geoms.append(star)
    flat = from_shapely(np.array(geoms, dtype=object))
    values = rng.uniform(1, 50, len(geoms)).round()
    values[::13] = np.nan
    m = np.array([[0.9, 0.2, 3.0], [-0.1, 1.1, 5.0]])
    height, width = 97, 120
    x = m[0, 0] * flat.x + m[0, 1] * flat.y + m[0, 2]
    y = m[1, 0] * flat.x + m[1, 1] * flat.y + m[1, 2]
    runs = _zonal.polygon_runs(x, y, flat.ring_offsets, flat.geom_ring_offsets, height, width)
    dtype = np.int64 if op == "count" else np.float64
    expected, seen_e = new_canvas(height, width, np.dtype(dtype))
    burn_runs(*runs, values, expected, seen_e, BURN_OPS[op])
    if bands:
        monkeypatch.setattr(_zonal, "_BAND_MIN_POLYGONS", 10)
    got, seen_g = new_canvas(height, width, np.dtype(dtype))
    _zonal.burn_polygons(flat.coords, flat.ring_offsets, flat.geom_ring_offsets, m, values, got, seen_g, BURN_OPS[op])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(seen_g, seen_e)
    assert seen_e.mean() > 0.2  # the test burns something


@pytest.mark.parametrize("value_key", [None, "gene"])
def test_stored_points_counts_equal_the_in_memory_path(tmp_path, value_key, monkeypatch):
    """Counting a stored element (row groups read on threads, counted by the kernel) gives the raster of the
    same points held in memory (numpy per partition): a rotated map, out-of-grid points, points exactly on pixel
    borders, a category column."""
    from tissuestack.transforms import Affine

    rng = np.random.default_rng(8)
    n = 50_000
    x = rng.uniform(-5, 105, n)
    y = rng.uniform(-5, 105, n)
    x[:500] = np.round(x[:500])  # on pixel borders
    y[:500] = np.round(y[:500])
    frame = pd.DataFrame({"x": x, "y": y, "gene": pd.Categorical(rng.choice(["a", "b", "c"], n))})
    c, s_ = np.cos(0.3), np.sin(0.3)
    affine = Affine(np.array([[c, -s_, 10.0], [s_, c, -4.0], [0, 0, 1]]), input_axes=("x", "y"), output_axes=("x", "y"))
    points = ts.PointsModel.parse(frame, feature_key="gene", transformations={"global": affine})
    sdata = ts.SpatialData(points={"p": points})
    sdata.write(tmp_path / "s.zarr")
    stored = ts.read_zarr(tmp_path / "s.zarr")["p"]
    kwargs = dict(target_unit_to_pixels=0.7, value_key=value_key)
    from tissuestack.ops import _rasterize

    calls = []
    real = _rasterize._count_stored_points
    monkeypatch.setattr(_rasterize, "_KERNEL_MIN_POINTS", 0)  # the kernel path even for few points
    monkeypatch.setattr(_rasterize, "_count_stored_points", lambda *a: calls.append(1) or real(*a))
    got = ts.rasterize(stored, ("x", "y"), [0, 0], [100, 90], "global", **kwargs)
    assert calls == [1]
    expected = ts.rasterize(points, ("x", "y"), [0, 0], [100, 90], "global", **kwargs)
    assert list(got.coords["c"].values) == list(expected.coords["c"].values)
    np.testing.assert_array_equal(np.asarray(got.data), np.asarray(expected.data))
    assert int(np.asarray(got.data).sum()) > n // 3


def test_stored_points_with_nan_coordinates_count_nowhere(tmp_path, monkeypatch):
    """Another writer's points file may hold NaN coordinates: the kernel path skips them, as numpy does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tissuestack.ops import _rasterize

    frame = pd.DataFrame({"x": [0.5, 1.5, 2.5, 3.5], "y": [0.5, 0.5, 1.5, 1.5]})
    ts.SpatialData(points={"p": ts.PointsModel.parse(frame)}).write(tmp_path / "s.zarr")
    folder = tmp_path / "s.zarr" / "points" / "p" / "points.parquet"
    files = sorted(folder.glob("*.parquet"))
    table = pq.read_table(files[0])
    for f in files:
        f.unlink()
    n = 20_000
    xs = np.tile([0.5, np.nan, 2.5, np.inf], n // 4)
    ys = np.tile([0.5, 0.5, np.nan, 1.5], n // 4)
    cols = {name: table.column(name) for name in table.column_names}
    cols["x"], cols["y"] = pa.array(xs), pa.array(ys)
    rest = {k: pa.array(np.zeros(n, dtype=v.type.to_pandas_dtype())) for k, v in cols.items() if k not in ("x", "y")}
    pq.write_table(pa.table({**{"x": cols["x"], "y": cols["y"]}, **rest}), folder / "part.0.parquet")
    monkeypatch.setattr(_rasterize, "_KERNEL_MIN_POINTS", 0)
    stored = ts.read_zarr(tmp_path / "s.zarr")["p"]
    out = np.asarray(ts.rasterize(stored, ("x", "y"), [0, 0], [4, 2], "global", target_unit_to_pixels=1.0).data)
    assert out.sum() == n // 4 and out[0, 0, 0] == n // 4  # only the finite point (0.5, 0.5)
