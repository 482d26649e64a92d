"""notebooks/analysis.ipynb runs on the outputs of a tiny pipeline (every stage real), and its helpers work.

One module-scoped pipeline run (collect -> annotate -> saliency -> label -> pretrain -> rl -> report, test sizes,
64 px frames for MultiMAE) feeds both the notebook execution and the unit tests of visarl.report.analysis.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from visarl.report import analysis

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def _steps() -> str:
    conf = REPO / "conf"
    # Sizes below the tiny configs' own where a step's count does not matter here (epochs, rl steps).
    return f"""
  - name: collect
    config: {conf}/collect/sac_tiny.yaml
    overrides: ["data_dir={{data}}/replay", "env.task={{task}}", "env.image_size=64"]
  - name: annotate
    config: {conf}/annotate/simulated_tiny.yaml
    overrides: ["task={{task}}", "data_dir={{data}}/replay", "store={{data}}/annotations/simulated.jsonl",
                "export={{data}}/annotations.h5"]
  - name: saliency
    config: {conf}/saliency/tiny.yaml
    overrides: ["task={{task}}", "annotations={{data}}/annotations.h5", "epochs=2", "val_every=2", "num_images=2"]
  - name: label
    config: {conf}/label/tiny.yaml
    overrides: ["task={{task}}", "data_dir={{data}}/replay", "checkpoint={{step:saliency}}/picanet.pt"]
  - name: pretrain_rgb_sal
    config: {conf}/pretrain/tiny.yaml
    overrides: ["task={{task}}", "data_dirs=[{{data}}/replay]", "modalities=[rgb,saliency]", "trainer.max_epochs=1",
                "log_images_every_n_epochs=0"]
  - name: rl
    config: {conf}/rl/tiny.yaml
    overrides: ["env.task={{task}}", "num_steps=40", "eval.every=20"]
  - name: report
    config: {conf}/report/default.yaml
    overrides: ["runs=[{{run_dir}}]"]
