"""Pyramids of raster elements: the factors of an existing pyramid, and building one in a store in place.

``build_pyramids(sdata, name, scale_factors=(2, 2, 2))`` replaces a raster of a store-backed SpatialData by its
multiscale version: the levels are derived lazily from the full-resolution level (``RasterModel.parse`` with
``scale_factors``), written through ``SpatialData.write_element(..., overwrite=True)`` (complete in a temporary
sibling before the old files are swapped away, so an interrupted build leaves the old element intact), and the
element is then re-opened from the new files. An element already multiscale has its pyramid rebuilt from its
full-resolution level.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import xarray as xr

from tissuestack._container import SpatialData
from tissuestack.elements import get_meta, get_raster_model, kind_of, raster_levels
from tissuestack.errors import ValidationError

__all__ = ["build_pyramids", "fitting_factors", "pyramid_factors"]


def pyramid_factors(element: xr.DataArray | xr.DataTree) -> list[dict[str, int]]:
    """Per-level downsampling factors of a multiscale raster (relative to the level above); ``[]`` if single-scale.

    A factor is the rounded ratio of the sizes of consecutive levels along each spatial axis (at least 1), so
    that rebuilding the pyramid from a new full-resolution level gives the same number of levels.
    """
    levels = raster_levels(element)
    dims = [str(d) for d in levels[0].dims if d != "c"]
    out = []
    for prev, nxt in itertools.pairwise(levels):
        out.append({d: max(1, round(prev.sizes[d] / max(nxt.sizes[d], 1))) for d in dims})
    return out


def fitting_factors(factors: Sequence[Mapping[str, int]], sizes: Mapping[str, int]) -> list[dict[str, int]]:
    """The leading ``factors`` that keep every axis of ``sizes`` at least one pixel long."""
    out: list[dict[str, int]] = []
    current = dict(sizes)
    for factor in factors:
        nxt = {d: current[d] // int(factor.get(d, 1)) for d in current}
        if min(nxt.values()) < 1:
            break
        out.append({d: int(factor.get(d, 1)) for d in current})
        current = nxt
    return out


def build_pyramids(
    sdata: SpatialData,
    name: str,
    *,
    scale_factors: Sequence[int | Mapping[str, int]] = (2, 2, 2),
    method: str | None = None,
) -> xr.DataTree:
    """Make raster ``name`` multiscale, in the store backing ``sdata`` (or in memory if there is none).

    Parameters
    ----------
    sdata
        The SpatialData holding the element. When it is backed by a store, the element's files are replaced
        atomically (the new ones are complete before the old ones go) and the element is re-opened from them.
    name
        An image or labels element.
    scale_factors
        One entry per extra level, relative to the level above: an int (every spatial axis) or a mapping of
        axis -> factor (e.g. ``{"x": 2, "y": 2, "z": 1}`` to keep a thin z). Levels whose axes would shrink to
        nothing are refused.
    method
        Downsampling: ``"mean"`` (images default), ``"nearest"`` (labels default), ``"max"`` or ``"min"``.

    Returns
    -------
    The multiscale element now in ``sdata`` (read lazily from the store when there is one); its transformations
    are those of the original element.

    Raises
    ------
    ValidationError
        ``name`` is not a raster, empty ``scale_factors``, factors that shrink an axis to nothing, an unknown
        method or ``"mean"`` for labels.
    StoreError
        Another element of ``sdata`` still reads the element's files (see ``SpatialData.write_element``).
    """
    element = sdata[name]
    kind = kind_of(element)
    if not kind.is_raster:
        raise ValidationError(
            f"element {name!r} is {kind.name}; pyramids are built for images and labels only"
        )
    factors = list(scale_factors)
    if not factors:
        raise ValidationError(f"element {name!r}: scale_factors is empty; give at least one level, e.g. (2,)")
    model = get_raster_model(element)
    meta = get_meta(element)
    level0 = raster_levels(element)[0]
    pyramid = model.parse(
        level0, transformations=dict(meta.transformations), scale_factors=factors, method=method, name=name
    )
    # it reads the files it replaces: write_element then re-opens the element from the new ones
    get_meta(pyramid).source = meta.source
    sdata[name] = pyramid
    if sdata.path is not None:
        sdata.write_element(name, overwrite=True)
    return sdata[name]
