"""``sdata.pl``: an immutable chain of render steps, drawn by ``show`` (one panel per coordinate system)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tissuestack._compute import warm_numba
from tissuestack._container import SpatialData
from tissuestack.elements import get_meta
from tissuestack.errors import NoPathError, UnknownCoordinateSystemError, ValidationError
from tissuestack.ops import get_extent
from tissuestack.pl._colors import DEFAULT_NA_COLOR, Coloring
from tissuestack.pl._mpl import require
from tissuestack.pl._render import Canvas, render_element

__all__ = ["PlotAccessor"]


@dataclass(frozen=True)
class _Step:
    kind: str  # images, labels, points, shapes
    element: str | list[str] | None
    params: dict = field(default_factory=dict)


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    """A render call's keyword options (its signature states them once; the call's ``locals()`` carry them)."""
    return {k: v for k, v in arguments.items() if k not in ("self", "element")}


class PlotAccessor:
    """Static plots of a SpatialData object: ``sdata.pl.render_images(...).pl.render_shapes(...).pl.show()``.

    Every ``render_*`` call returns a new accessor with one more step (the chain is immutable: branching off the
    same accessor twice gives two independent plots); ``.pl`` on an accessor is the accessor itself, so chains
    read like spatialdata-plot's. Nothing is read or drawn before :meth:`show`.
    """

    def __init__(self, sdata: SpatialData, steps: tuple[_Step, ...] = ()):
        self._sdata = sdata
        self._steps = steps

    @property
    def pl(self) -> PlotAccessor:
        return self

    @property
    def steps(self) -> tuple[_Step, ...]:
        return self._steps

    def __repr__(self) -> str:
        inner = ", ".join(f"{s.kind}:{s.element or '*'}" for s in self._steps) or "no render steps"
        return f"<PlotAccessor {inner}>"

    def _add(self, kind: str, element: str | list[str] | None, params: dict) -> PlotAccessor:
        names = self._names(kind, element)
        if not names and element is None:
            raise ValidationError(f"render_{kind}: the SpatialData has no {kind} elements")
        return PlotAccessor(self._sdata, (*self._steps, _Step(kind, element, params)))

    def _names(self, kind: str, element: str | list[str] | None) -> list[str]:
        view = getattr(self._sdata, kind)
        if element is None:
            return list(view)
        names = [element] if isinstance(element, str) else list(element)
        for n in names:
            if n not in self._sdata:
                raise KeyError(f"render_{kind}: no element named {n!r}; {kind} elements: {list(view)}")
            if self._sdata.kind_of(n) != kind:
                raise ValidationError(
                    f"render_{kind}: {n!r} is a {self._sdata.kind_of(n)} element; use render_{self._sdata.kind_of(n)}"
                )
        return names

    # ------------------------------------------------------------------------------------------- steps
    def render_images(
        self,
        element: str | list[str] | None = None,
        *,
        channel: str | int | Sequence[str | int] | None = None,
        cmap: Any = None,
        norm: Any = None,
        palette: str | Sequence[str] | None = None,
        alpha: float = 1.0,
        scale: str | None = None,
    ) -> PlotAccessor:
        """Add images (all images when ``element`` is None).

        Parameters
        ----------
        element
            Image name(s).
        channel
            Channel name(s) or position(s) to show (default: all). One channel is drawn through ``cmap``
            (default ``"gray"``) or from black to ``palette``; several are composited additively, channel ``i``
            in colour ``palette[i]`` (default red, green, blue, ...).
        cmap, norm
            Colormap of a single channel; a matplotlib ``Normalize`` for every channel (default: each channel's
            1st..99th percentile in the window drawn).
        palette
            Colour(s) of the channels.
        alpha
            Opacity.
        scale
            Pyramid level (``"scale0"``, ``"scale1"``, ... or ``"full"``); default: the coarsest level whose
            pixels are no larger than an output pixel. Uint8 images with 3 or 4 channels are shown as RGB(A)
            when no channel, palette or cmap is given.
        """
        return self._add("images", element, _options(locals()))

    def render_labels(
        self,
        element: str | list[str] | None = None,
        color: str | None = None,
        *,
        fill_alpha: float = 0.4,
        outline: bool = False,
        outline_alpha: float = 1.0,
        table_name: str | None = None,
        table_layer: str | None = None,
        groups: str | Sequence[str] | None = None,
        palette: Any = None,
        cmap: Any = None,
        norm: Any = None,
        na_color: Any = DEFAULT_NA_COLOR,
        scale: str | None = None,
    ) -> PlotAccessor:
        """Add labels (segmentation masks), each label filled in its colour; label 0 is background.

        Parameters
        ----------
        color
            A colour for every label, or an obs column / var name of the annotating table (``table_name``; found
            automatically when one annotating table has it). Default: a distinct colour per label id.
        fill_alpha
            Opacity of the fill.
        outline, outline_alpha
            Draw each label's boundary pixels in its colour, at this opacity.
        table_layer
            Read var values from this layer instead of ``X``.
        groups, palette, cmap, norm, na_color
            As for :meth:`render_shapes`.
        scale
            As for :meth:`render_images`.
        """
        return self._add("labels", element, _options(locals()))

    def render_points(
        self,
        element: str | list[str] | None = None,
        color: str | None = None,
        *,
        size: float = 1.0,
        alpha: float = 1.0,
        groups: str | Sequence[str] | None = None,
        palette: Any = None,
        cmap: Any = None,
        norm: Any = None,
        na_color: Any = DEFAULT_NA_COLOR,
        table_name: str | None = None,
        table_layer: str | None = None,
        method: str | None = None,
    ) -> PlotAccessor:
        """Add points.

        Parameters
        ----------
        color
            A colour, a column of the points (e.g. the feature key ``"gene"``), or a key of a table annotating
            them (matched through the points' instance key).
        size
            Marker size (matplotlib ``scatter`` ``s``, points squared).
        method
            ``"matplotlib"`` (scatter), ``"datashader"`` (binned onto the panel's pixel grid: per pixel the
            category with most points, or the highest value of a continuous colour, spread to the marker size;
            spatialdata-plot's name, with tissuestack's own kernels), or ``None``: binned above 100,000 points
            (after the crop).
        groups, palette, cmap, norm, na_color
            As for :meth:`render_shapes`.
        """
        return self._add("points", element, _options(locals()))

    def render_shapes(
        self,
        element: str | list[str] | None = None,
        color: str | None = None,
        *,
        fill_alpha: float = 1.0,
        outline_width: float = 1.5,
        outline_color: Any = "#000000",
        outline_alpha: float = 0.0,
        groups: str | Sequence[str] | None = None,
        palette: Any = None,
        cmap: Any = None,
        norm: Any = None,
        na_color: Any = DEFAULT_NA_COLOR,
        table_name: str | None = None,
        table_layer: str | None = None,
        method: str | None = None,
    ) -> PlotAccessor:
        """Add shapes: polygons, multipolygons and circles (at their true radius under the transformation).

        Parameters
        ----------
        color
            A colour; a column of the shapes; or an obs column or var name (gene; from ``X`` or ``table_layer``)
            of the annotating table ``table_name`` (found automatically when one annotating table has it).
            Categorical values take ``table.uns[f"{color}_colors"]`` when present (written there when absent, as
            scanpy does); numeric values go through ``cmap`` / ``norm``.
        fill_alpha
            Opacity of the fill.
        outline_width, outline_color, outline_alpha
            Outline (invisible by default: ``outline_alpha=0``).
        groups
            Categories to draw; shapes of other categories are not drawn.
        palette
            Colours of the categories: a list, a dict category -> colour, or a matplotlib colormap name.
        na_color
            Colour of shapes without a value (no table row, missing value).
        method
            ``"matplotlib"``: one compound path per colour (vectorised; anti-aliased edges).
            ``"datashader"``: rasterised onto the panel's output pixel grid (a pixel takes the colour of the
            shape covering its centre; outlines ``outline_width`` points wide on the shape boundaries), with
            tissuestack's scanline kernels. ``None``: rasterised when there are at least 250,000 shapes (after the
            crop) and more than one per 100 output pixels, else matplotlib.

        Notes
        -----
        Shapes of the same colour are drawn together, so where shapes of different colours overlap, the draw
        order follows the colours, not the rows. Rasterised, an overlap shows only the shape on top (matplotlib
        blends translucent fills of different colours).
        """
        if method not in (None, "matplotlib", "datashader"):
            raise ValueError(
                f"render_shapes: method must be None, 'matplotlib' or 'datashader', got {method!r}"
            )
        return self._add("shapes", element, _options(locals()))

    # -------------------------------------------------------------------------------------------- show
    def _panels(
        self, coordinate_systems: str | Sequence[str] | None
    ) -> list[tuple[str, list[tuple[int, str, Any]]]]:
        """``[(cs, [(step index, element name, transformation)])]`` for every panel to draw."""
        sdata = self._sdata
        known = sdata.coordinate_systems
        if coordinate_systems is None:
            wanted, explicit = known, False
        else:
            wanted = [coordinate_systems] if isinstance(coordinate_systems, str) else list(coordinate_systems)
            explicit = True
            unknown = [c for c in wanted if c not in known]
            if unknown:
                raise UnknownCoordinateSystemError(f"unknown coordinate system(s) {unknown}; known: {known}")
        panels = []
        for cs in wanted:
            items = []
            for i, step in enumerate(self._steps):
                for name in self._names(step.kind, step.element):
                    try:
                        t = sdata.get_transformation_between(name, cs)
                    except NoPathError:
                        continue
                    items.append((i, name, t))
            if items:
                panels.append((cs, items))
            elif explicit:
                raise ValidationError(f"show: none of the rendered elements reaches coordinate system {cs!r}")
        if not panels:
            raise ValidationError(
                "show: nothing to draw; add render_images/labels/points/shapes steps first"
                if not self._steps
                else "show: none of the rendered elements is in any coordinate system"
            )
        return panels

    def show(
        self,
        coordinate_systems: str | Sequence[str] | None = None,
        *,
        ax: Any = None,
        figsize: tuple[float, float] | None = None,
        dpi: float | None = None,
        title: str | Sequence[str] | None = None,
        legend_loc: str | None = "right margin",
        colorbar: bool = True,
        return_ax: bool = False,
        save: str | None = None,
        crop: Sequence[float] | None = None,
        width: int | None = None,
        frameon: bool | None = None,
        scalebar_dx: float | None = None,
        scalebar_units: str = "um",
        scalebar: bool | None = None,
    ) -> Any:
        """Draw the render steps, one panel per coordinate system.

        Parameters
        ----------
        coordinate_systems
            Coordinate system(s) to draw (default: every one that a rendered element reaches).
        ax
            A matplotlib axes (or a list, one per coordinate system) to draw into.
        figsize, dpi
            Of the new figure (default dpi 100).
        title
            Panel title(s) (default: the coordinate system's name).
        legend_loc
            ``"right margin"`` (outside, right), any matplotlib legend ``loc``, or ``None`` for no legend.
        colorbar
            Draw colorbars for continuous colours.
        return_ax
            Return the axes (one, or a list for several panels) instead of showing the figure.
        save
            Path to save the figure to (format from the suffix: png, pdf, svg, ...).
        crop
            ``(xmin, xmax, ymin, ymax)`` in the coordinate system: only what lies inside is read and drawn
            (rasters through that window only, points and shapes through a bounding-box query).
        width
            Width of each panel in output pixels (sets ``figsize`` from ``dpi``); also the resolution rasters and
            datashader render at.
        frameon
            Draw axes frame, ticks and labels (default ``True``).
        scalebar_dx, scalebar_units
            Draw a scale bar: one coordinate-system unit is ``scalebar_dx`` ``scalebar_units`` (e.g. ``1.0``,
            ``"um"`` for a coordinate system in micrometres). The bar has a round length near a fifth of the
            panel's width.
        scalebar
            ``None`` (default): draw a scale bar when ``scalebar_dx`` is given or when the coordinate system's x
            axis has a unit (the NGFF ``unit`` stored with the elements' transformations, e.g.
            ``"micrometer"``; see ``ElementMeta.units``): its length is then a round number of nm, µm, mm or m.
            ``False``: never.
        """
        mpl = require("matplotlib")
        plt = require("matplotlib.pyplot")
        if any(step.kind in ("points", "shapes") for step in self._steps):
            # their binning / rasterising kernels: numba's one-time set-up overlaps reading the elements
            warm_numba()
        panels = self._panels(coordinate_systems)
        dpi = float(dpi or (ax.figure.dpi if ax is not None and not isinstance(ax, (list, tuple)) else 100.0))
        extents = [self._extent(cs, items, crop) for cs, items in panels]
        created = ax is None
        if created:
            if figsize is None:
                panel_w = (width / dpi) if width else 5.0
                dx, dy = extents[0][1] - extents[0][0], extents[0][3] - extents[0][2]
                aspect = min(5.0, max(0.2, dy / dx if dx > 0 else 1.0))
                figsize = (
                    panel_w * len(panels) / 0.775 + (1.5 if legend_loc == "right margin" else 0.0),
                    panel_w * aspect / 0.77,
                )
            fig, axes_arr = plt.subplots(1, len(panels), figsize=figsize, dpi=dpi, squeeze=False)
            axes = list(axes_arr[0])
        else:
            axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
            if len(axes) != len(panels):
                raise ValueError(
                    f"show: got {len(axes)} axes for {len(panels)} coordinate systems {[p[0] for p in panels]}"
                )
            fig = axes[0].figure
        titles = (
            [title] * len(panels) if isinstance(title, str) else list(title) if title is not None else None
        )
        for k, ((cs, items), extent, a) in enumerate(zip(panels, extents, axes, strict=True)):
            colorings = self._draw_panel(a, cs, items, extent, crop is not None, dpi)
            a.set_title(titles[k] if titles is not None and k < len(titles) else cs)
            if frameon is False:
                a.set_axis_off()
            _decorate(fig, a, colorings, legend_loc, colorbar)
            if scalebar is not False:
                if scalebar_dx is not None:
                    _scalebar(a, extent, *_fixed_scalebar(extent[1] - extent[0], scalebar_dx, scalebar_units))
                else:
                    unit = self._unit(cs, items)
                    if unit is not None:
                        _scalebar(a, extent, *unit_scalebar(extent[1] - extent[0], unit))
        if save is not None:
            fig.savefig(save, dpi=dpi, bbox_inches="tight")
        if return_ax:
            return axes[0] if len(axes) == 1 else axes
        if created:
            if save is not None or mpl.get_backend().lower() == "agg":
                plt.close(fig)
            else:
                plt.show()
        return None

    def _unit(self, cs: str, items: list[tuple[int, str, Any]]) -> str | None:
        """The unit of the x axis of coordinate system ``cs`` as stored with the panel's elements, if any."""
        for name in dict.fromkeys(n for _, n, _ in items):
            unit = get_meta(self._sdata[name]).units.get(cs, {}).get("x")
            if unit:
                return unit
        return None

    def _extent(
        self, cs: str, items: list[tuple[int, str, Any]], crop: Sequence[float] | None
    ) -> tuple[float, ...]:
        if crop is not None:
            if len(crop) != 4:
                raise ValueError(f"crop must be (xmin, xmax, ymin, ymax), got {crop!r}")
            xmin, xmax, ymin, ymax = (float(v) for v in crop)
            if not (xmin < xmax and ymin < ymax):
                raise ValueError(f"crop must have xmin < xmax and ymin < ymax, got {crop!r}")
            return xmin, xmax, ymin, ymax
        box = get_extent(self._sdata, cs, elements=list(dict.fromkeys(n for _, n, _ in items)))
        (xmin, xmax), (ymin, ymax) = box["x"], box["y"]
        if xmax <= xmin:
            xmin, xmax = xmin - 0.5, xmax + 0.5
        if ymax <= ymin:
            ymin, ymax = ymin - 0.5, ymax + 0.5
        return xmin, xmax, ymin, ymax

    def _draw_panel(
        self, ax: Any, cs: str, items: list, extent: tuple[float, ...], cropped: bool, dpi: float
    ) -> list[Coloring]:
        xmin, xmax, ymin, ymax = extent
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymax, ymin)  # y grows downwards, as in images
        ax.set_aspect("equal")
        w_ax, h_ax = ax.bbox.width, ax.bbox.height
        scale = min(w_ax / (xmax - xmin), h_ax / (ymax - ymin))
        width_px = max(1, math.ceil((xmax - xmin) * scale))
        height_px = max(1, math.ceil((ymax - ymin) * scale))
        canvas = Canvas(cs, xmin, xmax, ymin, ymax, width_px, height_px, cropped, dpi)
        colorings: list[Coloring] = []
        for i, name, t in items:
            step = self._steps[i]
            params = dict(step.params, zorder=i + 1)
            coloring = render_element(step.kind, ax, self._sdata, name, self._sdata[name], t, canvas, params)
            if coloring is not None:
                colorings.append(coloring)
        return colorings


