"""Spatial queries: bounding boxes (one or many) and polygons, on elements or whole SpatialData objects."""

from tissuestack.query._bbox import bounding_box_query
from tissuestack.query._polygon import check_polygon, polygon_query

__all__ = ["bounding_box_query", "check_polygon", "polygon_query"]
