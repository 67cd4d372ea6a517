"""Inspecting stores from the command line: ``tissuestack info`` and ``tissuestack validate``."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tissuestack._compute import scheduler
from tissuestack._container.io import from_opened
from tissuestack._container.summary import summarize
from tissuestack.elements import KINDS, get_kind_protocol, get_table_keys, raster_levels
from tissuestack.errors import FormatError, StoreError
from tissuestack.store import ElementLocation, StoreRoot
from tissuestack.store import _io as store_io
from tissuestack.store._check import (
    StoreProblem,
    element_files,
    metadata_of_store,
    metadata_problems,
    stale_temporary_problems,
)
from tissuestack.store._points import points_row_group_stats
from tissuestack.store._points_files import relative_path
from tissuestack.store._root import quiet_zarr

__all__ = ["StoreProblem", "print_info", "validate_store"]


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
    """Print what a store holds; returns the exit status: 0, or 1 when some element is broken.

    Broken elements (unreadable metadata, unknown format version, ...) are listed as broken after the others
    instead of aborting; ``tissuestack validate`` says more about them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = store_io.open_store(location, on_bad_elements="warn", storage_options=storage_options)
    sdata = from_opened(opened)
    broken = opened.broken
    if as_json:
        print(json.dumps(summarize(sdata), indent=1, sort_keys=True, default=str))
        for key, why in broken.items():
            print(f"tissuestack: {key} is broken and left out of the summary: {why}", file=sys.stderr)
        return 1 if broken else 0
    info = sdata._store_info
    root = sdata._root
    print(repr(sdata))
    if broken:
        print("broken elements (left out above; run 'tissuestack validate' for details):")
        for key, why in broken.items():
            print(f"  {key}: BROKEN: {why}")
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
    for key in broken:
        print(f"  {key}: BROKEN")
    return 1 if broken else 0


