"""Flat coordinate arrays of shapes (kernels/_ragged.py), the lazy WKB geometry array and the store's reading."""

from __future__ import annotations

import pickle

import geopandas as gpd
import geopandas.testing as gt
import numpy as np
import pyarrow as pa
import pytest
import shapely
from shapely import MultiPolygon, Point, Polygon

import tissuestack as ts
from tissuestack.elements import ShapesModel, shapes_axes, shapes_type
from tissuestack.elements._wkb_array import WKBGeometryArray, wkb_header_types
from tissuestack.kernels._ragged import from_shapely, from_wkb
from tissuestack.ops._shapes_flat import flat_geometry

SQUARE_WITH_HOLE = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], holes=[[(1, 1), (2, 1), (2, 2), (1, 2)]])
TRIANGLE = Polygon([(5, 5), (7, 5), (6, 7)])
CONCAVE = Polygon([(0, 0), (3, 0), (3, 3), (2, 1), (1, 3), (0, 3)])

CASES = {
    "polygons with holes": [SQUARE_WITH_HOLE, TRIANGLE, CONCAVE],
    "multipolygons and polygons": [SQUARE_WITH_HOLE, MultiPolygon([TRIANGLE, CONCAVE]), CONCAVE],
    "empty and missing": [SQUARE_WITH_HOLE, Polygon(), None, MultiPolygon(), MultiPolygon([TRIANGLE])],
    "empty polygons only": [TRIANGLE, Polygon(), None],
    "points": [Point(1, 2), Point(), None, Point(-3.5, 4e6)],
}


def _wkb(geoms, **kwargs) -> pa.Array:
    return pa.array(list(shapely.to_wkb(np.array(geoms, dtype=object), **kwargs)), type=pa.binary())


def _assert_ragged(flat, geoms):
    expected = shapely.to_ragged_array(np.array(geoms, dtype=object), include_z=False)
    got = flat.to_ragged()
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert len(got[2]) == len(expected[2])
    for a, b in zip(got[2], expected[2], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "wkb_kwargs", [{}, {"byte_order": 0}, {"flavor": "iso", "output_dimension": 3}], ids=["le", "be", "iso"]
)
def test_flat_arrays_equal_shapely_ragged_array(case, wkb_kwargs):
    geoms = CASES[case]
    for flat in (from_wkb(_wkb(geoms, **wkb_kwargs)), from_shapely(np.array(geoms, dtype=object))):
        _assert_ragged(flat, geoms)
        arr = np.array(geoms, dtype=object)
        np.testing.assert_array_equal(flat.bounds, shapely.bounds(arr))
        np.testing.assert_allclose(flat.areas, np.nan_to_num(shapely.area(arr)))
        assert len(flat) == len(geoms)


def test_z_coordinates_are_dropped_and_reported():
    geoms = [shapely.force_3d(SQUARE_WITH_HOLE, 7.0), TRIANGLE]
    for wkb in (_wkb(geoms), _wkb(geoms, flavor="iso"), _wkb(geoms, byte_order=0)):
        flat = from_wkb(wkb)
        assert flat.has_z
        _assert_ragged(flat, [shapely.force_2d(g) for g in geoms])


def test_unsupported_and_corrupt_wkb():
    with pytest.raises(ValueError, match="Points or all Polygon"):
        from_wkb(_wkb([shapely.LineString([(0, 0), (1, 1)])]))
    with pytest.raises(ValueError, match="Points or all Polygon"):
        from_wkb(_wkb([Point(0, 0), TRIANGLE]))
    truncated = shapely.to_wkb(TRIANGLE)[:-9]
    with pytest.raises(ValueError, match="truncated"):
        from_wkb(pa.array([truncated], type=pa.binary()))


def test_sliced_and_chunked_arrow_input():
    geoms = CASES["multipolygons and polygons"] * 3
    wkb = _wkb(geoms)
    _assert_ragged(from_wkb(wkb.slice(2, 5)), geoms[2:7])
    _assert_ragged(from_wkb(pa.chunked_array([wkb.slice(0, 4), wkb.slice(4)])), geoms)
    _assert_ragged(from_wkb(wkb.cast(pa.large_binary())), geoms)


