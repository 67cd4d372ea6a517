"""steinbock (imaging mass cytometry) output folders: per-image OME-TIFFs, cell masks and the cell table.

Layout (``docs/vendors.md`` §6.5)::

    <steinbock folder>/
      cells.h5ad                      ``steinbock export anndata`` (obs names "<image> <cell id>")
      ome/<image>.ome.tiff            (c, y, x) images, channel names in the OME-XML
      masks_deepcell/<image>.tiff     cell masks (or masks_ilastik/, chosen by ``labels_kind``)

Elements, one coordinate system per image (named after the image, ``<image>``, in pixels):

* images ``<image>_image`` (lazy over the OME-TIFF, channel names from the OME-XML);
* labels ``<image>_labels`` (lazy over the mask);
* table ``table``: ``X`` as exported, ``obs`` with ``region`` = ``<image>_labels`` (the annotated labels element
  of each cell), ``cell_id`` (the integer mask value, parsed from the obs name; the instance key) and the region
  properties; ``obsm["spatial"]`` = (x, y) = (``centroid-1``, ``centroid-0``) in pixels. (The reference reader
  stores (``centroid-0``, ``centroid-1``), i.e. (y, x).) ``var`` column names lose their slashes and spaces
  (``Final Concentration / Dilution`` becomes ``Final_Concentration``).

The cells of the table are found in the images by the ``image`` obs column (``--info images.csv`` at export) or,
when the export lacks it, by the image part of the obs names.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "iter_steinbock", "read_h5ad_file", "steinbock"]

CELLS_FILE = "cells.h5ad"
IMAGES_DIR = "ome"
IMAGE_SUFFIX = ".ome.tiff"
MASK_SUFFIX = ".tiff"
LABELS_KINDS = ("deepcell", "ilastik")
TABLE_NAME = "table"
REGION_KEY = "region"
INSTANCE_KEY = "cell_id"


def read_h5ad_file(path: Path, what: str) -> Any:
    """An ``.h5ad`` file as AnnData; a :class:`ReaderError` naming the file when missing or unreadable."""
    import anndata as ad

    if not path.is_file():
        raise ReaderError(f"{path}: {what} not found (expected an AnnData .h5ad file)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return ad.read_h5ad(path)
    except Exception as err:  # h5py / anndata raise many types on truncated or foreign files
        raise ReaderError(
            f"{path}: cannot read the {what} (expected an AnnData .h5ad file; truncated?): {err}"
        ) from err


def _clean_columns(columns: pd.Index) -> list[str]:
    renamed = []
    for c in map(str, columns):
        if c == "Final Concentration / Dilution":  # the steinbock demo panel (as the reference reader)
            c = "Final Concentration"
        renamed.append(re.sub(r"\s*/\s*", "_", c).replace(" ", "_"))
    return renamed


def _image_names(folder: Path) -> list[str]:
    names = [
        f.name[: -len(IMAGE_SUFFIX)]
        for f in folder.iterdir()
        if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIX) and not f.name.startswith(".")
    ]
    return sorted(names)


def _cells_table(file: Path, images: Sequence[str], labelled: set[str], names: Mapping[str, str]) -> Any:
    from tissuestack.elements import TableModel

    adata = read_h5ad_file(file, "steinbock cell table")
    obs_names = adata.obs_names.astype(str)
    parts = obs_names.str.rsplit(" ", n=1)
    bad = [n for n, p in zip(obs_names, parts, strict=True) if len(p) != 2 or not p[1].isdigit()]
    if bad:
        raise ReaderError(
            f"{file}: obs name(s) {bad[:5]} are not '<image> <cell id>'; expected the names written by "
            "'steinbock export anndata'"
        )
    cell_ids = np.array([int(p[1]) for p in parts], dtype=np.int64)
    if "image" in adata.obs.columns:
        image_of = adata.obs["image"].astype(str).str.replace(r"\.tiff?$", "", regex=True).to_numpy()
    else:
        image_of = np.array([p[0] for p in parts], dtype=object)
    for column in ("centroid-0", "centroid-1"):
        if column not in adata.obs.columns:
            raise ReaderError(
                f"{file}: no {column!r} obs column; expected the region properties of 'steinbock measure "
                f"regionprops' (centroid-0, centroid-1, area, ...; the file has {list(adata.obs.columns)[:12]})"
            )
    unknown = sorted(set(image_of) - set(images))
    if unknown:
        raise ReaderError(
            f"{file}: cells of the image(s) {unknown[:5]} have no {IMAGES_DIR}/<image>{IMAGE_SUFFIX}; the folder "
            f"has the images {list(images)[:10]}"
        )
    unlabelled = sorted(set(image_of) - labelled)
    if unlabelled:
        raise ReaderError(
            f"{file}: cells of the image(s) {unlabelled[:5]} have no mask to annotate; pass labels=False or "
            "another labels_kind, or add the masks"
        )
    obs = adata.obs.drop(columns=[c for c in ("Image",) if c in adata.obs.columns])
    obs.columns = _clean_columns(obs.columns)
    adata.obs = obs
    adata.var.columns = _clean_columns(adata.var.columns)
    adata.obsm["spatial"] = adata.obs[["centroid-1", "centroid-0"]].to_numpy(dtype=np.float64)
    regions = [names[i] for i in image_of]
    adata.obs[REGION_KEY] = pd.Categorical(regions)
    adata.obs[INSTANCE_KEY] = cell_ids
    present = [names[i] for i in images if names[i] in set(regions)]
    try:
        return TableModel.parse(
            adata, region=present, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=TABLE_NAME
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


@with_folder_hints('steinbock')
def iter_steinbock(
    path: str | Path,
    *,
    labels_kind: str = "deepcell",
    images: bool = True,
    labels: bool = True,
    cells_table: bool = True,
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a steinbock folder: each image and its labels, then the cell table.

    Parameters are those of :func:`steinbock`. Every file is located before the first element is yielded.
    """
    from tissuestack.elements import sanitize_name
    from tissuestack.io._tiff import tiff_to_element
    from tissuestack.transforms import Identity

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a steinbock output folder (cells.h5ad, ome/)")
    if labels_kind not in LABELS_KINDS:
        raise ReaderError(f"labels_kind must be one of {LABELS_KINDS}, got {labels_kind!r}")
    images_dir = path / IMAGES_DIR
    if not images_dir.is_dir():
        raise ReaderError(
            f"{images_dir}: images folder not found; expected {IMAGES_DIR}/<image>{IMAGE_SUFFIX}"
        )
    stems = _image_names(images_dir)
    if not stems:
        raise ReaderError(f"{images_dir}: no <image>{IMAGE_SUFFIX} files")
    masks_dir = path / f"masks_{labels_kind}"
    masks: dict[str, Path] = {}
    if labels:
        if not masks_dir.is_dir():
            others = [k for k in LABELS_KINDS if (path / f"masks_{k}").is_dir()]
            hint = f"; the folder has masks_{others[0]}/ (labels_kind={others[0]!r})" if others else ""
            raise ReaderError(f"{masks_dir}: masks folder not found{hint}")
        masks = {
            s: masks_dir / f"{s}{MASK_SUFFIX}" for s in stems if (masks_dir / f"{s}{MASK_SUFFIX}").is_file()
        }
        missing = [s for s in stems if s not in masks]
        if missing:
            warnings.warn(
                f"{masks_dir}: no mask for the image(s) {missing[:5]} (expected <image>{MASK_SUFFIX}); they get "
                "no labels element",
                UserWarning,
                stacklevel=2,
            )
    cells_file = path / CELLS_FILE
    if cells_table and not cells_file.is_file():
        raise ReaderError(f"{cells_file}: steinbock cell table not found (pass cells_table=False to skip it)")
    taken: list[str] = []
    image_names, label_names, systems = {}, {}, {}
    for stem in stems:
        systems[stem] = sanitize_name(stem)
        image_names[stem] = sanitize_name(f"{stem}_image", taken)
        taken.append(image_names[stem])
        label_names[stem] = sanitize_name(f"{stem}_labels", taken)
        taken.append(label_names[stem])

    for stem in stems:
        identity = {systems[stem]: Identity()}
        if images:
            file = images_dir / f"{stem}{IMAGE_SUFFIX}"
            yield (
                image_names[stem],
                tiff_to_element(file, transformations=identity, chunks=image_chunks, name=image_names[stem]),
            )
        if labels and stem in masks:
            yield (
                label_names[stem],
                tiff_to_element(
                    masks[stem],
                    kind="labels",
                    transformations=identity,
                    chunks=image_chunks,
                    name=label_names[stem],
                ),
            )
    if cells_table:
        yield TABLE_NAME, _cells_table(cells_file, stems, set(masks) if labels else set(stems), label_names)


