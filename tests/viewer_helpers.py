"""Small data for the viewer tests (tests/test_viewer*.py)."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

import tissuestack as ts


def make_sdata() -> ts.SpatialData:
    squares = gpd.GeoDataFrame(
        geometry=[shapely.box(10, 10, 40, 40), shapely.box(60, 60, 90, 90)], index=pd.Index(["a", "b"])
    )
    cells = ts.ShapesModel.parse(squares, transformations={"global": ts.Identity()})
    spots = ts.ShapesModel.parse(
        np.array([[50.0, 50.0]]), geometry=0, radius=20.0, transformations={"other": ts.Identity()}
    )
    rng = np.random.default_rng(0)
    tx = pd.DataFrame({"x": rng.uniform(62, 88, 300), "y": rng.uniform(12, 38, 300)})
    tx["gene"] = pd.Categorical(np.where(np.arange(300) < 150, "g1", "g2"))
    points = ts.PointsModel.parse(tx, feature_key="gene", transformations={"global": ts.Identity()})
    img = np.zeros((2, 100, 100), dtype=np.uint16)
    img[0, 45:55, 5:15] = 1000  # a bright block in channel 0 at x 5..15, y 45..55 (pixel = unit)
    image = ts.Image2DModel.parse(img, dims=("c", "y", "x"), c_coords=["DAPI", "CD3"],
                                  transformations={"global": ts.Identity()})  # fmt: skip
    labels = np.zeros((100, 100), dtype=np.int32)
    labels[60:90, 10:40] = 7
    lab = ts.Labels2DModel.parse(labels, dims=("y", "x"), transformations={"global": ts.Identity()})
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(["cells", "cells"]),
            "cell_id": ["a", "b"],
            "cell_type": pd.Categorical(["x", "y"]),
            "score": [1.0, 3.0],
        },
        index=["0", "1"],
    )
    table = ad.AnnData(obs=obs)
    table.uns["cell_type_colors"] = np.array(["#ff0000", "#0000ff"], dtype=object)
    table = ts.TableModel.parse(table, region=["cells"], region_key="region", instance_key="cell_id")
    sdata = ts.SpatialData(
        images={"img": image}, labels={"lab": lab}, points={"tx": points},
        shapes={"cells": cells, "spots": spots}, tables={"table": table},
    )  # fmt: skip
    return sdata
