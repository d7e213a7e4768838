"""Taking the model out: ONNX and torch.export files checked against PyTorch, the README's
torch-free snippet, torch.hub, and every weights file a user has in every tool."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import export
import gradcam_utils
import train
from machinery.checkpoint_files import CheckpointError, load_checkpoint
from conftest import ROOT
from machinery.images import standardize
from model import ResNet, load_classifier, model_from_checkpoint, predict
from reference_format import reference_checkpoint, reference_network

onnxruntime = pytest.importorskip("onnxruntime")  # requirements-dev.txt installs it


def photos(folder):
    """A few pictures as users have them: sizes other than 32 px, one a phone's portrait
    photo stored landscape with an EXIF orientation tag."""
    rng = np.random.default_rng(4)
    folder.mkdir(exist_ok=True)
    paths = []
    for i, (w, h) in enumerate([(32, 32), (90, 60), (50, 120), (640, 480)]):  # the last: the
        # reduced JPEG decode (1/8 scale) differs from a full one; the snippet must ask for it
        path = folder / f"photo{i}.jpg"
        exif = Image.Exif()
        if i == 2:
            exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, exif=exif)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    """The smoke run's best model in both formats, through the command line's main()."""
    out, _ = smoke_run
    stem = tmp_path_factory.mktemp("export") / "model"
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        code = export.main([str(out / "checkpoints" / "best_model.pt"), "--format", "all",
                            "--out", str(stem)])
    assert code == 0, said.getvalue()
    return out / "checkpoints" / "best_model.pt", stem, said.getvalue()


@pytest.mark.slow
def test_both_formats_hold_the_preprocessing_and_match_pytorch(exported):
    ckpt_path, stem, said = exported
    lines = said.strip().splitlines()
    assert lines[0].startswith(f"exporting {ckpt_path} (epoch 1); checking on 64 cifar100-format test images, generated (--smoke)")
    for fmt, line in zip(("onnx", "pt2"), lines[1:]):
        diff = float(re.search(r"top-1 identical, max \|probability difference\| (\S+)$", line)[1])
        assert line.startswith(f"{stem}.{fmt}: {fmt} (") and diff <= export.TOLERANCE
    ckpt = load_checkpoint(str(ckpt_path))
    clf = load_classifier(str(ckpt_path))
    x = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = clf.model(standardize(torch.from_numpy(x).permute(0, 3, 1, 2).float(),
                                                clf.mean, clf.std)).softmax(1).numpy()
    session = onnxruntime.InferenceSession(f"{stem}.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ckpt["class_names"] and meta["image_size"] == "32"
    assert json.loads(meta["mean"]) == ckpt["mean"] and meta["epoch"] == str(ckpt["epoch"])
    assert float(meta["test_accuracy"]) == ckpt["test_accuracy"]
    assert [i.name for i in session.get_inputs()] == ["images"]
    probs = session.run(["probabilities"], {"images": x})[0]  # a batch other than the export's
    assert np.abs(probs - expected).max() <= 1e-4
    # the .pt2 file loads with torch.export alone: no code of this repo
    code = (f"import sys, torch, numpy as np\nsys.path = [p for p in sys.path if p not in ('', {ROOT!r})]\n"
            f"x = torch.from_numpy(np.load({str(stem) + '.npy'!r}))\n"
            f"print(torch.export.load({str(stem) + '.pt2'!r}).module()(x)[1].tolist())")
    np.save(f"{stem}.npy", x)
    run = subprocess.run([sys.executable, "-c", code], cwd=stem.parent, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.abs(np.array(json.loads(run.stdout)) - expected).max() <= 1e-4


@pytest.mark.slow
def test_the_docs_snippet_classifies_a_photo_without_torch_or_this_repo(exported, tmp_path):
    ckpt_path, stem, _ = exported
    page = open(os.path.join(ROOT, "docs", "export.md")).read()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S)
                   if "onnxruntime.InferenceSession" in b)
    assert len(snippet.strip().splitlines()) <= 16
    clf = load_classifier(str(ckpt_path))
    for photo in photos(tmp_path):
        code = snippet.replace('"best_model.onnx"', repr(f"{stem}.onnx")).replace('"cat.jpg"', repr(photo))
        guard = (f"import sys\nsys.modules['torch'] = None  # import torch fails\n"
                 f"sys.path = [p for p in sys.path if p not in ('', {ROOT!r})]\n")
        run = subprocess.run([sys.executable, "-c", guard + code], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        got = [(ln.rsplit(" ", 1)[0], float(ln.rsplit(" ", 1)[1])) for ln in run.stdout.splitlines()]
        want = predict(clf, [photo], k=5)[0]
        assert [n for n, _ in got] == [n for n, _ in want], photo
        assert all(abs(p - q) <= 1e-3 for (_, p), (_, q) in zip(got, want)), photo


@pytest.mark.slow
def test_a_reference_checkpoint_exports_with_cifar100s_names(tmp_path, capsys):
    path = tmp_path / "best_model.pt"
    torch.save(reference_checkpoint(reference_network(), epoch=4), path)
    assert export.main([str(path), "--format", "all"]) == 0
    err = capsys.readouterr().err
    assert "a checkpoint of the reference repo?" in err
    assert (tmp_path / "best_model.pt2").is_file()
    meta = onnxruntime.InferenceSession(str(tmp_path / "best_model.onnx")).get_modelmeta()
    names = json.loads(meta.custom_metadata_map["class_names"])
    assert len(names) == 100 and names[0] == "apple" and meta.custom_metadata_map["epoch"] == "4"


def test_an_export_that_does_not_match_is_refused_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "weights.pt"
    torch.save(ResNet((1, 1, 1, 1), 8, 10).state_dict(), path)
    real = export._exportable

    def broken(module):  # what a faulty exporter would do: other numbers in the file
        copy = real(module)
        with torch.no_grad():
            copy.net.fc.bias[0] += 5.0
        return copy
    monkeypatch.setattr(export, "_exportable", broken)
    assert export.main([str(path), "--format", "pt2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("note: ")  # the bare state dict's note
    assert re.fullmatch(r"error: the pt2 export of .* does not match PyTorch on 64 images \(top-1 "
                        r"(identical|differs), max \|probability difference\| \S+, allowed 1e-04\); "
                        r"nothing was written", err[1])
    assert sorted(os.listdir(tmp_path)) == ["weights.pt"]


def test_torch_hub_loads_the_network_with_a_files_weights(tmp_path):
    net = ResNet((1, 1, 1, 1), 8, 10)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "ddp.pt")
    hub = torch.hub.load(ROOT, "resnet34", source="local", checkpoint=str(tmp_path / "ddp.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(hub(x), net.eval()(x)) and not hub.training
    fresh = torch.hub.load(ROOT, "resnet34", source="local", num_classes=10)
    assert fresh.fc.out_features == 10 and sum(p.numel() for p in fresh.parameters()) > 21e6


def test_torch_hub_works_beside_a_programs_own_model_and_data(tmp_path):
    """A user's project with its own model.py and data.py, imported first: torch.hub loads
    this repo's network all the same, and the program's modules are still its own."""
    net = ResNet((1, 1, 1, 1), 8, 10)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model.py").write_text("WHO = 'user model'\n")
    (tmp_path / "data.py").write_text("WHO = 'user data'\n")
    code = ("import sys, torch\n"
            "import model, data\n"
            f"hub = torch.hub.load({ROOT!r}, 'resnet34', source='local', checkpoint='weights.pt')\n"
            "assert hub.fc.out_features == 10 and not hub.training\n"
            "import model as again, data as again_data\n"
            "assert (again.WHO, again_data.WHO) == ('user model', 'user data')\n"
            "assert sys.modules['model'] is model and sys.modules['data'] is data\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


# -----------------------------------------------------------------------------
# Every weights file a user has

PREFIXES = ("", "module.", "_orig_mod.")  # plain, DDP's, torch.compile's


def _bare(tmp_path, prefix, net):
    path = tmp_path / f"bare{prefix.strip('.') or '_plain'}.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)  # the tutorials' way
    return path


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_bare_state_dict_loads_with_cifar100s_names_and_one_warning(tmp_path, prefix):
    net = ResNet((1, 1, 1, 1), 8, 100)
    path = _bare(tmp_path, prefix, net)
    with pytest.warns(UserWarning) as said:
        clf = load_classifier(str(path))
    assert len(said) == 1 and "it holds weights only (a bare state dict): using CIFAR-100's" in \
        str(said[0].message)
    assert clf.class_names[:2] == ["apple", "aquarium_fish"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model_from_checkpoint(str(path))[0](x), net.eval()(x))
    assert len(predict(clf, [np.zeros((40, 40, 3), np.uint8)], k=3)[0]) == 3


@pytest.mark.slow
def test_every_tool_reads_a_bare_state_dict(tiny_data, tmp_path, capsys):
    net = ResNet((1, 1, 1, 1), 8, 100)
    assert train.main(["--evaluate", str(_bare(tmp_path, "module.", net)), "--data-dir", tiny_data,
                       "--num-workers", "0", "--out-dir", str(tmp_path / "ev")]) == 0
    out, err = capsys.readouterr()
    assert "plain: top-1" in out and "(a bare state dict)" in err
    assert gradcam_utils.main(["--checkpoint", str(_bare(tmp_path, "_orig_mod.", net)),
                               "--data-dir", tiny_data, "--num-images", "2",
                               "--out-dir", str(tmp_path / "cam")]) == 0
    assert (tmp_path / "cam" / "gradcam_grid.png").is_file()
    init = train.init_from_checkpoint(ResNet((1, 1, 1, 1), 8, 100), str(_bare(tmp_path, "", net)))
    assert init.startswith("initial weights from")
    assert export.main([str(_bare(tmp_path, "module.", net)), "--format", "pt2"]) == 0


def test_weights_of_another_network_name_what_is_missing_and_what_the_file_has(tmp_path):
    torch.save({"backbone.0.weight": torch.zeros(3), "backbone.1.weight": torch.zeros(3),
                "head.weight": torch.zeros(2), "head.bias": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(tmp_path / "other.pt"))
    assert str(e.value) == (f"{tmp_path / 'other.pt'} has no conv1.weight or fc.weight: not this "
                            f"repo's ResNet (its keys begin: backbone.0.weight, backbone.1.weight, "
                            f"head.weight, ...)")


@pytest.mark.slow
def test_the_inference_benchmark_prints_both_runtimes_at_both_batches(capsys):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import inference
    assert inference.main(["--quick"]) == 0
    rows = [ln.split("|") for ln in capsys.readouterr().out.splitlines() if re.match(r" +\d+ \|", ln)]
    assert [int(r[0]) for r in rows] == [1, 64]
    assert all(float(r[1].replace(",", "")) > 0 and float(r[2].replace(",", "")) > 0 for r in rows)


def test_missing_onnx_packages_are_one_line_before_anything_is_exported(tmp_path, monkeypatch,
                                                                        capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    torch.save(ResNet((1, 1, 1, 1), 8, 10).state_dict(), tmp_path / "w.pt")
    assert export.main([str(tmp_path / "w.pt")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: ONNX export needs onnxscript: pip install onnx onnxscript onnxruntime (or "
        "--format pt2, which needs none)"]
    assert sorted(os.listdir(tmp_path)) == ["w.pt"]


@pytest.mark.slow  # (the exported fixture: both formats made and checked)
@pytest.mark.parametrize("key, value, says", [
    ("class_names", '["a", "b", "c"]', "its metadata names 3 classes, its network gives"),
    ("image_size", "64", "its metadata says 64 px, its network takes"),
])
def test_an_onnx_file_whose_metadata_does_not_fit_its_network_is_refused_at_start(
        exported, tmp_path, key, value, says):
    """Metadata edited (or another export's pasted in): the page once started and then
    failed every request with a bare 'Error'; now it does not start, in one line."""
    import onnx
    from machinery.space_app import PageError, onnx_model
    _, stem, _ = exported
    proto = onnx.load(f"{stem}.onnx")
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(PageError, match=re.escape(says)):
        onnx_model(str(tmp_path / "m.onnx"))
