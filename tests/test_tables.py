"""Tests of TableModel, get_table_keys and set_table_annotates."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tissuestack.elements._tables import (
    TABLE_ATTRS_KEY,
    TableModel,
    get_table_keys,
    set_table_annotates,
)
from tissuestack.errors import ValidationError

N = 8


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(3)


@pytest.fixture
def table(rng: np.random.Generator) -> ad.AnnData:
    obs = pd.DataFrame({"cell_id": np.arange(N, dtype=np.int64)}, index=[f"obs{i}" for i in range(N)])
    var = pd.DataFrame(index=["Actb", "Gapdh", "Cd3e"])
    return ad.AnnData(rng.poisson(2.0, (N, 3)).astype(np.float32), obs=obs, var=var)


@pytest.fixture
def two_region_table(table: ad.AnnData) -> ad.AnnData:
    table.obs["region"] = ["cells"] * 4 + ["nuclei"] * 4
    table.obs["cell_id"] = [0, 1, 2, 3, 0, 1, 2, 3]  # ids repeat across regions: fine
    return table


# ------------------------------------------------------------------------------------------------------------
# valid input
# ------------------------------------------------------------------------------------------------------------


def test_one_region_creates_region_column(table: ad.AnnData) -> None:
    out = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id", name="t")
    assert out is table
    assert isinstance(table.obs["region"].dtype, pd.CategoricalDtype)
    assert table.obs["region"].tolist() == ["cells"] * N
    assert table.uns[TABLE_ATTRS_KEY] == {
        "region": "cells",
        "region_key": "region",
        "instance_key": "cell_id",
    }
    assert get_table_keys(table) == (["cells"], "region", "cell_id")


def test_several_regions(two_region_table: ad.AnnData) -> None:
    TableModel.parse(
        two_region_table, region=["cells", "nuclei"], region_key="region", instance_key="cell_id"
    )
    assert isinstance(two_region_table.obs["region"].dtype, pd.CategoricalDtype)
    assert get_table_keys(two_region_table) == (["cells", "nuclei"], "region", "cell_id")
    TableModel.validate(two_region_table, name="t")


def test_region_as_numpy_array_after_read(two_region_table: ad.AnnData) -> None:
    TableModel.parse(
        two_region_table, region=["cells", "nuclei"], region_key="region", instance_key="cell_id"
    )
    two_region_table.uns[TABLE_ATTRS_KEY]["region"] = np.array(["cells", "nuclei"], dtype=object)
    TableModel.validate(two_region_table)
    assert get_table_keys(two_region_table)[0] == ["cells", "nuclei"]


def test_orphan_table(table: ad.AnnData) -> None:
    assert TableModel.parse(table) is table
    assert TABLE_ATTRS_KEY not in table.uns
    assert get_table_keys(table) == (None, None, None)
    TableModel.validate(table)


def test_all_null_keys_is_orphan(table: ad.AnnData) -> None:
    table.uns[TABLE_ATTRS_KEY] = {"region": None, "region_key": None, "instance_key": None}
    TableModel.validate(table)


def test_string_instance_ids(table: ad.AnnData) -> None:
    table.obs["cell_id"] = [f"cell_{i}" for i in range(N)]
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    table.obs["cell_id"] = table.obs["cell_id"].astype("category")
    TableModel.validate(table)


def test_int8_instance_ids_widened(table: ad.AnnData) -> None:
    table.obs["cell_id"] = table.obs["cell_id"].astype(np.int8)
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    assert table.obs["cell_id"].dtype == np.int16


def test_region_without_rows_is_allowed(table: ad.AnnData) -> None:
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    table.uns[TABLE_ATTRS_KEY]["region"] = ["cells", "nuclei"]
    TableModel.validate(table)


def test_retarget_renames_single_region(table: ad.AnnData) -> None:
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    set_table_annotates(table, "cells_v2", "region", "cell_id", name="t")
    assert table.obs["region"].tolist() == ["cells_v2"] * N
    assert list(table.obs["region"].cat.categories) == ["cells_v2"]
    assert get_table_keys(table) == (["cells_v2"], "region", "cell_id")


def test_retarget_to_several_regions(two_region_table: ad.AnnData) -> None:
    TableModel.parse(
        two_region_table, region=["cells", "nuclei"], region_key="region", instance_key="cell_id"
    )
    two_region_table.obs["other"] = pd.Categorical(["a"] * N)
    two_region_table.obs["other_id"] = np.arange(N)
    set_table_annotates(two_region_table, "a", "other", "other_id")
    assert get_table_keys(two_region_table) == (["a"], "other", "other_id")
    assert two_region_table.obs["region"].tolist()[:4] == ["cells"] * 4  # untouched


def test_retarget_to_nothing(table: ad.AnnData) -> None:
    TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    set_table_annotates(table, None, None, None)
    assert get_table_keys(table) == (None, None, None)


def test_failed_parse_leaves_table_unchanged(table: ad.AnnData) -> None:
    table.obs["cell_id"] = 0
    with pytest.raises(ValidationError):
        TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    assert "region" not in table.obs.columns
    assert TABLE_ATTRS_KEY not in table.uns


# ------------------------------------------------------------------------------------------------------------
# invalid input: one test each
# ------------------------------------------------------------------------------------------------------------


def test_region_value_not_in_region(two_region_table: ad.AnnData) -> None:
    with pytest.raises(
        ValidationError,
        match=r"^table 't': obs column 'region' \(region_key\) has values 'nuclei' that are not in region \['cells'\]",
    ):
        TableModel.parse(
            two_region_table, region="cells", region_key="region", instance_key="cell_id", name="t"
        )


def test_missing_region_key_column(table: ad.AnnData) -> None:
    with pytest.raises(ValidationError, match=r"^table: obs column 'region' \(region_key\) is missing"):
        TableModel.parse(table, region=["cells", "nuclei"], region_key="region", instance_key="cell_id")


def test_missing_region_key_column_validate(table: ad.AnnData) -> None:
    table.uns[TABLE_ATTRS_KEY] = {"region": "cells", "region_key": "region", "instance_key": "cell_id"}
    with pytest.raises(ValidationError, match=r"^table 't': obs column 'region' \(region_key\) is missing"):
        TableModel.validate(table, name="t")


def test_region_key_not_categorical(table: ad.AnnData) -> None:
    table.obs["region"] = "cells"
    table.uns[TABLE_ATTRS_KEY] = {"region": "cells", "region_key": "region", "instance_key": "cell_id"}
    with pytest.raises(
        ValidationError, match=r"obs column 'region' \(region_key\) has dtype .*expected categorical"
    ):
        TableModel.validate(table)


def test_null_instance_ids(table: ad.AnnData) -> None:
    table.obs["cell_id"] = pd.array([0, 1, None, 3, 4, None, 6, 7], dtype="Int64")
    with pytest.raises(
        ValidationError,
        match=r"obs column 'cell_id' \(instance_key\) has 2 missing values, at obs 'obs2', 'obs5'",
    ):
        TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")


def test_float_instance_ids(table: ad.AnnData) -> None:
    table.obs["cell_id"] = table.obs["cell_id"].astype(float)
    with pytest.raises(ValidationError, match=r"obs column 'cell_id' \(instance_key\) has dtype float64"):
        TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")


def test_duplicate_region_instance_pairs(two_region_table: ad.AnnData) -> None:
    two_region_table.obs["cell_id"] = [0, 1, 1, 3, 0, 1, 2, 2]
    with pytest.raises(
        ValidationError,
        match=r"2 rows repeat a \(region, cell_id\) pair already seen, e.g. \('cells', 1\), \('nuclei', 2\)",
    ):
        TableModel.parse(
            two_region_table, region=["cells", "nuclei"], region_key="region", instance_key="cell_id"
        )


def test_bad_obs_column_name(table: ad.AnnData) -> None:
    table.obs["has space"] = 1
    with pytest.raises(ValidationError, match=r"^table 't': obs column 'has space' is not a valid name"):
        TableModel.validate(table, name="t")


def test_index_obs_column(table: ad.AnnData) -> None:
    table.var["_index"] = "x"
    with pytest.raises(ValidationError, match=r"var column '_index' is reserved"):
        TableModel.validate(table)


def test_obsm_key_clash_ignoring_case(table: ad.AnnData, rng: np.random.Generator) -> None:
    table.obsm["X_umap"] = rng.random((N, 2))
    table.obsm["x_umap"] = rng.random((N, 2))
    with pytest.raises(ValidationError, match=r"obsm keys 'X_umap' and 'x_umap' clash ignoring case"):
        TableModel.validate(table)


def test_bad_layers_key(table: ad.AnnData) -> None:
    table.layers["raw counts"] = table.X.copy()
    with pytest.raises(ValidationError, match=r"layers key 'raw counts' is not a valid name"):
        TableModel.validate(table)


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"region": "cells"}, "region_key, instance_key"),
        ({"region": "cells", "region_key": "region"}, "instance_key"),
        ({"instance_key": "cell_id"}, "region, region_key"),
    ],
)
def test_partial_keys(table: ad.AnnData, kwargs: dict, missing: str) -> None:
    with pytest.raises(ValidationError, match=rf"must be given together .* without {missing}$"):
        TableModel.parse(table, **kwargs)


def test_partial_keys_in_uns(table: ad.AnnData) -> None:
    table.uns[TABLE_ATTRS_KEY] = {"region": "cells", "region_key": "region"}
    with pytest.raises(ValidationError, match=r"must be given together .* without instance_key$"):
        TableModel.validate(table)


def test_parse_without_keys_uses_uns(table: ad.AnnData) -> None:
    table.obs["region"] = "cells"  # plain strings
    table.uns[TABLE_ATTRS_KEY] = {"region": "cells", "region_key": "region", "instance_key": "cell_id"}
    TableModel.parse(table)
    assert isinstance(table.obs["region"].dtype, pd.CategoricalDtype)


def test_invalid_region_name(table: ad.AnnData) -> None:
    with pytest.raises(ValidationError, match=r"^table: region 'my cells' is not a valid element name"):
        TableModel.parse(table, region="my cells", region_key="region", instance_key="cell_id")
