"""Users of the reference repo: its checkpoints, imports and metric files work here, and an
interrupted reference run continues here (see tests/reference_format.py for the format)."""
import csv
import os
import re
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from machinery import checkpointing, config, data
import train
from conftest import ROOT, run_here, train_here
from model import (BasicBlock, CheckpointError, ResNet, ResNet34, get_resnet34,
                   init_from_checkpoint, load_checkpoint, load_classifier, load_weights,
                   model_from_checkpoint, normalize, predict, save_checkpoint)
from reference_format import reference_checkpoint, reference_lr_after, reference_network


def _save(ckpt, path):
    torch.save(ckpt, str(path))  # as the reference does: a plain torch.save
    return path


def _accuracy(net, x, y, mean, std):
    with torch.no_grad():
        pred = net.eval()(normalize(x, mean, std)).argmax(1).numpy()
    return 100 * float((pred == y).mean())


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    """A reduced network (100 classes) in a reference checkpoint after epoch 4."""
    net = reference_network()
    path = tmp_path_factory.mktemp("reference") / "best_model.pt"
    return _save(reference_checkpoint(net, epoch=4), path), net


# -----------------------------------------------------------------------------
# Loading it everywhere

def test_evaluate_reads_a_reference_checkpoint_and_says_what_it_assumed(reference_file, tiny_data,
                                                                        tmp_path):
    path, net = reference_file
    proc = train_here("--evaluate", path, "--data-dir", tiny_data, "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"note: {path}: it holds no network arguments, class names or mean/std (a checkpoint "
        f"of the reference repo?): using CIFAR-100's class names and statistics, and "
        f"ResNet(blocks=[1, 1, 1, 1], width=8) (100 classes) as its weights' shapes say"]
    x, y = data.read_split(tiny_data, "cifar100", "test")
    spec = data.DATASETS["cifar100"]
    expected = _accuracy(net, x, y, spec["mean"], spec["std"])
    assert float(re.search(r"plain: top-1 ([0-9.]+)%", proc.stdout).group(1)) == round(expected, 2)


def test_gradcam_reads_a_reference_checkpoint(reference_file, tiny_data, tmp_path):
    path, _ = reference_file
    proc = run_here("gradcam_utils.py", "--checkpoint", path, "--data-dir", tiny_data,
                      "--num-images", "2", "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"note: {path}: it holds no network arguments")
    assert (tmp_path / "gradcam_grid.png").is_file() and (tmp_path / "gradcam_idx1_overlay.png").is_file()


def test_load_classifier_and_predict_on_a_reference_checkpoint(reference_file, tiny_data):
    path, net = reference_file
    with pytest.warns(UserWarning, match="using CIFAR-100's class names and statistics"):
        clf = load_classifier(str(path))
    x, _ = data.read_split(tiny_data, "cifar100", "test")
    spec = data.DATASETS["cifar100"]
    with torch.no_grad():
        top = net.eval()(normalize(x[:3], spec["mean"], spec["std"])).argmax(1)
    assert [r[0][0] for r in predict(clf, list(x[:3]), k=1)] == [data.CIFAR100_CLASSES[i] for i in top]
    model, _ = model_from_checkpoint(str(path))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.state_dict().items())


def test_the_readme_inference_snippet_runs_verbatim_on_a_full_size_reference_checkpoint(tmp_path,
                                                                                        monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                   if "from model import ResNet34" in block and "load_state_dict" in block)
    net = reference_network((5, 5, 5, 5), 64, 100)
    assert sum(p.numel() for p in net.parameters()) == 30_032_292
    os.makedirs(tmp_path / "checkpoints")
    _save(reference_checkpoint(net, epoch=0, steps_per_epoch=1), tmp_path / "checkpoints" / "best_model.pt")
    monkeypatch.chdir(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    scope = {"input_tensor": x}
    exec(snippet, scope)
    with torch.no_grad():
        assert torch.equal(scope["prediction"], net.eval()(x).argmax(1))


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(reference_file, tmp_path):
    # Re-tag every storage of the file as CUDA's, as torch.save writes it on a GPU.
    path, net = reference_file
    cuda_file = tmp_path / "cuda.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(cuda_file, "w") as dst:
        for item in src.infolist():
            blob = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in blob
                blob = blob.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(item, blob)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)  # the file really is a GPU one
    model, _ = model_from_checkpoint(str(cuda_file))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.state_dict().items())


