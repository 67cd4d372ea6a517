"""Parts of a table that is not loaded yet, read straight from its store.

Loading a table reads every slot: its obs index (one Python string per row), every obs column, X, ... and checks
the index for uniqueness: about 1 s for 1M rows. Colouring a plot by an obs column needs only that column, the
region and instance columns, the table's ``uns`` and the names of its columns and genes.
:class:`StoredTable` reads exactly those, each once, for a table the container still holds as
:class:`~tissuestack.elements._deferred.Deferred`. Its ``uns`` is a plain dict that callers may write to (scanpy's
``{key}_colors``); the container merges it into the table when the table is loaded, and loads such tables before
writing them, so nothing written there is lost.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tissuestack.elements import TABLE_ATTRS_KEY, table_keys_from_uns

__all__ = ["StoredTable"]


class StoredTable:
    """One not-yet-loaded table of a store (see the module notes). Any failure to read a part raises; callers
    then load the whole table, which reports the damage precisely."""

    def __init__(self, group: Any):
        self._group = group
        self._uns: dict | None = None
        self._obs_columns: list[str] | None = None
        self._var_names: pd.Index | None = None
        self._columns: dict[str, Any] = {}

    @property
    def uns_read(self) -> bool:
        """Whether :attr:`uns` was read (and so may hold changes to merge)."""
        return self._uns is not None

    @property
    def uns(self) -> dict:
        if self._uns is None:
            import anndata as ad

            node = self._group["uns"] if "uns" in self._group else None
            uns = dict(ad.io.read_elem(node)) if node is not None else {}
            attrs = uns.get(TABLE_ATTRS_KEY)
            if isinstance(attrs, dict):  # arrays of strings -> lists, as the table reader does
                uns[TABLE_ATTRS_KEY] = {
                    k: (v.tolist() if hasattr(v, "tolist") and getattr(v, "ndim", 0) else v) for k, v in attrs.items()
                }
            self._uns = uns
        return self._uns

    def keys(self) -> tuple[list[str] | None, str | None, str | None]:
        """``(regions, region_key, instance_key)`` as :func:`tissuestack.elements.get_table_keys` gives them."""
        return table_keys_from_uns(self.uns)

    @property
    def obs_columns(self) -> list[str]:
        if self._obs_columns is None:
            order = self._group["obs"].attrs.get("column-order", [])
            self._obs_columns = [str(c) for c in (order.tolist() if hasattr(order, "tolist") else order)]
        return self._obs_columns

    @property
    def var_names(self) -> pd.Index:
        if self._var_names is None:
            import anndata as ad

            var = self._group["var"]
            index_key = var.attrs.get("_index", "_index")
            self._var_names = pd.Index(ad.io.read_elem(var[index_key]))
        return self._var_names

    def has(self, key: str) -> bool:
        """Whether ``key`` is an obs column or a var name."""
        return key in self.obs_columns or key in self.var_names

    def obs_column(self, key: str) -> Any:
        """One obs column (an array, or a ``pandas.Categorical``)."""
        if key not in self._columns:
            import anndata as ad

            if key not in self.obs_columns:
                raise KeyError(f"no obs column {key!r}")
            self._columns[key] = ad.io.read_elem(self._group["obs"][key])
        return self._columns[key]