def validate_store(
    location: str | os.PathLike,
    *,
    deep: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[StoreProblem]:
    """Every problem found in a store, in one run (an empty list: the store is valid).

    Checks, for every element: that each metadata document parses (read from the files, so consolidated
    metadata cannot hide a truncated one); that every chunk file a raster's shape implies exists (from a
    listing, without reading data); that every Parquet footer of points and shapes reads; that the element
    loads and satisfies its model. Then table links (annotated elements that do not exist, instance ids the
    element does not have), the labels list, consolidated metadata, and hidden temporaries left by
    interrupted writes beside and inside the store.

    With ``deep=True`` every raster chunk and every Parquet row group is decoded too, and table ids are
    compared with the values of annotated labels (which reads the labels).

    Returns
    -------
    list of StoreProblem
        Each names the element (``"kind/name"``) and the file concerned and says what to do. Problems with
        ``note=True`` may be intended (chunks another writer skipped because they held only the fill value)
        and do not make ``tissuestack validate`` fail.
    """
    root = StoreRoot.open(location, storage_options=storage_options, read_only=True)
    problems = stale_temporary_problems(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opened = store_io.open_store(root.url, on_bad_elements="warn", storage_options=storage_options)
        except Exception as err:  # the store itself cannot be opened
            return [*problems, StoreProblem(None, None, f"{type(err).__name__}: {err}")]
    sdata = from_opened(opened)
    strict_chunks = _written_by_tissuestack(opened)
    problems.extend(metadata_problems(root, metadata_of_store(root), None))
    loaded: dict[str, Any] = {}
    on_disk = _element_keys(root, opened)
    for key in on_disk:
        kind, name = key.split("/", 1)
        loc = ElementLocation(root, kind, name)
        files = element_files(loc)
        found = metadata_problems(root, [f"{key}/{f}" for f in files], key)
        protocol = get_kind_protocol(kind)
        if protocol.load_reads_files:  # files checked directly, whatever their metadata says
            found.extend(protocol.file_problems(loc, files, strict=strict_chunks, deep=deep))
        elif key not in opened.broken:  # chunks are checked against readable metadata only
            try:
                found.extend(protocol.file_problems(loc, files, strict=strict_chunks, deep=deep))
            except Exception as err:
                found.append(StoreProblem(key, None, f"{type(err).__name__}: {err}", _fix_for(err)))
        problems.extend(found)
        if key in opened.broken:
            if not any(not p.note for p in found):  # otherwise the broken file is already named
                why = _without_prefix(opened.broken[key], key)
                problems.append(StoreProblem(key, None, why, _fix_for(StoreError())))
            continue
        if name not in opened.elements.get(kind, {}) or (protocol.load_reads_files and found):
            continue  # loading would only repeat the same problem
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                element = sdata._get(kind, name)
                protocol.parse(element, name)
            loaded[key] = element
        except Exception as err:
            problems.append(StoreProblem(key, None, _without_prefix(str(err), key), _fix_for(err)))
            continue
        value_check = _VALUE_CHECKS.get(kind)
        if value_check is not None:
            problems.extend(value_check(loc, element, deep=deep))
    for key, table in loaded.items():
        if key.startswith("tables/"):
            problems.extend(_table_link_problems(sdata, key, table, loaded, deep=deep))
    problems.extend(_structure_problems(sdata, root, on_disk))
    return problems


def _coordinate_problems(loc: ElementLocation, element: Any, *, deep: bool) -> list[StoreProblem]:
    """Points whose coordinates are NaN or infinite: from the row-group statistics (infinities), and with
    ``deep`` from the coordinate columns themselves (NaN too, which statistics leave out)."""
    axes = [a for a in ("x", "y", "z") if a in element.columns]
    fix = (
        "drop those rows (df[np.isfinite(df.x) & np.isfinite(df.y)]) and write the element again; "
        "get_extent and aggregation skip or misplace them"
    )
    if deep:

        def count(df: pd.DataFrame) -> pd.Series:
            bad = ~np.isfinite(df[axes].to_numpy(dtype=np.float64))
            return pd.Series(bad.sum(axis=0), index=axes)

        counts = (
            element[axes].map_partitions(count, meta=pd.Series(dtype=np.int64)).compute(scheduler=scheduler())
        )
        totals = counts.groupby(level=0).sum()
        bad = {a: int(totals.get(a, 0)) for a in axes if int(totals.get(a, 0))}
        if bad:
            what = ", ".join(f"{n:,} in {a!r}" for a, n in bad.items())
            return [StoreProblem(loc.key, None, f"NaN or infinite coordinates: {what}", fix)]
        return []
    try:
        stats = points_row_group_stats(loc)
    except Exception:
        return []  # unreadable footers are reported by points_parquet_problems
    cols = [c for c in stats.columns if c.endswith(("_min", "_max"))]
    values = stats[cols].to_numpy()
    infinite = np.isinf(values).any(axis=1)
    if infinite.any():
        files = sorted({relative_path(loc, f) for f in stats.loc[infinite, "file"]})
        return [
            StoreProblem(
                loc.key,
                files[0],
                f"infinite coordinates in {int(infinite.sum())} row group(s) of {len(files)} file(s) "
                "(validate --deep also counts NaN values)",
                fix,
            )
        ]
    return []


# checks of the values of a loaded element, per kind (the others have none beyond their model's validate)
_VALUE_CHECKS = {"points": _coordinate_problems}


def _written_by_tissuestack(opened: store_io.OpenedStore) -> bool:
    try:
        with quiet_zarr():
            attrs = opened.root.open_group().attrs.asdict()
    except Exception:
        return False
    version = (attrs.get("spatialdata_attrs") or {}).get("spatialdata_software_version", "")
    return str(version).startswith("tissuestack")


def _element_keys(root: StoreRoot, opened: store_io.OpenedStore) -> list[str]:
    """Every element of the store: what opening found (good or broken) and what a listing of the folders finds
    (consolidated metadata may hide an element whose own metadata is broken)."""
    keys = set(opened.versions) | set(opened.broken)
    for kind in KINDS:
        for entry in _list_dir(root, kind):
            if (
                not entry.startswith(".")
                and root.exists(kind, entry)
                and root.fs.isdir(root.join(kind, entry))
            ):
                if any(root.exists(kind, entry, m) for m in ("zarr.json", ".zgroup", ".zattrs")):
                    keys.add(f"{kind}/{entry}")
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(keys, key=lambda k: (order[k.split("/", 1)[0]], k))


def _list_dir(root: StoreRoot, *parts: str) -> list[str]:
    try:
        return [
            str(e).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
            for e in root.fs.ls(root.join(*parts), detail=False)
        ]
    except (FileNotFoundError, NotADirectoryError, OSError):
        return []


def _without_prefix(message: str, key: str) -> str:
    for prefix in (f"{key}: ", f"{key} in "):
        if message.startswith(prefix):
            return message[len(prefix) :] if prefix.endswith(": ") else message
    return message


def _fix_for(err: Exception) -> str:
    if isinstance(err, StoreError | FormatError):
        return "restore the files from a copy, or rewrite the element from its source"
    return "fix the element in memory (its model's parse/validate says how) and write it again"


def _instances(kind: str, element: Any, *, deep: bool) -> np.ndarray | None:
    """The instance ids of an element that tables refer to (labels: their values, read only with ``deep``;
    points: not checked)."""
    protocol = get_kind_protocol(kind)
    if not protocol.filters_tables or (protocol.is_raster and not deep):
        return None
    if protocol.is_raster:
        values = np.unique(np.asarray(raster_levels(element)[0].data))
        return values[values != 0]
    return np.asarray(protocol.instances(element, None))


def _table_link_problems(
    sdata: Any, key: str, table: Any, loaded: Mapping[str, Any], *, deep: bool
) -> list[StoreProblem]:
    name = key.split("/", 1)[1]
    region, region_key, instance_key = get_table_keys(table)
    out = []
    for r in region or []:
        if r not in sdata:
            out.append(
                StoreProblem(
                    key,
                    None,
                    f"annotates {r!r}, which is not an element of the store",
                    f"retarget it (sdata.set_table_annotates({name!r}, ...) then sdata.write_element({name!r}, "
                    f"overwrite=True)), or add an element {r!r}, or delete the table",
                )
            )
            continue
        kind = sdata.kind_of(r)
        element = loaded.get(f"{kind}/{r}")
        if element is None or instance_key not in table.obs or region_key not in table.obs:
            continue
        ids = _instances(kind, element, deep=deep)
        if ids is None:
            continue
        rows = (table.obs[region_key] == r).to_numpy()
        wanted = pd.Index(table.obs[instance_key].to_numpy()[rows])
        unknown = wanted[~wanted.isin(pd.Index(ids))]
        if len(unknown):
            sample = ", ".join(repr(v) for v in unknown.unique()[:5].tolist())
            share = "none" if len(unknown) == len(wanted) else f"{len(unknown)} of {len(wanted)}"
            out.append(
                StoreProblem(
                    key,
                    None,
                    f"{share} of its rows for {r!r} match no instance of {kind}/{r} (obs[{instance_key!r}] "
                    f"values not among the {kind} ids, e.g. {sample})",
                    f"drop or fix those rows (ts.match_table_to_element(sdata, {r!r}) keeps the matching rows) "
                    f"and write the table again",
                )
            )
    return out


def _structure_problems(sdata: Any, root: StoreRoot, on_disk: list[str]) -> list[StoreProblem]:
    """The labels list and consolidated metadata against the elements ``on_disk`` (from a listing)."""
    problems = []
    zarr_format = sdata._store_info["zarr_format"]
    present = {k.split("/", 1)[1] for k in on_disk if k.startswith("labels/")}
    if present:
        labels_meta = "labels/" + ("zarr.json" if zarr_format == 3 else ".zattrs")
        try:
            with quiet_zarr():
                listed = set(store_io.labels_list(root.open_group(use_consolidated=False)["labels"]))
        except Exception as err:
            listed = None
            problems.append(StoreProblem(None, labels_meta, f"cannot read the labels list: {err}"))
        if listed is not None and present - listed:
            problems.append(
                StoreProblem(
                    None,
                    labels_meta,
                    f"labels {sorted(present - listed)} are missing from the labels list",
                    "sdata.write_element(...) of each such labels element adds it to the list",
                )
            )
    if not sdata._store_info.get("consolidated"):
        return problems
    marker = "zarr.json" if zarr_format == 3 else ".zmetadata"
    fix = "rewrite it with sdata.write_metadata() (or tissuestack convert-format)"
    seen = set(sdata._store_info["element_versions"]) | set(sdata._store_info.get("broken", {}))
    lacking = sorted(set(on_disk) - seen)
    if lacking:
        problems.append(
            StoreProblem(None, marker, f"consolidated metadata is stale: it lacks {lacking}", fix)
        )
    try:
        consolidated = root.open_group(use_consolidated=True).metadata.consolidated_metadata
    except Exception as err:
        return [*problems, StoreProblem(None, marker, f"cannot read consolidated metadata: {err}", fix)]
    markers = ("zarr.json",) if zarr_format == 3 else (".zgroup", ".zarray")
    for key in sorted(consolidated.flattened_metadata if consolidated else ()):
        if not any(root.exists(*key.split("/"), m) for m in markers):
            problems.append(
                StoreProblem(
                    None, marker, f"consolidated metadata lists {key}, whose metadata file is missing", fix
                )
            )
    return problems
