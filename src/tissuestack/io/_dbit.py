"""DBiT-seq (deterministic barcoding in tissue) folders: the barcode grid as squares, the counts table and an
optional image scaled to the grid.

Layout (``docs/vendors.md`` §6.7)::

    <folder>/<dataset>.h5ad              pixels x genes; obs names = B barcode (8 nt) + A barcode (8 nt)
    <folder>/*barcode_list*              tab-separated, no header: A<n> / B<n> (n = 1-2 digits) and an 8-nt barcode
    <folder>/tissue_lowres_image.png     optional, already cropped to the barcoded area

Elements, in the coordinate system ``global`` (image pixels; grid units when there is no image):

* shapes ``<dataset_id>``: one square per pixel of the A x B grid: A along x, B along y, grid position ``n``
  covering ``[n - 1, n)`` times ``scale = max(image height, width) / grid side`` (1 without image), shrunk by
  ``0.125 * scale * border_scale`` on each side when ``border``; indexed by ``pixel_id``;
* image ``<dataset_id>_image`` (identity: the grid is scaled to it);
* table ``table``: the counts, rows sorted by (``array_A``, ``array_B``), ``obs`` ``array_A``, ``array_B``,
  ``region`` = ``sample`` = dataset id and ``pixel_id`` 0..n-1 (the instance key), ``obsm["spatial"]`` =
  (``array_A``, ``array_B``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._steinbock import read_h5ad_file
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "dbit", "iter_dbit"]

COUNTS_PATTERN = re.compile(r".*\.h5ad$")
BARCODES_PATTERN = re.compile(r".*barcode_list.*")
IMAGE_PATTERN = re.compile(r".*tissue_lowres_image\.png$")
POSITION = re.compile(r"^([AB])(\d{1,2})$")
BARCODE = re.compile(r"^[ACGTacgt]{8}$")
TABLE_NAME = "table"
REGION_KEY = "region"
INSTANCE_KEY = "pixel_id"


def _find(path: Path, given: Any, pattern: re.Pattern, what: str, option: str, required: bool) -> Path | None:
    if given is not None:
        file = Path(given)
        file = file if file.is_absolute() else path / file
        if not file.is_file():
            raise ReaderError(f"{file}: {what} ({option}) not found")
        return file
    matches = sorted(f for f in path.iterdir() if f.is_file() and pattern.match(f.name))
    if len(matches) > 1:
        raise ReaderError(
            f"{path}: {len(matches)} files could be the {what} ({[m.name for m in matches]}); pass {option}="
        )
    if not matches:
        if required:
            raise ReaderError(
                f"{path}: no {what} (expected a file matching {pattern.pattern!r}, or pass {option}=)"
            )
        return None
    return matches[0]


def read_barcodes(file: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """(A barcode -> position, B barcode -> position, grid side) from a DBiT barcode list."""
    try:
        frame = pd.read_csv(file, sep="\t", header=None, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ReaderError(
            f"{file}: cannot read the barcode list (expected two tab-separated columns: A1 / B1 ... and an 8-nt "
            f"barcode): {err}"
        ) from err
    if frame.shape[1] != 2:
        raise ReaderError(
            f"{file}: the barcode list has {frame.shape[1]} column(s); expected 2 tab-separated columns (position "
            "such as A1 or B12, and an 8-nt barcode)"
        )
    by_letter: dict[str, dict[str, int]] = {"A": {}, "B": {}}
    numbers: set[int] = set()
    for row, (position, barcode) in enumerate(frame.itertuples(index=False, name=None), start=1):
        match = POSITION.match(position.strip())
        if match is None:
            raise ReaderError(
                f"{file}: line {row}: position {position!r} is not A<n> or B<n> (n of 1-2 digits)"
            )
        if not BARCODE.match(barcode.strip()):
            raise ReaderError(f"{file}: line {row}: barcode {barcode!r} is not 8 nucleotides (A, C, G, T)")
        letter, number = match.group(1), int(match.group(2))
        code = barcode.strip().upper()
        if code in by_letter[letter]:
            raise ReaderError(f"{file}: line {row}: barcode {code} is listed twice for {letter}")
        by_letter[letter][code] = number
        numbers.add(number)
    for letter, codes in by_letter.items():
        if not codes:
            raise ReaderError(f"{file}: no {letter}<n> barcodes; expected the A and the B barcodes")
    return by_letter["A"], by_letter["B"], len(numbers)


def _squares(a: np.ndarray, b: np.ndarray, scale: float, inset: float) -> np.ndarray:
    import shapely

    x0, x1 = (a - 1) * scale + inset, a * scale - inset
    y0, y1 = (b - 1) * scale + inset, b * scale - inset
    ring = np.stack(
        [np.column_stack(v) for v in ((x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0))], axis=1
    )  # (n, 5, 2)
    return shapely.polygons(ring)


@with_folder_hints('dbit')
def iter_dbit(
    path: str | Path,
    *,
    anndata_path: str | Path | None = None,
    barcode_position: str | Path | None = None,
    image_path: str | Path | None = None,
    dataset_id: str | None = None,
    image: bool = True,
    border: bool = True,
    border_scale: float = 1.0,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a DBiT-seq folder: image, grid squares, then the table.

    Parameters are those of :func:`dbit`.
    """
    import geopandas as gpd

    from tissuestack.elements import ShapesModel, TableModel, sanitize_name
    from tissuestack.io._generic import read_image
    from tissuestack.transforms import Identity

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a DBiT-seq folder (*.h5ad, *barcode_list*)")
    counts_file = _find(path, anndata_path, COUNTS_PATTERN, "counts h5ad", "anndata_path", True)
    barcodes_file = _find(path, barcode_position, BARCODES_PATTERN, "barcode list", "barcode_position", True)
    image_file = _find(path, image_path, IMAGE_PATTERN, "image", "image_path", False) if image else None
    assert counts_file is not None and barcodes_file is not None
    if not (np.isfinite(border_scale) and border_scale >= 0):
        raise ReaderError(f"border_scale must be a non-negative number, got {border_scale!r}")
    a_codes, b_codes, side = read_barcodes(barcodes_file)
    if dataset_id is None:
        stem = counts_file.name
        dataset_id = stem[: -len(".h5ad")] if stem.lower().endswith(".h5ad") else counts_file.stem
    dataset_id = sanitize_name(dataset_id)

    adata = read_h5ad_file(counts_file, "DBiT counts")
    names = adata.obs_names.astype(str)
    array_a = names.str.slice(8, 16).str.upper().map(a_codes)
    array_b = names.str.slice(0, 8).str.upper().map(b_codes)
    unknown = names[array_a.isna() | array_b.isna() | (names.str.len() != 16)]
    if len(unknown):
        raise ReaderError(
            f"{counts_file}: obs name(s) {unknown[:5].tolist()} are not a B barcode followed by an A barcode of "
            f"{barcodes_file.name} (expected 16 nucleotides: B = characters 1-8, A = 9-16)"
        )
    obs = adata.obs.copy()
    obs["array_A"] = array_a.to_numpy(dtype=np.int64)
    obs["array_B"] = array_b.to_numpy(dtype=np.int64)
    adata.obs = obs
    if obs[["array_A", "array_B"]].duplicated().any():
        raise ReaderError(
            f"{counts_file}: several rows have the same grid position; expected one row per pixel"
        )
    order = np.lexsort((obs["array_B"].to_numpy(), obs["array_A"].to_numpy()))
    adata = adata[order].copy()
    n = adata.n_obs
    adata.obs[REGION_KEY] = pd.Categorical([dataset_id] * n)
    adata.obs["sample"] = pd.Categorical([dataset_id] * n)
    adata.obs[INSTANCE_KEY] = np.arange(n, dtype=np.int64)
    a = adata.obs["array_A"].to_numpy()
    b = adata.obs["array_B"].to_numpy()
    adata.obsm["spatial"] = np.column_stack([a, b])

    scale = 1.0
    if image_file is not None:
        name = f"{dataset_id}_image"
        element = read_image(image_file, transformations={"global": Identity()}, name=name)
        scale = max(int(element.sizes["y"]), int(element.sizes["x"])) / side
        yield name, element
    inset = 0.125 * scale * border_scale if border else 0.0
    squares = gpd.GeoDataFrame(geometry=gpd.GeoSeries(_squares(a, b, scale, inset)))
    try:
        yield (
            dataset_id,
            ShapesModel.parse(
                squares,
                index=pd.Index(np.arange(n, dtype=np.int64)),
                transformations={"global": Identity()},
                name=dataset_id,
            ),
        )
        yield (
            TABLE_NAME,
            TableModel.parse(
                adata, region=dataset_id, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=TABLE_NAME
            ),
        )
    except ValidationError as err:
        raise ReaderError(f"{counts_file}: {err}") from err


