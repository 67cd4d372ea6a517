"""The viewer without a browser: rendered pixels, picking, annotations in the store, sessions, access control."""

from __future__ import annotations

import urllib.error
import urllib.request

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely

pytest.importorskip("bokeh")
pytest.importorskip("matplotlib")

import tissuestack as ts
from tissuestack.viewer._annotations import Annotations, load_annotations, save_annotations
from tissuestack.viewer._engine import LayerStyle, View, ViewerEngine
from viewer_helpers import make_sdata


def _rgba(rendered):
    return rendered.rgba.view(np.uint8).reshape(*rendered.rgba.shape, 4)


def _at(rendered, x, y):
    """The RGBA bytes of the rendered pixel containing (x, y)."""
    x0, x1, y0, _ = rendered.extent
    upp = (x1 - x0) / rendered.rgba.shape[1]
    return _rgba(rendered)[int((y - y0) / upp), int((x - x0) / upp)]


VIEW = View("global", 0.0, 100.0, 0.0, 100.0, 200, 200)


def test_shapes_coloured_by_table_category_use_uns_colours():
    engine = ViewerEngine(make_sdata())
    out = engine.render("cells", LayerStyle(color="cell_type"), VIEW)
    assert out.rgba.shape == (200, 200)
    assert tuple(_at(out, 25, 25)) == (255, 0, 0, 255)  # 'a' is x -> uns red
    assert tuple(_at(out, 75, 75)) == (0, 0, 255, 255)  # 'b' is y -> uns blue
    assert _at(out, 50, 50)[3] == 0  # between the squares: transparent
    assert dict(out.legend) == {"x": "#ff0000", "y": "#0000ff"}


def test_shapes_outline_only_and_continuous_colours():
    engine = ViewerEngine(make_sdata())
    out = engine.render("cells", LayerStyle(color="score", fill=False, outline=True), VIEW)
    assert _at(out, 25, 25)[3] == 0  # inside: not filled
    assert _at(out, 10.2, 25)[3] == 255  # on the left edge of 'a'
    assert out.colorbar is not None and out.colorbar[:3] == ("score", 1.0, 3.0)


def test_circles_keep_their_true_radius_under_a_scale():
    sdata = make_sdata()
    sdata.set_transformation("spots", ts.Scale([2.0, 2.0], axes=("x", "y")), to_coordinate_system="other")
    engine = ViewerEngine(sdata)
    view = View("other", 0.0, 200.0, 0.0, 200.0, 200, 200)  # 1 unit per pixel
    out = engine.render("spots", LayerStyle(color="#00ff00"), view)
    # centre (100, 100), radius 40 after the scale
    assert tuple(_at(out, 100, 139)[:3]) == (0, 255, 0)
    assert _at(out, 100, 141.5)[3] == 0
    assert tuple(_at(out, 61, 100)[:3]) == (0, 255, 0)


def test_points_dense_image_and_markers_when_zoomed():
    engine = ViewerEngine(make_sdata())
    import tissuestack.viewer._engine as eng

    limit = eng.MARKER_LIMIT
    eng.MARKER_LIMIT = 10  # force the rasterised picture
    try:
        out = engine.render("tx", LayerStyle(), VIEW)
    finally:
        eng.MARKER_LIMIT = limit
    img = _rgba(out)
    assert out.markers is None
    drawn = img[..., 3] > 0
    ys, xs = np.nonzero(drawn)
    assert xs.min() >= 61 * 2 and xs.max() <= 89 * 2 and ys.min() >= 11 * 2 and ys.max() <= 39 * 2
    assert {lab for lab, _ in out.legend} == {"g1", "g2"}
    zoom = View("global", 60.0, 70.0, 10.0, 20.0, 200, 200)
    near = engine.render("tx", LayerStyle(), zoom)
    assert near.markers is not None and len(near.markers["x"]) > 0
    assert np.all((near.markers["x"] >= 60) & (near.markers["x"] <= 70))
    assert set(near.markers["value"]) <= {"g1", "g2"}


