"""Recognise vendor output folders from a few marker files, to say what a folder is when a reader fails on it.

A reader pointed at the wrong folder (one level too high, or another technology's output) would otherwise
report the first file it misses and hint at its own options. :func:`with_folder_hints` wraps a reader's
element generator: when it fails before yielding anything, the error says what that folder looks like — the
same technology one folder down, or another technology — and what to do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tissuestack.errors import ReaderError

__all__ = ["detect_technology", "with_folder_hints"]


def _first(folder: Path, *patterns: str) -> str | None:
    for pattern in patterns:
        for hit in folder.glob(pattern):
            return hit.relative_to(folder).as_posix()
    return None


def _all(folder: Path, *patterns: str) -> str | None:
    hits = [_first(folder, p) for p in patterns]
    return " and ".join(hits) if all(hits) else None  # type: ignore[arg-type]


# technology -> marker test: the marker files found (for the message), or None. Cheap: a few globs, no reads.
_SIGNATURES: dict[str, Callable[[Path], str | None]] = {
    "xenium": lambda f: _first(f, "experiment.xenium"),
    "visium_hd": lambda f: _first(f, "binned_outputs", "*feature_slice.h5"),
    "visium": lambda f: (
        None if (f / "binned_outputs").exists() else _all(f, "spatial", "*filtered_feature_bc_matrix.h5")
    ),
    "merscope": lambda f: _first(f, "detected_transcripts.csv*", "cell_by_gene.csv*"),
    "cosmx": lambda f: _first(f, "*_exprMat_file.csv*", "*_tx_file.csv*"),
    "codex": lambda f: _first(f, "*.fcs", "processed/segm"),
    "stereoseq": lambda f: _first(f, "041.cellcut", "04.tissuecut", "outs/feature_expression", "*.gef"),
    "steinbock": lambda f: _all(f, "ome", "masks*"),
    "seqfish": lambda f: _first(f, "*_CellCoordinates.csv"),
    "dbit": lambda f: _all(f, "barcode*.txt", "*.h5ad"),
    "curio": lambda f: _all(f, "*_anndata.h5ad", "*_cluster_assignment.txt"),
    "mcmicro": lambda f: _all(f, "markers.csv", "registration"),
    "macsima": lambda f: _first(f, "CYC-*_SCN-*.tif*"),
}


def detect_technology(folder: str | Path) -> list[tuple[str, str]]:
    """``(technology, marker files)`` for every technology whose output ``folder`` looks like."""
    path = Path(folder)
    if not path.is_dir():
        return []
    out = []
    for name, test in _SIGNATURES.items():
        try:
            marker = test(path)
        except OSError:
            marker = None
        if marker:
            out.append((name, marker))
    return out


def folder_hint(technology: str, folder: Any) -> str | None:
    """What ``folder`` looks like, when that explains why the ``technology`` reader failed on it."""
    try:
        path = Path(folder)
    except TypeError:
        return None
    if not path.is_dir():
        return None
    here = detect_technology(path)
    if any(name == technology for name, _ in here):
        return None  # it is such a folder: the reader's own message is the right one
    test = _SIGNATURES.get(technology)
    if test is not None:
        below = []
        for sub in sorted(p for p in path.iterdir() if p.is_dir())[:200]:
            try:
                marker = test(sub)
            except OSError:
                marker = None
            if marker:
                below.append(f"{sub.name}/ ({marker})")
        if below:
            return (
                f"it is one folder above {technology} output: pass {'one of ' if len(below) > 1 else ''}"
                f"{', '.join(below[:5])} instead"
            )
    if here:
        others = "; ".join(f"{name} ({marker})" for name, marker in here)
        first = here[0][0]
        return (
            f"it looks like the output of another technology: {others}. Read it with tissuestack.io.{first}(...) "
            f"or `tissuestack convert {first} ...`"
        )
    return None


def with_folder_hints(
    technology: str,
) -> Callable[[Callable[..., Iterator[Any]]], Callable[..., Iterator[Any]]]:
    """Decorate a reader's element generator: a ``ReaderError`` raised before the first element says what the
    folder looks like when it is the wrong one."""

    def decorate(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(fn)
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            stream = fn(path, *args, **kwargs)
            try:
                first = next(stream)
            except StopIteration:
                return
            except ReaderError as err:
                hint = folder_hint(technology, path)
                if hint is None:
                    raise
                raise ReaderError(
                    f"{path}: not {_article(technology)} {technology} folder: {hint}. (The reader said: {err})"
                ) from err
            yield first
            yield from stream

        return wrapper

    return decorate


def _article(technology: str) -> str:
    return "an" if technology[0] in "aeiou" else "a"
