"""Static plotting (``sdata.pl``): checked on the pixels of figures rendered with Agg."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import dask.array as da
import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import pytest
import shapely

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tissuestack import (
    Affine,
    Identity,
    Image2DModel,
    Labels2DModel,
    PointsModel,
    Scale,
    ShapesModel,
    SpatialData,
    TableModel,
    ValidationError,
    read_zarr,
)
from tissuestack.cli import main

RED = (255, 0, 0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


BLUE = (0, 0, 255)


def _draw(chain, crop, px: int = 100, **kwargs):
    """Render ``chain`` into a ``px`` x ``px`` axes filling the whole figure; (pixels, axes)."""
    fig = Figure(figsize=(1, 1), dpi=px)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    chain.show(ax=ax, crop=crop, legend_loc=None, colorbar=False, return_ax=True, **kwargs)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int), ax


def _at(pixels: np.ndarray, ax, x: float, y: float) -> tuple[int, ...]:
    dx, dy = ax.transData.transform((x, y))
    row = int(pixels.shape[0] - dy)
    return tuple(pixels[min(row, pixels.shape[0] - 1), min(int(dx), pixels.shape[1] - 1)])


def _close(a, b, tol: int = 12) -> bool:
    return all(abs(int(u) - int(v)) <= tol for u, v in zip(a, b, strict=True))


def _squares() -> SpatialData:
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"area_name": ["left", "right"]},
            geometry=[shapely.box(10, 10, 40, 40), shapely.box(60, 60, 90, 90)],
            index=[1, 2],
        )
    )
    table = ad.AnnData(
        X=np.array([[0.0, 5.0], [10.0, 5.0]]),
        obs=pd.DataFrame(
            {
                "cell_id": [1, 2],
                "region": pd.Categorical(["cells", "cells"]),
                "kind": pd.Categorical(["a", "b"]),
            },
            index=["c1", "c2"],
        ),
        var=pd.DataFrame(index=["geneA", "geneB"]),
    )
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    return SpatialData(shapes={"cells": shapes}, tables={"table": table})


# ------------------------------------------------------------------------------------------------ shapes
def test_polygon_category_uses_uns_colors():
    sdata = _squares()
    sdata["table"].uns["kind_colors"] = np.array(["#ff0000", "#0000ff"], dtype=object)
    pixels, ax = _draw(sdata.pl.render_shapes("cells", color="kind"), crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 25, 25), RED)
    assert _close(_at(pixels, ax, 75, 75), BLUE)
    assert _close(_at(pixels, ax, 50, 50), (255, 255, 255))  # background between them


def test_category_colors_written_to_uns_when_absent():
    sdata = _squares()
    assert "kind_colors" not in sdata["table"].uns
    pixels, ax = _draw(sdata.pl.render_shapes("cells", color="kind"), crop=(0, 100, 0, 100))
    written = list(sdata["table"].uns["kind_colors"])
    assert len(written) == 2
    expected = tuple(round(255 * v) for v in matplotlib.colors.to_rgb(written[1]))
    assert _close(_at(pixels, ax, 75, 75), expected)


def test_groups_restrict_and_palette_dict():
    sdata = _squares()
    chain = sdata.pl.render_shapes("cells", color="kind", groups=["b"], palette={"a": "red", "b": "blue"})
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 25, 25), (255, 255, 255))  # 'a' not drawn
    assert _close(_at(pixels, ax, 75, 75), BLUE)


def test_gene_colour_is_continuous_and_element_column_categorical():
    sdata = _squares()
    pixels, ax = _draw(sdata.pl.render_shapes("cells", color="geneA", cmap="viridis"), crop=(0, 100, 0, 100))
    cmap = matplotlib.colormaps["viridis"]
    low = tuple(round(255 * v) for v in cmap(0.0)[:3])
    high = tuple(round(255 * v) for v in cmap(1.0)[:3])
    assert _close(_at(pixels, ax, 25, 25), low)
    assert _close(_at(pixels, ax, 75, 75), high)
    chain = sdata.pl.render_shapes("cells", color="area_name", palette=["red", "blue"])
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 25, 25), RED)  # categories sorted: left, right
    assert _close(_at(pixels, ax, 75, 75), BLUE)


def test_missing_category_gets_na_color_and_legend_lists_drawn_categories():
    sdata = _squares()
    sdata["table"].obs["kind"] = pd.Categorical(["a", None], categories=["a", "b"])
    sdata["table"].uns["kind_colors"] = np.array(["#ff0000", "#00ff00"], dtype=object)
    chain = sdata.pl.render_shapes("cells", color="kind", na_color="blue")
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 25, 25), RED)
    assert _close(_at(pixels, ax, 75, 75), BLUE)
    ax = chain.pl.show(return_ax=True)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a"]  # 'b' is not drawn anywhere
    ax = sdata.pl.render_shapes("cells", color="geneA").pl.show(return_ax=True)
    assert ax.get_legend() is None and len(ax.figure.axes) == 2  # a colorbar instead


def test_polygon_with_hole_and_multipolygon():
    outer = shapely.Polygon(
        [(10, 10), (90, 10), (90, 90), (10, 90)], holes=[[(40, 40), (60, 40), (60, 60), (40, 60)]]
    )
    multi = shapely.MultiPolygon([shapely.box(0, 95, 5, 100), shapely.box(95, 95, 100, 100)])
    sdata = SpatialData(shapes={"s": ShapesModel.parse(gpd.GeoDataFrame(geometry=[outer, multi]))})
    pixels, ax = _draw(sdata.pl.render_shapes("s", color="red"), crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 20, 20), RED)
    assert _close(_at(pixels, ax, 50, 50), (255, 255, 255))  # the hole
    assert _close(_at(pixels, ax, 2.5, 97.5), RED)
    assert _close(_at(pixels, ax, 97.5, 97.5), RED)


def test_circle_true_radius_under_scale():
    circles = ShapesModel.parse(
        np.array([[50.0, 50.0]]), radius=10.0, transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))}
    )
    sdata = SpatialData(shapes={"c": circles})
    pixels, ax = _draw(sdata.pl.render_shapes("c", color="red"), crop=(0, 200, 0, 200), px=400)
    r = 10.0
    for dx, dy in [(1, 0), (0, 1), (-1, 0), (0.7071, 0.7071)]:
        assert _close(_at(pixels, ax, 100 + 1.9 * r * dx, 100 + 1.9 * r * dy), RED)
        assert _close(_at(pixels, ax, 100 + 2.1 * r * dx, 100 + 2.1 * r * dy), (255, 255, 255))


def test_crop_restricts_shapes_and_axes_limits():
    sdata = _squares()
    sdata["table"].uns["kind_colors"] = np.array(["#ff0000", "#0000ff"], dtype=object)
    pixels, ax = _draw(sdata.pl.render_shapes("cells", color="kind"), crop=(0, 50, 0, 50))
    assert ax.get_xlim() == (0.0, 50.0)
    assert ax.get_ylim() == (50.0, 0.0)  # y grows downwards
    assert _close(_at(pixels, ax, 25, 25), RED)
    assert not (np.abs(pixels - np.array(BLUE)).sum(axis=-1) < 30).any()


# ------------------------------------------------------------------------------------------------ images
def _image(transformations=None) -> SpatialData:
    data = np.zeros((2, 100, 100), dtype=np.uint16)
    data[0, 10:30, 10:30] = 1000  # channel "a": top-left square
    data[1, 60:90, 60:90] = 1000  # channel "b": bottom-right square
    image = Image2DModel.parse(
        da.from_array(data, chunks=(1, 50, 50)),
        dims=("c", "y", "x"),
        c_coords=["a", "b"],
        scale_factors=[2],
        transformations=transformations,
    )
    return SpatialData(images={"img": image})


def test_image_channel_colour_appears():
    sdata = _image()
    pixels, ax = _draw(sdata.pl.render_images("img", channel="b", palette="red"), crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 75, 75), RED, tol=30)
    assert _close(_at(pixels, ax, 20, 20), (0, 0, 0), tol=30)  # channel "a" is not shown


def test_image_composite_channel_colours():
    sdata = _image()
    chain = sdata.pl.render_images("img", palette=["#00ff00", "#0000ff"])
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 20, 20), (0, 255, 0), tol=30)
    assert _close(_at(pixels, ax, 75, 75), BLUE, tol=30)
    assert _close(_at(pixels, ax, 50, 50), (0, 0, 0), tol=30)


def test_image_crop_reads_window_at_fitting_level(monkeypatch):
    from tissuestack.pl import _render

    seen = []
    original = _render.read_raster

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out[0].shape)
        return out

    monkeypatch.setattr(_render, "read_raster", spy)
    sdata = _image()
    # 50 output pixels for 100 image pixels: the half-resolution level is read
    _draw(sdata.pl.render_images("img", channel="a"), crop=(0, 100, 0, 100), px=50)
    assert seen[-1] == (1, 50, 50)  # one channel, half resolution
    # a 20 x 20 crop at 100 output pixels: full resolution, only the window (plus a 1-pixel margin)
    pixels, ax = _draw(sdata.pl.render_images("img", channel="a", palette="red"), crop=(10, 30, 10, 30))
    assert seen[-1][0] == 1 and seen[-1][1] <= 22 and seen[-1][2] <= 22
    assert _close(_at(pixels, ax, 20, 20), RED, tol=30)


def test_rgb_uint8_and_rotated_image():
    rgb = np.zeros((3, 20, 40), dtype=np.uint8)
    rgb[0, :, :20] = 255  # left half red
    rgb[2, :, 20:] = 255  # right half blue
    rot90 = Affine(np.array([[0.0, -1.0, 20.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y"))
    image = Image2DModel.parse(
        rgb, dims=("c", "y", "x"), transformations={"global": Identity(), "rot": rot90}
    )
    sdata = SpatialData(images={"rgb": image})
    pixels, ax = _draw(sdata.pl.render_images("rgb"), crop=(0, 40, 0, 40), coordinate_systems="global")
    assert _close(_at(pixels, ax, 10, 10), RED)
    assert _close(_at(pixels, ax, 30, 10), BLUE)
    # rotated by 90 degrees: x' = 20 - y, y' = x; the left (red) half lands on top (small y')
    pixels, ax = _draw(sdata.pl.render_images("rgb"), crop=(0, 40, 0, 40), coordinate_systems="rot")
    assert _close(_at(pixels, ax, 10, 10), RED)
    assert _close(_at(pixels, ax, 10, 30), BLUE)
    assert _close(_at(pixels, ax, 30, 10), (255, 255, 255))  # outside the rotated image


# ------------------------------------------------------------------------------------------------ labels
def test_labels_coloured_by_table_category():
    labels = np.zeros((100, 100), dtype=np.int32)
    labels[10:40, 10:40] = 1
    labels[60:90, 60:90] = 2
    table = ad.AnnData(
        obs=pd.DataFrame(
            {
                "label_id": [1, 2],
                "region": pd.Categorical(["seg", "seg"]),
                "kind": pd.Categorical(["a", "b"]),
            },
            index=["c1", "c2"],
        )
    )
    table.uns["kind_colors"] = np.array(["#ff0000", "#0000ff"], dtype=object)
    sdata = SpatialData(
        labels={"seg": Labels2DModel.parse(labels, dims=("y", "x"))},
        tables={"t": TableModel.parse(table, region="seg", region_key="region", instance_key="label_id")},
    )
    pixels, ax = _draw(sdata.pl.render_labels("seg", color="kind", fill_alpha=1.0), crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 25, 25), RED)
    assert _close(_at(pixels, ax, 75, 75), BLUE)
    assert _close(_at(pixels, ax, 50, 50), (255, 255, 255))  # background label 0 is transparent


def test_labels_gene_colour_outline_and_default_colours():
    labels = np.zeros((100, 100), dtype=np.int32)
    labels[10:40, 10:40] = 1
    labels[60:90, 60:90] = 2
    table = ad.AnnData(
        X=np.array([[0.0], [4.0]]),
        obs=pd.DataFrame({"label_id": [1, 2], "region": pd.Categorical(["seg", "seg"])}, index=["c1", "c2"]),
        var=pd.DataFrame(index=["geneA"]),
    )
    sdata = SpatialData(
        labels={"seg": Labels2DModel.parse(labels, dims=("y", "x"))},
        tables={"t": TableModel.parse(table, region="seg", region_key="region", instance_key="label_id")},
    )
    chain = sdata.pl.render_labels("seg", color="geneA", fill_alpha=1.0, cmap="viridis")
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    cmap = matplotlib.colormaps["viridis"]
    assert _close(_at(pixels, ax, 25, 25), tuple(round(255 * v) for v in cmap(0.0)[:3]))
    assert _close(_at(pixels, ax, 75, 75), tuple(round(255 * v) for v in cmap(1.0)[:3]))
    # outline only: the boundary is coloured, the inside is not
    chain = sdata.pl.render_labels("seg", color="red", fill_alpha=0.0, outline=True)
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 10.5, 25), RED)
    assert _close(_at(pixels, ax, 25, 25), (255, 255, 255))
    # default: a distinct colour per label
    pixels, ax = _draw(sdata.pl.render_labels("seg", fill_alpha=1.0), crop=(0, 100, 0, 100))
    one, two = _at(pixels, ax, 25, 25), _at(pixels, ax, 75, 75)
    assert one != two and one != (255, 255, 255) and two != (255, 255, 255)


# ------------------------------------------------------------------------------------------------ points
def _points() -> SpatialData:
    frame = pd.DataFrame(
        {
            "x": [20.0, 80.0, 20.0, 80.0, 50.0],
            "y": [20.0, 20.0, 80.0, 80.0, 50.0],
            "gene": pd.Categorical(["g1", "g2", "g1", "g2", "g1"]),
        }
    )
    return SpatialData(points={"tx": PointsModel.parse(frame, feature_key="gene")})


@pytest.mark.parametrize("method", ["matplotlib", "datashader"])
def test_points_methods_put_colour_at_the_same_places(method):
    sdata = _points()
    chain = sdata.pl.render_points("tx", color="gene", size=30, palette=["red", "blue"], method=method)
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    for x, y, colour in [(20, 20, RED), (80, 20, BLUE), (20, 80, RED), (80, 80, BLUE), (50, 50, RED)]:
        assert _close(_at(pixels, ax, x, y), colour, tol=40), (method, x, y)
    assert _close(_at(pixels, ax, 35, 65), (255, 255, 255))
    assert _close(_at(pixels, ax, 65, 35), (255, 255, 255))


def test_points_coloured_by_table_through_instance_key():
    frame = pd.DataFrame({"x": [20.0, 80.0], "y": [20.0, 80.0], "cell": [1, 2]})
    points = PointsModel.parse(frame, instance_key="cell")
    table = ad.AnnData(
        obs=pd.DataFrame(
            {"cell": [1, 2], "region": pd.Categorical(["tx", "tx"]), "kind": pd.Categorical(["a", "b"])},
            index=["r1", "r2"],
        )
    )
    sdata = SpatialData(
        points={"tx": points},
        tables={"t": TableModel.parse(table, region="tx", region_key="region", instance_key="cell")},
    )
    chain = sdata.pl.render_points("tx", color="kind", size=30, palette=["red", "blue"])
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    assert _close(_at(pixels, ax, 20, 20), RED, tol=40)
    assert _close(_at(pixels, ax, 80, 80), BLUE, tol=40)


@pytest.mark.parametrize("method", ["matplotlib", "datashader"])
def test_points_continuous_colour(method):
    frame = pd.DataFrame({"x": [20.0, 80.0, 50.0], "y": [20.0, 80.0, 50.0], "v": [0.0, 1.0, np.nan]})
    sdata = SpatialData(points={"p": PointsModel.parse(frame)})
    chain = sdata.pl.render_points("p", color="v", size=30, cmap="viridis", na_color="red", method=method)
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    cmap = matplotlib.colormaps["viridis"]
    assert _close(_at(pixels, ax, 20, 20), tuple(round(255 * v) for v in cmap(0.0)[:3]), tol=20)
    assert _close(_at(pixels, ax, 80, 80), tuple(round(255 * v) for v in cmap(1.0)[:3]), tol=20)
    assert _close(_at(pixels, ax, 50, 50), RED, tol=20)  # missing value


def test_points_crop_and_many_points_default_to_datashader():
    rng = np.random.default_rng(0)
    n = 250_000
    frame = pd.DataFrame({"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n)})
    frame.loc[frame.x > 50, "y"] = 200.0  # the right half lies below the crop
    sdata = SpatialData(points={"p": PointsModel.parse(frame)})
    pixels, ax = _draw(sdata.pl.render_points("p", color="red"), crop=(0, 100, 0, 100))
    assert len(ax.images) == 1 and not ax.collections  # rasterised (datashader), not a scatter
    left = pixels[:, :45]
    right = pixels[:, 55:]
    assert (np.abs(left - np.array(RED)).sum(axis=-1) < 40).mean() > 0.5
    assert not (np.abs(right - np.array(RED)).sum(axis=-1) < 40).any()


# ------------------------------------------------------------------------------------------------ API
def test_chain_is_immutable_and_errors_name_things():
    sdata = _squares()
    first = sdata.pl.render_shapes("cells")
    second = first.pl.render_shapes("cells", color="kind")
    assert len(first.steps) == 1 and len(second.steps) == 2
    with pytest.raises(KeyError, match="no element named 'nope'"):
        sdata.pl.render_shapes("nope")
    with pytest.raises(ValidationError, match="'cells' is a shapes element; use render_shapes"):
        sdata.pl.render_points("cells")
    with pytest.raises(ValidationError, match="no images elements"):
        sdata.pl.render_images()
    with pytest.raises(KeyError, match=r"'cells'.*'missing_key'"):
        sdata.pl.render_shapes("cells", color="missing_key").pl.show(return_ax=True)


def test_show_saves_and_makes_one_panel_per_coordinate_system(tmp_path):
    sdata = _image(transformations={"global": Identity(), "half": Scale([0.5, 0.5], axes=("x", "y"))})
    axes = sdata.pl.render_images("img").pl.show(return_ax=True)
    assert [a.get_title() for a in axes] == ["global", "half"]
    assert axes[1].get_xlim() == (0.0, 50.0)
    out = tmp_path / "fig.svg"
    sdata.pl.render_images("img").pl.show(coordinate_systems="half", save=str(out), title="small")
    assert out.read_text().lstrip().startswith("<?xml")


def test_scalebar_has_a_round_physical_length():
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from tissuestack.pl._accessor import scalebar_length

    assert scalebar_length(100, 1.0) == 20
    assert scalebar_length(100, 0.5) == 10
    assert scalebar_length(1000, 0.2083) == 20
    ax = (
        _squares()
        .pl.render_shapes("cells")
        .pl.show(crop=(0, 100, 0, 100), scalebar_dx=0.5, scalebar_units="µm", return_ax=True)
    )
    bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1 and bars[0].txt_label.get_text() == "10 µm"


def test_import_does_not_load_matplotlib():
    code = "import sys, tissuestack; tissuestack.SpatialData; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    from tissuestack.pl import _mpl

    real = _mpl.importlib.import_module

    def missing(name, *args):
        if name.split(".")[0] in ("matplotlib", "datashader"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(_mpl.importlib, "import_module", missing)
    chain = _squares().pl.render_shapes("cells")  # building the chain needs no matplotlib
    with pytest.raises(ImportError, match=r'pip install "tissuestack\[plot\]"'):
        chain.show(return_ax=True)


def test_cli_writes_png(tmp_path):
    sdata = _squares()
    store = tmp_path / "s.zarr"
    sdata.write(store)
    out = tmp_path / "out.png"
    code = main(
        ["plot", str(store), str(out), "--color", "kind", "--width", "120", "--crop", "0", "100", "0", "100"]
    )
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[1] >= 120
    rgb = (image[..., :3] * 255).round().astype(int).reshape(-1, 3)
    for hex_colour in ("#1f77b4", "#ff7f0e"):  # the default (tab10) colours of categories 'a' and 'b'
        target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - target).sum(axis=1) < 10).sum() > 100
    assert main(["plot", str(store), str(tmp_path / "x.png"), "--element", "table"]) == 2


def test_cli_draws_shapes_without_the_colour_key_as_outlines(tmp_path):
    """Elements that the --color key does not apply to must not hide the others under an opaque default fill."""
    sdata = _squares()
    sdata["roi"] = ShapesModel.parse([shapely.box(0, 0, 100, 100)])  # covers both cells; has no 'kind'
    store = tmp_path / "s.zarr"
    sdata.write(store)
    out = tmp_path / "out.png"
    assert main(["plot", str(store), str(out), "--color", "kind", "--width", "120"]) == 0
    rgb = (matplotlib.image.imread(out)[..., :3] * 255).round().astype(int).reshape(-1, 3)
    for hex_colour in ("#1f77b4", "#ff7f0e"):  # both cells still visible in their category colours
        target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        # a cell covers ~30 x 30 px; a legend patch ~150 px
        assert (np.abs(rgb - target).sum(axis=1) < 10).sum() > 400, hex_colour


# ------------------------------------------------------------------------------------------------ raster paths
def _edges(pixels: np.ndarray, grow: int = 2) -> np.ndarray:
    """Pixels near a change of colour in ``pixels`` (anti-aliased edges), as a mask."""
    from scipy import ndimage

    diff = np.zeros(pixels.shape[:2], dtype=bool)
    d_rows = np.abs(np.diff(pixels, axis=0)).sum(-1) > 30
    d_cols = np.abs(np.diff(pixels, axis=1)).sum(-1) > 30
    diff[1:] |= d_rows
    diff[:-1] |= d_rows
    diff[:, 1:] |= d_cols
    diff[:, :-1] |= d_cols
    return ndimage.binary_dilation(diff, iterations=grow)


def _same_picture(chain_of, crop, px: int = 300, min_equal: float = 0.97, min_away: float = 0.3):
    """Draw ``chain_of(method)`` both ways; the fraction of pixels of equal colour away from edges."""
    vector, ax = _draw(chain_of("matplotlib"), crop=crop, px=px)
    assert not ax.images  # paths
    raster, ax = _draw(chain_of("datashader"), crop=crop, px=px)
    assert len(ax.images) >= 1 and not ax.collections  # one image
    away = ~(_edges(vector) | _edges(raster))
    assert away.mean() > min_away  # enough interior to compare
    equal = (np.abs(vector - raster).sum(-1) <= 12)[away].mean()
    assert equal >= min_equal, equal
    print("same picture", away.mean(), equal)
    return vector, raster


def _cells(n_side: int = 12, seed: int = 0) -> SpatialData:
    """A grid of irregular polygons (some with a hole, one multipolygon) annotated by a table."""
    rng = np.random.default_rng(seed)
    geoms = []
    for i in range(n_side):
        for j in range(n_side):
            cx, cy = 10 * i + 5, 10 * j + 5
            angles = np.arange(9) * (2 * np.pi / 9) + rng.uniform(0, 0.4, 9)
            radii = rng.uniform(2.5, 4.5, 9)
            ring = np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])
            holes = [shapely.box(cx - 1, cy - 1, cx + 1, cy + 1).exterior.coords] if (i + j) % 5 == 0 else []
            geoms.append(shapely.Polygon(ring, holes=holes))
    geoms[7] = shapely.MultiPolygon([shapely.box(71, 1, 74, 4), shapely.box(76, 6, 79, 9)])
    n = len(geoms)
    ids = np.arange(1, n + 1)
    shapes = ShapesModel.parse(gpd.GeoDataFrame({"size": rng.uniform(0, 1, n)}, geometry=geoms, index=ids))
    kind = pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c"])
    kind[::11] = np.nan  # missing: na_color
    table = ad.AnnData(
        X=rng.uniform(0, 10, (n, 1)),
        obs=pd.DataFrame(
            {"cell_id": ids, "region": pd.Categorical(["cells"] * n), "kind": kind},
            index=[f"c{i}" for i in ids],
        ),
        var=pd.DataFrame(index=["geneA"]),
    )
    table.uns["kind_colors"] = np.array(["#d62728", "#2ca02c", "#1f77b4"], dtype=object)
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    return SpatialData(shapes={"cells": shapes}, tables={"table": table})


@pytest.mark.parametrize(
    "options",
    [
        {"color": "kind", "na_color": "#ff00ff"},  # categories from uns, missing values
        {"color": "kind", "groups": ["a", "c"], "fill_alpha": 0.5},  # groups, translucent
        {"color": "geneA", "cmap": "magma"},  # continuous, from X
        {"color": "size", "cmap": "viridis", "norm": matplotlib.colors.Normalize(0.2, 0.8)},  # element column
        {"color": "orange", "fill_alpha": 0.7},
    ],
)
def test_shapes_raster_matches_paths(options):
    sdata = _cells()
    _same_picture(lambda m: sdata.pl.render_shapes("cells", method=m, **options), crop=(0, 120, 0, 120))


def test_shapes_raster_outlines_match_paths():
    sdata = _cells()

    def chain(m, width=1.5):
        return sdata.pl.render_shapes(
            "cells", color="kind", outline_alpha=1.0, outline_color="black", outline_width=width, method=m
        )

    vector, raster = _same_picture(chain, crop=(0, 120, 0, 120), min_away=0.1)
    from scipy import ndimage

    for width in (1.5, 4.0):
        vector, _ = _draw(chain("matplotlib", width), crop=(0, 120, 0, 120), px=200)
        raster, _ = _draw(chain("datashader", width), crop=(0, 120, 0, 120), px=200)
        dark_v = vector.sum(-1) < 150
        dark_r = raster.sum(-1) < 150
        ratio = dark_r.sum() / dark_v.sum()
        assert 0.7 < ratio < 1.4, (width, ratio)  # about as much outline
        # where the outline is: raster outline pixels lie on (or next to) the paths' outlines
        near = ndimage.binary_dilation(dark_v, iterations=1)
        assert dark_r[near].sum() / dark_r.sum() > 0.95, width


def test_shapes_raster_circles_true_radius_under_affine():
    # an anisotropic, sheared affine: circles become ellipses, both ways
    affine = Affine(np.array([[2.0, 0.6, 10.0], [0.0, 1.2, 5.0], [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y"))
    centres = np.array([[10.0 * i + 5, 10.0 * j + 5] for i in range(6) for j in range(6)])
    circles = ShapesModel.parse(
        pd.DataFrame(centres, columns=["x", "y"]).to_numpy(),
        radius=np.linspace(2.0, 4.5, len(centres)),
        transformations={"global": affine},
    )
    sdata = SpatialData(shapes={"c": circles})
    sdata["c"]["v"] = np.arange(len(centres), dtype=float)
    _same_picture(lambda m: sdata.pl.render_shapes("c", color="v", method=m), crop=(0, 200, 0, 100), px=300)
    # the picture is right, not only the same: the last circle (r 4.5 at (55, 55)) is the ellipse of the affine
    linear = np.array([[2.0, 0.6], [0.0, 1.2]])
    cx, cy = linear @ np.array([55.0, 55.0]) + np.array([10.0, 5.0])
    pixels, ax = _draw(
        sdata.pl.render_shapes("c", color="red", method="datashader"), crop=(0, 200, 0, 100), px=300
    )
    for direction in ([1.0, 0.0], [0.0, 1.0], [-0.7071, 0.7071]):
        d = np.asarray(direction)
        edge = 4.5 / np.linalg.norm(np.linalg.solve(linear, d))  # distance to the ellipse along d
        assert _close(_at(pixels, ax, *(np.array([cx, cy]) + 0.9 * edge * d)), RED), direction
        assert _close(_at(pixels, ax, *(np.array([cx, cy]) + 1.1 * edge * d)), (255, 255, 255)), direction


def test_many_shapes_default_to_the_raster_path(monkeypatch):
    from tissuestack.pl import _render

    rng = np.random.default_rng(1)
    sdata = SpatialData(shapes={"c": ShapesModel.parse(rng.uniform(0, 100, (12_000, 2)), radius=0.3)})
    _, ax = _draw(sdata.pl.render_shapes("c", color="red"), crop=(0, 100, 0, 100))
    assert not ax.images and len(ax.collections) == 1  # below the minimum: paths
    monkeypatch.setattr(_render, "SHAPES_RASTER_MINIMUM", 10_000)
    _, ax = _draw(sdata.pl.render_shapes("c", color="red"), crop=(0, 100, 0, 100))
    assert len(ax.images) == 1 and not ax.collections
    _, ax = _draw(sdata.pl.render_shapes("c", color="red"), crop=(0, 10, 0, 10))  # few shapes in the crop
    assert not ax.images and len(ax.collections) == 1


def test_points_datashader_matches_scatter():
    xs, ys = np.meshgrid(np.arange(5.0, 100, 10), np.arange(5.0, 100, 10))
    n = xs.size
    frame = pd.DataFrame(
        {
            "x": xs.ravel(),
            "y": ys.ravel(),
            "gene": pd.Categorical(np.array(["g1", "g2", "g3"])[np.arange(n) % 3]),
        }
    )
    sdata = SpatialData(points={"tx": PointsModel.parse(frame, feature_key="gene")})
    _same_picture(
        lambda m: sdata.pl.render_points("tx", color="gene", size=40, method=m),
        crop=(0, 100, 0, 100),
        px=200,
        min_away=0.05,
    )


def test_crop_reads_only_the_points_and_shapes_in_view(tmp_path, monkeypatch):
    from tissuestack.pl import _render
    from tissuestack.store._points import PointsScan

    rng = np.random.default_rng(2)
    n = 300_000
    frame = pd.DataFrame({"x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n)})
    centres = rng.uniform(0, 100, (2_000, 2))
    SpatialData(
        points={"p": PointsModel.parse(frame)}, shapes={"c": ShapesModel.parse(centres, radius=0.5)}
    ).write(tmp_path / "s.zarr")
    from tissuestack import read_zarr

    sdata = read_zarr(tmp_path / "s.zarr")
    rows_read = []
    read = PointsScan._table
    monkeypatch.setattr(
        PointsScan, "_table", lambda self, *a, **k: rows_read.append(len(out := read(self, *a, **k))) or out
    )
    queried = []
    query = _render.query_shapes
    monkeypatch.setattr(_render, "query_shapes", lambda *a: queried.append(len(out := query(*a)[0])) or [out])
    chain = sdata.pl.render_points("p", color="red", method="datashader").pl.render_shapes("c", color="blue")
    pixels, _ = _draw(chain, crop=(0, 20, 0, 20))
    # the points: only the row groups meeting the crop (the store is written spatially sorted)
    assert 0 < sum(rows_read) < n / 2, sum(rows_read)
    # the shapes: only those meeting the crop, through the spatial query
    inside = ((centres > -0.5) & (centres < 20.5)).all(axis=1).sum()
    assert queried == [inside] and inside < 200
    assert (np.abs(pixels - np.array(RED)).sum(-1) < 40).mean() > 0.2  # points drawn


# ------------------------------------------------------------------------------------------------ scale bar
def test_scalebar_from_the_coordinate_system_unit(tmp_path):
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from tissuestack import read_zarr
    from tissuestack.elements import get_meta
    from tissuestack.pl._accessor import unit_scalebar

    assert unit_scalebar(100, "micrometer") == (20, "20 µm")
    assert unit_scalebar(10_000, "micrometer") == (2000, "2 mm")
    assert unit_scalebar(100, "nanometer") == (20, "20 nm")
    assert unit_scalebar(3, "millimeter") == (0.5, "500 µm")
    assert unit_scalebar(100, "pixel") == (20, "20 pixel")
    sdata = _squares()
    get_meta(sdata["cells"]).units = {"global": {"x": "micrometer", "y": "micrometer"}}
    sdata.write(tmp_path / "s.zarr")  # the unit is stored with the transformation (NGFF output axes) ...
    sdata = read_zarr(tmp_path / "s.zarr")
    assert get_meta(sdata["cells"]).units == {"global": {"x": "micrometer", "y": "micrometer"}}
    # ... and a plot of that coordinate system gets a scale bar without being asked
    fig = Figure(figsize=(2, 2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    sdata.pl.render_shapes("cells", color="#cccccc").pl.show(
        ax=ax, crop=(0, 100, 0, 100), legend_loc=None, return_ax=True
    )
    bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1 and bars[0].txt_label.get_text() == "20 µm"
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    dark = pixels.sum(-1) < 100
    # the bar: a dark horizontal run in the lower right, 20 units = 40 px long (200 px for 100 units)
    lower_right = dark[100:, 100:]
    runs = lower_right.sum(axis=1)
    assert 38 <= runs.max() <= 42, runs.max()
    assert not dark[:100].any()  # nothing dark elsewhere (the cells are light grey)
    ax = sdata.pl.render_shapes("cells").pl.show(crop=(0, 100, 0, 100), scalebar=False, return_ax=True)
    assert not [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    # without a unit, no scale bar unless scalebar_dx is given
    ax = _squares().pl.render_shapes("cells").pl.show(crop=(0, 100, 0, 100), return_ax=True)
    assert not [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]


@pytest.mark.parametrize("circles", [False, True])
def test_shapes_smaller_than_a_pixel_still_show_when_rasterised(circles):
    # 0.3-unit shapes, 1 unit per output pixel: no shape covers a pixel centre
    rng = np.random.default_rng(3)
    centres = np.column_stack([rng.integers(5, 95, 300) + 0.2, rng.integers(5, 95, 300) + 0.6])
    kind = pd.Categorical(np.where(np.arange(300) % 2 == 0, "a", "b"))
    if circles:
        shapes = ShapesModel.parse(centres, radius=0.15)
    else:
        shapes = ShapesModel.parse(
            gpd.GeoDataFrame(geometry=shapely.box(*(centres - 0.15).T, *(centres + 0.15).T))
        )
    shapes["kind"] = kind
    sdata = SpatialData(shapes={"s": shapes})
    chain = sdata.pl.render_shapes("s", color="kind", palette=["red", "blue"], method="datashader")
    pixels, ax = _draw(chain, crop=(0, 100, 0, 100))
    for x, y in centres:
        colour = _at(pixels, ax, x, y)
        assert _close(colour, RED) or _close(colour, BLUE), (x, y, colour)
    coloured = (np.abs(pixels - np.array(RED)).sum(-1) < 30) | (np.abs(pixels - np.array(BLUE)).sum(-1) < 30)
    assert coloured.sum() <= len(np.unique(centres.astype(int), axis=0)) + 5  # one pixel each, no more
    # both categories keep their share where they compete for pixels
    reds = (np.abs(pixels - np.array(RED)).sum(-1) < 30).sum()
    assert 0.35 < reds / coloured.sum() < 0.65


def test_points_of_a_store_drawn_as_in_memory(tmp_path, monkeypatch):
    from tissuestack import read_zarr
    from tissuestack.store._points import PointsScan

    read_columns = []
    read_arrays = PointsScan.read_arrays
    monkeypatch.setattr(
        PointsScan,
        "read_arrays",
        lambda self, task, cols, *a: read_columns.append(cols) or read_arrays(self, task, cols, *a),
    )

    rng = np.random.default_rng(4)
    n = 50_000
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "gene": pd.Categorical(rng.choice(["g1", "g2", "g3"], n)),
        }
    )
    frame.loc[frame.x < 50, "gene"] = "g1"  # left half one gene
    sdata = SpatialData(points={"tx": PointsModel.parse(frame, feature_key="gene")})
    sdata.write(tmp_path / "s.zarr")
    stored = read_zarr(tmp_path / "s.zarr")
    pictures = []
    for s in (sdata, stored):
        chain = s.pl.render_points("tx", color="gene", palette=["red", "green", "blue"], method="datashader")
        pictures.append(_draw(chain, crop=None)[0])
    assert np.array_equal(pictures[0], pictures[1])
    assert read_columns and all(cols == ["x", "y", "gene"] for cols in read_columns)  # only those columns
    assert (np.abs(pictures[1][:, 5:45] - np.array(RED)).sum(-1) < 40).mean() > 0.9


# ------------------------------------------------------------------------------------------------ stored tables
def test_store_backed_plot_reads_only_the_table_columns_it_needs(tmp_path):
    """Colouring by an obs column of a table not loaded yet reads that column (and the region and instance
    columns) from the store, not the table; the picture equals the one drawn with the table loaded, and the
    colours written to its uns reach the table when it loads and a store written afterwards."""
    _squares().write(tmp_path / "s.zarr")
    sdata = read_zarr(tmp_path / "s.zarr")
    assert sdata.get_annotating_tables("cells") == ["table"] and not sdata.is_loaded("table")
    pixels, ax = _draw(sdata.pl.render_shapes("cells", color="kind"), crop=(0, 100, 0, 100))
    assert not sdata.is_loaded("table")
    colors = list(sdata._stored_table("table").uns["kind_colors"])
    loaded = read_zarr(tmp_path / "s.zarr")
    _ = loaded.tables["table"]  # the same plot with the table loaded first
    again, _ = _draw(loaded.pl.render_shapes("cells", color="kind"), crop=(0, 100, 0, 100))
    np.testing.assert_array_equal(pixels, again)
    expected = tuple(round(255 * v) for v in matplotlib.colors.to_rgb(colors[1]))
    assert _close(_at(pixels, ax, 75, 75), expected)
    # a var name is not an obs column: the table is loaded for it
    _draw(sdata.pl.render_shapes("cells", color="geneB"), crop=(0, 100, 0, 100))
    assert sdata.is_loaded("table")
    assert list(sdata.tables["table"].uns["kind_colors"]) == colors  # merged on load
    other = read_zarr(tmp_path / "s.zarr")
    _draw(other.pl.render_shapes("cells", color="kind"), crop=(0, 100, 0, 100))
    other.write(tmp_path / "t.zarr")  # written while the table was not loaded: the colours go with it
    assert list(read_zarr(tmp_path / "t.zarr").tables["table"].uns["kind_colors"]) == colors
