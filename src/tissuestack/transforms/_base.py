"""Coordinate transformations: small immutable value objects that compose into one homogeneous affine matrix.

Every transformation maps coordinates given over a tuple of *input axes* (names from ``c, x, y, z``) to
coordinates over its *natural output axes* (see :meth:`BaseTransformation.output_axes`). Axes a transformation
does not mention pass through unchanged. :meth:`BaseTransformation.to_affine_matrix` returns the homogeneous
matrix of the map with rows picked for any requested output axes (an output axis the map does not produce gets
an all-zero row).

Implementation note: each concrete type implements one private method, ``_natural(input_axes)``, returning its
natural output axes and its full homogeneous matrix over the given input axes; everything else (sequences,
row selection, application to coordinates, comparison) is built on that once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tissuestack.errors import TransformationError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "AXIS_NAMES",
    "Affine",
    "BaseTransformation",
    "Identity",
    "MapAxis",
    "Scale",
    "Sequence",
    "Translation",
    "compose",
]

#: The only axis names allowed anywhere (docs/format.md §2).
AXIS_NAMES: tuple[str, ...] = ("c", "x", "y", "z")

Axes = tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _validate_axes(axes: Iterable[str], what: str = "axes") -> Axes:
    """Return ``axes`` as a tuple after checking that names are valid and unique."""
    if isinstance(axes, str):
        raise TransformationError(
            f"{what} must be a sequence of axis names such as ('x', 'y'), not the string {axes!r}"
        )
    try:
        tup = tuple(axes)
    except TypeError:
        raise TransformationError(
            f"{what} must be a sequence of axis names, got {type(axes).__name__}"
        ) from None
    seen: set[str] = set()
    for a in tup:
        if not isinstance(a, str) or a not in AXIS_NAMES:
            raise TransformationError(
                f"invalid axis {a!r} in {what} {tup!r}: axis names must be one of 'c', 'x', 'y', 'z'"
            )
        if a in seen:
            raise TransformationError(f"duplicate axis {a!r} in {what} {tup!r}: axis names must be unique")
        seen.add(a)
    return tup


def _check_unique_output(out: Axes, t: BaseTransformation, input_axes: Axes) -> None:
    seen: set[str] = set()
    for a in out:
        if a in seen:
            raise TransformationError(
                f"cannot apply {t!r} to input axes {input_axes!r}: output axis {a!r} would appear twice "
                f"(output axes would be {out!r})"
            )
        seen.add(a)


def _axis_vector(values: ArrayLike, axes: Axes, what: str) -> tuple[float, ...]:
    """Convert ``values`` to a tuple of finite Python floats, one per axis of ``axes``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TransformationError(f"{what} must be a sequence of numbers, got {values!r}") from None
    if arr.ndim != 1:
        raise TransformationError(f"{what} must be a 1-D sequence of numbers, got shape {arr.shape}")
    if len(arr) != len(axes):
        raise TransformationError(f"{what} has {len(arr)} values but axes has {len(axes)} {axes!r}")
    vec = tuple(float(v) for v in arr)
    for a, v in zip(axes, vec, strict=True):
        if not math.isfinite(v):
            raise TransformationError(f"{what} for axis {a!r} is {v!r}; values must be finite")
    return vec


def _homogeneous_eye(n: int) -> np.ndarray:
    return np.eye(n + 1, dtype=np.float64)


def _select_rows(natural_axes: Axes, matrix: np.ndarray, output_axes: Axes) -> np.ndarray:
    """Pick rows of a homogeneous ``matrix`` (rows = ``natural_axes``) for ``output_axes``; missing -> zero row."""
    n_cols = matrix.shape[1]
    out = np.zeros((len(output_axes) + 1, n_cols), dtype=np.float64)
    index = {a: i for i, a in enumerate(natural_axes)}
    for i, a in enumerate(output_axes):
        j = index.get(a)
        if j is not None:
            out[i] = matrix[j]
    out[-1, -1] = 1.0
    return out


