"""The viewer end to end in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

`.ci/run` installs chromium (apt) and playwright (the test extra); these tests skip, with the reason, only where no
chromium executable can be found.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("bokeh")
pytest.importorskip("matplotlib")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

import tissuestack as ts  # noqa: E402
from viewer_helpers import make_sdata  # noqa: E402

CHROMIUM = os.environ.get("TISSUESTACK_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium executable (apt-get install -y chromium, or set TISSUESTACK_CHROMIUM)"
)

TO_SCREEN = """(pt) => { const v = Bokeh.index.all_views().find(v => v.model.name === 'ts-figure');
  const r = v.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(pt[0]), r.top + v.frame.y_scale.compute(pt[1])]; }"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("viewer") / "s.zarr"
    make_sdata().write(path)
    viewer = ts.view(ts.read_zarr(path), open_browser=False, notebook=False, width=500, height=500)
    yield viewer, path
    viewer.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    pg = browser.new_page(viewport={"width": 1100, "height": 800})
    pg.goto(served[0].url)
    pg.wait_for_selector(".ts-layer-cells", timeout=30_000)
    pg.wait_for_function("() => window.Bokeh && Bokeh.index.all_views().some(v => v.model.name === 'ts-figure')")
    yield pg
    pg.close()


def screen(pg, x, y):
    return pg.evaluate(TO_SCREEN, [x, y])


def pixel(pg, x, y):
    from PIL import Image

    sx, sy = screen(pg, x, y)
    img = Image.open(io.BytesIO(pg.screenshot())).convert("RGB")
    return np.asarray(img)[int(sy), int(sx)].astype(int)


def wait_for(predicate, what, timeout=20.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = predicate()
        if last is True or (last is not None and last is not False and last[0]):
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last seen {last}")


def red(c):
    return c[0] > 80 and c[1] < 30 and c[2] < 30


def blue(c):
    return c[2] > 80 and c[0] < 30 and c[1] < 30


def test_layers_are_coloured_by_a_table_category_and_toggle(page):
    page.locator(".ts-color-cells select").select_option("cell_type")
    page.locator(".ts-mode-cells input").first.check()  # two shapes: outlines by default, fill them
    wait_for(lambda: (red(c := pixel(page, 25, 25)), c), "cell 'a' in its uns colour (red)")
    assert blue(pixel(page, 75, 75))
    legend = page.locator(".ts-legend[data-element='cells']")
    assert legend.inner_text().split() == ["x", "y"]
    page.locator(".ts-layer-cells input").uncheck()
    wait_for(lambda: ((c := pixel(page, 25, 25)).max() < 40, c), "the hidden layer to disappear")


def test_coordinate_system_switch_shows_its_elements(page):
    assert page.locator(".ts-layer-spots").count() == 0
    page.locator(".ts-cs select").select_option("other")
    page.wait_for_selector(".ts-layer-spots", timeout=20_000)
    assert page.locator(".ts-layer-cells").count() == 0
    page.locator(".ts-mode-spots input").first.check()  # one shape: outlined by default, fill it
    # the spot (circle of radius 20 at 50, 50) is drawn in the layer colour
    wait_for(lambda: ((c := pixel(page, 50, 50)).max() > 40, c), "the spot to be drawn")
    assert pixel(page, 33, 33).max() < 40  # outside the circle, inside the view


def test_click_shows_the_instance_and_its_table_row(page):
    time.sleep(1.0)  # first render done
    page.mouse.click(*screen(page, 75, 75))
    info = page.locator(".ts-picked")
    info.wait_for(timeout=20_000)
    assert info.get_attribute("data-instance") == "b"
    assert "cell_type" in info.inner_text() and "score" in info.inner_text()


def test_draw_a_polygon_and_landmarks_and_save_them_into_the_store(page, served):
    _, path = served
    page.locator("[title='Draw polygons']").first.click()
    corners = [(20.0, 50.0), (45.0, 50.0), (45.0, 70.0), (20.0, 70.0)]
    pts = [screen(page, *c) for c in corners]

    def press(xy):  # press and hold: starts and ends a polygon
        page.mouse.move(*xy)
        page.mouse.down()
        time.sleep(0.6)
        page.mouse.up()
        time.sleep(0.3)

    press(pts[0])
    for xy in pts[1:3]:
        page.mouse.move(*xy)
        page.mouse.click(*xy)
        time.sleep(0.3)
    press(pts[3])
    page.locator("[title='Place landmarks']").first.click()
    marks = [(5.0, 5.0), (95.0, 5.0), (50.0, 95.0)]
    for m in marks:
        page.mouse.click(*screen(page, *m))
        time.sleep(0.3)
    page.locator(".ts-annotations").get_by_text("polygon_1").wait_for(timeout=20_000)
    page.locator(".ts-save-name input").fill("drawn")
    page.locator(".ts-save-name input").press("Enter")
    time.sleep(0.5)
    page.locator(".ts-save button").click()
    page.locator(".ts-saved").wait_for(timeout=30_000)
    again = ts.read_zarr(path)
    geom = again["drawn"].geometry.iloc[0]
    got = np.asarray(geom.exterior.coords)[:-1]
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(np.array(corners), axis=0), atol=0.5)
    assert again["drawn_table"].obs["class"].tolist() == ["region"]
    lm = again["drawn_landmarks"].compute().sort_index()  # the order they were placed in
    np.testing.assert_allclose(lm[["x", "y"]].to_numpy(), np.array(marks), atol=0.5)
    assert again.get_transformation("drawn", "global") is not None


IMAGE_EXTENT = """() => { const v = Bokeh.index.all_views().find(v => v.model.name === 'ts-figure');
  const r = v.model.renderers.find(r => r.name === 'ts-layers'); const d = r.data_source.data;
  return d.x.length ? [d.x[0], d.x[0] + d.dw[0], d.y[0], d.y[0] + d.dh[0]] : null; }"""


def test_zoom_re_renders_the_region_in_view(page):
    page.locator(".ts-mode-cells input").first.check()
    wait_for(lambda: ((c := pixel(page, 25, 25)).max() > 40, c), "the filled cell")
    before = page.evaluate(IMAGE_EXTENT)
    page.mouse.move(*screen(page, 25, 25))
    page.mouse.wheel(0, -600)  # zoom in about cell 'a'
    after = wait_for(lambda: ((e := page.evaluate(IMAGE_EXTENT)) != before, e), "a picture of the new view")[1]
    assert after[1] - after[0] < (before[1] - before[0]) * 0.9  # a narrower region, drawn again
    assert after[0] <= 25 <= after[1] and after[2] <= 25 <= after[3]
    wait_for(lambda: ((c := pixel(page, 25, 25)).max() > 40, c), "the cell drawn again after the zoom")
