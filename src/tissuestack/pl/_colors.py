"""Colours of rendered things: one colour, categories (scanpy's ``uns[f"{key}_colors"]``) or a colormap.

Every element is coloured through one :class:`Coloring`: an integer colour id per row (``-1``: not drawn) and a
small RGBA palette. Continuous values are quantised to the colormap's 256 entries, so renderers can draw one
compound path (or one raster lookup) per colour instead of one object per row.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.pl._mpl import require

__all__ = ["Coloring", "is_color", "resolve_coloring", "to_rgba"]

N_LEVELS = 256  # colormap entries used for continuous values
DEFAULT_NA_COLOR = "lightgray"
DEFAULT_COLOR = "#1f77b4"


@dataclass(frozen=True)
class Coloring:
    """Colour ids per row and their palette.

    Attributes
    ----------
    ids
        ``int32`` per row: index into ``rgba``; ``-1`` for rows not drawn (outside ``groups``).
    rgba
        ``(k, 4)`` float colours.
    legend
        ``[(label, rgba)]`` for categories (legend entries), else ``None``.
    mappable
        ``(cmap, norm)`` for continuous values (a colorbar), else ``None``.
    key
        The key the colours come from (legend / colorbar title), or ``None``.
    """

    ids: np.ndarray
    rgba: np.ndarray
    legend: list[tuple[str, np.ndarray]] | None = None
    mappable: tuple[Any, Any] | None = None
    key: str | None = None

    def row_colors(self) -> np.ndarray:
        """``(n, 4)`` RGBA per row (transparent for rows not drawn)."""
        out = np.zeros((len(self.ids), 4))
        drawn = self.ids >= 0
        out[drawn] = self.rgba[self.ids[drawn]]
        return out


def to_rgba(color: Any, alpha: float | None = None) -> np.ndarray:
    """One matplotlib colour as an RGBA float array."""
    mcolors = require("matplotlib.colors")
    return np.asarray(mcolors.to_rgba(color, alpha=alpha), dtype=float)


def is_color(value: Any) -> bool:
    """Whether ``value`` is a matplotlib colour (``"red"``, ``"#ff0000"``, an RGB tuple)."""
    if value is None:
        return False
    return bool(require("matplotlib.colors").is_color_like(value))


def default_palette(n: int) -> list[str]:
    """``n`` distinct colours as hex: tab10, tab20, then evenly spaced hues (as scanpy's defaults grow)."""
    mpl = require("matplotlib")
    mcolors = require("matplotlib.colors")
    if n <= 10:
        colors = mpl.colormaps["tab10"].colors[:n]
    elif n <= 20:
        colors = mpl.colormaps["tab20"].colors[:n]
    else:
        hsv = np.column_stack(
            [np.arange(n) * 0.618033988749895 % 1.0, np.full(n, 0.65), 0.55 + 0.4 * (np.arange(n) % 2)]
        )
        colors = mcolors.hsv_to_rgb(hsv)
    return [mcolors.to_hex(c) for c in colors]


def _palette_colors(palette: Any, categories: Sequence[str], what: str) -> list[Any]:
    """Colours of ``categories`` from a user palette: a list, a dict category -> colour, or a colormap name."""
    mpl = require("matplotlib")
    n = len(categories)
    if isinstance(palette, Mapping):
        missing = [c for c in categories if c not in palette]
        if missing:
            raise ValueError(f"{what}: palette has no colour for categories {missing[:5]}")
        return [palette[c] for c in categories]
    if isinstance(palette, str):
        if is_color(palette):
            return [palette] * n
        if palette not in mpl.colormaps:
            raise ValueError(
                f"{what}: palette {palette!r} is neither a colour nor a matplotlib colormap name"
            )
        cmap = mpl.colormaps[palette]
        listed = getattr(cmap, "colors", None)
        if listed is not None and len(listed) >= n and len(listed) <= 32:
            return list(listed[:n])
        return [cmap(x) for x in np.linspace(0, 1, max(n, 1))]
    colors = list(palette)
    if len(colors) < n:
        raise ValueError(f"{what}: palette has {len(colors)} colours for {n} categories")
    return colors[:n]


def _is_categorical(values: pd.Series) -> bool:
    dtype = values.dtype
    return bool(
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_bool_dtype(dtype)
    )


def resolve_coloring(
    n: int,
    *,
    values: pd.Series | None = None,
    color: Any = None,
    key: str | None = None,
    palette: Any = None,
    groups: str | Sequence[str] | None = None,
    na_color: Any = DEFAULT_NA_COLOR,
    cmap: Any = None,
    norm: Any = None,
    uns: MutableMapping[str, Any] | None = None,
    what: str = "element",
) -> Coloring:
    """Colour ``n`` rows by ``values`` (one per row, aligned), or all with the literal ``color``.

    Categorical values (categorical, string, object or bool dtype) take their colours from ``palette`` when
    given, else from ``uns[f"{key}_colors"]`` when it holds enough colours, else from a default palette which is
    then written to ``uns`` (as scanpy does). ``groups`` keeps only those categories (other rows are not drawn);
    missing values get ``na_color``. Numeric values are mapped through ``cmap`` (default ``viridis``) and
    ``norm`` (default: their min..max).
    """
    mpl = require("matplotlib")
    mcolors = require("matplotlib.colors")
    if values is None:
        return Coloring(
            np.zeros(n, dtype=np.int32), to_rgba(DEFAULT_COLOR if color is None else color)[None, :]
        )
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} colour values for {n} rows")
    na = to_rgba(na_color)
    if _is_categorical(values):
        cat = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
        categories = [str(c) for c in cat.cat.categories]
        codes = np.asarray(cat.cat.codes)  # as small as the categories allow (int8 up to 127)
        uns_key = f"{key}_colors"
        if palette is not None:
            colors = _palette_colors(palette, categories, what)
        elif uns is not None and uns_key in uns and len(uns[uns_key]) >= len(categories):
            colors = list(uns[uns_key])[: len(categories)]
        else:
            colors = default_palette(len(categories))
            if uns is not None:
                uns[uns_key] = np.asarray(colors, dtype=object)
        rgba = np.vstack([[to_rgba(c) for c in colors] or np.empty((0, 4)), na[None, :]])
        # int32 ids, 4 bytes a row, made once: fresh memory for temporaries of 20M rows costs more than the work
        ids = codes.astype(np.int32)
        ids[codes < 0] = len(categories)
        counts = np.bincount(ids, minlength=len(categories) + 1)
        shown = np.ones(len(categories), dtype=bool)
        if groups is not None:
            wanted = [groups] if isinstance(groups, str) else list(groups)
            unknown = [g for g in wanted if g not in categories]
            if unknown:
                raise ValueError(f"{what}: groups {unknown} are not categories of {key!r}: {categories[:10]}")
            shown = np.isin(categories, wanted)
            ids = np.where((codes >= 0) & ~shown[np.maximum(codes, 0)], -1, ids)
        present = np.flatnonzero(counts[: len(categories)])
        legend = [(categories[i], rgba[i]) for i in present if shown[i]]
        return Coloring(ids, rgba, legend=legend, key=key)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    cmap_obj = mpl.colormaps[cmap or "viridis"] if not isinstance(cmap, mcolors.Colormap) else cmap
    if norm is None:
        finite = numbers[np.isfinite(numbers)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = mcolors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    scaled = np.nan_to_num(np.clip(np.asarray(norm(numbers), dtype=float), 0.0, 1.0), nan=0.0)
    ids = np.minimum((scaled * N_LEVELS).astype(np.int32), N_LEVELS - 1)
    ids = np.where(np.isfinite(numbers), ids, N_LEVELS)
    rgba = np.vstack([cmap_obj((np.arange(N_LEVELS) + 0.5) / N_LEVELS), na[None, :]])
    return Coloring(ids.astype(np.int32), rgba, mappable=(cmap_obj, norm), key=key)
