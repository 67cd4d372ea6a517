"""The on-disk format: SpatialData Zarr stores, every version, local or remote.

Importing this package registers every codec (one module per element kind) and chooses Arrow's memory pool
(:mod:`tissuestack._arrow_pool`).
"""

from tissuestack._arrow_pool import choose_memory_pool
from tissuestack.store._points import points_scan, read_points_columns
from tissuestack.store._registry import (
    CONTAINER_FORMATS,
    DEFAULT_ELEMENT_VERSIONS,
    ELEMENT_VERSIONS,
    Codec,
    get_codec,
    register_codec,
)
from tissuestack.store._root import ElementLocation, StoreRoot

choose_memory_pool()  # before the first read

__all__ = [
    "CONTAINER_FORMATS",
    "DEFAULT_ELEMENT_VERSIONS",
    "ELEMENT_VERSIONS",
    "Codec",
    "ElementLocation",
    "StoreRoot",
    "get_codec",
    "points_scan",
    "read_points_columns",
    "register_codec",
]
