"""Drawing one element onto a matplotlib axes in a coordinate system.

Every renderer gets the element, its transformation to the panel's coordinate system and the :class:`Canvas`
(the panel's extent and pixel size), and returns the :class:`Coloring` it used (for legends and colorbars).

* Rasters are read at the coarsest pyramid level whose pixels are no larger than an output pixel, and only
  through the window the canvas covers; they are placed with ``imshow`` in intrinsic pixel coordinates plus an
  ``Affine2D`` of the element's transformation (rotations and shears included).
* Shapes become one compound ``Path`` per colour (vertices from the element's flat coordinates, transformed in one
  matrix product; circles as polygons of the transformed disk, so they keep their true radius under any affine).
  Many shapes for the canvas's pixels are rasterised onto the output pixel grid instead
  (:mod:`tissuestack.pl._shapes_raster`).
* Points are scattered, or binned onto the canvas's pixel grid when there are many (``method="datashader"``,
  the name spatialdata-plot uses; the binning is tissuestack's own cached numba kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tissuestack._compute import scheduler
from tissuestack._container import SpatialData
from tissuestack.elements import get_axes, get_kind_protocol, get_meta, raster_levels, shapes_type
from tissuestack.elements._shapes import RADIUS_COLUMN
from tissuestack.errors import ValidationError
from tissuestack.kernels._bin import bin_points_count_mapped, bin_points_max
from tissuestack.kernels._ragged import FlatGeometry, ranges
from tissuestack.ops._extent import spatial_map
from tissuestack.ops._shapes_flat import flat_geometry
from tissuestack.pl._colors import Coloring, default_palette, is_color, resolve_coloring, to_rgba
from tissuestack.pl._mpl import require
from tissuestack.pl._shapes_raster import pixel_affine, rasterise_by_default, rasterize_shapes, to_pixels
from tissuestack.pl._values import (
    ColorSource,
    find_color_source,
    label_values,
    table_has_key,
    table_values_by_id,
)
from tissuestack.query._bbox import Region, query_points, query_shapes
from tissuestack.store import read_points_columns
from tissuestack.transforms import AffineMap, BaseTransformation, affine_map

__all__ = ["DATASHADER_THRESHOLD", "SHAPES_RASTER_MINIMUM", "Canvas", "render_element"]

DATASHADER_THRESHOLD = 100_000  # points above this are rasterised (method=None)
# shapes rasterised by method=None: at least this many (below, Agg's paths are as fast and the kernels' first
# call in a process costs ~0.7 s), and more than one per 100 output pixels
SHAPES_RASTER_MINIMUM = 250_000
_MOVETO, _LINETO, _CLOSEPOLY = 1, 2, 79  # matplotlib.path.Path codes
_PATH_VERTICES = 250_000  # vertices per compound path


@dataclass(frozen=True)
class Canvas:
    """A panel: its extent in the coordinate system, its size in output pixels, and whether it is a crop."""

    coordinate_system: str
    xmin: float
    xmax: float
    ymin: float
    ymax: float
    width_px: int
    height_px: int
    cropped: bool
    dpi: float

    @property
    def unit_per_px(self) -> float:
        return max(
            (self.xmax - self.xmin) / max(self.width_px, 1), (self.ymax - self.ymin) / max(self.height_px, 1)
        )

    def region(self) -> Region:
        return Region(("x", "y"), np.array([[self.xmin, self.ymin]]), np.array([[self.xmax, self.ymax]]))


def _xy_map(element: Any, t: BaseTransformation, name: str) -> AffineMap:
    """The element's x/y -> coordinate-system x/y map (a z axis of points or shapes is projected away)."""
    try:
        amap = (
            spatial_map(element, t) if "z" not in get_axes(element) else affine_map(t, ("x", "y"), ("x", "y"))
        )
    except (ValueError, KeyError) as err:
        raise ValidationError(f"element {name!r}: cannot place it on x and y for plotting: {err}") from err
    if amap.in_axes != ("x", "y") or amap.out_axes != ("x", "y"):
        raise ValidationError(
            f"element {name!r}: plotting needs an element placed on x and y; its map goes from "
            f"{amap.in_axes} to {amap.out_axes}"
        )
    return amap


