"""Format versions and the codec registry: one reader/writer per (element kind, element format version).

Adding a format version is registering one codec; nothing else changes. Codec modules register themselves
when imported (see ``tissuestack.store.__init__``).

Codec signatures
----------------
``read(group, loc, attrs, **options) -> element``
    ``group`` is the element's open ``zarr.Group``, ``loc`` its ``ElementLocation``, ``attrs`` its group
    attributes as a dict. Returns the element, lazy where the kind allows, with spatial metadata attached.
``write(element, parent, loc, version) -> None``
    Creates the element group ``loc.name`` under the type group ``parent`` (an open ``zarr.Group``, e.g.
    ``points/``) and writes ``element`` into it in format ``version``: data first, group attributes last.
    ``loc.name`` may be a temporary name (``.name.tmp-…``) that the caller renames afterwards, so nothing
    written may depend on it.
``describe(group, loc, attrs) -> str``
    Optional: a one-line summary read from metadata only (row counts, geometry types), for reprs of elements
    that are not loaded yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tissuestack.errors import FormatError

__all__ = [
    "CONTAINER_FORMATS",
    "DEFAULT_ELEMENT_VERSIONS",
    "ELEMENT_VERSIONS",
    "Codec",
    "get_codec",
    "register_codec",
]

# container format version -> Zarr format
CONTAINER_FORMATS: dict[str, int] = {"0.1": 2, "0.2": 3}
CONTAINER_FOR_ZARR: dict[int, str] = {2: "0.1", 3: "0.2"}

# what we write by default for each Zarr format (docs/format.md §0)
DEFAULT_ELEMENT_VERSIONS: dict[int, dict[str, str]] = {
    3: {"images": "0.3", "labels": "0.3", "points": "0.2", "shapes": "0.3", "tables": "0.2"},
    2: {"images": "0.2", "labels": "0.2", "points": "0.1", "shapes": "0.2", "tables": "0.1"},
}

# element versions allowed with each Zarr format
ELEMENT_VERSIONS: dict[int, dict[str, tuple[str, ...]]] = {
    3: {"images": ("0.3",), "labels": ("0.3",), "points": ("0.2",), "shapes": ("0.3",), "tables": ("0.2",)},
    2: {
        "images": ("0.1", "0.2"),
        "labels": ("0.1", "0.2"),
        "points": ("0.1",),
        "shapes": ("0.1", "0.2"),
        "tables": ("0.1",),
    },
}


@dataclass(frozen=True)
class Codec:
    kind: str
    version: str
    read: Callable[..., Any] | None = None
    write: Callable[..., None] | None = None
    describe: Callable[..., str] | None = None


_CODECS: dict[tuple[str, str], Codec] = {}


def register_codec(
    kind: str,
    version: str,
    *,
    read: Callable[..., Any] | None = None,
    write: Callable[..., None] | None = None,
    describe: Callable[..., str] | None = None,
) -> None:
    """Register the reader/writer of ``kind`` in element format ``version``."""
    _CODECS[(kind, version)] = Codec(kind, version, read, write, describe)


def get_codec(kind: str, version: str) -> Codec:
    """The codec of ``kind`` in ``version``; a ``FormatError`` listing the known versions otherwise."""
    try:
        return _CODECS[(kind, version)]
    except KeyError:
        known = sorted(v for k, v in _CODECS if k == kind)
        raise FormatError(
            f"unknown {kind} format version {version!r}; this tissuestack reads versions {known}"
        ) from None