def _fmt_vector(values: tuple[float, ...]) -> str:
    return repr(list(values))


# ---------------------------------------------------------------------------------------------------------------
# base class


class BaseTransformation(ABC):
    """Abstract base of all coordinate transformations.

    Transformations are immutable and hashable; equality is structural (same type, same parameters). Use
    :meth:`equivalent` to compare two transformations by the affine map they define.
    """

    __slots__ = ()

    # -- to implement -------------------------------------------------------------------------------------------

    @abstractmethod
    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        """Natural output axes and full homogeneous matrix (``len(out)+1`` x ``len(input_axes)+1``).

        ``input_axes`` is already validated.
        """

    @abstractmethod
    def inverse(self) -> BaseTransformation:
        """Return the inverse transformation.

        Returns
        -------
        BaseTransformation
            A transformation ``inv`` such that ``self`` followed by ``inv`` is the identity.

        Raises
        ------
        TransformationError
            If the transformation is not invertible.
        """

    # -- generic API --------------------------------------------------------------------------------------------

    def output_axes(self, input_axes: Iterable[str]) -> Axes:
        """Axes of the result of applying this transformation to coordinates over ``input_axes``.

        Parameters
        ----------
        input_axes
            Names of the input axes, e.g. ``("c", "y", "x")``.

        Returns
        -------
        tuple of str
            The natural output axes (docs/format.md §3.6, step 1).

        Raises
        ------
        TransformationError
            If an axis name is invalid or repeated, or an output axis would appear twice.
        """
        return self._natural(_validate_axes(input_axes, "input_axes"))[0]

    def to_affine_matrix(self, input_axes: Iterable[str], output_axes: Iterable[str]) -> np.ndarray:
        """Homogeneous affine matrix of this transformation.

        Parameters
        ----------
        input_axes
            Axes of the input coordinates (matrix columns, plus a last constant column).
        output_axes
            Axes of the output coordinates (matrix rows, plus a last ``[0, ..., 0, 1]`` row). An output axis the
            transformation does not produce gets an all-zero row.

        Returns
        -------
        numpy.ndarray
            Array of shape ``(len(output_axes) + 1, len(input_axes) + 1)``, dtype float64 (a new array).
        """
        ia = _validate_axes(input_axes, "input_axes")
        oa = _validate_axes(output_axes, "output_axes")
        natural_axes, matrix = self._natural(ia)
        return _select_rows(natural_axes, matrix, oa)

    def to_affine(self, input_axes: Iterable[str], output_axes: Iterable[str]) -> Affine:
        """Express this transformation as an :class:`Affine` between ``input_axes`` and ``output_axes``.

        Parameters
        ----------
        input_axes, output_axes
            As in :meth:`to_affine_matrix`.

        Returns
        -------
        Affine
        """
        ia = _validate_axes(input_axes, "input_axes")
        oa = _validate_axes(output_axes, "output_axes")
        return Affine(self.to_affine_matrix(ia, oa), ia, oa)

    def compose_with(self, other: BaseTransformation) -> BaseTransformation:
        """Return the transformation "``self``, then ``other``" (see :func:`compose`)."""
        return compose(self, other)

    def apply(
        self,
        coords: ArrayLike,
        input_axes: Iterable[str],
        output_axes: Iterable[str] | None = None,
    ) -> np.ndarray:
        """Apply the transformation to coordinates (vectorized).

        Parameters
        ----------
        coords
            Array of shape ``(N, D)`` whose columns are ``input_axes``. A single point of shape ``(D,)`` is
            also accepted.
        input_axes
            Axis names of the columns of ``coords``.
        output_axes
            Axis names of the result columns; default ``input_axes``.

        Returns
        -------
        numpy.ndarray
            Float64 array of shape ``(N, len(output_axes))`` (or ``(len(output_axes),)`` for a single point).

        Raises
        ------
        TransformationError
            If ``coords`` does not have one column per input axis.
        """
        ia = _validate_axes(input_axes, "input_axes")
        oa = ia if output_axes is None else _validate_axes(output_axes, "output_axes")
        arr = np.asarray(coords, dtype=np.float64)
        single = arr.ndim == 1
        if single:
            arr = arr[np.newaxis, :]
        if arr.ndim != 2:
            raise TransformationError(
                f"coords must be a 2-D array of shape (N, {len(ia)}), got an array of shape {arr.shape}"
            )
        if arr.shape[1] != len(ia):
            raise TransformationError(
                f"coords has {arr.shape[1]} columns but input_axes has {len(ia)} {ia!r}"
            )
        m = self.to_affine_matrix(ia, oa)
        out = arr @ m[:-1, :-1].T + m[:-1, -1]
        return out[0] if single else out

    def is_identity_on(self, axes: Iterable[str], atol: float = 1e-10) -> bool:
        """Whether the transformation's matrix from ``axes`` to ``axes`` is the identity.

        Parameters
        ----------
        axes
            Axes to test on (used as both input and output axes).
        atol
            Absolute tolerance on every matrix entry.

        Returns
        -------
        bool
        """
        ax = _validate_axes(axes, "axes")
        m = self.to_affine_matrix(ax, ax)
        return bool(np.allclose(m, _homogeneous_eye(len(ax)), rtol=0.0, atol=atol))

    def equivalent(
        self,
        other: BaseTransformation,
        input_axes: Iterable[str],
        output_axes: Iterable[str] | None = None,
        atol: float = 1e-10,
    ) -> bool:
        """Whether two transformations define the same affine map (compared by matrices).

        Parameters
        ----------
        other
            The transformation to compare with.
        input_axes
            Input axes to build both matrices over.
        output_axes
            Output axes to compare; default: the natural output axes of ``self`` followed by any further
            natural output axes of ``other``.
        atol
            Absolute tolerance on every matrix entry.

        Returns
        -------
        bool
        """
        if not isinstance(other, BaseTransformation):
            raise TypeError(f"expected a transformation, got {type(other).__name__}")
        ia = _validate_axes(input_axes, "input_axes")
        if output_axes is None:
            oa = self.output_axes(ia)
            oa = oa + tuple(a for a in other.output_axes(ia) if a not in oa)
        else:
            oa = _validate_axes(output_axes, "output_axes")
        a = self.to_affine_matrix(ia, oa)
        b = other.to_affine_matrix(ia, oa)
        return bool(np.allclose(a, b, rtol=0.0, atol=atol))