def dbit(
    path: str | Path,
    *,
    anndata_path: str | Path | None = None,
    barcode_position: str | Path | None = None,
    image_path: str | Path | None = None,
    dataset_id: str | None = None,
    image: bool = True,
    border: bool = True,
    border_scale: float = 1.0,
):
    """Read a DBiT-seq folder.

    Parameters
    ----------
    path
        The folder holding the counts (``*.h5ad``), the barcode list and optionally ``tissue_lowres_image.png``.
    anndata_path, barcode_position, image_path
        The files, when the folder has none or several candidates (relative to ``path`` or absolute).
    dataset_id
        Name of the grid shapes (and prefix of the image); default the h5ad file stem.
    image
        Read the image (when present) and scale the grid to it.
    border
        Shrink each square by ``0.125 * border_scale`` of its side on each side, leaving gaps between pixels.
    border_scale
        Scales that border.

    Returns
    -------
    SpatialData
        Shapes ``<dataset_id>`` (squares), image ``<dataset_id>_image`` and table ``table`` annotating the squares
        by ``pixel_id``, in ``global``.

    Raises
    ------
    ReaderError
        A file is missing or ambiguous, the barcode list is malformed (the message names the line), an obs name
        is not two barcodes of the list, or the h5ad is unreadable.
    """
    return collect(
        iter_dbit(
            path,
            anndata_path=anndata_path,
            barcode_position=barcode_position,
            image_path=image_path,
            dataset_id=dataset_id,
            image=image,
            border=border,
            border_scale=border_scale,
        )
    )


TECHNOLOGY = Technology(
    name="dbit",
    summary="DBiT-seq folder: barcode grid as squares (scaled to the optional image), counts table",
    iter_elements=iter_dbit,
    options=(
        Option("anndata_path", str, None, "the counts h5ad (default: the one *.h5ad of the folder)"),
        Option("barcode_position", str, None, "the barcode list (default: the one *barcode_list* file)"),
        Option("image_path", str, None, "the image (default: tissue_lowres_image.png when present)"),
        Option("dataset_id", str, None, "name of the grid shapes (default: the h5ad file stem)"),
        Option("image", bool, True, "read the image and scale the grid to it"),
        Option("border", bool, True, "leave a border between the squares"),
        Option("border_scale", float, 1.0, "scale of that border"),
    ),
)
