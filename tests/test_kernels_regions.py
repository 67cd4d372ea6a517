"""Kernels locating points in regions (polygon grid, circles, labels) and accumulating per region, each
compared with a brute-force version on random data, including points exactly on edges and vertices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely

from tissuestack.kernels import _points_in_regions as K

# ------------------------------------------------------------------------------------------------------------
# brute force
# ------------------------------------------------------------------------------------------------------------


def _canonical_edges(geom: shapely.Geometry) -> np.ndarray:
    edges = []
    for part in shapely.get_parts(geom):
        for ring in shapely.get_rings(part):
            c = shapely.get_coordinates(ring)
            edges.append(np.column_stack([c[:-1], c[1:]]))
    e = np.concatenate(edges) if edges else np.zeros((0, 4))
    swap = (e[:, 1] > e[:, 3]) | ((e[:, 1] == e[:, 3]) & (e[:, 0] > e[:, 2]))
    e[swap] = e[swap][:, [2, 3, 0, 1]]
    return e


def _brute_half_open(polygons, x: np.ndarray, y: np.ndarray) -> set[tuple[int, int]]:
    """Every (point, polygon) pair under the documented half-open crossing rule, without any index."""
    pairs = set()
    for k, geom in enumerate(polygons):
        e = _canonical_edges(geom)
        x0, y0, x1, y1 = (e[:, j][None, :] for j in range(4))
        X, Y = x[:, None], y[:, None]
        spans = (y0 <= Y) & (Y < y1)
        with np.errstate(invalid="ignore", divide="ignore"):
            xint = x0 + (Y - y0) * (x1 - x0) / (y1 - y0)
        inside = ((spans & (X < xint)).sum(axis=1) % 2) == 1
        pairs.update((int(i), k) for i in np.flatnonzero(inside))
    return pairs


def _pairs(region: np.ndarray, extra_pt: np.ndarray, extra_region: np.ndarray) -> set[tuple[int, int]]:
    out = {(int(i), int(region[i])) for i in np.flatnonzero(region >= 0)}
    out.update(zip(extra_pt.tolist(), extra_region.tolist(), strict=True))
    return out


def _random_polygons(rng: np.random.Generator, n: int, extent: float = 100.0) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    c = rng.uniform(0, extent, (n, 2))
    r = rng.uniform(1, 6, (n, 1)) * (1 + 0.25 * rng.standard_normal((n, 14)))
    rings = np.stack([c[:, :1] + np.abs(r) * np.cos(ang), c[:, 1:] + np.abs(r) * np.sin(ang)], -1)
    polys = shapely.make_valid(shapely.polygons(rings))
    polys = np.where(np.isin(shapely.get_type_id(polys), (3, 6)), polys, shapely.convex_hull(polys))
    # a polygon with a hole, a multipolygon, a big polygon overlapping many others, an empty geometry
    polys[0] = shapely.Polygon(
        [(10, 10), (60, 10), (60, 60), (10, 60)], [[(20, 20), (40, 20), (40, 40), (20, 40)]]
    )
    polys[1] = shapely.MultiPolygon([shapely.box(70, 70, 80, 80), shapely.box(85, 70, 95, 90)])
    polys[2] = shapely.Polygon([(5, 80), (50, 95), (30, 99)])
    polys[3] = shapely.Polygon()
    return polys


def _edge_points(polys: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on the polygons' vertices and at midpoints of their edges (rounded to the representable)."""
    coords = shapely.get_coordinates(polys)
    pick = rng.choice(len(coords) - 1, n)
    verts = coords[pick]
    mids = (coords[pick] + coords[pick + 1]) / 2
    pts = np.concatenate([verts, mids])
    return pts[:, 0].copy(), pts[:, 1].copy()


