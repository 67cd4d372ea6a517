"""The viewer's page: a Bokeh document per browser session.

A figure shows the elements of one coordinate system as server-rendered layers (see
:mod:`tissuestack.viewer._engine`), re-rendered after every pan or zoom for exactly the region in view. The
sidebar holds the coordinate-system switcher, one group of controls per layer (visibility, opacity, colour key,
fill/outline, channels with their colour and contrast, point size) with its legend, the annotation controls and
a box showing what was clicked.

Annotations are drawn with Bokeh's drawing tools in the toolbar: polygons (press and hold to start, click per
vertex, press and hold to finish), rectangles (shift + drag), circles and landmarks (click). Each gets the class
typed in the sidebar and a name, both editable in the table below; "Save" writes them into the store (see
:mod:`tissuestack.viewer._annotations`).
"""

from __future__ import annotations

import html
import logging
import math
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tissuestack.elements import get_kind_protocol
from tissuestack.viewer._annotations import Annotations, annotation_names, load_annotations, save_annotations
from tissuestack.viewer._engine import LayerStyle, View, ViewerEngine, channel_color

__all__ = ["ViewerSession"]

_log = logging.getLogger("tissuestack.viewer")
_SIDEBAR = 340
_NONE = "(default)"
_LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22")
_GENE = "gene: "
_MAX_GENES = 3000
_EDITABLE_ROWS = 10_000  # elements up to this size can be loaded into the annotation editor
_POOL = ThreadPoolExecutor(2, thread_name_prefix="tissuestack-render")  # layers render in parallel (numba
# kernels and numpy release the GIL)
_SETTLE_MS = 60  # a pan or zoom is rendered once the ranges have not changed for this long


def _legend_html(name: str, legend: list | None, colorbar: tuple | None) -> str:
    if legend:
        shown = legend[:24]
        items = " ".join(
            f'<span style="display:inline-block;margin:1px 6px 1px 0"><span style="display:inline-block;'
            f'width:10px;height:10px;background:{c};margin-right:3px"></span>{html.escape(str(label))}</span>'
            for label, c in shown
        )
        more = f" … {len(legend) - len(shown)} more" if len(legend) > len(shown) else ""
        return f'<div class="ts-legend" data-element="{html.escape(name)}" style="font-size:11px">{items}{more}</div>'
    if colorbar:
        key, lo, hi, colors = colorbar
        grad = ",".join(colors)
        return (
            f'<div class="ts-legend" data-element="{html.escape(name)}" style="font-size:11px">{html.escape(key)}: '
            f'{lo:.3g} <span style="display:inline-block;width:120px;height:10px;background:linear-gradient(to right,'
            f'{grad})"></span> {hi:.3g}</div>'
        )
    return ""


