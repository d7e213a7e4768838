"""End to end, as a user runs it: `python train.py --smoke`, resume, metrics, Grad-CAM."""
import csv
import os

import numpy as np
import pytest
import torch

from machinery.checkpoint_files import save_checkpoint
from conftest import ROOT, run_here, run_script, train_here
from model import ResNet

CKPT_KEYS = {"epoch", "model_state_dict", "optimizer_state_dict", "test_loss", "test_accuracy",
             "train_losses", "test_losses", "train_acc", "test_acc",  # the reference's keys
             "scheduler_state_dict", "scaler_state_dict", "lrs", "config", "model_args",
             "class_names", "best_accuracy", "mean", "std"}
PLOTS = ["metrics_overview.png", "train_loss.png", "test_loss.png", "train_acc.png", "test_acc.png",
         "learning_rate.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path, min_size=(100, 100)):
    import matplotlib.image
    assert open(path, "rb").read(8) == PNG_MAGIC, path
    h, w = matplotlib.image.imread(path).shape[:2]
    return h >= min_size[0] and w >= min_size[1]


@pytest.mark.slow
def test_smoke_run_writes_every_output(smoke_run):
    out, proc = smoke_run
    ck = out / "checkpoints"
    for name in ["last.pt", "best_model.pt", "checkpoint_epoch_0.pt", "checkpoint_epoch_1.pt"]:
        assert (ck / name).is_file(), name
    for name in PLOTS:
        assert _is_png(out / "training_metrics_from_ckpt" / name)
    for name in ["gradcam_grid.png"] + [f"gradcam_idx{i}_overlay.png" for i in range(6)]:
        assert _is_png(out / "gradcam_outputs" / name)
    log = (out / "training_logs.md").read_text()
    assert "| Epoch | Train Acc | Test Acc | Test Loss | LR | Status |" in log
    assert "| 0 |" in log and "| 1 |" in log and "**BEST**" in log
    assert "Total params" in log and "Total params" not in proc.stdout  # torchsummary's table
    assert "epoch   1/1" in proc.stdout
    assert "left to epoch 1" in proc.stdout  # the estimate of the time left, after epoch 0
    # a quiet start: what the run is, and the flags that differ, not the whole config
    assert "config: {" not in proc.stdout
    assert "network: 320,436 parameters | device cpu, fp32" in proc.stdout
    assert "settings that differ from the reference: " in proc.stdout and "--smoke" in proc.stdout


def test_smoke_checkpoint_has_every_key_and_loads_safely(smoke_run):
    out, _ = smoke_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert CKPT_KEYS <= ckpt.keys()
    assert ckpt["epoch"] == 1 and len(ckpt["test_acc"]) == 2 and ckpt["config"]["smoke"] is True
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model_state_dict"])
    # the generated data is learnable: far above the 1% of chance after two epochs
    assert ckpt["test_accuracy"] > 10.0
    best = torch.load(out / "checkpoints" / "best_model.pt", weights_only=True)
    assert best["test_accuracy"] == max(ckpt["test_acc"]) == ckpt["best_accuracy"]


def test_the_readme_snippets_way_predicts_what_evaluate_reports(smoke_run, tmp_path):
    # The README's snippet (build, torch.load, load_state_dict, eval, argmax) on the smoke
    # run's trained checkpoint: its predictions give --evaluate's per-class counts.
    from machinery import data
    from machinery.images import normalize
    from model import build_model
    out, _ = smoke_run
    path = out / "checkpoints" / "best_model.pt"
    checkpoint = torch.load(path, map_location="cpu")
    model = build_model(checkpoint["model_args"])
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    x, y = data.read_split(checkpoint["config"]["data_dir"], "cifar100", "test")
    with torch.no_grad():
        prediction = model(normalize(x, checkpoint["mean"], checkpoint["std"])).argmax(dim=1).numpy()
    proc = train_here("--evaluate", path, "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "training_metrics_from_ckpt" / "per_class_accuracy.csv")))
    names = checkpoint["class_names"]
    assert [int(r["correct"]) for r in rows] == [int(((prediction == y) & (y == c)).sum())
                                                 for c in range(len(names))]
    assert 100 * (prediction == y).mean() == pytest.approx(checkpoint["test_accuracy"], abs=1e-9)


def test_metrics_csv_is_the_checkpoint_history(smoke_run):
    out, _ = smoke_run
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    rows = list(csv.DictReader(open(out / "training_metrics_from_ckpt" / "metrics_from_ckpt.csv")))
    assert [float(r["test_acc"]) for r in rows] == ckpt["test_acc"]
    assert [float(r["lr"]) for r in rows] == ckpt["lrs"]
    npz = np.load(out / "training_metrics_from_ckpt" / "metrics_from_ckpt.npz")
    assert np.array_equal(npz["train_losses"], np.array(ckpt["train_losses"]))


def test_metrics_from_ckpt_rebuilds_the_folder_without_training(smoke_run, tmp_path):
    out, _ = smoke_run
    proc = train_here("--metrics-from-ckpt", out / "checkpoints" / "last.pt", "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "training_metrics_from_ckpt"
    for name in PLOTS + ["metrics_from_ckpt.csv", "metrics_from_ckpt.npz"]:
        assert (folder / name).is_file()
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained
    assert (folder / "metrics_from_ckpt.csv").read_text() == \
           (out / "training_metrics_from_ckpt" / "metrics_from_ckpt.csv").read_text()


def test_resume_refuses_a_changed_recipe_flag(smoke_run, tmp_path):
    out, _ = smoke_run
    proc = train_here("--resume", out / "checkpoints" / "last.pt", "--batch-size", "32",
                      "--out-dir", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --batch-size 32 differs from the resumed run's 64; the network and the "
        "schedule are fixed by the checkpoint"]


@pytest.mark.pictures  # (its plot: drawn)
def test_gradcam_cli_rebuilds_the_network_from_the_checkpoint(smoke_run, tmp_path):
    out, _ = smoke_run
    proc = run_here("gradcam_utils.py", "--checkpoint", out / "checkpoints" / "best_model.pt",
                      "--num-images", "4", "--out-dir", tmp_path, "--misclassified")
    assert proc.returncode == 0, proc.stderr
    assert _is_png(tmp_path / "gradcam_grid.png")
    overlays = sorted(p.name for p in tmp_path.glob("gradcam_idx*_overlay.png"))
    assert overlays == [f"gradcam_idx{i}_overlay.png" for i in range(4)]


def test_gradcam_leaves_the_model_and_its_batchnorm_untouched(smoke_run):
    import gradcam_utils
    from model import model_from_checkpoint
    out, _ = smoke_run
    model, _ = model_from_checkpoint(str(out / "checkpoints" / "best_model.pt"))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # Grad-CAM must still work under no_grad
        maps, probs = gradcam_utils.gradcam_maps(model, torch.randn(3, 3, 32, 32))
    assert model.training and maps.shape == (3, 32, 32) and probs.shape == (3, 100)
    assert 0 <= maps.min() and maps.max() <= 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_missing_data_offline_is_one_line(tmp_path):
    proc = train_here("--data-dir", tmp_path / "empty", "--no-download", "--out-dir", tmp_path)
    assert "cifar-100-python" in _one_line_error(proc)


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(os.urandom(4096))
    assert "corrupt" in _one_line_error(train_here("--resume", tmp_path / "corrupt.pt"))
    assert "not found" in _one_line_error(train_here("--resume", tmp_path / "no.pt"))
    # a checkpoint of another class count, given to Grad-CAM on a CIFAR-100 checkpoint's data
    net = ResNet((1, 1, 1, 1), 8, num_classes=10)
    save_checkpoint({"model_state_dict": net.state_dict(), "model_args": {
        "blocks": [1, 1, 1, 1], "width": 8, "num_classes": 10}}, str(tmp_path / "c10.pt"))
    assert "no run config" in _one_line_error(train_here("--resume", tmp_path / "c10.pt"))
    err = _one_line_error(run_here("gradcam_utils.py", "--checkpoint", tmp_path / "corrupt.pt"))
    assert "corrupt" in err


def test_gradcam_refuses_a_checkpoint_of_another_class_count(tiny_data, tmp_path):
    net = ResNet((1, 1, 1, 1), 8, num_classes=10)
    save_checkpoint({"model_state_dict": net.state_dict(), "config": {"dataset": "cifar100"}},
                    str(tmp_path / "c10.pt"))
    err = _one_line_error(run_here("gradcam_utils.py", "--checkpoint", tmp_path / "c10.pt",
                                   "--data-dir", tiny_data, "--out-dir", tmp_path / "g"))
    assert "num_classes is 10 there, expected 100" in err


def test_unwritable_out_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert "--out-dir" in _one_line_error(train_here("--smoke", "--out-dir", blocker / "x"))


@pytest.mark.slow
def test_throughput_benchmark_runs_and_writes_its_table_as_json(tmp_path):
    import json
    # (without --train-epochs: train.py's own runs through the benchmark are gpu_check's
    # rehearsal's, test_speed; their figures' parsing, test_the_benchmark_reads_...)
    proc = run_script("benchmarks/throughput.py", "--quick", "--json", tmp_path / "t.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "t.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert any(n.startswith("augmentation, the reference's way") for n in names)
    assert any(n.startswith("augmentation, uint8") for n in names)
    assert any(n.startswith("augmentation batched") for n in names)
    assert sum(n.startswith("raw train step, eager, fp32") for n in names) == 2  # NCHW, channels_last
    assert sum(n.startswith("real training loop") for n in names) == 2  # both augmentations
    # a share of each kind of operator, adding up to the whole step (which kind is largest
    # is a measurement, printed by the benchmark: under load batch norm can lead)
    shares = res["step_breakdown"]
    assert "convolution and matmul" in shares and "batch norm" in shares
    assert all(v >= 0 for v in shares.values()) and sum(shares.values()) == pytest.approx(1, abs=0.01)
    assert all(r["images_per_s"] > 0 for r in res["rows"])
    assert res["sgd_step_ms"]["fused"] > 0 and res["sgd_step_ms"]["loop"] > 0
    assert "SGD update of the network's parameters: fused kernel" in proc.stdout
    assert res["matmul_gflops"] > 0 and res["matmul_dtype"] == "float32" and res["network"]["forward_gflops_per_image"] > 0
    assert "train_runs" not in res and res["written_by"] == "benchmarks/throughput.py"
    assert "| stage" in proc.stdout


def test_every_command_refuses_a_data_file_that_would_run_code(smoke_run, tmp_path):
    from test_data import poison
    from machinery import data
    out, _ = smoke_run
    root, marker = tmp_path / "data", tmp_path / "payload_ran"
    data.write_synthetic_dataset(str(root), "cifar100", n_train=100, n_test=100)
    poison(str(root), ["train", "test"], marker)
    best = out / "checkpoints" / "best_model.pt"
    folder = root / "cifar-100-python"
    runs = [("train", train_here("--smoke", "--data-dir", root, "--out-dir", tmp_path)),
            ("test", train_here("--evaluate", best, "--data-dir", root, "--out-dir", tmp_path)),
            ("test", run_here("gradcam_utils.py", "--checkpoint", best, "--data-dir", root,
                              "--out-dir", tmp_path / "cam"))]
    for name, proc in runs:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [
            f"error: refusing to read {folder / name}: it asks to run posix.system, and a data "
            f"set file holds only lists, strings, numbers and numpy arrays"]
    assert not marker.exists()


def test_inference_tools_end_in_one_line_on_an_unexpected_failure(smoke_run, tmp_path,
                                                                   monkeypatch, capsys):
    import gradcam_utils
    import train
    from machinery import gradcam
    out, _ = smoke_run
    best = out / "checkpoints" / "best_model.pt"

    def out_of_memory(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    monkeypatch.setattr(gradcam, "gradcam_maps", out_of_memory)
    code = gradcam_utils.main(["--checkpoint", str(best), "--out-dir", str(tmp_path / "cam")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory on cpu (")
    assert err[0].endswith(f"traceback in {tmp_path / 'cam' / 'crash.log'}")

    def broken(*_):
        raise ValueError("a bug (injected)")
    monkeypatch.setattr(train, "write_metrics", broken)
    code = train.main(["--metrics-from-ckpt", str(best), "--out-dir", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: ValueError: a bug (injected); traceback in {tmp_path / 'crash.log'}"]
    assert "ValueError: a bug (injected)" in (tmp_path / "crash.log").read_text()


@pytest.mark.slow  # (a child process per width)
def test_the_channels_last_probe_runs_each_width_in_a_child_and_writes_its_table(tmp_path):
    import json
    proc = run_script("benchmarks/channels_last_probe.py", "--widths", "16", "--batches", "1", "3",
                      "--steps", "1", "--threads", "1", "--json", tmp_path / "p.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "width  16: 3/3 batch sizes ran; crashed at: none" in proc.stdout
    table = json.loads((tmp_path / "p.json").read_text())
    assert table["widths"] == {"16": {"1": 0, "2": 0, "3": 0}}


def test_the_channels_last_probe_tells_a_crash_from_a_batch_that_ran(monkeypatch):
    """A child that dies (here: killed by a signal at batch 5) is a line in the table, and
    the probe goes on with the next batch in a fresh child."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("probe", os.path.join(ROOT, "benchmarks",
                                                                        "channels_last_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    def child(width, batches, args, fmt="channels_last"):
        done = [b for b in batches if b < 5 or b > 5]
        return (done[:len([b for b in batches if b < 5])], -11) if 5 in batches else (done, 0)
    monkeypatch.setattr(probe, "run_child", child)
    args = probe.argparse.Namespace(batches=[1, 8])
    assert probe.probe_width(8, args) == {1: 0, 2: 0, 3: 0, 4: 0, 5: -11, 6: 0, 7: 0, 8: 0}


def test_evaluate_takes_channels_last_off_by_the_networks_own_width(smoke_run, tmp_path, monkeypatch):
    """The hostile pass: --evaluate decided by the config's width (or a --width flag), so a
    width-8 network whose config said 16 ran in channels_last, inside the crash's reach."""
    from machinery import evaluation
    from model import ResNet
    ckpt = torch.load(smoke_run[0] / "checkpoints" / "best_model.pt", weights_only=True)
    net = ResNet((1, 1, 1, 1), 8, len(ckpt["class_names"]))
    narrow = {**ckpt, "model_state_dict": net.state_dict(), "model_args": dict(net.model_args)}
    torch.save(narrow, tmp_path / "w8.pt")
    made = []
    real = evaluation.make_runtime
    monkeypatch.setattr(evaluation, "make_runtime",
                        lambda device, precision, cl, *a: (made.append(cl), real(device, precision, cl, *a))[1])
    for flags in ([], ["--width", "16"]):
        proc = train_here("--evaluate", tmp_path / "w8.pt", *flags, "--out-dir", tmp_path / "out")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert made == [False, False]


def test_the_ablation_table_gives_each_claim_its_verdict_by_the_stated_rule(tmp_path, capsys):
    """benchmarks/ablations_table.py on two studies made here: a difference beyond twice
    the pooled std resolves a claim (for or against the seed), a smaller one does not."""
    import importlib.util

    import optuna
    spec = importlib.util.spec_from_file_location("abl", os.path.join(ROOT, "benchmarks",
                                                                      "ablations_table.py"))
    abl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(abl)
    fixed = {"dataset": "folder", "data_dir": "../shared/data/photos-dev", "val_split": 40,
             "blocks": [1, 1, 1, 1], "epochs": 3}
    scores = {"cutmix": {"cutmix_prob": {0.3: [70, 71, 72], 0.0: [60, 61, 62]}},  # holds
              "maxpool": {"stem_pool": {False: [70, 70, 70], True: [65, 65, 65]}},  # no spread
              "nodrop": {"dropout": {0.25: [50, 51], 0.0: [52, 53]}},  # no row of the seed's 0.3
              "label_smoothing": {"label_smoothing": {0.1: [70, 71, 72], 0.0: [90]}},  # one seed
              "dropout": {"dropout": {0.3: [70, 71, 72], 0.25: [80, 81, 82], 0.0: [69, 72, 70]}}}
    for claim, dims in scores.items():
        (name, values), = dims.items()
        os.makedirs(tmp_path / f"photos-{claim}")
        study = optuna.create_study(study_name=f"photos-{claim}", direction="maximize",
                                    storage=f"sqlite:///{tmp_path / f'photos-{claim}' / 'study.db'}")
        study.set_user_attr("settings", {"fixed": fixed})
        for value, runs in values.items():
            for seed, score in enumerate(runs, start=1):
                study.add_trial(optuna.trial.create_trial(
                    params={name: value, "seed": seed}, value=score, user_attrs={"seconds": 9.0},
                    distributions={name: optuna.distributions.CategoricalDistribution(list(values)),
                                   "seed": optuna.distributions.IntDistribution(1, 3)}))
    os.makedirs(tmp_path / "not-a-sweep")  # the hostile pass: one such file ended the whole run
    optuna.create_study(study_name="x", storage=f"sqlite:///{tmp_path / 'not-a-sweep' / 'study.db'}")
    assert abl.main(["--sweeps-dir", str(tmp_path), "--csv", str(tmp_path / "new" / "a.csv")]) == 0
    said, err = capsys.readouterr()
    assert "not-a-sweep/study.db: not a sweep.py study" in err
    assert "| the max-pool removed from the stem | stem_pool=True | 65.00 ± 0.00 | 3 | -5.00 (2σ 0.00) | holds |" in said
    assert "| nodrop | dropout=0.0 | 52.50 ± 0.71 | 2 | | no row of the seed's setting (dropout=0.3) to compare with |" in said
    for bad in ("0", "-1", "99"):  # (rows[-1] was the last row; 99 failed after training row 3)
        assert abl.main(["--sweeps-dir", str(tmp_path), "--rerun", "3", bad]) == 2
        assert "rows are numbered 1 to 29" in capsys.readouterr().err
    assert "| CutMix on 30% of batches | cutmix_prob=0.0 | 61.00 ± 1.00 | 3 | -10.00 (2σ 2.00) | holds |" in said
    assert "| dropout 0.3 | dropout=0.25 | 81.00 ± 1.00 | 3 | +10.00 (2σ 2.00) | does not hold |" in said
    assert "| dropout=0.0 | 70.33 ± 1.53 | 3 | -0.67 (2σ 2.58) | not resolved at this scale |" in said
    assert "| label_smoothing=0.0 | 90.00 ± 0.00 | 1 | +19.00 (2σ 1.41) | too few seeds to judge |" in said
    rows = list(csv.DictReader(open(tmp_path / "new" / "a.csv")))
    assert len(rows) == 29 and rows[0]["score_name"] == "val_acc"
    assert rows[0]["command"] == ("python train.py --dataset folder --data-dir ../shared/data/photos-dev "
                                  "--val-split 40 --blocks 1 1 1 1 --epochs 3 --target-accuracy 0 "
                                  "--cutmix-prob 0.3 --seed 1")