# ------------------------------------------------------------------------------------------------------------
# polygons
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell_size", "two_threads"), [(None, False), (0.3, False), (7.0, False), (None, True), (0.3, True)]
)
def test_polygon_grid_matches_brute_force(cell_size, two_threads, monkeypatch):
    if two_threads:  # burn the two halves of the grid in two threads (normally from 20k polygons)
        monkeypatch.setattr(K, "_PARALLEL_BURN", 10)
    rng = np.random.default_rng(3)
    polys = _random_polygons(rng, 120)
    x = rng.uniform(-5, 105, 6000)
    y = rng.uniform(-5, 105, 6000)
    ex, ey = _edge_points(polys, rng, 1500)
    x = np.concatenate([x, ex, [np.nan, 50.0]])
    y = np.concatenate([y, ey, [50.0, np.nan]])
    grid = K.build_polygon_grid(polys, cell_size=cell_size)
    ours = _pairs(*K.locate_in_grid(grid, x, y))
    assert ours == _brute_half_open(polys, x, y)
    assert len(ours) > 3000
    # away from boundaries the rule is the ordinary point-in-polygon of shapely
    finite = np.isfinite(x) & np.isfinite(y)
    boundary = shapely.geometrycollections(list(shapely.boundary(polys[shapely.area(polys) > 0])))
    far = finite.copy()
    far[finite] = shapely.distance(boundary, shapely.points(x[finite], y[finite])) > 1e-6
    tree = shapely.STRtree(polys)
    pi, gi = tree.query(shapely.points(x[far], y[far]), predicate="intersects")
    index = np.flatnonzero(far)
    assert {p for p in ours if far[p[0]]} == set(zip(index[pi].tolist(), gi.tolist(), strict=True))


def test_shared_edges_and_vertices_belong_to_exactly_one_tile():
    # a square tiling, each square split into two triangles along its diagonal: every point on a shared edge,
    # a diagonal or a vertex belongs to exactly one tile; on axis-parallel edges it is the tile of the
    # half-open pixel [i, i + 1) x [j, j + 1)
    tiles, kind = [], []
    for j in range(6):
        for i in range(6):
            tiles.append(shapely.Polygon([(i, j), (i + 1, j), (i + 1, j + 1)]))  # below the diagonal
            tiles.append(shapely.Polygon([(i, j), (i + 1, j + 1), (i, j + 1)]))  # above the diagonal
            kind.append((i, j))
            kind.append((i, j))
    tiles = np.array(tiles, dtype=object)
    g = np.arange(1, 6, 0.25)  # quarter points: vertices, edge points and diagonal points
    gx, gy = np.meshgrid(g, g)
    x, y = gx.ravel(), gy.ravel()
    for cell_size in (None, 0.5, 0.125, 3.0):
        grid = K.build_polygon_grid(tiles, cell_size=cell_size)
        region, extra_pt, _ = K.locate_in_grid(grid, x, y)
        assert len(extra_pt) == 0 and (region >= 0).all()
        owner = np.array(kind)[region]
        assert (owner[:, 0] == np.floor(x)).all() and (owner[:, 1] == np.floor(y)).all()
    assert _pairs(region, extra_pt, extra_pt) == _brute_half_open(tiles, x, y)
    # outer boundary: left/bottom edges are inside, right/top edges outside
    square = np.array([shapely.box(0, 0, 1, 1)], dtype=object)
    region, _, _ = K.locate_in_grid(
        K.build_polygon_grid(square), np.array([0, 0.5, 1, 0.5]), np.array([0.5, 0, 0.5, 1])
    )
    assert region.tolist() == [0, 0, -1, -1]


def test_affine_map_is_folded_into_the_lookup():
    rng = np.random.default_rng(5)
    polys = _random_polygons(rng, 60)
    grid = K.build_polygon_grid(polys)
    pts = rng.uniform(-20, 120, (5000, 3))
    linear = np.array([[0.8, -0.6, 0.3], [0.6, 0.8, -0.2]])
    offset = np.array([5.0, -3.0])
    mapped = pts @ linear.T + offset
    expected = K.locate_in_grid(grid, mapped[:, 0], mapped[:, 1])
    got = K.locate_in_grid(grid, pts[:, 0], pts[:, 1], pts[:, 2], linear=linear, offset=offset)
    assert _pairs(*got) == _pairs(*expected)
    got32 = K.locate_in_grid(grid, pts[:, 0].astype(np.float32), pts[:, 1].astype(np.float32))
    assert _pairs(*got32) == _pairs(*K.locate_in_grid(grid, *(pts[:, :2].astype(np.float32).astype(float).T)))
    with pytest.raises(ValueError, match="depends on z"):
        K.locate_in_grid(grid, pts[:, 0], pts[:, 1], linear=linear, offset=offset)


