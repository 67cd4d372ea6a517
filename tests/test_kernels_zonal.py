"""The zonal kernels against brute-force numpy/shapely versions, including pixel centres exactly on edges."""

import math

import numpy as np
import pandas as pd
import pytest
import shapely

from tissuestack.kernels._zonal import (
    ZonalPartial,
    circle_runs,
    disc_polygon_areas,
    finalize,
    flatten_polygons,
    labels_block_stats,
    merge_partials,
    polygon_runs,
    reduce_pairs,
    runs_block_stats,
    runs_label_counts,
)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------------------------- brute force
def pnpoly_masks(polys, height, width):
    """The documented rule, one polygon at a time over every pixel centre (even-odd, half-open edges)."""
    flat = flatten_polygons(np.asarray(polys, dtype=object))
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    out = np.zeros((len(polys), height, width), dtype=bool)
    for g in range(len(polys)):
        for q in range(flat.geom_ring_offsets[g], flat.geom_ring_offsets[g + 1]):
            for i in range(flat.ring_offsets[q], flat.ring_offsets[q + 1] - 1):
                ax, ay, bx, by = flat.x[i], flat.y[i], flat.x[i + 1], flat.y[i + 1]
                spans = (ay > yy) != (by > yy)
                with np.errstate(divide="ignore", invalid="ignore"):
                    xint = ax + (yy - ay) * (bx - ax) / (by - ay)
                out[g] ^= spans & (xx < xint)
    return out


def runs_to_masks(runs, n, height, width):
    out = np.zeros((n, height, width), dtype=bool)
    for s, r, a, b in zip(*runs, strict=True):
        assert 0 <= r < height and 0 <= a < b <= width
        assert not out[s, r, a:b].any(), "runs of one shape overlap"
        out[s, r, a:b] = True
    return out


def rasterise_polygons(polys, height, width):
    flat = flatten_polygons(np.asarray(polys, dtype=object))
    return polygon_runs(flat.x, flat.y, flat.ring_offsets, flat.geom_ring_offsets, height, width)


def disc_masks(cx, cy, r, m, height, width):
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    u = (m[0, 0] * xx + m[0, 1] * yy + m[0, 2])[None] - cx[:, None, None]
    v = (m[1, 0] * xx + m[1, 1] * yy + m[1, 2])[None] - cy[:, None, None]
    return u * u + v * v <= (r * r)[:, None, None]


def areas(cx, cy, r, polys):
    flat = flatten_polygons(np.asarray(polys, dtype=object))
    d, p = np.meshgrid(np.arange(len(cx)), np.arange(len(polys)), indexing="ij")
    d, p = d.ravel(), p.ravel()
    a = disc_polygon_areas(
        np.asarray(cx, float),
        np.asarray(cy, float),
        np.asarray(r, float),
        d,
        p,
        flat.x,
        flat.y,
        flat.ring_offsets,
        flat.ring_sign,
        flat.geom_ring_offsets,
    )
    return a[0].reshape(len(cx), len(polys))


# ----------------------------------------------------------------------------------------------- disc x polygon
def test_disc_polygon_exact_cases():
    big = shapely.box(-10, -10, 10, 10)
    half = shapely.box(-10, -10, 0, 10)  # the disc's centre on its edge
    small = shapely.box(-0.5, -0.5, 0.5, 0.5)
    holed = shapely.Polygon(big.exterior.coords, [shapely.box(-3, -3, 3, 3).exterior.coords])
    multi = shapely.MultiPolygon([half, shapely.box(5, 5, 6, 6)])
    polys = [big, half, small, holed, multi, big.reverse(), holed.reverse()]
    a = areas([0.0], [0.0], [2.0], polys)[0]
    disc = math.pi * 4
    np.testing.assert_allclose(a, [disc, disc / 2, 1.0, 0.0, disc / 2, disc, 0.0], atol=1e-12)
    # a disc centred in a 4 x 4 hole, reaching into the ring: its area less the hole's
    ring = shapely.Polygon(big.exterior.coords, [shapely.box(-2, -2, 2, 2).exterior.coords])
    b = areas([0.0], [0.0], [4.0], [ring])[0, 0]
    assert b == pytest.approx(math.pi * 16 - 16, rel=1e-12)


