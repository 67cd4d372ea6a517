"""Automatic registration of two images, also across stains: the map from moving pixels to reference pixels.

Pixel coordinates
-----------------
Both images are addressed in their full-resolution intrinsic pixel coordinates ``(x, y)``: pixel ``(row i,
column j)`` covers ``[j, j + 1) x [i, i + 1)`` (centre ``(j + 0.5, i + 0.5)``), the convention of every other
operation. Pyramid level ``k`` is placed by the size ratio ``size(level 0) / size(level k)`` per axis.

Method
------
Intensities of two stains are unrelated (DAPI: bright nuclei on black; H&E: dark nuclei on pink), so both
images are compared through their *edges*: each working image is rescaled to its 0.5-99.5 percentiles and
replaced by its Gaussian gradient magnitude (sigma 1 working pixel), which is the same for an image and its
inversion and follows any monotonic intensity map up to a weight. Similarity is the normalised cross-correlation
(NCC) of these edge images over the overlap of the two images.

1. **Search** (unless ``initial`` is given): on a small working size (``search_size``, default 64 px for the
   larger image) every rotation on a ``rotation_step`` grid and, for ``"similarity"``/``"affine"``, every scale
   on a geometric grid over ``scale_range`` is tried; for each, the best translation is found at once for all
   shifts with the FFT form of the masked NCC (Padfield 2012), requiring the overlap to cover at least
   ``min_overlap`` of the smaller image.
2. **Refinement**: the best few candidates are refined with a local optimiser (scipy Powell) on the NCC of the
   edge images sampled at the reference pixels; the winner is then refined level by level (working size x 4
   each step) up to ``max_size`` px (or full resolution when the images are smaller). ``"affine"`` frees the four
   linear coefficients at the refinement steps.

Only pyramid levels (or, for single-scale images, lazily block-averaged dask arrays) of at most about
``max_size`` px are loaded; a 20k x 20k image is never read at full resolution when it has a pyramid.

Score
-----
``ncc`` is the NCC of the edge images at the finest level. Unrelated tissue images still reach an NCC of 0.3-0.4
(tissue correlates with tissue) but only on a broad plateau, while a true alignment is a sharp peak, so
``score = (ncc - ncc_4) / (1 - ncc_4)`` where ``ncc_4`` is the mean NCC of the result shifted by 4 working
pixels along +-x and +-y: in ``[0, 1]``, about 0-0.1 for unrelated images, typically above 0.3 for a good
cross-stain alignment. ``overlap`` is the area of the overlap of the two
images divided by the area of the smaller one. A ``UserWarning`` is raised when ``score < min_score`` or
``overlap < min_overlap``: the result is then likely wrong.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from scipy import fft as sfft
from scipy import ndimage

from tissuestack._container import SpatialData
from tissuestack.elements import get_kind, raster_levels
from tissuestack.errors import ValidationError
from tissuestack.transforms import Affine, BaseTransformation, Sequence, affine_map

__all__ = ["REGISTRATION_KINDS", "RegistrationResult", "register_images"]

RegistrationKind = Literal["rigid", "similarity", "affine"]
REGISTRATION_KINDS: tuple[str, ...] = ("rigid", "similarity", "affine")

_REFINE_CANDIDATES = 3
_SCALE_STEP = 1.12
_MAX_SAMPLES = 30_000
_LEVEL_STEP = 4


# ================================================================================================ result
@dataclass(frozen=True)
class RegistrationResult:
    """The outcome of :func:`register_images`.

    Attributes
    ----------
    transformation
        :class:`~tissuestack.Affine` over ``(x, y)`` from the moving image's full-resolution pixel coordinates
        to the reference image's full-resolution pixel coordinates.
    matrix
        The same map as a 3 x 3 homogeneous matrix (rows/columns ``x, y, 1``).
    score
        Quality in ``[0, 1]``: the sharpness of the NCC peak (see the module notes); about 0 for unrelated
        images, above 0.3 for a clear alignment.
    ncc
        NCC of the two edge images at the finest level used.
    overlap
        Area of the overlap divided by the area of the smaller image (in reference pixels), in ``[0, 1]``.
    kind
        ``"rigid"``, ``"similarity"`` or ``"affine"``.
    levels
        ``(moving level, reference level)``: the pyramid levels read for the finest refinement step.
    pixel_size
        Size of a working pixel of the finest step, in reference full-resolution pixels.
    rotation, scale
        Rotation in degrees (counter-clockwise in ``x, y``; clockwise on screen, where ``y`` points down) and
        isotropic scale (square root of the determinant) of the linear part.
    """

    transformation: Affine
    matrix: np.ndarray = field(repr=False)
    score: float
    ncc: float
    overlap: float
    kind: str
    levels: tuple[int, int]
    pixel_size: float
    rotation: float
    scale: float

    @property
    def level(self) -> int:
        """The reference pyramid level read for the finest refinement step."""
        return self.levels[1]

    def __repr__(self) -> str:
        t = self.matrix[:2, 2]
        return (
            f"RegistrationResult(kind={self.kind!r}, score={self.score:.3f}, overlap={self.overlap:.3f}, "
            f"rotation={self.rotation:.3f} deg, scale={self.scale:.4f}, translation=({t[0]:.2f}, {t[1]:.2f}), "
            f"levels={self.levels}, pixel_size={self.pixel_size:.3g})"
        )


# ================================================================================================ inputs
def _image_input(image: Any, sdata: SpatialData | None, role: str) -> tuple[Any, str | None]:
    name = None
    if isinstance(image, str):
        if sdata is None:
            raise TypeError(
                f"{role} {image!r} is an element name: pass sdata= (the SpatialData it belongs to)"
            )
        if image not in sdata:
            raise KeyError(f"{role}: no element {image!r} in the SpatialData object")
        name = image
        image = sdata[name]
    elif sdata is not None:
        for n, e in sdata.spatial_items():
            if e is image:
                name = n
                break
    label = f"{role} {name!r}" if name else role
    if not isinstance(image, xr.DataArray | xr.DataTree):
        raise ValidationError(
            f"{label} must be an image element (xarray DataArray or DataTree), got {type(image).__name__}"
        )
    try:
        kind = get_kind(image)
    except (TypeError, ValidationError):
        kind = None
    dims = tuple(str(d) for d in raster_levels(image)[0].dims)
    if dims == ("c", "z", "y", "x"):
        raise ValidationError(
            f"{label} is a 3D image (dims {dims}); register_images aligns 2D images (c, y, x)"
        )
    if kind not in (None, "images") or dims != ("c", "y", "x"):
        raise ValidationError(
            f"{label} must be a 2D image with dims ('c', 'y', 'x'), got {kind} with dims {dims}"
        )
    return image, name


def _channel_index(level: xr.DataArray, channel: Any, label: str) -> list[int]:
    n = level.sizes["c"]
    if channel is None:
        return list(range(n))
    names = level.coords["c"].values.tolist() if "c" in level.coords else list(range(n))
    keys = list(channel) if isinstance(channel, list) else [channel]
    out = []
    for key in keys:
        if key in names:
            out.append(names.index(key))
        elif isinstance(key, int | np.integer) and not isinstance(key, bool) and -n <= key < n:
            out.append(int(key) % n)
        else:
            raise KeyError(f"{label}: no channel {key!r}; channels are {names}")
    return out


def _split_channel(channel: Any) -> tuple[Any, Any]:
    if isinstance(channel, tuple):
        if len(channel) != 2:
            raise ValueError(
                f"channel as a tuple must be (moving channel, reference channel), got {channel!r}"
            )
        return channel
    return channel, channel


class _Image:
    """The pyramid of one input image and how to read a small working copy of it."""

    def __init__(self, element: Any, channel: Any, label: str) -> None:
        self.levels = raster_levels(element)
        self.label = label
        first = self.levels[0]
        self.shape = (int(first.sizes["y"]), int(first.sizes["x"]))
        self.channels = _channel_index(first, channel, label)
        # full-resolution pixels per level pixel, (x, y)
        self.level_px = [
            (self.shape[1] / lvl.sizes["x"], self.shape[0] / lvl.sizes["y"]) for lvl in self.levels
        ]

    def read(self, pixel: float) -> tuple[np.ndarray, np.ndarray, int]:
        """``(image, (sx, sy), level)``: a float32 copy whose pixels are about ``pixel`` full-resolution pixels
        wide (never finer than full resolution), the full-resolution size of its pixels, the level read."""
        pixel = max(pixel, 1.0)
        k = max(i for i, (px, py) in enumerate(self.level_px) if max(px, py) <= pixel * 1.0001 or i == 0)
        lvl = self.levels[k]
        data = lvl.data if isinstance(lvl.data, da.Array) else da.from_array(np.asarray(lvl.data))
        px = max(self.level_px[k])
        f = max(1, math.floor(pixel / px + 1e-6))
        arr = data[self.channels].astype(np.float32).mean(axis=0)
        ny, nx = arr.shape
        if f > 1:
            f = min(f, ny, nx)
            arr = da.coarsen(np.mean, arr, {0: f, 1: f}, trim_excess=True)
        img = np.asarray(arr.compute(), dtype=np.float32)
        sx, sy = self.level_px[k][0] * f, self.level_px[k][1] * f  # block means: f level pixels each
        # exact size: resample the remaining (< 2x) factor with an anti-aliased zoom, edges to edges
        out_shape = (max(4, round(img.shape[0] * sy / pixel)), max(4, round(img.shape[1] * sx / pixel)))
        if out_shape[0] < img.shape[0] * 0.97 or out_shape[1] < img.shape[1] * 0.97:
            sigma = (
                max(0.0, 0.5 * (img.shape[0] / out_shape[0] - 1)),
                max(0.0, 0.5 * (img.shape[1] / out_shape[1] - 1)),
            )
            img = ndimage.gaussian_filter(img, sigma, mode="nearest")
            new = ndimage.zoom(
                img,
                (out_shape[0] / img.shape[0], out_shape[1] / img.shape[1]),
                order=1,
                mode="nearest",
                grid_mode=True,
            )
            sx *= img.shape[1] / new.shape[1]
            sy *= img.shape[0] / new.shape[0]
            img = new
        return img, np.array([sx, sy]), k


def _edges(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude (sigma 1 px) of the percentile-normalised image, zero mean-free as float64."""
    finite = np.isfinite(img)
    if not finite.all():
        img = np.where(finite, img, np.nanmedian(img) if finite.any() else 0.0)
    lo, hi = np.percentile(img, [0.5, 99.5])
    scale = hi - lo if hi > lo else 1.0
    norm = np.clip((img - lo) / scale, 0.0, 1.0).astype(np.float64)
    return ndimage.gaussian_gradient_magnitude(norm, 1.0, mode="nearest")