def test_image_channel_colour_contrast_and_rotation():
    sdata = make_sdata()
    engine = ViewerEngine(sdata)
    style = LayerStyle(channels=[0], channel_colors={0: "#00ff00"}, contrast={0: (0.0, 1000.0)})
    out = engine.render("img", style, VIEW)
    assert tuple(_at(out, 10, 50)) == (0, 255, 0, 255)
    assert tuple(_at(out, 50, 10)[:3]) == (0, 0, 0)
    # rotate the image by 90 degrees about the origin: (x, y) -> (-y, x)
    rot = ts.Affine(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), input_axes=("x", "y"),
                    output_axes=("x", "y"))  # fmt: skip
    sdata.set_transformation("img", rot, to_coordinate_system="rot")
    view = View("rot", -100.0, 0.0, 0.0, 100.0, 200, 200)
    out = engine.render("img", style, view)
    assert tuple(_at(out, -50, 10)) == (0, 255, 0, 255)  # the block at x 5..15, y 45..55 -> x -55..-45, y 5..15
    assert tuple(_at(out, -10, 50)[:3]) == (0, 0, 0)


def test_labels_coloured_by_table_and_picking():
    sdata = make_sdata()
    obs = pd.DataFrame({"region": pd.Categorical(["lab"]), "label_id": [7], "kind": pd.Categorical(["k"])},
                       index=["l7"])  # fmt: skip
    t2 = ad.AnnData(obs=obs)
    t2.uns["kind_colors"] = np.array(["#ffff00"], dtype=object)
    sdata["lab_table"] = ts.TableModel.parse(t2, region="lab", region_key="region", instance_key="label_id")
    engine = ViewerEngine(sdata)
    out = engine.render("lab", LayerStyle(color="kind"), VIEW)
    assert tuple(_at(out, 25, 75)) == (255, 255, 0, 255)
    assert _at(out, 75, 25)[3] == 0
    hit = engine.pick("lab", "global", 25, 75)
    assert hit["instance"] == 7 and hit["values"]["kind"] == "k"
    engine.render("cells", LayerStyle(), VIEW)
    hit = engine.pick("cells", "global", 70, 80)
    assert hit["instance"] == "b" and hit["values"]["cell_type"] == "y" and hit["values"]["score"] == 3.0
    assert engine.pick("cells", "global", 50, 50) is None


def test_annotations_round_trip_through_the_store(tmp_path):
    path = tmp_path / "s.zarr"
    make_sdata().write(path)
    sdata = ts.read_zarr(path)
    ann = Annotations(
        polygons=[("tumour", "tumour", np.array([[10, 10], [40, 10], [40, 30]])),
                  ("", "stroma", np.array([[50, 50], [60, 50], [60, 60], [50, 60]]))],
        circles=[("c1", "immune", 20.0, 20.0, 5.0)],
        landmarks=[("l1", "lm", 1.0, 2.0), ("l2", "lm", 3.0, 4.0)],
    )  # fmt: skip
    written = save_annotations(sdata, "rois", "global", ann)
    assert written == ["rois", "rois_circles", "rois_landmarks", "rois_table"]
    again = ts.read_zarr(path)
    rois = again["rois"]
    assert list(rois.index) == ["tumour", "polygon_2"]
    assert rois.geometry.iloc[0].equals(shapely.Polygon([(10, 10), (40, 10), (40, 30)]))
    assert list(again["rois_table"].obs["class"]) == ["tumour", "stroma", "immune"]
    assert again.get_annotating_tables("rois_circles") == ["rois_table"]
    lm = again["rois_landmarks"].compute()
    assert lm[["x", "y"]].to_numpy().tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert again["rois_circles"]["radius"].tolist() == [5.0]
    loaded = load_annotations(again, "rois", "global")
    assert [p[0] for p in loaded.polygons] == ["tumour", "polygon_2"]
    assert [p[1] for p in loaded.polygons] == ["tumour", "stroma"]
    assert loaded.circles == [("c1", "immune", 20.0, 20.0, 5.0)]
    assert [lmk[2:] for lmk in loaded.landmarks] == [(1.0, 2.0), (3.0, 4.0)]


