"""A JSON summary of a SpatialData object with exactly the schema of the reference's summary script
(``reference_summary.py`` of the compatibility tooling, which is not part of this repository).

The same keys, checksums and affine matrices as the reference's own summary, so that what tissuestack reads
from a store can be compared with what the reference reads from it (``tissuestack info --json STORE``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from tissuestack._container.spatialdata import SpatialData
from tissuestack.elements import TABLE_ATTRS_KEY, get_meta, raster_levels

__all__ = ["summarize"]


def _digest(a: Any) -> str:
    arr = np.ascontiguousarray(np.asarray(a))
    if arr.dtype == object:
        return hashlib.sha1("|".join(map(str, arr.ravel())).encode()).hexdigest()[:16]
    return hashlib.sha1(arr.tobytes()).hexdigest()[:16]


def _transforms(meta, axes: tuple[str, ...]) -> dict[str, list[list[float]]]:
    return {
        cs: np.round(np.asarray(t.to_affine_matrix(axes, axes), dtype=float), 9).tolist()
        for cs, t in meta.transformations.items()
    }


def summarize(sdata: SpatialData) -> dict[str, Any]:
    """Kind -> name -> facts (shapes, dtypes, checksums, transformations), plus the coordinate systems."""
    res: dict[str, Any] = {"images": {}, "labels": {}, "points": {}, "shapes": {}, "tables": {}}
    for kind in ("images", "labels"):
        for name, element in sdata.items([kind]):
            levels = raster_levels(element)
            base = levels[0]
            axes = tuple(str(d) for d in base.dims if d in "zyx")[::-1]
            info: dict[str, Any] = {
                "dims": [str(d) for d in base.dims],
                "dtype": str(base.dtype),
                "levels": [list(lvl.shape) for lvl in levels],
                "sha": _digest(base.values),
                "transforms": _transforms(get_meta(element), axes),
            }
            if "c" in base.dims:
                info["channels"] = [str(c) for c in base.coords["c"].values]
            res[kind][name] = info
    for name, element in sdata.items(["points"]):
        meta = get_meta(element)
        df = element.compute()
        axes = tuple(a for a in ("x", "y", "z") if a in df.columns)
        xyz = df[list(axes)].to_numpy(dtype=float)
        xyz = xyz[np.lexsort(xyz.T[::-1])]
        attrs = {}
        if meta.feature_key is not None:
            attrs["feature_key"] = meta.feature_key
        if meta.instance_key is not None:
            attrs["instance_key"] = meta.instance_key
        res["points"][name] = {
            "rows": len(df),
            "columns": {str(c): str(df[c].dtype) for c in df.columns},
            "sha_xy": _digest(xyz),
            "attrs": attrs,
            "transforms": _transforms(meta, axes),
        }
    for name, gdf in sdata.items(["shapes"]):
        info = {
            "rows": len(gdf),
            "geom_types": sorted(set(gdf.geometry.geom_type)),
            "index": [str(i) for i in gdf.index[:5]],
            "sha_wkb": _digest(np.array([g.wkb_hex for g in gdf.geometry])),
            "columns": {str(c): str(gdf[c].dtype) for c in gdf.columns if c != "geometry"},
            "transforms": _transforms(get_meta(gdf), ("x", "y")),
        }
        if "radius" in gdf.columns:
            info["sha_radius"] = _digest(gdf["radius"].to_numpy(dtype=float))
        res["shapes"][name] = info
    for name, table in sdata.items(["tables"]):
        info = {
            "shape": list(table.shape),
            "obs": {str(c): str(table.obs[c].dtype) for c in table.obs.columns},
            "var_names": [str(v) for v in table.var_names[:10]],
            "obs_names": [str(v) for v in table.obs_names[:5]],
        }
        link = table.uns.get(TABLE_ATTRS_KEY)
        if link:
            region = link.get("region")
            if isinstance(region, np.ndarray):
                region = region.tolist()
            info.update(
                region=region, region_key=link.get("region_key"), instance_key=link.get("instance_key")
            )
        else:
            info["region"] = None
        if table.X is not None:
            info["X_sum"] = float(np.asarray(table.X.sum()))
        res["tables"][name] = info
    res["coordinate_systems"] = sorted(sdata.coordinate_systems)
    return res