def _decorate(fig: Any, ax: Any, colorings: list[Coloring], legend_loc: str | None, colorbar: bool) -> None:
    """Legend of the categories drawn in a panel and colorbars of its continuous colours."""
    mpatches = require("matplotlib.patches")
    mcm = require("matplotlib.cm")
    handles, seen = [], set()
    for c in colorings:
        for label, rgba in c.legend or []:
            if label not in seen:
                seen.add(label)
                handles.append(mpatches.Patch(facecolor=rgba, edgecolor="none", label=label))
    if handles and legend_loc is not None:
        ncol = math.ceil(len(handles) / 25)
        if legend_loc == "right margin":
            ax.legend(
                handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, ncol=ncol
            )
        else:
            ax.legend(handles=handles, loc=legend_loc, ncol=ncol)
    if colorbar:
        for c in colorings:
            if c.mappable is not None:
                cmap, norm = c.mappable
                fig.colorbar(mcm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=c.key, shrink=0.8)


def scalebar_length(width: float, dx: float) -> float:
    """A round physical length (1, 2 or 5 times a power of ten) near a fifth of ``width`` units of size ``dx``."""
    target = 0.2 * width * dx
    if not target > 0:
        raise ValueError(f"scalebar_dx must be positive, got {dx!r}")
    power = 10.0 ** math.floor(math.log10(target) + 1e-9)
    return max(m * power for m in (1, 2, 5) if m * power <= target * (1 + 1e-9))