def test_metrics_from_a_reference_checkpoint_have_the_reference_schedule_and_its_npz_keys(tmp_path):
    path = _save(reference_checkpoint(reference_network(), epoch=165), tmp_path / "ref.pt")
    proc = train_here("--metrics-from-ckpt", path, "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "training_metrics_from_ckpt"
    rows = list(csv.DictReader(open(folder / "metrics_from_ckpt.csv")))
    assert list(rows[0]) == ["epoch", "train_loss", "test_loss", "train_acc", "test_acc", "lr"]
    lrs = [float(r["lr"]) for r in rows]
    # the LR column of the reference's own training log, after epochs 0, 39 and 165
    assert [round(lrs[e], 6) for e in (0, 39, 165)] == [0.004148, 0.1, 0.010736]
    npz = np.load(folder / "metrics_from_ckpt.npz")
    assert sorted(npz.files) == sorted(["epochs", "train_losses", "test_losses", "train_acc",
                                        "test_acc", "lrs"])
    assert npz["epochs"].dtype == np.int64 and npz["train_acc"].dtype == np.float64
    assert list(npz["epochs"]) == list(range(166)) and np.allclose(npz["lrs"], lrs)


def test_metric_files_written_before_the_reference_key_names_still_read(tmp_path):
    from machinery.metrics import read_metrics
    cols = {"epoch": np.arange(3), "train_loss": np.ones(3), "test_loss": np.ones(3) * 2,
            "train_acc": np.arange(3.0), "test_acc": np.arange(3.0) + 1, "lr": np.full(3, 0.1)}
    np.savez(tmp_path / "old.npz", **cols)
    np.savez(tmp_path / "new.npz", epochs=cols["epoch"], train_losses=cols["train_loss"],
             test_losses=cols["test_loss"], train_acc=cols["train_acc"],
             test_acc=cols["test_acc"], lrs=cols["lr"])
    for name in ("old.npz", "new.npz"):
        got = read_metrics(tmp_path / name)
        assert got.keys() == cols.keys() and all(np.array_equal(got[k], v) for k, v in cols.items())


# -----------------------------------------------------------------------------
# Continuing a reference run

def _run_objects(cfg, steps):
    net = ResNet(tuple(cfg.blocks), cfg.width, 100)
    opt, sched = train.make_optimizer(net, cfg, steps)
    return net, opt, sched, torch.amp.GradScaler("cpu", enabled=False)


def test_restoring_a_reference_checkpoint_carries_momentum_and_replays_the_schedule(reference_file):
    path, net = reference_file
    ref = load_checkpoint(str(path))
    adopted = checkpointing.adopt_reference(ref)
    cfg = config.resolve_config({}, adopted["config"])
    assert (cfg.blocks, cfg.width, cfg.dataset, cfg.epochs) == ([1, 1, 1, 1], 8, "cifar100", 200)
    steps = 391
    run_net, opt, sched, scaler = _run_objects(cfg, steps)
    hist, position, progress = checkpointing.restore(adopted, run_net, opt, sched, scaler, cfg,
                                                      adopted["model_args"], steps)
    assert position == (5, 0) and progress is None
    assert sched.last_epoch == 5 * steps
    lr, momentum = reference_lr_after(5 * steps, steps)
    assert opt.param_groups[0]["lr"] == lr and opt.param_groups[0]["momentum"] == momentum
    assert opt.param_groups[0]["fused"] and opt.param_groups[0]["nesterov"]
    assert hist["lrs"] == [reference_lr_after((e + 1) * steps, steps)[0] for e in range(5)]
    assert hist["test_acc"] == ref["test_acc"] and hist["train_losses"] == ref["train_losses"]
    saved = ref["optimizer_state_dict"]["state"]
    for i, p in enumerate(run_net.parameters()):  # the momentum of the reference's SGD
        buf = opt.state[p]["momentum_buffer"]
        assert torch.equal(buf, saved[i]["momentum_buffer"]) and buf.stride() == p.stride()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in run_net.state_dict().items())