def test_disc_polygon_matches_shapely(rng):
    polys = [shapely.Polygon(rng.uniform(0, 10, (8, 2))).convex_hull for _ in range(15)]
    polys += [shapely.Polygon(rng.uniform(0, 10, (12, 2))).buffer(0.3).buffer(-0.2) for _ in range(5)]
    polys = [p if isinstance(p, shapely.Polygon) else max(p.geoms, key=lambda g: g.area) for p in polys]
    cx, cy, r = rng.uniform(0, 10, 12), rng.uniform(0, 10, 12), rng.uniform(0.3, 5, 12)
    a = areas(cx, cy, r, polys)
    fine = shapely.buffer(shapely.points(cx, cy), r, quad_segs=1024)
    ref = shapely.area(shapely.intersection(fine[:, None], np.asarray(polys, dtype=object)[None, :]))
    # the 4096-gon misses ~4e-7 of the disc area near the boundary
    np.testing.assert_allclose(a, ref, atol=1e-6 * (r**2)[:, None].max() * 10)
    assert (a > 0).sum() > 20


# ----------------------------------------------------------------------------------------------- polygon runs
def test_polygon_runs_match_bruteforce_random(rng):
    polys = [shapely.Polygon(rng.uniform(-5, 35, (7, 2))) for _ in range(25)]  # self-crossing: parity rule
    polys += [shapely.MultiPolygon([shapely.box(0, 0, 3.3, 3.1), shapely.box(5.2, 5.1, 9.7, 9.9)])]
    polys += [shapely.Polygon([(0, 0), (20, 0), (20, 20), (0, 20)], [[(4, 4), (4, 15), (15, 15), (15, 4)]])]
    h, w = 23, 31
    got = runs_to_masks(rasterise_polygons(polys, h, w), len(polys), h, w)
    np.testing.assert_array_equal(got, pnpoly_masks(polys, h, w))
    assert got.sum() > 500


def test_polygon_runs_centres_on_edges_and_vertices():
    # vertices on pixel centres (x.5) and on pixel corners (integers): centres on edges and at vertices
    polys = [
        shapely.box(1.5, 1.5, 6.5, 4.5),  # centres on all four edges
        shapely.box(2, 2, 5, 7),  # edges between pixels
        shapely.Polygon([(0.5, 0.5), (8.5, 0.5), (4.5, 8.5)]),
        shapely.Polygon([(3.5, 0.5), (7.5, 4.5), (3.5, 8.5), (-0.5, 4.5)]),  # a diamond through centres
        shapely.Polygon([(1, 1), (9, 1), (9, 9), (5, 5), (1, 9)]),  # a reflex vertex at a pixel corner
    ]
    h, w = 10, 10
    got = runs_to_masks(rasterise_polygons(polys, h, w), len(polys), h, w)
    np.testing.assert_array_equal(got, pnpoly_masks(polys, h, w))
    # the documented rule for a rectangle: centres in [x0, x1) x [y0, y1)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    np.testing.assert_array_equal(got[0], (xx >= 1.5) & (xx < 6.5) & (yy >= 1.5) & (yy < 4.5))
    # away from edges it is plain containment
    inside = shapely.contains_xy(polys[2], xx, yy)
    boundary = shapely.intersects_xy(polys[2].boundary, xx, yy)
    np.testing.assert_array_equal(got[2][~boundary], inside[~boundary])