class ViewerSession:
    """The widgets and callbacks of one browser session (one Bokeh document)."""

    def __init__(
        self,
        doc: Any,
        engine: ViewerEngine,
        *,
        read_only: bool = False,
        width: int = 900,
        height: int = 700,
        title: str = "tissuestack viewer",
    ):
        from bokeh.layouts import column, row
        from bokeh.models import (
            BoxEditTool,
            BoxZoomTool,
            Button,
            ColumnDataSource,
            DataTable,
            Div,
            HoverTool,
            LabelSet,
            NumericInput,
            PanTool,
            PointDrawTool,
            PolyDrawTool,
            Range1d,
            ResetTool,
            Select,
            TableColumn,
            TapTool,
            TextInput,
            WheelZoomTool,
        )
        from bokeh.plotting import figure

        self.doc = doc
        self.engine = engine
        self.read_only = read_only
        self.width, self.height = int(width), int(height)
        self.owned: set[str] = set()  # elements this session loaded or saved (may be replaced when saving)
        self.styles: dict[tuple[str, str], LayerStyle] = {}
        self.default_colors: dict[tuple[str, str], str | None] = {}
        self.layers: dict[str, dict[str, Any]] = {}
        self._pending = False
        self._requested = 0.0
        self._syncing = False
        # polygons are never rewritten from the server while they may be being drawn (that would cancel the
        # drawing in the browser): their name and class live here, keyed by their first vertex
        self.poly_meta: dict[tuple[float, float], list[str]] = {}
        systems = engine.coordinate_systems()
        self.cs = systems[0] if systems else ""
        doc.title = title

        x0, x1, y0, y1 = self._fit(*engine.extent(self.cs)) if self.cs else (0, 1, 0, 1)
        self.fig = figure(
            frame_width=self.width,
            frame_height=self.height,
            x_range=Range1d(x0, x1),
            y_range=Range1d(y1, y0),  # flipped: y grows downwards, as in images
            tools=[PanTool(), WheelZoomTool(), BoxZoomTool(match_aspect=True), ResetTool(), TapTool()],
            toolbar_location="right",
            output_backend="canvas",
            name="ts-figure", css_classes=["ts-figure"],
        )
        self.fig.toolbar.active_scroll = self.fig.select_one(WheelZoomTool)
        self.fig.grid.visible = False
        self.fig.background_fill_color = "#000000"
        self.fig.min_border = 0

        # every layer's picture of the view, blended on the server into one image (one message per render)
        self.image_src = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self.image_r = self.fig.image_rgba("image", "x", "y", "dw", "dh", source=self.image_src, level="image",
                                           name="ts-layers")  # fmt: skip
        self._pictures: dict[str, tuple[View, Any]] = {}
        self._rerender = True
        self._last_range_change = 0.0

        # ------------------------------------------------------------------------- annotation drawing
        self.poly_src = ColumnDataSource({"xs": [], "ys": [], "name": [], "cls": []})
        self.box_src = ColumnDataSource({"x": [], "y": [], "width": [], "height": [], "name": [], "cls": []})
        self.circ_src = ColumnDataSource({"x": [], "y": [], "radius": [], "name": [], "cls": []})
        self.lm_src = ColumnDataSource({"x": [], "y": [], "name": [], "cls": []})
        style = {"line_color": "#ffd400", "line_width": 2, "fill_color": "#ffd400", "fill_alpha": 0.15}
        self.poly_r = self.fig.patches("xs", "ys", source=self.poly_src, level="overlay", **style)
        self.box_r = self.fig.rect("x", "y", "width", "height", source=self.box_src, level="overlay", **style)
        self.circ_r = self.fig.circle("x", "y", radius="radius", source=self.circ_src, level="overlay", **style)
        self.lm_r = self.fig.scatter(
            "x", "y", source=self.lm_src, marker="cross", size=16, line_width=3, color="#00e5ff", level="overlay"
        )
        self.fig.add_layout(
            LabelSet(x="x", y="y", text="name", source=self.lm_src, x_offset=8, y_offset=-8,
                     text_color="#00e5ff", text_font_size="11px")
        )  # fmt: skip
        self.radius = NumericInput(title="Circle radius", value=self._default_radius(), mode="float", width=150)
        self.circ_tool = PointDrawTool(renderers=[self.circ_r], empty_value=float(self.radius.value),
                                       description="Draw circles")  # fmt: skip
        self.fig.add_tools(
            PolyDrawTool(renderers=[self.poly_r], empty_value="", description="Draw polygons"),
            BoxEditTool(renderers=[self.box_r], empty_value="", description="Draw rectangles (shift + drag)"),
            self.circ_tool,
            PointDrawTool(renderers=[self.lm_r], empty_value="", description="Place landmarks"),
        )
        self.radius.on_change("value", lambda a, o, n: setattr(self.circ_tool, "empty_value", float(n or 1.0)))
        for src in (self.poly_src, self.box_src, self.circ_src, self.lm_src):
            src.on_change("data", lambda attr, old, new: self._drawn())
        self.summary_src = ColumnDataSource({"kind": [], "idx": [], "name": [], "cls": []})
        self.summary_src.on_change("data", lambda attr, old, new: self._renamed())
        self.summary = DataTable(
            source=self.summary_src,
            columns=[TableColumn(field="kind", title="kind", width=70), TableColumn(field="name", title="name"),
                     TableColumn(field="cls", title="class")],
            editable=True, width=_SIDEBAR - 20, height=140, index_position=None, name="ts-annotations", css_classes=["ts-annotations"],
        )  # fmt: skip
        self.class_input = TextInput(title="Class of new annotations", value="region", width=150)
        self.name_input = TextInput(title="Save as element", value="annotations", width=_SIDEBAR - 20,
                                    name="ts-save-name", css_classes=["ts-save-name"])  # fmt: skip
        self.save_button = Button(label="Save annotations" if not read_only else "Saving disabled (read-only)",
                                  button_type="primary", disabled=read_only, width=_SIDEBAR - 20,
                                  name="ts-save", css_classes=["ts-save"])  # fmt: skip
        self.save_button.on_click(self._save)
        self.load_select = Select(title="Edit saved annotations", options=[], width=_SIDEBAR - 110)
        self.load_button = Button(label="Load", width=80)
        self.load_button.on_click(self._load)
        self.status = Div(text="", width=_SIDEBAR - 20, name="ts-status", css_classes=["ts-status"])
        self.info = Div(text="<i>click a cell, spot or label to see its values</i>", width=_SIDEBAR - 20,
                        name="ts-info", css_classes=["ts-info"])  # fmt: skip

        # ------------------------------------------------------------------------------------ layers
        self.hover = HoverTool(renderers=[], tooltips=[("element", "@element"), ("value", "@value")])
        self.fig.add_tools(self.hover)
        self.cs_select = Select(title="Coordinate system", options=systems, value=self.cs, width=_SIDEBAR - 20,
                                name="ts-cs", css_classes=["ts-cs"])  # fmt: skip
        self.cs_select.on_change("value", lambda attr, old, new: self._switch(new))
        self.layer_box = column(width=_SIDEBAR - 10)
        for rng in (self.fig.x_range, self.fig.y_range):
            rng.on_change("start", lambda a, o, n: self._ranges_changed())
            rng.on_change("end", lambda a, o, n: self._ranges_changed())
        self.fig.on_event("tap", self._tap)
        annot = column(
            Div(text="<b>Annotations</b>"),
            row(self.class_input, self.radius),
            self.summary,
            self.name_input,
            self.save_button,
            row(self.load_select, self.load_button),
            self.status,
        )
        sidebar = column(
            Div(text=f"<b>{html.escape(title)}</b>"), self.cs_select, self.info, self.layer_box, annot,
            width=_SIDEBAR,
        )  # fmt: skip
        doc.add_root(row(sidebar, self.fig))
        self._build_layers()
        self.request_render()

    # ================================================================================== geometry helpers
    def _fit(self, x0: float, x1: float, y0: float, y1: float) -> tuple[float, float, float, float]:
        """The extent padded by 2 % and widened to the figure's aspect ratio."""
        w, h = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)
        x0, x1, y0, y1 = x0 - 0.02 * w, x1 + 0.02 * w, y0 - 0.02 * h, y1 + 0.02 * h
        w, h = x1 - x0, y1 - y0
        aspect = self.width / self.height
        if w / h < aspect:
            extra = (h * aspect - w) / 2
            x0, x1 = x0 - extra, x1 + extra
        else:
            extra = (w / aspect - h) / 2
            y0, y1 = y0 - extra, y1 + extra
        return x0, x1, y0, y1

    def _default_radius(self) -> float:
        if not self.cs:
            return 1.0
        x0, x1, _, _ = self.engine.extent(self.cs)
        r = (x1 - x0) / 50
        return float(f"{r:.2g}") if r > 0 else 1.0

    def view(self) -> View:
        xr, yr = self.fig.x_range, self.fig.y_range
        return View(self.cs, min(xr.start, xr.end), max(xr.start, xr.end), min(yr.start, yr.end),
                    max(yr.start, yr.end), self.width, self.height)  # fmt: skip

    # ======================================================================================== layers
    def _style(self, name: str) -> LayerStyle:
        key = (self.cs, name)
        if key not in self.styles:
            kind = get_kind_protocol(self.engine.sdata.kind_of(name))
            s = LayerStyle(color=self.engine.default_color(name))
            if kind.in_memory:  # shapes: a colour of their own, filled or outlined
                n = len(self.engine.sdata[name])
                shapes = [e for e, k in self.engine.elements(self.cs) if get_kind_protocol(k).in_memory]
                s.color = _LAYER_COLORS[shapes.index(name) % len(_LAYER_COLORS)] if name in shapes else None
                s.opacity = 0.7
                s.fill, s.outline = (False, True) if n <= 50 else (True, False)
            if kind.nearest_only:  # labels
                s.opacity = 0.6
            self.styles[key] = s
            self.default_colors[key] = s.color
        return self.styles[key]

    def _build_layers(self) -> None:
        from bokeh.layouts import column
        from bokeh.models import (
            Checkbox,
            CheckboxGroup,
            ColumnDataSource,
            Div,
            MultiChoice,
            Select,
            Slider,
        )

        for layer in self.layers.values():
            if layer["markers"] in self.fig.renderers:
                self.fig.renderers.remove(layer["markers"])
        self.layers = {}
        self._pictures = {}
        self.hover.renderers = []
        children = []
        for name, kind in self.engine.elements(self.cs) if self.cs else []:
            protocol = get_kind_protocol(kind)
            style = self._style(name)
            msrc = ColumnDataSource({"x": [], "y": [], "color": [], "value": [], "element": []})
            markers = self.fig.scatter("x", "y", source=msrc, color="color", size=5, alpha=style.opacity,
                                       visible=False)  # fmt: skip
            self.hover.renderers = [*self.hover.renderers, markers]
            legend = Div(text="", width=_SIDEBAR - 30)
            visible = Checkbox(label=f"{name} ({kind})", active=style.visible, name=f"ts-layer-{name}", css_classes=[f"ts-layer-{name}"])
            opacity = Slider(title="opacity", start=0, end=1, step=0.05, value=style.opacity, width=_SIDEBAR - 40)
            controls: list[Any] = [visible, opacity]
            visible.on_change("active", lambda a, o, n, name=name: self._visible(name, bool(n)))
            opacity.on_change("value", lambda a, o, n, name=name: self._opacity(name, float(n)))
            if protocol.has_instances:  # shapes, labels, points: coloured by columns or genes
                cols, genes = self.engine.color_keys(name)
                options = [(_NONE, _NONE)] + [(c, c) for c in cols]
                options += [(_GENE + g, _GENE + g) for g in genes[:_MAX_GENES]]
                if style.color == self.default_colors.get((self.cs, name)) or (
                    style.color not in cols and style.color not in genes
                ):
                    value = _NONE
                else:
                    value = style.color if style.color in cols else _GENE + style.color
                color = Select(title="colour by", options=options, value=value, width=_SIDEBAR - 40,
                               name=f"ts-color-{name}", css_classes=[f"ts-color-{name}"])  # fmt: skip
                color.on_change("value", lambda a, o, n, name=name: self._set(
                    name, color=self.default_colors.get((self.cs, name)) if n == _NONE else n.removeprefix(_GENE)))  # fmt: skip
                controls.append(color)
            if protocol.has_areas:  # shapes, labels: filled and / or outlined
                active = [i for i, on in enumerate((style.fill, style.outline)) if on]
                mode = CheckboxGroup(labels=["fill", "outline"], active=active, inline=True,
                                     css_classes=[f"ts-mode-{name}"])  # fmt: skip
                mode.on_change("active", lambda a, o, n, name=name: self._set(name, fill=0 in n, outline=1 in n))
                controls.append(mode)
            if protocol.lazy_rows:  # points
                size = Slider(title="point size (px)", start=1, end=7, step=2, value=style.point_size,
                              width=_SIDEBAR - 40)  # fmt: skip
                size.on_change("value", lambda a, o, n, name=name: self._set(name, point_size=int(n)))
                controls.append(size)
            channel_box = None
            if protocol.has_channels:  # images
                channels = self.engine.image_channels(name)
                rgb = self.engine.is_rgb(name)
                chosen = [] if rgb else [channels[0]]
                pick = MultiChoice(title="channels" + (" (RGB when none chosen)" if rgb else ""), options=channels,
                                   value=chosen, width=_SIDEBAR - 40)  # fmt: skip
                channel_box = column(width=_SIDEBAR - 30)
                pick.on_change("value", lambda a, o, n, name=name: self._channels(name, n))
                controls += [pick, channel_box]
            controls.append(legend)
            children.append(column(*controls, width=_SIDEBAR - 20, styles={"border-top": "1px solid #ccc"}))
            self.layers[name] = {"kind": kind, "protocol": protocol, "markers": markers, "msrc": msrc,
                                 "legend": legend, "channel_box": channel_box}  # fmt: skip
            if protocol.has_channels:  # images
                self._channels(name, [] if self.engine.is_rgb(name) else [self.engine.image_channels(name)[0]],
                               render=False)  # fmt: skip
        self.layer_box.children = children or [Div(text="<i>no elements in this coordinate system</i>")]
        self._refresh_load_options()

    def _channels(self, name: str, chosen: list[str], render: bool = True) -> None:
        from bokeh.layouts import row
        from bokeh.models import ColorPicker, RangeSlider

        style = self._style(name)
        names = self.engine.image_channels(name)
        style.channels = [names.index(c) for c in chosen] or None
        limits = self.engine.contrast_limits(name)
        rows = []
        for i, c in enumerate(style.channels or []):
            colour = style.channel_colors.setdefault(c, channel_color(style, c, i, len(style.channels)))
            lo, hi = style.contrast.get(c, limits[c])
            top = max(hi * 1.5, lo + 1.0)
            picker = ColorPicker(color=colour, width=40, title="")
            rng = RangeSlider(title=f"{names[c]} contrast", start=min(0.0, lo), end=top, value=(lo, hi),
                              step=(top - min(0.0, lo)) / 200, width=_SIDEBAR - 100)  # fmt: skip
            picker.on_change("color", lambda a, o, n, c=c: (style.channel_colors.__setitem__(c, n),
                                                            self.request_render()))  # fmt: skip
            rng.on_change("value_throttled", lambda a, o, n, c=c: (style.contrast.__setitem__(c, tuple(n)),
                                                                  self.request_render()))  # fmt: skip
            rows.append(row(picker, rng))
        box = self.layers.get(name, {}).get("channel_box")
        if box is not None:
            box.children = rows
        if render:
            self.request_render()

    def _visible(self, name: str, on: bool) -> None:
        self._style(name).visible = on
        self.request_render(rerender=False)

    def _set(self, name: str, **changes: Any) -> None:
        style = self._style(name)
        for k, v in changes.items():
            setattr(style, k, v)
        self.request_render()

    def _opacity(self, name: str, value: float) -> None:
        self._style(name).opacity = value
        layer = self.layers.get(name)
        if layer is not None:
            layer["markers"].glyph.fill_alpha = value
            layer["markers"].glyph.line_alpha = value
        self.request_render(rerender=False)

    def _switch(self, cs: str) -> None:
        self.cs = cs
        x0, x1, y0, y1 = self._fit(*self.engine.extent(cs))
        self.fig.x_range.update(start=x0, end=x1)
        self.fig.y_range.update(start=y1, end=y0)
        self.radius.value = self._default_radius()
        for src in (self.poly_src, self.box_src, self.circ_src, self.lm_src):
            src.data = {k: [] for k in src.data}
        self.poly_meta = {}
        self._build_layers()
        self.request_render()

    # ======================================================================================== rendering
    def request_render(self, rerender: bool = True, delay_ms: int = 0) -> None:
        """Render on the next tick, or after ``delay_ms`` (requests in between are merged into one render).

        ``rerender=False``: only visibility or opacity changed; the layers' last pictures are blended again."""
        self._rerender = self._rerender or rerender
        if not self._pending:
            self._pending = True
            self._requested = time.perf_counter()
            if delay_ms:
                self.doc.add_timeout_callback(self._render_all, delay_ms)
            else:
                self.doc.add_next_tick_callback(self._render_all)

    def _render_one(self, name: str, view: View) -> Any:
        try:
            return self.engine.render(name, self._style(name), view)
        except Exception as err:
            traceback.print_exc()
            return err

    def _ranges_changed(self) -> None:
        # pans and wheel zooms change the ranges many times a second: render once they rest for a moment
        self._last_range_change = time.perf_counter()
        self.request_render(delay_ms=_SETTLE_MS)

    def _render_all(self) -> None:
        if time.perf_counter() - self._last_range_change < _SETTLE_MS / 1000 * 0.9:
            self._pending = False  # still moving: wait until the ranges rest
            self.request_render(delay_ms=_SETTLE_MS)
            return
        self._pending = False
        rerender, self._rerender = self._rerender, False
        started = time.perf_counter()
        view = self.view()
        errors = []
        pictures: list[tuple[np.ndarray, float]] = []
        extent = None
        todo = [
            n for n in self.layers
            if self._style(n).visible and (rerender or n not in self._pictures or self._pictures[n][0] != view)
        ]  # fmt: skip
        fresh = dict(zip(todo, _POOL.map(lambda n: self._render_one(n, view), todo), strict=True))
        for name, layer in self.layers.items():
            style = self._style(name)
            if not style.visible:
                layer["markers"].visible = False
                continue
            cached = self._pictures.get(name)
            if name in fresh:
                out = fresh[name]
                if isinstance(out, Exception):  # a layer that cannot be drawn must not break the others
                    errors.append(f"{html.escape(name)}: {html.escape(str(out))}")
                    layer["markers"].visible = False
                    self._pictures.pop(name, None)
                    continue
                self._pictures[name] = cached = (view, out)
                layer["legend"].text = "" if out is None else _legend_html(name, out.legend, out.colorbar)
                if out is not None and out.markers is not None:
                    m = out.markers
                    layer["msrc"].data = {"x": m["x"], "y": m["y"], "color": list(m["color"]),
                                          "value": list(m["value"]), "element": [name] * len(m["x"])}  # fmt: skip
            out = cached[1]
            layer["markers"].visible = out is not None and out.markers is not None
            if out is not None and out.rgba is not None:
                pictures.append((out.rgba, style.opacity))
                extent = out.extent
        if pictures and extent is not None:
            x0, x1, y0, y1 = extent
            self.image_src.data = {"image": [_blend(pictures)], "x": [x0], "y": [y0], "dw": [x1 - x0],
                                   "dh": [y1 - y0]}  # fmt: skip
            self.image_r.visible = True
        else:
            self.image_r.visible = False
        if errors:
            self.status.text = '<span style="color:#c00">' + "<br>".join(errors) + "</span>"
        _log.debug("render requested %.3f started %.3f done %.3f (%d layers)", self._requested, started,
                   time.perf_counter(), len(self.layers))  # fmt: skip

    # ========================================================================================== picking
    def _tap(self, event: Any) -> None:
        x, y = float(event.x), float(event.y)
        upp = self.view().unit_per_px
        for name in reversed(list(self.layers)):
            layer = self.layers[name]
            if not self._style(name).visible:
                continue
            if layer["protocol"].lazy_rows and layer["markers"].visible:  # points
                d = layer["msrc"].data
                if len(d["x"]):
                    dist = np.hypot(np.asarray(d["x"]) - x, np.asarray(d["y"]) - y)
                    i = int(np.argmin(dist))
                    if dist[i] <= 4 * upp:
                        self._show_info(name, f"point {i}", {"value": d["value"][i], "x": d["x"][i], "y": d["y"][i]})
                        return
            elif layer["protocol"].has_areas:  # shapes, labels
                hit = self.engine.pick(name, self.cs, x, y)
                if hit is not None:
                    self._show_info(name, hit["instance"], hit["values"])
                    return
        self.info.text = f"<i>nothing at ({x:.4g}, {y:.4g})</i>"

    def _show_info(self, name: str, instance: Any, values: dict) -> None:
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_short(v))}</td></tr>" for k, v in values.items()
        )
        self.info.text = (
            f'<div class="ts-picked" data-element="{html.escape(name)}" data-instance="{html.escape(str(instance))}">'
            f"<b>{html.escape(name)}</b> instance <b>{html.escape(str(instance))}</b>"
            f'<table style="font-size:11px">{rows}</table></div>'
        )

    # ======================================================================================= annotations
    def _drawn(self) -> None:
        """New drawings get the current class and a name; the summary table is rebuilt."""
        if self._syncing:
            return
        self._syncing = True
        try:
            cls = self.class_input.value.strip() or "region"
            taken_poly = {m[0] for m in self.poly_meta.values()}
            for xs, ys in zip(self.poly_src.data["xs"], self.poly_src.data["ys"], strict=False):
                key = _poly_key(xs, ys)
                if key is not None and key not in self.poly_meta:
                    k = 1
                    while f"polygon_{k}" in taken_poly:
                        k += 1
                    self.poly_meta[key] = [f"polygon_{k}", cls]
                    taken_poly.add(f"polygon_{k}")
            for kind, src in self._sources().items():
                if kind == "polygon":
                    continue
                data = dict(src.data)
                n = len(data["name"])
                names = [v if isinstance(v, str) and v else "" for v in data["name"]]
                classes = [v if isinstance(v, str) and v else "" for v in data["cls"]]
                taken = {v for v in names if v}
                changed = False
                for i in range(n):
                    if not names[i]:
                        k = i + 1
                        while f"{kind}_{k}" in taken:
                            k += 1
                        names[i] = f"{kind}_{k}"
                        taken.add(names[i])
                        changed = True
                    if not classes[i]:
                        classes[i] = cls
                        changed = True
                if kind == "circle":
                    radius = [float(r) if isinstance(r, (int, float)) and r > 0 else float(self.radius.value or 1)
                              for r in data["radius"]]  # fmt: skip
                    if radius != list(data["radius"]):
                        data["radius"] = radius
                        changed = True
                if changed:
                    data["name"], data["cls"] = names, classes
                    src.data = data
            rows: dict[str, list] = {"kind": [], "idx": [], "name": [], "cls": []}
            for kind, src in self._sources().items():
                pairs = zip(src.data["name"], src.data["cls"], strict=False)
                if kind == "polygon":
                    pairs = [self._poly_meta(i) for i in range(len(src.data["xs"]))]
                for i, (nm, cl) in enumerate(pairs):
                    rows["kind"].append(kind)
                    rows["idx"].append(i)
                    rows["name"].append(nm)
                    rows["cls"].append(cl)
            self.summary_src.data = rows
        finally:
            self._syncing = False

    def _renamed(self) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            d = self.summary_src.data
            sources = self._sources()
            updates: dict[str, dict[str, list]] = {}
            for kind, idx, nm, cl in zip(d["kind"], d["idx"], d["name"], d["cls"], strict=False):
                if kind == "polygon":
                    xs, ys = self.poly_src.data["xs"], self.poly_src.data["ys"]
                    key = _poly_key(xs[idx], ys[idx]) if idx < len(xs) else None
                    if key is not None:
                        self.poly_meta[key] = [str(nm), str(cl)]
                    continue
                src = sources[kind]
                if kind not in updates:
                    updates[kind] = {"name": list(src.data["name"]), "cls": list(src.data["cls"])}
                if idx < len(updates[kind]["name"]):
                    updates[kind]["name"][idx] = str(nm)
                    updates[kind]["cls"][idx] = str(cl)
            for kind, cols in updates.items():
                data = dict(sources[kind].data)
                data.update(cols)
                sources[kind].data = data
        finally:
            self._syncing = False

    def _poly_meta(self, i: int) -> tuple[str, str]:
        key = _poly_key(self.poly_src.data["xs"][i], self.poly_src.data["ys"][i])
        meta = self.poly_meta.get(key) if key is not None else None
        return (meta[0], meta[1]) if meta else (f"polygon_{i + 1}", self.class_input.value.strip() or "region")

    def _sources(self) -> dict[str, Any]:
        return {"polygon": self.poly_src, "rectangle": self.box_src, "circle": self.circ_src,
                "landmark": self.lm_src}  # fmt: skip

    def annotations(self) -> Annotations:
        """What is drawn now, in the viewed coordinate system."""
        out = Annotations()
        p = self.poly_src.data
        for i, (xs, ys) in enumerate(zip(p["xs"], p["ys"], strict=False)):
            nm, cl = self._poly_meta(i)
            v = np.column_stack([np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)])
            if len(v) >= 3:
                out.polygons.append((str(nm), str(cl), v))
        b = self.box_src.data
        for x, y, w, h, nm, cl in zip(b["x"], b["y"], b["width"], b["height"], b["name"], b["cls"], strict=False):
            hw, hh = abs(float(w)) / 2, abs(float(h)) / 2
            corners = np.array([[x - hw, y - hh], [x + hw, y - hh], [x + hw, y + hh], [x - hw, y + hh]], dtype=float)
            if hw > 0 and hh > 0:
                out.polygons.append((str(nm), str(cl), corners))
        c = self.circ_src.data
        for x, y, r, nm, cl in zip(c["x"], c["y"], c["radius"], c["name"], c["cls"], strict=False):
            out.circles.append((str(nm), str(cl), float(x), float(y), float(r)))
        lm = self.lm_src.data
        for x, y, nm, cl in zip(lm["x"], lm["y"], lm["name"], lm["cls"], strict=False):
            out.landmarks.append((str(nm), str(cl), float(x), float(y)))
        return out

    def _save(self) -> None:
        if self.read_only:
            self.status.text = '<span style="color:#c00">this viewer is read-only: nothing is saved</span>'
            return
        name = self.name_input.value.strip()
        try:
            derived = annotation_names(name)
            ann = self.annotations()
            if not len(ann):
                raise ValueError("nothing is drawn")
            written = save_annotations(self.engine.sdata, name, self.cs, ann, replace=sorted(self.owned))
        except Exception as err:
            self.status.text = f'<span style="color:#c00" class="ts-error">not saved: {html.escape(str(err))}</span>'
            return
        self.owned.update(derived.values())
        for n in derived.values():
            self.engine.invalidate(n)
        where = "into the store" if self.engine.sdata.path is not None else "in memory (no store)"
        self.status.text = (
            f'<span class="ts-saved" style="color:#070">saved {html.escape(", ".join(written))} {where}</span>'
        )
        self._build_layers()
        self.request_render()

    def _refresh_load_options(self) -> None:
        sdata = self.engine.sdata
        options = []
        for name, kind in self.engine.elements(self.cs) if self.cs else []:
            protocol = get_kind_protocol(kind)
            if not protocol.filterable or name.endswith(("_circles", "_landmarks")):  # shapes, points only
                continue
            rec = sdata[name]
            n = len(rec) if protocol.in_memory else _points_rows(rec)  # shapes in memory; points counted
            if n is not None and n <= _EDITABLE_ROWS:
                options.append(name)
        self.load_select.options = options
        if options and self.load_select.value not in options:
            self.load_select.value = options[0]

    def _load(self) -> None:
        name = self.load_select.value
        if not name:
            return
        try:
            ann = load_annotations(self.engine.sdata, name, self.cs)
        except Exception as err:
            self.status.text = f'<span style="color:#c00">cannot load {html.escape(name)}: {html.escape(str(err))}</span>'
            return
        self._syncing = True
        try:
            self.poly_src.data = {
                "xs": [list(map(float, v[:, 0])) for _, _, v in ann.polygons],
                "ys": [list(map(float, v[:, 1])) for _, _, v in ann.polygons],
                "name": [a[0] for a in ann.polygons], "cls": [a[1] for a in ann.polygons],
            }  # fmt: skip
            self.poly_meta = {
                _poly_key(v[:, 0], v[:, 1]): [nm, cl] for nm, cl, v in ann.polygons if len(v)
            }
            self.box_src.data = {k: [] for k in self.box_src.data}
            self.circ_src.data = {
                "x": [a[2] for a in ann.circles], "y": [a[3] for a in ann.circles],
                "radius": [a[4] for a in ann.circles], "name": [a[0] for a in ann.circles],
                "cls": [a[1] for a in ann.circles],
            }  # fmt: skip
            self.lm_src.data = {
                "x": [a[2] for a in ann.landmarks], "y": [a[3] for a in ann.landmarks],
                "name": [a[0] for a in ann.landmarks], "cls": [a[1] for a in ann.landmarks],
            }  # fmt: skip
        finally:
            self._syncing = False
        self._drawn()
        base = name.removesuffix("_landmarks") if self.engine.sdata.kind_of(name) == "points" else name
        self.name_input.value = base
        try:
            self.owned.update(annotation_names(base).values())
        except ValueError:
            self.owned.add(name)
        self.status.text = f"loaded {len(ann)} annotation(s) from {html.escape(name)}"


