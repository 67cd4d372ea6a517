"""Keeping the table rows whose instances survive an operation (a query, a subset)."""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from tissuestack.elements import get_table_keys, table_rows

__all__ = ["filter_table_by_instances"]


def filter_table_by_instances(
    table: ad.AnnData, instances: Mapping[str, pd.Index | np.ndarray], *, name: str | None = None
) -> ad.AnnData | None:
    """Rows of ``table`` whose (region, instance) is in ``instances`` (region -> surviving instance ids).

    Regions the table annotates that are missing from ``instances`` lose all their rows; the ``region`` list
    is reduced to the regions that keep rows. Returns ``None`` when no row survives (or the table annotates
    nothing). Vectorized: one ``isin`` per region. Works for any instance id dtype (strings, non-contiguous
    integers) and keeps the table's row order.
    """
    region, region_key, instance_key = get_table_keys(table)
    if region is None:
        return None
    obs = table.obs
    keep = np.zeros(table.n_obs, dtype=bool)
    region_values = obs[region_key].astype(object).to_numpy()
    ids = obs[instance_key]
    for r, surviving in instances.items():
        if r not in region:
            continue
        in_region = region_values == r
        if not in_region.any():
            continue
        surviving = pd.Index(surviving)
        values = ids.to_numpy()[in_region]
        if surviving.dtype != object and pd.api.types.is_object_dtype(values):
            surviving = surviving.astype(str)
        keep[in_region] = pd.Index(values).isin(surviving)
    if not keep.any():
        return None
    return table_rows(table, keep, name=name)
