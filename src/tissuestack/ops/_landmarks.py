"""Alignment from landmarks: a least-squares rigid, similarity or affine map between two sets of matched points.

Landmarks are ``N x 2`` arrays of ``(x, y)`` coordinates (or points elements, or point shapes), matched by row:
row ``i`` of ``moving`` corresponds to row ``i`` of ``references`` (points elements in the order of their index,
which is the order the landmarks were made in even where a store keeps the rows spatially sorted). The fitted transformation maps ``moving``
onto ``references``.

Fits
----
* ``rigid``: rotation + translation; ``similarity``: rotation + uniform scale + translation. Both are the
  closed-form least-squares solution of the orthogonal Procrustes problem (SVD of the cross-covariance of the
  centred sets; the scale of the similarity is the optimal one for that rotation). With
  ``allow_reflection=True`` (default) the orthogonal part may be a reflection (the sections were mounted
  flipped) when that fits better; with ``False`` it is always a proper rotation.
* ``affine``: the general 6-parameter least-squares fit (at least 3 landmarks, not all on one line).

Residuals are the Euclidean distances, one per landmark, between the mapped moving landmark and its reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from tissuestack._container import SpatialData
from tissuestack.elements import ElementKind, get_transformation, kind_of
from tissuestack.errors import ValidationError
from tissuestack.transforms import Affine, BaseTransformation, Sequence, affine_map

__all__ = [
    "LANDMARK_KINDS",
    "align_elements_using_landmarks",
    "fit_landmarks",
    "get_transformation_between_landmarks",
    "landmark_coordinates",
]

LandmarkKind = Literal["rigid", "similarity", "affine"]
LANDMARK_KINDS: tuple[str, ...] = ("rigid", "similarity", "affine")


# ================================================================================================ inputs
def landmark_coordinates(
    landmarks: Any,
    what: str,
    *,
    sdata: SpatialData | None = None,
    coordinate_system: str | None = None,
) -> np.ndarray:
    """``N x 2`` float64 ``(x, y)`` coordinates of a landmark set.

    ``landmarks`` is an array-like ``N x 2``, a points element (dask or pandas frame with ``x``/``y``), shapes
    made of points, or the name of a points/shapes element of ``sdata``. Elements are expressed in
    ``coordinate_system`` when one is given (through the graph of ``sdata`` for a name), else intrinsically.
    """
    name = None
    if isinstance(landmarks, str):
        if sdata is None:
            raise TypeError(f"{what} {landmarks!r} is an element name: pass sdata=")
        name = landmarks
        if name not in sdata:
            raise KeyError(f"{what}: no element {name!r} in the SpatialData object")
        landmarks = sdata[name]
    try:
        kind = kind_of(landmarks)
    except (TypeError, ValidationError):
        kind = None
    if kind is not None and kind.filterable:  # points, shapes: a row per landmark
        coords = _element_xy(landmarks, kind, what if name is None else f"{what} {name!r}")
        if coordinate_system is not None:
            if sdata is not None and name is not None:
                t = sdata.get_transformation_between(name, coordinate_system)
            else:
                t = get_transformation(landmarks, coordinate_system)
            coords = affine_map(t, ("x", "y"), ("x", "y")).apply(coords)
        return _check_xy(coords, what)
    if kind is not None:
        raise ValidationError(
            f"{what} must be landmark coordinates or a points/shapes element, not {kind.name}"
        )
    if hasattr(landmarks, "columns") and {"x", "y"} <= set(landmarks.columns):  # a plain DataFrame
        landmarks = np.column_stack([np.asarray(landmarks["x"]), np.asarray(landmarks["y"])])
    try:
        arr = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"{what} must be an N x 2 array of (x, y) coordinates") from None
    return _check_xy(arr, what)


def _element_xy(element: Any, kind: ElementKind, what: str) -> np.ndarray:
    if kind.lazy_rows:  # points
        df = element[["x", "y"]]
        df = df.compute() if hasattr(df, "compute") else df
        if df.index.is_unique:
            # matched in index order: the order the landmarks were made in (a store keeps the index while it
            # stores the rows spatially sorted)
            df = df.sort_index(kind="stable")
        return df.to_numpy(dtype=np.float64)
    import shapely

    geoms = np.asarray(element.geometry.array)
    if len(geoms) and not (shapely.get_type_id(geoms) == shapely.GeometryType.POINT).all():
        raise ValidationError(f"{what}: landmark shapes must be points (circles), found other geometries")
    return np.column_stack([shapely.get_x(geoms), shapely.get_y(geoms)]) if len(geoms) else np.zeros((0, 2))


def _check_xy(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValidationError(f"{what} must be an N x 2 array of (x, y) coordinates, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValidationError(f"{what} contains NaN or infinite coordinates")
    return arr


# ================================================================================================ fit
def fit_landmarks(
    references: np.ndarray,
    moving: np.ndarray,
    kind: str = "similarity",
    *,
    allow_reflection: bool = True,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """The 3 x 3 homogeneous matrix (x, y) of the least-squares ``kind`` map taking ``moving`` to ``references``.

    ``weights`` (one non-negative value per landmark) weight the squared residuals.
    """
    if kind not in LANDMARK_KINDS:
        raise ValueError(f"kind must be one of {LANDMARK_KINDS}, got {kind!r}")
    ref = np.asarray(references, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    if ref.shape != mov.shape:
        raise ValidationError(
            f"references and moving must hold the same number of landmarks, got {len(ref)} and {len(mov)}"
        )
    n = len(ref)
    need = 3 if kind == "affine" else 2
    if n < need:
        raise ValidationError(f"a {kind} fit needs at least {need} landmarks, got {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValidationError("weights must hold one non-negative value per landmark, not all zero")
    w = w / w.sum()
    mu_m = w @ mov
    mu_r = w @ ref
    dm = mov - mu_m
    dr = ref - mu_r
    out = np.eye(3)
    if kind == "affine":
        sw = np.sqrt(w)[:, None]
        design = dm * sw
        if np.linalg.matrix_rank(design, tol=1e-9 * max(1.0, np.abs(design).max())) < 2:
            raise ValidationError("an affine fit needs landmarks that are not all on one line")
        lin, *_ = np.linalg.lstsq(design, dr * sw, rcond=None)
        a = lin.T
    else:
        var_m = float(w @ (dm**2).sum(axis=1))
        if var_m <= 1e-24:
            raise ValidationError("the moving landmarks all coincide: no rotation or scale can be fitted")
        cov = (dr * w[:, None]).T @ dm  # sum_i w_i r_i m_i^T
        u, s, vt = np.linalg.svd(cov)
        d = np.ones(2)
        if not allow_reflection and np.linalg.det(u @ vt) < 0:
            d[-1] = -1.0
        rot = u @ np.diag(d) @ vt
        scale = float((s * d).sum() / var_m) if kind == "similarity" else 1.0
        a = scale * rot
    out[:2, :2] = a
    out[:2, 2] = mu_r - a @ mu_m
    return out


def _affine(matrix: np.ndarray) -> Affine:
    return Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))


def _residuals(matrix: np.ndarray, references: np.ndarray, moving: np.ndarray) -> np.ndarray:
    mapped = moving @ matrix[:2, :2].T + matrix[:2, 2]
    return np.sqrt(((mapped - references) ** 2).sum(axis=1))


def get_transformation_between_landmarks(
    references: Any,
    moving: Any,
    kind: LandmarkKind = "similarity",
    *,
    allow_reflection: bool = True,
    return_residuals: bool = False,
    sdata: SpatialData | None = None,
    coordinate_system: str | None = None,
) -> Affine | tuple[Affine, np.ndarray]:
    """The least-squares transformation that maps the ``moving`` landmarks onto the ``references``.

    Parameters
    ----------
    references, moving
        Matched landmark sets (row ``i`` with row ``i``): ``N x 2`` arrays of ``(x, y)``, points elements,
        point shapes, or names of such elements in ``sdata``.
    kind
        ``"rigid"`` (rotation + translation), ``"similarity"`` (+ uniform scale) or ``"affine"``.
    allow_reflection
        Let the rigid/similarity fit mirror the moving set when that fits better (flipped sections); ``False``
        restricts it to proper rotations.
    return_residuals
        Also return the per-landmark residuals: the distance from each mapped moving landmark to its reference.
    sdata, coordinate_system
        Where named elements are found, and the coordinate system element landmarks are expressed in (default:
        their intrinsic coordinates).

    Returns
    -------
    Affine
        Over axes ``(x, y)``; with ``return_residuals=True`` the tuple ``(affine, residuals)``.
    """
    ref = landmark_coordinates(references, "references", sdata=sdata, coordinate_system=coordinate_system)
    mov = landmark_coordinates(moving, "moving", sdata=sdata, coordinate_system=coordinate_system)
    matrix = fit_landmarks(ref, mov, kind, allow_reflection=allow_reflection)
    t = _affine(matrix)
    if return_residuals:
        return t, _residuals(matrix, ref, mov)
    return t


def align_elements_using_landmarks(
    sdata: SpatialData,
    references_coords: Any,
    moving_coords: Any,
    reference_element: str,
    moving_element: str,
    reference_coordinate_system: str = "global",
    moving_coordinate_system: str = "global",
    new_coordinate_system: str = "aligned",
    kind: LandmarkKind = "similarity",
    *,
    allow_reflection: bool = True,
    moving_elements: Iterable[str] | None = None,
    return_residuals: bool = False,
) -> Affine | tuple[Affine, np.ndarray]:
    """Define ``new_coordinate_system`` in which the moving data are aligned onto the reference data.

    The landmarks ``references_coords`` are expressed in ``reference_coordinate_system`` and ``moving_coords``
    in ``moving_coordinate_system`` (arrays, or points elements / their names in ``sdata``, transformed into
    those systems). The fitted map ``A`` (moving system -> reference system) is then applied to every element:

    * the moving group — every element with a transformation to ``moving_coordinate_system`` (or, when the two
      systems have the same name, only ``moving_element`` and the elements listed in ``moving_elements``) —
      gets ``new_coordinate_system = T_moving then A``;
    * every other element with a transformation to ``reference_coordinate_system`` gets
      ``new_coordinate_system = T_reference``.

    Several datasets can thus be brought into one common coordinate system by calling this once per moving
    dataset with the same ``new_coordinate_system``. ``sdata`` is modified in place (metadata only; call
    ``sdata.write_metadata()`` to persist it).

    Returns
    -------
    Affine
        ``A`` over ``(x, y)``, plus the per-landmark residuals with ``return_residuals=True``.
    """
    for name, role in ((reference_element, "reference_element"), (moving_element, "moving_element")):
        if name not in sdata or sdata.kind_of(name) == "tables":
            raise KeyError(f"{role} {name!r} is not a spatial element of the SpatialData object")
    t_ref = sdata.get_transformation(reference_element, get_all=True)
    if reference_coordinate_system not in t_ref:
        raise ValidationError(
            f"reference_element {reference_element!r} has no transformation to {reference_coordinate_system!r}"
            f" (it has {list(t_ref)})"
        )
    t_mov = sdata.get_transformation(moving_element, get_all=True)
    if moving_coordinate_system not in t_mov:
        raise ValidationError(
            f"moving_element {moving_element!r} has no transformation to {moving_coordinate_system!r}"
            f" (it has {list(t_mov)})"
        )
    ref = landmark_coordinates(
        references_coords, "references_coords", sdata=sdata, coordinate_system=reference_coordinate_system
    )
    mov = landmark_coordinates(
        moving_coords, "moving_coords", sdata=sdata, coordinate_system=moving_coordinate_system
    )
    matrix = fit_landmarks(ref, mov, kind, allow_reflection=allow_reflection)
    a = _affine(matrix)

    same = reference_coordinate_system == moving_coordinate_system
    extra = set(moving_elements or ())
    unknown = sorted(extra - set(sdata.keys()))
    if unknown:
        raise KeyError(f"moving_elements {unknown} are not elements of the SpatialData object")
    updates: dict[str, BaseTransformation] = {}
    for name, _element in sdata.spatial_items():
        ts_ = sdata.get_transformation(name, get_all=True)
        follows = name == moving_element or name in extra or (not same and moving_coordinate_system in ts_)
        if follows:
            if moving_coordinate_system not in ts_:
                raise ValidationError(
                    f"moving element {name!r} has no transformation to {moving_coordinate_system!r}"
                )
            updates[name] = Sequence([ts_[moving_coordinate_system], a])
        elif reference_coordinate_system in ts_:
            updates[name] = ts_[reference_coordinate_system]
    for name, t in updates.items():
        sdata.set_transformation(name, t, new_coordinate_system)
    if return_residuals:
        return a, _residuals(matrix, ref, mov)
    return a