def test_transformed_and_to_shapely():
    geoms = np.array(CASES["multipolygons and polygons"], dtype=object)
    flat = from_shapely(geoms)
    lin, off = np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([10.0, -1.0])
    moved = flat.transformed(lin, off)
    expected = shapely.transform(geoms, lambda c: c @ lin.T + off)
    assert shapely.equals_exact(moved.to_shapely(), expected, tolerance=1e-12).all()


# ------------------------------------------------------------------------------------------- lazy array
def test_wkb_array_answers_without_decoding():
    geoms = CASES["empty and missing"]
    arr = WKBGeometryArray(_wkb(geoms))
    assert len(arr) == 5 and arr.shape == (5,)
    np.testing.assert_array_equal(arr.isna(), [g is None for g in geoms])
    type_ids, has_z = wkb_header_types(arr.wkb)
    np.testing.assert_array_equal(type_ids, shapely.get_type_id(np.array(geoms, dtype=object)))
    assert not has_z.any()
    sub = arr.take(np.array([4, 0, -1]))
    assert isinstance(sub, WKBGeometryArray) and not sub.is_decoded
    assert shapely.equals(sub[1], SQUARE_WITH_HOLE)
    filled = arr.take(np.array([0, -1]), allow_fill=True)
    assert filled[1] is None
    assert isinstance(arr[1:3], WKBGeometryArray)
    assert not arr.is_decoded
    decoded = np.asarray(arr)
    assert arr.is_decoded
    assert shapely.equals(decoded[0], SQUARE_WITH_HOLE) and decoded[2] is None


def test_writing_to_the_array_forgets_the_wkb():
    arr = WKBGeometryArray(_wkb([TRIANGLE, CONCAVE]))
    arr[0] = SQUARE_WITH_HOLE
    assert arr.wkb is None
    assert shapely.equals(arr[0], SQUARE_WITH_HOLE)
    back = pickle.loads(pickle.dumps(arr))
    assert shapely.equals(back[0], SQUARE_WITH_HOLE) and len(back) == 2


@pytest.fixture
def stored(tmp_path):
    cells = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"kind": ["a", "b", "c"]},
            geometry=[
                SQUARE_WITH_HOLE,
                MultiPolygon([TRIANGLE, Polygon([(9, 9), (10, 9), (10, 10)])]),
                CONCAVE,
            ],
            index=["x", "y", "z"],
        )
    )
    spots = ShapesModel.parse(np.array([[1.0, 1.0], [6.0, 6.0]]), geometry=0, radius=np.array([1.0, 2.0]))
    sdata = ts.SpatialData(shapes={"cells": cells, "spots": spots})
    sdata.write(tmp_path / "s.zarr")
    return ts.read_zarr(tmp_path / "s.zarr"), cells, spots


def test_store_shapes_are_lazy_and_equal(stored):
    sdata, cells, spots = stored
    for name, original in (("cells", cells), ("spots", spots)):
        element = sdata[name]
        assert isinstance(element.geometry.array, WKBGeometryArray)
        assert shapes_type(element) == shapes_type(original)
        assert shapes_axes(element) == ("x", "y")
        flat = flat_geometry(element)
        assert not element.geometry.array.is_decoded  # types and flat arrays come from the WKB
        _assert_ragged(flat, list(np.asarray(original.geometry.array)))
        assert flat_geometry(element) is flat  # cached on the record
        gt.assert_geodataframe_equal(element, original)  # the geometries, once asked for


def test_flat_geometry_follows_writes(stored):
    sdata, _cells, _spots = stored
    element = sdata["cells"]
    first = flat_geometry(element)
    element.geometry.array[0] = TRIANGLE
    again = flat_geometry(element)
    assert again is not first
    np.testing.assert_array_equal(again.bounds[0], TRIANGLE.bounds)