# ================================================================================================ geometry
def _coords_to_index(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` for ndimage.affine_transform from a 3x3 (x, y) map *output coords -> input coords*."""
    q = np.array([[0.0, 1.0], [1.0, 0.0]])
    lin = m[:2, :2]
    mat = q @ lin @ q
    off = q @ (lin @ np.full(2, 0.5) + m[:2, 2]) - 0.5
    return mat, off


def _rect(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _overlap(m: np.ndarray, mov_shape: tuple[int, int], ref_shape: tuple[int, int]) -> float:
    import shapely

    a = shapely.Polygon(_apply(m, _rect(mov_shape)))
    b = shapely.Polygon(_rect(ref_shape))
    smaller = min(a.area, b.area)
    return float(a.intersection(b).area / smaller) if smaller > 0 else 0.0


def _scale_matrix(s: np.ndarray) -> np.ndarray:
    return np.diag([s[0], s[1], 1.0])


def _decompose(m: np.ndarray) -> tuple[float, float]:
    lin = m[:2, :2]
    det = float(np.linalg.det(lin))
    rot = math.degrees(math.atan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1]))
    return rot, math.sqrt(abs(det))


# ================================================================================================ search
def _fast(n: int) -> int:
    return sfft.next_fast_len(n, real=True)


class _MaskedNCC:
    """Masked normalised cross-correlation of moving arrays against a fixed reference for every integer shift,
    computed with FFTs (Padfield 2012); the reference transforms are computed once."""

    def __init__(self, ref: np.ndarray, max_mov: tuple[int, int]) -> None:
        self.hr, self.wr = ref.shape
        self.shape = (_fast(self.hr + max_mov[0] - 1), _fast(self.wr + max_mov[1] - 1))
        ref = ref.astype(np.float32)
        self.fr = self._f(ref)
        self.fr2 = self._f(ref * ref)
        self.fone = self._f(np.ones_like(ref))

    def _f(self, a: np.ndarray) -> np.ndarray:
        return sfft.rfft2(a, self.shape, workers=1)

    def _inv(self, a: np.ndarray) -> np.ndarray:
        return sfft.irfft2(a, self.shape, workers=1)

    def best(
        self, mov: np.ndarray, mask: np.ndarray, min_count: float, full_count: float
    ) -> tuple[float, tuple[int, int]]:
        """``(rank, (dy, dx))`` of the best shift with at least ``min_count`` overlapping pixels: moving pixel
        ``(i, j)`` lands on reference pixel ``(i + dy, j + dx)``. The rank is the NCC times the square root of
        the overlap count over ``full_count``: small overlaps correlate by chance more easily."""
        mk = mask.astype(np.float32)
        mov = np.where(mask, mov, 0.0).astype(np.float32)
        fm = np.conj(self._f(mov))
        fm2 = np.conj(self._f(mov * mov))
        fk = np.conj(self._f(mk))
        n = np.round(self._inv(self.fone * fk))
        sr = self._inv(self.fr * fk)
        sr2 = self._inv(self.fr2 * fk)
        sm = self._inv(self.fone * fm)
        sm2 = self._inv(self.fone * fm2)
        srm = self._inv(self.fr * fm)
        with np.errstate(divide="ignore", invalid="ignore"):
            nn = np.maximum(n, 1.0)
            var = (sr2 - sr * sr / nn) * (sm2 - sm * sm / nn)
            ncc = (srm - sr * sm / nn) / np.sqrt(np.maximum(var, 0.0))
            tol = 1e-4 * max(float(np.nanmax(var)), 1e-30)
            bad = (n < min_count) | ~np.isfinite(ncc) | (var <= tol)
            ncc = np.where(bad, -np.inf, ncc * np.sqrt(np.clip(n / full_count, 0.0, 1.0)))
        idx = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        dy = idx[0] if idx[0] < self.hr else idx[0] - self.shape[0]
        dx = idx[1] if idx[1] < self.wr else idx[1] - self.shape[1]
        return float(ncc[idx]), (int(dy), int(dx))


def _linear(theta: float, scale: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return scale * np.array([[c, -s], [s, c]])


def _search(
    mov: np.ndarray,
    ref: np.ndarray,
    smov: np.ndarray,
    sref: np.ndarray,
    angles: np.ndarray,
    scales: np.ndarray,
    min_overlap: float,
) -> list[tuple[float, np.ndarray]]:
    """Candidates ``(ncc, full-resolution matrix)`` over the rotation x scale grid, best first."""
    hm, wm = mov.shape
    grid = []
    for s in scales:
        for theta in angles:
            # working map moving coords -> reference coords, linear part only: W = Sr^-1 A Sm
            lin = np.diag(1.0 / sref) @ _linear(theta, s) @ np.diag(smov)
            corners = _rect((hm, wm)) @ lin.T
            lo = np.floor(corners.min(axis=0))
            hi = np.ceil(corners.max(axis=0))
            grid.append((lin, lo, (int(hi[1] - lo[1]), int(hi[0] - lo[0]))))
    corr = _MaskedNCC(ref, (max(g[2][0] for g in grid), max(g[2][1] for g in grid)))
    out = []
    for lin, lo, shape in grid:
        fwd = np.eye(3)
        fwd[:2, :2] = lin
        fwd[:2, 2] = -lo  # moving coords -> warped-array coords
        mat, off = _coords_to_index(np.linalg.inv(fwd))
        warped = ndimage.affine_transform(mov, mat, off, output_shape=shape, order=1, cval=np.nan)
        mask = np.isfinite(warped)
        full = min(float(mask.sum()), float(ref.size))
        ncc, (dy, dx) = corr.best(np.nan_to_num(warped), mask, max(min_overlap * full, 16.0), full)
        if not np.isfinite(ncc):
            continue
        work = fwd.copy()
        work[:2, 2] += np.array([dx, dy], dtype=np.float64)
        full = _scale_matrix(sref) @ work @ _scale_matrix(1.0 / smov)
        out.append((ncc, full))
    out.sort(key=lambda c: -c[0])
    return out


# ================================================================================================ refinement
class _Objective:
    """Negative NCC of the edge images for a full-resolution matrix given by parameters (see ``_matrix``)."""

    def __init__(
        self,
        mov: np.ndarray,
        ref: np.ndarray,
        smov: np.ndarray,
        sref: np.ndarray,
        mov_full: tuple[int, int],
        ref_full: tuple[int, int],
        kind: str,
        min_overlap: float,
        rng: np.random.Generator,
    ) -> None:
        self.mov = mov.astype(np.float32)
        self.smov = smov
        self.kind = kind
        self.min_overlap = min_overlap
        h, w = ref.shape
        n = h * w
        idx = np.arange(n) if n <= _MAX_SAMPLES else np.sort(rng.choice(n, _MAX_SAMPLES, replace=False))
        iy, ix = np.divmod(idx, w)
        # sample points in reference full-resolution coordinates, and the reference values there
        self.px = (ix + 0.5) * sref[0]
        self.py = (iy + 0.5) * sref[1]
        self.vals = ref.ravel()[idx]
        self.centre = np.array([mov_full[1], mov_full[0]], dtype=np.float64) / 2.0
        self.mov_area = float(mov_full[0] * mov_full[1])
        self.ref_area = float(ref_full[0] * ref_full[1])
        # parameter units: about one working pixel of displacement at the image corners
        self.radius = float(np.hypot(*(self.centre / smov)))
        self.unit_t = float(np.mean(sref))

    # parameters -> matrix ------------------------------------------------------------------------
    def start(self, m: np.ndarray) -> np.ndarray:
        t = _apply(m, self.centre[None])[0] / self.unit_t
        lin = m[:2, :2]
        if self.kind == "affine":
            return np.concatenate([t, lin.ravel() * self.radius])
        theta = math.atan2(lin[1, 0] - lin[0, 1], lin[0, 0] + lin[1, 1])
        p = [t[0], t[1], theta * self.radius]
        if self.kind == "similarity":
            p.append(math.log(math.sqrt(abs(np.linalg.det(lin)))) * self.radius)
        return np.array(p)

    def matrix(self, p: np.ndarray) -> np.ndarray:
        if self.kind == "affine":
            lin = np.asarray(p[2:6]).reshape(2, 2) / self.radius
        else:
            scale = math.exp(p[3] / self.radius) if self.kind == "similarity" else 1.0
            lin = _linear(p[2] / self.radius, scale)
        m = np.eye(3)
        m[:2, :2] = lin
        m[:2, 2] = np.asarray(p[:2]) * self.unit_t - lin @ self.centre
        return m

    # evaluation -----------------------------------------------------------------------------------
    def ncc(self, m: np.ndarray) -> tuple[float, float]:
        """``(ncc, overlap)``: the NCC over the samples inside the moving image, and the overlap area as a
        fraction of the smaller image (estimated from the samples)."""
        det = float(np.linalg.det(m[:2, :2]))
        if not det > 1e-12:
            return -1.0, 0.0
        inv = np.linalg.inv(m)
        # moving working index coordinates; elementwise (small BLAS calls thrash on busy machines)
        px, py = self.px, self.py
        qx = (inv[0, 0] * px + inv[0, 1] * py + inv[0, 2]) / self.smov[0] - 0.5
        qy = (inv[1, 0] * px + inv[1, 1] * py + inv[1, 2]) / self.smov[1] - 0.5
        vals = ndimage.map_coordinates(self.mov, [qy, qx], order=1, cval=np.nan, prefilter=False)
        ok = np.isfinite(vals)
        k = int(np.count_nonzero(ok))
        overlap = k / len(px) * self.ref_area / min(self.ref_area, self.mov_area * det)
        if k < 16:
            return -1.0, overlap
        a = self.vals[ok]
        b = vals[ok]
        a = a - a.mean()
        b = b - b.mean()
        den = math.sqrt(float(np.einsum("i,i->", a, a)) * float(np.einsum("i,i->", b, b)))
        num = float(np.einsum("i,i->", a, b))
        return (num / den if den > 0 else -1.0), overlap

    def __call__(self, p: np.ndarray) -> float:
        ncc, overlap = self.ncc(self.matrix(p))
        if overlap < self.min_overlap:  # push back towards an overlap the search would accept
            return 1.0 - ncc + 2.0 * (self.min_overlap - overlap)
        return -ncc


def _refine(obj: _Objective, m: np.ndarray, xtol: float) -> tuple[np.ndarray, float]:
    p0 = obj.start(m)
    from scipy import optimize  # 0.15 s to import: only when a registration runs

    res = optimize.minimize(
        obj,
        p0,
        method="Powell",
        options={"xtol": xtol, "ftol": 1e-6, "maxfev": 100 * len(p0), "direc": np.eye(len(p0))},
    )
    p = res.x if res.fun <= obj(p0) else p0
    return obj.matrix(p), -float(min(res.fun, obj(p0)))


# ================================================================================================ public
def register_images(
    moving: Any,
    reference: Any,
    *,
    kind: RegistrationKind = "similarity",
    sdata: SpatialData | None = None,
    channel: Any = None,
    max_size: int = 1024,
    search_size: int = 64,
    rotation_range: float = 180.0,
    rotation_step: float = 8.0,
    scale_range: tuple[float, float] = (0.6, 1.6),
    initial: BaseTransformation | np.ndarray | None = None,
    min_overlap: float = 0.2,
    min_score: float = 0.1,
    add_to_coordinate_system: str | None = None,
    reference_coordinate_system: str = "global",
    moving_coordinate_system: str | None = None,
    seed: int = 0,
) -> RegistrationResult:
    """Find the transformation that maps the ``moving`` image onto the ``reference`` image, also across stains.

    See the module notes for the method (edge images, a rotation/scale search with FFT masked cross-correlation,
    then coarse-to-fine refinement over the pyramid).

    Parameters
    ----------
    moving, reference
        Image elements (``DataArray`` or multiscale ``DataTree`` with dims ``(c, y, x)``), or their names in
        ``sdata``.
    kind
        ``"rigid"`` (rotation + translation), ``"similarity"`` (+ isotropic scale) or ``"affine"`` (a
        similarity search, then a free 2 x 2 linear part in the refinement).
    sdata
        The SpatialData object the named elements belong to.
    channel
        Channel name or index used for both images, a list of them (averaged), or a tuple ``(moving channel,
        reference channel)``. Default: the mean of all channels (e.g. the grey level of an RGB H&E image).
    max_size
        Largest working size (pixels along the longer side of the larger image) of the finest refinement step.
    search_size
        Working size of the rotation/scale search.
    rotation_range, rotation_step
        The search tries rotations in ``[-rotation_range, rotation_range]`` degrees every ``rotation_step``.
    scale_range
        Range of the moving -> reference scale searched by ``"similarity"`` and ``"affine"`` (full-resolution
        pixels of the reference per pixel of the moving image); ``"rigid"`` uses scale 1.
    initial
        A starting moving px -> reference px transformation (an :class:`~tissuestack.Affine`, e.g. from
        :func:`~tissuestack.get_transformation_between_landmarks`, or a 3 x 3 matrix): skips the search and only
        refines.
    min_overlap
        Smallest overlap (fraction of the smaller image) accepted in the search and below which a warning is
        raised.
    min_score
        A result with a lower score raises a ``UserWarning`` (likely failure).
    add_to_coordinate_system
        With ``sdata``: the name of a coordinate system in which the images are aligned. The reference gets its
        transformation to ``reference_coordinate_system``; the moving image gets ``Sequence([result, that
        transformation])``. ``sdata`` is modified in place (call ``sdata.write_metadata()`` to persist).
    reference_coordinate_system
        See ``add_to_coordinate_system``.
    moving_coordinate_system
        With ``add_to_coordinate_system``: every element placed in this coordinate system (the moving section's
        cells, transcripts, other images) follows the moving image into the new system, and every element placed
        in ``reference_coordinate_system`` joins it unchanged, so that whole datasets are aligned at once. The
        moving image must have a transformation to this system.
    seed
        Seed of the subsampling of reference pixels in the refinement (results are deterministic).

    Notes
    -----
    Mirrored sections are not searched: flip the moving image first (or give a reflected ``initial``). The
    candidates of the search are refined at the search size with the coarse rotation/scale model; the final
    refinement is at ``min(max_size, size of the larger image)``.

    Returns
    -------
    RegistrationResult
        ``.transformation`` (moving full-resolution px -> reference full-resolution px), ``.matrix``,
        ``.score``, ``.overlap``, ``.levels``...

    Examples
    --------
    >>> r = register_images("he", "dapi", sdata=sdata, add_to_coordinate_system="aligned")  # doctest: +SKIP
    >>> r.score  # doctest: +SKIP
    0.62
    """
    if kind not in REGISTRATION_KINDS:
        raise ValueError(f"kind must be one of {REGISTRATION_KINDS}, got {kind!r}")
    if max_size < 16 or search_size < 16:
        raise ValueError(f"max_size and search_size must be at least 16 px, got {max_size} and {search_size}")
    lo_s, hi_s = (float(v) for v in scale_range)
    if not 0 < lo_s <= hi_s:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
    if add_to_coordinate_system is not None and sdata is None:
        raise TypeError("add_to_coordinate_system needs sdata= (the SpatialData object holding both images)")
    mov_el, mov_name = _image_input(moving, sdata, "moving")
    ref_el, ref_name = _image_input(reference, sdata, "reference")
    if add_to_coordinate_system is not None and (mov_name is None or ref_name is None):
        raise ValidationError("add_to_coordinate_system: moving and reference must be elements of sdata")
    ch_m, ch_r = _split_channel(channel)
    mov = _Image(mov_el, ch_m, f"moving {mov_name!r}" if mov_name else "moving")
    ref = _Image(ref_el, ch_r, f"reference {ref_name!r}" if ref_name else "reference")
    largest = max(*mov.shape, *ref.shape)
    rng = np.random.default_rng(seed)

    # working sizes: search size, then x4 steps up to max_size (or full resolution)
    finest = min(max_size, largest)
    sizes = [min(search_size, finest)]
    while sizes[-1] < finest:
        sizes.append(min(sizes[-1] * _LEVEL_STEP, finest))

    def level(size: int):
        pixel = largest / size
        m_img, m_s, m_k = mov.read(pixel)
        r_img, r_s, r_k = ref.read(pixel)
        return _edges(m_img), _edges(r_img), m_s, r_s, (m_k, r_k)

    def objective(data, k: str) -> _Objective:
        em, er, sm, sr, _ = data
        return _Objective(em, er, sm, sr, mov.shape, ref.shape, k, min_overlap, rng)

    data = level(sizes[0])
    refine_kind = "similarity" if kind == "affine" else kind
    if initial is not None:
        start = _initial_matrix(initial)
        candidates = [start]
    else:
        em, er, sm, sr, _ = data
        step = math.radians(max(rotation_step, 0.1))
        span = math.radians(min(abs(rotation_range), 180.0))
        n_half = math.floor(span / step + 1e-9)
        angles = np.arange(-n_half, n_half + 1) * step
        if span >= math.pi - 1e-9:
            angles = angles[angles > -math.pi + 1e-9]
        if kind == "rigid":
            scales = np.array([1.0])
        else:
            n_s = max(1, math.ceil(math.log(hi_s / lo_s) / math.log(_SCALE_STEP)) + 1)
            scales = np.geomspace(lo_s, hi_s, n_s)
        found = _search(em, er, sm, sr, angles, scales, min_overlap)
        candidates = _distinct([m for _, m in found], mov.shape, float(np.mean(sr)), _REFINE_CANDIDATES)
        if not candidates:
            candidates = [np.diag([*(sr / sm), 1.0])]
    obj = objective(data, refine_kind)
    best_m, best_score = None, -np.inf
    best_rank = -np.inf
    for cand in candidates:
        m, score = _refine(obj, cand, 1e-3 if len(sizes) == 1 else 1e-2)
        rank = score * math.sqrt(max(0.0, min(1.0, obj.ncc(m)[1])))
        if rank > best_rank:
            best_m, best_score, best_rank = m, score, rank
    m = best_m
    if kind == "affine" and len(sizes) == 1:  # the candidates were refined as similarities: free the shear
        obj = objective(data, kind)
        m, best_score = _refine(obj, m, 1e-3)
    for size in sizes[1:]:
        data = level(size)
        obj = objective(data, kind)
        m, best_score = _refine(obj, m, 1e-3 if size == sizes[-1] else 1e-2)
    overlap = _overlap(m, mov.shape, ref.shape)
    ncc = float(best_score)
    score = _peak_score(obj, m, ncc)
    if score < min_score or overlap < min_overlap:
        warnings.warn(
            f"register_images: the alignment of {mov.label} onto {ref.label} is likely wrong (score {score:.3f}, "
            f"min_score {min_score}; overlap {overlap:.2f}, min_overlap {min_overlap}). Check that the images "
            "show the same tissue, pass channel=, widen scale_range, or give initial= (e.g. from landmarks)",
            UserWarning,
            stacklevel=2,
        )
    rot, sc = _decompose(m)
    t = Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))
    result = RegistrationResult(
        transformation=t,
        matrix=m,
        score=score,
        ncc=ncc,
        overlap=overlap,
        kind=kind,
        levels=data[4],
        pixel_size=float(np.mean(data[3])),
        rotation=rot,
        scale=sc,
    )
    if add_to_coordinate_system is not None:
        assert sdata is not None and mov_name is not None and ref_name is not None
        t_ref = sdata.get_transformation(ref_name, reference_coordinate_system)
        if moving_coordinate_system is not None:
            _carry_along(
                sdata,
                mov_name,
                Sequence([t, t_ref]),
                moving_coordinate_system,
                reference_coordinate_system,
                add_to_coordinate_system,
            )
        sdata.set_transformation(ref_name, t_ref, add_to_coordinate_system)
        sdata.set_transformation(mov_name, Sequence([t, t_ref]), add_to_coordinate_system)
    return result


def _carry_along(
    sdata: SpatialData,
    mov_name: str,
    mov_to_new: BaseTransformation,
    moving_cs: str,
    reference_cs: str,
    new_cs: str,
) -> None:
    """Place every element of ``moving_cs`` (through the moving image) and of ``reference_cs`` into ``new_cs``."""
    try:
        mov_to_cs = sdata.get_transformation(mov_name, moving_cs)
    except KeyError as err:
        raise ValidationError(
            f"moving_coordinate_system {moving_cs!r}: the moving image {mov_name!r} has no transformation to it"
        ) from err
    cs_to_new = Sequence([mov_to_cs.inverse(), mov_to_new])  # moving system -> moving pixels -> new system
    for name in sdata.elements_in_coordinate_system(reference_cs):
        if new_cs not in sdata._meta_of(name).transformations:
            sdata.set_transformation(name, sdata.get_transformation(name, reference_cs), new_cs)
    for name in sdata.elements_in_coordinate_system(moving_cs):
        if name != mov_name:
            sdata.set_transformation(
                name, Sequence([sdata.get_transformation(name, moving_cs), cs_to_new]), new_cs
            )


def _peak_score(obj: _Objective, m: np.ndarray, ncc: float) -> float:
    """How much better the found map is than the same map shifted by 4 working pixels (mean over 4 directions):
    ``(ncc - ncc_shifted) / (1 - ncc_shifted)`` in ``[0, 1]``. Chance alignments of unrelated tissue have a
    broad NCC plateau (regions correlate), true ones a sharp peak (edges coincide)."""
    step = 4.0 * obj.unit_t
    shifted = []
    for dx, dy in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
        t = np.eye(3)
        t[:2, 2] = dx, dy
        shifted.append(obj.ncc(t @ m)[0])
    base = float(np.mean(shifted))
    if not ncc > base:
        return 0.0
    return float(np.clip((ncc - base) / (1.0 - base), 0.0, 1.0)) if base < 1.0 else 0.0


def _initial_matrix(initial: BaseTransformation | np.ndarray) -> np.ndarray:
    if isinstance(initial, BaseTransformation):
        m = affine_map(initial, ("x", "y"), ("x", "y"))
        out = np.eye(3)
        out[:2, :2] = m.linear
        out[:2, 2] = m.offset
        return out
    arr = np.asarray(initial, dtype=np.float64)
    if arr.shape == (2, 3):
        arr = np.vstack([arr, [0.0, 0.0, 1.0]])
    if arr.shape != (3, 3) or not np.isfinite(arr).all():
        raise ValidationError(
            f"initial must be a transformation or a 3 x 3 (x, y) matrix, got shape {arr.shape}"
        )
    return arr


def _distinct(
    ms: SequenceABC[np.ndarray], mov_shape: tuple[int, int], pixel: float, n: int
) -> list[np.ndarray]:
    """The first ``n`` matrices whose moving corners differ from those of each earlier one by more than 3
    working pixels (``pixel`` reference px each)."""
    corners = _rect(mov_shape)
    out: list[np.ndarray] = []
    for m in ms:
        if len(out) >= n:
            break
        mapped = _apply(m, corners)
        if all(np.linalg.norm(mapped - _apply(o, corners), axis=1).max() > 3.0 * pixel for o in out):
            out.append(m)
    return out