def _affine2d(amap: AffineMap) -> Any:
    transforms = require("matplotlib.transforms")
    m = np.eye(3)
    m[:2, :2] = amap.linear
    m[:2, 2] = amap.offset
    return transforms.Affine2D(m)


# ================================================================================================ rasters
def _choose_level(levels: list[Any], amap: AffineMap, canvas: Canvas, scale: str | None, name: str) -> int:
    if scale is not None:
        if scale == "full":
            return 0
        names = [f"scale{i}" for i in range(len(levels))]
        if scale not in names:
            raise ValueError(f"element {name!r}: scale {scale!r} is not one of {['full', *names]}")
        return names.index(scale)
    px0 = math.sqrt(abs(float(np.linalg.det(amap.linear)))) or 1.0
    chosen = 0
    for i, lvl in enumerate(levels):
        f = max(levels[0].sizes["x"] / max(lvl.sizes["x"], 1), levels[0].sizes["y"] / max(lvl.sizes["y"], 1))
        if f * px0 <= canvas.unit_per_px * 1.0001:
            chosen = i
    return chosen


def read_raster(
    element: Any,
    amap: AffineMap,
    canvas: Canvas,
    scale: str | None,
    name: str,
    channels: list[int] | None = None,
) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
    """The pixels of the chosen level inside the canvas window (only ``channels`` of an image), and their
    extent in level-0 intrinsic coordinates ``(x0, x1, y0, y1)``; ``None`` when the window misses the raster."""
    levels = raster_levels(element)
    i = _choose_level(levels, amap, canvas, scale, name)
    lvl0, lvl = levels[0], levels[i]
    fx = lvl0.sizes["x"] / max(lvl.sizes["x"], 1)
    fy = lvl0.sizes["y"] / max(lvl.sizes["y"], 1)
    bounds = amap.intrinsic_bounds([canvas.xmin, canvas.ymin], [canvas.xmax, canvas.ymax], ("x", "y"))
    nx, ny = lvl.sizes["x"], lvl.sizes["y"]
    if bounds is None:
        x0, x1, y0, y1 = 0, nx, 0, ny
    else:
        (bx0, by0), (bx1, by1) = bounds
        x0 = max(0, math.floor(bx0 / fx) - 1)
        x1 = min(nx, math.ceil(bx1 / fx) + 1)
        y0 = max(0, math.floor(by0 / fy) - 1)
        y1 = min(ny, math.ceil(by1 / fy) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
    window = lvl.isel(x=slice(x0, x1), y=slice(y0, y1))
    if channels is not None:
        window = window.isel(c=channels)
    data = window.data
    if hasattr(data, "compute"):
        data = data.compute(scheduler=scheduler())
    return np.asarray(data), (x0 * fx, x1 * fx, y0 * fy, y1 * fy)


def _imshow(
    ax: Any, rgba: np.ndarray, box: tuple[float, float, float, float], amap: AffineMap, **kwargs: Any
):
    x0, x1, y0, y1 = box
    return ax.imshow(
        rgba,
        extent=(x0, x1, y1, y0),
        origin="upper",
        transform=_affine2d(amap) + ax.transData,
        **kwargs,
    )


def _percentile_norm(channel: np.ndarray) -> np.ndarray:
    step = max(1, int(math.sqrt(channel.size / 1_000_000)))
    sample = channel[::step, ::step].astype(float)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return np.zeros(channel.shape)
    lo, hi = np.percentile(finite, [1.0, 99.0])
    if hi <= lo:
        hi = lo + 1.0
    scaled = channel.astype(np.float32)  # float32: an output picture needs no more, half the memory of float64
    scaled -= np.float32(lo)
    scaled *= np.float32(1.0 / (hi - lo))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


_COMPOSITE_COLORS = ["#ff0000", "#00ff00", "#0000ff", "#ffff00", "#ff00ff", "#00ffff", "#ff8000", "#8000ff"]


def _channel_indices(names: list[Any], channel: Any, name: str) -> list[int]:
    if channel is None:
        return list(range(len(names)))
    wanted = channel if isinstance(channel, (list, tuple)) else [channel]
    out = []
    for c in wanted:
        if c in names:
            out.append(names.index(c))
        elif isinstance(c, (int, np.integer)) and 0 <= c < len(names):
            out.append(int(c))
        else:
            raise KeyError(f"image {name!r} has no channel {c!r}; channels are {names}")
    return out


def render_image(
    ax: Any, name: str, element: Any, t: BaseTransformation, canvas: Canvas, p: dict
) -> Coloring | None:
    mpl = require("matplotlib")
    mcolors = require("matplotlib.colors")
    amap = _xy_map(element, t, name)
    lvl0 = raster_levels(element)[0]
    names = (
        [c.item() if hasattr(c, "item") else c for c in lvl0.coords["c"].values]
        if "c" in lvl0.coords
        else list(range(lvl0.sizes["c"]))
    )
    chosen = _channel_indices(names, p.get("channel"), name)
    read = read_raster(element, amap, canvas, p.get("scale"), name, channels=chosen)
    if read is None:
        return None
    data, box = read
    idx = list(range(len(chosen)))  # positions in the window read
    names = [names[c] for c in chosen]
    palette, cmap, norm = p.get("palette"), p.get("cmap"), p.get("norm")
    kwargs = {"alpha": p.get("alpha", 1.0), "interpolation": "antialiased", "zorder": p["zorder"]}
    if (
        p.get("channel") is None
        and palette is None
        and cmap is None
        and data.dtype == np.uint8
        and data.shape[0] in (3, 4)
    ):
        _imshow(ax, np.moveaxis(data, 0, -1), box, amap, **kwargs)  # RGB(A) image as is
        return None

    def normalised(c: int) -> np.ndarray:
        if norm is not None:
            return np.clip(np.asarray(norm(data[c].astype(float)), dtype=float), 0.0, 1.0)
        return _percentile_norm(data[c])

    if len(idx) == 1:
        if palette is not None:
            colour = palette[0] if isinstance(palette, (list, tuple)) else palette
            cm = mcolors.LinearSegmentedColormap.from_list(f"{name}_channel", ["black", colour])
        else:
            cm = mpl.colormaps[cmap or "gray"] if not isinstance(cmap, mcolors.Colormap) else cmap
        _imshow(ax, cm(normalised(idx[0])), box, amap, **kwargs)
        return None
    if palette is None:
        colours = _COMPOSITE_COLORS if len(idx) > 3 else ["#ff0000", "#00ff00", "#0000ff"]
        if len(idx) > len(colours):
            colours = default_palette(len(idx))
    else:
        colours = [palette] if isinstance(palette, str) else list(palette)
        if len(colours) < len(idx):
            raise ValueError(f"image {name!r}: palette has {len(colours)} colours for {len(idx)} channels")
    rgb = np.zeros((*data.shape[1:], 3), dtype=np.float32)
    legend = []
    for c, colour in zip(idx, colours, strict=False):
        rgba = to_rgba(colour)
        level = normalised(c)
        for k in range(3):
            if rgba[k]:
                rgb[..., k] += level * np.float32(rgba[k])
        legend.append((str(names[c]), rgba))
    _imshow(ax, np.clip(rgb, 0.0, 1.0, out=rgb), box, amap, **kwargs)
    return Coloring(np.zeros(0, dtype=np.intp), np.zeros((0, 4)), legend=legend, key=f"{name} channels")


def _hashed_colors(ids: np.ndarray) -> np.ndarray:
    mcolors = require("matplotlib.colors")
    hue = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    hsv = np.column_stack([hue, np.full(len(ids), 0.7), np.full(len(ids), 0.9)])
    return np.column_stack([mcolors.hsv_to_rgb(hsv), np.ones(len(ids))])


def render_labels(
    ax: Any, sdata: SpatialData, name: str, element: Any, t: BaseTransformation, canvas: Canvas, p: dict
) -> Coloring | None:
    amap = _xy_map(element, t, name)
    read = read_raster(element, amap, canvas, p.get("scale"), name)
    if read is None:
        return None
    arr, box = read
    ids, inverse = np.unique(arr, return_inverse=True)
    inverse = inverse.reshape(arr.shape)
    color = p.get("color")
    coloring: Coloring | None = None
    if color is None:
        lut = _hashed_colors(ids)
    elif is_color(color) and not _key_in_tables(sdata, name, color, p.get("table_name")):
        lut = np.tile(to_rgba(color), (len(ids), 1))
    else:
        source = find_color_source(sdata, name, [], color, p.get("table_name"))
        values, uns = label_values(sdata, name, source, p.get("table_layer"))
        aligned = _align(values, pd.Index(ids), name)
        coloring = resolve_coloring(
            len(ids),
            values=aligned,
            key=color,
            palette=p.get("palette"),
            groups=p.get("groups"),
            na_color=p.get("na_color"),
            cmap=p.get("cmap"),
            norm=p.get("norm"),
            uns=uns,
            what=f"labels {name!r}",
        )
        lut = coloring.row_colors()
    lut = lut.copy()
    lut[ids == 0] = 0.0  # background
    fill = lut.copy()
    fill[:, 3] *= p.get("fill_alpha", 0.4)
    image = fill[inverse]
    if p.get("outline"):
        edge = np.zeros(arr.shape, dtype=bool)
        edge[1:, :] |= arr[1:, :] != arr[:-1, :]
        edge[:-1, :] |= arr[:-1, :] != arr[1:, :]
        edge[:, 1:] |= arr[:, 1:] != arr[:, :-1]
        edge[:, :-1] |= arr[:, :-1] != arr[:, 1:]
        outline = lut[inverse]
        outline[..., 3] *= p.get("outline_alpha", 1.0)
        image[edge] = outline[edge]
    _imshow(ax, image, box, amap, interpolation="nearest", zorder=p["zorder"])
    return coloring


def _key_in_tables(sdata: SpatialData, name: str, key: Any, table_name: str | None) -> bool:
    if not isinstance(key, str):
        return False
    tables = [table_name] if table_name is not None else sdata.get_annotating_tables(name)
    return any(table_has_key(sdata, tn, key) for tn in tables)


def _align(values: pd.Series, ids: pd.Index, name: str) -> pd.Series:
    """``values`` (indexed by instance id) in the order of ``ids``; ids without a value are missing."""
    index = values.index
    if index.has_duplicates:
        raise ValidationError(
            f"element {name!r}: the table has several rows for instances {index[index.duplicated()][:5].tolist()}"
        )
    pos = index.get_indexer(ids)
    if (pos < 0).all() and len(ids) and len(index):
        pos = index.astype(str).get_indexer(ids.astype(str))
    taken = values.iloc[np.maximum(pos, 0)].copy() if len(values) else pd.Series(np.full(len(ids), np.nan))
    taken = taken.reset_index(drop=True)
    missing = pos < 0
    if missing.any():
        if isinstance(taken.dtype, pd.CategoricalDtype):
            taken[missing] = np.nan
        else:
            taken = taken.astype(object if not pd.api.types.is_numeric_dtype(taken.dtype) else float)
            taken[missing] = np.nan
    return taken


# ================================================================================================ shapes
def _element_coloring(
    sdata: SpatialData,
    name: str,
    element: Any,
    columns: pd.Index,
    ids: pd.Index | None,
    p: dict,
    n: int,
    fetch_column: Any,
) -> Coloring:
    color = p.get("color")
    common = {
        "palette": p.get("palette"),
        "groups": p.get("groups"),
        "na_color": p.get("na_color"),
        "cmap": p.get("cmap"),
        "norm": p.get("norm"),
        "what": f"element {name!r}",
    }
    if color is None or (
        is_color(color)
        and color not in columns
        and not _key_in_tables(sdata, name, color, p.get("table_name"))
    ):
        return resolve_coloring(n, color=color)
    source: ColorSource = find_color_source(sdata, name, columns, color, p.get("table_name"))
    if source.place == "element":
        values = fetch_column(color).reset_index(drop=True)
        return resolve_coloring(n, values=values, key=color, **common)
    values, uns = table_values_by_id(sdata, name, element, source, p.get("table_layer"))
    return resolve_coloring(n, values=_align(values, ids, name), key=color, uns=uns, **common)


def _flat_polygon_vertices(flat: FlatGeometry, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, path codes and owning row (position in ``rows``) of every vertex of the (multi)polygons ``rows``
    of flat coordinate arrays, all rings closed, in the order of ``rows``."""
    gro, ro = flat.geom_ring_offsets, flat.ring_offsets
    r_start = gro[rows]
    n_r = gro[rows + 1] - r_start
    ring_ids = ranges(r_start, n_r)
    c_start = ro[ring_ids]
    n_c = ro[ring_ids + 1] - c_start
    idx = ranges(c_start, n_c)
    ring_of = np.repeat(np.arange(len(ring_ids)), n_c)
    hole = flat.ring_sign[ring_ids] < 0
    if hole.any() and len(idx):
        # exteriors clockwise, holes anticlockwise: matplotlib's nonzero fill rule then cuts the holes
        x, y = flat.coords[idx, 0], flat.coords[idx, 1]
        cross = np.zeros(len(idx))
        cross[:-1] = x[:-1] * y[1:] - x[1:] * y[:-1]
        ends = np.cumsum(n_c) - 1
        cross[ends[n_c > 0]] = 0.0  # the closing vertex starts no edge of its ring
        area = np.zeros(len(ring_ids))
        np.add.at(area, ring_of, cross)
        flip = np.repeat((area > 0) != hole, n_c)
        j = idx - np.repeat(c_start, n_c)
        idx = np.where(flip, np.repeat(c_start + n_c - 1, n_c) - j, idx)
    owner = np.repeat(np.repeat(np.arange(len(rows)), n_r), n_c)
    return flat.coords[idx], _ring_codes(ring_of), owner


def _ring_codes(ring_of: np.ndarray) -> np.ndarray:
    """Path codes of closed rings given each vertex's ring number (rings contiguous)."""
    codes = np.full(len(ring_of), _LINETO, dtype=np.uint8)
    if len(ring_of):
        starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
        ends = np.r_[starts[1:] - 1, len(ring_of) - 1]
        codes[starts] = _MOVETO
        codes[ends] = _CLOSEPOLY
    return codes


def _circle_vertices(
    centres: np.ndarray, radii: np.ndarray, amap: AffineMap, canvas: Canvas
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices of each transformed disk as a polygon fine enough for the output pixel size (in intrinsic
    coordinates: the caller applies the affine, so the disk keeps its true radius and becomes an ellipse)."""
    scale = float(np.linalg.svd(amap.linear, compute_uv=False).max()) if len(radii) else 1.0
    r_px = float(np.nanmax(radii)) * scale / canvas.unit_per_px if len(radii) else 1.0
    m = 8 if r_px <= 1 else int(np.clip(math.ceil(math.pi / math.acos(max(1 - 0.25 / r_px, -1.0))), 8, 96))
    angles = np.linspace(0.0, 2 * math.pi, m + 1)
    unit = np.column_stack([np.cos(angles), np.sin(angles)])
    coords = (centres[:, None, :] + radii[:, None, None] * unit[None, :, :]).reshape(-1, 2)
    codes = np.tile(np.r_[_MOVETO, np.full(m - 1, _LINETO), _CLOSEPOLY].astype(np.uint8), len(centres))
    owner = np.repeat(np.arange(len(centres)), m + 1)
    return coords, codes, owner


def render_shapes(
    ax: Any, sdata: SpatialData, name: str, element: Any, t: BaseTransformation, canvas: Canvas, p: dict
) -> Coloring | None:
    mpath = require("matplotlib.path")
    mcoll = require("matplotlib.collections")
    amap = _xy_map(element, t, name)
    gdf = element
    if canvas.cropped:
        gdf = query_shapes(element, t, canvas.region())[0]
        if gdf is None or len(gdf) == 0:
            return None
    n = len(gdf)
    if n == 0:
        return None
    columns = gdf.columns.drop(gdf.geometry.name)
    coloring = _element_coloring(
        sdata, name, gdf, columns, pd.Index(gdf.index), p, n, lambda key: pd.Series(gdf[key].array)
    )
    # order the rows by colour (rows not drawn left out) before taking vertices: they come out grouped
    rows = np.flatnonzero(coloring.ids >= 0)
    if len(coloring.rgba) > 1:
        rows = rows[np.argsort(coloring.ids[rows], kind="stable")]
    if len(rows) == 0:
        return coloring
    method = p.get("method")
    if method is None:
        method = (
            "datashader" if rasterise_by_default(len(rows), canvas, SHAPES_RASTER_MINIMUM) else "matplotlib"
        )
    if method == "datashader":
        radii = gdf[RADIUS_COLUMN].to_numpy(dtype=float)[rows] if shapes_type(gdf) == "circles" else None
        image = rasterize_shapes(
            flat_geometry(gdf),  # from the store's WKB when there is one: no shapely objects
            rows,
            radii,
            coloring.rgba[coloring.ids[rows]],
            amap,
            canvas,
            fill_alpha=float(p.get("fill_alpha", 1.0)),
            outline_color=p.get("outline_color", "#000000"),
            outline_alpha=float(p.get("outline_alpha", 0.0)),
            outline_width=float(p.get("outline_width", 1.5)),
        )
        _imshow_canvas(ax, image, canvas, zorder=p["zorder"])
        return coloring
    flat = flat_geometry(gdf)  # from the store's WKB when there is one: no shapely objects
    if shapes_type(gdf) == "circles":
        centres = flat.coords[rows]
        radii = gdf[RADIUS_COLUMN].to_numpy(dtype=float)[rows]
        coords, codes, owner = _circle_vertices(centres, radii, amap, canvas)
    else:
        coords, codes, owner = _flat_polygon_vertices(flat, rows)
    if not (np.array_equal(amap.linear, np.eye(2)) and not amap.offset.any()):
        coords = amap.apply(coords)
    vertex_color = coloring.ids[rows][owner]
    if len(coords) == 0:
        return coloring
    # one path per colour, cut at ring starts into pieces of about _PATH_VERTICES (Agg fills huge paths badly)
    ring_starts = np.flatnonzero(codes == _MOVETO)
    ring_color = vertex_color[ring_starts]
    block = ring_starts // _PATH_VERTICES
    cut = np.r_[True, (ring_color[1:] != ring_color[:-1]) | (block[1:] != block[:-1])]
    bounds = ring_starts[cut]
    groups = ring_color[cut]
    stops = np.r_[bounds[1:], len(coords)]
    paths = [mpath.Path(coords[a:b], codes[a:b]) for a, b in zip(bounds, stops, strict=True)]
    face = coloring.rgba[groups].copy()
    face[:, 3] *= p.get("fill_alpha", 1.0)
    edge = to_rgba(p.get("outline_color", "#000000"))
    edge[3] *= p.get("outline_alpha", 0.0)
    collection = mcoll.PathCollection(
        paths,
        facecolors=face,
        edgecolors=np.tile(edge, (len(paths), 1)),
        linewidths=p.get("outline_width", 1.5) if edge[3] > 0 else 0.0,
        transform=ax.transData,
        zorder=p["zorder"],
    )
    ax.add_collection(collection, autolim=False)
    return coloring


# ================================================================================================ points
def _read_points_columns(frame: Any, wanted: list[str], whole: bool) -> pd.DataFrame:
    """``wanted`` columns of a points frame: a whole element as read from a store straight from its row groups
    (:func:`tissuestack.store.read_points_columns`), anything else through dask."""
    out = read_points_columns(frame, wanted) if whole else None
    return out if out is not None else frame[wanted].compute(scheduler=scheduler())


def render_points(
    ax: Any, sdata: SpatialData, name: str, element: Any, t: BaseTransformation, canvas: Canvas, p: dict
) -> Coloring | None:
    amap = _xy_map(element, t, name)
    frame = element
    if canvas.cropped:
        frame = query_points(element, t, canvas.region())[0]
        if frame is None:
            return None
    columns = pd.Index(frame.columns)
    color = p.get("color")
    meta = get_meta(element)
    wanted = list(get_axes(element)[:2])
    use_table = False
    if (
        isinstance(color, str)
        and color not in columns
        and _key_in_tables(sdata, name, color, p.get("table_name"))
    ):
        use_table = True
        if meta.instance_key is None:
            raise ValidationError(f"points {name!r} have no instance_key column to match table rows")
        wanted.append(meta.instance_key)
    elif isinstance(color, str) and color in columns:
        wanted.append(color)
    pdf = _read_points_columns(frame, list(dict.fromkeys(wanted)), whole=not canvas.cropped)
    n = len(pdf)
    if n == 0:
        return None
    if use_table:
        source = find_color_source(sdata, name, columns, color, p.get("table_name"))
        values, uns = table_values_by_id(sdata, name, element, source, p.get("table_layer"))
        aligned = _align(values, pd.Index(pdf[meta.instance_key].to_numpy()), name)
        coloring = resolve_coloring(
            n,
            values=aligned,
            key=color,
            uns=uns,
            palette=p.get("palette"),
            groups=p.get("groups"),
            na_color=p.get("na_color"),
            cmap=p.get("cmap"),
            norm=p.get("norm"),
            what=f"points {name!r}",
        )
    else:
        coloring = _element_coloring(
            sdata, name, element, columns, None, p, n, lambda key: pdf[key].reset_index(drop=True)
        )
    method = p.get("method")
    if method is None:
        method = "datashader" if n > DATASHADER_THRESHOLD else "matplotlib"
    if method not in ("matplotlib", "datashader"):
        raise ValueError(f"points {name!r}: method must be 'matplotlib' or 'datashader', got {method!r}")
    keep = coloring.ids >= 0
    everything = bool(keep.all())
    x, y = (pdf[a].to_numpy() if everything else pdf[a].to_numpy()[keep] for a in ("x", "y"))
    ids = coloring.ids if everything else coloring.ids[keep]
    size = float(p.get("size", 1.0))
    alpha = float(p.get("alpha", 1.0))
    if method == "matplotlib":
        xy = amap.apply(np.column_stack([x, y]).astype(float))
        ax.scatter(
            xy[:, 0], xy[:, 1], s=size, c=coloring.rgba[ids], linewidths=0, alpha=alpha, zorder=p["zorder"]
        )
        return coloring
    image = _datashade(x, y, amap, ids, coloring, canvas, size)
    _imshow_canvas(ax, image, canvas, alpha=alpha, zorder=p["zorder"])
    return coloring


def _imshow_canvas(ax: Any, image: np.ndarray, canvas: Canvas, **kwargs: Any) -> None:
    """Place an image of the canvas's pixel grid (row 0 at ``ymin``) over the panel."""
    ax.imshow(
        image,
        extent=(canvas.xmin, canvas.xmax, canvas.ymax, canvas.ymin),
        origin="upper",
        interpolation="nearest",
        **kwargs,
    )


_MODE_MAX_CELLS = 32_000_000  # categories x pixels up to which a pixel takes its most frequent category


def _spread(image: np.ndarray, size: float, dpi: float) -> np.ndarray:
    """Grow every drawn pixel to the radius of a scatter marker of size ``size`` (points squared)."""
    ndimage = require("scipy.ndimage")
    radius_px = 0.5 * math.sqrt(max(size, 0.0)) * dpi / 72.0
    r = round(radius_px)
    if r < 1:
        return image
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (xx**2 + yy**2) <= (radius_px + 0.5) ** 2
    if image.ndim == 2:
        return ndimage.maximum_filter(image, footprint=disk)
    return np.stack(
        [ndimage.maximum_filter(image[..., k], footprint=disk) for k in range(image.shape[2])], -1
    )


def _datashade(
    x: np.ndarray,
    y: np.ndarray,
    amap: AffineMap,
    ids: np.ndarray,
    coloring: Coloring,
    canvas: Canvas,
    size: float,
) -> np.ndarray:
    """RGBA image of the points on the canvas grid, spread to the marker's radius.

    Categories (and one colour) a pixel takes the colour of most of its points; continuous values (256 colormap
    levels), or more categories than a per-pixel count fits in memory, the highest level among its points,
    missing values last. The binning is tissuestack's own kernels (:mod:`tissuestack.kernels._bin`).
    """
    height, width = int(canvas.height_px), int(canvas.width_px)
    image = np.zeros((height, width, 4))  # row 0 at ymin
    if len(ids) == 0:
        return image
    used = np.flatnonzero(np.bincount(ids, minlength=len(coloring.rgba)))  # colours present (O(n), no sort)
    categorical = coloring.mappable is None
    if len(used) == 1 or (categorical and len(used) * height * width <= _MODE_MAX_CELLS):
        lut = np.full(len(coloring.rgba), -1, dtype=np.int32)
        lut[used] = np.arange(len(used))
        # the affine to canvas pixels and the colour codes applied inside the kernel: no 20M-row temporaries
        binned = bin_points_count_mapped(
            np.ascontiguousarray(x), np.ascontiguousarray(y), pixel_affine(amap, canvas),
            np.ascontiguousarray(ids), lut, len(used), height, width,
        )  # fmt: skip
        counts = _spread(binned, size, canvas.dpi)
        drawn = counts.max(axis=-1) > 0
        image[drawn] = coloring.rgba[used[counts.argmax(axis=-1)[drawn]]]
        return image
    px, py = to_pixels(x, y, amap, canvas)  # intrinsic -> canvas pixels in one fused affine
    na_id = len(coloring.rgba) - 1
    value = np.where(ids == na_id, -0.5, ids).astype(np.float64)  # missing values lose to any real value
    top = _spread(bin_points_max(px, py, value, -1.0, height, width), size, canvas.dpi)
    image[top >= 0] = coloring.rgba[top[top >= 0].astype(np.intp)]
    image[top == -0.5] = coloring.rgba[na_id]
    return image


def render_element(
    kind: str,
    ax: Any,
    sdata: SpatialData,
    name: str,
    element: Any,
    t: BaseTransformation,
    canvas: Canvas,
    p: dict,
) -> Coloring | None:
    """Draw one element; the coloring used (legend / colorbar), if any."""
    protocol = get_kind_protocol(kind)
    if protocol.has_channels:  # images
        return render_image(ax, name, element, t, canvas, p)
    if protocol.is_raster:  # labels
        return render_labels(ax, sdata, name, element, t, canvas, p)
    if protocol.in_memory:  # shapes
        return render_shapes(ax, sdata, name, element, t, canvas, p)
    return render_points(ax, sdata, name, element, t, canvas, p)
