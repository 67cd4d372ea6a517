"""The MACSima reader against synthetic MACSiQ View folders (v0 and v1 OME-XML metadata)."""

from __future__ import annotations

import re
import shutil
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from io_helpers import affine_xy, run_reference
from tissuestack import read_zarr
from tissuestack.cli import main
from tissuestack.elements import raster_levels
from tissuestack.errors import ReaderError
from tissuestack.io import get_technology, macsima
from tissuestack.io._macsima import iter_macsima
from tissuestack.io.fake import write_macsima
from tissuestack.io.fake._macsima import MACSIMA_PIXEL_SIZE

pytestmark = pytest.mark.filterwarnings("ignore:.*no OME-XML metadata; skipped:UserWarning")

V1_NAMES = ["CD15", "CD45", "DAPI", "CD3", "CD15_background"]  # by cycle, then name
V1_CYCLES = [1, 1, 1, 2, 15]


@pytest.fixture(scope="module")
def v1(tmp_path_factory) -> Path:
    return write_macsima(tmp_path_factory.mktemp("m") / "slide A", version=1, seed=1)


@pytest.fixture(scope="module")
def v0(tmp_path_factory) -> Path:
    return write_macsima(tmp_path_factory.mktemp("m") / "legacy", version=0, dapi_cycles=(1, 2, 15), seed=2)


def _level0(element) -> np.ndarray:
    return np.asarray(raster_levels(element)[0].values)


def _files_by_channel(folder: Path) -> dict[tuple[int, str], np.ndarray]:
    """Brute force: (cycle, marker as in the file name, scan type) -> pixels, from the v1 file names."""
    out = {}
    for f in folder.rglob("CYC-*.tif"):
        m = re.match(r"CYC-(\d+)_SCN-\d+_ST-(\w+?)_.*_A-(\w+)\.tif", f.name)
        cycle, scan, marker = int(m.group(1)), m.group(2), m.group(3)
        out[(cycle, marker + ("_background" if scan == "B" else ""))] = np.squeeze(
            tifffile.imread(f, level=0)
        )
    return out


def test_v1_image_channels_and_transform(v1):
    with pytest.warns(UserWarning, match=r"overview.tif: no OME-XML metadata; skipped"):
        s = macsima(v1)
    assert set(s.images) == {"slide_A_image"} and set(s.tables) == {"slide_A_table"}
    image = s["slide_A_image"]
    assert raster_levels(image)[0].coords["c"].values.tolist() == V1_NAMES
    np.testing.assert_allclose(
        affine_xy(image, "slide_A"), np.diag([MACSIMA_PIXEL_SIZE, MACSIMA_PIXEL_SIZE, 1.0])
    )
    assert sorted(s.coordinate_systems) == ["slide_A"]
    pixels = _level0(image)
    files = _files_by_channel(v1)
    for k, (name, cycle) in enumerate(zip(V1_NAMES, V1_CYCLES, strict=True)):
        np.testing.assert_array_equal(pixels[k], files[(cycle, name)])  # level 0 even with a SubIFD pyramid
    assert raster_levels(image)[0].data.dask is not None


def test_v1_channel_table(v1):
    table = macsima(v1)["slide_A_table"]
    assert table.n_obs == 0 and table.var_names.tolist() == V1_NAMES
    var = table.var
    assert var.columns.tolist() == [
        "name",
        "cycle",
        "imagetype",
        "well",
        "ROI",
        "fluorophore",
        "clone",
        "exposure",
    ]
    assert var["cycle"].tolist() == V1_CYCLES  # the first MapAnnotation wins over a repeated "Cycle" key
    assert var["imagetype"].tolist() == ["stain"] * 4 + ["bleach"]
    assert var["fluorophore"].tolist() == ["APC", "PE", "DAPI", "FITC", "APC"]
    assert var["clone"].tolist()[:2] == ["VIMC6", "REA747"] and var["clone"].isna().tolist()[2]
    assert var["exposure"].tolist() == [120.0, 80.0, 10.0, 240.0, 120.0]
    assert set(var["well"]) == {"D01"} and var["ROI"].tolist() == [1] * 5
    assert "spatialdata_attrs" not in table.uns or not table.uns["spatialdata_attrs"].get("region")