# ------------------------------------------------------------------------------------------------------------
# circles
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell_size", [None, 0.5, 20.0])
def test_circle_grid_matches_brute_force(cell_size):
    rng = np.random.default_rng(7)
    n = 150
    cx, cy = rng.integers(0, 100, n).astype(float), rng.integers(0, 100, n).astype(float)
    r = rng.integers(1, 8, n).astype(float)
    r[0] = np.nan  # no disk
    x = np.concatenate([rng.uniform(-10, 110, 8000), cx + r, cx, cx - r])  # points exactly on circles
    y = np.concatenate([rng.uniform(-10, 110, 8000), cy, cy + r, cy])
    grid = K.build_circle_grid(cx, cy, r, cell_size=cell_size)
    ours = _pairs(*K.locate_in_grid(grid, x, y))
    d2 = (x[:, None] - cx[None, :]) ** 2 + (y[:, None] - cy[None, :]) ** 2
    pi, ci = np.nonzero(d2 <= r[None, :] ** 2)
    assert ours == set(zip(pi.tolist(), ci.tolist(), strict=True))
    on_circle = np.arange(8000, len(x))
    assert all(any((int(i), k) in ours for k in range(n)) for i in on_circle[np.isfinite(x[on_circle])][:50])
    # shapely agrees away from the circles' boundaries
    dist = np.sqrt(d2)
    clear = (np.abs(dist - r[None, :]) > 1e-9).all(axis=1)
    centres = shapely.points(cx, cy)
    for i in np.flatnonzero(clear)[:500]:
        inside = set(
            np.flatnonzero(shapely.dwithin(centres, shapely.Point(x[i], y[i]), np.nan_to_num(r, nan=-1)))
        )
        assert inside == {k for (p, k) in ours if p == i}


# ------------------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------------------


def test_label_lookup_floor_rule_2d_and_3d():
    rng = np.random.default_rng(11)
    lab2 = rng.integers(0, 50, (40, 60)).astype(np.uint32)
    x = np.concatenate([rng.uniform(-5, 65, 3000), np.arange(0, 60, 1.0), [59.999, 60.0, -1e-12]])
    y = np.concatenate([rng.uniform(-5, 45, 3000), np.arange(0, 60, 1.0) % 40, [39.999, 10.0, 3.0]])
    got = K.lookup_labels(lab2, x, y)
    inside = (x >= 0) & (x < 60) & (y >= 0) & (y < 40)
    expected = np.zeros(len(x), dtype=lab2.dtype)
    expected[inside] = lab2[np.floor(y[inside]).astype(int), np.floor(x[inside]).astype(int)]
    assert np.array_equal(got, expected)
    # affine: points in microns, pixel size 0.5 and an offset
    linear, offset = np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([-1.0, 3.0])
    xm, ym = (x + 1.0) / 2.0, (y - 3.0) / 2.0
    assert np.array_equal(K.lookup_labels(lab2, xm, ym, linear=linear, offset=offset), expected)
    # 3-D: (planes, rows, cols), z picks the plane
    lab3 = rng.integers(0, 9, (5, 20, 30)).astype(np.int64)
    p = rng.uniform(-1, 31, (4000, 3))
    got3 = K.lookup_labels(lab3, p[:, 0], p[:, 1], p[:, 2], linear=np.eye(3), offset=np.zeros(3))
    ok = (p[:, 0] >= 0) & (p[:, 0] < 30) & (p[:, 1] >= 0) & (p[:, 1] < 20) & (p[:, 2] >= 0) & (p[:, 2] < 5)
    exp3 = np.zeros(len(p), dtype=np.int64)
    exp3[ok] = lab3[p[ok, 2].astype(int), p[ok, 1].astype(int), p[ok, 0].astype(int)]
    assert np.array_equal(got3, exp3)
    pix = K.pixel_indices(lab3.shape, p[:, 0], p[:, 1], p[:, 2], linear=np.eye(3), offset=np.zeros(3))
    assert np.array_equal(pix[:, 0] >= 0, ok)
    # 3-D points on a 2-D raster: z is ignored
    assert np.array_equal(K.lookup_labels(lab2, x, y, np.full(len(x), 7.0), linear=np.eye(2, 3)), expected)


