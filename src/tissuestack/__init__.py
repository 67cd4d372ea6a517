"""tissuestack: multimodal spatial omics data in shared coordinate systems.

``import tissuestack`` is kept fast: the public names below are imported from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tissuestack._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # container
    "SpatialData": "tissuestack._container",
    "read_zarr": "tissuestack._container",
    # element models and metadata
    "Image2DModel": "tissuestack.elements",
    "Image3DModel": "tissuestack.elements",
    "Labels2DModel": "tissuestack.elements",
    "Labels3DModel": "tissuestack.elements",
    "PointsModel": "tissuestack.elements",
    "ShapesModel": "tissuestack.elements",
    "TableModel": "tissuestack.elements",
    "get_transformation": "tissuestack.elements",
    "set_transformation": "tissuestack.elements",
    "remove_transformation": "tissuestack.elements",
    "get_axes": "tissuestack.elements",
    "get_kind": "tissuestack.elements",
    "get_table_keys": "tissuestack.elements",
    "sanitize_name": "tissuestack.elements",
    "set_channel_names": "tissuestack.elements",
    # transformations
    "BaseTransformation": "tissuestack.transforms",
    "Identity": "tissuestack.transforms",
    "Scale": "tissuestack.transforms",
    "Translation": "tissuestack.transforms",
    "Affine": "tissuestack.transforms",
    "MapAxis": "tissuestack.transforms",
    "Sequence": "tissuestack.transforms",
    "compose": "tissuestack.transforms",
    # spatial queries
    "bounding_box_query": "tissuestack.query",
    "polygon_query": "tissuestack.query",
    # operations
    "get_extent": "tissuestack.ops",
    "get_centroids": "tissuestack.ops",
    "transform": "tissuestack.ops",
    "concatenate": "tissuestack.ops",
    "join_spatialelement_table": "tissuestack.ops",
    "match_table_to_element": "tissuestack.ops",
    "match_element_to_table": "tissuestack.ops",
    "filter_table": "tissuestack.ops",
    "get_values": "tissuestack.ops",
    # errors
    "ValidationError": "tissuestack.errors",
    "TransformationError": "tissuestack.errors",
    "AmbiguousPathError": "tissuestack.errors",
    "NoPathError": "tissuestack.errors",
    "UnknownCoordinateSystemError": "tissuestack.errors",
    "FormatError": "tissuestack.errors",
    "StoreError": "tissuestack.errors",
    "ReaderError": "tissuestack.errors",
    # aggregation
    "aggregate": "tissuestack.ops",
    # alignment
    "get_transformation_between_landmarks": "tissuestack.ops",
    "align_elements_using_landmarks": "tissuestack.ops",
    "register_images": "tissuestack.ops",
    "RegistrationResult": "tissuestack.ops",
    # rasterisation
    "rasterize": "tissuestack.ops",
    "rasterize_bins": "tissuestack.ops",
    # vectorization
    "to_polygons": "tissuestack.ops",
    "to_circles": "tissuestack.ops",
    # raster operations
    "map_raster": "tissuestack.ops",
    "relabel_sequential": "tissuestack.ops",
    "unpad_raster": "tissuestack.ops",
    "build_pyramids": "tissuestack.ops",
    # machine learning (torch optional)
    "ImageTilesDataset": "tissuestack.ml",
    # the browser viewer (bokeh optional)
    "view": "tissuestack.viewer",
    "Viewer": "tissuestack.viewer",
}
_SUBMODULES = ("datasets", "elements", "transforms", "errors", "io", "ml", "ops", "pl", "query", "store", "viewer")

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"tissuestack.{name}")
    raise AttributeError(f"module 'tissuestack' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from tissuestack import datasets, elements, errors, io, ml, ops, pl, query, store, transforms, viewer
    from tissuestack._container import SpatialData, read_zarr
    from tissuestack.elements import (
        Image2DModel,
        Image3DModel,
        Labels2DModel,
        Labels3DModel,
        PointsModel,
        ShapesModel,
        TableModel,
        get_axes,
        get_kind,
        get_table_keys,
        get_transformation,
        remove_transformation,
        sanitize_name,
        set_channel_names,
        set_transformation,
    )
    from tissuestack.errors import (
        AmbiguousPathError,
        FormatError,
        NoPathError,
        ReaderError,
        StoreError,
        TransformationError,
        UnknownCoordinateSystemError,
        ValidationError,
    )
    from tissuestack.ml import ImageTilesDataset
    from tissuestack.ops import (
        RegistrationResult,
        aggregate,
        align_elements_using_landmarks,
        build_pyramids,
        concatenate,
        filter_table,
        get_centroids,
        get_extent,
        get_transformation_between_landmarks,
        get_values,
        join_spatialelement_table,
        map_raster,
        match_element_to_table,
        match_table_to_element,
        rasterize,
        rasterize_bins,
        register_images,
        relabel_sequential,
        to_circles,
        to_polygons,
        transform,
        unpad_raster,
    )
    from tissuestack.query import bounding_box_query, polygon_query
    from tissuestack.transforms import (
        Affine,
        BaseTransformation,
        Identity,
        MapAxis,
        Scale,
        Sequence,
        Translation,
        compose,
    )
    from tissuestack.viewer import Viewer, view
