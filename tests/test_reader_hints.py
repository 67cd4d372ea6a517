"""A reader pointed at the wrong folder says what that folder is (issue 17 item 5)."""

from __future__ import annotations

import warnings

import pytest

import tissuestack.io.fake as fake
from tissuestack.errors import ReaderError
from tissuestack.io._detect import detect_technology
from tissuestack.io._technology import get_technology

NESTED = ["xenium", "visium", "visium_hd", "cosmx", "steinbock", "seqfish", "dbit", "curio", "mcmicro"]
# merscope, codex and stereoseq fakes nest deeper; macsima searches subfolders itself (one level up reads)
ALL = [*NESTED, "merscope", "codex", "stereoseq", "macsima"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("vendors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tech in ("xenium", "visium", *NESTED):
            if not (base / tech).exists():
                (base / tech).mkdir()
                getattr(fake, f"write_{tech}")(base / tech / "run")
    return base


def _read(tech, path):
    list(get_technology(tech).iter_elements(path))


@pytest.mark.parametrize("tech", NESTED)
def test_one_folder_too_high(folders, tech):
    with pytest.raises(ReaderError, match=rf"one folder above {tech} output: pass run/ \(") as info:
        _read(tech, folders / tech)
    assert "The reader said" in str(info.value)
    _read(tech, folders / tech / "run")  # the folder it names reads


@pytest.mark.parametrize("tech", [t for t in ALL if t != "xenium"])
def test_another_technologys_folder(folders, tech):
    with pytest.raises(
        ReaderError, match=r"looks like the output of another technology: xenium \(experiment\.xenium\)"
    ):
        _read(tech, folders / "xenium" / "run")


def test_xenium_reader_on_visium_output(folders):
    with pytest.raises(
        ReaderError, match=r"another technology: visium \(spatial and .*filtered_feature_bc_matrix\.h5\)"
    ):
        _read("xenium", folders / "visium" / "run")


def test_detection_recognises_each_fake(folders):
    for tech in NESTED:
        assert tech in [name for name, _ in detect_technology(folders / tech / "run")], tech
    assert detect_technology(folders) == []
