"""Curio Seeker (Slide-seq) output folders: beads as circles and the bead table with clusters, metrics and markers.

Layout (``docs/vendors.md`` §6.3), every file starting with the sample prefix ``<s>``::

    <folder>/<s>_anndata.h5ad                            beads x genes; obsm["spatial"] = obsm["X_spatial"] = (x, y)
    <folder>/<s>_cluster_assignment.txt                  tab-separated, no header: barcode, cluster
    <folder>/<s>_Metrics.csv                             header with a "Category" column: metric, value, category
    <folder>/<s>_variable_features_clusters.txt          tab-separated with header (cluster markers)
    <folder>/<s>_variable_features_spatial_moransi.txt   R write.table: the header lacks the row-name field

Elements, in the coordinate system ``global`` (the bead coordinates of the h5ad, Curio's units):

* shapes ``cells``: one circle per bead at ``obsm["spatial"]``, radius ``bead_radius`` (10 units by default, as
  the reference reader), indexed by the bead barcode;
* table ``table``: the counts, ``obs`` ``cluster`` (categorical, matched to the beads by barcode, not by row
  order), ``region`` = ``cells`` and ``instance_id`` = the barcode (the instance key); ``uns[<Category>]`` one
  dict of metrics per category (numbers as numbers; the reference reader keeps the text of a mixed column),
  ``uns["Top_cluster_defining_features"]`` the cluster markers and ``var`` the Moran's I columns of the genes
  that have them (the reference reader computes that join and drops it).

With ``units_per_um`` (Curio units per micrometre) the beads are also placed in a ``microns`` coordinate system.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._steinbock import read_h5ad_file
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "curio", "iter_curio"]

#: file role -> name suffix after "<sample>_"
FILES = {
    "anndata": "anndata.h5ad",
    "clusters": "cluster_assignment.txt",
    "metrics": "Metrics.csv",
    "markers": "variable_features_clusters.txt",
    "moransi": "variable_features_spatial_moransi.txt",
}
SHAPES_NAME = "cells"
TABLE_NAME = "table"
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
CATEGORY = "Category"
MARKERS_KEY = "Top_cluster_defining_features"


def _locate(path: Path, dataset_id: str | None) -> tuple[str, dict[str, Path]]:
    """The sample prefix and the five files of a Curio folder."""
    if dataset_id is not None:
        files = {role: path / f"{dataset_id}_{suffix}" for role, suffix in FILES.items()}
        missing = [f.name for f in files.values() if not f.is_file()]
        if missing:
            raise ReaderError(f"{path}: Curio file(s) {missing} not found (dataset_id={dataset_id!r})")
        return dataset_id, files
    anndata_suffix = "_" + FILES["anndata"]
    samples = sorted(
        f.name[: -len(anndata_suffix)]
        for f in path.iterdir()
        if f.is_file() and f.name.endswith(anndata_suffix) and len(f.name) > len(anndata_suffix)
    )
    if not samples:
        raise ReaderError(
            f"{path}: no <sample>_{FILES['anndata']}; expected a Curio Seeker output folder "
            f"(<sample>_{', <sample>_'.join(FILES.values())})"
        )
    if len(samples) > 1:
        raise ReaderError(f"{path}: several Curio samples {samples}; pass dataset_id= (one of them)")
    return _locate(path, samples[0])


def _read_text_table(file: Path, what: str, expected: str, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(file, **kwargs)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ReaderError(f"{file}: cannot read the {what} (expected {expected}): {err}") from err


def _clusters(file: Path, barcodes: pd.Index) -> pd.Categorical:
    expected = "two tab-separated columns without header: bead barcode, cluster"
    frame = _read_text_table(
        file, "cluster assignment", expected, sep="\t", header=None, dtype=str, keep_default_na=False
    )
    if frame.shape[1] != 2:
        raise ReaderError(
            f"{file}: the cluster assignment has {frame.shape[1]} column(s); expected {expected}"
        )
    frame[0] = frame[0].str.strip()
    if frame[0].duplicated().any():
        dup = frame[0][frame[0].duplicated()].tolist()[:5]
        raise ReaderError(f"{file}: bead barcode(s) {dup} are assigned twice; expected one line per bead")
    by_barcode = frame.set_index(0)[1].str.strip()
    unknown = by_barcode.index.difference(barcodes)
    missing = barcodes.difference(by_barcode.index)
    if len(unknown) or len(missing):
        raise ReaderError(
            f"{file}: the cluster assignment does not list the beads of the h5ad: {len(missing)} bead(s) without "
            f"cluster (e.g. {missing[:3].tolist()}), {len(unknown)} unknown barcode(s) (e.g. {unknown[:3].tolist()})"
        )
    values = by_barcode.reindex(barcodes)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and (numeric == numeric.round()).all():
        codes = numeric.astype(np.int64)
        return pd.Categorical(codes, categories=sorted(codes.unique()))
    return pd.Categorical(values)


def _metrics(file: Path) -> dict[str, dict[str, Any]]:
    frame = _read_text_table(file, "metrics", f"a CSV with a {CATEGORY!r} column", sep=",")
    if CATEGORY not in frame.columns or frame.shape[1] < 3:
        raise ReaderError(
            f"{file}: the metrics have the columns {frame.columns.tolist()}; expected metric, value and "
            f"{CATEGORY!r}"
        )
    names = frame.iloc[:, 0].astype(str).tolist()
    values = [_metric_value(v) for v in frame.iloc[:, 1].tolist()]
    out: dict[str, dict[str, Any]] = {}
    for name, value, category in zip(names, values, frame[CATEGORY].astype(str), strict=True):
        out.setdefault(category, {})[name] = value
    return out


def _metric_value(value: Any) -> Any:
    """A metric as int or float when its text is a number (the column mixes numbers and text), else text."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value.item() if isinstance(value, np.generic) else value
    text = str(value).strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _moransi(file: Path, var_names: pd.Index) -> pd.DataFrame:
    frame = _read_text_table(
        file,
        "Moran's I table",
        "R write.table output: genes as row names, one column per statistic",
        sep="\t",
    )
    if isinstance(frame.index, pd.RangeIndex):
        raise ReaderError(
            f"{file}: the Moran's I table has no gene row names; expected an R write.table file whose header "
            "line has one field fewer than its rows"
        )
    frame.index = frame.index.astype(str)
    unknown = frame.index.difference(var_names)
    if len(unknown):
        raise ReaderError(
            f"{file}: the Moran's I table names gene(s) {unknown[:5].tolist()} that are not in the h5ad var"
        )
    return frame


