"""Coordinate transformations and their JSON (NGFF draft) encoding.

Transformations are small immutable values (:class:`Identity`, :class:`Scale`, :class:`Translation`,
:class:`Affine`, :class:`MapAxis`, :class:`Sequence`) that compose into one homogeneous affine matrix and apply to
``N x D`` coordinate arrays in one vectorized call.
"""

from tissuestack.transforms._affine_map import AffineMap, affine_map, apply_affine
from tissuestack.transforms._base import (
    AXIS_NAMES,
    Affine,
    BaseTransformation,
    Identity,
    MapAxis,
    Scale,
    Sequence,
    Translation,
    compose,
)
from tissuestack.transforms._ngff import (
    coordinate_system_units,
    from_ngff_dict,
    to_ngff_dict,
    transformations_from_ngff,
    transformations_to_ngff,
)

__all__ = [
    "AXIS_NAMES",
    "Affine",
    "AffineMap",
    "BaseTransformation",
    "Identity",
    "MapAxis",
    "Scale",
    "Sequence",
    "Translation",
    "affine_map",
    "apply_affine",
    "compose",
    "coordinate_system_units",
    "from_ngff_dict",
    "to_ngff_dict",
    "transformations_from_ngff",
    "transformations_to_ngff",
]