def test_v0_names_nuclei_split_and_duplicates(v0):
    s = macsima(v0)
    assert set(s.images) == {"legacy_image", "legacy_nuclei_image"}
    assert set(s.tables) == {"legacy_table", "legacy_nuclei_table"}
    main_names = ["CD15", "CD45", "DAPI (1)", "CD3", "CD15_background", "DAPI (3)"]
    # the stack keeps the first and the last DAPI, named as in the nuclei image
    assert raster_levels(s["legacy_image"])[0].coords["c"].values.tolist() == main_names
    nuclei = ["DAPI (1)", "DAPI (2)", "DAPI (3)"]
    assert raster_levels(s["legacy_nuclei_image"])[0].coords["c"].values.tolist() == nuclei
    assert s["legacy_nuclei_table"].var["cycle"].tolist() == [1, 2, 15]
    assert s["legacy_table"].var["imagetype"].tolist()[4] == "bleach"
    assert s["legacy_table"].var["clone"].tolist()[0] == "VIMC6"  # from Screen/Reagent@Name "CD15__VIMC6"
    assert s["legacy_table"].var["ROI"].tolist() == [1] * 6  # v0 "ROI ID" (first annotation wins)
    np.testing.assert_array_equal(_level0(s["legacy_image"])[5], _level0(s["legacy_nuclei_image"])[2])
    for name in s.images:
        np.testing.assert_allclose(affine_xy(s[name], "legacy")[0, 0], MACSIMA_PIXEL_SIZE)


def test_options(v0, v1, tmp_path):
    s = macsima(v0, split_nuclei_threshold=None, include_cycle_in_channel_name=True, pixel_size=False)
    assert set(s.images) == {"legacy_image"}
    names = raster_levels(s["legacy_image"])[0].coords["c"].values.tolist()
    assert names == ["R1 CD15", "R1 CD45", "R1 DAPI", "R2 CD3", "R2 DAPI", "R15 CD15_background", "R15 DAPI"]
    np.testing.assert_array_equal(affine_xy(s["legacy_image"], "legacy"), np.eye(3))
    s = macsima(v1, skip_cycles=("15",), pyramid=False, image_chunks=16)
    assert raster_levels(s["slide_A_image"])[0].coords["c"].values.tolist() == V1_NAMES[:4]
    assert raster_levels(s["slide_A_image"])[0].data.chunks[1:] == ((16, 14), (16, 16, 8))
    assert (
        len(raster_levels(macsima(v1, nuclei_channel="CD15", split_nuclei_threshold=1)["slide_A_image"])) == 1
    )
    assert set(macsima(v1, nuclei_channel="CD15", split_nuclei_threshold=1).images) == {
        "slide_A_image",
        "slide_A_nuclei_image",
    }
    with pytest.raises(ReaderError, match=r"skip_cycles=.* leaves no channel"):
        macsima(v1, skip_cycles=(1, 2, 15))
    with pytest.raises(ReaderError, match="skip_cycles must be cycle numbers"):
        macsima(v1, skip_cycles=("x",))
    with pytest.raises(ReaderError, match="split_nuclei_threshold must be >= 0"):
        macsima(v1, split_nuclei_threshold=-1)
    # multiple folders: one image and table per sub-folder
    root = tmp_path / "experiment"
    root.mkdir()
    shutil.copytree(v1, root / "A1")
    shutil.copytree(v0, root / "B2")
    shutil.copytree(v0, root / "skipme")
    s = macsima(root, multiple_folders=True, filter_folder_names=("skip",))
    assert set(s.images) == {"A1_image", "B2_image", "B2_nuclei_image"}
    assert sorted(s.coordinate_systems) == ["A1", "B2"]


@pytest.mark.parametrize(("position_unit", "size_unit"), [(None, "µm"), ("µm", "nm")])
def test_padding_by_plane_positions(tmp_path, position_unit, size_unit):
    folder = write_macsima(
        tmp_path / "r",
        ragged=True,
        position_unit=position_unit,
        pixel_size_unit=size_unit,
        dapi_cycles=(1, 2, 15),
    )
    with pytest.warns(UserWarning, match=r"different sizes \[\(30, 40\), \(34, 44\)\]; zero-padded"):
        s = macsima(folder)
    pixels = _level0(s["r_image"])
    nuclei = _level0(s["r_nuclei_image"])
    assert pixels.shape == (6, 34, 44) and nuclei.shape == (3, 34, 44)  # one frame for both images
    files = _files_by_channel(folder)
    np.testing.assert_array_equal(pixels[3], files[(2, "CD3")])  # the large image at (0, 0)
    expected = np.zeros((34, 44), np.uint16)
    expected[2:32, 3:43] = files[(1, "CD15")]  # the others at (y, x) = (2, 3)
    np.testing.assert_array_equal(pixels[0], expected)
    expected[2:32, 3:43] = files[(2, "DAPI")]
    np.testing.assert_array_equal(nuclei[1], expected)
    np.testing.assert_allclose(affine_xy(s["r_image"], "r")[1, 1], MACSIMA_PIXEL_SIZE)


