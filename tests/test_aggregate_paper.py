"""The aggregation analyses of the SpatialData paper, end to end on synthetic data, through ``tissuestack.aggregate``.

Two Xenium-like replicates are drawn from the same underlying tissue (a smooth field of cell-type
probabilities, each type expressing its own marker genes); replicate 2 lives in its own rotated and shifted
frame. Both are summarised at Visium-like spots (hexagonal grid, radius 27.5 µm, pitch 100 µm) and in polygonal
regions of interest, and the two replicates' tables are compared: they must correlate strongly, and not at all
once the spots of one replicate are shuffled.
"""

import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely

import tissuestack as ts
from tissuestack.elements import PointsModel, ShapesModel
from tissuestack.transforms import Affine, Identity

EXTENT = 700.0  # µm
TYPES = ["tumor", "T", "B", "stroma"]
GENES_PER_TYPE = 5
SPACING = 11.0  # µm between cell centres
ANGLE = math.radians(90.0)  # replicate 2: rotated by 90° and shifted
SHIFT = np.array([EXTENT + 40.0, -25.0])


def type_probabilities(x, y):
    """The shared tissue: smooth, strongly patterned cell-type probabilities (n x 4)."""
    f = np.stack(
        [
            np.sin(x / 110.0) + np.cos(y / 130.0),
            np.cos(x / 90.0 + 1.0) - np.sin(y / 150.0),
            np.sin((x + y) / 120.0 + 2.0),
            np.cos((x - y) / 140.0),
        ],
        axis=1,
    )
    p = np.exp(3.0 * f)
    return p / p.sum(axis=1, keepdims=True)