@pytest.mark.slow
def test_resume_continues_a_reference_run_with_its_schedule_and_history(tiny_data, tmp_path):
    # 300 training images in batches of 128: 3 steps per epoch; two epochs left of 200
    steps = 3
    ref = reference_checkpoint(reference_network(), epoch=197, steps_per_epoch=steps)
    path = _save(ref, tmp_path / "checkpoint_epoch_197.pt")
    flags = ["--data-dir", tiny_data, "--num-workers", "0", "--gradcam-images", "0",
             "--out-dir", tmp_path / "run"]
    refused = train_here("--resume", path, "--width", "16", *flags)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: --width 16 differs from the resumed run's 8; the network and the schedule are "
        "fixed by the checkpoint"]
    proc = train_here("--resume", path, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed the reference repo's {path} at epoch 198" in proc.stdout
    assert "warning" not in proc.stdout + proc.stderr  # its optimizer's lr is the schedule's
    assert "statistically, not bit for bit" in proc.stdout and "epoch 198/199" in proc.stdout
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 199 and len(last["test_acc"]) == 200
    for k in ("train_losses", "test_losses", "train_acc", "test_acc"):
        assert last[k][:198] == ref[k], k
    assert last["lrs"][198] == pytest.approx(reference_lr_after(199 * steps, steps)[0], rel=1e-12)
    assert last["lrs"][:198] == [reference_lr_after((e + 1) * steps, steps)[0] for e in range(198)]
    assert last["best_accuracy"] == max(last["test_acc"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "training_metrics_from_ckpt" / "metrics_from_ckpt.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(200))  # the curves go on from epoch 0
    assert "| 199 |" in (tmp_path / "run" / "training_logs.md").read_text()


@pytest.mark.slow
def test_a_reference_run_continues_with_its_own_epochs_and_keeps_every_file_it_did_not_write(
        tiny_data, tmp_path, capsys):
    # The reference saved a checkpoint_epoch_N.pt at each new best and deleted none; its run
    # here was EPOCHS = 30, which its files cannot say.
    steps, folder = 3, tmp_path / "checkpoints"
    os.makedirs(folder)
    theirs = {}
    for epoch in (4, 9, 14, 19, 24):
        path = _save(reference_checkpoint(reference_network(), epoch, steps, epochs=30),
                     folder / f"checkpoint_epoch_{epoch}.pt")
        theirs[path] = path.read_bytes()
    assert train.main(["--resume", "auto", "--epochs", "30", "--save-every", "1",
                       "--keep-checkpoints", "3", "--target-accuracy", "0", "--data-dir", tiny_data,
                       "--num-workers", "0", "--gradcam-images", "0", "--out-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"5 checkpoint_epoch_*.pt in {folder} were not written by this run: they are kept" in out
    assert ("settings: from the file --dataset cifar100, --blocks 1 1 1 1, --width 8; from the "
            "command line --epochs 30; assumed, the reference's --no-aug-on-device, "
            "--batch-size 128,") in out
    assert "warning" not in out + err  # the file's lr is 30 epochs' schedule's
    assert all(path.read_bytes() == blob for path, blob in theirs.items())  # untouched
    own = [f"checkpoint_epoch_{e}.pt" for e in (27, 28, 29)]  # 25 and 26 pruned: its own
    assert sorted(f for f in os.listdir(folder) if f.startswith("checkpoint_epoch_")) == \
        sorted([p.name for p in theirs] + own)
    last = torch.load(folder / "last.pt", weights_only=True)
    assert last["own_periodic"] == own and last["epoch"] == 29
    assert last["lrs"][25:] == [reference_lr_after((e + 1) * steps, steps, epochs=30)[0]
                                for e in range(25, 30)]


@pytest.mark.slow
def test_a_reference_run_continued_with_other_epochs_follows_them_and_says_the_lr_disagrees(
        tiny_data, tmp_path, capsys):
    steps = 3
    path = _save(reference_checkpoint(reference_network(), epoch=98, steps_per_epoch=steps),
                 tmp_path / "checkpoint_epoch_98.pt")  # saved under the 200-epoch schedule
    assert train.main(["--resume", str(path), "--epochs", "100", "--target-accuracy", "0",
                       "--data-dir", tiny_data, "--num-workers", "0", "--gradcam-images", "0",
                       "--out-dir", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    here = reference_lr_after(99 * steps, steps, epochs=100)[0]
    saved = reference_lr_after(99 * steps, steps, epochs=200)[0]
    said = [ln for ln in (out + err).splitlines() if "warning" in ln]
    assert said == [f"warning: {path} was saved at lr {saved:.6f}, but this run's schedule "
                    f"(--epochs 100, --batch-size 128, --max-lr 0.1, --pct-start 0.2) is at lr "
                    f"{here:.6f} there: if the reference run used other settings, stop and "
                    f"give them"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["config"]["epochs"] == 100 and last["epoch"] == 99
    assert last["lrs"][98] == pytest.approx(here, rel=1e-12)  # the resumed step, 100 epochs'
    assert last["lrs"][99] == pytest.approx(reference_lr_after(100 * steps, steps, epochs=100)[0])


def test_resume_auto_finds_the_newest_reference_checkpoint(tmp_path):
    net = reference_network()
    folder = tmp_path / "checkpoints"
    os.makedirs(folder)
    for name, epoch in (("checkpoint_epoch_4.pt", 4), ("checkpoint_epoch_9.pt", 9),
                        ("best_model.pt", 7)):
        _save(reference_checkpoint(net, epoch, steps_per_epoch=1), folder / name)
    save_checkpoint({"model_state_dict": net.state_dict()}, str(folder / "checkpoint_epoch_12.pt"))
    path, ckpt = train.pick_resume("auto", str(tmp_path))
    assert path == str(folder / "checkpoint_epoch_9.pt") and ckpt["epoch"] == 9


# -----------------------------------------------------------------------------
# Starting a new run from any checkpoint's weights

def test_init_from_keeps_every_weight_but_a_classifier_of_another_class_count(reference_file):
    path, ref_net = reference_file
    torch.manual_seed(5)
    net = ResNet((1, 1, 1, 1), 8, 10)
    fresh_fc = net.fc.weight.detach().clone()
    line = init_from_checkpoint(net, str(path))
    assert "except the classifier: 100 classes there, 10 here" in line
    state, ref = net.state_dict(), ref_net.state_dict()
    assert torch.equal(state["fc.weight"], fresh_fc)
    assert all(torch.equal(state[k], ref[k]) for k in state if not k.startswith("fc."))
    with pytest.raises(CheckpointError, match=r"holds ResNet\(blocks=\[1, 1, 1, 1\], width=8\) "
                                              r"\(100 classes\), this run builds ResNet34"):
        init_from_checkpoint(ResNet34(num_classes=100), str(path))


@pytest.mark.slow
def test_init_from_trains_cifar10_from_cifar100_weights(reference_file, tmp_path):
    path, _ = reference_file
    root = tmp_path / "c10"
    data.write_synthetic_dataset(str(root), "cifar10", n_train=200, n_test=100, seed=1)
    flags = ["--dataset", "cifar10", "--data-dir", root, "--blocks", "1", "1", "1", "1",
             "--num-workers", "0", "--epochs", "1", "--gradcam-images", "0", "--out-dir", tmp_path]
    proc = train_here("--init-from", path, "--width", "8", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"initial weights from {path} (after epoch 4), except the classifier: 100 classes "
            f"there, 10 here, so it starts from fresh weights") in proc.stdout
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["config"]["init_from"] == str(path) and len(last["class_names"]) == 10
    wrong = train_here("--init-from", path, "--width", "16", *flags[:-1],
                       tmp_path / "another")  # (the first run's folder is its own)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "this run builds ResNet(blocks=[1, 1, 1, 1], width=16) (10 classes)" in wrong.stderr


# -----------------------------------------------------------------------------
# The reference's imports, its CutMix loss, the errors

def test_the_reference_imports_work_as_its_users_wrote_them():
    assert BasicBlock.expansion == 1 and len(train.CIFAR100_CLASSES) == 100
    block = BasicBlock(64, 128, stride=2, downsample=None, dropout=0.0)
    assert block(torch.randn(2, 64, 16, 16)).shape == (2, 128, 8, 8)
    projection = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 1, stride=2, bias=False),
                                     torch.nn.BatchNorm2d(128))
    assert BasicBlock(64, 128, 2, projection).downsample is projection
    assert BasicBlock(64, 64).downsample is None
    model = get_resnet34(num_classes=100, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 30_032_292
    with pytest.raises(ValueError, match="no published pretrained weights"):
        get_resnet34(pretrained=True)
    # ResNet34(dropout=...) is the reference's: Dropout2d in every block; the classifier's 0.3 stays
    net = ResNet34(num_classes=100, dropout=0.2)
    drops = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert drops == [0.2] * 20 and net.dropout.p == 0.3
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in ResNet34().modules())
    assert ResNet34(fc_dropout=0.5).dropout.p == 0.5


def _loss_of_step(cfg, seed):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    with torch.no_grad():  # the batch and the output train_step will see, before its update
        mixed, ya, yb, lam = train.cutmix(x, y, np.random.default_rng(seed), cfg.cutmix_alpha,
                                          cfg.cutmix_prob)
        out = net(mixed)
    opt, sched = train.make_optimizer(net, cfg, steps_per_epoch=10)
    rt = train.make_runtime(torch.device("cpu"), "fp32", False, (0.5,) * 3, (0.5,) * 3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_sum, _, _ = train.train_step(net, x, y, opt, sched, scaler, rt, cfg,
                                      np.random.default_rng(seed))
    return float(loss_sum) / len(x), out, ya, yb, lam


@pytest.mark.parametrize("both", [False, True])
def test_cutmix_batches_get_no_label_smoothing_unless_asked(both):
    cfg = config.Config(cutmix_prob=1.0, cutmix_label_smoothing=both)
    loss, out, ya, yb, lam = _loss_of_step(cfg, seed=3)
    assert lam < 1
    eps = 0.1 if both else 0.0
    expected = lam * F.cross_entropy(out, ya, label_smoothing=eps) + \
        (1 - lam) * F.cross_entropy(out, yb, label_smoothing=eps)
    assert loss == pytest.approx(float(expected), rel=1e-6)
    plain, out, ya, _, _ = _loss_of_step(config.Config(cutmix_prob=0.0), seed=3)
    assert plain == pytest.approx(float(F.cross_entropy(out, ya, label_smoothing=0.1)), rel=1e-6)


def test_weights_that_do_not_fit_are_named_in_one_line():
    state = ResNet((1, 1, 1, 1), 8, 100).state_dict()
    for k in ("layer1.0.conv1.weight", "layer1.0.bn1.weight"):
        state.pop(k)
    state["classifier.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 64)
    with pytest.raises(CheckpointError) as e:
        load_weights(ResNet((1, 1, 1, 1), 8, 100), state)
    assert str(e.value) == (
        "the checkpoint's weights do not fit ResNet(blocks=[1, 1, 1, 1], width=8) (100 classes): "
        "2 missing (layer1.0.conv1.weight, layer1.0.bn1.weight), 1 unexpected "
        "(classifier.weight), 1 of another shape (fc.weight (10, 64) there, (100, 64) here)")


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_the_weights_only_refusal_names_what_the_file_asks_for_in_one_clean_line(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "x": _Payload()}, str(path))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    assert str(e.value) == (f"refusing to load {path}: it asks for posix.system, and a checkpoint "
                            f"holds only tensors and plain values; nothing in it was run")


# -----------------------------------------------------------------------------
# This repo's own older checkpoints

def _as_older_checkpoint(ckpt):
    """A checkpoint as this repo wrote it before the reference's names: `shortcut` keys,
    a config without the fields added since."""
    old = dict(ckpt, model_state_dict={k.replace(".downsample.", ".shortcut."): v
                                       for k, v in ckpt["model_state_dict"].items()})
    old["config"] = {k: v for k, v in ckpt["config"].items()
                     if k not in config.OLDER_RUNS}
    old["model_args"] = {k: v for k, v in ckpt["model_args"].items() if k != "block_dropout"}
    return old


@pytest.mark.slow
def test_an_older_checkpoint_of_this_repo_resumes_bit_for_bit(tiny_data, tmp_path):
    # Before the change both CutMix terms were smoothed: a resumed older run keeps that.
    straight = train_here("--data-dir", tiny_data, "--blocks", "1", "1", "1", "1", "--width", "16",
                          "--epochs", "2", "--batch-size", "50", "--save-every", "1",
                          "--num-workers", "0", "--target-accuracy", "0",
                          "--cutmix-label-smoothing", "--gradcam-images", "0",
                          "--out-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    ckpts = tmp_path / "straight" / "checkpoints"
    old = _as_older_checkpoint(torch.load(ckpts / "checkpoint_epoch_0.pt", weights_only=True))
    assert any(".shortcut." in k for k in old["model_state_dict"])
    save_checkpoint(old, str(tmp_path / "old.pt"))
    # the README's snippet style: the network's own load_state_dict reads the old names
    net = ResNet((1, 1, 1, 1), 16, 100)
    net.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True)["model_state_dict"])
    assert torch.equal(net.layer2[0].downsample[0].weight,
                       old["model_state_dict"]["layer2.0.shortcut.0.weight"])
    proc = train_here("--resume", tmp_path / "old.pt", "--gradcam-images", "0",
                      "--out-dir", tmp_path / "resumed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(ckpts / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert b["config"]["cutmix_label_smoothing"] is True
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for k, v in a["model_state_dict"].items():
        assert torch.equal(v, b["model_state_dict"][k]), k
    assert a["train_losses"] == b["train_losses"] and a["test_acc"] == b["test_acc"]
