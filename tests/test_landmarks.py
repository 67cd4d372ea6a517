"""Landmark alignment: least-squares rigid/similarity/affine fits against known maps, and align_elements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import tissuestack as ts
from tissuestack import Affine, Identity, Image2DModel, PointsModel, Scale, SpatialData, Translation
from tissuestack.errors import ValidationError


def similarity(theta: float, scale: float, shift, flip: bool = False) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    lin = scale * np.array([[c, -s], [s, c]])
    if flip:
        lin = lin @ np.diag([1.0, -1.0])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = shift
    return m


def apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:2, :2].T + m[:2, 2]


def matrix_of(t) -> np.ndarray:
    return t.to_affine_matrix(("x", "y"), ("x", "y"))


@pytest.mark.parametrize(
    ("kind", "truth"),
    [
        ("rigid", similarity(0.7, 1.0, (12.0, -5.0))),
        ("similarity", similarity(-2.4, 1.8, (3.0, 40.0))),
        ("similarity", similarity(0.3, 0.5, (-7.0, 2.0), flip=True)),
        ("affine", np.array([[1.3, 0.4, 5.0], [-0.2, 0.7, -3.0], [0, 0, 1]])),
    ],
)
def test_exact_landmarks_recover_the_map(kind, truth):
    rng = np.random.default_rng(0)
    moving = rng.uniform(0, 100, (7, 2))
    references = apply(truth, moving)
    t, residuals = ts.get_transformation_between_landmarks(references, moving, kind, return_residuals=True)
    assert isinstance(t, Affine)
    np.testing.assert_allclose(matrix_of(t), truth, atol=1e-9)
    np.testing.assert_allclose(residuals, 0.0, atol=1e-9)
    np.testing.assert_allclose(t.apply(moving, input_axes=("x", "y")), references, atol=1e-9)


def test_noisy_landmarks_are_the_least_squares_optimum():
    rng = np.random.default_rng(1)
    moving = rng.uniform(0, 100, (30, 2))
    truth = similarity(0.4, 1.2, (5.0, 9.0))
    references = apply(truth, moving) + rng.normal(0, 0.5, (30, 2))
    for kind, n_params in (("rigid", 3), ("similarity", 4), ("affine", 6)):
        t, res = ts.get_transformation_between_landmarks(references, moving, kind, return_residuals=True)
        m = matrix_of(t)
        np.testing.assert_allclose(res, np.linalg.norm(apply(m, moving) - references, axis=1), atol=1e-12)
        best = (res**2).sum()

        # no small perturbation inside the family lowers the squared error (first-order optimality)
        def cost(p, kind=kind):
            if kind == "affine":
                mm = np.vstack([p.reshape(2, 3), [0, 0, 1]])
            else:
                sc = 1.0 if kind == "rigid" else p[3]
                mm = similarity(p[0], sc, p[1:3])
            return ((apply(mm, moving) - references) ** 2).sum()

        if kind == "affine":
            p0 = m[:2].ravel()
        else:
            theta = np.arctan2(m[1, 0], m[0, 0])
            p0 = np.array([theta, m[0, 2], m[1, 2], np.hypot(m[0, 0], m[1, 0])])[:n_params]
        assert cost(p0) == pytest.approx(best, rel=1e-9)
        for i in range(len(p0)):
            for eps in (1e-4, -1e-4):
                p = p0.copy()
                p[i] += eps
                assert cost(p) >= best - 1e-9
        if kind != "rigid":  # the truth is in the family: the fit is as good as the noise
            assert np.sqrt(best / len(moving)) < 1.0


def test_reflection_is_found_or_refused():
    rng = np.random.default_rng(2)
    moving = rng.uniform(0, 50, (6, 2))
    truth = similarity(1.1, 2.0, (1.0, 2.0), flip=True)
    references = apply(truth, moving)
    t = ts.get_transformation_between_landmarks(references, moving, "similarity")
    assert np.linalg.det(matrix_of(t)[:2, :2]) < 0
    proper, res = ts.get_transformation_between_landmarks(
        references, moving, "rigid", allow_reflection=False, return_residuals=True
    )
    assert np.linalg.det(matrix_of(proper)[:2, :2]) > 0
    assert res.max() > 1.0  # a rotation cannot explain a mirror image


def test_landmarks_from_points_elements_and_frames():
    moving = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0], [5.0, 5.0]])
    truth = similarity(0.5, 2.0, (100.0, 50.0))
    pts_mov = PointsModel.parse(pd.DataFrame(moving, columns=["x", "y"]))
    # reference landmarks stored in half-scale intrinsic coordinates, placed in "global" by a scale of 2
    pts_ref = PointsModel.parse(
        pd.DataFrame(apply(truth, moving) / 2.0, columns=["x", "y"]),
        transformations={"global": Scale([2.0, 2.0], ("x", "y"))},
    )
    sdata = SpatialData(points={"lm_ref": pts_ref, "lm_mov": pts_mov})
    t = ts.get_transformation_between_landmarks("lm_ref", "lm_mov", sdata=sdata, coordinate_system="global")
    np.testing.assert_allclose(matrix_of(t), truth, atol=1e-9)
    frame = pd.DataFrame(apply(truth, moving), columns=["x", "y"])
    t2 = ts.get_transformation_between_landmarks(frame, pts_mov)
    np.testing.assert_allclose(matrix_of(t2), truth, atol=1e-9)


@pytest.mark.parametrize(
    ("refs", "mov", "kind", "match"),
    [
        (np.zeros((3, 2)), np.zeros((4, 2)), "similarity", "same number"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "rigid", "at least 2"),
        (np.zeros((3, 3)), np.zeros((3, 3)), "rigid", "N x 2"),
        ([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]], "affine", "one line"),
        ([[0, 0], [1, 1]], [[3, 3], [3, 3]], "similarity", "coincide"),
        ([[0, np.nan], [1, 1]], [[0, 0], [1, 1]], "rigid", "NaN"),
    ],
)
def test_bad_landmarks_raise_clear_errors(refs, mov, kind, match):
    with pytest.raises(ValidationError, match=match):
        ts.get_transformation_between_landmarks(refs, mov, kind)


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        ts.get_transformation_between_landmarks(np.zeros((3, 2)), np.ones((3, 2)), "projective")


def _two_datasets():
    img = np.zeros((1, 20, 30), dtype=np.uint8)
    sdata = SpatialData(
        images={
            "he_a": Image2DModel.parse(img, dims=("c", "y", "x"), transformations={"a": Identity()}),
            "he_b": Image2DModel.parse(
                img, dims=("c", "y", "x"), transformations={"b": Scale([0.5, 0.5], ("x", "y"))}
            ),
        },
        points={
            "tx_b": PointsModel.parse(
                pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]}),
                transformations={"b": Translation([7.0, -1.0], ("x", "y"))},
            ),
            "tx_a": PointsModel.parse(
                pd.DataFrame({"x": [1.0], "y": [1.0]}), transformations={"a": Identity()}
            ),
        },
    )
    return sdata


def test_align_elements_moves_every_element_of_the_moving_system():
    sdata = _two_datasets()
    truth = similarity(0.3, 1.5, (4.0, -2.0))  # b -> a
    mov = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 8.0], [4.0, 4.0]])
    refs = apply(truth, mov)
    a, res = ts.align_elements_using_landmarks(
        sdata, refs, mov, "he_a", "he_b", "a", "b", new_coordinate_system="aligned", return_residuals=True
    )
    np.testing.assert_allclose(matrix_of(a), truth, atol=1e-9)
    np.testing.assert_allclose(res, 0.0, atol=1e-9)
    assert set(sdata.elements_in_coordinate_system("aligned")) == {"he_a", "he_b", "tx_a", "tx_b"}
    # a point of tx_b lands where the map of its "b" position says, and the reference side is unchanged
    p = np.array([[1.0, 3.0]])
    got = sdata.get_transformation("tx_b", "aligned").apply(p, input_axes=("x", "y"))
    np.testing.assert_allclose(got, apply(truth, p + np.array([7.0, -1.0])))
    np.testing.assert_allclose(matrix_of(sdata.get_transformation("he_a", "aligned")), np.eye(3), atol=1e-12)
    m_b = matrix_of(sdata.get_transformation("he_b", "aligned"))
    np.testing.assert_allclose(m_b, truth @ np.diag([0.5, 0.5, 1.0]), atol=1e-9)


def test_align_elements_with_landmark_points_in_the_store_and_one_system():
    img = np.zeros((1, 10, 10), dtype=np.uint8)
    truth = similarity(-0.8, 1.0, (30.0, 10.0))
    mov = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 8.0]])
    sdata = SpatialData(
        images={
            "ref": Image2DModel.parse(img, dims=("c", "y", "x")),
            "mov": Image2DModel.parse(img, dims=("c", "y", "x")),
            "other": Image2DModel.parse(img, dims=("c", "y", "x")),
        },
        points={
            "lm_ref": PointsModel.parse(pd.DataFrame(apply(truth, mov), columns=["x", "y"])),
            "lm_mov": PointsModel.parse(pd.DataFrame(mov, columns=["x", "y"])),
        },
    )
    ts.align_elements_using_landmarks(sdata, "lm_ref", "lm_mov", "ref", "mov", kind="rigid")
    np.testing.assert_allclose(matrix_of(sdata.get_transformation("mov", "aligned")), truth, atol=1e-9)
    # both in "global": only the moving element follows; the rest stays with the reference
    np.testing.assert_allclose(matrix_of(sdata.get_transformation("other", "aligned")), np.eye(3))
    with pytest.raises(KeyError, match="moving_element 'nope'"):
        ts.align_elements_using_landmarks(sdata, "lm_ref", "lm_mov", "ref", "nope")
    with pytest.raises(ValidationError, match="no transformation to 'elsewhere'"):
        ts.align_elements_using_landmarks(sdata, "lm_ref", "lm_mov", "ref", "mov", "elsewhere")
