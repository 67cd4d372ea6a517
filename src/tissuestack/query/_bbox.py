"""Bounding-box queries on every element kind, in any coordinate system reachable through the transformation graph.

This module also holds the machinery shared with :mod:`tissuestack.query._polygon`: per-kind queries of a
*region* given in the target coordinate system (one or many axis-aligned boxes, or one polygon), and the assembly
of a SpatialData result with filtered tables.

Semantics (shared by both queries)
----------------------------------
* The region lives in the target coordinate system. Each element is placed there by ``T``, its transformation
  to the target (found through the coordinate-system graph when a SpatialData is given; elements with no path
  are left out of the result).
* Points and shapes are tested exactly in target coordinates: candidate coordinates are transformed with one
  vectorized affine product (float64) and compared there. Candidates come from the region's bounding box
  back-transformed into intrinsic coordinates (exact interval arithmetic on ``T``'s inverse, widened by a relative
  1e-9 so that rounding never loses a point); when ``T`` is not invertible every row is a candidate (still exact).
* Rasters are cropped to the integer pixel range covering the back-transformed region (level-0 pixel ``i``
  covers ``[i, i + 1)``), and keep their position: every transformation of the crop is
  ``Sequence([Translation(crop offset), T_original])``.
* Empty results: the element is dropped from a SpatialData result and an element-level call returns ``None``.
  Points stay lazy, so emptiness of a points result is only known when the store's row-group statistics show
  that no row group can match; otherwise an empty lazy frame may be returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tissuestack._container import SpatialData
from tissuestack.elements import KINDS, get_kind_protocol, get_table_keys, kind_of
from tissuestack.errors import NoPathError
from tissuestack.ops._resolve import elements_in, transformation_to
from tissuestack.ops._table_filter import filter_table_by_instances
from tissuestack.query._points_query import query_points  # noqa: F401 - re-exported for pl
from tissuestack.query._region import Region, check_box
from tissuestack.query._shapes_query import query_shapes  # noqa: F401 - re-exported for pl

__all__ = ["bounding_box_query"]

_SPATIAL = ("x", "y", "z")
_BOX_COLUMN = "__tissuestack_box__"
_WIDEN = 1e-9  # relative widening of back-transformed bounds used for pruning only
_SNAP = 1e-9  # pixel bounds this close to an integer are snapped to it before floor/ceil


# ================================================================================================ dispatch
def run_query(data: Any, region: Region, target_coordinate_system: str, filter_table: bool) -> list[Any]:
    """Query an element or a SpatialData; one result per box of the region."""
    if isinstance(data, SpatialData):
        return _query_sdata(data, region, target_coordinate_system, filter_table)
    kind = kind_of(data)
    if not kind.is_spatial:
        raise TypeError("a table has no coordinates; query the SpatialData object to filter its tables")
    return kind.query(data, transformation_to(data, target_coordinate_system), region)


def _query_sdata(sdata: SpatialData, region: Region, cs: str, filter_table: bool) -> list[SpatialData]:
    per_box: list[dict[str, tuple[str, Any]]] = [{} for _ in range(region.n)]
    for name, kind, element, t in elements_in(sdata, cs):
        try:
            results = get_kind_protocol(kind).query(element, t, region)
        except NoPathError:  # the path exists but does not produce the axes the region needs
            continue
        for i, r in enumerate(results):
            if r is not None:
                per_box[i][name] = (kind, r)
    return [_assemble(sdata, kept, filter_table) for kept in per_box]


def _assemble(sdata: SpatialData, kept: Mapping[str, tuple[str, Any]], filter_table: bool) -> SpatialData:
    groups: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
    for name, (kind, element) in kept.items():
        groups[kind][name] = element
    for tname, table in sdata.items(["tables"]):
        if not filter_table:
            groups["tables"][tname] = table
            continue
        region, region_key, _ = get_table_keys(table)
        if not region:
            continue
        instances: dict[str, Any] = {}
        for r in region:
            if r not in kept:
                continue
            kind, element = kept[r]
            protocol = get_kind_protocol(kind)
            if protocol.filters_tables:  # shapes: the kept index; labels: the label values in the crop
                instances[r] = protocol.instances(element, r)
            else:  # points are not region elements here: their table rows are kept whole
                obs = table.obs
                instances[r] = obs.loc[obs[region_key].astype(object) == r, get_table_keys(table)[2]].unique()
        if not instances:
            continue
        new = filter_table_by_instances(table, instances, name=tname)
        if new is not None:
            groups["tables"][tname] = new
    return SpatialData(**groups, attrs=sdata.attrs)


# ================================================================================================ public API
def bounding_box_query(
    sdata_or_element: Any,
    axes: Sequence[str],
    min_coordinate: Any,
    max_coordinate: Any,
    target_coordinate_system: str,
    filter_table: bool = True,
) -> Any:
    """Select what lies inside an axis-aligned box of ``target_coordinate_system``.

    Parameters
    ----------
    sdata_or_element
        A SpatialData object, or one image, labels, points or shapes element (which must then have a direct
        transformation to ``target_coordinate_system``).
    axes
        The box's axes, ``("x", "y")`` or ``("x", "y", "z")`` in any order (any non-empty subset of x, y, z is
        accepted). Axes of an element the box does not name are unconstrained; box axes an element does not
        reach are ignored for it (a 3D box on 2D shapes constrains x and y only).
    min_coordinate, max_coordinate
        The box's corners, in the order of ``axes``: shape ``(d,)`` for one box, or ``(n, d)`` for ``n`` boxes
        (vectorized form). Each minimum must be <= its maximum.
    target_coordinate_system
        The coordinate system the box is given in. With a SpatialData, each element is placed there through the
        transformation graph (rotations and general affines included); elements with no path are left out.
    filter_table
        With a SpatialData: tables annotating a kept element keep only the rows of surviving instances (shapes:
        the kept index; labels: the label values present in the crop; rows of points regions are kept whole);
        tables annotating nothing kept are dropped. ``False`` keeps every table unchanged.

    Returns
    -------
    SpatialData, element, None, or a list of them
        A new SpatialData (same ``attrs``) with the non-empty results, or the queried element (``None`` when
        empty). In the vectorized form, a list with one such result per box.

    Notes
    -----
    * **Points** (exact, boundaries inclusive: a point exactly on a face of the box is inside): the result is a
      lazy dask frame filtered per partition. Candidates are selected on the raw coordinate columns by the box
      back-transformed into intrinsic coordinates (for a store-backed frame, as plain column comparisons that
      dask-expr pushes into the Parquet reader, which skips row groups by their min/max statistics), then the
      exact test runs in target coordinates on the candidates only. The whole frame is never materialized. In
      the vectorized form every box's frame derives from one per-partition pass: compute them together
      (``dask.compute(*results)``) to share it.
    * **Shapes**: rows whose geometry intersects the box (touching counts), found through an STRtree cached per
      GeoDataFrame; see :func:`query_shapes` for circles under anisotropic transforms.
    * **Images / labels**: the crop of the box back-transformed into level-0 pixel space, to the covering
      integer range ``[floor(min), ceil(max))`` (clamped; pixel ``i`` covers ``[i, i + 1)``, so a box ending
      exactly on a pixel edge does not take the next pixel; a zero-width box takes the pixel it lies in). The
      crop keeps its position: each transformation becomes ``Sequence([Translation(offset), T])``. Multiscale
      rasters are cropped at every level (offsets divided by the level's size ratio, floor/ceil) and returned as
      a DataTree. Rasters whose transformation is not invertible are returned whole.
    * Empty results are dropped (``None`` for an element); a lazy points result is only known to be empty
      without computing when store row-group statistics prove it.

    Raises
    ------
    ValueError
        On invalid boxes (unknown or repeated axis, wrong lengths, min > max, NaN).
    NoPathError
        For an element with no transformation to the target coordinate system.
    """
    axes, lo, hi, many = check_box(axes, min_coordinate, max_coordinate)
    results = run_query(sdata_or_element, Region(axes, lo, hi), target_coordinate_system, filter_table)
    return results if many else results[0]