def test_rows_of_labels_with_and_without_lut():
    ids = np.array([3, 7, 8, 1000])
    values = np.array([0, 3, 7, 8, 9, 1000, 5000, -1])
    expected = [-1, 0, 1, 2, -1, 3, -1, -1]
    assert K.rows_of_labels(values, ids).tolist() == expected
    lut = K.labels_lut(ids)
    assert lut is not None and K.rows_of_labels(values, ids, lut).tolist() == expected
    assert K.labels_lut(np.array([1, 1 << 40])) is None


# ------------------------------------------------------------------------------------------------------------
# accumulation
# ------------------------------------------------------------------------------------------------------------


def test_count_pairs_match_pandas():
    rng = np.random.default_rng(13)
    rows = rng.integers(-1, 50, 20000).astype(np.int32)
    cols = rng.integers(-1, 30, 20000).astype(np.int16)
    er = rng.integers(0, 50, 300).astype(np.int32)
    ec = rng.integers(0, 30, 300).astype(np.int16)
    ok = (rows >= 0) & (cols >= 0)
    frame = pd.DataFrame({"r": np.r_[rows[ok], er], "c": np.r_[cols[ok], ec]})
    expected = np.zeros((50, 30), dtype=np.int64)
    np.add.at(expected, (frame.r.to_numpy(), frame.c.to_numpy()), 1)
    dense = K.count_pairs_dense(rows, cols, 50, 30, er, ec)
    assert np.array_equal(dense, expected)
    indptr, indices, data = K.count_pairs_csr(rows, cols, 50, 30, er, ec)
    import scipy.sparse as sp

    m = sp.csr_matrix((data, indices, indptr), shape=(50, 30))
    assert np.array_equal(m.toarray(), expected)
    assert m.nnz == np.count_nonzero(expected)  # one entry per (row, column)
    assert (data > 0).all()
    for r in range(50):  # canonical: columns sorted within each row (sums of partials need no sort)
        assert (np.diff(indices[indptr[r] : indptr[r + 1]]) > 0).all()
    assert sp.csr_matrix((data, indices, indptr), shape=(50, 30)).has_canonical_format


def test_reduce_values_matches_pandas_groupby():
    rng = np.random.default_rng(17)
    n = 5000
    rows = rng.integers(-1, 40, n).astype(np.int32)
    vals = rng.normal(size=(n, 2))
    vals[rng.random(n) < 0.05, 0] = np.nan
    stats = K.reduce_values(rows, vals, 40, with_m2=True)
    frame = pd.DataFrame({"r": rows, "a": vals[:, 0], "b": vals[:, 1]})
    g = frame[frame.r >= 0].groupby("r")[["a", "b"]]
    assert np.array_equal(stats["count"], g.count().reindex(range(40)).fillna(0).to_numpy())
    np.testing.assert_allclose(stats["sum"], g.sum().reindex(range(40)).to_numpy())
    np.testing.assert_allclose(stats["min"], g.min().reindex(range(40)).to_numpy())
    np.testing.assert_allclose(stats["max"], g.max().reindex(range(40)).to_numpy())
    var = stats["m2"] / (stats["count"] - 1)
    np.testing.assert_allclose(var, g.var().reindex(range(40)).to_numpy(), rtol=1e-10)


