"""notebooks/colab.ipynb, run as a user would in its quick mode, on the CPU."""
import json
import os
import shutil

import pytest

from conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "notebooks", "colab.ipynb")


def code_cells():
    nb = json.load(open(NOTEBOOK))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_notebook_carries_no_outputs():
    for cell in code_cells():
        assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_in_quick_mode_and_a_rerun_continues(
        smoke_run, tmp_path, monkeypatch, capsys):
    """Every code cell in order, as 'Run all' does. Outside Colab (IN_COLAB False) the
    cells that need it (clone, install, Drive, upload) are skipped by the notebook itself;
    the parameters cell is followed by the quick mode's settings. Its --smoke training
    goes on from the session's smoke run (a copy): the run from scratch is that run's own
    test, and a notebook after a disconnect starts exactly so."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    namespace, cells = {}, code_cells()
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK} cell {i}", "exec"), namespace)
        if "parameters" in cell["metadata"].get("tags", []):
            namespace.update(QUICK=True, USE_DRIVE=False, OUT_DIR=str(out))
    shown = capsys.readouterr().out
    assert namespace["IN_COLAB"] is False
    for path in ["checkpoints/best_model.pt", "training_metrics_from_ckpt/metrics_overview.png",
                 "training_metrics_from_ckpt/learning_rate.png",
                 "training_metrics_from_ckpt/confusion_matrix.png",
                 "gradcam_outputs/gradcam_grid.png", "gradcam_outputs/gradcam_sample.png"]:
        assert (out / path).is_file(), path
    assert f"--resume auto: continuing {out / 'checkpoints' / 'last.pt'}" in shown
    assert "flip TTA: top-1" in shown and "sample.png ->" in shown
    # after a disconnect the user runs the training cell again: it continues, not restarts
    train_cell = next(c for c in cells if "train.py {flags}" in "".join(c["source"]))
    exec("".join(train_cell["source"]), namespace)
    assert f"--resume auto: continuing {out / 'checkpoints' / 'last.pt'}" in capsys.readouterr().out


def test_outside_colab_the_outputs_go_beside_the_checkout_not_to_content(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    namespace = {}
    for cell in code_cells():
        text = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []) or "def sh(" in text or "drive.mount" in text:
            exec(compile(text, NOTEBOOK, "exec"), namespace)  # the defaults, as a user leaves them
    assert namespace["OUT_DIR"].startswith("/content/") and not namespace["IN_COLAB"]
    assert namespace["out_dir"] == str(tmp_path / "colab-run") and (tmp_path / "colab-run").is_dir()
