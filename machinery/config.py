"""The run's settings: one dataclass with the reference recipe as defaults, the command
line generated from it, the --smoke presets, and the rules for resuming a run.

    explicit, modes = parse_args(argv)   # flags given, and --resume/--evaluate/...
    cfg = resolve_config(explicit)       # defaults <- presets <- resumed run <- flags
"""
import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from . import data


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    """Every field is a flag (--batch-size ...) with the reference's value as default."""
    # data
    dataset: str = _f("cifar100", "cifar100, cifar10, or folder: your own images in "
                                  "--data-dir, as DIR/train/<class>/* and DIR/test/<class>/* "
                                  "(or val/; see the README for every layout)",
                      choices=data.DATASET_NAMES)
    data_dir: str = _f("./data", "folder holding (or receiving) the extracted data set, or "
                                 "the image folder")
    download: bool = _f(True, "download the data set when it is missing")
    image_size: int = _f(32, "folder data: train on N x N pixels, a multiple of 8 from 16 to "
                             "128 (CIFAR's are 32, the reference's); 64 costs 4x per image")
    cache_dir: str = _f("", "folder data: where the decoded images are cached (default: "
                            "DIR/.imagefolder-cache, or ~/.cache/enhanced-resnet34 where DIR "
                            "cannot be written)")
    labels: str = _f("", "folder data: a table (CSV or tab-separated) of the training images' "
                         "labels, e.g. Kaggle's trainLabels.csv (found by itself where it is the "
                         "only one beside the images)")
    label_column: str = _f("", "folder data: the table's column of labels, by name or number "
                               "(default: label, class, ... or the only other column)")
    num_workers: int = _f(-1, "DataLoader and image-decoding workers; -1: one per CPU core this "
                              "process may use, at most 8")
    # model
    blocks: list = _f((5, 5, 5, 5), "BasicBlocks per stage (4 numbers)", nargs=4)
    width: int = _f(64, "channels of the first stage, doubled at each of the next three")
    dropout: float = _f(0.3, "dropout before the classifier")
    block_dropout: float = _f(0.0, "Dropout2d inside every residual block, between its two "
                                   "convs (the reference's ResNet34(dropout=...); off in its "
                                   "recipe)")
    stem_pool: bool = _f(False, "a 3x3 stride-2 max-pool after the stem, as ImageNet's ResNets "
                                "have: an ablation of the seed, which removed it (on 32x32 it "
                                "drops 3/4 of the pixels at once)")
    init_from: str = _f("", "start the new run from this checkpoint's weights (this repo's or "
                            "the reference's; a classifier of another class count starts "
                            "fresh), with a new schedule from epoch 0")
    # recipe
    epochs: int = _f(200, "epochs of the OneCycle schedule (training may stop earlier)")
    batch_size: int = _f(128, "training batch size; under torchrun the global batch, split "
                              "evenly over the processes (so the schedule stays the same)")
    accum_steps: int = _f(1, "gradient accumulation: run each step's batch as this many "
                             "micro-batches (for a GPU that cannot hold --batch-size at once); "
                             "the steps, schedule and learning rates stay those of 1")
    max_lr: float = _f(0.1, "OneCycleLR peak learning rate")
    div_factor: float = _f(25.0, "initial LR = max_lr / div_factor")
    final_div_factor: float = _f(1000.0, "final LR = initial LR / final_div_factor")
    pct_start: float = _f(0.2, "fraction of the steps spent warming up")
    momentum: float = _f(0.9, "SGD momentum, with Nesterov; 0 turns both off. OneCycleLR "
                               "then cycles momentum between 0.95 and 0.85 inversely to the "
                               "LR, as in the reference, so any positive value trains alike")
    weight_decay: float = _f(5e-4, "SGD weight decay")
    label_smoothing: float = _f(0.1, "label smoothing of the training loss")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off)")
    cutmix_prob: float = _f(0.3, "fraction of batches that get CutMix")
    cutmix_alpha: float = _f(1.0, "CutMix Beta(alpha, alpha) parameter")
    cutmix_label_smoothing: bool = _f(False, "label smoothing on CutMix batches too; the "
                                             "reference's code smooths only the batches "
                                             "without CutMix, whose mixed targets are soft "
                                             "already")
    aug_on_device: bool = _f(False, "augment whole batches with torch ops on the training "
                                    "device (same distribution): for GPUs the CPU cannot feed")
    val_split: int = _f(0, "hold out this many training images (the same number per class, "
                           "chosen by --seed) to pick the best model and stop early on; the "
                           "test set is then evaluated once, at the end. 0: the reference's "
                           "protocol, which evaluates the test set after every epoch")
    val_folder: bool = _f(False, "set from the data, not a flag: the folder has val/ beside "
                                 "test/, so val/ is evaluated after each epoch", flag=False)
    seed: int = _f(1, "random seed (weights, shuffling, augmentation, CutMix, dropout)")
    sync_bn: bool = _f(False, "under torchrun on CUDA: BatchNorm statistics over all GPUs")
    # run
    device: str = _f("auto", "auto (cuda > mps > cpu), cuda, cuda:N, mps or cpu")
    precision: str = _f("auto", "auto: bf16 on GPUs with bf16 units (A100, L4, H100, ...), fp16 "
                                "with loss scaling on older GPUs (T4, as the reference), fp32 "
                                "on other devices; or bf16, fp16, fp32",
                        choices=("auto", "bf16", "fp16", "fp32"))
    channels_last: bool = _f(True, "channels_last memory format on CUDA and the CPU (faster "
                                    "for this network on both, see benchmarks/throughput.py)")
    step_mode: str = _f("auto", "how the training step runs: auto (graphs on one CUDA GPU, "
                                "eager elsewhere), eager, graphs (the network's forward and "
                                "backward as CUDA graphs: seconds to capture), compile "
                                "(torch.compile: minutes; on the CPU it needs a C++ compiler); "
                                "a fast mode that fails falls back to eager with a warning",
                        choices=("auto", "eager", "graphs", "compile"))
    eval_batch_size: int = _f(512, "evaluation batch size")
    target_accuracy: float = _f(75.0, "stop once test accuracy (%%) reaches this; 0: never")
    save_every: int = _f(5, "write checkpoint_epoch_N.pt every this many epochs")
    keep_checkpoints: int = _f(3, "keep the newest K checkpoint_epoch_N.pt this run wrote (0: "
                                  "all); files it did not write, best_model.pt and last.pt "
                                  "are always kept")
    gradcam_images: int = _f(6, "Grad-CAM pictures drawn after training (0: none)")
    tensorboard: str = _f("auto", "TensorBoard event files in <out-dir>/tensorboard/: auto "
                                  "(when the tensorboard package is installed), on, off",
                          choices=("auto", "on", "off"))
    out_dir: str = _f(".", "where checkpoints/, metrics, Grad-CAM and training_logs.md go")
    smoke: bool = _f(False, "offline demo: generated data, reduced network, 2 epochs")

    @property
    def eval_split(self):
        """The images evaluated after each epoch: "test" as in the reference, "val" with
        --val-split (their history is named after them: test_acc or val_acc)."""
        return "val" if self.val_split or self.val_folder else "test"