def test_in_memory_shapes_get_the_same_arrays():
    gdf = ShapesModel.parse(gpd.GeoDataFrame(geometry=CASES["multipolygons and polygons"]))
    flat = flat_geometry(gdf)
    assert flat_geometry(gdf) is flat
    _assert_ragged(flat, CASES["multipolygons and polygons"])


def test_box_pairs_equal_strtree_query():
    from tissuestack.kernels._ragged import box_pairs

    rng = np.random.default_rng(3)
    for n_q, n_t in ((500, 40), (30, 800), (200, 200)):
        q = rng.uniform(0, 100, (n_q, 2))
        qb = np.column_stack([q, q + rng.uniform(0, 8, (n_q, 2))])
        t = rng.uniform(0, 100, (n_t, 2))
        tb = np.column_stack([t, t + rng.uniform(0, 15, (n_t, 2))])
        tb[:3] = np.nan  # missing boxes meet nothing
        qb[5] = [10, 10, 10, 10]  # a point box
        i, j = box_pairs(qb, tb)
        tree = shapely.STRtree(shapely.box(*tb.T))
        ei, ej = tree.query(shapely.box(*qb.T))
        assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(
            zip(ei.tolist(), ej.tolist(), strict=True)
        )
        assert (np.diff(i) >= 0).all()


def test_plot_vertices_orient_holes_against_exteriors():
    from tissuestack.pl._render import _MOVETO, _flat_polygon_vertices

    hole_cw = Polygon(
        [(0, 0), (0, 4), (4, 4), (4, 0)], holes=[[(1, 1), (2, 1), (2, 2), (1, 2)]]
    )  # any orientation
    geoms = np.array([TRIANGLE, shapely.reverse(hole_cw), MultiPolygon([CONCAVE, hole_cw])], dtype=object)
    flat = from_shapely(geoms)
    rows = np.array([2, 0, 1])
    coords, codes, owner = _flat_polygon_vertices(flat, rows)
    starts = np.flatnonzero(codes == _MOVETO)
    rings = np.split(coords, starts[1:])
    expected = []
    for g in geoms[rows]:
        for part in shapely.get_parts(g):
            expected += [np.asarray(part.exterior.coords)] + [np.asarray(h.coords) for h in part.interiors]
    assert len(rings) == len(expected)
    for ring, exp in zip(rings, expected, strict=True):
        assert {tuple(c) for c in ring} == {tuple(c) for c in exp}
        is_hole = any(
            shapely.equals(shapely.Polygon(exp), shapely.Polygon(h.coords))
            for g in geoms
            for part in shapely.get_parts(g)
            for h in part.interiors
        )
        assert shapely.Polygon(ring).exterior.is_ccw == is_hole  # exteriors clockwise, holes anticlockwise
    np.testing.assert_array_equal(np.unique(owner), [0, 1, 2])
    assert (np.diff(owner) >= 0).all()


