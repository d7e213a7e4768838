"""`python train.py --evaluate CHECKPOINT [--tta]`: how good a saved network is on the
test set, and where it fails.

Prints top-1, top-5 and loss (with --tta also for logits averaged with the mirror
image's), the best and worst classes and the most confused pairs, and writes
per_class_accuracy.csv and confusion_matrix.png into training_metrics_from_ckpt/.
The network, data set and normalisation come from the checkpoint; flags override them.
"""
import dataclasses
import os
import sys

import data
from config import Config
from failures import Crashed, one_line
from metrics import write_evaluation_report
from model import dataset_of, fill_metadata, load_checkpoint, model_from_checkpoint
from runtime import collect_logits, default_workers, make_runtime, pick_device, score


def evaluate_checkpoint(path, tta, explicit):
    """--evaluate: a test-set report for a checkpoint, into training_metrics_from_ckpt/."""
    ckpt = load_checkpoint(path)
    saved = {**dataclasses.asdict(Config()), "dataset": dataset_of(ckpt) or "cifar100",
             **(ckpt.get("config") or {}), **explicit}
    name, root = saved["dataset"], saved["data_dir"]
    note = fill_metadata(ckpt)  # the reference's files: names and statistics of CIFAR
    data.ensure_dataset(root, name, saved["download"])
    x_test, y_test = data.read_split(root, name, "test")
    names, mean, std = ckpt["class_names"], ckpt["mean"], ckpt["std"]
    # the precision the run trained with may not exist here (fp16 on a CPU): the device's own
    rt = make_runtime(pick_device(saved["device"]), explicit.get("precision", "auto"),
                      saved["channels_last"], mean, std)
    model, _ = model_from_checkpoint(ckpt, rt.device, expected={"num_classes": len(names)})
    model = model.to(memory_format=rt.memory_format)
    workers = default_workers() if saved["num_workers"] < 0 else saved["num_workers"]
    loader = data.make_test_loader(x_test, y_test, saved["eval_batch_size"], workers)
    try:
        if note:  # said once everything is in place: a failure above gets its one line alone
            print(f"note: {path}: {note}", file=sys.stderr)
        logits, labels = collect_logits(model, loader, rt)
        print(f"{path} (epoch {ckpt.get('epoch', '?')}) on {len(labels):,} {name} test images")
        print_scores("plain", score(logits, labels))
        if tta:
            logits, labels = collect_logits(model, loader, rt, tta=True)
            print_scores("flip TTA", score(logits, labels))
    except Exception as e:  # out of memory, a worker killed, ...: nothing to save, one line
        raise Crashed(e, one_line(e, device=rt.device, eval_batch_size=saved["eval_batch_size"],
                                  phase="evaluation"), saved["out_dir"]) from e
    finally:
        data.shutdown_workers(loader)
    folder = os.path.join(saved["out_dir"], "training_metrics_from_ckpt")
    groups = data.CIFAR100_SUPERCLASSES if name == "cifar100" else None
    report = write_evaluation_report(logits.argmax(1).cpu().numpy(), labels.cpu().numpy(),
                                     names, folder, groups)
    print_report(report, "flip TTA" if tta else "plain")
    print(f"written: {folder}/per_class_accuracy.csv, {folder}/confusion_matrix.png")
    return 0


def print_scores(label, s):
    print(f"  {label:>8}: top-1 {s['acc']:.2f}%  top-5 {s['top5']:.2f}%  loss {s['loss']:.4f}")


def print_report(report, label):
    print(f"per-class accuracy ({label} predictions):")
    for title, rows in (("best", report["best"]), ("worst", report["worst"])):
        print(f"  {len(rows)} {title}: " + ", ".join(f"{n} {a:.1f}%" for a, n in rows))
    print("most confused (true -> predicted: images):")
    for true, pred, count in report["pairs"]:
        print(f"  {true} -> {pred}: {count}")