"""


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    """A finished tiny pipeline run (about a minute of CPU)."""
    from visarl.fit import run

    tmp = tmp_path_factory.mktemp("pipeline")
    conf = tmp / "tiny_pipeline.yaml"
    conf.write_text(f"stage: pipeline\ntask: reach\nsteps:{_steps()}")
    run(str(conf), [f"output_dir={tmp}/runs", "run=p"])
    return tmp / "runs" / "tiny_pipeline" / "p"


def test_notebook_executes_on_a_tiny_pipeline(pipeline_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    monkeypatch.setenv(analysis.PIPELINE_ENV, str(pipeline_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # CellExecutionError (with the traceback) on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"pipeline run: {pipeline_dir}" in text  # the env var, not the default, chose the run
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "| CNN RGBS |" in markdown[0]  # Table I of the report step
    # Figure 3 (an Image) and the two figures (saliency, reconstructions) come out as PNGs.
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3


def test_paths_and_missing_files_are_named(pipeline_dir, tmp_path):
    paths = analysis.pipeline_paths(pipeline_dir)
    assert paths.table1_md == pipeline_dir / "report" / "run" / "table1.md"
    assert analysis.read_table1(paths) == paths.table1_md.read_text()
    for p in (paths.figure3, paths.annotations, paths.picanet, paths.encoder, paths.replay):
        assert p.exists(), p
    # A pipeline dir without outputs: each reader names the file it wanted.
    empty = analysis.pipeline_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"report/run/table1\.md not found: .*report step"):
        analysis.read_table1(empty)
    with pytest.raises(FileNotFoundError, match=r"data/annotations\.h5 not found"):
        analysis.saliency_examples(empty)
    no_weights = dataclasses.replace(paths, picanet=tmp_path / "saliency" / "run" / "picanet.pt")
    with pytest.raises(FileNotFoundError, match=r"saliency/run/picanet\.pt not found: .*saliency step"):
        analysis.saliency_examples(no_weights)
    with pytest.raises(FileNotFoundError, match=r"pretrain_rgb_sal/run/encoder\.pt not found"):
        analysis.load_reconstruction_model(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analysis.pipeline_paths(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no pipeline run under"):
        analysis.find_pipeline_dir("", runs_root=tmp_path)
    assert analysis.find_pipeline_dir("", runs_root=pipeline_dir.parent) == pipeline_dir
    assert analysis.find_pipeline_dir(str(pipeline_dir)) == pipeline_dir


def test_saliency_examples_and_figure(pipeline_dir):
    from visarl.annotate.store import load_annotations
    from visarl.saliency.data import split_indices

    paths = analysis.pipeline_paths(pipeline_dir)
    ex = analysis.saliency_examples(paths, num_frames=4)
    ann = load_annotations(paths.annotations)
    # The tiny saliency step held out round(8 * 0.2) = 2 of 8 frames (seed 0): those come first, then training ones.
    _, held = split_indices(len(ann.frames), 0.2, 0)
    assert list(ex.indices[:2]) == list(held) and ex.heldout.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(ex.frames, ann.frames[ex.indices])
    np.testing.assert_array_equal(ex.annotated, ann.maps[ex.indices])
    assert ex.predicted.shape == ex.annotated.shape and 0 <= ex.predicted.min() and ex.predicted.max() <= 1
    np.testing.assert_allclose(ex.mae, np.abs(ex.predicted - ex.annotated).mean(axis=(1, 2)), rtol=1e-5)
    fig = analysis.saliency_comparison_figure(ex)
    assert len(fig.axes) == 4 * 4  # frame | annotated | predicted | overlay per row
    assert "held-out" in fig.axes[0].get_title() and "MAE" in fig.axes[2].get_title()


def test_per_frame_scores_match_numpy():
    """Max F (beta^2 = 0.3) and MAE of each frame alone, against a plain-numpy computation."""
    rng = np.random.default_rng(0)
    pred = rng.random((2, 8, 8)).astype(np.float32)
    target = np.zeros((2, 8, 8), np.float32)
    target[0, 2:5, 2:6] = 1.0
    target[1, :, :3] = 0.8
    f, mae = analysis.per_frame_scores(torch.from_numpy(pred), torch.from_numpy(target))
    for i in range(2):
        t = target[i] > 0.5
        best = 0.0
        for th in np.linspace(0, 1, 256, dtype=np.float32):
            b = (pred[i] >= th) & (pred[i] > 0)
            tp = (b & t).sum()
            p, r = (tp / b.sum() if b.sum() else 0.0), tp / t.sum()
            best = max(best, 1.3 * p * r / (0.3 * p + r) if p + r else 0.0)
        assert f[i] == pytest.approx(best, abs=1e-5)
        assert mae[i] == pytest.approx(np.abs(pred[i] - target[i]).mean(), rel=1e-5)


def test_reconstruction_figure(pipeline_dir):
    paths = analysis.pipeline_paths(pipeline_dir)
    model, cfg = analysis.load_reconstruction_model(paths)
    assert tuple(model.modalities) == ("rgb", "saliency")
    inputs = analysis.reconstruction_inputs(paths, model.modalities, num_frames=2)
    assert inputs["rgb"].shape == (2, 3, 64, 64) and inputs["saliency"].shape == (2, 1, 64, 64)
    assert 0 <= float(inputs["saliency"].min()) and float(inputs["saliency"].max()) <= 1
    fig = analysis.reconstruction_figure(model, inputs, num_masks=3, num_visible=cfg["num_visible"])
    (ax,) = fig.axes
    cols = 2 + 3 * 2 * 2  # the inputs, then per mask and modality: masked input and reconstruction
    assert [t.get_text() for t in ax.get_xticklabels()] == analysis.reconstruction_columns(("rgb", "saliency"), 3)
    assert len(ax.get_xticklabels()) == cols
    image = ax.get_images()[0].get_array()
    assert image.shape == (2 + 2 * (64 + 2), 2 + cols * (64 + 2), 3)  # 64 px tiles, 2 px padding
    # The first tile is the input frame itself.
    np.testing.assert_allclose(image[2:66, 2:66], inputs["rgb"][0].permute(1, 2, 0).numpy(), atol=1e-6)