def test_write_order_registry_and_round_trip(tmp_path, v0):
    tech = get_technology("macsima")
    assert tech.iter_elements is iter_macsima
    names = [name for name, _ in tech.iter_elements(v0)]
    assert names == ["legacy_image", "legacy_table", "legacy_nuclei_image", "legacy_nuclei_table"]
    s = macsima(v0)
    out = tmp_path / "macsima.zarr"
    assert main(["convert", "macsima", str(v0), str(out), "--skip-cycles", "2", "--no-progress"]) == 0
    assert main(["validate", str(out)]) == 0
    back = read_zarr(out)
    assert set(back.images) == {"legacy_image"}  # cycle 2 skipped: two DAPI channels, no split
    got = raster_levels(back["legacy_image"])[0]
    assert got.coords["c"].values.tolist() == ["CD15", "CD45", "DAPI (1)", "CD15_background", "DAPI (2)"]
    np.testing.assert_array_equal(got.values[0], _level0(s["legacy_image"])[0])
    np.testing.assert_allclose(
        affine_xy(back["legacy_image"], "legacy"), affine_xy(s["legacy_image"], "legacy")
    )
    table = back["legacy_table"]
    assert table.var["cycle"].tolist() == [1, 1, 1, 15, 15] and table.n_obs == 0
    assert table.var["clone"].tolist()[:2] == ["VIMC6", "REA747"]