def replicate(seed, to_frame=None):
    """Cells (20-vertex polygons with a cell_type) and transcripts of one replicate, in its own frame."""
    rng = np.random.default_rng(seed)
    side = int(EXTENT / SPACING)
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    cx = (gx.ravel() + 0.5) * SPACING + rng.uniform(-2.5, 2.5, gx.size)
    cy = (gy.ravel() + 0.5) * SPACING + rng.uniform(-2.5, 2.5, gx.size)
    p = type_probabilities(cx, cy)
    kind = (rng.random(len(cx))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    r = rng.uniform(3.5, 4.5, (len(cx), 1)) * (1 + 0.08 * rng.standard_normal((len(cx), 20)))
    rings = np.stack([cx[:, None] + r * np.cos(ang), cy[:, None] + r * np.sin(ang)], axis=-1)
    # transcripts: 30 per cell around its centre, genes from the cell type's markers (plus 10% any gene)
    per_cell = 30
    owner = np.repeat(np.arange(len(cx)), per_cell)
    tx = cx[owner] + rng.normal(0, 2.0, len(owner))
    ty = cy[owner] + rng.normal(0, 2.0, len(owner))
    marker = kind[owner] * GENES_PER_TYPE + rng.integers(0, GENES_PER_TYPE, len(owner))
    noise = rng.random(len(owner)) < 0.1
    gene = np.where(noise, rng.integers(0, len(TYPES) * GENES_PER_TYPE, len(owner)), marker)
    if to_frame is not None:  # express everything in the replicate's own frame
        rings = rings @ to_frame[:, :2].T + to_frame[:, 2]
        txy = np.column_stack([tx, ty]) @ to_frame[:, :2].T + to_frame[:, 2]
        tx, ty = txy[:, 0], txy[:, 1]
    cells = gpd.GeoDataFrame(
        {"cell_type": pd.Categorical.from_codes(kind, TYPES)}, geometry=shapely.polygons(rings)
    )
    names = [f"{t}_{i}" for t in TYPES for i in range(GENES_PER_TYPE)]
    points = pd.DataFrame({"x": tx, "y": ty, "gene": pd.Categorical.from_codes(gene, names)})
    return cells, points


def visium_spots():
    pitch, radius = 100.0, 27.5
    rows = np.arange(radius, EXTENT - radius, pitch * np.sqrt(3) / 2)
    xs, ys = [], []
    for i, y in enumerate(rows):
        x = np.arange(radius + (pitch / 2) * (i % 2), EXTENT - radius, pitch)
        xs.append(x)
        ys.append(np.full_like(x, y))
    return pd.DataFrame({"x": np.concatenate(xs), "y": np.concatenate(ys), "radius": radius})


@pytest.fixture(scope="module")
def sdata():
    rot = np.array([[math.cos(ANGLE), -math.sin(ANGLE)], [math.sin(ANGLE), math.cos(ANGLE)]])
    # replicate 2 is stored in a frame where global = rot @ local + SHIFT
    to_local = np.hstack([rot.T, (-rot.T @ SHIFT)[:, None]])
    to_global = Affine(np.vstack([np.hstack([rot, SHIFT[:, None]]), [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y"))
    sd = ts.SpatialData()
    for k, (seed, frame, t) in enumerate([(1, None, Identity()), (2, to_local, to_global)], start=1):
        cells, points = replicate(seed, frame)
        sd[f"cells_rep{k}"] = ShapesModel.parse(cells, transformations={"global": t})
        sd[f"transcripts_rep{k}"] = PointsModel.parse(
            points, feature_key="gene", transformations={"global": t}
        )
    sd["spots"] = ShapesModel.parse(visium_spots())
    sd["rois"] = ShapesModel.parse(
        [
            shapely.Polygon([(40, 40), (260, 60), (150, 250)]),
            shapely.Polygon([(400, 380), (660, 420), (640, 660), (420, 640), (380, 520)]),
            shapely.box(60, 450, 300, 650),
        ]
    )
    return sd


def centred_correlation(a, b):
    """Pearson correlation of two (regions x features) tables, each feature centred over the regions."""
    a = np.asarray(a.toarray() if sp.issparse(a) else a, dtype=float)
    b = np.asarray(b.toarray() if sp.issparse(b) else b, dtype=float)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_cell_type_fractions_at_spots_replicates_agree(sdata):
    tables = [
        ts.aggregate(
            f"cells_rep{k}", "spots", sdata=sdata, value_key="cell_type", agg_func="sum", fractions=True
        )
        for k in (1, 2)
    ]
    for t in tables:
        assert list(t.var_names) == TYPES and t.n_obs == len(sdata["spots"])
        # ~ area of a spot / area per cell cells fall in each spot
        expected_cells = math.pi * 27.5**2 / SPACING**2
        assert np.asarray(t.X.sum(axis=1)).ravel().mean() == pytest.approx(expected_cells, rel=0.1)
    r = centred_correlation(tables[0].X, tables[1].X)
    shuffled = tables[1].X[np.random.default_rng(0).permutation(tables[1].n_obs)]
    r0 = centred_correlation(tables[0].X, shuffled)
    assert r > 0.85, r
    assert abs(r0) < 0.3, r0
    # the composition follows the field that generated both replicates
    spots = sdata["spots"]
    truth = type_probabilities(spots.geometry.x.to_numpy(), spots.geometry.y.to_numpy())
    assert centred_correlation(tables[0].X, truth) > 0.85


def test_transcripts_at_spots_replicates_agree(sdata):
    tables = [
        ts.aggregate(f"transcripts_rep{k}", "spots", sdata=sdata, value_key="gene", agg_func="count")
        for k in (1, 2)
    ]
    n_genes = len(TYPES) * GENES_PER_TYPE
    for t in tables:
        assert t.shape == (len(sdata["spots"]), n_genes)
    # library-size normalised expression per spot
    x1, x2 = (np.asarray(t.X.toarray(), dtype=float) for t in tables)
    x1, x2 = x1 / x1.sum(axis=1, keepdims=True), x2 / x2.sum(axis=1, keepdims=True)
    assert centred_correlation(x1, x2) > 0.85
    perm = np.random.default_rng(1).permutation(len(x2))
    assert abs(centred_correlation(x1, x2[perm])) < 0.3
    # marker genes summed per type track the cell-type fractions of the same replicate
    frac = ts.aggregate("cells_rep1", "spots", sdata=sdata, value_key="cell_type", fractions=True)
    markers = (
        np.asarray(tables[0].X.toarray(), dtype=float)
        .reshape(len(x1), len(TYPES), GENES_PER_TYPE)
        .sum(axis=2)
    )
    assert centred_correlation(markers, frac.X) > 0.85


def test_cell_type_fractions_per_roi(sdata):
    comps = []
    for k in (1, 2):
        t = ts.aggregate(f"cells_rep{k}", "rois", sdata=sdata, value_key="cell_type", fractions=True)
        x = np.asarray(t.X.toarray())
        comps.append(x / x.sum(axis=1, keepdims=True))
        # the summed fractions estimate the number of cells in each ROI: its area over the area per cell
        areas = shapely.area(np.asarray(sdata["rois"].geometry.array))
        np.testing.assert_allclose(x.sum(axis=1), areas / SPACING**2, rtol=0.05)
    assert np.abs(comps[0] - comps[1]).max() < 0.08  # the replicates agree per ROI
    # and the ROIs differ from each other (different parts of the tissue)
    assert np.abs(comps[0][:, None, :] - comps[0][None, :, :]).sum(axis=2).max() > 0.3
