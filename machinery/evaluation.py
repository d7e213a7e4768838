"""`python train.py --evaluate CHECKPOINT [--tta]`: how good a saved network is on the
test set, and where it fails.

Prints top-1, top-5 and loss (with --tta also for logits averaged with the mirror
image's), the best and worst classes and the most confused pairs, and writes
per_class_accuracy.csv and confusion_matrix.png into training_metrics_from_ckpt/.
The network, data set and normalisation come from the checkpoint; flags override them.

Also what follows a training run (train.py calls them): final_test, the --val-split
protocol's one look at the test set, and finish, the metric files, the best model's
test-set report, Grad-CAM and the end of the TensorBoard events.
"""
import dataclasses
import os
import sys

from . import data
from . import gradcam
from .checkpoint_files import dataset_of, fill_metadata, load_checkpoint, save_checkpoint
from .config import Config
from .failures import Crashed, one_line
from .logs import log, table, top5_text
from .metrics import write_evaluation_report
from .runtime import (channels_last_crashes, collect_logits, evaluate, make_runtime,
                      pick_device, score)
from .workers import chosen_workers


def evaluate_checkpoint(path, tta, explicit, rebuild):
    """--evaluate: a test-set report for a checkpoint, into training_metrics_from_ckpt/.
    rebuild: model.model_from_checkpoint (the network is known above the machinery)."""
    ckpt = load_checkpoint(path)
    saved = {**dataclasses.asdict(Config()), "dataset": dataset_of(ckpt) or "cifar100",
             **(ckpt.get("config") or {}), **explicit}
    name, root = saved["dataset"], saved["data_dir"]
    note = fill_metadata(ckpt)  # the reference's files: names and statistics of CIFAR
    if name != data.FOLDER:  # (a folder's split is listed and decoded once, just below)
        data.ensure_dataset(root, name, saved["download"])
    x_test, y_test = data.read_split_for(ckpt, root, name, "test", ckpt["image_size"],
                                         **data.folder_options(saved))
    names, mean, std = ckpt["class_names"], ckpt["mean"], ckpt["std"]
    # the precision the run trained with may not exist here (fp16 on a CPU): the device's own
    device = pick_device(saved["device"])
    # by the network's own width (a --width flag, the config's, may say another); silently:
    # an evaluation's figures do not depend on the memory format, and its lines are few
    width = (ckpt.get("model_args") or {}).get("width", saved["width"])
    channels_last = saved["channels_last"] and not channels_last_crashes(device, width)
    rt = make_runtime(device, explicit.get("precision", "auto"), channels_last, mean, std)
    model, _ = rebuild(ckpt, rt.device, expected={"num_classes": len(names)})
    model = model.to(memory_format=rt.memory_format)
    workers = chosen_workers(saved["num_workers"])
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
    report = write_report(logits, labels, names, name, folder)
    print_report(report, "flip TTA" if tta else "plain")
    print(f"written: {folder}/per_class_accuracy.csv, {folder}/confusion_matrix.png")
    return 0


def write_report(logits, labels, names, dataset, folder):
    """per_class_accuracy.csv and confusion_matrix.png (CIFAR-100's grouped by superclass)."""
    groups = data.CIFAR100_SUPERCLASSES if dataset == "cifar100" else None
    return write_evaluation_report(logits.argmax(1).cpu().numpy(), labels.cpu().numpy(),
                                   names, folder, groups)


def print_scores(label, s):
    print(f"  {label:>8}: top-1 {s['acc']:.2f}%{top5_text(s, '  top-5 {:.2f}%')}  loss {s['loss']:.4f}")


def print_report(report, label):
    print(f"per-class accuracy ({label} predictions):")
    for title, rows in (("best", report["best"]), ("worst", report["worst"])):
        print(f"  {len(rows)} {title}: " + ", ".join(f"{n} {a:.1f}%" for a, n in rows))
    print("most confused (true -> predicted: images):")
    for true, pred, count in report["pairs"]:
        print(f"  {true} -> {pred}: {count}")


# -----------------------------------------------------------------------------
# The end of a training run (train.py)

