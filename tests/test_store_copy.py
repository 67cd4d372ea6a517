"""Copying an opened store (``read_zarr(store).write(out)``, ``tissuestack convert-format``) in a fresh process.

Element writes run in worker threads; the first points element loaded there imports ``distributed`` (through
dask-expr), and while that import runs other writer threads used to look into the half-initialised module
(``AttributeError: partially initialized module 'distributed' has no attribute 'default_client'``). That only
happens in a process that has not imported ``distributed`` yet, so each copy here runs in a new interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tissuestack import read_zarr
from tissuestack.elements import raster_levels
from tissuestack.io import convert, fake

# technology -> (fake-folder writer, its options); the MERSCOPE writer returns the region folder to read
READERS = {
    "xenium": (fake.write_xenium, {"version": "2.0.0"}),
    "visium": (fake.write_visium, {}),
    "visium_hd": (fake.write_visium_hd, {}),
    "merscope": (fake.write_merscope, {}),
    "cosmx": (fake.write_cosmx, {}),
}


def _run(code: str, *args: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "partially initialized" not in res.stderr


def _content(path) -> dict[str, object]:
    """What each element holds, reduced to numbers that any lost or garbled chunk would change."""
    sdata = read_zarr(path)
    out: dict[str, object] = {}
    for name, element in sdata.items():
        kind = sdata.kind_of(name)
        if kind in ("images", "labels"):
            levels = raster_levels(element)
            out[name] = [(lvl.shape, float(lvl.data.astype("float64").sum().compute())) for lvl in levels]
        elif kind == "points":
            frame = element.compute()
            out[name] = (len(frame), float(frame["x"].sum()), float(frame["y"].sum()), list(frame.columns))
        elif kind == "shapes":
            out[name] = (len(element), float(element.geometry.area.sum()), list(element.index[:5]))
        else:
            x = element.X
            total = float(x.sum()) if x is not None else 0.0
            out[name] = (element.shape, total, list(element.obs_names[:5]))
    return out


@pytest.mark.parametrize("technology", sorted(READERS))
def test_copy_converted_store_in_fresh_processes(tmp_path, technology):
    write, options = READERS[technology]
    folder = write(tmp_path / "vendor", **options)
    source = convert(technology, folder, tmp_path / "source.zarr", progress=False)
    # Python API, Zarr v2, first write of a fresh process
    _run(
        """
        import sys
        import tissuestack as ts
        ts.read_zarr(sys.argv[1]).write(sys.argv[2], zarr_format=2)
        """,
        str(source),
        str(tmp_path / "copy_v2.zarr"),
    )
    # the command line, from the v2 copy back to v3, again in a fresh process
    _run(
        "from tissuestack.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
        "convert-format",
        str(tmp_path / "copy_v2.zarr"),
        str(tmp_path / "copy_v3.zarr"),
        "--zarr-format",
        "3",
    )
    expected = _content(source)
    assert expected, "the converted store has no elements"
    for copy in ("copy_v2.zarr", "copy_v3.zarr"):
        got = _content(tmp_path / copy)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_equal(got[name], value, err_msg=f"{copy}: {name}")


RACE = """
import importlib.abc, importlib.machinery, sys, threading, time

class SlowLoader(importlib.abc.Loader):
    # runs distributed's own loader, but only after a pause during which the half-initialised module is
    # already in sys.modules: the window in which another thread used to look into it
    def __init__(self, inner):
        self.inner = inner
    def create_module(self, spec):
        return self.inner.create_module(spec)
    def exec_module(self, module):
        started.set()
        time.sleep(0.5)
        self.inner.exec_module(module)

class SlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "distributed":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = SlowLoader(spec.loader)
        return spec

started = threading.Event()
sys.meta_path.insert(0, SlowFinder())
from tissuestack import _compute

errors = []
def importer():  # as dask-expr does it, from a writer thread
    try:
        import distributed  # noqa: F401
    except Exception as err:
        errors.append(err)
thread = threading.Thread(target=importer)
thread.start()
started.wait(10)
assert "distributed" in sys.modules  # half-initialised, being executed by the other thread

results = []
def worker():
    try:
        results.append(_compute.scheduler())
        results.append(_compute.import_distributed())
    except Exception as err:
        errors.append(err)
workers = [threading.Thread(target=worker) for _ in range(4)]
for w in workers:
    w.start()
for w in workers + [thread]:
    w.join(30)
assert not errors, errors
assert len(results) == 8
assert all(hasattr(r, "default_client") for r in results[1::2])   # the complete module
assert all(callable(r) for r in results[0::2])                      # the local scheduler: no Client exists
print("ok")
"""


def test_scheduler_waits_for_a_distributed_import_in_another_thread():
    pytest.importorskip("distributed")
    res = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ok"