# ---------------------------------------------------------------------------------------------------------------
# concrete transformations


@dataclass(frozen=True, init=False, repr=False)
class Identity(BaseTransformation):
    """The identity transformation: output = input, over any axes."""

    def __init__(self) -> None:
        pass

    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        return input_axes, _homogeneous_eye(len(input_axes))

    def inverse(self) -> Identity:
        return Identity()

    def __repr__(self) -> str:
        return "Identity()"


@dataclass(frozen=True, init=False, repr=False)
class Scale(BaseTransformation):
    """Scale each named axis by a factor; other axes pass through.

    Parameters
    ----------
    scale
        One non-zero, finite factor per axis.
    axes
        The axes scaled, e.g. ``("x", "y")``.

    Raises
    ------
    TransformationError
        On a zero or non-finite factor, a length mismatch, or invalid axis names.
    """

    scale: tuple[float, ...]
    axes: Axes

    def __init__(self, scale: ArrayLike, axes: Iterable[str]) -> None:
        ax = _validate_axes(axes, "axes")
        vec = _axis_vector(scale, ax, "scale")
        for a, v in zip(ax, vec, strict=True):
            if v == 0.0:
                raise TransformationError(f"scale factor for axis {a!r} is 0; scale factors must be non-zero")
        object.__setattr__(self, "scale", vec)
        object.__setattr__(self, "axes", ax)

    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        m = _homogeneous_eye(len(input_axes))
        factors = dict(zip(self.axes, self.scale, strict=True))
        for i, a in enumerate(input_axes):
            if a in factors:
                m[i, i] = factors[a]
        return input_axes, m

    def inverse(self) -> Scale:
        return Scale([1.0 / s for s in self.scale], self.axes)

    def __repr__(self) -> str:
        return f"Scale({_fmt_vector(self.scale)}, axes={self.axes!r})"