def test_annotations_never_overwrite_other_elements_and_names_are_checked(tmp_path):
    path = tmp_path / "s.zarr"
    make_sdata().write(path)
    sdata = ts.read_zarr(path)
    ann = Annotations(polygons=[("p", "c", np.array([[0, 0], [1, 0], [1, 1]]))])
    with pytest.raises(ValueError, match="already exist"):
        save_annotations(sdata, "cells", "global", ann)
    for bad in ("../evil", "a/b", "", "..", "x y"):
        with pytest.raises(ValueError):
            save_annotations(sdata, bad, "global", ann)
    again = ts.read_zarr(path)
    assert len(again["cells"]) == 2  # untouched
    assert not (tmp_path / "evil").exists()
    # a second save needs the names to be declared as replaceable (the viewer does this for its own)
    save_annotations(sdata, "rois", "global", ann)
    with pytest.raises(ValueError, match="already exist"):
        save_annotations(sdata, "rois", "global", ann)
    smaller = Annotations(landmarks=[("l", "c", 1.0, 1.0)])
    save_annotations(sdata, "rois", "global", smaller, replace=["rois", "rois_table", "rois_landmarks"])
    again = ts.read_zarr(path)
    assert "rois" not in again.keys() and "rois_table" not in again.keys()
    assert len(again["rois_landmarks"].compute()) == 1


def test_saved_landmarks_feed_alignment(tmp_path):
    path = tmp_path / "s.zarr"
    make_sdata().write(path)
    sdata = ts.read_zarr(path)
    ref = np.array([[10.0, 10.0], [80.0, 15.0], [40.0, 90.0], [70.0, 70.0]])
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moving = (ref - 50) @ rot.T * 0.5 + 20  # the same landmarks on a rotated, scaled, shifted section
    save_annotations(sdata, "ref", "global", Annotations(landmarks=[(f"l{i}", "lm", *p) for i, p in enumerate(ref)]))
    save_annotations(sdata, "mov", "global",
                     Annotations(landmarks=[(f"l{i}", "lm", *p) for i, p in enumerate(moving)]))  # fmt: skip
    again = ts.read_zarr(path)
    affine, residuals = ts.align_elements_using_landmarks(
        again, "ref_landmarks", "mov_landmarks", "cells", "tx", return_residuals=True
    )
    m = affine.to_affine_matrix(("x", "y"), ("x", "y"))
    mapped = moving @ m[:2, :2].T + m[:2, 2]
    np.testing.assert_allclose(mapped, ref, atol=1e-6)
    assert np.max(residuals) < 1e-6


# ------------------------------------------------------------------------------------------------ sessions
def _session(sdata, **kw):
    from bokeh.document import Document

    from tissuestack.viewer._app import ViewerSession

    doc = Document()
    session = ViewerSession(doc, ViewerEngine(sdata), **kw)
    for cb in list(doc.session_callbacks):  # run the first render now
        cb.callback()
    return session


