"""The SpatialData container and the coordinate-system graph."""

from tissuestack._container.spatialdata import ElementsView, SpatialData

__all__ = ["ElementsView", "SpatialData"]