@dataclass(frozen=True, init=False, repr=False)
class Translation(BaseTransformation):
    """Translate each named axis by an offset; other axes pass through.

    Parameters
    ----------
    translation
        One finite offset per axis.
    axes
        The axes translated, e.g. ``("x", "y")``.
    """

    translation: tuple[float, ...]
    axes: Axes

    def __init__(self, translation: ArrayLike, axes: Iterable[str]) -> None:
        ax = _validate_axes(axes, "axes")
        vec = _axis_vector(translation, ax, "translation")
        object.__setattr__(self, "translation", vec)
        object.__setattr__(self, "axes", ax)

    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        m = _homogeneous_eye(len(input_axes))
        offsets = dict(zip(self.axes, self.translation, strict=True))
        for i, a in enumerate(input_axes):
            if a in offsets:
                m[i, -1] = offsets[a]
        return input_axes, m

    def inverse(self) -> Translation:
        return Translation([-t for t in self.translation], self.axes)

    def __repr__(self) -> str:
        return f"Translation({_fmt_vector(self.translation)}, axes={self.axes!r})"


@dataclass(frozen=True, init=False, repr=False)
class Affine(BaseTransformation):
    """A general affine map from ``input_axes`` to ``output_axes``, given as a homogeneous matrix.

    Parameters
    ----------
    matrix
        Homogeneous matrix of shape ``(len(output_axes) + 1, len(input_axes) + 1)`` whose last row is
        ``[0, ..., 0, 1]``; the form without the last row (``len(output_axes)`` rows) is accepted too. Row *i*
        belongs to output axis *i*, column *j* to input axis *j*, the last column is the translation.
    input_axes, output_axes
        Axis names of the matrix columns and rows.

    Raises
    ------
    TransformationError
        On a wrong matrix shape, a bad last row, non-finite entries or invalid axis names.

    Notes
    -----
    Because every transformation has a method ``output_axes(input_axes)``, the affine's own axes are exposed as
    the attributes :attr:`in_axes` and :attr:`out_axes`. When applied to coordinates over other axes, axes not
    among ``in_axes`` pass through, and inputs of the affine missing from the coordinates count as 0.
    """

    _matrix: tuple[tuple[float, ...], ...]
    in_axes: Axes
    out_axes: Axes

    def __init__(self, matrix: ArrayLike, input_axes: Iterable[str], output_axes: Iterable[str]) -> None:
        ia = _validate_axes(input_axes, "input_axes")
        oa = _validate_axes(output_axes, "output_axes")
        try:
            m = np.array(matrix, dtype=np.float64)
        except (TypeError, ValueError):
            raise TransformationError(
                f"affine matrix must be a 2-D array of numbers, got {matrix!r}"
            ) from None
        n_in, n_out = len(ia), len(oa)
        full = (n_out + 1, n_in + 1)
        if m.ndim != 2 or m.shape not in (full, (n_out, n_in + 1)):
            raise TransformationError(
                f"affine matrix for {n_in} input axes {ia!r} and {n_out} output axes {oa!r} must have shape "
                f"{full} (or {(n_out, n_in + 1)} without the last row), got shape {m.shape}"
            )
        if not np.all(np.isfinite(m)):
            raise TransformationError("affine matrix must contain only finite numbers")
        last = np.zeros(n_in + 1)
        last[-1] = 1.0
        if m.shape == full:
            if not np.allclose(m[-1], last, rtol=0.0, atol=1e-12):
                raise TransformationError(
                    f"the last row of an affine matrix must be {last.tolist()!r}, got {m[-1].tolist()!r}"
                )
            m[-1] = last
        else:
            m = np.vstack([m, last])
        object.__setattr__(self, "_matrix", tuple(tuple(float(v) for v in row) for row in m))
        object.__setattr__(self, "in_axes", ia)
        object.__setattr__(self, "out_axes", oa)

    @property
    def matrix(self) -> np.ndarray:
        """The full homogeneous matrix (a new, read-only float64 array)."""
        m = np.array(self._matrix, dtype=np.float64).reshape(len(self.out_axes) + 1, len(self.in_axes) + 1)
        m.flags.writeable = False
        return m

    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        in_t, out_t = self.in_axes, self.out_axes
        if not any(a in in_t for a in input_axes):
            return input_axes, _homogeneous_eye(len(input_axes))
        kept = tuple(a for a in input_axes if a not in in_t)
        out = kept + out_t
        _check_unique_output(out, self, input_axes)
        t = self.matrix
        col = {a: j for j, a in enumerate(input_axes)}
        m = np.zeros((len(out) + 1, len(input_axes) + 1), dtype=np.float64)
        for i, a in enumerate(kept):
            m[i, col[a]] = 1.0
        # columns of the affine's inputs that exist among input_axes; absent inputs count as 0
        src = [(jt, col[a]) for jt, a in enumerate(in_t) if a in col]
        t_cols = [jt for jt, _ in src]
        m_cols = [j for _, j in src]
        rows = slice(len(kept), len(kept) + len(out_t))
        m[rows, m_cols] = t[:-1, t_cols]
        m[rows, -1] = t[:-1, -1]
        m[-1, -1] = 1.0
        return out, m

    def inverse(self) -> Affine:
        n_in, n_out = len(self.in_axes), len(self.out_axes)
        if n_in != n_out:
            raise TransformationError(
                f"cannot invert {self!r}: its linear part is {n_out}x{n_in}, not square, so it is not invertible"
            )
        m = self.matrix
        lin, off = m[:-1, :-1], m[:-1, -1]
        if n_in and np.linalg.matrix_rank(lin) < n_in:
            raise TransformationError(f"cannot invert {self!r}: its linear part is singular (not invertible)")
        inv = np.linalg.inv(lin) if n_in else lin
        new = _homogeneous_eye(n_in)
        new[:-1, :-1] = inv
        new[:-1, -1] = -inv @ off
        return Affine(new, self.out_axes, self.in_axes)

    def __repr__(self) -> str:
        rows = [list(r) for r in self._matrix]
        return f"Affine({rows!r}, input_axes={self.in_axes!r}, output_axes={self.out_axes!r})"