def _blend(pictures: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Layer pictures (packed RGBA, bottom first) with their opacities composited into one packed RGBA image."""
    first = pictures[0][0]
    h, w = first.shape
    rgb = np.zeros((h, w, 3), dtype=np.float32)  # premultiplied
    alpha = np.zeros((h, w), dtype=np.float32)
    for packed, opacity in pictures:
        px = packed.view(np.uint8).reshape(h, w, 4).astype(np.float32) * (1.0 / 255.0)
        a = px[..., 3] * float(opacity)
        keep = 1.0 - a
        rgb *= keep[..., None]
        rgb += px[..., :3] * a[..., None]
        alpha *= keep
        alpha += a
    out = np.empty((h, w, 4), dtype=np.uint8)
    safe = np.maximum(alpha, 1e-6)[..., None]
    out[..., :3] = np.clip(rgb / safe * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out[..., 3] = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out.view(np.uint32).reshape(h, w)


def _poly_key(xs: Any, ys: Any) -> tuple[float, float] | None:
    if xs is None or len(xs) == 0:
        return None
    return (round(float(xs[0]), 6), round(float(ys[0]), 6))


def _points_rows(ddf: Any) -> int | None:
    from tissuestack.elements import record_of

    try:
        n = record_of(ddf).n_rows
    except Exception:
        n = None
    if n is None and ddf.npartitions == 1:
        n = len(ddf)
    return n


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}" if math.isfinite(v) else str(v)
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "…"