def _spatial(adata: Any, file: Path) -> np.ndarray:
    if "spatial" not in adata.obsm:
        raise ReaderError(
            f"{file}: no obsm['spatial']; expected the bead (x, y) coordinates of the Curio Seeker h5ad "
            f"(the file has obsm {list(adata.obsm)})"
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise ReaderError(f"{file}: obsm['spatial'] must hold finite (x, y) pairs, got shape {xy.shape}")
    if "X_spatial" in adata.obsm:
        if not np.array_equal(np.asarray(adata.obsm["X_spatial"], dtype=np.float64), xy):
            raise ReaderError(
                f"{file}: obsm['X_spatial'] differs from obsm['spatial']; expected the same beads"
            )
        del adata.obsm["X_spatial"]
    return xy


@with_folder_hints('curio')
def iter_curio(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    bead_radius: float = 10.0,
    units_per_um: float | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a Curio Seeker folder: the bead circles, then the table.

    Parameters are those of :func:`curio`. Every file is read and checked before the first element is yielded.
    """
    from tissuestack.elements import ShapesModel, TableModel
    from tissuestack.transforms import Identity, Scale

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(
            f"{path}: not a directory; expected a Curio Seeker output folder (<sample>_anndata.h5ad)"
        )
    if not (np.isfinite(bead_radius) and bead_radius > 0):
        raise ReaderError(f"bead_radius must be a positive number, got {bead_radius!r}")
    if units_per_um is not None and not (np.isfinite(units_per_um) and units_per_um > 0):
        raise ReaderError(f"units_per_um must be a positive number, got {units_per_um!r}")
    _, files = _locate(path, dataset_id)

    adata = read_h5ad_file(files["anndata"], "Curio bead table")
    adata.obs_names = adata.obs_names.astype(str)
    if not adata.obs_names.is_unique:
        raise ReaderError(f"{files['anndata']}: the bead barcodes (obs names) are not unique")
    xy = _spatial(adata, files["anndata"])
    obs = adata.obs.copy()
    obs["cluster"] = _clusters(files["clusters"], adata.obs_names)
    obs[REGION_KEY] = pd.Categorical([SHAPES_NAME] * adata.n_obs)
    obs[INSTANCE_KEY] = adata.obs_names.to_numpy(dtype=object)
    adata.obs = obs
    for category, metrics in _metrics(files["metrics"]).items():
        adata.uns[category] = metrics
    markers = _read_text_table(
        files["markers"], "cluster markers", "a tab-separated table with header", sep="\t"
    )
    markers.index = markers.index.astype(str)
    markers.columns = markers.columns.astype(str)
    adata.uns[MARKERS_KEY] = markers
    moransi = _moransi(files["moransi"], adata.var_names)
    clash = [c for c in moransi.columns if c in adata.var.columns]
    adata.var = adata.var.join(moransi.rename(columns={c: f"{c}_moransi" for c in clash}), how="left")

    transformations: dict[str, Any] = {"global": Identity()}
    if units_per_um is not None:
        transformations["microns"] = Scale([1.0 / units_per_um] * 2, axes=("x", "y"))
    try:
        yield (
            SHAPES_NAME,
            ShapesModel.parse(
                xy,
                geometry=0,
                radius=np.full(len(xy), float(bead_radius)),
                index=pd.Index(adata.obs_names.to_numpy(dtype=object)),
                transformations=transformations,
                name=SHAPES_NAME,
            ),
        )
        yield (
            TABLE_NAME,
            TableModel.parse(
                adata, region=SHAPES_NAME, region_key=REGION_KEY, instance_key=INSTANCE_KEY, name=TABLE_NAME
            ),
        )
    except ValidationError as err:
        raise ReaderError(f"{files['anndata']}: {err}") from err


def curio(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    bead_radius: float = 10.0,
    units_per_um: float | None = None,
):
    """Read a Curio Seeker (Slide-seq) output folder.

    Parameters
    ----------
    path
        The folder holding ``<sample>_anndata.h5ad``, ``<sample>_cluster_assignment.txt``,
        ``<sample>_Metrics.csv``, ``<sample>_variable_features_clusters.txt`` and
        ``<sample>_variable_features_spatial_moransi.txt``.
    dataset_id
        The sample prefix ``<sample>``; default the one sample of the folder.
    bead_radius
        Radius of the bead circles, in the units of the bead coordinates.
    units_per_um
        Curio coordinate units per micrometre; when given, the beads are also placed in the coordinate system
        ``microns`` by ``Scale(1 / units_per_um)``.

    Returns
    -------
    SpatialData
        Shapes ``cells`` (circles indexed by barcode) and table ``table`` annotating them by ``instance_id``, in
        ``global`` (and ``microns``).

    Raises
    ------
    ReaderError
        A file is missing or unreadable, several samples share the folder, the cluster assignment does not list
        the beads, the metrics lack the ``Category`` column, or the Moran's I table names unknown genes.
    """
    return collect(
        iter_curio(path, dataset_id=dataset_id, bead_radius=bead_radius, units_per_um=units_per_um)
    )


TECHNOLOGY = Technology(
    name="curio",
    summary="Curio Seeker (Slide-seq) folder: beads as circles, bead table with clusters, metrics and markers",
    iter_elements=iter_curio,
    options=(
        Option("dataset_id", str, None, "the sample prefix (default: the one sample of the folder)"),
        Option("bead_radius", float, 10.0, "radius of the bead circles (bead coordinate units)"),
        Option("units_per_um", float, None, "coordinate units per micrometre: adds the 'microns' system"),
    ),
)