def final_test(run, x_test, y_test, last):
    """--val-split: the test set, evaluated once, at the end, with the best model by
    validation accuracy. The result goes into best_model.pt, last.pt and both logs.
    Every rank takes part: the test images are shared out as in evaluation."""
    cfg, dist = run.cfg, run.rt.dist
    folder = os.path.join(cfg.out_dir, "checkpoints")
    best_path = os.path.join(folder, "best_model.pt")
    if not len(x_test):  # an image folder without test/: the validation images were all
        log.info("no test/ folder: the held-out validation images are the only evaluation")
        if dist.main:  # (said in the files: their cards name the validation figure alone)
            for path in (best_path, os.path.join(folder, "last.pt")):
                if os.path.isfile(path):
                    save_checkpoint({**load_checkpoint(path), "test_images": 0}, path)
        return {**last, "test_images": 0}
    dist.barrier()  # rank 0 has written best_model.pt
    best = load_checkpoint(best_path) if os.path.isfile(best_path) else last
    run.net.load_state_dict(best["model_state_dict"])
    loader = data.make_eval_loader(x_test, y_test, cfg.eval_batch_size, rank=dist.rank,
                                   world=dist.world)
    ev = evaluate(run.net, loader, run.rt)
    result = {"test_loss": ev["loss"], "test_accuracy": ev["acc"], "test_top5": ev["top5"],
              "test_images": ev["n"], "test_of_epoch": best["epoch"]}
    if dist.main:
        for path in (best_path, os.path.join(folder, "last.pt")):
            if os.path.isfile(path):
                save_checkpoint({**load_checkpoint(path), **result}, path)
        line = (f"test set, evaluated once, with the best model by validation accuracy (epoch "
                f"{best['epoch']}): top-1 {ev['acc']:.2f}%{top5_text(ev)} loss "
                f"{ev['loss']:.4f} on {ev['n']:,} images")
        log.info(line)
        table.info(f"\n**{line[0].upper() + line[1:]}**")
    return {**last, **result}


def finish(run, last, x_test, y_test, rebuild):
    """Metrics from the last checkpoint's history; for the best model, the test set's
    report (per-class accuracy, confusion matrix) and Grad-CAM; those pictures and the
    run's settings beside its results in TensorBoard. rebuild: model.model_from_checkpoint,
    so the best model is read from its file as every tool reads it."""
    cfg, rt, step = run.cfg, run.rt, run.sched.last_epoch  # the optimizer steps done
    folder = run.live.finish(last)
    log.info(f"metrics and plots: {folder}")
    if len(x_test):  # (an image folder may have no test/)
        best_path = os.path.join(cfg.out_dir, "checkpoints", "best_model.pt")
        which = "best" if os.path.isfile(best_path) else "last"  # (a folder without one)
        model, best = rebuild(best_path if which == "best" else last, rt.device)
        fill_metadata(best)  # a continued reference run's best model may still be its file
        loader = data.make_test_loader(x_test, y_test, cfg.eval_batch_size)
        logits, labels = collect_logits(model.to(memory_format=rt.memory_format), loader, rt)
        write_report(logits, labels, best["class_names"], cfg.dataset, folder)
        run.events.image("test/confusion_matrix", os.path.join(folder, "confusion_matrix.png"), step)
        log.info(f"the {which} model's per-class test accuracy and confusion matrix: {folder}")
        if cfg.gradcam_images:
            out = os.path.join(cfg.out_dir, "gradcam_outputs")
            gradcam.explain_test_images(model, best, x_test, y_test, out, cfg.gradcam_images)
            run.events.image("gradcam", os.path.join(out, "gradcam_grid.png"), step)
            log.info(f"Grad-CAM of the {which} model (epoch {best['epoch']}, "
                     f"{best['test_accuracy']:.2f}%): {out}")
    split = cfg.eval_split
    results = {f"hparam/best_{split}_accuracy": last.get("best_accuracy"),
               "hparam/test_accuracy": last.get("test_accuracy"),
               "hparam/test_loss": last.get("test_loss")}
    run.events.hparams(cfg, {k: float(v) for k, v in results.items() if v is not None}, step)
