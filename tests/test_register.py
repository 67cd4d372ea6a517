"""register_images: known rigid/similarity maps between differently stained renderings of one synthetic tissue."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

import tissuestack as ts
from tissuestack.errors import ValidationError


# ------------------------------------------------------------------------------------------------ synthetic data
def _world(n: int, seed: int = 0, cells: int = 9000) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and stroma fields of a tissue with an irregular outline and varying cell density (world px)."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.normal(size=(n // 8, n // 8)), 5)
    outline = ndimage.zoom(coarse, 8, order=1)
    mask = outline > np.percentile(outline, 35)
    density = ndimage.zoom(ndimage.gaussian_filter(rng.random((n // 32, n // 32)), 1.5), 32, order=1)
    p = (mask * (density - density.min() + 0.05)).ravel()
    idx = rng.choice(n * n, cells, p=p / p.sum())
    nuc = np.zeros(n * n)
    np.add.at(nuc, idx, rng.uniform(0.5, 1.0, cells))
    nuc = ndimage.gaussian_filter(nuc.reshape(n, n), 2.0) * 25
    stroma = ndimage.gaussian_filter(mask.astype(float), 3)
    return nuc, stroma


def _sample(field: np.ndarray, m: np.ndarray, shape: tuple[int, int], offset: float) -> np.ndarray:
    """``field`` at the pixel centres of an image whose px coords (x, y) map to world px by ``m`` + offset."""
    h, w = shape
    iy, ix = np.mgrid[0:h, 0:w]
    x, y = ix.ravel() + 0.5, iy.ravel() + 0.5
    qx = m[0, 0] * x + m[0, 1] * y + m[0, 2] + offset
    qy = m[1, 0] * x + m[1, 1] * y + m[1, 2] + offset
    return ndimage.map_coordinates(field, [qy - 0.5, qx - 0.5], order=1, cval=0.0).reshape(h, w)


def _similarity(theta_deg: float, scale: float, shift: tuple[float, float], centre: float) -> np.ndarray:
    th = math.radians(theta_deg)
    a = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    c = np.array([centre, centre])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c + np.asarray(shift) - a @ c
    return m


def _fluorescence(nuc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (nuc**0.7 + rng.normal(0, 0.05, nuc.shape))[None].astype(np.float32)


def _brightfield(nuc: np.ndarray, stroma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """H&E-like RGB: dark nuclei on a pink stroma, a saturating (nonlinear) and inverted intensity map."""
    t = np.tanh(1.5 * nuc)
    rgb = np.stack([1 - 0.7 * t - 0.2 * stroma, 1 - 0.9 * t - 0.5 * stroma, 1 - 0.4 * t - 0.1 * stroma])
    return (rgb + rng.normal(0, 0.05, rgb.shape)).astype(np.float32)


WORLD = 800
OFFSET = 150.0  # the reference image starts at world px (150, 150)


@pytest.fixture(scope="module")
def world():
    return _world(WORLD)


def _pair(world, m: np.ndarray, ref_shape=(512, 512), mov_shape=(512, 512), seed=1):
    """(moving H&E-like, reference DAPI-like) images with moving px -> reference px = ``m``."""
    nuc, stroma = world
    rng = np.random.default_rng(seed)
    ref = _fluorescence(_sample(nuc, np.eye(3), ref_shape, OFFSET), rng)
    mov = _brightfield(_sample(nuc, m, mov_shape, OFFSET), _sample(stroma, m, mov_shape, OFFSET), rng)
    return mov, ref


def _corner_error(found: np.ndarray, true: np.ndarray, shape: tuple[int, int]) -> float:
    h, w = shape
    corners = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    a = corners @ found[:2, :2].T + found[:2, 2]
    b = corners @ true[:2, :2].T + true[:2, 2]
    return float(np.linalg.norm(a - b, axis=1).max())


# ------------------------------------------------------------------------------------------------ accuracy
@pytest.mark.parametrize(
    ("theta", "scale", "shift"),
    [(37.0, 1.2, (30.0, -20.0)), (180.0, 0.8, (-40.0, 15.0)), (-120.0, 0.72, (5.0, 40.0))],
)
def test_similarity_across_stains_within_one_pixel(world, theta, scale, shift):
    m = _similarity(theta, scale, shift, 256.0)
    mov, ref = _pair(world, m)
    r = ts.register_images(
        ts.Image2DModel.parse(mov), ts.Image2DModel.parse(ref), kind="similarity", max_size=256
    )
    assert _corner_error(r.matrix, m, (512, 512)) < 1.0
    assert r.score > 0.5
    assert r.rotation == pytest.approx(theta if theta < 180 else 180.0, abs=0.2) or abs(r.rotation) > 179.8
    assert r.scale == pytest.approx(scale, rel=2e-3)
    np.testing.assert_allclose(r.transformation.to_affine_matrix(("x", "y"), ("x", "y")), r.matrix)


def test_rigid_90_degrees(world):
    m = _similarity(90.0, 1.0, (12.0, -7.0), 256.0)
    mov, ref = _pair(world, m)
    r = ts.register_images(ts.Image2DModel.parse(mov), ts.Image2DModel.parse(ref), kind="rigid", max_size=256)
    assert _corner_error(r.matrix, m, (512, 512)) < 1.0
    assert r.scale == pytest.approx(1.0, abs=1e-9)
    assert r.kind == "rigid"


def test_multiscale_shifted_crop_reads_a_pyramid_level(world):
    # the moving image is a rotated crop covering about a third of a 1024 px reference with a pyramid
    m = _similarity(-25.0, 1.1, (180.0, 120.0), 150.0)
    mov, ref = _pair(world, m, ref_shape=(640, 640), mov_shape=(300, 340))
    ref_el = ts.Image2DModel.parse(ref, scale_factors=[2, 2])
    r = ts.register_images(
        ts.Image2DModel.parse(mov), ref_el, kind="similarity", max_size=320, scale_range=(0.9, 1.3)
    )
    assert _corner_error(r.matrix, m, (300, 340)) < 1.0
    assert r.levels[1] == 1  # the 320 px reference level, never the full resolution
    assert r.pixel_size == pytest.approx(2.0)
    assert 0.95 < r.overlap <= 1.0


def test_initial_skips_the_search_and_affine_refines(world):
    m = _similarity(10.0, 1.05, (8.0, 4.0), 256.0)
    m[:2, :2] = m[:2, :2] @ np.array([[1.0, 0.04], [0.0, 0.97]])  # add a small shear: a true affine
    mov, ref = _pair(world, m)
    start = ts.Affine(_similarity(8.0, 1.0, (0.0, 0.0), 256.0), ("x", "y"), ("x", "y"))
    r = ts.register_images(
        ts.Image2DModel.parse(mov), ts.Image2DModel.parse(ref), kind="affine", initial=start, max_size=256
    )
    assert _corner_error(r.matrix, m, (512, 512)) < 1.0


# ------------------------------------------------------------------------------------------------ sdata
def test_names_channel_and_add_to_coordinate_system(world):
    m = _similarity(-60.0, 0.9, (10.0, 10.0), 256.0)
    mov, ref = _pair(world, m)
    sdata = ts.SpatialData(
        images={
            "he": ts.Image2DModel.parse(mov, c_coords=["r", "g", "b"]),
            "dapi": ts.Image2DModel.parse(
                ref, c_coords=["DAPI"], transformations=ts.Scale([0.5, 0.5], ("x", "y"))
            ),
        }
    )
    r = ts.register_images(
        "he",
        "dapi",
        sdata=sdata,
        channel=("g", "DAPI"),
        add_to_coordinate_system="aligned",
        max_size=256,
        scale_range=(0.8, 1.0),
    )
    assert _corner_error(r.matrix, m, (512, 512)) < 1.0
    # a moving pixel lands where its tissue is in the reference's global (0.5 px) coordinates
    t = sdata.get_transformation_between("he", "aligned")
    got = t.apply(np.array([[100.0, 200.0]]), ("x", "y"))
    want = 0.5 * (m[:2, :2] @ [100.0, 200.0] + m[:2, 2])
    np.testing.assert_allclose(np.asarray(got)[0], want, atol=0.5)
    assert sdata.get_transformation("dapi", "aligned") == sdata.get_transformation("dapi", "global")


# ------------------------------------------------------------------------------------------------ errors
def test_unrelated_images_warn_with_low_score(world):
    nuc, _ = world
    rng = np.random.default_rng(3)
    ref = _fluorescence(_sample(nuc, np.eye(3), (256, 256), OFFSET), rng)
    other = _fluorescence(_world(512, seed=7, cells=2000)[0][:256, :256], rng)
    with pytest.warns(UserWarning, match="likely wrong"):
        r = ts.register_images(ts.Image2DModel.parse(other), ts.Image2DModel.parse(ref), kind="rigid")
    assert r.score < 0.1


def test_bad_inputs():
    img = ts.Image2DModel.parse(np.zeros((1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        ts.register_images(img, img, kind="projective")
    vol = ts.Image3DModel.parse(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(ValidationError, match="3D image"):
        ts.register_images(vol, img)
    with pytest.raises(TypeError, match="sdata"):
        ts.register_images("a", img)
    with pytest.raises(KeyError, match="no channel"):
        ts.register_images(img, img, channel="DAPI")
    with pytest.raises(TypeError, match="needs sdata"):
        ts.register_images(img, img, add_to_coordinate_system="aligned")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="scale_range"):
            ts.register_images(img, img, scale_range=(2.0, 1.0))


@pytest.mark.parametrize(("levels", "pixel"), [(None, 15.6), ([2, 2], 15.6), (None, 1.0), ([3], 4.5)])
def test_working_copies_keep_pixel_geometry(levels, pixel):
    # a ramp image (value = x coordinate of the pixel centre): every working pixel must hold the x of its centre
    from tissuestack.ops._register import _Image

    h, w = 696, 1008  # divisible by the pyramid factors (levels are placed by size ratio)
    ramp = np.broadcast_to((np.arange(w) + 0.5).astype(np.float32), (1, h, w))
    el = ts.Image2DModel.parse(np.ascontiguousarray(ramp), scale_factors=levels)
    img, (sx, sy), _ = _Image(el, None, "image").read(pixel)
    assert max(sx, sy) == pytest.approx(max(pixel, 1.0), rel=0.03)
    assert img.shape[1] * sx <= w + 1e-6 and img.shape[1] * sx > w - 2 * sx
    centres = (np.arange(img.shape[1]) + 0.5) * sx
    inner = slice(2, -2)  # the anti-aliasing filter clamps at the border
    np.testing.assert_allclose(img[img.shape[0] // 2, inner], centres[inner], atol=0.02 * sx + 0.01)


def test_1024_px_pair_registered_from_a_half_resolution_level():
    nuc, stroma = _world(1280, seed=5, cells=20000)
    m = _similarity(180.0, 1.3, (-25.0, 35.0), 512.0)
    rng = np.random.default_rng(2)
    ref = _fluorescence(_sample(nuc, np.eye(3), (1024, 1024), 128.0), rng)
    mov = _brightfield(_sample(nuc, m, (1024, 1024), 128.0), _sample(stroma, m, (1024, 1024), 128.0), rng)
    r = ts.register_images(
        ts.Image2DModel.parse(mov, scale_factors=[2]),
        ts.Image2DModel.parse(ref, scale_factors=[2]),
        max_size=512,
    )
    assert _corner_error(r.matrix, m, (1024, 1024)) < 1.0
    assert r.levels == (1, 1) and r.pixel_size == pytest.approx(2.0)
    assert r.score > 0.5
