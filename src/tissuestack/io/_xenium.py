"""10x Genomics Xenium (Xenium Onboard Analysis 1.0 to 4.x output bundle, the "outs" folder).

Layout (``docs/vendors.md`` §1)::

    outs/
      experiment.xenium                       pixel size (µm per morphology pixel), software versions
      cells.zarr.zip                          label rasters masks/0 (nuclei), masks/1 (cells), cell ids, mappings
      cells.parquet                           one row per cell: centroids, areas, counts
      cell_feature_matrix.h5                  counts (10x feature-barcode HDF5)
      transcripts.parquet                     one row per decoded molecule
      cell_boundaries.parquet, nucleus_boundaries.parquet     one row per polygon vertex
      morphology_mip.ome.tif, morphology_focus.ome.tif        XOA < 2.0
      morphology_focus/morphology_focus_000N.ome.tif          XOA 2.x-3.x (1 or 4 channels)
      morphology_focus/chNNNN_<name>.ome.tif                  XOA >= 4.0 (channel names in the OME-XML)
      *he_image.ome.tif, *if_image.ome.tif (+ *alignment.csv) post-Xenium aligned images

The layout is recognised from the files present (2-column ``cell_id`` = string ids, ``polygon_sets`` or
``seg_mask_value`` = label mapping, ``morphology_focus/`` and its file names, ``label_id`` in the boundaries),
not from the version string alone, which is only cross-checked (and reported in warnings).

Elements, named as the reference reader names them:

* labels ``nucleus_labels`` and ``cell_labels`` (lazy, read chunk by chunk from the zip);
* images ``morphology_focus`` (channel names), ``morphology_mip`` (< 2.0), ``he_image`` / ``if_image``;
* points ``transcripts`` (lazy: one partition per group of Parquet row groups; ``x``, ``y``, ``z`` in µm, the
  categorical ``feature_name``, the instance column ``cell_id``, ``qv`` and every other column);
* shapes ``cell_boundaries`` (indexed by cell id), ``nucleus_boundaries`` (indexed by the nucleus label from
  2.0 on, with a ``cell_id`` column, so that multinucleate cells keep one polygon per nucleus) and optionally
  ``cell_circles`` (centroid, radius ``sqrt(cell_area / pi)``);
* table ``table``: the counts, ``obs`` from ``cells.parquet`` (+ ``z_level``, ``nucleus_count`` from the zarr,
  ``cell_labels`` = raster label), ``obsm["spatial"]`` = centroids in µm; it annotates ``cell_labels`` through
  ``cell_labels`` (or ``cell_circles`` / ``cell_boundaries`` through ``cell_id``).

Coordinate systems: ``global`` in microns (points and shapes Identity, morphology rasters ``Scale(pixel_size)``)
and ``pixels``, the morphology pixel frame the reference reader calls ``global`` (rasters Identity, points and
shapes ``Scale(1 / pixel_size)`` on x and y; z stays in µm). Aligned images map into both through the affine of
their alignment CSV (image pixel -> morphology pixel).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tissuestack.errors import ReaderError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._technology import Option, Technology, collect
from tissuestack.io._xenium_common import (
    CELL_BOUNDARIES_FILE,
    CELL_ID,
    CELLS_ZARR,
    FOCUS_DIR,
    FOCUS_FILE,
    LABELS_KEY,
    MIP_FILE,
    NUCLEUS_BOUNDARIES_FILE,
    TABLE_NAME,
    _read_specs,
    cell_id_strings,
    parse_xenium_version,
)
from tissuestack.io._xenium_rasters import (
    _aligned_images,
    _focus_element,
    _labels_element,
    _open_cells,
    _single_image,
)
from tissuestack.io._xenium_shapes import _polygons
from tissuestack.io._xenium_table import CONTROL_PLACEMENTS, _table_and_circles
from tissuestack.io._xenium_transcripts import _transcripts

__all__ = ["TECHNOLOGY", "cell_id_strings", "iter_xenium", "parse_xenium_version", "xenium"]

# ------------------------------------------------------------------------------------------------ entry points


_DEFAULTS: dict[str, Any] = {
    "cell_labels": True,
    "nucleus_labels": True,
    "cell_boundaries": True,
    "nucleus_boundaries": True,
    "cells_as_circles": False,
    "transcripts": True,
    "morphology_focus": True,
    "morphology_mip": True,
    "aligned_images": True,
    "cells_table": True,
    "feature_types": ("Gene Expression", "Protein Expression"),
    "control_features": "obsm",
    "min_qv": 0.0,
    "scale_factors": (2, 2, 2, 2),
    "pixel_coordinate_system": "pixels",
}


@with_folder_hints("xenium")
def iter_xenium(path: str | os.PathLike, **options: Any) -> Iterator[tuple[str, Any]]:
    """Stream the elements of a Xenium bundle as ``(name, element)`` pairs (the options of :func:`xenium`).

    Order: labels, images, transcripts, boundaries, circles, then the table (after the elements it annotates).
    Large data stay lazy; each element is built only when the generator reaches it.
    """
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"xenium: unknown option(s) {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    opts = {**_DEFAULTS, **options}
    if isinstance(opts["feature_types"], str):
        opts["feature_types"] = (opts["feature_types"],)
    if opts["control_features"] not in CONTROL_PLACEMENTS:
        raise ValueError(
            f"xenium: control_features must be one of {CONTROL_PLACEMENTS}, got {opts['control_features']!r}"
        )
    folder = Path(path)
    if not folder.is_dir():
        state = "is a file" if folder.is_file() else "does not exist"
        raise ReaderError(f"Xenium bundle {str(folder)!r} {state}; expected the XOA output folder")
    specs = _read_specs(folder)

    want_table = bool(opts["cells_table"])
    want_circles = bool(opts["cells_as_circles"])
    need_cells = any(
        opts[k] for k in ("cell_labels", "nucleus_labels", "cell_boundaries", "nucleus_boundaries")
    )
    need_cells = need_cells or want_table
    cells = None
    if need_cells and ((folder / CELLS_ZARR).exists() or opts["cell_labels"] or opts["nucleus_labels"]):
        cells = _open_cells(folder, specs)

    if opts["nucleus_labels"]:
        assert cells is not None
        yield "nucleus_labels", _labels_element(folder, cells, "0", specs, opts)
    if opts["cell_labels"]:
        assert cells is not None
        yield "cell_labels", _labels_element(folder, cells, "1", specs, opts)

    if opts["morphology_focus"]:
        yield "morphology_focus", _focus_element(folder, specs, opts)
    if opts["morphology_mip"] and not (folder / FOCUS_DIR).is_dir():
        path = folder / MIP_FILE
        if path.is_file():
            transformations = specs.transformations("raster", opts["pixel_coordinate_system"])
            yield "morphology_mip", _single_image(folder, path, "morphology_mip", transformations, opts)
        elif (folder / FOCUS_FILE).is_file():
            raise ReaderError(
                f"Xenium bundle {str(folder)!r}: {MIP_FILE} is missing (XOA < 2.0 layouts have it next to "
                f"{FOCUS_FILE}); pass morphology_mip=False to skip it"
            )
    if opts["aligned_images"]:
        yield from _aligned_images(folder, specs, opts)

    if opts["transcripts"]:
        yield "transcripts", _transcripts(folder, specs, opts)

    if opts["cell_boundaries"]:
        yield "cell_boundaries", _polygons(folder, CELL_BOUNDARIES_FILE, cells, specs, opts)
    if opts["nucleus_boundaries"]:
        yield "nucleus_boundaries", _polygons(folder, NUCLEUS_BOUNDARIES_FILE, cells, specs, opts)

    # which element the table annotates (the reference's choice, falling back to what was read)
    if want_circles:
        region, instance_key = "cell_circles", CELL_ID
    elif opts["cell_labels"] and cells is not None and cells.mapping != "ids":
        region, instance_key = "cell_labels", LABELS_KEY
    elif opts["cell_labels"] or not opts["cell_boundaries"]:
        region, instance_key = "cell_labels", CELL_ID
    else:
        region, instance_key = "cell_boundaries", CELL_ID
    if want_table or want_circles:
        table, circles = _table_and_circles(
            folder, cells, specs, opts, region, instance_key, want_table, want_circles
        )
        if circles is not None:
            yield "cell_circles", circles
        if table is not None:
            yield TABLE_NAME, table


def xenium(
    path: str | os.PathLike,
    *,
    cell_labels: bool = True,
    nucleus_labels: bool = True,
    cell_boundaries: bool = True,
    nucleus_boundaries: bool = True,
    cells_as_circles: bool = False,
    transcripts: bool = True,
    morphology_focus: bool = True,
    morphology_mip: bool = True,
    aligned_images: bool = True,
    cells_table: bool = True,
    feature_types: Sequence[str] | None = ("Gene Expression", "Protein Expression"),
    control_features: str = "obsm",
    min_qv: float = 0.0,
    scale_factors: Sequence[int] | None = (2, 2, 2, 2),
    pixel_coordinate_system: str | None = "pixels",
):
    """Read a 10x Genomics Xenium output bundle (XOA 1.0 to 4.x) into a SpatialData, lazily.

    Parameters
    ----------
    path
        The XOA output folder (``experiment.xenium`` and the files next to it).
    cell_labels, nucleus_labels
        Read the cell / nucleus label rasters of ``cells.zarr.zip`` (lazy).
    cell_boundaries, nucleus_boundaries
        Read the boundary polygons. From XOA 2.0 nucleus polygons are indexed by their raster label (several per
        multinucleate cell) with a ``cell_id`` column; cell polygons are indexed by cell id.
    cells_as_circles
        Also read the cells as circles (centroid, radius ``sqrt(cell_area / pi)``); the table then annotates them.
    transcripts
        Read ``transcripts.parquet`` as lazy points (one partition per group of row groups).
    morphology_focus, morphology_mip
        Read the morphology images (``morphology_mip`` exists before XOA 2.0 only).
    aligned_images
        Read ``*he_image.ome.tif`` / ``*if_image.ome.tif`` placed by their ``*alignment.csv``.
    cells_table
        Read the counts table.
    feature_types
        Feature types whose counts form the table's ``X`` (``None`` or empty: all, including the control probes
        and codewords). Protein values (XOA 4.x) are divided by the file's ``protein_scaling_factor``. The
        reference reader keeps ``Gene Expression`` only.
    control_features
        Where the other features go (negative control probes and codewords, unassigned, deprecated and
        intergenic codewords, genomic controls): ``"obsm"`` (default) puts each feature type's per-cell
        counts in ``table.obsm[<type in snake case>]``, a DataFrame with one column per feature (e.g.
        ``obsm["negative_control_probe"]["NegControlProbe_00001"]``) in the narrowest unsigned integer type;
        ``"X"`` keeps them in ``X`` as genes (with their ``var["feature_types"]``); ``"drop"`` discards them.
    min_qv
        Keep only transcripts with ``qv >= min_qv`` (filtered while reading; 0 keeps everything).
    scale_factors
        Pyramid of the label rasters and of the images that have none in their file (the reference's default).
    pixel_coordinate_system
        Name of the morphology pixel coordinate system (the reference's ``global``); ``None`` or ``""`` to omit.

    Returns
    -------
    SpatialData
        Labels ``cell_labels``, ``nucleus_labels``; images ``morphology_focus`` (``morphology_mip``, ``he_image``,
        ``if_image``); points ``transcripts``; shapes ``cell_boundaries``, ``nucleus_boundaries``
        (``cell_circles``); table ``table``. Coordinate systems ``global`` (µm) and ``pixels``.

    Raises
    ------
    ReaderError
        A file the requested elements need is missing, truncated or malformed (wrong columns, unknown layout);
        the message names the file and what was expected.
    """
    return collect(
        iter_xenium(
            path,
            cell_labels=cell_labels,
            nucleus_labels=nucleus_labels,
            cell_boundaries=cell_boundaries,
            nucleus_boundaries=nucleus_boundaries,
            cells_as_circles=cells_as_circles,
            transcripts=transcripts,
            morphology_focus=morphology_focus,
            morphology_mip=morphology_mip,
            aligned_images=aligned_images,
            cells_table=cells_table,
            feature_types=feature_types,
            control_features=control_features,
            min_qv=min_qv,
            scale_factors=scale_factors,
            pixel_coordinate_system=pixel_coordinate_system,
        )
    )


TECHNOLOGY = Technology(
    name="xenium",
    summary="10x Genomics Xenium (XOA 1.0-4.x output bundle): labels, morphology and aligned images, "
    "transcripts, cell/nucleus boundaries, counts table",
    iter_elements=iter_xenium,
    options=(
        Option("cell_labels", bool, True, "read the cell label raster (cells.zarr.zip masks/1)"),
        Option("nucleus_labels", bool, True, "read the nucleus label raster (cells.zarr.zip masks/0)"),
        Option("cell_boundaries", bool, True, "read the cell boundary polygons"),
        Option("nucleus_boundaries", bool, True, "read the nucleus boundary polygons"),
        Option("cells_as_circles", bool, False, "also read cells as circles; the table then annotates them"),
        Option("transcripts", bool, True, "read the transcripts (lazy points)"),
        Option("morphology_focus", bool, True, "read the morphology focus image"),
        Option("morphology_mip", bool, True, "read the morphology MIP image (XOA < 2.0)"),
        Option("aligned_images", bool, True, "read H&E / IF images aligned by their alignment CSV"),
        Option("cells_table", bool, True, "read the counts table"),
        Option(
            "feature_types",
            tuple,
            ("Gene Expression", "Protein Expression"),
            "feature types counted in the table's X (empty: all)",
        ),
        Option(
            "control_features",
            str,
            "obsm",
            "where features of other types (control probes and codewords) go: obsm (a DataFrame per type), "
            "X (kept as genes) or drop",
            choices=CONTROL_PLACEMENTS,
        ),
        Option("min_qv", float, 0.0, "keep transcripts with qv >= this value"),
        Option("scale_factors", tuple, (2, 2, 2, 2), "pyramid factors for rasters without a stored pyramid"),
        Option("pixel_coordinate_system", str, "pixels", "name of the morphology pixel coordinate system"),
    ),
)
