"""The paper workflow (``tissuestack demo OUTDIR``) at a tiny size: alignment, correlations, store and figures."""

from __future__ import annotations

import pytest

import tissuestack as ts
from tissuestack.cli import main
from tissuestack.demo import run_paper_workflow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("paper")
    return outdir, run_paper_workflow(outdir, n_cells=1_200, n_genes=15, seed=0, progress=False)


def test_alignment_recovers_the_hidden_transformations(run):
    _, report = run
    for pair in ("rep2->rep1", "visium->rep1"):
        a = report["alignment"][pair]
        assert a["residual_um_mean"] < 2.0, a
        assert a["residual_um_max"] < 4.0, a
        assert a["rotation_deg"] == pytest.approx(a["true_rotation_deg"], abs=0.5)
    # the cells both sections share land on each other (each section jitters them by 1 µm: median 1.66 µm)
    assert report["alignment"]["rep2->rep1"]["shared_cell_distance_um_median"] < 2.5
    lm = report["landmarks"]
    assert len(lm["landmark_residuals_um"]) == lm["n"]
    assert lm["error_vs_truth_at_spots_um_mean"] < 8.0


def test_correlations_and_shuffled_control(run):
    _, report = run
    c = report["correlations"]
    assert c["n_spots"] >= 10
    assert c["replicates_fractions"] > 0.5, c
    assert c["replicates_genes"] > 0.3, c
    assert c["rep1_vs_visium_genes"] > 0.3, c
    for key in (
        "replicates_fractions_shuffled",
        "replicates_genes_shuffled",
        "rep1_vs_visium_genes_shuffled",
    ):
        assert abs(c[key]) < 0.3, (key, c[key])
    assert report["label_transfer"]["rep2_accuracy"] > 0.8
    for rep in ("rep1", "rep2"):
        for comp in report["rois"][rep].values():
            assert sum(comp.values()) == pytest.approx(1.0, abs=1e-2)


def test_store_rereads_with_the_expected_elements_and_figures_exist(run):
    outdir, report = run
    sdata = ts.read_zarr(outdir / "paper.zarr")
    expected = {
        "images": {"rep1_dapi", "rep2_dapi", "visium_he"},
        "shapes": {"rep1_cells", "rep2_cells", "visium_spots", "rois"},
        "points": {"rep1_transcripts", "rep2_transcripts"},
        "tables": {
            "rep1_table",
            "rep2_table",
            "visium_table",
            "rep1_celltype_fractions_at_spots",
            "rep2_celltype_fractions_at_spots",
            "rep1_transcripts_at_spots",
            "rep2_transcripts_at_spots",
        },
    }
    for kind, names in expected.items():
        assert names <= set(getattr(sdata, kind)), (kind, set(getattr(sdata, kind)))
    assert sdata.get_annotated_elements("rep1_celltype_fractions_at_spots") == ["visium_spots"]
    assert sdata["rep2_celltype_fractions_at_spots"].n_obs == len(sdata["visium_spots"])
    # everything of the three observations reaches the common coordinate system
    for name in ("rep1_dapi", "rep2_dapi", "visium_he", "rep2_cells", "rep2_transcripts", "visium_spots"):
        assert "aligned" in ts.get_transformation(sdata[name], get_all=True), name
    # the landmark fit places the Visium slide in its own coordinate system
    assert "aligned_landmarks" in ts.get_transformation(sdata["visium_spots"], get_all=True)
    for path in report["figures"].values():
        assert (outdir / path).stat().st_size > 1000, path


def test_cli_demo_outdir(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "out"), "--cells", "300", "--genes", "10"]) == 0
    out = capsys.readouterr().out
    assert "replicates fractions" in out and "shuffled" in out
    assert (tmp_path / "out" / "paper.zarr").is_dir()


def test_register_images_carries_whole_sections_along():
    """moving_coordinate_system: the moving section's cells and transcripts follow its image into the new system,
    and the reference section joins it unchanged."""
    import numpy as np
    from scipy.spatial import cKDTree

    from tissuestack.demo import simulate_paper_data

    paper = simulate_paper_data(n_cells=600, seed=2)
    assert "aligned" not in paper.coordinate_systems
    ts.register_images(
        "rep2_dapi",
        "rep1_dapi",
        sdata=paper,
        kind="rigid",
        add_to_coordinate_system="aligned",
        reference_coordinate_system="rep1",
        moving_coordinate_system="rep2",
    )
    in_aligned = set(paper.elements_in_coordinate_system("aligned"))
    assert {"rep1_cells", "rep1_transcripts", "rep2_cells", "rep2_transcripts"} <= in_aligned
    assert "visium_spots" not in in_aligned

    def centres(name, cs):
        gdf = ts.transform(paper[name], cs) if cs != "native" else paper[name]
        return np.column_stack([gdf.geometry.x, gdf.geometry.y])

    one = centres("rep1_cells", "aligned")
    np.testing.assert_allclose(one, centres("rep1_cells", "native"))  # the reference section is unchanged
    aligned = cKDTree(one).query(centres("rep2_cells", "aligned"))[0]
    native = cKDTree(one).query(centres("rep2_cells", "native"))[0]
    assert np.median(aligned) < 2.5 < np.median(native)  # shared cells meet (1 µm jitter per section)
    with pytest.raises(ts.ValidationError, match="has no transformation"):
        ts.register_images(
            "rep2_dapi",
            "rep1_dapi",
            sdata=paper,
            kind="rigid",
            add_to_coordinate_system="again",
            reference_coordinate_system="rep1",
            moving_coordinate_system="visium",
        )
    assert "again" not in paper.coordinate_systems  # refused before anything was placed