@dataclass(frozen=True, init=False, repr=False)
class MapAxis(BaseTransformation):
    """Rename, permute or duplicate axes.

    Parameters
    ----------
    map_axis
        Mapping *output axis name -> input axis name*; key order is kept (it decides the order of output axes
        when several outputs come from the same input axis).

    Notes
    -----
    Applied to input axes ``A``: walking ``A``, an axis that is not a value of the mapping is kept; an axis that
    is a value is replaced by every key mapping to it, in key order.
    """

    _items: tuple[tuple[str, str], ...]

    def __init__(self, map_axis: Mapping[str, str]) -> None:
        if not isinstance(map_axis, Mapping):
            raise TransformationError(
                f"map_axis must be a mapping of output axis -> input axis, got {type(map_axis).__name__}"
            )
        keys = _validate_axes(tuple(map_axis.keys()), "map_axis keys (output axes)")
        for v in map_axis.values():
            if not isinstance(v, str) or v not in AXIS_NAMES:
                raise TransformationError(
                    f"invalid axis {v!r} in map_axis values (input axes): axis names must be one of "
                    "'c', 'x', 'y', 'z'"
                )
        object.__setattr__(self, "_items", tuple((k, map_axis[k]) for k in keys))

    @property
    def map_axis(self) -> dict[str, str]:
        """The mapping output axis -> input axis (a new dict, in key order)."""
        return dict(self._items)

    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        out: list[str] = []
        src: list[int] = []
        for j, a in enumerate(input_axes):
            keys = [k for k, v in self._items if v == a]
            if not keys:
                out.append(a)
                src.append(j)
            else:
                out.extend(keys)
                src.extend([j] * len(keys))
        out_t = tuple(out)
        _check_unique_output(out_t, self, input_axes)
        m = np.zeros((len(out_t) + 1, len(input_axes) + 1), dtype=np.float64)
        m[np.arange(len(out_t)), src] = 1.0
        m[-1, -1] = 1.0
        return out_t, m

    def inverse(self) -> MapAxis:
        by_value: dict[str, list[str]] = {}
        for k, v in self._items:
            by_value.setdefault(v, []).append(k)
        for v, ks in by_value.items():
            if len(ks) > 1:
                raise TransformationError(
                    f"cannot invert {self!r}: it is not a bijection (input axis {v!r} is mapped to several "
                    f"output axes {tuple(ks)!r})"
                )
        return MapAxis({v: k for k, v in self._items})

    def __repr__(self) -> str:
        return f"MapAxis({self.map_axis!r})"