# Fields that decide the trajectory of a run: a resumed run must keep them. The network
# and the schedule are fixed by the checkpoint itself, so even --resume-force cannot change
# FIXED; the rest it may (e.g. a lower --cutmix-prob for the last epochs).
FIXED = {"dataset", "blocks", "width", "stem_pool", "epochs", "batch_size", "max_lr", "div_factor",
         "final_div_factor", "pct_start", "momentum", "smoke", "val_split", "init_from",
         "image_size"}
RECIPE = FIXED | {"dropout", "block_dropout", "weight_decay", "label_smoothing", "grad_clip",
                  "cutmix_prob", "cutmix_alpha", "cutmix_label_smoothing", "seed", "sync_bn",
                  "aug_on_device", "accum_steps", "labels", "label_column"}
# What a run saved before a field existed was trained with: a resumed run keeps it.
OLDER_RUNS = {"cutmix_label_smoothing": True, "block_dropout": 0.0, "init_from": "",
              "stem_pool": False, "image_size": 32, "val_folder": False, "accum_steps": 1,
              "labels": "", "label_column": ""}

# --smoke: a reduced network on generated CIFAR-100-format data; explicit flags win.
SMOKE = dict(blocks=[1, 1, 1, 1], width=16, epochs=2, batch_size=64, target_accuracy=0.0,
             num_workers=0, save_every=1)