def test_polygon_runs_tiling_counts_every_pixel_once():
    # triangles and squares tiling [0, 12]^2 with vertices on pixel centres and corners
    tiles = []
    for i in range(4):
        for j in range(4):
            x0, y0 = 3 * i, 3 * j
            if (i + j) % 2:
                tiles.append(shapely.box(x0, y0, x0 + 3, y0 + 3))
            else:
                tiles.append(shapely.Polygon([(x0, y0), (x0 + 3, y0), (x0 + 1.5, y0 + 1.5)]))
                tiles.append(shapely.Polygon([(x0 + 3, y0), (x0 + 3, y0 + 3), (x0 + 1.5, y0 + 1.5)]))
                tiles.append(shapely.Polygon([(x0 + 3, y0 + 3), (x0, y0 + 3), (x0 + 1.5, y0 + 1.5)]))
                tiles.append(shapely.Polygon([(x0, y0 + 3), (x0, y0), (x0 + 1.5, y0 + 1.5)]))
    masks = runs_to_masks(rasterise_polygons(tiles, 14, 14), len(tiles), 14, 14)
    cover = masks.sum(axis=0)
    np.testing.assert_array_equal(cover[:12, :12], 1)
    assert cover[12:].sum() == 0 and cover[:, 12:].sum() == 0


def test_polygon_runs_clip_to_grid():
    polys = [shapely.box(-100, -100, 3.2, 200), shapely.box(50, 50, 60, 60)]
    runs = rasterise_polygons(polys, 5, 6)
    masks = runs_to_masks(runs, 2, 5, 6)
    np.testing.assert_array_equal(masks[0].sum(axis=1), [3] * 5)
    assert not masks[1].any()


# ----------------------------------------------------------------------------------------------- circle runs
@pytest.mark.parametrize(
    "m",
    [
        np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        np.array([[0.5, 0.0, 3.0], [0.0, 0.5, -1.0]]),
        np.array([[1.3, 0.4, -3.0], [-0.2, 0.9, 2.0]]),  # shear: discs are ellipses on the grid
    ],
)
def test_circle_runs_match_bruteforce(rng, m):
    n = 40
    cx, cy, r = rng.uniform(-5, 30, n), rng.uniform(-5, 30, n), rng.uniform(0.1, 9, n)
    cx[:10], cy[:10], r[:10] = (
        np.round(cx[:10]) + 0.5,
        np.round(cy[:10]) + 0.5,
        np.round(r[:10]),
    )  # centres on circles
    h, w = 21, 27
    got = runs_to_masks(circle_runs(cx, cy, r, m, h, w), n, h, w)
    np.testing.assert_array_equal(got, disc_masks(cx, cy, r, m, h, w))
    assert got.sum() > 200


def test_circle_runs_closed_disc():
    # pixel centres at distance exactly 1 from (2.5, 2.5) are inside; tiny discs can hold one pixel or none
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = runs_to_masks(
        circle_runs(np.array([2.5, 0.7]), np.array([2.5, 0.7]), np.array([1.0, 0.1]), m, 5, 5), 2, 5, 5
    )
    assert got[0].sum() == 5 and got[0][2, 1] and got[0][1, 2]
    assert not got[1].any()


# ----------------------------------------------------------------------------------------------- block statistics
def bruteforce_stats(zone, values, n):
    """Per zone and channel: (count, sum, min, max, sample std) with pandas, NaN skipped."""
    out = {}
    for ch in range(values.shape[0]):
        df = pd.DataFrame({"z": zone, "v": values[ch]})
        df = df[(df.z >= 0) & df.v.notna()]
        g = df.groupby("z").v
        out[ch] = g.agg(["count", "sum", "min", "max", "std"]).reindex(range(n))
    return out


