"""Elements that are known but not loaded yet (read from a store on first access)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tissuestack.elements._meta import ElementMeta, get_meta, has_meta, set_meta

__all__ = ["Deferred"]


@dataclass
class Deferred:
    """A placeholder for an element whose data is loaded on first access.

    Its metadata is known without loading; changes made to ``meta`` before loading (a new transformation, a
    renamed coordinate system) are kept, because the loaded element gets this very metadata object.

    Attributes
    ----------
    kind
        Element kind.
    meta
        Spatial metadata (``None`` for tables).
    loader
        Returns the element.
    describe
        Returns a one-line summary from metadata only, for reprs.
    source
        ``(store location, element key)`` the data is read from.
    """

    kind: str
    meta: ElementMeta | None
    loader: Callable[[], Any]
    describe: Callable[[], str] | None = None
    source: tuple[str, str] | None = None

    def load(self) -> Any:
        element = self.loader()
        if self.meta is not None:
            if self.meta.n_rows is None and has_meta(element):
                self.meta.n_rows = get_meta(element).n_rows  # counted by the reader from file metadata
            set_meta(element, self.meta)
        return element