def steinbock(
    path: str | Path,
    *,
    labels_kind: str = "deepcell",
    images: bool = True,
    labels: bool = True,
    cells_table: bool = True,
    image_chunks: int | Sequence[int] | Mapping[str, int] | None = None,
):
    """Read a steinbock (imaging mass cytometry) output folder.

    Parameters
    ----------
    path
        The steinbock folder (holding ``cells.h5ad``, ``ome/`` and ``masks_deepcell/`` or ``masks_ilastik/``).
    labels_kind
        ``"deepcell"`` or ``"ilastik"``: which masks folder becomes the labels.
    images, labels, cells_table
        Which elements to read.
    image_chunks
        Dask chunks of the images and labels (default: the TIFF helper's, ~1024 px tiles).

    Returns
    -------
    SpatialData
        Per image ``<image>_image`` and ``<image>_labels`` in the coordinate system ``<image>`` (pixels), and
        the table ``table`` annotating every ``<image>_labels`` through ``region`` / ``cell_id``.

    Raises
    ------
    ReaderError
        A folder or file is missing or unreadable, the obs names are not ``"<image> <cell id>"``, a column is
        missing, or the table has cells of an image without image or mask; the message names the file.
    """
    return collect(
        iter_steinbock(
            path,
            labels_kind=labels_kind,
            images=images,
            labels=labels,
            cells_table=cells_table,
            image_chunks=image_chunks,
        )
    )


TECHNOLOGY = Technology(
    name="steinbock",
    summary="steinbock (imaging mass cytometry) folder: per-image OME-TIFFs and deepcell/ilastik masks, each in "
    "its own coordinate system, and the cell table",
    iter_elements=iter_steinbock,
    options=(
        Option("labels_kind", str, "deepcell", "which masks become the labels", choices=LABELS_KINDS),
        Option("images", bool, True, "read the images"),
        Option("labels", bool, True, "read the masks"),
        Option("cells_table", bool, True, "read the cell table"),
    ),
)