def test_numba_warm_up_then_fork(tmp_path):
    """Reading shapes starts numba's set-up in a thread; a fork right after must not inherit its lock."""
    import os
    import subprocess
    import sys

    code = (
        "import os, numpy as np, tissuestack as ts\n"
        "from tissuestack._compute import warm_numba\n"
        "from tissuestack.kernels._ragged import _polygon_areas\n"
        "warm_numba()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    z = np.zeros((1, 2)); o = np.zeros(2, np.int64)\n"
        "    _polygon_areas(z, o, o, o); os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('child', status)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "child 0" in out.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_and_numba_decoders_agree(case):
    from tissuestack.kernels import _ragged as R

    data, offsets, valid = R._binary_parts(_wkb(CASES[case]))
    fast = R._decode_numpy(data, offsets, valid)
    assert fast is not None  # 2D little-endian: the numpy path
    kernel = R._decode_pieces([_wkb(CASES[case])])
    type_ids, coords = kernel.type_ids, kernel.coords
    ring_o, part_o, geom_o = kernel.ring_offsets, kernel.part_offsets, kernel.geom_offsets
    np.testing.assert_array_equal(fast.coords, coords)
    for a, b in ((fast.ring_offsets, ring_o), (fast.part_offsets, part_o), (fast.geom_offsets, geom_o)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.type_ids, type_ids)
    # other encodings go to the kernel
    assert (
        R._decode_numpy(*R._binary_parts(_wkb(CASES[case], byte_order=0))) is None
        or case == "empty and missing"
    )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("wkb_kwargs", [{}, {"byte_order": 0}], ids=["le", "be"])
def test_threaded_piecewise_decoding_of_chunked_wkb(case, wkb_kwargs, monkeypatch):
    """Large WKB is decoded chunk by chunk, in pieces on threads, into one set of arrays (no chunk combined)."""
    from tissuestack.kernels import _ragged as R

    monkeypatch.setattr(R, "_NUMPY_MAX_BYTES", 0)  # every size takes the piecewise kernels
    monkeypatch.setattr(R, "_PIECE_ROWS", 2)
    geoms = CASES[case] * 5
    wkb = _wkb(geoms, **wkb_kwargs)
    chunked = pa.chunked_array([wkb.slice(0, 3), wkb.slice(3, 0), wkb.slice(3, 8), wkb.slice(11)])
    for source in (chunked, wkb):
        flat = R.from_wkb(source)
        _assert_ragged(flat, geoms)
        np.testing.assert_array_equal(flat.bounds, shapely.bounds(np.array(geoms, dtype=object)))
    with pytest.raises(ValueError, match="Points or all Polygon"):  # a mix across pieces is refused too
        R.from_wkb(pa.chunked_array([_wkb([TRIANGLE, TRIANGLE]), _wkb([Point(0, 0)])]))


def test_wkb_array_keeps_chunks_without_copying():
    geoms = CASES["multipolygons and polygons"] * 2
    wkb = _wkb(geoms)
    chunked = pa.chunked_array([wkb.slice(0, 2), wkb.slice(2)])
    arr = WKBGeometryArray(chunked)
    assert isinstance(arr.wkb, pa.ChunkedArray) and arr.wkb.num_chunks == 2
    assert len(arr) == len(geoms) and not arr.isna().any()
    np.testing.assert_array_equal(arr.header_types()[0], wkb_header_types(wkb)[0])
    taken = arr.take([5, 0, 3])
    assert isinstance(taken, WKBGeometryArray) and not taken.is_decoded
    assert shapely.equals(np.asarray(taken), np.array([geoms[5], geoms[0], geoms[3]], dtype=object)).all()
    assert shapely.equals(arr[4], geoms[4])
    assert shapely.equals(np.asarray(arr), np.array(geoms, dtype=object)).all()


def test_gather_ranges_against_a_byte_mask():
    from tissuestack.kernels._ragged import _gather_ranges

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 10_000, dtype=np.uint8)
    cuts = np.sort(rng.choice(np.arange(1, 10_000), 400, replace=False))
    starts, ends = cuts[0::2], cuts[1::2]  # disjoint, sorted, gaps between them
    mask = np.zeros(len(data), dtype=bool)
    for a, b in zip(starts, ends, strict=True):
        mask[a:b] = True
    np.testing.assert_array_equal(_gather_ranges(data, starts, ends, int(mask.sum())), data[mask])
    assert len(_gather_ranges(data, starts[:0], ends[:0], 0)) == 0


def test_numpy_decoder_declines_values_with_trailing_bytes():
    """A WKB value with bytes after its last ring is not decoded by numpy (the kernel decides about it)."""
    import pyarrow as pa

    from tissuestack.kernels import _ragged as R

    good = shapely.to_wkb(shapely.Polygon([(0, 0), (1, 0), (1, 1)]), byte_order=1)
    arr = pa.array([good, good + b"\x00" * 16], type=pa.binary())
    assert R._decode_numpy(*R._binary_parts(arr)) is None
    assert R._decode_numpy(*R._binary_parts(pa.array([good, good], type=pa.binary()))) is not None
