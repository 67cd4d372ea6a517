"""Exceptions and warnings raised by tissuestack.

Every error names what it is about (element, file, column or axis) and what was expected, so that a user can
fix the input without reading the source.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousPathError",
    "FormatError",
    "NoPathError",
    "ReaderError",
    "StoreError",
    "TransformationError",
    "UnknownCoordinateSystemError",
    "ValidationError",
]


class ValidationError(ValueError):
    """Input data or metadata does not satisfy the model of an element kind, a name rule or a table link."""


class TransformationError(ValueError):
    """A coordinate transformation is malformed, not invertible, or cannot be encoded/decoded."""


class NoPathError(KeyError):
    """No chain of transformations connects two nodes of the coordinate-system graph."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class UnknownCoordinateSystemError(NoPathError):
    """A coordinate system name that the element or SpatialData object does not have (one error type wherever
    the name is given: on an element, on a SpatialData, in a query or an aggregation). A ``KeyError``."""


class AmbiguousPathError(ValueError):
    """Several chains of transformations with different results connect two nodes of the graph."""


class FormatError(ValueError):
    """A store or element is not in a format (or format version) that tissuestack can read or write."""


class StoreError(OSError):
    """A store cannot be read or written: missing, corrupt or truncated files, refused overwrite."""


class ReaderError(FormatError):
    """A vendor output folder or input file is missing a file, has wrong columns, an unknown version or is
    truncated. The message names the file and what was expected."""
