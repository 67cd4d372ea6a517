"""Annotations drawn in the viewer, as elements of the SpatialData object (and of its store).

Saving the annotations under a name ``N`` in coordinate system ``CS`` writes, each only when it has rows:

* ``N`` — shapes (polygons): the drawn polygons and rectangles, indexed by annotation name;
* ``N_circles`` — shapes (circles): the drawn circles, indexed by annotation name;
* ``N_landmarks`` — points with columns ``x``, ``y``, ``name`` and ``class``, in the order they were placed
  (so that two landmark sets pair up row by row for :func:`tissuestack.align_elements_using_landmarks`);
* ``N_table`` — a table annotating ``N`` and ``N_circles`` (obs ``region``, ``instance_id``, ``name``,
  ``class``): the class of every shape.

Every element gets the identity transformation to ``CS``: the coordinates are those of the view. Each element is
written with the store's atomic element write (written aside, then swapped in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from tissuestack._container import SpatialData
from tissuestack.elements import (
    PointsModel,
    ShapesModel,
    TableModel,
    get_axes,
    get_kind_protocol,
    shapes_type,
)
from tissuestack.elements._naming import check_name
from tissuestack.elements._shapes import RADIUS_COLUMN
from tissuestack.transforms import Identity

__all__ = ["Annotations", "annotation_names", "load_annotations", "save_annotations"]

CLASS_COLUMN = "class"
NAME_COLUMN = "name"


@dataclass
class Annotations:
    """Annotations in one coordinate system: polygons (``(k, 2)`` vertex arrays), circles and landmarks."""

    polygons: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # (name, class, vertices)
    circles: list[tuple[str, str, float, float, float]] = field(default_factory=list)  # (name, class, x, y, r)
    landmarks: list[tuple[str, str, float, float]] = field(default_factory=list)  # (name, class, x, y)

    def __len__(self) -> int:
        return len(self.polygons) + len(self.circles) + len(self.landmarks)


def annotation_names(name: str) -> dict[str, str]:
    """The element names annotations saved as ``name`` use (see the module notes)."""
    check_name(name, "annotation element name")
    out = {
        "polygons": name,
        "circles": f"{name}_circles",
        "landmarks": f"{name}_landmarks",
        "table": f"{name}_table",
    }
    for v in out.values():
        check_name(v, "annotation element name")
    return out


def _unique(names: Sequence[str], what: str) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for i, n in enumerate(names):
        n = str(n).strip() or f"{what}_{i + 1}"
        base, k = n, 1
        while n in seen:
            k += 1
            n = f"{base}_{k}"
        seen[n] = 1
        out.append(n)
    return out


def save_annotations(
    sdata: SpatialData,
    name: str,
    coordinate_system: str,
    annotations: Annotations,
    *,
    replace: Sequence[str] = (),
    write: bool | None = None,
) -> list[str]:
    """Put ``annotations`` into ``sdata`` as the elements named after ``name`` (see the module notes) and write
    them to its store (``write=None``: when the object is backed by a store).

    An existing element of one of those names is replaced only when listed in ``replace`` (the viewer lists
    the elements it loaded or saved itself), so that a name typed by mistake never overwrites other data; a
    name whose drawing is now empty is deleted the same way. Returns the names written."""
    names = annotation_names(name)
    if not coordinate_system:
        raise ValueError("annotations need a coordinate system to be saved in")
    existing = set(sdata.keys())
    clash = [n for n in names.values() if n in existing and n not in replace]
    if clash:
        raise ValueError(
            f"element(s) {clash} already exist; choose another annotation name, or load them into the viewer to "
            "edit them"
        )
    cs = {coordinate_system: Identity()}
    new: dict[str, Any] = {}
    shape_rows: list[tuple[str, str, str]] = []  # (region, name, class)
    if annotations.polygons:
        ids = _unique([p[0] for p in annotations.polygons], "polygon")
        geoms = []
        for nm, (_, _, verts) in zip(ids, annotations.polygons, strict=True):
            v = np.asarray(verts, dtype=np.float64).reshape(-1, 2)
            if len(v) < 3:
                raise ValueError(f"annotation polygon {nm!r} has {len(v)} vertices; at least 3 are needed")
            g = shapely.make_valid(shapely.Polygon(v))
            if g.geom_type not in ("Polygon", "MultiPolygon"):
                g = shapely.MultiPolygon([p for p in getattr(g, "geoms", []) if p.geom_type == "Polygon"])
            if g.is_empty:
                raise ValueError(f"annotation polygon {nm!r} encloses no area")
            geoms.append(g)
        classes = [str(p[1]) for p in annotations.polygons]
        gdf = gpd.GeoDataFrame({CLASS_COLUMN: classes}, geometry=geoms, index=pd.Index(ids, name="name"))
        new[names["polygons"]] = ShapesModel.parse(gdf, transformations=cs, name=names["polygons"])
        shape_rows += [(names["polygons"], n, c) for n, c in zip(ids, classes, strict=True)]
    if annotations.circles:
        ids = _unique([c[0] for c in annotations.circles], "circle")
        radius = np.array([float(c[4]) for c in annotations.circles])
        if not (np.isfinite(radius).all() and (radius > 0).all()):
            raise ValueError(f"annotation circles need positive radii, got {radius.tolist()}")
        classes = [str(c[1]) for c in annotations.circles]
        gdf = gpd.GeoDataFrame(
            {CLASS_COLUMN: classes, RADIUS_COLUMN: radius},
            geometry=shapely.points([(c[2], c[3]) for c in annotations.circles]),
            index=pd.Index(ids, name="name"),
        )
        new[names["circles"]] = ShapesModel.parse(gdf, transformations=cs, name=names["circles"])
        shape_rows += [(names["circles"], n, c) for n, c in zip(ids, classes, strict=True)]
    if annotations.landmarks:
        ids = _unique([lm[0] for lm in annotations.landmarks], "landmark")
        frame = pd.DataFrame(
            {
                "x": [float(lm[2]) for lm in annotations.landmarks],
                "y": [float(lm[3]) for lm in annotations.landmarks],
                NAME_COLUMN: ids,
                CLASS_COLUMN: pd.Categorical([str(lm[1]) for lm in annotations.landmarks]),
            }
        )
        new[names["landmarks"]] = PointsModel.parse(frame, transformations=cs, name=names["landmarks"])
    if shape_rows:
        regions = [r[0] for r in shape_rows]
        obs = pd.DataFrame(
            {
                "region": pd.Categorical(regions),
                "instance_id": [r[1] for r in shape_rows],
                NAME_COLUMN: [r[1] for r in shape_rows],
                CLASS_COLUMN: pd.Categorical([r[2] for r in shape_rows]),
            },
            index=[f"{r[0]}:{r[1]}" for r in shape_rows],
        )
        table = ad.AnnData(obs=obs)
        new[names["table"]] = TableModel.parse(
            table, region=sorted(set(regions)), region_key="region", instance_key="instance_id"
        )
    backed = sdata.path is not None
    if write is None:
        write = backed
    if write and not backed:
        raise ValueError("this SpatialData object has no store to write the annotations to")
    # a drawing emptied since the last save: its element goes (its table first: it must not annotate a gap)
    stale = [n for n in (names["table"], names["polygons"], names["circles"], names["landmarks"])
             if n in existing and n not in new]  # fmt: skip
    for n in stale:
        if write:
            sdata.delete_element(n, tables="update")
        if n in sdata.keys():
            del sdata[n]
    order = [names[k] for k in ("polygons", "circles", "landmarks", "table") if names[k] in new]
    for n in order:
        if n in sdata.keys():
            sdata.replace(n, new[n])
        else:
            sdata[n] = new[n]
    if write:
        sdata.write_element(order, overwrite=True)
    return order


def load_annotations(sdata: SpatialData, name: str, coordinate_system: str) -> Annotations:
    """Annotations from element ``name`` (shapes or points; or all elements saved under that name) in
    ``coordinate_system``, for editing in the viewer."""
    from tissuestack.pl._render import _xy_map

    names = [name]
    if name in sdata.keys() and sdata.kind_of(name) == "shapes":
        names += [n for n in (f"{name}_circles", f"{name}_landmarks") if n in sdata.keys()]
    elif name not in sdata.keys():
        raise KeyError(f"no element {name!r} to load annotations from")
    out = Annotations()
    for n in names:
        kind = get_kind_protocol(sdata.kind_of(n))
        element = sdata[n]
        amap = _xy_map(element, sdata.get_transformation_between(n, coordinate_system), n)
        classes = _classes(sdata, n, element)
        if kind.lazy_rows:  # points: landmarks
            ax = list(get_axes(element)[:2])
            cols = [c for c in (NAME_COLUMN, CLASS_COLUMN) if c in element.columns]
            pdf = element[[*ax, *cols]].compute()
            if pdf.index.is_unique:
                pdf = pdf.sort_index(kind="stable")  # the order they were placed in (stores sort rows spatially)
            xy = amap.apply(pdf[ax].to_numpy(dtype=float))
            for i in range(len(pdf)):
                nm = str(pdf[NAME_COLUMN].iloc[i]) if NAME_COLUMN in pdf else f"landmark_{i + 1}"
                cl = str(pdf[CLASS_COLUMN].iloc[i]) if CLASS_COLUMN in pdf else ""
                out.landmarks.append((nm, cl, float(xy[i, 0]), float(xy[i, 1])))
        elif kind.in_memory:  # shapes: circles and polygons
            if shapes_type(element) == "circles":
                geoms = np.asarray(element.geometry.array)
                xy = amap.apply(shapely.get_coordinates(geoms))
                scale = float(np.sqrt(abs(np.linalg.det(amap.linear))))
                for i, idx in enumerate(element.index):
                    r = float(element[RADIUS_COLUMN].iloc[i]) * scale
                    out.circles.append((str(idx), classes.get(str(idx), ""), float(xy[i, 0]), float(xy[i, 1]), r))
            else:
                for idx, geom in zip(element.index, element.geometry.array, strict=True):
                    parts = getattr(geom, "geoms", [geom])
                    for k, part in enumerate(parts):
                        ring = np.asarray(part.exterior.coords)[:-1]
                        nm = str(idx) if len(parts) == 1 else f"{idx}_{k + 1}"
                        out.polygons.append((nm, classes.get(str(idx), ""), amap.apply(ring)))
        else:
            raise ValueError(f"element {n!r} is {kind}; annotations are shapes or points")
    return out


def _classes(sdata: SpatialData, name: str, element: Any) -> dict[str, str]:
    """Instance id -> class from the element's ``class`` column or its annotating tables."""
    from tissuestack.elements import get_table_keys

    if sdata.kind_of(name) == "shapes" and CLASS_COLUMN in element.columns:
        return {str(i): str(c) for i, c in zip(element.index, element[CLASS_COLUMN], strict=True)}
    for tn in sdata.get_annotating_tables(name):
        table = sdata.tables[tn]
        if CLASS_COLUMN in table.obs.columns:
            _, rk, ik = get_table_keys(table)
            obs = table.obs[table.obs[rk].astype(str) == name]
            return {str(i): str(c) for i, c in zip(obs[ik], obs[CLASS_COLUMN], strict=True)}
    return {}
