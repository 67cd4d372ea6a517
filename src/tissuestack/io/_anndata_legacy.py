"""Conversion between SpatialData objects and the legacy scanpy/squidpy AnnData layout.

The legacy layout (what ``scanpy.read_visium`` writes and scanpy's and squidpy's spatial functions read) is one
AnnData with

* ``obsm["spatial"]``: ``N x 2`` (x, y) positions in the pixels of the full-resolution image ("full-res px");
* ``uns["spatial"][library_id]``: ``{"images": {"hires": HxWx3, "lowres": HxWx3}, "scalefactors":
  {"tissue_hires_scalef": hires px per full-res px, "tissue_lowres_scalef": ..., "spot_diameter_fullres": ...,
  "fiducial_diameter_fullres": ...}, "metadata": {...}}``;
* several libraries (``sc.concat(..., uns_merge="unique")``) share the table, an ``obs`` column (the
  *library key*, usually ``library_id``) telling which library each row belongs to.

:func:`from_legacy_anndata` turns such an object into spots (circles), images and a table annotating the spots;
:func:`to_legacy_anndata` goes the other way for any table annotating circles, polygons or labels (one library
per coordinate system).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import shapely

from tissuestack._compute import scheduler
from tissuestack._container import SpatialData
from tissuestack.elements import (
    Image2DModel,
    ShapesModel,
    TableModel,
    check_name,
    get_kind,
    get_table_keys,
    get_transformation,
    raster_levels,
    sanitize_name,
    shapes_type,
)
from tissuestack.elements._shapes import RADIUS_COLUMN
from tissuestack.elements._tables import TABLE_ATTRS_KEY
from tissuestack.errors import UnknownCoordinateSystemError, ValidationError
from tissuestack.ops import get_centroids
from tissuestack.transforms import BaseTransformation, Identity, Scale

__all__ = ["from_legacy_anndata", "to_legacy_anndata"]

SPATIAL_KEY = "spatial"
IMAGE_KEYS = ("hires", "lowres")
SPOT_DIAMETER_KEY = "spot_diameter_fullres"
FIDUCIAL_DIAMETER_KEY = "fiducial_diameter_fullres"
DEFAULT_LIBRARY_KEY = "library_id"
#: longest side of the exported images when the element is larger (Space Ranger's sizes)
DEFAULT_MAX_SIZE = {"hires": 2000, "lowres": 600}


def scalef_key(image_key: str) -> str:
    """The scale-factor key of a legacy image key (``"hires"`` -> ``"tissue_hires_scalef"``)."""
    return f"tissue_{image_key}_scalef"


def _positive(value: Any, where: str) -> float:
    if (
        not isinstance(value, int | float | np.integer | np.floating)
        or isinstance(value, bool)
        or not math.isfinite(float(value))
        or value <= 0
    ):
        raise ValidationError(f"{where} is {value!r}; expected a positive number")
    return float(value)


# ============================================================================================ legacy -> SpatialData
def _libraries(adata: ad.AnnData) -> dict[str, Mapping[str, Any]]:
    entries = adata.uns.get(SPATIAL_KEY, {})
    if not isinstance(entries, Mapping):
        raise ValidationError(
            f"uns[{SPATIAL_KEY!r}] is a {type(entries).__name__}; expected a mapping library_id -> "
            "{'images', 'scalefactors', 'metadata'}"
        )
    for lib, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ValidationError(
                f"uns[{SPATIAL_KEY!r}][{lib!r}] is a {type(entry).__name__}; expected a mapping with 'images', "
                "'scalefactors' and 'metadata'"
            )
    return {str(k): v for k, v in entries.items()}


def _row_libraries(
    adata: ad.AnnData,
    known: dict[str, Mapping[str, Any]],
    library_id: str | Sequence[str] | None,
    library_key: str | None,
) -> tuple[list[str], np.ndarray | None]:
    """``(libraries to convert, library of every row or None when all rows belong to the only library)``."""
    wanted = None if library_id is None else [library_id] if isinstance(library_id, str) else list(library_id)
    if (
        library_key is None
        and DEFAULT_LIBRARY_KEY in adata.obs.columns
        and (len(known) > 1 or (wanted is not None and len(wanted) > 1))
    ):
        library_key = DEFAULT_LIBRARY_KEY
    if library_key is not None:
        if library_key not in adata.obs.columns:
            raise ValidationError(
                f"obs has no column {library_key!r} (library_key); expected the library id of every row; "
                f"obs columns: {list(adata.obs.columns)}"
            )
        rows = adata.obs[library_key].astype(str).to_numpy()
        present = list(dict.fromkeys(rows.tolist()))
        libs = present if wanted is None else wanted
        missing = [lib for lib in libs if lib not in present]
        if missing:
            raise ValidationError(
                f"library {missing[0]!r} has no row: obs[{library_key!r}] holds {present[:5]}"
            )
        if len(libs) > 1 or len(present) > 1:
            return libs, rows
        return libs, None
    if wanted is not None:
        if len(wanted) > 1:
            raise ValidationError(
                f"library_id lists {len(wanted)} libraries; pass library_key, the obs column telling which "
                "library each row belongs to"
            )
        return wanted, None
    if len(known) > 1:
        raise ValidationError(
            f"uns[{SPATIAL_KEY!r}] holds {len(known)} libraries ({', '.join(map(repr, known))}) and obs has no "
            f"{DEFAULT_LIBRARY_KEY!r} column: pass library_key (the obs column telling which library each row "
            "belongs to) or library_id (to convert all rows as one library)"
        )
    return list(known) or ["library"], None


def _legacy_image(array: Any, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    arr = np.asarray(array)
    if arr.ndim == 2:
        return arr, ("y", "x")
    if arr.ndim == 3:
        return arr, ("y", "x", "c")
    raise ValidationError(f"{where} has shape {arr.shape}; expected an image H x W or H x W x channels")


def from_legacy_anndata(
    adata: ad.AnnData,
    *,
    library_id: str | Sequence[str] | None = None,
    library_key: str | None = None,
    region: str = "spots",
    table_name: str = "table",
    region_key: str = "region",
    instance_key: str = "spot_id",
    coordinate_system: str | None = None,
    spot_diameter: float | None = None,
    load_images: bool = True,
) -> SpatialData:
    """Convert an AnnData in the legacy scanpy/squidpy spatial layout into a SpatialData object.

    Parameters
    ----------
    adata
        An AnnData with ``obsm["spatial"]`` (x, y in full-resolution pixels) and, optionally,
        ``uns["spatial"][library_id]`` with ``images``, ``scalefactors`` and ``metadata`` (as written by
        ``scanpy.read_visium``). It is not modified.
    library_id
        The library (or libraries) to convert. Default: every library. With one library id and no library key,
        every row is taken to belong to it.
    library_key
        ``obs`` column with the library id of every row. Default: ``"library_id"`` when that column exists and
        ``uns["spatial"]`` holds several libraries (or ``library_id`` selects some of them).
    region
        Name of the shapes element of the spots. With several libraries each gets its own element
        ``<library>_<region>``.
    table_name
        Name of the table.
    region_key, instance_key
        ``obs`` columns of the table: the shapes element of every row (written; a different existing column is
        replaced with a warning) and its instance id. ``instance_key`` is used as is when ``obs`` has it (unique
        within each library); otherwise it is created from the obs names (barcodes), which then index the spots.
    coordinate_system
        Coordinate system of the full-resolution pixels. Default: ``"global"`` for one library; with several
        libraries each library gets its own coordinate system named after it (sections imaged separately do not
        share pixels). A name given here puts every library in that one coordinate system.
    spot_diameter
        Spot diameter in full-resolution pixels; default ``scalefactors["spot_diameter_fullres"]``. Needed when
        the AnnData has no scale factors (e.g. a squidpy dataset with cell positions only).
    load_images
        Convert ``uns["spatial"][library_id]["images"]`` into image elements.

    Returns
    -------
    SpatialData
        Per library: shapes ``region`` (``<library>_<region>`` with several libraries): circles centred on
        ``obsm["spatial"]`` with radius ``spot_diameter_fullres / 2``, identity to the coordinate system; images
        ``<library>_hires_image`` / ``<library>_lowres_image`` (c, y, x) with ``Scale(1 / tissue_<key>_scalef)``
        to the same coordinate system, so that they overlay the spots. One table ``table_name`` with the rows
        of the converted libraries, ``obsm["spatial"]`` kept and ``uns["spatial"]`` without the images.

    Raises
    ------
    ValidationError
        ``obsm["spatial"]`` is missing or not ``N x 2`` finite numbers, a library or a library key is
        unknown, a scale factor is missing or not a positive number, or instance ids repeat within a library.
    """
    if not isinstance(adata, ad.AnnData):
        raise ValidationError(f"expected an anndata.AnnData, got {type(adata).__name__}")
    if SPATIAL_KEY not in adata.obsm:
        raise ValidationError(
            f"obsm has no {SPATIAL_KEY!r} entry; expected the N x 2 (x, y) spot positions in full-resolution "
            f"pixels (obsm keys: {list(adata.obsm)})"
        )
    xy_all = np.asarray(adata.obsm[SPATIAL_KEY])
    if xy_all.ndim != 2 or xy_all.shape[1] != 2 or not np.issubdtype(xy_all.dtype, np.number):
        raise ValidationError(
            f"obsm[{SPATIAL_KEY!r}] has shape {xy_all.shape} and dtype {xy_all.dtype}; expected N x 2 numbers "
            "(x, y)"
        )
    bad = ~np.isfinite(xy_all).all(axis=1)
    if bad.any():
        raise ValidationError(
            f"obsm[{SPATIAL_KEY!r}] has {int(bad.sum())} rows that are not finite (first: "
            f"{adata.obs_names[bad][:5].tolist()}); expected the position of every spot"
        )
    check_name(region, "region")
    check_name(table_name, "table_name")
    known = _libraries(adata)
    libs, row_lib = _row_libraries(adata, known, library_id, library_key)
    several = len(libs) > 1

    keep = np.ones(adata.n_obs, dtype=bool) if row_lib is None else np.isin(row_lib, libs)
    table = adata[keep].copy() if not keep.all() else adata.copy()
    row_lib = None if row_lib is None else row_lib[keep]
    xy_all = xy_all[keep].astype(np.float64)

    if instance_key in table.obs.columns:
        ids_all = table.obs[instance_key]
        if isinstance(ids_all.dtype, pd.CategoricalDtype):
            ids_all = ids_all.astype(ids_all.cat.categories.dtype)
        ids_all = ids_all.to_numpy()
    else:
        ids_all = table.obs_names.astype(str).to_numpy()
        table.obs[instance_key] = ids_all

    shapes: dict[str, Any] = {}
    images: dict[str, Any] = {}
    region_of_row = np.empty(table.n_obs, dtype=object)
    kept_uns: dict[str, Any] = {}
    for lib in libs:
        rows = np.ones(table.n_obs, dtype=bool) if row_lib is None else row_lib == lib
        name = f"{sanitize_name(lib)}_{region}" if several else region
        check_name(name, "shapes element name")
        cs = coordinate_system or (sanitize_name(lib) if several else "global")
        entry = known.get(lib, {})
        sf = entry.get("scalefactors", {}) or {}
        where = f"uns[{SPATIAL_KEY!r}][{lib!r}]['scalefactors']"
        if spot_diameter is not None:
            diameter = _positive(spot_diameter, "spot_diameter")
        elif SPOT_DIAMETER_KEY in sf:
            diameter = _positive(sf[SPOT_DIAMETER_KEY], f"{where}[{SPOT_DIAMETER_KEY!r}]")
        else:
            raise ValidationError(
                f"library {lib!r}: no {where}[{SPOT_DIAMETER_KEY!r}]; pass spot_diameter (full-resolution "
                "pixels) to draw the spots as circles"
            )
        ids = pd.Index(ids_all[rows])
        if not ids.is_unique:
            dup = ids[ids.duplicated()].unique()[:5].tolist()
            raise ValidationError(
                f"library {lib!r}: obs[{instance_key!r}] (instance_key) repeats {dup}; expected one id per spot"
            )
        shapes[name] = ShapesModel.parse(
            xy_all[rows], radius=diameter / 2.0, index=ids, transformations={cs: Identity()}, name=name
        )
        region_of_row[rows] = name
        if load_images:
            for key, array in (entry.get("images", {}) or {}).items():
                where_img = f"uns[{SPATIAL_KEY!r}][{lib!r}]['images'][{key!r}]"
                if scalef_key(key) not in sf:
                    raise ValidationError(
                        f"{where_img}: no {where}[{scalef_key(key)!r}], needed to place the image on the spots"
                    )
                scale = _positive(sf[scalef_key(key)], f"{where}[{scalef_key(key)!r}]")
                data, dims = _legacy_image(array, where_img)
                image_name = f"{sanitize_name(lib)}_{sanitize_name(key)}_image"
                images[image_name] = Image2DModel.parse(
                    data,
                    dims=dims,
                    transformations={cs: Scale([1 / scale, 1 / scale], axes=("x", "y"))},
                    name=image_name,
                )
        if lib in known:
            kept_uns[lib] = {k: v for k, v in entry.items() if k != "images"}

    if region_key in table.obs.columns:
        old = table.obs[region_key].astype(str).to_numpy()
        if not np.array_equal(old, region_of_row.astype(str)):
            warnings.warn(
                f"obs column {region_key!r} (region_key) is replaced by the name of the shapes element of each "
                "row; pass region_key to keep it",
                UserWarning,
                stacklevel=2,
            )
    table.obs[region_key] = pd.Categorical(region_of_row.astype(str), categories=list(shapes))
    if kept_uns:
        table.uns[SPATIAL_KEY] = kept_uns
    else:
        table.uns.pop(SPATIAL_KEY, None)
    table.uns.pop(TABLE_ATTRS_KEY, None)
    TableModel.parse(
        table,
        region=next(iter(shapes)) if len(shapes) == 1 else list(shapes),
        region_key=region_key,
        instance_key=instance_key,
        name=table_name,
    )
    return SpatialData(images=images, shapes=shapes, tables={table_name: table})


# ============================================================================================ SpatialData -> legacy
def _transformation(sdata: SpatialData, name: str, cs: str) -> BaseTransformation:
    # a direct transformation first: readers name an element and its coordinate system alike, which the graph
    # search by name refuses as ambiguous
    element = sdata[name]
    direct = get_transformation(element, get_all=True)
    if cs in direct:
        return direct[cs]
    return sdata.get_transformation_between(element, cs)


def _xy_affine(sdata: SpatialData, name: str, cs: str) -> np.ndarray:
    return _transformation(sdata, name, cs).to_affine_matrix(("x", "y"), ("x", "y"))


def _centroids(sdata: SpatialData, name: str, cs: str) -> pd.DataFrame:
    element = sdata[name]
    if cs in get_transformation(element, get_all=True):  # direct: no search by name (see _transformation)
        return get_centroids(element, cs).compute()
    return get_centroids(name, cs, sdata=sdata).compute()


def _default_coordinate_system(sdata: SpatialData, regions: list[str]) -> str:
    common: set[str] | None = None
    for name in regions:
        systems = set(sdata.get_transformation(name, get_all=True))
        common = systems if common is None else common & systems
    common = common or set()
    if "global" in common:
        return "global"
    if len(common) == 1:
        return next(iter(common))
    raise UnknownCoordinateSystemError(
        f"the annotated elements {regions} share the coordinate systems {sorted(common)}; pass "
        "coordinate_system (its units become the 'full-resolution pixels' of the legacy layout)"
    )


def _find_image(sdata: SpatialData, key: str, library_id: str, cs: str, required: bool) -> str | None:
    preferred = f"{sanitize_name(library_id)}_{key}_image"
    if preferred in sdata.images:
        return preferred
    candidates = []
    for name in sdata.images:
        if name == key or name == f"{key}_image" or name.endswith(f"_{key}_image"):
            try:
                _transformation(sdata, name, cs)
            except KeyError:  # NoPathError
                continue
            candidates.append(name)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise ValidationError(
            f"several image elements could be the {key!r} image: {candidates}; pass images={{{key!r}: name}}"
        )
    if required:
        raise ValidationError(
            f"no {key!r} image: no image element named '<library>_{key}_image' reaches coordinate system {cs!r}; image elements: "
            f"{list(sdata.images)}; pass images={{{key!r}: name}}"
        )
    return None


def _image_plan(sdata: SpatialData, images: Any, library_id: str, cs: str) -> dict[str, str]:
    """legacy image key -> image element name."""
    if images is None:
        found = {k: _find_image(sdata, k, library_id, cs, required=False) for k in IMAGE_KEYS}
        return {k: v for k, v in found.items() if v is not None}
    if isinstance(images, Mapping):
        plan = {str(k): str(v) for k, v in images.items()}
    else:
        if isinstance(images, str):
            images = [images]
        plan = {}
        for item in images:
            if item in IMAGE_KEYS:
                plan[item] = _find_image(sdata, item, library_id, cs, required=True)  # type: ignore[assignment]
                continue
            key = next(
                (k for k in IMAGE_KEYS if str(item).endswith(k) or str(item).endswith(f"{k}_image")), None
            )
            if key is None:
                raise ValidationError(
                    f"cannot tell whether image element {item!r} is the 'hires' or the 'lowres' image; pass "
                    f"images={{'hires': {item!r}}}"
                )
            plan[key] = str(item)
    for key, name in plan.items():
        if name not in sdata.images:
            raise ValidationError(
                f"images[{key!r}] is {name!r}, not an image element; image elements: {list(sdata.images)}"
            )
    return plan


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8: greyscale repeated, alpha dropped; other dtypes scaled to 0..255."""
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        values = arr.astype(np.float64)
        finite = values[np.isfinite(values)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0  # images in [0, 1] (what scanpy reads from PNG)
        span = hi - lo if hi > lo else 1.0
        out = np.clip(np.nan_to_num((values - lo) / span * 255.0 + 0.5, nan=0.0), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])