@dataclass(frozen=True, init=False, repr=False)
class Sequence(BaseTransformation):
    """Several transformations applied one after the other, in list order.

    Parameters
    ----------
    transformations
        The members; the first is applied first. Structure is kept as given (use :func:`compose` to get a
        flattened sequence).
    """

    transformations: tuple[BaseTransformation, ...]

    def __init__(self, transformations: Iterable[BaseTransformation]) -> None:
        if isinstance(transformations, BaseTransformation):
            raise TypeError("Sequence expects a list of transformations, got a single transformation")
        members = tuple(transformations)
        for i, t in enumerate(members):
            if not isinstance(t, BaseTransformation):
                raise TypeError(f"Sequence member {i} is not a transformation: {type(t).__name__}")
        object.__setattr__(self, "transformations", members)

    def _natural(self, input_axes: Axes) -> tuple[Axes, np.ndarray]:
        axes = input_axes
        m = _homogeneous_eye(len(input_axes))
        for t in self.transformations:
            axes, mt = t._natural(axes)
            m = mt @ m
        return axes, m

    def inverse(self) -> Sequence:
        return Sequence([t.inverse() for t in reversed(self.transformations)])

    def __repr__(self) -> str:
        return f"Sequence([{', '.join(repr(t) for t in self.transformations)}])"


# ---------------------------------------------------------------------------------------------------------------
# composition


def _flatten(t: BaseTransformation, into: list[BaseTransformation]) -> None:
    if isinstance(t, Sequence):
        for member in t.transformations:
            _flatten(member, into)
    elif not isinstance(t, Identity):
        into.append(t)


def compose(*transformations: BaseTransformation) -> BaseTransformation:
    """Compose transformations left to right (the first is applied first).

    Nested sequences are flattened and identities dropped. With nothing left the result is :class:`Identity`;
    with one member left that member itself; otherwise a flat :class:`Sequence`.

    Parameters
    ----------
    *transformations
        Transformations in application order.

    Returns
    -------
    BaseTransformation
    """
    flat: list[BaseTransformation] = []
    for i, t in enumerate(transformations):
        if not isinstance(t, BaseTransformation):
            raise TypeError(f"compose argument {i} is not a transformation: {type(t).__name__}")
        _flatten(t, flat)
    if not flat:
        return Identity()
    if len(flat) == 1:
        return flat[0]
    return Sequence(flat)