#: length units (NGFF / UDUNITS names and common abbreviations) -> metres
_METRES = {
    "angstrom": 1e-10,
    "nanometer": 1e-9,
    "nanometre": 1e-9,
    "nm": 1e-9,
    "micrometer": 1e-6,
    "micrometre": 1e-6,
    "micron": 1e-6,
    "um": 1e-6,
    "µm": 1e-6,
    "μm": 1e-6,
    "millimeter": 1e-3,
    "millimetre": 1e-3,
    "mm": 1e-3,
    "centimeter": 1e-2,
    "centimetre": 1e-2,
    "cm": 1e-2,
    "meter": 1.0,
    "metre": 1.0,
    "m": 1.0,
}
_PREFIXES = ((1e-9, "nm"), (1e-6, "µm"), (1e-3, "mm"), (1.0, "m"))


def _fixed_scalebar(width: float, dx: float, units: str) -> tuple[float, str]:
    length = scalebar_length(width, dx)
    return length / dx, f"{length:g} {units}"


def unit_scalebar(width: float, unit: str) -> tuple[float, str]:
    """Scale bar of a panel ``width`` coordinate units wide, one unit being ``unit``: (length in coordinate
    units, label). Lengths are round in the best SI prefix (``"50 µm"``, ``"2 mm"``); a unit that is not a known
    length is used as is (``"20 pixel"``)."""
    metres = _METRES.get(unit.strip().lower()) or _METRES.get(unit.strip())
    if metres is None:
        return _fixed_scalebar(width, 1.0, unit)
    length_m = scalebar_length(width, metres)
    factor, prefix = _PREFIXES[0]
    for f, p in _PREFIXES:
        if length_m >= f * 0.9999:
            factor, prefix = f, p
    return float(f"{length_m / metres:.12g}"), f"{length_m / factor:.12g} {prefix}"


def _scalebar(ax: Any, extent: tuple[float, ...], length: float, label: str) -> None:
    """A scale bar ``length`` coordinate units long, labelled, at the lower right (matplotlib artists only)."""
    anchored = require("mpl_toolkits.axes_grid1.anchored_artists")
    bar = anchored.AnchoredSizeBar(
        ax.transData,
        length,
        label,
        "lower right",
        pad=0.4,
        color="black",
        frameon=True,
        size_vertical=(extent[3] - extent[2]) / 150,
    )
    bar.patch.set_alpha(0.6)
    ax.add_artist(bar)
