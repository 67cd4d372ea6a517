"""Operations on elements and SpatialData objects: extents, centroids, transforms, concatenation, joins,
rasterisation, vectorization, registration."""

from tissuestack.ops._aggregate import aggregate, store_aggregation
from tissuestack.ops._centroids import get_centroids
from tissuestack.ops._concatenate import concatenate
from tissuestack.ops._extent import get_extent
from tissuestack.ops._joins import (
    element_instances,
    filter_table,
    join_spatialelement_table,
    match_element_to_table,
    match_table_to_element,
)
from tissuestack.ops._landmarks import align_elements_using_landmarks, get_transformation_between_landmarks
from tissuestack.ops._pyramids import build_pyramids
from tissuestack.ops._raster_ops import map_raster, relabel_sequential, unpad_raster
from tissuestack.ops._rasterize import rasterize, rasterize_bins
from tissuestack.ops._register import RegistrationResult, register_images
from tissuestack.ops._transform import transform
from tissuestack.ops._values import get_values
from tissuestack.ops._vectorize import to_circles, to_polygons

__all__ = [
    "RegistrationResult",
    "aggregate",
    "align_elements_using_landmarks",
    "build_pyramids",
    "concatenate",
    "element_instances",
    "filter_table",
    "get_centroids",
    "get_extent",
    "get_transformation_between_landmarks",
    "get_values",
    "join_spatialelement_table",
    "map_raster",
    "match_element_to_table",
    "match_table_to_element",
    "rasterize",
    "rasterize_bins",
    "register_images",
    "relabel_sequential",
    "store_aggregation",
    "to_circles",
    "to_polygons",
    "transform",
    "unpad_raster",
]
