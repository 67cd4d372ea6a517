"""The SpatialData container and the coordinate-system graph."""

from tissuestack._container.io import read_zarr
from tissuestack._container.spatialdata import ElementsView, SpatialData

__all__ = ["ElementsView", "SpatialData", "read_zarr"]