def test_unique_labels_matches_numpy():
    rng = np.random.default_rng(19)
    for dtype in (np.uint8, np.uint16, np.int32, np.uint32, np.int64):
        block = rng.integers(0, 120, (70, 90)).astype(dtype)
        got = K.unique_labels(block)
        assert np.array_equal(got, np.unique(block)) and got.dtype == block.dtype
    assert K.unique_labels(np.array([5, -3, 7, 5], dtype=np.int32)).tolist() == [-3, 5, 7]
    assert K.unique_labels(np.array([0, 1 << 40, 3], dtype=np.int64)).tolist() == [0, 3, 1 << 40]  # wide span
    assert K.union_labels(np.array([1, 4]), np.array([2, 4, 9])).tolist() == [1, 2, 4, 9]


def test_one_point_in_polygon_kernel_two_boundary_rules():
    """point_in_edges: the half-open rule (aggregation) and the boundary band (queries) on the same edges."""
    from tissuestack.kernels._points_in_regions import (
        HALF_OPEN,
        INSIDE,
        ON_BOUNDARY,
        OUTSIDE,
        point_in_edges,
        polygon_edges,
    )

    square = shapely.box(0.0, 0.0, 2.0, 2.0)
    _, edges = polygon_edges(np.array([square], dtype=object))
    n = len(edges)
    cases = {  # point: (half-open, with a boundary band)
        (1.0, 1.0): (INSIDE, INSIDE),
        (0.0, 1.0): (INSIDE, ON_BOUNDARY),  # left edge: inside under the half-open rule
        (2.0, 1.0): (OUTSIDE, ON_BOUNDARY),  # right edge: outside
        (1.0, 0.0): (INSIDE, ON_BOUNDARY),  # bottom edge: inside
        (1.0, 2.0): (OUTSIDE, ON_BOUNDARY),  # top edge: outside
        (3.0, 1.0): (OUTSIDE, OUTSIDE),
        (1.0, 2.0 + 1e-12): (OUTSIDE, ON_BOUNDARY),  # within the band above the top edge
    }
    for (x, y), (half_open, banded) in cases.items():
        assert point_in_edges(x, y, edges, 0, n, HALF_OPEN) == half_open, (x, y)
        assert point_in_edges(x, y, edges, 0, n, 1e-9) == banded, (x, y)


def test_unsorted_points_are_located_in_tile_order_with_identical_results(monkeypatch):
    """Points in random order over a large grid are located tile by tile (cache-friendly) and put back: the
    regions and the extra pairs of overlapping regions are those of the plain lookup, in the input order; points
    already in spatial order are not reordered."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 1000, (3000, 2))
    polys = np.array(
        [shapely.Point(x, y).buffer(r, quad_segs=3) for (x, y), r in zip(centres, rng.uniform(2, 9, 3000), strict=True)]
    )  # overlapping discs: extra pairs too
    grid = K.build_polygon_grid(polys, cell_size=0.6)
    n = 70_000
    x = rng.uniform(-5, 1005, n).astype(np.float32)
    y = rng.uniform(-5, 1005, n).astype(np.float32)
    lin, off = np.array([[1.0, 0.02], [-0.01, 1.0]]), np.array([0.5, -0.25])
    calls = []
    original = K._spatial_order
    monkeypatch.setattr(K, "_spatial_order", lambda *a: calls.append(r := original(*a)) or r)
    got = K.locate_in_grid(grid, x, y, linear=lin, offset=off)
    assert calls[-1] is not None  # reordered
    monkeypatch.setattr(K, "_spatial_order", lambda *a: None)
    plain = K.locate_in_grid(grid, x, y, linear=lin, offset=off)
    np.testing.assert_array_equal(got[0], plain[0])
    pairs = sorted(zip(got[1].tolist(), got[2].tolist(), strict=True))
    assert pairs == sorted(zip(plain[1].tolist(), plain[2].tolist(), strict=True)) and len(pairs) > 100
    assert (got[0] >= 0).sum() > 1000
    order = np.lexsort((x // 20, y // 20))  # spatially coherent input: left as it is
    assert original(grid, x[order], y[order], np.zeros(1, np.float32), *K._affine_args(lin, off)) is None
