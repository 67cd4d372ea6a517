"""The features of a GeoJSON document, with one error wording wherever GeoJSON is read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["geojson_features"]


def geojson_features(obj: Any, where: str, error: type[Exception], expected: str) -> list[Mapping[str, Any]]:
    """The list of Feature objects of a FeatureCollection, a single Feature or a list of Features.

    ``where`` starts the error message (element or file), ``error`` is the exception type the caller raises and
    ``expected`` says what the caller wanted (e.g. "a FeatureCollection, a Feature or a list of Features").
    """
    if isinstance(obj, Mapping) and obj.get("type") == "FeatureCollection":
        features = obj.get("features")
    elif isinstance(obj, Mapping) and obj.get("type") == "Feature":
        features = [obj]
    elif isinstance(obj, list):
        features = obj
    else:
        kind = obj.get("type") if isinstance(obj, Mapping) else type(obj).__name__
        raise error(f"{where}: GeoJSON of type {kind!r} is not supported; expected {expected}")
    if not isinstance(features, list) or not all(isinstance(f, Mapping) for f in features):
        raise error(f"{where}: GeoJSON 'features' must be a list of Feature objects")
    return features
