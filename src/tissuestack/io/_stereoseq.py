"""STOmics Stereo-seq (SAW) output: cell-bin GEF (cells, counts, borders), square-bin GEF levels, registered images.

Two layouts (``docs/vendors.md`` §6.2), recognised from the folders present; ``<SN>`` is the chip serial
number, taken from the GEF file names (text before the first ``.``) unless ``dataset_id`` is given::

    SAW v6/v7 (numbered)                          SAW v8 (outs/)
    02.count/<SN>.raw.gef                         outs/feature_expression/<SN>.raw.gef
    03.register/<SN>_regist.tif _mask.tif ...     outs/image/<SN>_<stain>_regist.tif _tissue_cut.tif _mask.tif
    04.tissuecut/<SN>.tissuecut.gef (or <SN>.gef) outs/feature_expression/<SN>.tissue.gef
    041.cellcut/<SN>.cellbin.gef                  outs/feature_expression/<SN>.cellbin.gef (.adjusted.cellbin.gef)
    051.cellcluster/<SN>.cell.cluster.h5ad        (optional; its obs columns such as leiden are added)

Elements:

* images, one per registered TIFF, named after its stem (``<SN>_regist``, ``<SN>_mask``, ...), lazy, with a pyramid;
* shapes ``cells_circles`` (centroid, radius ``sqrt(area / pi)``) and ``cells_polygons`` (the ``cellBorder``
  vertex offsets added to the centroid, padding 32767 dropped), both indexed by the integer cell id;
* table ``cells_table``: the counts of ``cellBin/cellExp`` (cells x genes, sparse, CSR by cell through
  ``cell.offset``/``geneCount``), obs = the ``cellBin/cell`` fields (and ``cellExon``, and the cluster h5ad's obs),
  ``obsm["spatial"]`` = centroid; it annotates ``cells_circles`` (``region_key="region"``, ``instance_key="cell_id"``);
* for each square-bin level ``N`` (``bin_sizes``; default every level of the file): points ``bin<N>_genes``, one per
  occupied bin (``x``, ``y`` as stored, ``instance_id``), and table ``bin<N>_table`` (bins x genes, sparse) annotating
  them by ``instance_id``.

Coordinates: everything is on the DNB grid (registered images have 1 px = 1 DNB); the coordinate system ``global``
is in µm, a ``Scale`` of the GEF ``resolution`` attribute (nm per DNB, 500 -> 0.5 µm) on every element.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tissuestack.errors import ReaderError, ValidationError
from tissuestack.io._detect import with_folder_hints
from tissuestack.io._merscope import natural_key, pyramid_factors
from tissuestack.io._technology import Option, Technology, collect

__all__ = ["TECHNOLOGY", "iter_stereoseq", "stereoseq"]

V6_DIRS = {
    "count": "02.count",
    "register": "03.register",
    "tissuecut": "04.tissuecut",
    "cellcut": "041.cellcut",
    "cellcluster": "051.cellcluster",
}
V8_EXPRESSION = Path("outs") / "feature_expression"
V8_IMAGE = Path("outs") / "image"
PADDING = 32767
DEFAULT_RESOLUTION_NM = 500.0
CELLS_CIRCLES = "cells_circles"
CELLS_POLYGONS = "cells_polygons"
CELLS_TABLE = "cells_table"
REGION_KEY = "region"
CELL_INSTANCE_KEY = "cell_id"
BIN_INSTANCE_KEY = "instance_id"
IMAGE_SUFFIXES = ("_regist", "_tissue_cut", "_mask")
_CELL_REQUIRED = ("x", "y", "offset", "geneCount")


# ------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------


def _layout(path: Path) -> tuple[str, Path]:
    """("v6", path) or ("v8", the folder holding outs/)."""
    if (path / V6_DIRS["cellcut"]).is_dir() or (path / V6_DIRS["tissuecut"]).is_dir():
        return "v6", path
    if (path / V8_EXPRESSION).is_dir():
        return "v8", path
    if path.name == "outs" and (path / "feature_expression").is_dir():
        return "v8", path.parent
    raise ReaderError(
        f"{path}: not a Stereo-seq SAW output folder; expected the SAW v6/v7 folders 041.cellcut/ and "
        "04.tissuecut/ or the SAW v8 folder outs/feature_expression/ (found: "
        f"{sorted(p.name for p in path.iterdir())[:12]})"
    )


def _serial(folders: Sequence[Path], dataset_id: str | None) -> str:
    if dataset_id is not None:
        return str(dataset_id)
    found = sorted(
        {f.name.split(".")[0] for d in folders if d.is_dir() for f in d.iterdir() if f.name.endswith(".gef")}
    )
    if not found:
        raise ReaderError(f"{', '.join(map(str, folders))}: no .gef file to take the chip serial number from")
    if len(found) > 1:
        raise ReaderError(
            f"{folders[0].parent}: GEF files of several chips ({found}); pass dataset_id= to choose one"
        )
    return found[0]


def _first(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _files(root: Path, layout: str, sn: str, *, raw_gef: bool, adjusted: bool) -> dict[str, Any]:
    if layout == "v6":
        d = {k: root / v for k, v in V6_DIRS.items()}
        square = (
            [d["count"] / f"{sn}.raw.gef"]
            if raw_gef
            else [
                d["tissuecut"] / f"{sn}.tissuecut.gef",
                d["tissuecut"] / f"{sn}.gef",
            ]
        )
        cellbin = [d["cellcut"] / f"{sn}.cellbin.gef"]
        cluster = [d["cellcluster"] / f"{sn}.cell.cluster.h5ad"]
        images = d["register"]
    else:
        e = root / V8_EXPRESSION
        square = [e / f"{sn}.raw.gef"] if raw_gef else [e / f"{sn}.tissue.gef", e / f"{sn}.tissuecut.gef"]
        cellbin = [e / f"{sn}.cellbin.gef"]
        if adjusted:
            cellbin.insert(0, e / f"{sn}.adjusted.cellbin.gef")
        cluster = []
        images = root / V8_IMAGE
    return {
        "square": (_first(square), square),
        "cellbin": (_first(cellbin), cellbin),
        "cluster": _first(cluster),
        "images": images,
    }


def _image_files(folder: Path, sn: str) -> list[Path]:
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(sn)}(_.+)?({'|'.join(IMAGE_SUFFIXES)})\.tiff?$", re.I)
    return sorted(
        (f for f in folder.iterdir() if f.is_file() and pattern.match(f.name)),
        key=lambda f: natural_key(f.name),
    )


def _open_h5(file: Path, what: str) -> Any:
    import h5py

    try:
        return h5py.File(file, "r")
    except OSError as err:
        raise ReaderError(
            f"{file}: cannot open the {what} as HDF5 (truncated or not a GEF file?): {err}"
        ) from err


def _dataset(h5: Any, key: str, file: Path, what: str) -> np.ndarray:
    if key not in h5:
        raise ReaderError(f"{file}: no {key!r} dataset; expected {what}")
    try:
        return h5[key][()]
    except (OSError, ValueError) as err:
        raise ReaderError(f"{file}: cannot read {key!r} (truncated file?): {err}") from err


def _names(values: np.ndarray) -> np.ndarray:
    return np.array(
        [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values],
        dtype=object,
    )


def _resolution(h5: Any, file: Path) -> float:
    value = h5.attrs.get("resolution", None)
    if value is None:
        return DEFAULT_RESOLUTION_NM
    try:
        res = float(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError) as err:
        raise ReaderError(
            f"{file}: 'resolution' attribute {value!r}; expected nm per DNB (e.g. 500)"
        ) from err
    if not (np.isfinite(res) and res > 0):
        raise ReaderError(
            f"{file}: 'resolution' attribute is {res}; expected a positive number of nm per DNB"
        )
    return res


def _gene_names(genes: np.ndarray, file: Path, key: str) -> np.ndarray:
    fields = genes.dtype.names or ()
    for name in ("geneName", "gene"):
        if name in fields:
            return _names(genes[name])
    raise ReaderError(f"{file}: {key!r} has the fields {list(fields)}; expected a geneName (or gene) field")


def _unique(names: np.ndarray) -> pd.Index:
    import anndata as ad

    index = pd.Index(names.astype(str))
    if index.is_unique:
        return index
    return pd.Index(ad.utils.make_index_unique(index))


# ------------------------------------------------------------------------------------------------------------
# cell bins
# ------------------------------------------------------------------------------------------------------------


def _read_cellbin(file: Path) -> dict[str, Any]:
    import scipy.sparse as sp

    with _open_h5(file, "cell-bin GEF") as h5:
        if "cellBin" not in h5:
            raise ReaderError(
                f"{file}: no 'cellBin' group; expected a cell-bin GEF (cellBin/cell, cellBin/gene, ...)"
            )
        g = h5["cellBin"]
        cell = _dataset(g, "cell", file, "the per-cell records cellBin/cell")
        fields = cell.dtype.names or ()
        missing = [f for f in _CELL_REQUIRED if f not in fields]
        if missing:
            raise ReaderError(
                f"{file}: cellBin/cell lacks the field(s) {missing}; expected id, x, y, offset, geneCount, expCount, "
                f"dnbCount, area, cellTypeID, clusterID (has {list(fields)})"
            )
        genes = _dataset(g, "gene", file, "the gene records cellBin/gene")
        exp = _dataset(g, "cellExp", file, "the per-cell counts cellBin/cellExp (geneID, count)")
        for f in ("geneID", "count"):
            if f not in (exp.dtype.names or ()):
                raise ReaderError(f"{file}: cellBin/cellExp lacks the field {f!r}; expected geneID and count")
        border = (
            _dataset(g, "cellBorder", file, "the cell borders cellBin/cellBorder")
            if "cellBorder" in g
            else None
        )
        exon = g["cellExon"][()] if "cellExon" in g else None
        resolution = _resolution(h5, file)
    n = len(cell)
    ids = cell["id"].astype(np.int64) if "id" in fields else np.arange(n, dtype=np.int64)
    if len(np.unique(ids)) != n:
        raise ReaderError(f"{file}: cellBin/cell ids are repeated; expected one record per cell")
    gene_names = _gene_names(genes, file, "cellBin/gene")
    offset = cell["offset"].astype(np.int64)
    count = cell["geneCount"].astype(np.int64)
    if n and (offset + count).max() > len(exp):
        raise ReaderError(
            f"{file}: cellBin/cell offsets reach row {(offset + count).max()} of cellBin/cellExp, which has "
            f"{len(exp)} rows (truncated file?)"
        )
    starts = np.repeat(offset - np.concatenate([[0], np.cumsum(count)[:-1]]), count)
    rows_exp = starts + np.arange(int(count.sum()))
    gene_id = exp["geneID"][rows_exp].astype(np.int64)
    if len(gene_id) and gene_id.max() >= len(gene_names):
        raise ReaderError(
            f"{file}: cellBin/cellExp refers to gene {gene_id.max()} but cellBin/gene has {len(gene_names)} genes"
        )
    indptr = np.concatenate([[0], np.cumsum(count)])
    counts = sp.csr_matrix(
        (exp["count"][rows_exp].astype(np.int32), gene_id, indptr), shape=(n, len(gene_names))
    )
    counts.sum_duplicates()
    obs = pd.DataFrame({f: cell[f] for f in fields if f not in ("id", "x", "y")})
    obs.insert(0, CELL_INSTANCE_KEY, ids)
    if exon is not None and len(exon) == n:
        obs["cellExon"] = exon
    var = pd.DataFrame({f: genes[f] for f in (genes.dtype.names or ()) if f not in ("geneName", "gene")})
    if "geneID" in var.columns:
        var["geneID"] = _names(var["geneID"].to_numpy())
    var.insert(0, "gene_name", gene_names.astype(str))
    var.index = _unique(gene_names)
    centroids = np.column_stack([cell["x"], cell["y"]]).astype(np.float64)
    return {
        "ids": ids,
        "obs": obs,
        "var": var,
        "counts": counts,
        "centroids": centroids,
        "area": cell["area"].astype(np.float64) if "area" in fields else None,
        "border": border,
        "resolution": resolution,
    }


def _circles(cells: dict, tfs: dict, file: Path) -> Any:
    from tissuestack.elements import ShapesModel

    area = cells["area"]
    radii = np.sqrt(np.maximum(area, 1.0) / np.pi) if area is not None else np.ones(len(cells["ids"]))
    try:
        return ShapesModel.parse(
            cells["centroids"],
            geometry=0,
            radius=radii,
            index=pd.Index(cells["ids"]),
            transformations=tfs,
            name=CELLS_CIRCLES,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _polygons(cells: dict, tfs: dict, file: Path) -> Any:
    import geopandas as gpd
    import shapely

    from tissuestack.elements import ShapesModel

    border = cells["border"]
    n = len(cells["ids"])
    if border.ndim != 3 or border.shape[0] != n or border.shape[2] != 2:
        raise ReaderError(
            f"{file}: cellBin/cellBorder has shape {border.shape}; expected (n_cells={n}, vertices, 2) offsets"
        )
    valid = (border[..., 0] != PADDING) & (border[..., 1] != PADDING)
    n_vertices = valid.sum(axis=1)
    keep = n_vertices >= 3
    if not keep.all():
        warnings.warn(
            f"{file}: {int((~keep).sum())} cell border(s) have fewer than 3 vertices and are left out of "
            f"{CELLS_POLYGONS} (first cell ids: {cells['ids'][~keep][:5].tolist()})",
            UserWarning,
            stacklevel=3,
        )
    coords = border.astype(np.float64) + cells["centroids"][:, None, :]
    mask = valid & keep[:, None]
    ring_of = np.repeat(np.arange(int(keep.sum())), n_vertices[keep])
    rings = shapely.linearrings(coords[mask], indices=ring_of)
    index = pd.Index(cells["ids"][keep])
    frame = gpd.GeoDataFrame(geometry=gpd.GeoSeries(shapely.polygons(rings), index=index), index=index)
    try:
        return ShapesModel.parse(frame, transformations=tfs, name=CELLS_POLYGONS)
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


def _cells_table(cells: dict, cluster: Path | None, file: Path) -> Any:
    import anndata as ad

    from tissuestack.elements import TableModel

    obs = cells["obs"].copy()
    obs.index = obs[CELL_INSTANCE_KEY].astype(str).to_numpy()
    obsm: dict[str, np.ndarray] = {"spatial": cells["centroids"]}
    if cluster is not None:
        try:
            extra = ad.read_h5ad(cluster, backed="r")
            extra_obs, extra_obsm = extra.obs.copy(), {k: np.asarray(v) for k, v in extra.obsm.items()}
            extra.file.close()
        except (OSError, KeyError, ValueError) as err:
            raise ReaderError(f"{cluster}: cannot read the cell cluster AnnData: {err}") from err
        if len(extra_obs) != len(obs):
            raise ReaderError(
                f"{cluster}: {len(extra_obs)} cells, but {file.name} has {len(obs)}; expected one row per cell in the "
                "cell-bin GEF order"
            )
        for column in extra_obs.columns:
            if column not in obs.columns:
                obs[column] = extra_obs[column].to_numpy()
        for key, value in extra_obsm.items():
            if key != "spatial" and len(value) == len(obs):
                obsm[key] = value
    for column in ("cellTypeID", "clusterID"):
        if column in obs.columns:
            obs[column] = obs[column].astype("category")
    obs[REGION_KEY] = pd.Categorical([CELLS_CIRCLES] * len(obs))
    adata = ad.AnnData(cells["counts"], obs=obs, var=cells["var"], obsm=obsm)
    try:
        return TableModel.parse(
            adata,
            region=CELLS_CIRCLES,
            region_key=REGION_KEY,
            instance_key=CELL_INSTANCE_KEY,
            name=CELLS_TABLE,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err


# ------------------------------------------------------------------------------------------------------------
# square bins
# ------------------------------------------------------------------------------------------------------------


def _levels(file: Path) -> tuple[list[int], float]:
    with _open_h5(file, "square-bin GEF") as h5:
        if "geneExp" not in h5:
            raise ReaderError(
                f"{file}: no 'geneExp' group; expected a square-bin GEF (geneExp/bin<N>/gene, expression)"
            )
        levels = []
        for key in h5["geneExp"]:
            m = re.fullmatch(r"bin(\d+)", key)
            if m:
                levels.append(int(m.group(1)))
        return sorted(levels), _resolution(h5, file)


def _square_level(file: Path, size: int, tfs: dict) -> tuple[Any, Any]:
    import anndata as ad
    import scipy.sparse as sp

    from tissuestack.elements import PointsModel, TableModel

    key = f"geneExp/bin{size}"
    with _open_h5(file, "square-bin GEF") as h5:
        genes = _dataset(h5, f"{key}/gene", file, f"the gene records of bin {size}")
        expression = _dataset(
            h5, f"{key}/expression", file, f"the expression records (x, y, count) of bin {size}"
        )
    for f, arr, where in (
        ("offset", genes, "gene"),
        ("count", genes, "gene"),
        ("x", expression, "expression"),
        ("y", expression, "expression"),
        ("count", expression, "expression"),
    ):
        if f not in (arr.dtype.names or ()):
            raise ReaderError(
                f"{file}: {key}/{where} lacks the field {f!r} (has {list(arr.dtype.names or ())})"
            )
    names = _gene_names(genes, file, f"{key}/gene")
    per_gene = genes["count"].astype(np.int64)
    offsets = genes["offset"].astype(np.int64)
    if not np.array_equal(offsets, np.concatenate([[0], np.cumsum(per_gene)[:-1]])) or per_gene.sum() != len(
        expression
    ):
        raise ReaderError(
            f"{file}: {key}/gene offsets and counts do not partition the {len(expression)} expression rows (counts sum "
            f"to {int(per_gene.sum())}; expected offset = exclusive cumulative sum of count; truncated file?)"
        )
    gene_code = np.repeat(np.arange(len(names)), per_gene)
    xy = np.column_stack([expression["x"], expression["y"]]).astype(np.int64)
    bins, inverse = np.unique(xy, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    x = sp.csr_matrix(
        (expression["count"].astype(np.int32), (inverse, gene_code)), shape=(len(bins), len(names))
    )
    x.sum_duplicates()
    points_name, table_name = f"bin{size}_genes", f"bin{size}_table"
    frame = pd.DataFrame(
        {
            "x": bins[:, 0].astype(np.float64),
            "y": bins[:, 1].astype(np.float64),
            BIN_INSTANCE_KEY: np.arange(len(bins), dtype=np.int64),
        }
    )
    try:
        points = PointsModel.parse(
            frame, instance_key=BIN_INSTANCE_KEY, transformations=tfs, name=points_name
        )
        var = pd.DataFrame({"gene_name": names.astype(str), "count": per_gene}, index=_unique(names))
        obs = pd.DataFrame(
            {
                BIN_INSTANCE_KEY: np.arange(len(bins), dtype=np.int64),
                REGION_KEY: pd.Categorical([points_name] * len(bins)),
            },
            index=pd.Index(np.arange(len(bins)).astype(str)),
        )
        table = TableModel.parse(
            ad.AnnData(x, obs=obs, var=var),
            region=points_name,
            region_key=REGION_KEY,
            instance_key=BIN_INSTANCE_KEY,
            name=table_name,
        )
    except ValidationError as err:
        raise ReaderError(f"{file}: {err}") from err
    return points, table


# ------------------------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------------------------


@with_folder_hints('stereoseq')
def iter_stereoseq(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    cells: bool = True,
    cell_polygons: bool = True,
    bin_sizes: int | Sequence[int] | None = None,
    raw_gef: bool = False,
    adjusted: bool = True,
    images: bool = True,
    image_chunks: int | Sequence[int] | None = None,
    pyramid: bool = True,
) -> Iterator[tuple[str, Any]]:
    """Yield the elements of a Stereo-seq SAW output: images, cell circles and polygons, the cells table, then
    per square-bin level its points and table. Parameters are those of :func:`stereoseq`."""
    from tissuestack.elements import sanitize_name
    from tissuestack.io._tiff import tiff_metadata, tiff_to_element
    from tissuestack.transforms import Scale

    path = Path(path).absolute()
    if not path.is_dir():
        raise ReaderError(f"{path}: not a directory; expected a Stereo-seq SAW output folder")
    layout, root = _layout(path)
    gef_dirs = (
        [root / V6_DIRS[k] for k in ("cellcut", "tissuecut", "count")]
        if layout == "v6"
        else [root / V8_EXPRESSION]
    )
    sn = _serial(gef_dirs, dataset_id)
    files = _files(root, layout, sn, raw_gef=raw_gef, adjusted=adjusted)

    cellbin, cellbin_tried = files["cellbin"]
    if cells and cellbin is None:
        raise ReaderError(
            f"{cellbin_tried[-1]}: cell-bin GEF not found (tried {', '.join(p.name for p in cellbin_tried)}); pass "
            "cells=False to skip the cells"
        )
    square, square_tried = files["square"]
    wanted: list[int] = []
    resolutions: list[tuple[float, Path]] = []
    if isinstance(bin_sizes, int | np.integer):
        bin_sizes = (int(bin_sizes),)
    if bin_sizes is None or len(bin_sizes) > 0:
        if square is None:
            if bin_sizes is not None:
                raise ReaderError(
                    f"{square_tried[0]}: square-bin GEF not found (tried {', '.join(p.name for p in square_tried)}); "
                    "pass bin_sizes=() to skip the square bins"
                )
        else:
            levels, res = _levels(square)
            resolutions.append((res, square))
            if bin_sizes is None:
                wanted = levels
            else:
                wanted = [int(b) for b in bin_sizes]
                absent = [b for b in wanted if b not in levels]
                if absent:
                    raise ReaderError(
                        f"{square}: no square-bin level(s) {absent}; the file has the levels {levels}"
                    )
    cell_data = _read_cellbin(cellbin) if cells else None
    if cell_data is not None:
        resolutions.append((cell_data["resolution"], cellbin))
    if len({r for r, _ in resolutions}) > 1:
        raise ReaderError(
            f"{resolutions[0][1]} and {resolutions[1][1]}: different 'resolution' attributes "
            f"({[r for r, _ in resolutions]}); expected one DNB pitch"
        )
    um = (resolutions[0][0] if resolutions else DEFAULT_RESOLUTION_NM) / 1000.0
    tfs = {"global": Scale([um, um], axes=("x", "y"))}
    image_files = _image_files(files["images"], sn) if images else []
    if images and not image_files:
        warnings.warn(
            f"{files['images']}: no registered image ({sn}*_regist.tif, _tissue_cut.tif, _mask.tif); reading the "
            "expression only",
            UserWarning,
            stacklevel=2,
        )

    taken: list[str] = []
    for file in image_files:
        name = sanitize_name(file.name.split(".")[0], taken)
        taken.append(name)
        meta = tiff_metadata(file)
        h, w = meta.shape[meta.axes.index("Y")], meta.shape[meta.axes.index("X")]
        try:
            yield (
                name,
                tiff_to_element(
                    file,
                    kind="image",
                    transformations=tfs,
                    chunks=image_chunks,
                    name=name,
                    scale_factors=pyramid_factors(h, w) if pyramid and meta.n_levels == 1 else None,
                ),
            )
        except ValidationError as err:
            raise ReaderError(f"{file}: {err}") from err
    if cell_data is not None:
        assert cellbin is not None
        yield CELLS_CIRCLES, _circles(cell_data, tfs, cellbin)
        if cell_polygons:
            if cell_data["border"] is None:
                raise ReaderError(
                    f"{cellbin}: no cellBin/cellBorder dataset; pass cell_polygons=False to read the cells without "
                    "their borders"
                )
            yield CELLS_POLYGONS, _polygons(cell_data, tfs, cellbin)
        yield CELLS_TABLE, _cells_table(cell_data, files["cluster"], cellbin)
    for size in wanted:
        assert square is not None
        points, table = _square_level(square, size, tfs)
        yield f"bin{size}_genes", points
        del points
        yield f"bin{size}_table", table


def stereoseq(
    path: str | Path,
    *,
    dataset_id: str | None = None,
    cells: bool = True,
    cell_polygons: bool = True,
    bin_sizes: int | Sequence[int] | None = None,
    raw_gef: bool = False,
    adjusted: bool = True,
    images: bool = True,
    image_chunks: int | Sequence[int] | None = None,
    pyramid: bool = True,
):
    """Read a Stereo-seq SAW output folder (SAW v6/v7 numbered layout or SAW v8 ``outs/``).

    Parameters
    ----------
    path
        The SAW output folder (holding ``041.cellcut/`` ... or ``outs/``; ``outs/`` itself is accepted too).
    dataset_id
        The chip serial number ``<SN>``; default taken from the GEF file names.
    cells, cell_polygons
        Read the cell-bin GEF (circles and table), and the cell borders as polygons.
    bin_sizes
        Square-bin levels to read (e.g. ``(50, 100)``); default every level of the file; ``()`` none. A full chip's
        bin1 level holds one point per occupied DNB: choose coarse levels for large chips.
    raw_gef
        Take the square bins from ``<SN>.raw.gef`` instead of the tissue-cut GEF.
    adjusted
        SAW v8: prefer ``<SN>.adjusted.cellbin.gef`` (the expanded cells) when present.
    images
        Read the registered images (``*_regist.tif``, ``*_tissue_cut.tif``, ``*_mask.tif``).
    image_chunks, pyramid
        Dask chunks of the images; build a lazy pyramid.

    Returns
    -------
    SpatialData
        Images, shapes ``cells_circles`` / ``cells_polygons``, table ``cells_table``, points ``bin<N>_genes`` with
        tables ``bin<N>_table``; coordinate system ``global`` in µm.

    Raises
    ------
    ReaderError
        Unknown layout, a missing or truncated GEF, missing fields, inconsistent offsets; the message names the file
        and what was expected.
    """
    return collect(
        iter_stereoseq(
            path,
            dataset_id=dataset_id,
            cells=cells,
            cell_polygons=cell_polygons,
            bin_sizes=bin_sizes,
            raw_gef=raw_gef,
            adjusted=adjusted,
            images=images,
            image_chunks=image_chunks,
            pyramid=pyramid,
        )
    )


TECHNOLOGY = Technology(
    name="stereoseq",
    summary="STOmics Stereo-seq SAW v6/v7 (numbered folders) or v8 (outs/): cell-bin GEF cells with borders and "
    "counts, square-bin GEF levels as points + tables, registered images, in µm (DNB = 0.5 µm)",
    iter_elements=iter_stereoseq,
    options=(
        Option("dataset_id", str, None, "chip serial number (default: from the GEF file names)"),
        Option("cells", bool, True, "read the cell-bin GEF"),
        Option("cell_polygons", bool, True, "read the cell borders as polygons"),
        Option("bin_sizes", tuple, None, "square-bin levels to read, e.g. 50,100 (default all)"),
        Option("raw_gef", bool, False, "square bins from <SN>.raw.gef"),
        Option("adjusted", bool, True, "SAW v8: prefer the adjusted cell-bin GEF"),
        Option("images", bool, True, "read the registered images"),
        Option("pyramid", bool, True, "build image pyramids"),
    ),
)
