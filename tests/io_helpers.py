"""Helpers shared by the vendor-reader tests (``tests/test_io_*.py``): brute-force readings of vendor files,
transformation matrices, and running a script in the reference environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tissuestack.elements import get_transformation

REFERENCE_PYTHON = Path("/root/.cache/tissuestack-reference/bin/python")

#: skip a test when the reference environment (spatialdata 0.8 + spatialdata-io) is absent
needs_reference = pytest.mark.skipif(
    not REFERENCE_PYTHON.exists(), reason="the reference environment (spatialdata-io) is absent"
)


def affine_xy(element: Any, cs: str = "global") -> np.ndarray:
    """The 3x3 (x, y) affine matrix of ``element``'s transformation to ``cs``."""
    return get_transformation(element, cs).to_affine_matrix(("x", "y"), ("x", "y"))


def apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points ``xy`` (n x 2, or one point) through the 3x3 affine ``matrix``."""
    return np.atleast_2d(xy) @ matrix[:2, :2].T + matrix[:2, 2]


def dense_counts(matrix: Any) -> np.ndarray:
    """Dense barcodes x features counts of a 10x HDF5 ``matrix`` group (a features x barcodes CSC matrix), one
    column at a time."""
    n_features, n_barcodes = matrix["shape"][()]
    dense = np.zeros((n_barcodes, n_features))
    indptr, indices, data = matrix["indptr"][()], matrix["indices"][()], matrix["data"][()]
    for j in range(n_barcodes):  # column j of the CSC matrix
        dense[j, indices[indptr[j] : indptr[j + 1]]] = data[indptr[j] : indptr[j + 1]]
    return dense


def run_reference(script: str, *args: str | Path) -> Any:
    """Run ``script`` with the reference environment's Python and return the JSON of its last output line.

    The calling test is skipped when the environment is absent or cannot import its packages; any other
    failure fails it, showing the end of the script's stderr.
    """
    if not REFERENCE_PYTHON.exists():
        pytest.skip("the reference environment (spatialdata-io) is absent")
    res = subprocess.run(
        [str(REFERENCE_PYTHON), "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if res.returncode != 0 and "ModuleNotFoundError" in res.stderr:
        pytest.skip(f"the reference environment cannot import spatialdata-io: {res.stderr[-200:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
