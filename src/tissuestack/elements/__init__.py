"""The five element kinds: parse (normalise input) and validate, plus their spatial metadata."""

from tissuestack.elements._deferred import Deferred
from tissuestack.elements._kinds import KINDS, SPATIAL_KINDS, Kind, get_axes, get_kind, parse_as, validate_as
from tissuestack.elements._meta import (
    DEFAULT_COORDINATE_SYSTEM,
    ElementMeta,
    get_meta,
    get_transformation,
    has_meta,
    meta_transformation,
    remove_meta_transformation,
    remove_transformation,
    set_meta,
    set_meta_transformation,
    set_transformation,
)
from tissuestack.elements._naming import check_name, is_valid_name, sanitize_name
from tissuestack.elements._points import PointsModel, points_axes
from tissuestack.elements._raster import (
    Image2DModel,
    Image3DModel,
    Labels2DModel,
    Labels3DModel,
    get_raster_model,
    raster_levels,
    set_channel_names,
)
from tissuestack.elements._record import ElementRecord, record_of
from tissuestack.elements._shapes import ShapesModel, shapes_axes, shapes_type
from tissuestack.elements._tables import (
    TABLE_ATTRS_KEY,
    TableModel,
    get_table_keys,
    set_table_annotates,
    table_rows,
)

__all__ = [
    "DEFAULT_COORDINATE_SYSTEM",
    "KINDS",
    "SPATIAL_KINDS",
    "TABLE_ATTRS_KEY",
    "Deferred",
    "ElementMeta",
    "ElementRecord",
    "Image2DModel",
    "Image3DModel",
    "Kind",
    "Labels2DModel",
    "Labels3DModel",
    "PointsModel",
    "ShapesModel",
    "TableModel",
    "check_name",
    "get_axes",
    "get_kind",
    "get_meta",
    "get_raster_model",
    "get_table_keys",
    "get_transformation",
    "has_meta",
    "is_valid_name",
    "meta_transformation",
    "parse_as",
    "points_axes",
    "raster_levels",
    "record_of",
    "remove_meta_transformation",
    "remove_transformation",
    "sanitize_name",
    "set_channel_names",
    "set_meta",
    "set_meta_transformation",
    "set_table_annotates",
    "set_transformation",
    "shapes_axes",
    "shapes_type",
    "table_rows",
    "validate_as",
]