SMOKE_SIZES = dict(n_train=2000, n_test=500)


class UserError(Exception):
    """Bad flags or inputs: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of a screenful of usage
        raise UserError(f"{message} (see python train.py --help)")


def flags():
    """The fields that are flags (all but what the data decides)."""
    return [f for f in dataclasses.fields(Config) if f.metadata.get("flag", True)]


def build_parser():
    # SUPPRESS: only flags given on the command line appear in the result, so presets and
    # a resumed run's config can tell what the user asked for explicitly.
    # allow_abbrev off: `--epoch 3` is a typo to refuse, not --epochs 3 taken silently
    p = Parser(description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS,
               allow_abbrev=False)
    for f in flags():
        flag = "--" + f.name.replace("_", "-")
        default = " ".join(map(str, f.default)) if f.type is list else f.default
        kw = dict(help=f"{f.metadata['help']} (default: {default})")
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.type is list:
            kw.update(type=int, nargs=f.metadata["nargs"])
        else:
            kw["type"] = f.type
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(flag, **kw)
    p.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the run saved in this checkpoint (e.g. checkpoints/last.pt); "
                        "'auto': the newest good one in <out-dir>/checkpoints, or a fresh "
                        "run if there is none")
    p.add_argument("--resume-force", action="store_true", default=False,
                   help="allow recipe flags that differ from the resumed run's")
    p.add_argument("--archive", action="store_true", default=False,
                   help="<out-dir>/checkpoints holds another run's checkpoints: move them to "
                        "checkpoints/archive/<time>/ and train (without it such a run is "
                        "refused; a --smoke run's files are simply replaced)")
    p.add_argument("--metrics-from-ckpt", metavar="PATH", default=None,
                   help="only rebuild training_metrics_from_ckpt/ from this checkpoint")
    p.add_argument("--evaluate", metavar="PATH", default=None,
                   help="only evaluate this checkpoint on the test set: accuracy, per-class "
                        "accuracy, confusions, confusion_matrix.png")
    p.add_argument("--tta", action="store_true", default=False,
                   help="with --evaluate: also average each image's logits with its mirror's")
    p.add_argument("--find-lr", action="store_true", default=False,
                   help="only run the learning-rate range test with these settings: "
                        "<out-dir>/lr_find/ gets the curve and a suggested --max-lr; no run "
                        "of the out-dir is touched (docs/choosing-a-recipe.md)")
    p.add_argument("--lr-start", type=float, default=None, metavar="LR",
                   help="with --find-lr: the ramp's first learning rate (default: 1e-7)")
    p.add_argument("--lr-end", type=float, default=None, metavar="LR",
                   help="with --find-lr: the ramp's last learning rate (default: 10)")
    p.add_argument("--find-lr-steps", type=int, default=None, metavar="N",
                   help="with --find-lr: optimizer steps of the ramp, at most (default: 200)")
    p.add_argument("--debug", action="store_true", default=False,
                   help="on a crash, print the full traceback too (it always goes to "
                        "<out-dir>/crash.log)")
    return p


def parse_args(argv=None):
    """(flags given explicitly, as a dict of Config fields; the mode flags)"""
    args = vars(build_parser().parse_args(argv))
    modes = {k: args.pop(k) for k in ("resume", "resume_force", "archive", "metrics_from_ckpt",
                                      "evaluate", "tta", "debug", "find_lr", "lr_start",
                                      "lr_end", "find_lr_steps")}
    if modes["find_lr"]:
        other = [k for k in ("resume", "archive", "metrics_from_ckpt", "evaluate") if modes[k]]
        if other:
            raise UserError(f"--find-lr runs alone: leave out --{other[0].replace('_', '-')}")
    ramp = [k for k in RAMP if modes[k] is not None]
    if ramp and not modes["find_lr"]:  # (without it, a whole training run would start)
        raise UserError(f"--{ramp[0].replace('_', '-')} is a flag of --find-lr: add --find-lr, "
                        f"or leave it out")
    if modes["tta"] and not modes["evaluate"]:
        raise UserError("--tta is a flag of --evaluate CHECKPOINT: add it, or leave --tta out")
    modes.update({k: d for k, d in RAMP.items() if modes[k] is None})
    return args, modes


RAMP = {"lr_start": 1e-7, "lr_end": 10.0, "find_lr_steps": 200}  # --find-lr's, by default


def resolve_config(explicit, saved=None, force=False, assumed=()):
    """Config = defaults <- smoke presets <- the resumed run's config <- explicit flags.

    explicit: the flags given on the command line; saved: the config of the run resumed;
    force: accept recipe flags that differ from the saved ones; assumed: fields of `saved`
    that its checkpoint could not hold (the reference's), which a flag sets without force.
    """
    cfg = dataclasses.asdict(Config())
    if explicit.get("smoke") or (saved or {}).get("smoke"):
        cfg.update(SMOKE, smoke=True)
    if saved:
        saved = {**OLDER_RUNS, **saved}
        changed = sorted(k for k in (RECIPE - set(assumed)) & explicit.keys()
                         if _norm(explicit[k]) != _norm(saved.get(k)))
        blocked = [k for k in changed if k in FIXED or not force]
        if blocked:
            k = blocked[0]
            why = ("the network and the schedule are fixed by the checkpoint" if k in FIXED
                   else "a resumed run keeps its recipe (--resume-force to change it anyway)")
            raise UserError(f"--{k.replace('_', '-')} {explicit[k]} differs from the resumed "
                            f"run's {saved.get(k) if saved.get(k) != '' else '(none)'}; {why}")
        cfg.update({k: v for k, v in saved.items() if k in cfg})
    cfg.update(explicit)
    if cfg["smoke"] and "data_dir" not in explicit and not saved:
        cfg["data_dir"] = os.path.join(cfg["out_dir"], "data", "smoke")
    cfg["blocks"] = list(cfg["blocks"])
    return validate(Config(**cfg))


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def validate(cfg):
    checks = [
        (cfg.epochs >= 1, "epochs", "at least 1"),
        (cfg.out_dir.strip() != "", "out_dir", "a folder's name ('.' for this one)"),
        (cfg.data_dir.strip() != "", "data_dir", "a folder's name"),
        (cfg.batch_size >= 1, "batch_size", "at least 1"),
        (cfg.accum_steps >= 1, "accum_steps", "at least 1"),
        (cfg.accum_steps < 1 or cfg.batch_size % cfg.accum_steps == 0, "batch_size",
         f"a multiple of --accum-steps {cfg.accum_steps} (each step's micro-batches are equal)"),
        (cfg.eval_batch_size >= 1, "eval_batch_size", "at least 1"),
        (min(cfg.blocks) >= 1, "blocks", "four numbers, each at least 1"),
        (cfg.width >= 1, "width", "at least 1"),
        (0 <= cfg.dropout < 1, "dropout", "in [0, 1)"),
        (0 <= cfg.block_dropout < 1, "block_dropout", "in [0, 1)"),
        (cfg.max_lr > 0, "max_lr", "positive"),
        (cfg.div_factor > 0 and cfg.final_div_factor > 0, "div_factor", "positive (both factors)"),
        (0 < cfg.pct_start < 1, "pct_start", "in (0, 1)"),
        (0 <= cfg.momentum < 1, "momentum", "in [0, 1)"),
        (cfg.weight_decay >= 0, "weight_decay", "0 or more"),
        (0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
        (cfg.grad_clip >= 0, "grad_clip", "0 or more"),
        (0 <= cfg.cutmix_prob <= 1, "cutmix_prob", "in [0, 1]"),
        (cfg.cutmix_alpha > 0, "cutmix_alpha", "positive"),
        (0 <= cfg.target_accuracy <= 100, "target_accuracy", "in [0, 100]"),
        (cfg.save_every >= 1, "save_every", "at least 1"),
        (cfg.keep_checkpoints >= 0, "keep_checkpoints", "0 or more"),
        (cfg.gradcam_images >= 0, "gradcam_images", "0 or more"),
        (cfg.num_workers >= -1, "num_workers", "-1 (auto) or more"),
        (cfg.val_split >= 0, "val_split", "0 (off) or more"),
        (cfg.image_size in range(16, 129, 8), "image_size", "a multiple of 8 from 16 to 128"),
    ]
    for ok, name, need in checks:
        if not ok:
            raise UserError(f"--{name.replace('_', '-')} must be {need} "
                            f"(got {getattr(cfg, name)})")
    return cfg
