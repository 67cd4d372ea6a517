"""The contract between ``tissuestack.aggregate`` (the front end) and the per-pair implementations.

The front end (``ops/_aggregate.py``) resolves ``values`` and ``by`` (names or elements), works out the
transformation between their intrinsic frames through ``target_coordinate_system``, validates the common
arguments, and then calls the implementation registered for ``(kind of values, kind of by)`` with a
:class:`PairInput`. The implementation returns a :class:`PairResult` whose rows are the instances of ``by`` in
the order of ``by``; the front end turns it into the AnnData.

Each implementation decides which side to transform (the cheaper one): ``values_to_by`` maps the intrinsic
coordinates of ``values`` to those of ``by``; ``by_to_values`` is its inverse when it exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.transforms import AffineMap

__all__ = ["AGG_FUNCS", "PairInput", "PairResult", "get_pair", "register_pair"]

# every aggregation function name accepted by the front end; an implementation may support a subset and must
# raise ValueError naming the pair and the supported ones otherwise
AGG_FUNCS = ("sum", "mean", "min", "max", "count", "std")


@dataclass(frozen=True)
class PairInput:
    """Everything an implementation needs, already resolved and validated by the front end."""

    values: Any  # the values element, in its intrinsic coordinates
    by: Any  # the regions element, in its intrinsic coordinates
    values_name: str  # for error messages ("transcripts", or "values" when an element object was passed)
    by_name: str
    values_to_by: AffineMap  # intrinsic values coords -> intrinsic by coords (spatial axes of each, x/y[/z])
    by_to_values: AffineMap | None  # the inverse, when invertible
    value_keys: list[str] | None  # columns / channels to aggregate; None = the implementation's default
    agg_func: str  # one of AGG_FUNCS
    fractions: bool
    by_instances: pd.Index  # the instance ids of ``by`` in the order of ``by`` (rows of the result)
    options: dict[str, Any] = field(default_factory=dict)  # pair-specific extras (e.g. progress=True)


@dataclass
class PairResult:
    """``X`` has one row per ``by`` instance (order of ``PairInput.by_instances``) and one column per name."""

    X: np.ndarray | Any  # numpy 2-D or a scipy.sparse matrix (counts per category are sparse CSR)
    columns: list[str]
    var: pd.DataFrame | None = None  # optional extra per-column annotations
    obs: pd.DataFrame | None = None  # optional extra per-row annotations (e.g. region area)
    uns: dict[str, Any] = field(default_factory=dict)


PairFunction = Callable[[PairInput], PairResult]

# (values kind, by kind) -> "module:function", imported on first use only
_PAIRS: dict[tuple[str, str], str] = {
    ("points", "shapes"): "tissuestack.ops._aggregate_points:points_by_shapes",
    ("points", "labels"): "tissuestack.ops._aggregate_points:points_by_labels",
    ("shapes", "shapes"): "tissuestack.ops._aggregate_shapes:shapes_by_shapes",
    ("images", "labels"): "tissuestack.ops._aggregate_raster:image_by_labels",
    ("images", "shapes"): "tissuestack.ops._aggregate_raster:image_by_shapes",
    ("labels", "shapes"): "tissuestack.ops._aggregate_raster:labels_by_shapes",
}


def register_pair(values_kind: str, by_kind: str, target: str) -> None:
    """Register ``"module:function"`` as the implementation for ``(values_kind, by_kind)``."""
    _PAIRS[(values_kind, by_kind)] = target


def get_pair(values_kind: str, by_kind: str) -> PairFunction:
    """The implementation for a pair; ``ValueError`` listing the supported pairs otherwise."""
    import importlib

    target = _PAIRS.get((values_kind, by_kind))
    if target is None:
        supported = ", ".join(f"{v} -> {b}" for v, b in _PAIRS)
        raise ValueError(f"cannot aggregate {values_kind} by {by_kind}; supported pairs: {supported}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)
