"""Synthetic data with every element kind, for tests, documentation, benchmarks and the demo.

The tissue is a jittered grid of round cells with a cell type each. From it the generator derives, all
consistent with each other:

* ``morphology`` — a 3-channel uint16 image pyramid (DAPI, membrane, stain), computed lazily block by block;
* ``cell_labels`` — the cell segmentation (label = cell id, 0 = background), also lazy;
* ``transcripts`` — points (x, y, z in microns, categorical ``gene``, ``cell_id`` with 0 for background) in
  several partitions; gene usage depends on the cell type;
* ``cell_boundaries`` (polygons), ``nuclei`` (circles), ``spots`` (Visium-like hexagonal circles with string
  ids) and ``regions_of_interest`` (a polygon and a multipolygon);
* ``table`` — transcript counts per cell (sparse) with ``cell_type``, annotating ``cell_boundaries``.

Coordinates: ``global`` is in microns; rasters are in pixels and carry a scale to ``global`` plus an identity
to the ``pixels`` coordinate system.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely

from tissuestack._container import SpatialData
from tissuestack.elements import (
    Image2DModel,
    Labels2DModel,
    PointsModel,
    ShapesModel,
    TableModel,
)
from tissuestack.transforms import Identity, Scale

__all__ = ["CELL_TYPES", "SyntheticTissue", "synthetic"]

CELL_TYPES = ("T", "B", "tumor", "fibroblast", "endothelial", "myeloid")
CHANNELS = ("DAPI", "membrane", "stain")
_SPACING = 10.0  # microns between cell centres
_POLY_VERTICES = 16


@dataclass(frozen=True)
class SyntheticTissue:
    """The geometry every element is derived from (microns)."""

    side: int
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    cell_type: np.ndarray  # codes into CELL_TYPES

    @property
    def n_cells(self) -> int:
        return len(self.cx)

    @property
    def extent(self) -> float:
        return self.side * _SPACING

    def owner(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cell id (1-based) containing each point, 0 for background. Vectorized."""
        gx = np.clip((x // _SPACING).astype(np.int64), 0, self.side - 1)
        gy = np.clip((y // _SPACING).astype(np.int64), 0, self.side - 1)
        idx = gy * self.side + gx
        valid = idx < self.n_cells
        idx = np.where(valid, idx, 0)
        inside = valid & ((x - self.cx[idx]) ** 2 + (y - self.cy[idx]) ** 2 < self.radius[idx] ** 2)
        return np.where(inside, idx + 1, 0)


def make_tissue(n_cells: int, seed: int = 0) -> SyntheticTissue:
    if n_cells < 1:
        raise ValueError(f"n_cells must be at least 1, got {n_cells}")
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_cells)))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    # jitter keeps every cell inside its own grid square, so owner() only needs that square
    radius = rng.uniform(0.28, 0.42, n_cells) * _SPACING
    slack = 0.5 * _SPACING - radius
    cx = (gx.ravel()[:n_cells] + 0.5) * _SPACING + rng.uniform(-1, 1, n_cells) * slack
    cy = (gy.ravel()[:n_cells] + 0.5) * _SPACING + rng.uniform(-1, 1, n_cells) * slack
    # cell types in spatial patches: type from a coarse noisy field
    patch = (cx // (6 * _SPACING)).astype(np.int64) * 7 + (cy // (6 * _SPACING)).astype(np.int64) * 3
    cell_type = (patch + rng.integers(0, 2, n_cells)) % len(CELL_TYPES)
    return SyntheticTissue(side, cx, cy, radius, cell_type)


def _raster_block(tissue: SyntheticTissue, pixel_size: float, seed: int, y0: int, x0: int, ny: int, nx: int):
    ys = (np.arange(y0, y0 + ny) + 0.5) * pixel_size
    xs = (np.arange(x0, x0 + nx) + 0.5) * pixel_size
    X, Y = np.meshgrid(xs, ys)
    lab = tissue.owner(X.ravel(), Y.ravel()).reshape(ny, nx)
    idx = np.maximum(lab - 1, 0)
    d = np.sqrt((X - tissue.cx[idx]) ** 2 + (Y - tissue.cy[idx]) ** 2) / tissue.radius[idx]
    return lab, d, np.random.default_rng([seed, y0, x0])


def _labels_block(block_info=None, *, tissue, pixel_size):
    loc = block_info[None]["array-location"]
    (y0, y1), (x0, x1) = loc
    lab, _, _ = _raster_block(tissue, pixel_size, 0, y0, x0, y1 - y0, x1 - x0)
    return lab.astype(np.int32)


def _image_block(block_info=None, *, tissue, pixel_size, seed):
    loc = block_info[None]["array-location"]
    (c0, c1), (y0, y1), (x0, x1) = loc
    lab, d, rng = _raster_block(tissue, pixel_size, seed, y0, x0, y1 - y0, x1 - x0)
    inside = lab > 0
    dapi = np.where(inside & (d < 0.55), 3000.0, 0.0)
    membrane = np.where(inside & (d > 0.8), 2500.0, 0.0)
    stain = np.where(inside, 400.0 * (1 + tissue.cell_type[np.maximum(lab - 1, 0)]), 0.0)
    stack = np.stack([dapi, membrane, stain])[c0:c1]
    stack += rng.normal(100.0, 20.0, stack.shape)
    return np.clip(stack, 0, 65535).astype(np.uint16)


def _polygons(tissue: SyntheticTissue, rng: np.random.Generator) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, _POLY_VERTICES, endpoint=False)
    wobble = 1 + 0.06 * rng.standard_normal((tissue.n_cells, _POLY_VERTICES))
    r = np.clip(tissue.radius[:, None] * wobble, 0.5 * tissue.radius[:, None], 0.49 * _SPACING)
    px = tissue.cx[:, None] + r * np.cos(ang)[None, :]
    py = tissue.cy[:, None] + r * np.sin(ang)[None, :]
    rings = np.stack([px, py], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)
    return shapely.polygons(rings)


def _spots(extent: float) -> tuple[np.ndarray, np.ndarray, float]:
    pitch = 5 * _SPACING
    rows = np.arange(pitch / 2, extent, pitch * np.sqrt(3) / 2)
    xs = [np.arange(pitch / 2 + (pitch / 2) * (i % 2), extent, pitch) for i in range(len(rows))]
    sx = np.concatenate(xs) if xs else np.empty(0)
    sy = np.concatenate([np.full(len(x), y) for x, y in zip(xs, rows, strict=True)]) if xs else np.empty(0)
    if not len(sx):  # a tissue smaller than one spot pitch still gets one spot, in its centre
        sx, sy = np.array([extent / 2]), np.array([extent / 2])
    return sx, sy, 0.275 * pitch


def _transcripts(tissue: SyntheticTissue, n: int, n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    n_in = round(n * 0.8)
    owner = rng.integers(0, tissue.n_cells, n_in)
    ang = rng.uniform(0, 2 * np.pi, n_in)
    rad = tissue.radius[owner] * np.sqrt(rng.uniform(0, 1, n_in)) * 1.05
    x = np.concatenate([tissue.cx[owner] + rad * np.cos(ang), rng.uniform(0, tissue.extent, n - n_in)])
    y = np.concatenate([tissue.cy[owner] + rad * np.sin(ang), rng.uniform(0, tissue.extent, n - n_in)])
    # gene usage: a background distribution, sharpened per cell type
    base = rng.dirichlet(np.full(n_genes, 0.5))
    markers = rng.dirichlet(np.full(n_genes, 0.2), size=len(CELL_TYPES))
    probs = 0.5 * base[None, :] + 0.5 * markers
    cell_of = tissue.owner(x, y)
    type_of = np.where(cell_of > 0, tissue.cell_type[np.maximum(cell_of - 1, 0)], -1)
    genes = np.empty(n, dtype=np.int64)
    bg = type_of < 0
    genes[bg] = rng.choice(n_genes, int(bg.sum()), p=base)
    for t in range(len(CELL_TYPES)):  # one vectorized draw per cell type
        sel = type_of == t
        genes[sel] = rng.choice(n_genes, int(sel.sum()), p=probs[t])
    order = rng.permutation(n)
    names = np.array([f"gene{i:03d}" for i in range(n_genes)])
    return pd.DataFrame(
        {
            "x": x[order].astype(np.float32),
            "y": y[order].astype(np.float32),
            "z": rng.uniform(0, 10, n).astype(np.float32),
            "gene": pd.Categorical.from_codes(genes[order], categories=names),
            "cell_id": cell_of[order].astype(np.int32),
        }
    )


def synthetic(
    n_cells: int = 2_000,
    n_transcripts: int = 100_000,
    n_genes: int = 50,
    image_size: int = 1024,
    *,
    n_points_partitions: int = 4,
    pyramid_levels: int = 3,
    seed: int = 0,
) -> SpatialData:
    """Build a synthetic experiment with every element kind; sizes scale with the arguments.

    Parameters
    ----------
    n_cells
        Number of cells (laid out on a jittered square grid, 10 µm apart).
    n_transcripts
        Number of transcript points (80% inside cells).
    n_genes
        Number of genes (categories of ``transcripts.gene`` and columns of ``table``).
    image_size
        Side of the square image and labels in pixels (the pixel size follows from the tissue extent).
    n_points_partitions
        Partitions of the transcripts dask frame.
    pyramid_levels
        Levels of the image pyramid (1 = single scale); each level halves y and x.
    seed
        Random seed; the same arguments give the same data.
    """
    if image_size < 1 or n_genes < 1 or n_transcripts < 0:
        raise ValueError("image_size and n_genes must be >= 1 and n_transcripts >= 0")
    rng = np.random.default_rng(seed)
    tissue = make_tissue(n_cells, seed)
    pixel_size = tissue.extent / image_size
    raster_tf = {"global": Scale([pixel_size, pixel_size], axes=("x", "y")), "pixels": Identity()}
    chunk = min(image_size, 1024)

    labels = da.map_blocks(
        _labels_block,
        tissue=tissue,
        pixel_size=pixel_size,
        chunks=((chunk,) * (image_size // chunk) + ((image_size % chunk,) if image_size % chunk else ()),)
        * 2,
        dtype=np.int32,
        meta=np.empty((0, 0), np.int32),
    )
    image = da.map_blocks(
        _image_block,
        tissue=tissue,
        pixel_size=pixel_size,
        seed=seed,
        chunks=((len(CHANNELS),), *labels.chunks),
        dtype=np.uint16,
        meta=np.empty((0, 0, 0), np.uint16),
    )
    levels = max(1, min(pyramid_levels, int(np.log2(max(image_size, 1))) + 1))
    scale_factors = [2] * (levels - 1) or None

    frame = _transcripts(tissue, n_transcripts, n_genes, rng)
    polygons = _polygons(tissue, rng)
    ids = np.arange(1, tissue.n_cells + 1)
    sx, sy, spot_r = _spots(tissue.extent)
    e = tissue.extent
    roi = [
        shapely.Polygon(
            [(0.1 * e, 0.1 * e), (0.45 * e, 0.15 * e), (0.4 * e, 0.45 * e), (0.15 * e, 0.35 * e)]
        ),
        shapely.MultiPolygon(
            [
                shapely.box(0.55 * e, 0.55 * e, 0.7 * e, 0.7 * e),
                shapely.Point(0.8 * e, 0.8 * e).buffer(0.08 * e),
            ]
        ),
    ]

    counts = _count_matrix(frame, tissue.n_cells, n_genes)
    obs = pd.DataFrame(
        {
            "cell_id": ids,
            "region": pd.Categorical(["cell_boundaries"] * tissue.n_cells),
            "cell_type": pd.Categorical.from_codes(tissue.cell_type, categories=list(CELL_TYPES)),
        },
        index=[f"cell{i}" for i in ids],
    )
    table = ad.AnnData(
        X=counts,
        obs=obs,
        var=pd.DataFrame(index=list(frame["gene"].cat.categories)),
        obsm={"spatial": np.column_stack([tissue.cx, tissue.cy])},
    )

    return SpatialData(
        images={
            "morphology": Image2DModel.parse(
                image,
                c_coords=list(CHANNELS),
                scale_factors=scale_factors,
                transformations=raster_tf,
                name="morphology",
            )
        },
        labels={
            "cell_labels": Labels2DModel.parse(labels, transformations=dict(raster_tf), name="cell_labels")
        },
        points={
            "transcripts": PointsModel.parse(
                frame,
                feature_key="gene",
                instance_key="cell_id",
                npartitions=max(1, min(n_points_partitions, max(len(frame), 1))),
                name="transcripts",
            )
        },
        shapes={
            "cell_boundaries": ShapesModel.parse(gpd.GeoDataFrame(geometry=polygons, index=ids)),
            "nuclei": ShapesModel.parse(
                np.column_stack([tissue.cx, tissue.cy]), radius=0.5 * tissue.radius, index=ids
            ),
            "spots": ShapesModel.parse(
                np.column_stack([sx, sy]), radius=spot_r, index=[f"spot{i:05d}" for i in range(len(sx))]
            ),
            "regions_of_interest": ShapesModel.parse(
                gpd.GeoDataFrame({"name": ["roi_a", "roi_b"]}, geometry=roi, index=[1, 2])
            ),
        },
        tables={
            "table": TableModel.parse(
                table, region="cell_boundaries", region_key="region", instance_key="cell_id", name="table"
            )
        },
        attrs={"generator": "tissuestack.datasets.synthetic", "seed": seed},
    )


def _count_matrix(frame: pd.DataFrame, n_cells: int, n_genes: int) -> sp.csr_matrix:
    inside = frame["cell_id"].to_numpy() > 0
    rows = frame["cell_id"].to_numpy()[inside] - 1
    cols = frame["gene"].cat.codes.to_numpy()[inside]
    data = np.ones(len(rows), dtype=np.int32)
    m = sp.coo_matrix((data, (rows, cols)), shape=(n_cells, n_genes)).tocsr()
    m.sum_duplicates()
    return m