def test_session_layers_switch_and_save(tmp_path):
    path = tmp_path / "s.zarr"
    make_sdata().write(path)
    sdata = ts.read_zarr(path)
    s = _session(sdata)
    assert s.cs == "global"
    assert set(s.layers) == {"img", "lab", "cells", "tx"}
    assert s.image_r.visible and len(s.image_src.data["image"]) == 1  # all layers blended into one picture
    assert s.image_src.data["image"][0].shape == (700, 900) or s.image_src.data["image"][0].shape[1] == 900
    s._switch("other")
    assert set(s.layers) == {"spots"}
    s._switch("global")
    s.class_input.value = "tumour"
    s.poly_src.data = {"xs": [[10.0, 30.0, 30.0]], "ys": [[10.0, 10.0, 30.0]], "name": [""], "cls": [""]}
    s.lm_src.data = {"x": [5.0], "y": [6.0], "name": [""], "cls": [""]}
    s._drawn()
    assert s.summary_src.data["name"] == ["polygon_1", "landmark_1"]
    assert s.summary_src.data["cls"] == ["tumour", "tumour"]
    s.summary_src.data = {**s.summary_src.data, "name": ["T1", "L1"]}
    s._renamed()
    s.name_input.value = "notes"
    s._save()
    assert "saved" in s.status.text, s.status.text
    again = ts.read_zarr(path)
    assert list(again["notes"].index) == ["T1"]
    assert again["notes_landmarks"].compute()["name"].tolist() == ["L1"]
    # the session may replace what it saved itself
    s.poly_src.data = {"xs": [[0.0, 5.0, 5.0]], "ys": [[0.0, 0.0, 5.0]], "name": [""], "cls": [""]}
    s._drawn()
    s._save()
    assert "saved" in s.status.text, s.status.text
    assert ts.read_zarr(path)["notes"].geometry.iloc[0].bounds == (0.0, 0.0, 5.0, 5.0)
    # a bad name is reported, nothing is written
    s.name_input.value = "../x"
    s._save()
    assert "not saved" in s.status.text


def test_blend_over_and_opacity():
    from tissuestack.viewer._app import _blend
    from tissuestack.viewer._engine import pack_rgba

    red = pack_rgba(np.tile([1.0, 0.0, 0.0, 1.0], (2, 2, 1)))
    blue = np.zeros((2, 2, 4))
    blue[0, 0] = [0.0, 0.0, 1.0, 1.0]
    out = _blend([(red, 1.0), (pack_rgba(blue), 0.5)]).view(np.uint8).reshape(2, 2, 4)
    assert tuple(out[0, 0]) == (128, 0, 128, 255)  # half blue over red
    assert tuple(out[1, 1]) == (255, 0, 0, 255)  # transparent pixel of the top layer: red shows
    alone = _blend([(pack_rgba(blue), 0.5)]).view(np.uint8).reshape(2, 2, 4)
    assert tuple(alone[0, 0]) == (0, 0, 255, 128) and alone[1, 1, 3] == 0


def test_read_only_session_writes_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    make_sdata().write(path)
    s = _session(ts.read_zarr(path), read_only=True)
    assert s.save_button.disabled
    s.lm_src.data = {"x": [5.0], "y": [6.0], "name": ["a"], "cls": ["b"]}
    s._save()
    assert "read-only" in s.status.text
    assert "annotations_landmarks" not in ts.read_zarr(path).keys()


# -------------------------------------------------------------------------------------------------- access
def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_loopback_needs_no_token_and_other_addresses_do():
    sdata = make_sdata()
    v = ts.view(sdata, open_browser=False, notebook=False)
    try:
        assert v.url.startswith("http://localhost:") and "token" not in v.url
        status, body = _get(v.url)
        assert status == 200 and "bokeh" in body.lower()
    finally:
        v.stop()
    v = ts.view(sdata, host="0.0.0.0", open_browser=False, notebook=False)
    try:
        assert "?token=" in v.url
        port = v.url.split(":")[2].split("/")[0]
        token = v.url.split("token=")[1]
        status, body = _get(f"http://127.0.0.1:{port}/")
        assert status == 403 and "token" in body
        status, _ = _get(f"http://127.0.0.1:{port}/?token=wrong{token[:4]}")
        assert status == 403
        status, body = _get(f"http://127.0.0.1:{port}/?token={token}")
        assert status == 200 and "bokeh" in body.lower()
    finally:
        v.stop()


def test_remote_store_is_read_only():
    from tissuestack.viewer._server import _is_remote

    assert _is_remote("s3://bucket/x.zarr") and _is_remote("https://h/x.zarr")
    assert not _is_remote("/data/x.zarr") and not _is_remote(None)


def test_cli_view_help_and_missing_store(capsys):
    from tissuestack.cli import main

    with pytest.raises(SystemExit):
        main(["view", "--help"])
    assert "--read-only" in capsys.readouterr().out
    assert main(["view", "/nonexistent/store.zarr", "--no-browser"]) == 2