def check_final(partial, ref, n, c):
    for agg, col, fill in [
        ("count", "count", 0),
        ("sum", "sum", 0),
        ("min", "min", np.nan),
        ("max", "max", np.nan),
    ]:
        got = finalize(partial, n, agg, c)
        for ch in range(c):
            np.testing.assert_allclose(got[:, ch], ref[ch][col].fillna(fill).to_numpy(), rtol=1e-12)
    got = finalize(partial, n, "mean", c)
    for ch in range(c):
        np.testing.assert_allclose(got[:, ch], (ref[ch]["sum"] / ref[ch]["count"]).to_numpy(), rtol=1e-12)
    got = finalize(partial, n, "std", c)
    for ch in range(c):
        np.testing.assert_allclose(got[:, ch], ref[ch]["std"].to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("mode", ["lut", "search"])
def test_labels_block_stats_and_merge(rng, mode):
    n, npx, c = 30, 5000, 2
    ids = rng.choice(np.arange(1, 200), n, replace=False) * (1 if mode == "lut" else 10**12)
    labels = rng.choice(np.r_[ids, 0, 7777], npx)  # 0 and 7777 are no zone
    values = rng.normal(1e6, 3.0, (c, npx))  # a large offset: std must not cancel
    values[0, rng.integers(0, npx, 50)] = np.nan
    if mode == "lut":
        lut = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        lut[ids] = np.arange(n)
        args = (lut, 0, np.zeros(0, np.int64), np.zeros(0, np.int64))
    else:
        order = np.argsort(ids)
        args = (np.zeros(0, np.int64), 0, ids[order], order.astype(np.int64))
    zone = pd.Index(ids).get_indexer(labels)
    ref = bruteforce_stats(zone, values, n)
    blocks = np.array_split(np.arange(npx), 7)
    parts = [
        ZonalPartial(*labels_block_stats(labels[b].astype(np.int64), values[:, b], *args, n, True))
        for b in blocks
    ]
    check_final(merge_partials(parts, c), ref, n, c)
    whole = ZonalPartial(*labels_block_stats(labels.astype(np.int64), values, *args, n, True))
    check_final(whole, ref, n, c)


def test_runs_block_stats_matches_masks(rng):
    polys = [shapely.Polygon(rng.uniform(0, 30, (5, 2))).convex_hull for _ in range(12)]
    h, w, nz, c = 24, 30, 3, 2
    runs = rasterise_polygons(polys, h, w)
    order = np.argsort(runs[1], kind="stable")
    runs = tuple(r[order] for r in runs)
    masks = runs_to_masks(runs, len(polys), h, w)
    image = rng.normal(50, 5, (c, nz, h, w))
    # blocks of 10 x 12 pixels, merged
    parts = []
    for y0 in range(0, h, 10):
        for x0 in range(0, w, 12):
            block = np.ascontiguousarray(image[:, :, y0 : y0 + 10, x0 : x0 + 12])
            parts.append(ZonalPartial(*runs_block_stats(*runs, block, y0, x0, len(polys), True)))
    merged = merge_partials(parts, c)
    for agg, fn in [("sum", np.sum), ("mean", np.mean), ("min", np.min), ("max", np.max)]:
        got = finalize(merged, len(polys), agg, c)
        for k in range(len(polys)):
            for ch in range(c):
                px = image[ch][:, masks[k]]
                if px.size:
                    assert got[k, ch] == pytest.approx(fn(px), rel=1e-12)
                else:
                    assert got[k, ch] == 0 if agg == "sum" else np.isnan(got[k, ch])
    std = finalize(merged, len(polys), "std", c)
    k = int(np.argmax(masks.sum(axis=(1, 2))))
    assert std[k, 1] == pytest.approx(np.std(image[1][:, masks[k]], ddof=1), rel=1e-9)
    np.testing.assert_array_equal(finalize(merged, len(polys), "count", c)[:, 0], masks.sum(axis=(1, 2)) * nz)


def test_runs_label_counts(rng):
    polys = [shapely.box(0, 0, 8, 8), shapely.box(4, 4, 12, 10), shapely.Polygon([(1, 9), (11, 1), (11, 9)])]
    h, w = 10, 12
    runs = rasterise_polygons(polys, h, w)
    masks = runs_to_masks(runs, 3, h, w)
    labels = rng.integers(0, 5, (2, h, w))
    got = {}
    for y0 in (0, 5):
        for x0 in (0, 7):
            block = np.ascontiguousarray(labels[:, y0 : y0 + 5, x0 : x0 + 7])
            for s, lab, cnt in zip(*reduce_pairs(*runs_label_counts(*runs, block, y0, x0)), strict=True):
                got[(s, lab)] = got.get((s, lab), 0) + cnt
    ref = {}
    for s in range(3):
        vals, cnts = np.unique(labels[:, masks[s]], return_counts=True)
        ref.update({(s, v): c for v, c in zip(vals, cnts, strict=True) if v != 0})
    assert got == ref


# ----------------------------------------------------------------------------------------------- polygon owner
def test_polygon_owner_equals_runs_burnt_in_order_under_an_affine(rng):
    """The fused owner kernel gives exactly the pixels of polygon_runs burnt in draw order (last wins) for any
    draw order and a rotating/shearing affine; polygons covering no pixel centre take a free pixel holding the
    mean of their first ring's vertices (one of them per pixel), never a covered one."""
    from tissuestack.kernels._ragged import from_shapely
    from tissuestack.kernels._zonal import polygon_owner

    polys = [shapely.Polygon(rng.uniform(-5, 35, (7, 2))) for _ in range(30)]
    polys += [shapely.MultiPolygon([shapely.box(0, 0, 3.3, 3.1), shapely.box(5.2, 5.1, 9.7, 9.9)])]
    polys += [shapely.Polygon([(0, 0), (20, 0), (20, 20), (0, 20)], [[(4, 4), (4, 15), (15, 15), (15, 4)]])]
    tiny = [shapely.box(x, y, x + 0.05, y + 0.05) for x, y in rng.uniform(20, 60, (40, 2))]
    polys += [*tiny, shapely.Polygon()]
    flat = from_shapely(np.asarray(polys, dtype=object))
    m = np.array([[0.9, 0.3, 1.5], [-0.2, 1.1, 2.0]])
    rank = rng.permutation(len(polys)).astype(np.int64)
    skipped = int(rank[3])
    rank[3] = -1  # not drawn
    h, w = 57, 61
    owner = np.full((h, w), -1, dtype=np.int64)
    polygon_owner(flat.coords, flat.ring_offsets, flat.geom_ring_offsets, rank, m, owner)

    px = m[0, 0] * flat.x + m[0, 1] * flat.y + m[0, 2]
    py = m[1, 0] * flat.x + m[1, 1] * flat.y + m[1, 2]
    runs = polygon_runs(px, py, flat.ring_offsets, flat.geom_ring_offsets, h, w)
    expected = np.full((h, w), -1, dtype=np.int64)
    covered = np.zeros(len(polys), dtype=bool)
    for s, r, a, b in zip(*runs, strict=True):
        if rank[s] >= 0:
            expected[r, a:b] = np.maximum(expected[r, a:b], rank[s])
            covered[s] = True
    # anchors: pixels free of runs that hold the vertex mean of uncovered polygons
    candidates: dict[tuple[int, int], set[int]] = {}
    for g in range(len(polys)):
        q = flat.geom_ring_offsets[g]
        if covered[g] or rank[g] < 0 or q == flat.geom_ring_offsets[g + 1]:
            continue
        a, b = flat.ring_offsets[q], flat.ring_offsets[q + 1]
        col, row = int(np.floor(px[a:b].mean())), int(np.floor(py[a:b].mean()))
        if 0 <= col < w and 0 <= row < h and expected[row, col] < 0:
            candidates.setdefault((row, col), set()).add(int(rank[g]))
    assert len(candidates) >= 10
    for (row, col), ranks in candidates.items():
        assert owner[row, col] in ranks
        expected[row, col] = owner[row, col]
    np.testing.assert_array_equal(owner, expected)
    assert len(np.unique(owner)) > 20 and skipped not in owner