# ------------------------------------------------------------------------------------------------ malformed input
def test_missing_and_unknown(tmp_path, v1):
    with pytest.raises(ReaderError, match="not a directory; expected a MACSima output folder"):
        macsima(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match=r"empty: no .tif / .tiff files"):
        macsima(tmp_path / "empty")
    only_plain = tmp_path / "plain"
    only_plain.mkdir()
    tifffile.imwrite(only_plain / "a.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(ReaderError, match=r"plain: none of the 1 TIFF file\(s\) carries MACSima OME-XML"):
        macsima(only_plain)
    with pytest.raises(ReaderError, match=r"no sub-folder holds .tif files"):
        macsima(tmp_path / "empty", multiple_folders=True)
    future = write_macsima(tmp_path / "future", software_version="2.1.0")
    with pytest.raises(
        ReaderError, match=r"CYC-001_.*\.tif: unknown MACSiQ View software version '2.1.0'; expected major"
    ):
        macsima(future)
    garbled = write_macsima(tmp_path / "garbled", version=0, software_version="beta")
    with pytest.raises(ReaderError, match=r"software version 'beta' is not a version number"):
        macsima(garbled)


def test_unparsable_files_are_skipped(tmp_path):
    folder = write_macsima(tmp_path / "s")
    bleach = next(folder.glob("CYC-015_*.tif"))
    data = tifffile.imread(bleach)
    xml = tifffile.TiffFile(bleach).pages[0].description
    tifffile.imwrite(bleach, data, description=xml.replace('K="Cycle"', 'K="Round"'), metadata=None)
    with pytest.warns(
        UserWarning, match=r"CYC-015_.*: cannot parse the MACSima metadata \(no cycle number\); skipped"
    ):
        s = macsima(folder)
    assert raster_levels(s["s_image"])[0].coords["c"].values.tolist() == V1_NAMES[:4]


def test_old_cycle_key_and_truncated_and_multichannel(tmp_path):
    old = write_macsima(tmp_path / "old", version=0, old_cycle_key=True)
    assert macsima(old)["old_table"].var["cycle"].tolist() == V1_CYCLES
    file = next(old.glob("C-002_*.tif"), None) or next(old.rglob("C-002_*.tif"))
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(ReaderError, match=re.escape(file.name)):
        macsima(old)
    multi = write_macsima(tmp_path / "multi")
    file = next(multi.glob("CYC-015_*.tif"))
    xml = tifffile.TiffFile(file).pages[0].description
    xml = xml.replace('SizeC="1"', 'SizeC="2"').replace('PlaneCount="1"', 'PlaneCount="2"')
    tifffile.imwrite(
        file, np.zeros((2, 30, 40), np.uint16), description=xml, metadata=None, photometric="minisblack"
    )
    with pytest.raises(ReaderError, match=rf"{re.escape(file.name)}: .*expected a single-channel image"):
        macsima(multi)


def test_no_pixel_size(tmp_path):
    folder = write_macsima(tmp_path / "n")
    for file in folder.rglob("CYC-*.tif"):
        data = tifffile.imread(file, level=0)
        xml = tifffile.TiffFile(file).pages[0].description
        xml = re.sub(r' PhysicalSize[XY](Unit)?="[^"]*"', "", xml)
        tifffile.imwrite(file, data, description=xml, metadata=None, photometric="minisblack")
    with pytest.raises(ReaderError, match=r"n: no file gives Pixels@PhysicalSizeX/Y"):
        macsima(folder)
    np.testing.assert_array_equal(affine_xy(macsima(folder, pixel_size=False)["n_image"], "n"), np.eye(3))


# ------------------------------------------------------------------------------------------------ reference
_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.filterwarnings("ignore")
    from spatialdata_io import macsima
    from spatialdata.transformations import get_transformation
    out = []
    for path in sys.argv[1:]:
        s = macsima(path)
        images = {}
        for k, v in s.images.items():
            level = v["scale0"].image
            t = get_transformation(v, get_all=True)
            images[k] = [list(level.shape), level.coords["c"].values.tolist(),
                         {cs: m.to_affine_matrix(("x", "y"), ("x", "y")).tolist() for cs, m in t.items()},
                         np.asarray(level.values).astype(float).sum(axis=(1, 2)).tolist()]
        tables = {k: [list(t.shape), t.var.astype(str).to_dict("list"), t.var_names.tolist()]
                  for k, t in s.tables.items()}
        out.append({"images": images, "tables": tables})
    print(json.dumps(out))
    """
)


def test_matches_reference_reader(v0, v1):
    """Same images (sizes, channel names, pixel sums per channel, pixel-to-µm scale) and channel tables as
    spatialdata-io's macsima reader on a v1 and a v0 folder (run in its own environment; skipped when absent).
    By design the stack's nuclei channels keep their nuclei-image names here (``DAPI (1)``, ``DAPI (3)``; the
    reference renumbers them ``DAPI (1)``, ``DAPI (2)``, so its ``DAPI (2)`` means a different image in its two
    elements)."""
    refs = run_reference(_REFERENCE_SCRIPT, v1, v0)
    for folder, ref in zip((v1, v0), refs, strict=True):
        ours = macsima(folder)
        assert set(ours.images) == set(ref["images"]) and set(ours.tables) == set(ref["tables"])
        for name, (shape, channels, matrices, sums) in ref["images"].items():
            level = raster_levels(ours[name])[0]
            assert list(level.shape) == shape
            ours_channels = level.coords["c"].values.tolist()
            if name == "legacy_image":
                assert ours_channels[5] == "DAPI (3)" and channels[5] == "DAPI (2)"
                ours_channels[5] = "DAPI (2)"
            assert ours_channels == channels
            np.testing.assert_allclose(np.asarray(level.values, float).sum(axis=(1, 2)), sums)
            for cs, m in matrices.items():
                np.testing.assert_allclose(affine_xy(ours[name], cs), np.asarray(m))
        for name, (shape, var, var_names) in ref["tables"].items():
            table = ours[name]
            assert list(table.shape) == shape
            if name != "legacy_table":
                assert table.var_names.tolist() == var_names
            for column, values in var.items():
                if column == "name":
                    continue
                got = [
                    "<NA>" if v is None or v is np.nan or str(v) in ("nan", "<NA>") else str(v)
                    for v in table.var[column].astype(object)
                ]
                want = ["<NA>" if str(v) in ("nan", "<NA>", "None") else str(v) for v in values]
                assert got == want, (name, column)


def test_no_warnings_on_a_clean_folder(tmp_path):
    folder = write_macsima(tmp_path / "clean")
    shutil.rmtree(folder / "notes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        macsima(folder)