def _export_image(sdata: SpatialData, name: str, cs: str, max_size: int | None) -> tuple[np.ndarray, float]:
    """``(H x W x 3 uint8 image, image pixels per coordinate-system unit)`` aligned with the origin of ``cs``."""
    element = sdata.images[name]
    m = _xy_affine(sdata, name, cs)
    sx, sy, tx, ty = m[0, 0], m[1, 1], m[0, 2], m[1, 2]
    if (
        abs(m[0, 1]) > 1e-9 * abs(sx)
        or abs(m[1, 0]) > 1e-9 * abs(sy)
        or sx <= 0
        or not math.isclose(sx, sy, rel_tol=1e-6)
    ):
        raise ValidationError(
            f"image {name!r}: its transformation to {cs!r} (x, y matrix {m[:2].tolist()}) is not a uniform scale "
            "and translation; the legacy layout has one scale factor per image. Transform the image first"
        )
    levels = raster_levels(element)
    if len(levels[0].dims) != 3:
        raise ValidationError(
            f"image {name!r} is 3D (dims {levels[0].dims}); the legacy layout holds 2D images"
        )
    n_channels = levels[0].sizes["c"]
    if n_channels not in (1, 3, 4):
        raise ValidationError(
            f"image {name!r} has {n_channels} channels; the legacy layout holds greyscale or RGB images: select "
            "1 or 3 channels first (e.g. sdata.images[name] = Image2DModel.parse(element.sel(c=[...])))"
        )
    full_h, full_w = levels[0].sizes["y"], levels[0].sizes["x"]
    level = levels[-1]
    for lvl in levels:
        if max_size is None or max(lvl.sizes["y"], lvl.sizes["x"]) <= max_size:
            level = lvl
            break
    data = level.data
    step = 1
    if max_size is not None and max(level.sizes["y"], level.sizes["x"]) > max_size:
        step = math.ceil(max(level.sizes["y"], level.sizes["x"]) / max_size)
        arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
        h, w = (level.sizes["y"] // step) * step, (level.sizes["x"] // step) * step
        data = da.coarsen(np.mean, arr[:, :h, :w].astype(np.float64), {1: step, 2: step}).astype(level.dtype)
    (arr,) = dask.compute(data, scheduler=scheduler())
    arr = np.moveaxis(np.asarray(arr), 0, -1)  # (c, y, x) -> (y, x, c)
    factor = 0.5 * (full_w / level.sizes["x"] + full_h / level.sizes["y"]) * step
    pixel = sx * factor  # coordinate-system units per exported pixel
    # the legacy image starts at the origin of the coordinate system: pad or crop the translation away
    for axis, t in ((1, tx), (0, ty)):
        shift = round(t / pixel)
        if shift > 0:
            pad = [(0, 0)] * 3
            pad[axis] = (shift, 0)
            arr = np.pad(arr, pad)
        elif shift < 0:
            arr = arr[-shift:] if axis == 0 else arr[:, -shift:]
    return _to_uint8(arr), 1.0 / pixel


def to_legacy_anndata(
    sdata: SpatialData,
    table_name: str = "table",
    *,
    images: Sequence[str] | Mapping[str, str] | None = None,
    library_id: str | None = None,
    coordinate_system: str | Sequence[str] | None = None,
    library_key: str = DEFAULT_LIBRARY_KEY,
    max_size: int | Mapping[str, int | None] | None = None,
) -> ad.AnnData:
    """Convert a table and the elements it annotates into the legacy scanpy/squidpy spatial AnnData layout.

    Parameters
    ----------
    sdata
        The SpatialData object.
    table_name
        A table annotating shapes (circles or polygons) or labels elements.
    images
        The images of ``uns["spatial"][library_id]["images"]``: a mapping ``{"hires": element, "lowres":
        element}``, or a sequence of ``"hires"`` / ``"lowres"`` (found by name, ``<library>_hires_image`` or
        ``*_hires_image``) and image element names ending in ``hires``/``lowres``. Default: the hires and lowres
        images found by name, when present. Each image must map to ``coordinate_system`` by a uniform scale and a
        translation (the translation is padded or cropped away, to the nearest pixel).
    library_id
        Key of ``uns["spatial"]``. Default: the only key of the table's own ``uns["spatial"]`` (a table read by
        :func:`tissuestack.io.visium` or :func:`from_legacy_anndata` has one), else the annotated element's name
        (the table name with several).
    coordinate_system
        The coordinate system whose units are the "full-resolution pixels" of the layout. Default: ``"global"``
        if every annotated element has a transformation to it, else the only coordinate system they share.
        Several coordinate systems (``["A", "B"]``, as :func:`from_legacy_anndata` makes of several libraries)
        give one library each, named after it: every annotated element has a transformation to exactly one of
        them, its images are found by name (``A_hires_image``) and ``obs[library_key]`` says which library each
        row belongs to.
    library_key
        The ``obs`` column written with several coordinate systems.
    max_size
        Longest side of the exported images; the finest pyramid level that fits is used, and a level still larger
        is block-averaged down. One int for all images or a mapping per key; default 2000 px for ``hires`` and
        600 px for ``lowres`` (Space Ranger's sizes), ``None`` for the full resolution.

    Returns
    -------
    anndata.AnnData
        A copy of the table with ``obsm["spatial"]`` = the centroid (x, y) of every row's instance in
        ``coordinate_system`` (circle centres, polygon centroids, label pixel means, see
        :func:`tissuestack.get_centroids`), and ``uns["spatial"][library_id]`` = ``{"images": {key: H x W x 3
        uint8}, "scalefactors": {"tissue_<key>_scalef": image pixels per coordinate-system unit,
        "spot_diameter_fullres": the median circle diameter (or, for polygons, the median diameter of a disk of
        the same area) in coordinate-system units}, "metadata": the table's own, if any}``. Its
        ``uns["spatialdata_attrs"]`` is dropped; the ``obs`` columns (region, instance ids) are kept.

    Raises
    ------
    ValidationError
        The table annotates nothing, an instance of a row is missing from its element, an image cannot be
        placed by one scale factor or has more than 4 channels.
    UnknownCoordinateSystemError, NoPathError
        The coordinate system is unknown or an element cannot reach it.
    """
    if table_name not in sdata.tables:
        raise KeyError(f"no table {table_name!r}; tables: {list(sdata.tables)}")
    table = sdata.tables[table_name]
    regions, region_key, instance_key = get_table_keys(table)
    if not regions:
        raise ValidationError(
            f"table {table_name!r} annotates no element (no uns[{TABLE_ATTRS_KEY!r}]); the legacy layout needs "
            "the positions of the annotated shapes or labels"
        )
    present = [r for r in regions if r in set(table.obs[region_key].astype(str))]
    for name in present:
        if name not in sdata or get_kind(sdata[name]) not in ("shapes", "labels"):
            raise ValidationError(
                f"table {table_name!r} annotates {name!r}, which is not a shapes or labels element of sdata"
            )
    own = table.uns.get(SPATIAL_KEY)
    own = own if isinstance(own, Mapping) else {}
    several = not isinstance(coordinate_system, str | None) and len(coordinate_system) > 1
    if several:
        if library_id is not None or isinstance(images, Mapping):
            raise ValidationError(
                "with several coordinate systems (one library each, named after it) pass neither library_id nor "
                "an images mapping; images may be a sequence of 'hires' / 'lowres'"
            )
        libraries = _split_libraries(sdata, present, list(coordinate_system))  # type: ignore[arg-type]
    else:
        if coordinate_system is not None and not isinstance(coordinate_system, str):
            (coordinate_system,) = coordinate_system
        cs = coordinate_system or _default_coordinate_system(sdata, present)
        if library_id is None:
            library_id = next(iter(own)) if len(own) == 1 else present[0] if len(present) == 1 else table_name
        libraries = [(library_id, cs, present)]

    xy = np.full((table.n_obs, 2), np.nan)
    row_region = table.obs[region_key].astype(str).to_numpy()
    row_library = np.empty(table.n_obs, dtype=object)
    ids = table.obs[instance_key]
    entries: dict[str, Any] = {}
    for lib, cs, names in libraries:
        diameters = []
        for name in names:
            rows = row_region == name
            row_library[rows] = lib
            row_ids = pd.Index(ids[rows])
            centroids = _centroids(sdata, name, cs)
            where = centroids.index.get_indexer(row_ids)
            if (where < 0).any():
                raise ValidationError(
                    f"table {table_name!r}: {int((where < 0).sum())} rows of region {name!r} name instances that "
                    f"{name!r} lacks (first: {row_ids[where < 0][:5].tolist()})"
                )
            xy[rows] = centroids[["x", "y"]].to_numpy()[where]
            diameters.append(_diameters(sdata, name, cs, row_ids))
        old = own.get(lib, {}) if isinstance(own.get(lib, {}), Mapping) else {}
        entries[lib] = _library_entry(sdata, lib, cs, np.concatenate(diameters), images, max_size, old)

    out = table.copy()
    out.uns.pop(TABLE_ATTRS_KEY, None)
    out.obsm[SPATIAL_KEY] = xy
    out.uns[SPATIAL_KEY] = entries
    if several:
        out.obs[library_key] = pd.Categorical(row_library.astype(str), categories=list(entries))
    return out


def _split_libraries(
    sdata: SpatialData, regions: list[str], systems: list[str]
) -> list[tuple[str, str, list[str]]]:
    """``(library id = coordinate system, coordinate system, its regions)``: each region in exactly one."""
    by_cs: dict[str, list[str]] = {cs: [] for cs in systems}
    for name in regions:
        direct = [cs for cs in systems if cs in get_transformation(sdata[name], get_all=True)]
        if len(direct) != 1:
            raise ValidationError(
                f"element {name!r} has a transformation to {len(direct)} of the coordinate systems {systems}; "
                "expected exactly one (each coordinate system is one library)"
            )
        by_cs[direct[0]].append(name)
    return [(cs, cs, names) for cs, names in by_cs.items() if names]


def _diameters(sdata: SpatialData, name: str, cs: str, ids: pd.Index) -> np.ndarray:
    """Diameter in ``cs`` of the instances ``ids`` of a shapes element (a circle's, or the disk of the same area
    as a polygon); empty for labels."""
    element = sdata[name]
    if get_kind(element) != "shapes":
        return np.zeros(0)
    m = _xy_affine(sdata, name, cs)
    linear = math.sqrt(abs(np.linalg.det(m[:2, :2])))
    if shapes_type(element) == "circles":
        diameter = 2.0 * element[RADIUS_COLUMN].to_numpy(dtype=np.float64) * linear
    else:
        area = shapely.area(np.asarray(element.geometry.array))
        diameter = 2.0 * np.sqrt(area / math.pi) * linear
    return diameter[element.index.get_indexer(ids)]


def _library_entry(
    sdata: SpatialData,
    library_id: str,
    cs: str,
    diameters: np.ndarray,
    images: Any,
    max_size: Any,
    old: Mapping[str, Any],
) -> dict[str, Any]:
    """``uns["spatial"][library_id]``: images, scale factors and the table's own metadata."""
    plan = _image_plan(sdata, images, library_id, cs)
    sizes = max_size if isinstance(max_size, Mapping) else None
    legacy_images: dict[str, np.ndarray] = {}
    scalefactors: dict[str, float] = {}
    for key, name in plan.items():
        if sizes is not None:
            limit = sizes.get(key, DEFAULT_MAX_SIZE.get(key))
        elif max_size is None:
            limit = DEFAULT_MAX_SIZE.get(key)
        else:
            limit = int(max_size)
        legacy_images[key], scalef = _export_image(sdata, name, cs, limit)
        scalefactors[scalef_key(key)] = float(scalef)
    if len(diameters):
        scalefactors[SPOT_DIAMETER_KEY] = float(np.median(diameters))
        old_sf = old.get("scalefactors", {}) if isinstance(old.get("scalefactors", {}), Mapping) else {}
        # the fiducial diameter is kept when the frame is evidently the same (same spot diameter)
        if (
            FIDUCIAL_DIAMETER_KEY in old_sf
            and SPOT_DIAMETER_KEY in old_sf
            and math.isclose(float(old_sf[SPOT_DIAMETER_KEY]), scalefactors[SPOT_DIAMETER_KEY], rel_tol=1e-6)
        ):
            scalefactors[FIDUCIAL_DIAMETER_KEY] = float(old_sf[FIDUCIAL_DIAMETER_KEY])
    return {
        "images": legacy_images,
        "scalefactors": scalefactors,
        "metadata": dict(old.get("metadata", {}) or {}),
    }
