"""The contract every vendor reader follows, and the registry the ``convert`` command lists.

A reader is written once as a generator, ``iter_elements(path, **options)``, that yields ``(name, element)``
pairs in write order (a table only after the elements it annotates). Every element is already parsed by its
model (transformations set) and large data stay lazy (dask arrays over the vendor TIFFs, dask frames over the
vendor Parquet/CSV), so that

* ``collect(...)`` builds a :class:`~tissuestack.SpatialData` from it (the ``tissuestack.io.<technology>``
  functions), and
* the streaming converter writes each element to the store as soon as it is yielded and then drops it, so
  no more than one element's working set is ever held in memory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Option", "Technology", "collect", "get_technology", "technologies"]

ElementStream = Iterator[tuple[str, Any]]


@dataclass(frozen=True)
class Option:
    """One keyword option of a reader, as shown by ``tissuestack convert --list`` and parsed by the CLI.

    ``type`` is one of ``bool``, ``int``, ``float``, ``str``, ``tuple`` (comma-separated on the command line).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Technology:
    """A registered reader: ``iter_elements(path, **options)`` yields ``(name, element)`` pairs."""

    name: str
    summary: str
    iter_elements: Callable[..., ElementStream]
    options: tuple[Option, ...] = field(default_factory=tuple)

    def read(self, path: Any, **options: Any):
        """Read everything into a SpatialData (lazy where the data are large)."""
        return collect(self.iter_elements(path, **options))


# technology name -> module defining a module-level ``TECHNOLOGY``; imported on first use only
_MODULES: dict[str, str] = {
    "xenium": "tissuestack.io._xenium",
    "visium": "tissuestack.io._visium",
    "visium_hd": "tissuestack.io._visium_hd",
    "merscope": "tissuestack.io._merscope",
    "cosmx": "tissuestack.io._cosmx",
    "codex": "tissuestack.io._codex",
    "stereoseq": "tissuestack.io._stereoseq",
    "image": "tissuestack.io._generic",
    "shapes": "tissuestack.io._generic",
    "points": "tissuestack.io._generic",
    "steinbock": "tissuestack.io._steinbock",
    "seqfish": "tissuestack.io._seqfish",
    "dbit": "tissuestack.io._dbit",
    "curio": "tissuestack.io._curio",
    "mcmicro": "tissuestack.io._mcmicro",
    "macsima": "tissuestack.io._macsima",
}


def _technology_attr(name: str) -> str:
    return "TECHNOLOGY" if name not in ("image", "shapes", "points") else f"{name.upper()}_TECHNOLOGY"


def get_technology(name: str) -> Technology:
    """The registered technology ``name``; a ``KeyError`` listing the known ones otherwise."""
    key = name.lower().replace("-", "_")
    if key not in _MODULES:
        raise KeyError(f"unknown technology {name!r}; known: {', '.join(sorted(_MODULES))}")
    module = importlib.import_module(_MODULES[key])
    return getattr(module, _technology_attr(key))


def technologies() -> dict[str, Technology]:
    """Every registered technology, by name (imports each reader module)."""
    return {name: get_technology(name) for name in _MODULES}


def collect(stream: Iterable[tuple[str, Any]]):
    """Build a SpatialData from a stream of ``(name, element)`` pairs."""
    from tissuestack._container import SpatialData

    sdata = SpatialData()
    for name, element in stream:
        sdata[name] = element
    return sdata
