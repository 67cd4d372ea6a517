"""Tests of tissuestack.transforms: matrices, algebra, application and the NGFF JSON encoding (docs/format.md §3)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import numpy as np
import pytest

from tissuestack.errors import TransformationError
from tissuestack.transforms import (
    Affine,
    BaseTransformation,
    Identity,
    MapAxis,
    Scale,
    Sequence,
    Translation,
    compose,
    from_ngff_dict,
    to_ngff_dict,
    transformations_from_ngff,
    transformations_to_ngff,
)

AXIS_SETS = [("x", "y"), ("y", "x"), ("c", "y", "x"), ("x", "y", "z"), ("c", "z", "y", "x"), ("z", "y", "x")]

# axis objects of docs/format.md §3.4
C = {"name": "c", "type": "channel"}
X = {"name": "x", "type": "space", "unit": "unit"}
Y = {"name": "y", "type": "space", "unit": "unit"}
Z = {"name": "z", "type": "space", "unit": "unit"}


def hom(linear, offset=None):
    """Homogeneous matrix from a linear part and an offset."""
    lin = np.asarray(linear, dtype=float)
    m = np.zeros((lin.shape[0] + 1, lin.shape[1] + 1))
    m[:-1, :-1] = lin
    if offset is not None:
        m[:-1, -1] = offset
    m[-1, -1] = 1.0
    return m


# ---------------------------------------------------------------------------------------------------------------
# slow, obviously correct reference: apply a transformation to one point held as {axis: value}


def slow_point(t: BaseTransformation, p: dict[str, float]) -> dict[str, float]:
    if isinstance(t, Identity):
        return dict(p)
    if isinstance(t, Scale):
        f = dict(zip(t.axes, t.scale, strict=True))
        return {a: v * f.get(a, 1.0) for a, v in p.items()}
    if isinstance(t, Translation):
        f = dict(zip(t.axes, t.translation, strict=True))
        return {a: v + f.get(a, 0.0) for a, v in p.items()}
    if isinstance(t, Affine):
        if not any(a in p for a in t.in_axes):
            return dict(p)
        m = t.matrix
        res = {a: v for a, v in p.items() if a not in t.in_axes}
        for i, o in enumerate(t.out_axes):
            res[o] = sum(m[i, j] * p.get(a, 0.0) for j, a in enumerate(t.in_axes)) + m[i, -1]
        return res
    if isinstance(t, MapAxis):
        res = {}
        for a, v in p.items():
            keys = [k for k, src in t.map_axis.items() if src == a]
            for k in keys or [a]:
                res[k] = v
        return res
    if isinstance(t, Sequence):
        for member in t.transformations:
            p = slow_point(member, p)
        return p
    raise AssertionError(type(t))


def slow_apply(t, coords, input_axes, output_axes):
    out = np.zeros((len(coords), len(output_axes)))
    for r, row in enumerate(coords):
        q = slow_point(t, dict(zip(input_axes, row, strict=True)))
        for i, a in enumerate(output_axes):
            out[r, i] = q.get(a, 0.0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# random transformations


def spatial(axes):
    return tuple(a for a in axes if a != "c")


def rotation(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_transform(rng, kind, axes, invertible=True):
    sp = list(spatial(axes))
    n = len(sp)
    if kind == "identity":
        return Identity()
    if kind == "scale":
        sub = list(rng.permutation(sp))[: rng.integers(1, n + 1)]
        return Scale(rng.uniform(0.2, 3.0, len(sub)) * rng.choice([-1, 1], len(sub)), tuple(sub))
    if kind == "translation":
        sub = list(rng.permutation(sp))[: rng.integers(1, n + 1)]
        return Translation(rng.normal(0, 50, len(sub)), tuple(sub))
    if kind in ("rotation", "affine"):
        in_t = tuple(rng.permutation(sp))
        out_t = tuple(rng.permutation(sp)) if invertible else tuple(rng.permutation(["x", "y", "z"]))
        lin = rotation(rng, n) if kind == "rotation" else rng.normal(size=(n, n)) + 3 * np.eye(n)
        if not invertible:
            lin = rng.normal(size=(len(out_t), n))
        return Affine(hom(lin, rng.normal(0, 10, len(out_t))), in_t, out_t)
    if kind == "mapaxis":
        perm = list(rng.permutation(sp))
        mapping = dict(zip(sp, perm, strict=True))
        if not invertible and "z" not in axes:
            mapping["z"] = sp[0]  # duplicate an axis into z
        return MapAxis(mapping)
    if kind == "sequence":
        kinds = ["scale", "translation", "rotation", "affine", "mapaxis", "identity"]
        members = []
        cur = tuple(axes)
        for k in rng.choice(kinds, size=rng.integers(2, 5)):
            t = random_transform(rng, str(k), cur, invertible)
            members.append(t)
            cur = t.output_axes(cur)
        if rng.random() < 0.5:  # nest one level
            members = [members[0], Sequence(members[1:])]
        return Sequence(members)
    raise AssertionError(kind)


KINDS = ["identity", "scale", "translation", "rotation", "affine", "mapaxis", "sequence"]


# ---------------------------------------------------------------------------------------------------------------
# matrices


def test_identity_matrix_and_missing_output_rows():
    t = Identity()
    np.testing.assert_array_equal(t.to_affine_matrix(("x", "y"), ("x", "y")), np.eye(3))
    m = t.to_affine_matrix(("x", "y"), ("x", "y", "z"))
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]])
    # output 'c' from an xy input is 0
    np.testing.assert_array_equal(
        t.to_affine_matrix(("x", "y"), ("c", "y")), [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    )


def test_scale_matrix_and_channel_pass_through():
    t = Scale([2, 3], ("x", "y"))
    np.testing.assert_array_equal(t.to_affine_matrix(("x", "y"), ("x", "y")), np.diag([2.0, 3.0, 1.0]))
    np.testing.assert_array_equal(t.to_affine_matrix(("c", "y", "x"), ("c", "y", "x")), np.diag([1, 3, 2, 1]))
    # axes of the scale that are not among the input axes are ignored
    t3 = Scale([2, 3, 4], ("x", "y", "z"))
    np.testing.assert_array_equal(t3.to_affine_matrix(("y", "x"), ("y", "x")), np.diag([3, 2, 1]))


def test_translation_matrix_and_channel_pass_through():
    t = Translation([10, 20], ("x", "y"))
    m = t.to_affine_matrix(("c", "y", "x"), ("c", "y", "x"))
    np.testing.assert_array_equal(m, hom(np.eye(3), [0, 20, 10]))
    m = Translation([1, 2, 3], ("x", "y", "z")).to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_array_equal(m, hom(np.eye(2), [1, 2]))


def test_affine_matrix_pass_through_and_reordered_output():
    t = Affine([[0, 1, 5], [1, 0, 6], [0, 0, 1]], ("x", "y"), ("x", "y"))
    assert t.output_axes(("c", "y", "x")) == ("c", "x", "y")
    m = t.to_affine_matrix(("c", "y", "x"), ("c", "x", "y"))
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [0, 1, 0, 5], [0, 0, 1, 6], [0, 0, 0, 1]])
    # the same map with rows picked in input order: c kept, y = x + 6, x = y + 5
    m = t.to_affine_matrix(("c", "y", "x"), ("c", "y", "x"))
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [0, 0, 1, 6], [0, 1, 0, 5], [0, 0, 0, 1]])


def test_affine_missing_input_axis_column_dropped():
    t = Affine(hom([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [1, 2, 3]), ("x", "y", "z"), ("x", "y", "z"))
    assert t.output_axes(("x", "y")) == ("x", "y", "z")
    m = t.to_affine_matrix(("x", "y"), ("x", "y", "z"))
    np.testing.assert_array_equal(m, [[1, 2, 1], [4, 5, 2], [7, 8, 3], [0, 0, 1]])
    # none of the affine's inputs present: pure pass-through
    assert Affine(hom([[2.0]], [1.0]), ("z",), ("z",)).output_axes(("x", "y")) == ("x", "y")
    assert Affine(hom([[2.0]], [1.0]), ("z",), ("z",)).is_identity_on(("x", "y"))


def test_affine_2d_to_3d_output_rows():
    t = Affine([[1, 0, 0], [0, 1, 0], [0.5, 0.5, 7]], ("x", "y"), ("x", "y", "z"))
    assert t.output_axes(("x", "y")) == ("x", "y", "z")
    out = t.apply([[2.0, 4.0]], ("x", "y"), ("x", "y", "z"))
    np.testing.assert_allclose(out, [[2.0, 4.0, 10.0]])
    m = Identity().to_affine_matrix(("x", "y"), ("z", "y", "x"))
    np.testing.assert_array_equal(m, [[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_affine_accepts_matrix_without_last_row_and_matrix_is_readonly_copy():
    a = Affine([[1, 0.1, 0], [0.2, 1, 0]], ("x", "y"), ("x", "y"))
    b = Affine([[1, 0.1, 0], [0.2, 1, 0], [0, 0, 1]], ("x", "y"), ("x", "y"))
    assert a == b
    m = a.matrix
    assert m.shape == (3, 3)
    assert not m.flags.writeable
    with pytest.raises(ValueError):
        m[0, 0] = 5.0
    assert a.matrix is not m
    src = np.eye(3)
    c = Affine(src, ("x", "y"), ("x", "y"))
    src[0, 0] = 9.0  # the transformation does not alias its input
    assert c.matrix[0, 0] == 1.0


def test_mapaxis_swap():
    t = MapAxis({"x": "y", "y": "x"})
    assert t.output_axes(("c", "y", "x")) == ("c", "x", "y")
    out = t.apply([[1.0, 2.0]], ("x", "y"))
    np.testing.assert_array_equal(out, [[2.0, 1.0]])
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_array_equal(m, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_mapaxis_duplication():
    t = MapAxis({"x": "x", "z": "x"})
    assert t.output_axes(("x", "y")) == ("x", "z", "y")
    out = t.apply([[3.0, 4.0]], ("x", "y"), ("x", "y", "z"))
    np.testing.assert_array_equal(out, [[3.0, 4.0, 3.0]])
    assert t.map_axis == {"x": "x", "z": "x"}
    assert list(t.map_axis) == ["x", "z"]


def test_mapaxis_rename_and_missing_source():
    t = MapAxis({"z": "x"})
    assert t.output_axes(("x", "y")) == ("z", "y")
    np.testing.assert_array_equal(t.apply([[3.0, 4.0]], ("x", "y"), ("x", "y", "z")), [[0.0, 4.0, 3.0]])
    # a key whose source is absent produces nothing; the key, not being a value, is kept
    assert MapAxis({"x": "z"}).output_axes(("x", "y")) == ("x", "y")


def test_output_axes_repeat_is_an_error():
    with pytest.raises(TransformationError, match="output axis 'y' would appear twice"):
        Affine(hom([[1.0]]), ("x",), ("y",)).output_axes(("x", "y"))
    with pytest.raises(TransformationError, match="output axis 'x' would appear twice"):
        MapAxis({"x": "y"}).output_axes(("x", "y"))


def test_sequence_matrix_is_product_of_members():
    rng = np.random.default_rng(1)
    for axes in AXIS_SETS:
        for _ in range(5):
            seq = random_transform(rng, "sequence", axes)
            m = np.eye(len(axes) + 1)
            cur = axes
            for member in seq.transformations:
                nxt = member.output_axes(cur)
                m = member.to_affine_matrix(cur, nxt) @ m
                cur = nxt
            assert seq.output_axes(axes) == cur
            np.testing.assert_allclose(seq.to_affine_matrix(axes, cur), m, atol=1e-12)


def test_to_affine_returns_equivalent_affine():
    rng = np.random.default_rng(2)
    for kind in KINDS:
        t = random_transform(rng, kind, ("c", "y", "x"))
        out = t.output_axes(("c", "y", "x"))
        a = t.to_affine(("c", "y", "x"), out)
        assert isinstance(a, Affine)
        assert a.in_axes == ("c", "y", "x") and a.out_axes == out
        assert a.equivalent(t, ("c", "y", "x"))


# ---------------------------------------------------------------------------------------------------------------
# inverse and composition


def test_inverse_simple_types():
    assert Identity().inverse() == Identity()
    assert Scale([2, 4], ("x", "y")).inverse() == Scale([0.5, 0.25], ("x", "y"))
    assert Translation([1, -2], ("x", "y")).inverse() == Translation([-1, 2], ("x", "y"))
    assert MapAxis({"x": "y", "y": "x"}).inverse() == MapAxis({"y": "x", "x": "y"})
    assert MapAxis({"z": "x"}).inverse() == MapAxis({"x": "z"})
    a = Affine(hom([[2, 0], [0, 4]], [1, 2]), ("x", "y"), ("y", "x"))
    inv = a.inverse()
    assert inv.in_axes == ("y", "x") and inv.out_axes == ("x", "y")
    np.testing.assert_allclose(inv.matrix, hom([[0.5, 0], [0, 0.25]], [-0.5, -0.5]))
    s = Sequence([Scale([2], ("x",)), Translation([1], ("x",))])
    assert s.inverse() == Sequence([Translation([-1], ("x",)), Scale([0.5], ("x",))])


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_composed_with_transformation_is_identity(kind):
    rng = np.random.default_rng(3)
    for axes in AXIS_SETS:
        for _ in range(4):
            t = random_transform(rng, kind, axes)
            inv = t.inverse()
            assert compose(t, inv).is_identity_on(axes, atol=1e-9)
            assert t.compose_with(inv).is_identity_on(axes, atol=1e-9)
            assert compose(inv, t).is_identity_on(t.output_axes(axes), atol=1e-9)
            pts = rng.normal(0, 100, (20, len(axes)))
            back = inv.apply(t.apply(pts, axes, t.output_axes(axes)), t.output_axes(axes), axes)
            np.testing.assert_allclose(back, pts, atol=1e-8)


def test_compose_flattens_and_drops_identity():
    s = Scale([2], ("x",))
    tr = Translation([1], ("x",))
    m = MapAxis({"y": "x"})
    assert compose() == Identity()
    assert compose(Identity(), Identity()) == Identity()
    assert s.compose_with(Identity()) is s
    assert Identity().compose_with(s) is s
    assert compose(Sequence([Identity(), s])) is s
    assert s.compose_with(tr) == Sequence([s, tr])
    nested = compose(Sequence([s, Sequence([Identity(), tr])]), Sequence([]), m)
    assert nested == Sequence([s, tr, m])
    assert all(not isinstance(x, Sequence | Identity) for x in nested.transformations)
    # order: self first, then other
    np.testing.assert_allclose(s.compose_with(tr).apply([[1.0]], ("x",)), [[3.0]])
    np.testing.assert_allclose(tr.compose_with(s).apply([[1.0]], ("x",)), [[4.0]])
    with pytest.raises(TypeError, match="not a transformation"):
        compose(s, "scale")


# ---------------------------------------------------------------------------------------------------------------
# application


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("invertible", [True, False])
def test_apply_matches_slow_reference(kind, invertible):
    rng = np.random.default_rng(4)
    for axes in AXIS_SETS:
        for _ in range(3):
            t = random_transform(rng, kind, axes, invertible)
            pts = rng.normal(0, 10, (25, len(axes)))
            natural = t.output_axes(axes)
            for out in (natural, axes, ("x", "y", "z"), ("c", *spatial(axes)[::-1])):
                np.testing.assert_allclose(t.apply(pts, axes, out), slow_apply(t, pts, axes, out), atol=1e-9)
            np.testing.assert_allclose(t.apply(pts, axes), slow_apply(t, pts, axes, axes), atol=1e-9)


def test_apply_shapes_and_dtypes():
    t = Scale([2, 3], ("x", "y"))
    out = t.apply(np.array([[1, 1], [2, 2]], dtype=np.int32), ("x", "y"))
    assert out.dtype == np.float64 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[2, 3], [4, 6]])
    np.testing.assert_array_equal(t.apply([1, 1], ("x", "y")), [2, 3])  # a single point
    assert t.apply(np.zeros((0, 2)), ("x", "y"), ("x", "y", "z")).shape == (0, 3)


def test_is_identity_on():
    assert Identity().is_identity_on(("c", "z", "y", "x"))
    assert Scale([2], ("z",)).is_identity_on(("x", "y"))
    assert not Scale([2], ("x",)).is_identity_on(("x", "y"))
    assert not MapAxis({"x": "y", "y": "x"}).is_identity_on(("x", "y"))
    assert compose(Scale([2], ("x",)), Scale([0.5], ("x",))).is_identity_on(("x", "y"))


# ---------------------------------------------------------------------------------------------------------------
# value semantics


def test_equality_and_hashing():
    assert Scale([2, 2], ("x", "y")) == Scale([2.0, 2.0], ("x", "y"))
    assert Scale(np.array([2, 2]), ["x", "y"]) == Scale([2.0, 2.0], ("x", "y"))
    assert hash(Scale([2, 2], ("x", "y"))) == hash(Scale([2.0, 2.0], ("x", "y")))
    assert Scale([2, 2], ("x", "y")) != Scale([2, 2], ("y", "x"))
    assert Scale([1, 1], ("x", "y")) != Translation([1, 1], ("x", "y"))
    assert Identity() == Identity() and hash(Identity()) == hash(Identity())
    assert MapAxis({"x": "y"}) == MapAxis({"x": "y"})
    assert Sequence([Identity(), Scale([2], ("x",))]) == Sequence((Identity(), Scale([2.0], ("x",))))
    a1 = Affine(np.eye(3), ("x", "y"), ("x", "y"))
    a2 = Affine([[1, 0, 0], [0, 1, 0]], ["x", "y"], ["x", "y"])
    assert a1 == a2 and hash(a1) == hash(a2)
    members = {
        Scale([2, 2], ("x", "y")),
        Scale([2.0, 2.0], ("x", "y")),
        a1,
        a2,
        Identity(),
        Sequence([a1]),
        Sequence([a2]),
    }
    assert len(members) == 4
    assert isinstance(Scale([2, 2], ("x", "y")).scale[0], float)
    assert Scale([2, 2], ("x", "y")).axes == ("x", "y")


def test_immutable_copyable_picklable():
    t = Sequence([Scale([2, 2], ("x", "y")), Affine(np.eye(3), ("x", "y"), ("y", "x")), MapAxis({"z": "x"})])
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.transformations = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Scale([2], ("x",)).scale = (3.0,)
    assert pickle.loads(pickle.dumps(t)) == t
    assert copy.deepcopy(t) == t


def test_equivalent_compares_matrices():
    s = Scale([2.0, 0.5], ("x", "y"))
    assert s.equivalent(Scale([1.0, 0.5, 2.0], ("c", "y", "x")), ("c", "y", "x"))
    assert s.equivalent(Affine(hom(np.diag([2.0, 0.5])), ("x", "y"), ("x", "y")), ("x", "y"))
    assert not s.equivalent(Scale([2.0, 0.6], ("x", "y")), ("x", "y"))
    assert s.equivalent(Scale([2.0, 0.5 + 1e-12], ("x", "y")), ("x", "y"))
    assert not s.equivalent(Scale([2.0, 0.5 + 1e-6], ("x", "y")), ("x", "y"), atol=1e-9)
    # differing natural output axes are compared too (z produced by one, not the other)
    lift = Affine([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ("x", "y"), ("x", "y", "z"))
    assert not Identity().equivalent(lift, ("x", "y"))
    assert Identity().equivalent(lift, ("x", "y"), ("x", "y"))


def test_repr():
    assert repr(Scale([2.0, 0.5], axes=("x", "y"))) == "Scale([2.0, 0.5], axes=('x', 'y'))"
    assert repr(Translation([1, 2], ("x", "y"))) == "Translation([1.0, 2.0], axes=('x', 'y'))"
    assert repr(Identity()) == "Identity()"
    assert repr(MapAxis({"x": "y", "y": "x"})) == "MapAxis({'x': 'y', 'y': 'x'})"
    assert (
        repr(Sequence([Identity(), Scale([2], ("x",))]))
        == "Sequence([Identity(), Scale([2.0], axes=('x',))])"
    )
    assert repr(Affine(np.eye(2), ("x",), ("y",))) == (
        "Affine([[1.0, 0.0], [0.0, 1.0]], input_axes=('x',), output_axes=('y',))"
    )


# ---------------------------------------------------------------------------------------------------------------
# invalid input


def test_error_zero_scale():
    with pytest.raises(TransformationError, match="scale factor for axis 'y' is 0"):
        Scale([1.0, 0.0], ("x", "y"))


def test_error_non_finite_scale_and_translation():
    with pytest.raises(TransformationError, match="scale for axis 'x' is nan"):
        Scale([np.nan], ("x",))
    with pytest.raises(TransformationError, match="scale for axis 'y' is inf"):
        Scale([1.0, np.inf], ("x", "y"))
    with pytest.raises(TransformationError, match="translation for axis 'x' is nan"):
        Translation([np.nan], ("x",))


def test_error_vector_length():
    with pytest.raises(TransformationError, match="scale has 3 values but axes has 2"):
        Scale([1, 2, 3], ("x", "y"))
    with pytest.raises(TransformationError, match="translation has 1 values but axes has 2"):
        Translation([1], ("x", "y"))


def test_error_bad_axis_name():
    with pytest.raises(TransformationError, match="invalid axis 't'"):
        Scale([1.0], ("t",))
    with pytest.raises(TransformationError, match="invalid axis 'X'"):
        Identity().to_affine_matrix(("X", "y"), ("x", "y"))
    with pytest.raises(TransformationError, match="invalid axis 'q'"):
        MapAxis({"x": "q"})
    with pytest.raises(TransformationError, match="not the string 'xy'"):
        Translation([1, 2], "xy")


def test_error_duplicate_axes():
    with pytest.raises(TransformationError, match="duplicate axis 'x'"):
        Scale([1, 2], ("x", "x"))
    with pytest.raises(TransformationError, match="duplicate axis 'y'"):
        Affine(np.eye(3), ("x", "y"), ("y", "y"))
    with pytest.raises(TransformationError, match="duplicate axis 'x'"):
        Identity().apply([[1, 2]], ("x", "x"))


def test_error_wrong_matrix_shape():
    with pytest.raises(TransformationError, match=r"must have shape \(3, 3\).*got shape \(4, 4\)"):
        Affine(np.eye(4), ("x", "y"), ("x", "y"))
    with pytest.raises(TransformationError, match=r"got shape \(3,\)"):
        Affine([1, 2, 3], ("x",), ("x",))


def test_error_bad_last_row():
    with pytest.raises(TransformationError, match=r"last row of an affine matrix must be \[0.0, 0.0, 1.0\]"):
        Affine([[1, 0, 0], [0, 1, 0], [0, 1, 1]], ("x", "y"), ("x", "y"))


def test_error_non_invertible_affine():
    with pytest.raises(TransformationError, match="singular"):
        Affine([[1, 2, 0], [2, 4, 0]], ("x", "y"), ("x", "y")).inverse()
    with pytest.raises(TransformationError, match="not square"):
        Affine([[1, 0, 0], [0, 1, 0], [1, 1, 0]], ("x", "y"), ("x", "y", "z")).inverse()


def test_error_non_bijective_mapaxis_inverse():
    with pytest.raises(TransformationError, match=r"not a bijection \(input axis 'x' is mapped to several"):
        MapAxis({"x": "x", "z": "x"}).inverse()


def test_error_wrong_coords_columns():
    with pytest.raises(TransformationError, match="coords has 3 columns but input_axes has 2"):
        Scale([2, 2], ("x", "y")).apply(np.zeros((5, 3)), ("x", "y"))
    with pytest.raises(TransformationError, match="must be a 2-D array"):
        Scale([2, 2], ("x", "y")).apply(np.zeros((5, 2, 1)), ("x", "y"))


def test_error_sequence_member_type():
    with pytest.raises(TypeError, match="member 1 is not a transformation"):
        Sequence([Identity(), "x"])


# ---------------------------------------------------------------------------------------------------------------
# NGFF JSON: the verbatim examples of docs/format.md §3.4


def dumps(obj):
    return json.dumps(obj)  # key order matters: compare serialized forms for byte identity


def test_ngff_2d_image_example():
    transformations = {
        "global": Scale([2.0, 0.5], axes=("x", "y")),
        "aligned": Sequence(
            [
                Translation([10, 20], axes=("x", "y")),
                Affine([[0, 1, 5], [1, 0, 6], [0, 0, 1]], ("x", "y"), ("x", "y")),
            ]
        ),
        "mapped": MapAxis({"x": "y", "y": "x"}),
    }
    expected = [
        {
            "type": "scale",
            "scale": [1.0, 0.5, 2.0],
            "input": {"name": "cyx", "axes": [C, Y, X]},
            "output": {"name": "global", "axes": [C, Y, X]},
        },
        {
            "type": "sequence",
            "transformations": [
                {
                    "type": "translation",
                    "translation": [0.0, 20.0, 10.0],
                    "input": {"name": "cyx", "axes": [C, Y, X]},
                    "output": {"name": "global", "axes": [C, Y, X]},
                },
                {
                    "type": "affine",
                    "affine": [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 5.0], [0.0, 0.0, 1.0, 6.0]],
                    "input": {"name": "cyx", "axes": [C, Y, X]},
                    "output": {"name": "global", "axes": [C, X, Y]},
                },
            ],
            "input": {"name": "cyx", "axes": [C, Y, X]},
            "output": {"name": "aligned", "axes": [C, X, Y]},
        },
        {
            "type": "mapAxis",
            "mapAxis": {"x": "y", "y": "x"},
            "input": {"name": "cyx", "axes": [C, Y, X]},
            "output": {"name": "mapped", "axes": [C, X, Y]},
        },
    ]
    encoded = transformations_to_ngff(transformations, ("c", "y", "x"))
    assert encoded == expected
    assert dumps(encoded) == dumps(expected)
    decoded = transformations_from_ngff(json.loads(dumps(expected)))
    assert list(decoded) == ["global", "aligned", "mapped"]
    for name, t in transformations.items():
        assert decoded[name].equivalent(t, ("c", "y", "x")), name
    # re-read form differs (FORMAT §3.6) but the map is the same
    assert decoded["global"] == Scale([1.0, 0.5, 2.0], ("c", "y", "x"))
    assert decoded["global"] != transformations["global"]


def test_ngff_2d_shapes_affine_example():
    expected = {
        "type": "affine",
        "affine": [[1.0, 0.1, 0.0], [0.2, 1.0, 0.0]],
        "input": {"name": "xy", "axes": [X, Y]},
        "output": {"name": "global", "axes": [X, Y]},
    }
    t = Affine([[1.0, 0.1, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]], ("x", "y"), ("x", "y"))
    assert dumps(to_ngff_dict(t, ("x", "y"), "global")) == dumps(expected)
    assert from_ngff_dict(expected) == t


def test_ngff_3d_translation_example():
    t = Translation([1, 2, 3], axes=("x", "y", "z"))
    d = to_ngff_dict(t, ("c", "z", "y", "x"), "global")
    assert d["translation"] == [0.0, 3.0, 2.0, 1.0]
    assert all(type(v) is float for v in d["translation"])
    assert d["input"] == {"name": "czyx", "axes": [C, Z, Y, X]}
    assert d["output"] == {"name": "global", "axes": [C, Z, Y, X]}
    assert from_ngff_dict(d).equivalent(t, ("c", "z", "y", "x"))


def test_ngff_points_example():
    xyz = [X, Y, Z]
    expected = [
        {
            "type": "identity",
            "input": {"name": "xyz", "axes": xyz},
            "output": {"name": "global", "axes": xyz},
        },
        {
            "type": "scale",
            "scale": [0.5, 0.5, 2.0],
            "input": {"name": "xyz", "axes": xyz},
            "output": {"name": "um", "axes": xyz},
        },
    ]
    transformations = {"global": Identity(), "um": Scale([0.5, 0.5, 2.0], ("x", "y", "z"))}
    encoded = transformations_to_ngff(transformations, ("x", "y", "z"))
    assert dumps(encoded) == dumps(expected)
    assert transformations_from_ngff(expected) == transformations


def test_ngff_integers_become_floats():
    d = {
        "type": "affine",
        "affine": [[1, 0, 3], [0, 2, 4]],
        "input": {"name": "xy", "axes": [X, Y]},
        "output": {"name": "global", "axes": [X, Y]},
    }
    t = from_ngff_dict(d)
    assert all(type(v) is float for row in t._matrix for v in row)
    assert t == Affine([[1.0, 0.0, 3.0], [0.0, 2.0, 4.0]], ("x", "y"), ("x", "y"))


def test_ngff_mapaxis_and_identity_need_no_coordinate_systems():
    assert from_ngff_dict({"type": "identity"}) == Identity()
    assert from_ngff_dict({"type": "mapAxis", "mapAxis": {"x": "y"}}) == MapAxis({"x": "y"})


def test_ngff_nested_sequence_member_names():
    t = Sequence([Scale([2], ("x",)), Sequence([MapAxis({"z": "x"}), Translation([1], ("z",))])])
    d = to_ngff_dict(t, ("y", "x"), "aligned")
    assert d["output"]["name"] == "aligned"
    inner = d["transformations"][1]
    assert [m["output"]["name"] for m in [*d["transformations"], *inner["transformations"]]] == ["global"] * 4
    assert inner["transformations"][1]["input"]["name"] == "yz"
    assert inner["transformations"][1]["translation"] == [0.0, 1.0]
    assert from_ngff_dict(json.loads(json.dumps(d))).equivalent(t, ("y", "x"))


@pytest.mark.parametrize("kind", KINDS)
def test_ngff_round_trip_random(kind):
    rng = np.random.default_rng(5)
    for axes in AXIS_SETS:
        for invertible in (True, False):
            t = random_transform(rng, kind, axes, invertible)
            d = json.loads(json.dumps(to_ngff_dict(t, axes, "target")))
            assert d["input"]["name"] == "".join(axes)
            assert d["output"]["name"] == "target"
            assert [a["name"] for a in d["output"]["axes"]] == list(t.output_axes(axes))
            back = from_ngff_dict(d)
            assert back.equivalent(t, axes), (t, back)
            assert back.output_axes(axes) == t.output_axes(axes)
            # a second round trip is stable byte for byte
            assert dumps(to_ngff_dict(back, axes, "target")) == dumps(d)


def test_ngff_duplicate_names_last_wins():
    lst = transformations_to_ngff({"a": Scale([2], ("x",)), "b": Identity()}, ("x",))
    lst.append(to_ngff_dict(Translation([3], ("x",)), ("x",), "a"))
    out = transformations_from_ngff(lst)
    assert list(out) == ["a", "b"]
    assert out["a"] == Translation([3.0], ("x",))


# ---------------------------------------------------------------------------------------------------------------
# NGFF JSON: invalid input


def scale_entry(**over):
    d = {
        "type": "scale",
        "scale": [2.0, 3.0],
        "input": {"name": "xy", "axes": [X, Y]},
        "output": {"name": "global", "axes": [X, Y]},
    }
    d.update(over)
    return d


def test_ngff_error_rotation_not_supported():
    d = {"type": "rotation", "rotation": [1, 0, 0, 1], "input": {"name": "xy", "axes": [X, Y]}}
    with pytest.raises(
        TransformationError, match="Conversion from 'rotation' to BaseTransformation is not supported"
    ):
        from_ngff_dict(d)
    with pytest.raises(TransformationError, match=r"'byDimension' .* not supported"):
        from_ngff_dict({"type": "byDimension", "transformations": []})
    with pytest.raises(TransformationError, match="type 'mapIndex' is not supported"):
        from_ngff_dict({"type": "mapIndex"})
    with pytest.raises(TransformationError, match=r"transformations\[0\].*'rotation'.*not supported"):
        from_ngff_dict({"type": "sequence", "transformations": [d]})


def test_ngff_error_missing_unit():
    bad = {"name": "x", "type": "space"}
    d = scale_entry(input={"name": "xy", "axes": [bad, Y]})
    with pytest.raises(
        TransformationError, match="axis 'x' of coordinate system 'xy' has type 'space' but no 'unit'"
    ):
        from_ngff_dict(d)


def test_ngff_error_empty_list():
    with pytest.raises(TransformationError, match="at least one transformation"):
        transformations_from_ngff([])
    with pytest.raises(TransformationError, match="at least one transformation"):
        transformations_to_ngff({}, ("x", "y"))


def test_ngff_error_output_as_string():
    with pytest.raises(TransformationError, match=r"'output' must be a coordinate-system object.*got str"):
        transformations_from_ngff([{"type": "identity", "output": "global"}])
    with pytest.raises(TransformationError, match=r"'output' must be a coordinate-system object.*got str"):
        from_ngff_dict(scale_entry(output="global"))


def test_ngff_error_missing_keys():
    with pytest.raises(TransformationError, match="has no 'type' key"):
        from_ngff_dict({"scale": [1.0]})
    d = scale_entry()
    del d["scale"]
    with pytest.raises(TransformationError, match="of type 'scale' has no 'scale' key"):
        from_ngff_dict(d)
    d = scale_entry()
    del d["input"]
    with pytest.raises(TransformationError, match="has no 'input' coordinate system"):
        from_ngff_dict(d)
    with pytest.raises(TransformationError, match=r"coordinateTransformations\[0\] has no 'output'"):
        transformations_from_ngff([{"type": "identity"}])
    with pytest.raises(TransformationError, match="has no 'axes' list"):
        from_ngff_dict(scale_entry(output={"name": "global"}))
    with pytest.raises(TransformationError, match="no 'transformations'"):
        from_ngff_dict({"type": "sequence"})


def test_ngff_error_bad_values():
    with pytest.raises(TransformationError, match="same input and output axes"):
        from_ngff_dict(scale_entry(output={"name": "global", "axes": [Y, X]}))
    with pytest.raises(TransformationError, match="scale factor for axis 'x' is 0"):
        from_ngff_dict(scale_entry(scale=[0, 1]))
    with pytest.raises(TransformationError, match="must be a list of numbers"):
        from_ngff_dict(scale_entry(scale=[True, 1]))
    with pytest.raises(TransformationError, match="invalid axis 't'"):
        from_ngff_dict(
            scale_entry(input={"name": "tx", "axes": [{"name": "t", "type": "time", "unit": "s"}, X]})
        )
    d = {
        "type": "affine",
        "affine": [[1.0, 0.0, 0.0]],
        "input": {"name": "xy", "axes": [X, Y]},
        "output": {"name": "global", "axes": [X, Y]},
    }
    with pytest.raises(TransformationError, match=r"must have shape \(3, 3\)"):
        from_ngff_dict(d)


def test_ngff_output_axis_units_written_and_read():
    from tissuestack.transforms import coordinate_system_units, transformations_to_ngff

    lst = transformations_to_ngff(
        {"global": Scale([0.5, 0.5], axes=("x", "y")), "pixels": Identity()},
        ("y", "x"),
        {"global": {"x": "micrometer", "y": "micrometer"}},
    )
    axes = {a["name"]: a for a in lst[0]["output"]["axes"]}
    assert axes["x"]["unit"] == "micrometer" and axes["y"]["unit"] == "micrometer"
    assert {a["unit"] for a in lst[1]["output"]["axes"]} == {"unit"}  # the reference's placeholder otherwise
    assert {a["unit"] for a in lst[0]["input"]["axes"]} == {"unit"}
    assert coordinate_system_units(lst) == {"global": {"x": "micrometer", "y": "micrometer"}}
    assert transformations_to_ngff({"global": Identity()}, ("y", "x")) == transformations_to_ngff(
        {"global": Identity()}, ("y", "x"), {}
    )
    assert coordinate_system_units([{"output": "nonsense"}, 3]) == {}
