"""Where a run reports: one summary line per epoch on the console, and training_logs.md
with a table per run (the reference's columns), the network's layer table and, with
--val-split, the one test-set result. Only rank 0 of a torchrun job writes.
"""
import contextlib
import copy
import dataclasses
import io
import logging
import logging.handlers
import math
import os
import shlex
import sys
import time

from .config import Config
from .config import flags as config_flags

log = logging.getLogger("train")
table = logging.getLogger("train.table")  # the markdown epoch table in training_logs.md


def setup_logging(cfg, resumed_from=None, enabled=True):
    """Console summary lines and the training_logs.md table; silent on ranks other than 0.
    The table's lines are held back until open_table(): a run that stops at a check before
    it has claimed its folder writes nothing into the log of the run that was there."""
    for logger in (log, table):
        for h in list(logger.handlers):
            h.close()
            logger.removeHandler(h)
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
    if not enabled:
        return
    log.setLevel(logging.INFO)
    table.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler(sys.stdout))
    table.addHandler(logging.handlers.MemoryHandler(1 << 20, flushLevel=logging.CRITICAL + 1))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    table.info(f"\n### Run started {started}" + (f", resumed from {resumed_from}" if resumed_from else ""))


def table_file(cfg):
    """The handler of <out-dir>/training_logs.md, opened for appending now (rank 0; None on
    the others): a log that cannot be opened stops the run before it claims its folder."""
    if not any(isinstance(h, logging.handlers.MemoryHandler) for h in table.handlers):
        return None
    return logging.FileHandler(os.path.join(cfg.out_dir, "training_logs.md"))


def open_table(file):
    """From now on the table goes to `file` (table_file's), what was held back first."""
    held = [h for h in table.handlers if isinstance(h, logging.handlers.MemoryHandler)]
    if file is None:
        return
    for h in held:
        h.setTarget(file)
        h.close()  # (writes what it holds)
        table.removeHandler(h)
    table.addHandler(file)


def start_epoch_table(cfg):
    name = "Val" if cfg.eval_split == "val" else "Test"
    table.info(f"\n| Epoch | Train Acc | {name} Acc | {name} Loss | LR | Status |")
    table.info("|-------|-----------|----------|-----------|----|--------|")


def log_epoch(epoch, cfg, tr_loss, tr_acc, ev, lr, best, seconds, images, left):
    """One row of the training_logs.md table, one summary line with the epoch's time
    (training, evaluation and saving), training images per second, and the time left."""
    status = "**BEST**" if best else ""
    table.info(f"| {epoch} | {tr_acc:.2f}% | {ev['acc']:.2f}% | {ev['loss']:.4f} | {lr:.6f} | {status} |")
    eta = f" | ~{duration(left)} left to epoch {cfg.epochs - 1}" if epoch < cfg.epochs - 1 else ""
    rate = f"{images / max(seconds, 1e-9):,.0f} img/s"
    log.info(f"epoch {epoch:>3}/{cfg.epochs - 1} | train loss {tr_loss:.4f} acc {tr_acc:6.2f}% | "
             f"{cfg.eval_split} loss {ev['loss']:.4f} acc {ev['acc']:6.2f}%{top5_text(ev, ' top5 {:6.2f}%')} | "
             f"lr {lr:.6f} | {seconds:.1f}s, {rate}{eta}{'  BEST' if best else ''}")


def top5_text(ev, form=" top-5 {:.2f}%"):
    """The top-5 accuracy formatted, or nothing where it means nothing (5 classes or fewer)."""
    return "" if math.isnan(ev["top5"]) else form.format(ev["top5"])


def duration(seconds):
    """'1h05m', '12m30s' or '42s'."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def log_model_summary(model):
    """torchsummary's layer table into training_logs.md (the console gets one line), run
    on a CPU copy in eval mode so the real model's BatchNorm statistics stay put."""
    from torchsummary import summary
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        summary(copy.deepcopy(model).eval(), (3, 32, 32), device="cpu")
    table.info(f"\n<details><summary>Network (torchsummary)</summary>\n\n```\n"
               f"{text.getvalue().strip()}\n```\n</details>")


def _typed(value):
    """A value as a shell reads it back: quoted where it holds a space or another character
    a shell reads (--out-dir 'exp 1', not --out-dir exp 1)."""
    return shlex.quote(value) if isinstance(value, str) else str(value)


def changed_settings(cfg):
    """The flags that differ from the reference's defaults, as one would type them (the log
    and training_logs.md can be pasted into a shell)."""
    default = dataclasses.asdict(Config())
    flags = []
    typed = {f.name for f in config_flags()}  # not what the data decides (val_folder)
    for k, v in dataclasses.asdict(cfg).items():
        if k in typed and v != default[k] and not (isinstance(v, list) and tuple(v) == tuple(default[k])):
            value = " ".join(map(_typed, v)) if isinstance(v, list) else _typed(v)
            flag = "--" + k.replace("_", "-")
            flags.append(flag if v is True else f"--no-{flag[2:]}" if v is False else f"{flag} {value}")
    return " ".join(flags) or "none (the reference recipe)"
