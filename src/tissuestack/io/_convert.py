"""Streaming conversion of vendor output (or a generic file) into a SpatialData Zarr store.

The technology's reader yields ``(name, element)`` pairs; each element is written to the store as soon as it
is yielded and then dropped, so no more than one element is ever held (large points and rasters stay lazy and
are streamed by the store writers). Everything goes into a hidden temporary sibling of the output, which is
swapped into place only when the whole stream has been written: a failure never leaves a half store at the
output, nor destroys the store it was replacing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from tissuestack.errors import StoreError, ValidationError
from tissuestack.io._technology import Technology, get_technology

__all__ = ["convert"]


def convert(
    technology: str | Technology,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    zarr_format: int = 3,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Convert ``input`` read by ``technology`` into a SpatialData Zarr store at ``output``, streaming.

    Parameters
    ----------
    technology
        A registered technology name (``tissuestack convert --list``; e.g. ``"xenium"``, ``"image"``) or a
        :class:`~tissuestack.io.Technology`.
    input
        What the reader reads: a vendor output folder or a file.
    output
        The store to create (local path or fsspec URL).
    overwrite
        Replace an existing store at ``output`` (only once the new one is complete).
    progress
        Show a progress bar counting written elements (default: when stderr is a terminal).
    zarr_format
        3 (default; SpatialData >= 0.6) or 2 (SpatialData >= 0.4).
    storage_options
        fsspec options for a remote ``output``.
    **options
        The technology's reader options.

    Returns
    -------
    str
        The location of the written store.

    Raises
    ------
    ReaderError
        The input is missing files or malformed (raised by the reader, possibly mid-way; nothing is left at
        ``output`` then).
    StoreError
        ``output`` exists and ``overwrite`` is False, or it is not a Zarr store.
    """
    from tqdm.auto import tqdm

    from tissuestack.elements import check_name, get_kind
    from tissuestack.store._io import _swap, consolidate, refuse_non_store, write_element, write_store
    from tissuestack.store._root import StoreRoot

    tech = get_technology(technology) if isinstance(technology, str) else technology
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    root = StoreRoot.open(output, storage_options=storage_options, read_only=False)
    if root.fs.exists(root.path):
        refuse_non_store(root)
        if not overwrite:
            raise StoreError(f"{root.url} exists; pass overwrite=True (--overwrite) to replace it")

    tmp = root.sibling("tmp")
    show = sys.stderr.isatty() if progress is None else bool(progress)
    stream = None
    written: dict[str, str] = {}  # lower-cased name -> "kind/name"
    try:
        # an empty store (no consolidated metadata yet: each element write would otherwise rewrite it)
        write_store(
            {},
            {},
            tmp.url,
            zarr_format=zarr_format,
            consolidate_metadata=False,
            storage_options=storage_options,
        )
        stream = tech.iter_elements(input, **options)
        # the reader yields elements one by one and their number is not known in advance: count them, with the
        # element being written, instead of a rate and a total
        with tqdm(
            desc=f"convert {tech.name}",
            unit="element",
            disable=not show,
            file=sys.stderr,
            bar_format="{desc}: {n_fmt} element(s) written [{elapsed}]{postfix}",
        ) as bar:
            for name, element in stream:
                kind = get_kind(element)
                check_name(name, f"{kind} element name")
                key = f"{kind}/{name}"
                if name.lower() in written:
                    raise ValidationError(
                        f"the {tech.name} reader yielded {key} but already wrote {written[name.lower()]} "
                        "(element names are unique ignoring case)"
                    )
                bar.set_postfix_str(key)
                write_element(tmp.url, kind, name, element, storage_options=storage_options)
                written[name.lower()] = key
                del element  # the next element may be large: hold one at a time
                bar.update(1)
        consolidate(tmp)
        _swap(root, tmp)  # an existing store is moved aside first, deleted last
    except BaseException:
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # release the reader's open files
        with contextlib.suppress(Exception):
            tmp.rm()
        raise
    return root.url
