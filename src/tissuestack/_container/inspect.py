"""Inspecting stores from the command line: ``tissuestack info`` and ``tissuestack validate``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

from tissuestack._container.io import read_zarr
from tissuestack._container.summary import summarize
from tissuestack.elements import KINDS, get_table_keys, parse_as, raster_levels
from tissuestack.store import StoreRoot
from tissuestack.store import _io as store_io

__all__ = ["print_info", "validate_store"]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _size(root: StoreRoot, *parts: str) -> int | None:
    try:
        return int(root.fs.du(root.join(*parts), total=True))
    except Exception:  # sizes are informative only; some filesystems cannot list (plain HTTP)
        return None


def print_info(
    location: str, *, as_json: bool = False, storage_options: Mapping[str, Any] | None = None
) -> int:
    sdata = read_zarr(location, storage_options=storage_options)
    if as_json:
        print(json.dumps(summarize(sdata), indent=1, sort_keys=True, default=str))
        return 0
    info = sdata._store_info
    root = sdata._root
    print(repr(sdata))
    print()
    total = _size(root)
    print(
        f"format: Zarr v{info['zarr_format']}, container {info['container_version']}, "
        f"consolidated metadata: {'yes' if info['consolidated'] else 'no'}"
        + (f", {_human(total)} on disk" if total is not None else "")
    )
    for key, version in info["element_versions"].items():
        size = _size(root, *key.split("/"))
        print(f"  {key}: format {version}" + (f", {_human(size)}" if size is not None else ""))
    return 0


def validate_store(location: str, *, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem found in a store, as human-readable lines (empty list: the store is valid)."""
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sdata = read_zarr(location, on_bad_elements="warn", storage_options=storage_options)
        except Exception as err:  # the store itself cannot be opened
            return [f"{type(err).__name__}: {err}"]
    problems.extend(str(w.message) for w in caught)
    for kind in KINDS:
        for name in list(sdata._store[kind]):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    element = sdata._get(kind, name)
                    parse_as(kind, element, name=name)
                    if kind == "points":
                        element.head(1, npartitions=element.npartitions)  # every file's data pages decode
                    elif kind in ("images", "labels"):
                        for level in raster_levels(element):
                            level.data[(slice(0, 1),) * level.ndim].compute()
            except Exception as err:
                problems.append(f"{kind}/{name}: {type(err).__name__}: {err}")
    for name, table in sdata.items(["tables"]):
        region, _, _ = get_table_keys(table)
        for r in region or []:
            if r not in sdata:
                problems.append(f"tables/{name}: annotates {r!r}, which is not an element of the store")
    root = sdata._root
    try:
        group = root.open_group(use_consolidated=False)
        if "labels" in group:
            listed = set(store_io.labels_list(group["labels"]))
            present = {n for n, _ in group["labels"].groups() if not n.startswith(".")}
            if present - listed:
                problems.append(f"labels/: elements {sorted(present - listed)} missing from the labels list")
        if sdata._store_info.get("consolidated"):
            fresh = set(store_io.elements_on_disk(group).values())
            seen = set(sdata._store_info["element_versions"])
            if fresh - seen:
                problems.append(f"consolidated metadata is stale: it lacks {sorted(fresh - seen)}")
            consolidated = root.open_group(use_consolidated=True).metadata.consolidated_metadata
            markers = ("zarr.json",) if group.metadata.zarr_format == 3 else (".zgroup", ".zarray")
            for key in sorted(consolidated.flattened_metadata if consolidated else ()):
                if not any(root.exists(*key.split("/"), m) for m in markers):
                    problems.append(
                        f"consolidated metadata lists {key}, whose metadata file is missing on disk"
                    )
    except Exception as err:
        problems.append(f"{root.url}: {type(err).__name__}: {err}")
    return problems
